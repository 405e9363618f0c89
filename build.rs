//! Generates the `gateway.v1` protobuf and gRPC code, plus the encoded file
//! descriptor set that gRPC reflection serves.
//!
//! `protoc` comes from `protoc-bin-vendored`, so a fresh machine needs no
//! system install.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    // `set_var` is `unsafe` in edition 2024, so pass protoc through the builder
    // instead of the environment.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("gateway_descriptor.bin"))
        .bytes(".gateway.v1")
        .compile_with_config(config, &["proto/gateway/v1/gateway.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
