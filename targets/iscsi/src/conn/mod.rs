//! Connections: one TCP connection of a session, on one reactor.
//!
//! Each reactor keeps a connection group ([`Group`]): core's readiness
//! group of its connections' sockets polled by one poller (fd-driven in
//! interrupt mode), so a busy reactor makes one `epoll_wait` per iteration,
//! not one `recv` per connection. A connection handles at most
//! [`PDU_BUDGET`] PDUs per pass and is visited again for the rest. Received bytes are cut into PDUs here; login, full
//! feature phase and the SCSI path live in the submodules. Output is
//! appended to the connection's transmit buffer and flushed once per
//! iteration for every connection that has some.

mod ffp;
mod login;
mod scsi;
mod tmf;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::sock::{ConnSlot, Flushed, OutBuf, ReadyGroup, Sweep, TxBuf, TxQueue};
use pollux_core::sys::Interest;
use zerocopy::IntoBytes;

use crate::login::{Endpoint, Login, Params};
use crate::pdu::{self, BHS_LEN, Bhs, DIGEST_LEN};
use crate::session::{self, Session};

pub(crate) use scsi::IscsiCmd;
pub(crate) use tmf::{Fate, Inflight};

/// How long a closing connection waits for the peer to read its last
/// answers (a Reject, a Logout Response) before it is closed anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// PDUs one connection handles per pass of its group (SPDK's iSCSI target
/// takes 16 per poll); the rest wait for its next turn.
const PDU_BUDGET: u32 = 64;
/// Receive buffer: a whole PDU with our largest data segment fits twice.
const RX_CAP: usize = 2 * (BHS_LEN + 1024 + 2 * DIGEST_LEN + crate::login::OUR_MAX_RECV_DATA_SEGMENT as usize + 4);

/// Why a connection is closed.
#[derive(Debug)]
pub(crate) enum Close {
    /// The peer closed or the socket failed.
    Gone,
    /// A protocol error bad enough to drop the connection.
    Protocol(String),
    /// Logout or login failure: close after the answer is sent.
    AfterFlush,
}

pub(crate) enum Phase {
    Login(Box<Login>),
    FullFeature,
}

/// Per-connection state.
pub(crate) struct State {
    pub phase: Phase,
    pub params: Params,
    pub session: Option<Rc<Session>>,
    pub cid: u16,
    pub stat_sn: u32,
    /// Write commands waiting for Data-Out, by ITT.
    pub writes: HashMap<u32, Box<IscsiCmd>>,
    /// Writes whose next R2T waits for the connection's write budget.
    pub waiting_r2t: std::collections::VecDeque<u32>,
    /// Commands handed to the SCSI layer, by ITT.
    pub inflight: HashMap<u32, Inflight>,
    pub next_ttt: u32,
    /// A text response that did not fit, by its TTT.
    pub text_rest: Option<(u32, u32, Vec<u8>)>,
    /// A text request arriving in pieces (C bit): (TTT, ITT, bytes so far).
    pub text_in: Option<(u32, u32, Vec<u8>)>,
    pub last_rx: Instant,
    /// Outstanding target NOP-In ping: (TTT, sent at).
    pub ping: Option<(u32, Instant)>,
    pub close_after_flush: bool,
    /// When the connection began closing after its output (see `close_after_flush`).
    pub closing_since: Option<Instant>,
    pub login_itt: u32,
}

/// One connection.
pub struct Conn {
    pub(crate) token: u64,
    stream: TcpStream,
    pub(crate) ep: Endpoint,
    pub(crate) st: RefCell<State>,
    rx: RefCell<Vec<u8>>,
    rx_len: Cell<usize>,
    tx: RefCell<TxQueue<OutBuf>>,
    /// PDUs handled in this turn (see [`PDU_BUDGET`]).
    turn_pdus: Cell<u32>,
    /// Answers queued beyond which further PDUs wait unread (an initiator
    /// that does not read its answers cannot grow the daemon): the socket
    /// layer's `max_output_backlog`.
    tx_limit: usize,
    /// This connection's place in its portal's connection count.
    slot: Cell<Option<ConnSlot>>,
    want_write: Cell<bool>,
    /// PDUs wait unread (and the socket is not watched for reading) while
    /// the output backlog is over its limit (`tx_limit`).
    read_held: Cell<bool>,
    /// Data-out buffers held by this connection's writes (see
    /// `scsi::WRITE_BUDGET`).
    pub(crate) write_bytes: Cell<usize>,
    /// `process_rx` is running (it holds the receive buffer).
    in_rx: Cell<bool>,
    closed: Cell<bool>,
    started: Instant,
    /// Log budget of this connection's protocol faults.
    pub(crate) faults: pollux_core::log::FaultLog,
    /// Spare commands, reused: boxes, because the SCSI layer takes and
    /// gives back boxed commands.
    #[allow(clippy::vec_box)]
    pub(crate) free_cmds: RefCell<Vec<Box<IscsiCmd>>>,
    /// Its commands, bytes and digest errors (see `crate::counters`).
    pub(crate) counts: crate::counters::ConnCounts,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("token", &self.token).field("peer", &self.ep.peer).finish()
    }
}

