//! The batching decision, as a pure function of the queue, the policy and the time (Triton's
//! `GetDynamicBatch`): send as soon as a preferred batch size can be formed; send when the batch cannot
//! grow (the next request would pass the largest preferred size or max_batch_size, or its shapes differ);
//! send when the oldest request has waited `max_queue_delay`; otherwise wait until it will have.
//!
//! A padded model (requests of different lengths padded to the batch's longest) picks its batch
//! instead of taking a prefix of the queue: the oldest request of the highest level always goes,
//! joined by the requests of its level whose lengths keep real tokens / computed tokens at or above
//! the model's efficiency target, within `max_batch_size` and the token budget; lower levels join
//! only within the lengths already chosen. A request passed over is never passed over for longer
//! than the requests ahead of it take, since the oldest always goes. Once the executors have timed
//! enough batches (`CostModel`: execution time = overhead + per-token cost × computed tokens), a
//! request also joins only if the padding it adds costs less than the execution it saves: on a GPU,
//! where a batch costs little more than one request, that is nearly always; on a CPU, where compute
//! grows with every padded token, only requests of nearly the same length share a batch.

use std::time::{Duration, Instant};

use super::queue::PriorityQueue;
use crate::core::SloPolicy;

pub(crate) mod slo;

/// The batching parameters of one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// False: every request executes alone (no dynamic batching).
    pub dynamic: bool,
    pub max_batch_size: usize,
    /// Ascending.
    pub preferred: Vec<usize>,
    pub max_queue_delay: Duration,
    /// Per model input: whether requests may differ in its shape (ragged or padded inputs).
    pub free: Vec<bool>,
    /// Present for a padded model.
    pub padding: Option<PaddingPolicy>,
    /// Present in SLO mode (`slo::slo_action` decides instead of the delay).
    pub slo: Option<SloPolicy>,
}

/// How a padded model's batches are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PaddingPolicy {
    /// Most computed tokens (rows × longest) per batch.
    pub max_tokens: Option<usize>,
    /// Least real / computed tokens, in percent, for a request to join a batch.
    pub min_efficiency_percent: u32,
    /// How many queued requests the choice looks at.
    pub lookahead: usize,
}

impl Policy {
    fn max_preferred(&self) -> usize {
        self.preferred.last().copied().unwrap_or(self.max_batch_size).max(1)
    }
}

/// What the scheduler should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send the first `n` requests (in dispatch order) as one batch.
    Dispatch(usize),
    /// Send the requests at these positions (in dispatch order, ascending) as one batch.
    Pick(Vec<usize>),
    /// Answer the requests at these positions (ascending) UNAVAILABLE: they cannot meet their
    /// latency target (SLO mode, `shed`).
    Shed(Vec<usize>),
    /// Nothing to send before this instant, unless more requests arrive.
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// Least squares of `y` against `x` over recent samples: each sample's weight decays by
/// [`DecayingFit::DECAY`] per new one, so the fit follows the last few dozen (a model that starts
/// sharing the device is seen within them).
#[derive(Clone, Debug, Default)]
pub(crate) struct DecayingFit {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    samples: u64,
}

/// What a [`DecayingFit`] says: the weighted means, the variance of `x`, and the line's slope and
/// intercept (`y = intercept + slope·x`; not finite when `x` did not vary).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line {
    pub mean_x: f64,
    pub mean_y: f64,
    pub var_x: f64,
    pub slope: f64,
    pub intercept: f64,
}

impl DecayingFit {
    pub(crate) const DECAY: f64 = 0.95;

