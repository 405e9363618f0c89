//! HTTP/2 serving of the gRPC services: the accept loop, TLS, connection
//! settings and the graceful drain.
//!
//! Why hyper directly and not tonic's transport server: tonic's server wraps
//! every service in its own timeout, started from `grpc-timeout`, which
//! answers CANCELLED and can fire before the gateway's own deadline when the
//! runtime is busy (the router only calls the service when first polled). The
//! contract wants DEADLINE_EXCEEDED, decided in one place
//! ([`CallLayer`](crate::call::CallLayer)), so the gateway serves the same
//! tonic services over hyper with no timer of tonic's in the way.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::body::Body;
use tower::Service;
use tracing::Instrument;

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of every connection.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Most concurrent streams (calls) per connection.
    pub(crate) max_concurrent_streams: u32,
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
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.max_concurrent_streams(settings.max_concurrent_streams);
    let tls = settings.tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
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
        // gRPC calls are small request/response exchanges: send at once.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY");
        }
        let (http2, service, watcher) = (http2.clone(), TowerToHyperService::new(service.clone()), graceful.watcher());
        let tls = tls.clone();
        let connection = async move {
            let result = match &tls {
                None => watcher.watch(http2.serve_connection(TokioIo::new(stream), service)).await,
                // The handshake runs here, in the connection's task, so a slow
                // or silent client never holds up the accept loop.
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => watcher.watch(http2.serve_connection(TokioIo::new(stream), service)).await,
                    Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        };
        tracker.spawn(connection.instrument(tracing::debug_span!("connection", %peer)));
    }
    drop(listener);
    graceful.shutdown().await;
}
