//! The gRPC health service: SERVING while a broker session is up and
//! NOT_SERVING otherwise (and from the start of shutdown on), for the whole
//! server (`""`), for `gateway.v1.Gateway` and for every user service
//! served with `--service`. Every health response names
//! the broker node the gateway is connected to in its `x-amqp-node` metadata
//! (`host:port`, no credentials), so a probe or `grpcurl -v` shows which node
//! of a cluster a gateway uses.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use amqp_gateway::SERVICE_NAME;
use futures::future::BoxFuture;
use http::HeaderValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, server::NamedService};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::Service;

/// Response metadata naming the broker node the gateway is connected to.
pub const NODE_HEADER: &str = "x-amqp-node";

/// The health service's own name.
pub(crate) const SERVICE: &str = "grpc.health.v1.Health";

/// The health service, reporting `node` for the whole server, for
/// `gateway.v1.Gateway` and for every user service in `services`: see the
/// module docs.
pub(crate) fn service(
    node: watch::Receiver<Option<String>>,
    services: &[String],
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> impl Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible, Future: Send + 'static>
+ NamedService
+ Clone
+ Send
+ Sync
+ 'static {
    let (reporter, health) = tonic_health::server::health_reporter();
    let services = ["", SERVICE_NAME].into_iter().map(str::to_owned).chain(services.iter().cloned()).collect();
    let report = report(node.clone(), services, reporter, shutdown);
    tracker.spawn(tracing::Instrument::instrument(report, tracing::info_span!("health")));
    WithBrokerNode { inner: health, node }
}

/// Reports SERVING while the broker session is up and NOT_SERVING otherwise,
/// and NOT_SERVING from the start of shutdown on.
async fn report(
    mut node: watch::Receiver<Option<String>>,
    services: Vec<String>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    loop {
        let status =
            if node.borrow_and_update().is_some() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in &services {
            health.set_service_status(service, status).await;
        }
        tokio::select! {
            changed = node.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    for service in &services {
        health.set_service_status(service, ServingStatus::NotServing).await;
    }
}

/// A health service whose responses carry [`NODE_HEADER`].
#[derive(Clone, Debug)]
struct WithBrokerNode<S> {
    inner: S,
    node: watch::Receiver<Option<String>>,
}

impl<S: NamedService> NamedService for WithBrokerNode<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for WithBrokerNode<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let node = self.node.borrow().as_deref().and_then(|n| HeaderValue::from_str(n).ok());
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(node) = node {
                response.headers_mut().insert(NODE_HEADER, node);
            }
            Ok(response)
        })
    }
}
