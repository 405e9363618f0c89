//! W3C Trace Context without OpenTelemetry spans, for a process that makes
//! spans only for what it exports ([`crate::Spans::WhenExported`]: the
//! gateway).
//!
//! Building an OpenTelemetry span costs a call far more than the call's own
//! logic: span builders, attribute strings, per-span bookkeeping. When
//! nothing is exported none of that is needed to keep a trace whole; what the
//! next hop needs is one `traceparent` header. [`TracePolicy::start`] decides,
//! once per call and before any span exists, whether the call is traced
//! (exported and sampled): then it gets its spans as before. Otherwise it
//! gets a [`Lean`] context: the caller's trace continued, or a new trace
//! with fresh ids and the sampling decision `OTEL_TRACES_SAMPLER` asks for,
//! written into the request's headers as text.
//!
//! A lean call is transparent in the trace: the worker's span becomes a
//! child of the caller's span, as if the gateway were not there.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// `traceparent`, `tracestate` and `baggage`: the W3C names, in gRPC
/// metadata and AMQP headers alike.
pub const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// See [`TRACEPARENT`].
pub const BAGGAGE: &str = "baggage";

/// A parsed `traceparent`: trace id, parent span id and the sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span the next hop is a child of.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled (flag `01`).
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value as the W3C recommendation says: version
    /// `00` is exactly 55 characters; a later version may append fields
    /// after a `-`; version `ff`, ids of all zeros and upper-case hex are
    /// invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        let mut trace_id = [0; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The header value, version `00`.
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }
}

/// One lower-case hex byte.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// Appends `bytes` as lower-case hex. By hand rather than with `write!`:
/// the formatting machinery, once per byte, cost a lean call more than all
/// the rest of its tracing.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// The sampling decision `OTEL_TRACES_SAMPLER` (and `_ARG`) asks for, made
/// as the OpenTelemetry SDK makes it, so that a trace id gets the same
/// decision here and in any SDK.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Follow the caller's sampled flag when there is a caller.
    parent_based: bool,
    /// The decision for a new trace (and for every trace, when not
    /// parent-based).
    root: Root,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Root {
    On,
    Off,
    /// Sampled when the trace id's lower 63 bits fall below this bound.
    Ratio(u64),
}

impl Default for Sampler {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Self { parent_based: true, root: Root::On }
    }
}