// Connections and their groups are reactor-owned.
static_assertions::assert_not_impl_any!(Conn: Send, Sync);
static_assertions::assert_not_impl_any!(Group: Send, Sync);

/// A reactor's connections.
pub(crate) struct Group {
    ready: ReadyGroup,
    pub(crate) conns: RefCell<HashMap<u64, Rc<Conn>>>,
    pub(crate) sessions: RefCell<HashMap<u16, Rc<Session>>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    next_token: Cell<u64>,
    pollers: RefCell<Vec<Poller>>,
    /// The connections the timer visits.
    swept: Sweep<Rc<Conn>>,
}

impl Group {
    /// This reactor's group, created on first use.
    pub(crate) fn get() -> io::Result<Rc<Group>> {
        if let Some(g) = reactor::local::<Group>() {
            return Ok(g);
        }
        let g = Rc::new(Group {
            ready: ReadyGroup::new()?,
            conns: RefCell::new(HashMap::new()),
            sessions: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            next_token: Cell::new(1),
            pollers: RefCell::new(Vec::new()),
            swept: Sweep::default(),
        });
        // The pollers hold the group weakly (it owns them): no lookup per pass.
        let w = Rc::downgrade(&g);
        let poll = reactor::register_poller("iscsi_conn_group", move || match w.upgrade() {
            Some(g) => g.poll().into(),
            None => PollStatus::Idle,
        });
        poll.add_wake_fd(g.ready.fd(), Interest::READABLE)?;
        let w = Rc::downgrade(&g);
        let timer = reactor::register_timed_poller("iscsi_conn_timers", Duration::from_secs(1), move || match w.upgrade() {
            Some(g) => g.timers().into(),
            None => PollStatus::Idle,
        });
        g.pollers.borrow_mut().extend([poll, timer]);
        reactor::set_local(g.clone());
        Ok(g)
    }

    pub(crate) fn try_get() -> Option<Rc<Group>> {
        reactor::local::<Group>()
    }

    /// One pass: write the answers that completions since the last pass
    /// queued (bdevs that complete from their own pollers: before waiting
    /// on the sockets, so no epoll_wait stands between a completion and its
    /// answer), read ready sockets, then write the answers of every
    /// connection that has some, one write each (the answers of all the
    /// commands a pass read go out together). Returns work done.
    fn poll(&self) -> usize {
        let early = self.flush_dirty();
        let n = early
            + self.ready.poll(|r| {
                let c = self.conns.borrow().get(&r.token).cloned();
                let Some(c) = c else { return };
                if c.read_held.get() && r.gone() {
                    // Not reading, so the hang-up would be reported again
                    // and again: the initiator is gone.
                    c.close(Close::Gone);
                    return;
                }
                if r.readable {
                    c.on_readable();
                }
                if r.writable {
                    c.flush();
                }
            });
        n + self.flush_dirty()
    }

    fn flush_dirty(&self) -> usize {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let n = dirty.len();
        for c in &dirty {
            c.flush();
        }
        let mut d = dirty;
        d.clear();
        let mut cur = self.dirty.borrow_mut();
        if cur.is_empty() {
            *cur = d;
        }
        n
    }

