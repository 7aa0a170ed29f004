//! Every input a fuzz target crashed on, kept in `fuzz/regressions/<target>/`, and the seed corpus
//! (`fuzz/seeds/<target>/`), run again through the same entry point (`accel::fuzzing`) on stable Rust:
//! each must be handled (an error is fine), never a panic. A new finding is fixed and its input added
//! to the regressions.

use std::path::PathBuf;

/// The files under `fuzz/<kind>/<target>/`, named `<kind>/<target>/<file>`.
fn corpus(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    Some((format!("{kind}/{target}/{name}"), std::fs::read(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The regressions and the seeds of `target`; the seeds must be there.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let seeds = corpus("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target} is missing");
    let mut all = corpus("regressions", target);
    all.extend(seeds);
    all
}

#[test]
fn config_pbtxt_findings() {
    for (_, data) in inputs("config_pbtxt") {
        accel::fuzzing::config_text(&data);
    }
}

#[test]
fn rest_body_findings() {
    for (_, data) in inputs("rest_body") {
        accel::fuzzing::rest_body(&data);
    }
}

#[test]
fn grpc_request_findings() {
    for (_, data) in inputs("grpc_request") {
        accel::fuzzing::grpc_request(&data);
    }
}

#[test]
fn onnx_model_findings() {
    let dir = tempfile::tempdir().unwrap();
    let file = accel::fuzzing::model_file_in(dir.path()).unwrap();
    assert!(
        !corpus("regressions", "onnx_model").is_empty(),
        "the onnx_model findings are missing"
    );
    for (name, data) in inputs("onnx_model") {
        let loaded = std::panic::catch_unwind(|| accel::fuzzing::onnx_model(&data, &file));
        assert!(loaded.is_ok(), "fuzz/{name} panics");
    }
}
