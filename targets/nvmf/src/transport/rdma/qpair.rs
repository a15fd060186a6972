//! One NVMe/RDMA queue pair: its CM id and QP, a completion queue (with a
//! completion channel for interrupt mode), receive buffers for command
//! capsules, a 16-byte response buffer and a data buffer per command
//! slot, all registered once when the connection is accepted.
//!
//! A capsule is taken into a free slot as soon as it is received and its
//! receive buffer is posted again. Write data in a keyed SGL is fetched
//! with an RDMA READ (at most as many at once as the host's responder
//! resources allow; the rest wait in order), in-capsule data is copied
//! from the capsule. The command then runs (Fabrics, admin or I/O, as on
//! TCP). Read data goes back with an RDMA WRITE, then the completion in a
//! SEND; the slot is free again when that SEND has completed (the
//! device reads both buffers until then).
//!
//! A work completion in error (other than a flush after the connection
//! ended) or a malformed capsule ends this queue pair only: the QP is
//! disconnected and every buffer it registered is released with it.

// Posting work requests is unsafe (the device uses the memory until the
// request completes): each post says why its memory stays valid.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};

use std::time::{Duration, Instant};

use pollux_core::bdev::BdevIo;
use pollux_core::dma::DmaBuf;
use pollux_core::log::FaultLog;
use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use pollux_core::sock::ConnSlot;
use pollux_core::sys::Interest;
use pollux_nvme_spec::cmd::Command;
use pollux_rdma::sys::{IBV_WC_RDMA_READ, IBV_WC_RECV, IBV_WC_SUCCESS, IBV_WC_WR_FLUSH_ERR, RECV_CHAIN, ibv_wc};
use pollux_rdma::{
    CmId, CompletionChannel, CompletionQueue, ConnParam, ConnectRequest, MemoryRegion, QpCaps, SendOp, SendWr, SharedReceiveQueue,
};
use zerocopy::{FromBytes, IntoBytes};

use super::{Group, PoolRegions, capsule};
use crate::ctrlr::connect::{self, Connected};
use crate::ctrlr::{AdminQueue, Controller, IoQpairRef, Response, admin};
use crate::group::SubsystemView;
use crate::io::{self as nvm, Completer, DataDir, IoSink};
use crate::status;
use crate::transport::{Endpoint, IoOwner, TransportOpts};
use crate::wire::fabrics::{self, ConnectCommand, ConnectData, PropertyCommand};
use pollux_nvme_spec::rdma::{self as cm_data, reject::*, reject_data};

const CAPSULE_CMD: usize = capsule::COMMAND_LEN;
const RESPONSE: usize = 16;
/// Work request kinds, in bits 32..40 of a wr_id.
pub(super) const WR_RECV: u64 = 1;
const WR_READ: u64 = 2;
const WR_WRITE: u64 = 3;
const WR_SEND: u64 = 4;
/// Responses posted in one chain at most (two work requests each).
const RESPONSE_BATCH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for a data buffer from the reactor's pool.
    AwaitBuffer,
    /// Waiting for a turn to issue its RDMA READ.
    AwaitRead,
    /// RDMA READ of its data in flight.
    Reading,
    /// With the controller or a bdev.
    Executing,
    /// Data and completion posted; free once the SEND completes.
    Responding,
}

struct Slot {
    generation: u16,
    state: SlotState,
    cmd: Command,
    dir: DataDir,
    len: u32,
    /// The host's buffer (keyed SGL).
    remote: (u64, u32),
    /// Its response carries data (an RDMA WRITE before the SEND).
    write_data: bool,
    /// Its data is named by a keyed SGL (fetched with an RDMA READ).
    keyed: bool,
    /// In-capsule data still in receive buffer `held_recv`: where, how long.
    incap: Option<(usize, u32)>,
    /// The receive buffer of its capsule, held until its data is copied.
    held_recv: Option<u16>,
    /// Its data buffer while it has one (from the reactor's pool, which
    /// the device reaches through the pool's registrations).
    bufs: Vec<DmaBuf>,
}

enum Queue {
    Unbound,
    Admin(Rc<Controller>),
    Io { view: Rc<SubsystemView>, subsystem_id: u32, cntlid: u16, owner: IoOwner },
}

struct State {
    cm: Option<CmId>,
    cq: Rc<CompletionQueue>,
    _cch: Rc<CompletionChannel>,
    capsule: usize,
    /// Where its capsules arrive.
    recv: Recv,
    resp_buf: Box<[u8]>,
    resp_mr: MemoryRegion,
    /// The reactor's buffer pool and its registrations on this device.
    pool: Rc<PoolRegions>,
    /// The longest transfer a command may name.
    max_len: u32,
    /// Slots waiting for a data buffer, in order.
    await_buffer: VecDeque<u16>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    queue: Queue,
    /// Its row of the listener counters, once connected.
    counted: Option<crate::counters::Counted>,
    qid: u16,
    sq_head: u16,
    sq_entries: u16,
    /// RDMA READs in flight, and the most allowed (the host's responder
    /// resources); slots waiting for a turn, in order.
    reads: u16,
    max_reads: u16,
    await_read: VecDeque<u16>,
    established: bool,
    /// Commands with a bdev.
    executing: u32,
    /// Receive buffers whose capsules were taken, to post again.
    repost: Vec<u16>,
    repost_wrs: Vec<(u64, pollux_rdma::sys::ibv_sge)>,
    repost_ids: Vec<u32>,
    /// Slots whose responses wait to be posted (end of the pass).
    to_send: Vec<u16>,
    /// Slots whose responses are posted, in order, until a signaled SEND
    /// at or after theirs completes.
    sent: VecDeque<u16>,
    /// Its device's counters in the transport's stats.
    dev: usize,
}

/// The receive buffers of a queue pair's capsules.
enum Recv {
    /// Its own receive queue: a buffer per queue entry (the region is
    /// dropped before the memory).
    Own { mr: MemoryRegion, buf: Box<[u8]> },
    /// The reactor's shared receive queue on its device (`no_srq` false):
    /// every buffer it takes from it is given back (`repost`, and on close
    /// what is left, see `Drop for State`).
    Shared(Rc<SharedReceiveQueue>),
}

