//! A reactor's outgoing connections of one kind (the NVMe-oF host's queue
//! pairs, the iSCSI initiator's sessions): one [`ReadyGroup`] polled once
//! per pass, the connections that queued output flushed at the end of the
//! pass (one write each for everything queued), and a timer for connect
//! and command timeouts. Each kind has its own group on each reactor, made
//! on first use; the group holds its connections weakly (their owners keep
//! them) and its pollers hold the group weakly.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::reactor::{self, PollStatus, Poller};
use crate::sock::{ReadyGroup, Sweep};
use crate::sys::Interest;

/// A connection in a [`ClientGroup`].
pub trait Client: 'static {
    /// Its socket is ready (`writable` while connecting: connected).
    fn on_event(self: &Rc<Self>, readable: bool, writable: bool, hangup: bool);
    /// Write what it queued.
    fn flush(self: &Rc<Self>);
    /// The group's timer, every `ClientGroup::TICK`.
    fn check_timeouts(self: &Rc<Self>, now: Instant);
}

pub struct ClientGroup<T: Client> {
    ready: ReadyGroup,
    clients: RefCell<HashMap<u64, Weak<T>>>,
    dirty: RefCell<Vec<u64>>,
    flushing: RefCell<Vec<u64>>,
    next_token: Cell<u64>,
    pollers: RefCell<Vec<Poller>>,
    /// The clients the timer visits.
    swept: Sweep<Rc<T>>,
}

impl<T: Client> ClientGroup<T> {
    /// How often the timer runs.
    pub const TICK: Duration = Duration::from_millis(100);

    /// This reactor's group for `T`, made on first use; `name` names its
    /// pollers (`name` and `name_timeouts`).
    pub fn get(name: &str) -> io::Result<Rc<ClientGroup<T>>> {
        if let Some(g) = reactor::local::<ClientGroup<T>>() {
            return Ok(g);
        }
        let g = Rc::new(ClientGroup {
            ready: ReadyGroup::new()?,
            clients: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::with_capacity(16)),
            flushing: RefCell::new(Vec::with_capacity(16)),
            next_token: Cell::new(1),
            pollers: RefCell::new(Vec::new()),
            swept: Sweep::default(),
        });
        let w = Rc::downgrade(&g);
        let p = reactor::register_poller(name, move || match w.upgrade() {
            Some(g) => g.poll(),
            None => PollStatus::Idle,
        });
        p.add_wake_fd(g.ready.fd(), Interest::READABLE)?;
        let w = Rc::downgrade(&g);
        let t = reactor::register_timed_poller(&format!("{name}_timeouts"), Self::TICK, move || match w.upgrade() {
            Some(g) => g.check_timeouts(),
            None => PollStatus::Idle,
        });
        g.pollers.borrow_mut().extend([p, t]);
        reactor::set_local(g.clone());
        Ok(g)
    }

    pub fn next_token(&self) -> u64 {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }

    /// Watch a connecting socket (for writability: connected).
    pub fn add(&self, client: &Rc<T>, fd: i32, token: u64) -> io::Result<()> {
        self.ready.add(fd, token)?;
        self.ready.watch(fd, token, false, true)?;
        self.clients.borrow_mut().insert(token, Rc::downgrade(client));
        Ok(())
    }

    /// Visit `client` by `token` (its timer) without a socket yet: a
    /// client that outlives its connections (a session that reconnects)
    /// keeps one token and adds each connection's socket under it.
    pub fn track(&self, client: &Rc<T>, token: u64) {
        self.clients.borrow_mut().insert(token, Rc::downgrade(client));
    }

    /// Watch a connecting socket of a tracked client.
    pub fn add_fd(&self, fd: i32, token: u64) -> io::Result<()> {
        self.ready.add(fd, token)?;
        self.ready.watch(fd, token, false, true)
    }

    /// Stop watching a socket, keeping its client tracked.
    pub fn remove_fd(&self, fd: i32) {
        self.ready.remove(fd);
    }

    /// Stop visiting a tracked client.
    pub fn untrack(&self, token: u64) {
        self.clients.borrow_mut().remove(&token);
    }

    pub fn watch(&self, fd: i32, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ready.watch(fd, token, read, write)
    }

    /// Visit `token` again next pass (input left over).
    pub fn again(&self, token: u64) {
        self.ready.again(token);
    }

    pub fn remove(&self, fd: i32, token: u64) {
        if self.clients.borrow_mut().remove(&token).is_some() {
            self.ready.remove(fd);
        }
    }

    /// Output queued: flush it at the end of this pass (or the next).
    pub fn mark_dirty(&self, token: u64) {
        let mut d = self.dirty.borrow_mut();
        if !d.contains(&token) {
            d.push(token);
        }
        if let Some(p) = self.pollers.borrow().first() {
            p.kick();
        }
    }

    fn lookup(&self, token: u64) -> Option<Rc<T>> {
        self.clients.borrow().get(&token).and_then(Weak::upgrade)
    }

    fn poll(&self) -> PollStatus {
        let mut n = self.ready.poll(|r| {
            if let Some(c) = self.lookup(r.token) {
                c.on_event(r.readable, r.writable, r.hangup);
            }
        });
        // Flush until no callback queues more (a completion's callback may
        // submit again); each connection writes once per round.
        for _ in 0..4 {
            let mut list = std::mem::take(&mut *self.flushing.borrow_mut());
            std::mem::swap(&mut list, &mut *self.dirty.borrow_mut());
            if list.is_empty() {
                *self.flushing.borrow_mut() = list;
                break;
            }
            n += list.len();
            for t in list.drain(..) {
                if let Some(c) = self.lookup(t) {
                    c.flush();
                }
            }
            *self.flushing.borrow_mut() = list;
        }
        if n > 0 { PollStatus::Busy } else { PollStatus::Idle }
    }

    fn check_timeouts(&self) -> PollStatus {
        let now = Instant::now();
        self.swept.run(|all| all.extend(self.clients.borrow().values().filter_map(Weak::upgrade)), |c| c.check_timeouts(now));
        PollStatus::Idle
    }
}
