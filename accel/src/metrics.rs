//! Metric names, labels and buckets, in one place, and the Prometheus recorder. Names follow Triton
//! (`nv_*`) where Triton has the same figure, so its dashboards work; the rest are `accel_*`.
//!
//! Recording must cost nothing measurable on the request path: each model version registers its
//! handles once ([`ModelMetrics`]), so recording is an atomic add on a handle already resolved, never
//! a lookup by name and labels. Histograms are bucketed (Prometheus histograms), not summaries:
//! Triton's summaries are what cost its users a third of their throughput.

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// ---- label keys -----------------------------------------------------------------------------------

pub const LABEL_MODEL: &str = "model";
pub const LABEL_VERSION: &str = "version";
pub const LABEL_REASON: &str = "reason";
/// Where a load read the model from: `file` (the repository) or `host` (the host tier).
pub const LABEL_SOURCE: &str = "source";
/// Which listener: `REST`, `gRPC` or `metrics`.
pub const LABEL_LISTENER: &str = "listener";

// ---- Triton's metrics ---------------------------------------------------------------------------------

pub const NV_INFERENCE_REQUEST_SUCCESS: &str = "nv_inference_request_success";
pub const NV_INFERENCE_REQUEST_FAILURE: &str = "nv_inference_request_failure";
pub const NV_INFERENCE_COUNT: &str = "nv_inference_count";
pub const NV_INFERENCE_EXEC_COUNT: &str = "nv_inference_exec_count";
pub const NV_INFERENCE_PENDING_REQUEST_COUNT: &str = "nv_inference_pending_request_count";
pub const NV_INFERENCE_REQUEST_DURATION_US: &str = "nv_inference_request_duration_us";
pub const NV_INFERENCE_QUEUE_DURATION_US: &str = "nv_inference_queue_duration_us";
pub const NV_INFERENCE_COMPUTE_INPUT_DURATION_US: &str = "nv_inference_compute_input_duration_us";
pub const NV_INFERENCE_COMPUTE_INFER_DURATION_US: &str = "nv_inference_compute_infer_duration_us";
pub const NV_INFERENCE_COMPUTE_OUTPUT_DURATION_US: &str = "nv_inference_compute_output_duration_us";
pub const NV_GPU_UTILIZATION: &str = "nv_gpu_utilization";
pub const NV_GPU_MEMORY_TOTAL_BYTES: &str = "nv_gpu_memory_total_bytes";
pub const NV_GPU_MEMORY_USED_BYTES: &str = "nv_gpu_memory_used_bytes";
pub const NV_CPU_UTILIZATION: &str = "nv_cpu_utilization";
pub const NV_CPU_MEMORY_TOTAL_BYTES: &str = "nv_cpu_memory_total_bytes";
pub const NV_CPU_MEMORY_USED_BYTES: &str = "nv_cpu_memory_used_bytes";

// ---- Accel's own ---------------------------------------------------------------------------------

