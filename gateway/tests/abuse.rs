//! Abuse of the gRPC port, against the real `gateway` binary with a real
//! worker: rapid stream resets, oversized header blocks, connections that
//! never finish their handshake, more connections than allowed, and streams
//! whose responses are never read. The abusive client is the test's own:
//! raw HTTP/2 frames written to a socket (or the `h2` crate where flow
//! control must be right). In every case a well-behaved client keeps calling
//! `Process` through the same gateway, and every one of its calls must
//! succeed within its deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use testkit::{
    Process,
    load::{self, Ended},
    scrape,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

/// The well-behaved client's deadline: every one of its calls must be OK,
/// so none may take longer than this.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// How long the gateway may take to close an abusive connection once the
/// configured limit is crossed (the limits themselves are set to 1 s here).
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// HTTP/2 frame types and error codes (RFC 9113).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A gateway and a worker on a route of their own, and a well-behaved client
/// calling it until [`Harness::finish`].
struct Harness {
    gateway: Process,
    _worker: Process,
    addr: SocketAddr,
    metrics: SocketAddr,
    route: String,
    stop: Arc<AtomicBool>,
    probe: JoinHandle<Vec<Ended>>,
}

impl Harness {
    /// Starts the processes (`extra` are more gateway flags) and the probe
    /// client; returns once the probe's calls succeed.
    async fn start(extra: &[&str]) -> Self {
        let url = testkit::amqp_url();
        let route = testkit::unique("abuse");
        let worker = load::worker(&url, &route, &["--durable", "false"]).await;
        let metrics = testkit::free_addr();
        let metrics_flag = metrics.to_string();
        let mut flags = vec!["--metrics-listen", metrics_flag.as_str()];
        flags.extend_from_slice(extra);
        let (gateway, addr) = load::gateway(&url, &route, &flags).await;
        let stop = Arc::new(AtomicBool::new(false));
        let probe = load::steady_load(addr, route.clone(), 2, PROBE_DEADLINE, stop.clone());
        let harness = Self { gateway, _worker: worker, addr, metrics, route, stop, probe };
        harness.wait_for_ok_calls(1).await;
        harness
    }

    async fn metrics(&self) -> String {
        scrape::metrics(self.metrics).await
    }

    fn ok_calls(metrics: &str, route: &str) -> f64 {
        scrape::sample(metrics, &format!("gateway_calls_total{{route=\"{route}\",code=\"OK\"}}")).unwrap_or(0.0)
    }

    /// Waits until `more` calls beyond those seen now have succeeded: the
    /// probe is getting through.
    async fn wait_for_ok_calls(&self, more: u32) {
        let before = Self::ok_calls(&self.metrics().await, &self.route);
        testkit::eventually("the probe's calls succeed", load::READY, || async move {
            Self::ok_calls(&self.metrics().await, &self.route) >= before + f64::from(more)
        })
        .await;
    }

    /// Stops the probe and checks that every one of its calls succeeded;
    /// returns the gateway for more checks.
    async fn finish(self) -> Process {
        // A few more calls after the abuse: the gateway still serves.
        self.wait_for_ok_calls(4).await;
        self.stop.store(true, Ordering::Relaxed);
        let ended = self.probe.await.unwrap();
        let tally = load::tally(&ended);
        assert!(ended.iter().all(|e| e.payload_matches), "probe calls: {tally:?}");
        assert!(ended.len() >= 5, "probe calls: {tally:?}");
        self.gateway
    }
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client preface and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1).
fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | u8::try_from(value).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).unwrap() | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).unwrap());
}

/// A header block of literal fields, never indexed, no Huffman coding: the
/// simplest encoding every decoder must accept.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(0, 7, name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        hpack_int(0, 7, value.len(), &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The header block of a `Process` call, with `extra` fields.
fn process_headers(addr: SocketAddr, extra: &[(&str, &str)]) -> Vec<u8> {
    let authority = addr.to_string();
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/gateway.v1.Gateway/Process"),
        (":authority", authority.as_str()),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    fields.extend_from_slice(extra);
    header_block(&fields)
}

