//! Compiles the protocol with protox (pure Rust, so no protoc is needed) and generates the tonic client
//! and server. Every `bytes` field becomes `bytes::Bytes`, so raw tensor contents are slices of the
//! received buffer rather than copies. The descriptor set is kept too: the model-config parser reads
//! config.pbtxt (protobuf text format) through prost-reflect with it.

use prost::Message;

const PROTOS: [&str; 3] = [
    "proto/inference/grpc_service.proto",
    "proto/inference/model_config.proto",
    "proto/grpc/health/v1/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("accel_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .build_server(true)
        // Servers that implement part of the service (the benchmark ceiling) answer UNIMPLEMENTED for the rest.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
