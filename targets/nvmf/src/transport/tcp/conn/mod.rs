//! One NVMe/TCP connection: a queue pair. Reads PDUs from its socket, runs
//! the commands they carry (Fabrics, admin or I/O), solicits write data
//! with R2Ts, and sends data and completions back.
//!
//! Receive: bytes go into a buffer sized for the largest PDU the framing
//! allows; complete PDUs are parsed in place and handled in order. Send:
//! PDUs are appended to an output buffer that the poll group flushes once
//! per reactor iteration. A framing error sends a C2HTermReq and closes
//! this connection only.

mod command;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use pollux_core::bdev::BdevIo;
use pollux_core::dma::{DmaBuf, Lent};
use pollux_core::reactor::{self, ReactorId};
use pollux_core::sock::{ConnSlot, Flushed, OutBuf, TxQueue};
use pollux_nvme_spec::cmd::Command;

use super::group::{GroupStats, TcpGroup};
use super::pdu::{self, C2hFraming, Fatal, Framing, Parsed, Pdu};
use super::{MAX_H2C_DATA, TcpShared};
use crate::ctrlr::{AdminQueue, Controller, Response};
use crate::group::SubsystemView;
use crate::io::{DataDir, IoSink};
use crate::status;
use crate::transport::{Endpoint, IoOwner, TransportOpts};
use crate::wire::fabrics::ConnectData;

/// Bytes read per socket per pass, so one busy host cannot starve others;
/// a connection that spends it is visited again next pass.
const READ_BUDGET: usize = 1 << 20;

/// How long a connection keeps reading, rather than going back to epoll,
/// while the data of an H2CData PDU is still on its way. Over loopback (and
/// wherever the host's CPU is the bottleneck) this moves work off the
/// host: segments that arrive while the target is in a receive call are
/// processed, and acknowledged, by the target's thread, whose
/// acknowledgements then send the host's queued data from the target's
/// CPU; waiting in epoll instead leaves all of it to the host's own
/// sending thread. Measured with spdk_nvme_perf, 1 MiB writes QD4: about
/// 20% more throughput, and 128 KiB writes QD8 steadier between runs (see
/// docs/benchmarks.md); 16 extra reads (a few microseconds) did nothing,
/// 256 (about 100 us) did. Bounded per readiness event, so other
/// connections of the reactor wait at most this long.
const DIRECT_READ_WINDOW: std::time::Duration = std::time::Duration::from_micros(100);
/// SGL identifiers: in-capsule data block (offset) and transport data block.
const SGL_IN_CAPSULE: u8 = 0x01;
const SGL_TRANSPORT: u8 = 0x5a;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for data buffers from the pool.
    AwaitBuffer,
    /// R2T sent; H2CData arriving.
    Receiving,
    /// With the controller or a bdev.
    Executing,
}

struct Slot {
    generation: u16,
    state: SlotState,
    cmd: Command,
    dir: DataDir,
    len: u32,
    received: u32,
    bufs: Vec<DmaBuf>,
    /// A read's data lent by its bdev (a malloc namespace): then `bufs`
    /// is empty (see `dma::Lent`).
    lent: Option<Lent>,
    /// A failure found while receiving data, reported once it is all in.
    error: Option<status::Status>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            generation: 0,
            state: SlotState::Free,
            cmd: Command::default(),
            dir: DataDir::None,
            len: 0,
            received: 0,
            bufs: Vec::with_capacity(4),
            lent: None,
            error: None,
        }
    }
}

/// An H2CData PDU whose data is read from the socket straight into its
/// command's buffers: no copy through the receive buffer.
#[derive(Clone, Copy)]
struct DirectRx {
    idx: u16,
    /// The PDU's header (echoed if the connection must be terminated).
    hdr: pdu::DataHeader,
    /// Where the next byte of data goes in the command's buffers.
    off: usize,
    /// Bytes of data still to come.
    left: usize,
    /// CRC32C of the data so far (data digest on).
    crc: u32,
    /// The data digest as it arrives, and how many of its bytes are to come.
    digest: [u8; pdu::DIGEST_LEN],
    digest_left: usize,
}

