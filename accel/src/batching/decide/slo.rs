//! SLO mode's decision: batches sized and timed to meet a latency target instead of a fixed delay.
//! A pure function of the queue, the model's measured execution times, the arrival rate and the
//! time, asked each time an executor is free, like [`super::next_action`].
//!
//! Each request must be answered within its target (the model's `accel.slo_ms`, or its own when
//! lower, less the headroom) counted from when it was queued. The executions the executors
//! already time fit a model of execution time by batch rows (`ExecModel`: `t = a + b·rows`, by
//! decaying least squares, times the chosen quantile of the measured/fitted ratio, so the spread is
//! measured, not assumed). With it the decision:
//! - sheds (in `shed` mode) a request that could not meet its target even alone, except the head of
//!   the queue while its target has not passed (so executions, and the measurements, never stop);
//! - caps the batch at the largest prefix whose predicted time still lets every member meet its
//!   target (requests already late do not cap it: they go in batches as large as the model takes;
//!   nor, in `best_effort`, does it cap when the executors could not keep up at the capped size,
//!   which would only make the requests behind late and lower throughput);
//! - sends at once unless waiting raises throughput: only while the executors, at the current batch
//!   size, could not keep up with the measured arrival rate does it wait for the batch to grow to the
//!   size that keeps up, never longer than one execution's fixed cost (what the merge saves), and
//!   never past the instant when the oldest request's wait plus the predicted execution reaches its
//!   target. A lone request is never held.
//!
//! Until the model has timed enough executions it dispatches what is queued at once (a zero delay),
//! which is also how it gathers the samples.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::super::queue::{Pending, PriorityQueue};
use super::{Action, DecayingFit, Policy};
use crate::core::{SloAction, SloPolicy};

/// An online fit of one instance's execution time against the batch rows it ran, with the spread of
/// measured times around the fit.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExecModel {
    fit: DecayingFit,
    /// Recent measured / predicted-mean ratios.
    ratios: VecDeque<f64>,
    /// The ratios' quantile at the policy's percentile, recomputed at each sample.
    spread: f64,
    /// The last execution: rows, predicted seconds (at the quantile), measured seconds.
    pub(crate) last: Option<(usize, f64, f64)>,
}

/// The fit's coefficients, clamped to a physical cost: `seconds = fixed + per_row · rows`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fit {
    pub fixed: f64,
    pub per_row: f64,
}

impl ExecModel {
    /// Executions timed before predictions are made.
    pub(crate) const MIN_SAMPLES: u64 = 8;
    /// Ratios kept for the spread.
    const RATIOS: usize = 256;

    /// Records one execution of `rows` rows that took `seconds`; `percentile_bp` is the quantile
    /// the spread is kept at. Returns what was predicted for it.
    pub(crate) fn record(&mut self, rows: usize, seconds: f64, percentile_bp: u32) -> Option<f64> {
        let x = rows as f64;
        if !(x >= 1.0 && seconds.is_finite() && seconds >= 0.0) {
            return None;
        }
        let predicted = self.predict(rows);
        if let Some(mean) = self.mean(rows)
            && mean > 0.0
        {
            if self.ratios.len() == Self::RATIOS {
                self.ratios.pop_front();
            }
            self.ratios.push_back(seconds / mean);
            self.spread = quantile(&self.ratios, percentile_bp);
        }
        self.fit.record(x, seconds);
        self.last = Some((rows, predicted.unwrap_or(f64::NAN), seconds));
        predicted
    }

    pub(crate) fn samples(&self) -> u64 {
        self.fit.samples()
    }

    /// The fit, once there are enough samples. Batches all of one size give no slope: the cost is
    /// then taken as proportional to the rows, which overestimates larger batches (a safe cap) and
    /// says waiting gains nothing.
    pub(crate) fn fit(&self) -> Option<Fit> {
        if self.fit.samples() < Self::MIN_SAMPLES {
            return None;
        }
        let line = self.fit.line()?;
        let (mx, my) = (line.mean_x, line.mean_y);
        let proportional = Fit {
            fixed: 0.0,
            per_row: my / mx.max(1.0),
        };
        if line.var_x <= (mx * 0.05).powi(2) {
            return Some(proportional);
        }
        let (a, b) = (line.intercept, line.slope);
        Some(if !b.is_finite() || !a.is_finite() {
            proportional
        } else if b < 0.0 {
            Fit {
                fixed: my,
                per_row: 0.0,
            }
        } else if a <= my * 1e-3 {
            // No fixed part, up to rounding.
            proportional
        } else {
            Fit { fixed: a, per_row: b }
        })
    }

