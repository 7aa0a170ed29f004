//! Micro-benchmarks of the request path's pieces: decoding and validating a request, assembling a
//! batch of N requests, splitting outputs, and the scheduler's cost per request (with a backend that
//! does no work, so what is left is queueing, thread hand-offs and replies).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::backend::{BackendError, Batch, ModelInstance};
use accel::batching::{QueueLimits, Scheduler, assemble};
use accel::core::{
    BatchingPolicy, DataType, InstanceKind, IoSpec, ModelSpec, Scheduling, Tensor, ValidatedRequest, validate,
};
use accel::stats::ModelStats;
use accel_proto::inference::ModelInferRequest;
use accel_proto::inference::model_infer_request::InferInputTensor;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const WIDTH: usize = 256;

fn spec(dynamic: bool) -> ModelSpec {
    let io = |name: &str| IoSpec {
        name: name.into(),
        datatype: DataType::F32,
        dims: vec![WIDTH as i64],
        reshape: None,
        optional: false,
        verify_shape: false,
        ragged: false,
        labels: None,
    };
    ModelSpec {
        name: "mlp".into(),
        version: 1,
        platform: "onnxruntime_onnx".into(),
        backend: "candle".into(),
        max_batch_size: 64,
        inputs: vec![io("INPUT0")],
        outputs: vec![io("OUTPUT0")],
        scheduling: if dynamic {
            Scheduling::Dynamic(BatchingPolicy::default())
        } else {
            Scheduling::Direct
        },
        instance_count: 1,
        instance_kind: InstanceKind::Cpu,
        variable: Default::default(),
    }
}

fn wire_request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "mlp".into(),
        id: "1".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, WIDTH as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(vec![0u8; WIDTH * 4])],
        ..Default::default()
    }
}

fn validated(spec: &ModelSpec) -> ValidatedRequest {
    validate(
        spec,
        accel::server::decode_infer_request(wire_request())
            .expect("decodes")
            .request,
    )
    .expect("valid")
}

fn decode_and_validate(c: &mut Criterion) {
    let spec = spec(true);
    c.bench_function("decode_and_validate", |b| {
        b.iter(|| {
            let r = accel::server::decode_infer_request(black_box(wire_request()))
                .expect("decodes")
                .request;
            black_box(validate(&spec, r).expect("valid"))
        })
    });
}

fn assemble_and_split(c: &mut Criterion) {
    let spec = spec(true);
    let mut group = c.benchmark_group("batch");
    for n in [1usize, 8, 64] {
        let requests: Vec<ValidatedRequest> = (0..n).map(|_| validated(&spec)).collect();
        let refs: Vec<&ValidatedRequest> = requests.iter().collect();
        group.bench_with_input(BenchmarkId::new("assemble", n), &n, |b, _| {
            b.iter(|| {
                let batch = assemble::batch(&spec, black_box(&refs), Default::default());
                // The one copy the backend makes of each input.
                black_box(batch.inputs[0].as_ref().map(|i| i.contiguous()))
            })
        });
        let output = Tensor {
            name: "OUTPUT0".into(),
            datatype: DataType::F32,
            shape: vec![n, WIDTH],
            data: Bytes::from(vec![0u8; n * WIDTH * 4]),
        };
        group.bench_with_input(BenchmarkId::new("split", n), &n, |b, _| {
            b.iter(|| black_box(assemble::split(&spec, &[0], vec![output.clone()], black_box(&refs))))
        });
    }
    group.finish();
}

/// A backend that answers at once with zeros of the right shape.
struct Instant0;

impl ModelInstance for Instant0 {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let rows = batch.inputs[0].as_ref().map_or(1, |i| i.shape[0]);
        Ok(vec![Tensor {
            name: "OUTPUT0".into(),
            datatype: DataType::F32,
            shape: vec![rows, WIDTH],
            data: Bytes::from(vec![0u8; rows * WIDTH * 4]),
        }])
    }
}

fn scheduler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("scheduler_per_request");
    for (label, dynamic, concurrent) in [("direct_1", false, 1usize), ("dynamic_64", true, 64)] {
        let spec = Arc::new(spec(dynamic));
        let stats = Arc::new(ModelStats::new("mlp", 1, 1));
        let (sched, threads) = Scheduler::start(
            spec.clone(),
            vec![Box::new(Instant0)],
            stats,
            QueueLimits {
                max_queued: 4096,
                executor_spin: Duration::from_micros(50),
            },
        )
        .expect("threads");
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    let mut done = 0u64;
                    while done < iters {
                        let n = concurrent.min((iters - done) as usize).max(1);
                        let calls = (0..n).map(|_| sched.infer(validated(&spec), Instant::now()));
                        black_box(futures_util::future::join_all(calls).await);
                        done += n as u64;
                    }
                    start.elapsed()
                })
            })
        });
        threads.shutdown();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = decode_and_validate, assemble_and_split, scheduler
}
criterion_main!(benches);