/// Bytes of the receive buffer read along with the data of a direct
/// transfer: what follows the data (the next PDUs' headers) without taking
/// much of the next PDU's data, which would then be copied.
const DIRECT_TAIL: usize = 16 * 1024;

/// What this queue pair is attached to.
enum Queue {
    /// Before a successful Connect.
    Unbound,
    Admin(Rc<Controller>),
    Io {
        view: Rc<SubsystemView>,
        subsystem_id: u32,
        cntlid: u16,
        owner: IoOwner,
    },
}

/// What an I/O queue pair carries when it moves to another reactor.
pub(crate) struct ConnParts {
    id: u64,
    stream: TcpStream,
    pub(crate) peer: SocketAddr,
    ep: Endpoint,
    opts: TransportOpts,
    framing: Framing,
    c2h: C2hFraming,
    input: Vec<u8>,
    output: Vec<u8>,
    qid: u16,
    sq_entries: u16,
    sq_head: u16,
    sq_flow_off: bool,
    owner: IoOwner,
    data_timeout: Duration,
    slot: ConnSlot,
}

struct State {
    framing: Framing,
    c2h: C2hFraming,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// An H2CData PDU's data being read straight into its buffers.
    direct: Option<DirectRx>,
    /// Output: PDUs, and read data sent from its buffers.
    tx: TxQueue<OutBuf>,
    write_armed: bool,
    queue: Queue,
    /// Its row of the listener counters, once connected.
    counted: Option<crate::counters::Counted>,
    qid: u16,
    sq_entries: u16,
    sq_head: u16,
    sq_flow_off: bool,
    /// Completions since the host was last sent an SQ head (in a
    /// CapsuleResp): see `Conn::may_omit_resp`.
    unreported: u16,
    slots: Vec<Slot>,
    free: Vec<u16>,
    waiting_buffers: VecDeque<u16>,
    receiving: u32,
    last_data: Instant,
    data_timeout: Duration,
    move_to: Option<(ReactorId, IoOwner)>,
    /// A C2HTermReq is queued: close once it is sent.
    terminating: bool,
    /// Not reading (and its socket not watched for reading) until output
    /// drains below the backlog limit and the receive buffer has room.
    read_paused: bool,
    /// When the connection was accepted.
    since: Instant,
    /// When bytes last arrived.
    last_rx: Instant,
}

pub(crate) struct Conn {
    pub(crate) id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    ep: Endpoint,
    opts: TransportOpts,
    /// The transport (main reactor only: it picks reactors for I/O queues).
    shared: Option<Rc<TcpShared>>,
    group: Weak<TcpGroup>,
    me: Weak<Conn>,
    st: RefCell<State>,
    /// Completions made while `st` may be borrowed (asynchronous events).
    deferred: RefCell<Vec<(u16, Response)>>,
    close_reason: RefCell<Option<String>>,
    /// Log budget of this connection's refusals and faults.
    pub(super) faults: pollux_core::log::FaultLog,
    closed: Cell<bool>,
    /// In the group's list of connections to flush this pass.
    flush_queued: Cell<bool>,
    /// Stop reading while this much output waits (the host is not
    /// reading): the socket layer's `max_output_backlog`.
    tx_limit: usize,
    /// This connection's place in its listener's connection count.
    slot: Cell<Option<ConnSlot>>,
    /// A closed I/O queue pair with commands still on bdevs: (subsystem id,
    /// cntlid, qid) to report to the controller when the last one ends.
    draining: Cell<Option<(u32, u16, u16)>>,
}