pub const ACCEL_BATCH_SIZE: &str = "accel_batch_size";
pub const ACCEL_QUEUE_DURATION_SECONDS: &str = "accel_queue_duration_seconds";
pub const ACCEL_REQUEST_DURATION_SECONDS: &str = "accel_request_duration_seconds";
pub const ACCEL_MODEL_RESIDENT_BYTES: &str = "accel_model_resident_bytes";
pub const ACCEL_MODEL_INSTANCES: &str = "accel_model_instances";
pub const ACCEL_MODEL_LOADS_TOTAL: &str = "accel_model_loads_total";
pub const ACCEL_MODEL_LOAD_FAILURES_TOTAL: &str = "accel_model_load_failures_total";
pub const ACCEL_MODEL_EVICTIONS_TOTAL: &str = "accel_model_evictions_total";
pub const ACCEL_MODEL_RELOADS_TOTAL: &str = "accel_model_reloads_total";
pub const ACCEL_MODEL_LOAD_DURATION_SECONDS: &str = "accel_model_load_duration_seconds";
pub const ACCEL_HOST_TIER_BYTES: &str = "accel_host_tier_bytes";
pub const ACCEL_MEMORY_BUDGET_BYTES: &str = "accel_memory_budget_bytes";
pub const ACCEL_MEMORY_IN_USE_BYTES: &str = "accel_memory_in_use_bytes";
pub const ACCEL_QUEUE_DEPTH: &str = "accel_queue_depth";
pub const ACCEL_EXECUTOR_BUSY_DURATION_US: &str = "accel_executor_busy_duration_us";
pub const ACCEL_EXECUTOR_DUTY_CYCLE: &str = "accel_executor_duty_cycle";
pub const ACCEL_SERVER_DRAINING: &str = "accel_server_draining";
pub const ACCEL_CONNECTIONS_REFUSED_TOTAL: &str = "accel_connections_refused_total";
pub const ACCEL_BATCH_PADDING_EFFICIENCY: &str = "accel_batch_padding_efficiency";
pub const ACCEL_BATCH_TOKENS_TOTAL: &str = "accel_batch_tokens_total";
/// `accel_batch_tokens_total`'s label: `real` (the requests' own) or `computed` (padded).
pub const LABEL_KIND: &str = "kind";
// SLO mode.
pub const ACCEL_SLO_VIOLATIONS_TOTAL: &str = "accel_slo_violations_total";
pub const ACCEL_BATCH_WAIT_SECONDS: &str = "accel_batch_wait_seconds";
pub const ACCEL_PREDICTED_EXECUTION_SECONDS: &str = "accel_predicted_execution_seconds";
pub const ACCEL_EXECUTION_SECONDS: &str = "accel_execution_seconds";

// ---- buckets -------------------------------------------------------------------------------------

pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub const LOAD_BUCKETS_SECONDS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Why a request failed, as Triton's `nv_inference_request_failure{reason}` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Refused by the scheduler: queue full or queue timeout.
    Rejected,
    /// The client went away or the server was shutting down.
    Canceled,
    /// The backend failed to execute it.
    Backend,
    /// Anything else (invalid input).
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Rejected,
        FailureReason::Canceled,
        FailureReason::Backend,
        FailureReason::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle for rendering. `None`
