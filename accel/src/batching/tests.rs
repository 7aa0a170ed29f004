//! The scheduler with real executor threads and a backend whose executions the test releases one by
//! one: batches form while the executor is busy, queue bounds and REJECT timeouts refuse requests
//! without running them, and shutdown answers what is still queued.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{QueueLimits, Scheduler, SchedulerThreads, SubmitError};
use crate::backend::{BackendError, Batch, ModelInstance};
use crate::core::{
    BatchingPolicy, DataType, InstanceKind, IoSpec, ModelSpec, QueuePolicy, ScheduleOptions, Scheduling, Tensor,
    TimeoutAction, ValidatedRequest,
};
use crate::stats::ModelStats;

/// Reports each batch's rows, then waits for the test to release it; answers with the input.
struct Gated {
    started: mpsc::Sender<usize>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl ModelInstance for Gated {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let input = batch.inputs[0].as_ref().expect("input");
        let rows = input.shape[0];
        let _ = self.started.send(rows);
        let _ = self.release.lock().expect("lock").recv();
        let data: Vec<u8> = input.parts.iter().flat_map(|p| p.iter().copied()).collect();
        Ok(vec![Tensor {
            name: "OUT".into(),
            datatype: DataType::F32,
            shape: vec![rows, 1],
            data: Bytes::from(data),
        }])
    }
}

struct Fixture {
    scheduler: Scheduler,
    threads: Option<SchedulerThreads>,
    started: mpsc::Receiver<usize>,
    release: mpsc::Sender<()>,
    runtime: tokio::runtime::Runtime,
}

fn fixture(policy: QueuePolicy, max_queued: usize) -> Fixture {
    let io = |name: &str| IoSpec {
        name: name.into(),
        datatype: DataType::F32,
        dims: vec![1],
        reshape: None,
        optional: false,
        verify_shape: false,
        ragged: false,
        labels: None,
    };
    let spec = Arc::new(ModelSpec {
        name: "m".into(),
        version: 1,
        platform: "onnxruntime_onnx".into(),
        backend: "candle".into(),
        max_batch_size: 8,
        inputs: vec![io("IN")],
        outputs: vec![io("OUT")],
        scheduling: Scheduling::Dynamic(BatchingPolicy {
            queue_policies: vec![policy],
            ..BatchingPolicy::default()
        }),
        instance_count: 1,
        instance_kind: InstanceKind::Cpu,
        variable: Default::default(),
    });
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let instance = Gated {
        started: started_tx,
        release: Arc::new(Mutex::new(release_rx)),
    };
    let limits = QueueLimits {
        max_queued,
        executor_spin: Duration::ZERO,
    };
    let (scheduler, threads) = Scheduler::start(
        spec,
        vec![Box::new(instance)],
        Arc::new(ModelStats::new("m", 1, 1)),
        limits,
    )
    .expect("start");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    Fixture {
        scheduler,
        threads: Some(threads),
        started,
        release,
        runtime,
    }
}

fn request(value: f32, timeout: Option<Duration>) -> ValidatedRequest {
    ValidatedRequest {
        id: String::new(),
        batch_size: 1,
        inputs: vec![Some(Tensor {
            name: "IN".into(),
            datatype: DataType::F32,
            shape: vec![1, 1],
            data: Bytes::copy_from_slice(&value.to_le_bytes()),
        })],
        outputs: None,
        classification: Vec::new(),
        lengths: Vec::new(),
        schedule: ScheduleOptions {
            timeout,
            ..ScheduleOptions::default()
        },
    }
}

type Answer = tokio::task::JoinHandle<Result<Vec<Tensor>, SubmitError>>;

impl Fixture {
    fn submit(&self, value: f32, timeout: Option<Duration>) -> Answer {
        let scheduler = self.scheduler.clone();
        self.runtime
            .spawn(async move { scheduler.infer(request(value, timeout), Instant::now()).await })
    }

    fn next_batch_rows(&self) -> usize {
        self.started
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch started")
    }