fn new_state(opts: &TransportOpts, framing: Framing, c2h: C2hFraming) -> State {
    let nslots = opts.max_queue_depth.max(opts.max_aq_depth as u16) as usize;
    let cap = 2 * Framing { max_in_capsule: opts.in_capsule_data_size.max(fabrics_data_len()), max_h2c_data: MAX_H2C_DATA, ..framing }
        .max_pdu_len();
    State {
        framing,
        c2h,
        rbuf: vec![0; cap],
        rstart: 0,
        rend: 0,
        direct: None,
        tx: TxQueue::with_capacity(64 * 1024),
        write_armed: false,
        queue: Queue::Unbound,
        counted: None,
        qid: 0,
        sq_entries: 1,
        sq_head: 0,
        sq_flow_off: false,
        unreported: 0,
        slots: (0..nslots).map(|_| Slot::new()).collect(),
        free: (0..nslots as u16).rev().collect(),
        waiting_buffers: VecDeque::new(),
        receiving: 0,
        last_data: Instant::now(),
        data_timeout: Duration::from_secs(30),
        move_to: None,
        terminating: false,
        read_paused: false,
        since: Instant::now(),
        last_rx: Instant::now(),
    }
}

/// The socket layer's `max_output_backlog`, read as a connection starts.
fn output_backlog() -> usize {
    pollux_core::sock::posix_options().max_output_backlog as usize
}

/// Connect data is 1024 bytes; in-capsule data must fit at least that.
fn fabrics_data_len() -> u32 {
    size_of::<ConnectData>() as u32
}

