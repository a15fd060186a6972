//! A reactor's I/O queue pair: takes bdev requests, cuts them into commands
//! (PRP or SGL data pointers, at most the maximum transfer each), tracks
//! every command by its id, and completes requests from a poller.
//!
//! Per poll: reap at most [`POLL_BATCH`] completions (phase tag), write the
//! CQ head doorbell once, run the requests' callbacks, issue what waits, and
//! write the SQ tail doorbell once -- so a batch of submissions costs one
//! doorbell, not one per command. Nothing here locks or allocates per I/O:
//! trackers (one per command id) and request slots are reused.
//!
//! Errors: a failed command fails its request with the decoded status; a
//! command past its deadline is aborted, and if that does not help the
//! controller is reset. After a reset (a new controller generation) the
//! queue pair re-creates its queues and resubmits every request that was in
//! flight from its start, so nothing is lost and nothing completes twice.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pollux_core::bdev::{BdevIo, IoStatus, IoType};
use pollux_core::clock;
use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_nvme_spec::cmd::{Command, DataTransfer, DsmRange, SglDescriptor, io};
use pollux_nvme_spec::status::Status;
use zerocopy::IntoBytes;

use crate::controller::{Controller, PAGE_SIZE, QueueSpec, State, TimeoutAction};
use crate::error::{CommandError, CommandInfo, NvmeError, QueueKind};
use crate::prp::{self, Cursor, ListSink, Mode, Segment};
use crate::queue::Rings;
use crate::sys::DeviceMemory;

/// Completions reaped per poll at most.
pub const POLL_BATCH: usize = 64;
/// Bytes of scratch per command (PRP list, SGL descriptors, DSM range).
const SLOT_SIZE: usize = 4096;
const NO_REQ: u32 = u32::MAX;
/// The most blocks one Write Zeroes carries (NLB is 16 bits, zero-based).
const MAX_ZEROES_BLOCKS: u64 = 1 << 16;

/// What a request does on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Compare,
    Flush,
    WriteZeroes,
    Deallocate,
}

impl Op {
    fn opcode(self) -> u8 {
        match self {
            Op::Read => io::READ,
            Op::Write => io::WRITE,
            Op::Compare => io::COMPARE,
            Op::Flush => io::FLUSH,
            Op::WriteZeroes => io::WRITE_ZEROES,
            Op::Deallocate => io::DATASET_MANAGEMENT,
        }
    }

    fn has_data(self) -> bool {
        matches!(self, Op::Read | Op::Write | Op::Compare)
    }
}

struct Request {
    io: Option<BdevIo>,
    op: Op,
    nsid: u32,
    block_size: u64,
    slba: u64,
    blocks: u64,
    max_bytes: usize,
    segs: Vec<Segment>,
    /// Progress of issuing: blocks issued so far and where the data is.
    issued: u64,
    cursor: Cursor,
    /// Commands in flight.
    outstanding: u32,
    /// Waiting in the pending queue.
    queued: bool,
    status: IoStatus,
}

impl Request {
    fn empty() -> Request {
        Request {
            io: None,
            op: Op::Flush,
            nsid: 0,
            block_size: 512,
            slba: 0,
            blocks: 0,
            max_bytes: 0,
            segs: Vec::new(),
            issued: 0,
            cursor: Cursor::default(),
            outstanding: 0,
            queued: false,
            status: IoStatus::Success,
        }
    }

    /// Whether every command of the request has been issued (or it failed).
    fn fully_issued(&self) -> bool {
        self.status != IoStatus::Success || self.issued >= self.blocks.max(1)
    }

    fn restart(&mut self) {
        self.issued = 0;
        self.cursor = Cursor::default();
        self.outstanding = 0;
        self.status = IoStatus::Success;
    }
}

#[derive(Clone, Copy)]
struct Tracker {
    req: u32,
    deadline: u64,
    aborted: bool,
    opcode: u8,
    nsid: u32,
    /// The command id on the wire: the tracker's index in the low
    /// [`CID_INDEX_BITS`], a generation above (see [`wire_cid`]).
    cid: u16,
}

const FREE_TRACKER: Tracker = Tracker { req: NO_REQ, deadline: 0, aborted: false, opcode: 0, nsid: 0, cid: 0 };

/// Bits of a command id that index the trackers (a queue holds at most
/// 4095 commands); the 4 above carry a generation, bumped each time the
/// tracker is used (as Linux's `nvme_cid` does). A completion whose id is
/// of an earlier use of its tracker (a duplicate or stale completion from
/// a faulty device) is then not taken for the command that has it now:
/// that completed a read before its data was in, and handed its buffer
/// back while the device could still write to it.
const CID_INDEX_BITS: u32 = 12;
const CID_INDEX_MASK: u16 = (1 << CID_INDEX_BITS) - 1;

/// The next command id for tracker `index`, whose last was `last`.
fn wire_cid(index: u16, last: u16) -> u16 {
    let generation = ((last >> CID_INDEX_BITS) + 1) & 0xf;
    (generation << CID_INDEX_BITS) | index
}

