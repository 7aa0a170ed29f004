//! Time per operator type, for finding where a model's execution goes (`accel-bench compute
//! --profile`). Off unless switched on, and then one clock read per step; nothing in serving uses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

static ON: AtomicBool = AtomicBool::new(false);
static BY_SHAPE: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<String, (Duration, u64)>>> = Mutex::new(None);

/// Starts recording (and clears what was recorded). `by_shape`: one row per operator type and input
/// shapes, to tell which of a model's convolutions take the time.
pub fn enable(by_shape: bool) {
    *TOTALS.lock() = Some(HashMap::new());
    BY_SHAPE.store(by_shape, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
}

pub(super) fn by_shape() -> bool {
    BY_SHAPE.load(Ordering::Relaxed)
}

pub(super) fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

pub(super) fn record(op_type: &str, elapsed: Duration) {
    if let Some(totals) = TOTALS.lock().as_mut() {
        let entry = totals.entry(op_type.to_string()).or_default();
        entry.0 += elapsed;
        entry.1 += 1;
    }
}

/// Operator types with their total time and step count, the slowest first.
pub fn take() -> Vec<(String, Duration, u64)> {
    let mut rows: Vec<_> = TOTALS
        .lock()
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|(op, (time, count))| (op, time, count))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    ON.store(false, Ordering::Relaxed);
    rows
}
