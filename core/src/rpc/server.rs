//! The JSON-RPC server on a Unix socket, polled by a timed poller on the RPC
//! reactor. Sockets are nonblocking and watched with core's readiness group
//! and write queues (as the targets' connections are), so a poll costs one
//! `epoll_wait` however many clients are connected; a slow or silent client
//! never blocks the reactor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::framing::{Decoder, parse_request, response};
use super::{Methods, Responder, RpcError, RpcResult};
use crate::reactor::{self, PollStatus, Poller, ReactorId};
use crate::sock::{ReadyGroup, TxQueue};
use crate::sys::Interest;

/// How often the server looks at its sockets when reactors busy-poll.
const POLL_PERIOD: Duration = Duration::from_millis(1);
/// Connections served at once. At the limit, a new client takes the place
/// of the client idle the longest; with none idle it is accepted and closed.
const MAX_CONNECTIONS: usize = 1024;
/// Answers queued for one client beyond which its requests wait unread
/// (a client that does not read its answers cannot grow the daemon).
const MAX_OUT_BYTES: usize = 8 << 20;
/// Requests of one client in progress beyond which its further requests
/// wait unread.
const MAX_PENDING: usize = 256;

const LISTENER: u64 = u64::MAX;
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per poll, so one client cannot starve others.
const READ_BUDGET: usize = 1 << 20;
/// A request must arrive whole within this time of the server starting to
/// wait for its rest; a client that stops in the middle is answered with an
/// error and closed (it would otherwise hold its buffer, up to
/// [`super::framing::MAX_REQUEST_BYTES`], for ever).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of an unfinished request every client may buffer whatever others do
/// (SPDK's server takes requests of up to 32 KiB).
const REQUEST_ALLOWANCE: usize = 64 << 10;
/// Bytes of unfinished requests beyond their allowances, all clients
/// together. A client whose unfinished request would go over it is
/// answered with an error and closed: clients cannot together buffer more
/// than this and 1,024 allowances, however many send large requests slowly.
pub const UNFINISHED_BUDGET: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("RPC socket {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("cannot listen on RPC socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot set up polling for the RPC socket: {0}")]
    Poll(#[source] io::Error),
}

struct Batch {
    remaining: usize,
    responses: Vec<Option<Value>>,
}

struct Conn {
    stream: UnixStream,
    decoder: Decoder,
    out: TxQueue<Vec<u8>>,
    /// Responses not yet delivered.
    pending: usize,
    /// The peer sent EOF, or the stream broke: close once answered.
    read_closed: bool,
    /// Close as soon as the output is flushed (after a parse error).
    closing: bool,
    /// What the socket is registered for: [`WATCH_READ`] | [`WATCH_WRITE`].
    watched: u8,
    /// Last request read or answer written.
    last_active: Instant,
    /// Since when the server has been waiting for the rest of a request.
    unfinished_since: Option<Instant>,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
}

const WATCH_READ: u8 = 1;
const WATCH_WRITE: u8 = 2;

impl Conn {
    /// Whether this client may send more requests now: its answers are
    /// being read, and not too many of its requests are in progress. (What
    /// is buffered of an unfinished request is bounded by the decoder.)
    fn may_read(&self) -> bool {
        self.out.len() < MAX_OUT_BYTES && self.pending < MAX_PENDING
    }

    fn idle(&self) -> bool {
        self.pending == 0 && self.out.is_empty() && self.decoder.is_idle()
    }
}

/// Where a response goes.
#[derive(Clone, Copy)]
struct Slot {
    conn: u64,
    batch: Option<(u64, usize)>,
}

/// A JSON-RPC server bound to a Unix socket path.
pub struct RpcServer {
    path: PathBuf,
    listener: UnixListener,
    ready: ReadyGroup,
    conns: RefCell<HashMap<u64, Conn>>,
    next_conn: Cell<u64>,
    methods: Rc<Methods>,
    reactor: ReactorId,
    poller: RefCell<Option<Poller>>,
    /// Closes clients whose request is unfinished after [`REQUEST_TIMEOUT`];
    /// paused while no request is unfinished.
    timeouts: RefCell<Option<Poller>>,
    served: Cell<u64>,
    /// Connections are accepted (until then they wait in the backlog).
    accepting: Cell<bool>,
    /// Stopped: no more connections or requests; pending answers still go out.
    stopping: Cell<bool>,
}

impl RpcServer {
    /// Bind the socket and start serving on the current reactor. A stale
    /// socket file (nobody listening) is replaced; a live one is an error.
    /// Unless `accept_now`, clients wait (connected, in the listen backlog)
    /// until [`RpcServer::accept_clients`]: the app holds them until its
    /// start-up has finished, as SPDK does, so no call sees a half-started
    /// target.
    pub fn start(path: &Path, methods: Rc<Methods>, accept_now: bool) -> Result<Rc<RpcServer>, ServerError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse { path: path.to_path_buf() });
            }
            let _ = std::fs::remove_file(path);
        }
        let listen_err = |source| ServerError::Listen { path: path.to_path_buf(), source };
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let ready = ReadyGroup::new().map_err(ServerError::Poll)?;
        let server = Rc::new(RpcServer {
            path: path.to_path_buf(),
            listener,
            ready,
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            methods,
            reactor: reactor::current(),
            poller: RefCell::new(None),
            timeouts: RefCell::new(None),
            served: Cell::new(0),
            accepting: Cell::new(false),
            stopping: Cell::new(false),
        });
        if accept_now {
            server.accept_clients()?;
        }
        let s = Rc::downgrade(&server);
        let poller = reactor::register_timed_poller("rpc_server", POLL_PERIOD, move || match s.upgrade() {
            Some(s) => s.poll(),
            None => PollStatus::Idle,
        });
        // In interrupt mode our epoll set wakes the reactor.
        poller.add_wake_fd(server.ready.fd(), Interest::READABLE).map_err(ServerError::Poll)?;
        *server.poller.borrow_mut() = Some(poller);
        let s = Rc::downgrade(&server);
        let timeouts = reactor::register_timed_poller("rpc_server_timeouts", Duration::from_secs(1), move || match s.upgrade() {
            Some(s) => s.close_unfinished(),
            None => PollStatus::Idle,
        });
        timeouts.pause();
        *server.timeouts.borrow_mut() = Some(timeouts);
        reactor::set_local(server.clone());
        if accept_now {
            tracing::info!("RPC server listening on {}", path.display());
        } else {
            tracing::info!("RPC server listening on {}; calls are answered once start-up has finished", path.display());
        }
        Ok(server)
    }

    /// Accept clients from now on (those waiting in the backlog first).
    pub fn accept_clients(&self) -> Result<(), ServerError> {
        if !self.stopping.get() && !self.accepting.replace(true) {
            self.ready.add(self.listener.as_raw_fd(), LISTENER).map_err(ServerError::Poll)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.get()
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Stop serving: stop listening, remove the socket file, and read no
    /// more requests. A connection still waiting for answers (a call that
    /// completes during shutdown, such as a bdev delete whose users are
    /// stopping) stays until they are written whole, for as long as the
    /// reactor runs (the app's shutdown deadline bounds it); the others
    /// close now.
    pub fn stop(&self) {
        if self.stopping.replace(true) {
            return;
        }
        self.ready.remove(self.listener.as_raw_fd());
        let _ = std::fs::remove_file(&self.path);
        let ids: Vec<u64> = self.conns.borrow().keys().copied().collect();
        for id in ids {
            // From now on a connection is watched only while it has output.
            if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
                self.ready.remove(c.stream.as_raw_fd());
                c.watched = 0;
            }
            self.settle(id);
        }
        self.release_if_done();
    }

    /// Once stopped and every answer is written, let the reactor forget us.
    fn release_if_done(&self) {
        if !self.stopping.get() || !self.conns.borrow().is_empty() {
            return;
        }
        self.poller.borrow_mut().take();
        self.timeouts.borrow_mut().take();
        if let Some(me) = reactor::local::<RpcServer>() {
            if std::ptr::eq(Rc::as_ptr(&me), self) {
                reactor::take_local::<RpcServer>();
            }
        }
    }

    fn poll(&self) -> PollStatus {
        let n = self.ready.poll(|r| {
            if r.token == LISTENER {
                self.accept();
            } else {
                self.service(r.token, r.readable);
            }
        });
        n.into()
    }

    fn accept(&self) {
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("RPC accept failed: {e}");
                    return;
                }
            };
            if self.conns.borrow().len() >= MAX_CONNECTIONS && !self.evict_idlest() {
                tracing::warn!("RPC connection refused: {MAX_CONNECTIONS} clients already connected, none idle");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_conn.get();
            self.next_conn.set(id + 1);
            if self.ready.add(stream.as_raw_fd(), id).is_err() {
                continue;
            }
            let conn = Conn {
                stream,
                decoder: Decoder::new(),
                out: TxQueue::default(),
                pending: 0,
                read_closed: false,
                closing: false,
                watched: WATCH_READ,
                last_active: Instant::now(),
                unfinished_since: None,
                batches: HashMap::new(),
                next_batch: 0,
            };
            self.conns.borrow_mut().insert(id, conn);
        }
    }

    /// Answer and close the clients that left a request unfinished for
    /// [`REQUEST_TIMEOUT`]; pause once no request is unfinished.
    fn close_unfinished(&self) -> PollStatus {
        let now = Instant::now();
        let mut late = Vec::new();
        let mut waiting = false;
        for (id, c) in self.conns.borrow_mut().iter_mut() {
            let Some(since) = c.unfinished_since else { continue };
            if now.duration_since(since) >= REQUEST_TIMEOUT {
                refuse(c, format!("request unfinished after {} s ({} bytes)", REQUEST_TIMEOUT.as_secs(), c.decoder.pending()));
                late.push(*id);
            } else {
                waiting = true;
            }
        }
        for id in &late {
            self.settle(*id);
        }
        if !waiting {
            if let Some(p) = self.timeouts.borrow().as_ref() {
                p.pause();
            }
        }
        if late.is_empty() { PollStatus::Idle } else { PollStatus::Busy }
    }

    /// Close the connection idle the longest, to make room for a new one.
    fn evict_idlest(&self) -> bool {
        let mut conns = self.conns.borrow_mut();
        let Some(id) = conns.iter().filter(|(_, c)| c.idle()).min_by_key(|(_, c)| c.last_active).map(|(id, _)| *id) else {
            return false;
        };
        if let Some(c) = conns.remove(&id) {
            self.ready.remove(c.stream.as_raw_fd());
            tracing::debug!("RPC: {MAX_CONNECTIONS} clients connected: the one idle the longest is closed for a new one");
        }
        true
    }

    /// Read what a connection sent, dispatch complete requests, write answers.
    fn service(&self, id: u64, readable: bool) {
        {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(&id) else { return };
            if readable && !self.stopping.get() && c.may_read() {
                read_bytes(c);
            }
            if c.decoder.pending() > REQUEST_ALLOWANCE && !c.closing {
                let over: usize = conns.values().map(|c| c.decoder.pending().saturating_sub(REQUEST_ALLOWANCE)).sum();
                if over > UNFINISHED_BUDGET {
                    let c = conns.get_mut(&id).expect("looked up above");
                    let why = format!(
                        "{} MiB of unfinished requests are buffered, more than the server takes; this one ({} bytes so far) is refused",
                        over >> 20,
                        c.decoder.pending()
                    );
                    refuse(c, why);
                }
            }
        }
        self.pump(id);
        self.release_if_done();
    }

    /// Dispatch the complete requests a connection has buffered, as many as
    /// its limits allow, then write what is ready and settle its interest.
    fn pump(&self, id: u64) {
        let mut requests = Vec::new();
        if !self.stopping.get() {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(&id) else { return };
            take_requests(c, &mut requests);
            if c.unfinished_since.is_some() {
                if let Some(p) = self.timeouts.borrow().as_ref() {
                    p.resume();
                }
            }
        }
        // Dispatch outside the borrow: handlers may answer synchronously.
        for v in requests {
            self.dispatch(id, v);
        }
        self.settle(id);
    }

    fn dispatch(&self, conn: u64, v: Value) {
        match v {
            Value::Array(items) if items.is_empty() => {
                let err = RpcError::invalid_request("empty batch");
                self.respond_later(Slot { conn, batch: None }, Some(response(Value::Null, Err(err))));
            }
            Value::Array(items) => {
                let batch_id = {
                    let mut conns = self.conns.borrow_mut();
                    let Some(c) = conns.get_mut(&conn) else { return };
                    let b = c.next_batch;
                    c.next_batch += 1;
                    c.batches.insert(b, Batch { remaining: items.len(), responses: vec![None; items.len()] });
                    b
                };
                for (i, item) in items.into_iter().enumerate() {
                    self.dispatch_one(Slot { conn, batch: Some((batch_id, i)) }, item);
                }
            }
            v => self.dispatch_one(Slot { conn, batch: None }, v),
        }
    }

    fn dispatch_one(&self, slot: Slot, v: Value) {
        let req = match parse_request(v) {
            Ok(r) => r,
            Err((id, e)) => return self.respond_later(slot, Some(response(id, Err(e)))),
        };
        tracing::debug!(method = %req.method, "RPC request");
        self.add_pending(slot.conn);
        let id = req.id;
        let home = self.reactor;
        let resp = Responder::new(move |result: RpcResult| {
            let body = id.map(|id| response(id, result));
            reactor::send_msg(home, move || Self::arrive(slot, body));
        });
        self.methods.call(&req.method, req.params, resp);
    }

    fn add_pending(&self, conn: u64) {
        if let Some(c) = self.conns.borrow_mut().get_mut(&conn) {
            c.pending += 1;
        }
    }

    /// Answer through the same message path as handlers, so that answers to
    /// requests handled at once keep the order of the requests.
    fn respond_later(&self, slot: Slot, body: Option<Value>) {
        self.add_pending(slot.conn);
        reactor::send_msg(self.reactor, move || Self::arrive(slot, body));
    }

    /// A response arrives on the RPC reactor.
    fn arrive(slot: Slot, body: Option<Value>) {
        if let Some(server) = reactor::local::<RpcServer>() {
            if let Some(c) = server.conns.borrow_mut().get_mut(&slot.conn) {
                c.pending -= 1;
            }
            server.deliver(slot, body);
            // Below its limits again, the client's waiting requests go on.
            server.pump(slot.conn);
            server.release_if_done();
        }
    }

    /// Queue a response (or a notification's absence of one).
    fn deliver(&self, slot: Slot, body: Option<Value>) {
        self.served.set(self.served.get() + 1);
        let Some((batch_id, index)) = slot.batch else {
            if let Some(b) = body {
                self.write(slot.conn, b);
            }
            return;
        };
        let done = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(&slot.conn) else { return };
            let Some(b) = c.batches.get_mut(&batch_id) else { return };
            b.responses[index] = body;
            b.remaining -= 1;
            if b.remaining > 0 {
                return;
            }
            c.batches.remove(&batch_id).map(|b| b.responses.into_iter().flatten().collect::<Vec<_>>())
        };
        // A batch of notifications only gets no response at all.
        if let Some(all) = done.filter(|a| !a.is_empty()) {
            self.write(slot.conn, Value::Array(all));
        }
    }

    fn write(&self, conn: u64, v: Value) {
        if let Some(c) = self.conns.borrow_mut().get_mut(&conn) {
            c.last_active = Instant::now();
            serde_json::to_writer(c.out.bytes(), &v).expect("serialising to memory");
            c.out.bytes().push(b'\n');
        }
    }

    /// Flush output and close the connection when it is finished.
    fn settle(&self, id: u64) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(&id) else { return };
        let broken = flush(c).is_err();
        let stopping = self.stopping.get();
        let finished = c.out.is_empty() && (c.closing || (c.read_closed && c.pending == 0) || (stopping && c.pending == 0));
        if stopping {
            // Watched for writing only, and only while output waits.
            let want = if !c.out.is_empty() && !broken && !finished { WATCH_WRITE } else { 0 };
            self.watch(c, id, want);
            if broken || finished {
                conns.remove(&id);
            }
            return;
        }
        // A client closed for what it sent gets its answers if its socket
        // takes them now; it is not waited for.
        if broken || finished || c.closing {
            if c.closing && !c.out.is_empty() && !broken {
                tracing::debug!("RPC client closed with {} bytes of answers it did not read", c.out.len());
            }
            self.ready.remove(c.stream.as_raw_fd());
            conns.remove(&id);
            return;
        }
        let want_write = !c.out.is_empty();
        if c.read_closed {
            // Level-triggered hang-ups would fire on every poll: stop watching
            // the socket; answers still being computed are written when they
            // arrive, and a peer that then does not read is dropped.
            self.ready.remove(c.stream.as_raw_fd());
            if want_write {
                conns.remove(&id);
            }
            return;
        }
        // Over its limits a client is not read (level-triggered readiness
        // would otherwise fire on every poll) until its answers drain.
        let want = if c.may_read() { WATCH_READ } else { 0 } | if want_write { WATCH_WRITE } else { 0 };
        self.watch(c, id, want);
    }

    /// Register the connection's socket for `want` (nothing: not at all).
    fn watch(&self, c: &mut Conn, id: u64, want: u8) {
        if want == c.watched {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let (read, write) = (want & WATCH_READ != 0, want & WATCH_WRITE != 0);
        let _ = match (c.watched, want) {
            (_, 0) => {
                self.ready.remove(fd);
                Ok(())
            }
            (0, _) => self.ready.add(fd, id).and_then(|()| self.ready.watch(fd, id, read, write)),
            _ => self.ready.watch(fd, id, read, write),
        };
        c.watched = want;
    }
}

