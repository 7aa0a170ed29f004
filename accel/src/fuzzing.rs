//! Entry points for the fuzz targets (`fuzz/`): each takes untrusted bytes the way the server does
//! and runs them through the same code. Not an API: they exist so that cargo-fuzz can reach what
//! the server keeps private, and they must never panic, whatever the bytes.

use bytes::Bytes;

use crate::backend::candle::CandleBackend;
use crate::backend::{Backend, ExecLimits, LoadLimits};
use crate::core::{DataType, InstanceKind, IoSpec, ModelFile, ModelSpec, Scheduling, validate};

/// A client's bytes on a Unix-socket gRPC connection: frames and HPACK header blocks, rewritten.
pub fn grpc_authority(data: &[u8]) {
    crate::server::fuzz_grpc_authority(data);
}

/// config.pbtxt text: parsed leniently, then turned into the request path's spec.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((config, _)) = crate::repository::parse_config(text) {
        let _ = crate::repository::to_spec(&config, 1, "candle");
        let _ = crate::residency::split::Split::of_config(&config, &[1, 2, 3]);
    }
}

/// A model both wire decoders are fuzzed against: batching, every kind of dimension, an optional
/// input, a BYTES input, a reshape.
pub fn spec() -> ModelSpec {
    let mut reshaped = io("c", DataType::I64, vec![2, 2], false);
    reshaped.reshape = Some(vec![4]);
    ModelSpec {
        name: "m".into(),
        version: 1,
        platform: "onnxruntime_onnx".into(),
        backend: "candle".into(),
        max_batch_size: 8,
        inputs: vec![
            io("a", DataType::F32, vec![-1, 3], false),
            io("b", DataType::Bytes, vec![-1], true),
            reshaped,
        ],
        outputs: vec![io("y", DataType::F32, vec![-1], false)],
        scheduling: Scheduling::Direct,
        instance_count: 1,
        instance_kind: InstanceKind::Cpu,
        variable: Default::default(),
    }
}

/// A REST inference body: the first byte says whether (and how long) an
/// `Inference-Header-Content-Length` header is, the rest is the body; decoded, validated, and a
/// response encoded from its inputs.
pub fn rest_body(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let header = match mode % 3 {
        0 => None,
        1 => Some(body.len().saturating_sub(usize::from(mode / 3)).to_string()),
        _ => Some("0".to_string()),
    };
    crate::server::fuzz_rest_body(header.as_deref(), Bytes::copy_from_slice(body), &spec());
}

/// A gRPC ModelInferRequest's bytes: decoded by prost, converted, validated, and batched with itself.
pub fn grpc_request(data: &[u8]) {
    let Ok(request) = <accel_proto::inference::ModelInferRequest as prost::Message>::decode(data) else {
        return;
    };
    let Ok(decoded) = crate::server::decode_infer_request(request) else {
        return;
    };
    let request = decoded.request;
    let spec = spec();
    if let Ok(valid) = validate(&spec, request.clone()) {
        let batch = crate::batching::assemble::batch(&spec, &[&valid, &valid], Default::default());
        for input in batch.inputs.iter().flatten() {
            let _ = input.contiguous();
        }
    }
    // The same request against a padded and a ragged model: batched with itself, executed by an
    // engine that echoes shapes, and split back (padding, cutting, scattering, classification).
    for spec in [padded_spec(), ragged_spec()] {
        if let Ok(valid) = validate(&spec, request.clone()) {
            let entries = [&valid, &valid];
            let batch = crate::batching::assemble::batch(&spec, &entries, Default::default());
            let outputs: Vec<crate::core::Tensor> = batch.outputs.iter().map(|&k| echo(&spec, k, &batch)).collect();
            let _ = crate::batching::assemble::split(&spec, &batch.outputs, outputs, &entries);
        }
    }
}

/// An engine's output `k` for `batch`, zeros of the shape a well-behaved model would produce: the
/// first input's batched shape (feature dims from the spec where fixed), BYTES as empty strings.
fn echo(spec: &ModelSpec, k: usize, batch: &crate::backend::Batch) -> crate::core::Tensor {
    let io = &spec.outputs[k];
    let first = batch
        .inputs
        .iter()
        .flatten()
        .next()
        .map(|i| i.shape.clone())
        .unwrap_or_default();
    let mut shape: Vec<usize> = first
        .iter()
        .take(1 + io.dims.iter().filter(|&&d| d < 0).count())
        .copied()
        .collect();
    shape.extend(io.dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize));
    let count: usize = shape.iter().product::<usize>().min(1 << 20);
    let data = match io.datatype.size() {
        Some(size) => vec![0u8; count * size],
        None => vec![0u8; count * 4],
    };
    crate::core::Tensor {
        name: io.name.clone(),
        datatype: io.datatype,
        shape,
        data: Bytes::from(data),
    }
}