    fn answer(&self, a: Answer) -> Result<Vec<Tensor>, SubmitError> {
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), a).await })
            .expect("answered")
            .expect("task")
    }

    /// Waits until `n` requests are queued (the executor being busy).
    fn wait_queued(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.scheduler.shared.queued() < n {
            assert!(Instant::now() < deadline, "requests not queued");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn value_of(result: Result<Vec<Tensor>, SubmitError>) -> f32 {
    let outputs = result.expect("success");
    let bytes: [u8; 4] = outputs[0].data[..4].try_into().expect("4 bytes");
    f32::from_le_bytes(bytes)
}

#[test]
fn requests_arriving_while_the_executor_is_busy_form_one_batch() {
    let f = fixture(QueuePolicy::default(), 64);
    let first = f.submit(0.0, None);
    assert_eq!(f.next_batch_rows(), 1);
    let rest: Vec<Answer> = (1..=5).map(|k| f.submit(k as f32, None)).collect();
    f.wait_queued(5);
    f.release.send(()).expect("release");
    assert_eq!(f.next_batch_rows(), 5);
    f.release.send(()).expect("release");
    assert_eq!(value_of(f.answer(first)), 0.0);
    // Each request gets its own row back.
    for (k, a) in rest.into_iter().enumerate() {
        assert_eq!(value_of(f.answer(a)), (k + 1) as f32);
    }
}

#[test]
fn a_full_queue_refuses_at_once_and_keeps_what_it_holds() {
    let f = fixture(QueuePolicy::default(), 2);
    let first = f.submit(0.0, None);
    assert_eq!(f.next_batch_rows(), 1);
    let queued: Vec<Answer> = (1..=2).map(|k| f.submit(k as f32, None)).collect();
    f.wait_queued(2);
    let refused = f.answer(f.submit(9.0, None));
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { queued: 2, .. })),
        "{refused:?}"
    );
    f.release.send(()).expect("release");
    assert_eq!(f.next_batch_rows(), 2);
    f.release.send(()).expect("release");
    assert_eq!(value_of(f.answer(first)), 0.0);
    for (k, a) in queued.into_iter().enumerate() {
        assert_eq!(value_of(f.answer(a)), (k + 1) as f32);
    }
}

#[test]
fn a_reject_timeout_answers_at_the_deadline_and_the_request_never_runs() {
    let policy = QueuePolicy {
        timeout_action: TimeoutAction::Reject,
        allow_timeout_override: true,
        ..QueuePolicy::default()
    };
    let f = fixture(policy, 64);
    let first = f.submit(0.0, None);
    assert_eq!(f.next_batch_rows(), 1);
    let started = Instant::now();
    let timed = f.submit(1.0, Some(Duration::from_millis(30)));
    let patient = f.submit(2.0, None);
    // The executor is still blocked: the timed request is answered by its deadline, not by the executor.
    let result = f.answer(timed);
    assert!(matches!(result, Err(SubmitError::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(f.scheduler.shared.queued(), 1);
    f.release.send(()).expect("release");
    // Only the patient request is in the next batch.
    assert_eq!(f.next_batch_rows(), 1);
    f.release.send(()).expect("release");
    assert_eq!(value_of(f.answer(first)), 0.0);
    assert_eq!(value_of(f.answer(patient)), 2.0);
}

#[test]
fn shutdown_answers_queued_requests_and_finishes_the_running_batch() {
    let mut f = fixture(QueuePolicy::default(), 64);
    let running = f.submit(0.0, None);
    assert_eq!(f.next_batch_rows(), 1);
    let queued = f.submit(1.0, None);
    f.wait_queued(1);
    let threads = f.threads.take().expect("threads");
    let release = f.release.clone();
    let stopper = std::thread::spawn(move || threads.shutdown());
    let refused = f.answer(queued);
    assert!(matches!(refused, Err(SubmitError::ShuttingDown { .. })), "{refused:?}");
    release.send(()).expect("release");
    stopper.join().expect("shutdown");
    assert_eq!(value_of(f.answer(running)), 0.0);
    let after = f.answer(f.submit(2.0, None));
    assert!(matches!(after, Err(SubmitError::ShuttingDown { .. })), "{after:?}");
}