/// Read what is available, up to the read budget.
fn read_bytes(c: &mut Conn) {
    if c.closing {
        return;
    }
    let mut buf = [0u8; READ_CHUNK];
    let mut budget = READ_BUDGET;
    while budget > 0 && !c.read_closed {
        match c.stream.read(&mut buf) {
            Ok(0) => c.read_closed = true,
            Ok(n) => {
                budget = budget.saturating_sub(n);
                c.decoder.push(&buf[..n]);
                c.last_active = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => c.read_closed = true,
        }
    }
}

/// Take complete requests from what was read, while the client is below
/// its limit of requests in progress.
fn take_requests(c: &mut Conn, out: &mut Vec<Value>) {
    if c.closing {
        return;
    }
    // Waiting for the client's bytes (not held back by its limits).
    let mut waiting = false;
    loop {
        if c.pending + out.len() >= MAX_PENDING || c.out.len() >= MAX_OUT_BYTES {
            break;
        }
        match c.decoder.next_value() {
            Ok(Some(v)) => {
                out.push(v);
                c.unfinished_since = None;
            }
            Ok(None) => {
                waiting = true;
                break;
            }
            Err(e) => {
                // The stream cannot be resynchronised: answer and close.
                tracing::warn!("RPC client sent a malformed request: {e}");
                close_with(c, RpcError::parse_error(e));
                break;
            }
        }
    }
    if !waiting || c.read_closed || c.decoder.is_idle() {
        c.unfinished_since = None;
    } else if c.unfinished_since.is_none() {
        c.unfinished_since = Some(Instant::now());
    }
    if c.read_closed && !c.decoder.is_idle() {
        tracing::debug!("RPC client disconnected with {} bytes of an unfinished request", c.decoder.pending());
    }
}

/// Answer a client whose request cannot be taken (Invalid Request, `why`)
/// and close it.
fn refuse(c: &mut Conn, why: String) {
    tracing::warn!("RPC client closed: {why}");
    close_with(c, RpcError::invalid_request(&why));
}

/// Answer with `err`, drop what the client sent, and close it once the
/// answer is written (or at once if its socket does not take it).
fn close_with(c: &mut Conn, err: RpcError) {
    let body = response(Value::Null, Err(err));
    serde_json::to_writer(c.out.bytes(), &body).expect("serialising to memory");
    c.out.bytes().push(b'\n');
    c.decoder = Decoder::new();
    c.unfinished_since = None;
    c.closing = true;
}

fn flush(c: &mut Conn) -> io::Result<()> {
    c.out.flush(&c.stream).map(drop)
}