/// when another recorder is already installed.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(ACCEL_BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS_SECONDS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(ACCEL_MODEL_LOAD_DURATION_SECONDS.into()),
                        LOAD_BUCKETS_SECONDS,
                    )
                })
                .and_then(|b| {
                    [
                        ACCEL_BATCH_WAIT_SECONDS,
                        ACCEL_PREDICTED_EXECUTION_SECONDS,
                        ACCEL_EXECUTION_SECONDS,
                    ]
                    .into_iter()
                    .try_fold(b, |b, name| {
                        b.set_buckets_for_metric(Matcher::Full(name.into()), LATENCY_BUCKETS_SECONDS)
                    })
                });
            let handle = builder.and_then(PrometheusBuilder::install_recorder);
            match handle {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Help texts for every metric.
fn describe() {
    describe_counter!(
        ACCEL_CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at once because their listener was at its connection limit"
    );
    describe_counter!(NV_INFERENCE_REQUEST_SUCCESS, "Number of successful inference requests");
    describe_counter!(
        NV_INFERENCE_REQUEST_FAILURE,
        "Number of failed inference requests, by reason"
    );
    describe_counter!(NV_INFERENCE_COUNT, "Number of inferences performed (batch elements)");
    describe_counter!(NV_INFERENCE_EXEC_COUNT, "Number of model executions (batches)");
    describe_gauge!(
        NV_INFERENCE_PENDING_REQUEST_COUNT,
        "Requests queued, awaiting execution"
    );
    describe_counter!(
        NV_INFERENCE_REQUEST_DURATION_US,
        "Cumulative end-to-end inference request duration, microseconds"
    );
    describe_counter!(
        NV_INFERENCE_QUEUE_DURATION_US,
        "Cumulative time requests waited in the queue, microseconds"
    );
    describe_counter!(
        NV_INFERENCE_COMPUTE_INPUT_DURATION_US,
        "Cumulative input preparation duration, microseconds"
    );
    describe_counter!(
        NV_INFERENCE_COMPUTE_INFER_DURATION_US,
        "Cumulative model execution duration, microseconds"
    );
    describe_counter!(
        NV_INFERENCE_COMPUTE_OUTPUT_DURATION_US,
        "Cumulative output processing duration, microseconds"
    );
    describe_gauge!(NV_GPU_UTILIZATION, "GPU utilization rate [0.0 - 1.0]");
    describe_gauge!(NV_GPU_MEMORY_TOTAL_BYTES, "GPU total memory, bytes");
    describe_gauge!(NV_GPU_MEMORY_USED_BYTES, "GPU used memory, bytes");
    describe_gauge!(NV_CPU_UTILIZATION, "CPU utilization rate [0.0 - 1.0]");
    describe_gauge!(
        NV_CPU_MEMORY_TOTAL_BYTES,
        "CPU total memory (the container's limit when it has one), bytes"
    );
    describe_gauge!(
        NV_CPU_MEMORY_USED_BYTES,
        "CPU used memory (the container's usage when it has a limit), bytes"
    );
    describe_histogram!(ACCEL_BATCH_SIZE, "Batch elements per execution");
    describe_histogram!(
        ACCEL_QUEUE_DURATION_SECONDS,
        "Time a request waited in the queue, seconds"
    );
    describe_histogram!(
        ACCEL_REQUEST_DURATION_SECONDS,
        "End-to-end request duration inside the server, seconds"
    );
    describe_gauge!(ACCEL_MODEL_RESIDENT_BYTES, "Bytes a loaded model version holds");
    describe_gauge!(ACCEL_MODEL_INSTANCES, "Executor instances of a model version");
    describe_counter!(ACCEL_MODEL_LOADS_TOTAL, "Model version loads that succeeded");
    describe_counter!(ACCEL_MODEL_LOAD_FAILURES_TOTAL, "Model version loads that failed");
    describe_counter!(ACCEL_MODEL_EVICTIONS_TOTAL, "Models evicted to free memory");
    describe_counter!(
        ACCEL_MODEL_RELOADS_TOTAL,
        "Models made resident again from the host tier"
    );
    describe_histogram!(
        ACCEL_MODEL_LOAD_DURATION_SECONDS,
        "Time to load a model version, by source (file or host tier), seconds"
    );
    describe_gauge!(ACCEL_HOST_TIER_BYTES, "Bytes of evicted weights kept in host memory");
    describe_gauge!(
        ACCEL_MEMORY_BUDGET_BYTES,
        "Device memory resident models may hold (the budget less the reserve), bytes"
    );
    describe_gauge!(
        ACCEL_MEMORY_IN_USE_BYTES,
        "Device memory held by resident models and loads in progress, bytes"
    );
    describe_gauge!(ACCEL_QUEUE_DEPTH, "Batch elements queued for a model version");
    describe_counter!(
        ACCEL_EXECUTOR_BUSY_DURATION_US,
        "Cumulative time the executors of a model version spent executing, microseconds"
    );
    describe_gauge!(
        ACCEL_EXECUTOR_DUTY_CYCLE,
        "Fraction of the last interval the executors of a model version were busy [0.0 - 1.0]"
    );
    describe_gauge!(ACCEL_SERVER_DRAINING, "1 while the server drains before exiting");
    describe_gauge!(
        ACCEL_BATCH_PADDING_EFFICIENCY,
        "Real tokens / computed tokens of a padded model's executions since it was first loaded [0.0 - 1.0]"
    );
    describe_counter!(
        ACCEL_SLO_VIOLATIONS_TOTAL,
        "SLO mode: requests answered after their latency target (reason=late) or shed (reason=shed)"
    );
    describe_histogram!(
        ACCEL_BATCH_WAIT_SECONDS,
        "SLO mode: how long the oldest request of each batch waited before the batch was sent, seconds"
    );
    describe_histogram!(
        ACCEL_PREDICTED_EXECUTION_SECONDS,
        "SLO mode: each execution's time as the controller predicted it (at the target's percentile), seconds"
    );
    describe_histogram!(
        ACCEL_EXECUTION_SECONDS,
        "SLO mode: each execution's measured time (input, compute and output), seconds"
    );
    describe_counter!(
        ACCEL_BATCH_TOKENS_TOTAL,
        "Tokens of a padded model's executions: kind=real (the requests') and kind=computed (rows x longest)"
    );
}

/// The metric handles of one model version, registered once at load.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    pub success: Counter,
    failures: [Counter; 4],
    pub inference_count: Counter,
    pub exec_count: Counter,
    pub pending: Gauge,
    pub request_duration_us: Counter,
    pub queue_duration_us: Counter,
    pub compute_input_us: Counter,
    pub compute_infer_us: Counter,
    pub compute_output_us: Counter,
    pub batch_size: Histogram,
    pub queue_seconds: Histogram,
    pub request_seconds: Histogram,
    pub resident_bytes: Gauge,
    pub instances: Gauge,
    pub queue_depth: Gauge,
    pub busy_us: Counter,
    pub duty_cycle: Gauge,
    labels: (String, String),
    padding: std::sync::OnceLock<PaddingMetrics>,
    slo: std::sync::OnceLock<SloMetrics>,
}

