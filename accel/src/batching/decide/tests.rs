//! The batching decision and the queue's policies, tested without threads or sleeping: time is passed
//! in explicitly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::super::queue::{Pending, PriorityQueue, Reply};
use super::{Action, Policy, next_action};
use crate::core::{DataType, QueuePolicy, ScheduleOptions, Tensor, TimeoutAction, ValidatedRequest};

fn request(rows: usize, width: usize) -> ValidatedRequest {
    ValidatedRequest {
        id: String::new(),
        batch_size: rows,
        inputs: vec![Some(Tensor {
            name: "x".into(),
            datatype: DataType::F32,
            shape: vec![rows, width],
            data: Bytes::from(vec![0u8; rows * width * 4]),
        })],
        outputs: None,
        classification: Vec::new(),
        lengths: Vec::new(),
        schedule: ScheduleOptions::default(),
    }
}

struct Harness {
    queue: PriorityQueue,
    receivers: Vec<oneshot::Receiver<Reply>>,
    t0: Instant,
}

impl Harness {
    fn new(levels: Vec<QueuePolicy>) -> Self {
        Harness {
            queue: PriorityQueue::new(levels),
            receivers: Vec::new(),
            t0: Instant::now(),
        }
    }

    fn push_at(&mut self, at_us: u64, rows: usize, width: usize, level: usize, timeout_us: Option<u64>) -> bool {
        let (tx, rx) = oneshot::channel();
        self.receivers.push(rx);
        let enqueued = self.t0 + Duration::from_micros(at_us);
        let p = Pending {
            ticket: self.receivers.len() as u64,
            request: request(rows, width),
            received: enqueued,
            enqueued,
            deadline: timeout_us.map(|t| enqueued + Duration::from_micros(t)),
            level,
            reply: tx,
            alive: std::sync::Weak::new(),
            span: tracing::Span::none(),
        };
        if !self.queue.has_room(level) {
            return false;
        }
        self.queue.push(p);
        true
    }

    fn push(&mut self, at_us: u64, rows: usize) {
        assert!(self.push_at(at_us, rows, 4, 0, None));
    }

    fn at(&self, us: u64) -> Instant {
        self.t0 + Duration::from_micros(us)
    }
}

fn policy(max: usize, preferred: &[usize], delay_us: u64) -> Policy {
    Policy {
        dynamic: true,
        max_batch_size: max,
        preferred: preferred.to_vec(),
        max_queue_delay: Duration::from_micros(delay_us),
        free: Vec::new(),
        padding: None,
        slo: None,
    }
}

#[test]
fn empty_queue_is_idle() {
    let h = Harness::new(vec![QueuePolicy::default()]);
    assert_eq!(next_action(&h.queue, &policy(8, &[], 100), h.at(0)), Action::Idle);
}

#[test]
fn without_dynamic_batching_requests_go_one_by_one() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    h.push(0, 1);
    h.push(0, 1);
    let p = Policy {
        dynamic: false,
        ..policy(8, &[], 0)
    };
    assert_eq!(next_action(&h.queue, &p, h.at(0)), Action::Dispatch(1));
}

#[test]
fn zero_delay_sends_whatever_is_queued() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for _ in 0..3 {
        h.push(0, 1);
    }
    assert_eq!(next_action(&h.queue, &policy(8, &[], 0), h.at(0)), Action::Dispatch(3));
}

#[test]
fn waits_for_the_delay_then_sends() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    h.push(0, 1);
    h.push(50, 1);
    let p = policy(8, &[], 100);
    assert_eq!(next_action(&h.queue, &p, h.at(60)), Action::WaitUntil(h.at(100)));
    assert_eq!(next_action(&h.queue, &p, h.at(100)), Action::Dispatch(2));
}

#[test]
fn a_full_batch_goes_at_once_and_never_exceeds_max_batch_size() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for _ in 0..5 {
        h.push(0, 2); // 10 rows queued, max 8
    }
    let p = policy(8, &[], 1_000_000);
    assert_eq!(next_action(&h.queue, &p, h.at(1)), Action::Dispatch(4));
}

#[test]
fn a_preferred_size_goes_at_once() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for _ in 0..5 {
        h.push(0, 1);
    }
    // 5 queued, preferred 4 (and 8): send 4 now rather than wait for 8.
    let p = policy(16, &[4, 8], 1_000_000);
    assert_eq!(next_action(&h.queue, &p, h.at(1)), Action::Dispatch(4));
    // Largest preferred size formable wins.
    for _ in 0..3 {
        h.push(0, 1);
    }
    assert_eq!(next_action(&h.queue, &p, h.at(1)), Action::Dispatch(8));
}

