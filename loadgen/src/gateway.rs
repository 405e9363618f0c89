//! Gateway mode: `gateway.v1.Gateway/Process` through a running gateway, with
//! tonic's own client, the way an application calls it.
//!
//! K HTTP/2 connections (one tonic `Channel` each, opened before the run so
//! connecting is not measured); caller `i` uses connection `i % K`. Every
//! call carries the deadline as `grpc-timeout`, and the whole wait is bounded
//! by the deadline plus a margin, so a hang shows up as `DEADLINE_EXCEEDED`
//! rather than a stuck run.

use std::time::Duration;

use amqp_gateway::{
    pb::{ProcessRequest, gateway_client::GatewayClient},
    wire,
};
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

use crate::driver::{Caller, Failure};

/// Beyond the deadline, how long to wait for the gateway's own answer.
const MARGIN: Duration = Duration::from_secs(1);

/// Connecting to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("invalid gateway address {target:?}: {source}")]
    Address { target: String, source: tonic::transport::Error },
    #[error("cannot connect to the gateway at {target}: {source}")]
    Connect { target: String, source: tonic::transport::Error },
}

/// Opens `connections` HTTP/2 connections to the gateway at `target`
/// (`host:port`).
pub(crate) async fn connect(target: &str, connections: usize) -> Result<Vec<Channel>, GatewayError> {
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|source| GatewayError::Address { target: target.to_owned(), source })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        // Each `connect` is a connection of its own; clones of one Channel
        // would share it.
        let channel =
            endpoint.connect().await.map_err(|source| GatewayError::Connect { target: target.to_owned(), source })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// `concurrency` callers spread over `channels`.
pub(crate) fn callers(
    channels: &[Channel],
    concurrency: usize,
    route: &str,
    payload: &Bytes,
    deadline: Duration,
) -> Vec<GatewayCaller> {
    (0..concurrency)
        .map(|i| GatewayCaller {
            client: GatewayClient::new(channels[i % channels.len()].clone()),
            route: route.to_owned(),
            payload: payload.clone(),
            deadline,
        })
        .collect()
}

/// One caller: a client on one of the connections.
pub(crate) struct GatewayCaller {
    client: GatewayClient<Channel>,
    route: String,
    payload: Bytes,
    deadline: Duration,
}

impl Caller for GatewayCaller {
    async fn call(&mut self) -> Result<(), Failure> {
        let request = ProcessRequest { route: self.route.clone(), payload: self.payload.clone(), ..Default::default() };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.deadline);
        match tokio::time::timeout(self.deadline + MARGIN, self.client.process(request)).await {
            Err(_) => Err(Failure::new(wire::code_name(tonic::Code::DeadlineExceeded), "no answer at all")),
            Ok(Err(status)) => Err(Failure::new(wire::code_name(status.code()), status.message())),
            Ok(Ok(response)) if response.get_ref().payload.len() != self.payload.len() => Err(Failure::new(
                "BAD_REPLY",
                format!("{} bytes back for {} sent", response.get_ref().payload.len(), self.payload.len()),
            )),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