/// What the gateway sent on an abusive connection.
#[derive(Debug, Default)]
struct Seen {
    /// The GOAWAY error code, if one came.
    goaway: Option<u32>,
    /// RST_STREAM frames: (stream, error code).
    resets: Vec<(u32, u32)>,
    /// Response header blocks: (stream, HPACK bytes).
    responses: Vec<(u32, Vec<u8>)>,
    /// The connection was closed (EOF or reset).
    closed: bool,
}

impl Seen {
    /// Reads frames from `socket` until it closes, or `stop` says enough was
    /// seen; panics if neither happens within [`CLOSE_WITHIN`].
    async fn read(socket: &mut tokio::net::tcp::OwnedReadHalf, stop: impl Fn(&Self) -> bool) -> Self {
        let mut seen = Self::default();
        let read = async {
            loop {
                let mut head = [0u8; 9];
                if socket.read_exact(&mut head).await.is_err() {
                    seen.closed = true;
                    return;
                }
                let len = usize::try_from(u32::from_be_bytes([0, head[0], head[1], head[2]])).unwrap();
                let mut payload = vec![0; len];
                if socket.read_exact(&mut payload).await.is_err() {
                    seen.closed = true;
                    return;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let code = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
                match head[3] {
                    GOAWAY => seen.goaway = Some(code(4)),
                    RST_STREAM => seen.resets.push((stream, code(0))),
                    HEADERS => seen.responses.push((stream, payload.clone())),
                    _ => {}
                }
                if stop(&seen) {
                    return;
                }
            }
        };
        let finished = tokio::time::timeout(CLOSE_WITHIN, read).await.is_ok();
        assert!(finished, "after {CLOSE_WITHIN:?} the connection is still open and saw only {seen:?}");
        seen
    }
}

/// Writes `bytes` from a task of its own, so the gateway's answer is read
/// while the abuse is still being written; the write stops at the first
/// error (the gateway closed the connection).
fn write_in_background(mut socket: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>) -> JoinHandle<bool> {
    tokio::spawn(async move { socket.write_all(&bytes).await.is_ok() })
}

#[tokio::test]
async fn rapid_resets_close_the_connection() {
    let harness = Harness::start(&[]).await;
    let (mut read, write) = TcpStream::connect(harness.addr).await.unwrap().into_split();
    // HEADERS then RST_STREAM, thousands of times: the 2023 "rapid reset".
    let mut abuse = preface();
    let headers = process_headers(harness.addr, &[]);
    for i in 0..5000u32 {
        let stream = 2 * i + 1;
        abuse.extend(frame(HEADERS, END_HEADERS, stream, &headers));
        abuse.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let writer = write_in_background(write, abuse);
    let seen = Seen::read(&mut read, |_| false).await;
    assert!(seen.closed, "{seen:?}");
    // The GOAWAY itself can be lost when the gateway closes a socket with our
    // frames still unread (the kernel answers with a reset), but any that
    // arrives names the reason.
    assert!(seen.goaway.is_none_or(|code| code == ENHANCE_YOUR_CALM), "{seen:?}");
    let _ = writer.await;
    harness.finish().await;
}

#[tokio::test]
async fn oversized_header_blocks_are_refused() {
    let harness = Harness::start(&[]).await;

    // Just over the 16 KiB default limit: the call is refused and the
    // connection stays usable.
    let (mut read, mut write) = TcpStream::connect(harness.addr).await.unwrap().into_split();
    let big = "a".repeat(20 * 1024);
    let block = process_headers(harness.addr, &[("x-big", &big)]);
    let mut abuse = preface();
    let (first, rest) = block.split_at(16 * 1024);
    abuse.extend(frame(HEADERS, 0, 1, first));
    abuse.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    write.write_all(&abuse).await.unwrap();
    let seen = Seen::read(&mut read, |seen| seen.resets.iter().any(|&(stream, _)| stream == 1)).await;
    // `:status: 431` (Request Header Fields Too Large): the status value is
    // "431" Huffman-coded, as h2 always codes it (RFC 7541, appendix B).
    let status_431 = [0x83, 0x69, 0x90, 0xff];
    let answered_431 = |(stream, block): &(u32, Vec<u8>)| *stream == 1 && block.windows(4).any(|w| w == status_431);
    assert!(seen.responses.iter().any(answered_431), "{seen:?}");
    assert_eq!(seen.goaway, None, "{seen:?}");

    // 1 MiB of headers: the connection is closed before the gateway buffers
    // much of it.
    let (mut read, write) = TcpStream::connect(harness.addr).await.unwrap().into_split();
    let huge = "a".repeat(1024 * 1024);
    let block = process_headers(harness.addr, &[("x-huge", &huge)]);
    let mut abuse = preface();
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if i == chunks.len() - 1 { END_HEADERS } else { 0 };
        abuse.extend(frame(kind, flags, 1, chunk));
    }
    let writer = write_in_background(write, abuse);
    let seen = Seen::read(&mut read, |_| false).await;
    assert!(seen.closed && seen.responses.is_empty(), "{seen:?}");
    assert!(seen.goaway.is_none_or(|code| code != 0), "{seen:?}");
    let _ = writer.await;
    harness.finish().await;
}

/// Whether the gateway has closed `socket`; drains anything it sent.
fn is_closed(mut socket: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `count` connections to `addr`, each sent `first` and then left alone.
fn stalled_connections(addr: SocketAddr, count: usize, first: &[u8]) -> Vec<std::net::TcpStream> {
    (0..count)
        .map(|_| {
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            socket.write_all(first).unwrap();
            socket.set_nonblocking(true).unwrap();
            socket
        })
        .collect()
}

/// Waits until the gateway has closed every one of `sockets`.
async fn all_closed(sockets: &[std::net::TcpStream], what: &str) {
    testkit::eventually(what, CLOSE_WITHIN, || {
        let open = sockets.iter().filter(|s| !is_closed(s)).count();
        async move { open == 0 }
    })
    .await;
}

#[tokio::test]
async fn connections_that_never_finish_the_handshake_are_closed() {
    let flags = ["--handshake-timeout", "1s", "--keepalive-interval", "1s", "--keepalive-timeout", "1s"];
    let harness = Harness::start(&flags).await;
    // Silent, half a preface, and a whole preface and then nothing (not even
    // SETTINGS, nor the answer to a PING).
    let silent = stalled_connections(harness.addr, 200, b"");
    let half = stalled_connections(harness.addr, 200, &PREFACE[..12]);
    let mute = stalled_connections(harness.addr, 100, PREFACE);
    harness.wait_for_ok_calls(2).await;
    all_closed(&silent, "silent connections closed").await;
    all_closed(&half, "connections with half a preface closed").await;
    all_closed(&mute, "connections that never answer a PING closed").await;
    let metrics = harness.metrics().await;
    assert_eq!(scrape::sample(&metrics, "gateway_handshake_timeouts_total"), Some(400.0), "{metrics}");
    // Only the probe's connections are left.
    testkit::eventually("open connections back to the probe's", CLOSE_WITHIN, || async {
        scrape::sample(&harness.metrics().await, "gateway_connections_open") == Some(2.0)
    })
    .await;
    harness.finish().await;
}

#[tokio::test]
async fn tls_handshakes_that_stall_are_closed() {
    let dir = std::env::temp_dir().join(testkit::unique("abuse-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let url = testkit::amqp_url();
    let route = testkit::unique("abuse-tls");
    let _worker = load::worker(&url, &route, &["--durable", "false"]).await;
    let (cert_flag, key_flag) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let flags = ["--tls-cert", cert_flag, "--tls-key", key_flag, "--handshake-timeout", "1s"];
    let (_gateway, addr) = load::gateway(&url, &route, &flags).await;

    // Silent, and the first bytes of a ClientHello record and no more.
    let silent = stalled_connections(addr, 200, b"");
    let partial = stalled_connections(addr, 200, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    // Meanwhile a TLS caller gets through.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    for i in 0..3 {
        let socket = TcpStream::connect(addr).await.unwrap();
        let socket = connector.connect("localhost".try_into().unwrap(), socket).await.unwrap();
        let (client, connection) = h2::client::handshake(socket).await.unwrap();
        let connection = tokio::spawn(connection);
        let payload = format!("over TLS {i}").into_bytes();
        assert_eq!(h2_call(client, addr, &route, &payload).await, payload);
        connection.abort();
    }
    all_closed(&silent, "silent TLS connections closed").await;
    all_closed(&partial, "stalled TLS handshakes closed").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let harness = Harness::start(&["--max-connections", "20"]).await;
    // The probe holds 2; 18 more fit.
    let held = stalled_connections(harness.addr, 18, PREFACE);
    testkit::eventually("20 connections open", CLOSE_WITHIN, || async {
        scrape::sample(&harness.metrics().await, "gateway_connections_open") == Some(20.0)
    })
    .await;
    let refused = stalled_connections(harness.addr, 30, PREFACE);
    all_closed(&refused, "connections beyond the limit closed").await;
    assert!(held.iter().all(|s| !is_closed(s)), "a connection within the limit was closed");
    let metrics = harness.metrics().await;
    assert_eq!(scrape::sample(&metrics, "gateway_connections_refused_total"), Some(30.0), "{metrics}");
    testkit::eventually("the limit is logged", CLOSE_WITHIN, || {
        let logged = harness.gateway.log().contains("connection limit reached");
        async move { logged }
    })
    .await;
    // The probe's connections are unaffected; once the held ones close, new
    // connections are served again.
    harness.wait_for_ok_calls(2).await;
    drop(held);
    testkit::eventually("a new connection gets through", CLOSE_WITHIN, || async {
        load::call(&mut load::client(harness.addr), &harness.route, b"new".to_vec(), PROBE_DEADLINE).await.code
            == Some(tonic::Code::Ok)
    })
    .await;
    harness.finish().await;
}

/// The gRPC message (length-prefixed, uncompressed) of a `Process` request.
fn grpc_message(route: &str, payload: &[u8]) -> Bytes {
    let request = amqp_gateway::pb::ProcessRequest {
        route: route.to_owned(),
        payload: payload.to_vec().into(),
        ..Default::default()
    };
    let message = prost::Message::encode_to_vec(&request);
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&message);
    Bytes::from(body)
}

/// Starts a `Process` call on an h2 connection: the request is sent, the
/// response not read.
async fn h2_send(
    client: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    route: &str,
    payload: &[u8],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/gateway.v1.Gateway/Process"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(grpc_message(route, payload), true).unwrap();
    (response, send)
}

/// A whole `Process` call on an h2 connection; returns the reply's payload.
async fn h2_call(client: h2::client::SendRequest<Bytes>, addr: SocketAddr, route: &str, payload: &[u8]) -> Vec<u8> {
    let (response, _send) = h2_send(client, addr, route, payload).await;
    let mut body = tokio::time::timeout(PROBE_DEADLINE, response).await.unwrap().unwrap().into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    let reply: amqp_gateway::pb::ProcessResponse = prost::Message::decode(&message[5..]).unwrap();
    reply.payload.to_vec()
}

#[tokio::test]
async fn unread_responses_hold_bounded_memory() {
    const STREAMS: usize = 64;
    const PAYLOAD: usize = 1024 * 1024;
    let harness = Harness::start(&["--max-concurrent-streams", "64"]).await;
    let before = harness.gateway.peak_rss_kib();

    // A client that sends its calls and opens no window for the answers
    // (it answers PINGs, so keep-alive does not close it): every reply stays
    // in the gateway until the stream or connection goes.
    let socket = TcpStream::connect(harness.addr).await.unwrap();
    let (client, connection) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(socket).await.unwrap();
    let connection = tokio::spawn(connection);
    let payload = vec![7; PAYLOAD];
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        held.push(h2_send(client.clone(), harness.addr, &harness.route, &payload).await);
    }
    // Every call was answered (headers need no window); the replies wait.
    let mut responses = Vec::new();
    for (response, send) in held {
        let response = tokio::time::timeout(CLOSE_WITHIN, response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        responses.push((response, send));
    }
    harness.wait_for_ok_calls(4).await;
    // 64 MiB of replies held; the gateway's copies of them (reply, encoded
    // body) stay within a few times that.
    let grown_mib = harness.gateway.peak_rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 320, "the gateway grew by {grown_mib} MiB holding {STREAMS} unread 1 MiB replies");
    drop(responses);
    connection.abort();
    harness.finish().await;
}

#[test]
fn hpack_integers_follow_rfc_7541() {
    // RFC 7541, C.1.2: 1337 with a 5-bit prefix.
    let mut out = Vec::new();
    hpack_int(0, 5, 1337, &mut out);
    assert_eq!(out, [31, 154, 10]);
}
