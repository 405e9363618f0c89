//! A bare AMQP 0-9-1 publisher that writes content headers byte for byte, as
//! a hostile peer would: property lists and header tables no client library
//! would produce (nested tens of thousands of levels deep, field names that
//! are not UTF-8). lapin cannot send these: it encodes tables recursively, on
//! its own I/O thread, and would overflow that thread's stack itself.
//!
//! Just enough of the protocol for that: PLAIN login, one channel in confirm
//! mode, `basic.publish` waited on until the broker confirms it.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const FRAME_END: u8 = 0xCE;
const STEP: Duration = Duration::from_secs(10);

/// A connection with one channel in confirm mode.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    frame_max: usize,
    published: u64,
}

/// Which way headers nest in [`deepest_headers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nesting {
    /// Tables in tables.
    Tables,
    /// Arrays in arrays (inside one table entry).
    Arrays,
}

impl RawPublisher {
    /// Connects to the broker of an `amqp://` URL and opens channel 1 in
    /// confirm mode, accepting the broker's `frame_max`.
    pub async fn connect(url: &str) -> Self {
        let url = url::Url::parse(url).unwrap_or_else(|e| panic!("bad AMQP URL: {e}"));
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(5672);
        let user = percent_decode(url.username());
        let password = percent_decode(url.password().unwrap_or(""));
        let vhost = percent_decode(url.path().strip_prefix('/').unwrap_or("/"));
        let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };

        let stream = TcpStream::connect((host, port)).await.unwrap_or_else(|e| panic!("connect {host}:{port}: {e}"));
        let mut publisher = Self { stream, frame_max: 4096, published: 0 };
        publisher.write(b"AMQP\x00\x00\x09\x01").await;
        publisher.expect_method(10, 10).await; // connection.start
        let mut start_ok = method(10, 11);
        start_ok.extend_from_slice(&0u32.to_be_bytes()); // client properties: none
        start_ok.extend_from_slice(&short(b"PLAIN"));
        start_ok.extend_from_slice(&long(format!("\0{user}\0{password}").as_bytes()));
        start_ok.extend_from_slice(&short(b"en_US"));
        publisher.send(1, 0, &start_ok).await;
        let tune = publisher.expect_method(10, 30).await;
        let frame_max = u32::from_be_bytes([tune[6], tune[7], tune[8], tune[9]]);
        publisher.frame_max = if frame_max == 0 { 131_072 } else { frame_max as usize };
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&tune[4..6]); // channel max, as offered
        tune_ok.extend_from_slice(&frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        publisher.send(1, 0, &tune_ok).await;
        let mut open = method(10, 40);
        open.extend_from_slice(&short(vhost.as_bytes()));
        open.extend_from_slice(&[0, 0]);
        publisher.send(1, 0, &open).await;
        publisher.expect_method(10, 41).await;
        publisher.send(1, 1, &[method(20, 10), vec![0]].concat()).await;
        publisher.expect_method(20, 11).await;
        publisher.send(1, 1, &[method(85, 10), vec![0]].concat()).await;
        publisher.expect_method(85, 11).await;
        publisher
    }

    /// The frame size the broker negotiated: the largest frame it accepts,
    /// header and frame-end octet included.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// The most property bytes (flags word and properties) one content
    /// header frame can carry.
    pub fn max_properties(&self) -> usize {
        // Frame header and end (8), class, weight and body size (12).
        self.frame_max - 8 - 12
    }

    /// Publishes `body` with `properties` (the flags word and the encoded
    /// property list, as [`properties`] builds them) and waits until the
    /// broker confirms it.
    /// The routing key is raw bytes: it need not be UTF-8.
    pub async fn publish(&mut self, exchange: &str, routing_key: impl AsRef<[u8]>, properties: &[u8], body: &[u8]) {
        let mut publish = method(60, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        publish.extend_from_slice(&short(exchange.as_bytes()));
        publish.extend_from_slice(&short(routing_key.as_ref()));
        publish.push(0); // not mandatory, not immediate
        self.send(1, 1, &publish).await;
        let mut header = Vec::with_capacity(12 + properties.len());
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(properties);
        assert!(header.len() + 8 <= self.frame_max, "content header over frame_max");
        self.send(2, 1, &header).await;
        for chunk in body.chunks(self.frame_max - 8) {
            self.send(3, 1, chunk).await;
        }
        self.published += 1;
        let ack = self.expect_method(60, 80).await;
        let tag = u64::from_be_bytes(ack[4..12].try_into().unwrap_or_default());
        assert_eq!(tag, self.published, "the broker confirmed another publish");
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) {
        let mut close = method(10, 50);
        close.extend_from_slice(&200u16.to_be_bytes());
        close.extend_from_slice(&short(b"bye"));
        close.extend_from_slice(&[0, 0, 0, 0]);
        self.send(1, 0, &close).await;
        self.expect_method(10, 51).await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("write timed out"))
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.write(&frame).await;
    }

    /// Reads frames until a method frame arrives; panics with the broker's
    /// reason if that is not `class.method`.
    async fn expect_method(&mut self, class: u16, method_id: u16) -> Vec<u8> {
        loop {
            let mut header = [0u8; 7];
            self.read(&mut header).await;
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
            let mut payload = vec![0; size + 1];
            self.read(&mut payload).await;
            payload.pop();
            if header[0] != 1 {
                continue; // heartbeats and the like
            }
            let got = (u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]]));
            if got != (class, method_id) {
                let text = if matches!(got, (10, 50) | (20, 40)) && payload.len() > 7 {
                    String::from_utf8_lossy(&payload[7..7 + usize::from(payload[6])]).into_owned()
                } else {
                    String::new()
                };
                panic!("expected method {class}.{method_id}, got {}.{}: {text}", got.0, got.1);
            }
            return payload;
        }
    }

    async fn read(&mut self, buf: &mut [u8]) {
        tokio::time::timeout(STEP, self.stream.read_exact(buf))
            .await
            .unwrap_or_else(|_| panic!("the broker did not answer within {STEP:?}"))
            .unwrap_or_else(|e| panic!("read: {e}"));
    }
}

