//! `InlineFn<A>`: a type-erased `FnOnce(A)` stored without allocation when
//! it is small.
//!
//! Messages between reactors and I/O completions are closures created on hot
//! paths. Boxing each one would put an allocation on the submitter and a free
//! on the completer for every operation; instead closures of up to [`INLINE`]
//! bytes are stored in the value itself and only larger ones are boxed.

use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};

/// Closures up to this size (and alignment 16) are stored inline.
pub const INLINE: usize = 48;

#[repr(C, align(16))]
struct Storage([MaybeUninit<u8>; INLINE]);

/// A type-erased `FnOnce(A)`. It is `!Send`: wrappers that only accept `Send`
/// closures may assert `Send` themselves (as [`crate::reactor::Msg`] does).
pub struct InlineFn<A> {
    /// Moves the closure out of the storage and calls it.
    call: unsafe fn(*mut Storage, A),
    /// Drops the closure in place without calling it.
    drop: unsafe fn(*mut Storage),
    data: Storage,
    _not_send: PhantomData<*const ()>,
}

/// # Safety
/// `p` must hold an initialised `F` that is not used again afterwards.
unsafe fn call_in_place<A, F: FnOnce(A)>(p: *mut Storage, a: A) {
    // SAFETY: per the contract, p holds an F which we move out exactly once.
    let f = unsafe { std::ptr::read(p.cast::<F>()) };
    f(a);
}

/// # Safety
/// `p` must hold an initialised `F` that is not used again afterwards.
unsafe fn drop_in_place<F>(p: *mut Storage) {
    // SAFETY: per the contract, p holds an F which we drop exactly once.
    unsafe { std::ptr::drop_in_place(p.cast::<F>()) };
}

impl<A: 'static> InlineFn<A> {
    /// Wrap a closure, inline if it fits, boxed otherwise.
    #[inline]
    pub fn new<F: FnOnce(A) + 'static>(f: F) -> Self {
        if size_of::<F>() <= INLINE && align_of::<F>() <= align_of::<Storage>() {
            Self::inline(f)
        } else {
            // A box is a thin pointer: always fits.
            let b: Box<F> = Box::new(f);
            Self::inline(b)
        }
    }

    #[inline]
    fn inline<F: FnOnce(A) + 'static>(f: F) -> Self {
        // Checked again so that a wrong caller fails loudly instead of corrupting memory.
        assert!(size_of::<F>() <= INLINE && align_of::<F>() <= align_of::<Storage>());
        let mut data = Storage([MaybeUninit::uninit(); INLINE]);
        // SAFETY: size and alignment were checked above; the storage is ours.
        unsafe { std::ptr::write(data.0.as_mut_ptr().cast::<F>(), f) };
        InlineFn { call: call_in_place::<A, F>, drop: drop_in_place::<F>, data, _not_send: PhantomData }
    }

    /// Call the closure, consuming it.
    #[inline]
    pub fn call(self, a: A) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: the storage holds the closure `call` was built for, and
        // ManuallyDrop guarantees `drop` does not also run on it.
        unsafe { (me.call)(&mut me.data, a) }
    }
}

impl<A> Drop for InlineFn<A> {
    fn drop(&mut self) {
        // SAFETY: a closure that was never called is still owned here.
        unsafe { (self.drop)(&mut self.data) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn small_and_large_closures_run_once_with_their_argument() {
        let total = Rc::new(Cell::new(0u64));
        let t = total.clone();
        InlineFn::new(move |x: u64| t.set(t.get() + x)).call(5);
        let big = [3u64; 40];
        let t = total.clone();
        InlineFn::new(move |x: u64| t.set(t.get() + x + big.iter().sum::<u64>())).call(1);
        assert_eq!(total.get(), 5 + 1 + 120);
    }

    #[test]
    fn uncalled_closures_drop_their_captures() {
        let token = Rc::new(());
        let t = token.clone();
        drop(InlineFn::new(move |_: ()| drop(t)));
        let t = token.clone();
        let big = [0u8; 300];
        drop(InlineFn::new(move |_: ()| drop((t, big))));
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn fits_a_cache_line() {
        assert_eq!(size_of::<InlineFn<()>>(), 64);
    }
}
