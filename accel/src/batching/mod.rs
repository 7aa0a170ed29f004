//! Dynamic batching, one queue per model version: requests wait in a priority queue (`queue`) shared
//! by the handlers that fill it and the executor threads that drain it (`shared`); a pure function
//! decides when to send a batch (`decide`); one OS thread per model instance concatenates the inputs
//! once, runs the backend and splits the outputs by rows (`executor`, `assemble`). No compute runs on
//! tokio's threads, and no request crosses more threads than its handler's and its executor's.

pub mod assemble;
mod decide;
mod executor;
mod queue;
mod shared;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

use crate::backend::{BackendError, ModelInstance};
use crate::core::{Code, ModelSpec, Tensor, ValidatedRequest};
use crate::metrics::FailureReason;
use crate::stats::ModelStats;

pub(crate) use decide::Policy;
use shared::Shared;
pub use shared::{InstanceState, SloState};

/// Stack of an executor thread.
const EXECUTOR_STACK: usize = 8 << 20;

/// Why a request did not get a result from the scheduler.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    #[error("model '{model}' has {queued} requests queued, its limit; retry later")]
    QueueFull { model: String, queued: usize },
    #[error("request timed out after {waited_us} us in the queue of model '{model}'")]
    Timeout { model: String, waited_us: u128 },
    #[error("model '{model}' is shutting down")]
    ShuttingDown { model: String },
    #[error("model '{model}': {source}")]
    Backend { model: String, source: BackendError },
    #[error("model '{model}': {message}")]
    Output { model: String, message: String },
    /// SLO mode (`shed`): the request cannot meet its latency target; `reason` gives the numbers.
    #[error(
        "model '{model}' shed the request: {reason}; retry later, or with a larger accel.slo_ms if the model allows it"
    )]
    Shed { model: String, reason: String },
}

impl SubmitError {
    pub fn code(&self) -> Code {
        match self {
            SubmitError::QueueFull { .. }
            | SubmitError::Timeout { .. }
            | SubmitError::ShuttingDown { .. }
            | SubmitError::Shed { .. } => Code::Unavailable,
            SubmitError::Backend { source, .. } => source.code(),
            SubmitError::Output { .. } => Code::Internal,
        }
    }
}

/// Limits and tuning the server puts on every model's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Requests one model may hold queued before new ones are refused with UNAVAILABLE.
    pub max_queued: usize,
    /// How long an idle executor polls for work before it sleeps.
    pub executor_spin: Duration,
}

/// A handle to one model version's queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

/// The executor threads behind a [`Scheduler`]; dropping it asks them to stop once their work is
/// answered.
#[derive(Debug)]
pub struct SchedulerThreads {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl SchedulerThreads {
    /// Stops the model and waits for its executors: queued requests are answered with
    /// `ShuttingDown`, batches already executing finish.
    pub fn shutdown(mut self) {
        self.shared.shutdown();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SchedulerThreads {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl Scheduler {
    /// Starts one executor thread per instance.
    pub fn start(
        spec: Arc<ModelSpec>,
        instances: Vec<Box<dyn ModelInstance>>,
        stats: Arc<ModelStats>,
        limits: QueueLimits,
    ) -> std::io::Result<(Scheduler, SchedulerThreads)> {
        let shared = Arc::new(Shared::new(
            &spec,
            stats.clone(),
            limits.max_queued,
            limits.executor_spin,
        ));
        let mut threads = Vec::with_capacity(instances.len());
        for (k, instance) in instances.into_iter().enumerate() {
            let (spec, stats, queue) = (spec.clone(), stats.clone(), shared.clone());
            let thread = std::thread::Builder::new()
                .name(format!("accel-exec-{}-{}-{k}", spec.name, spec.version))
                // Nested If/Loop plans run recursively.
                .stack_size(EXECUTOR_STACK)
                .spawn(move || executor::run(&spec, k, instance, &stats, &queue));
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.shutdown();
                    return Err(e);
                }
            }
        }
        Ok((
            Scheduler { shared: shared.clone() },
            SchedulerThreads { shared, threads },
        ))
    }

    /// Queues a request and waits for its outputs (in the order the request asked for them).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the reply channel: the queued entry is discarded before it is
    /// batched, or its result is discarded if it is already executing. Nothing else is affected.
    pub async fn infer(&self, request: ValidatedRequest, received: Instant) -> Result<Vec<Tensor>, SubmitError> {
        let (tx, mut rx) = oneshot::channel();
        // Held until this future ends: dropped with it when the client goes away, which lets an
        // execution of nothing but abandoned requests stop early.
        let alive = Arc::new(());
        let accepted = self
            .shared
            .submit(request, received, tx, Arc::downgrade(&alive), tracing::Span::current())?;
        let closed = || SubmitError::ShuttingDown {
            model: self.shared.model.clone(),
        };
        let withdraw_at = match (accepted.reject_at, accepted.shed_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(deadline) = withdraw_at {
            match tokio::time::timeout_at(deadline.into(), &mut rx).await {
                Ok(reply) => return reply.unwrap_or_else(|_| Err(closed())),
                // Still queued at its timeout (or past the instant it could meet its target):
                // withdraw and answer it. Already taken by an executor: it runs to its answer.
                Err(_) => {
                    if let Some(p) = self.shared.withdraw(accepted.ticket) {
                        if accepted.shed_at.is_some_and(|s| s <= deadline) {
                            return Err(self.shared.shed_withdrawn(&p));
                        }
                        let waited = p.enqueued.elapsed();
                        let stats = self.shared.stats();
                        stats.record_failure(p.received.elapsed(), FailureReason::Rejected);
                        return Err(SubmitError::Timeout {
                            model: self.shared.model.clone(),
                            waited_us: waited.as_micros(),
                        });
                    }
                }
            }
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// SLO mode's state (the controller's view); `None` without SLO mode.
    pub fn slo_state(&self) -> Option<SloState> {
        self.shared.slo_state()
    }
}

/// The fewest queued requests a padded model's batch choice looks at (it looks at four batches'
/// worth when that is more, up to 1024: the choice is quadratic in what it looks at, and runs
/// under the queue's lock).
const PADDED_LOOKAHEAD: usize = 256;

/// The batching policy of a spec.
pub(crate) fn policy_of(spec: &ModelSpec) -> Policy {
    match &spec.scheduling {
        crate::core::Scheduling::Dynamic(p) => Policy {
            dynamic: true,
            max_batch_size: spec.max_batch_size.max(1),
            preferred: p.preferred_batch_sizes.clone(),
            max_queue_delay: p.max_queue_delay,
            free: (0..spec.inputs.len())
                .map(|k| spec.inputs[k].ragged || spec.variable.is_padded(k))
                .collect(),
            padding: spec.variable.padding.as_ref().map(|p| decide::PaddingPolicy {
                max_tokens: p.max_batch_tokens,
                min_efficiency_percent: p.min_efficiency_percent,
                lookahead: PADDED_LOOKAHEAD.max(spec.max_batch_size.saturating_mul(4)).min(1024),
            }),
            slo: p.slo.clone(),
        },
        crate::core::Scheduling::Direct => Policy {
            dynamic: false,
            max_batch_size: spec.max_batch_size.max(1),
            preferred: Vec::new(),
            max_queue_delay: std::time::Duration::ZERO,
            free: Vec::new(),
            padding: None,
            slo: None,
        },
    }
}