/// How long a host may leave an R2T unanswered.
fn data_timeout(kato_ms: u32) -> Duration {
    if kato_ms == 0 { Duration::from_secs(30) } else { Duration::from_millis(u64::from(kato_ms.max(1000))) }
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        ep: Endpoint,
        shared: Rc<TcpShared>,
        group: Weak<TcpGroup>,
        slot: ConnSlot,
    ) -> Rc<Conn> {
        let opts = shared.opts.clone();
        let framing = Framing::initial(opts.in_capsule_data_size.max(fabrics_data_len()), MAX_H2C_DATA);
        let c2h = C2hFraming { header_digest: false, data_digest: false, data_alignment: 4 };
        let st = new_state(&opts, framing, c2h);
        Rc::new_cyclic(|me| Conn {
            id,
            stream,
            peer,
            ep,
            opts,
            shared: Some(shared),
            group,
            me: me.clone(),
            st: RefCell::new(st),
            deferred: RefCell::new(Vec::new()),
            close_reason: RefCell::new(None),
            faults: pollux_core::log::FaultLog::new(),
            closed: Cell::new(false),
            flush_queued: Cell::new(false),
            tx_limit: output_backlog(),
            slot: Cell::new(Some(slot)),
            draining: Cell::new(None),
        })
    }

    pub(crate) fn from_parts(p: ConnParts, group: Weak<TcpGroup>) -> io::Result<Rc<Conn>> {
        let mut st = new_state(&p.opts, p.framing, p.c2h);
        st.rbuf[..p.input.len()].copy_from_slice(&p.input);
        st.rend = p.input.len();
        st.tx.bytes().extend_from_slice(&p.output);
        st.qid = p.qid;
        st.sq_entries = p.sq_entries;
        st.sq_head = p.sq_head;
        st.sq_flow_off = p.sq_flow_off;
        st.data_timeout = p.data_timeout;
        let o = p.owner;
        st.counted = Some(crate::counters::Counted::new(crate::counters::QpairId {
            subsystem_id: o.subsystem_id,
            cntlid: o.cntlid,
            qid: p.qid,
            ep: p.ep,
            peer: Some(p.peer),
        }));
        st.queue = Queue::Io { view: crate::group::subsystem(o.subsystem_id), subsystem_id: o.subsystem_id, cntlid: o.cntlid, owner: o };
        Ok(Rc::new_cyclic(|me| Conn {
            id: p.id,
            stream: p.stream,
            peer: p.peer,
            ep: p.ep,
            opts: p.opts,
            shared: None,
            group,
            me: me.clone(),
            st: RefCell::new(st),
            deferred: RefCell::new(Vec::new()),
            close_reason: RefCell::new(None),
            faults: pollux_core::log::FaultLog::new(),
            closed: Cell::new(false),
            flush_queued: Cell::new(false),
            tx_limit: output_backlog(),
            slot: Cell::new(Some(p.slot)),
            draining: Cell::new(None),
        }))
    }

    pub(crate) fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    fn is_io(&self) -> bool {
        matches!(self.st.borrow().queue, Queue::Io { .. })
    }

    pub(crate) fn count_open(&self, s: &mut GroupStats) {
        if self.is_io() {
            s.io_qpairs += 1;
            s.current_io_qpairs += 1;
        } else {
            s.admin_qpairs += 1;
            s.current_admin_qpairs += 1;
        }
    }

    pub(crate) fn count_close(&self, s: &mut GroupStats) {
        if self.is_io() {
            s.current_io_qpairs = s.current_io_qpairs.saturating_sub(1);
        } else {
            s.current_admin_qpairs = s.current_admin_qpairs.saturating_sub(1);
        }
    }

    /// Commands with the controller or a bdev now.
    pub(crate) fn executing(&self) -> u64 {
        self.st.borrow().slots.iter().filter(|s| s.state == SlotState::Executing).count() as u64
    }

    /// Have the group flush this connection at the end of the pass (once,
    /// however many completions asked).
    fn mark_dirty(&self) {
        if self.flush_queued.replace(true) {
            return;
        }
        if let Some(g) = self.group.upgrade() {
            g.mark_dirty(self.id);
        }
    }

    // ---- Receive ----

    /// The socket is readable (or broke): read and handle what came.
    pub(crate) fn on_readable(&self) {
        let mut total = 0;
        // While H2C data is on its way, keep reading for a while (see
        // `DIRECT_READ_WINDOW`); the deadline is taken when first needed.
        let mut keep_until: Option<u64> = None;
        let mut keep_reading = |st: &State| {
            st.direct.is_some() && {
                let now = pollux_core::clock::ticks();
                now < *keep_until.get_or_insert_with(|| now + pollux_core::clock::duration_to_ticks(DIRECT_READ_WINDOW))
            }
        };
        while !self.closed.get() && total < READ_BUDGET {
            let n = {
                let mut st = self.st.borrow_mut();
                if st.terminating {
                    // Nothing more is read: it closes once the C2HTermReq is out.
                    self.pause_reading(&mut st);
                    break;
                }
                if st.move_to.is_some() {
                    break;
                }
                if st.tx.len() > self.tx_limit {
                    // The host is not reading its answers: stop reading
                    // its commands (and stop the socket waking us for
                    // them: level-triggered, it would spin the reactor).
                    self.pause_reading(&mut st);
                    break;
                }
                // A direct transfer reads into its buffers; otherwise into
                // the receive buffer. Either gives (bytes, socket drained).
                let read = if st.direct.is_some() {
                    self.read_direct(&mut st)
                } else {
                    if st.rstart == st.rend {
                        st.rstart = 0;
                        st.rend = 0;
                    } else if st.rend == st.rbuf.len() {
                        let (a, b) = (st.rstart, st.rend);
                        st.rbuf.copy_within(a..b, 0);
                        st.rend = b - a;
                        st.rstart = 0;
                    }
                    let end = st.rend;
                    let room = st.rbuf.len() - end;
                    if room == 0 {
                        // Full of PDUs waiting for request slots: read more
                        // once completions free some (see `flush`).
                        self.pause_reading(&mut st);
                        break;
                    }
                    (&self.stream).read(&mut st.rbuf[end..]).map(|n| {
                        st.rend += n;
                        (n, n < room)
                    })
                };
                match read {
                    Ok((0, _)) => {
                        drop(st);
                        self.close("the host closed the connection");
                        return;
                    }
                    Ok((n, drained)) => {
                        st.last_rx = Instant::now();
                        // A short read drained the socket: handle what came
                        // and let epoll say when there is more (saves the
                        // read that would only return EAGAIN).
                        if drained {
                            let more = keep_reading(&st);
                            drop(st);
                            self.process();
                            if more {
                                total += n;
                                continue;
                            }
                            break;
                        }
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if keep_reading(&st) {
                            continue;
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        drop(st);
                        self.close(&format!("receive failed: {e}"));
                        return;
                    }
                }
            };
            total += n;
            self.process();
        }
        if total >= READ_BUDGET && !self.closed.get() {
            if let Some(g) = self.group.upgrade() {
                g.again(self.id);
            }
        }
        self.after_processing();
    }

    /// Read the rest of a direct transfer's data into its buffers (then its
    /// digest, then what follows into the receive buffer, which is empty
    /// while a transfer is direct); finish the PDU once all of it is in.
    /// Returns the bytes read and whether the socket gave less than asked
    /// (it is drained).
    fn read_direct(&self, st: &mut State) -> io::Result<(usize, bool)> {
        const MAX_IOV: usize = 16;
        let st = &mut *st;
        let dx = st.direct.as_mut().expect("a direct transfer");
        debug_assert_eq!(st.rstart, st.rend);
        st.rstart = 0;
        st.rend = 0;
        let mut iov: [IoSliceMut<'_>; MAX_IOV] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
        // Room for the digest and the tail after the data.
        let mut n_iov = pollux_core::dma::slices_mut(&mut st.slots[dx.idx as usize].bufs, dx.off, dx.left, &mut iov[..MAX_IOV - 2]);
        let want = dx.left - iov[..n_iov].iter().map(|v| v.len()).sum::<usize>();
        // The digest and the tail only once all the data fits the list.
        if want == 0 {
            let have = pdu::DIGEST_LEN - dx.digest_left;
            if dx.digest_left > 0 {
                iov[n_iov] = IoSliceMut::new(&mut dx.digest[have..]);
                n_iov += 1;
            }
            let tail = st.rbuf.len().min(DIRECT_TAIL);
            iov[n_iov] = IoSliceMut::new(&mut st.rbuf[..tail]);
            n_iov += 1;
        }
        let asked: usize = iov[..n_iov].iter().map(|v| v.len()).sum();
        let n = (&self.stream).read_vectored(&mut iov[..n_iov])?;
        let data = n.min(dx.left);
        if dx.digest_left > 0 && data > 0 {
            let crc = &mut dx.crc;
            pollux_core::dma::for_each_piece(&st.slots[dx.idx as usize].bufs, dx.off, data, |p| *crc = crc32c::crc32c_append(*crc, p));
        }
        dx.off += data;
        dx.left -= data;

        let digest = (n - data).min(dx.digest_left);
        dx.digest_left -= digest;
        st.rend = n - data - digest;
        if n > 0 && dx.left == 0 && dx.digest_left == 0 {
            let dx = st.direct.take().expect("a direct transfer");
            let data_ok = !st.framing.data_digest || dx.crc == u32::from_le_bytes(dx.digest);
            self.h2c_done(st, dx.idx, dx.hdr.datal.get(), data_ok);
        }
        Ok((n, n < asked))
    }

    /// Stop watching the socket for reading (see `State::read_paused`).
    fn pause_reading(&self, st: &mut State) {
        if !st.read_paused {
            st.read_paused = true;
            if let Some(g) = self.group.upgrade() {
                g.set_interest(self.id, self.fd(), false, st.write_armed);
            }
        }
    }

    /// Whether reading is paused (see `State::read_paused`).
    pub(crate) fn read_paused(&self) -> bool {
        self.st.try_borrow().map(|st| st.read_paused).unwrap_or(false)
    }

    /// Bytes that came with a moved connection.
    pub(crate) fn resume(&self) {
        self.process();
        self.after_processing();
    }

    /// Handle every complete PDU in the receive buffer.
    fn process(&self) {
        let mut st = self.st.borrow_mut();
        let rbuf = std::mem::take(&mut st.rbuf);
        while st.rstart < st.rend && !st.terminating && st.move_to.is_none() && !self.closed.get() {
            let parsed = pdu::parse(&rbuf[st.rstart..st.rend], &st.framing);
            match parsed {
                Ok(Parsed::Incomplete(_)) => break,
                Ok(Parsed::DataHead { hdr, data_start }) => {
                    let present = &rbuf[st.rstart + data_start..st.rend];
                    if let Err(f) = self.begin_direct(&mut st, hdr, present) {
                        let hdr = &rbuf[st.rstart..(st.rstart + f.echo).min(st.rend)];
                        self.terminate(&mut st, f, hdr);
                    }
                    st.rstart = st.rend;
                    break;
                }
                Ok(Parsed::Pdu(p, len)) => {
                    // A capsule needs a free slot; without one, wait (the
                    // host sent more than its queue size).
                    if matches!(p, Pdu::CapsuleCmd { .. }) && st.free.is_empty() {
                        break;
                    }
                    let offending = st.rstart;
                    if let Err(f) = self.handle(&mut st, p) {
                        let hdr = &rbuf[offending..(offending + f.echo).min(st.rend)];
                        self.terminate(&mut st, f, hdr);
                        break;
                    }
                    st.rstart += len;
                }
                Err(f) => {
                    let hdr = &rbuf[st.rstart..(st.rstart + f.echo).min(st.rend)];
                    self.terminate(&mut st, f, hdr);
                    break;
                }
            }
        }
        st.rbuf = rbuf;
    }

    /// Move, close or flush after handling input.
    fn after_processing(&self) {
        let move_to = self.st.borrow().move_to.clone();
        if let Some((r, owner)) = move_to {
            self.move_to_reactor(r, owner);
            return;
        }
        self.mark_dirty();
    }

    fn terminate(&self, st: &mut State, f: Fatal, hdr: &[u8]) {
        tracing::warn!("nvmf: {} from {}: terminating the connection", f, self.peer);
        pdu::c2h_term_req(st.tx.bytes(), f.fes, f.fei, hdr);
        st.terminating = true;
    }

    fn handle(&self, st: &mut State, p: Pdu<'_>) -> Result<(), Fatal> {
        match p {
            Pdu::IcReq(ic) => {
                let hd = ic.dgst & pdu::DGST_HEADER != 0;
                let dd = ic.dgst & pdu::DGST_DATA != 0;
                st.framing.connected = true;
                st.framing.header_digest = hd;
                st.framing.data_digest = dd;
                st.c2h = C2hFraming { header_digest: hd, data_digest: dd, data_alignment: (usize::from(ic.hpda) + 1) * 4 };
                pdu::ic_resp(st.tx.bytes(), ic.dgst, MAX_H2C_DATA);
                Ok(())
            }
            Pdu::H2cTermReq(t) => {
                tracing::warn!(
                    "nvmf: host {} terminated the connection (fatal error status {:#x}, field {})",
                    self.peer,
                    t.fes.get(),
                    t.fei.get()
                );
                st.terminating = true;
                Ok(())
            }
            Pdu::CapsuleCmd { cmd, data, data_ok } => {
                self.on_capsule(st, cmd, data, data_ok);
                Ok(())
            }
            Pdu::H2cData { hdr, data, data_ok } => self.on_h2c_data(st, hdr, data, data_ok),
        }
    }

    // ---- Send ----

    /// Write queued output; handle deferred completions and close requests.
    pub(crate) fn flush(&self) {
        self.flush_queued.set(false);
        if self.closed.get() {
            return;
        }
        // PDUs left in the receive buffer while all slots were busy: slots
        // have freed up since (this runs after completions).
        let pending_input = {
            let st = self.st.borrow();
            st.rstart < st.rend && !st.free.is_empty() && !st.terminating && st.move_to.is_none()
        };
        if pending_input {
            self.process();
            let move_to = self.st.borrow().move_to.clone();
            if let Some((r, owner)) = move_to {
                return self.move_to_reactor(r, owner);
            }
        }
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        if !deferred.is_empty() {
            let mut st = self.st.borrow_mut();
            for (cid, r) in deferred {
                let sq_head = Self::next_sq_head(&mut st);
                Self::queue_capsule_resp(&mut st, cid, sq_head, &r);
            }
        }
        if let Some(reason) = self.close_reason.borrow_mut().take() {
            return self.close(&reason);
        }
        let mut st = self.st.borrow_mut();
        let (drained, failed) = match st.tx.flush(&self.stream) {
            Ok(Flushed::All) => (true, None),
            Ok(Flushed::Blocked) => (false, None),
            Err(e) => (false, Some(format!("send failed: {e}"))),
        };
        // Reading goes on once the output is within the backlog limit and
        // the receive buffer has room (PDUs waiting for slots were handled
        // above, as slots freed).
        let resume_reading =
            st.read_paused && !st.terminating && st.tx.len() <= self.tx_limit && (st.rstart > 0 || st.rend < st.rbuf.len());
        if resume_reading {
            st.read_paused = false;
        }
        if drained == st.write_armed || resume_reading {
            st.write_armed = !drained;
            if let Some(g) = self.group.upgrade() {
                g.set_interest(self.id, self.fd(), !st.read_paused, st.write_armed);
            }
        }
        let terminating = st.terminating;
        drop(st);
        if let Some(reason) = failed {
            self.close(&reason);
        } else if terminating && drained {
            self.close("terminated");
        }
    }

    /// End stalled transfers, retry waits for buffers, and let a host that
    /// stopped reading hold no buffers. Returns whether anything happened.
    pub(crate) fn check_timeouts(&self) -> bool {
        let mut st = self.st.borrow_mut();
        // A host that read nothing since the last pass lets go of the read
        // buffers queued for it (sock::TxQueue).
        st.tx.tick(|| pollux_core::sock::unsent_bytes(&self.stream));
        if !st.waiting_buffers.is_empty() {
            self.retry_buffers(&mut st);
            drop(st);
            self.mark_dirty();
            return true;
        }
        if st.receiving > 0 && st.last_data.elapsed() > st.data_timeout {
            let t = st.data_timeout;
            drop(st);
            tracing::warn!("nvmf: host {} left an R2T unanswered for {t:?}: closing the queue pair", self.peer);
            self.close("the host stopped sending solicited data");
            return true;
        }
        // A connection that never connects, or stops in the middle of a PDU
        // (one it could have finished: not one waiting for a slot or for
        // its output to drain), holds memory for nothing.
        let limit = Duration::from_secs(u64::from(self.opts.connect_timeout_sec));
        let why = if matches!(st.queue, Queue::Unbound) && st.move_to.is_none() && st.since.elapsed() > limit {
            Some("no Connect")
        } else if st.rstart < st.rend && !st.read_paused && !st.free.is_empty() && st.last_rx.elapsed() > limit {
            Some("a PDU left unfinished")
        } else {
            None
        };
        if let Some(why) = why {
            drop(st);
            pollux_core::log_fault!(self.faults, "nvmf: connection from {}: {why} within {limit:?}: closed", self.peer);
            self.close(&format!("{why} within {limit:?}"));
            return true;
        }
        false
    }

    // ---- Move and close ----

    fn move_to_reactor(&self, r: ReactorId, owner: IoOwner) {
        let Some(g) = self.group.upgrade() else {
            return;
        };
        let Some(me) = g.remove(self.id) else { return };
        drop(me);
        // Counted as an admin queue when accepted; the new reactor counts it
        // as the I/O queue it is.
        {
            let mut s = g.stats.borrow_mut();
            s.admin_qpairs = s.admin_qpairs.saturating_sub(1);
        }
        let st = self.st.borrow_mut();
        // Only a Connect moves a queue pair: no data transfer is under way.
        debug_assert!(st.direct.is_none(), "a queue pair moved in the middle of H2C data");
        let input = st.rbuf[st.rstart..st.rend].to_vec();
        let output = st.tx.unsent();
        let Ok(stream) = self.stream.try_clone() else {
            drop(st);
            return self.close("cannot hand the socket over");
        };
        let parts = ConnParts {
            id: self.id,
            stream,
            peer: self.peer,
            ep: self.ep,
            opts: self.opts.clone(),
            framing: st.framing,
            c2h: st.c2h,
            input,
            output,
            qid: st.qid,
            sq_entries: st.sq_entries,
            sq_head: st.sq_head,
            sq_flow_off: st.sq_flow_off,
            owner,
            data_timeout: st.data_timeout,
            slot: self.slot.take().unwrap_or_else(ConnSlot::uncounted),
        };
        // This half is done: its descriptor closes when dropped, the clone
        // carries the socket on.
        self.closed.set(true);
        drop(st);
        reactor::send_msg(r, move || super::group::adopt_moved(parts));
    }

    /// Close the connection now and release what it holds.
    pub(crate) fn close(&self, reason: &str) {
        if self.closed.replace(true) {
            return;
        }
        let group = self.group.upgrade();
        let me = group.as_ref().and_then(|g| g.remove(self.id));
        let _ = self.stream.shutdown(Shutdown::Both);
        drop(self.slot.take());
        // Nothing more goes out: what was queued (buffers, lent memory) is
        // let go now, not when the last command still on a bdev finishes.
        self.st.borrow_mut().tx.clear();
        let (queue, qid) = {
            let mut st = self.st.borrow_mut();
            st.counted = None;
            (std::mem::replace(&mut st.queue, Queue::Unbound), st.qid)
        };
        match queue {
            Queue::Unbound => {
                tracing::debug!("nvmf: connection from {} closed: {reason}", self.peer)
            }
            Queue::Admin(c) => c.destroy(&format!("admin queue closed: {reason}")),
            Queue::Io { subsystem_id, cntlid, .. } => {
                tracing::debug!("nvmf: I/O queue {qid} of controller {cntlid} from {} closed: {reason}", self.peer);
                match (self.executing(), group, me) {
                    (0, _, _) | (_, None, _) | (_, _, None) => self.report_closed(subsystem_id, cntlid, qid),
                    (_, Some(g), Some(me)) => {
                        self.draining.set(Some((subsystem_id, cntlid, qid)));
                        g.draining.borrow_mut().insert(self.id, me);
                    }
                }
            }
        }
    }

    /// This queue pair's place in the counters, once connected.
    pub(super) fn counted(&self, subsystem_id: u32, cntlid: u16, qid: u16) -> crate::counters::Counted {
        crate::counters::Counted::new(crate::counters::QpairId { subsystem_id, cntlid, qid, ep: self.ep, peer: Some(self.peer) })
    }

    fn report_closed(&self, subsystem_id: u32, cntlid: u16, qid: u16) {
        let id = self.id;
        crate::ctrlr::report_io_qpair_closed(subsystem_id, cntlid, qid, id);
    }

    /// A command of a closed connection finished: forget it, and once none
    /// is left tell the controller the queue pair is gone.
    fn finished_after_close(&self, idx: u16, generation: u16) {
        {
            let mut st = self.st.borrow_mut();
            let Some(slot) = st.slots.get_mut(idx as usize) else { return };
            if slot.generation != generation || slot.state != SlotState::Executing {
                return;
            }
            slot.state = SlotState::Free;
        }
        if self.executing() == 0 {
            if let Some((subsystem_id, cntlid, qid)) = self.draining.take() {
                if let Some(g) = self.group.upgrade() {
                    g.draining.borrow_mut().remove(&self.id);
                }
                self.report_closed(subsystem_id, cntlid, qid);
            }
        }
    }
}

impl AdminQueue for Conn {
    fn complete(&self, cid: u16, resp: Response) {
        self.deferred.borrow_mut().push((cid, resp));
        self.mark_dirty();
    }

    fn close(&self, reason: &str) {
        *self.close_reason.borrow_mut() = Some(reason.to_string());
        self.mark_dirty();
    }
}

impl IoSink for Conn {
    fn io_done(&self, tag: u32, resp: Response, io: Option<BdevIo>) {
        let idx = (tag & 0xffff) as u16;
        let generation = (tag >> 16) as u16;
        if self.closed.get() {
            return self.finished_after_close(idx, generation);
        }
        let mut st = self.st.borrow_mut();
        let Some(slot) = st.slots.get_mut(idx as usize) else {
            return;
        };
        if slot.generation != generation || slot.state != SlotState::Executing {
            return;
        }
        if let Some(mut io) = io {
            io.take_buffers_into(&mut slot.bufs);
            slot.lent = io.take_lent();
        }
        self.respond(&mut st, idx, resp);
        if !st.waiting_buffers.is_empty() {
            self.retry_buffers(&mut st);
        }
        drop(st);
        self.mark_dirty();
    }
}
