//! A library for AMQP workers that answer the gateway, and the `worker`
//! binary built on it.
//!
//! A handler is a [`tower::Service`] from [`Request`] to [`Response`], failing
//! with a gRPC [`Status`] that the caller of the gateway receives as is. Any
//! tower middleware (timeouts, concurrency limits, tracing) composes around it.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio_util::sync::CancellationToken;
//! use worker::{Request, Response, Status, WorkerConfig};
//!
//! let handler = tower::service_fn(|request: Request| async move {
//!     if request.payload.is_empty() {
//!         return Err(Status::invalid_argument("empty payload"));
//!     }
//!     Ok(Response::new(request.payload.to_ascii_uppercase()))
//! });
//! let config = WorkerConfig::new("amqp://127.0.0.1:5672/%2f".parse()?, "upper");
//! worker::spawn(config, handler, CancellationToken::new()).wait().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! A request's path through the library, one concern per module:
//!
//! - `supervisor`: [`spawn`] and [`RunningWorker`]; keeps a connection and a
//!   consuming channel alive, reconnecting with backoff, and stops on a
//!   refusal retrying cannot fix.
//! - `queue`: queue set-up on a fresh channel (confirms, prefetch, declare or
//!   check the queue, start consuming).
//! - `consume`: the delivery loop of one channel, and the drain on shutdown.
//! - `delivery`: one delivery: its span, the checks, the handler, the reply
//!   and the ack.
//! - `reply`: the reply message, per the AMQP contract.
//! - `addresses`: reply addresses that break the connection a reply is
//!   published on (a dead node's Direct Reply-to on RabbitMQ 3.10), found
//!   and then answered no more.
//! - [`request`]: what handlers receive and return.
//! - [`config`]: how the worker connects and consumes, and its validation.
//! - [`error`]: why a worker stopped on its own.
//! - [`handlers`]: the built-in handlers of the `worker` binary.
//! - [`cli`]: the binary's flags, mapped to a config and a handler.
//! - `stats`: counters and Prometheus metrics.

mod addresses;
pub mod cli;
pub mod config;
mod consume;
mod delivery;
pub mod error;
pub mod handlers;
mod queue;
mod reply;
pub mod request;
mod stats;
mod supervisor;

pub use config::{ConfigError, QueueType, WorkerConfig};
pub use error::{SetupError, WorkerError};
pub use request::{Request, Response};
pub use stats::Stats;
pub use supervisor::{RunningWorker, spawn};
pub use tonic::{Code, Status};
