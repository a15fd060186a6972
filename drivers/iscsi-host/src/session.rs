//! One iSCSI session of one connection, on the reactor that made it,
//! polled in that reactor's [`ClientGroup`] like every outgoing
//! connection: TCP connect, login ([`crate::login`]), then the full
//! feature phase.
//!
//! Commands take a task slot each (the ITT is the slot and a generation,
//! so a stale or invented tag is recognised) and a CmdSN, and go out while
//! the target's window (MaxCmdSN) is open; the rest wait in order. Writes
//! carry immediate data and unsolicited Data-Out as negotiated, then
//! answer each R2T with Data-Out PDUs of at most the target's
//! MaxRecvDataSegmentLength. With one R2T outstanding, data sequences in
//! order and no recovery (what we negotiate), each R2T must carry the next
//! R2TSN and ask for the bytes right after those already sent: a repeated
//! or out-of-order R2T drops the connection. A write completes as done
//! only if every byte went out and the target reports no residual; a read
//! only if every byte came in. Data-In is checked against what was asked
//! and lands in the request's buffers at its offset: a large data segment
//! is read from the socket straight into them (no copy through the
//! receive buffer), a small one is copied from it; status comes in the
//! last Data-In or a SCSI Response, with sense decoded. Bdev requests
//! larger than one command's transfer are split and completed together.
//!
//! Keep-alive: a NOP-Out after `nop_interval` without input, answered
//! within the command timeout; a target's NOP-In ping is answered.
//!
//! Recovery (error recovery level 0): a command past the command timeout
//! is aborted (ABORT TASK); if that goes unanswered the LUN is reset (LOGICAL
//! UNIT RESET); if that goes unanswered too the connection is dropped. The
//! timed-out command fails; others are sent again. A lost connection (the
//! target closed it, a malformed PDU, a digest error, an Async Message
//! asking us to leave) is reconnected on a back-off (session reinstatement:
//! the same ISID, TSIH 0), and every request outstanding is sent again
//! once logged in; requests that wait longer than the command timeout for
//! a connection fail.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_core::bdev::{BdevIo, IoStatus, IoType};
use pollux_core::sock::{self, Client, ClientGroup, Flushed, TxQueue};
use pollux_iscsi_spec::pdu::{self, BHS_LEN, Bhs, DIGEST_LEN, RESERVED_TAG, op};
use zerocopy::IntoBytes as _;

use crate::IscsiError;
use crate::login::{Login, LoginParams, Negotiated, Step};
use crate::scsi::{self, Cdb, Sense};

/// Largest read into the receive buffer.
const READ_CHUNK: usize = 256 * 1024;
/// Data-In segments at least this long, not yet all received, are read
/// from the socket straight into the command's buffer.
const DIRECT_MIN: usize = 8 * 1024;
/// After a large Data-In, this many PDUs are read header first.
const HEADER_FIRST: u8 = 8;
/// Reads per readiness visit before other connections get a turn.
const READ_BUDGET: usize = 16;
/// Task slots (commands outstanding at most, besides the window).
/// A login redirection's TargetAddress (its portal group tag already cut
/// off) as a socket address: an IPv4 or bracketed IPv6 address, with a
/// port or the default 3260. Names are refused: `getaddrinfo` on the
/// reactor stalled every bdev on it for the resolver's timeout.
fn redirect_address(to: &str) -> Option<SocketAddr> {
    if let Ok(a) = to.parse::<SocketAddr>() {
        return Some(a);
    }
    let host = to.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(to);
    host.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 3260))
}

const SLOTS: usize = 256;
/// Slots SCSI commands never take: what task management, a NOP-Out ping,
/// a Text or Logout request need when every command is outstanding (aborts
/// that took the last slots left the LUN reset and the ping none, so a
/// target that stopped answering commands hung the session for ever).
const RESERVED_SLOTS: usize = 4;
/// Resends of a command the target answered BUSY, TASK SET FULL or with a
/// UNIT ATTENTION, before its status stands.
const RETRIES: u8 = 5;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long a logout may take before the connection is just closed.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Output queued for a target that does not read it (its pings answered,
/// commands sent) beyond which the connection is dropped.
const MAX_BACKLOG: usize = 64 << 20;
/// Largest data segment taken from a target during login (RFC 7143's
/// default MaxRecvDataSegmentLength).
const LOGIN_MAX_DATA: usize = 8192;

/// Task management functions (RFC 7143 11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
}

/// How to build a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub addr: SocketAddr,
    pub login: LoginParams,
    pub lun: u16,
    /// TCP connect and login give up after this.
    pub connect_timeout: Duration,
    /// A command outstanding longer than this is aborted (None: no limit);
    /// requests wait this long for a lost connection to come back.
    pub cmd_timeout: Option<Duration>,
    /// A NOP-Out ping after this long without input (None: never).
    pub nop_interval: Option<Duration>,
    /// Reconnect after a lost connection (once logged in at least once).
    pub reconnect: bool,
    /// Reconnect even if the first login fails (a bdev's reactor sessions:
    /// the LUN was there when the bdev was made).
    pub persistent: bool,
}

impl SessionConfig {
    pub fn new(addr: SocketAddr, login: LoginParams, lun: u16) -> SessionConfig {
        SessionConfig {
            addr,
            login,
            lun,
            connect_timeout: Duration::from_secs(10),
            cmd_timeout: Some(Duration::from_secs(30)),
            nop_interval: Some(Duration::from_secs(10)),
            reconnect: true,
            persistent: false,
        }
    }
}

/// A SCSI command's outcome.
#[derive(Clone, Debug)]
pub struct ScsiResult {
    pub status: u8,
    pub sense: Option<Sense>,
    /// Data read (truncated to what came).
    pub data: Vec<u8>,
    /// Bytes of the transfer not done: the residual the target reported
    /// (underflow), or what did not move, whichever is larger. An
    /// allocation length larger than the answer leaves one; a block read
    /// or write with one is short.
    pub residual: u32,
}

impl ScsiResult {
    /// Good status, or an error naming the status and sense.
    pub fn ok(self) -> Result<ScsiResult, IscsiError> {
        if self.status == scsi::status::GOOD {
            return Ok(self);
        }
        Err(IscsiError::Scsi(describe(self.status, self.sense.as_ref())))
    }
}

fn describe(status: u8, sense: Option<&Sense>) -> String {
    match sense {
        Some(s) => format!("status {}: {s}", scsi::status_name(status)),
        None => format!("status {}", scsi::status_name(status)),
    }
}

pub type ScsiCb = Box<dyn FnOnce(Result<ScsiResult, IscsiError>)>;
pub type TextCb = Box<dyn FnOnce(Result<Vec<u8>, IscsiError>)>;
type LoginCb = Box<dyn FnOnce(Result<Negotiated, IscsiError>)>;
type DoneCb = Box<dyn FnOnce()>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Login,
    Ready,
    LoggingOut,
    /// Waiting to reconnect.
    Down,
    Closed,
}

/// Where a command's data lives.
enum Origin {
    /// A piece of a bdev request: the parent, and the piece's byte offset in it.
    Bdev { parent: u32, off: u64 },
    /// The session's own command: data to send or the buffer to fill.
    Own { buf: Vec<u8>, cb: ScsiCb },
}

/// A command not yet on the wire.
struct Pending {
    origin: Origin,
    cdb: Cdb,
    /// Bytes to move: out (write) or in (read).
    len: u32,
    write: bool,
    retries: u8,
    lun: u16,
    /// Data of the command's own (UNMAP's parameters, WRITE SAME's block).
    payload: Option<Vec<u8>>,
}

struct Task {
    p: Pending,
    cmd_sn: u32,
    /// Bytes moved so far: received, or sent (immediate and Data-Out),
    /// always a prefix of the transfer.
    moved: u32,
    /// The R2TSN the next R2T must carry.
    r2t_sn: u32,
    at: Instant,
    /// An ABORT TASK or LUN reset for it is out (since `at`).
    aborting: bool,
    /// Past its timeout: it fails, whatever comes.
    timed_out: bool,
}

enum Slot {
    Free,
    Scsi(Task),
    /// `io`: the bdev reset that asked for it.
    Tmf {
        func: u8,
        ref_itt: u32,
        at: Instant,
        io: Option<BdevIo>,
    },
    Nop {
        at: Instant,
    },
    Text {
        data: Vec<u8>,
        cb: TextCb,
        at: Instant,
    },
    Logout,
}

/// A bdev request split into `pending` commands.
/// A Data-In PDU whose header has been taken and checked, its data
/// segment arriving straight into the command's buffer.
struct Direct {
    h: Bhs,
    /// Where the next byte goes in the command's transfer.
    at: u32,
    /// Data bytes still to come.
    left: u32,
    /// Pad bytes and data digest after the data.
    tail: usize,
    /// CRC32C of the data so far (with data digests).
    crc: u32,
}

struct Parent {
    io: Option<BdevIo>,
    pending: u32,
    status: IoStatus,
}

enum Done {
    Io(BdevIo, IoStatus),
    Scsi(ScsiCb, Result<ScsiResult, IscsiError>),
    Text(TextCb, Result<Vec<u8>, IscsiError>),
    Login(LoginCb, Result<Negotiated, IscsiError>),
    Closed(DoneCb),
}

struct Conn {
    stream: TcpStream,
    token: u64,
    watching_write: bool,
}

/// One command of a bdev request: (byte offset in it, CDB, bytes, write,
/// payload of its own).
type Planned = (u64, Cdb, u32, bool, Option<Vec<u8>>);

struct State {
    cfg: SessionConfig,
    phase: Phase,
    conn: Option<Conn>,
    /// Received bytes not yet taken, and output not yet written, of the
    /// current connection.
    rx: Vec<u8>,
    rx_end: usize,
    /// A Data-In whose data segment is being read straight into its
    /// command's buffer (`rx` is empty meanwhile).
    direct: Option<Direct>,
    /// Data-In segments this long or longer may go direct ([`DIRECT_MIN`];
    /// less when fuzzing).
    direct_min: usize,
    /// PDUs still to be read header first (a read of the header alone,
    /// so that a large Data-In segment behind it goes direct rather than
    /// into `rx`): set after a large Data-In, counted down by others.
    header_first: u8,
    tx: TxQueue<Vec<u8>>,
    login: Option<Login>,
    neg: Option<Negotiated>,
    /// The commands a bdev request was split into, kept between requests
    /// (see `Session::submit`).
    plan_scratch: Vec<Planned>,
    /// Our TSIH-less ISID is `cfg.login.isid`; the TSIH of the session.
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    slots: Vec<Slot>,
    gens: Vec<u16>,
    free: Vec<u16>,
    waiting: VecDeque<Pending>,
    parents: Vec<Parent>,
    free_parents: Vec<u32>,
    done: Vec<Done>,
    on_login: Option<LoginCb>,
    on_closed: Option<DoneCb>,
    /// When the phase last changed (connect and login timeouts, the
    /// wait while down).
    since: Instant,
    last_rx: Instant,
    /// Added to the clock the state stamps its tasks with: zero, but for
    /// the fuzz harness's running clock.
    skew: Duration,
    /// Since when the session has had no logged-in connection (requests
    /// waiting longer than the command timeout fail).
    down_since: Option<Instant>,
    /// Since when commands have waited behind a closed command window
    /// (MaxCmdSN below the next CmdSN).
    closed_since: Option<Instant>,
    /// Next reconnection attempt, and the back-off.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Logged in at least once (reconnects are allowed).
    was_up: bool,
    error: Option<IscsiError>,
    redirects: u8,
    /// The address to connect to (a redirection changes it for one login).
    target_addr: SocketAddr,
    max_command: u32,
    /// What the session did (for tests and `bdev_get_bdevs`).
    pub stats: SessionStats,
}

/// Counters of what a session did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub logins: u64,
    pub connection_losses: u64,
    pub aborts: u64,
    pub lun_resets: u64,
    pub resent: u64,
}

