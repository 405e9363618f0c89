//! Fuzzes how the gateway reads a worker's reply headers.
//!
//! The bytes are an AMQP field table as it arrives on the wire, parsed by
//! lapin's own frame parser (`amq_protocol_types::parsing::parse_field_table`,
//! re-exported as `lapin::types::parsing`), then read the way the gateway's
//! reply router reads it: status, application headers, deadline. Workers are
//! written in any language, so every header is untrusted: none of this may
//! panic, and each result must stay inside the contract.

#![no_main]

use std::time::UNIX_EPOCH;

use amqp_gateway::wire;
use lapin::types::{FieldTable, parsing::parse_field_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As on the wire: a 4-byte length, then the entries.
    if let Ok((_, table)) = parse_field_table(data) {
        check(&table);
    }
    // The same bytes as the entries themselves, so the fuzzer need not guess
    // a matching length prefix to reach the decoders.
    let Ok(len) = u32::try_from(data.len()) else { return };
    let mut framed = Vec::with_capacity(data.len() + 4);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(data);
    if let Ok((_, table)) = parse_field_table(framed.as_slice()) {
        check(&table);
    }
});

fn check(table: &FieldTable) {
    let (code, _message) = wire::decode_status(Some(table));
    assert!((0..=16).contains(&(code as i32)), "status code out of range: {code:?}");

    for name in wire::application_headers(Some(table)).keys() {
        assert!(!wire::is_reserved(name) && !wire::is_trace_context(name), "leaked header {name:?}");
        let lower = name.to_ascii_lowercase();
        assert!(!lower.starts_with("x-"), "leaked reserved header {name:?}");
        assert!(!["traceparent", "tracestate", "baggage"].contains(&lower.as_str()), "leaked {name:?}");
    }

    if let Some(deadline) = wire::decode_deadline(Some(table)) {
        assert!(deadline >= UNIX_EPOCH);
    }

    for value in table.inner().values() {
        let _ = wire::integer(value);
        let _ = wire::string(value);
    }
}
