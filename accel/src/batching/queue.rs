//! The queue of one model: one FIFO per priority level (Triton's `PolicyQueue`s inside a
//! `PriorityQueue`), each applying its level's policy: a bound on its length, and queue timeouts that
//! either reject a request (REJECT) or move it behind the level's punctual requests (DELAY). Plain
//! data: `shared` guards it with a lock, and the decision function only reads it.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Instant;

use tokio::sync::oneshot;

use super::SubmitError;
use crate::core::{QueuePolicy, Tensor, TimeoutAction, ValidatedRequest};

/// What a queued request is answered with.
pub(crate) type Reply = Result<Vec<Tensor>, SubmitError>;

/// A request waiting in the queue.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Identifies the entry, so that its handler can withdraw it at its timeout.
    pub ticket: u64,
    pub request: ValidatedRequest,
    /// When the server received the request (for the success duration).
    pub received: Instant,
    pub enqueued: Instant,
    /// When its queue timeout expires, if it has one.
    pub deadline: Option<Instant>,
    /// 0-based priority level.
    pub level: usize,
    pub reply: oneshot::Sender<Reply>,
    /// Dies when the request's handler is dropped (its client left, or its deadline passed): an
    /// execution whose requests are all gone may stop.
    pub alive: Weak<()>,
    pub span: tracing::Span,
}

impl Pending {
    /// The client is gone: nothing will read the answer.
    pub(super) fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

#[derive(Debug)]
struct PolicyQueue {
    policy: QueuePolicy,
    queue: VecDeque<Pending>,
    /// Timed-out requests of a DELAY level, served after every punctual one.
    delayed: VecDeque<Pending>,
}

impl PolicyQueue {
    fn len(&self) -> usize {
        self.queue.len() + self.delayed.len()
    }
}

/// All levels of one model's queue. Level 0 is served first.
#[derive(Debug)]
pub(crate) struct PriorityQueue {
    levels: Vec<PolicyQueue>,
    len: usize,
    /// Batch elements queued.
    rows: usize,
}

impl PriorityQueue {
    pub(super) fn new(policies: Vec<QueuePolicy>) -> Self {
        let levels = policies
            .into_iter()
            .map(|policy| PolicyQueue {
                policy,
                queue: VecDeque::new(),
                delayed: VecDeque::new(),
            })
            .collect();
        PriorityQueue {
            levels,
            len: 0,
            rows: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Batch elements queued.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn levels(&self) -> usize {
        self.levels.len()
    }

    pub(super) fn policy(&self, level: usize) -> &QueuePolicy {
        &self.levels[level].policy
    }

    /// Whether `level` can take one more request under its `max_queue_size`.
    pub(super) fn has_room(&self, level: usize) -> bool {
        let l = &self.levels[level];
        l.policy.max_queue_size.is_none_or(|max| l.len() < max)
    }

    /// Appends a request to its level; check [`PriorityQueue::has_room`] first.
    pub(super) fn push(&mut self, p: Pending) {
        self.rows += p.request.batch_size;
        self.levels[p.level].queue.push_back(p);
        self.len += 1;
    }

    /// Requests in dispatch order: by level, punctual before delayed, then by arrival.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.levels.iter().flat_map(|l| l.queue.iter().chain(l.delayed.iter()))
    }

    /// Removes the first `n` requests in dispatch order.
    pub(super) fn take(&mut self, n: usize) -> Vec<Pending> {
        let mut out = Vec::with_capacity(n);
        for level in &mut self.levels {
            while out.len() < n {
                match level.queue.pop_front().or_else(|| level.delayed.pop_front()) {
                    Some(p) => out.push(p),
                    None => break,
                }
            }
        }
        self.len -= out.len();
        self.rows -= out.iter().map(|p| p.request.batch_size).sum::<usize>();
        out
    }

    /// Removes the requests at `positions` (ascending, in dispatch order).
    pub(super) fn take_positions(&mut self, positions: &[usize]) -> Vec<Pending> {
        let mut out = Vec::with_capacity(positions.len());
        let mut base = 0;
        let mut wanted = positions.iter().peekable();
        for level in &mut self.levels {
            let len = level.queue.len() + level.delayed.len();
            let mut mine: Vec<usize> = Vec::new();
            while let Some(&&p) = wanted.peek() {
                if p >= base + len {
                    break;
                }
                mine.push(p - base);
                wanted.next();
            }
            // Remove back to front so that earlier positions stay valid; then restore order.
            let punctual = level.queue.len();
            let mut taken: Vec<Pending> = Vec::with_capacity(mine.len());
            for &k in mine.iter().rev() {
                let p = if k < punctual {
                    level.queue.remove(k)
                } else {
                    level.delayed.remove(k - punctual)
                };
                taken.extend(p);
            }
            taken.reverse();
            out.extend(taken);
            base += len;
        }
        self.len -= out.len();
        self.rows -= out.iter().map(|p| p.request.batch_size).sum::<usize>();
        out
    }

    /// Removes the entry with `ticket`, if it is still queued.
    pub(super) fn remove(&mut self, ticket: u64) -> Option<Pending> {
        for level in &mut self.levels {
            for q in [&mut level.queue, &mut level.delayed] {
                if let Some(k) = q.iter().position(|p| p.ticket == ticket) {
                    let p = q.remove(k)?;
                    self.len -= 1;
                    self.rows -= p.request.batch_size;
                    return Some(p);
                }
            }
        }
        None
    }

    /// When the oldest queued request arrived.
    pub(super) fn oldest_enqueued(&self) -> Option<Instant> {
        self.levels
            .iter()
            .flat_map(|l| [l.queue.front(), l.delayed.front()])
            .flatten()
            .map(|p| p.enqueued)
            .min()
    }

    /// The earliest queue timeout still to come.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .flat_map(|l| l.queue.iter())
            .filter_map(|p| p.deadline)
            .min()
    }

    /// Applies queue timeouts at `now`: REJECT levels hand expired requests back to be answered,
    /// DELAY levels move them behind the level's punctual requests. Also drops cancelled requests.
    /// Costs one scan and no allocation when nothing has expired or been cancelled (the usual case).
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let due = |p: &Pending| p.is_cancelled() || p.deadline.is_some_and(|d| d <= now);
        if !self
            .levels
            .iter()
            .any(|l| l.queue.iter().any(due) || l.delayed.iter().any(Pending::is_cancelled))
        {
            return Vec::new();
        }
        let mut rejected = Vec::new();
        for level in &mut self.levels {
            let mut kept = VecDeque::with_capacity(level.queue.len());
            for p in level.queue.drain(..) {
                if p.is_cancelled() {
                    continue;
                }
                if p.deadline.is_some_and(|d| d <= now) {
                    match level.policy.timeout_action {
                        TimeoutAction::Reject => rejected.push(p),
                        TimeoutAction::Delay => {
                            let mut p = p;
                            p.deadline = None;
                            level.delayed.push_back(p);
                        }
                    }
                } else {
                    kept.push_back(p);
                }
            }
            level.queue = kept;
            level.delayed.retain(|p| !p.is_cancelled());
        }
        self.len = self.levels.iter().map(PolicyQueue::len).sum();
        self.rows = self.iter().map(|p| p.request.batch_size).sum();
        rejected
    }

    /// Drains everything (shutdown).
    pub(super) fn drain(&mut self) -> Vec<Pending> {
        let n = self.len;
        self.take(n)
    }
}