pub struct Session {
    group: Rc<ClientGroup<Session>>,
    /// The group's token for this session and each of its connections.
    token: u64,
    st: RefCell<State>,
    /// Held while logging out (the owner may have let go already).
    keep: RefCell<Option<Rc<Session>>>,
}

fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < (1 << 31)
}

fn serial_le(a: u32, b: u32) -> bool {
    a == b || serial_lt(a, b)
}

impl Session {
    /// Start a session on this reactor: connect and log in; `on_login`
    /// hears how the first login went (a failed first login closes the
    /// session: nothing reconnects a session that never worked).
    pub fn start(cfg: SessionConfig, on_login: impl FnOnce(Result<Negotiated, IscsiError>) + 'static) -> Result<Rc<Session>, IscsiError> {
        let group = ClientGroup::get("iscsi_host_poll_group").map_err(|e| IscsiError::Connect(cfg.addr.to_string(), e.to_string()))?;
        let st = State::new(cfg, Box::new(on_login));
        let token = group.next_token();
        let s = Rc::new(Session { group, token, st: RefCell::new(st), keep: RefCell::new(None) });
        s.group.track(&s, token);
        s.connect()?;
        Ok(s)
    }

    pub fn phase(&self) -> Phase {
        self.st.borrow().phase
    }

    pub fn negotiated(&self) -> Option<Negotiated> {
        self.st.borrow().neg.clone()
    }

    pub fn stats(&self) -> SessionStats {
        self.st.borrow().stats
    }

    /// Why the session last lost its connection, or failed.
    pub fn error(&self) -> Option<IscsiError> {
        self.st.borrow().error.clone()
    }

    /// The largest transfer of one command (bdev requests are split to it).
    pub fn set_max_command(&self, bytes: u32) {
        self.st.borrow_mut().max_command = bytes.max(512);
    }

    fn connect(self: &Rc<Self>) -> Result<(), IscsiError> {
        let addr = self.st.borrow().target_addr;
        let stream = sock::connect_start(addr, None).map_err(|e| IscsiError::Connect(addr.to_string(), e.to_string()))?;
        let token = self.token;
        self.group.add_fd(stream.as_raw_fd(), token).map_err(|e| IscsiError::Connect(addr.to_string(), e.to_string()))?;
        let mut st = self.st.borrow_mut();
        st.conn = Some(Conn { stream, token, watching_write: true });
        st.rx_end = 0;
        st.tx.clear();
        st.phase = Phase::Connecting;
        st.since = Instant::now();
        st.retry_at = None;
        Ok(())
    }

    /// Submit a bdev request (read, write, flush, unmap, write zeroes, reset).
    pub fn submit(&self, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Closed {
            drop(st);
            return io.complete(IoStatus::NoDevice);
        }
        if io.kind() == IoType::Reset {
            drop(st);
            return self.reset_lun(io);
        }
        // Planned into a list the session keeps, so that a request
        // allocates nothing once the list has grown to its largest plan.
        let mut pieces = std::mem::take(&mut st.plan_scratch);
        st.plan(&io, &mut pieces);
        let lun = st.cfg.lun;
        let n = pieces.len() as u32;
        let parent = Parent { io: Some(io), pending: n, status: IoStatus::Success };
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
        for (off, cdb, len, write, payload) in pieces.drain(..) {
            st.waiting.push_back(Pending { origin: Origin::Bdev { parent: p, off }, cdb, len, write, retries: 0, payload, lun });
        }
        st.plan_scratch = pieces;
        let issue = st.phase == Phase::Ready;
        drop(st);
        if issue {
            self.issue();
        }
    }

    /// Submit a command of the session's own: `data_out` is sent (a
    /// write), or `read_len` bytes are read.
    pub fn command(&self, cdb: Cdb, data_out: Vec<u8>, read_len: u32, cb: ScsiCb) {
        let lun = self.st.borrow().cfg.lun;
        self.command_lun(lun, cdb, data_out, read_len, cb)
    }

    /// [`Session::command`] to another LUN of the target.
    pub fn command_lun(&self, lun: u16, cdb: Cdb, data_out: Vec<u8>, read_len: u32, cb: ScsiCb) {
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Closed {
            let e = st.error.clone().unwrap_or(IscsiError::Closed);
            drop(st);
            return cb(Err(e));
        }
        let write = !data_out.is_empty();
        let (len, buf) = if write { (data_out.len() as u32, data_out) } else { (read_len, vec![0; read_len as usize]) };
        st.waiting.push_back(Pending { origin: Origin::Own { buf, cb }, cdb, len, write, retries: 0, payload: None, lun });
        let issue = st.phase == Phase::Ready;
        drop(st);
        if issue {
            self.issue();
        }
    }

    /// A Text Request (discovery's SendTargets): the whole answer, with
    /// continued responses gathered.
    pub fn text(&self, keys: Vec<u8>, cb: TextCb) {
        let mut st = self.st.borrow_mut();
        if st.phase != Phase::Ready {
            let e = st.error.clone().unwrap_or(IscsiError::Closed);
            drop(st);
            return cb(Err(e));
        }
        let Some(i) = st.take_slot() else {
            drop(st);
            return cb(Err(IscsiError::Transport("no free task slot".into())));
        };
        let itt = st.itt(i);
        st.send_text(itt, RESERVED_TAG, &keys);
        st.slots[i as usize] = Slot::Text { data: Vec::new(), cb, at: Instant::now() };
        drop(st);
        self.kick();
    }

    /// Reset the LUN (a bdev reset): LOGICAL UNIT RESET, then the commands
    /// it ended are sent again.
    fn reset_lun(&self, io: BdevIo) {
        let refused = {
            let mut st = self.st.borrow_mut();
            if st.phase != Phase::Ready {
                Some(io)
            } else {
                st.send_tmf(tmf::LOGICAL_UNIT_RESET, RESERVED_TAG, 0, Some(io)).err().flatten()
            }
        };
        match refused {
            Some(io) => io.complete(IoStatus::Failed),
            None => self.kick(),
        }
    }

    /// Log out and close; `done` runs once the connection is gone. Every
    /// request still here fails.
    pub fn close(self: &Rc<Self>, done: impl FnOnce() + 'static) {
        let logout = {
            let mut st = self.st.borrow_mut();
            match st.phase {
                Phase::Closed => {
                    drop(st);
                    return done();
                }
                Phase::LoggingOut => {
                    let prev = st.on_closed.take();
                    st.on_closed = Some(Box::new(move || {
                        if let Some(p) = prev {
                            p();
                        }
                        done();
                    }));
                    return;
                }
                Phase::Ready => {
                    st.on_closed = Some(Box::new(done));
                    st.cfg.reconnect = false;
                    // Outstanding work fails; the logout goes out alone.
                    let mut d = st.fail_all(IscsiError::Closed);
                    st.done.append(&mut d);
                    st.send_logout()
                }
                _ => {
                    st.on_closed = Some(Box::new(done));
                    false
                }
            }
        };
        if logout {
            *self.keep.borrow_mut() = Some(self.clone());
            self.kick();
            self.run_done();
        } else {
            self.end(IscsiError::Closed);
        }
    }

    fn kick(&self) {
        if let Some(t) = self.st.borrow().conn.as_ref().map(|c| c.token) {
            self.group.mark_dirty(t);
        }
    }

    fn write_now(&self) {
        let r = {
            let mut st = self.st.borrow_mut();
            let addr = st.target_addr;
            if matches!(st.phase, Phase::Connecting) {
                return;
            }
            let st = &mut *st;
            let Some(c) = st.conn.as_mut() else { return };
            match st.tx.flush(&c.stream) {
                Ok(Flushed::All) => {
                    if c.watching_write {
                        c.watching_write = false;
                        let _ = self.group.watch(c.stream.as_raw_fd(), c.token, true, false);
                    }
                    Ok(())
                }
                Ok(Flushed::Blocked) => {
                    if !c.watching_write {
                        c.watching_write = true;
                        let _ = self.group.watch(c.stream.as_raw_fd(), c.token, true, true);
                    }
                    Ok(())
                }
                Err(e) => Err(IscsiError::Transport(format!("sending to {addr}: {e}"))),
            }
        };
        if let Err(e) = r {
            self.lost(e);
        }
    }

