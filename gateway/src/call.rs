//! Per-call context, fixed the moment a call arrives: its [`Deadline`] (from
//! `grpc-timeout`, the configured default and cap) and its correlation id, and
//! the enforcement of that deadline.
//!
//! Why a layer and not the handler: the deadline must hold even while the
//! request body is still being read (the handler has not started then), and
//! dropping the inner future on expiry drops the handler, whose pending entry
//! goes with it. The deadline is fixed synchronously in `call`, when the
//! call arrives. (The gateway serves HTTP/2 itself, see `transport`, so no
//! other timer answers first with another code.)
//!
//! The correlation id is returned as `correlation-id` metadata on every
//! answer, errors and deadlines included, so any call can be found in worker
//! logs and traces.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue, Request};
use pin_project_lite::pin_project;
use tonic::{Status, body::Body, server::NamedService};
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// gRPC metadata key carrying the call's correlation id on every answer.
pub const CORRELATION_ID_METADATA: &str = "correlation-id";

/// What the handler learns about its call from the layer (request extensions).
#[derive(Clone, Copy, Debug)]
pub struct CallContext {
    /// When the call must be answered by.
    pub deadline: Deadline,
    /// The AMQP correlation id (and message id) of the call.
    pub correlation_id: Uuid,
}

/// When a call must be answered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: tokio::time::Instant,
}

impl Deadline {
    /// A deadline `timeout` after `now`.
    pub fn after(now: Instant, timeout: Duration) -> Self {
        Self { at: tokio::time::Instant::from_std(now + timeout) }
    }

    /// The deadline as a tokio instant, for timers.
    pub fn instant(&self) -> tokio::time::Instant {
        self.at
    }

    /// Time left from now; zero when passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(tokio::time::Instant::now())
    }
}

/// The deadline policy: the default when the caller sets none, the cap.
#[derive(Clone, Copy, Debug)]
pub struct DeadlinePolicy {
    /// Applied when there is no `grpc-timeout`.
    pub default_timeout: Duration,
    /// Cap on any caller's timeout.
    pub max_timeout: Duration,
}

impl DeadlinePolicy {
    /// The deadline of a request arriving `now` with these headers.
    pub fn deadline(&self, headers: &HeaderMap, now: Instant) -> Deadline {
        let timeout = match parse_grpc_timeout(headers) {
            Some(timeout) => timeout.min(self.max_timeout),
            None => self.default_timeout,
        };
        Deadline::after(now, timeout)
    }
}

/// Parses `grpc-timeout` as the gRPC over HTTP/2 spec defines it: at most 8
/// ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). A malformed value is
/// treated as absent, as tonic and grpc-go do.
pub fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Fixes each call's [`CallContext`] and answers DEADLINE_EXCEEDED when its
/// deadline passes. Wraps the `Gateway` service.
#[derive(Clone, Copy, Debug)]
pub struct CallLayer {
    policy: DeadlinePolicy,
}

impl CallLayer {
    /// A layer applying `policy`.
    pub fn new(policy: DeadlinePolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService { inner, policy: self.policy }
    }
}

/// See [`CallLayer`].
#[derive(Clone, Debug)]
pub struct CallService<S> {
    inner: S,
    policy: DeadlinePolicy,
}

impl<S: NamedService> NamedService for CallService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for CallService<S>
where
    S: Service<Request<B>, Response = http::Response<Body>, Error = Infallible> + NamedService,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let deadline = self.policy.deadline(request.headers(), Instant::now());
        let correlation_id = Uuid::new_v4();
        request.extensions_mut().insert(CallContext { deadline, correlation_id });
        let span = server_span(S::NAME, &request, correlation_id);
        let inner = span.in_scope(|| self.inner.call(request));
        CallFuture { inner, sleep: tokio::time::sleep_until(deadline.instant()), correlation_id, span, done: false }
    }
}

/// The RPC's server span, continuing the caller's trace when the request
/// carries `traceparent`, named and attributed per the OpenTelemetry RPC
/// conventions.
fn server_span<B>(service: &str, request: &Request<B>, correlation_id: Uuid) -> tracing::Span {
    let method = request.uri().path().rsplit('/').next().unwrap_or_default();
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
fn status_code(response: &http::Response<Body>) -> i64 {
    response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
}

fn record_status(span: &tracing::Span, code: i64) {
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}

pin_project! {
    /// A call racing its deadline, inside its server span.
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: tokio::time::Sleep,
        correlation_id: Uuid,
        span: tracing::Span,
        done: bool,
    }

    impl<F> PinnedDrop for CallFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unanswered: the caller went away.
            if !this.done {
                record_status(&this.span, tonic::Code::Cancelled as i64);
            }
        }
    }
}

impl<F> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    tracing::debug!(correlation_id = %this.correlation_id, "deadline exceeded");
                    Status::deadline_exceeded("deadline exceeded before the worker replied").into_http()
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        let mut buffer = Uuid::encode_buffer();
        let id = this.correlation_id.hyphenated().encode_lower(&mut buffer);
        if let Ok(value) = HeaderValue::from_str(id) {
            response.headers_mut().insert(CORRELATION_ID_METADATA, value);
        }
        record_status(this.span, status_code(&response));
        *this.done = true;
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", timeout.parse().unwrap());
        h
    }

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("4S", Duration::from_secs(4)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("0m", Duration::ZERO),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(&headers(value)), Some(expected), "{value}");
        }
    }

    #[test]
    fn malformed_is_absent() {
        for value in ["", "m", "100", "123456789S", "1.5S", "-1S", "10s", "10 S"] {
            assert_eq!(parse_grpc_timeout(&headers(value)), None, "{value:?}");
        }
        assert_eq!(parse_grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn policy_defaults_and_caps() {
        let policy = DeadlinePolicy { default_timeout: Duration::from_secs(5), max_timeout: Duration::from_secs(10) };
        let now = Instant::now();
        let at = |d: Deadline| d.instant().into_std() - now;
        assert_eq!(at(policy.deadline(&HeaderMap::new(), now)), Duration::from_secs(5));
        assert_eq!(at(policy.deadline(&headers("2S"), now)), Duration::from_secs(2));
        assert_eq!(at(policy.deadline(&headers("1H"), now)), Duration::from_secs(10));
    }
}
