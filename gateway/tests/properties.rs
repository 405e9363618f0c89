//! Property tests of what the gateway accepts from a caller before anything is
//! published: the route (`validate::route`), the caller's headers
//! (`validate::headers`) and the `grpc-timeout` deadline
//! (`deadline::parse_grpc_timeout`), through their public APIs.
//!
//! Each oracle is written here from the README and the gRPC over HTTP/2 spec,
//! not copied from the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use gateway::{config::Limits, deadline::parse_grpc_timeout, error::GatewayError, validate};
use http::{HeaderMap, HeaderValue};
use proptest::{collection, prelude::*};

/// Longest AMQP short string (header names, routing keys).
const SHORT_STRING_MAX: usize = 255;

fn limits(
    routes: BTreeSet<String>,
    default_route: Option<String>,
    max_headers: usize,
    max_header_bytes: usize,
) -> Limits {
    Limits {
        routes,
        default_route,
        default_timeout: Duration::from_secs(1),
        max_timeout: Duration::from_secs(2),
        max_payload_bytes: 1024,
        max_headers,
        max_header_bytes,
    }
}

/// `word` with each ASCII letter in a random case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars().zip(upper).map(|(c, up)| if up { c.to_ascii_uppercase() } else { c }).collect()
    })
}

/// Routes as configured: trimmed, 1 to 255 bytes.
fn route_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9._-]{0,12}",
        "\\PC{1,40}".prop_map(|s| s.trim().to_owned()).prop_filter("non-empty", |s| !s.is_empty()),
    ]
}

/// Allow-list, default route (on the list, or none), and a requested route:
/// empty, one of the list, a near miss of one, or anything.
fn route_case() -> impl Strategy<Value = (BTreeSet<String>, Option<String>, String)> {
    collection::btree_set(route_name(), 1..5).prop_flat_map(|routes| {
        let list: Vec<String> = routes.iter().cloned().collect();
        let default = proptest::option::of(proptest::sample::select(list.clone()));
        let requested = prop_oneof![
            1 => Just(String::new()),
            3 => proptest::sample::select(list.clone()),
            2 => (proptest::sample::select(list), prop_oneof![Just(" "), Just("x"), Just("\0"), Just("/")])
                .prop_map(|(r, extra)| format!("{r}{extra}")),
            1 => "[A-Z][a-z]{0,5}",
            2 => any::<String>(),
            1 => "\\PC{250,300}",
        ];
        (Just(routes), default, requested)
    })
}

/// Header names: normal ones, empty, around 255 bytes, reserved `x-` in any
/// case, trace context in any case, and near misses of both.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,10}",
        1 => Just(String::new()),
        1 => (250usize..=260).prop_map(|n| "n".repeat(n)),
        1 => (62usize..=66).prop_map(|n| "é".repeat(n) + "ab"), // multi-byte: bytes, not chars, count
        2 => "[xX]-[a-zA-Z0-9-]{0,8}",
        2 => prop_oneof![any_case("traceparent"), any_case("tracestate"), any_case("baggage")],
        1 => prop_oneof![Just("x".to_owned()), Just("x_id".to_owned()), Just("-x-".to_owned()), Just("baggages".to_owned())],
        1 => any::<String>(),
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9]{0,20}", 1 => "[a-z]{0,80}", 1 => any::<String>()]
}

/// The README's rules for caller headers, on their own.
fn headers_allowed(limits: &Limits, headers: &HashMap<String, String>) -> bool {
    const TRACE_CONTEXT: [&str; 3] = ["traceparent", "tracestate", "baggage"];
    headers.len() <= limits.max_headers
        && headers.iter().all(|(name, value)| {
            let bytes = name.as_bytes();
            let reserved = bytes.len() >= 2 && matches!(bytes[0], b'x' | b'X') && bytes[1] == b'-';
            let trace = TRACE_CONTEXT.iter().any(|t| name.to_ascii_lowercase() == *t);
            (1..=SHORT_STRING_MAX).contains(&bytes.len())
                && !reserved
                && !trace
                && bytes.len() + value.len() <= limits.max_header_bytes
        })
}

/// The gRPC over HTTP/2 spec's `Timeout → "grpc-timeout" TimeoutValue
/// TimeoutUnit`, `TimeoutValue` at most 8 ASCII digits, units H M S m u n; a
/// malformed value counts as no timeout. (The spec says "positive"; zero is
/// accepted here, as tonic does, and means already expired.)
fn reference_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    let nanos_per_unit: u128 = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    let nanos = n * nanos_per_unit;
    Some(Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32))
}

