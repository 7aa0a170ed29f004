//! A gRPC ModelInferRequest's bytes, decoded, converted, validated and batched.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel::fuzzing::grpc_request(data));
