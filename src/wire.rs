//! The AMQP wire format between the gateway and its workers.
//!
//! Both sides encode and decode through this module, so the contract in
//! `docs/amqp-contract.md` has exactly one implementation in Rust. Workers
//! in other languages implement the same rules by hand, which is why decoding is
//! lenient where real clients differ: amqplib sends small integers as one byte,
//! some clients send numbers as decimal strings.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Consumer,
    options::BasicConsumeOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tonic::Code;

/// RabbitMQ's Direct Reply-to pseudo-queue: requests name it as `reply_to`,
/// and the publishing channel consumes it (no-ack) to receive the replies.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Starts consuming [`DIRECT_REPLY_TO`] on `channel`, as RabbitMQ requires
/// before the channel publishes a request naming it (no-ack mode). The
/// gateway does this on each publisher channel; `loadgen --mode raw-amqp`
/// does the same, so its baseline receives replies the same way.
pub async fn consume_replies(channel: &Channel) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
}

/// Absolute deadline of a request, Unix epoch milliseconds, as a signed 64-bit
/// integer (`AMQPValue::LongLongInt`).
pub const DEADLINE_HEADER: &str = "x-deadline";
/// gRPC status code of a reply; absent means OK.
pub const STATUS_CODE_HEADER: &str = "x-status-code";
/// Human-readable status message of a reply.
pub const STATUS_MESSAGE_HEADER: &str = "x-status-message";
/// Set by this project's AMQP clients (gateway and worker library) on a
/// delivery whose content header could not be parsed safely (headers nested
/// too deep, malformed, or a property that is not UTF-8): the headers table
/// is replaced by this one entry, a long string saying why. The worker
/// answers such a request `INVALID_ARGUMENT`; the gateway fails the call
/// such a reply answers.
pub const HEADERS_REJECTED: &str = "x-headers-rejected";
/// W3C Trace Context parent, as the OpenTelemetry amqplib and pika
/// instrumentations name it.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// W3C Trace Context vendor state.
pub const TRACESTATE_HEADER: &str = "tracestate";
/// W3C Baggage.
pub const BAGGAGE_HEADER: &str = "baggage";

/// Set on requests of a typed method (a user's protobuf service served with
/// `--service`): the method's full name, `package.Service/Method` (for
/// example `orders.v1.Orders/Create`), as an AMQP long string. Absent on
/// `gateway.v1.Gateway/Process` requests. A worker serving several methods
/// on one queue can dispatch on it; the AMQP `type` property carries the
/// request message's full name beside it.
pub const METHOD_HEADER: &str = "x-grpc-method";

/// Content type of a typed method's request and reply in passthrough: the
/// message's protobuf encoding, byte for byte as the caller sent it.
pub const PROTOBUF: &str = "application/x-protobuf";

/// Content type of a typed method's request and reply when the gateway
/// transcodes (`--transcode-json`): canonical proto3 JSON.
pub const JSON: &str = "application/json";

/// Longest AMQP short string, in bytes: routing keys, queue names,
/// correlation ids, header names.
pub const SHORT_STRING_MAX: usize = 255;

/// Header names starting with this prefix belong to the gateway; callers may not
/// set them and they are never copied into a `ProcessResponse`.
pub const RESERVED_PREFIX: &str = "x-";

