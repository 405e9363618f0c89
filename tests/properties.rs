//! Property tests of the AMQP wire format (`amqp_gateway::wire`), through its
//! public API only.
//!
//! Replies come from workers in any language, so their headers are untrusted
//! input: whatever table a worker sends, decoding must not panic (a panic in
//! the gateway's reply router would stop it matching replies) and must stay
//! inside the contract. The oracles here are written from the AMQP contract
//! (`docs/amqp-contract.md`) and the README, not from `wire.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    collections::BTreeMap,
    time::{Duration, UNIX_EPOCH},
};

use amqp_gateway::wire;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, ShortString};
use proptest::{collection, prelude::*};
use tonic::Code;

/// Trace-context header names, as the README lists them.
const TRACE_CONTEXT: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// `word` with each ASCII letter in a random case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars().zip(upper).map(|(c, up)| if up { c.to_ascii_uppercase() } else { c }).collect()
    })
}

/// A short string: at most 255 bytes (`ShortString::from` panics above that,
/// and the AMQP parser never produces one), mostly short, sometimes at the
/// limit.
fn short_str() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "\\PC{0,24}",
        1 => (240usize..=255).prop_map(|n| "n".repeat(n)),
        1 => (0usize..=63).prop_map(|n| "\u{1F600}".repeat(n)), // 4-byte chars: bytes, not chars, count
    ]
}

/// Header names: the contract's own (`x-status-code`, ...), reserved `x-`
/// names, trace context in any case, and anything else.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => short_str(),
        1 => "[a-z]{1,8}",
        1 => prop_oneof![
            Just(wire::STATUS_CODE_HEADER.to_owned()),
            Just(wire::STATUS_MESSAGE_HEADER.to_owned()),
            Just(wire::DEADLINE_HEADER.to_owned()),
        ],
        1 => "[xX]-\\PC{0,20}",
        1 => prop_oneof![any_case("traceparent"), any_case("tracestate"), any_case("baggage")],
        // Near misses that are *not* reserved or trace context.
        1 => prop_oneof![Just("x".to_owned()), Just("x_y".to_owned()), "[a-z]?traceparent[a-z]{1,2}"],
    ]
}

/// Strings that look like numbers, or almost.
fn numeric_str() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..=20).prop_map(|n| n.to_string()),
        (any::<i64>(), "[ \t]{0,2}", "[ \t]{0,2}").prop_map(|(n, a, b)| format!("{a}{n}{b}")),
        "[+-]?[0-9]{0,25}",
        "[0-9]{1,3}[.eE][0-9]",
    ]
}

/// Any AMQP value: every integer width, floats, decimals, short and long
/// strings (valid UTF-8 or not), byte arrays, timestamps, void, and nested
/// arrays and tables.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        short_str().prop_map(|s| AMQPValue::ShortString(s.into())),
        numeric_str().prop_map(|s| AMQPValue::ShortString(s.into())),
        any::<String>().prop_map(|s| AMQPValue::LongString(s.into())),
        numeric_str().prop_map(|s| AMQPValue::LongString(s.into())),
        collection::vec(any::<u8>(), 0..16).prop_map(|b| AMQPValue::LongString(b.into())),
        collection::vec(any::<u8>(), 0..16).prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ];
    let leaf = prop_oneof![1 => small_integer(), 4 => scalar];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..6).prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            collection::btree_map(header_name(), inner, 0..6).prop_map(|m| AMQPValue::FieldTable(table(m))),
        ]
    })
}

/// Integers around the gRPC code range (-2..=20), in every AMQP integer width
/// and as timestamps: full-range integers almost never land on a code.
fn small_integer() -> impl Strategy<Value = AMQPValue> {
    (-2i64..=20, 0usize..8).prop_map(|(n, width)| {
        let unsigned = u64::try_from(n).unwrap_or(0);
        match width {
            0 => AMQPValue::ShortShortInt(n.try_into().unwrap()),
            1 => AMQPValue::ShortShortUInt(unsigned.try_into().unwrap()),
            2 => AMQPValue::ShortInt(n.try_into().unwrap()),
            3 => AMQPValue::ShortUInt(unsigned.try_into().unwrap()),
            4 => AMQPValue::LongInt(n.try_into().unwrap()),
            5 => AMQPValue::LongUInt(unsigned.try_into().unwrap()),
            6 => AMQPValue::LongLongInt(n),
            _ => AMQPValue::Timestamp(unsigned),
        }
    })
}

fn table(entries: BTreeMap<String, AMQPValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(ShortString::from(name), value);
    }
    table
}

