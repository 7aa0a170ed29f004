//! SLO mode's decision, tested without threads or sleeping: time, the arrival rate and the measured
//! executions are passed in.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::super::super::queue::{Pending, PriorityQueue, Reply};
use super::super::{Action, Policy};
use super::{Arrivals, ExecModel, SloView, slo_action};
use crate::core::{DataType, QueuePolicy, ScheduleOptions, SloAction, SloPolicy, Tensor, ValidatedRequest};

const MS: f64 = 1e-3;

struct Harness {
    queue: PriorityQueue,
    receivers: Vec<oneshot::Receiver<Reply>>,
    t0: Instant,
}

impl Harness {
    fn new() -> Self {
        Harness {
            queue: PriorityQueue::new(vec![QueuePolicy::default()]),
            receivers: Vec::new(),
            t0: Instant::now(),
        }
    }

    fn at(&self, us: u64) -> Instant {
        self.t0 + Duration::from_micros(us)
    }

    /// Queues a request of `rows` received at `at_us`, with its own target when given.
    fn push(&mut self, at_us: u64, rows: usize, own_ms: Option<u64>) {
        let (tx, rx) = oneshot::channel();
        self.receivers.push(rx);
        let t = self.at(at_us);
        self.queue.push(Pending {
            ticket: self.receivers.len() as u64,
            request: ValidatedRequest {
                id: String::new(),
                batch_size: rows,
                inputs: vec![Some(Tensor {
                    name: "x".into(),
                    datatype: DataType::F32,
                    shape: vec![rows, 4],
                    data: Bytes::from(vec![0u8; rows * 16]),
                })],
                outputs: None,
                classification: Vec::new(),
                lengths: Vec::new(),
                schedule: ScheduleOptions {
                    slo: own_ms.map(Duration::from_millis),
                    ..ScheduleOptions::default()
                },
            },
            received: t,
            enqueued: t,
            deadline: None,
            level: 0,
            reply: tx,
            alive: std::sync::Weak::new(),
            span: tracing::Span::none(),
        });
    }
}

fn policy(max: usize) -> Policy {
    Policy {
        dynamic: true,
        max_batch_size: max,
        preferred: Vec::new(),
        max_queue_delay: Duration::ZERO,
        free: Vec::new(),
        padding: None,
        slo: None,
    }
}

fn slo(target_ms: u64, action: SloAction) -> SloPolicy {
    SloPolicy {
        target: Duration::from_millis(target_ms),
        percentile_bp: 9900,
        headroom_bp: 0,
        action,
    }
}

/// An instance whose executions take `fixed + per_row · rows` seconds exactly, timed at sizes 1..=16.
fn measured(fixed: f64, per_row: f64) -> ExecModel {
    let mut m = ExecModel::default();
    for k in 0..64 {
        let rows = 1 + k % 16;
        m.record(rows, fixed + per_row * rows as f64, 9900);
    }
    m
}

fn view<'a>(slo: &'a SloPolicy, model: &'a ExecModel, rate: f64) -> SloView<'a> {
    SloView {
        slo,
        model,
        rate,
        instances: 1,
    }
}

#[test]
fn the_fit_recovers_the_cost_and_its_spread() {
    let m = measured(2.0 * MS, 0.25 * MS);
    let fit = m.fit().expect("fit");
    assert!((fit.fixed - 2.0 * MS).abs() < 1e-6, "{fit:?}");
    assert!((fit.per_row - 0.25 * MS).abs() < 1e-7, "{fit:?}");
    assert!((m.predict(8).unwrap() - 4.0 * MS).abs() < 1e-6);

    // One execution in ten takes twice as long: the p99 prediction carries it, the p50 does not.
    let (mut p99, mut p50) = (ExecModel::default(), ExecModel::default());
    for k in 0..400 {
        let rows = 1 + k % 8;
        let t = (1.0 + 0.5 * rows as f64) * MS * if k % 10 == 0 { 2.0 } else { 1.0 };
        p99.record(rows, t, 9900);
        p50.record(rows, t, 5000);
    }
    let mean = p99.mean(4).unwrap();
    assert!(
        p99.predict(4).unwrap() > 1.6 * mean,
        "{} vs {mean}",
        p99.predict(4).unwrap()
    );
    assert!(p50.predict(4).unwrap() < 1.15 * p50.mean(4).unwrap());
}

