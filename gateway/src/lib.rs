//! The gRPC-to-AMQP gateway: `gateway.v1.Gateway/Process` as a RabbitMQ
//! request/reply round trip.
//!
//! # Layout
//!
//! A call travels through these files, in order:
//!
//! - [`server`]: assembly. Health ([`health`]) and reflection, graceful shutdown, HTTP/2
//!   serving (`transport`), the dispatch of each request by its path
//!   ([`server::Dispatch`]: `Process`, a typed method, or tonic's router for
//!   the rest), and the layers around `Process`: [`limit::InFlightLimitLayer`]
//!   (load shedding), [`context::RequestContextLayer`] (the call's
//!   [`deadline`] and correlation id, DEADLINE_EXCEEDED when it passes, and
//!   the call's final status in its span and metrics) and
//!   [`size::RequestSizeLayer`] (oversized requests refused from their
//!   length prefix).
//! - [`auth`]: bearer tokens, checked on every request before any AMQP
//!   work.
//! - [`service`]: `Process` itself, where a request enters, is validated
//!   ([`validate`]) and its outcome is decided; and `Calls`, the round trip
//!   every call makes.
//! - [`typed`]: the users' own methods (`--service`), each a round trip to
//!   its route: protobuf bytes passed through, or JSON (`transcode`).
//!   [`api`] loads their descriptor sets and checks the configuration at
//!   start-up.
//! - [`amqp`]: where it is published and where its reply is matched (the
//!   session, its channels, the pending table, reconnection).
//! - [`error`]: every failure, and the one mapping to a gRPC status; the
//!   layers and the handler all fail with its [`error::GatewayError`].
//! - [`config`]: flags and environment, checked once at start-up; [`tls`]
//!   loads the server's certificates.
//! - [`metrics`]: counters and Prometheus metrics.
//!
//! The wire formats both sides share live in the `amqp-gateway` crate.

pub mod amqp;
pub mod api;
pub mod auth;
pub mod config;
pub mod context;
pub mod deadline;
pub mod error;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod server;
pub mod service;
pub mod size;
pub mod tls;
mod transcode;
mod transport;
pub mod typed;
pub mod validate;

pub use config::{Args, Config};
pub use server::{Running, ServeError, spawn};