/// A scratch slot of the queue pair's memory as a PRP/SGL list.
struct Slot<'a> {
    mem: &'a DeviceMemory,
    off: usize,
    iova: u64,
}

impl ListSink for Slot<'_> {
    fn iova(&self) -> u64 {
        self.iova
    }
    fn capacity(&self) -> usize {
        SLOT_SIZE
    }
    fn set_u64(&mut self, index: usize, v: u64) {
        self.mem.write_u64(self.off + index * 8, v);
    }
    fn set_descriptor(&mut self, index: usize, d: &SglDescriptor) {
        self.mem.write_bytes(self.off + index * 16, d);
    }
}

/// Counters of one queue pair.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct QueueStats {
    pub submitted_commands: u64,
    pub completed_commands: u64,
    pub failed_commands: u64,
    pub doorbells: u64,
    pub polls: u64,
    pub timeouts: u64,
    pub reconnects: u64,
}

/// Aborts under way for some of a queue pair's commands.
struct AbortBatch {
    /// Set to call the Aborts not yet sent off (the queue pair goes).
    called_off: Arc<AtomicBool>,
    /// Trackers of the batch's commands that finished meanwhile: not used
    /// again until the batch ends, so that an Abort sent late does not
    /// name a newer command under the same id.
    held: Vec<u16>,
}

/// Where the result of something done off the reactor lands, for a poll
/// to pick up.
type Outcome<T> = Arc<Mutex<Option<T>>>;