    fn connected(self: &Rc<Self>) {
        let r = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let c = st.conn.as_mut().expect("connecting");
            match sock::connect_result(&c.stream) {
                Ok(()) => {
                    let _ = self.group.watch(c.stream.as_raw_fd(), c.token, true, false);
                    c.watching_write = false;
                    let mut p = st.cfg.login.clone();
                    // Session reinstatement: the same ISID, a new session.
                    p.tsih = 0;
                    let mut l = Login::new(p, 0, st.cmd_sn);
                    let first = l.start();
                    st.tx.bytes().extend_from_slice(&first);
                    st.login = Some(l);
                    st.phase = Phase::Login;
                    Ok(())
                }
                Err(e) => Err(IscsiError::Connect(st.target_addr.to_string(), e.to_string())),
            }
        };
        match r {
            Ok(()) => self.write_now(),
            Err(e) => self.lost(e),
        }
    }

    fn on_readable(self: &Rc<Self>) {
        for _ in 0..READ_BUDGET {
            let r = {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                let addr = st.target_addr;
                let Some(c) = st.conn.take() else { return };
                let got = st.recv_buf().map(|buf| (&c.stream).read(buf));
                st.conn = Some(c);
                match got {
                    Err(e) => Err(e),
                    Ok(Ok(0)) => Err(IscsiError::Transport(format!("{addr} closed the connection"))),
                    Ok(Ok(n)) => {
                        st.received(n);
                        st.last_rx = Instant::now();
                        Ok(())
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                    Ok(Err(e)) => Err(IscsiError::Transport(format!("receiving from {addr}: {e}"))),
                }
            };
            if let Err(e) = r.and_then(|_| self.process()) {
                return self.lost(e);
            }
            if self.st.borrow().conn.is_none() {
                return;
            }
        }
        if let Some(t) = self.st.borrow().conn.as_ref().map(|c| c.token) {
            self.group.again(t);
        }
    }

    /// Handle every whole PDU received, then run what they completed.
    fn process(self: &Rc<Self>) -> Result<(), IscsiError> {
        loop {
            let step = self.st.borrow_mut().consume()?;
            match step {
                // Input after the last login response is full feature phase.
                Some(s) => self.login_step(s)?,
                None => break,
            }
        }
        self.issue();
        self.run_done();
        Ok(())
    }

    fn login_step(self: &Rc<Self>, s: Step) -> Result<(), IscsiError> {
        match s {
            Step::Send(pdu) => {
                self.st.borrow_mut().tx.bytes().extend_from_slice(&pdu);
                self.kick();
                Ok(())
            }
            Step::Redirect(to) => {
                let addr = {
                    let mut st = self.st.borrow_mut();
                    st.redirects += 1;
                    if st.redirects > 4 {
                        return Err(IscsiError::Login("more than 4 redirections".into()));
                    }
                    let a = redirect_address(&to).ok_or_else(|| {
                        IscsiError::Login(format!(
                            "redirected to {to:?}: Pollux takes a numeric address there (a name would be resolved on the reactor, blocking it)"
                        ))
                    })?;
                    st.target_addr = a;
                    st.drop_conn(&self.group);
                    a
                };
                tracing::info!("iscsi initiator: redirected to {addr}");
                self.connect()
            }
            Step::Done(neg) => {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                tracing::info!(
                    "iscsi initiator: logged in to {} at {} (TSIH {}, digests header {} data {})",
                    st.cfg.login.target_name.as_deref().unwrap_or("discovery"),
                    st.target_addr,
                    neg.tsih,
                    neg.header_digest,
                    neg.data_digest
                );
                st.exp_stat_sn = neg.stat_sn.wrapping_add(1);
                st.exp_cmd_sn = neg.exp_cmd_sn;
                st.max_cmd_sn = neg.max_cmd_sn;
                st.cmd_sn = neg.exp_cmd_sn;
                st.phase = Phase::Ready;
                st.login = None;
                st.was_up = true;
                st.redirects = 0;
                st.target_addr = st.cfg.addr;
                st.backoff = Duration::from_millis(250);
                st.stats.logins += 1;
                st.last_rx = Instant::now();
                st.down_since = None;
                if let Some(cb) = st.on_login.take() {
                    st.done.push(Done::Login(cb, Ok(neg.clone())));
                }
                st.neg = Some(neg);
                Ok(())
            }
        }
    }

    /// Give waiting commands slots and CmdSNs while the window is open.
    fn issue(&self) {
        let any = {
            let mut st = self.st.borrow_mut();
            st.issue_waiting() || (st.conn.is_some() && !st.tx.is_empty())
        };
        if any {
            self.kick();
        }
    }

    fn run_done(&self) {
        let mut done = std::mem::take(&mut self.st.borrow_mut().done);
        for d in done.drain(..) {
            match d {
                Done::Io(io, s) => io.complete(s),
                Done::Scsi(cb, r) => cb(r),
                Done::Text(cb, r) => cb(r),
                Done::Login(cb, r) => cb(r),
                Done::Closed(cb) => cb(),
            }
        }
        let mut st = self.st.borrow_mut();
        if st.done.is_empty() {
            st.done = done;
        }
    }

    /// The connection failed: drop it, then reconnect or close.
    fn lost(&self, e: IscsiError) {
        let closing = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if matches!(st.phase, Phase::Closed | Phase::Down) {
                return;
            }
            let logging_out = st.phase == Phase::LoggingOut;
            if !logging_out {
                tracing::warn!("iscsi initiator: {}: {e}", st.target_addr);
            }
            st.error = Some(e.clone());
            st.drop_conn(&self.group);
            st.stats.connection_losses += 1;
            if st.cfg.reconnect && (st.was_up || st.cfg.persistent) && !logging_out {
                st.down_since.get_or_insert_with(Instant::now);
                st.requeue_all();
                st.phase = Phase::Down;
                st.since = Instant::now();
                st.retry_at = Some(Instant::now() + st.backoff);
                st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                false
            } else {
                true
            }
        };
        if closing {
            self.end(e);
        }
    }

    /// Close for good: everything left fails with `e`.
    fn end(&self, e: IscsiError) {
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if st.phase != Phase::Closed {
                st.drop_conn(&self.group);
                st.phase = Phase::Closed;
                let mut d = st.fail_all(e.clone());
                st.done.append(&mut d);
                if let Some(cb) = st.on_login.take() {
                    st.done.push(Done::Login(cb, Err(e)));
                }
                if let Some(cb) = st.on_closed.take() {
                    st.done.push(Done::Closed(cb));
                }
            }
        }
        self.run_done();
        self.keep.borrow_mut().take();
    }

    fn timers(self: &Rc<Self>, now: Instant) {
        enum Act {
            None,
            Lost(IscsiError),
            Reconnect,
            Close,
        }
        let act = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            match st.phase {
                Phase::Closed => Act::None,
                Phase::Connecting | Phase::Login if now.duration_since(st.since) > st.cfg.connect_timeout => {
                    Act::Lost(IscsiError::Timeout(format!("logging in to {} took over {:?}", st.target_addr, st.cfg.connect_timeout)))
                }
                Phase::Connecting | Phase::Login => {
                    st.fail_late(now);
                    Act::None
                }
                Phase::LoggingOut if now.duration_since(st.since) > LOGOUT_TIMEOUT => Act::Close,
                Phase::LoggingOut => Act::None,
                Phase::Down => {
                    st.fail_late(now);
                    if st.retry_at.is_some_and(|at| now >= at) { Act::Reconnect } else { Act::None }
                }
                Phase::Ready => match st.check_ready(now) {
                    Some(e) => Act::Lost(e),
                    None => Act::None,
                },
            }
        };
        match act {
            Act::None => {}
            Act::Lost(e) => self.lost(e),
            Act::Close => self.end(IscsiError::Closed),
            Act::Reconnect => {
                tracing::info!("iscsi initiator: reconnecting to {}", self.st.borrow().cfg.addr);
                if let Err(e) = self.connect() {
                    let mut st = self.st.borrow_mut();
                    st.phase = Phase::Down;
                    st.retry_at = Some(Instant::now() + st.backoff);
                    st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                    st.error = Some(e);
                }
            }
        }
        self.kick();
        self.run_done();
    }
}

impl Client for Session {
    fn on_event(self: &Rc<Self>, readable: bool, writable: bool, hangup: bool) {
        let phase = self.st.borrow().phase;
        match phase {
            Phase::Closed | Phase::Down => {}
            Phase::Connecting => {
                if writable || hangup {
                    self.connected();
                }
            }
            _ => {
                if readable || hangup {
                    self.on_readable();
                }
                if writable {
                    self.write_now();
                }
            }
        }
    }

    fn flush(self: &Rc<Self>) {
        self.write_now();
    }

    fn check_timeouts(self: &Rc<Self>, now: Instant) {
        self.timers(now);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        if let Some(c) = st.conn.take() {
            self.group.remove_fd(c.stream.as_raw_fd());
        }
        self.group.untrack(self.token);
    }
}

impl State {
    fn new(cfg: SessionConfig, on_login: LoginCb) -> State {
        let now = Instant::now();
        State {
            phase: Phase::Down,
            conn: None,
            rx: vec![0; 64 * 1024],
            rx_end: 0,
            direct: None,
            direct_min: DIRECT_MIN,
            header_first: 0,
            tx: TxQueue::with_capacity(64 * 1024),
            login: None,
            neg: None,
            plan_scratch: Vec::new(),
            cmd_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            exp_stat_sn: 0,
            slots: (0..SLOTS).map(|_| Slot::Free).collect(),
            gens: vec![0; SLOTS],
            free: (0..SLOTS as u16).rev().collect(),
            waiting: VecDeque::with_capacity(SLOTS),
            parents: Vec::with_capacity(SLOTS),
            free_parents: Vec::new(),
            done: Vec::with_capacity(SLOTS),
            on_login: Some(on_login),
            on_closed: None,
            since: now,
            last_rx: now,
            skew: Duration::ZERO,
            down_since: Some(now),
            closed_since: None,
            retry_at: None,
            backoff: Duration::from_millis(250),
            was_up: false,
            error: None,
            redirects: 0,
            target_addr: cfg.addr,
            max_command: 1024 * 1024,
            stats: SessionStats::default(),
            cfg,
        }
    }

    fn itt(&self, slot: u16) -> u32 {
        (u32::from(self.gens[slot as usize]) << 16) | u32::from(slot)
    }

    /// The slot of a task tag, if it names a live task.
    fn slot_of(&self, itt: u32) -> Option<usize> {
        let i = (itt & 0xffff) as usize;
        (itt != RESERVED_TAG && i < self.slots.len() && u32::from(self.gens[i]) == itt >> 16 && !matches!(self.slots[i], Slot::Free))
            .then_some(i)
    }

    fn take_slot(&mut self) -> Option<u16> {
        self.free.pop()
    }

    fn free_slot(&mut self, i: usize) {
        self.slots[i] = Slot::Free;
        self.gens[i] = self.gens[i].wrapping_add(1) & 0x7fff;
        self.free.push(i as u16);
    }

    fn framing(&self) -> (bool, bool) {
        match (&self.neg, self.phase) {
            (Some(n), Phase::Ready | Phase::LoggingOut) => (n.header_digest, n.data_digest),
            _ => (false, false),
        }
    }

    fn max_recv(&self) -> usize {
        match (&self.neg, self.phase) {
            (Some(n), Phase::Ready | Phase::LoggingOut) => n.max_recv_data_segment as usize,
            _ => LOGIN_MAX_DATA.max(self.cfg.login.max_recv_data_segment as usize),
        }
    }

    fn max_pdu(&self) -> usize {
        BHS_LEN + 255 * 4 + 2 * DIGEST_LEN + self.max_recv() + 4
    }

    /// Where the next received bytes go: the free end of `rx` or, while a
    /// Data-In segment is read straight into its command's buffer, the
    /// rest of that segment's piece of the buffer.
    fn recv_buf(&mut self) -> Result<&mut [u8], IscsiError> {
        if self.direct.as_ref().is_some_and(|d| d.left > 0) {
            return Ok(self.direct_dest());
        }
        if self.header_first > 0 {
            // Just the rest of the next header (the BHS, and its digest),
            // if that is not here yet.
            let hlen = BHS_LEN + if self.framing().0 { DIGEST_LEN } else { 0 };
            if self.rx_end < hlen && self.rx.len() >= hlen {
                let end = self.rx_end;
                return Ok(&mut self.rx[end..hlen]);
            }
        }
        let max = self.max_pdu();
        if self.rx.len() - self.rx_end < 4096 {
            let want = (self.rx_end + READ_CHUNK).min(max.max(READ_CHUNK));
            if want > self.rx.len() {
                self.rx.resize(want, 0);
            }
        }
        if self.rx_end == self.rx.len() {
            return Err(IscsiError::Protocol("receive buffer full without a whole PDU".into()));
        }
        let end = self.rx_end;
        Ok(&mut self.rx[end..])
    }

    /// `n` bytes arrived in [`State::recv_buf`].
    fn received(&mut self, n: usize) {
        if self.direct.as_ref().is_some_and(|d| d.left > 0) {
            let dd = self.framing().1;
            let crc = if dd { crc32c::crc32c_append(self.direct.as_ref().map_or(0, |d| d.crc), &self.direct_dest()[..n]) } else { 0 };
            let d = self.direct.as_mut().expect("direct");
            d.crc = crc;
            d.at += n as u32;
            d.left -= n as u32;
        } else {
            self.rx_end += n;
        }
    }

    /// The rest of the buffer piece where the direct Data-In's next byte
    /// goes, at most what is left of its segment. If the command is gone
    /// (it cannot be while its data streams in, but a slot is never
    /// trusted), the bytes go to `rx`, which is empty meanwhile, and are
    /// dropped.
    fn direct_dest(&mut self) -> &mut [u8] {
        let Some(d) = self.direct.as_ref() else { return &mut [] };
        let (at, left) = (d.at as usize, d.left as usize);
        let slot = self.slot_of(d.h.itt());
        let piece: Option<&mut [u8]> = match slot.map(|i| &mut self.slots[i]) {
            Some(Slot::Scsi(t)) => match &mut t.p.origin {
                Origin::Own { buf, .. } => buf.get_mut(at..),
                Origin::Bdev { parent, off } => match self.parents[*parent as usize].io.as_mut() {
                    Some(io) => {
                        let mut at = *off as usize + at;
                        let mut found = None;
                        for b in io.buffers_mut() {
                            if at < b.len() {
                                found = Some(&mut b[at..]);
                                break;
                            }
                            at -= b.len();
                        }
                        found
                    }
                    None => None,
                },
            },
            _ => None,
        };
        match piece {
            Some(p) if !p.is_empty() => {
                let n = p.len().min(left);
                &mut p[..n]
            }
            _ => {
                let n = self.rx.len().min(left);
                &mut self.rx[..n]
            }
        }
    }

    /// One PDU at the front of `b`: its header, where its data is and how
    /// long, and its whole length; None if it is not all here.
    #[allow(clippy::type_complexity)]
    fn frame(&self, b: &[u8]) -> Result<Option<(Bhs, usize, usize, usize)>, IscsiError> {
        if b.len() < BHS_LEN {
            return Ok(None);
        }
        let h = Bhs::parse(b).expect("48 bytes");
        let (hd, dd) = self.framing();
        let dlen = h.data_len();
        if dlen > self.max_recv() {
            return Err(IscsiError::Protocol(format!(
                "a PDU (opcode {:#04x}) with a {dlen}-byte data segment, over our MaxRecvDataSegmentLength {}",
                h.opcode(),
                self.max_recv()
            )));
        }
        let hlen = BHS_LEN + h.ahs_len();
        let data_at = hlen + if hd { DIGEST_LEN } else { 0 };
        let padded = dlen + pdu::pad(dlen);
        let total = data_at + padded + if dd && dlen > 0 { DIGEST_LEN } else { 0 };
        if b.len() < total {
            return Ok(None);
        }
        if hd {
            let want = u32::from_le_bytes(b[hlen..hlen + 4].try_into().expect("4"));
            if pdu::digest(&[&b[..hlen]]) != want {
                return Err(IscsiError::Protocol(format!("header digest error (opcode {:#04x})", h.opcode())));
            }
        }
        if dd && dlen > 0 {
            let at = data_at + padded;
            let want = u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
            if pdu::digest(&[&b[data_at..at]]) != want {
                return Err(IscsiError::Protocol(format!("data digest error (opcode {:#04x}, ITT {:#x})", h.opcode(), h.itt())));
            }
        }
        Ok(Some((h, data_at, dlen, total)))
    }

