//! A client's bytes on a Unix-socket gRPC connection, through the `:authority` rewriter.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel::fuzzing::grpc_authority(data));