#[test]
fn below_every_preferred_size_waits_then_sends_all() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for _ in 0..3 {
        h.push(0, 1);
    }
    let p = policy(16, &[4, 8], 200);
    assert_eq!(next_action(&h.queue, &p, h.at(10)), Action::WaitUntil(h.at(200)));
    assert_eq!(next_action(&h.queue, &p, h.at(200)), Action::Dispatch(3));
}

#[test]
fn past_the_largest_preferred_size_sends_what_fits_it() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    h.push(0, 3);
    h.push(0, 3);
    // preferred 4: 3 then 3 would pass it without hitting it; send the 3 that fit.
    let p = policy(16, &[4], 1_000_000);
    assert_eq!(next_action(&h.queue, &p, h.at(1)), Action::Dispatch(1));
}

#[test]
fn different_shapes_are_not_batched_together() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    assert!(h.push_at(0, 1, 4, 0, None));
    assert!(h.push_at(0, 1, 5, 0, None));
    assert!(h.push_at(0, 1, 4, 0, None));
    assert_eq!(
        next_action(&h.queue, &policy(8, &[], 1_000_000), h.at(1)),
        Action::Dispatch(1)
    );
}

#[test]
fn higher_priority_levels_go_first() {
    let mut h = Harness::new(vec![QueuePolicy::default(), QueuePolicy::default()]);
    assert!(h.push_at(0, 1, 4, 1, None)); // low priority, first to arrive
    assert!(h.push_at(10, 1, 4, 0, None)); // high priority
    let taken = h.queue.take(1);
    assert_eq!(taken[0].level, 0);
    assert_eq!(h.queue.len(), 1);
}

#[test]
fn a_full_level_refuses_requests() {
    let bounded = QueuePolicy {
        max_queue_size: Some(2),
        ..QueuePolicy::default()
    };
    let mut h = Harness::new(vec![bounded, QueuePolicy::default()]);
    assert!(h.push_at(0, 1, 4, 0, None));
    assert!(h.push_at(0, 1, 4, 0, None));
    assert!(!h.push_at(0, 1, 4, 0, None), "level 1 is full");
    assert!(h.push_at(0, 1, 4, 1, None), "another level has its own bound");
    assert_eq!(h.queue.len(), 3);
}

#[test]
fn reject_timeouts_are_handed_back_at_their_deadline() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    assert!(h.push_at(0, 1, 4, 0, Some(100)));
    assert!(h.push_at(0, 1, 4, 0, None));
    assert_eq!(h.queue.next_deadline(), Some(h.at(100)));
    assert!(h.queue.expire(h.at(99)).is_empty());
    let rejected = h.queue.expire(h.at(100));
    assert_eq!(rejected.len(), 1);
    assert_eq!(h.queue.len(), 1);
    assert_eq!(h.queue.next_deadline(), None);
}

#[test]
fn delay_timeouts_move_behind_punctual_requests() {
    let delay = QueuePolicy {
        timeout_action: TimeoutAction::Delay,
        ..QueuePolicy::default()
    };
    let mut h = Harness::new(vec![delay]);
    assert!(h.push_at(0, 1, 4, 0, Some(10))); // will time out
    assert!(h.push_at(5, 2, 4, 0, None));
    assert!(h.queue.expire(h.at(20)).is_empty(), "DELAY keeps the request");
    assert_eq!(h.queue.len(), 2);
    let order: Vec<usize> = h.queue.iter().map(|p| p.request.batch_size).collect();
    assert_eq!(order, vec![2, 1], "the timed-out request now comes last");
}

#[test]
fn cancelled_requests_are_dropped() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    h.push(0, 1);
    h.push(0, 1);
    h.receivers.remove(0); // the first client went away
    assert!(h.queue.expire(h.at(1)).is_empty());
    assert_eq!(h.queue.len(), 1);
}

/// A padded model's policy: the request's width is its length.
fn padded_policy(max: usize, tokens: Option<usize>, delay_us: u64) -> Policy {
    Policy {
        free: vec![true],
        padding: Some(super::PaddingPolicy {
            max_tokens: tokens,
            min_efficiency_percent: 80,
            lookahead: 256,
        }),
        ..policy(max, &[], delay_us)
    }
}

