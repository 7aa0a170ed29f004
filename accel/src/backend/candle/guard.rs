//! What one run of a plan works within, whatever the request holds: the bytes it may hold at once
//! across all its operators (inputs, live intermediates, and what the next operator is about to
//! create, admitted before it runs: `bound`), the work it may do in all (each operator's estimate,
//! summed over the execution, Loop iterations included), the iterations a Loop may run, whether its requests are
//! still wanted (a batch whose clients all left stops between operators and Loop iterations), and, at
//! load, the load's deadline. One guard serves a whole execution, nested If/Loop plans included.
//!
//! Failures travel through candle's error type (kernels return it) as I/O errors of a kind that can
//! be told apart, like `error::input_error!`: `OutOfMemory` for the memory limit, `QuotaExceeded` for
//! the work limit, `Interrupted` for a cancelled batch, `TimedOut` for a load past its deadline.

use std::cell::Cell;
use std::time::Instant;

use crate::backend::{BackendError, Cancel, ExecLimits, LoadLimits};

/// The limits of one execution (or of one constant fold at load).
#[derive(Debug)]
pub(super) struct Guard<'a> {
    limit: u64,
    live: Cell<u64>,
    work_limit: u64,
    work: Cell<u64>,
    max_iterations: u64,
    deadline: Option<Instant>,
    cancel: Option<&'a Cancel>,
    /// What the limits are called in messages.
    limit_name: &'static str,
    work_limit_name: &'static str,
}

impl<'a> Guard<'a> {
    /// The guard of one execution of a batch.
    pub(super) fn execution(limits: &ExecLimits, cancel: &'a Cancel) -> Self {
        Guard {
            limit: limits.max_bytes,
            live: Cell::new(0),
            work_limit: limits.max_work,
            work: Cell::new(0),
            max_iterations: limits.max_loop_iterations,
            deadline: None,
            cancel: Some(cancel),
            limit_name: "--max-execution-memory",
            work_limit_name: "--max-execution-work",
        }
    }

    /// The guard of constant folding at load: `room` bytes left for folded values.
    pub(super) fn fold(limits: &LoadLimits, room: u64) -> Self {
        Guard {
            limit: room,
            live: Cell::new(0),
            work_limit: limits.fold_work,
            work: Cell::new(0),
            max_iterations: limits.max_loop_iterations,
            deadline: limits.deadline,
            cancel: None,
            limit_name: "the constant-folding limit",
            work_limit_name: "the constant-folding work limit",
        }
    }

    pub(super) fn charge(&self, bytes: u64) {
        self.live.set(self.live.get().saturating_add(bytes));
    }

    pub(super) fn release(&self, bytes: u64) {
        self.live.set(self.live.get().saturating_sub(bytes));
    }

    /// Before an operator runs: room for `bytes` more and for `work` more work (counted as done
    /// once admitted), and the work still wanted and in time. `what` names the operator. Memory is
    /// checked first: an operator past both limits (a byte bound is also the work of most) is
    /// refused for its memory.
    pub(super) fn admit(&self, bytes: u64, work: u64, what: impl FnOnce() -> String) -> candle_core::Result<()> {
        self.check()?;
        let live = self.live.get();
        if live.saturating_add(bytes) > self.limit {
            return Err(error(
                std::io::ErrorKind::OutOfMemory,
                format!(
                    "{} would create up to {} with {} already held, more than the {} one execution may hold ({})",
                    what(),
                    crate::residency::Bytes(bytes),
                    crate::residency::Bytes(live),
                    crate::residency::Bytes(self.limit),
                    self.limit_name
                ),
            ));
        }
        let done = self.work.get();
        if done.saturating_add(work) > self.work_limit {
            return Err(error(
                std::io::ErrorKind::QuotaExceeded,
                format!(
                    "{} would take about {} operations after {} already done, more than the {} one execution may take ({})",
                    what(),
                    Count(work),
                    Count(done),
                    Count(self.work_limit),
                    self.work_limit_name
                ),
            ));
        }
        self.work.set(done.saturating_add(work));
        Ok(())
    }

    /// Whether the work is still wanted and in time.
    pub(super) fn check(&self) -> candle_core::Result<()> {
        if self.cancel.is_some_and(Cancel::is_cancelled) {
            return Err(error(
                std::io::ErrorKind::Interrupted,
                "every request of the batch was given up by its client".into(),
            ));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(error(
                std::io::ErrorKind::TimedOut,
                "the load did not finish before its deadline (--model-load-timeout-secs)".into(),
            ));
        }
        Ok(())
    }

    /// Iterations a Loop may run.
    pub(super) fn max_iterations(&self) -> u64 {
        self.max_iterations
    }
}

/// A count of operations in messages: `4.4e12`.
struct Count(u64);

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 < 1_000_000 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:.1e}", self.0 as f64)
        }
    }
}

