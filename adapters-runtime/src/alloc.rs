//! `TrainingAllocator`: mimalloc set up for training loops that allocate and free the same large
//! buffers every step; and the process's resident-memory figures (`peak_rss_bytes`, `rss_bytes`).
//!
//! candle allocates a fresh buffer for every op result, so a training step frees and re-allocates
//! hundreds of megabytes. glibc's `malloc` serves buffers over 32 MiB with `mmap` and unmaps them
//! on `free`; mimalloc by default gives freed memory back to the OS ("purges") after a delay (1 s in
//! mimalloc 3). Either
//! way the next step faults the pages in again and the kernel zeroes them: on a 135M-parameter
//! model, thousands of page faults and 6–40 % longer steps (BENCHMARKS.md). This allocator never purges: freed memory stays mapped and is
//! reused by the next step, so the resident set stays at the step's peak (it does not grow beyond
//! it) and a steady-state step takes no page faults (`bench_train` reports faults per step).
//!
//! A library cannot choose a program's allocator; a training binary opts in with two lines:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: adapters_runtime::alloc::TrainingAllocator = adapters_runtime::alloc::TrainingAllocator;
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

/// mimalloc's `mi_option_purge_delay` (mimalloc 3's `mi_option_t`; `libmimalloc-sys` names no
/// constant for it). Checked by reading it back in this module's tests.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's `mi_option_arena_purge_mult` (the arena purge delay is `purge_delay` times this).
const MI_OPTION_ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Sets mimalloc's options once, before the first allocation it serves for us: never purge freed
/// memory. Calls into mimalloc only (no allocation), so it is safe inside `alloc`.
#[cold]
fn configure() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; both indices are
    // valid options of the bundled mimalloc 3.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_PURGE_MULT, 0);
    }
    CONFIGURED.store(true, Ordering::Release);
}

#[inline]
fn ensure_configured() {
    if !CONFIGURED.load(Ordering::Acquire) {
        configure();
    }
}

/// A global allocator for training binaries: mimalloc that keeps freed memory for reuse instead of
/// returning it to the OS (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainingAllocator;

// SAFETY: every method forwards to mimalloc's global allocator, which upholds `GlobalAlloc`'s
// contract; `ensure_configured` only sets options.
unsafe impl GlobalAlloc for TrainingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ensure_configured();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ensure_configured();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ensure_configured();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Whether mimalloc's options are the ones [`TrainingAllocator`] sets (true once it has served an
/// allocation in this process).
pub fn training_policy_active() -> bool {
    // SAFETY: reads mimalloc's option table.
    CONFIGURED.load(Ordering::Acquire)
        && unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) } == -1
}

/// The process's peak resident memory in bytes (Linux `VmHWM` of `/proc/self/status`); `None`
/// elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// The process's resident memory now in bytes (Linux `VmRSS`); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

/// A `/proc/self/status` field in KiB.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_the_purge_delay_ones() {
        // mimalloc 3's defaults for these two indices are purge_delay = 1000 and
        // arena_purge_mult = 1: reading them back shows the indices name those options.
        let (delay, mult) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_PURGE_MULT),
            )
        };
        if !CONFIGURED.load(Ordering::Acquire) {
            assert_eq!((delay, mult), (1000, 1));
        }
        configure();
        assert!(training_policy_active());
        let b = unsafe { TrainingAllocator.alloc(Layout::from_size_align(64 << 20, 64).unwrap()) };
        assert!(!b.is_null());
        unsafe { TrainingAllocator.dealloc(b, Layout::from_size_align(64 << 20, 64).unwrap()) };
    }
}
