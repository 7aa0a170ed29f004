//! An ONNX file's bytes, loaded by the candle engine under small limits.
#![no_main]

use std::sync::OnceLock;

use accel::core::ModelFile;

/// A model directory with one file, for the external data a model may name (nothing there).
fn file() -> &'static ModelFile {
    static FILE: OnceLock<(tempfile::TempDir, ModelFile)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            std::fs::create_dir(dir.path().join("1")).expect("a version directory");
            std::fs::write(dir.path().join("1").join("model.onnx"), b"").expect("a model file");
            std::fs::write(dir.path().join("1").join("weights.bin"), [0u8; 64]).expect("a data file");
            let file = accel::core::ModelDir::open(dir.path())
                .and_then(|d| d.file("1/model.onnx"))
                .expect("the model file");
            (dir, file)
        })
        .1
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel::fuzzing::onnx_model(data, file()));