fn take<T>(o: &Outcome<T>) -> Option<T> {
    o.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The queues' creation under way off the reactor.
struct Creation {
    /// The controller generation it began in.
    generation: u64,
    result: Outcome<Result<(), NvmeError>>,
}

struct Inner {
    ctrl: Arc<Controller>,
    qid: Option<u16>,
    rings: Option<Rings>,
    /// The controller generation the queues were created in (None: not
    /// created).
    connected: Option<u64>,
    /// Creating the queues, off the reactor (requests wait meanwhile).
    creating: Option<Creation>,
    trackers: Vec<Tracker>,
    free_cids: Vec<u16>,
    requests: Vec<Request>,
    free_reqs: Vec<u32>,
    pending: VecDeque<u32>,
    inflight: usize,
    /// Completed requests whose callbacks run after the borrow ends.
    done: Vec<(BdevIo, IoStatus)>,
    /// Reset requests waiting for the controller reset to end.
    resets: Vec<BdevIo>,
    /// Aborts of timed-out commands under way (off the reactor).
    aborting: Option<AbortBatch>,
    timeout_ticks: u64,
    next_timeout_check: u64,
    retry_connect_at: u64,
    sgl: bool,
    /// Unmap as Write Zeroes with DEAC (when the controller has it).
    unmap_with_zeroes: bool,
    /// The completion queue signals an MSI-X vector (interrupt mode): the
    /// poller may report idle while commands are in flight.
    interrupt: bool,
    stats: QueueStats,
    label: String,
}

/// A reactor's I/O queue pair on one controller (`!Send`).
pub struct QueuePair {
    inner: Rc<RefCell<Inner>>,
    _poller: Poller,
}

impl QueuePair {
    /// Allocate a queue id and the queue memory, create the queues on the
    /// controller and start polling (on the current reactor).
    pub(crate) fn new(ctrl: Arc<Controller>) -> QueuePair {
        let entries = ctrl.options().io_queue_entries;
        let commands = usize::from(entries) - 1;
        let timeout_ticks = ctrl.options().io_timeout.map(clock::duration_to_ticks).unwrap_or(0);
        let label = format!("{} on reactor {}", ctrl.name(), reactor::try_current().map(|r| r.0).unwrap_or(0));
        let qid = ctrl.alloc_qid();
        let rings = match qid {
            Some(q) => match Rings::new(q, entries, ctrl.doorbell_stride(), commands, SLOT_SIZE) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!("NVMe {label}: no memory for an I/O queue: {e}");
                    None
                }
            },
            None => {
                tracing::error!("NVMe {label}: no I/O queue left (the controller granted {})", ctrl.io_queue_count());
                None
            }
        };
        let sgl = ctrl.supports_sgl();
        let ctrl_wz = ctrl.supports_write_zeroes();
        let inner = Rc::new(RefCell::new(Inner {
            ctrl,
            qid,
            rings,
            connected: None,
            creating: None,
            trackers: vec![FREE_TRACKER; commands],
            free_cids: (0..commands as u16).rev().collect(),
            requests: Vec::new(),
            free_reqs: Vec::new(),
            pending: VecDeque::new(),
            inflight: 0,
            done: Vec::with_capacity(POLL_BATCH),
            resets: Vec::new(),
            aborting: None,
            timeout_ticks,
            next_timeout_check: 0,
            retry_connect_at: 0,
            sgl,
            unmap_with_zeroes: ctrl_wz,
            interrupt: false,
            stats: QueueStats::default(),
            label,
        }));
        inner.borrow_mut().connect();
        let weak = Rc::downgrade(&inner);
        let poll_fn = move || match weak.upgrade() {
            Some(inner) => poll(&inner),
            None => PollStatus::Idle,
        };
        let poller = match inner.borrow().ctrl.options().io_poll_period {
            Some(period) => reactor::register_timed_poller("nvme_qpair", period, poll_fn),
            None => reactor::register_poller("nvme_qpair", poll_fn),
        };
        let irq = {
            let q = inner.borrow();
            q.qid.and_then(|id| q.ctrl.queue_interrupt(id))
        };
        if let Some((_, fd)) = irq {
            if reactor::interrupt_mode() {
                // Edge-triggered, never read: each interrupt wakes the
                // reactor once, and the passes in between cost no system
                // call (see `Interest::edge`).
                match poller.add_wake_fd(fd, pollux_core::sys::Interest::READABLE.edge()) {
                    Ok(()) => inner.borrow_mut().interrupt = true,
                    Err(e) => tracing::warn!("NVMe {}: cannot wait for the queue's interrupt ({e}); polling", inner.borrow().label),
                }
            }
        }
        QueuePair { inner, _poller: poller }
    }

    /// Submit a bdev request for namespace `nsid`.
    pub fn submit(&self, nsid: u32, io: BdevIo) {
        let op = match io.kind() {
            IoType::Read => Op::Read,
            IoType::Write => Op::Write,
            IoType::Compare => Op::Compare,
            IoType::Flush => Op::Flush,
            IoType::WriteZeroes => Op::WriteZeroes,
            IoType::Unmap => Op::Deallocate,
            IoType::Reset => return self.reset(io),
        };
        let mut inner = self.inner.borrow_mut();
        let ctrl_state = inner.ctrl.state();
        if matches!(ctrl_state, State::Removed | State::ShutDown) {
            drop(inner);
            return io.complete(IoStatus::NoDevice);
        }
        if inner.rings.is_none() {
            drop(inner);
            return io.complete(IoStatus::NoMemory);
        }
        let idx = inner.alloc_request();
        let max_transfer = inner.ctrl.max_transfer();
        let r = &mut inner.requests[idx as usize];
        r.op = op;
        r.nsid = nsid;
        r.block_size = u64::from(io.block_size());
        r.slba = io.offset_blocks();
        // A flush is one command whatever range it names.
        r.blocks = if op == Op::Flush { 0 } else { io.num_blocks() };
        r.max_bytes = (max_transfer.min(65536 * io.block_size() as usize) / io.block_size() as usize) * io.block_size() as usize;
        r.segs.clear();
        if op.has_data() {
            r.segs.extend(io.buffers().iter().map(|b| Segment { iova: b.iova().0, len: b.len() }));
        }
        r.restart();
        r.io = Some(io);
        r.queued = true;
        inner.pending.push_back(idx);
        inner.issue_pending();
    }

    /// Reset the controller (a bdev reset request); completes when the
    /// controller reset ends.
    fn reset(&self, io: BdevIo) {
        let ctrl = {
            let mut inner = self.inner.borrow_mut();
            inner.resets.push(io);
            inner.ctrl.clone()
        };
        let me = reactor::current();
        let c = ctrl.clone();
        ctrl.reset(move |res| {
            reactor::send_msg(me, move || {
                if let Some(qp) = pollux_core::io_channel::try_get_io_channel(&c) {
                    let ios = std::mem::take(&mut qp.inner.borrow_mut().resets);
                    let st = if res.is_ok() { IoStatus::Success } else { IoStatus::Failed };
                    for io in ios {
                        io.complete(st);
                    }
                }
            })
        });
    }

    /// Run one poll now (after a reset or removal, to wake a sleeping reactor).
    pub(crate) fn kick(&self) {
        poll(&self.inner);
    }

    /// Whether Aborts for timed-out commands are under way.
    #[cfg(test)]
    pub(crate) fn aborts_under_way(&self) -> bool {
        self.inner.borrow().aborting.is_some()
    }

    pub fn stats(&self) -> QueueStats {
        self.inner.borrow().stats
    }

    pub fn qid(&self) -> Option<u16> {
        self.inner.borrow().qid
    }

    /// Commands in flight on the device.
    pub fn inflight(&self) -> usize {
        self.inner.borrow().inflight
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let mut inner = self.inner.borrow_mut();
        // Aborts not yet sent would name this queue's id for another's
        // commands.
        if let Some(b) = inner.aborting.take() {
            b.called_off.store(true, Ordering::Release);
        }
        inner.creation_ended();
        let creating = inner.creating.take();
        let connected = inner.connected.take();
        let (state, generation) = (inner.ctrl.state(), inner.ctrl.generation());
        // Queues of an earlier generation went with the reset that ended it.
        let qid = match (connected, inner.rings.as_ref()) {
            (Some(g), Some(rings)) if state == State::Enabled && g == generation => Some(rings.qid),
            _ => None,
        };
        // A reset under way: until it has disabled the controller, the
        // device may still post completions into the rings and move the
        // data of the requests they held.
        let resetting = connected.is_some() && state == State::Resetting;
        let (ctrl, label) = (inner.ctrl.clone(), inner.label.clone());
        let rings_qid = inner.rings.as_ref().map(|r| r.qid).unwrap_or(0);
        drop(inner);
        let on_reactor = reactor::try_current().is_some();
        let mut phase = match (creating, qid) {
            (Some(c), _) => Teardown::Creating(c.generation, c.result),
            (None, Some(qid)) => {
                if !on_reactor {
                    // Off a reactor (not expected): here and now.
                    delete_queues(&ctrl, qid, &label);
                    return release(&self.inner);
                }
                Teardown::Deleting(start_deletion(&ctrl, qid, &label))
            }
            // (Off a reactor, which only tools and tests do, there is no
            // drain to wait in: released at once, as before.)
            (None, None) if resetting && on_reactor => Teardown::Reset,
            (None, None) => return release(&self.inner),
        };
        // Deleting the queues waits for the controller's answers, up to the
        // admin timeout for each: off the reactor (it waited here, with
        // everything else on the reactor stalled, when a device did not
        // answer). Until the device has let go of the queues it may still
        // use them and the buffers of requests in flight: both stay, with
        // a drain that ends once the deletion has (after their creation,
        // if that was still under way), or the reset under way has ended,
        // and then fails what the queues held.
        let (inner, held) = (self.inner.clone(), self.inner.clone());
        let warn_after = inner.borrow().ctrl.options().admin_timeout * 5;
        let what = format!("NVMe {label}: letting go of I/O queue {rings_qid}");
        reactor::drain_in_background(
            "nvme_delete_queue",
            what,
            warn_after,
            None,
            move || {
                loop {
                    phase = match &phase {
                        Teardown::Creating(g, r) => match take(r) {
                            None => break,
                            Some(Ok(())) if ctrl.state() == State::Enabled && ctrl.generation() == *g => {
                                Teardown::Deleting(start_deletion(&ctrl, rings_qid, &label))
                            }
                            // A reset began meanwhile (what the creation
                            // left may be at the device until it disables it).
                            Some(_) if ctrl.state() == State::Resetting => Teardown::Reset,
                            Some(_) => Teardown::Over,
                        },
                        Teardown::Reset if ctrl.state() == State::Resetting => break,
                        Teardown::Reset => Teardown::Over,
                        // A reset that began before the deletion took the
                        // admin queue refused it: the queues are there
                        // until the reset disables the controller.
                        Teardown::Deleting(d) if d.load(Ordering::Acquire) && ctrl.state() == State::Resetting => Teardown::Reset,
                        Teardown::Deleting(d) if d.load(Ordering::Acquire) => Teardown::Over,
                        Teardown::Deleting(_) => break,
                        Teardown::Over => return (0, 0),
                    };
                }
                let q = inner.borrow();
                (0, (q.inflight + q.pending.len()).max(1))
            },
            move || release(&held),
        );
    }
}

