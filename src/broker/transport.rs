//! The byte stream lapin reads from: the broker's TCP (or TLS) stream with the
//! [frame guard](super::guard) between it and lapin's parser.
//!
//! lapin lets a program bring its own transport (`Connection::connector`), as
//! the stream type of the async-rs runtime kit it runs on. So lapin runs on
//! [`Guarded`]: tokio's kit in every respect (its tasks, timers and reactor)
//! except that its stream type is [`GuardedStream`] around the connection
//! lapin's own TCP and TLS code makes (system roots or the configured CA,
//! exactly as without the guard). TLS is decrypted below the guard, so the
//! guard sees AMQP frames; lapin's I/O thread reads through the guard itself,
//! with no task, thread or socket in between.
//!
//! Cost: the guard reads the broker's bytes into its own buffer and copies
//! them into lapin's; body frames go straight into lapin's buffer, only
//! content header frames (small) are buffered whole.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use async_rs::{
    Runtime, Tokio,
    traits::{Executor, Reactor, RuntimeKit},
    util::Task,
};
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use lapin::{
    tcp::{AMQPUriTcpExt, AsyncTcpStream, OwnedTLSConfig},
    uri::AMQPUri,
};

use super::guard::{self, FRAME_HEADER_LEN, Verdict};

/// The broker connection as tokio's kit makes it: TCP, or TLS over TCP.
type BrokerStream = AsyncTcpStream<<Tokio as Reactor>::TcpStream>;

/// What lapin reads and writes: the broker connection behind the guard.
pub(crate) type LapinStream = GuardedStream<BrokerStream>;

/// lapin's runtime kit: tokio's, with [`LapinStream`] as its TCP stream type.
#[derive(Clone, Debug)]
pub(crate) struct Guarded(Tokio);

impl Guarded {
    /// The kit of the tokio runtime this is called in.
    pub(crate) fn current() -> Runtime<Self> {
        Runtime::new(Self(Tokio::current()))
    }
}

/// Connects to the broker at `uri` with tokio's kit and returns the guarded
/// stream lapin is to use. Must run inside a tokio runtime (lapin's connector
/// runs it so).
pub(crate) async fn connect(
    uri: AMQPUri,
    tls: OwnedTLSConfig,
    tokio: &Runtime<Tokio>,
) -> io::Result<AsyncTcpStream<LapinStream>> {
    let broker = uri.connect_with_config_async(tls.as_ref(), tokio).await?;
    // `Plain`: any TLS is inside, below the guard.
    Ok(AsyncTcpStream::Plain(GuardedStream::new(broker)))
}

impl RuntimeKit for Guarded {}

impl Executor for Guarded {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.0.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(&self, f: F) -> Task<Self::Task<T>> {
        self.0.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(&self, f: F) -> Task<Self::Task<T>> {
        self.0.spawn_blocking(f)
    }
}

impl Reactor for Guarded {
    type TcpStream = LapinStream;
    type Sleep = <Tokio as Reactor>::Sleep;

    // async-rs bounds `H` by a trait of a private module that is exactly
    // `AsFd + AsRawFd`; those are what it stands for.
    fn register<H: Read + Write + AsFd + AsRawFd + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        self.0.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    fn tcp_connect_addr(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.0.tcp_connect_addr(addr);
        async move { Ok(GuardedStream::new(AsyncTcpStream::Plain(connect.await?))) }
    }
}

/// Frames larger than this are passed through unchecked. No broker sends
/// them (RabbitMQ's `frame_max` is at most a few hundred KiB in practice),
/// and lapin, whose receive buffer holds 32 frames of the negotiated size,
/// could not take them in anyway; buffering them here would only cost memory.
const MAX_CHECKED_FRAME: usize = 8 * 1024 * 1024;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The broker's byte stream, cut into frames; each content header is checked
/// by [`guard::check_frame`] before lapin sees it. Writes pass straight
/// through.
pub(crate) struct GuardedStream<S> {
    inner: S,
    /// Bytes read from the socket: `input[start..filled]` not yet handed on.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    /// Bytes ready for lapin: `output[sent..]`.
    output: Vec<u8>,
    sent: usize,
    /// Bytes of the current frame still to pass through unchecked.
    passthrough: usize,
    eof: bool,
}

impl<S> std::fmt::Debug for GuardedStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream").field("buffered", &(self.filled - self.start)).finish_non_exhaustive()
    }
}