    /// The mean execution time of a batch of `rows`.
    pub(crate) fn mean(&self, rows: usize) -> Option<f64> {
        self.fit().map(|f| f.fixed + f.per_row * rows as f64)
    }

    /// The execution time of a batch of `rows` at the kept quantile.
    pub(crate) fn predict(&self, rows: usize) -> Option<f64> {
        let spread = if self.ratios.is_empty() {
            1.0
        } else {
            self.spread.max(1.0)
        };
        self.mean(rows).map(|m| m * spread)
    }

    /// The measured/fitted ratio at the kept quantile (1 before there are any).
    pub(crate) fn spread(&self) -> f64 {
        if self.ratios.is_empty() { 1.0 } else { self.spread }
    }
}

/// The `bp` (hundredths of a percent) quantile of `values`, by nearest rank.
fn quantile(values: &VecDeque<f64>, bp: u32) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().collect();
    if v.is_empty() {
        return 1.0;
    }
    let rank = ((v.len() as f64) * f64::from(bp) / 10_000.0).ceil() as usize;
    let k = rank.clamp(1, v.len()) - 1;
    let (_, q, _) = v.select_nth_unstable_by(k, f64::total_cmp);
    *q
}

/// The arrival rate of one model's requests, in batch rows per second: exponentially weighted means
/// of the gaps between arrivals and of the rows per request (their ratio, not the mean of ratios,
/// which a closed loop of mixed sizes biases high); the time since the last arrival overrides the
/// mean gap when longer, so a model that has gone quiet is seen as idle at once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Arrivals {
    last: Option<Instant>,
    /// Seconds between requests.
    gap: f64,
    /// Rows per request.
    rows: f64,
    seen: u64,
}

impl Arrivals {
    /// Weight of the newest sample.
    const ALPHA: f64 = 1.0 / 16.0;

    pub(crate) fn record(&mut self, now: Instant, rows: usize) {
        let rows = rows.max(1) as f64;
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            if self.seen < 2 {
                (self.gap, self.rows) = (gap, rows);
            } else {
                self.gap += (gap - self.gap) * Self::ALPHA;
                self.rows += (rows - self.rows) * Self::ALPHA;
            }
        } else {
            self.rows = rows;
        }
        self.last = Some(now.max(self.last.unwrap_or(now)));
        self.seen += 1;
    }

    /// Rows per second at `now`: 0 until two requests have arrived.
    pub(crate) fn rate(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        if self.seen < 2 {
            return 0.0;
        }
        let gap = self.gap.max(now.saturating_duration_since(last).as_secs_f64());
        if gap <= 0.0 { f64::INFINITY } else { self.rows / gap }
    }
}

/// What the decision knows besides the queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SloView<'a> {
    pub slo: &'a SloPolicy,
    /// The free executor's instance.
    pub model: &'a ExecModel,
    /// Rows per second arriving.
    pub rate: f64,
    /// The model's executors.
    pub instances: usize,
}

/// The instant by which `p` must be answered to meet its planned target, counted from when it was
/// queued (a load on demand or decoding before that is not the batcher's to control; the headroom
/// is for decoding and sending).
pub(crate) fn deadline(slo: &SloPolicy, p: &Pending) -> Instant {
    p.enqueued + slo.planned(p.request.schedule.slo)
}

/// Whether `p` can no longer meet its target, even executed alone now.
fn doomed(view: &SloView<'_>, p: &Pending, now: Instant) -> bool {
    view.model
        .predict(p.request.batch_size)
        .is_some_and(|t| now + secs(t) > deadline(view.slo, p))
}

/// Seconds as a duration, at most a day (far beyond any target, and safe to add to an instant).
pub(crate) fn secs(s: f64) -> Duration {
    const DAY: Duration = Duration::from_secs(86_400);
    Duration::try_from_secs_f64(s.max(0.0)).map_or(DAY, |d| d.min(DAY))
}

