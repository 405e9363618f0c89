//! Why a worker stopped on its own: a configuration that cannot work, a
//! broker that refuses it for good, or a panic in its task. Anything that may
//! pass (the broker going away, a timeout) is retried instead, never reported
//! here.

use std::fmt;

use amqp_gateway::broker::StepError;

use crate::ConfigError;

/// The worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration was refused before connecting.
    #[error("invalid worker configuration: {0}")]
    Config(#[from] ConfigError),
    /// The broker refused the worker in a way retrying cannot fix (bad
    /// credentials, a missing virtual host, no permission, a queue that
    /// exists with other arguments): someone must change the broker's
    /// configuration or the worker's.
    #[error("the broker refused the worker, not retrying: {0}")]
    Refused(SetupError),
    /// The worker task panicked.
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A step of connecting or setting up the queue that failed, and which step
/// it was (with the queue's name, or the broker's URL without its password).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub struct SetupError {
    step: String,
    error: StepError,
}

impl SetupError {
    pub(crate) fn new(step: impl fmt::Display, error: StepError) -> Self {
        Self { step: step.to_string(), error }
    }

    /// What the worker was doing, e.g. `declaring queue "jobs"`.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// What went wrong.
    pub fn error(&self) -> &StepError {
        &self.error
    }

    /// True when retrying cannot help: see [`amqp_gateway::broker::is_permanent`].
    pub fn is_permanent(&self) -> bool {
        self.error.is_permanent()
    }
}