/// Content type the gateway's built-in error replies use.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// True for header names reserved for the gateway (`x-...`, any case).
pub fn is_reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name.as_bytes()[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

/// True for the trace-context header names, which travel in gRPC metadata and
/// are set by the gateway's propagator, never from a caller's header map.
pub fn is_trace_context(name: &str) -> bool {
    [TRACEPARENT_HEADER, TRACESTATE_HEADER, BAGGAGE_HEADER].iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Why a delivery's headers were rejected on arrival, if they were (see
/// [`HEADERS_REJECTED`]).
pub fn headers_rejected(headers: Option<&FieldTable>) -> Option<&str> {
    headers?.inner().get(HEADERS_REJECTED).map(|value| string(value).unwrap_or("headers rejected"))
}

/// Encodes an absolute deadline for the `x-deadline` header.
pub fn encode_deadline(deadline: SystemTime) -> AMQPValue {
    let millis = match deadline.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        // A deadline before 1970 is a clock problem; it has passed either way.
        Err(_) => 0,
    };
    AMQPValue::LongLongInt(millis)
}

/// Reads the `x-deadline` header, if present and numeric.
pub fn decode_deadline(headers: Option<&FieldTable>) -> Option<SystemTime> {
    let millis = integer(headers?.inner().get(DEADLINE_HEADER)?)?;
    let millis = u64::try_from(millis).unwrap_or(0);
    Some(UNIX_EPOCH + Duration::from_millis(millis))
}

/// The AMQP `expiration` property for a request with `remaining` time left:
/// whole milliseconds as a decimal string, at least 1 (`"0"` would ask the
/// broker to drop the message unless a consumer is waiting at that instant).
pub fn expiration(remaining: Duration) -> ShortString {
    remaining.as_millis().max(1).to_string().into()
}

/// The properties of a request, as the contract defines them: `id` as
/// correlation id and message id, replies to Direct Reply-to, the publish
/// time as `timestamp`, `remaining` as both `expiration` and the absolute
/// `x-deadline` header (added to `headers`, which hold the caller's headers
/// and the trace context), and `content_type` when there is one.
///
/// The gateway publishes exactly this; `loadgen --mode raw-amqp` does too, so
/// its baseline cannot drift from what the gateway sends.
pub fn request_properties(
    id: ShortString,
    mut headers: FieldTable,
    remaining: Duration,
    content_type: Option<ShortString>,
) -> BasicProperties {
    let now = SystemTime::now();
    headers.insert(DEADLINE_HEADER.into(), encode_deadline(now + remaining));
    let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let properties = BasicProperties::default()
        .with_correlation_id(id.clone())
        .with_message_id(id)
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_timestamp(timestamp)
        .with_expiration(expiration(remaining))
        .with_headers(headers);
    match content_type {
        Some(content_type) => properties.with_content_type(content_type),
        None => properties,
    }
}

/// Reads a numeric header value of any AMQP integer width, or a decimal string.
pub fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a string header value (short or long string, valid UTF-8).
pub fn string(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Encodes a string header value as an AMQP long string.
pub fn long_string(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// The status a reply carries: `x-status-code` and `x-status-message`.
///
/// No code means OK. Any integer width and decimal strings are accepted; a
/// value outside the gRPC range 0..=16, or one that is not a number at all,
/// becomes UNKNOWN.
pub fn decode_status(headers: Option<&FieldTable>) -> (Code, String) {
    let Some(headers) = headers.map(FieldTable::inner) else {
        return (Code::Ok, String::new());
    };
    let code = match headers.get(STATUS_CODE_HEADER) {
        None => Code::Ok,
        Some(value) => match integer(value).and_then(|v| i32::try_from(v).ok()) {
            Some(code) => Code::from_i32(code),
            None => Code::Unknown,
        },
    };
    let message = headers.get(STATUS_MESSAGE_HEADER).and_then(string).unwrap_or_default().to_owned();
    (code, message)
}

/// Adds `x-status-code` (and `x-status-message` when not empty) to a reply's
/// headers. OK is encoded by leaving both out, as the contract allows.
pub fn encode_status(headers: &mut FieldTable, code: Code, message: &str) {
    if code == Code::Ok {
        return;
    }
    headers.insert(STATUS_CODE_HEADER.into(), AMQPValue::ShortShortUInt(code as u8));
    if !message.is_empty() {
        headers.insert(STATUS_MESSAGE_HEADER.into(), long_string(message));
    }
}

/// The canonical name of a gRPC status code, as the gRPC spec and other
/// gRPC metrics spell it: for metric labels and span attributes.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The application headers of a message: its string-valued headers, without
/// reserved `x-` names and without trace context. Other value types are left
/// out rather than guessed at.
pub fn application_headers(headers: Option<&FieldTable>) -> BTreeMap<String, String> {
    let Some(headers) = headers else {
        return BTreeMap::new();
    };
    headers
        .inner()
        .iter()
        .filter(|(name, _)| !is_reserved(name.as_str()) && !is_trace_context(name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), string(value)?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn request_properties_follow_the_contract() {
        let p = request_properties("id-1".into(), FieldTable::default(), Duration::from_millis(1500), None);
        assert_eq!(p.correlation_id().as_ref().map(ShortString::as_str), Some("id-1"));
        assert_eq!(p.message_id().as_ref().map(ShortString::as_str), Some("id-1"));
        assert_eq!(p.reply_to().as_ref().map(ShortString::as_str), Some(DIRECT_REPLY_TO));
        assert_eq!(p.expiration().as_ref().map(ShortString::as_str), Some("1500"));
        assert!(p.timestamp().is_some());
        assert!(p.content_type().is_none());
        let deadline = decode_deadline(p.headers().as_ref()).unwrap();
        assert!(deadline > SystemTime::now() + Duration::from_secs(1));
    }

    #[test]
    fn status_absent_is_ok() {
        assert_eq!(decode_status(None), (Code::Ok, String::new()));
        assert_eq!(decode_status(Some(&FieldTable::default())).0, Code::Ok);
    }

    #[test]
    fn status_accepts_every_integer_width_and_strings() {
        let values = [
            AMQPValue::ShortShortInt(5),
            AMQPValue::ShortShortUInt(5),
            AMQPValue::ShortInt(5),
            AMQPValue::ShortUInt(5),
            AMQPValue::LongInt(5),
            AMQPValue::LongUInt(5),
            AMQPValue::LongLongInt(5),
            long_string("5"),
            AMQPValue::ShortString(" 5 ".into()),
        ];
        for v in values {
            let t = table(&[(STATUS_CODE_HEADER, v.clone()), (STATUS_MESSAGE_HEADER, long_string("gone"))]);
            assert_eq!(decode_status(Some(&t)), (Code::NotFound, "gone".into()), "{v:?}");
        }
    }

    #[test]
    fn status_out_of_range_or_garbage_is_unknown() {
        for v in [
            AMQPValue::LongInt(17),
            AMQPValue::LongInt(-1),
            AMQPValue::LongLongInt(i64::MAX),
            long_string("not a number"),
            AMQPValue::Boolean(true),
        ] {
            let t = table(&[(STATUS_CODE_HEADER, v.clone())]);
            assert_eq!(decode_status(Some(&t)).0, Code::Unknown, "{v:?}");
        }
    }

    #[test]
    fn status_round_trips() {
        for code in 0..=16 {
            let code = Code::from_i32(code);
            let mut t = FieldTable::default();
            encode_status(&mut t, code, "why");
            let expected = if code == Code::Ok { String::new() } else { "why".into() };
            assert_eq!(decode_status(Some(&t)), (code, expected));
        }
    }

    #[test]
    fn deadline_round_trips_at_millisecond_precision() {
        let at = UNIX_EPOCH + Duration::from_millis(1_750_000_000_123);
        let t = table(&[(DEADLINE_HEADER, encode_deadline(at))]);
        assert_eq!(t.inner().get(DEADLINE_HEADER), Some(&AMQPValue::LongLongInt(1_750_000_000_123)));
        assert_eq!(decode_deadline(Some(&t)), Some(at));
        assert_eq!(decode_deadline(Some(&FieldTable::default())), None);
        let negative = table(&[(DEADLINE_HEADER, AMQPValue::LongLongInt(-5))]);
        assert_eq!(decode_deadline(Some(&negative)), Some(UNIX_EPOCH));
    }

    #[test]
    fn expiration_is_whole_milliseconds_never_zero() {
        assert_eq!(expiration(Duration::from_millis(1500)).as_str(), "1500");
        assert_eq!(expiration(Duration::from_micros(1999)).as_str(), "1");
        assert_eq!(expiration(Duration::ZERO).as_str(), "1");
    }

    #[test]
    fn reserved_and_trace_names() {
        assert!(is_reserved("x-deadline"));
        assert!(is_reserved("X-Anything"));
        assert!(!is_reserved("x"));
        assert!(!is_reserved("tenant"));
        assert!(is_trace_context("traceparent"));
        assert!(is_trace_context("Baggage"));
        assert!(!is_trace_context("trace"));
    }

    #[test]
    fn application_headers_keep_only_strings_and_skip_reserved() {
        let t = table(&[
            ("tenant", long_string("acme")),
            ("short", AMQPValue::ShortString("s".into())),
            ("count", AMQPValue::LongInt(3)),
            (STATUS_CODE_HEADER, AMQPValue::LongInt(3)),
            ("x-custom", long_string("hidden")),
            (TRACEPARENT_HEADER, long_string("00-abc")),
        ]);
        let headers = application_headers(Some(&t));
        assert_eq!(
            headers.into_iter().collect::<Vec<_>>(),
            vec![("short".into(), "s".into()), ("tenant".into(), "acme".into())]
        );
    }
}
