//! The frame guard: checks every frame the broker sends before lapin parses
//! it, and rewrites the ones lapin would choke on.
//!
//! Why: lapin (through amq-protocol-types) parses field tables and arrays
//! recursively with no depth bound, on its own I/O thread with the standard
//! library's default stack. A message whose headers nest a few thousand
//! levels deep overflows that stack and aborts the whole process; anyone who
//! may publish to a worker's queue, or who learns a gateway's reply-to
//! address, can do it with one message. Other malformed content headers
//! (a field name or short-string property that is not UTF-8, an unknown
//! field type, a truncated table) make lapin close the connection instead;
//! the message is then redelivered to the next consumer, which fails the same
//! way, for ever.
//!
//! The same goes for the exchange and routing key of a delivery
//! (`basic.deliver`, `basic.return`, `basic.get-ok`): lapin requires them to
//! be UTF-8, RabbitMQ passes whatever a publisher chose through topic and
//! fanout exchanges, so one message with a routing key of `0xff` wedges every
//! consumer of a queue bound there. Such keys are replaced by their lossy
//! UTF-8 form (U+FFFD for each bad sequence), and the message is delivered.
//!
//! The guard walks each content header without recursion (an explicit stack
//! of end offsets), so its own cost is bounded by the frame's size whatever
//! the nesting. A header that lapin could not safely parse is rewritten: the
//! properties that are fine are kept (so `reply_to` and `correlation_id`
//! still lead to the caller), the bad ones are dropped, and the headers table
//! is replaced by one entry, [`HEADERS_REJECTED`](crate::wire::HEADERS_REJECTED),
//! saying why. The worker answers such a request `INVALID_ARGUMENT` (or
//! rejects it when it cannot answer); the gateway fails the call the reply
//! belongs to. Nothing deeper than [`MAX_DEPTH`] ever reaches lapin.
//!
//! This module is pure: [`check_frame`] looks at one whole frame. The stream
//! that cuts the byte stream into frames is in [`super::transport`].

use std::borrow::Cow;

use crate::wire::HEADERS_REJECTED;

/// Deepest nesting of tables and arrays let through, counting the headers
/// table itself as 1. Real headers nest 4 deep at most (RabbitMQ's `x-death`:
/// a table holding an array of tables holding arrays); 64 levels cost lapin's
/// recursive parser well under 1 MiB of its 2 MiB stack even in a debug build
/// (tested at exactly this depth).
pub const MAX_DEPTH: usize = 64;

/// Frame type of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame-end octet that closes every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of a frame's header: type (1), channel (2), payload size (4).
pub const FRAME_HEADER_LEN: usize = 7;

/// The `basic` class, whose content headers carry the message properties.
const CLASS_BASIC: u16 = 60;

/// Property flag bits of `basic` content headers, most significant first, as
/// AMQP 0-9-1 and lapin order them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Property {
    ShortString(&'static str),
    Table,
    Octet,
    Timestamp,
}

const PROPERTIES: [Property; 14] = [
    Property::ShortString("content_type"),
    Property::ShortString("content_encoding"),
    Property::Table,
    Property::Octet,
    Property::Octet,
    Property::ShortString("correlation_id"),
    Property::ShortString("reply_to"),
    Property::ShortString("expiration"),
    Property::ShortString("message_id"),
    Property::Timestamp,
    Property::ShortString("type"),
    Property::ShortString("user_id"),
    Property::ShortString("app_id"),
    Property::ShortString("cluster_id"),
];

/// Bit of property `index` (0 = content_type) in the flags word.
const fn flag(index: usize) -> u16 {
    1 << (15 - index)
}

/// Bit of the headers table.
const HEADERS_FLAG: u16 = flag(2);

/// What [`check_frame`] decided about a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the frame on unchanged.
    Pass,
    /// Pass these bytes on instead: a whole frame, re-encoded.
    Rewrite {
        /// The new frame.
        frame: Vec<u8>,
        /// Why it was rewritten (for the log and the rejected-headers entry).
        reason: Cow<'static, str>,
    },
}

