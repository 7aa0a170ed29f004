//! The queue of one model version, shared by the request handlers that fill it and the executor
//! threads that drain it. There is no scheduler thread: an executor that becomes free takes the lock,
//! applies the queue policies and asks `decide::next_action` what to send, so a batch is formed exactly
//! when an executor can run it (under load, batches grow by themselves) and no request crosses more
//! threads than the handler's and the executor's. An idle executor may spin briefly before it sleeps,
//! because waking a sleeping thread costs tens of microseconds on a virtual machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

use super::SubmitError;
use super::decide::{Action, CostModel, Policy, next_action_with};
use super::queue::{Pending, PriorityQueue, Reply};
use crate::core::{ModelSpec, QueuePolicy, Scheduling, TimeoutAction, ValidatedRequest};
use crate::metrics::FailureReason;
use crate::stats::ModelStats;

#[derive(Debug)]
struct State {
    queue: PriorityQueue,
    /// A padded model's measured execution cost.
    cost: CostModel,
    /// Executors waiting on the condition variable.
    sleeping: usize,
    shutdown: bool,
}

/// What the handlers and executors of one model version share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) model: String,
    policy: Policy,
    default_level: usize,
    max_queued: usize,
    spin: Duration,
    stats: Arc<ModelStats>,
    state: Mutex<State>,
    work: Condvar,
    /// Mirrors of the queue length and the shutdown flag, for spinning executors.
    queued: AtomicUsize,
    closing: AtomicBool,
    next_ticket: AtomicU64,
}

/// An accepted request: its ticket, and the instant after which its handler withdraws it (REJECT).
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) ticket: u64,
    pub(super) reject_at: Option<Instant>,
}

