//! A message: a `FnOnce() + Send` stored without allocation when it is small
//! (see [`crate::inline_fn`]).

use crate::inline_fn::InlineFn;

/// A type-erased `FnOnce() + Send + 'static`, 64 bytes.
pub struct Msg(InlineFn<()>);

// SAFETY: `Msg::new` only accepts `Send` closures, and a `Msg` owns its closure.
unsafe impl Send for Msg {}

impl Msg {
    /// Wrap a closure.
    #[inline]
    pub fn new<F: FnOnce() + Send + 'static>(f: F) -> Msg {
        Msg(InlineFn::new(move |()| f()))
    }

    /// Run the closure, consuming the message.
    #[inline]
    pub fn run(self) {
        self.0.call(())
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
    fn message_fits_a_cache_line() {
        assert_eq!(size_of::<Msg>(), 64);
    }
}