/// Checks one whole frame (`frame[..7]` its header, then the payload and the
/// frame-end octet). Only `basic` content headers are looked into; everything
/// else passes.
pub fn check_frame(frame: &[u8]) -> Verdict {
    if frame.len() < FRAME_HEADER_LEN + 1 {
        return Verdict::Pass;
    }
    let payload = &frame[FRAME_HEADER_LEN..frame.len() - 1];
    let checked = match frame[0] {
        FRAME_HEADER => check_content_header(payload),
        FRAME_METHOD => check_delivery_method(payload),
        _ => None,
    };
    match checked {
        None => Verdict::Pass,
        Some((payload, reason)) => {
            let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len() + 1);
            out.extend_from_slice(&frame[..3]);
            out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&payload);
            out.push(FRAME_END);
            Verdict::Rewrite { frame: out, reason }
        }
    }
}

/// Whether the frame of type `kind` is one [`check_frame`] may rewrite, so
/// the stream must hold it whole before passing it on.
pub fn is_checked(kind: u8) -> bool {
    kind == FRAME_HEADER || kind == FRAME_METHOD
}

/// A field of a method's argument list, as far as the check needs to know.
#[derive(Clone, Copy)]
enum Field {
    /// A short string: lapin requires UTF-8.
    Short,
    /// So many bytes of something else.
    Fixed(usize),
}

/// The `basic` methods that carry a message: their exchange and routing key
/// are whatever the publisher chose, and RabbitMQ passes non-UTF-8 routing
/// keys through topic and fanout exchanges unchanged.
fn delivery_fields(method: u16) -> Option<&'static [Field]> {
    use Field::{Fixed, Short};
    match method {
        // basic.return: reply-code, reply-text, exchange, routing-key.
        50 => Some(&[Fixed(2), Short, Short, Short]),
        // basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key.
        60 => Some(&[Short, Fixed(8), Fixed(1), Short, Short]),
        // basic.get-ok: delivery-tag, redelivered, exchange, routing-key, message-count.
        71 => Some(&[Fixed(8), Fixed(1), Short, Short, Fixed(4)]),
        _ => None,
    }
}