/// Where a queue pair let go stands with the device.
enum Teardown {
    /// The queues' creation (for this controller generation) is under
    /// way: its end decides.
    Creating(u64, Outcome<Result<(), NvmeError>>),
    /// Their deletion is under way: set once it is over.
    Deleting(Arc<AtomicBool>),
    /// A controller reset is under way, which disables the controller (and
    /// with it the queues).
    Reset,
    Over,
}

/// Delete the I/O queues `qid` off the reactor; the flag says when that is
/// over.
fn start_deletion(ctrl: &Arc<Controller>, qid: u16, label: &str) -> Arc<AtomicBool> {
    let deleted = Arc::new(AtomicBool::new(false));
    let (c1, l1) = (ctrl.clone(), label.to_string());
    let (c2, l2, d2) = (ctrl.clone(), label.to_string(), deleted.clone());
    reactor::off_reactor_before_exit(
        "nvme-delete-queue",
        move || delete_queues(&c1, qid, &l1),
        move |r| {
            if r.is_err() {
                // No thread (or it panicked): on the reactor, then.
                delete_queues(&c2, qid, &l2);
            }
            d2.store(true, Ordering::Release);
        },
    );
    deleted
}

/// Delete the I/O queues `qid` (blocks up to the admin timeout for each).
fn delete_queues(ctrl: &Controller, qid: u16, label: &str) {
    if let Err(e) = ctrl.delete_io_queues(qid) {
        tracing::warn!("NVMe {label}: deleting I/O queue {qid}: {e}");
    }
}

/// The end of a queue pair whose queues the device no longer uses: what
/// they held fails, the queue id goes back.
fn release(inner: &Rc<RefCell<Inner>>) {
    let mut q = inner.borrow_mut();
    q.fail_all(IoStatus::Aborted);
    if let Some(id) = q.qid.take() {
        q.ctrl.free_qid(id);
    }
    let done = std::mem::take(&mut q.done);
    drop(q);
    for (io, st) in done {
        io.complete(st);
    }
}

