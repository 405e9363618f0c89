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
//! # Typed handlers
//!
//! A worker for a method of the user's own protobuf service (the gateway's
//! `--service`) takes and returns prost messages: [`typed::handler`] decodes
//! the request (refusing bytes that are not the request type with
//! `INVALID_ARGUMENT`) and encodes the reply as `application/x-protobuf`.
//! The message types come from prost-build with `enable_type_names()`.
//!
//! ```no_run
//! # #[derive(Clone, PartialEq, prost::Message)]
//! # struct QuoteRequest { #[prost(uint32, tag = "1")] quantity: u32 }
//! # impl prost::Name for QuoteRequest { const NAME: &'static str = "QuoteRequest"; const PACKAGE: &'static str = "orders.v1"; }
//! # #[derive(Clone, PartialEq, prost::Message)]
//! # struct QuoteResponse { #[prost(int64, tag = "1")] total_cents: i64 }
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio_util::sync::CancellationToken;
//! use worker::{Status, WorkerConfig, typed::{self, TypedRequest}};
//!
//! async fn quote(request: TypedRequest<QuoteRequest>) -> Result<QuoteResponse, Status> {
//!     if request.message.quantity == 0 {
//!         return Err(Status::invalid_argument("quantity must be positive"));
//!     }
//!     Ok(QuoteResponse { total_cents: 250 * i64::from(request.message.quantity) })
//! }
//!
//! let config = WorkerConfig::new("amqp://127.0.0.1:5672/%2f".parse()?, "orders.v1.Orders.Quote");
//! let handler = typed::handler(tower::service_fn(quote));
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
//! - [`typed`]: handlers of prost messages, and one queue serving several
//!   methods.
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
pub mod typed;

pub use config::{ConfigError, QueueType, WorkerConfig};
pub use error::{SetupError, WorkerError};
pub use request::{Request, Response};
pub use stats::Stats;
pub use supervisor::{RunningWorker, spawn};
pub use tonic::{Code, Status};
