//! Fuzzes what the gateway accepts from a gRPC caller before publishing: the
//! route and headers of a `ProcessRequest` (`gateway::validate`) and the
//! `grpc-timeout` metadata (`gateway::deadline::parse_grpc_timeout`), under fixed
//! limits. None of it may panic, and each answer is checked against the
//! README's rules, restated here.

#![no_main]

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use arbitrary::Arbitrary;
use gateway::{config::Limits, deadline::parse_grpc_timeout, validate};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    route: String,
    headers: HashMap<String, String>,
    grpc_timeout: Vec<u8>,
}

const MAX_HEADERS: usize = 4;
const MAX_HEADER_BYTES: usize = 64;

fn limits() -> Limits {
    Limits {
        routes: BTreeSet::from(["echo".to_owned(), "jobs".to_owned(), "billing.v2".to_owned()]),
        default_route: Some("echo".to_owned()),
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(60),
        max_payload_bytes: 4096,
        max_headers: MAX_HEADERS,
        max_header_bytes: MAX_HEADER_BYTES,
    }
}

fuzz_target!(|input: Input| {
    let limits = limits();

    match validate::route(&limits, &input.route) {
        Ok(route) => {
            assert!(limits.routes.contains(route), "accepted route {route:?} is not allow-listed");
            assert!(input.route.is_empty() || route == input.route);
        }
        Err(_) => assert!(!input.route.is_empty() && !limits.routes.contains(&input.route)),
    }

    let allowed = input.headers.len() <= MAX_HEADERS
        && input.headers.iter().all(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            (1..=255).contains(&name.len())
                && !lower.starts_with("x-")
                && !["traceparent", "tracestate", "baggage"].contains(&lower.as_str())
                && name.len() + value.len() <= MAX_HEADER_BYTES
        });
    assert_eq!(validate::headers(&limits, &input.headers).is_ok(), allowed, "{:?}", input.headers);

    if let Ok(value) = HeaderValue::from_bytes(&input.grpc_timeout) {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value);
        let parsed = parse_grpc_timeout(&headers);
        assert_eq!(parsed, reference_timeout(&input.grpc_timeout), "{:?}", input.grpc_timeout);
    }
});

/// gRPC over HTTP/2: 1 to 8 ASCII digits, then H, M, S, m, u or n.
fn reference_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if !(1..=8).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}
