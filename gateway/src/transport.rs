//! HTTP/2 serving of the gRPC services: the accept loop, the connection
//! limit, the handshake (TLS and HTTP/2 preface) under a deadline, the HTTP/2
//! settings that bound what one client can hold, and the graceful drain.
//!
//! Why hyper directly and not tonic's transport server: tonic's server wraps
//! every service in its own timeout, started from `grpc-timeout`, which
//! answers CANCELLED and can fire before the gateway's own deadline when the
//! runtime is busy (the router only calls the service when first polled). The
//! contract wants DEADLINE_EXCEEDED, decided in one place
//! ([`RequestContextLayer`](crate::context::RequestContextLayer)), so the gateway serves the same
//! tonic services over hyper with no timer of tonic's in the way.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{body::Incoming, server::conn::http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::body::Body;
use tower::Service;
use tracing::Instrument;

use crate::{config::ConnectionLimits, metrics::ConnectionMetrics};

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one "connection limit reached" warning per this interval: at the
/// limit every accept is refused, and a line each would flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Length of the HTTP/2 client connection preface (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;

/// Streams a client may open and reset before the gateway has accepted them,
/// before the connection is closed with GOAWAY(ENHANCE_YOUR_CALM): the 2023
/// "rapid reset" attack (CVE-2023-44487). h2's default, set here so it stays.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams the gateway may reset because a client misbehaved (for example an
/// oversized header block) before it closes the connection. hyper's default,
/// set here so it stays (RUSTSEC-2024-0003).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Flow-control windows the gateway grants: how much request data a client
/// may send ahead, per stream and per connection (hyper's defaults; the
/// connection window also bounds what one connection's unread request bodies
/// can hold).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Response bytes buffered per stream beyond what the client's window lets
/// through (hyper's default). A reply larger than this waits in the
/// response body until the client opens its window.
const MAX_SEND_BUF: usize = 400 * 1024;

/// Settings of every connection.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Connection and HTTP/2 limits.
    pub(crate) limits: ConnectionLimits,
    /// TLS (None: plaintext h2c).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `routes` to every connection accepted on `listener` until
/// `shutdown`; then stops accepting, tells every connection to finish (HTTP/2
/// GOAWAY: calls already started continue, new ones go elsewhere) and returns
/// once all of them have closed.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    service: S,
    settings: Settings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let limits = settings.limits;
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        // gRPC has no use for a `date` on every response; hyper adds one
        // unless told not to.
        .auto_date_header(false);
    let tls = settings.tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let metrics = ConnectionMetrics::new();
    let mut refusals = Refusals::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Accept and close rather than stop accepting: the client learns at
        // once, and the listen backlog does not fill up silently.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            metrics.refused.increment(1);
            refusals.refused(limits.max_connections);
            continue;
        };
        let slot = Slot::new(permit, &metrics);
        // gRPC calls are small request/response exchanges: send at once.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY");
        }
        let (http2, service, watcher) = (http2.clone(), TowerToHyperService::new(service.clone()), graceful.watcher());
        let (tls, shutdown, timeouts) = (tls.clone(), shutdown.clone(), metrics.handshake_timeouts.clone());
        let deadline = limits.handshake_timeout;
        // The handshake runs here, in the connection's task, so a slow or
        // silent client never holds up the accept loop. It ends with the
        // HTTP/2 preface: hyper has no timer of its own until then, so
        // without this deadline a client that connects and sends nothing
        // would hold its socket for as long as it likes.
        let connection = async move {
            let _slot = slot;
            let handshake = async {
                match &tls {
                    None => Ok(Io::Plain(read_preface(stream).await?)),
                    Some(tls) => Ok(Io::Tls(Box::new(read_preface(tls.accept(stream).await?).await?))),
                }
            };
            let io = tokio::select! {
                io = tokio::time::timeout(deadline, handshake) => match io {
                    Ok(Ok(io)) => io,
                    Ok(Err::<_, io::Error>(error)) => return tracing::debug!(%error, "handshake failed"),
                    Err(_) => {
                        timeouts.increment(1);
                        return tracing::debug!(?deadline, "handshake timed out");
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let result = match io {
                Io::Plain(io) => watcher.watch(http2.serve_connection(TokioIo::new(io), service)).await,
                Io::Tls(io) => watcher.watch(http2.serve_connection(TokioIo::new(io), service)).await,
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        };
        tracker.spawn(connection.instrument(tracing::debug_span!("connection", %peer)));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection after its handshake (TLS state is large: boxed, so a
/// plaintext connection's task does not carry its room).
enum Io {
    Plain(Prefaced<tokio::net::TcpStream>),
    Tls(Box<Prefaced<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>),
}

/// Reads the first [`PREFACE_LEN`] bytes of `io` (hyper checks them) and
/// returns a stream that replays them before the rest.
async fn read_preface<I: AsyncRead + Unpin>(mut io: I) -> io::Result<Prefaced<I>> {
    let mut preface = [0; PREFACE_LEN];
    io.read_exact(&mut preface).await?;
    Ok(Prefaced { preface: Bytes::copy_from_slice(&preface), io })
}

pin_project_lite::pin_project! {
    /// A stream whose first bytes were already read (to time the handshake)
    /// and are given back to the reader first.
    struct Prefaced<I> {
        preface: Bytes,
        #[pin]
        io: I,
    }
}

impl<I: AsyncRead> AsyncRead for Prefaced<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.preface.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let n = this.preface.len().min(buf.remaining());
        buf.put_slice(&this.preface.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for Prefaced<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// One of the `--max-connections` slots, held for a connection's life; the
/// open-connections gauge follows it.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: &ConnectionMetrics) -> Self {
        metrics.open.increment(1);
        Self { _permit: permit, open: metrics.open.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1);
    }
}

/// Connections refused since the last warning, and when that was.
#[derive(Debug, Default)]
struct Refusals {
    last_warning: Option<Instant>,
    since: u64,
}

impl Refusals {
    fn refused(&mut self, max_connections: usize) {
        self.since += 1;
        if self.last_warning.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
            tracing::warn!(
                max_connections,
                refused = self.since,
                "connection limit reached: closing new connections (--max-connections)"
            );
            self.last_warning = Some(Instant::now());
            self.since = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_preface_is_replayed_before_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nand the rest").await.unwrap();
        drop(client);
        let mut prefaced = read_preface(server).await.unwrap();
        let mut all = Vec::new();
        prefaced.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nand the rest");
    }

    #[tokio::test]
    async fn a_short_preface_is_an_error() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        drop(client);
        let error = read_preface(server).await.err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
