//! A call's deadline: when it must be answered by, and how that is decided
//! from `grpc-timeout` and the configured default and cap.
//!
//! Shared by the gRPC layer that enforces the deadline
//! ([`context`](crate::context)) and the AMQP client that sends it on
//! (`expiration` and `x-deadline`), so neither depends on the other.

use std::time::{Duration, Instant};

use http::HeaderMap;

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
