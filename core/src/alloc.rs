//! Heap allocations counted per thread, so that "no allocation on the I/O
//! path" is a number a test can check and an operator can watch.
//!
//! An app installs [`Counting`] as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: pollux_core::alloc::Counting = pollux_core::alloc::Counting;
//! ```
//!
//! Each allocation and reallocation (not a free) then adds one to its
//! thread's counter, a thread-local increment in front of the system
//! allocator (no atomic, nothing shared). `thread_get_stats` shows each
//! reactor's count as `allocations`, the metrics endpoint as
//! `pollux_reactor_allocations_total`, and `pollux-perf` reports its own
//! reactors' count during the measured run, per I/O. Without the counting
//! allocator, [`count`] is `None` and those fields are left out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The system allocator, counting allocations per thread.
pub struct Counting;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised and without a destructor: reading it never
    // allocates and works at any point of a thread's life.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

#[inline]
fn bump() {
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; counting touches only a thread-local Cell.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations made so far by the calling thread, if the process counts
/// them (its global allocator is [`Counting`]).
pub fn count() -> Option<u64> {
    if INSTALLED.load(Ordering::Relaxed) { COUNT.try_with(Cell::get).ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_calling_threads_allocations_only() {
        let a = Counting;
        let layout = Layout::from_size_align(64, 8).unwrap();
        let before = COUNT.with(Cell::get);
        // SAFETY: a valid layout; the block is freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let p = a.realloc(p, layout, 128);
            assert!(!p.is_null());
            a.dealloc(p, Layout::from_size_align(128, 8).unwrap());
        }
        assert_eq!(COUNT.with(Cell::get) - before, 2, "one alloc and one realloc; a free is not counted");
        assert_eq!(count(), Some(before + 2));
        // Another thread's allocations are its own.
        let other = std::thread::spawn(move || {
            let a = Counting;
            // SAFETY: as above.
            unsafe { a.dealloc(a.alloc_zeroed(layout), layout) };
            count()
        })
        .join()
        .unwrap();
        assert_eq!(other, Some(1));
        assert_eq!(count(), Some(before + 2));
    }
}