/// SLO mode's decision (see the module's comment).
pub(crate) fn slo_action(queue: &PriorityQueue, policy: &Policy, view: &SloView<'_>, now: Instant) -> Action {
    let Some(first) = queue.iter().next() else {
        return Action::Idle;
    };
    let max = policy.max_batch_size.max(1);
    let predict = |rows: usize| secs(view.model.predict(rows).unwrap_or(0.0));
    // The batch: the queue's prefix, capped where the next request would make a member late.
    let walk = |capped: bool| {
        let mut rows = 0usize;
        let mut count = 0usize;
        // The earliest deadline of the members that can still meet theirs.
        let mut earliest: Option<Instant> = None;
        let mut full = false;
        for e in queue.iter() {
            let b = e.request.batch_size;
            if count > 0 && (!e.request.batches_with(&first.request, &policy.free) || rows + b > max) {
                full = true;
                break;
            }
            let candidate = if doomed(view, e, now) {
                earliest
            } else {
                Some(earliest.map_or(deadline(view.slo, e), |d| d.min(deadline(view.slo, e))))
            };
            if capped && count > 0 && candidate.is_some_and(|d| now + predict(rows + b) > d) {
                return (rows, count, earliest, true, true);
            }
            rows += b;
            count += 1;
            earliest = candidate;
        }
        (rows, count, earliest, full, false)
    };
    let Some(fit) = view.model.fit() else {
        // Nothing measured yet: what is queued goes at once (no prediction dooms or caps it).
        return Action::Dispatch(walk(false).1.max(1));
    };
    if view.slo.action == SloAction::Shed {
        // The head is shed only once its target has passed: it always executes otherwise, so the
        // measurements that predictions rest on never stop (a pessimistic fit cannot lock the
        // model out by shedding everything).
        let shed: Vec<usize> = queue
            .iter()
            .enumerate()
            .filter(|(k, e)| {
                if *k == 0 {
                    now > deadline(view.slo, e)
                } else {
                    doomed(view, e, now)
                }
            })
            .map(|(k, _)| k)
            .collect();
        if !shed.is_empty() {
            return Action::Shed(shed);
        }
    }
    let rate = view.rate;
    let instances = view.instances.max(1) as f64;
    // Whether the executors keep up with the arrivals in batches of `b` rows.
    let keeps_up = |b: usize| rate.is_finite() && rate * (fit.fixed / b.max(1) as f64 + fit.per_row) < instances;
    let (mut rows, mut count, mut earliest, mut full, cut) = walk(true);
    // Best effort: a cap the executors cannot keep up with at that size only moves the lateness to
    // the requests behind it (and lowers throughput, so more are late): take what the model takes.
    if cut && view.slo.action == SloAction::BestEffort && !keeps_up(rows) {
        (rows, count, earliest, full, _) = walk(false);
    }
    let count = count.max(1);
    let Some(earliest) = earliest else {
        // Every member is late already: send as many as the model takes.
        return Action::Dispatch(count);
    };
    // A lone request is never held: the model is idle, or its callers wait for their answers.
    if full || rows >= max || count == 1 {
        return Action::Dispatch(count);
    }
    // Would waiting raise throughput? Only while the executors cannot keep up at this batch size.
    // A cost without a fixed part is the same per row at every size: waiting cannot help.
    if !(rate.is_finite() && rate > 0.0) || fit.fixed <= 0.0 || keeps_up(rows) {
        return Action::Dispatch(count);
    }
    // Grow towards the smallest size that keeps up, as far as the deadline lets the batch grow.
    let mut goal = None;
    for b in rows + 1..=max {
        let gathered = now + secs((b - rows) as f64 / rate);
        if gathered + predict(b) > earliest {
            break;
        }
        goal = Some((b, gathered));
        if keeps_up(b) {
            break;
        }
    }
    let Some((b, gathered)) = goal else {
        return Action::Dispatch(count);
    };
    let latest = earliest.checked_sub(predict(b)).unwrap_or(now);
    // Merging the rows still to come saves at most one execution's fixed cost; an executor idle for
    // longer than that loses more than the merge gains.
    let until = gathered.min(latest).min(now + secs(fit.fixed));
    if until <= now {
        Action::Dispatch(count)
    } else {
        Action::WaitUntil(until)
    }
}

#[cfg(test)]
mod tests;
