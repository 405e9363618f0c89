//! Server assembly: the `Gateway` service and the users' typed methods
//! ([`crate::typed`]) behind the same layers, health and reflection on the
//! same port, served (by [`transport`]) until shutdown, with
//! a drain period.
//!
//! [`spawn`] takes an already bound listener and a shutdown token, so tests
//! bind port 0 and trigger shutdown themselves; the binary passes SIGTERM.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use amqp_gateway::{FILE_DESCRIPTOR_SET, SERVICE_NAME};
use futures::future::Either;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{body::Body, service::Routes};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{
    amqp::AmqpClient,
    auth::AuthLayer,
    config::Config,
    context::RequestContextLayer,
    deadline::DeadlinePolicy,
    health,
    limit::InFlightLimitLayer,
    metrics::ProcessMetrics,
    service::{Calls, PROCESS_PATH, ProcessService},
    size::{self, RequestSizeLayer},
    transport::{self, Settings},
    typed::TypedMethods,
};

/// How long the AMQP connection may take to close after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server could not start or failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection descriptors did not load.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server task panicked.
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    client: AmqpClient,
    in_flight: InFlightLimitLayer,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// The gateway's broker client (connection state, pending calls, counters).
    pub fn client(&self) -> &AmqpClient {
        &self.client
    }

    /// `Process` calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.in_flight()
    }

    /// Waits until the gateway has shut down.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await?
    }
}

/// Sends each request to its service by path: `Process`, a typed method of
/// the user's services, or else the rest (health, reflection, and
/// UNIMPLEMENTED for any other path).
#[derive(Clone, Debug)]
pub struct Dispatch<P, T, R> {
    process: P,
    typed: T,
    /// `/package.Service/` of every user service.
    prefixes: Arc<[String]>,
    rest: R,
}

impl<P, T, R> Dispatch<P, T, R> {
    /// Serves `Process` with `process`, the services of `apis` with `typed`
    /// and the rest with `rest`.
    pub fn new(apis: &crate::api::Apis, process: P, typed: T, rest: R) -> Self {
        let prefixes = apis.services.iter().map(|s| format!("/{s}/")).collect();
        Self { process, typed, prefixes, rest }
    }
}

