//! A reactor's host connections: one readiness group (core's
//! [`ReadyGroup`]) for every NVMe/TCP queue pair the host has on this
//! reactor, polled once per pass, with the queue pairs that have output
//! flushed at the end of the pass (one write each for everything their
//! commands queued), and a timer for connect and command timeouts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::sock::ReadyGroup;
use pollux_core::sys::Interest;

use crate::qpair::Qpair;

pub(crate) struct Group {
    ready: ReadyGroup,
    qpairs: RefCell<HashMap<u64, Weak<Qpair>>>,
    dirty: RefCell<Vec<u64>>,
    flushing: RefCell<Vec<u64>>,
    next_token: Cell<u64>,
    pollers: RefCell<Vec<Poller>>,
}

impl Group {
    /// This reactor's group, made on first use.
    pub(crate) fn get() -> io::Result<Rc<Group>> {
        if let Some(g) = reactor::local::<Group>() {
            return Ok(g);
        }
        let g = Rc::new(Group {
            ready: ReadyGroup::new()?,
            qpairs: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::with_capacity(16)),
            flushing: RefCell::new(Vec::with_capacity(16)),
            next_token: Cell::new(1),
            pollers: RefCell::new(Vec::new()),
        });
        // The pollers hold the group weakly: it owns them.
        let w = Rc::downgrade(&g);
        let p = reactor::register_poller("nvmf_host_poll_group", move || match w.upgrade() {
            Some(g) => g.poll(),
            None => PollStatus::Idle,
        });
        p.add_wake_fd(g.ready.fd(), Interest::READABLE)?;
        let w = Rc::downgrade(&g);
        let t = reactor::register_timed_poller("nvmf_host_timeouts", Duration::from_millis(100), move || match w.upgrade() {
            Some(g) => g.check_timeouts(),
            None => PollStatus::Idle,
        });
        g.pollers.borrow_mut().extend([p, t]);
        reactor::set_local(g.clone());
        Ok(g)
    }

    pub(crate) fn next_token(&self) -> u64 {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }

    /// Watch a connecting queue pair (for writability: connected).
    pub(crate) fn add(&self, qp: &Rc<Qpair>, fd: i32, token: u64) -> io::Result<()> {
        self.ready.add(fd, token)?;
        self.ready.watch(fd, token, false, true)?;
        self.qpairs.borrow_mut().insert(token, Rc::downgrade(qp));
        Ok(())
    }

    pub(crate) fn watch(&self, fd: i32, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ready.watch(fd, token, read, write)
    }

    pub(crate) fn again(&self, token: u64) {
        self.ready.again(token);
    }

    pub(crate) fn remove(&self, fd: i32, token: u64) {
        if self.qpairs.borrow_mut().remove(&token).is_some() {
            self.ready.remove(fd);
        }
    }

    /// Output queued: flush it at the end of this pass (or the next).
    pub(crate) fn mark_dirty(&self, token: u64) {
        let mut d = self.dirty.borrow_mut();
        if !d.contains(&token) {
            d.push(token);
        }
        if let Some(p) = self.pollers.borrow().first() {
            p.kick();
        }
    }

    fn lookup(&self, token: u64) -> Option<Rc<Qpair>> {
        self.qpairs.borrow().get(&token).and_then(Weak::upgrade)
    }

    fn poll(&self) -> PollStatus {
        let mut n = self.ready.poll(|r| {
            if let Some(qp) = self.lookup(r.token) {
                qp.on_event(r.readable, r.writable, r.hangup);
            }
        });
        // Flush until no callback queues more (a completion's callback may
        // submit again); each queue pair writes once per round.
        for _ in 0..4 {
            let mut list = std::mem::take(&mut *self.flushing.borrow_mut());
            std::mem::swap(&mut list, &mut *self.dirty.borrow_mut());
            if list.is_empty() {
                *self.flushing.borrow_mut() = list;
                break;
            }
            n += list.len();
            for t in list.drain(..) {
                if let Some(qp) = self.lookup(t) {
                    qp.flush();
                }
            }
            *self.flushing.borrow_mut() = list;
        }
        if n > 0 { PollStatus::Busy } else { PollStatus::Idle }
    }

    fn check_timeouts(&self) -> PollStatus {
        let now = Instant::now();
        let all: Vec<Rc<Qpair>> = self.qpairs.borrow().values().filter_map(Weak::upgrade).collect();
        for qp in &all {
            qp.check_timeouts(now);
        }
        PollStatus::Idle
    }
}
