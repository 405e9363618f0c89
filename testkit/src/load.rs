//! Driving real gateway and worker processes: starting them, calling the
//! gateway with a client that leaves deadlines to the gateway, and counting
//! how every call ended. Shared by the fault tests and the `soak` command.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use amqp_gateway::pb::{ProcessRequest, gateway_client::GatewayClient};
use tonic::Code;

use crate::Process;

/// How long a process may take to become ready.
pub const READY: Duration = Duration::from_secs(30);

/// An HTTP/2 client for [`GatewayClient`].
pub type RawHttp2 =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>;

/// A gRPC client that sends its deadline but does not enforce it itself, so
/// every status a test sees is the gateway's own answer.
pub fn client(addr: SocketAddr) -> GatewayClient<RawHttp2> {
    let http2 =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    GatewayClient::with_origin(http2, format!("http://{addr}").parse().unwrap())
}

/// Polls until `process` has logged `line`.
pub async fn logged(process: &Process, line: &str) {
    crate::eventually(&format!("log line {line:?}"), READY, || {
        let found = process.log().contains(line);
        async move { found }
    })
    .await;
}

/// A worker process serving `route`, consuming when this returns.
pub async fn worker(url: &str, route: &str, extra: &[&str]) -> Process {
    let mut args = vec!["--route", route];
    args.extend_from_slice(extra);
    let process = Process::spawn("worker", &args, &[("AMQP_URL", url)]);
    logged(&process, "consuming").await;
    process
}

/// A gateway process allowing `routes`, connected when this returns.
pub async fn gateway(url: &str, routes: &str, extra: &[&str]) -> (Process, SocketAddr) {
    let addr = crate::free_addr();
    let listen = addr.to_string();
    let mut args = vec!["--listen", listen.as_str(), "--routes", routes];
    args.extend_from_slice(extra);
    let process = Process::spawn("gateway", &args, &[("AMQP_URL", url)]);
    logged(&process, "connected to the broker").await;
    (process, addr)
}

/// The broker node (`host:port`) the gateway at `addr` says, in its health
/// response, that it is connected to; None while it is not SERVING or does
/// not answer.
pub async fn broker_node(addr: SocketAddr) -> Option<String> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
    let channel =
        endpoint.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(2)).connect().await.ok()?;
    let response = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
    let node = response.metadata().get("x-amqp-node")?.to_str().ok()?.to_owned();
    (response.into_inner().status() == ServingStatus::Serving).then_some(node)
}

/// A `Process` request with a deadline.
pub fn request(route: &str, payload: Vec<u8>, deadline: Duration) -> tonic::Request<ProcessRequest> {
    let mut request =
        tonic::Request::new(ProcessRequest { route: route.into(), payload: payload.into(), ..Default::default() });
    request.set_timeout(deadline);
    request
}

/// How a call ended, as the test saw it.
#[derive(Debug)]
pub struct Ended {
    /// The gRPC code; `None` when the call had no answer within its deadline
    /// plus a margin (a hang).
    pub code: Option<Code>,
    /// Whether an OK reply carried the payload that was sent.
    pub payload_matches: bool,
    /// The status message of a failed call.
    pub message: String,
    /// When the call started.
    pub started: Instant,
    /// How long the call took.
    pub elapsed: Duration,
}

impl Ended {
    /// When the call ended.
    pub fn ended(&self) -> Instant {
        self.started + self.elapsed
    }
}

/// One call, bounded by `deadline` + 10 s on the whole wait: an answer that
/// late is a hang, not a busy machine.
pub async fn call(client: &mut GatewayClient<RawHttp2>, route: &str, payload: Vec<u8>, deadline: Duration) -> Ended {
    let started = Instant::now();
    let sent = payload.clone();
    let outcome =
        tokio::time::timeout(deadline + Duration::from_secs(10), client.process(request(route, payload, deadline)));
    let (code, payload_matches, message) = match outcome.await {
        Err(_) => (None, false, String::new()),
        Ok(Ok(response)) => (Some(Code::Ok), response.into_inner().payload == sent, String::new()),
        // No connection could be made (the gateway is gone): UNAVAILABLE, as
        // gRPC clients report it. Any other transport error stays UNKNOWN, so
        // a call dropped after the gateway accepted it fails the test.
        Ok(Err(status)) if refused(&status) => (Some(Code::Unavailable), false, status.message().to_owned()),
        Ok(Err(status)) => (Some(status.code()), false, status.message().to_owned()),
    };
    Ended { code, payload_matches, message, started, elapsed: started.elapsed() }
}

fn refused(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect()) {
            return true;
        }
        source = error.source();
    }
    false
}

/// Calls by how they ended (`HUNG` for no answer).
pub fn tally(ended: &[Ended]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in ended {
        *counts.entry(e.code.map_or_else(|| "HUNG".to_owned(), |c| format!("{c:?}"))).or_default() += 1;
    }
    counts
}

/// Steady load from `concurrency` callers until `stop`; every call's end.
pub fn steady_load(
    addr: SocketAddr,
    route: String,
    concurrency: usize,
    deadline: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Ended>> {
    tokio::spawn(async move {
        let callers = (0..concurrency).map(|c| {
            let (route, stop) = (route.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = client(addr);
                let mut ended = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    ended.push(call(&mut client, &route, format!("caller {c} call {i}").into_bytes(), deadline).await);
                }
                ended
            })
        });
        let mut all = Vec::new();
        for caller in futures::future::join_all(callers).await {
            all.extend(caller.unwrap());
        }
        all
    })
}