    /// Once a second: login timeouts, NOP-In pings and their timeouts, and
    /// the read buffers of an initiator that stopped reading let go
    /// (`sock::TxQueue::tick`).
    fn timers(&self) -> usize {
        let (interval, timeout, login_timeout) = {
            let o = &crate::config::lock().options;
            (
                Duration::from_secs(o.nop_in_interval.max(1) as u64),
                Duration::from_secs(o.nop_timeout.max(1) as u64),
                Duration::from_secs(u64::from(o.login_timeout.max(1))),
            )
        };
        let now = Instant::now();
        let mut n = 0;
        self.swept.run(
            |all| all.extend(self.conns.borrow().values().cloned()),
            |c| {
                c.tx.borrow_mut().tick(|| pollux_core::sock::unsent_bytes(&c.stream));
                let verdict = {
                    let st = c.st.borrow();
                    match (&st.phase, st.ping) {
                        _ if st.closing_since.is_some_and(|t| now.duration_since(t) > CLOSE_TIMEOUT) => {
                            Some("the initiator did not read the last answers of a closing connection")
                        }
                        (Phase::Login(_), _) if now.duration_since(c.started) > login_timeout => Some("login timed out"),
                        (Phase::FullFeature, Some((_, at))) if now.duration_since(at) > timeout => Some("initiator did not answer NOP-In"),
                        _ => None,
                    }
                };
                if let Some(why) = verdict {
                    tracing::info!("iscsi: closing connection from {}: {why}", c.ep.peer);
                    if matches!(c.st.borrow().phase, Phase::Login(_)) {
                        crate::counters::login_failed(c.place(), "timeout");
                    }
                    c.close(Close::Protocol(why.into()));
                    n += 1;
                    return;
                }
                let ping = {
                    let st = c.st.borrow();
                    matches!(st.phase, Phase::FullFeature) && st.ping.is_none() && now.duration_since(st.last_rx) > interval
                };
                if ping {
                    c.send_ping();
                    n += 1;
                }
            },
        );
        n
    }

    fn mark_dirty(&self, c: &Rc<Conn>) {
        self.dirty.borrow_mut().push(c.clone());
    }
}

/// Start serving an accepted connection (nonblocking, options set by the
/// listener) on the current reactor.
pub(crate) fn start(stream: TcpStream, ep: Endpoint, preload: Vec<u8>, slot: ConnSlot) {
    let group = match Group::get() {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("iscsi: cannot create the connection group: {e}");
            return;
        }
    };
    let token = group.next_token.get();
    group.next_token.set(token + 1);
    if let Err(e) = group.ready.add(stream.as_raw_fd(), token) {
        tracing::error!("iscsi: cannot watch connection from {}: {e}", ep.peer);
        return;
    }
    let mut rx = vec![0u8; RX_CAP];
    let n = preload.len().min(RX_CAP);
    rx[..n].copy_from_slice(&preload[..n]);
    let login = Box::new(Login::new(ep.clone()));
    let params = login.params;
    let c = Rc::new(Conn {
        token,
        stream,
        ep,
        st: RefCell::new(State {
            phase: Phase::Login(login),
            params,
            session: None,
            cid: 0,
            stat_sn: 1,
            writes: HashMap::new(),
            waiting_r2t: std::collections::VecDeque::new(),
            inflight: HashMap::new(),
            next_ttt: 1,
            text_rest: None,
            text_in: None,
            last_rx: Instant::now(),
            ping: None,
            close_after_flush: false,
            closing_since: None,
            login_itt: 0,
        }),
        rx: RefCell::new(rx),
        rx_len: Cell::new(n),
        tx: RefCell::new(TxQueue::with_capacity(64 * 1024)),
        turn_pdus: Cell::new(0),
        tx_limit: pollux_core::sock::posix_options().max_output_backlog as usize,
        slot: Cell::new(Some(slot)),
        want_write: Cell::new(false),
        read_held: Cell::new(false),
        write_bytes: Cell::new(0),
        in_rx: Cell::new(false),
        closed: Cell::new(false),
        started: Instant::now(),
        faults: pollux_core::log::FaultLog::new(),
        free_cmds: RefCell::new(Vec::new()),
        counts: crate::counters::ConnCounts::default(),
    });
    group.conns.borrow_mut().insert(token, c.clone());
    tracing::debug!("iscsi: connection from {} on {}", c.ep.peer, reactor::current());
    if n > 0 {
        c.process_rx();
    }
}

