//! The gateway's contracts, shared by the gateway, the worker library and
//! anything else that speaks to either of them.
//!
//! # Layout
//!
//! - [`pb`]: the `gateway.v1` protobuf messages and gRPC service, generated
//!   from `proto/gateway/v1/gateway.proto` by `build.rs`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors that gRPC reflection
//!   serves, so `grpcurl list` and `describe` work without a local proto.
//! - [`wire`]: the AMQP wire format: header names, how status codes and
//!   deadlines are encoded, and what a reply means.
//! - [`broker`]: how both sides reach the broker (the URL, kept out of logs,
//!   bounded steps, which refusals are permanent, and the pacing of reconnect
//!   loops), so gateway and worker behave alike.
//!
//! Nothing else lives here: both sides of both contracts depend on this crate,
//! so it changes only when a contract does.

pub mod broker;
pub mod wire;

/// The `gateway.v1` protobuf API.
#[allow(missing_docs, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]
pub mod pb {
    tonic::include_proto!("gateway.v1");
}

/// Encoded `FileDescriptorSet` of `gateway.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gateway_descriptor");

/// Fully qualified name of the gRPC service, as health checks and reflection
/// name it.
pub const SERVICE_NAME: &str = "gateway.v1.Gateway";
