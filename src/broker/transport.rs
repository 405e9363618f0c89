//! The byte stream lapin reads from: the broker's TCP (or TLS) stream with the
//! [frame guard](super::guard) between it and lapin's parser.
//!
//! lapin lets a program bring its own transport (`Connection::connector`), but
//! only as the runtime's own TCP stream type, and async-rs keeps the trait a
//! runtime would need to offer another stream type private. So the guard sits
//! on a short pipe instead: lapin gets one end of a Unix socket pair (wrapped
//! as the tokio TCP stream type it expects: reads and writes are all it does
//! with it), and a task copies between the other end and the real broker
//! connection, sending everything the broker says through [`GuardedStream`].
//! The broker connection itself is made by lapin's own TCP and TLS code
//! (system roots or the configured CA, exactly as before), so TLS is
//! decrypted below the guard and the guard sees AMQP frames.
//!
//! Cost: one more copy through the socket pair in each direction; body frames
//! are passed through without being looked at, only content header frames
//! (small) are buffered whole. The pump task ends when either side closes:
//! lapin dropping its end closes the broker connection, and the broker
//! closing closes lapin's end.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use async_rs::{Runtime, Tokio, traits::Reactor};
use futures_io::{AsyncRead, AsyncWrite};
use lapin::{
    tcp::{AMQPUriTcpExt, AsyncTcpStream, OwnedTLSConfig},
    uri::AMQPUri,
};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::Instrument;

use super::guard::{self, FRAME_HEADER_LEN, Verdict};

/// The stream type lapin's tokio runtime works with.
type Stream = AsyncTcpStream<<Tokio as Reactor>::TcpStream>;

/// Buffer size of each direction of the pump.
const PUMP_BUFFER: usize = 64 * 1024;

/// Connects to the broker at `uri` and returns lapin's end of the guarded
/// pipe. Must run inside a tokio runtime (lapin's connector runs it so).
pub(crate) async fn connect(uri: AMQPUri, tls: OwnedTLSConfig, runtime: Runtime<Tokio>) -> io::Result<Stream> {
    let broker = uri.connect_with_config_async(tls.as_ref(), &runtime).await?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    theirs.set_nonblocking(true)?;
    let mut ours = tokio::net::UnixStream::from_std(ours)?;
    // A Unix socket behind the TCP stream type: lapin only reads and writes it.
    let theirs = tokio::net::TcpStream::from_std(std::net::TcpStream::from(std::os::fd::OwnedFd::from(theirs)))?;
    let mut broker = GuardedStream::new(broker).compat();
    let pump = async move {
        match tokio::io::copy_bidirectional_with_sizes(&mut ours, &mut broker, PUMP_BUFFER, PUMP_BUFFER).await {
            Ok((sent, received)) => tracing::debug!(sent, received, "broker connection closed"),
            Err(error) => tracing::debug!(%error, "broker connection ended"),
        }
    };
    tokio::spawn(pump.instrument(tracing::debug_span!("broker_pipe")));
    Ok(AsyncTcpStream::Plain(async_compat::Compat::new(theirs)))
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
