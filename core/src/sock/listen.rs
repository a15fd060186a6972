//! Listening TCP sockets for every target: bind, accept on the reactor that
//! owns the listener, configure each accepted connection the same way, and
//! hand it to the protocol.
//!
//! A listener is polled by a timed poller that is woken by the listening
//! descriptor in interrupt mode. When accepting fails for lack of resources
//! (descriptors, memory), the connection stays in the backlog and the
//! descriptor stays readable: polling it again at once would spin the
//! reactor, so the listener stops watching it and tries again 100 ms later.
//!
//! A listener serves at most its `max_connections` at once (counting every
//! connection it accepted until the protocol drops its [`ConnSlot`], on
//! whatever reactor it went to). One more is accepted and closed at once,
//! and the refusal logged: that is what SPDK's iSCSI target does when its
//! connection table is full, and there is no PDU yet to answer.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::log::FaultLog;
use crate::reactor::{self, PollStatus, Poller, ReactorId};
use crate::sys::Interest;

/// Connections accepted per poll, so one busy listener cannot hold its
/// reactor.
const ACCEPT_BATCH: usize = 64;
/// How long a listener waits after accept failed for lack of resources.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accept failures are logged at the default level at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection a listener accepted: nonblocking, TCP_NODELAY, and the
/// socket options of `sock_impl_set_options` applied.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The address the connection came to (a listener on 0.0.0.0 or [::]
    /// tells the interface).
    pub local: SocketAddr,
    /// Counts the connection against its listener's limit while kept.
    pub slot: ConnSlot,
}

/// A connection's place in its listener's count of open connections; given
/// back when dropped. It moves with the connection between reactors.
#[derive(Debug)]
pub struct ConnSlot(Option<Arc<AtomicUsize>>);

impl ConnSlot {
    /// A slot counted nowhere (connections made without a listener, as
    /// the fuzz targets' socket pairs).
    pub fn uncounted() -> ConnSlot {
        ConnSlot(None)
    }
}

