//! config.pbtxt text, as the repository reads it (lenient parse, then the spec).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel::fuzzing::config_text(data));