    /// Adds a sample; non-finite ones are ignored.
    pub(crate) fn record(&mut self, x: f64, y: f64) {
        if !x.is_finite() || !y.is_finite() {
            return;
        }
        let d = Self::DECAY;
        self.w = self.w * d + 1.0;
        self.x = self.x * d + x;
        self.y = self.y * d + y;
        self.xx = self.xx * d + x * x;
        self.xy = self.xy * d + x * y;
        self.samples += 1;
    }

    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    /// The fit, once there is a sample.
    pub(crate) fn line(&self) -> Option<Line> {
        if self.samples == 0 || self.w <= 0.0 {
            return None;
        }
        let (mean_x, mean_y) = (self.x / self.w, self.y / self.w);
        let var_x = self.xx / self.w - mean_x * mean_x;
        let slope = (self.xy / self.w - mean_x * mean_y) / var_x;
        Some(Line {
            mean_x,
            mean_y,
            var_x,
            slope,
            intercept: mean_y - slope * mean_x,
        })
    }
}

/// An online fit of a padded model's execution time against the tokens it computed, `t = a + b·x`
/// ([`DecayingFit`] over recent batches). `a / b` is what an execution costs in tokens: merging a
/// request is worth it when the padding it adds is fewer tokens than that.
#[derive(Clone, Debug, Default)]
pub(crate) struct CostModel {
    fit: DecayingFit,
}

impl CostModel {
    /// Batches timed before the fit is used.
    const MIN_SAMPLES: u64 = 16;

    pub(crate) fn record(&mut self, tokens: u64, seconds: f64) {
        self.fit.record(tokens as f64, seconds);
    }

    /// The execution's fixed cost in tokens (`a / b`), once there are enough samples of varied sizes.
    pub(crate) fn overhead_tokens(&self) -> Option<f64> {
        if self.fit.samples() < Self::MIN_SAMPLES {
            return None;
        }
        let line = self.fit.line()?;
        if line.var_x <= (line.mean_x * 0.01).powi(2) {
            return None;
        }
        let b = line.slope;
        if b <= 0.0 || !b.is_finite() {
            return None;
        }
        // Every execution has a fixed cost: a fit without one is noise (a hiccup on a shared
        // machine), not a reason to stop batching.
        let a = line.intercept;
        (a > 0.0).then_some(a / b)
    }
}

#[cfg(test)]
pub(crate) fn next_action(queue: &PriorityQueue, policy: &Policy, now: Instant) -> Action {
    next_action_with(queue, policy, now, None)
}

/// [`next_action`] with a padded model's measured cost of an execution in tokens, if known.
pub(crate) fn next_action_with(
    queue: &PriorityQueue,
    policy: &Policy,
    now: Instant,
    overhead_tokens: Option<f64>,
) -> Action {
    let mut entries = queue.iter();
    let Some(first) = entries.next() else {
        return Action::Idle;
    };
    if !policy.dynamic {
        return Action::Dispatch(1);
    }
    if let Some(padding) = &policy.padding {
        return padded(queue, policy, padding, now, overhead_tokens);
    }
    let max_preferred = policy.max_preferred();
    let mut rows = first.request.batch_size;
    let mut count = 1;
    // (requests, rows) of the largest preferred batch seen while walking.
    let mut best: Option<usize> = policy.preferred.contains(&rows).then_some(count);
    let mut cannot_grow = false;
    for e in entries {
        let b = e.request.batch_size;
        if !e.request.batches_with(&first.request, &policy.free) {
            cannot_grow = true;
            break;
        }
        if rows + b > max_preferred && best.is_none() {
            best = Some(count);
        }
        if rows + b > policy.max_batch_size {
            cannot_grow = true;
            break;
        }
        rows += b;
        count += 1;
        if policy.preferred.contains(&rows) {
            best = Some(count);
        }
    }
    let oldest = queue.oldest_enqueued().unwrap_or(now);
    let waited = now.saturating_duration_since(oldest);
    let delay = policy.max_queue_delay;
    let delay_exceeded = !delay.is_zero() && waited >= delay;
    if let Some(n) = best
        && !delay_exceeded
    {
        return Action::Dispatch(n);
    }
    if cannot_grow || rows >= max_preferred || delay_exceeded || delay.is_zero() {
        return Action::Dispatch(count);
    }
    Action::WaitUntil(oldest + delay)
}