impl State {
    /// The first `len` bytes of receive buffer `i`, whose capsule was taken.
    fn capsule_bytes(&self, i: u16, len: usize) -> &[u8] {
        match &self.recv {
            Recv::Own { buf, .. } => {
                let at = i as usize * self.capsule;
                &buf[at..at + len.min(self.capsule)]
            }
            // SAFETY: buffer i's receive completed and it is posted again
            // only through `repost`, after its capsule (and any in-capsule
            // data) was copied.
            Recv::Shared(q) => unsafe { q.buffer(u32::from(i), len) },
        }
    }
}

impl State {
    /// Give every shared receive buffer it still holds back to its queue:
    /// those of capsules received and not handled (still in its CQ), those
    /// waiting to be posted again, and those its commands hold. After a
    /// close (the QP takes no more) and when it goes.
    fn return_shared_buffers(&mut self) {
        let Recv::Shared(q) = &self.recv else { return };
        let mut wc = [ibv_wc::default(); 32];
        while let Ok(n @ 1..) = self.cq.poll(&mut wc) {
            for w in &wc[..n] {
                if w.wr_id >> 32 == WR_RECV {
                    self.repost.push((w.wr_id & 0xffff) as u16);
                }
            }
        }
        let mut left: Vec<u32> = self.repost.drain(..).map(u32::from).collect();
        left.extend(self.slots.iter_mut().filter_map(|s| s.held_recv.take()).map(u32::from));
        if !left.is_empty() {
            if let Err(e) = q.repost(&left, WR_RECV << 32) {
                tracing::warn!("nvmf rdma: giving receive buffers back to the shared queue: {e}");
            }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Capsules that came after the close too.
        self.return_shared_buffers();
    }
}

/// Post receive buffers `ids` of a queue pair's own receive queue (its
/// capsule buffers, `capsule` bytes each in `mr`), in chains (`wrs` is the
/// list kept for it). At creation every buffer; later those whose capsules
/// were taken.
fn post_own_recvs(
    cm: &CmId,
    mr: &MemoryRegion,
    capsule: usize,
    wrs: &mut Vec<(u64, pollux_rdma::sys::ibv_sge)>,
    ids: impl IntoIterator<Item = u16>,
) -> Result<(), pollux_rdma::Error> {
    wrs.clear();
    for i in ids {
        let at = mr.addr() + (i as usize * capsule) as u64;
        wrs.push((wr_id(WR_RECV, i, 0), mr.sge(at, capsule as u32)));
    }
    // SAFETY: the receive buffers live in the queue pair's State until
    // after the QP is destroyed (State drops `cm` first), and none of them
    // holds a capsule not yet taken.
    unsafe { cm.post_recv_chain(wrs) }
}

pub(crate) struct RdmaQpair {
    id: u64,
    peer: Option<SocketAddr>,
    ep: Endpoint,
    opts: TransportOpts,
    me: Weak<RdmaQpair>,
    group: Weak<Group>,
    st: RefCell<State>,
    closed: Cell<bool>,
    /// Closed with commands on a bdev: what to report once they are done.
    draining: RefCell<Option<(u32, u16, u16)>>,
    /// Completions and a close asked for by the controller, run from the
    /// poller (the controller may ask while this queue pair is busy).
    deferred: RefCell<Vec<(u16, Response)>>,
    close_reason: RefCell<Option<String>>,
    poller: RefCell<Option<Poller>>,
    /// Its poller is running (responses are posted at its end).
    in_poll: Cell<bool>,
    /// The reactor's sleep count when it last looked at its channel.
    sleeps_seen: Cell<u64>,
    /// When it was accepted (it must connect within connect_timeout_sec).
    since: Instant,
    faults: FaultLog,
    /// Its place in its listener's count.
    _slot: ConnSlot,
}

fn wr_id(kind: u64, idx: u16, generation: u16) -> u64 {
    (kind << 32) | (u64::from(generation) << 16) | u64::from(idx)
}

/// A connection request: check the host's private data, set the queue
/// pair up and accept it, or reject it with the NVMe/RDMA status.
pub(super) fn accept(shared: &Rc<Group>, id: u64, ep: Endpoint, req: ConnectRequest, slot: ConnSlot) {
    let d = req.private_data.clone();
    let peer = req.id.peer_addr();
    let refuse = |req: ConnectRequest, sts: u16, why: String| {
        tracing::warn!("nvmf rdma: connection from {peer:?} on {ep} refused: {why}");
        let _ = req.id.reject(&reject_data(sts));
    };
    let Some(cm_data::Request { recfmt, qid, hrqsize, hsqsize }) = cm_data::Request::parse(&d) else {
        return refuse(req, INVALID_PRIVATE_DATA_LENGTH, format!("{} bytes of private data", d.len()));
    };
    if recfmt != cm_data::RECFMT {
        return refuse(req, INVALID_RECFMT, format!("record format {recfmt}"));
    }
    let o = &shared.opts;
    let max = if qid == 0 { o.max_aq_depth.min(u32::from(u16::MAX)) as u16 } else { o.max_queue_depth };
    if hrqsize == 0 {
        return refuse(req, INVALID_HRQSIZE, "HRQSIZE 0".into());
    }
    if hsqsize == 0 || hsqsize >= max {
        return refuse(req, INVALID_HSQSIZE, format!("HSQSIZE {hsqsize} (at most {})", max - 1));
    }
    // Commands outstanding at most: the SQ's entries, and no more
    // completions than the host can receive.
    let depth = (hsqsize + 1).min(hrqsize).min(max);
    match RdmaQpair::new(shared, id, ep, peer, qid, depth, req.responder_resources, req.id, slot) {
        Ok((q, cm)) => {
            let rep = cm_data::accept(depth);
            let max_reads = q.st.borrow().max_reads;
            let p = ConnParam {
                private_data: &rep,
                // RDMA READs the host may have outstanding against us (it
                // asks for none: the target reads and writes, the host
                // does not), and ours against it.
                responder_resources: req.initiator_depth.min(16),
                initiator_depth: max_reads as u8,
                retry_count: 7,
                rnr_retry_count: 7,
            };
            if let Err(e) = cm.accept(&p) {
                tracing::warn!("nvmf rdma: accepting {peer:?} on {ep}: {e}");
                return;
            }
            q.st.borrow_mut().cm = Some(cm);
            shared.qpairs.borrow_mut().insert(id, q);
            tracing::debug!("nvmf rdma: queue {qid} from {peer:?} on {ep}: depth {depth}, {max_reads} RDMA READs at once");
        }
        Err((cm, e)) => {
            tracing::warn!("nvmf rdma: connection from {peer:?} on {ep} refused: {e}");
            let _ = cm.reject(&reject_data(NO_RESOURCES));
        }
    }
}

impl RdmaQpair {
    #[allow(clippy::too_many_arguments)]
    fn new(
        shared: &Rc<Group>,
        id: u64,
        ep: Endpoint,
        peer: Option<SocketAddr>,
        qid: u16,
        depth: u16,
        host_responder_resources: u8,
        mut cm: CmId,
        slot: ConnSlot,
    ) -> Result<(Rc<RdmaQpair>, CmId), (CmId, String)> {
        let o = shared.opts.clone();
        let setup = |cm: &mut CmId| -> Result<State, String> {
            let dev = cm.device().ok_or("the CM id has no device")?;
            let limits = dev.limits().map_err(|e| e.to_string())?;
            let pd = shared.pd(dev).map_err(|e| e.to_string())?;
            let cch = CompletionChannel::new(dev).map_err(|e| e.to_string())?;
            let n = u32::from(depth);
            let cq = CompletionQueue::new(dev, n * 4, Some(cch.clone())).map_err(|e| e.to_string())?;
            let caps = QpCaps { max_send_wr: n * 3, max_recv_wr: n, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 };
            let capsule = CAPSULE_CMD + o.in_capsule_data_size as usize;
            let recv = if o.no_srq {
                cm.create_qp(&pd, &cq, &cq, caps).map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; capsule * depth as usize].into_boxed_slice();
                // SAFETY: the buffer is a Box kept in the same Recv as the
                // region (its heap memory never moves), dropped after it,
                // and after the QP (State drops `cm` first).
                let mr = unsafe { pd.register_local(buf.as_mut_ptr(), buf.len()) }.map_err(|e| e.to_string())?;
                Recv::Own { mr, buf }
            } else {
                let srq = shared.srq(dev, capsule)?;
                cm.create_qp_srq(&pd, &cq, &cq, caps, &srq).map_err(|e| e.to_string())?;
                Recv::Shared(srq)
            };
            let mut resp_buf = vec![0u8; RESPONSE * depth as usize].into_boxed_slice();
            // SAFETY: as above.
            let resp_mr = unsafe { pd.register_local(resp_buf.as_mut_ptr(), resp_buf.len()) }.map_err(|e| e.to_string())?;
            let pool = shared.pool_regions(dev)?;
            let slots = (0..depth)
                .map(|_| Slot {
                    generation: 0,
                    state: SlotState::Free,
                    cmd: Command::default(),
                    dir: DataDir::None,
                    len: 0,
                    remote: (0, 0),
                    write_data: false,
                    keyed: false,
                    incap: None,
                    held_recv: None,
                    bufs: Vec::with_capacity(1),
                })
                .collect();
            let max_reads = u32::from(host_responder_resources).min(limits.max_qp_init_rd_atom).clamp(1, 16) as u16;
            Ok(State {
                cm: None,
                cq,
                _cch: cch,
                capsule,
                recv,
                resp_buf,
                resp_mr,
                pool,
                max_len: o.max_io_size.max(size_of::<ConnectData>() as u32),
                await_buffer: VecDeque::new(),
                slots,
                free: (0..depth).rev().collect(),
                queue: Queue::Unbound,
                counted: None,
                qid,
                sq_head: 0,
                sq_entries: depth,
                reads: 0,
                max_reads,
                await_read: VecDeque::new(),
                established: false,
                executing: 0,
                repost: Vec::with_capacity(depth as usize),
                repost_wrs: Vec::with_capacity(depth as usize),
                repost_ids: Vec::with_capacity(depth as usize),
                to_send: Vec::with_capacity(RESPONSE_BATCH),
                sent: VecDeque::with_capacity(depth as usize),
                dev: shared.stats.borrow_mut().device(&dev.name()),
            })
        };
        let st = match setup(&mut cm) {
            Ok(st) => st,
            Err(e) => return Err((cm, e)),
        };
        let q = Rc::new_cyclic(|me| RdmaQpair {
            id,
            peer,
            ep,
            opts: o,
            me: me.clone(),
            group: Rc::downgrade(shared),
            st: RefCell::new(st),
            closed: Cell::new(false),
            draining: RefCell::new(None),
            deferred: RefCell::new(Vec::new()),
            close_reason: RefCell::new(None),
            poller: RefCell::new(None),
            in_poll: Cell::new(false),
            sleeps_seen: Cell::new(u64::MAX),
            since: Instant::now(),
            faults: FaultLog::default(),
            _slot: slot,
        });
        // Its own receive queue: receives for every capsule the host may
        // send (a shared queue has its receives posted already).
        let posted = {
            let mut st = q.st.borrow_mut();
            let st = &mut *st;
            match &st.recv {
                Recv::Own { mr, .. } => Some(post_own_recvs(&cm, mr, st.capsule, &mut st.repost_wrs, 0..depth)),
                Recv::Shared(_) => None,
            }
        };
        if let Some(r) = posted {
            if let Err(e) = r {
                return Err((cm, e.to_string()));
            }
            let dev = q.st.borrow().dev;
            Self::count_dev(&q.group, dev, |d| {
                d.total_recv_wrs += u64::from(depth);
                d.recv_doorbells += (depth as usize).div_ceil(RECV_CHAIN) as u64;
            });
        }
        let weak = Rc::downgrade(&q);
        let poller = reactor::register_poller("nvmf_rdma_qpair", move || match weak.upgrade() {
            Some(q) => q.poll(),
            None => PollStatus::Idle,
        });
        let fd = q.st.borrow()._cch.fd();
        if reactor::interrupt_mode() {
            if let Err(e) = poller.add_wake_fd(fd, Interest::READABLE) {
                return Err((cm, e.to_string()));
            }
            let _ = q.st.borrow().cq.arm();
            let weak = Rc::downgrade(&q);
            poller.set_before_sleep(move || weak.upgrade().is_some_and(|q| q.before_sleep()));
        }
        *q.poller.borrow_mut() = Some(poller);
        Ok((q, cm))
    }

