//! Dynamic batching, one scheduler per model version: requests wait in a priority queue (`queue`),
//! a pure function decides when to send a batch (`decide`), one OS thread owns the queue and applies
//! the decisions (`task`), and one OS thread per model instance concatenates the inputs once, runs the
//! backend and splits the outputs by rows (`executor`, `assemble`). No compute runs on tokio's threads.

mod assemble;
mod decide;
mod executor;
mod queue;
mod task;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::backend::{BackendError, ModelInstance};
use crate::core::{Code, ModelSpec, Tensor, ValidatedRequest};
use crate::stats::ModelStats;

pub(crate) use decide::Policy;
use task::Command;

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
}

impl SubmitError {
    pub fn code(&self) -> Code {
        match self {
            SubmitError::QueueFull { .. } | SubmitError::Timeout { .. } | SubmitError::ShuttingDown { .. } => {
                Code::Unavailable
            }
            SubmitError::Backend { source, .. } => source.code(),
            SubmitError::Output { .. } => Code::Internal,
        }
    }
}

/// Limits the server puts on every model's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Requests one model may hold queued before new ones are refused with UNAVAILABLE.
    pub max_queued: usize,
}

/// A handle to one model version's scheduler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Scheduler {
    model: Arc<str>,
    requests: Sender<Command>,
    limit: usize,
}

/// The threads behind a [`Scheduler`]; dropping it asks them to stop once their work is answered.
#[derive(Debug)]
pub struct SchedulerThreads {
    control: Sender<Command>,
    threads: Vec<JoinHandle<()>>,
}

impl SchedulerThreads {
    /// Asks the threads to stop and waits for them: queued requests are answered with
    /// `ShuttingDown`, batches already executing finish.
    pub fn shutdown(mut self) {
        let _ = self.control.send(Command::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SchedulerThreads {
    fn drop(&mut self) {
        let _ = self.control.send(Command::Shutdown);
    }
}

impl Scheduler {
    /// Starts the scheduler thread and one executor thread per instance.
    pub fn start(
        spec: Arc<ModelSpec>,
        instances: Vec<Box<dyn ModelInstance>>,
        stats: Arc<ModelStats>,
        limits: QueueLimits,
    ) -> std::io::Result<(Scheduler, SchedulerThreads)> {
        task::start(spec, instances, stats, limits)
    }

    /// Queues a request and waits for its outputs (in the order the request asked for them).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the reply channel: the queued entry is discarded before it is
    /// batched, or its result is discarded if it is already executing. Nothing else is affected.
    pub async fn infer(&self, request: ValidatedRequest, received: Instant) -> Result<Vec<Tensor>, SubmitError> {
        let (tx, rx) = oneshot::channel();
        let command = Command::Enqueue {
            request,
            received,
            reply: tx,
            span: tracing::Span::current(),
        };
        match self.requests.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(SubmitError::QueueFull {
                    model: self.model.to_string(),
                    queued: self.limit,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(SubmitError::ShuttingDown {
                    model: self.model.to_string(),
                });
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(SubmitError::ShuttingDown {
                model: self.model.to_string(),
            })
        })
    }
}

/// The batching policy of a spec.
pub(crate) fn policy_of(spec: &ModelSpec) -> Policy {
    match &spec.scheduling {
        crate::core::Scheduling::Dynamic(p) => Policy {
            dynamic: true,
            max_batch_size: spec.max_batch_size.max(1),
            preferred: p.preferred_batch_sizes.clone(),
            max_queue_delay: p.max_queue_delay,
        },
        crate::core::Scheduling::Direct => Policy {
            dynamic: false,
            max_batch_size: spec.max_batch_size.max(1),
            preferred: Vec::new(),
            max_queue_delay: std::time::Duration::ZERO,
        },
    }
}
