//! One NVMe-oF queue pair of the host, polled by its reactor's
//! [`ClientGroup`]: over TCP a nonblocking connection, from TCP connect
//! through ICReq/ICResp to commands and their data; over RDMA an RDMA CM
//! connection ([`rdma`]). The bookkeeping of commands (slots, requests
//! split in pieces, timeouts, completions) is the same for both; only the
//! wire differs ([`Wire`]).
//!
//! Requests take a command identifier (a slot) each; a request that finds
//! none waits in order. Bdev requests larger than the largest transfer are
//! split into several commands, completed together. Reads are copied from
//! C2HData into the request's buffers; writes go in the capsule when they
//! fit the controller's in-capsule size, otherwise in H2CData PDUs as the
//! controller's R2Ts ask. Callbacks run with no borrow of the queue pair
//! held, so they may submit again.
//!
//! Over RDMA, data moves through registered buffers of the queue pair (one
//! per command slot): the controller reads writes from them and writes
//! reads into them with RDMA READ/WRITE (keyed SGLs); writes that fit the
//! in-capsule size go in the capsule.
//!
//! Any fault (a malformed or unexpected PDU, a C2HTermReq, the connection
//! closing, a command past its timeout) ends the queue pair: everything
//! outstanding fails, and the owner hears of it through `on_fail`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_core::bdev::{BdevIo, IoStatus, IoType};
use pollux_core::sock::{self, Client, ClientGroup, Flushed, TxQueue};
use pollux_nvme_spec::cmd::{Command, Completion, SglDescriptor, SglSubtype, SglType, io as nvm};
use pollux_nvme_spec::status::Status;

use crate::HostError;
use crate::pdu::{self, CtrlPdu, HostFraming, Parsed};

mod rdma;

/// The fabric a queue pair runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fabric {
    #[default]
    Tcp,
    Rdma,
}

impl Fabric {
    /// SPDK's `trtype` name.
    pub fn name(self) -> &'static str {
        match self {
            Fabric::Tcp => "TCP",
            Fabric::Rdma => "RDMA",
        }
    }

    /// From a `trtype` (any case).
    pub fn parse(s: &str) -> Option<Fabric> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Fabric::Tcp),
            "RDMA" => Some(Fabric::Rdma),
            _ => None,
        }
    }
}

/// What an admin command brought back.
#[derive(Debug)]
pub struct AdminDone {
    pub cqe: Completion,
    /// The data buffer: filled by the controller for commands that read.
    pub data: Vec<u8>,
}

pub type AdminCb = Box<dyn FnOnce(Result<AdminDone, HostError>)>;
type ReadyCb = Box<dyn FnOnce(Result<(), HostError>)>;
/// Told why the queue pair failed, and handed back the bdev requests it
/// held (when it requeues) to be sent again after a reconnect.
type FailCb = Box<dyn Fn(&HostError, Vec<(Route, BdevIo)>)>;
/// Told of a request failed with a path-related status (namespace id, the
/// request, the status code).
pub type PathErrorCb = Rc<dyn Fn(Route, BdevIo, u8)>;
/// Asked to abort the I/O command with this command id (it passed the
/// command timeout).
pub type AbortCb = Rc<dyn Fn(u16)>;

thread_local! {
    /// A start time no command timeout reaches (an AER's).
    static FOREVER: Instant = Instant::now() + Duration::from_secs(100 * 365 * 86400);
}

/// Largest read into the receive buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per readiness visit before the other connections get a turn.
const READ_BUDGET: usize = 16;

/// How to build a queue pair.
#[derive(Clone, Debug)]
pub struct QpairConfig {
    pub fabric: Fabric,
    pub addr: SocketAddr,
    pub hostaddr: Option<std::net::IpAddr>,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Commands outstanding at most (the queue's size minus one).
    pub depth: u16,
    /// Largest command transfer in bytes (MDTS, capped by the host).
    pub max_transfer: u32,
    /// Largest in-capsule data of a write (0: none).
    pub in_capsule: u32,
    /// Connecting (TCP and ICReq/ICResp, or the RDMA CM) gives up after this.
    pub connect_timeout: Duration,
    /// A command outstanding longer than this ends the queue pair (None: no limit).
    pub cmd_timeout: Option<Duration>,
    /// On failure, hand bdev requests back to `on_fail` (to be sent again
    /// once reconnected) instead of failing them.
    pub requeue: bool,
    /// How many times a request whose command timed out is handed back to
    /// be sent again before it fails instead (None: no limit), SPDK's
    /// `bdev_retry_count`.
    pub retry_limit: Option<u32>,
    /// Where commands that time out are counted (the controller's).
    pub timeouts: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    IcWait,
    Ready,
    Closed,
}

enum Slot {
    Free,
    Admin {
        data: Vec<u8>,
        to_host: bool,
        received: usize,
        cb: AdminCb,
        at: Instant,
        bad: bool,
    },
    /// `bad`: data came with a wrong digest; the command fails.
    /// `aborting`: past its timeout, an Abort for it is out (since `at`).
    Io {
        parent: u32,
        off: u64,
        len: u32,
        to_host: bool,
        moved: u32,
        at: Instant,
        bad: bool,
        aborting: bool,
    },
}

/// Where a bdev request goes: its namespace, and who sent it (the user
/// its queue gives it back to if it cannot finish it: requests of two
/// bdevs that had the same NSID one after the other never mix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub nsid: u32,
    pub user: u32,
}

/// A bdev request, split into `pending` commands.
struct Parent {
    io: Option<BdevIo>,
    route: Route,
    pending: u32,
    status: IoStatus,
    /// A command of it passed the command timeout (and ended the queue).
    timed_out: bool,
}

enum Waiting {
    Admin { cmd: Command, data: Vec<u8>, to_host: bool, cb: AdminCb },
    Io { parent: u32, off: u64, len: u32 },
}

