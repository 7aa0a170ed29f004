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
