//! A deterministic harness: N reactors stepped by hand on one OS thread.
//!
//! Unit tests of message and channel logic use it to control exactly which
//! reactor runs when, with no threads and no timing. Timed pollers still use
//! the real clock.

use super::{Handle, Reactor, ReactorId, Shared};

/// N reactors on the calling thread, stepped explicitly.
pub struct Harness {
    reactors: Vec<Reactor>,
}

impl Harness {
    pub fn new(n: usize) -> Harness {
        let cores: Vec<usize> = (0..n).collect();
        let shared = Shared::new(&cores, false, super::DEFAULT_MSG_BATCH, super::DEFAULT_IDLE_POLL).expect("harness set-up");
        let reactors = (0..n).map(|i| Reactor::new(shared.clone(), ReactorId(i)).expect("harness reactor")).collect();
        Harness { reactors }
    }

    pub fn len(&self) -> usize {
        self.reactors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reactors.is_empty()
    }

    /// Run `f` as if on reactor `i` (to register pollers, send messages...).
    pub fn on<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        self.reactors[i].with(f)
    }

    /// One iteration of reactor `i`. Returns whether it did any work.
    pub fn step(&self, i: usize) -> bool {
        self.reactors[i].run_once()
    }

    /// One iteration of every reactor, in order.
    pub fn step_all(&self) -> bool {
        let mut busy = false;
        for r in &self.reactors {
            busy |= r.run_once();
        }
        busy
    }

    /// Step every reactor until a full round does no work. Returns the number
    /// of rounds; panics after `max_rounds` (a livelock in the code under test).
    pub fn run_until_idle(&self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            if !self.step_all() {
                return round;
            }
        }
        panic!("reactors still busy after {max_rounds} rounds");
    }

    pub fn handle(&self) -> Handle {
        self.reactors[0].handle()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for r in &self.reactors {
            let _g = r.enter();
            r.inner.teardown();
        }
    }
}