/// Checks a method frame's payload; `None` when lapin can parse it, else the
/// method re-encoded with every short string that is not UTF-8 replaced by
/// its lossy UTF-8 form (cut to 255 bytes), and why. Structural problems are
/// left to lapin, which closes the connection on them as it always did.
fn check_delivery_method(payload: &[u8]) -> Option<(Vec<u8>, Cow<'static, str>)> {
    let ids = payload.get(..4)?;
    if u16::from_be_bytes([ids[0], ids[1]]) != CLASS_BASIC {
        return None;
    }
    let fields = delivery_fields(u16::from_be_bytes([ids[2], ids[3]]))?;
    // First pass: find the spans; most frames stop here.
    let mut spans = Vec::with_capacity(fields.len());
    let mut pos = 4;
    let mut bad = false;
    for field in fields {
        let end = match field {
            Field::Fixed(n) => pos + n,
            Field::Short => pos + 1 + usize::from(*payload.get(pos)?),
        };
        let bytes = payload.get(pos..end)?;
        if matches!(field, Field::Short) && std::str::from_utf8(&bytes[1..]).is_err() {
            bad = true;
        }
        spans.push((*field, pos..end));
        pos = end;
    }
    if !bad {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(ids);
    for (field, range) in spans {
        let bytes = &payload[range];
        match field {
            Field::Short if std::str::from_utf8(&bytes[1..]).is_err() => {
                let lossy = String::from_utf8_lossy(&bytes[1..]);
                let mut cut = lossy.len().min(crate::wire::SHORT_STRING_MAX);
                while !lossy.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push(u8::try_from(cut).unwrap_or(u8::MAX));
                out.extend_from_slice(&lossy.as_bytes()[..cut]);
            }
            _ => out.extend_from_slice(bytes),
        }
    }
    out.extend_from_slice(&payload[pos..]);
    Some((out, "exchange or routing key is not UTF-8".into()))
}

/// Checks a content header's payload; `None` when lapin can parse it safely,
/// else the rewritten payload and why.
fn check_content_header(payload: &[u8]) -> Option<(Vec<u8>, Cow<'static, str>)> {
    // class-id (2), weight (2), body size (8), property flags (2).
    let fixed = payload.get(..14)?;
    if u16::from_be_bytes([fixed[0], fixed[1]]) != CLASS_BASIC {
        return None;
    }
    let flags = u16::from_be_bytes([fixed[12], fixed[13]]);
    let mut problem: Option<Cow<'static, str>> = None;
    if flags & 0b11 != 0 {
        // Bit 0 would announce a second flags word, bit 1 is unassigned:
        // lapin reads neither and would fail on what follows.
        problem = Some("unknown property flags".into());
    }
    // Walk the properties, remembering each one's bytes so the good ones can
    // be copied into a rewrite.
    let mut spans: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut pos = 14;
    for (index, property) in PROPERTIES.iter().enumerate() {
        if flags & flag(index) == 0 {
            continue;
        }
        let Some(end) = property_end(payload, pos, *property) else {
            // The rest cannot be delimited: drop it.
            problem.get_or_insert("properties truncated".into());
            pos = payload.len();
            break;
        };
        match check_property(&payload[pos..end], *property) {
            Ok(()) => spans.push((index, pos..end)),
            Err(reason) => {
                problem.get_or_insert(reason);
            }
        }
        pos = end;
    }
    if problem.is_none() && pos != payload.len() {
        problem = Some("trailing bytes after the properties".into());
    }
    let reason = problem?;

    // Rebuild: fixed part, the properties that checked out, and the headers
    // table replaced by the one rejected-headers entry.
    let table = rejected_table(&reason);
    let mut out = Vec::with_capacity(14 + payload.len().min(4096) + table.len());
    out.extend_from_slice(&fixed[..12]);
    let mut new_flags = HEADERS_FLAG;
    for (index, _) in &spans {
        new_flags |= flag(*index);
    }
    out.extend_from_slice(&new_flags.to_be_bytes());
    for index in 0..PROPERTIES.len() {
        if index == 2 {
            out.extend_from_slice(&table);
        } else if let Some((_, range)) = spans.iter().find(|(i, _)| *i == index) {
            out.extend_from_slice(&payload[range.clone()]);
        }
    }
    Some((out, reason))
}

/// Where the property at `pos` ends; `None` when it runs past the payload.
fn property_end(payload: &[u8], pos: usize, property: Property) -> Option<usize> {
    let end = match property {
        Property::Octet => pos.checked_add(1)?,
        Property::Timestamp => pos.checked_add(8)?,
        Property::ShortString(_) => pos.checked_add(1 + usize::from(*payload.get(pos)?))?,
        Property::Table => return sized_end(payload, pos, payload.len()),
    };
    (end <= payload.len()).then_some(end)
}

/// Checks one property's bytes as lapin will parse them.
fn check_property(bytes: &[u8], property: Property) -> Result<(), Cow<'static, str>> {
    match property {
        Property::Octet | Property::Timestamp => Ok(()),
        Property::ShortString(name) => match std::str::from_utf8(&bytes[1..]) {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("property {name} is not UTF-8").into()),
        },
        Property::Table => check_table(&bytes[4..]),
    }
}

/// The end of a length-prefixed (u32) value at `pos` that must fit before `limit`.
fn sized_end(bytes: &[u8], pos: usize, limit: usize) -> Option<usize> {
    let len = bytes.get(pos..pos.checked_add(4)?)?;
    let len = usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])).ok()?;
    pos.checked_add(4)?.checked_add(len).filter(|end| *end <= limit)
}

