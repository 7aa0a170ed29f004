//! Per-model-version inference statistics, Triton's way: request counts and cumulative durations
//! (success, failure, queue, compute input/infer/output) and the same per batch size. This is what
//! ModelStatistics reports, and how users see that batching works (executions < inferences).
//! Counters are atomics; only the per-batch-size table takes a lock, once per execution. The same
//! calls feed the Prometheus metrics (`crate::metrics`), through handles registered once per model.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::metrics::{FailureReason, ModelMetrics};

/// A count and a cumulative duration.
#[derive(Debug, Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn add(&self, n: u64, d: Duration) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.ns
            .fetch_add(n.saturating_mul(d.as_nanos() as u64), Ordering::Relaxed);
    }

    /// (count, nanoseconds).
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// How long one execution spent in each phase.
#[derive(Clone, Copy, Debug)]
pub struct BatchTimes {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

/// Statistics of executions of one batch size: (count, input ns, infer ns, output ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSizeStats {
    pub count: u64,
    pub input_ns: u64,
    pub infer_ns: u64,
    pub output_ns: u64,
}

/// The statistics of one model version.
#[derive(Debug)]
pub struct ModelStats {
    metrics: ModelMetrics,
    instances: usize,
    /// Nanoseconds the executors spent executing (all instances together).
    busy_ns: AtomicU64,
    /// (busy_ns, when) at the last duty-cycle sample.
    last_sample: Mutex<(u64, std::time::Instant)>,
    pub success: DurationStat,
    pub fail: DurationStat,
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    /// Bytes the model's weights hold, measured at load.
    memory_bytes: AtomicU64,
    batches: Mutex<BTreeMap<usize, BatchSizeStats>>,
    /// A padded model's real and computed tokens.
    tokens: Mutex<(u64, u64)>,
}

impl ModelStats {
    pub fn new(model: &str, version: u64, instances: usize) -> Self {
        let metrics = ModelMetrics::new(model, version);
        metrics.instances.set(instances as f64);
        ModelStats {
            metrics,
            instances: instances.max(1),
            busy_ns: AtomicU64::new(0),
            last_sample: Mutex::new((0, std::time::Instant::now())),
            success: DurationStat::default(),
            fail: DurationStat::default(),
            queue: DurationStat::default(),
            compute_input: DurationStat::default(),
            compute_infer: DurationStat::default(),
            compute_output: DurationStat::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            batches: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new((0, 0)),
        }
    }

    pub fn record_success(&self, total: Duration) {
        self.success.add(1, total);
        let m = &self.metrics;
        m.success.increment(1);
        m.request_duration_us.increment(total.as_micros() as u64);
        m.request_seconds.record(total.as_secs_f64());
    }

    pub fn record_failure(&self, total: Duration, reason: FailureReason) {
        self.fail.add(1, total);
        self.metrics.failure(reason).increment(1);
    }

    pub fn record_queue(&self, waited: Duration) {
        self.queue.add(1, waited);
        self.metrics.queue_duration_us.increment(waited.as_micros() as u64);
        self.metrics.queue_seconds.record(waited.as_secs_f64());
    }

    /// The queue now holds `requests` requests with `rows` batch elements.
    pub fn set_queued(&self, requests: usize, rows: usize) {
        self.metrics.pending.set(requests as f64);
        self.metrics.queue_depth.set(rows as f64);
    }

    /// Time an executor spent on one batch, whatever its outcome.
    pub fn record_busy(&self, busy: Duration) {
        self.busy_ns.fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        self.metrics.busy_us.increment(busy.as_micros() as u64);
    }

    /// Updates the duty-cycle gauge: the fraction of the time since the last sample the executors were
    /// busy. Called by the periodic sampler.
    pub fn sample_duty_cycle(&self) -> f64 {
        let busy = self.busy_ns.load(Ordering::Relaxed);
        let now = std::time::Instant::now();
        let mut last = self.last_sample.lock();
        let elapsed = now.duration_since(last.1).as_nanos() as f64;
        let duty = if elapsed > 0.0 {
            ((busy - last.0) as f64 / (elapsed * self.instances as f64)).min(1.0)
        } else {
            0.0
        };
        *last = (busy, now);
        self.metrics.duty_cycle.set(duty);
        duty
    }