/// Why a request counts against its latency target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SloViolation {
    Late,
    Shed,
}

/// SLO mode's handles.
#[derive(Debug, Clone)]
pub struct SloMetrics {
    pub late: Counter,
    pub shed: Counter,
    pub batch_wait: Histogram,
    pub predicted: Histogram,
    pub measured: Histogram,
}

/// A padded model's token counts and their ratio.
#[derive(Debug, Clone)]
pub struct PaddingMetrics {
    pub efficiency: Gauge,
    pub real: Counter,
    pub computed: Counter,
}

impl ModelMetrics {
    pub fn new(model: &str, version: u64) -> Self {
        let labels = [(LABEL_MODEL, model.to_string()), (LABEL_VERSION, version.to_string())];
        let failure = |r: FailureReason| counter!(NV_INFERENCE_REQUEST_FAILURE, LABEL_MODEL => model.to_string(), LABEL_VERSION => version.to_string(), LABEL_REASON => r.label());
        ModelMetrics {
            success: counter!(NV_INFERENCE_REQUEST_SUCCESS, &labels),
            failures: FailureReason::ALL.map(failure),
            inference_count: counter!(NV_INFERENCE_COUNT, &labels),
            exec_count: counter!(NV_INFERENCE_EXEC_COUNT, &labels),
            pending: gauge!(NV_INFERENCE_PENDING_REQUEST_COUNT, &labels),
            request_duration_us: counter!(NV_INFERENCE_REQUEST_DURATION_US, &labels),
            queue_duration_us: counter!(NV_INFERENCE_QUEUE_DURATION_US, &labels),
            compute_input_us: counter!(NV_INFERENCE_COMPUTE_INPUT_DURATION_US, &labels),
            compute_infer_us: counter!(NV_INFERENCE_COMPUTE_INFER_DURATION_US, &labels),
            compute_output_us: counter!(NV_INFERENCE_COMPUTE_OUTPUT_DURATION_US, &labels),
            batch_size: histogram!(ACCEL_BATCH_SIZE, &labels),
            queue_seconds: histogram!(ACCEL_QUEUE_DURATION_SECONDS, &labels),
            request_seconds: histogram!(ACCEL_REQUEST_DURATION_SECONDS, &labels),
            resident_bytes: gauge!(ACCEL_MODEL_RESIDENT_BYTES, &labels),
            instances: gauge!(ACCEL_MODEL_INSTANCES, &labels),
            queue_depth: gauge!(ACCEL_QUEUE_DEPTH, &labels),
            busy_us: counter!(ACCEL_EXECUTOR_BUSY_DURATION_US, &labels),
            duty_cycle: gauge!(ACCEL_EXECUTOR_DUTY_CYCLE, &labels),
            labels: (model.to_string(), version.to_string()),
            padding: std::sync::OnceLock::new(),
            slo: std::sync::OnceLock::new(),
        }
    }