/// `grpc-timeout` values: well-formed, almost well-formed, and any bytes.
fn timeout_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[0-9]{1,8}[HMSmun]".prop_map(String::into_bytes),
        2 => "[0-9]{0,10}[HMSmunhsxU ]?".prop_map(String::into_bytes),
        1 => "[ +-]?[0-9]{1,3}[.]?[0-9]?[HMSmun][ ]?".prop_map(String::into_bytes),
        1 => "[٠-٩0-9]{1,3}[HMSmun]".prop_map(String::into_bytes), // non-ASCII digits
        3 => collection::vec(any::<u8>(), 0..12),
    ]
}

fn with_timeouts(values: &[Vec<u8>]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for value in values {
        // Bytes HTTP cannot carry in a header value never reach the gateway.
        headers.append("grpc-timeout", HeaderValue::from_bytes(value).ok()?);
    }
    Some(headers)
}

proptest! {
    /// Exactly the allow-listed routes pass; an empty route means the
    /// default, if there is one; anything else is INVALID_ARGUMENT.
    #[test]
    fn route_accepts_exactly_the_allow_list((routes, default, requested) in route_case()) {
        let l = limits(routes.clone(), default.clone(), 8, 64);
        let result = validate::route(&l, &requested);
        let expected = if requested.is_empty() { default } else { routes.get(&requested).cloned() };
        match (result, expected) {
            (Ok(route), Some(expected)) => prop_assert_eq!(route, expected.as_str()),
            (Err(GatewayError::InvalidArgument(message)), None) => {
                // Caller input is echoed only when short and printable.
                if requested.len() > 64 {
                    prop_assert!(!message.contains(&requested));
                }
            }
            (result, expected) => prop_assert!(false, "route {:?}: got {:?}, expected {:?}", requested, result, expected),
        }
    }

    /// Headers pass iff the README's rules hold: at most `max_headers`, names
    /// of 1 to 255 bytes, no `x-` names and no trace context (any case), name
    /// plus value within `max_header_bytes`.
    #[test]
    fn headers_accepted_iff_rules_hold(
        headers in collection::hash_map(header_name(), header_value(), 0..6),
        max_headers in 0usize..6,
        max_header_bytes in 0usize..300,
    ) {
        let l = limits(BTreeSet::from(["echo".to_owned()]), None, max_headers, max_header_bytes);
        let expected = headers_allowed(&l, &headers);
        match validate::headers(&l, &headers) {
            Ok(()) => prop_assert!(expected, "accepted {headers:?} with {l:?}"),
            Err(GatewayError::InvalidArgument(_)) => prop_assert!(!expected, "refused {headers:?} with {l:?}"),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    /// One header at a time, with generous limits, so each name rule is
    /// exercised on its own (the map test above mostly fails on the first bad
    /// one).
    #[test]
    fn single_header_names(name in header_name(), value in header_value()) {
        let l = limits(BTreeSet::from(["echo".to_owned()]), None, 1, 1024);
        let headers = HashMap::from([(name, value)]);
        prop_assert_eq!(validate::headers(&l, &headers).is_ok(), headers_allowed(&l, &headers));
    }

    /// `parse_grpc_timeout` never panics on any header value and agrees with
    /// the spec; with several `grpc-timeout` headers the first one counts.
    #[test]
    fn grpc_timeout_matches_the_spec(values in collection::vec(timeout_value(), 0..3)) {
        if let Some(headers) = with_timeouts(&values) {
            let expected = values.first().and_then(|v| reference_timeout(v));
            prop_assert_eq!(parse_grpc_timeout(&headers), expected, "{:?}", values);
        }
    }

    /// Every well-formed value is read, in every unit.
    #[test]
    fn grpc_timeout_reads_every_unit(n in 0u64..=99_999_999, unit in proptest::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
        let value = format!("{n}{unit}");
        let headers = with_timeouts(&[value.clone().into_bytes()]).unwrap();
        let expected = match unit {
            'H' => Duration::from_secs(n * 3600),
            'M' => Duration::from_secs(n * 60),
            'S' => Duration::from_secs(n),
            'm' => Duration::from_millis(n),
            'u' => Duration::from_micros(n),
            _ => Duration::from_nanos(n),
        };
        prop_assert_eq!(parse_grpc_timeout(&headers), Some(expected), "{}", value);
        // Nine digits is one too many, whatever they are.
        let nine = with_timeouts(&[format!("{n:09}{unit}").into_bytes()]).unwrap();
        prop_assert_eq!(parse_grpc_timeout(&nine), None);
    }
}