fn io(name: &str, datatype: DataType, dims: Vec<i64>, optional: bool) -> IoSpec {
    IoSpec {
        name: name.into(),
        datatype,
        dims,
        reshape: None,
        optional,
        verify_shape: false,
        ragged: false,
        labels: None,
    }
}

fn dynamic() -> Scheduling {
    Scheduling::Dynamic(Default::default())
}

/// A padded model: "a" INT64 [-1] and "c" FP32 [-1, 2] padded, "b" BYTES optional; "y" [-1, 2]
/// cut back, "z" [2] untouched (classification allowed on both).
pub fn padded_spec() -> ModelSpec {
    ModelSpec {
        inputs: vec![
            io("a", DataType::I64, vec![-1], false),
            io("b", DataType::Bytes, vec![-1], true),
            io("c", DataType::F32, vec![-1, 2], true),
        ],
        outputs: vec![
            io("y", DataType::F32, vec![-1, 2], false),
            io("z", DataType::I32, vec![2], false),
        ],
        scheduling: dynamic(),
        variable: crate::core::VariableBatching {
            padding: Some(crate::core::Padding {
                inputs: vec![(0, vec![0; 8]), (2, vec![0; 4])],
                outputs: vec![0],
                max_batch_tokens: Some(1 << 16),
                min_efficiency_percent: 50,
            }),
            ..Default::default()
        },
        ..spec()
    }
}

/// A ragged model: "a" FP32 [-1] ragged with every batch-input kind, "y" scattered by it.
pub fn ragged_spec() -> ModelSpec {
    use crate::core::{BatchInputKind as K, BatchInputSpec, BatchOutputSpec};
    let mut a = io("a", DataType::F32, vec![-1], false);
    a.ragged = true;
    let kinds = [
        K::ElementCount,
        K::AccumulatedElementCount,
        K::AccumulatedElementCountWithZero,
        K::MaxElementCountAsShape,
        K::ItemShape,
        K::ItemShapeFlatten,
    ];
    ModelSpec {
        inputs: vec![a, io("b", DataType::Bytes, vec![-1], true)],
        outputs: vec![
            io("y", DataType::F32, vec![-1], false),
            io("z", DataType::F32, vec![1], false),
        ],
        scheduling: dynamic(),
        variable: crate::core::VariableBatching {
            batch_inputs: kinds
                .iter()
                .enumerate()
                .map(|(i, &kind)| BatchInputSpec {
                    kind,
                    target: format!("bi{i}"),
                    datatype: if i % 2 == 0 { DataType::I32 } else { DataType::F32 },
                    source: 0,
                })
                .collect(),
            batch_outputs: vec![BatchOutputSpec {
                targets: vec![0],
                source: 0,
            }],
            padding: None,
        },
        ..spec()
    }
}

/// A model directory for [`onnx_model`] inside `dir` (a temporary directory): an empty model file,
/// and a data file external data may name.
pub fn model_file_in(dir: &std::path::Path) -> std::io::Result<ModelFile> {
    std::fs::create_dir_all(dir.join("1"))?;
    std::fs::write(dir.join("1").join("model.onnx"), b"")?;
    std::fs::write(dir.join("1").join("weights.bin"), [0u8; 64])?;
    crate::core::ModelDir::open(dir)
        .and_then(|d| d.file("1/model.onnx"))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// An ONNX file's bytes, loaded by the candle engine (parsed, compiled, constants folded) under
/// small limits. `file` is a model file whose directory external data is looked up in.
pub fn onnx_model(data: &[u8], file: &ModelFile) {
    let backend = CandleBackend::cpu().with_limits(ExecLimits {
        max_bytes: 64 << 20,
        max_loop_iterations: 1 << 10,
        max_work: 1 << 30,
    });
    let limits = LoadLimits {
        deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(2)),
        fold_bytes: 64 << 20,
        max_loop_iterations: 1 << 10,
        fold_work: 1 << 30,
    };
    if let Ok(model) = backend.load_bytes(data, file, &limits) {
        let _ = model.signature();
        let _ = backend.name();
    }
}