impl Harness {
    fn push_len(&mut self, at_us: u64, len: usize, level: usize) {
        assert!(self.push_at(at_us, 1, len, level, None));
        let last = self.queue.len() - 1;
        // The request's tokens are its width.
        let mut taken = self.queue.take_positions(&[last]);
        taken[0].request.lengths = vec![len];
        self.queue.push(taken.remove(0));
    }

    fn lengths(&self, picked: &[usize]) -> Vec<usize> {
        let all: Vec<usize> = self.queue.iter().map(|p| p.request.lengths[0]).collect();
        picked.iter().map(|&k| all[k]).collect()
    }
}

#[test]
fn padded_batches_group_similar_lengths_and_always_take_the_oldest() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for len in [100, 10, 12, 11, 98, 13] {
        h.push_len(0, len, 0);
    }
    let p = padded_policy(8, None, 0);
    let Action::Pick(picked) = next_action(&h.queue, &p, h.at(0)) else {
        panic!("a picked batch expected")
    };
    assert_eq!(
        h.lengths(&picked),
        vec![100, 98],
        "the oldest and the one near its length"
    );
    let taken = h.queue.take_positions(&picked);
    assert_eq!(taken.len(), 2);
    // Next: the short ones together (10..13 pad to 13: 46/52 = 88%).
    assert_eq!(next_action(&h.queue, &p, h.at(0)), Action::Dispatch(4));
}

#[test]
fn padded_batches_respect_the_token_budget_and_max_batch_size() {
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for _ in 0..5 {
        h.push_len(0, 100, 0);
    }
    assert_eq!(
        next_action(&h.queue, &padded_policy(8, Some(250), 0), h.at(0)),
        Action::Dispatch(2)
    );
    assert_eq!(
        next_action(&h.queue, &padded_policy(3, None, 0), h.at(0)),
        Action::Dispatch(3)
    );
    // The budget binds, so waiting would not help even with a delay.
    assert_eq!(
        next_action(&h.queue, &padded_policy(8, Some(250), 1000), h.at(0)),
        Action::Dispatch(2)
    );
}

#[test]
fn padded_batches_wait_out_the_delay_and_keep_priorities() {
    let levels = vec![QueuePolicy::default(), QueuePolicy::default()];
    let mut h = Harness::new(levels);
    h.push_len(0, 50, 0);
    h.push_len(0, 10, 0);
    h.push_len(0, 48, 1);
    h.push_len(0, 60, 1);
    // With room left and time to wait, it waits for the oldest's delay.
    assert_eq!(
        next_action(&h.queue, &padded_policy(8, None, 100), h.at(10)),
        Action::WaitUntil(h.at(100))
    );
    // Then: level 1 joins only within the lengths level 0 chose (48 ≤ 50, not 60); 10 is too short.
    let Action::Pick(picked) = next_action(&h.queue, &padded_policy(8, None, 100), h.at(100)) else {
        panic!("a picked batch expected")
    };
    assert_eq!(h.lengths(&picked), vec![50, 48]);
}

#[test]
fn a_measured_cost_keeps_only_padding_cheaper_than_an_execution() {
    let mut model = super::CostModel::default();
    assert_eq!(model.overhead_tokens(), None, "unknown before any batch");
    // 1 ms per execution plus 10 µs per token: an execution costs 100 tokens.
    for k in 0..40u64 {
        let tokens = 50 + (k % 7) * 100;
        model.record(tokens, 1e-3 + 1e-5 * tokens as f64);
    }
    let overhead = model.overhead_tokens().expect("fitted");
    assert!((overhead - 100.0).abs() < 1.0, "{overhead}");
    // A fit with no fixed cost is not trusted.
    let mut flat = super::CostModel::default();
    for k in 0..40u64 {
        flat.record(10 + k, 1e-5 * (10 + k) as f64 - 1e-6);
    }
    assert_eq!(flat.overhead_tokens(), None);
    let mut h = Harness::new(vec![QueuePolicy::default()]);
    for len in [100, 90, 40] {
        h.push_len(0, len, 0);
    }
    let p = padded_policy(8, None, 0);
    // Without the cost, the efficiency floor alone admits 90 (190/200) and not 40.
    assert_eq!(next_action(&h.queue, &p, h.at(0)), Action::Dispatch(2));
    // 90 pads by 10 tokens (< 100): it joins. With an execution worth 5 tokens, it does not.
    assert_eq!(
        super::next_action_with(&h.queue, &p, h.at(0), Some(overhead)),
        Action::Dispatch(2)
    );
    assert_eq!(
        super::next_action_with(&h.queue, &p, h.at(0), Some(5.0)),
        Action::Dispatch(1)
    );
}