impl<P, T, R, B> Service<http::Request<B>> for Dispatch<P, T, R>
where
    P: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    T: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    R: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<P::Future, Either<T::Future, R::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let ready = [self.process.poll_ready(cx), self.typed.poll_ready(cx), self.rest.poll_ready(cx)];
        if ready.iter().all(Poll::is_ready) { Poll::Ready(Ok(())) } else { Poll::Pending }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path == PROCESS_PATH {
            Either::Left(self.process.call(request))
        } else if self.prefixes.iter().any(|prefix| path.starts_with(prefix.as_str())) {
            Either::Right(Either::Left(self.typed.call(request)))
        } else {
            Either::Right(Either::Right(self.rest.call(request)))
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then drains:
/// new calls are refused, calls in flight get `config.shutdown_grace` to
/// finish and are answered UNAVAILABLE after it, and the AMQP connection is
/// closed.
pub fn spawn(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<Running, ServeError> {
    let tracker = TaskTracker::new();
    let amqp_shutdown = CancellationToken::new();
    let client = AmqpClient::start(config.amqp.clone(), amqp_shutdown.clone(), &tracker);

    let apis = &config.apis;
    let health_service = health::service(client.node(), &apis.services, shutdown.clone(), &tracker);

    // v1 and v1alpha both, so grpcurl and other tools of any age work. The
    // users' descriptor sets are served byte for byte (comments and custom
    // options included); services are listed by name, so that services of
    // those files the gateway does not serve are not offered.
    let reflection = |own: &str| {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let builder = apis.encoded_sets.iter().fold(builder, |b, set| b.register_encoded_file_descriptor_set(set));
        [SERVICE_NAME, health::SERVICE, own]
            .into_iter()
            .chain(apis.services.iter().map(String::as_str))
            .fold(builder, |b, name| b.with_service_name(name))
    };
    let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection").build_v1()?;
    let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;

    let abort = CancellationToken::new();
    let in_flight = InFlightLimitLayer::new(config.max_in_flight);
    let calls = Calls::new(client.clone(), config.limits.clone(), abort.clone());
    let policy =
        DeadlinePolicy { default_timeout: config.limits.default_timeout, max_timeout: config.limits.max_timeout };
    let routes = config.limits.routes.iter().map(String::as_str).chain(apis.routes());
    let context = RequestContextLayer::new(policy, Arc::new(ProcessMetrics::new(routes)), config.tracing);
    // Shedding first: an overloaded gateway refuses a call before spending
    // anything on it. The size layer answers an oversized request from its
    // length prefix; tonic's decode limit, set to the same number, stays
    // behind it. `Process` and the typed methods share the layers' state: one
    // in-flight limit, one set of metrics.
    let max_payload = config.limits.max_payload_bytes;
    let size = RequestSizeLayer::new(max_payload);
    let message_limit = size::message_limit(max_payload);
    let process = in_flight.layer(context.layer(size.layer(ProcessService::new(calls.clone(), message_limit))));
    let typed = in_flight.layer(context.layer(size.layer(TypedMethods::new(calls, apis, message_limit))));

    // Health and reflection through tonic's router; `Process` and the typed
    // methods, every call's path, straight from the dispatch.
    let routes = Routes::new(health_service).add_service(reflection_v1).add_service(reflection_v1alpha).prepare();
    let routes = Dispatch::new(apis, process, typed, routes);
    // Authentication first: nothing else runs for a caller without a token.
    let routes = AuthLayer::new(config.tokens.clone(), config.open_probes).layer(routes);
    let settings = Settings { limits: config.connections.clone(), tls: config.tls.clone() };

    let grace = config.shutdown_grace;
    let task_client = client.clone();
    let task = tokio::spawn(
        async move {
            let serve = transport::serve(listener, routes, settings, shutdown.clone(), &tracker);
            let mut serve = std::pin::pin!(serve);
            tokio::select! {
                () = &mut serve => {}
                () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!(?grace, "grace period over: answering the calls still in flight with UNAVAILABLE");
                    abort.cancel();
                    // Every handler now returns at once; give the connections
                    // a moment to write those answers.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut serve).await;
                }
            }
            tracing::info!(pending = task_client.pending(), "gRPC server stopped; closing the broker connection");
            amqp_shutdown.cancel();
            tracker.close();
            if tokio::time::timeout(CLOSE_TIMEOUT, tracker.wait()).await.is_err() {
                tracing::warn!("background tasks did not stop in time");
            }
            Ok(())
        }
        .instrument(tracing::info_span!("gateway")),
    );
    Ok(Running { client, in_flight, task })
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// A service that answers with its name in a header.
    fn named(
        name: &'static str,
    ) -> impl Service<http::Request<()>, Response = http::Response<Body>, Error = Infallible, Future: Send> + Clone
    {
        service_fn(move |_: http::Request<()>| async move {
            Ok::<_, Infallible>(http::Response::builder().header("served-by", name).body(Body::default()).unwrap())
        })
    }

    #[tokio::test]
    async fn requests_are_dispatched_by_path() {
        let apis = crate::api::Apis { services: vec!["shop.v1.Shop".into()], ..Default::default() };
        let dispatch = Dispatch::new(&apis, named("process"), named("typed"), named("rest"));
        for (path, expected) in [
            (PROCESS_PATH, "process"),
            ("/gateway.v1.Gateway/ProcessMore", "rest"),
            ("/gateway.v1.Gateway/Other", "rest"),
            ("/shop.v1.Shop/Get", "typed"),
            ("/shop.v1.ShopX/Get", "rest"),
            ("/grpc.health.v1.Health/Check", "rest"),
        ] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            let response = dispatch.clone().oneshot(request).await.unwrap();
            assert_eq!(response.headers()["served-by"], expected, "{path}");
        }
    }
}