impl Conn {
    /// Where this connection came in, for its counters: the target its
    /// session (or its login, so far) names.
    pub(crate) fn place(&self) -> crate::counters::Place {
        let st = self.st.borrow();
        let target = match (&st.session, &st.phase) {
            (Some(s), _) => s.target.clone(),
            (None, Phase::Login(l)) => l.known_target.clone(),
            (None, Phase::FullFeature) => None,
        };
        crate::counters::Place { target: target.unwrap_or_default(), portal_group: self.ep.portal_group, portal: self.ep.local }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The connection's place in its portal's count (given back by
    /// dropping it, or carried to another reactor).
    fn take_slot(&self) -> ConnSlot {
        self.slot.take().unwrap_or_else(ConnSlot::uncounted)
    }

    fn on_readable(self: &Rc<Self>) {
        if self.closed.get() {
            return;
        }
        if self.st.borrow().close_after_flush {
            return self.discard_input();
        }
        if self.read_held.get() {
            return;
        }
        self.turn_pdus.set(0);
        if self.rx_len.get() > 0 && !self.process_rx() {
            // PDUs left from the last turn went first.
            return;
        }
        // Read until the socket is empty or the buffer full, then parse.
        while self.turn_pdus.get() < PDU_BUDGET {
            let len = self.rx_len.get();
            let (got, room) = {
                let mut rx = self.rx.borrow_mut();
                if len == rx.len() {
                    break;
                }
                let room = rx.len() - len;
                ((&self.stream).read(&mut rx[len..]), room)
            };
            match got {
                Ok(0) => return self.close(Close::Gone),
                Ok(n) => {
                    self.rx_len.set(len + n);
                    self.st.borrow_mut().last_rx = Instant::now();
                    if !self.process_rx() {
                        return;
                    }
                    if n < room || self.read_held.get() {
                        // A short read drained the socket; the (level
                        // triggered) epoll set says when more arrives, so
                        // skip the read that would only say EAGAIN.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(Close::Gone),
            }
        }
    }

    /// A closing connection reads no more PDUs: what arrives is read and
    /// dropped (once per pass), so the socket does not stay readable and the
    /// peer is not reset before it has read our last answers.
    fn discard_input(self: &Rc<Self>) {
        let got = {
            let mut rx = self.rx.borrow_mut();
            if rx.is_empty() {
                rx.resize(BHS_LEN, 0);
            }
            (&self.stream).read(&mut rx[..])
        };
        self.rx_len.set(0);
        match got {
            Ok(0) => self.close(Close::Gone),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => self.close(Close::Gone),
        }
    }

    /// Cut complete PDUs out of the receive buffer and handle them.
    /// Returns false if the connection was closed or handed over.
    fn process_rx(self: &Rc<Self>) -> bool {
        if self.in_rx.replace(true) {
            return !self.closed.get();
        }
        let alive = self.process_rx_inner();
        self.in_rx.set(false);
        alive
    }

    fn process_rx_inner(self: &Rc<Self>) -> bool {
        let mut off = 0;
        let mut rx = std::mem::take(&mut *self.rx.borrow_mut());
        let end = self.rx_len.get();
        let mut alive = true;
        while alive && !self.closed.get() {
            let avail = &rx[off..end];
            if avail.len() < BHS_LEN {
                break;
            }
            if self.tx_backlog() > self.tx_limit {
                // The initiator is not reading its answers: its next PDUs
                // wait (see `flush`).
                self.hold_reading(true);
                break;
            }
            if self.turn_pdus.get() >= PDU_BUDGET {
                // The rest waits for this connection's next turn.
                if let Some(g) = Group::try_get() {
                    g.ready.again(self.token);
                }
                break;
            }
            let h = Bhs::parse(avail).expect("48 bytes");
            let (hd, dd, max_seg) = {
                let st = self.st.borrow();
                let login = matches!(st.phase, Phase::Login(_));
                (
                    st.params.header_digest && !login,
                    st.params.data_digest && !login,
                    if login { 8192 } else { st.params.max_recv_seg as usize },
                )
            };
            let dlen = h.data_len();
            if dlen > max_seg {
                alive = false;
                self.reject_and_close(&h, &format!("data segment of {dlen} bytes is above MaxRecvDataSegmentLength {max_seg}"));
                break;
            }
            let hdr_len = BHS_LEN + h.ahs_len() + if hd { DIGEST_LEN } else { 0 };
            let total = hdr_len + dlen + pdu::pad(dlen) + if dd && dlen > 0 { DIGEST_LEN } else { 0 };
            if avail.len() < total {
                break;
            }
            if hd {
                let want = pdu::digest(&[&avail[..BHS_LEN + h.ahs_len()]]);
                let got = u32::from_le_bytes(avail[hdr_len - 4..hdr_len].try_into().expect("4 bytes"));
                if want != got {
                    alive = false;
                    self.counts.digest_error();
                    self.close(Close::Protocol("header digest error".into()));
                    break;
                }
            }
            let data = &avail[hdr_len..hdr_len + dlen];
            if dd && dlen > 0 {
                let padded = &avail[hdr_len..hdr_len + dlen + pdu::pad(dlen)];
                let want = pdu::digest(&[padded]);
                let at = hdr_len + dlen + pdu::pad(dlen);
                let got = u32::from_le_bytes(avail[at..at + 4].try_into().expect("4 bytes"));
                if want != got {
                    // ERL 0: reject the PDU; a lost Data-Out ends the connection.
                    self.counts.digest_error();
                    self.reject(&h, pdu::reject::DATA_DIGEST_ERROR);
                    if h.opcode() == pdu::op::DATA_OUT {
                        alive = false;
                        self.close(Close::Protocol("data digest error on Data-Out".into()));
                        break;
                    }
                    off += total;
                    continue;
                }
            }
            self.turn_pdus.set(self.turn_pdus.get() + 1);
            let ahs = &avail[BHS_LEN..BHS_LEN + h.ahs_len()];
            match self.on_pdu(&h, ahs, data, &rx[off..off + total]) {
                Ok(true) => {}
                Ok(false) => {
                    // Handed over to another reactor with the rest of the bytes.
                    alive = false;
                }
                Err(c) => {
                    alive = false;
                    self.close(c);
                }
            }
            off += total;
        }
        if alive && !self.closed.get() {
            // Keep the partial PDU at the front.
            rx.copy_within(off..end, 0);
            self.rx_len.set(end - off);
        } else {
            // Closing or gone: nothing left to parse. The buffer goes back
            // all the same, so whatever runs next finds it whole.
            self.rx_len.set(0);
        }
        *self.rx.borrow_mut() = rx;
        alive && !self.closed.get()
    }

    /// Dispatch one PDU. `Ok(false)`: the connection left this reactor.
    fn on_pdu(self: &Rc<Self>, h: &Bhs, ahs: &[u8], data: &[u8], raw: &[u8]) -> Result<bool, Close> {
        let in_login = matches!(self.st.borrow().phase, Phase::Login(_));
        if in_login {
            return self.on_login_pdu(h, data, raw);
        }
        self.on_ffp_pdu(h, ahs, data)
    }

    // ---- output ----

    /// Append a PDU (header, optional data pieces) to the transmit buffer.
    pub(crate) fn send(self: &Rc<Self>, h: &mut Bhs, data: &[&[u8]]) {
        let dlen: usize = data.iter().map(|d| d.len()).sum();
        self.send_with(h, dlen, |tx| {
            for d in data {
                tx.extend_from_slice(d);
            }
        });
    }

    /// Append a PDU whose `dlen` data bytes `fill` appends to the transmit
    /// buffer (digests and padding are added here).
    pub(crate) fn send_with(self: &Rc<Self>, h: &mut Bhs, dlen: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        self.queue_pdu(h, dlen, |q, dd| {
            let tx = q.bytes();
            let start = tx.len();
            fill(tx);
            assert_eq!(tx.len() - start, dlen, "a PDU's data is the length its header says");
            if dd { pdu::digest(&[&tx[start..]]) } else { 0 }
        });
    }

    /// Append a PDU whose `dlen` data bytes are the next ones of `src` (a
    /// read's buffers, in order). A buffer that ends within this PDU goes
    /// out from itself, with no copy (see `TxQueue`); the part of a buffer
    /// the PDU ends inside is copied, and the rest of that buffer waits in
    /// `src` for the next PDU. The data digest is computed over the pieces.
    pub(crate) fn send_from_bufs<I: Iterator<Item = OutBuf>>(self: &Rc<Self>, h: &mut Bhs, dlen: usize, src: &mut BufSource<I>) {
        self.queue_pdu(h, dlen, |q, dd| {
            let mut left = dlen;
            let mut crc = 0u32;
            while left > 0 {
                let Some((buf, pos)) = src.current() else {
                    // Fewer bytes than the header says (the caller sizes
                    // `dlen` from the buffers, so never): still never a
                    // short PDU.
                    debug_assert!(false, "Data-In of {dlen} bytes with {left} missing from its buffers");
                    let zeros = [0u8; 512];
                    let n = left.min(zeros.len());
                    q.bytes().extend_from_slice(&zeros[..n]);
                    if dd {
                        crc = crc32c::crc32c_append(crc, &zeros[..n]);
                    }
                    left -= n;
                    continue;
                };
                let n = (buf.tx_len() - pos).min(left);
                let whole = pos + n == buf.tx_len();
                match buf {
                    OutBuf::Lent(_) if dd => {
                        // Lent memory can change under us (another
                        // initiator writing those blocks): the digest must
                        // cover the very bytes sent, so they are copied
                        // once and the CRC is taken over the copy.
                        let at = q.bytes().len();
                        buf.tx_copy(pos, n, q.bytes());
                        crc = crc32c::crc32c_append(crc, &q.bytes()[at..]);
                        src.advance(n);
                    }
                    OutBuf::Lent(l) if !whole => {
                        // Another reference to the same range: no copy.
                        let part = OutBuf::Lent(l.clone());
                        q.push_buf_at(part, pos, n);
                        src.advance(n);
                    }
                    _ => {
                        if dd {
                            crc = buf.crc32c_append(crc, pos, n);
                        }
                        if whole {
                            let buf = src.take();
                            q.push_buf_at(buf, pos, n);
                        } else {
                            buf.tx_copy(pos, n, q.bytes());
                            src.advance(n);
                        }
                    }
                }
                left -= n;
            }
            crc
        });
    }

    /// Queue a PDU: its header (and header digest), then `dlen` data bytes
    /// that `data` queues, returning their CRC32C when data digests are on
    /// (its second argument), then padding and the data digest. Has the
    /// group flush the connection this pass.
    fn queue_pdu(self: &Rc<Self>, h: &mut Bhs, dlen: usize, data: impl FnOnce(&mut TxQueue<OutBuf>, bool) -> u32) {
        if self.closed.get() {
            return;
        }
        let (hd, dd) = {
            let st = self.st.borrow();
            let login = matches!(st.phase, Phase::Login(_));
            (st.params.header_digest && !login, st.params.data_digest && !login)
        };
        h.set_data_len(dlen);
        let mut q = self.tx.borrow_mut();
        let was_empty = q.is_empty();
        q.bytes().extend_from_slice(h.as_bytes());
        if hd {
            q.bytes().extend_from_slice(&pdu::digest(&[h.as_bytes()]).to_le_bytes());
        }
        if dlen > 0 {
            let crc = data(&mut q, dd);
            let pad = &[0u8; 3][..pdu::pad(dlen)];
            q.bytes().extend_from_slice(pad);
            if dd {
                q.bytes().extend_from_slice(&crc32c::crc32c_append(crc, pad).to_le_bytes());
            }
        }
        drop(q);
        if was_empty {
            if let Some(g) = Group::try_get() {
                g.mark_dirty(self);
            }
        }
    }

    fn tx_backlog(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Stop or resume reading, and watch the socket accordingly.
    fn hold_reading(&self, held: bool) {
        if self.read_held.replace(held) != held {
            self.watch();
        }
    }

    /// Register the socket for what the connection waits for.
    fn watch(&self) {
        if let Some(g) = Group::try_get() {
            let _ = g.ready.watch(self.stream.as_raw_fd(), self.token, !self.read_held.get(), self.want_write.get());
        }
    }

    /// Write as much queued output as the socket takes.
    pub(crate) fn flush(self: &Rc<Self>) {
        if self.closed.get() {
            return;
        }
        let res = self.tx.borrow_mut().flush(&self.stream);
        match res {
            Ok(Flushed::All) => {}
            Ok(Flushed::Blocked) => {
                if !self.want_write.replace(true) {
                    self.watch();
                }
                self.resume_held_input();
                return;
            }
            Err(_) => return self.close(Close::Gone),
        }
        // Everything written.
        if self.want_write.replace(false) {
            self.watch();
        }
        if self.st.borrow().close_after_flush {
            return self.close(Close::Gone);
        }
        self.resume_held_input();
    }

    /// Output is back under its limit: handle the PDUs that waited, and
    /// read again.
    fn resume_held_input(self: &Rc<Self>) {
        if self.read_held.get() && self.tx_backlog() <= self.tx_limit && !self.closed.get() && !self.in_rx.get() {
            self.hold_reading(false);
            // What arrived meanwhile, epoll reports at the next poll.
            self.process_rx();
        }
    }

    /// Close the connection: stop reading, abort its commands, leave its
    /// session (ending the session with its last connection).
    pub(crate) fn close(self: &Rc<Self>, why: Close) {
        if let Close::AfterFlush = why {
            {
                let mut st = self.st.borrow_mut();
                st.close_after_flush = true;
                st.closing_since.get_or_insert_with(Instant::now);
            }
            return self.flush();
        }
        if self.closed.replace(true) {
            return;
        }
        if let Close::Protocol(msg) = &why {
            tracing::info!("iscsi: dropping connection from {}: {msg}", self.ep.peer);
        }
        crate::counters::fold(self.place(), &self.counts);
        if let Some(g) = Group::try_get() {
            g.ready.remove(self.stream.as_raw_fd());
            g.conns.borrow_mut().remove(&self.token);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        // Nothing more is sent: the queued read buffers go back now.
        self.tx.borrow_mut().clear();
        drop(self.take_slot());
        let (session, writes) = {
            let mut st = self.st.borrow_mut();
            for v in st.inflight.values_mut() {
                v.fate = Fate::Silent;
            }
            (st.session.take(), std::mem::take(&mut st.writes))
        };
        if let Some(s) = &session {
            let n = writes.len() as u32;
            s.outstanding.set(s.outstanding.get().saturating_sub(n));
        }
        drop(writes);
        self.free_cmds.borrow_mut().clear();
        if let Some(s) = session {
            s.conns.borrow_mut().retain(|w| w.upgrade().is_some_and(|c| !Rc::ptr_eq(&c, self)));
            if s.live_conns().is_empty() {
                end_session(&s);
            }
        }
    }

    /// Send a NOP-In ping the initiator must answer.
    fn send_ping(self: &Rc<Self>) {
        let (ttt, sn) = {
            let mut st = self.st.borrow_mut();
            let ttt = st.next_ttt;
            st.next_ttt = st.next_ttt.wrapping_add(1).max(1);
            st.ping = Some((ttt, Instant::now()));
            (ttt, st.stat_sn)
        };
        let mut h = Bhs::new(pdu::op::NOP_IN, 0x80);
        h.itt.set(pdu::RESERVED_TAG);
        h.w20.set(ttt);
        h.w24.set(sn);
        self.fill_window(&mut h);
        self.send(&mut h, &[]);
    }

    /// ExpCmdSN and MaxCmdSN of the session into bytes 28-35.
    pub(crate) fn fill_window(&self, h: &mut Bhs) {
        let st = self.st.borrow();
        if let Some(s) = &st.session {
            s.update_window();
            h.w28.set(s.exp_cmd_sn.get());
            h.w32.set(s.max_cmd_sn.get());
        }
    }

    /// Take the next StatSN.
    pub(crate) fn next_stat_sn(&self) -> u32 {
        let mut st = self.st.borrow_mut();
        let sn = st.stat_sn;
        st.stat_sn = sn.wrapping_add(1);
        sn
    }

    /// Send a Reject carrying the offending header.
    pub(crate) fn reject(self: &Rc<Self>, bad: &Bhs, reason: u8) {
        let mut h = Bhs::new(pdu::op::REJECT, 0x80);
        h.b2 = reason;
        h.itt.set(pdu::RESERVED_TAG);
        h.w24.set(self.next_stat_sn());
        self.fill_window(&mut h);
        let raw = *bad;
        self.send(&mut h, &[raw.as_bytes()]);
    }

    fn reject_and_close(self: &Rc<Self>, bad: &Bhs, why: &str) {
        tracing::info!(
            "iscsi: {} from {}: {why}",
            if matches!(self.st.borrow().phase, Phase::Login(_)) { "bad login PDU" } else { "bad PDU" },
            self.ep.peer
        );
        self.reject(bad, pdu::reject::PROTOCOL_ERROR);
        self.close(Close::AfterFlush);
    }
}

/// The last connection of a session went away.
fn end_session(s: &Rc<Session>) {
    if let Some(g) = Group::try_get() {
        g.sessions.borrow_mut().remove(&s.tsih);
    }
    s.close_ports();
    session::unregister(s.tsih);
    tracing::debug!("iscsi: session {} of {} ended", s.tsih, s.initiator);
}

/// Close every connection of a session on this reactor.
pub(crate) fn close_session(tsih: u16) {
    let Some(g) = Group::try_get() else { return };
    let s = g.sessions.borrow().get(&tsih).cloned();
    if let Some(s) = s {
        for c in s.live_conns() {
            c.close(Close::Protocol("session closed".into()));
        }
        g.sessions.borrow_mut().remove(&tsih);
    }
}

/// Close every connection on this reactor (shutdown, target deletion).
pub(crate) fn close_all(target: Option<&str>) {
    let Some(g) = Group::try_get() else { return };
    let conns: Vec<Rc<Conn>> = g.conns.borrow().values().cloned().collect();
    for c in conns {
        let t = c.st.borrow().session.as_ref().and_then(|s| s.target.clone());
        if target.is_none() || t.as_deref() == target {
            c.close(Close::Protocol("target shutting down".into()));
        }
    }
}

/// `iscsi_get_stats` counts of this reactor's connections, as SPDK's
/// connection states: (running, exiting). Closed connections leave the
/// group at once, so none is ever "exited" or "invalid" here.
pub(crate) fn state_counts() -> (usize, usize) {
    let Some(g) = Group::try_get() else { return (0, 0) };
    let conns = g.conns.borrow();
    let exiting = conns.values().filter(|c| c.st.borrow().close_after_flush).count();
    (conns.len() - exiting, exiting)
}

/// This reactor's counters with its live connections added
/// (`iscsi_get_target_stats`).
pub(crate) fn counters_snapshot() -> crate::counters::Snapshot {
    let mut s = crate::counters::base_snapshot();
    let Some(g) = Group::try_get() else { return s };
    for c in g.conns.borrow().values() {
        if c.is_closed() {
            continue;
        }
        let place = c.place();
        s.totals.entry(place.clone()).or_default().add(&c.counts.get());
        *s.connections.entry(place.clone()).or_default() += 1;
        if let Some(sess) = &c.st.borrow().session {
            s.sessions.entry(place.target).or_default().insert((sess.initiator.clone(), sess.isid, sess.tsih));
        }
    }
    s
}

/// `iscsi_get_connections` facts of this reactor's connections.
pub(crate) fn describe_all() -> Vec<serde_json::Value> {
    let Some(g) = Group::try_get() else { return Vec::new() };
    let conns: Vec<Rc<Conn>> = g.conns.borrow().values().cloned().collect();
    let core = reactor::core_of(reactor::current());
    conns
        .iter()
        .map(|c| {
            let st = c.st.borrow();
            let counts = c.counts.get();
            let (tsih, target, initiator, isid) = match &st.session {
                Some(s) => (s.tsih, s.target.clone().unwrap_or_default(), s.initiator.clone(), s.isid),
                None => (0, String::new(), String::new(), [0; 6]),
            };
            serde_json::json!({
                "id": c.token,
                "cid": st.cid,
                "tsih": tsih,
                "lcore_id": core,
                "initiator_addr": c.ep.peer.ip().to_string(),
                "target_addr": c.ep.local.ip().to_string(),
                "target_node_name": target,
                "initiator_name": initiator,
                "isid": isid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "state": if matches!(st.phase, Phase::Login(_)) { "login" } else { "full_feature" },
                "header_digest": st.params.header_digest,
                "data_digest": st.params.data_digest,
                // Pollux's own, for per-connection rates.
                "completed_commands": counts.commands,
                "bytes_read": counts.read_bytes,
                "bytes_written": counts.written_bytes,
            })
        })
        .collect()
}

/// A read's buffers handed out in order to the Data-In PDUs that carry
/// them (see `Conn::send_from_bufs`).
pub(crate) struct BufSource<I: Iterator<Item = OutBuf>> {
    bufs: I,
    cur: Option<OutBuf>,
    /// Bytes of `cur` already sent.
    pos: usize,
}

impl<I: Iterator<Item = OutBuf>> BufSource<I> {
    pub(crate) fn new(bufs: I) -> Self {
        BufSource { bufs, cur: None, pos: 0 }
    }

    /// The buffer next to send from, and where in it.
    fn current(&mut self) -> Option<(&OutBuf, usize)> {
        while self.cur.as_ref().is_none_or(|b| self.pos >= b.tx_len()) {
            self.cur = Some(self.bufs.next()?);
            self.pos = 0;
        }
        self.cur.as_ref().map(|b| (b, self.pos))
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// The current buffer, to be sent from itself.
    fn take(&mut self) -> OutBuf {
        self.pos = 0;
        self.cur.take().expect("a current buffer")
    }
}
