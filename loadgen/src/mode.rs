//! The modes behind one call: connect the mode's client, drive the load
//! through it, close it. Used by a single `loadgen` run and by `bench`.

use std::time::Duration;

use bytes::Bytes;

use crate::{
    amqp::{Flavor, RawClient, RawError},
    driver::{self, Plan},
    gateway::{self, GatewayError},
    report::{ReportError, Run},
    typed::{self, Method},
};

/// What carries the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Mode {
    /// gRPC through the gateway.
    Gateway,
    /// Straight to the broker, publishing exactly what the gateway publishes.
    RawAmqp,
    /// Straight to the broker, the tutorial's bare request/reply.
    RawBare,
    /// A typed method through the gateway in passthrough
    /// (`loadgen.v1.Echo/Echo`: protobuf bytes to the worker).
    Typed,
    /// The same through the gateway transcoding to JSON
    /// (`loadgen.v1.Echo/EchoJson`, served with `--transcode-json`).
    TypedJson,
}

impl Mode {
    /// Every mode, in the order the bench alternates them: the typed modes
    /// right after `Process`, so the runs compared most closely are closest
    /// in time.
    pub(crate) const ALL: [Mode; 5] = [Mode::Gateway, Mode::Typed, Mode::TypedJson, Mode::RawAmqp, Mode::RawBare];

    /// The name on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::RawAmqp => "raw-amqp",
            Self::RawBare => "raw-bare",
            Self::Typed => "typed",
            Self::TypedJson => "typed-json",
        }
    }

    /// Whether the calls go through the gateway (gRPC), rather than
    /// straight to the broker.
    pub(crate) fn via_gateway(self) -> bool {
        matches!(self, Self::Gateway | Self::Typed | Self::TypedJson)
    }
}

/// One run, fully described.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) mode: Mode,
    /// Gateway `host:port` (gateway and typed modes).
    pub(crate) target: String,
    /// Broker URL (raw modes).
    pub(crate) amqp_url: String,
    /// The route (gateway and raw modes; a typed method's route is the
    /// gateway's to choose).
    pub(crate) route: String,
    pub(crate) concurrency: usize,
    /// gRPC connections (gateway and typed modes) or AMQP channels (raw
    /// modes).
    pub(crate) connections: usize,
    pub(crate) payload: Bytes,
    pub(crate) deadline: Duration,
    pub(crate) plan: Plan,
}

/// A run could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("raw AMQP client: {0}")]
    Raw(#[from] RawError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// Connects, drives `load`, disconnects.
pub(crate) async fn run(load: &Load) -> Result<Run, LoadError> {
    let flavor = match load.mode {
        Mode::Gateway => {
            let channels = gateway::connect(&load.target, load.connections).await?;
            let callers = gateway::callers(&channels, load.concurrency, &load.route, &load.payload, load.deadline);
            return Ok(driver::run(load.plan, callers).await?);
        }
        Mode::Typed | Mode::TypedJson => {
            let method = if load.mode == Mode::Typed { Method::Passthrough } else { Method::Json };
            let channels = gateway::connect(&load.target, load.connections).await?;
            let callers = typed::callers(&channels, load.concurrency, method, &load.payload, load.deadline);
            return Ok(driver::run(load.plan, callers).await?);
        }
        Mode::RawAmqp => Flavor::Contract,
        Mode::RawBare => Flavor::Bare,
    };
    let client = RawClient::connect(&load.amqp_url, load.connections, flavor).await?;
    let callers = client.callers(load.concurrency, &load.route, &load.payload, load.deadline);
    let run = driver::run(load.plan, callers).await;
    client.close().await;
    Ok(run?)
}
