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
//! - [`consumer`]: connect, declare and consume the route's queue, run the
//!   handler per request, acknowledge; reconnect; drain on shutdown.
//! - `reply`: the reply message, per the AMQP contract.
//! - [`request`]: what handlers receive and return.
//! - [`config`]: how the worker connects and consumes.
//! - [`handlers`]: the built-in handlers of the `worker` binary.
//! - `stats`: counters and Prometheus metrics.

pub mod config;
pub mod consumer;
pub mod handlers;
mod reply;
pub mod request;
mod stats;

pub use config::{QueueType, WorkerConfig};
pub use consumer::{RunningWorker, WorkerError, spawn};
pub use request::{Request, Response};
pub use stats::Stats;
pub use tonic::{Code, Status};