/// The entries of a header table as a worker might send it.
fn header_entries() -> impl Strategy<Value = BTreeMap<String, AMQPValue>> {
    collection::btree_map(header_name(), amqp_value(), 0..8)
}

/// Values for `x-status-code`: mostly near the code range, in any width or as
/// strings, sometimes anything at all.
fn status_value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        4 => small_integer(),
        1 => numeric_str().prop_map(|s| AMQPValue::ShortString(s.into())),
        1 => numeric_str().prop_map(|s| AMQPValue::LongString(s.into())),
        2 => amqp_value(),
    ]
}

/// A header table as a worker might send it.
fn header_table() -> impl Strategy<Value = FieldTable> {
    header_entries().prop_map(table)
}

/// The oracle's own reading of "a string header": a short string, or a long
/// string that is valid UTF-8.
fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        _ => None,
    }
}

fn starts_with_x_dash(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2 && (b[0] == b'x' || b[0] == b'X') && b[1] == b'-'
}

fn is_trace_name(name: &str) -> bool {
    TRACE_CONTEXT.contains(&name.to_ascii_lowercase().as_str())
}

proptest! {
    /// Whatever a worker sends, decoding its status never panics and always
    /// yields a gRPC code (0..=16); no `x-status-code` means OK.
    #[test]
    fn decode_status_is_total(mut headers in header_table(), code in proptest::option::of(status_value())) {
        if let Some(code) = code {
            headers.insert(wire::STATUS_CODE_HEADER.into(), code);
        }
        let (decoded, message) = wire::decode_status(Some(&headers));
        prop_assert!((0..=16).contains(&(decoded as i32)), "{decoded:?}");
        let inner = headers.inner();
        if !inner.contains_key(wire::STATUS_CODE_HEADER) {
            prop_assert_eq!(decoded, Code::Ok);
        }
        let expected = inner.get(wire::STATUS_MESSAGE_HEADER).and_then(as_string).unwrap_or_default();
        prop_assert_eq!(message, expected);
    }

    /// A code in range, in any integer width or as a decimal string, is read
    /// as that code; anything else as UNKNOWN.
    #[test]
    fn decode_status_reads_in_range_codes(code in status_value()) {
        let mut headers = FieldTable::default();
        headers.insert(wire::STATUS_CODE_HEADER.into(), code.clone());
        let expected = match oracle_integer(&code) {
            Some(n @ 0..=16) => Code::from_i32(n as i32),
            _ => Code::Unknown,
        };
        prop_assert_eq!(wire::decode_status(Some(&headers)).0, expected);
    }

    /// Every code survives `encode_status` then `decode_status`, with any
    /// message (OK is encoded as no headers, so its message is not kept).
    #[test]
    fn status_round_trips(code in 0i32..=16, message in any::<String>(), mut others in header_entries()) {
        let code = Code::from_i32(code);
        others.remove(wire::STATUS_CODE_HEADER);
        others.remove(wire::STATUS_MESSAGE_HEADER);
        let mut headers = table(others);
        let before = wire::application_headers(Some(&headers));
        wire::encode_status(&mut headers, code, &message);
        let expected = if code == Code::Ok { String::new() } else { message };
        prop_assert_eq!(wire::decode_status(Some(&headers)), (code, expected));
        // Encoding a status leaves the application headers alone.
        prop_assert_eq!(wire::application_headers(Some(&headers)), before);
    }

    /// Every integer width is read as its value.
    #[test]
    fn integer_reads_every_width(
        a in any::<i8>(), b in any::<u8>(), c in any::<i16>(), d in any::<u16>(),
        e in any::<i32>(), f in any::<u32>(), g in any::<i64>(), t in any::<u64>(),
    ) {
        prop_assert_eq!(wire::integer(&AMQPValue::ShortShortInt(a)), Some(i64::from(a)));
        prop_assert_eq!(wire::integer(&AMQPValue::ShortShortUInt(b)), Some(i64::from(b)));
        prop_assert_eq!(wire::integer(&AMQPValue::ShortInt(c)), Some(i64::from(c)));
        prop_assert_eq!(wire::integer(&AMQPValue::ShortUInt(d)), Some(i64::from(d)));
        prop_assert_eq!(wire::integer(&AMQPValue::LongInt(e)), Some(i64::from(e)));
        prop_assert_eq!(wire::integer(&AMQPValue::LongUInt(f)), Some(i64::from(f)));
        prop_assert_eq!(wire::integer(&AMQPValue::LongLongInt(g)), Some(g));
        prop_assert_eq!(wire::integer(&AMQPValue::Timestamp(t)), i64::try_from(t).ok());
    }

    /// Every i64 round-trips through its decimal string, short or long, with
    /// surrounding whitespace.
    #[test]
    fn integer_reads_decimal_strings(n in any::<i64>(), pad_left in "[ \t]{0,3}", pad_right in "[ \t]{0,3}") {
        let text = format!("{pad_left}{n}{pad_right}");
        prop_assert_eq!(wire::integer(&AMQPValue::ShortString(text.as_str().into())), Some(n));
        prop_assert_eq!(wire::integer(&AMQPValue::LongString(text.into())), Some(n));
    }

    /// `integer` never panics and agrees with the oracle on any value.
    #[test]
    fn integer_is_total(value in amqp_value()) {
        prop_assert_eq!(wire::integer(&value), oracle_integer(&value));
    }

    /// A deadline after 1970 survives the `x-deadline` header at millisecond
    /// precision (sub-millisecond parts are truncated, never rounded up).
    #[test]
    fn deadline_round_trips(millis in 0u64..=i64::MAX as u64, sub_ms_nanos in 0u32..1_000_000) {
        let whole = UNIX_EPOCH + Duration::from_millis(millis);
        let at = whole + Duration::from_nanos(u64::from(sub_ms_nanos));
        let mut headers = FieldTable::default();
        headers.insert(wire::DEADLINE_HEADER.into(), wire::encode_deadline(at));
        prop_assert_eq!(
            headers.inner().get(wire::DEADLINE_HEADER),
            Some(&AMQPValue::LongLongInt(i64::try_from(millis).unwrap()))
        );
        prop_assert_eq!(wire::decode_deadline(Some(&headers)), Some(whole));
    }

    /// Any `x-deadline` a worker or a foreign client sends decodes without
    /// panicking: numeric ones to a time at or after 1970, others to none.
    #[test]
    fn decode_deadline_is_total(mut headers in header_table(), value in amqp_value()) {
        prop_assert!(wire::decode_deadline(Some(&headers)).is_none_or(|t| t >= UNIX_EPOCH));
        headers.insert(wire::DEADLINE_HEADER.into(), value.clone());
        let decoded = wire::decode_deadline(Some(&headers));
        match oracle_integer(&value) {
            None => prop_assert_eq!(decoded, None),
            Some(ms) => {
                let ms = u64::try_from(ms).unwrap_or(0);
                prop_assert_eq!(decoded, Some(UNIX_EPOCH + Duration::from_millis(ms)));
            }
        }
    }

    /// Application headers are exactly the string headers that are neither
    /// reserved (`x-`/`X-`) nor trace context (any case).
    #[test]
    fn application_headers_filter(headers in header_table()) {
        let got = wire::application_headers(Some(&headers));
        for name in got.keys() {
            prop_assert!(!starts_with_x_dash(name), "{name:?}");
            prop_assert!(!is_trace_name(name), "{name:?}");
        }
        let expected: BTreeMap<String, String> = headers
            .inner()
            .iter()
            .filter(|(name, _)| !starts_with_x_dash(name.as_str()) && !is_trace_name(name.as_str()))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), as_string(value)?)))
            .collect();
        prop_assert_eq!(got, expected);
    }

    /// `expiration` is always whole milliseconds as a plain decimal string,
    /// never below 1.
    #[test]
    fn expiration_is_a_positive_decimal(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let remaining = Duration::new(secs, nanos);
        let text = wire::expiration(remaining);
        let text = text.as_str();
        prop_assert!(!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        prop_assert!(!text.starts_with('0'), "{text:?}");
        let value: u128 = text.parse().unwrap();
        prop_assert!(value >= 1);
        prop_assert_eq!(value, remaining.as_millis().max(1));
    }

    /// Small durations, where the clamp to 1 matters, get their own cases.
    #[test]
    fn expiration_of_short_durations(nanos in 0u64..5_000_000) {
        let text = wire::expiration(Duration::from_nanos(nanos));
        prop_assert_eq!(text.as_str(), (nanos / 1_000_000).max(1).to_string());
    }
}

/// The contract's reading of a numeric header, written from
/// `docs/amqp-contract.md`: any integer width, or a decimal string
/// (surrounding whitespace allowed).
fn oracle_integer(value: &AMQPValue) -> Option<i64> {
    let text = |s: &str| s.trim().parse::<i64>().ok();
    match value {
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::ShortString(s) => text(s.as_str()),
        AMQPValue::LongString(s) => text(std::str::from_utf8(s.as_bytes()).ok()?),
        _ => None,
    }
}

#[test]
fn absent_headers_mean_ok_and_nothing() {
    assert_eq!(wire::decode_status(None), (Code::Ok, String::new()));
    assert_eq!(wire::decode_deadline(None), None);
    assert!(wire::application_headers(None).is_empty());
}