/// Checks the contents of a headers table (without its length prefix) the
/// way lapin parses field tables, without recursion: field names are UTF-8
/// short strings, every value has a known type and fits inside its parent,
/// and nothing nests deeper than [`MAX_DEPTH`].
pub fn check_table(contents: &[u8]) -> Result<(), Cow<'static, str>> {
    // Each open table or array: where it ends, and whether entries are named.
    let mut open: Vec<(usize, bool)> = vec![(contents.len(), true)];
    let mut pos = 0;
    let malformed = || Cow::Borrowed("malformed field table");
    while let Some(&(end, named)) = open.last() {
        if pos == end {
            open.pop();
            continue;
        }
        if named {
            let len = usize::from(contents[pos]);
            let name = contents.get(pos + 1..pos + 1 + len).filter(|_| pos + 1 + len <= end).ok_or_else(malformed)?;
            if std::str::from_utf8(name).is_err() {
                return Err("field name is not UTF-8".into());
            }
            pos += 1 + len;
        }
        let tag = *contents.get(pos).filter(|_| pos < end).ok_or_else(malformed)?;
        pos += 1;
        let fixed = match tag {
            b'V' => Some(0),
            b't' | b'b' | b'B' => Some(1),
            b's' | b'U' | b'u' => Some(2),
            b'I' | b'i' | b'f' => Some(4),
            b'D' => Some(5),
            b'l' | b'L' | b'd' | b'T' => Some(8),
            b'S' | b'x' | b'A' | b'F' => None,
            _ => return Err(format!("unknown field type {:?}", char::from(tag)).into()),
        };
        if let Some(size) = fixed {
            pos = pos.checked_add(size).filter(|p| *p <= end).ok_or_else(malformed)?;
            continue;
        }
        let value_end = sized_end(contents, pos, end).ok_or_else(malformed)?;
        if matches!(tag, b'A' | b'F') {
            if open.len() >= MAX_DEPTH {
                return Err(format!("headers nested deeper than {MAX_DEPTH} levels").into());
            }
            open.push((value_end, tag == b'F'));
            pos += 4;
        } else {
            pos = value_end;
        }
    }
    Ok(())
}

