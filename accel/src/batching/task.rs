//! The scheduler thread of one model version. It owns the queue, receives commands (new requests from
//! handlers, "idle" from executors), applies queue policies, and hands a batch to an executor whenever
//! one is idle and `decide::next_action` says so. Batches are formed only when an executor can take
//! them, so under load they grow by themselves instead of queueing up behind busy executors.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use tokio::sync::oneshot;

use super::decide::{Action, Policy, next_action};
use super::queue::{Pending, PriorityQueue, Reply};
use super::{QueueLimits, Scheduler, SchedulerThreads, SubmitError, executor, policy_of};
use crate::backend::ModelInstance;
use crate::core::{ModelSpec, QueuePolicy, Scheduling, ValidatedRequest};
use crate::metrics::FailureReason;
use crate::stats::ModelStats;

/// What the scheduler thread receives.
#[derive(Debug)]
pub(crate) enum Command {
    Enqueue {
        request: ValidatedRequest,
        received: Instant,
        reply: oneshot::Sender<Reply>,
        span: tracing::Span,
    },
    /// An executor finished its batch.
    Idle,
    Shutdown,
}

pub(super) fn start(
    spec: Arc<ModelSpec>,
    instances: Vec<Box<dyn ModelInstance>>,
    stats: Arc<ModelStats>,
    limits: QueueLimits,
) -> std::io::Result<(Scheduler, SchedulerThreads)> {
    let max_queued = limits.max_queued.max(1);
    let (request_tx, request_rx) = crossbeam_channel::bounded(max_queued);
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    let (batch_tx, batch_rx) = crossbeam_channel::bounded(instances.len().max(1));
    let label = format!("{}-{}", spec.name, spec.version);
    let mut threads = Vec::with_capacity(instances.len() + 1);
    let idle = instances.len();
    for (k, instance) in instances.into_iter().enumerate() {
        let (spec, stats, batches, done) = (spec.clone(), stats.clone(), batch_rx.clone(), control_tx.clone());
        threads.push(
            thread::Builder::new()
                .name(format!("accel-exec-{label}-{k}"))
                .spawn(move || executor::run(&spec, instance, &stats, &batches, &done))?,
        );
    }
    let policies = match &spec.scheduling {
        Scheduling::Dynamic(p) => p.queue_policies.clone(),
        Scheduling::Direct => vec![QueuePolicy::default()],
    };
    let default_level = match &spec.scheduling {
        Scheduling::Dynamic(p) => p.default_priority_level.saturating_sub(1),
        Scheduling::Direct => 0,
    };
    let state = State {
        model: spec.name.clone(),
        policy: policy_of(&spec),
        queue: PriorityQueue::new(policies),
        default_level,
        max_queued,
        idle,
        stats,
        batches: batch_tx,
    };
    threads.push(
        thread::Builder::new()
            .name(format!("accel-sched-{label}"))
            .spawn(move || state.run(&request_rx, &control_rx))?,
    );
    let scheduler = Scheduler {
        model: Arc::from(spec.name.as_str()),
        requests: request_tx,
        limit: max_queued,
    };
    Ok((
        scheduler,
        SchedulerThreads {
            control: control_tx,
            threads,
        },
    ))
}

struct State {
    model: String,
    policy: Policy,
    queue: PriorityQueue,
    default_level: usize,
    max_queued: usize,
    /// Executors waiting for a batch.
    idle: usize,
    stats: Arc<ModelStats>,
    batches: Sender<Vec<Pending>>,
}

