//! Faults in mapped client memory, caught. A client owns its shared-memory object and may truncate
//! it after registering it; touching a mapped page past the object's new end raises SIGBUS, which
//! would kill the server (Triton dies of it). No check before an access can close that race, so the
//! fault itself is handled: each mapped region's address range is in a fixed table that the signal
//! handler reads without locks. A fault inside a range maps private zero pages over the rest of the
//! range (from the faulting page on; a truncated file has nothing beyond its end either), counts the
//! fault and returns, so the access completes on zeros; the request that made it sees the count and
//! fails, and the region refuses every later use. A fault anywhere else goes to the handler that was
//! there before (Rust's stack-overflow report, or the default action: the process dies as it would
//! have).
#![allow(unsafe_code)]

use std::sync::Once;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Regions mapped at once, at most (the table the handler scans).
pub(super) const SLOTS: usize = 4096;

struct Range {
    /// 0 when the slot is free; written last when a slot is taken, first when it is released.
    start: AtomicUsize,
    end: AtomicUsize,
    faults: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Range = Range {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    faults: AtomicU64::new(0),
};

static RANGES: [Range; SLOTS] = [FREE; SLOTS];
/// Which slots are taken: a slot is claimed by a compare-and-swap of its flag from 0 to 1.
static CLAIMED: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The system's page size.
pub(super) fn page_size() -> usize {
    install();
    PAGE.load(Ordering::Relaxed)
}

/// One mapped range in the table, released on drop.
#[derive(Debug)]
pub(super) struct Guarded {
    slot: usize,
}

impl Guarded {
    /// Puts `[start, start + len)` in the table; `None` when the table is full.
    pub(super) fn new(start: usize, len: usize) -> Option<Guarded> {
        install();
        let slot = CLAIMED
            .iter()
            .position(|c| c.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        let r = &RANGES[slot];
        r.faults.store(0, Ordering::Relaxed);
        r.end.store(start + len, Ordering::Release);
        r.start.store(start, Ordering::Release);
        Some(Guarded { slot })
    }

    /// Faults caught in this range so far.
    pub(super) fn faults(&self) -> u64 {
        RANGES[self.slot].faults.load(Ordering::Acquire)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let r = &RANGES[self.slot];
        r.start.store(0, Ordering::Release);
        r.end.store(0, Ordering::Release);
        CLAIMED[self.slot].store(0, Ordering::Release);
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is a valid value to fill; sigaction writes the old action into
        // `previous` and installs ours, whose handler only reads atomics and calls mmap/sigaction.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                let _ = PREVIOUS.set(previous);
            } else {
                tracing::warn!(
                    "cannot install the SIGBUS handler: a client truncating its shared memory would kill the server"
                );
            }
        }
    });
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for r in &RANGES {
        let start = r.start.load(Ordering::Acquire);
        if start == 0 || addr < start {
            continue;
        }
        let end = r.end.load(Ordering::Acquire);
        if addr >= end {
            continue;
        }
        let from = addr & !(page - 1);
        // SAFETY: [from, end) lies inside a mapping this process made and still holds (a range is
        // in the table only while its mapping lives); replacing it with private zero pages keeps
        // the addresses valid for the access in progress and for the eventual munmap.
        let mapped = unsafe {
            libc::mmap(
                from as *mut libc::c_void,
                end - from,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            r.faults.fetch_add(1, Ordering::AcqRel);
            return;
        }
        break;
    }
    previous(signal, info, context);
}

/// Hands a fault that is not ours to the handler that was installed before.
fn previous(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(old) = PREVIOUS.get() else {
        reset_default(signal);
        return;
    };
    let handler = old.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Back to the default: the access faults again and the process dies as it would have.
        reset_default(signal);
        return;
    }
    // SAFETY: `handler` is the function the earlier sigaction installed, called the way its flags
    // say it takes its arguments.
    unsafe {
        if old.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(handler);
            f(signal, info, context);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(signal);
        }
    }
}

fn reset_default(signal: libc::c_int) {
    // SAFETY: sigaction is async-signal-safe; a zeroed action is SIG_DFL with no flags.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_claimed_and_released() {
        let a = Guarded::new(0x1000_0000, 4096).expect("a slot");
        let b = Guarded::new(0x2000_0000, 4096).expect("a slot");
        assert_ne!(a.slot, b.slot);
        assert_eq!(a.faults(), 0);
        let freed = a.slot;
        drop(a);
        assert_eq!(RANGES[freed].start.load(Ordering::Acquire), 0);
        drop(b);
        assert!(page_size().is_power_of_two());
    }
}
