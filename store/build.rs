//! Generates the etcd v3 gRPC types and services from `proto/` with a protoc that ships
//! inside the `protoc-bin-vendored` crate (no system protoc needed), plus serde impls
//! following the proto3 JSON mapping for the gRPC gateway (`pbjson`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("etcd_descriptors.bin");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.file_descriptor_set_path(&descriptors);
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &["proto/rpc.proto", "proto/kv.proto"], &["proto"])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        .build(&[".etcdserverpb", ".mvccpb"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