/// What a command's capsule carries besides the command.
#[derive(Clone, Copy)]
enum Capsule {
    Empty,
    /// The request's data (a write that fits the in-capsule size).
    Data,
    /// A Dataset Management range.
    Range([u8; 16]),
}

/// How a queue pair ends (see `Qpair::end`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// A fault: requests fail or go back to `on_fail`, which is told.
    Fail,
    /// Detach: what is queued is flushed, requests fail, no one is told.
    Close,
    /// Replaced by the owner: requests are handed back, no one is told.
    Take,
}

/// Work to finish once the queue pair is no longer borrowed.
enum Done {
    Admin(AdminCb, Result<AdminDone, HostError>),
    Io(BdevIo, IoStatus),
    Ready(ReadyCb, Result<(), HostError>),
    Failed(HostError, Vec<(Route, BdevIo)>),
    /// A request the controller failed with a path-related status (ANA):
    /// for the owner to send on another path.
    PathError(Route, BdevIo, u8),
}

/// What a command moves, as its wire is to carry it.
#[derive(Clone, Copy)]
enum Data<'a> {
    None,
    /// The controller sends this many bytes.
    ToHost(u32),
    /// In the capsule.
    Inline(Src<'a>),
    /// Fetched by the controller (R2T and H2CData, or RDMA READ).
    FromHost(Src<'a>),
}

#[derive(Clone, Copy)]
enum Src<'a> {
    Bytes(&'a [u8]),
    /// `len` bytes at `off` of a request.
    Io(&'a BdevIo, u64, u32),
}

impl Src<'_> {
    fn len(&self) -> usize {
        match self {
            Src::Bytes(b) => b.len(),
            Src::Io(_, _, len) => *len as usize,
        }
    }

    fn copy_to(&self, out: &mut [u8]) {
        match self {
            Src::Bytes(b) => out.copy_from_slice(b),
            Src::Io(io, off, _) => io.copy_out(*off as usize, out),
        }
    }
}

/// The wire state of a queue pair.
enum Wire {
    Tcp(TcpWire),
    Rdma(Box<rdma::RdmaWire>),
}

struct TcpWire {
    framing: HostFraming,
    rx: Vec<u8>,
    rx_end: usize,
    tx: TxQueue<Vec<u8>>,
    watching_write: bool,
}

impl Wire {
    fn tcp(&mut self) -> Option<&mut TcpWire> {
        match self {
            Wire::Tcp(t) => Some(t),
            Wire::Rdma(_) => None,
        }
    }

    /// Whether output waits to be flushed.
    fn has_output(&self) -> bool {
        match self {
            Wire::Tcp(t) => !t.tx.is_empty(),
            Wire::Rdma(r) => r.has_output(),
        }
    }

    /// Put command `cmd` (slot `cid`) and its data on the wire; how many
    /// bytes of data to the controller have moved with it.
    fn send(&mut self, cid: u16, cmd: &mut Command, data: Data<'_>) -> Result<u32, HostError> {
        match self {
            Wire::Tcp(t) => {
                let f = t.framing;
                let out = t.tx.bytes();
                match data {
                    Data::Inline(src) => {
                        pdu::capsule_cmd(out, cmd, src.len(), &f);
                        let start = out.len();
                        out.resize(start + src.len(), 0);
                        src.copy_to(&mut out[start..]);
                        if f.ddgst {
                            pdu::data_digest(out, start);
                        }
                        Ok(src.len() as u32)
                    }
                    // Written data goes as the controller's R2Ts ask.
                    Data::None | Data::ToHost(_) | Data::FromHost(_) => {
                        pdu::capsule_cmd(out, cmd, 0, &f);
                        Ok(0)
                    }
                }
            }
            Wire::Rdma(r) => r.send(cid, cmd, data),
        }
    }
}

struct State {
    phase: Phase,
    wire: Wire,
    cfg: QpairConfig,
    slots: Vec<Slot>,
    free: Vec<u16>,
    waiting: VecDeque<Waiting>,
    parents: Vec<Parent>,
    free_parents: Vec<u32>,
    done: Vec<Done>,
    on_ready: Option<ReadyCb>,
    on_fail: Option<FailCb>,
    started: Instant,
    error: Option<HostError>,
    /// Until the Fabrics Connect succeeds only it may go out.
    gated: bool,
    /// The Connect waiting at the front of a gated queue.
    allow_one: bool,
    on_path_error: Option<PathErrorCb>,
    on_timeout: Option<AbortCb>,
    /// Command ids of commands that completed while an Abort for them was
    /// out, and since when: free again one command timeout later.
    quarantine: Vec<(u16, Instant)>,
}

pub struct Qpair {
    token: u64,
    qid: u16,
    group: Rc<ClientGroup<Qpair>>,
    link: Link,
    st: RefCell<State>,
}

/// What the group watches.
enum Link {
    Tcp(TcpStream),
    /// The CM event channel's fd (the completion channel's is added once
    /// the queue pair exists).
    Rdma(i32),
}

impl Qpair {
    /// Start connecting queue `qid` on this reactor; `on_ready` runs once
    /// the ICResp is in (or the attempt failed), `on_fail` whenever the
    /// queue pair fails after that.
    pub fn connect(
        cfg: QpairConfig,
        qid: u16,
        on_ready: impl FnOnce(Result<(), HostError>) + 'static,
        on_fail: impl Fn(&HostError, Vec<(Route, BdevIo)>) + 'static,
    ) -> Result<Rc<Qpair>, HostError> {
        let group = ClientGroup::get("nvmf_host_poll_group").map_err(|e| HostError::Connect(cfg.addr.to_string(), e.to_string()))?;
        if cfg.fabric == Fabric::Rdma {
            return rdma::connect(group, cfg, qid, Box::new(on_ready), Box::new(on_fail));
        }
        let stream = sock::connect_start(cfg.addr, cfg.hostaddr).map_err(|e| HostError::Connect(cfg.addr.to_string(), e.to_string()))?;
        let wire = Wire::Tcp(TcpWire {
            framing: HostFraming::initial(cfg.max_transfer.max(4096)),
            rx: vec![0; READ_CHUNK],
            rx_end: 0,
            tx: TxQueue::with_capacity(64 * 1024),
            watching_write: true,
        });
        let st = State::new(cfg, wire, Box::new(on_ready), Box::new(on_fail));
        let token = group.next_token();
        let qp = Rc::new(Qpair { token, qid, group: group.clone(), link: Link::Tcp(stream), st: RefCell::new(st) });
        group.add(&qp, qp.fd(), token).map_err(|e| HostError::Connect(qp.peer(), e.to_string()))?;
        Ok(qp)
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn fabric(&self) -> Fabric {
        match self.link {
            Link::Tcp(_) => Fabric::Tcp,
            Link::Rdma(_) => Fabric::Rdma,
        }
    }

    /// The watched fd: the socket, or the RDMA CM event channel.
    fn fd(&self) -> i32 {
        match &self.link {
            Link::Tcp(s) => s.as_raw_fd(),
            Link::Rdma(fd) => *fd,
        }
    }

    fn stream(&self) -> Option<&TcpStream> {
        match &self.link {
            Link::Tcp(s) => Some(s),
            Link::Rdma(_) => None,
        }
    }

    fn peer(&self) -> String {
        self.st.try_borrow().map(|s| s.cfg.addr.to_string()).unwrap_or_default()
    }
}

impl State {
    fn new(cfg: QpairConfig, wire: Wire, on_ready: ReadyCb, on_fail: FailCb) -> State {
        let depth = cfg.depth.max(1);
        State {
            phase: Phase::Connecting,
            wire,
            slots: (0..depth).map(|_| Slot::Free).collect(),
            free: (0..depth).rev().collect(),
            waiting: VecDeque::with_capacity(usize::from(depth) * 2),
            parents: Vec::with_capacity(usize::from(depth)),
            free_parents: Vec::with_capacity(usize::from(depth)),
            done: Vec::with_capacity(usize::from(depth)),
            on_ready: Some(on_ready),
            on_fail: Some(on_fail),
            started: Instant::now(),
            error: None,
            gated: true,
            allow_one: false,
            on_path_error: None,
            on_timeout: None,
            quarantine: Vec::new(),
            cfg,
        }
    }
}

impl Qpair {
    /// Whether the queue pair takes commands (connected, not failed).
    pub fn is_ready(&self) -> bool {
        self.st.borrow().phase == Phase::Ready
    }

    pub fn is_closed(&self) -> bool {
        self.st.borrow().phase == Phase::Closed
    }

    /// Why the queue pair failed, if it did.
    pub fn error(&self) -> Option<HostError> {
        self.st.borrow().error.clone()
    }

    /// Commands outstanding or waiting.
    pub fn outstanding(&self) -> usize {
        let st = self.st.borrow();
        st.slots.len() - st.free.len() + st.waiting.len()
    }

    /// Submit an admin (or Fabrics) command. `data`: the buffer to send
    /// (`to_host` false) or to fill (`to_host` true, its length is the
    /// transfer's). Sent data goes in the capsule.
    pub fn admin(&self, cmd: Command, data: Vec<u8>, to_host: bool, cb: AdminCb) {
        {
            let mut st = self.st.borrow_mut();
            if st.phase == Phase::Closed {
                let e = st.error.clone().unwrap_or(HostError::Closed);
                drop(st);
                return cb(Err(e));
            }
            st.waiting.push_back(Waiting::Admin { cmd, data, to_host, cb });
            if st.phase == Phase::Ready {
                st.issue_waiting();
            }
        }
        self.kick();
    }

    /// Submit the Fabrics Connect: the first command, which goes out
    /// ahead of anything waiting for the queue to open.
    pub fn admin_first(&self, cmd: Command, data: Vec<u8>, cb: AdminCb) {
        {
            let mut st = self.st.borrow_mut();
            if st.phase == Phase::Closed {
                let e = st.error.clone().unwrap_or(HostError::Closed);
                drop(st);
                return cb(Err(e));
            }
            st.waiting.push_front(Waiting::Admin { cmd, data, to_host: false, cb });
            st.allow_one = true;
            if st.phase == Phase::Ready {
                st.issue_waiting();
            }
        }
        self.kick();
    }

    /// Have requests the controller fails with a path-related status
    /// (ANA) handed to `f` instead of completed.
    pub fn set_on_path_error(&self, f: PathErrorCb) {
        self.st.borrow_mut().on_path_error = Some(f);
    }

    /// Have an I/O command past the command timeout aborted through `f`
    /// first; it ends the queue pair only if it is still outstanding one
    /// timeout later. Without this, the timeout ends the queue pair at once.
    pub fn set_on_timeout(&self, f: AbortCb) {
        self.st.borrow_mut().on_timeout = Some(f);
    }

    /// The Connect succeeded: let everything else through.
    pub fn open_gate(&self) {
        {
            let mut st = self.st.borrow_mut();
            st.gated = false;
            if st.phase == Phase::Ready {
                st.issue_waiting();
            }
        }
        self.kick();
    }

    /// Submit a bdev request to namespace `route.nsid`.
    pub fn submit(&self, route: Route, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Closed {
            drop(st);
            return io.complete(IoStatus::NoDevice);
        }
        let kind = io.kind();
        let bs = u64::from(io.block_size());
        let total = io.len_bytes();
        let chunk = match kind {
            IoType::Read | IoType::Write | IoType::Compare => u64::from(st.cfg.max_transfer).min(65536 * bs) / bs * bs,
            // One command each: no data moves (Write Zeroes: NLB is 16 bits;
            // Deallocate: one range of up to 2^32-1 blocks).
            IoType::WriteZeroes => 65536 * bs,
            IoType::Unmap => u64::from(u32::MAX) * bs,
            IoType::Flush | IoType::Reset => total.max(1),
        };
        // A controller that cannot carry one block a command (its bdev is
        // refused such a namespace, see `register_namespaces`): fail rather
        // than cut the request into pieces smaller than a block.
        if chunk < bs && matches!(kind, IoType::Read | IoType::Write | IoType::Compare) {
            drop(st);
            return io.complete(IoStatus::Failed);
        }
        let pieces = if matches!(kind, IoType::Flush | IoType::Reset) { 1 } else { total.div_ceil(chunk.max(1)) };
        let parent = Parent { io: Some(io), route, pending: pieces as u32, status: IoStatus::Success, timed_out: false };
        let p = match st.free_parents.pop() {
            Some(i) => {
                st.parents[i as usize] = parent;
                i
            }
            None => {
                st.parents.push(parent);
                (st.parents.len() - 1) as u32
            }
        };
        let mut off = 0;
        for _ in 0..pieces {
            let len = chunk.min(total - off);
            st.waiting.push_back(Waiting::Io { parent: p, off, len: len as u32 });
            off += len;
        }
        if st.phase == Phase::Ready {
            st.issue_waiting();
        }
        drop(st);
        self.kick();
    }

    /// Queue output is flushed by the group's next pass (which this wakes).
    fn kick(&self) {
        self.group.mark_dirty(self.token);
    }

    /// Write what is queued (the group's pass).
    pub(crate) fn flush(&self) {
        // Commands that failed before going out (issue_waiting) complete here.
        let failed = {
            let mut st = self.st.borrow_mut();
            (!st.done.is_empty()).then(|| std::mem::take(&mut st.done))
        };
        if let Some(mut d) = failed {
            self.run(&mut d);
        }
        let r = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if matches!(st.phase, Phase::Connecting | Phase::Closed) {
                return;
            }
            match (&mut st.wire, self.stream()) {
                (Wire::Rdma(r), _) => r.post().map_err(|e| HostError::Transport(format!("posting to {}: {e}", st.cfg.addr))),
                (Wire::Tcp(t), Some(stream)) => match t.tx.flush(stream) {
                    Ok(Flushed::All) => {
                        if t.watching_write {
                            t.watching_write = false;
                            let _ = self.group.watch(self.fd(), self.token, true, false);
                        }
                        Ok(())
                    }
                    Ok(Flushed::Blocked) => {
                        if !t.watching_write {
                            t.watching_write = true;
                            let _ = self.group.watch(self.fd(), self.token, true, true);
                        }
                        Ok(())
                    }
                    Err(e) => Err(HostError::Transport(format!("sending to {}: {e}", st.cfg.addr))),
                },
                (Wire::Tcp(_), None) => Ok(()),
            }
        };
        if let Err(e) = r {
            self.fail(e);
        }
    }

    /// The group saw this connection ready.
    pub(crate) fn on_event(self: &Rc<Self>, readable: bool, writable: bool, hangup: bool) {
        if let Link::Rdma(_) = self.link {
            return self.rdma_events();
        }
        let phase = self.st.borrow().phase;
        match phase {
            Phase::Closed => {}
            Phase::Connecting => {
                if writable || hangup {
                    self.connected();
                }
            }
            _ => {
                if readable {
                    self.on_readable();
                }
                if writable {
                    self.flush();
                }
            }
        }
    }

    fn connected(&self) {
        let r = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let (Some(stream), Wire::Tcp(t)) = (self.stream(), &mut st.wire) else { return };
            match sock::connect_result(stream) {
                Ok(()) => {
                    st.phase = Phase::IcWait;
                    pdu::ic_req(t.tx.bytes(), st.cfg.hdgst, st.cfg.ddgst);
                    t.watching_write = false;
                    Ok(())
                }
                Err(e) => Err(HostError::Connect(st.cfg.addr.to_string(), e.to_string())),
            }
        };
        match r {
            Ok(()) => {
                let _ = self.group.watch(self.fd(), self.token, true, false);
                self.flush();
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_readable(&self) {
        let Some(mut stream) = self.stream() else { return };
        for _ in 0..READ_BUDGET {
            let n = {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                if st.phase == Phase::Closed {
                    return;
                }
                let Wire::Tcp(t) = &mut st.wire else { return };
                let cap = t.framing.max_pdu_len().max(READ_CHUNK);
                if t.rx.len() - t.rx_end < READ_CHUNK.min(cap - t.rx_end).max(1) {
                    let want = (t.rx_end + READ_CHUNK).min(cap);
                    if want > t.rx.len() {
                        t.rx.resize(want, 0);
                    }
                }
                if t.rx_end == t.rx.len() {
                    // Unreachable by the parser's bound; refuse rather than grow.
                    Err(HostError::Transport("receive buffer full without a whole PDU".into()))
                } else {
                    let end = t.rx_end;
                    match stream.read(&mut t.rx[end..]) {
                        Ok(0) => Err(HostError::Transport(format!("{} closed the connection", st.cfg.addr))),
                        Ok(n) => {
                            t.rx_end += n;
                            Ok(n)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
                        Err(e) => Err(HostError::Transport(format!("receiving from {}: {e}", st.cfg.addr))),
                    }
                }
            };
            match n {
                Ok(_) => {
                    if let Err(e) = self.process() {
                        return self.fail(e);
                    }
                }
                Err(e) => return self.fail(e),
            }
        }
        // Budget spent with input possibly left: come back next pass.
        self.group.again(self.token);
    }

    /// Handle every whole PDU in the receive buffer, then run what they
    /// completed.
    fn process(&self) -> Result<(), HostError> {
        let Some(stream) = self.stream() else { return Ok(()) };
        let done = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let Wire::Tcp(t) = &mut st.wire else { return Ok(()) };
            let rx = std::mem::take(&mut t.rx);
            let (rx_end, framing) = (t.rx_end, t.framing);
            let mut done = std::mem::take(&mut st.done);
            let mut pos = 0;
            let mut res = Ok(());
            while pos < rx_end {
                // IcResp changes the framing: parse with the current one.
                let framing = st.wire.tcp().map_or(framing, |t| t.framing);
                match pdu::parse(&rx[pos..rx_end], &framing) {
                    Ok(Parsed::Pdu(p, n)) => {
                        if let Err(e) = st.handle(p, &mut done) {
                            res = Err(e);
                            break;
                        }
                        pos += n;
                    }
                    Ok(Parsed::Need(_)) => break,
                    Err(f) => {
                        // Tell the controller why, then end.
                        if let Some(t) = st.wire.tcp() {
                            pdu::h2c_term_req(t.tx.bytes(), f.fes, f.fei, &rx[pos..rx_end]);
                            let _ = t.tx.flush(stream);
                        }
                        res = Err(HostError::Transport(format!("from {}: {f}", st.cfg.addr)));
                        break;
                    }
                }
            }
            let mut rx = rx;
            rx.copy_within(pos..rx_end, 0);
            if let Some(t) = st.wire.tcp() {
                t.rx_end = rx_end - pos;
                t.rx = rx;
            }
            if res.is_ok() {
                st.issue_waiting();
            }
            res?;
            done
        };
        self.finish(done);
        Ok(())
    }

    /// Run what a pass completed (no borrow held), and flush what it queued.
    fn finish(&self, mut done: Vec<Done>) {
        let output = self.st.borrow().wire.has_output();
        let any = output || !done.is_empty();
        self.run(&mut done);
        if let Ok(mut st) = self.st.try_borrow_mut() {
            if st.done.is_empty() {
                st.done = done;
            }
        }
        if any {
            self.kick();
        }
    }

    fn run(&self, done: &mut Vec<Done>) {
        for d in done.drain(..) {
            match d {
                Done::Admin(cb, r) => cb(r),
                Done::Io(io, s) => io.complete(s),
                Done::PathError(route, io, sc) => {
                    let f = self.st.borrow().on_path_error.clone();
                    match f {
                        Some(f) => f(route, io, sc),
                        None => io.complete(IoStatus::Nvme { sct: 3, sc }),
                    }
                }
                Done::Ready(cb, r) => cb(r),
                Done::Failed(e, ios) => {
                    let f = self.st.borrow_mut().on_fail.take();
                    match f {
                        Some(f) => f(&e, ios),
                        None => {
                            for (_, io) in ios {
                                io.complete(IoStatus::Failed);
                            }
                        }
                    }
                }
            }
        }
    }

    /// End the queue pair: close the connection, fail everything
    /// outstanding, tell the owner.
    pub fn fail(&self, e: HostError) {
        self.end(e, End::Fail);
    }

    /// Close without an error (detach): outstanding work fails as closed.
    pub fn close(&self) {
        self.end(HostError::Closed, End::Close);
    }

    /// Close and hand back the bdev requests it holds, telling no one (the
    /// owner replaces it).
    pub fn close_take(&self) -> Vec<(Route, BdevIo)> {
        self.end(HostError::Closed, End::Take)
    }

    /// The one way a queue pair ends: close the connection, then settle
    /// what it held as `how` says. Returns the requests handed back
    /// ([`End::Take`] only).
    fn end(&self, e: HostError, how: End) -> Vec<(Route, BdevIo)> {
        let mut done = {
            let mut st = self.st.borrow_mut();
            if st.phase == Phase::Closed {
                return Vec::new();
            }
            let requeue = match how {
                End::Fail => {
                    tracing::warn!("nvmf host: queue {} to {}: {e}", self.qid, st.cfg.addr);
                    st.cfg.requeue
                }
                End::Close => {
                    if let (Wire::Tcp(t), Some(stream)) = (&mut st.wire, self.stream()) {
                        let _ = t.tx.flush(stream);
                    }
                    st.on_fail = None;
                    false
                }
                End::Take => {
                    st.on_fail = None;
                    true
                }
            };
            st.close_all(e, requeue)
        };
        self.group.remove(self.fd(), self.token);
        match &self.link {
            Link::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Link::Rdma(_) => {
                // Disconnect and release the QP and its registered memory
                // now (not when the last owner lets go).
                let gone = self.st.borrow_mut().rdma_release(&self.group);
                drop(gone);
            }
        }
        let mut ios = Vec::new();
        if how == End::Take {
            for d in done.iter_mut() {
                if let Done::Failed(_, v) = d {
                    ios.append(v);
                }
            }
        }
        self.run(&mut done);
        ios
    }

    /// The group's timer: connecting too long, or a command past its
    /// timeout. An I/O command past it is aborted first when there is an
    /// abort hook (`set_on_timeout`); anything else past it (or an I/O
    /// command still outstanding a timeout after its Abort) ends the queue
    /// pair, which its owner reconnects.
    pub(crate) fn check_timeouts(&self, now: Instant) {
        let mut abort = Vec::new();
        let why = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            match st.phase {
                Phase::Closed => None,
                Phase::Connecting | Phase::IcWait if now.duration_since(st.started) > st.cfg.connect_timeout => {
                    Some(HostError::Timeout(format!("connecting to {}", st.cfg.addr)))
                }
                _ => st.cfg.cmd_timeout.and_then(|t| {
                    // Quarantined command ids the Abort can no longer name.
                    if !st.quarantine.is_empty() {
                        let (free, quarantine) = (&mut st.free, &mut st.quarantine);
                        quarantine.retain(|&(cid, since)| {
                            let keep = now.duration_since(since) <= t;
                            if !keep {
                                free.push(cid);
                            }
                            keep
                        });
                    }
                    let can_abort = st.on_timeout.is_some();
                    let addr = st.cfg.addr;
                    let counter = st.cfg.timeouts.clone();
                    let count = || {
                        if let Some(c) = &counter {
                            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    };
                    let late = |what: &str| Some(HostError::Timeout(format!("{what} to {addr} outstanding over {} ms", t.as_millis())));
                    let mut why = None;
                    let mut late_parents = Vec::new();
                    for (cid, s) in st.slots.iter_mut().enumerate() {
                        match s {
                            Slot::Admin { at, .. } if now.duration_since(*at) > t => {
                                count();
                                why = why.or_else(|| late("a command"))
                            }
                            Slot::Io { at, aborting, parent, .. } if now.duration_since(*at) > t => {
                                if !*aborting {
                                    count();
                                }
                                if can_abort && !*aborting {
                                    *aborting = true;
                                    *at = now;
                                    abort.push(cid as u16);
                                } else {
                                    why = why.or_else(|| late(if *aborting { "an aborted I/O command" } else { "an I/O command" }));
                                    late_parents.push(*parent);
                                }
                            }
                            _ => {}
                        }
                    }
                    for p in late_parents {
                        if let Some(p) = st.parents.get_mut(p as usize) {
                            p.timed_out = true;
                        }
                    }
                    why
                }),
            }
        };
        if why.is_none() && !abort.is_empty() {
            let f = self.st.borrow().on_timeout.clone();
            if let Some(f) = f {
                for cid in abort {
                    tracing::warn!("nvmf host: queue {} to {}: I/O command {cid} timed out; aborting it", self.qid, self.peer());
                    f(cid);
                }
            }
        }
        if let Some(e) = why {
            self.fail(e);
        }
    }
}

impl Client for Qpair {
    fn on_event(self: &Rc<Self>, readable: bool, writable: bool, hangup: bool) {
        Qpair::on_event(self, readable, writable, hangup)
    }
    fn flush(self: &Rc<Self>) {
        Qpair::flush(self)
    }
    fn check_timeouts(self: &Rc<Self>, now: Instant) {
        Qpair::check_timeouts(self, now)
    }
}

impl Drop for Qpair {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        if st.phase != Phase::Closed {
            st.phase = Phase::Closed;
            let fd = match &self.link {
                Link::Tcp(s) => s.as_raw_fd(),
                Link::Rdma(fd) => *fd,
            };
            self.group.remove(fd, self.token);
            let gone = st.rdma_release(&self.group);
            drop(gone);
        }
    }
}

impl State {
    /// End everything: admin callbacks get the error; bdev requests fail,
    /// or with `requeue` go back to the owner whole (a request split in
    /// several commands is sent again entirely: reads and writes of the
    /// same blocks may be repeated).
    fn close_all(&mut self, e: HostError, requeue: bool) -> Vec<Done> {
        self.phase = Phase::Closed;
        self.error = Some(e.clone());
        if let Some(t) = self.wire.tcp() {
            t.tx.clear();
        }
        let mut done = std::mem::take(&mut self.done);
        if let Some(cb) = self.on_ready.take() {
            done.push(Done::Ready(cb, Err(e.clone())));
        }
        for i in 0..self.slots.len() {
            if let Slot::Admin { cb, .. } = std::mem::replace(&mut self.slots[i], Slot::Free) {
                done.push(Done::Admin(cb, Err(e.clone())));
            }
        }
        while let Some(w) = self.waiting.pop_front() {
            if let Waiting::Admin { cb, .. } = w {
                done.push(Done::Admin(cb, Err(e.clone())));
            }
        }
        let mut ios = Vec::new();
        for p in self.parents.iter_mut() {
            if let Some(mut io) = p.io.take() {
                // A request whose own command timed out is sent again a
                // bounded number of times.
                let spent = p.timed_out && self.cfg.retry_limit.is_some_and(|limit| io.retried() > limit);
                if requeue && !spent {
                    ios.push((p.route, io));
                } else {
                    if spent {
                        tracing::warn!(
                            "nvmf host: {}: a request timed out more times than bdev_retry_count allows; it fails",
                            self.cfg.addr
                        );
                    }
                    done.push(Done::Io(io, IoStatus::Failed));
                }
            }
        }
        self.parents.clear();
        self.free_parents.clear();
        done.push(Done::Failed(e, ios));
        done
    }

    fn piece_done(&mut self, parent: u32, status: IoStatus, done: &mut Vec<Done>) {
        let p = &mut self.parents[parent as usize];
        if !status.is_ok() && p.status.is_ok() {
            p.status = status;
        }
        p.pending -= 1;
        if p.pending == 0 {
            if let Some(io) = p.io.take() {
                // ANA persistent loss, inaccessible, transition: another
                // path may serve it (the owner decides).
                match p.status {
                    IoStatus::Nvme { sct: 3, sc: sc @ 1..=3 } if self.on_path_error.is_some() => {
                        done.push(Done::PathError(p.route, io, sc))
                    }
                    st => done.push(Done::Io(io, st)),
                }
            }
            self.free_parents.push(parent);
        }
    }

    /// Give waiting requests the free command identifiers.
    fn issue_waiting(&mut self) {
        while !self.free.is_empty() {
            if self.gated {
                if !self.allow_one {
                    return;
                }
                self.allow_one = false;
            }
            let Some(w) = self.waiting.pop_front() else { return };
            let cid = self.free.pop().expect("checked");
            let rdma = matches!(self.wire, Wire::Rdma(_));
            match w {
                Waiting::Admin { mut cmd, data, to_host, cb } => {
                    cmd.cid.set(cid);
                    let len = data.len();
                    // Fabrics commands always describe their data with an SGL
                    // (PSDT 01b), a null one when there is none (nvmet refuses
                    // anything else). Over RDMA the wire makes transfers keyed
                    // (an admin queue takes no in-capsule data there).
                    let inline = !(to_host || len == 0 || rdma);
                    let sgl = if inline {
                        SglDescriptor::new(SglType::DataBlock, SglSubtype::Offset, 0, len as u32)
                    } else {
                        SglDescriptor::new(SglType::TransportDataBlock, SglSubtype::Transport, 0, len as u32)
                    };
                    cmd.flags |= pollux_nvme_spec::cmd::flags::PSDT_SGL;
                    cmd.dptr.set_sgl(sgl);
                    let d = match (to_host, len) {
                        (_, 0) => Data::None,
                        (true, _) => Data::ToHost(len as u32),
                        (false, _) if inline => Data::Inline(Src::Bytes(&data)),
                        (false, _) => Data::FromHost(Src::Bytes(&data)),
                    };
                    if let Err(e) = self.wire.send(cid, &mut cmd, d) {
                        self.free.push(cid);
                        self.done.push(Done::Admin(cb, Err(e)));
                        continue;
                    }
                    // An Asynchronous Event Request waits for an event, as
                    // long as that takes: no timeout.
                    let at =
                        if cmd.opcode == pollux_nvme_spec::cmd::admin::ASYNC_EVENT_REQUEST { FOREVER.with(|f| *f) } else { Instant::now() };
                    self.slots[cid as usize] = Slot::Admin { data, to_host, received: 0, cb, at, bad: false };
                }
                Waiting::Io { parent, off, len } => {
                    let (mut cmd, to_host, capsule) = self.io_command(cid, parent, off, len);
                    let io = self.parents[parent as usize].io.as_ref().expect("live request");
                    let d = match capsule {
                        Capsule::Data => Data::Inline(Src::Io(io, off, len)),
                        Capsule::Range(ref range) => Data::Inline(Src::Bytes(range)),
                        Capsule::Empty if to_host && len > 0 && io.kind() != IoType::WriteZeroes => Data::ToHost(len),
                        Capsule::Empty if matches!(io.kind(), IoType::Write | IoType::Compare) => Data::FromHost(Src::Io(io, off, len)),
                        Capsule::Empty => Data::None,
                    };
                    // Written data in the capsule (or in the queue pair's
                    // registered buffer) has moved already; a write without
                    // it waits for R2Ts.
                    let moved = match self.wire.send(cid, &mut cmd, d) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("nvmf host: {}: {e}", self.cfg.addr);
                            self.free.push(cid);
                            let mut done = std::mem::take(&mut self.done);
                            self.piece_done(parent, IoStatus::Failed, &mut done);
                            self.done = done;
                            continue;
                        }
                    };
                    self.slots[cid as usize] =
                        Slot::Io { parent, off, len, to_host, moved, at: Instant::now(), bad: false, aborting: false };
                }
            }
        }
    }

    /// The NVMe command for `len` bytes at `off` of a request, whether
    /// data comes back, and what goes in the capsule.
    fn io_command(&self, cid: u16, parent: u32, off: u64, len: u32) -> (Command, bool, Capsule) {
        let p = &self.parents[parent as usize];
        let io = p.io.as_ref().expect("live request");
        let bs = u64::from(io.block_size());
        let slba = io.offset_blocks() + off / bs;
        let blocks = u64::from(len) / bs;
        let opcode = match io.kind() {
            IoType::Read => nvm::READ,
            IoType::Write => nvm::WRITE,
            IoType::Compare => nvm::COMPARE,
            IoType::WriteZeroes => nvm::WRITE_ZEROES,
            IoType::Unmap => nvm::DATASET_MANAGEMENT,
            IoType::Flush | IoType::Reset => nvm::FLUSH,
        };
        let mut cmd = Command::new(opcode);
        cmd.cid.set(cid);
        cmd.nsid.set(p.route.nsid);
        // A null SGL unless the command moves data (see `issue_waiting`).
        cmd.flags |= pollux_nvme_spec::cmd::flags::PSDT_SGL;
        cmd.dptr.set_sgl(SglDescriptor::new(SglType::TransportDataBlock, SglSubtype::Transport, 0, 0));
        let sgl = |cmd: &mut Command, inline: bool, len: u32| {
            let d = if inline {
                SglDescriptor::new(SglType::DataBlock, SglSubtype::Offset, 0, len)
            } else {
                SglDescriptor::new(SglType::TransportDataBlock, SglSubtype::Transport, 0, len)
            };
            cmd.flags |= pollux_nvme_spec::cmd::flags::PSDT_SGL;
            cmd.dptr.set_sgl(d);
        };
        match io.kind() {
            IoType::Read => {
                cmd.set_slba(slba);
                cmd.set_nlb(blocks as u32);
                sgl(&mut cmd, false, len);
                (cmd, true, Capsule::Empty)
            }
            IoType::Write | IoType::Compare => {
                cmd.set_slba(slba);
                cmd.set_nlb(blocks as u32);
                let inline = len <= self.cfg.in_capsule;
                sgl(&mut cmd, inline, len);
                (cmd, false, if inline { Capsule::Data } else { Capsule::Empty })
            }
            IoType::WriteZeroes => {
                cmd.set_slba(slba);
                cmd.set_nlb(blocks as u32);
                (cmd, false, Capsule::Empty)
            }
            IoType::Unmap => {
                // Dataset Management, Deallocate (CDW11 bit 2), one range
                // (CDW10 NR 0): context 0, length, starting LBA.
                cmd.cdw11.set(1 << 2);
                let mut range = [0u8; 16];
                range[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
                range[8..16].copy_from_slice(&slba.to_le_bytes());
                sgl(&mut cmd, true, 16);
                (cmd, false, Capsule::Range(range))
            }
            IoType::Flush | IoType::Reset => (cmd, false, Capsule::Empty),
        }
    }

    /// A completion came for command `cqe.cid`: settle its slot.
    fn complete(&mut self, cqe: Completion, done: &mut Vec<Done>) -> Result<(), HostError> {
        let peer = self.cfg.addr;
        let bad = |why: String| HostError::Transport(format!("from {peer}: {why}"));
        let cid = cqe.cid.get();
        let status = cqe.status();
        let mut quarantined = false;
        match self.slots.get_mut(usize::from(cid)).map(|s| std::mem::replace(s, Slot::Free)) {
            None | Some(Slot::Free) => return Err(bad(format!("a completion for command id {cid}, which is not outstanding"))),
            Some(Slot::Admin { mut data, to_host, received, cb, bad, .. }) => {
                if bad {
                    done.push(Done::Admin(cb, Err(bad_digest(cid))));
                } else {
                    if to_host && status.is_success() && received < data.len() {
                        // Shorter than asked: keep what came (log pages may be).
                        data.truncate(received);
                    }
                    done.push(Done::Admin(cb, Ok(AdminDone { cqe, data })));
                }
            }
            Some(Slot::Io { parent, len, to_host, moved, bad, aborting, .. }) => {
                if aborting {
                    quarantined = true;
                }
                let st = if bad {
                    IoStatus::Failed
                } else if status.is_success() && to_host && moved != len {
                    tracing::warn!("nvmf host: {peer}: command {cid} succeeded with {moved} of {len} bytes");
                    IoStatus::Failed
                } else {
                    io_status(status)
                };
                self.piece_done(parent, st, done);
            }
        }
        if quarantined {
            // An Abort naming this command id may still be on its
            // way: the id is not reused until it cannot be.
            self.quarantine.push((cid, Instant::now()));
        } else {
            self.free.push(cid);
        }
        Ok(())
    }

    fn handle(&mut self, p: CtrlPdu<'_>, done: &mut Vec<Done>) -> Result<(), HostError> {
        let peer = self.cfg.addr;
        let bad = |why: String| HostError::Transport(format!("from {peer}: {why}"));
        match p {
            CtrlPdu::IcResp { cpda, dgst, maxh2cdata } => {
                let hd = dgst & pollux_nvme_spec::tcp::DGST_HEADER != 0;
                let dd = dgst & pollux_nvme_spec::tcp::DGST_DATA != 0;
                if hd != self.cfg.hdgst || dd != self.cfg.ddgst {
                    return Err(bad(format!(
                        "the controller answered digests header {hd} data {dd} to a request for header {} data {}",
                        self.cfg.hdgst, self.cfg.ddgst
                    )));
                }
                if let Some(t) = self.wire.tcp() {
                    t.framing.connected = true;
                    t.framing.hdgst = hd;
                    t.framing.ddgst = dd;
                    t.framing.cpda = cpda;
                    t.framing.maxh2cdata = maxh2cdata;
                }
                self.phase = Phase::Ready;
                if let Some(cb) = self.on_ready.take() {
                    done.push(Done::Ready(cb, Ok(())));
                }
            }
            CtrlPdu::TermReq { fes, fei } => {
                return Err(bad(format!("C2HTermReq, fatal error status {fes:#x}, field offset {fei}")));
            }
            CtrlPdu::Resp(cqe) => return self.complete(cqe, done),
            CtrlPdu::C2hData { cccid, datao, data, last: _, success, digest_ok } => {
                if !digest_ok {
                    tracing::warn!("nvmf host: {peer}: data digest error in C2HData of command {cccid}; the command fails");
                }
                let slot = self.slots.get_mut(usize::from(cccid));
                match slot {
                    Some(Slot::Admin { data: buf, to_host: true, received, bad: corrupt, .. }) => {
                        *corrupt |= !digest_ok;
                        if datao as usize != *received || *received + data.len() > buf.len() {
                            return Err(bad(format!("C2HData of {} bytes at {datao} for a {}-byte transfer", data.len(), buf.len())));
                        }
                        buf[*received..*received + data.len()].copy_from_slice(data);
                        *received += data.len();
                    }
                    Some(Slot::Io { parent, off, len, to_host: true, moved, bad: corrupt, .. }) => {
                        *corrupt |= !digest_ok;
                        if datao != *moved || u64::from(*moved) + data.len() as u64 > u64::from(*len) {
                            return Err(bad(format!("C2HData of {} bytes at {datao} for a {len}-byte transfer", data.len())));
                        }
                        let at = (*off + u64::from(datao)) as usize;
                        *moved += data.len() as u32;
                        let p = &mut self.parents[*parent as usize];
                        if let Some(io) = p.io.as_mut() {
                            io.copy_in(at, data);
                        }
                    }
                    _ => return Err(bad(format!("C2HData for command id {cccid}, which reads nothing"))),
                }
                if success {
                    let ok = match &self.slots[usize::from(cccid)] {
                        Slot::Admin { data, received, .. } => *received == data.len(),
                        Slot::Io { len, moved, .. } => moved == len,
                        Slot::Free => false,
                    };
                    if !ok {
                        return Err(bad("C2HData SUCCESS before all the data".into()));
                    }
                    let mut cqe = Completion::default();
                    cqe.cid.set(cccid);
                    return self.complete(cqe, done);
                }
            }
            CtrlPdu::R2t { cccid, ttag, offset, len: r2tl } => {
                let Wire::Tcp(t) = &mut self.wire else { return Err(bad("an R2T over RDMA".into())) };
                let maxh2c = t.framing.maxh2cdata;
                let f = t.framing;
                match self.slots.get_mut(usize::from(cccid)) {
                    Some(Slot::Io { parent, off, len, to_host: false, moved, .. }) => {
                        if r2tl == 0 || offset != *moved || u64::from(offset) + u64::from(r2tl) > u64::from(*len) {
                            return Err(bad(format!("R2T for {r2tl} bytes at {offset} of a {len}-byte write ({moved} sent)")));
                        }
                        let io = self.parents[*parent as usize].io.as_ref().expect("live request");
                        let mut sent = 0;
                        while sent < r2tl {
                            let n = (r2tl - sent).min(maxh2c);
                            let last = sent + n == r2tl;
                            let out = t.tx.bytes();
                            pdu::h2c_data(out, cccid, ttag, offset + sent, n, last, &f);
                            let start = out.len();
                            out.resize(start + n as usize, 0);
                            io.copy_out((*off + u64::from(offset + sent)) as usize, &mut out[start..]);
                            if f.ddgst {
                                pdu::data_digest(out, start);
                            }
                            sent += n;
                        }
                        *moved += r2tl;
                    }
                    _ => return Err(bad(format!("R2T for command id {cccid}, which writes nothing"))),
                }
            }
        }
        Ok(())
    }
}

fn bad_digest(cid: u16) -> HostError {
    HostError::Transport(format!("data digest error in the data of command {cid}"))
}

fn io_status(s: Status) -> IoStatus {
    IoStatus::from_nvme(s.sct().code(), s.sc())
}
