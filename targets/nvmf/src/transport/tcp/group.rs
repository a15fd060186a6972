//! A reactor's TCP poll group: core's readiness group for all the
//! connections the reactor owns, polled every iteration (and waking the
//! reactor in interrupt mode), plus a slow timer that ends stalled data
//! transfers.
//! Completions mark their connection dirty; the poller flushes dirty
//! connections once per iteration, so one write carries many PDUs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::sock::{ConnSlot, ReadyGroup, Sweep};
use pollux_core::sys::Interest;
use serde::Serialize;

use super::TcpShared;
use super::conn::{Conn, ConnParts};
use crate::transport::Endpoint;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Queue pair counters of one reactor (`nvmf_get_stats`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupStats {
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
    pub current_admin_qpairs: u64,
    pub current_io_qpairs: u64,
    pub pending_bdev_io: u64,
    pub completed_nvme_io: u64,
}

pub(crate) struct TcpGroup {
    ready: ReadyGroup,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Closed I/O queue pairs whose commands still run on bdevs: kept until
    /// the last completes, so the controller learns when they are done.
    pub(crate) draining: RefCell<HashMap<u64, Rc<Conn>>>,
    dirty: RefCell<Vec<u64>>,
    /// The list being flushed (kept for its capacity).
    flushing: RefCell<Vec<u64>>,
    pub(crate) stats: RefCell<GroupStats>,
    pollers: RefCell<Vec<Poller>>,
    closing: Cell<bool>,
    /// The connections the timer visits.
    swept: Sweep<Rc<Conn>>,
}

/// This reactor's group, created on first use.
pub(crate) fn group() -> io::Result<Rc<TcpGroup>> {
    if let Some(g) = reactor::local::<TcpGroup>() {
        return Ok(g);
    }
    let g = Rc::new(TcpGroup {
        ready: ReadyGroup::new()?,
        conns: RefCell::new(HashMap::new()),
        draining: RefCell::new(HashMap::new()),
        dirty: RefCell::new(Vec::with_capacity(64)),
        flushing: RefCell::new(Vec::with_capacity(64)),
        stats: RefCell::new(GroupStats::default()),
        pollers: RefCell::new(Vec::new()),
        closing: Cell::new(false),
        swept: Sweep::default(),
    });
    let w = Rc::downgrade(&g);
    let p = reactor::register_poller("nvmf_tcp_poll_group", move || match w.upgrade() {
        Some(g) => g.poll(),
        None => PollStatus::Idle,
    });
    p.add_wake_fd(g.ready.fd(), Interest::READABLE)?;
    let w = Rc::downgrade(&g);
    let t = reactor::register_timed_poller("nvmf_tcp_timeouts", Duration::from_millis(100), move || match w.upgrade() {
        Some(g) => g.check_timeouts(),
        None => PollStatus::Idle,
    });
    g.pollers.borrow_mut().extend([p, t]);
    reactor::set_local(g.clone());
    Ok(g)
}

/// A nonblocking connection a listener accepted (configured by it), or a
/// stream of the fuzz targets, on the main reactor.
pub(crate) fn adopt(stream: TcpStream, peer: SocketAddr, ep: Endpoint, shared: Rc<TcpShared>, slot: ConnSlot) -> io::Result<()> {
    if shared.opts.sock_priority != 0 {
        pollux_core::sock::set_int_option(&stream, libc::SOL_SOCKET, libc::SO_PRIORITY, shared.opts.sock_priority as libc::c_int)?;
    }
    let g = group()?;
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let conn = Conn::new(id, stream, peer, ep, shared, Rc::downgrade(&g), slot);
    g.add(conn)
}

/// A connection moved here from the main reactor after its Connect.
pub(crate) fn adopt_moved(parts: ConnParts) {
    let peer = parts.peer;
    let res = group().and_then(|g| {
        let conn = Conn::from_parts(parts, Rc::downgrade(&g))?;
        g.add(conn.clone())?;
        // Bytes that came with it (and the Connect response) are handled now.
        conn.resume();
        g.mark_dirty(conn.id);
        Ok(())
    });
    if let Err(e) = res {
        tracing::warn!("nvmf: cannot take over the queue pair from {peer}: {e}");
    }
}

impl TcpGroup {
    fn add(&self, conn: Rc<Conn>) -> io::Result<()> {
        self.ready.add(conn.fd(), conn.id)?;
        // The timeout checker only runs while there are connections.
        if let Some(t) = self.pollers.borrow().get(1) {
            t.resume();
        }
        conn.count_open(&mut self.stats.borrow_mut());
        self.conns.borrow_mut().insert(conn.id, conn);
        Ok(())
    }

    pub(crate) fn mark_dirty(&self, id: u64) {
        self.dirty.borrow_mut().push(id);
    }

    /// Stop polling a connection (closed, or moved to another reactor).
    pub(crate) fn remove(&self, id: u64) -> Option<Rc<Conn>> {
        let c = self.conns.borrow_mut().remove(&id)?;
        self.ready.remove(c.fd());
        c.count_close(&mut self.stats.borrow_mut());
        if self.conns.borrow().is_empty() {
            if let Some(t) = self.pollers.borrow().get(1) {
                t.pause();
            }
        }
        Some(c)
    }

    /// What a connection's socket wakes the reactor for.
    pub(crate) fn set_interest(&self, id: u64, fd: i32, read: bool, write: bool) {
        let _ = self.ready.watch(fd, id, read, write);
    }

    /// Visit a connection next pass: it stopped reading with its budget
    /// spent.
    pub(crate) fn again(&self, id: u64) {
        self.ready.again(id);
    }

    pub(crate) fn conn(&self, id: u64) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }

    fn poll(&self) -> PollStatus {
        // Answers that completions of the pass before queued (bdevs that
        // complete from their own pollers) go out before waiting on the
        // sockets, not after: one epoll_wait less between a completion and
        // its answer.
        let mut busy = self.flush_dirty();
        busy += self.ready.poll(|r| {
            let Some(c) = self.conn(r.token) else { return };
            if r.gone() && c.read_paused() {
                // Not reading, so the hang-up would be reported again
                // and again: the host is gone, and so are its answers.
                c.close("the host closed the connection");
                return;
            }
            if r.writable {
                c.flush();
            }
            if r.readable {
                c.on_readable();
            }
        });
        busy += self.flush_dirty();
        busy.into()
    }

    /// Flush the connections marked dirty (again, for any that flushing
    /// marked). Returns how many were flushed.
    fn flush_dirty(&self) -> usize {
        let mut busy = 0;
        loop {
            let mut dirty = std::mem::take(&mut *self.flushing.borrow_mut());
            std::mem::swap(&mut dirty, &mut *self.dirty.borrow_mut());
            if dirty.is_empty() {
                *self.flushing.borrow_mut() = dirty;
                break;
            }
            for &id in dirty.iter() {
                if let Some(c) = self.conn(id) {
                    busy += 1;
                    c.flush();
                }
            }
            dirty.clear();
            *self.flushing.borrow_mut() = dirty;
        }
        busy
    }

    fn check_timeouts(&self) -> PollStatus {
        let mut n = 0usize;
        self.swept.run(|all| all.extend(self.conns.borrow().values().cloned()), |c| n += usize::from(c.check_timeouts()));
        n.into()
    }

    fn close_everything(&self) {
        self.closing.set(true);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for c in conns {
            c.close("the target is shutting down");
        }
        self.pollers.borrow_mut().clear();
    }
}

/// Close a connection of this reactor by id (controller teardown).
pub(crate) fn close_conn(id: u64) {
    if let Some(g) = reactor::local::<TcpGroup>() {
        if let Some(c) = g.conn(id) {
            c.close("its controller went away");
        }
    }
}

/// Close every connection on every reactor (target shutdown).
pub fn close_all(then: impl FnOnce() + Send + 'static) {
    reactor::for_each_reactor(
        || {
            if let Some(g) = reactor::take_local::<TcpGroup>() {
                g.close_everything();
            }
        },
        then,
    );
}

/// Counters of every reactor, in reactor order.
pub fn group_stats(then: impl FnOnce(Vec<GroupStats>) + Send + 'static) {
    reactor::map_reactors(
        || {
            let Some(g) = reactor::local::<TcpGroup>() else {
                return GroupStats::default();
            };
            let mut s = g.stats.borrow().clone();
            s.pending_bdev_io = g.conns.borrow().values().map(|c| c.executing()).sum();
            s
        },
        then,
    );
}