    /// Post again, in one chain, the receive buffers taken in this pass.
    fn repost(&self) -> Result<(), pollux_rdma::Error> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if st.repost.is_empty() {
            return Ok(());
        }
        let n = st.repost.len();
        Self::count_dev(&self.group, st.dev, |d| d.recv_doorbells += n.div_ceil(RECV_CHAIN) as u64);
        match &st.recv {
            Recv::Shared(q) => {
                st.repost_ids.clear();
                st.repost_ids.extend(st.repost.drain(..).map(u32::from));
                q.repost(&st.repost_ids, WR_RECV << 32)
            }
            Recv::Own { mr, .. } => {
                let Some(cm) = st.cm.as_ref() else { return Ok(()) };
                post_own_recvs(cm, mr, st.capsule, &mut st.repost_wrs, st.repost.drain(..))
            }
        }
    }

    /// Commands with a bdev, RDMA READs waiting, the device's index.
    pub(super) fn gauges(&self) -> (u32, usize, usize) {
        match self.st.try_borrow() {
            Ok(st) => (st.executing, st.await_read.len(), st.dev),
            Err(_) => (0, 0, 0),
        }
    }

    fn count(shared: &Weak<Group>, f: impl FnOnce(&mut super::RdmaStats)) {
        if let Some(s) = shared.upgrade() {
            f(&mut s.stats.borrow_mut());
        }
    }

    fn count_dev(shared: &Weak<Group>, dev: usize, f: impl FnOnce(&mut super::DeviceStats)) {
        if let Some(s) = shared.upgrade() {
            if let Some(d) = s.stats.borrow_mut().devices.get_mut(dev) {
                f(d);
            }
        }
    }

    /// How long it has been open without a Fabrics Connect (zero once
    /// connected or closed).
    pub(super) fn unconnected_for(&self) -> Duration {
        let bound = self.st.try_borrow().map_or(true, |st| !matches!(st.queue, Queue::Unbound));
        if bound || self.closed.get() { Duration::ZERO } else { self.since.elapsed() }
    }

    /// Log a fault of this queue pair's host (rate-limited per queue pair).
    pub(super) fn log_fault(&self, what: &str) {
        pollux_core::log_fault!(self.faults, "nvmf rdma: queue pair from {:?} on {}: {what}", self.peer, self.ep);
    }

    pub(super) fn established(&self) {
        self.st.borrow_mut().established = true;
    }

    /// Take completions; in interrupt mode arm the CQ once it is empty,
    /// then look once more (a completion between the last poll and the
    /// arm raised no event).
    fn poll(&self) -> PollStatus {
        if self.closed.get() {
            return PollStatus::Idle;
        }
        self.in_poll.set(true);
        let busy = self.poll_pass();
        self.in_poll.set(false);
        if !self.closed.get() {
            if let Ok(mut st) = self.st.try_borrow_mut() {
                Self::post_responses(&self.group, &mut st);
            }
        }
        busy
    }

    fn poll_pass(&self) -> PollStatus {
        if let Some(why) = self.close_reason.borrow_mut().take() {
            self.close(&why);
            return PollStatus::Busy;
        }
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        for (cid, resp) in deferred {
            self.complete_now(cid, resp);
        }
        self.retry_waiting();
        let irq = reactor::interrupt_mode();
        let mut wc = [ibv_wc::default(); 32];
        let mut busy = PollStatus::Idle;
        let dev = self.st.borrow().dev;
        let mut taken = 0u64;
        if irq {
            // Quiet the channel's fd before polling (so that no completion
            // is left behind an event taken): the events that completions
            // polled while armed raised (none: no system call), and after
            // each sleep whatever is there (this fd may have woken us).
            let sleeps = reactor::sleeps();
            let look = self.sleeps_seen.replace(sleeps) != sleeps;
            if let Err(e) = self.st.borrow().cq.take_events(look) {
                tracing::warn!("nvmf rdma: reading its completion channel: {e}");
            }
        }
        let busy = loop {
            let got = self.st.borrow().cq.poll(&mut wc);
            let n = match got {
                Ok(n) => n,
                Err(e) => break self.fail(&format!("polling its CQ: {e}")),
            };
            if n == 0 {
                // Interrupt mode arms the CQ only before the reactor sleeps
                // (`before_sleep`), not on every pass.
                break busy;
            }
            busy = PollStatus::Busy;
            taken += n as u64;
            for w in &wc[..n] {
                self.on_completion(w);
                if self.closed.get() {
                    break;
                }
            }
            if let Err(e) = self.repost() {
                break self.fail(&format!("posting receives: {e}"));
            }
            if self.closed.get() {
                break busy;
            }
        };
        // Data buffers given back by the SENDs completed in this pass.
        self.retry_waiting();
        Self::count_dev(&self.group, dev, |d| {
            d.polls += 1;
            d.idle_polls += u64::from(busy == PollStatus::Idle);
            d.completions += taken;
        });
        busy
    }

    /// The reactor is about to sleep: arm the CQ (an event at the next
    /// completion wakes it), then look once more: a completion that came
    /// before the arming raised no event, so it is handled now and the
    /// reactor stays up.
    fn before_sleep(&self) -> bool {
        if self.closed.get() {
            return false;
        }
        if let Err(e) = self.st.borrow().cq.arm() {
            self.fail(&format!("arming its CQ: {e}"));
            return true;
        }
        self.poll() == PollStatus::Busy
    }

    fn fail(&self, why: &str) -> PollStatus {
        tracing::warn!("nvmf rdma: queue pair from {:?} on {}: {why}", self.peer, self.ep);
        self.close(why);
        PollStatus::Busy
    }

    fn on_completion(&self, w: &ibv_wc) {
        let kind = w.wr_id >> 32;
        let idx = (w.wr_id & 0xffff) as u16;
        let generation = ((w.wr_id >> 16) & 0xffff) as u16;
        if w.status != IBV_WC_SUCCESS {
            if kind == WR_RECV && !self.closed.get() {
                // The receive buffer was used up all the same (a shared
                // queue's must go back to it).
                self.st.borrow_mut().repost.push(idx);
            }
            if w.status != IBV_WC_WR_FLUSH_ERR {
                let why = pollux_rdma::lib().map_or("?", |l| l.wc_status_str(w.status));
                self.fail(&format!("work completion error: {why} (vendor error {:#x})", w.vendor_err));
            }
            return;
        }
        match kind {
            WR_RECV if w.opcode == IBV_WC_RECV => {
                let r = {
                    let mut st = self.st.borrow_mut();
                    let r = self.on_capsule(&mut st, idx, w.byte_len as usize);
                    if r.is_err() {
                        // Not taken: the buffer goes back.
                        st.repost.push(idx);
                    }
                    r
                };
                if let Err(why) = r {
                    self.fail(&why);
                }
            }
            WR_READ if w.opcode == IBV_WC_RDMA_READ => {
                let mut st = self.st.borrow_mut();
                st.reads = st.reads.saturating_sub(1);
                let ok = st.slots.get(idx as usize).is_some_and(|s| s.generation == generation && s.state == SlotState::Reading);
                if ok {
                    st.slots[idx as usize].state = SlotState::Executing;
                    self.execute(&mut st, idx);
                }
                self.issue_reads(&mut st);
            }
            WR_SEND => {
                // Only the last SEND of each chain is signaled: the send
                // queue completes in order, so every response posted up to
                // this one is done (its buffers free).
                let mut st = self.st.borrow_mut();
                let ok = st.slots.get(idx as usize).is_some_and(|s| s.generation == generation && s.state == SlotState::Responding);
                if !ok || !st.sent.contains(&idx) {
                    drop(st);
                    self.fail(&format!("a SEND completion for slot {idx}, which has no response out"));
                    return;
                }
                while let Some(done) = st.sent.pop_front() {
                    Self::release(&mut st, done);
                    if done == idx {
                        break;
                    }
                }
            }
            WR_WRITE => {}
            _ => {
                self.fail(&format!("a completion it did not ask for (wr_id {:#x}, opcode {})", w.wr_id, w.opcode));
            }
        }
    }

    /// A capsule arrived in receive buffer `i`: take it into a slot, post
    /// the buffer again, then fetch its data or run it.
    fn on_capsule(&self, st: &mut State, i: u16, len: usize) -> Result<(), String> {
        if len > st.capsule {
            return Err(format!("a {len}-byte capsule"));
        }
        let Some(idx) = st.free.pop() else {
            return Err("more commands than its queue holds".into());
        };
        Self::count_dev(&self.group, st.dev, |d| {
            d.requests += 1;
            d.total_recv_wrs += 1;
        });
        let max_len = st.max_len as usize;
        let (cmd, plan) = capsule::read(st.capsule_bytes(i, len), max_len).ok_or_else(|| format!("a {len}-byte capsule"))?;
        let slot = &mut st.slots[idx as usize];
        slot.state = SlotState::Executing;
        slot.cmd = cmd;
        slot.dir = DataDir::None;
        slot.len = 0;
        slot.keyed = false;
        slot.incap = None;
        let outcome = plan.map(|p| {
            slot.dir = p.dir;
            slot.len = p.len();
            match p.data {
                capsule::Data::None => {}
                capsule::Data::Keyed { addr, key, .. } => {
                    slot.keyed = true;
                    slot.remote = (addr, key);
                }
                capsule::Data::InCapsule { off, len } => slot.incap = Some((capsule::COMMAND_LEN + off, len)),
            }
        });
        if let Err(s) = outcome {
            // The receive buffer goes back to the host with the others
            // taken in this pass, in one chain (`repost`).
            st.repost.push(i);
            self.respond(st, idx, Response::err(s));
            return Ok(());
        }
        // Held until its in-capsule data is copied into the data buffer.
        st.slots[idx as usize].held_recv = Some(i);
        if st.await_buffer.is_empty() {
            self.start(st, idx);
        } else {
            st.slots[idx as usize].state = SlotState::AwaitBuffer;
            st.await_buffer.push_back(idx);
        }
        Ok(())
    }

    /// Give a command its data buffer from the reactor's pool (or have it
    /// wait for one, in order), then fetch its data or run it.
    fn start(&self, st: &mut State, idx: u16) {
        let slot = &mut st.slots[idx as usize];
        if slot.len > 0 && slot.bufs.is_empty() {
            match st.pool.pool.get(slot.len as usize) {
                Some(b) => slot.bufs.push(b),
                None => {
                    slot.state = SlotState::AwaitBuffer;
                    st.await_buffer.push_back(idx);
                    return;
                }
            }
        }
        slot.state = SlotState::Executing;
        if let (Some((from, len)), Some(i)) = (slot.incap.take(), slot.held_recv) {
            let len = len as usize;
            let mut b = std::mem::take(&mut st.slots[idx as usize].bufs);
            b[0][..len].copy_from_slice(&st.capsule_bytes(i, from + len)[from..]);
            st.slots[idx as usize].bufs = b;
        }
        if let Some(i) = st.slots[idx as usize].held_recv.take() {
            st.repost.push(i);
        }
        let slot = &mut st.slots[idx as usize];
        if slot.dir == DataDir::HostToController && slot.keyed {
            slot.state = SlotState::AwaitRead;
            st.await_read.push_back(idx);
            self.issue_reads(st);
        } else {
            self.execute(st, idx);
        }
    }

    /// Start the commands that wait for data buffers, while the pool has
    /// them.
    fn retry_waiting(&self) {
        if self.closed.get() {
            return;
        }
        let mut st = self.st.borrow_mut();
        if !st.await_buffer.is_empty() {
            self.retry_buffers(&mut st);
        }
    }

    fn retry_buffers(&self, st: &mut State) {
        while let Some(idx) = st.await_buffer.pop_front() {
            if st.slots[idx as usize].state != SlotState::AwaitBuffer {
                continue;
            }
            self.start(st, idx);
            if st.slots[idx as usize].state == SlotState::AwaitBuffer {
                // Still none: `start` queued it last; it keeps its place.
                st.await_buffer.pop_back();
                st.await_buffer.push_front(idx);
                return;
            }
        }
    }

    /// Issue waiting RDMA READs while the host's responder resources allow.
    fn issue_reads(&self, st: &mut State) {
        while st.reads < st.max_reads {
            let Some(idx) = st.await_read.pop_front() else { break };
            let slot = &mut st.slots[idx as usize];
            if slot.state != SlotState::AwaitRead {
                continue;
            }
            slot.state = SlotState::Reading;
            let Some(sge) = slot.bufs.first().and_then(|b| st.pool.sge(b, slot.len)) else {
                tracing::warn!("nvmf rdma: a command's buffer is not registered");
                slot.state = SlotState::Executing;
                self.respond(st, idx, Response::err(status::INTERNAL_ERROR));
                continue;
            };
            let (remote_addr, rkey) = slot.remote;
            let id = wr_id(WR_READ, idx, slot.generation);
            let Some(cm) = st.cm.as_ref() else { return };
            // SAFETY: the slot's buffer stays registered and unused until
            // the READ completes (the slot is Reading).
            if let Err(e) = unsafe { cm.post_send(id, SendOp::Read { remote_addr, rkey }, &[sge], true) } {
                tracing::warn!("nvmf rdma: posting an RDMA READ: {e}");
                st.slots[idx as usize].state = SlotState::Executing;
                self.respond(st, idx, Response::err(status::TRANSIENT_TRANSPORT_ERROR));
                continue;
            }
            st.reads += 1;
            Self::count_dev(&self.group, st.dev, |d| {
                d.total_send_wrs += 1;
                d.send_doorbells += 1;
            });
        }
    }

    // ---- Execute (as on TCP) ----

    fn execute(&self, st: &mut State, idx: u16) {
        let cmd = st.slots[idx as usize].cmd;
        if cmd.opcode == fabrics::OPCODE {
            return self.fabrics(st, idx, &cmd);
        }
        match &st.queue {
            Queue::Unbound => self.respond(st, idx, Response::err(status::COMMAND_SEQUENCE_ERROR)),
            Queue::Admin(c) => {
                let c = c.clone();
                if !c.enabled() {
                    return self.respond(st, idx, Response::err(status::COMMAND_SEQUENCE_ERROR));
                }
                let Ok(target) = crate::target::target() else {
                    return self.respond(st, idx, Response::err(status::INTERNAL_ERROR));
                };
                let slot = &mut st.slots[idx as usize];
                let len = slot.len as usize;
                let to_host = slot.dir == DataDir::ControllerToHost;
                let mut none = [0u8; 0];
                let data: &mut [u8] = match slot.bufs.first_mut() {
                    Some(b) => &mut b[..len],
                    None => &mut none,
                };
                if to_host {
                    // Buffers hold old data: never send it.
                    data.fill(0);
                }
                match admin::execute(&target, &c, &cmd, data) {
                    admin::Outcome::Done(r, _) => self.respond(st, idx, r),
                    admin::Outcome::Pending => Self::release(st, idx),
                }
            }
            Queue::Io { view, owner, .. } => {
                let (view, owner) = (view.clone(), owner.clone());
                let tag = (u32::from(st.slots[idx as usize].generation) << 16) | u32::from(idx);
                let sink: Weak<dyn IoSink> = self.me.clone();
                st.executing += 1;
                let slot = &mut st.slots[idx as usize];
                let len = u64::from(slot.len);
                // The slot's own list, as TCP does: the request drains the
                // buffers out of it and `io_done` appends them back, so the
                // list keeps its capacity and no command allocates. (Taking
                // the list out freed it here and grew a new one at every
                // completion.)
                match nvm::execute(&view, &owner, &cmd, &mut slot.bufs, len, Completer { sink, tag }) {
                    Some(r) => {
                        st.executing -= 1;
                        self.respond(st, idx, r);
                    }
                    None => debug_assert!(st.slots[idx as usize].bufs.is_empty()),
                }
            }
        }
    }

    fn fabrics(&self, st: &mut State, idx: u16, cmd: &Command) {
        let raw: [u8; 64] = zerocopy::transmute!(*cmd);
        let r = match (raw[4], &st.queue) {
            (fabrics::fctype::CONNECT, Queue::Unbound) => return self.connect(st, idx, &raw),
            (fabrics::fctype::CONNECT, _) => Response::err(status::COMMAND_SEQUENCE_ERROR),
            (_, Queue::Unbound) => Response::err(status::COMMAND_SEQUENCE_ERROR),
            (fabrics::fctype::PROPERTY_GET, Queue::Admin(c)) => c.property_get(&PropertyCommand::read_from_bytes(&raw).expect("64 bytes")),
            (fabrics::fctype::PROPERTY_SET, Queue::Admin(c)) => c.property_set(&PropertyCommand::read_from_bytes(&raw).expect("64 bytes")),
            (fabrics::fctype::DISCONNECT, Queue::Io { .. }) => Response::ok(),
            (fabrics::fctype::PROPERTY_GET | fabrics::fctype::PROPERTY_SET | fabrics::fctype::DISCONNECT, _) => {
                Response::err(status::INVALID_FIELD)
            }
            _ => Response::err(status::INVALID_OPCODE),
        };
        self.respond(st, idx, r)
    }

    fn connect(&self, st: &mut State, idx: u16, raw: &[u8; 64]) {
        let cc = ConnectCommand::read_from_bytes(raw).expect("64 bytes");
        let slot = &st.slots[idx as usize];
        if slot.dir != DataDir::HostToController || slot.len as usize != size_of::<ConnectData>() {
            tracing::warn!("nvmf rdma: connect from {:?} on {} refused: {} bytes of connect data", self.peer, self.ep, slot.len);
            return self.respond(st, idx, Response::err(status::DATA_SGL_LENGTH_INVALID));
        }
        let data = ConnectData::read_from_bytes(&slot.bufs[0][..size_of::<ConnectData>()]).expect("1024 bytes");
        if cc.qid.get() != st.qid {
            tracing::warn!(
                "nvmf rdma: connect from {:?} on {} refused: queue {} on the connection of queue {}",
                self.peer,
                self.ep,
                cc.qid.get(),
                st.qid
            );
            return self.respond(st, idx, Response::err(status::INVALID_FIELD));
        }
        let peer = self.peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        if reactor::current() != ReactorId(0) {
            return self.connect_io_from_here(st, idx, cc, data, peer);
        }
        let Ok(target) = crate::target::target() else {
            return self.respond(st, idx, Response::err(status::INTERNAL_ERROR));
        };
        let (connected, resp) = match connect::connect(&target, &cc, &data, self.ep, peer, &self.opts) {
            Ok(x) => x,
            Err(r) => {
                tracing::warn!("{}", r.why);
                return self.respond(st, idx, r.resp);
            }
        };
        st.sq_entries = cc.sqsize.get().saturating_add(1);
        match connected {
            Connected::Admin(c) => {
                let me: Weak<dyn AdminQueue> = self.me.clone();
                c.set_admin_queue(me);
                st.counted = Some(self.counted(c.subsystem.id, c.cntlid, st.qid));
                st.queue = Queue::Admin(c);
                Self::count(&self.group, |s| {
                    s.admin_qpairs += 1;
                    s.current_admin_qpairs += 1;
                });
            }
            Connected::Io { ctrlr, qid } => {
                ctrlr.add_io_qpair(qid, IoQpairRef { reactor: reactor::current(), id: self.id, close: super::close_qpair });
                let sid = ctrlr.subsystem.id;
                st.counted = Some(self.counted(sid, ctrlr.cntlid, st.qid));
                st.queue =
                    Queue::Io { view: crate::group::subsystem(sid), subsystem_id: sid, cntlid: ctrlr.cntlid, owner: IoOwner::of(&ctrlr) };
                Self::count(&self.group, |s| {
                    s.io_qpairs += 1;
                    s.current_io_qpairs += 1;
                });
            }
        }
        self.respond(st, idx, resp)
    }

    /// The Connect of an I/O queue pair living on another reactor than
    /// the main one, where controllers live: run it there, register this
    /// queue pair with its controller, and take the outcome back here.
    fn connect_io_from_here(&self, st: &mut State, idx: u16, cc: ConnectCommand, data: ConnectData, peer: SocketAddr) {
        st.sq_entries = cc.sqsize.get().saturating_add(1);
        let (id, here, ep, opts) = (self.id, reactor::current(), self.ep, self.opts.clone());
        let generation = st.slots[idx as usize].generation;
        reactor::send_msg(ReactorId(0), move || {
            let out = match crate::target::target() {
                Err(_) => Err(Response::err(status::INTERNAL_ERROR)),
                Ok(target) => match connect::connect(&target, &cc, &data, ep, peer, &opts) {
                    Ok((Connected::Io { ctrlr, qid }, resp)) => {
                        ctrlr.add_io_qpair(qid, IoQpairRef { reactor: here, id, close: super::close_qpair });
                        Ok((resp, IoOwner::of(&ctrlr)))
                    }
                    Ok((Connected::Admin(c), _)) => {
                        c.destroy("an admin queue's Connect came on an I/O queue's connection");
                        Err(Response::err(status::INVALID_FIELD))
                    }
                    Err(r) => {
                        tracing::warn!("{}", r.why);
                        Err(r.resp)
                    }
                },
            };
            reactor::send_msg(here, move || {
                if let Some(q) = super::current().and_then(|g| g.qpairs.borrow().get(&id).cloned()) {
                    q.io_connected(idx, generation, out);
                } else if let Ok((_, o)) = out {
                    // Gone meanwhile: tell its controller.
                    let qid = cc.qid.get();
                    crate::ctrlr::report_io_qpair_closed(o.subsystem_id, o.cntlid, qid, id);
                }
            });
        });
    }

    /// The outcome of [`RdmaQpair::connect_io_from_here`].
    fn io_connected(&self, idx: u16, generation: u16, out: Result<(Response, IoOwner), Response>) {
        let mut st = self.st.borrow_mut();
        let ok = st.slots.get(idx as usize).is_some_and(|s| s.generation == generation && s.state == SlotState::Executing);
        if self.closed.get() || !ok {
            if let Ok((_, o)) = out {
                let qid = st.qid;
                drop(st);
                self.report_closed(o.subsystem_id, o.cntlid, qid);
            }
            return;
        }
        match out {
            Ok((resp, o)) => {
                st.counted = Some(self.counted(o.subsystem_id, o.cntlid, st.qid));
                st.queue =
                    Queue::Io { view: crate::group::subsystem(o.subsystem_id), subsystem_id: o.subsystem_id, cntlid: o.cntlid, owner: o };
                Self::count(&self.group, |s| {
                    s.io_qpairs += 1;
                    s.current_io_qpairs += 1;
                });
                self.respond(&mut st, idx, resp);
            }
            Err(resp) => self.respond(&mut st, idx, resp),
        }
    }

    // ---- Complete ----

    fn release(st: &mut State, idx: u16) {
        let slot = &mut st.slots[idx as usize];
        slot.state = SlotState::Free;
        slot.generation = slot.generation.wrapping_add(1);
        // Its data buffer goes back to the pool.
        slot.bufs.clear();
        slot.incap = None;
        if let Some(i) = slot.held_recv.take() {
            st.repost.push(i);
        }
        st.free.push(idx);
    }

    /// Send a command's data (controller to host, RDMA WRITE) and its
    /// completion (SEND); the slot is freed when the SEND completes.
    fn respond(&self, st: &mut State, idx: u16, r: Response) {
        st.sq_head = (st.sq_head + 1) % st.sq_entries.max(1);
        let slot = &mut st.slots[idx as usize];
        let mut cqe = r.cqe(slot.cmd.cid.get(), st.qid, st.sq_head);
        let at = idx as usize * RESPONSE;
        if let Some(c) = &st.counted {
            c.command(r.status.is_success(), slot.dir, slot.len);
        }
        st.resp_buf[at..at + RESPONSE].copy_from_slice(cqe.as_bytes());
        slot.state = SlotState::Responding;
        slot.write_data = slot.dir == DataDir::ControllerToHost && r.status.is_success() && slot.len > 0;
        if slot.write_data && slot.bufs.first().and_then(|b| st.pool.sge(b, slot.len)).is_none() {
            // Data from a buffer the device cannot reach: fail the command
            // rather than send something else.
            tracing::warn!("nvmf rdma: read data in a buffer that is not registered");
            slot.write_data = false;
            cqe.set_status(status::INTERNAL_ERROR);
            st.resp_buf[at..at + RESPONSE].copy_from_slice(cqe.as_bytes());
        }
        if st.cm.is_none() {
            return Self::release(st, idx);
        }
        let io = matches!(st.queue, Queue::Io { .. });
        let data = slot.write_data;
        Self::count_dev(&self.group, st.dev, |d| d.total_send_wrs += 1 + u64::from(data));
        Self::count(&self.group, |s| s.completed_nvme_io += u64::from(io));
        // Posted with the others of this pass (one call for all).
        st.to_send.push(idx);
        if st.to_send.len() >= RESPONSE_BATCH {
            Self::post_responses(&self.group, st);
        } else if !self.in_poll.get() {
            self.kick();
        }
    }

    /// Post the responses waiting: each its data (RDMA WRITE, unsignaled)
    /// and its completion (SEND), which completes after the WRITE (same
    /// send queue), all in one chain.
    fn post_responses(group: &Weak<Group>, st: &mut State) {
        if st.to_send.is_empty() {
            return;
        }
        let Some(cm) = st.cm.as_ref() else { return };
        let n = st.to_send.len().min(RESPONSE_BATCH);
        let sges: [[pollux_rdma::sys::ibv_sge; 2]; RESPONSE_BATCH] = std::array::from_fn(|i| match st.to_send.get(i) {
            Some(&idx) => {
                let slot = &st.slots[idx as usize];
                let at = st.resp_mr.addr() + (idx as usize * RESPONSE) as u64;
                let data = slot.bufs.first().and_then(|b| st.pool.sge(b, slot.len)).unwrap_or_default();
                [data, st.resp_mr.sge(at, RESPONSE as u32)]
            }
            None => Default::default(),
        });
        let mut wrs: [Option<SendWr<'_>>; 2 * RESPONSE_BATCH] = [None; 2 * RESPONSE_BATCH];
        let mut k = 0;
        for (i, &idx) in st.to_send[..n].iter().enumerate() {
            let slot = &st.slots[idx as usize];
            let (remote_addr, rkey) = slot.remote;
            if slot.write_data {
                let op = SendOp::Write { remote_addr, rkey };
                wrs[k] = Some(SendWr { wr_id: wr_id(WR_WRITE, idx, slot.generation), op, sge: &sges[i][..1], signaled: false });
                k += 1;
            }
            // The chain's last SEND is signaled (see WR_SEND).
            let signaled = i + 1 == n;
            wrs[k] = Some(SendWr { wr_id: wr_id(WR_SEND, idx, slot.generation), op: SendOp::Send, sge: &sges[i][1..], signaled });
            k += 1;
        }
        let chain: [SendWr<'_>; 2 * RESPONSE_BATCH] =
            std::array::from_fn(|i| wrs[i].unwrap_or(SendWr { wr_id: 0, op: SendOp::Send, sge: &[], signaled: false }));
        // SAFETY: each slot's data buffer and its response buffer stay
        // registered and unused until its SEND completes (the slot is
        // Responding until then).
        let r = unsafe { cm.post_send_chain(&chain[..k]) };
        if let Err(e) = r {
            tracing::warn!("nvmf rdma: posting responses: {e}");
            for j in 0..n {
                let idx = st.to_send[j];
                Self::release(st, idx);
            }
        } else {
            for j in 0..n {
                let idx = st.to_send[j];
                st.sent.push_back(idx);
            }
        }
        st.to_send.drain(..n);
        Self::count_dev(group, st.dev, |d| d.send_doorbells += 1);
        if !st.to_send.is_empty() {
            Self::post_responses(group, st);
        }
    }

    /// End the queue pair: disconnect, tell the controller, free what it
    /// holds once no bdev has its buffers.
    pub(crate) fn close(&self, reason: &str) {
        if self.closed.replace(true) {
            return;
        }
        let mut st = self.st.borrow_mut();
        if let Some(cm) = st.cm.as_ref() {
            let _ = cm.disconnect();
        }
        // The QP is in the error state now and takes no more capsules.
        st.return_shared_buffers();
        drop(self.poller.borrow_mut().take());
        let queue = std::mem::replace(&mut st.queue, Queue::Unbound);
        st.counted = None;
        let (qid, executing) = (st.qid, st.executing);
        drop(st);
        match &queue {
            Queue::Admin(_) => Self::count(&self.group, |s| s.current_admin_qpairs = s.current_admin_qpairs.saturating_sub(1)),
            Queue::Io { .. } => Self::count(&self.group, |s| s.current_io_qpairs = s.current_io_qpairs.saturating_sub(1)),
            Queue::Unbound => {}
        }
        match queue {
            Queue::Unbound => tracing::debug!("nvmf rdma: connection from {:?} closed: {reason}", self.peer),
            Queue::Admin(c) => c.destroy(&format!("admin queue closed: {reason}")),
            Queue::Io { subsystem_id, cntlid, .. } => {
                tracing::debug!("nvmf rdma: I/O queue {qid} of controller {cntlid} from {:?} closed: {reason}", self.peer);
                if executing == 0 {
                    self.report_closed(subsystem_id, cntlid, qid);
                } else {
                    *self.draining.borrow_mut() = Some((subsystem_id, cntlid, qid));
                }
            }
        }
        if executing == 0 {
            if let Some(s) = self.group.upgrade() {
                s.forget(self.id);
            }
        }
    }

    /// This queue pair's place in the counters, once connected.
    fn counted(&self, subsystem_id: u32, cntlid: u16, qid: u16) -> crate::counters::Counted {
        crate::counters::Counted::new(crate::counters::QpairId { subsystem_id, cntlid, qid, ep: self.ep, peer: self.peer })
    }

    fn report_closed(&self, subsystem_id: u32, cntlid: u16, qid: u16) {
        crate::ctrlr::report_io_qpair_closed(subsystem_id, cntlid, qid, self.id);
    }
}

impl RdmaQpair {
    /// A completion without a command in hand (an asynchronous event).
    fn complete_now(&self, cid: u16, resp: Response) {
        if self.closed.get() {
            return;
        }
        let mut st = self.st.borrow_mut();
        let Some(idx) = st.free.pop() else {
            tracing::warn!("nvmf rdma: no slot for an asynchronous completion (cid {cid})");
            return;
        };
        let slot = &mut st.slots[idx as usize];
        slot.state = SlotState::Executing;
        slot.cmd = Command::default();
        slot.cmd.cid.set(cid);
        slot.dir = DataDir::None;
        slot.len = 0;
        self.respond(&mut st, idx, resp);
    }

    fn kick(&self) {
        if let Some(p) = self.poller.borrow().as_ref() {
            p.kick();
        }
    }
}

impl AdminQueue for RdmaQpair {
    fn complete(&self, cid: u16, resp: Response) {
        self.deferred.borrow_mut().push((cid, resp));
        self.kick();
    }

    fn close(&self, reason: &str) {
        *self.close_reason.borrow_mut() = Some(reason.to_string());
        self.kick();
    }
}

impl IoSink for RdmaQpair {
    fn io_done(&self, tag: u32, resp: Response, io: Option<BdevIo>) {
        let idx = (tag & 0xffff) as u16;
        let generation = (tag >> 16) as u16;
        let mut st = self.st.borrow_mut();
        st.executing = st.executing.saturating_sub(1);
        let Some(slot) = st.slots.get_mut(idx as usize) else { return };
        if slot.generation != generation || slot.state != SlotState::Executing {
            return;
        }
        if let Some(mut io) = io {
            io.take_buffers_into(&mut slot.bufs);
        }
        if self.closed.get() {
            Self::release(&mut st, idx);
            let (executing, draining) = (st.executing, self.draining.borrow_mut().take());
            drop(st);
            if executing == 0 {
                if let Some((sid, cntlid, qid)) = draining {
                    self.report_closed(sid, cntlid, qid);
                }
                if let Some(s) = self.group.upgrade() {
                    s.forget(self.id);
                }
            } else {
                *self.draining.borrow_mut() = draining;
            }
            return;
        }
        self.respond(&mut st, idx, resp);
    }
}
