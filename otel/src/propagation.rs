//! Trace context carriers: W3C `traceparent`, `tracestate` and `baggage` in
//! AMQP message headers and in gRPC metadata.
//!
//! AMQP headers use the same names as the OpenTelemetry amqplib (Node.js) and
//! pika (Python) instrumentations, as AMQP long strings, so traces continue
//! across workers written in any of them, in both directions.

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::{
    Context, global,
    propagation::{Extractor, Injector},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes trace context into AMQP headers.
#[derive(Debug)]
pub struct AmqpInjector<'a>(pub &'a mut FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` or `baggage` says nothing: leave it out.
        if !value.is_empty() {
            self.0.insert(key.into(), long_string(value));
        }
    }
}

/// Reads trace context from AMQP headers (long or short strings).
#[derive(Debug)]
pub struct AmqpExtractor<'a>(pub Option<&'a FieldTable>);

impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|t| t.inner().keys().map(|k| k.as_str()).collect()).unwrap_or_default()
    }
}

/// A header value as the instrumentations write it: an AMQP long string.
/// (The contract crate's `wire` module says the same for every string header;
/// this crate keeps its own two lines so telemetry depends on nothing of ours.)
fn long_string(value: String) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Reads trace context from HTTP/2 headers (gRPC metadata).
#[derive(Debug)]
pub struct HttpExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Injects the context of `span` into AMQP `headers`.
pub fn inject_amqp(span: &tracing::Span, headers: &mut FieldTable) {
    let context = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut AmqpInjector(headers)));
}

/// The trace context carried by AMQP `headers` (empty if none).
pub fn extract_amqp(headers: Option<&FieldTable>) -> Context {
    global::get_text_map_propagator(|p| p.extract(&AmqpExtractor(headers)))
}

/// The trace context carried by gRPC metadata (empty if none).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HttpExtractor(headers)))
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;
    use opentelemetry::{
        propagation::{TextMapCompositePropagator, TextMapPropagator},
        trace::TraceContextExt,
    };
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn propagator() -> TextMapCompositePropagator {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    }

    #[test]
    fn round_trips_through_amqp_headers_as_long_strings() {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::ShortString(TRACEPARENT.into()));
        headers.insert("baggage".into(), long_string("tenant=acme".into()));
        let context = propagator().extract(&AmqpExtractor(Some(&headers)));
        assert_eq!(context.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");

        let mut out = FieldTable::default();
        propagator().inject_context(&context, &mut AmqpInjector(&mut out));
        assert_eq!(out.inner().get("traceparent"), Some(&long_string(TRACEPARENT.into())));
        assert_eq!(out.inner().get("baggage"), Some(&long_string("tenant=acme".into())));
    }

    #[test]
    fn reads_grpc_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        let context = propagator().extract(&HttpExtractor(&headers));
        assert!(context.span().span_context().is_remote());
        assert_eq!(context.span().span_context().span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn missing_or_malformed_context_is_empty() {
        assert!(!propagator().extract(&AmqpExtractor(None)).span().span_context().is_valid());
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), long_string("garbage".into()));
        assert!(!propagator().extract(&AmqpExtractor(Some(&headers))).span().span_context().is_valid());
    }
}