    /// Take every whole PDU received; stop after one that ends a login
    /// step (the caller acts on it, then calls again).
    fn consume(&mut self) -> Result<Option<Step>, IscsiError> {
        let rx = std::mem::take(&mut self.rx);
        let end = self.rx_end;
        let mut pos = 0;
        let mut res = Ok(None);
        if let Some(d) = self.direct.as_ref() {
            if d.left > 0 || end < d.tail {
                self.rx = rx;
                return Ok(None);
            }
            let d = self.direct.take().expect("direct");
            pos = d.tail;
            if let Err(e) = self.direct_end(d, &rx[..pos]) {
                self.rx = rx;
                return Err(e);
            }
        }
        while pos < end {
            match self.frame(&rx[pos..end]) {
                Ok(None) => break,
                Ok(Some((h, data_at, data_len, n))) => {
                    let data = &rx[pos + data_at..pos + data_at + data_len];
                    pos += n;
                    self.note_pdu(&h);
                    if self.phase == Phase::Login {
                        match self.login_pdu(&h, data) {
                            Ok(None) => {}
                            other => {
                                res = other;
                                break;
                            }
                        }
                    } else if let Err(e) = self.handle(&h, data) {
                        res = Err(e);
                        break;
                    }
                    if self.tx.len() > MAX_BACKLOG {
                        res = Err(IscsiError::Protocol(format!("the target left over {} MiB of our output unread", MAX_BACKLOG >> 20)));
                        break;
                    }
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if matches!(res, Ok(None)) && pos < end {
            match self.direct_start(&rx[pos..end]) {
                Ok(true) => pos = end,
                Ok(false) => {}
                Err(e) => res = Err(e),
            }
        }
        let mut rx = rx;
        rx.copy_within(pos..end, 0);
        self.rx_end = end - pos;
        self.rx = rx;
        res
    }

    /// Count a PDU received towards reading header first: on after a
    /// large Data-In, off after `HEADER_FIRST` other PDUs in a row.
    fn note_pdu(&mut self, h: &Bhs) {
        if h.opcode() == op::DATA_IN && h.data_len() >= self.direct_min {
            self.header_first = HEADER_FIRST;
        } else {
            self.header_first = self.header_first.saturating_sub(1);
        }
    }

    /// If `b` (what is left of the input, less than a whole PDU) starts
    /// with a large Data-In whose data has not all arrived: check its
    /// header, put the data that did arrive in place, and take the rest
    /// straight from the socket (true: `b` is all taken).
    fn direct_start(&mut self, b: &[u8]) -> Result<bool, IscsiError> {
        if self.phase != Phase::Ready || b.len() < BHS_LEN || b[0] & 0x3f != op::DATA_IN {
            return Ok(false);
        }
        let h = Bhs::parse(b).expect("48 bytes");
        let (hd, dd) = self.framing();
        let hlen = BHS_LEN + h.ahs_len();
        let data_at = hlen + if hd { DIGEST_LEN } else { 0 };
        let dlen = h.data_len();
        if dlen < self.direct_min || b.len() < data_at || b.len() - data_at >= dlen {
            return Ok(false);
        }
        if hd {
            let want = u32::from_le_bytes(b[hlen..hlen + 4].try_into().expect("4"));
            if pdu::digest(&[&b[..hlen]]) != want {
                return Err(IscsiError::Protocol(format!("header digest error (opcode {:#04x})", h.opcode())));
            }
        }
        self.note_pdu(&h);
        self.window(&h);
        let i = self.data_in_check(&h, dlen)?;
        let data = &b[data_at..];
        self.data_in_put(i, h.w40.get(), data);
        let tail = pdu::pad(dlen) + if dd { DIGEST_LEN } else { 0 };
        let crc = if dd { pdu::digest(&[data]) } else { 0 };
        let n = data.len() as u32;
        self.direct = Some(Direct { h, at: h.w40.get() + n, left: dlen as u32 - n, tail, crc });
        Ok(true)
    }

    /// The direct Data-In's data is all in; `tail` is its padding and data
    /// digest: check them, then take the PDU's status.
    fn direct_end(&mut self, d: Direct, tail: &[u8]) -> Result<(), IscsiError> {
        let pad = pdu::pad(d.h.data_len());
        if self.framing().1 {
            let crc = crc32c::crc32c_append(d.crc, &tail[..pad]);
            let want = u32::from_le_bytes(tail[pad..pad + 4].try_into().expect("4"));
            if crc != want {
                return Err(IscsiError::Protocol(format!("data digest error (opcode {:#04x}, ITT {:#x})", d.h.opcode(), d.h.itt())));
            }
        }
        let i = self.slot_of(d.h.itt()).ok_or_else(|| IscsiError::Protocol("a Data-In's command went away during its data".into()))?;
        self.data_in_end(&d.h, i, d.h.data_len())
    }

    fn login_pdu(&mut self, h: &Bhs, data: &[u8]) -> Result<Option<Step>, IscsiError> {
        let l = self.login.as_mut().ok_or_else(|| IscsiError::Protocol("login response outside a login".into()))?;
        l.on_response(h, data).map(Some)
    }

    /// Split a bdev request into commands, into `out` (empty): (byte
    /// offset, CDB, bytes, write, payload).
    fn plan(&self, io: &BdevIo, out: &mut Vec<Planned>) {
        debug_assert!(out.is_empty());
        let bs = u64::from(io.block_size());
        let lba = io.offset_blocks();
        let blocks = io.num_blocks();
        match io.kind() {
            IoType::Read | IoType::Write => {
                let per = (u64::from(self.max_command) / bs).max(1);
                let mut done = 0;
                while done < blocks {
                    let n = per.min(blocks - done);
                    let write = io.kind() == IoType::Write;
                    let cdb = if write { scsi::write(lba + done, n as u32, false) } else { scsi::read(lba + done, n as u32) };
                    out.push((done * bs, cdb, (n * bs) as u32, write, None));
                    done += n;
                }
            }
            IoType::Flush => out.push((0, scsi::synchronize_cache(0, 0), 0, false, None)),
            IoType::WriteZeroes => {
                // WRITE SAME(16) of one zeroed block, up to 65535 blocks a command.
                let mut done = 0;
                while done < blocks {
                    let n = 65535.min(blocks - done);
                    out.push((done * bs, scsi::write_same16(lba + done, n as u32, false), bs as u32, true, Some(vec![0; bs as usize])));
                    done += n;
                }
            }
            IoType::Unmap => {
                let mut done = 0;
                while done < blocks {
                    let n = u64::from(u32::MAX).min(blocks - done);
                    let params = scsi::unmap_parameters(&[(lba + done, n as u32)]);
                    out.push((done * bs, scsi::unmap(params.len() as u16), params.len() as u32, true, Some(params)));
                    done += n;
                }
            }
            IoType::Compare | IoType::Reset => {}
        }
    }

    fn issue_waiting(&mut self) -> bool {
        if self.phase != Phase::Ready {
            return false;
        }
        let mut any = false;
        while !self.waiting.is_empty() && self.free.len() > RESERVED_SLOTS && serial_le(self.cmd_sn, self.max_cmd_sn) {
            let p = self.waiting.pop_front().expect("checked");
            let slot = self.take_slot().expect("checked");
            let itt = self.itt(slot);
            let cmd_sn = self.cmd_sn;
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
            let mut t = Task { p, cmd_sn, moved: 0, r2t_sn: 0, at: self.now(), aborting: false, timed_out: false };
            self.send_command(itt, &mut t);
            self.slots[slot as usize] = Slot::Scsi(t);
            any = true;
        }
        any
    }

    /// Copy a write's data at `at` into `out`.
    fn data_out(&self, t: &Task, at: u32, out: &mut [u8]) {
        let at = at as usize;
        if let Some(p) = &t.p.payload {
            return out.copy_from_slice(&p[at..at + out.len()]);
        }
        match &t.p.origin {
            Origin::Bdev { parent, off } => match self.parents[*parent as usize].io.as_ref() {
                Some(io) => io.copy_out(*off as usize + at, out),
                None => out.fill(0),
            },
            Origin::Own { buf, .. } => out.copy_from_slice(&buf[at..at + out.len()]),
        }
    }

    fn push_pdu(&mut self, h: &Bhs, data_len: usize, fill: impl FnOnce(&Self, &mut [u8])) {
        let (hd, dd) = self.framing();
        let mut tx = std::mem::take(&mut self.tx);
        {
            let out = tx.bytes();
            let start = out.len();
            out.extend_from_slice(h.as_bytes());
            if hd {
                let d = pdu::digest(&[&out[start..]]);
                out.extend_from_slice(&d.to_le_bytes());
            }
            if data_len > 0 {
                let at = out.len();
                out.resize(at + data_len + pdu::pad(data_len), 0);
                fill(self, &mut out[at..at + data_len]);
                if dd {
                    let d = pdu::digest(&[&out[at..]]);
                    out.extend_from_slice(&d.to_le_bytes());
                }
            }
        }
        self.tx = tx;
    }

    fn lun_field(&self) -> [u8; 8] {
        scsi::encode_lun(self.cfg.lun)
    }

    fn send_command(&mut self, itt: u32, t: &mut Task) {
        // Borrowed, not cloned: its target alias is a String, and a clone
        // would allocate per command.
        let neg = self.neg.as_ref().expect("logged in");
        let write = t.p.write;
        let len = t.p.len;
        let read = !write && len > 0;
        // Immediate data, then unsolicited Data-Out up to FirstBurstLength.
        let first = if write && !neg.initial_r2t { neg.first_burst.min(len) } else { 0 };
        let imm = if write && neg.immediate_data { neg.first_burst.min(neg.max_send_data_segment).min(len) } else { 0 };
        let unsolicited = first > imm;
        let mut flags = 0x01; // simple task attribute
        if !unsolicited {
            flags |= 0x80;
        }
        if read {
            flags |= 0x40;
        }
        if write {
            flags |= 0x20;
        }
        let mut h = Bhs::new(op::SCSI_CMD, flags);
        h.set_data_len(imm as usize);
        h.lun = scsi::encode_lun(t.p.lun);
        h.itt.set(itt);
        h.w20.set(len);
        h.w24.set(t.cmd_sn);
        h.w28.set(self.exp_stat_sn);
        h.set_cdb_area(&t.p.cdb.bytes);
        self.push_pdu(&h, imm as usize, |st, out| st.data_out(t, 0, out));
        t.moved = imm;
        if unsolicited {
            self.send_data_out(itt, RESERVED_TAG, t, imm, first - imm);
        }
    }

    /// Data-Out PDUs for `n` bytes at `at` (one sequence).
    fn send_data_out(&mut self, itt: u32, ttt: u32, t: &mut Task, at: u32, n: u32) {
        let max = self.neg.as_ref().map_or(8192, |x| x.max_send_data_segment).max(512);
        let mut sent = 0;
        let mut data_sn = 0;
        while sent < n {
            let k = (n - sent).min(max);
            let last = sent + k == n;
            let mut h = Bhs::new(op::DATA_OUT, if last { 0x80 } else { 0 });
            h.set_data_len(k as usize);
            h.lun = scsi::encode_lun(t.p.lun);
            h.itt.set(itt);
            h.w20.set(ttt);
            h.w28.set(self.exp_stat_sn);
            h.w36.set(data_sn);
            h.w40.set(at + sent);
            let off = at + sent;
            self.push_pdu(&h, k as usize, |st, out| st.data_out(t, off, out));
            sent += k;
            data_sn += 1;
        }
        // Only a prefix counts: bytes past a gap were not asked for in
        // order (R2Ts are checked to follow on; unsolicited data does).
        if at <= t.moved {
            t.moved = t.moved.max(at + n);
        }
    }

    fn send_tmf(&mut self, func: u8, ref_itt: u32, ref_cmd_sn: u32, io: Option<BdevIo>) -> Result<(), Option<BdevIo>> {
        let Some(slot) = self.take_slot() else { return Err(io) };
        let itt = self.itt(slot);
        let mut h = Bhs::new(0x40 | op::TASK_MGMT, 0x80 | func);
        h.lun = self.lun_field();
        h.itt.set(itt);
        h.w20.set(ref_itt);
        h.w24.set(self.cmd_sn);
        h.w28.set(self.exp_stat_sn);
        h.w32.set(ref_cmd_sn);
        self.push_pdu(&h, 0, |_, _| {});
        let at = self.now();
        self.slots[slot as usize] = Slot::Tmf { func, ref_itt, at, io };
        match func {
            tmf::ABORT_TASK => self.stats.aborts += 1,
            _ => self.stats.lun_resets += 1,
        }
        Ok(())
    }

    fn send_text(&mut self, itt: u32, ttt: u32, keys: &[u8]) {
        let mut h = Bhs::new(0x40 | op::TEXT, 0x80);
        h.itt.set(itt);
        h.w20.set(ttt);
        h.w24.set(self.cmd_sn);
        h.w28.set(self.exp_stat_sn);
        h.set_data_len(keys.len());
        self.push_pdu(&h, keys.len(), |_, out| out.copy_from_slice(keys));
    }

    fn send_logout(&mut self) -> bool {
        let Some(slot) = self.take_slot() else { return false };
        let itt = self.itt(slot);
        let mut h = Bhs::new(0x40 | op::LOGOUT, 0x80);
        h.itt.set(itt);
        h.w24.set(self.cmd_sn);
        h.w28.set(self.exp_stat_sn);
        self.push_pdu(&h, 0, |_, _| {});
        self.slots[slot as usize] = Slot::Logout;
        self.phase = Phase::LoggingOut;
        self.since = self.now();
        true
    }

    fn send_nop(&mut self) {
        let Some(slot) = self.take_slot() else { return };
        let itt = self.itt(slot);
        let mut h = Bhs::new(0x40 | op::NOP_OUT, 0x80);
        h.lun = self.lun_field();
        h.itt.set(itt);
        h.w20.set(RESERVED_TAG);
        h.w24.set(self.cmd_sn);
        h.w28.set(self.exp_stat_sn);
        self.push_pdu(&h, 0, |_, _| {});
        self.slots[slot as usize] = Slot::Nop { at: self.now() };
    }

    /// The clock tasks, pings and task management are stamped with.
    fn now(&self) -> Instant {
        Instant::now() + self.skew
    }

    /// Take ExpCmdSN/MaxCmdSN from a target PDU (ignored unless they make
    /// a valid window, RFC 7143 4.2.2.1).
    fn window(&mut self, h: &Bhs) {
        let (exp, max) = (h.w28.get(), h.w32.get());
        if serial_lt(max, exp.wrapping_sub(1)) {
            return;
        }
        if serial_lt(self.exp_cmd_sn, exp) {
            self.exp_cmd_sn = exp;
        }
        if serial_lt(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
    }

    fn stat(&mut self, h: &Bhs) {
        let sn = h.w24.get();
        if serial_le(self.exp_stat_sn, sn) {
            self.exp_stat_sn = sn.wrapping_add(1);
        }
    }

    fn handle(&mut self, h: &Bhs, data: &[u8]) -> Result<(), IscsiError> {
        let bad = |why: String| IscsiError::Protocol(why);
        match h.opcode() {
            op::DATA_IN => {
                self.window(h);
                let i = self.data_in_check(h, data.len())?;
                self.data_in_put(i, h.w40.get(), data);
                self.data_in_end(h, i, data.len())?;
            }
            op::SCSI_RESP => {
                self.window(h);
                self.stat(h);
                let i = self
                    .slot_of(h.itt())
                    .ok_or_else(|| bad(format!("SCSI Response for task tag {:#x}, which is not outstanding", h.itt())))?;
                if !matches!(self.slots[i], Slot::Scsi(_)) {
                    return Err(bad(format!("SCSI Response for task tag {:#x}, not a command", h.itt())));
                }
                if h.b2 != 0 {
                    // Target failure: the command did not complete.
                    if let Some(t) = self.take_task(i) {
                        let why = format!("the target failed the command (iSCSI response {:#04x})", h.b2);
                        tracing::warn!("iscsi initiator: {why}");
                        self.complete(t, Err(IscsiError::Scsi(why)));
                    }
                    return Ok(());
                }
                let sense = if data.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
                    Sense::parse(&data[2..2 + n])
                } else {
                    None
                };
                self.finish(i, h.b3, sense, underflow(h));
            }
            op::R2T => {
                self.window(h);
                let i = self.slot_of(h.itt()).ok_or_else(|| bad(format!("R2T for task tag {:#x}, which is not outstanding", h.itt())))?;
                let itt = h.itt();
                let (ttt, off, n) = (h.w20.get(), h.w40.get(), h.w44.get());
                let mut t = match std::mem::replace(&mut self.slots[i], Slot::Free) {
                    Slot::Scsi(t) => t,
                    other => {
                        self.slots[i] = other;
                        return Err(bad(format!("R2T for task tag {itt:#x}, not a command")));
                    }
                };
                let max_burst = self.neg.as_ref().map_or(u32::MAX, |x| x.max_burst);
                let r2t_sn = h.w36.get();
                // One R2T outstanding, sequences in order, no recovery R2Ts
                // (error recovery level 0): each asks for the next bytes,
                // once, under the next R2TSN.
                if !t.p.write
                    || n == 0
                    || n > max_burst
                    || u64::from(off) + u64::from(n) > u64::from(t.p.len)
                    || off != t.moved
                    || r2t_sn != t.r2t_sn
                {
                    let why = format!(
                        "R2T {r2t_sn} for {n} bytes at {off} of a {}-byte transfer ({} bytes sent, R2TSN {} expected)",
                        t.p.len, t.moved, t.r2t_sn
                    );
                    self.slots[i] = Slot::Scsi(t);
                    return Err(bad(why));
                }
                t.r2t_sn = t.r2t_sn.wrapping_add(1);
                self.send_data_out(itt, ttt, &mut t, off, n);
                self.slots[i] = Slot::Scsi(t);
            }
            op::NOP_IN => {
                self.window(h);
                if h.itt() != RESERVED_TAG {
                    self.stat(h);
                    let i = self
                        .slot_of(h.itt())
                        .ok_or_else(|| bad(format!("NOP-In for task tag {:#x}, which is not outstanding", h.itt())))?;
                    if !matches!(self.slots[i], Slot::Nop { .. }) {
                        return Err(bad(format!("NOP-In for task tag {:#x}, not a ping", h.itt())));
                    }
                    self.free_slot(i);
                } else if h.w20.get() != RESERVED_TAG {
                    // The target's ping: answer with its TTT and data.
                    let mut r = Bhs::new(0x40 | op::NOP_OUT, 0x80);
                    r.lun = h.lun;
                    r.itt.set(RESERVED_TAG);
                    r.w20.set(h.w20.get());
                    r.w24.set(self.cmd_sn);
                    r.w28.set(self.exp_stat_sn);
                    let echo = data.len().min(self.neg.as_ref().map_or(8192, |n| n.max_send_data_segment as usize));
                    r.set_data_len(echo);
                    self.push_pdu(&r, echo, |_, out| out.copy_from_slice(&data[..echo]));
                }
            }
            op::TASK_MGMT_RESP => {
                self.window(h);
                self.stat(h);
                let Some(i) = self.slot_of(h.itt()) else {
                    // An ABORT TASK a LUN reset already ended (its slot was
                    // let go then) may still be answered: nothing to do.
                    tracing::debug!(
                        "iscsi initiator: {}: task management response for tag {:#x}, not outstanding; ignored",
                        self.target_addr,
                        h.itt()
                    );
                    return Ok(());
                };
                let (func, ref_itt, io) = match std::mem::replace(&mut self.slots[i], Slot::Free) {
                    Slot::Tmf { func, ref_itt, io, .. } => (func, ref_itt, io),
                    other => {
                        self.slots[i] = other;
                        return Err(bad(format!("task management response for tag {:#x}, not a TMF", h.itt())));
                    }
                };
                self.free_slot(i);
                self.tmf_done(func, ref_itt, h.b2, io);
            }
            op::TEXT_RESP => {
                self.window(h);
                self.stat(h);
                let itt = h.itt();
                let i = self.slot_of(itt).ok_or_else(|| bad(format!("Text Response for tag {itt:#x}, not outstanding")))?;
                let Slot::Text { data: acc, .. } = &mut self.slots[i] else { return Err(bad("Text Response for a non-text task".into())) };
                if acc.len() + data.len() > crate::login::MAX_TEXT {
                    return Err(bad("Text Response over 64 KiB".into()));
                }
                acc.extend_from_slice(data);
                if h.flags & 0x40 != 0 {
                    // Continued: ask for the rest with the target's TTT.
                    let ttt = h.w20.get();
                    self.send_text(itt, ttt, &[]);
                } else if let Slot::Text { data, cb, .. } = std::mem::replace(&mut self.slots[i], Slot::Free) {
                    self.free_slot(i);
                    self.done.push(Done::Text(cb, Ok(data)));
                }
            }
            op::LOGOUT_RESP => {
                self.stat(h);
                match self.slot_of(h.itt()) {
                    Some(i) if matches!(self.slots[i], Slot::Logout) => self.free_slot(i),
                    _ => return Err(bad(format!("Logout Response for tag {:#x}, not a logout", h.itt()))),
                }
                return Err(IscsiError::Closed);
            }
            op::ASYNC => {
                self.window(h);
                self.stat(h);
                let event = (h.w36.get() >> 24) as u8;
                match event {
                    0 => {
                        let sense = if data.len() >= 2 { Sense::parse(&data[2..]) } else { None };
                        tracing::info!("iscsi initiator: asynchronous SCSI event: {}", sense.map_or("no sense".into(), |s| s.to_string()));
                    }
                    1 => return Err(IscsiError::Transport("the target asked us to log out".into())),
                    2 | 3 => return Err(IscsiError::Transport(format!("the target is dropping the connection (async event {event})"))),
                    _ => tracing::info!("iscsi initiator: async event {event} ignored"),
                }
            }
            op::REJECT => {
                self.stat(h);
                self.window(h);
                let reason = h.b2;
                let ref_itt = if data.len() >= BHS_LEN { Bhs::parse(data).map(|r| r.itt()).unwrap_or(RESERVED_TAG) } else { RESERVED_TAG };
                tracing::warn!("iscsi initiator: the target rejected a PDU (reason {reason:#04x}, task tag {ref_itt:#x})");
                return Err(bad(format!("the target rejected a PDU (reason {reason:#04x})")));
            }
            other => return Err(bad(format!("unexpected opcode {other:#04x} from the target"))),
        }
        Ok(())
    }

    /// The command in slot `i` ended with SCSI `status` and `sense`.
    /// The slot of the read a Data-In of `len` bytes belongs to, if it
    /// fits what the read asked for and what it received so far.
    fn data_in_check(&self, h: &Bhs, len: usize) -> Result<usize, IscsiError> {
        let bad = |why: String| IscsiError::Protocol(why);
        let i = self.slot_of(h.itt()).ok_or_else(|| bad(format!("Data-In for task tag {:#x}, which is not outstanding", h.itt())))?;
        let off = h.w40.get();
        let Slot::Scsi(t) = &self.slots[i] else { return Err(bad(format!("Data-In for task tag {:#x}, not a read", h.itt()))) };
        if t.p.write || u64::from(off) + len as u64 > u64::from(t.p.len) || off != t.moved {
            return Err(bad(format!(
                "Data-In of {len} bytes at offset {off} for a {}-byte {} ({} received)",
                t.p.len,
                if t.p.write { "write" } else { "read" },
                t.moved
            )));
        }
        Ok(i)
    }

    /// Put Data-In data in the buffer of the read in slot `i` at `off`.
    fn data_in_put(&mut self, i: usize, off: u32, data: &[u8]) {
        let Slot::Scsi(t) = &mut self.slots[i] else { return };
        match &mut t.p.origin {
            Origin::Own { buf, .. } => buf[off as usize..off as usize + data.len()].copy_from_slice(data),
            Origin::Bdev { parent, off: base } => {
                if let Some(io) = self.parents[*parent as usize].io.as_mut() {
                    io.copy_in((*base + u64::from(off)) as usize, data);
                }
            }
        }
    }

    /// A Data-In of `len` bytes for the read in slot `i` is all in place:
    /// count it, and take the status it may carry.
    fn data_in_end(&mut self, h: &Bhs, i: usize, len: usize) -> Result<(), IscsiError> {
        if let Slot::Scsi(t) = &mut self.slots[i] {
            t.moved += len as u32;
        }
        if h.flags & 0x01 != 0 {
            if h.flags & 0x80 == 0 {
                return Err(IscsiError::Protocol("Data-In with status but not final".into()));
            }
            self.stat(h);
            self.finish(i, h.b3, None, underflow(h));
        }
        Ok(())
    }

    fn finish(&mut self, i: usize, status: u8, sense: Option<Sense>, residual: u32) {
        if let Some(t) = self.take_task(i) {
            self.complete(t, Ok((status, sense, residual)));
        }
    }

    /// Take the command out of slot `i`, freeing the slot.
    fn take_task(&mut self, i: usize) -> Option<Task> {
        match std::mem::replace(&mut self.slots[i], Slot::Free) {
            Slot::Scsi(t) => {
                self.free_slot(i);
                Some(t)
            }
            other => {
                self.slots[i] = other;
                None
            }
        }
    }

    /// A command is over: with a SCSI status and sense, or failed.
    /// `outcome`: the status, sense and underflow residual the target
    /// reported, or why the command failed.
    fn complete(&mut self, t: Task, outcome: Result<(u8, Option<Sense>, u32), IscsiError>) {
        let outcome =
            if t.timed_out && outcome.is_ok() { Err(IscsiError::Timeout("the command timed out and was aborted".into())) } else { outcome };
        if let Ok((status, sense, _)) = &outcome {
            // Worth sending again: busy, task set full, unit attention.
            let transient = *status == scsi::status::BUSY
                || *status == scsi::status::TASK_SET_FULL
                || (*status == scsi::status::CHECK_CONDITION && sense.is_some_and(|s| s.key == scsi::key::UNIT_ATTENTION));
            if transient && t.p.retries < RETRIES {
                let mut p = t.p;
                p.retries += 1;
                self.stats.resent += 1;
                self.waiting.push_front(p);
                return;
            }
        }
        let got = t.moved;
        let missing = t.p.len.saturating_sub(got);
        match t.p.origin {
            Origin::Own { mut buf, cb } => {
                let r = outcome.map(|(status, sense, reported)| {
                    let residual = reported.max(missing);
                    buf.truncate(got as usize);
                    ScsiResult { status, sense, data: if t.p.write { Vec::new() } else { buf }, residual }
                });
                self.done.push(Done::Scsi(cb, r));
            }
            Origin::Bdev { parent, .. } => {
                let s = match outcome {
                    Ok((scsi::status::GOOD, _, reported)) if reported.max(missing) > 0 => {
                        let what = if t.p.write { "write" } else { "read" };
                        tracing::warn!("iscsi initiator: a {what} completed with {got} of {} bytes moved, residual {reported}", t.p.len);
                        IoStatus::Failed
                    }
                    Ok((scsi::status::GOOD, _, _)) => IoStatus::Success,
                    Ok((status, sense, _)) => io_status(status, sense.as_ref()),
                    Err(e) => {
                        tracing::debug!("iscsi initiator: a command failed: {e}");
                        IoStatus::Failed
                    }
                };
                self.piece_done(parent, s);
            }
        }
    }

    fn piece_done(&mut self, parent: u32, s: IoStatus) {
        let p = &mut self.parents[parent as usize];
        if !s.is_ok() && p.status.is_ok() {
            p.status = s;
        }
        p.pending -= 1;
        if p.pending == 0 {
            if let Some(io) = p.io.take() {
                let st = p.status;
                self.done.push(Done::Io(io, st));
            }
            self.free_parents.push(parent);
        }
    }

    fn tmf_done(&mut self, func: u8, ref_itt: u32, response: u8, io: Option<BdevIo>) {
        if func == tmf::ABORT_TASK {
            // 0: function complete, 1: task does not exist.
            if response <= 1 {
                if let Some(t) = self.slot_of(ref_itt).and_then(|i| self.take_task(i)) {
                    self.retry_or_fail(t, "aborted");
                }
            } else {
                tracing::warn!("iscsi initiator: {}: ABORT TASK answered {response}; resetting the LUN", self.target_addr);
                let _ = self.send_tmf(tmf::LOGICAL_UNIT_RESET, RESERVED_TAG, 0, None);
            }
            return;
        }
        if response != 0 {
            tracing::warn!("iscsi initiator: {}: LOGICAL UNIT RESET answered {response}", self.target_addr);
        }
        if let Some(io) = io {
            self.done.push(Done::Io(io, if response == 0 { IoStatus::Success } else { IoStatus::Failed }));
        }
        // The reset ended every command on the LUN, and so the aborts still
        // waiting for an answer (their slots stayed taken until the
        // connection ended): timed-out commands fail, the others go again.
        for i in 0..self.slots.len() {
            if matches!(self.slots[i], Slot::Tmf { func: tmf::ABORT_TASK, .. }) {
                self.free_slot(i);
            }
        }
        let mut again = Vec::new();
        for i in 0..self.slots.len() {
            if let Some(t) = self.take_task(i) {
                if t.timed_out {
                    self.retry_or_fail(t, "ended by a LUN reset");
                } else {
                    again.push(t);
                }
            }
        }
        self.resend(again);
    }

    /// A command that timed out and was ended at the target (`how`) is
    /// sent again, a few times at most, then fails.
    fn retry_or_fail(&mut self, t: Task, how: &str) {
        if t.p.retries < RETRIES {
            tracing::warn!("iscsi initiator: {}: a timed-out command was {how}; sending it again", self.target_addr);
            let mut p = t.p;
            p.retries += 1;
            self.stats.resent += 1;
            self.waiting.push_front(p);
        } else {
            tracing::warn!("iscsi initiator: {}: a command timed out {} times; it fails", self.target_addr, RETRIES + 1);
            self.complete(t, Err(IscsiError::Timeout(format!("the command timed out and was {how}"))));
        }
    }

    /// Commands that were on the wire wait to go again, in CmdSN order,
    /// ahead of the others.
    fn resend(&mut self, mut again: Vec<Task>) {
        again.sort_by(|a, b| if serial_lt(a.cmd_sn, b.cmd_sn) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        for t in again.into_iter().rev() {
            self.stats.resent += 1;
            self.waiting.push_front(t.p);
        }
    }

    fn check_ready(&mut self, now: Instant) -> Option<IscsiError> {
        let t = self.cfg.cmd_timeout;
        // Commands waiting for the window had no timeout: a target that
        // kept it closed (answering pings all the while) held them for
        // ever. Past a command timeout they fail, and the connection
        // goes (a new login opens a new window).
        if self.waiting.is_empty() || serial_le(self.cmd_sn, self.max_cmd_sn) {
            self.closed_since = None;
        } else {
            let since = *self.closed_since.get_or_insert(now);
            let limit = t.unwrap_or(Duration::from_secs(30));
            if now.duration_since(since) > limit {
                let why = format!("the target kept its command window closed for {} s", limit.as_secs());
                tracing::warn!("iscsi initiator: {}: {why}: failing {} waiting commands", self.target_addr, self.waiting.len());
                let mut d = self.fail_waiting(&IscsiError::Timeout(why.clone()));
                self.done.append(&mut d);
                self.closed_since = None;
                return Some(IscsiError::Timeout(why));
            }
        }
        let mut abort = Vec::new();
        let mut reset = false;
        let mut lost = None;
        for i in 0..self.slots.len() {
            match &mut self.slots[i] {
                Slot::Scsi(task) => {
                    if let Some(t) = t {
                        if now.duration_since(task.at) > t {
                            if !task.aborting {
                                task.aborting = true;
                                task.timed_out = true;
                                task.at = now;
                                abort.push((self.gens[i], i, task.cmd_sn));
                            } else {
                                // Aborted, and still here a timeout later.
                                reset = true;
                                task.at = now;
                            }
                        }
                    }
                }
                Slot::Tmf { func, at, .. } => {
                    if let Some(t) = t {
                        if now.duration_since(*at) > t {
                            if *func == tmf::ABORT_TASK {
                                reset = true;
                                *at = now + Duration::from_secs(3600);
                            } else {
                                lost = Some(IscsiError::Timeout("LOGICAL UNIT RESET unanswered".into()));
                            }
                        }
                    }
                }
                Slot::Nop { at } => {
                    let limit = t.unwrap_or(Duration::from_secs(30));
                    if now.duration_since(*at) > limit {
                        lost = Some(IscsiError::Timeout(format!("no answer to a NOP-Out ping in {} s", limit.as_secs())));
                    }
                }
                Slot::Text { at, .. } => {
                    if now.duration_since(*at) > t.unwrap_or(Duration::from_secs(30)) {
                        lost = Some(IscsiError::Timeout("no answer to a Text Request".into()));
                    }
                }
                Slot::Logout | Slot::Free => {}
            }
        }
        if lost.is_some() {
            return lost;
        }
        for (g, i, cmd_sn) in abort {
            // Aborts leave two slots: one for the LUN reset, one for a ping.
            if self.free.len() <= 2 {
                reset = true;
                break;
            }
            let itt = (u32::from(g) << 16) | i as u32;
            tracing::warn!("iscsi initiator: {}: a command timed out; aborting it", self.target_addr);
            if self.send_tmf(tmf::ABORT_TASK, itt, cmd_sn, None).is_err() {
                reset = true;
            }
        }
        if reset && !self.slots.iter().any(|s| matches!(s, Slot::Tmf { func: tmf::LOGICAL_UNIT_RESET, .. })) {
            tracing::warn!("iscsi initiator: {}: an abort went unanswered; resetting the LUN", self.target_addr);
            if self.send_tmf(tmf::LOGICAL_UNIT_RESET, RESERVED_TAG, 0, None).is_err() {
                // It was ignored: nothing then ever gave up on the connection.
                return Some(IscsiError::Timeout("commands unanswered, and no slot left for a LOGICAL UNIT RESET".into()));
            }
        }
        if let Some(iv) = self.cfg.nop_interval {
            if now.duration_since(self.last_rx) > iv && !self.slots.iter().any(|s| matches!(s, Slot::Nop { .. })) {
                self.send_nop();
            }
        }
        None
    }

    /// Close the socket (the session stays).
    fn drop_conn(&mut self, group: &ClientGroup<Session>) {
        if let Some(c) = self.conn.take() {
            group.remove_fd(c.stream.as_raw_fd());
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.login = None;
        self.rx_end = 0;
        self.header_first = 0;
        self.direct = None;
        self.tx.clear();
    }

    /// Connection lost: commands on the wire wait to be sent again
    /// (those past their timeout fail); task management, pings and text
    /// end.
    fn requeue_all(&mut self) {
        let mut again = Vec::new();
        for i in 0..self.slots.len() {
            if let Some(mut t) = self.take_task(i) {
                if t.timed_out {
                    self.retry_or_fail(t, "ended with the connection");
                } else if t.p.retries >= RETRIES {
                    // On the wire each time the connection went, RETRIES + 1
                    // times: a command the target answers by dropping the
                    // connection (a Reject naming it, say) was sent again for
                    // ever, the session reconnecting four times a second.
                    tracing::warn!(
                        "iscsi initiator: {}: a command was outstanding at {} lost connections; it fails",
                        self.target_addr,
                        RETRIES + 1
                    );
                    self.complete(t, Err(IscsiError::Closed));
                } else {
                    t.p.retries += 1;
                    again.push(t);
                }
                continue;
            }
            self.end_other(i, &IscsiError::Closed);
        }
        self.resend(again);
    }

    /// End what is in slot `i` if it is not a command.
    fn end_other(&mut self, i: usize, e: &IscsiError) {
        match std::mem::replace(&mut self.slots[i], Slot::Free) {
            Slot::Free => return,
            Slot::Text { cb, .. } => self.done.push(Done::Text(cb, Err(e.clone()))),
            Slot::Tmf { io: Some(io), .. } => self.done.push(Done::Io(io, IoStatus::Failed)),
            Slot::Scsi(t) => {
                self.slots[i] = Slot::Scsi(t);
                return;
            }
            Slot::Tmf { .. } | Slot::Nop { .. } | Slot::Logout => {}
        }
        self.free_slot(i);
    }

    /// Without a connection longer than the command timeout, the requests
    /// waiting for one fail.
    fn fail_late(&mut self, now: Instant) {
        let (Some(t), Some(since)) = (self.cfg.cmd_timeout, self.down_since) else { return };
        if now.duration_since(since) > t && !self.waiting.is_empty() {
            let why = format!("no connection to {} for {} s", self.cfg.addr, t.as_secs());
            tracing::warn!("iscsi initiator: {why}: failing {} waiting commands", self.waiting.len());
            let mut d = self.fail_waiting(&IscsiError::Timeout(why));
            self.done.append(&mut d);
        }
    }

    fn fail_waiting(&mut self, e: &IscsiError) -> Vec<Done> {
        let mut out = Vec::new();
        while let Some(p) = self.waiting.pop_front() {
            match p.origin {
                Origin::Own { cb, .. } => out.push(Done::Scsi(cb, Err(e.clone()))),
                Origin::Bdev { parent, .. } => {
                    self.piece_done(parent, IoStatus::Failed);
                }
            }
        }
        out.append(&mut self.done);
        out
    }

    /// Everything outstanding or waiting fails with `e`.
    fn fail_all(&mut self, e: IscsiError) -> Vec<Done> {
        for i in 0..self.slots.len() {
            match self.take_task(i) {
                Some(t) => self.complete(t, Err(e.clone())),
                None => self.end_other(i, &e),
            }
        }
        self.fail_waiting(&e)
    }
}

/// The underflow residual a SCSI Response or final Data-In reports (its
/// U bit and residual count), 0 if none.
fn underflow(h: &Bhs) -> u32 {
    if h.flags & 0x02 != 0 { h.w44.get() } else { 0 }
}

/// A bdev status for a SCSI status and sense.
fn io_status(status: u8, sense: Option<&Sense>) -> IoStatus {
    if status == scsi::status::TASK_ABORTED {
        return IoStatus::Aborted;
    }
    match sense {
        Some(s) if s.key == scsi::key::MISCOMPARE => IoStatus::Miscompare { offset: s.information.unwrap_or(0) },
        Some(s) if s.key == scsi::key::MEDIUM_ERROR => IoStatus::Media,
        Some(s) if s.key == scsi::key::DATA_PROTECT => IoStatus::ReadOnly,
        Some(s) if s.key == scsi::key::ILLEGAL_REQUEST && s.asc == 0x21 => IoStatus::OutOfRange,
        Some(s) if s.key == scsi::key::ILLEGAL_REQUEST && s.asc == 0x20 => IoStatus::Unsupported,
        _ => {
            tracing::warn!("iscsi initiator: a command failed: {}", describe(status, sense));
            IoStatus::Failed
        }
    }
}

/// Drive a session's protocol engine without a socket, for the fuzz
/// target `iscsi_host_pdu`: what a target sends goes in, the engine's
/// state and output are checked.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// What a run did.
    #[derive(Debug, Default)]
    pub struct Fed {
        pub pdus_out: usize,
        pub completed: usize,
        pub logged_in: bool,
        pub fault: Option<String>,
        /// The data of each read that completed with a status, in order.
        pub read: Vec<Vec<u8>>,
        /// With time running (bit 6): seconds the target, alive but
        /// silent after the input, took to make the session give up or
        /// finish its commands.
        pub ended_after_s: Option<u64>,
    }

    /// `flags`: bit 0 start in the login (else logged in), bit 1 header
    /// digests, bit 2 data digests, bit 3 immediate data off, bit 4
    /// InitialR2T, bit 5 the input arrives in pieces of 61 bytes and Data-In
    /// segments of 32 bytes or more are read straight into their buffers
    /// (as large ones are from a socket), bit 6 time runs: 8 s pass with
    /// each piece (timeouts, aborts, LUN resets and pings happen as they
    /// would), and after the input the target stays alive (its pings
    /// answered) but silent until the session gives up on the connection
    /// or has no command left; it must, within an hour. `cmds`: (write,
    /// bytes) of commands outstanding at the start. `input`: what the
    /// target sends.
    pub fn feed(flags: u8, cmds: &[(bool, u32)], input: &[u8]) -> Fed {
        let addr: SocketAddr = "127.0.0.1:3260".parse().expect("address");
        let mut login = LoginParams::new("iqn.2026-12.io.pollux:fuzz", Some("iqn.2026-12.io.pollux:target"), [0x80, 1, 2, 3, 0, 0]);
        login.header_digest = flags & 2 != 0;
        login.data_digest = flags & 4 != 0;
        let completed = Rc::new(std::cell::Cell::new(0usize));
        let read = Rc::new(RefCell::new(Vec::new()));
        let mut st = State::new(SessionConfig::new(addr, login.clone(), 0), Box::new(|_| {}));
        let piece = if flags & 0x20 != 0 {
            st.direct_min = 32;
            61
        } else {
            4096
        };
        let mut fed = Fed::default();
        if flags & 1 != 0 {
            let mut l = Login::new(login, 0, 1);
            let first = l.start();
            st.tx.bytes().extend_from_slice(&first);
            st.login = Some(l);
            st.phase = Phase::Login;
        } else {
            let mut n = Negotiated::defaults(&login);
            n.tsih = 1;
            n.header_digest = login.header_digest;
            n.data_digest = login.data_digest;
            n.immediate_data = flags & 8 == 0;
            n.initial_r2t = flags & 16 != 0;
            n.max_send_data_segment = 8192;
            n.max_recv_data_segment = 65536;
            n.first_burst = 65536;
            n.max_burst = 262144;
            st.neg = Some(n);
            st.phase = Phase::Ready;
            st.max_cmd_sn = 64;
        }
        for &(write, len) in cmds.iter().take(16) {
            let len = len % (1 << 20);
            let (c, r) = (completed.clone(), read.clone());
            let cdb = if write { scsi::write(0, len / 512, false) } else { scsi::read(0, len / 512) };
            let buf = if write { vec![0x5a; len as usize] } else { vec![0; len as usize] };
            let cb = move |res: Result<ScsiResult, IscsiError>| {
                c.set(c.get() + 1);
                if let (false, Ok(res)) = (write, res) {
                    r.borrow_mut().push(res.data);
                }
            };
            let origin = Origin::Own { buf, cb: Box::new(cb) };
            st.waiting.push_back(Pending { origin, cdb, len, write, retries: 0, lun: 0, payload: None });
        }
        st.issue_waiting();
        // The input arrives in pieces, as reads would bring it.
        let mut at = 0;
        while at < input.len() && fed.fault.is_none() {
            let buf = match st.recv_buf() {
                Ok(b) => b,
                Err(e) => {
                    fed.fault = Some(e.to_string());
                    break;
                }
            };
            let n = (input.len() - at).min(piece).min(buf.len());
            buf[..n].copy_from_slice(&input[at..at + n]);
            st.received(n);
            at += n;
            loop {
                match st.consume() {
                    Ok(None) => break,
                    Ok(Some(Step::Send(p))) => st.tx.bytes().extend_from_slice(&p),
                    Ok(Some(Step::Done(n))) => {
                        fed.logged_in = true;
                        st.exp_stat_sn = n.stat_sn.wrapping_add(1);
                        st.exp_cmd_sn = n.exp_cmd_sn;
                        st.max_cmd_sn = n.max_cmd_sn;
                        st.cmd_sn = n.exp_cmd_sn;
                        st.neg = Some(n);
                        st.phase = Phase::Ready;
                        st.login = None;
                    }
                    Ok(Some(Step::Redirect(_))) => {
                        fed.fault = Some("redirected".into());
                        break;
                    }
                    Err(e) => {
                        fed.fault = Some(e.to_string());
                        break;
                    }
                }
            }
            st.issue_waiting();
            assert!(st.rx_end <= st.rx.len());
            if flags & 0x40 != 0 && fed.fault.is_none() && st.phase == Phase::Ready {
                // The piece came at this time; 8 s pass before the next.
                st.last_rx = st.now();
                st.skew += Duration::from_secs(8);
                if let Some(e) = st.check_ready(st.now()) {
                    fed.fault = Some(e.to_string());
                }
                st.issue_waiting();
            }
        }
        if flags & 0x40 != 0 && fed.fault.is_none() && st.phase == Phase::Ready {
            let start = st.skew;
            let busy = |st: &State| !st.waiting.is_empty() || st.slots.iter().any(|s| matches!(s, Slot::Scsi(_)));
            while busy(&st) && fed.fault.is_none() {
                assert!(st.skew - start < Duration::from_secs(3600), "commands held for an hour by a live, silent target");
                st.skew += Duration::from_secs(5);
                let now = st.now();
                // Alive: its pings come, ours are answered.
                st.last_rx = now;
                for i in 0..SLOTS {
                    if matches!(st.slots[i], Slot::Nop { .. }) {
                        st.free_slot(i);
                    }
                }
                if let Some(e) = st.check_ready(now) {
                    fed.fault = Some(e.to_string());
                }
                st.issue_waiting();
            }
            fed.ended_after_s = Some((st.skew - start).as_secs());
        }
        fed.pdus_out = st.tx.len();
        // A fault ends the connection: what was outstanding goes again or fails.
        if fed.fault.is_some() {
            st.requeue_all();
        }
        let mut done = st.fail_all(IscsiError::Closed);
        done.append(&mut st.done);
        for d in done {
            if let Done::Scsi(cb, r) = d {
                cb(r);
            }
        }
        fed.completed = completed.get();
        fed.read = read.take();
        assert!(fed.completed <= cmds.len().min(16), "more completions than commands");
        assert_eq!(st.free.len(), SLOTS, "a task slot leaked");
        fed
    }
}

/// What a target that stops answering, or answers strangely, makes of a
/// session's slots (found in review, 2026-12-06; the state driven
/// directly, without a socket).
#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    type Results = Rc<RefCell<Vec<Result<ScsiResult, IscsiError>>>>;

    fn ready() -> State {
        let addr: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        let login = LoginParams::new("iqn.x:i", Some("iqn.x:t"), [0x80, 1, 2, 3, 0, 0]);
        let mut st = State::new(SessionConfig::new(addr, login.clone(), 0), Box::new(|_| {}));
        let mut n = Negotiated::defaults(&login);
        n.tsih = 1;
        st.neg = Some(n);
        st.phase = Phase::Ready;
        st.max_cmd_sn = 100_000;
        st.down_since = None;
        st
    }

    fn read(st: &mut State, done: &Rc<Cell<usize>>, res: &Results) {
        let (d, r) = (done.clone(), res.clone());
        let cb: ScsiCb = Box::new(move |x| {
            d.set(d.get() + 1);
            r.borrow_mut().push(x);
        });
        let origin = Origin::Own { buf: vec![0; 4096], cb };
        st.waiting.push_back(Pending { origin, cdb: scsi::read(0, 8), len: 4096, write: false, retries: 0, lun: 0, payload: None });
    }

    fn run(st: &mut State) {
        for d in std::mem::take(&mut st.done) {
            if let Done::Scsi(cb, r) = d {
                cb(r)
            }
        }
    }

    fn scsi_itts(st: &State) -> Vec<u32> {
        (0..SLOTS).filter(|&i| matches!(st.slots[i], Slot::Scsi(_))).map(|i| st.itt(i as u16)).collect()
    }

    /// Every command outstanding and the target silent: the aborts took
    /// the last slots, the LUN reset and the ping found none, and the
    /// session never gave up on the connection (256 commands; 128 were
    /// enough once aborts were out).
    #[test]
    fn a_silent_target_with_every_slot_wanted_loses_the_connection() {
        let mut st = ready();
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        for _ in 0..SLOTS {
            read(&mut st, &done, &res);
        }
        st.issue_waiting();
        assert_eq!(scsi_itts(&st).len(), SLOTS - RESERVED_SLOTS, "commands leave the reserve");
        let t0 = Instant::now();
        let lost = (1..200u64).find_map(|k| st.check_ready(t0 + Duration::from_secs(31 * k)));
        assert!(lost.is_some(), "the connection is given up");
    }

    /// ABORT TASK ignored, LOGICAL UNIT RESET answered: the reset ends the
    /// aborts too (each kept its slot until the connection ended, so
    /// after 255 such rounds no command could be sent).
    #[test]
    fn aborts_a_lun_reset_ended_give_their_slots_back() {
        let mut st = ready();
        st.cfg.nop_interval = None;
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        let mut now = Instant::now();
        for round in 0..300 {
            read(&mut st, &done, &res);
            st.issue_waiting();
            assert_eq!(scsi_itts(&st).len(), 1, "round {round}: the command went out");
            now += Duration::from_secs(31);
            assert!(st.check_ready(now).is_none(), "ABORT TASK out");
            now += Duration::from_secs(31);
            assert!(st.check_ready(now).is_none(), "LOGICAL UNIT RESET out");
            let i = (0..SLOTS).find(|&i| matches!(st.slots[i], Slot::Tmf { func: tmf::LOGICAL_UNIT_RESET, .. })).expect("a LUN reset");
            let mut h = Bhs::new(op::TASK_MGMT_RESP, 0x80);
            h.itt.set(st.itt(i as u16));
            st.handle(&h, &[]).unwrap();
            // The timed-out command goes again; this time it is answered.
            st.issue_waiting();
            let mut r = Bhs::new(op::SCSI_RESP, 0x80);
            r.itt.set(scsi_itts(&st)[0]);
            st.handle(&r, &[]).unwrap();
            run(&mut st);
        }
        assert_eq!(st.slots.iter().filter(|s| !matches!(s, Slot::Free)).count(), 0, "no slot held");
        assert_eq!(done.get(), 300);
        // A late answer to one of those aborts is ignored, not an error.
        let mut h = Bhs::new(op::TASK_MGMT_RESP, 0x80);
        h.itt.set(0x0001_0007);
        assert!(st.handle(&h, &[]).is_ok());
    }

    /// A command the target answers by dropping the connection every time
    /// (a Reject naming it): it was sent again for ever.
    #[test]
    fn a_command_that_always_loses_the_connection_fails() {
        let mut st = ready();
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        read(&mut st, &done, &res);
        st.issue_waiting();
        for round in 0..=RETRIES {
            let itt = scsi_itts(&st)[0];
            let mut rej = Bhs::new(op::REJECT, 0x80);
            rej.b2 = 0x04;
            rej.itt.set(RESERVED_TAG);
            let mut cmd = Bhs::new(op::SCSI_CMD, 0x81);
            cmd.itt.set(itt);
            assert!(st.handle(&rej, cmd.as_bytes()).is_err(), "round {round}");
            // What losing the connection and logging in again do.
            st.requeue_all();
            st.phase = Phase::Ready;
            st.issue_waiting();
            run(&mut st);
        }
        assert_eq!(done.get(), 1, "it failed after {} lost connections", RETRIES + 1);
        assert!(matches!(res.borrow()[0], Err(IscsiError::Closed)));
    }

    /// MaxCmdSN kept below the next CmdSN, pings answered: the command
    /// waited for ever.
    #[test]
    fn commands_behind_a_window_kept_closed_fail_and_the_connection_goes() {
        let mut st = ready();
        st.max_cmd_sn = st.cmd_sn.wrapping_sub(1);
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        read(&mut st, &done, &res);
        st.issue_waiting();
        assert_eq!(st.waiting.len(), 1, "the window is closed");
        let t0 = Instant::now();
        let lost = (1..100u64).find_map(|k| {
            st.last_rx = t0 + Duration::from_secs(31 * k);
            st.check_ready(t0 + Duration::from_secs(31 * k))
        });
        assert!(matches!(lost, Some(IscsiError::Timeout(ref w)) if w.contains("window")), "{lost:?}");
        run(&mut st);
        assert_eq!(done.get(), 1);
        assert!(matches!(res.borrow()[0], Err(IscsiError::Timeout(_))));
    }

    /// A 64 KiB write: 8 KiB go as immediate data, the rest waits for R2Ts.
    fn write(st: &mut State, done: &Rc<Cell<usize>>, res: &Results) -> u32 {
        let (d, r) = (done.clone(), res.clone());
        let cb: ScsiCb = Box::new(move |x| {
            d.set(d.get() + 1);
            r.borrow_mut().push(x);
        });
        let origin = Origin::Own { buf: vec![0x5a; 65536], cb };
        st.waiting.push_back(Pending {
            origin,
            cdb: scsi::write(0, 128, false),
            len: 65536,
            write: true,
            retries: 0,
            lun: 0,
            payload: None,
        });
        st.issue_waiting();
        scsi_itts(st)[0]
    }

    fn r2t(itt: u32, r2t_sn: u32, off: u32, n: u32) -> Bhs {
        let mut h = Bhs::new(op::R2T, 0x80);
        h.itt.set(itt);
        h.w20.set(0x100 + r2t_sn);
        h.w36.set(r2t_sn);
        h.w40.set(off);
        h.w44.set(n);
        h
    }

    fn good(itt: u32, underflow: Option<u32>) -> Bhs {
        let mut h = Bhs::new(op::SCSI_RESP, 0x80);
        h.itt.set(itt);
        if let Some(n) = underflow {
            h.flags |= 0x02;
            h.w44.set(n);
        }
        h
    }

    fn residual(res: &Results) -> u32 {
        match &res.borrow()[0] {
            Ok(r) => {
                assert_eq!(r.status, scsi::status::GOOD);
                r.residual
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// GOOD before the target asked for most of a write's data: the
    /// write was answered done (and a bdev write succeeded) with 56 KiB
    /// never sent.
    #[test]
    fn a_write_answered_before_its_data_was_asked_for_is_short() {
        let mut st = ready();
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        let itt = write(&mut st, &done, &res);
        st.handle(&r2t(itt, 0, 8192, 16384), &[]).unwrap();
        st.handle(&good(itt, None), &[]).unwrap();
        run(&mut st);
        assert_eq!(done.get(), 1);
        assert_eq!(residual(&res), 65536 - 8192 - 16384);
    }

    /// Every byte sent, but the target says it took fewer (GOOD with the
    /// underflow bit): short.
    #[test]
    fn a_write_with_an_underflow_residual_is_short() {
        let mut st = ready();
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        let itt = write(&mut st, &done, &res);
        st.handle(&r2t(itt, 0, 8192, 65536 - 8192), &[]).unwrap();
        st.handle(&good(itt, Some(4096)), &[]).unwrap();
        run(&mut st);
        assert_eq!(residual(&res), 4096);
        // The whole write, no residual: done.
        let res2 = Results::default();
        let itt = write(&mut st, &done, &res2);
        st.handle(&r2t(itt, 0, 8192, 32768), &[]).unwrap();
        st.handle(&r2t(itt, 1, 8192 + 32768, 65536 - 8192 - 32768), &[]).unwrap();
        st.handle(&good(itt, None), &[]).unwrap();
        run(&mut st);
        assert_eq!(residual(&res2), 0);
    }

    /// A repeated R2T made us send its range again (a 48-byte PDU asking
    /// for up to MaxBurstLength each time); one out of order or behind
    /// what was sent is as wrong under what we negotiate.
    #[test]
    fn repeated_or_out_of_order_r2ts_drop_the_connection() {
        for (sn, off) in [(0, 8192), (1, 0), (1, 16384 + 4096), (2, 16384)] {
            let mut st = ready();
            let (done, res) = (Rc::new(Cell::new(0)), Results::default());
            let itt = write(&mut st, &done, &res);
            st.handle(&r2t(itt, 0, 8192, 8192), &[]).unwrap();
            let sent = st.tx.len();
            let e = st.handle(&r2t(itt, sn, off, 8192), &[]).expect_err("R2T refused");
            assert!(matches!(e, IscsiError::Protocol(_)), "{e}");
            assert_eq!(st.tx.len(), sent, "R2T {sn} at {off}: nothing sent for it");
        }
    }

    /// Half a read and GOOD: the bytes that did not come are a residual
    /// (a block read through `Lun::read` fails on it).
    #[test]
    fn a_read_answered_with_half_its_data_is_short() {
        let mut st = ready();
        let (done, res) = (Rc::new(Cell::new(0)), Results::default());
        read(&mut st, &done, &res);
        st.issue_waiting();
        let itt = scsi_itts(&st)[0];
        let mut h = Bhs::new(op::DATA_IN, 0x81);
        h.itt.set(itt);
        h.set_data_len(2048);
        st.handle(&h, &[7; 2048]).unwrap();
        run(&mut st);
        assert_eq!(residual(&res), 2048);
        assert_eq!(res.borrow()[0].as_ref().unwrap().data, vec![7; 2048]);
    }

    /// The fuzz harness's running clock: commands outstanding and a target
    /// that stays alive but never answers them end in bounded time.
    #[test]
    fn with_time_running_a_live_silent_target_is_given_up_on() {
        for cmds in [&[(false, 4096u32)][..], &[(true, 65536), (false, 512), (true, 512)][..]] {
            let fed = fuzzing::feed(0x40, cmds, &[]);
            let after = fed.ended_after_s.expect("time ran");
            assert!(fed.fault.is_some(), "{fed:?}");
            assert!((30..=600).contains(&after), "gave up after {after} s: {fed:?}");
        }
    }

    /// A target that keeps pinging is alive: with the clock running, the
    /// harness took its pings for silence (the input did not count as
    /// received, and tasks were stamped with the wall clock).
    #[test]
    fn with_time_running_input_keeps_the_session_alive() {
        let mut input = Vec::new();
        for _ in 0..12 {
            let mut h = Bhs::new(op::NOP_IN, 0x80);
            h.itt.set(RESERVED_TAG);
            h.w20.set(5);
            input.extend_from_slice(h.as_bytes());
        }
        let fed = fuzzing::feed(0x60, &[], &input);
        assert!(fed.fault.is_none(), "{fed:?}");
    }

    #[test]
    fn redirections_take_numeric_addresses_only() {
        assert_eq!(redirect_address("10.0.0.2:3261"), Some("10.0.0.2:3261".parse().unwrap()));
        assert_eq!(redirect_address("10.0.0.2"), Some("10.0.0.2:3260".parse().unwrap()));
        assert_eq!(redirect_address("[fd00:10::5]:3262"), Some("[fd00:10::5]:3262".parse().unwrap()));
        assert_eq!(redirect_address("[fd00:10::5]"), Some("[fd00:10::5]:3260".parse().unwrap()));
        assert_eq!(redirect_address("target.example.com:3260"), None, "a name would block the reactor");
    }
}