/// One poll of a queue pair. Busy while commands are in flight or waiting,
/// so an interrupt-mode reactor keeps polling until they finish.
fn poll(inner: &Rc<RefCell<Inner>>) -> PollStatus {
    let reaped = {
        let mut q = inner.borrow_mut();
        q.stats.polls += 1;
        q.check_controller();
        let n = q.reap();
        if q.timeout_ticks != 0 && q.inflight > 0 {
            q.check_timeouts();
        }
        n
    };
    // Callbacks may submit more: run them without holding the borrow.
    let mut done = std::mem::take(&mut inner.borrow_mut().done);
    let completed = done.len();
    for (io, st) in done.drain(..) {
        io.complete(st);
    }
    let mut q = inner.borrow_mut();
    if q.done.is_empty() {
        // Keep the vector's capacity: no allocation per poll.
        q.done = done;
    }
    q.issue_pending();
    q.ring_sq();
    // Requests waiting for their queues' creation are not work: its result
    // comes as a message, which wakes an interrupt-mode reactor (and runs
    // before the pollers).
    let waiting = !q.pending.is_empty() && q.creating.is_none();
    let worked = reaped > 0 || completed > 0 || waiting || !q.done.is_empty();
    if q.interrupt && q.connected.is_some() {
        if worked {
            return PollStatus::Busy;
        }
        // About to let the reactor sleep: look once more, so a completion
        // posted since the reap is not left for the next interrupt (one
        // posted later signals the vector, a new edge that wakes the
        // reactor; the eventfd is never read).
        if q.inflight > 0 {
            return q.rings.as_ref().is_some_and(Rings::has_completion).into();
        }
        return PollStatus::Idle;
    }
    (worked || q.inflight > 0).into()
}

impl Inner {
    fn alloc_request(&mut self) -> u32 {
        if let Some(i) = self.free_reqs.pop() {
            return i;
        }
        self.requests.push(Request::empty());
        (self.requests.len() - 1) as u32
    }

    fn free_request(&mut self, idx: u32) -> Option<(BdevIo, IoStatus)> {
        let r = &mut self.requests[idx as usize];
        let io = r.io.take()?;
        let st = r.status;
        r.queued = false;
        self.free_reqs.push(idx);
        Some((io, st))
    }

    /// Create the queues on the controller if it is enabled and they are
    /// not there (first use, or after a reset). The two admin commands wait
    /// for the device's answers, up to the admin timeout each: they run off
    /// the reactor (they held it, and everything else on it, for as long
    /// when a device did not answer), and requests wait in `pending` until
    /// a poll finds the creation over ([`Inner::creation_ended`]).
    fn connect(&mut self) {
        if self.creating.is_some() {
            return self.creation_ended();
        }
        // Called when the queues are not there (first use, or a reset
        // took them): nothing goes to the rings until the device has them
        // again, even while the creation cannot begin yet (the queues of
        // the generation before a reset took commands and doorbells while
        // another admin command held the queue).
        self.connected = None;
        // Not while another admin command holds the queue (an Abort may
        // wait up to the admin timeout): the next poll comes back.
        if self.ctrl.state() != State::Enabled || self.ctrl.admin_busy() {
            return;
        }
        let generation = self.ctrl.generation();
        let Some(rings) = self.rings.as_mut() else { return };
        rings.reset();
        let spec = QueueSpec::of(rings);
        let result: Outcome<_> = Arc::default();
        self.creating = Some(Creation { generation, result: result.clone() });
        self.ctrl.off_reactor(
            "nvme-create-queue",
            false,
            move |c| c.create_io_queues(generation, spec),
            move |r| *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
        );
        // Off a reactor it ran here and now.
        self.creation_ended();
    }

    /// Take the result of the queues' creation if it is in.
    fn creation_ended(&mut self) {
        let Some(c) = self.creating.as_ref() else { return };
        let Some(result) = take(&c.result) else { return };
        let generation = c.generation;
        self.creating = None;
        let qid = self.qid.unwrap_or(0);
        match result {
            Ok(()) => {
                self.connected = Some(generation);
                tracing::debug!("NVMe {}: I/O queue {qid} created", self.label);
            }
            Err(e @ NvmeError::State(_)) => {
                // A reset (or shutdown) began meanwhile: what waits, waits
                // for its end.
                tracing::debug!("NVMe {}: I/O queue {qid} not created ({e}); the controller is {}", self.label, self.ctrl.state().name());
                self.connected = None;
            }
            Err(e) => {
                tracing::error!("NVMe {}: cannot create I/O queue {qid}: {e}; failing its requests", self.label);
                self.connected = None;
                self.retry_connect_at = clock::ticks() + clock::duration_to_ticks(std::time::Duration::from_millis(100));
                // The controller is up and refused the queue: what waits
                // for it fails now (it waited for ever, retried every
                // 100 ms); later requests try again.
                self.fail_all(IoStatus::Failed);
            }
        }
    }

