//! Generates the prost types of `orders.v1` from
//! `examples/orders/proto/orders/v1/orders.proto`, with type names
//! (`prost::Name`), which `worker::typed` needs to name the message it
//! expects. Messages only: the worker is no gRPC server, the gateway is.
//!
//! `protoc` and the well-known types it imports (`Timestamp`) come from
//! `protoc-bin-vendored`, as in the root build.rs.

use std::{error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto = PathBuf::from("../orders/proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?).enable_type_names();
    let well_known = protoc_bin_vendored::include_path()?;
    config.compile_protos(&[proto.join("orders/v1/orders.proto")], &[proto.clone(), well_known])?;
    println!("cargo:rerun-if-changed={}", proto.display());
    Ok(())
}