    /// SLO mode's handles (registered at first use, so that other models have no such series).
    pub fn slo(&self) -> &SloMetrics {
        self.slo.get_or_init(|| {
            let (m, v) = &self.labels;
            let labels = [(LABEL_MODEL, m.clone()), (LABEL_VERSION, v.clone())];
            SloMetrics {
                late: counter!(ACCEL_SLO_VIOLATIONS_TOTAL, LABEL_MODEL => m.clone(), LABEL_VERSION => v.clone(), LABEL_REASON => "late"),
                shed: counter!(ACCEL_SLO_VIOLATIONS_TOTAL, LABEL_MODEL => m.clone(), LABEL_VERSION => v.clone(), LABEL_REASON => "shed"),
                batch_wait: histogram!(ACCEL_BATCH_WAIT_SECONDS, &labels),
                predicted: histogram!(ACCEL_PREDICTED_EXECUTION_SECONDS, &labels),
                measured: histogram!(ACCEL_EXECUTION_SECONDS, &labels),
            }
        })
    }

    /// The padding handles of a padded model (registered at its first padded execution, so that
    /// other models have no such series).
    pub fn padding(&self) -> &PaddingMetrics {
        self.padding.get_or_init(|| {
            let (m, v) = &self.labels;
            PaddingMetrics {
                efficiency: gauge!(ACCEL_BATCH_PADDING_EFFICIENCY, LABEL_MODEL => m.clone(), LABEL_VERSION => v.clone()),
                real: counter!(ACCEL_BATCH_TOKENS_TOTAL, LABEL_MODEL => m.clone(), LABEL_VERSION => v.clone(), LABEL_KIND => "real"),
                computed: counter!(ACCEL_BATCH_TOKENS_TOTAL, LABEL_MODEL => m.clone(), LABEL_VERSION => v.clone(), LABEL_KIND => "computed"),
            }
        })
    }

    pub fn failure(&self, reason: FailureReason) -> &Counter {
        &self.failures[FailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(3)]
    }
}

/// The outcome of loading one version of a model from `source` (`file` or `host`).
pub fn record_load(model: &str, source: &'static str, seconds: f64, ok: bool) {
    if ok {
        counter!(ACCEL_MODEL_LOADS_TOTAL, LABEL_MODEL => model.to_string(), LABEL_SOURCE => source).increment(1);
        histogram!(ACCEL_MODEL_LOAD_DURATION_SECONDS, LABEL_MODEL => model.to_string(), LABEL_SOURCE => source)
            .record(seconds);
    } else {
        counter!(ACCEL_MODEL_LOAD_FAILURES_TOTAL, LABEL_MODEL => model.to_string()).increment(1);
    }
}

/// Process-wide gauges the sampler updates.
pub fn host_gauges() -> (Gauge, Gauge, Gauge, Gauge) {
    (
        gauge!(NV_CPU_UTILIZATION),
        gauge!(NV_CPU_MEMORY_TOTAL_BYTES),
        gauge!(NV_CPU_MEMORY_USED_BYTES),
        gauge!(ACCEL_SERVER_DRAINING),
    )
}

/// GPU gauges of one device (Triton's `gpu_uuid` label is the NVML index here).
pub fn gpu_gauges(index: u32) -> (Gauge, Gauge, Gauge) {
    let gpu = index.to_string();
    (
        gauge!(NV_GPU_UTILIZATION, "gpu" => gpu.clone()),
        gauge!(NV_GPU_MEMORY_TOTAL_BYTES, "gpu" => gpu.clone()),
        gauge!(NV_GPU_MEMORY_USED_BYTES, "gpu" => gpu),
    )
}
