//! A message: a `FnOnce() + Send` stored without allocation when it is small.
//!
//! Most messages capture a few pointers and ids. Boxing each one would put an
//! allocation on the sender and a free on the receiver (a cross-core free) for
//! every message; instead closures of up to [`INLINE`] bytes are stored in the
//! message itself and only larger ones are boxed.

use std::mem::{ManuallyDrop, MaybeUninit};

/// Closures up to this size (and alignment 16) are stored inline.
pub const INLINE: usize = 48;

#[repr(C, align(16))]
struct Storage([MaybeUninit<u8>; INLINE]);

/// A type-erased `FnOnce() + Send + 'static`.
pub struct Msg {
    /// Moves the closure out of the storage and calls it.
    call: unsafe fn(*mut Storage),
    /// Drops the closure in place without calling it.
    drop: unsafe fn(*mut Storage),
    data: Storage,
}

// SAFETY: `Msg::new` only accepts `Send` closures, and a `Msg` owns its closure.
unsafe impl Send for Msg {}

/// # Safety
/// `p` must hold an initialised `F` that is not used again afterwards.
unsafe fn call_in_place<F: FnOnce()>(p: *mut Storage) {
    // SAFETY: per the contract, p holds an F which we move out exactly once.
    let f = unsafe { std::ptr::read(p.cast::<F>()) };
    f();
}

/// # Safety
/// `p` must hold an initialised `F` that is not used again afterwards.
unsafe fn drop_in_place<F>(p: *mut Storage) {
    // SAFETY: per the contract, p holds an F which we drop exactly once.
    unsafe { std::ptr::drop_in_place(p.cast::<F>()) };
}

impl Msg {
    /// Wrap a closure.
    #[inline]
    pub fn new<F: FnOnce() + Send + 'static>(f: F) -> Msg {
        if size_of::<F>() <= INLINE && align_of::<F>() <= align_of::<Storage>() {
            Msg::inline(f)
        } else {
            // A box is a thin pointer: always fits.
            let b: Box<F> = Box::new(f);
            Msg::inline(move || b())
        }
    }

    #[inline]
    fn inline<F: FnOnce() + Send + 'static>(f: F) -> Msg {
        // Checked again so that a wrong caller fails loudly instead of corrupting memory.
        assert!(size_of::<F>() <= INLINE && align_of::<F>() <= align_of::<Storage>());
        let mut data = Storage([MaybeUninit::uninit(); INLINE]);
        // SAFETY: size and alignment were checked above; storage is exclusively ours.
        unsafe { std::ptr::write(data.0.as_mut_ptr().cast::<F>(), f) };
        Msg { call: call_in_place::<F>, drop: drop_in_place::<F>, data }
    }

    /// Run the closure, consuming the message.
    #[inline]
    pub fn run(self) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: the storage holds the closure `call` was built for; ManuallyDrop
        // guarantees `drop` will not also run on it.
        unsafe { (me.call)(&mut me.data) }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: a message that was never run still owns its closure.
        unsafe { (self.drop)(&mut self.data) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn small_and_large_closures_run_once() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        Msg::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .run();
        let big = [7u64; 32];
        let h = hits.clone();
        Msg::new(move || {
            h.fetch_add(big.iter().sum::<u64>() as usize, Ordering::SeqCst);
        })
        .run();
        assert_eq!(hits.load(Ordering::SeqCst), 1 + 7 * 32);
    }

    #[test]
    fn dropped_messages_drop_their_captures() {
        let token = Arc::new(());
        let t = token.clone();
        drop(Msg::new(move || drop(t)));
        let t = token.clone();
        let big = [0u8; 200];
        drop(Msg::new(move || drop((t, big))));
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn message_fits_a_cache_line() {
        assert_eq!(size_of::<Msg>(), 64);
    }
}
