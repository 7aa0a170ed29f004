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
use super::decide::slo::{self, Arrivals, ExecModel, SloView};
use super::decide::{Action, CostModel, Policy, next_action_with};
use super::queue::{Pending, PriorityQueue, Reply};
use crate::core::{ModelSpec, QueuePolicy, Scheduling, SloAction, SloPolicy, TimeoutAction, ValidatedRequest};
use crate::metrics::FailureReason;
use crate::stats::ModelStats;

#[derive(Debug)]
struct State {
    queue: PriorityQueue,
    /// A padded model's measured execution cost.
    cost: CostModel,
    /// SLO mode: each instance's measured execution times, and the arrival rate.
    exec: Vec<ExecModel>,
    arrivals: Arrivals,
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
    /// SLO mode: requests answered after their target, and requests shed.
    late: AtomicU64,
    shed: AtomicU64,
}

/// An accepted request: its ticket, and the instant after which its handler withdraws it if it is
/// still queued: its REJECT timeout, or (SLO mode, `shed`) when it can no longer meet its target.
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) ticket: u64,
    pub(super) reject_at: Option<Instant>,
    pub(super) shed_at: Option<Instant>,
}

/// SLO mode's state, as the `slo` endpoint reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SloState {
    pub target_ms: f64,
    pub percentile: f64,
    pub headroom: f64,
    pub action: &'static str,
    /// Batch rows arriving per second, as the controller sees it now.
    pub arrival_rate: f64,
    /// Requests answered after their target, and requests shed, since the model version loaded.
    pub late: u64,
    pub shed: u64,
    pub instances: Vec<InstanceState>,
}