/// A padded model's decision (see the module's comment).
fn padded(
    queue: &PriorityQueue,
    policy: &Policy,
    padding: &PaddingPolicy,
    now: Instant,
    overhead_tokens: Option<f64>,
) -> Action {
    let Some(head) = queue.iter().next() else {
        return Action::Idle;
    };
    let ndims = head.request.lengths.len();
    // Candidates: position, rows, lengths, level.
    let candidates: Vec<(usize, &crate::core::ValidatedRequest, usize)> = queue
        .iter()
        .enumerate()
        .take(padding.lookahead.max(1))
        .filter(|(_, e)| e.request.lengths.len() == ndims && e.request.batches_with(&head.request, &policy.free))
        .map(|(k, e)| (k, &e.request, e.level))
        .collect();
    let fits = |rows: usize, max: &[usize]| {
        rows <= policy.max_batch_size
            && padding.max_tokens.is_none_or(|budget| {
                max.iter()
                    .try_fold(rows, |a, &d| a.checked_mul(d))
                    .is_some_and(|c| c <= budget)
            })
    };
    let cost = |rows: usize, max: &[usize]| max.iter().fold(rows, |a, &d| a.saturating_mul(d));
    let efficient = |real: usize, rows: usize, max: &[usize]| {
        (real as u128) * 100 >= (cost(rows, max) as u128) * u128::from(padding.min_efficiency_percent)
    };
    // Grow the batch from the head, taking at each step the candidate of the head's level that
    // adds the fewest computed tokens; stop when none keeps the batch efficient and within bounds.
    let mut chosen = vec![false; candidates.len()];
    chosen[0] = true;
    let mut rows = head.request.batch_size;
    let mut real = rows * head.request.tokens();
    let mut max: Vec<usize> = head.request.lengths.clone();
    let mut cannot_grow = false;
    let widened = |max: &[usize], r: &crate::core::ValidatedRequest| -> Vec<usize> {
        max.iter().zip(&r.lengths).map(|(&a, &b)| a.max(b)).collect()
    };
    for same_level in [true, false] {
        loop {
            let mut best: Option<(usize, usize, Vec<usize>)> = None;
            for (i, (_, r, level)) in candidates.iter().enumerate() {
                if chosen[i] || (*level == head.level) != same_level {
                    continue;
                }
                let m = widened(&max, r);
                let n = rows + r.batch_size;
                // Lower levels join only within the lengths already chosen.
                if !same_level && m != max {
                    continue;
                }
                if !fits(n, &m) || !efficient(real + r.batch_size * r.tokens(), n, &m) {
                    if !fits(n, &m) {
                        cannot_grow = true;
                    }
                    continue;
                }
                let added = cost(n, &m) - cost(rows, &max);
                // The padding this adds must cost less than the execution it saves.
                let pad = added.saturating_sub(r.batch_size * r.tokens());
                if overhead_tokens.is_some_and(|o| pad as f64 > o) {
                    continue;
                }
                if best.as_ref().is_none_or(|(_, a, _)| added < *a) {
                    best = Some((i, added, m));
                }
            }
            let Some((i, _, m)) = best else { break };
            chosen[i] = true;
            rows += candidates[i].1.batch_size;
            real += candidates[i].1.batch_size * candidates[i].1.tokens();
            max = m;
        }
    }
    let picked: Vec<usize> = candidates
        .iter()
        .zip(&chosen)
        .filter(|(_, c)| **c)
        .map(|((k, _, _), _)| *k)
        .collect();
    let waited = now.saturating_duration_since(queue.oldest_enqueued().unwrap_or(now));
    let delay = policy.max_queue_delay;
    if delay.is_zero() || waited >= delay || cannot_grow || rows >= policy.max_batch_size {
        return if picked.len() == picked.last().map_or(0, |l| l + 1) {
            Action::Dispatch(picked.len())
        } else {
            Action::Pick(picked)
        };
    }
    Action::WaitUntil(now + (delay - waited))
}

#[cfg(test)]
mod tests;
