//! A reactor's readiness group: one epoll set for the connections of one
//! protocol on one reactor, polled once per iteration by the protocol's
//! poller (and waking the reactor in interrupt mode through [`ReadyGroup::fd`]).
//!
//! Two rules keep a reactor from spinning or starving:
//! - A connection that cannot make progress (output backlog over its limit,
//!   receive buffer full) turns its reading interest off; readiness is
//!   level-triggered, so a socket left watched would wake the reactor on
//!   every pass. A hang-up still reports while interest is off: such a
//!   peer is gone ([`Ready::gone`]).
//! - A connection handles a bounded amount of input per pass; if it stops
//!   with input left, it asks to be visited again ([`ReadyGroup::again`]) and
//!   the next pass comes back to it after every other ready connection has
//!   had its turn, without another `epoll_wait` for it.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::sys::{Epoll, Interest};

/// One connection's turn in a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub token: u64,
    /// Readable, or closed or failed (a read says which).
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the socket failed.
    pub hangup: bool,
    /// Visited again for input left over from an earlier pass.
    pub again: bool,
}

impl Ready {
    /// Whether a connection that is not reading should take this as the
    /// peer's end: nothing it could do would clear the condition.
    pub fn gone(&self) -> bool {
        self.hangup
    }
}

/// The readiness group of one protocol on one reactor.
pub struct ReadyGroup {
    epoll: Epoll,
    events: RefCell<Vec<libc::epoll_event>>,
    /// Tokens to visit next pass without readiness (budget left over).
    again: RefCell<Vec<u64>>,
    /// Swapped with `again` during a pass (kept for its capacity).
    visiting: RefCell<Vec<u64>>,
    in_pass: Cell<bool>,
}

impl ReadyGroup {
    pub fn new() -> io::Result<ReadyGroup> {
        Ok(ReadyGroup {
            epoll: Epoll::new()?,
            events: RefCell::new(Vec::with_capacity(128)),
            again: RefCell::new(Vec::new()),
            visiting: RefCell::new(Vec::new()),
            in_pass: Cell::new(false),
        })
    }

    /// The descriptor a poller sleeps on in interrupt mode.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Watch a connection's socket, reading first.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.add(fd, Interest::READABLE, token)
    }

    /// What a connection's socket wakes the group for.
    pub fn watch(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        let i = match (read, write) {
            (true, true) => Interest::BOTH,
            (true, false) => Interest::READABLE,
            (false, true) => Interest::WRITABLE,
            (false, false) => Interest::NONE,
        };
        self.epoll.modify(fd, i, token)
    }

    /// Stop watching a socket (closed, or moved to another reactor). A
    /// pending [`again`](Self::again) for its token is dropped when the
    /// protocol no longer knows the token.
    pub fn remove(&self, fd: RawFd) {
        let _ = self.epoll.delete(fd);
    }

    /// Visit `token` again next pass: it stopped with input left.
    pub fn again(&self, token: u64) {
        let mut a = self.again.borrow_mut();
        if !a.contains(&token) {
            a.push(token);
        }
    }

    /// Whether a connection waits for its next turn (the reactor must not
    /// sleep).
    pub fn has_again(&self) -> bool {
        !self.again.borrow().is_empty()
    }

    /// One pass: every ready connection, then those left over from the pass
    /// before, each given to `visit` once. Returns how many were visited.
    pub fn poll(&self, mut visit: impl FnMut(Ready)) -> usize {
        debug_assert!(!self.in_pass.get(), "a readiness group is polled from inside its own pass");
        self.in_pass.set(true);
        let mut n = 0;
        let mut events = std::mem::take(&mut *self.events.borrow_mut());
        let mut visiting = std::mem::take(&mut *self.visiting.borrow_mut());
        std::mem::swap(&mut visiting, &mut *self.again.borrow_mut());
        if self.epoll.wait(&mut events, Some(Duration::ZERO)).is_ok() {
            for ev in events.iter() {
                let bits = ev.events;
                let token = ev.u64;
                let hangup = bits & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
                let readable = hangup || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0;
                let writable = bits & libc::EPOLLOUT as u32 != 0;
                // A connection with a turn owed gets it here, once.
                let again = match visiting.iter().position(|t| *t == token) {
                    Some(i) => {
                        visiting.swap_remove(i);
                        true
                    }
                    None => false,
                };
                visit(Ready { token, readable: readable || again, writable, hangup, again });
                n += 1;
            }
        }
        for &token in visiting.iter() {
            visit(Ready { token, readable: true, writable: false, hangup: false, again: true });
            n += 1;
        }
        visiting.clear();
        *self.visiting.borrow_mut() = visiting;
        *self.events.borrow_mut() = events;
        self.in_pass.set(false);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn ready_sockets_and_leftovers_are_visited_once_per_pass() {
        let g = ReadyGroup::new().unwrap();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        g.add(a.as_raw_fd(), 1).unwrap();
        g.add(b.as_raw_fd(), 2).unwrap();
        let mut seen = vec![];
        assert_eq!(g.poll(|r| seen.push(r)), 0);
        a_peer.write_all(b"x").unwrap();
        g.again(2);
        g.again(2);
        g.poll(|r| seen.push(r));
        assert_eq!(
            seen,
            [
                Ready { token: 1, readable: true, writable: false, hangup: false, again: false },
                Ready { token: 2, readable: true, writable: false, hangup: false, again: true },
            ]
        );
        assert!(!g.has_again());
        // Interest off: the unread byte no longer wakes the group.
        g.watch(a.as_raw_fd(), 1, false, false).unwrap();
        assert_eq!(g.poll(|_| {}), 0);
        // A hang-up does, and says so.
        drop(a_peer);
        let mut seen = vec![];
        g.poll(|r| seen.push(r));
        assert_eq!(seen.len(), 1);
        assert!(seen[0].gone() && seen[0].readable);
        // A token both ready and owed a turn is visited once.
        g.watch(a.as_raw_fd(), 1, true, false).unwrap();
        g.again(1);
        let mut seen = vec![];
        g.poll(|r| seen.push(r.token));
        assert_eq!(seen, [1]);
    }
}
