//! Generated code for the protocols Accel speaks: the KServe v2 / Triton `inference` gRPC service with
//! the subset of Triton's ModelConfig that Accel uses, and `grpc.health.v1`. This crate holds generated
//! code and the descriptor pool only; conversion to Accel's own types lives in `accel::server`.

#![allow(missing_docs, missing_debug_implementations, unreachable_pub)]
#![allow(clippy::all, clippy::pedantic)]

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// `package inference`: GRPCInferenceService and ModelConfig.
pub mod inference {
    tonic::include_proto!("inference");
}

/// `package grpc.health.v1`: the standard health-check service.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// The encoded `FileDescriptorSet` of every message above.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/accel_descriptor.bin"));

static POOL: LazyLock<Result<DescriptorPool, prost_reflect::DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET));

/// The descriptor pool of this crate's messages, for reflection (text format, JSON).
pub fn descriptor_pool() -> Result<&'static DescriptorPool, &'static prost_reflect::DescriptorError> {
    POOL.as_ref()
}

/// Full name of the ModelConfig message, for looking it up in [`descriptor_pool`].
pub const MODEL_CONFIG_MESSAGE: &str = "inference.ModelConfig";