impl State {
    fn run(mut self, requests: &Receiver<Command>, control: &Receiver<Command>) {
        let never = crossbeam_channel::never();
        let mut accepting = true;
        let mut deadline: Option<Instant> = None;
        loop {
            let req_rx = if accepting { requests } else { &never };
            let event = match deadline {
                Some(d) => select! {
                    recv(control) -> m => Some(m),
                    recv(req_rx) -> m => Some(m),
                    default(d.saturating_duration_since(Instant::now())) => None,
                },
                None => select! {
                    recv(control) -> m => Some(m),
                    recv(req_rx) -> m => Some(m),
                },
            };
            let mut stop = false;
            match event {
                Some(Ok(cmd)) => stop |= self.handle(cmd),
                Some(Err(_)) => accepting = false,
                None => {}
            }
            while accepting {
                match requests.try_recv() {
                    Ok(cmd) => stop |= self.handle(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => accepting = false,
                }
            }
            while let Ok(cmd) = control.try_recv() {
                stop |= self.handle(cmd);
            }
            if stop {
                break;
            }
            deadline = self.schedule(Instant::now());
            if !accepting && self.queue.is_empty() {
                break;
            }
        }
        for p in self.queue.drain() {
            self.stats.record_failure(p.received.elapsed(), FailureReason::Canceled);
            let _ = p.reply.send(Err(SubmitError::ShuttingDown {
                model: self.model.clone(),
            }));
        }
        // Dropping `self.batches` lets the executors finish their current batch and exit.
    }

    /// Handles one command; returns true on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Enqueue {
                request,
                received,
                reply,
                span,
            } => {
                self.enqueue(request, received, reply, span);
                false
            }
            Command::Idle => {
                self.idle += 1;
                false
            }
            Command::Shutdown => true,
        }
    }

    fn enqueue(
        &mut self,
        request: ValidatedRequest,
        received: Instant,
        reply: oneshot::Sender<Reply>,
        span: tracing::Span,
    ) {
        let levels = self.queue.levels();
        let priority = request.schedule.priority as usize;
        // Priority 0, or one the model does not have, means the default level (as in Triton).
        let level = if priority == 0 || priority > levels {
            self.default_level
        } else {
            priority - 1
        };
        let policy = self.queue.policy(level);
        let timeout = match (request.schedule.timeout, policy.default_timeout) {
            (Some(t), None) if policy.allow_timeout_override => Some(t),
            (Some(t), Some(d)) if policy.allow_timeout_override => Some(t.min(d)),
            (_, d) => d,
        };
        if self.queue.len() >= self.max_queued || !self.queue.has_room(level) {
            self.stats.record_failure(received.elapsed(), FailureReason::Rejected);
            let _ = reply.send(Err(SubmitError::QueueFull {
                model: self.model.clone(),
                queued: self.queue.len(),
            }));
            return;
        }
        let now = Instant::now();
        self.queue.push(Pending {
            request,
            received,
            enqueued: now,
            deadline: timeout.map(|t| now + t),
            level,
            reply,
            span,
        });
    }

    /// Applies timeouts and dispatches batches to idle executors. Returns when to wake up next.
    fn schedule(&mut self, now: Instant) -> Option<Instant> {
        for p in self.queue.expire(now) {
            let waited = now.saturating_duration_since(p.enqueued);
            self.stats.record_failure(p.received.elapsed(), FailureReason::Rejected);
            let _ = p.reply.send(Err(SubmitError::Timeout {
                model: self.model.clone(),
                waited_us: waited.as_micros(),
            }));
        }
        let mut wake = None;
        while self.idle > 0 {
            match next_action(&self.queue, &self.policy, now) {
                Action::Dispatch(n) => {
                    let batch = self.queue.take(n);
                    for p in &batch {
                        self.stats.record_queue(now.saturating_duration_since(p.enqueued));
                    }
                    if let Err(e) = self.batches.send(batch) {
                        for p in e.into_inner() {
                            self.stats.record_failure(p.received.elapsed(), FailureReason::Canceled);
                            let _ = p.reply.send(Err(SubmitError::ShuttingDown {
                                model: self.model.clone(),
                            }));
                        }
                        return None;
                    }
                    self.idle -= 1;
                }
                Action::WaitUntil(t) => {
                    wake = Some(t);
                    break;
                }
                Action::Idle => break,
            }
        }
        let rows = self.queue.iter().map(|p| p.request.batch_size).sum();
        self.stats.set_queued(self.queue.len(), rows);
        let next = self.queue.next_deadline();
        match (wake, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| t.max(now + Duration::from_micros(1)))
    }
}