impl<S> GuardedStream<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            input: vec![0; READ_CHUNK],
            start: 0,
            filled: 0,
            output: Vec::new(),
            sent: 0,
            passthrough: 0,
            eof: false,
        }
    }

    /// Moves everything that can be decided from `input` to `output`.
    /// Returns the bytes still needed before the next frame can be decided
    /// (0 when all input was handed on).
    fn process(&mut self) -> usize {
        loop {
            let available = &self.input[self.start..self.filled];
            if self.passthrough > 0 {
                let n = self.passthrough.min(available.len());
                self.output.extend_from_slice(&available[..n]);
                self.start += n;
                self.passthrough -= n;
                if self.passthrough > 0 {
                    return 0;
                }
                continue;
            }
            if available.is_empty() {
                return 0;
            }
            if available.len() < FRAME_HEADER_LEN {
                return FRAME_HEADER_LEN;
            }
            let size = u32::from_be_bytes([available[3], available[4], available[5], available[6]]);
            let total = usize::try_from(size).unwrap_or(usize::MAX).saturating_add(FRAME_HEADER_LEN + 1);
            if !guard::is_checked(available[0]) || total > MAX_CHECKED_FRAME {
                self.output.extend_from_slice(&available[..FRAME_HEADER_LEN]);
                self.start += FRAME_HEADER_LEN;
                self.passthrough = total - FRAME_HEADER_LEN;
                continue;
            }
            if available.len() < total {
                return total;
            }
            match guard::check_frame(&available[..total]) {
                Verdict::Pass => self.output.extend_from_slice(&available[..total]),
                Verdict::Rewrite { frame, reason } => {
                    tracing::warn!(%reason, "the broker delivered a message header lapin cannot safely parse; \
                                            replaced its headers with a rejection");
                    self.output.extend_from_slice(&frame);
                }
            }
            self.start += total;
        }
    }

    /// Makes room for `needed` bytes from `start` on.
    fn reserve(&mut self, needed: usize) {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
        let wanted = needed.max(READ_CHUNK);
        if self.input.len() - self.start < wanted || self.input.len() - self.filled < READ_CHUNK / 4 {
            self.input.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
            if self.input.len() < wanted {
                self.input.resize(wanted, 0);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.sent < this.output.len() {
                let n = buf.len().min(this.output.len() - this.sent);
                buf[..n].copy_from_slice(&this.output[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.output.len() {
                    this.output.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(n));
            }
            if this.eof || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // A body frame's bytes go straight into lapin's buffer.
            if this.passthrough > 0 && this.start == this.filled {
                let limit = buf.len().min(this.passthrough);
                let n = std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..limit]))?;
                this.passthrough -= n;
                if n == 0 {
                    this.eof = true;
                }
                return Poll::Ready(Ok(n));
            }
            let needed = this.process();
            if this.sent < this.output.len() {
                continue;
            }
            this.reserve(needed);
            let filled = this.filled;
            let n = std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.input[filled..]))?;
            if n == 0 {
                // The connection ended mid-frame: hand on what there is and
                // let lapin report the truncation.
                this.eof = true;
                this.output.extend_from_slice(&this.input[this.start..this.filled]);
                this.start = this.filled;
                continue;
            }
            this.filled += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::guard::{FRAME_HEADER, tests::frame};

    /// A reader that yields `chunks` one per read (split further when the
    /// caller's buffer is smaller), then EOF.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let Some(mut chunk) = self.0.pop_front() else { return Poll::Ready(Ok(0)) };
            let n = buf.len().min(chunk.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
            Poll::Ready(Ok(n))
        }
    }

    /// What lapin would read through the guard from `chunks`, in reads of `read_size`.
    fn read_all(chunks: Vec<Vec<u8>>, read_size: usize) -> Vec<u8> {
        let mut stream = GuardedStream::new(Chunks(chunks.into()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut out, mut buf) = (Vec::new(), vec![0; read_size]);
        for _ in 0..1_000_000 {
            match Pin::new(&mut stream).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(0)) => return out,
                Poll::Ready(Ok(n)) => out.extend_from_slice(&buf[..n]),
                other => panic!("{other:?}"),
            }
        }
        panic!("the guard did not reach EOF");
    }

    /// A basic content header whose headers table holds a field name that is not UTF-8.
    fn bad_header() -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0x20, 0];
        payload.extend_from_slice(&[0, 0, 0, 3, 1, 0xff, b'V']);
        frame(FRAME_HEADER, &payload)
    }

    /// Every way of cutting `bytes` into reads.
    fn cuts(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut all = vec![vec![bytes.to_vec()]];
        for size in [1, 2, 3, 7, 8, 13, 64] {
            all.push(bytes.chunks(size).map(<[u8]>::to_vec).collect());
        }
        all
    }

    #[test]
    fn good_frames_pass_unchanged_however_they_are_cut() {
        let good_header = frame(FRAME_HEADER, &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]);
        let body = frame(3, &vec![7; 100_000]);
        let stream: Vec<u8> =
            [frame(1, &[0, 60, 0, 60, 1, b'x']), good_header, body.clone(), frame(8, &[]), body].concat();
        for chunks in cuts(&stream) {
            for read_size in [1, 5, 4096, 200_000] {
                assert_eq!(read_all(chunks.clone(), read_size), stream, "read size {read_size}");
            }
        }
    }

    #[test]
    fn bad_headers_are_rewritten_in_place_however_they_are_cut() {
        let before = frame(1, &[0, 60, 0, 60, 1, b'x']);
        let after = frame(3, b"body!");
        let stream = [before.clone(), bad_header(), after.clone()].concat();
        let Verdict::Rewrite { frame: rewritten, .. } = guard::check_frame(&bad_header()) else { panic!() };
        let expected = [before, rewritten, after].concat();
        for chunks in cuts(&stream) {
            for read_size in [1, 6, 4096] {
                assert_eq!(read_all(chunks.clone(), read_size), expected, "read size {read_size}");
            }
        }
    }

    #[test]
    fn a_stream_cut_mid_frame_hands_on_what_arrived() {
        let header = bad_header();
        let cut = &header[..header.len() - 3];
        assert_eq!(read_all(vec![cut.to_vec()], 4096), cut);
        // Not even a frame header: the protocol-version reply of a broker
        // that refuses AMQP 0-9-1 passes as it is.
        assert_eq!(read_all(vec![b"AMQP\x00\x00\x09\x01".to_vec()], 4096), b"AMQP\x00\x00\x09\x01");
    }
}
