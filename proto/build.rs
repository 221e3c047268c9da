//! Compiles `otel_tail/v1/*.proto` into Rust messages with prost, using the `protoc`
//! vendored by `protoc-bin-vendored` so no system package is needed. Messages only:
//! the services declared in them are served and called by hand-written code in the sampler.

use std::{fs, io, path::PathBuf};

fn main() -> io::Result<()> {
    let proto_dir = PathBuf::from("otel_tail/v1");
    let mut protos: Vec<PathBuf> = fs::read_dir(&proto_dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<io::Result<_>>()?;
    protos.retain(|path| path.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();

    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    println!("cargo:rerun-if-changed={}", proto_dir.display());
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_with_config(config, &protos, &[PathBuf::from(".")])
}