    /// Look at the controller's state: reconnect after a reset, fail
    /// everything when it is gone.
    fn check_controller(&mut self) {
        self.creation_ended();
        match self.ctrl.state() {
            State::Enabled => {
                if self.creating.is_some() {
                    return;
                }
                let generation = self.ctrl.generation();
                if self.connected == Some(generation) || self.rings.is_none() {
                    return;
                }
                if self.connected.is_none() && clock::ticks() < self.retry_connect_at {
                    return;
                }
                if self.connected.is_some() {
                    tracing::warn!(
                        "NVMe {}: controller was reset; re-creating queue, resubmitting {} command(s)",
                        self.label,
                        self.inflight
                    );
                    self.stats.reconnects += 1;
                }
                self.requeue_inflight();
                self.connect();
            }
            State::Resetting => {}
            State::Failed => {
                self.connected = None;
                self.fail_all(IoStatus::Failed);
            }
            State::Removed | State::ShutDown => {
                self.connected = None;
                self.fail_all(IoStatus::NoDevice);
            }
        }
    }

    /// Forget every command in flight and queue their requests again from
    /// their start (the controller was reset: its queues are gone and it
    /// will not touch their buffers any more).
    fn requeue_inflight(&mut self) {
        for cid in 0..self.trackers.len() {
            let t = self.trackers[cid];
            if t.req == NO_REQ {
                continue;
            }
            self.trackers[cid] = Tracker { cid: t.cid, ..FREE_TRACKER };
            self.free_cids.push(cid as u16);
            let r = &mut self.requests[t.req as usize];
            r.restart();
            if !r.queued {
                r.queued = true;
                self.pending.push_back(t.req);
            }
        }
        // Requests partly issued and still queued start over as well.
        for &idx in &self.pending {
            self.requests[idx as usize].restart();
        }
        self.inflight = 0;
    }

    /// Fail every request in flight or waiting (the device will not touch
    /// their buffers any more).
    fn fail_all(&mut self, status: IoStatus) {
        for cid in 0..self.trackers.len() {
            let t = self.trackers[cid];
            if t.req == NO_REQ {
                continue;
            }
            self.trackers[cid] = Tracker { cid: t.cid, ..FREE_TRACKER };
            self.free_cids.push(cid as u16);
            let r = &mut self.requests[t.req as usize];
            r.outstanding = 0;
            r.status = status;
            if !r.queued {
                r.queued = true;
                self.pending.push_back(t.req);
            }
        }
        self.inflight = 0;
        while let Some(idx) = self.pending.pop_front() {
            self.requests[idx as usize].status = status;
            if let Some(d) = self.free_request(idx) {
                self.done.push(d);
            }
        }
    }

    /// Reap completions, at most one batch. Returns how many.
    fn reap(&mut self) -> usize {
        if self.connected.is_none() || self.inflight == 0 {
            return 0;
        }
        let Some(mut rings) = self.rings.take() else { return 0 };
        let mut n = 0;
        while n < POLL_BATCH {
            let Some(cqe) = rings.next_completion() else { break };
            n += 1;
            let wire = cqe.cid.get();
            let cid = usize::from(wire & CID_INDEX_MASK);
            let Some(t) = self.trackers.get(cid).copied().filter(|t| t.req != NO_REQ && t.cid == wire) else {
                tracing::error!("NVMe {}: completion for command id {wire}, not outstanding (stale or unknown); ignored", self.label);
                continue;
            };
            self.trackers[cid] = Tracker { cid: t.cid, ..FREE_TRACKER };
            match self.aborting.as_mut() {
                // In the batch under way (see `AbortBatch::held`).
                Some(b) if t.aborted && t.deadline == u64::MAX => b.held.push(cid as u16),
                _ => self.free_cids.push(cid as u16),
            }
            self.inflight -= 1;
            self.stats.completed_commands += 1;
            let status = cqe.status();
            let r = &mut self.requests[t.req as usize];
            r.outstanding -= 1;
            if !status.is_success() {
                self.stats.failed_commands += 1;
                let info = CommandInfo { queue: QueueKind::Io, opcode: t.opcode, cid: wire, nsid: t.nsid };
                let err = CommandError::from_status(info, status);
                tracing::warn!("NVMe {}: {err}", self.label);
                if r.status == IoStatus::Success {
                    r.status = io_status(status);
                }
            }
            if r.outstanding == 0 && r.fully_issued() && !r.queued {
                if let Some(d) = self.free_request(t.req) {
                    self.done.push(d);
                }
            }
        }
        if n > 0 {
            if let Err(e) = rings.ring_cq(self.ctrl.registers()) {
                tracing::error!("NVMe {}: CQ doorbell: {e}", self.label);
            }
            self.stats.doorbells += 1;
        }
        self.rings = Some(rings);
        n
    }

    /// Issue commands for waiting requests while command ids are free.
    fn issue_pending(&mut self) {
        if self.connected.is_none() || self.ctrl.state() != State::Enabled {
            return;
        }
        while let Some(&idx) = self.pending.front() {
            if self.requests[idx as usize].fully_issued() {
                self.pending.pop_front();
                let r = &mut self.requests[idx as usize];
                r.queued = false;
                if r.outstanding == 0 {
                    if let Some(d) = self.free_request(idx) {
                        self.done.push(d);
                    }
                }
                continue;
            }
            let Some(cid) = self.free_cids.pop() else { return };
            self.issue_one(idx, cid);
        }
    }

