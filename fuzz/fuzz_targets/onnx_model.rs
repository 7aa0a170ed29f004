//! An ONNX file's bytes, loaded by the candle engine under small limits.
#![no_main]

use std::sync::OnceLock;

use accel::core::ModelFile;

/// A model directory with one file, for the external data a model may name.
fn file() -> &'static ModelFile {
    static FILE: OnceLock<(tempfile::TempDir, ModelFile)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let file = accel::fuzzing::model_file_in(dir.path()).expect("the model file");
            (dir, file)
        })
        .1
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel::fuzzing::onnx_model(data, file()));