#[test]
fn without_enough_executions_nothing_is_predicted_and_everything_goes() {
    let mut m = ExecModel::default();
    for _ in 0..ExecModel::MIN_SAMPLES - 1 {
        m.record(1, 1.0 * MS, 9900);
    }
    assert!(m.fit().is_none());
    let mut h = Harness::new();
    for k in 0..5 {
        h.push(k * 10, 1, None);
    }
    let s = slo(50, SloAction::Shed);
    assert_eq!(
        slo_action(&h.queue, &policy(4), &view(&s, &m, 1e6), h.at(50)),
        Action::Dispatch(4)
    );
    // Batches all of one size: proportional cost, so waiting gains nothing.
    m.record(1, 1.0 * MS, 9900);
    let fit = m.fit().expect("fit");
    assert_eq!(fit.fixed, 0.0);
    assert!((fit.per_row - MS).abs() < 1e-9);
}

#[test]
fn the_fit_follows_a_change_in_execution_time() {
    let mut m = measured(1.0 * MS, 0.1 * MS);
    let before = m.predict(8).unwrap();
    // The device is now shared: everything takes three times as long.
    for k in 0..80 {
        let rows = 1 + k % 16;
        m.record(rows, 3.0 * (1.0 * MS + 0.1 * MS * rows as f64), 9900);
    }
    let after = m.mean(8).unwrap();
    assert!((after / before - 3.0).abs() < 0.1, "{before} -> {after}");
}

#[test]
fn an_idle_model_sends_a_lone_request_at_once() {
    // Executions cost mostly a fixed overhead, so a batch of 16 costs little more than one; still,
    // with nothing else arriving, waiting would only add latency.
    let m = measured(5.0 * MS, 0.05 * MS);
    let s = slo(100, SloAction::BestEffort);
    let mut h = Harness::new();
    h.push(0, 1, None);
    let mut arrivals = Arrivals::default();
    arrivals.record(h.at(0), 1);
    assert_eq!(arrivals.rate(h.at(0)), 0.0, "one arrival is no rate");
    assert_eq!(
        slo_action(&h.queue, &policy(16), &view(&s, &m, 0.0), h.at(0)),
        Action::Dispatch(1)
    );
    // A trickle the executor keeps up with at batch 1 (10/s x 5 ms): no wait either.
    assert_eq!(
        slo_action(&h.queue, &policy(16), &view(&s, &m, 10.0), h.at(0)),
        Action::Dispatch(1)
    );
}