    /// Build and push the next command of request `idx` with id `cid`.
    fn issue_one(&mut self, idx: u32, cid: u16) {
        let rings = self.rings.as_mut().expect("connected queue has rings");
        let r = &mut self.requests[idx as usize];
        let mut cmd = Command::new(r.op.opcode());
        let wire = wire_cid(cid, self.trackers[usize::from(cid)].cid);
        cmd.cid.set(wire);
        cmd.nsid.set(r.nsid);
        let lba = r.slba + r.issued;
        let left = r.blocks - r.issued;
        let (slot_off, slot_iova) = rings.slot(usize::from(cid));
        let blocks = match r.op {
            Op::Flush => 1,
            Op::WriteZeroes => {
                let n = left.min(MAX_ZEROES_BLOCKS);
                cmd.set_slba(lba);
                cmd.set_nlb(n as u32);
                n
            }
            Op::Deallocate if self.unmap_with_zeroes => {
                // Write Zeroes with DEAC: deallocated, and guaranteed to read
                // back as zeroes whatever DLFEAT promises.
                let n = left.min(MAX_ZEROES_BLOCKS);
                cmd.opcode = io::WRITE_ZEROES;
                cmd.set_slba(lba);
                cmd.set_nlb(n as u32);
                cmd.cdw12.set(cmd.cdw12.get() | io::CDW12_DEAC);
                n
            }
            Op::Deallocate => {
                let n = left.min(u64::from(u32::MAX));
                let range = DsmRange { attributes: 0.into(), blocks: (n as u32).into(), slba: lba.into() };
                rings.mem.write_bytes(slot_off, range.as_bytes());
                cmd.dptr.prp1.set(slot_iova);
                cmd.cdw10.set(0);
                cmd.cdw11.set(io::DSM_ATTR_DEALLOCATE);
                n
            }
            Op::Read | Op::Write | Op::Compare => {
                let bs = r.block_size as usize;
                let prp_bytes = prp::next_chunk(&r.segs, r.cursor, r.max_bytes, bs, PAGE_SIZE, Mode::Prp);
                let sgl_bytes = if self.sgl {
                    prp::next_chunk(&r.segs, r.cursor, r.max_bytes, bs, PAGE_SIZE, Mode::Sgl { max_descriptors: SLOT_SIZE / 16 }).ok()
                } else {
                    None
                };
                let mut slot = Slot { mem: &rings.mem, off: slot_off, iova: slot_iova };
                let built = match (prp_bytes, sgl_bytes) {
                    (Ok(p), Some(s)) if s > p => prp::build_sgl(&r.segs, r.cursor, s, &mut slot).map(|dp| {
                        cmd.set_data_transfer(DataTransfer::SglContiguousMetadata);
                        (dp, s)
                    }),
                    (Ok(p), _) => prp::build_prp(&r.segs, r.cursor, p, PAGE_SIZE, &mut slot).map(|dp| (dp, p)),
                    (Err(e), _) => Err(e),
                };
                match built {
                    Ok((dp, bytes)) => {
                        cmd.dptr = dp;
                        r.cursor = prp::advance_cursor(&r.segs, r.cursor, bytes);
                        let n = (bytes / bs) as u64;
                        cmd.set_slba(lba);
                        cmd.set_nlb(n as u32);
                        n
                    }
                    Err(e) => {
                        tracing::warn!("NVMe {}: request at LBA {lba}: {e}", self.label);
                        r.status = IoStatus::InvalidBuffer;
                        self.free_cids.push(cid);
                        return;
                    }
                }
            }
        };
        r.issued += blocks;
        r.outstanding += 1;
        if r.fully_issued() {
            r.queued = false;
            self.pending.pop_front();
        }
        let deadline = if self.timeout_ticks == 0 { u64::MAX } else { clock::ticks() + self.timeout_ticks };
        self.trackers[usize::from(cid)] = Tracker { req: idx, deadline, aborted: false, opcode: cmd.opcode, nsid: r.nsid, cid: wire };
        rings.push(&cmd);
        self.inflight += 1;
        self.stats.submitted_commands += 1;
    }

    fn ring_sq(&mut self) {
        let Some(rings) = self.rings.as_mut() else { return };
        match rings.ring_sq(self.ctrl.registers()) {
            Ok(true) => self.stats.doorbells += 1,
            Ok(false) => {}
            Err(e) => tracing::error!("NVMe {}: SQ doorbell: {e}", self.label),
        }
    }