fn error(kind: std::io::ErrorKind, message: String) -> candle_core::Error {
    candle_core::Error::Io(std::io::Error::new(kind, message))
}

/// The I/O kind a guard (or `input_error!`) gave an error, through backtraces and contexts.
pub(super) fn kind(e: &candle_core::Error) -> Option<std::io::ErrorKind> {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } | candle_core::Error::Context { inner, .. } => kind(inner),
        candle_core::Error::Io(e) => Some(e.kind()),
        _ => None,
    }
}

/// A kernel's error as the backend's, by what caused it; `text` is the message to give.
pub(super) fn to_backend(e: &candle_core::Error, text: String) -> BackendError {
    match kind(e) {
        Some(std::io::ErrorKind::InvalidInput) => BackendError::InvalidInput(text),
        Some(std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::QuotaExceeded) => {
            BackendError::ResourceExhausted(text)
        }
        Some(std::io::ErrorKind::Interrupted) => BackendError::Cancelled(text),
        Some(std::io::ErrorKind::TimedOut) => BackendError::TimedOut(text),
        _ => BackendError::Execution(text),
    }
}

/// A nested plan's error as a kernel's, keeping its cause recognisable.
pub(super) fn to_candle(e: BackendError) -> candle_core::Error {
    let kind = match &e {
        BackendError::InvalidInput(_) => std::io::ErrorKind::InvalidInput,
        BackendError::ResourceExhausted(_) => std::io::ErrorKind::OutOfMemory,
        BackendError::Cancelled(_) => std::io::ErrorKind::Interrupted,
        BackendError::TimedOut(_) => std::io::ErrorKind::TimedOut,
        other => return candle_core::Error::Msg(other.to_string()),
    };
    let message = match e {
        BackendError::InvalidInput(m)
        | BackendError::ResourceExhausted(m)
        | BackendError::Cancelled(m)
        | BackendError::TimedOut(m) => m,
        other => other.to_string(),
    };
    error(kind, message)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_limit_counts_what_is_held_and_what_comes() {
        let cancel = Cancel::default();
        let limits = ExecLimits {
            max_bytes: 100,
            max_loop_iterations: 5,
            ..ExecLimits::default()
        };
        let g = Guard::execution(&limits, &cancel);
        assert!(g.admit(100, 0, || "a".into()).is_ok());
        g.charge(60);
        let e = g.admit(41, 0, || "node X (MatMul)".into()).unwrap_err();
        assert_eq!(kind(&e), Some(std::io::ErrorKind::OutOfMemory));
        assert!(e.to_string().contains("node X (MatMul)"), "{e}");
        assert!(matches!(
            to_backend(&e, e.to_string()),
            BackendError::ResourceExhausted(_)
        ));
        g.release(60);
        assert!(g.admit(100, 0, || "a".into()).is_ok());
        assert_eq!(g.max_iterations(), 5);
    }

    #[test]
    fn work_adds_up_over_the_execution() {
        let cancel = Cancel::default();
        let limits = ExecLimits {
            max_work: 10_000_000,
            ..ExecLimits::default()
        };
        let g = Guard::execution(&limits, &cancel);
        for _ in 0..4 {
            assert!(g.admit(0, 2_500_000, || "a".into()).is_ok());
        }
        let e = g.admit(0, 1, || "node L (Loop)".into()).unwrap_err();
        assert_eq!(kind(&e), Some(std::io::ErrorKind::QuotaExceeded));
        let text = e.to_string();
        assert!(
            text.contains("node L (Loop)") && text.contains("--max-execution-work"),
            "{text}"
        );
        assert!(text.contains("1.0e7"), "{text}");
        assert!(matches!(to_backend(&e, text), BackendError::ResourceExhausted(_)));
    }

    #[test]
    fn a_batch_whose_clients_all_left_is_cancelled() {
        let (a, b) = (Arc::new(()), Arc::new(()));
        let cancel = Cancel::new(vec![Arc::downgrade(&a), Arc::downgrade(&b)]);
        let g = Guard::execution(&ExecLimits::default(), &cancel);
        assert!(g.check().is_ok());
        drop(a);
        assert!(g.check().is_ok(), "one client still waits");
        drop(b);
        let e = g.check().unwrap_err();
        assert!(matches!(to_backend(&e, String::new()), BackendError::Cancelled(_)));
        // The kind survives a nested plan.
        let nested = to_candle(to_backend(&e, "inner".into()));
        assert_eq!(kind(&nested), Some(std::io::ErrorKind::Interrupted));
    }

    #[test]
    fn a_fold_past_the_deadline_times_out() {
        let limits = LoadLimits {
            deadline: Some(Instant::now()),
            ..LoadLimits::default()
        };
        let g = Guard::fold(&limits, 10);
        assert_eq!(kind(&g.check().unwrap_err()), Some(std::io::ErrorKind::TimedOut));
    }
}