/// An encoded headers table (with its length) holding only
/// `HEADERS_REJECTED = reason`.
fn rejected_table(reason: &str) -> Vec<u8> {
    let name = HEADERS_REJECTED.as_bytes();
    let mut entry = Vec::with_capacity(1 + name.len() + 5 + reason.len());
    entry.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    entry.extend_from_slice(name);
    entry.push(b'S');
    entry.extend_from_slice(&u32::try_from(reason.len()).unwrap_or(0).to_be_bytes());
    entry.extend_from_slice(reason.as_bytes());
    let mut table = Vec::with_capacity(4 + entry.len());
    table.extend_from_slice(&u32::try_from(entry.len()).unwrap_or(0).to_be_bytes());
    table.extend_from_slice(&entry);
    table
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame of type `kind` on channel 1 around `payload`.
    pub(crate) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![kind, 0, 1];
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        frame
    }

    /// A content header frame with the given flags and property bytes.
    fn header_frame(flags: u16, properties: &[u8]) -> Vec<u8> {
        let fixed = [CLASS_BASIC.to_be_bytes(), [0, 0]].concat();
        frame(FRAME_HEADER, &[&fixed[..], &5u64.to_be_bytes(), &flags.to_be_bytes(), properties].concat())
    }

    fn short(s: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(s.len()).unwrap()];
        out.extend_from_slice(s);
        out
    }

    fn sized(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(contents.len()).unwrap().to_be_bytes());
        out.extend_from_slice(contents);
        out
    }

    /// A headers table (with length) nested `depth` levels deep in all (the
    /// table itself is level 1), through tables or arrays.
    fn nested(depth: usize, tag: u8) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        for _ in 2..depth {
            let mut wrapped = if tag == b'F' { short(b"k") } else { Vec::new() };
            wrapped.extend_from_slice(&sized(tag, &inner));
            inner = wrapped;
        }
        // The headers table itself holds one named entry.
        let mut entry = short(b"deep");
        if tag == b'F' {
            entry.extend_from_slice(&sized(b'F', &inner));
        } else {
            entry.extend_from_slice(&sized(b'A', &inner));
        }
        sized(b'F', &entry)[1..].to_vec()
    }

    fn parses_with_lapin(frame: &[u8]) -> Option<lapin::BasicProperties> {
        use amq_protocol::frame::{AMQPFrame, parse_frame};
        match parse_frame(frame) {
            Ok((&[], AMQPFrame::Header(_, header))) => Some(header.properties),
            _ => None,
        }
    }

    fn rejection(verdict: &Verdict) -> (lapin::BasicProperties, String) {
        let Verdict::Rewrite { frame, reason } = verdict else { panic!("expected a rewrite, got {verdict:?}") };
        let properties = parses_with_lapin(frame).expect("lapin parses the rewrite");
        let headers = properties.headers().clone().expect("headers");
        let value = headers.inner().get(HEADERS_REJECTED).expect("rejected entry");
        assert_eq!(crate::wire::string(value), Some(reason.as_ref()));
        (properties, reason.to_string())
    }

    #[test]
    fn ordinary_headers_pass() {
        let mut entries = short(b"traceparent");
        entries.extend_from_slice(&sized(b'S', b"00-abc-def-01"));
        entries.extend_from_slice(&short(b"x-deadline"));
        entries.extend_from_slice(&[b'l', 0, 0, 0, 0, 0, 0, 0, 1]);
        // x-death shape: array of tables of arrays.
        let mut death = short(b"routing-keys");
        death.extend_from_slice(&sized(b'A', &sized(b'S', b"q")));
        entries.extend_from_slice(&short(b"x-death"));
        entries.extend_from_slice(&sized(b'A', &sized(b'F', &death)));
        let mut props = short(b"text/plain");
        props.extend_from_slice(&sized(b'F', &entries)[1..]);
        let frame = header_frame(flag(0) | HEADERS_FLAG, &props);
        assert!(parses_with_lapin(&frame).is_some());
        assert_eq!(check_frame(&frame), Verdict::Pass);
    }

    #[test]
    fn the_deepest_allowed_nesting_passes_and_lapin_parses_it() {
        for tag in [b'F', b'A'] {
            let frame = header_frame(HEADERS_FLAG, &nested(MAX_DEPTH, tag));
            assert_eq!(check_frame(&frame), Verdict::Pass, "{}", char::from(tag));
            assert!(parses_with_lapin(&frame).is_some());
        }
    }

    #[test]
    fn deeper_nesting_is_replaced_and_the_other_properties_kept() {
        for (tag, depth) in [(b'F', MAX_DEPTH + 1), (b'A', MAX_DEPTH + 1), (b'F', 30_000), (b'A', 30_000)] {
            let mut props = nested(depth, tag);
            props.extend_from_slice(&short(b"corr-1"));
            props.extend_from_slice(&short(b"amq.rabbitmq.reply-to.abc"));
            let frame = header_frame(HEADERS_FLAG | flag(5) | flag(6), &props);
            let (properties, reason) = rejection(&check_frame(&frame));
            assert!(reason.contains("nested deeper than 64"), "{reason}");
            assert_eq!(properties.correlation_id().as_ref().map(|s| s.as_str()), Some("corr-1"));
            assert_eq!(properties.reply_to().as_ref().map(|s| s.as_str()), Some("amq.rabbitmq.reply-to.abc"));
        }
    }

    #[test]
    fn what_lapin_would_refuse_is_rewritten_into_what_it_parses() {
        let bad_name = sized(b'F', &[short(&[0xff, 0xfe]), vec![b'V']].concat())[1..].to_vec();
        let unknown_type = sized(b'F', &[short(b"a"), vec![b'?']].concat())[1..].to_vec();
        let overlong = {
            let mut t = sized(b'F', &[short(b"a"), sized(b'S', b"xyz")].concat())[1..].to_vec();
            t[3] -= 1; // the string now ends past its table
            t
        };
        let cases: Vec<(u16, Vec<u8>, &str)> = vec![
            (HEADERS_FLAG, bad_name, "field name is not UTF-8"),
            (HEADERS_FLAG, unknown_type, "unknown field type"),
            (HEADERS_FLAG, overlong, "malformed field table"),
            (flag(0) | flag(6), [short(&[0xc3]), short(b"reply")].concat(), "content_type is not UTF-8"),
            (flag(6) | 1, short(b"reply"), "unknown property flags"),
            (flag(6), [short(b"reply"), vec![1, 2]].concat(), "trailing bytes"),
            (flag(6) | flag(9), [short(b"reply"), vec![1, 2]].concat(), "truncated"),
        ];
        for (flags, props, want) in cases {
            let frame = header_frame(flags, &props);
            let (properties, reason) = rejection(&check_frame(&frame));
            assert!(reason.contains(want), "{reason} should say {want}");
            if flags & flag(6) != 0 {
                assert_eq!(properties.reply_to().as_ref().map(|s| s.as_str()), Some("reply"), "{want}");
            }
        }
    }

    fn method_frame(method: u16, args: &[u8]) -> Vec<u8> {
        frame(FRAME_METHOD, &[&CLASS_BASIC.to_be_bytes()[..], &method.to_be_bytes(), args].concat())
    }

    #[test]
    fn deliveries_with_routing_keys_lapin_would_refuse_are_made_readable() {
        use amq_protocol::{
            frame::{AMQPFrame, parse_frame},
            protocol::{AMQPClass, basic::AMQPMethod},
        };
        let deliver = |routing_key: &[u8]| {
            let args = [short(b"ctag"), 7u64.to_be_bytes().to_vec(), vec![1], short(b"amq.topic"), short(routing_key)]
                .concat();
            method_frame(60, &args)
        };
        let good = deliver(b"orders.created");
        assert_eq!(check_frame(&good), Verdict::Pass);
        let Verdict::Rewrite { frame, reason } = check_frame(&deliver(&[b'a', 0xff, b'b'])) else { panic!() };
        assert!(reason.contains("routing key"), "{reason}");
        let Ok((_, AMQPFrame::Method(1, AMQPClass::Basic(AMQPMethod::Deliver(parsed))))) = parse_frame(&frame[..])
        else {
            panic!("lapin cannot parse the rewrite")
        };
        assert_eq!(parsed.routing_key.as_str(), "a\u{fffd}b");
        assert_eq!((parsed.delivery_tag, parsed.redelivered), (7, true));
        // 255 invalid bytes become 255 replacement characters: cut to fit.
        let Verdict::Rewrite { frame, .. } = check_frame(&deliver(&[0xff; 255])) else { panic!() };
        assert!(matches!(parse_frame(&frame[..]), Ok((_, AMQPFrame::Method(..)))));
        // basic.return and basic.get-ok too.
        let returned = [vec![0, 1], short(b"NO_ROUTE"), short(b""), short(&[0xc3])].concat();
        assert!(matches!(check_frame(&method_frame(50, &returned)), Verdict::Rewrite { .. }));
        let get_ok = [vec![0; 9], short(b""), short(&[0xc3]), vec![0; 4]].concat();
        assert!(matches!(check_frame(&method_frame(71, &get_ok)), Verdict::Rewrite { .. }));
        // Other methods are lapin's business.
        assert_eq!(check_frame(&method_frame(80, &[0; 9])), Verdict::Pass);
    }

    #[test]
    fn other_frames_pass_untouched() {
        assert_eq!(check_frame(&[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, FRAME_END]), Verdict::Pass);
        assert_eq!(check_frame(&[3, 0, 1, 0, 0, 0, 1, 0xff, FRAME_END]), Verdict::Pass);
        // A content header of another class is left to lapin.
        let mut frame = header_frame(0, &[]);
        frame[7] = 0;
        frame[8] = 10;
        assert_eq!(check_frame(&frame), Verdict::Pass);
    }
}