#[test]
fn under_load_it_waits_for_the_batch_that_keeps_up_but_not_past_the_target() {
    // 5 ms + 0.05 ms/row; 1000 rows/s arrive: a batch of 1 keeps up with 200/s, a batch of 8 with
    // 1400/s. It waits for about 7 more rows (7 ms), well inside the 100 ms target.
    let m = measured(5.0 * MS, 0.05 * MS);
    let s = slo(100, SloAction::BestEffort);
    let mut h = Harness::new();
    h.push(0, 1, None);
    // Alone it goes at once, whatever the rate: its caller may be waiting for it to send the next.
    assert_eq!(
        slo_action(&h.queue, &policy(64), &view(&s, &m, 1000.0), h.at(0)),
        Action::Dispatch(1)
    );
    h.push(0, 1, None);
    let now = h.at(0);
    let Action::WaitUntil(until) = slo_action(&h.queue, &policy(64), &view(&s, &m, 1000.0), now) else {
        panic!("expected a wait");
    };
    let wait = until - now;
    assert!(
        wait >= Duration::from_millis(3) && wait < Duration::from_millis(8),
        "{wait:?}"
    );

    // With a 12 ms target there is time for the wait only until 12 - predicted(batch) ms.
    let tight = slo(12, SloAction::BestEffort);
    let action = slo_action(&h.queue, &policy(64), &view(&tight, &m, 1000.0), now);
    let Action::WaitUntil(until) = action else {
        panic!("expected a wait, got {action:?}");
    };
    let latest = Duration::from_millis(12) - Duration::from_secs_f64(m.predict(8).unwrap());
    assert!(until - now <= latest, "{:?} > {latest:?}", until - now);

    // Once the oldest request's wait plus the execution reaches the target, it goes.
    let late = h.at(7_500);
    assert_eq!(
        slo_action(&h.queue, &policy(64), &view(&tight, &m, 1000.0), late),
        Action::Dispatch(2)
    );
    // Never idle longer than the fixed cost a merge saves: with 1 ms of it, at most 1 ms.
    let cheap = measured(1.0 * MS, 0.01 * MS);
    let action = slo_action(&h.queue, &policy(64), &view(&s, &cheap, 4000.0), now);
    let Action::WaitUntil(until) = action else {
        panic!("expected a wait, got {action:?}");
    };
    assert!(until - now <= Duration::from_millis(1), "{:?}", until - now);
    // A full batch goes at once.
    let mut h = Harness::new();
    for k in 0..8 {
        h.push(k * 100, 1, None);
    }
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&s, &m, 1000.0), h.at(800)),
        Action::Dispatch(8)
    );
}

#[test]
fn a_cost_that_is_all_per_row_never_waits() {
    // Every row costs the same whatever the batch: waiting cannot raise throughput, even when the
    // executor cannot keep up (2000 rows/s at 1 ms/row).
    let m = measured(0.0, 1.0 * MS);
    let s = slo(50, SloAction::BestEffort);
    let mut h = Harness::new();
    h.push(0, 1, None);
    h.push(100, 1, None);
    for rate in [500.0, 2000.0] {
        assert_eq!(
            slo_action(&h.queue, &policy(32), &view(&s, &m, rate), h.at(200)),
            Action::Dispatch(2)
        );
    }
}

#[test]
fn the_batch_is_capped_at_what_the_target_allows() {
    // 1 ms + 1 ms/row, target 12 ms: 10 rows take 11 ms, 11 rows would take 12 ms.
    let m = measured(1.0 * MS, 1.0 * MS);
    let s = slo(12, SloAction::BestEffort);
    let mut h = Harness::new();
    for _ in 0..32 {
        h.push(0, 1, None);
    }
    let action = slo_action(&h.queue, &policy(32), &view(&s, &m, 0.0), h.at(500));
    assert_eq!(action, Action::Dispatch(10));
    // Arrivals faster than batches of 10 can serve (2000 rows/s at 1.1 ms a row): the cap would only
    // make the rest late; best effort takes what the model takes, shedding keeps the cap.
    assert_eq!(
        slo_action(&h.queue, &policy(32), &view(&s, &m, 2000.0), h.at(500)),
        Action::Dispatch(32)
    );
    let shed = slo(12, SloAction::Shed);
    assert_eq!(
        slo_action(&h.queue, &policy(32), &view(&shed, &m, 2000.0), h.at(500)),
        Action::Dispatch(10)
    );
    // Half a millisecond later only 10 still fit... and later fewer.
    assert_eq!(
        slo_action(&h.queue, &policy(32), &view(&s, &m, 0.0), h.at(3_500)),
        Action::Dispatch(7)
    );
}

