//! Answer coalescing for initiators that are behind.
//!
//! An initiator that keeps many commands in flight and is slower than the
//! target (one thread sending each command as it reads an answer) makes a
//! target that answers at once pay a write, a read and a wake-up on both
//! sides for every single command. Each initiator PDU carries ExpStatSN:
//! when it shows that the initiator had not yet seen [`MIN_UNREAD`]
//! answers already written to it, it has more than a window's work queued
//! and answering sooner gains it nothing. The connection group then opens
//! a short window ([`WINDOW`]): answers and arriving commands wait, and at
//! its end the commands are read together and the answers go out in one
//! write (the pass that closes a window always writes, so an answer waits
//! for one window at most). An initiator with few answers unread (one
//! command at a time, a shallow queue, or caught up) is never made to
//! wait.
//!
//! In interrupt mode the window is a sleep: the group's descriptor leaves
//! the reactor's wake set and a timer descriptor ends the window. When
//! polling, the group just skips its sockets until the window is over.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use pollux_core::clock;
use pollux_core::reactor::{self, Poller};
use pollux_core::sys::{Interest, TimerFd};

/// How long answers to an initiator that is behind may wait.
pub(super) const WINDOW: Duration = Duration::from_micros(50);
/// Answers written and not yet seen by the initiator from which it counts
/// as behind: at several microseconds per answer on its side, it has more
/// than a window's work in hand.
pub(super) const MIN_UNREAD: u32 = 8;

pub(super) struct Coalesce {
    /// Interrupt mode: ends the window of a sleeping reactor.
    timer: Option<TimerFd>,
    /// End of the open window in clock ticks; 0 when none is open.
    until: Cell<u64>,
    window: u64,
}

impl Coalesce {
    /// Set up for the group whose poller is `poller`.
    pub(super) fn new(poller: &Poller) -> io::Result<Coalesce> {
        let timer = if reactor::interrupt_mode() {
            let t = TimerFd::new()?;
            poller.add_wake_fd(t.as_raw_fd(), Interest::READABLE)?;
            Some(t)
        } else {
            None
        };
        Ok(Coalesce { timer, until: Cell::new(0), window: clock::duration_to_ticks(WINDOW) })
    }

    pub(super) fn is_open(&self) -> bool {
        self.until.get() != 0
    }

    /// Whether a window is open; closes it (giving `group_fd` back to the
    /// reactor's wake set) once it is over.
    pub(super) fn waiting(&self, poller: &Poller, group_fd: RawFd) -> bool {
        let until = self.until.get();
        if until == 0 {
            return false;
        }
        if clock::ticks() < until {
            return true;
        }
        self.until.set(0);
        if let Some(t) = &self.timer {
            let _ = poller.add_wake_fd(group_fd, Interest::READABLE);
            // Setting the timer also clears an expiry not yet read.
            let _ = t.disarm();
        }
        false
    }

    /// Open a window: nothing on `group_fd` wakes the reactor until it
    /// ends. Returns false (and opens none) if the timer cannot be armed.
    pub(super) fn open(&self, poller: &Poller, group_fd: RawFd) -> bool {
        if let Some(t) = &self.timer {
            if t.arm(WINDOW).is_err() {
                return false;
            }
            poller.remove_wake_fd(group_fd);
        }
        self.until.set(clock::ticks() + self.window);
        true
    }
}