/// A count of open connections against a limit, handing out the
/// [`ConnSlot`] of each connection it admits. A [`Listener`] keeps one;
/// listeners that are not TCP sockets (an RDMA CM listener) keep their
/// own, so that every transport bounds its connections the same way.
#[derive(Clone, Debug)]
pub struct ConnLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl ConnLimit {
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit { open: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A slot for one more connection, or None when `max` are open.
    pub fn admit(&self) -> Option<ConnSlot> {
        if self.open.load(Ordering::Relaxed) >= self.max {
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(ConnSlot(Some(self.open.clone())))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

type OnAccept = Box<dyn FnMut(Accepted)>;

struct Inner {
    socket: TcpListener,
    /// What logs say: "iscsi portal group 1", "nvmf 127.0.0.1:4420".
    name: String,
    on_accept: RefCell<OnAccept>,
    poller: RefCell<Option<Poller>>,
    /// Runs once, [`ACCEPT_BACKOFF`] after accepting failed for lack of
    /// resources; paused otherwise.
    retry: RefCell<Option<Poller>>,
    backing_off: Cell<bool>,
    last_warned: Cell<Option<Instant>>,
    faults: FaultLog,
    /// Connections open now (dropped slots give theirs back), and the most.
    limit: ConnLimit,
}

/// A listening socket served on the current reactor; it stops listening when
/// dropped.
pub struct Listener {
    inner: Rc<Inner>,
}

impl Listener {
    /// Listen on `addr` and call `on_accept` on this reactor for each
    /// connection. `poller` names the accept poller (as SPDK names its own,
    /// in `thread_get_pollers`), `name` the listener in log lines; `period`
    /// is how often a busy-polling reactor looks for connections;
    /// `max_connections` how many may be open at once.
    pub fn bind(
        addr: SocketAddr,
        poller: &str,
        name: &str,
        period: Duration,
        max_connections: usize,
        on_accept: impl FnMut(Accepted) + 'static,
    ) -> io::Result<Listener> {
        let socket = TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        socket.set_nonblocking(true).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let inner = Rc::new(Inner {
            socket,
            name: name.to_string(),
            on_accept: RefCell::new(Box::new(on_accept)),
            poller: RefCell::new(None),
            retry: RefCell::new(None),
            backing_off: Cell::new(false),
            last_warned: Cell::new(None),
            faults: FaultLog::default(),
            limit: ConnLimit::new(max_connections),
        });
        let w = Rc::downgrade(&inner);
        let poller = reactor::register_timed_poller(poller, period, move || match w.upgrade() {
            Some(l) => accept(&l),
            None => PollStatus::Idle,
        });
        poller.add_wake_fd(inner.socket.as_raw_fd(), Interest::READABLE)?;
        let w: Weak<Inner> = Rc::downgrade(&inner);
        let retry = reactor::register_timed_poller("accept_backoff", ACCEPT_BACKOFF, move || match w.upgrade() {
            Some(l) => resume(&l),
            None => PollStatus::Idle,
        });
        retry.pause();
        *inner.poller.borrow_mut() = Some(poller);
        *inner.retry.borrow_mut() = Some(retry);
        Ok(Listener { inner })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = self.inner.poller.borrow_mut().take() {
            p.remove_wake_fd(self.inner.socket.as_raw_fd());
        }
        self.inner.retry.borrow_mut().take();
    }
}

fn accept(l: &Rc<Inner>) -> PollStatus {
    if l.backing_off.get() {
        return PollStatus::Idle;
    }
    let mut n = 0;
    while n < ACCEPT_BATCH {
        match l.socket.accept() {
            Ok((stream, peer)) => {
                n += 1;
                if let Some(a) = configure(l, stream, peer) {
                    (l.on_accept.borrow_mut())(a);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits in
                // the backlog; look again later, without spinning.
                let now = Instant::now();
                if l.last_warned.get().is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                    l.last_warned.set(Some(now));
                    tracing::warn!("{}: cannot accept a connection ({e}); trying again every {} ms", l.name, ACCEPT_BACKOFF.as_millis());
                } else {
                    tracing::debug!("{}: cannot accept a connection ({e})", l.name);
                }
                back_off(l);
                break;
            }
        }
    }
    if n > 0 { PollStatus::Busy } else { PollStatus::Idle }
}

/// Make an accepted connection ready for a protocol; `None` (logged) if it
/// cannot be served.
fn configure(l: &Inner, stream: TcpStream, peer: SocketAddr) -> Option<Accepted> {
    let Some(slot) = l.limit.admit() else {
        // Dropping the stream closes it: the peer sees its connection end.
        crate::log_fault!(l.faults, "{}: connection from {peer} refused: {} connections open, the most it serves", l.name, l.limit.max());
        return None;
    };
    if let Err(e) = stream.set_nonblocking(true) {
        crate::log_fault!(l.faults, "{}: connection from {peer} closed: cannot make it nonblocking: {e}", l.name);
        return None;
    }
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!("{}: connection from {peer} gone before it was served: {e}", l.name);
            return None;
        }
    };
    if let Err(e) = stream.set_nodelay(true).and_then(|()| super::configure_accepted(&stream)) {
        crate::log_fault!(l.faults, "{}: socket options for the connection from {peer}: {e}", l.name);
    }
    Some(Accepted { stream, peer, local, slot })
}

fn back_off(l: &Inner) {
    l.backing_off.set(true);
    if let Some(p) = l.poller.borrow().as_ref() {
        p.remove_wake_fd(l.socket.as_raw_fd());
    }
    if let Some(r) = l.retry.borrow().as_ref() {
        r.resume();
    }
}

fn resume(l: &Inner) -> PollStatus {
    l.backing_off.set(false);
    if let Some(r) = l.retry.borrow().as_ref() {
        r.pause();
    }
    if let Some(p) = l.poller.borrow().as_ref() {
        if let Err(e) = p.add_wake_fd(l.socket.as_raw_fd(), Interest::READABLE) {
            tracing::error!("{}: cannot watch the listening socket again: {e}", l.name);
        }
        p.kick();
    }
    PollStatus::Busy
}

/// Spreads connections (or queue pairs) over the reactors in turn.
pub struct RoundRobin {
    next: Cell<usize>,
}

impl RoundRobin {
    /// Start at reactor `first` (modulo the number of reactors).
    pub const fn starting_at(first: usize) -> RoundRobin {
        RoundRobin { next: Cell::new(first) }
    }

    /// The reactor for the next one.
    pub fn next(&self) -> ReactorId {
        let n = reactor::count().max(1);
        let r = self.next.get() % n;
        self.next.set(r + 1);
        ReactorId(r)
    }
}