    /// The tokens of one padded execution: the requests' own, and what the batch computed.
    pub fn record_padding(&self, real: u64, computed: u64) {
        let ratio = {
            let mut t = self.tokens.lock();
            t.0 += real;
            t.1 += computed;
            if t.1 == 0 { 1.0 } else { t.0 as f64 / t.1 as f64 }
        };
        let m = self.metrics.padding();
        m.real.increment(real);
        m.computed.increment(computed);
        m.efficiency.set(ratio);
    }

    /// Real and computed tokens so far (padded models).
    pub fn padding_tokens(&self) -> (u64, u64) {
        *self.tokens.lock()
    }

    /// One successful execution of `rows` batch elements from `requests` requests.
    pub fn record_execution(&self, rows: usize, requests: usize, t: BatchTimes) {
        let n = requests as u64;
        self.compute_input.add(n, t.input);
        self.compute_infer.add(n, t.infer);
        self.compute_output.add(n, t.output);
        self.inference_count.fetch_add(rows as u64, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let m = &self.metrics;
        m.compute_input_us
            .increment(n.saturating_mul(t.input.as_micros() as u64));
        m.compute_infer_us
            .increment(n.saturating_mul(t.infer.as_micros() as u64));
        m.compute_output_us
            .increment(n.saturating_mul(t.output.as_micros() as u64));
        m.inference_count.increment(rows as u64);
        m.exec_count.increment(1);
        m.batch_size.record(rows as f64);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now_ms, Ordering::Relaxed);
        let mut batches = self.batches.lock();
        let entry = batches.entry(rows).or_default();
        entry.count += 1;
        entry.input_ns += t.input.as_nanos() as u64;
        entry.infer_ns += t.infer.as_nanos() as u64;
        entry.output_ns += t.output.as_nanos() as u64;
    }

    /// SLO mode: a request answered after its target, or shed.
    pub fn record_slo_violation(&self, why: crate::metrics::SloViolation) {
        let m = self.metrics.slo();
        match why {
            crate::metrics::SloViolation::Late => m.late.increment(1),
            crate::metrics::SloViolation::Shed => m.shed.increment(1),
        }
    }

    /// SLO mode: how long a batch's oldest request waited before the batch was sent.
    pub fn record_batch_wait(&self, waited: Duration) {
        self.metrics.slo().batch_wait.record(waited.as_secs_f64());
    }

    /// SLO mode: one execution's predicted time (when there was a prediction) and measured time.
    pub fn record_slo_execution(&self, predicted: Option<f64>, measured: f64) {
        let m = self.metrics.slo();
        if let Some(p) = predicted {
            m.predicted.record(p);
        }
        m.measured.record(measured);
    }

    pub fn set_memory_bytes(&self, bytes: u64) {
        self.memory_bytes.store(bytes, Ordering::Relaxed);
        self.metrics.resident_bytes.set(bytes as f64);
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    pub fn inference_count(&self) -> u64 {
        self.inference_count.load(Ordering::Relaxed)
    }

    pub fn execution_count(&self) -> u64 {
        self.execution_count.load(Ordering::Relaxed)
    }

    pub fn last_inference_ms(&self) -> u64 {
        self.last_inference_ms.load(Ordering::Relaxed)
    }

    /// Executions by batch size, ascending.
    pub fn batch_sizes(&self) -> Vec<(usize, BatchSizeStats)> {
        self.batches.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_count_rows_and_batches() {
        let s = ModelStats::new("m", 1, 1);
        let t = BatchTimes {
            input: Duration::from_micros(1),
            infer: Duration::from_micros(10),
            output: Duration::from_micros(2),
        };
        s.record_execution(8, 8, t);
        s.record_execution(8, 4, t);
        s.record_execution(1, 1, t);
        assert_eq!(s.inference_count(), 17);
        assert_eq!(s.execution_count(), 3);
        assert_eq!(s.compute_infer.get(), (13, 130_000));
        let b = s.batch_sizes();
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[1],
            (
                8,
                BatchSizeStats {
                    count: 2,
                    input_ns: 2000,
                    infer_ns: 20_000,
                    output_ns: 4000
                }
            )
        );
    }
}