impl Sampler {
    /// From the values of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    /// Unknown samplers fall back to the default; a missing or invalid ratio
    /// is 1.0, as in the SDK.
    pub fn from_env(sampler: Option<&str>, arg: Option<&str>) -> Self {
        let ratio = || {
            let ratio = arg.and_then(|a| a.trim().parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r));
            ratio_root(ratio.unwrap_or(1.0))
        };
        let (parent_based, root) = match sampler.map(str::trim).unwrap_or_default() {
            "always_on" => (false, Root::On),
            "always_off" => (false, Root::Off),
            "traceidratio" => (false, ratio()),
            "parentbased_always_off" => (true, Root::Off),
            "parentbased_traceidratio" => (true, ratio()),
            _ => (true, Root::On),
        };
        Self { parent_based, root }
    }

    /// Whether a call in `trace_id`, continuing `parent` if any, is sampled.
    pub fn sampled(&self, parent: Option<&TraceParent>, trace_id: &[u8; 16]) -> bool {
        if let (true, Some(parent)) = (self.parent_based, parent) {
            return parent.sampled;
        }
        match self.root {
            Root::On => true,
            Root::Off => false,
            Root::Ratio(bound) => {
                let mut low = [0; 8];
                low.copy_from_slice(&trace_id[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

/// The SDK's `TraceIdRatioBased` bound for `ratio`.
fn ratio_root(ratio: f64) -> Root {
    if ratio >= 1.0 {
        return Root::On;
    }
    // The same arithmetic as the SDK, casts included.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    Root::Ratio(bound)
}

/// How a process traces its calls: whether spans are exported, and the
/// sampling decision. From [`crate::Guard::policy`]; [`TracePolicy::default`]
/// (nothing exported) where no telemetry was set up, as in tests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TracePolicy {
    exporting: bool,
    sampler: Sampler,
}

/// How one call is traced.
#[derive(Clone, Debug, PartialEq)]
pub enum CallTrace {
    /// Exported and sampled: the call makes its spans, which carry its
    /// context.
    Spans,
    /// No spans: the call passes this context on.
    Lean(Lean),
}

impl TracePolicy {
    /// A policy exporting spans (or not), sampling with `sampler`.
    pub fn new(exporting: bool, sampler: Sampler) -> Self {
        Self { exporting, sampler }
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// How the call that arrived with `headers` (gRPC metadata) is traced:
    /// its caller's `traceparent` continued, or a new trace.
    pub fn start(&self, headers: &http::HeaderMap) -> CallTrace {
        let header = |name: &str| headers.get(name).filter(|v| !v.is_empty());
        let parent = header(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
        let trace_id = match &parent {
            Some(parent) => parent.trace_id,
            None => random_nonzero(),
        };
        let sampled = self.sampler.sampled(parent.as_ref(), &trace_id);
        if self.exporting && sampled {
            return CallTrace::Spans;
        }
        let traceparent = match parent {
            // Passed on as it came, but for the sampling decision (the same
            // as the caller's unless the sampler ignores parents).
            Some(parent) => TraceParent { sampled, ..parent },
            None => TraceParent { trace_id, span_id: random_nonzero(), sampled },
        };
        // tracestate belongs to a valid traceparent only.
        let tracestate = parent.and(header(TRACESTATE)).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let baggage = header(BAGGAGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        CallTrace::Lean(Lean { traceparent, tracestate, baggage })
    }
}

/// A call's trace context without spans: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lean {
    /// What the next hop continues.
    pub traceparent: TraceParent,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
    /// The caller's `baggage`, passed on unchanged.
    pub baggage: Option<String>,
}

impl Lean {
    /// Writes the context into AMQP `headers`, as long strings.
    pub fn inject_amqp(&self, headers: &mut FieldTable) {
        let mut set = |name: &str, value: String| {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        };
        set(TRACEPARENT, self.traceparent.to_header());
        if let Some(state) = &self.tracestate {
            set(TRACESTATE, state.clone());
        }
        if let Some(baggage) = &self.baggage {
            set(BAGGAGE, baggage.clone());
        }
    }
}

/// Random bytes, not all zero (an id of zeros is invalid).
fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanKind, TraceId};
    use opentelemetry_sdk::trace::{Sampler as SdkSampler, SamplingDecision, ShouldSample};

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn traceparent_parses_and_formats_as_the_recommendation_says() {
        let parsed = TraceParent::parse(VALID).unwrap();
        assert_eq!(parsed.to_header(), VALID);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!TraceParent::parse(&VALID.replace("-01", "-00")).unwrap().sampled);
        // A later version may carry more fields; version 00 may not.
        assert!(TraceParent::parse(&format!("{}-extra", VALID.replacen("00", "01", 1))).is_some());
        for bad in [
            "",
            &format!("{VALID}-extra"),
            &VALID.replacen("00", "ff", 1),
            &VALID.to_uppercase(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sampler_from_the_environment() {
        let parent = |sampled| TraceParent { trace_id: [1; 16], span_id: [1; 8], sampled };
        let default = Sampler::from_env(None, None);
        assert_eq!(default, Sampler::default());
        assert!(default.sampled(None, &[7; 16]));
        assert!(!default.sampled(Some(&parent(false)), &[7; 16]), "parent-based: the caller decides");
        let off = Sampler::from_env(Some("always_off"), None);
        assert!(!off.sampled(Some(&parent(true)), &[7; 16]));
        let on = Sampler::from_env(Some("always_on"), None);
        assert!(on.sampled(Some(&parent(false)), &[7; 16]), "not parent-based");
        assert!(!Sampler::from_env(Some("parentbased_always_off"), None).sampled(None, &[7; 16]));
        assert_eq!(Sampler::from_env(Some("traceidratio"), Some("oops")), on, "an invalid ratio is 1.0");
        assert_eq!(Sampler::from_env(Some("jaeger_remote"), None), default);
    }

    /// The ratio decision is the SDK's, trace id for trace id.
    #[test]
    fn ratio_sampling_agrees_with_the_sdk() {
        for ratio in [0.0, 0.001, 0.25, 0.5, 0.9] {
            let ours = Sampler::from_env(Some("traceidratio"), Some(&ratio.to_string()));
            let sdk = SdkSampler::TraceIdRatioBased(ratio);
            let mut kept: u32 = 0;
            for _ in 0..2000 {
                let trace_id: [u8; 16] = random_nonzero();
                let decision = sdk
                    .should_sample(None, TraceId::from_bytes(trace_id), "call", &SpanKind::Server, &[], &[])
                    .decision;
                let sdk_sampled = decision == SamplingDecision::RecordAndSample;
                assert_eq!(ours.sampled(None, &trace_id), sdk_sampled, "ratio {ratio}, {trace_id:?}");
                kept += u32::from(sdk_sampled);
            }
            let expected = ratio * 2000.0;
            assert!((f64::from(kept) - expected).abs() < 120.0, "ratio {ratio}: {kept} of 2000");
        }
    }

    #[test]
    fn a_call_continues_its_caller_or_starts_a_trace() {
        let lean = |policy: TracePolicy, headers: &http::HeaderMap| match policy.start(headers) {
            CallTrace::Lean(lean) => lean,
            CallTrace::Spans => panic!("expected a lean call"),
        };
        let off = TracePolicy::default();
        let continued = lean(off, &headers(&[(TRACEPARENT, VALID), (TRACESTATE, "k=v"), (BAGGAGE, "tenant=acme")]));
        assert_eq!(continued.traceparent.to_header(), VALID, "transparent: the caller's span is the parent");
        assert_eq!((continued.tracestate.as_deref(), continued.baggage.as_deref()), (Some("k=v"), Some("tenant=acme")));

        let started = lean(off, &headers(&[(TRACEPARENT, "garbage"), (TRACESTATE, "k=v")]));
        assert_ne!(started.traceparent.trace_id, [0; 16]);
        assert!(started.traceparent.sampled, "parentbased_always_on samples new traces");
        assert_eq!(started.tracestate, None, "no tracestate without a valid traceparent");
        let again = lean(off, &headers(&[]));
        assert_ne!(again.traceparent.trace_id, started.traceparent.trace_id, "fresh ids per call");

        let mut amqp = FieldTable::default();
        continued.inject_amqp(&mut amqp);
        assert_eq!(amqp.inner().get(TRACEPARENT), Some(&AMQPValue::LongString(VALID.into())));
        assert_eq!(amqp.inner().get(BAGGAGE), Some(&AMQPValue::LongString("tenant=acme".into())));

        let exporting = TracePolicy::new(true, Sampler::default());
        assert_eq!(exporting.start(&headers(&[(TRACEPARENT, VALID)])), CallTrace::Spans);
        let unsampled = VALID.replace("-01", "-00");
        let skipped = lean(exporting, &headers(&[(TRACEPARENT, &unsampled)]));
        assert_eq!(skipped.traceparent.to_header(), unsampled, "unsampled calls stay lean when exporting");
        let ratio = TracePolicy::new(true, Sampler::from_env(Some("traceidratio"), Some("0")));
        assert!(!lean(ratio, &headers(&[])).traceparent.sampled);
    }
}
