//! Per-call context, fixed the moment a call arrives: its [`Deadline`] (from
//! `grpc-timeout`, the configured default and cap) and its correlation id;
//! the enforcement of that deadline; and the one place where a call's final
//! status is recorded, in its server span and in `gateway_calls_total`.
//!
//! Why a layer and not the handler: the deadline must hold even while the
//! request body is still being read (the handler has not started then), and
//! dropping the inner future on expiry drops the handler, whose pending entry
//! goes with it. The deadline is fixed synchronously in `call`, when the
//! call arrives. (The gateway serves HTTP/2 itself, see `transport`, so no
//! other timer answers first with another code.) For the same reason only
//! this layer knows how every call ended: answered (the status in the
//! response), cut off by its deadline, or dropped because the caller went
//! away (CANCELLED).
//!
//! The correlation id is returned as `correlation-id` metadata on every
//! answer, errors and deadlines included, so any call can be found in worker
//! logs and traces.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderValue, Request};
use otel::w3c::{CallTrace, Lean, TracePolicy};
use pin_project_lite::pin_project;
use tonic::{Code, body::Body, server::NamedService};
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    deadline::{Deadline, DeadlinePolicy},
    error::GatewayError,
    metrics::ProcessMetrics,
};

/// gRPC metadata key carrying the call's correlation id on every answer.
pub const CORRELATION_ID_METADATA: &str = "correlation-id";

/// What the handler learns about its call from the layer (request
/// extensions), and where it tells the layer which route the call took.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// When the call must be answered by.
    pub deadline: Deadline,
    /// The AMQP correlation id (and message id) of the call.
    pub correlation_id: Uuid,
    shared: Arc<Shared>,
}

/// What the layer and the handler share, in one allocation per call.
#[derive(Debug, Default)]
struct Shared {
    /// The allowed route the call resolved to, once the handler knows it;
    /// read by the layer when the call ends, for the metrics' `route` label.
    route: OnceLock<String>,
    /// The call's trace context when it makes no spans.
    lean: Option<Lean>,
}

impl RequestContext {
    /// A context for a call that must be answered by `deadline`, traced with
    /// spans.
    pub fn new(deadline: Deadline, correlation_id: Uuid) -> Self {
        Self { deadline, correlation_id, shared: Arc::default() }
    }

    /// A context for a call traced as `trace` says.
    fn traced(deadline: Deadline, correlation_id: Uuid, trace: CallTrace) -> Self {
        let lean = match trace {
            CallTrace::Spans => None,
            CallTrace::Lean(lean) => Some(lean),
        };
        Self { deadline, correlation_id, shared: Arc::new(Shared { route: OnceLock::new(), lean }) }
    }

    /// Records the allowed route the call resolved to (the first one set
    /// counts).
    pub fn set_route(&self, route: &str) {
        let _ = self.shared.route.set(route.to_owned());
    }

    /// The call's trace context, when the call makes no spans: what its
    /// request passes on instead of a span's context.
    pub fn lean_trace(&self) -> Option<LeanTrace> {
        self.shared.lean.is_some().then(|| LeanTrace(self.shared.clone()))
    }
}

/// A call's trace context without spans ([`otel::w3c::Lean`]), shared with
/// its context. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeanTrace(Arc<Shared>);

impl LeanTrace {
    /// Writes the context into a request's AMQP headers.
    pub fn inject_amqp(&self, headers: &mut lapin::types::FieldTable) {
        if let Some(lean) = &self.0.lean {
            lean.inject_amqp(headers);
        }
    }
}

/// Fixes each call's [`RequestContext`], answers DEADLINE_EXCEEDED when its
/// deadline passes, and records how the call ended. Wraps the `Gateway`
/// service.
#[derive(Clone, Debug)]
pub struct RequestContextLayer {
    policy: DeadlinePolicy,
    metrics: Arc<ProcessMetrics>,
    tracing: TracePolicy,
}

impl RequestContextLayer {
    /// A layer applying `policy`, recording finished calls in `metrics` and
    /// tracing them as `tracing` says: with spans when they are exported and
    /// sampled, else by passing their context on ([`otel::w3c`]).
    pub fn new(policy: DeadlinePolicy, metrics: Arc<ProcessMetrics>, tracing: TracePolicy) -> Self {
        Self { policy, metrics, tracing }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner, policy: self.policy, metrics: self.metrics.clone(), tracing: self.tracing }
    }
}

/// See [`RequestContextLayer`].
#[derive(Clone, Debug)]
pub struct RequestContextService<S> {
    inner: S,
    policy: DeadlinePolicy,
    metrics: Arc<ProcessMetrics>,
    tracing: TracePolicy,
}

impl<S: NamedService> NamedService for RequestContextService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for RequestContextService<S>
where
    S: Service<Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RequestContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let deadline = self.policy.deadline(request.headers(), started);
        let correlation_id = Uuid::new_v4();
        let trace = self.tracing.start(request.headers());
        let span = match trace {
            CallTrace::Spans => server_span(&request, correlation_id),
            CallTrace::Lean(_) => tracing::Span::none(),
        };
        let context = RequestContext::traced(deadline, correlation_id, trace);
        let outcome =
            Outcome { span, metrics: self.metrics.clone(), shared: context.shared.clone(), started, recorded: false };
        request.extensions_mut().insert(context);
        let inner = outcome.span.in_scope(|| self.inner.call(request));
        RequestContextFuture { inner, sleep: tokio::time::sleep_until(deadline.instant()), correlation_id, outcome }
    }
}

/// The RPC's server span, continuing the caller's trace when the request
/// carries `traceparent`, named and attributed per the OpenTelemetry RPC
/// conventions. Service and method come from the path, `/service/method`.
fn server_span<B>(request: &Request<B>, correlation_id: Uuid) -> tracing::Span {
    let path = request.uri().path().strip_prefix('/').unwrap_or_default();
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        target: otel::CALL_SPANS,
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        correlation_id = %correlation_id,
    );
    let _ = span.set_parent(otel::propagation::extract_http(request.headers()));
    span
}

/// The gRPC status of a response: in its headers for a trailers-only error,
/// else OK (a unary success carries it in the trailers).
fn status_code(response: &http::Response<Body>) -> Code {
    let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    Code::from_i32(code)
}

/// How a call ended, recorded exactly once: when it is answered, or, if it
/// is dropped unanswered (the caller went away), as CANCELLED.
struct Outcome {
    span: tracing::Span,
    metrics: Arc<ProcessMetrics>,
    shared: Arc<Shared>,
    started: Instant,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.span.record("rpc.grpc.status_code", code as i64);
        if code != Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics.record(self.shared.route.get().map(String::as_str), code, self.started.elapsed());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

pin_project! {
    /// A call racing its deadline, inside its server span.
    pub struct RequestContextFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: tokio::time::Sleep,
        correlation_id: Uuid,
        outcome: Outcome,
    }
}

impl<F> Future for RequestContextFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.outcome.span.enter();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    tracing::debug!(correlation_id = %this.correlation_id, "deadline exceeded");
                    GatewayError::DeadlineExceeded.into_http()
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        let mut buffer = Uuid::encode_buffer();
        let id = this.correlation_id.hyphenated().encode_lower(&mut buffer);
        if let Ok(mut value) = HeaderValue::from_str(id) {
            // Unique to the call: HPACK would add it to both ends' header
            // tables only to evict it again (sensitive: never indexed).
            value.set_sensitive(true);
            response.headers_mut().insert(CORRELATION_ID_METADATA, value);
        }
        let code = status_code(&response);
        drop(entered);
        this.outcome.record(code);
        Poll::Ready(Ok(response))
    }
}
