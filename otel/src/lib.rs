//! Telemetry shared by the `gateway` and `worker` binaries.
//!
//! One call, [`init`], installs the process-wide `tracing` subscriber: a
//! `RUST_LOG`-style filter and human or JSON log lines on stderr. It returns a
//! [`Guard`] that the binary keeps until it exits, so exporters added later
//! (OTLP) flush on drop without changing any caller.

use std::{fmt, str::FromStr};

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

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

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `RUST_LOG` did not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps telemetry alive; dropping it flushes what is buffered.
#[must_use = "telemetry stops when the guard is dropped"]
#[derive(Debug)]
pub struct Guard {
    _private: (),
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG`
/// is unset (for example `"info"`).
pub fn init(format: LogFormat, default_filter: &str) -> Result<Guard, Error> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(default_filter)?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()?,
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init()?
        }
    }
    Ok(Guard { _private: () })
}
