//! HTTP/2 serving of the gRPC services: the accept loop, connection settings
//! and the graceful drain.
//!
//! Why hyper directly and not tonic's transport server: tonic's server wraps
//! every service in its own timeout, started from `grpc-timeout`, which
//! answers CANCELLED and can fire before the gateway's own deadline when the
//! runtime is busy (the router only calls the service when first polled). The
//! contract wants DEADLINE_EXCEEDED, decided in one place
//! ([`CallLayer`](crate::call::CallLayer)), so the gateway serves the same
//! tonic services over hyper with no timer of tonic's in the way.

use std::{net::SocketAddr, time::Duration};

use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;
use tracing::Instrument;

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// HTTP/2 settings of every connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Http2Settings {
    /// Most concurrent streams (calls) per connection.
    pub(crate) max_concurrent_streams: u32,
}

/// Serves `routes` to every connection accepted on `listener` until
/// `shutdown`; then stops accepting, tells every connection to finish (HTTP/2
/// GOAWAY: calls already started continue, new ones go elsewhere) and returns
/// once all of them have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: Routes,
    settings: Http2Settings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let routes = routes.prepare();
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.max_concurrent_streams(settings.max_concurrent_streams);
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
        let connection = http2.serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes.clone()));
        let connection = graceful.watch(connection);
        tracker.spawn(connection_task(connection, peer).instrument(tracing::debug_span!("connection", %peer)));
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn connection_task<E: std::fmt::Display>(connection: impl Future<Output = Result<(), E>>, peer: SocketAddr) {
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