#[test]
fn shedding_answers_what_cannot_be_met_and_best_effort_catches_up() {
    let m = measured(1.0 * MS, 1.0 * MS);
    let mut h = Harness::new();
    // Two requests from long ago, two fresh ones.
    h.push(0, 1, None);
    h.push(0, 1, None);
    h.push(19_000, 1, None);
    h.push(19_000, 1, None);
    let now = h.at(19_500);
    let shed = slo(10, SloAction::Shed);
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&shed, &m, 0.0), now),
        Action::Shed(vec![0, 1])
    );
    // Best effort: the late ones do not cap the batch; the fresh ones' targets still do (4 rows
    // take 5 ms, within their 9.5 ms left).
    let best = slo(10, SloAction::BestEffort);
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&best, &m, 0.0), now),
        Action::Dispatch(4)
    );
    // When every queued request is late, a full batch goes.
    let mut h = Harness::new();
    for _ in 0..12 {
        h.push(0, 1, None);
    }
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&best, &m, 0.0), h.at(50_000)),
        Action::Dispatch(8)
    );
}

#[test]
fn a_request_may_lower_its_target_but_not_raise_it() {
    let m = measured(1.0 * MS, 1.0 * MS);
    let s = slo(100, SloAction::Shed);
    let mut h = Harness::new();
    h.push(0, 1, None);
    h.push(0, 1, Some(1)); // 1 ms: less than one execution (2 ms)
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&s, &m, 0.0), h.at(0)),
        Action::Shed(vec![1])
    );
    let tight = slo(1, SloAction::Shed);
    let mut h = Harness::new();
    h.push(0, 1, None);
    h.push(0, 1, Some(1_000)); // asks for a second; the model's 1 ms holds
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&tight, &m, 0.0), h.at(0)),
        Action::Shed(vec![1])
    );
    let mut h = Harness::new();
    h.push(0, 1, Some(50));
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&s, &m, 0.0), h.at(0)),
        Action::Dispatch(1)
    );
}

#[test]
fn the_head_is_shed_only_once_its_target_has_passed() {
    // A fit far too pessimistic (100 ms a row against a 10 ms target) must not shed everything:
    // then nothing would execute and the fit would never be corrected.
    let m = measured(0.0, 100.0 * MS);
    let s = slo(10, SloAction::Shed);
    let mut h = Harness::new();
    h.push(0, 1, None);
    h.push(0, 1, None);
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&s, &m, 0.0), h.at(100)),
        Action::Shed(vec![1])
    );
    let mut h = Harness::new();
    h.push(0, 1, None);
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&s, &m, 0.0), h.at(100)),
        Action::Dispatch(1)
    );
    // Once its target has passed, it is a certain miss.
    assert_eq!(
        slo_action(&h.queue, &policy(8), &view(&s, &m, 0.0), h.at(10_001)),
        Action::Shed(vec![0])
    );
}

#[test]
fn the_arrival_rate_follows_the_load_and_sees_silence() {
    let mut a = Arrivals::default();
    let t0 = Instant::now();
    for k in 0..200 {
        a.record(t0 + Duration::from_micros(k * 1000), 1);
    }
    let last = t0 + Duration::from_micros(199_000);
    let r = a.rate(last);
    assert!((r - 1000.0).abs() < 50.0, "{r}");
    // Requests of 4 rows at the same pace are 4000 rows/s.
    let mut b = Arrivals::default();
    for k in 0..200 {
        b.record(t0 + Duration::from_micros(k * 1000), 4);
    }
    assert!((b.rate(last) - 4000.0).abs() < 200.0);
    // Sizes alternating 1 and 8 at the same pace: 4.5 rows a millisecond, not the mean of the
    // per-row gaps' inverses.
    let mut c = Arrivals::default();
    for k in 0..400 {
        c.record(t0 + Duration::from_micros(k * 1000), if k % 2 == 0 { 1 } else { 8 });
    }
    let r = c.rate(t0 + Duration::from_micros(399_000));
    assert!((r - 4500.0).abs() < 600.0, "{r}");
    // A second of silence: the model is idle.
    assert!(a.rate(last + Duration::from_secs(1)) <= 1.0);
    // The load doubles: the estimate follows within a few dozen arrivals.
    for k in 0..100 {
        a.record(last + Duration::from_micros(500 * (k + 1)), 1);
    }
    let r = a.rate(last + Duration::from_micros(50_000));
    assert!(r > 1800.0, "{r}");
}
