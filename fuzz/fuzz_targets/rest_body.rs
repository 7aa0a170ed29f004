//! A REST inference body (JSON, binary extension, raw binary), decoded, validated, re-encoded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel::fuzzing::rest_body(data));