    /// Every so often, look for commands past their deadline.
    fn check_timeouts(&mut self) {
        let now = clock::ticks();
        if now < self.next_timeout_check {
            return;
        }
        self.next_timeout_check = now + (self.timeout_ticks / 8).max(1);
        // During a reset (or before this queue pair re-created its queues
        // after one) nothing is with the device: the commands wait.
        if self.ctrl.state() != State::Enabled || self.connected != Some(self.ctrl.generation()) {
            return;
        }
        let action = self.ctrl.options().timeout_action;
        let qid = self.qid.unwrap_or(0);
        let mut reset = false;
        let mut aborts = Vec::new();
        for cid in 0..self.trackers.len() {
            let t = self.trackers[cid];
            if t.req == NO_REQ || t.deadline > now {
                continue;
            }
            let info = CommandInfo { queue: QueueKind::Io, opcode: t.opcode, cid: t.cid, nsid: t.nsid };
            match action {
                // Aborts go in one batch at a time; one past its deadline
                // while a batch is under way waits for the next check.
                TimeoutAction::Abort if !t.aborted && self.aborting.is_some() => continue,
                TimeoutAction::None => self.trackers[cid].deadline = now + self.timeout_ticks,
                TimeoutAction::Abort if !t.aborted && !reset => {
                    // Its new deadline runs from the Abort's answer.
                    self.trackers[cid].aborted = true;
                    self.trackers[cid].deadline = u64::MAX;
                    aborts.push((t.cid, info));
                }
                // Aborted and still not done, or no abort wanted.
                TimeoutAction::Abort | TimeoutAction::Reset => reset = true,
            }
            self.stats.timeouts += 1;
            self.ctrl.count_timeout();
            tracing::error!("NVMe {}: {info} timed out", self.label);
        }
        if !aborts.is_empty() && !reset {
            self.start_aborts(qid, aborts);
        }
        if reset {
            // The reset runs outside this borrow: from a message.
            let ctrl = self.ctrl.clone();
            reactor::send_msg(reactor::current(), move || reset_after_timeout(&ctrl));
        }
    }

    /// Send Aborts for `aborts` (wire command ids) on a thread, one after
    /// the other (each waits for its answer, up to the admin timeout); the
    /// first the controller does not carry out, for a command still
    /// outstanding once the batch ends, resets the controller, which deals
    /// with the rest.
    fn start_aborts(&mut self, qid: u16, aborts: Vec<(u16, CommandInfo)>) {
        let called_off = Arc::new(AtomicBool::new(false));
        self.aborting = Some(AbortBatch { called_off: called_off.clone(), held: Vec::new() });
        let generation = self.ctrl.generation();
        let (ctrl, c2, label, off) = (self.ctrl.clone(), self.ctrl.clone(), self.label.clone(), called_off.clone());
        reactor::off_reactor(
            "nvme-abort",
            move || {
                for (cid, info) in aborts {
                    match ctrl.abort_in(generation, &off, qid, cid) {
                        // Reset meanwhile, not enabled, or the queue pair went.
                        Ok(None) => return Ok(()),
                        Ok(Some(true)) => tracing::warn!("NVMe {label}: {info} aborted"),
                        // Answered: whether it matters depends on the command.
                        Ok(Some(false)) => return Err((Some(cid), format!("the controller did not abort {info}"))),
                        // Unanswered (or failed): the device may still hold
                        // the Abort, and carry it out on a later command of
                        // that id; only a reset clears it.
                        Err(e) => return Err((None, format!("abort of {info} failed ({e})"))),
                    }
                }
                Ok(())
            },
            move |r| {
                // The queue pair that started the batch, if it is still there.
                let Some(qp) = pollux_core::io_channel::try_get_io_channel(&c2) else { return };
                let mut q = qp.inner.borrow_mut();
                let Some(batch) = q.aborting.take_if(|b| Arc::ptr_eq(&b.called_off, &called_off)) else { return };
                q.free_cids.extend(batch.held);
                let deadline = clock::ticks() + q.timeout_ticks;
                for t in q.trackers.iter_mut().filter(|t| t.req != NO_REQ && t.deadline == u64::MAX) {
                    t.deadline = deadline;
                }
                let failed = match r {
                    Ok(Ok(())) => return,
                    Ok(Err((Some(cid), why))) => {
                        // A command that finished meanwhile needs no reset.
                        let still = q.trackers.get(usize::from(cid & CID_INDEX_MASK)).is_some_and(|t| t.req != NO_REQ && t.cid == cid);
                        if !still {
                            tracing::info!("NVMe {}: {why}, but it finished meanwhile", q.label);
                            return;
                        }
                        why
                    }
                    Ok(Err((None, why))) => why,
                    Err(e) => format!("the Aborts did not run ({e:?})"),
                };
                tracing::warn!("NVMe {}: {failed}; resetting", q.label);
                drop(q);
                reset_after_timeout(&c2);
            },
        );
    }
}

/// Reset `ctrl` because commands timed out.
fn reset_after_timeout(ctrl: &Arc<Controller>) {
    let name = ctrl.name().to_string();
    ctrl.reset(move |r| {
        if let Err(e) = r {
            tracing::error!("NVMe controller {name}: reset after a timeout failed: {e}");
        }
    });
}

/// The bdev status for a failed NVMe status.
fn io_status(s: Status) -> IoStatus {
    IoStatus::from_nvme(s.sct().code(), s.sc())
}
