//! Call deadlines: where a caller's `grpc-timeout` becomes the [`Deadline`]
//! that bounds the whole AMQP round trip.
//!
//! Why a layer and not the handler: tonic's transport wraps every service in
//! its own timeout, started from `grpc-timeout` when the request arrives, and
//! answers CANCELLED when it fires. The contract wants DEADLINE_EXCEEDED, so the
//! gateway must answer first. tonic creates its timer *after* calling the inner
//! service's `call` and, when woken, polls the inner future before its timer.
//! [`DeadlineLayer`] sits inside tonic's timeout and fixes the deadline
//! synchronously in `call`, so our deadline is never later than tonic's and our
//! answer wins even when both fire in the same timer tick. The handler only
//! reads the deadline from the request extensions.

use std::{
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderMap, Request};
use tower::{Layer, Service};

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

    /// The deadline on the wall clock, for the `x-deadline` header.
    pub fn wall_clock(&self) -> SystemTime {
        SystemTime::now() + self.remaining()
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

/// Stamps every request with its [`Deadline`] (in the request extensions).
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    policy: DeadlinePolicy,
}

impl DeadlineLayer {
    /// A layer applying `policy`.
    pub fn new(policy: DeadlinePolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, policy: self.policy }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    policy: DeadlinePolicy,
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Synchronously, before tonic starts its own timer: see the module docs.
        let deadline = self.policy.deadline(request.headers(), Instant::now());
        request.extensions_mut().insert(deadline);
        self.inner.call(request)
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