/// One instance's model of its execution time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceState {
    pub executions: u64,
    /// `execution ≈ fixed + per_row × rows`, milliseconds; absent until enough executions.
    pub fixed_ms: Option<f64>,
    pub per_row_ms: Option<f64>,
    /// Measured / fitted execution time at the target's percentile.
    pub spread: f64,
    pub last_batch: Option<usize>,
    pub last_predicted_ms: Option<f64>,
    pub last_measured_ms: Option<f64>,
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
                exec: vec![ExecModel::default(); spec.instance_count.max(1)],
                arrivals: Arrivals::default(),
                sleeping: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            next_ticket: AtomicU64::new(0),
            late: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    fn slo(&self) -> Option<&SloPolicy> {
        self.policy.slo.as_ref()
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
        let mut shed_at = None;
        if let Some(slo) = self.slo() {
            st.arrivals.record(now, request.batch_size);
            if slo.action == SloAction::Shed {
                match self.shed_at(&st, slo, &request, now) {
                    Ok(at) => shed_at = at,
                    Err(reason) => {
                        drop(st);
                        return Err(self.shed_now(received, reason));
                    }
                }
            }
        }
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
            shed_at,
        })
    }

    /// When a request just arrived must be shed if it is still queued: the instant its target
    /// passes (a certain miss; the executor sheds earlier what its prediction dooms). `Err` with
    /// the reason when the work queued ahead of it, run in the most efficient batches, and its own
    /// execution would take it past its target. A request that finds the queue empty is never shed
    /// here: it executes, and so the predictions keep being measured.
    fn shed_at(
        &self,
        st: &State,
        slo: &SloPolicy,
        request: &ValidatedRequest,
        now: Instant,
    ) -> Result<Option<Instant>, String> {
        let deadline = now + slo.planned(request.schedule.slo);
        if st.queue.len() == 0 {
            return Ok(Some(deadline));
        }
        // The fastest instance's view: the request may go to any.
        let one = |f: &slo::Fit| f.fixed + f.per_row;
        let Some(fit) = st
            .exec
            .iter()
            .filter_map(ExecModel::fit)
            .min_by(|a, b| one(a).total_cmp(&one(b)))
        else {
            return Ok(Some(deadline));
        };
        let own = fit.fixed + fit.per_row * request.batch_size as f64;
        let max = self.policy.max_batch_size.max(1) as f64;
        let ahead = st.queue.rows() as f64 * (fit.fixed / max + fit.per_row) / st.exec.len().max(1) as f64;
        let need = ahead + own;
        if now + slo::secs(need) > deadline {
            return Err(format!(
                "its latency target of {:.3} ms cannot be met (the work queued ahead and its own execution need at least {:.3} ms)",
                slo.target_of(request.schedule.slo).as_secs_f64() * 1e3,
                need * 1e3
            ));
        }
        Ok(Some(deadline))
    }

    /// Counts a request shed and gives its error.
    fn shed_now(&self, received: Instant, reason: String) -> SubmitError {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.stats.record_failure(received.elapsed(), FailureReason::Rejected);
        self.stats.record_slo_violation(crate::metrics::SloViolation::Shed);
        SubmitError::Shed {
            model: self.model.clone(),
            reason,
        }
    }

    /// Withdraws a queued request whose shedding instant passed and answers why.
    pub(super) fn shed_withdrawn(&self, p: &Pending) -> SubmitError {
        let slo_ms = self
            .slo()
            .map_or(0.0, |s| s.target_of(p.request.schedule.slo).as_secs_f64() * 1e3);
        let waited = p.enqueued.elapsed().as_secs_f64() * 1e3;
        self.shed_now(
            p.received,
            format!("its latency target of {slo_ms:.3} ms cannot be met (waited {waited:.3} ms in the queue)"),
        )
    }

    /// One execution of `rows` by `instance` that took `seconds` (SLO mode): into the instance's
    /// model, and its prediction against the measurement into the metrics.
    pub(super) fn record_slo_execution(&self, instance: usize, rows: usize, seconds: f64) {
        let Some(slo) = self.slo() else { return };
        let predicted = {
            let mut st = self.state.lock();
            let Some(m) = st.exec.get_mut(instance) else { return };
            m.record(rows, seconds, slo.percentile_bp)
        };
        self.stats.record_slo_execution(predicted, seconds);
    }

    /// Counts an answer given after its target (SLO mode).
    pub(super) fn check_slo(&self, p: &Pending) {
        if let Some(slo) = self.slo()
            && p.enqueued.elapsed() > slo.target_of(p.request.schedule.slo)
        {
            self.late.fetch_add(1, Ordering::Relaxed);
            self.stats.record_slo_violation(crate::metrics::SloViolation::Late);
        }
    }

    /// SLO mode's state; `None` without SLO mode.
    pub(super) fn slo_state(&self) -> Option<SloState> {
        let slo = self.slo()?;
        let st = self.state.lock();
        let ms = |s: f64| s * 1e3;
        Some(SloState {
            target_ms: ms(slo.target.as_secs_f64()),
            percentile: f64::from(slo.percentile_bp) / 100.0,
            headroom: f64::from(slo.headroom_bp) / 10_000.0,
            action: match slo.action {
                SloAction::Shed => "shed",
                SloAction::BestEffort => "best_effort",
            },
            arrival_rate: st.arrivals.rate(Instant::now()),
            late: self.late.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            instances: st
                .exec
                .iter()
                .map(|m| {
                    let fit = m.fit();
                    InstanceState {
                        executions: m.samples(),
                        fixed_ms: fit.map(|f| ms(f.fixed)),
                        per_row_ms: fit.map(|f| ms(f.per_row)),
                        spread: m.spread(),
                        last_batch: m.last.map(|l| l.0),
                        last_predicted_ms: m.last.map(|l| ms(l.1)).filter(|v| v.is_finite()),
                        last_measured_ms: m.last.map(|l| ms(l.2)),
                    }
                })
                .collect(),
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

    /// Blocks until there is a batch for executor `instance`; `None` once the model shuts down.
    pub(super) fn next_batch(&self, instance: usize) -> Option<Vec<Pending>> {
        let mut st = self.state.lock();
        let mut spun = false;
        loop {
            let now = Instant::now();
            self.reject_expired(&mut st, now);
            if st.shutdown {
                return None;
            }
            let action = match self.slo() {
                Some(slo) => {
                    let view = SloView {
                        slo,
                        model: &st.exec[instance.min(st.exec.len() - 1)],
                        rate: st.arrivals.rate(now),
                        instances: st.exec.len(),
                    };
                    slo::slo_action(&st.queue, &self.policy, &view, now)
                }
                None => next_action_with(&st.queue, &self.policy, now, st.cost.overhead_tokens()),
            };
            let wake = match action {
                Action::Shed(positions) => {
                    let shed = st.queue.take_positions(&positions);
                    self.publish(&st);
                    drop(st);
                    for p in shed {
                        let e = self.shed_withdrawn(&p);
                        let _ = p.reply.send(Err(e));
                    }
                    st = self.state.lock();
                    continue;
                }
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
                    if self.slo().is_some()
                        && let Some(oldest) = batch.iter().map(|p| p.enqueued).min()
                    {
                        self.stats.record_batch_wait(now.saturating_duration_since(oldest));
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
