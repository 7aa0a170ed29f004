//! A global-allocator wrapper that keeps, per thread, the bytes allocated minus the bytes freed, so that
//! a model load can measure what it really holds afterwards (its footprint on the CPU) instead of
//! guessing from the file size. The binary installs it around mimalloc; where it is not installed
//! (unit tests, other embedders) [`measure`] says so and the caller falls back to the backend's count.

#![allow(unsafe_code)] // a GlobalAlloc implementation forwards raw pointers

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(delta: i64) {
    // `try_with`: no panic while the thread's locals are being torn down.
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(delta)));
}

fn net() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// Counts the bytes each thread holds through the wrapped allocator.
#[derive(Debug, Default)]
pub struct Counting<A>(pub A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; the counter is a plain
// thread-local cell with no destructor and no allocation of its own.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { self.0.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Whether [`Counting`] is the global allocator of this process.
pub fn installed() -> bool {
    let before = net();
    let probe = std::hint::black_box(Box::new([0u8; 64]));
    let seen = net() != before;
    drop(probe);
    seen
}

/// Runs `f` and returns what it left allocated on this thread, in bytes (`None` when the counting
/// allocator is not installed). Memory `f` frees before returning is not counted; memory it hands to
/// other threads is.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    if !installed() {
        return (f(), None);
    }
    let before = net();
    let value = f();
    let after = net();
    (value, Some(after.saturating_sub(before).max(0) as u64))
}

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers how to hand freed memory back to the system at once (the binary's allocator knows how:
/// mimalloc otherwise returns freed pages lazily, on later allocator activity, which an idle server
/// after an unload does not have).
pub fn set_release_hook(hook: fn()) {
    let _ = RELEASE.set(hook);
}

/// Hands memory freed so far back to the system, when the allocator can be told to. Called after a
/// model's memory has been freed (unload, eviction), never on the request path.
pub fn release_free_memory() {
    if let Some(hook) = RELEASE.get() {
        hook();
    }
}
