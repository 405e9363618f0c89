//! Telemetry shared by the `gateway` and `worker` binaries: logs, traces and
//! metrics; and the shutdown signal both stop on.
//!
//! # Layout
//!
//! - [`init`] (here): the one set-up call. It installs the global `tracing`
//!   subscriber (a `RUST_LOG` filter and human or JSON log lines carrying trace
//!   and span ids), the OpenTelemetry layer with an OTLP/gRPC batch exporter,
//!   and the W3C TraceContext and Baggage propagators. It returns a [`Guard`]
//!   that flushes spans when dropped.
//! - [`propagation`]: the trace-context carriers: AMQP headers and gRPC
//!   metadata.
//! - [`w3c`]: trace context without spans, for a process that makes spans
//!   only for what it exports ([`Spans::WhenExported`]), and the sampling
//!   decision it makes itself.
//! - [`metrics`]: Prometheus metrics over HTTP.
//! - `logs`: the log line formats.
//! - [`shutdown_signal`] (`signal`): SIGTERM and SIGINT, which both binaries
//!   stop on.
//!
//! Traces are configured only by the standard OpenTelemetry variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
//! without either, nothing is exported), `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` (and `_ARG`),
//! `OTEL_SDK_DISABLED`, and the exporter's and batch processor's own
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_SCHEDULE_DELAY`, ...). Even with
//! export off, trace context propagates: a caller's trace, or one the
//! gateway starts, still reaches the workers (through spans that are not
//! exported, or through [`w3c`]).

mod logs;
pub mod metrics;
pub mod propagation;
mod signal;
pub mod w3c;

use std::{fmt, io::IsTerminal as _, str::FromStr};

use opentelemetry::{global, propagation::TextMapCompositePropagator, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, LevelFilter, filter_fn},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use crate::{metrics::serve_prometheus, signal::shutdown_signal};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: expected text or json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Target of the spans made once per call (the gateway's `rpc`, `send` and
/// `receive` spans): traced, never formatted into log lines.
///
/// The log layer would otherwise format every field of every such span into a
/// string of its own, for every call, whether or not anything is ever logged
/// inside it; that was the largest single cost of tracing on the hot path.
/// Log lines lose nothing: they carry the `trace_id` and `span_id` of the span
/// they happen in, and the gateway's per-call events name their correlation
/// id themselves. The worker's `process` span keeps the default target: its
/// fields are the context of the log lines handlers write.
pub const CALL_SPANS: &str = "call";

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `RUST_LOG` did not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built from its configuration.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps telemetry alive; dropping it flushes and stops the span exporter,
/// blocking the thread that drops it. A program on a current-thread runtime
/// calls `Guard::shutdown` instead, which does not block the runtime.
#[must_use = "telemetry stops when the guard is dropped"]
#[derive(Debug)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    policy: w3c::TracePolicy,
}

impl Guard {
    /// Whether spans are exported, and the sampling decision the process
    /// makes itself under [`Spans::WhenExported`].
    pub fn policy(&self) -> w3c::TracePolicy {
        self.policy
    }

    /// Flushes and stops the span exporter, as dropping the guard does, but
    /// without blocking the runtime's thread: the exporter's connection is
    /// driven by the runtime, and on a current-thread runtime a flush that
    /// blocks that thread waits for I/O nothing drives, until it times out
    /// and the spans are lost. Call this at the end of `main`'s async body.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(result) => report_flush(result),
                Err(error) => eprintln!("telemetry: flushing spans failed: {error}"),
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            report_flush(provider.shutdown());
        }
    }
}

/// Reports a failed flush on stderr: the subscriber may already be gone.
fn report_flush(result: opentelemetry_sdk::error::OTelSdkResult) {
    if let Err(error) = result {
        eprintln!("telemetry: flushing spans failed: {error}");
    }
}

/// Whether spans are exported, from the standard variables.
fn export_enabled(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let exporter_none = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && !exporter_none && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Which `tracing` spans are OpenTelemetry spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spans {
    /// Every span, exported or not, and entering one makes its context the
    /// current one (`opentelemetry::Context::current()`), so code that uses
    /// the OpenTelemetry API directly (a handler calling an instrumented
    /// client, say) sees the span it runs in. For workers.
    #[default]
    Always,
    /// Only what is exported: with no exporter there is no OpenTelemetry
    /// layer at all, and with one the process decides per call, before any
    /// span exists, whether the call is sampled ([`w3c::TracePolicy`]), and
    /// passes unsampled calls' context on without spans ([`w3c::Lean`]).
    /// Contexts are never made current (activation was a tenth of the
    /// gateway's CPU per call). For the gateway, where tracing every call was
    /// a fifth of its CPU with nothing exported.
    WhenExported,
}

/// Installs logs, traces and propagators for a process named `service_name`
/// (used when `OTEL_SERVICE_NAME` does not name it). `default_filter` applies
/// when `RUST_LOG` is unset (for example `"info"`); `spans` says which spans
/// are OpenTelemetry spans. Call once, from within the Tokio runtime (the
/// exporter's connection runs on it).
pub fn init(service_name: &'static str, format: LogFormat, default_filter: &str, spans: Spans) -> Result<Guard, Error> {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let env = |name: &str| std::env::var(name).ok();
    let filter = match env(EnvFilter::DEFAULT_ENV) {
        Some(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(default_filter)?,
    };
    // Colours only for a person at a terminal, never into files or shippers.
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.event_format(logs::Text).boxed(),
        LogFormat::Json => fmt.event_format(logs::Json).boxed(),
    };

    // Spans get real trace and span ids whether or not they are exported:
    // a call without trace context starts a trace at the gateway, and its
    // context reaches the workers (which may export even if the gateway
    // does not).
    let mut resource = Resource::builder();
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service_name);
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = export_enabled(env);
    let sampler =
        w3c::Sampler::from_env(env("OTEL_TRACES_SAMPLER").as_deref(), env("OTEL_TRACES_SAMPLER_ARG").as_deref());
    if exporting {
        provider = provider.with_batch_exporter(opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?);
    }
    if spans == Spans::WhenExported {
        // The process has sampled each call before making its spans: the SDK
        // keeps every span it is given.
        provider = provider.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn);
    }
    let provider = provider.build();
    let logged = filter.and(filter_fn(|meta| !(meta.is_span() && meta.target() == CALL_SPANS)));
    let registry = tracing_subscriber::registry().with(fmt.with_filter(logged));
    if spans == Spans::Always || exporting {
        // The OpenTelemetry layer sees every span at INFO and above whatever
        // RUST_LOG says, so quieter logs never cost traces. Code locations,
        // thread names and busy/idle times are left out: per-call spans would
        // pay for them on every call (two clock reads on every poll for the
        // timings) and they say nothing about a request.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("grpc-amqp-gateway"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(spans == Spans::Always)
            .with_filter(LevelFilter::INFO);
        registry.with(otel).try_init()?;
    } else {
        registry.try_init()?;
    }
    let policy = w3c::TracePolicy::new(exporting, sampler);
    Ok(Guard { provider: exporting.then_some(provider), policy })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn export_needs_an_endpoint_and_can_be_disabled() {
        assert!(!export_enabled(env(&[])));
        assert!(export_enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")])));
        assert!(export_enabled(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317")])));
        assert!(!export_enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(!export_enabled(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
        assert!(!export_enabled(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
