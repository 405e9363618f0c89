//! What the end-to-end tests share: an in-process gateway on a loopback
//! port and workers built with the library, each stopped when dropped.

#![allow(dead_code, unreachable_pub)] // each test crate uses part of it

use std::{net::SocketAddr, time::Duration};

use amqp_gateway::pb::gateway_client::GatewayClient;
use gateway::{Args, Config, Running};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use worker::{Request, Response, RunningWorker, Status, WorkerConfig};

pub const READY: Duration = Duration::from_secs(15);

pub type RawHttp2 =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>;

/// A gateway serving on a loopback port, shut down when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    running: Option<Running>,
    shutdown: CancellationToken,
}

impl TestGateway {
    pub async fn start(routes: &[&str], extra: &[&str]) -> Self {
        Self::start_with_url(&testkit::amqp_url(), routes, extra).await
    }

    pub async fn start_with_url(url: &str, routes: &[&str], extra: &[&str]) -> Self {
        let routes = routes.join(",");
        let url = url.to_owned();
        let mut argv = vec!["gateway", "--amqp-url", &url, "--routes", &routes];
        argv.extend_from_slice(extra);
        let config: Config = <Args as clap::Parser>::try_parse_from(argv).unwrap().into_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let running = gateway::spawn(config, listener, shutdown.clone()).unwrap();
        testkit::eventually("gateway connected to the broker", READY, || {
            let connected = running.client().is_connected();
            async move { connected }
        })
        .await;
        Self { addr, running: Some(running), shutdown }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub async fn client(&self) -> GatewayClient<Channel> {
        GatewayClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }

    /// A client that sends `grpc-timeout` without enforcing it itself, as
    /// clients in other languages may not. tonic's `Channel` runs its own
    /// timer and answers CANCELLED locally, which would hide the gateway's
    /// answer that deadline tests are about.
    pub fn deadline_client(&self) -> GatewayClient<RawHttp2> {
        let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
        GatewayClient::with_origin(http2, format!("http://{}", self.addr).parse().unwrap())
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let running = self.running.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), running.wait()).await.unwrap().unwrap();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A worker built with the library, stopped when dropped.
pub struct TestWorker {
    running: Option<RunningWorker>,
    shutdown: CancellationToken,
}

impl TestWorker {
    pub async fn start<S>(queue: &str, handler: S) -> Self
    where
        S: tower::Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), queue);
        config.durable = false;
        let shutdown = CancellationToken::new();
        let running = worker::spawn(config, handler, shutdown.clone());
        assert!(running.consuming(READY).await, "worker did not start consuming {queue}");
        Self { running: Some(running), shutdown }
    }

    pub async fn echo(queue: &str) -> Self {
        Self::start(queue, worker::handlers::echo(Duration::ZERO)).await
    }

    pub fn running(&self) -> &RunningWorker {
        self.running.as_ref().unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let running = self.running.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), running.wait()).await.unwrap().unwrap();
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
