//! The batching decision, as a pure function of the queue, the policy and the time (Triton's
//! `GetDynamicBatch`): send as soon as a preferred batch size can be formed; send when the batch cannot
//! grow (the next request would pass the largest preferred size or max_batch_size, or its shapes differ);
//! send when the oldest request has waited `max_queue_delay`; otherwise wait until it will have.

use std::time::{Duration, Instant};

use super::queue::PriorityQueue;

/// The batching parameters of one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// False: every request executes alone (no dynamic batching).
    pub dynamic: bool,
    pub max_batch_size: usize,
    /// Ascending.
    pub preferred: Vec<usize>,
    pub max_queue_delay: Duration,
}

impl Policy {
    fn max_preferred(&self) -> usize {
        self.preferred.last().copied().unwrap_or(self.max_batch_size).max(1)
    }
}

/// What the scheduler should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send the first `n` requests (in dispatch order) as one batch.
    Dispatch(usize),
    /// Nothing to send before this instant, unless more requests arrive.
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

pub(crate) fn next_action(queue: &PriorityQueue, policy: &Policy, now: Instant) -> Action {
    let mut entries = queue.iter();
    let Some(first) = entries.next() else {
        return Action::Idle;
    };
    if !policy.dynamic {
        return Action::Dispatch(1);
    }
    let max_preferred = policy.max_preferred();
    let mut rows = first.request.batch_size;
    let mut count = 1;
    // (requests, rows) of the largest preferred batch seen while walking.
    let mut best: Option<usize> = policy.preferred.contains(&rows).then_some(count);
    let mut cannot_grow = false;
    for e in entries {
        let b = e.request.batch_size;
        if !e.request.batches_with(&first.request) {
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

#[cfg(test)]
mod tests;