impl Shared {
    pub(super) fn new(spec: &ModelSpec, stats: Arc<ModelStats>, max_queued: usize, spin: Duration) -> Shared {
        let (policies, default_level) = match &spec.scheduling {
            Scheduling::Dynamic(p) => (p.queue_policies.clone(), p.default_priority_level.saturating_sub(1)),
            Scheduling::Direct => (vec![QueuePolicy::default()], 0),
        };
        Shared {
            model: spec.name.clone(),
            policy: super::policy_of(spec),
            default_level,
            max_queued: max_queued.max(1),
            spin,
            stats,
            state: Mutex::new(State {
                queue: PriorityQueue::new(policies),
                cost: CostModel::default(),
                sleeping: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            next_ticket: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> &ModelStats {
        &self.stats
    }

    fn publish(&self, st: &State) {
        self.queued.store(st.queue.len(), Ordering::Release);
        self.stats.set_queued(st.queue.len(), st.queue.rows());
    }

    /// Queues a request, or gives the reply channel back with the reason it was refused.
    pub(super) fn submit(
        &self,
        request: ValidatedRequest,
        received: Instant,
        reply: oneshot::Sender<Reply>,
        alive: std::sync::Weak<()>,
        span: tracing::Span,
    ) -> Result<Accepted, SubmitError> {
        let mut st = self.state.lock();
        if st.shutdown {
            return Err(SubmitError::ShuttingDown {
                model: self.model.clone(),
            });
        }
        let levels = st.queue.levels();
        let priority = request.schedule.priority as usize;
        // Priority 0, or one the model does not have, means the default level (as in Triton).
        let level = if priority == 0 || priority > levels {
            self.default_level
        } else {
            priority - 1
        };
        let policy = st.queue.policy(level);
        let timeout = match (request.schedule.timeout, policy.default_timeout) {
            (Some(t), None) if policy.allow_timeout_override => Some(t),
            (Some(t), Some(d)) if policy.allow_timeout_override => Some(t.min(d)),
            (_, d) => d,
        };
        let rejects = policy.timeout_action == TimeoutAction::Reject;
        if st.queue.len() >= self.max_queued || !st.queue.has_room(level) {
            drop(st);
            self.stats.record_failure(received.elapsed(), FailureReason::Rejected);
            return Err(SubmitError::QueueFull {
                model: self.model.clone(),
                queued: self.max_queued,
            });
        }
        let now = Instant::now();
        let deadline = timeout.map(|t| now + t);
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        st.queue.push(Pending {
            ticket,
            request,
            received,
            enqueued: now,
            deadline,
            level,
            reply,
            alive,
            span,
        });
        self.publish(&st);
        if st.sleeping > 0 {
            self.work.notify_one();
        }
        Ok(Accepted {
            ticket,
            reject_at: deadline.filter(|_| rejects),
        })
    }

    /// One padded execution's computed tokens and compute time, for the batch choice.
    pub(super) fn record_cost(&self, tokens: u64, compute: Duration) {
        self.state.lock().cost.record(tokens, compute.as_secs_f64());
    }

    /// Requests queued now.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Withdraws a request whose queue timeout passed while it was still queued; `None` when an
    /// executor already took it (it then runs to its answer).
    pub(super) fn withdraw(&self, ticket: u64) -> Option<Pending> {
        let mut st = self.state.lock();
        let p = st.queue.remove(ticket)?;
        self.publish(&st);
        Some(p)
    }

    /// Blocks until there is a batch for this executor; `None` once the model shuts down.
    pub(super) fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut st = self.state.lock();
        let mut spun = false;
        loop {
            let now = Instant::now();
            self.reject_expired(&mut st, now);
            if st.shutdown {
                return None;
            }
            let overhead = st.cost.overhead_tokens();
            let wake = match next_action_with(&st.queue, &self.policy, now, overhead) {
                action @ (Action::Dispatch(_) | Action::Pick(_)) => {
                    let batch = match action {
                        Action::Pick(positions) => st.queue.take_positions(&positions),
                        Action::Dispatch(n) => st.queue.take(n),
                        _ => Vec::new(),
                    };
                    self.publish(&st);
                    drop(st);
                    for p in &batch {
                        self.stats.record_queue(now.saturating_duration_since(p.enqueued));
                    }
                    return Some(batch);
                }
                Action::WaitUntil(t) => Some(t),
                Action::Idle => {
                    if !spun && !self.spin.is_zero() {
                        spun = true;
                        MutexGuard::unlocked(&mut st, || self.spin_for_work());
                        continue;
                    }
                    None
                }
            };
            let wake = match (wake, st.queue.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            st.sleeping += 1;
            match wake {
                Some(t) => {
                    self.work.wait_until(&mut st, t);
                }
                None => self.work.wait(&mut st),
            }
            st.sleeping -= 1;
            spun = false;
        }
    }

    /// Polls, without the lock, for up to `spin` until a request is queued or the model closes.
    /// Each round yields the core, so that on a saturated machine the threads producing requests run
    /// instead of this one burning its time slice.
    fn spin_for_work(&self) {
        let until = Instant::now() + self.spin;
        loop {
            for _ in 0..8 {
                if self.queued.load(Ordering::Acquire) > 0 || self.closing.load(Ordering::Acquire) {
                    return;
                }
                std::thread::yield_now();
            }
            if Instant::now() >= until {
                return;
            }
        }
    }

    fn reject_expired(&self, st: &mut State, now: Instant) {
        let rejected = st.queue.expire(now);
        if rejected.is_empty() {
            return;
        }
        self.publish(st);
        for p in rejected {
            let waited = now.saturating_duration_since(p.enqueued);
            self.stats.record_failure(p.received.elapsed(), FailureReason::Rejected);
            let _ = p.reply.send(Err(SubmitError::Timeout {
                model: self.model.clone(),
                waited_us: waited.as_micros(),
            }));
        }
    }

    /// Stops taking requests, answers the queued ones with `ShuttingDown`, and wakes every executor;
    /// batches already executing finish.
    pub(super) fn shutdown(&self) {
        let drained = {
            let mut st = self.state.lock();
            st.shutdown = true;
            self.closing.store(true, Ordering::Release);
            let drained = st.queue.drain();
            self.publish(&st);
            self.work.notify_all();
            drained
        };
        for p in drained {
            self.stats.record_failure(p.received.elapsed(), FailureReason::Canceled);
            let _ = p.reply.send(Err(SubmitError::ShuttingDown {
                model: self.model.clone(),
            }));
        }
    }
}
