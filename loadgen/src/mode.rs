//! The three modes behind one call: connect the mode's client, drive the
//! load through it, close it. Used by a single `loadgen` run and by `bench`.

use std::time::Duration;

use bytes::Bytes;

use crate::{
    amqp::{Flavor, RawClient, RawError},
    driver::{self, Plan},
    gateway::{self, GatewayError},
    report::{ReportError, Run},
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
}

impl Mode {
    /// Every mode, in the order the bench alternates them.
    pub(crate) const ALL: [Mode; 3] = [Mode::Gateway, Mode::RawAmqp, Mode::RawBare];

    /// The name on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::RawAmqp => "raw-amqp",
            Self::RawBare => "raw-bare",
        }
    }
}

/// One run, fully described.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) mode: Mode,
    /// Gateway `host:port` (gateway mode).
    pub(crate) target: String,
    /// Broker URL (raw modes).
    pub(crate) amqp_url: String,
    pub(crate) route: String,
    pub(crate) concurrency: usize,
    /// gRPC connections (gateway mode) or AMQP channels (raw modes).
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
        Mode::RawAmqp => Flavor::Contract,
        Mode::RawBare => Flavor::Bare,
    };
    let client = RawClient::connect(&load.amqp_url, load.connections, flavor).await?;
    let callers = client.callers(load.concurrency, &load.route, &load.payload, load.deadline);
    let run = driver::run(load.plan, callers).await;
    client.close().await;
    Ok(run?)
}