fn method(class: u16, method: u16) -> Vec<u8> {
    [class.to_be_bytes(), method.to_be_bytes()].concat()
}

/// An AMQP short string.
pub fn short(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(bytes.len()).unwrap_or_else(|_| panic!("short string over 255 bytes"))];
    out.extend_from_slice(bytes);
    out
}

/// An AMQP long string (or any length-prefixed value without its tag).
pub fn long(bytes: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The flags word and property list of a `basic` content header with a
/// `correlation_id`, a `reply_to` and, when given, an encoded headers table
/// (with its length prefix).
pub fn properties(correlation_id: &str, reply_to: &str, headers: Option<&[u8]>) -> Vec<u8> {
    let mut flags: u16 = (1 << (15 - 5)) | (1 << (15 - 6));
    if headers.is_some() {
        flags |= 1 << (15 - 2);
    }
    let mut out = flags.to_be_bytes().to_vec();
    if let Some(headers) = headers {
        out.extend_from_slice(headers);
    }
    out.extend_from_slice(&short(correlation_id.as_bytes()));
    out.extend_from_slice(&short(reply_to.as_bytes()));
    out
}

/// The most deeply nested headers table (with its length prefix) that fits
/// in `room` bytes, and its depth (the table itself is level 1). Each level
/// costs 6 bytes as tables (an empty field name, the type, the length) and 5
/// as arrays: the cheapest nesting the encoding allows.
pub fn deepest_headers(nesting: Nesting, room: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(room);
    match nesting {
        Nesting::Tables => {
            // u32(6(n-1)) then per inner level: "" 'F' u32(6(n-i)).
            let depth = (room - 4) / 6 + 1;
            for level in 1..depth {
                out.extend_from_slice(&u32::try_from(6 * (depth - level)).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&[0, b'F']);
            }
            out.extend_from_slice(&0u32.to_be_bytes());
            (out, depth)
        }
        Nesting::Arrays => {
            // The table holds "a" => array; each array holds one array.
            let depth = (room - 4 - 7) / 5 + 2;
            out.extend_from_slice(&u32::try_from(7 + 5 * (depth - 2)).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&[1, b'a']);
            for level in 2..=depth {
                out.push(b'A');
                out.extend_from_slice(&u32::try_from(5 * (depth - level)).unwrap_or(0).to_be_bytes());
            }
            (out, depth)
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepest_headers_fill_their_room_and_nest_as_promised() {
        for nesting in [Nesting::Tables, Nesting::Arrays] {
            let (table, depth) = deepest_headers(nesting, 131_072 - 100);
            assert!(table.len() <= 131_072 - 100 && table.len() + 6 > 131_072 - 100, "{nesting:?}: {}", table.len());
            assert!(depth > 20_000, "{nesting:?}: {depth}");
            let declared = u32::from_be_bytes(table[..4].try_into().unwrap()) as usize;
            assert_eq!(declared + 4, table.len(), "{nesting:?}");
            // Well formed, and as deep as said: the guard's own walk agrees.
            let guard = amqp_gateway::broker::guard::check_table;
            assert!(guard(&table[4..]).unwrap_err().contains("nested deeper"), "{nesting:?}");
            let (shallow, shallow_depth) =
                deepest_headers(nesting, if nesting == Nesting::Tables { 4 + 6 * 63 } else { 11 + 5 * 62 });
            assert_eq!(shallow_depth, 64, "{nesting:?}");
            assert_eq!(guard(&shallow[4..]), Ok(()), "{nesting:?}");
        }
    }
}
