//! A bdev's per-reactor channel: the backend's channel, the request free
//! list, statistics, and the submission path with its checks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::clock;
use crate::dma::{self, DmaBuf};
use crate::inline_fn::InlineFn;
use crate::io_channel::IoDevice;
use crate::reactor::{self, PollStatus, Poller};

use super::io::{BdevIo, Home, IoStatus, IoType, Slot};
use super::stats::IoStats;
use super::{BackendChannel, Bdev};

/// Completions made from inside a backend's submit, run in the next
/// iteration (one queue and one poller per reactor).
pub(crate) struct Deferred {
    list: RefCell<Vec<BdevIo>>,
    spare: RefCell<Vec<BdevIo>>,
    _poller: Poller,
}

impl Deferred {
    fn get() -> Rc<Deferred> {
        if let Some(d) = reactor::local::<Deferred>() {
            return d;
        }
        // The poller holds the queue weakly (the queue owns the poller) and
        // so looks nothing up per pass.
        let d = Rc::new_cyclic(|w: &std::rc::Weak<Deferred>| {
            let w = w.clone();
            let poller = reactor::register_poller("bdev_deferred_completions", move || match w.upgrade() {
                Some(d) => d.run().into(),
                None => PollStatus::Idle,
            });
            Deferred { list: RefCell::new(Vec::with_capacity(256)), spare: RefCell::new(Vec::with_capacity(256)), _poller: poller }
        });
        reactor::set_local(d.clone());
        d
    }

    /// Run the callbacks of deferred completions. Returns how many ran.
    fn run(&self) -> usize {
        if self.list.borrow().is_empty() {
            return 0;
        }
        // Swap lists so callbacks may defer more completions meanwhile.
        let mut batch = self.spare.take();
        std::mem::swap(&mut batch, &mut *self.list.borrow_mut());
        let n = batch.len();
        // One clock read for the batch: these completions, and requests their
        // callbacks submit, are stamped with it.
        let now = reactor::refresh_now();
        for io in batch.drain(..) {
            io.finish_at(now);
        }
        *self.spare.borrow_mut() = batch;
        n
    }

    pub(crate) fn push(&self, io: BdevIo) {
        self.list.borrow_mut().push(io);
    }
}

/// The bdev layer's channel to one bdev on one reactor.
pub struct BdevChannel {
    backend: Box<dyn BackendChannel>,
    /// The backend's fast path, for a remapped bdev.
    remap: Option<super::remap::Remap>,
    pub(crate) home: Rc<Home>,
    bdev: Arc<Bdev>,
    /// Requests waiting for the bdev's rate limits, in order, and the
    /// poller that sends them (made when first needed).
    qos_queue: RefCell<std::collections::VecDeque<BdevIo>>,
    qos_poller: RefCell<Option<Poller>>,
}

impl IoDevice for Bdev {
    type Channel = BdevChannel;

    fn create_channel(self: &Arc<Self>) -> BdevChannel {
        let deferred = Deferred::get();
        let backend = self.backend.create_channel();
        let remap = backend.remap().filter(|r| r.base_block_size() == self.block_size);
        let home = Rc::new(Home {
            free: RefCell::new(Vec::new()),
            stats: RefCell::new(IoStats::default()),
            in_submit: Cell::new(false),
            deferred,
            outstanding: Cell::new(0),
            histogram: Cell::new(self.histogram.load(Ordering::Relaxed)),
            remap_writes: remap.as_ref().map(|r| r.writes()).unwrap_or_default(),
            closed: Cell::new(false),
            bdev: self.clone(),
        });
        BdevChannel {
            remap,
            backend,
            home,
            bdev: self.clone(),
            qos_queue: RefCell::new(std::collections::VecDeque::new()),
            qos_poller: RefCell::new(None),
        }
    }
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        // Keep what this channel counted.
        self.bdev.retired.lock().unwrap_or_else(|e| e.into_inner()).merge(&self.home.stats.borrow());
        // Requests still in flight keep the home; its free slots (each
        // holding the home: a cycle, leaked with every channel dropped) go
        // now, and theirs when they finish. (A consumer may let go of its
        // channel with requests still at the backend: each backend's
        // channel sees to those in its own drop.)
        self.home.closed.set(true);
        self.home.free.borrow_mut().clear();
    }
}

impl BdevChannel {
    /// Statistics of this channel so far.
    pub fn stats(&self) -> IoStats {
        self.home.stats.borrow().clone()
    }

    pub(crate) fn reset_stats(&self, mode: super::stats::ResetMode) {
        self.home.stats.borrow_mut().reset(mode);
    }

    pub(crate) fn set_histogram(&self, on: bool) {
        self.home.histogram.set(on);
        if !on {
            self.home.stats.borrow_mut().histogram = None;
        }
    }

    /// Requests submitted and not yet completed.
    pub fn outstanding(&self) -> u64 {
        self.home.outstanding.get()
    }

    /// Build, check and submit a request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &self,
        writable: bool,
        kind: IoType,
        bufs: impl IntoIterator<Item = DmaBuf>,
        offset_blocks: u64,
        num_blocks: u64,
        cb: InlineFn<BdevIo>,
    ) {
        self.submit_with(writable, kind, bufs, false, offset_blocks, num_blocks, cb)
    }

    /// [`BdevChannel::submit`], for a read that may ask to be lent memory.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_with(
        &self,
        writable: bool,
        kind: IoType,
        bufs: impl IntoIterator<Item = DmaBuf>,
        lend: bool,
        offset_blocks: u64,
        num_blocks: u64,
        cb: InlineFn<BdevIo>,
    ) {
        let mut slot = self.new_slot(kind);
        slot.bufs.extend(bufs);
        self.launch(writable, kind, slot, lend, offset_blocks, num_blocks, cb)
    }

    /// A request on `parent`'s buffers (`parent`: a request to a virtual
    /// bdev whose backend passes it on): the buffer lists are swapped, so
    /// the child runs on the parent's buffers while the parent holds the
    /// child's empty list, and swapped back before `cb` gets both. No list
    /// is allocated or freed, where taking the parent's buffers out and
    /// putting them back left a list without capacity on one side every
    /// time.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_child(
        &self,
        writable: bool,
        kind: IoType,
        mut parent: BdevIo,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(BdevIo, BdevIo) + 'static,
    ) {
        let mut slot = self.new_slot(kind);
        std::mem::swap(&mut slot.bufs, &mut parent.slot_mut().bufs);
        let cb = InlineFn::new(move |mut child: BdevIo| {
            std::mem::swap(&mut child.slot_mut().bufs, &mut parent.slot_mut().bufs);
            cb(child, parent)
        });
        self.launch(writable, kind, slot, false, offset_blocks, num_blocks, cb)
    }

    /// A free request slot of this channel (a new one if none is free).
    #[inline]
    fn new_slot(&self, kind: IoType) -> Box<Slot> {
        self.home.free.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(Slot {
                kind,
                offset_blocks: 0,
                num_blocks: 0,
                block_size: 0,
                bufs: Vec::with_capacity(4),
                status: IoStatus::Pending,
                cb: None,
                submitted: 0,
                completed: 0,
                bounced: None,
                lend: false,
                lent: None,
                retries: 0,
                forwarded: None,
                counters: Vec::with_capacity(2),
                remap_write: false,
                home: self.home.clone(),
            })
        })
    }

    /// Fill in `slot` (its buffers are in already), check it and submit it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn launch(
        &self,
        writable: bool,
        kind: IoType,
        mut slot: Box<Slot>,
        lend: bool,
        offset_blocks: u64,
        num_blocks: u64,
        cb: InlineFn<BdevIo>,
    ) {
        let bdev = &self.bdev;
        slot.retries = 0;
        slot.kind = kind;
        slot.offset_blocks = offset_blocks;
        slot.num_blocks = num_blocks;
        slot.block_size = bdev.block_size;
        slot.lend = lend;
        slot.status = IoStatus::Pending;
        slot.cb = Some(cb);
        slot.submitted = reactor::now();
        self.home.outstanding.set(self.home.outstanding.get() + 1);

        let check = check(bdev, writable, &slot);
        if check == IoStatus::Success {
            if bdev.align != 1 || bdev.contiguous {
                if let Err(st) = bounce_if_needed(bdev, &mut slot) {
                    return self.fail(slot, st);
                }
            }
        } else {
            return self.fail(slot, check);
        }
        if bdev.qos.active() {
            return self.qos_submit(BdevIo::from_slot(slot));
        }
        self.home.in_submit.set(true);
        match &self.remap {
            Some(r) => {
                if let Err(slot) = r.try_send(slot, kind, lend) {
                    self.backend.submit(BdevIo::from_slot(slot))
                }
            }
            None => self.backend.submit(BdevIo::from_slot(slot)),
        }
        self.home.in_submit.set(false);
    }

    /// Hand a request, checked and mapped by another bdev's fast path, to
    /// this bdev's backend (see [`super::remap`]).
    #[inline(always)]
    pub(crate) fn send_to_backend(&self, io: BdevIo) {
        self.backend.submit(io)
    }

    /// A request to a rate-limited bdev: now if its budgets allow and none
    /// waits before it, else queued.
    #[cold]
    fn qos_submit(&self, io: BdevIo) {
        let bytes = io.len_bytes();
        if self.qos_queue.borrow().is_empty() && self.bdev.qos.admit(io.kind(), bytes, reactor::now()) {
            self.home.in_submit.set(true);
            self.backend.submit(io);
            self.home.in_submit.set(false);
            return;
        }
        self.qos_queue.borrow_mut().push_back(io);
        let mut p = self.qos_poller.borrow_mut();
        match &*p {
            Some(p) => p.resume(),
            None => {
                let bdev = self.bdev.clone();
                *p = Some(reactor::register_timed_poller("bdev_qos", std::time::Duration::from_micros(100), move || {
                    match crate::io_channel::try_get_io_channel(&bdev) {
                        Some(ch) => ch.qos_drain(),
                        None => PollStatus::Idle,
                    }
                }));
            }
        }
    }

    /// Send the queued requests the budgets allow now.
    fn qos_drain(&self) -> PollStatus {
        let now = clock::ticks();
        let mut sent = 0;
        loop {
            let next = {
                let mut q = self.qos_queue.borrow_mut();
                match q.front() {
                    Some(io) if self.bdev.qos.admit(io.kind(), io.len_bytes(), now) => q.pop_front(),
                    _ => None,
                }
            };
            let Some(io) = next else { break };
            sent += 1;
            self.home.in_submit.set(true);
            self.backend.submit(io);
            self.home.in_submit.set(false);
        }
        if self.qos_queue.borrow().is_empty() {
            if let Some(p) = &*self.qos_poller.borrow() {
                p.pause();
            }
        }
        if sent > 0 { PollStatus::Busy } else { PollStatus::Idle }
    }

    /// Send a request another bdev's backend was given to this bdev's
    /// backend at `offset_blocks`, as it is (see [`Descriptor::forward`](super::Descriptor::forward)).
    pub(crate) fn forward(&self, writable: bool, mut io: BdevIo, offset_blocks: u64, counter: Option<Rc<Cell<u64>>>) {
        let bdev = &self.bdev;
        let s = io.slot_mut();
        if s.block_size != bdev.block_size {
            return io.complete(IoStatus::InvalidBuffer);
        }
        let own = std::mem::replace(&mut s.offset_blocks, offset_blocks);
        if let Some(c) = counter {
            c.set(c.get() + 1);
            s.counters.push(c);
        }
        // Through several bdevs, the first one's offset is the request's.
        s.forwarded.get_or_insert(own);
        // The buffers were checked for the same length when the request
        // was made: the range, the type and the access are this bdev's.
        let mut check = IoStatus::Success;
        if bdev.removing.load(Ordering::Relaxed) {
            check = IoStatus::NoDevice;
        } else if !bdev.supports(s.kind) {
            check = IoStatus::Unsupported;
        } else if s.kind.writes() && !writable {
            check = IoStatus::ReadOnly;
        } else if s.offset_blocks.checked_add(s.num_blocks).is_none_or(|end| end > bdev.num_blocks()) {
            check = IoStatus::OutOfRange;
        } else if s.lend && !bdev.backend.lends_reads() {
            check = IoStatus::InvalidBuffer;
        } else if s.bounced.is_none() && (bdev.align != 1 || bdev.contiguous) {
            if let Err(st) = bounce_if_needed(bdev, s) {
                check = st;
            }
        }
        if check != IoStatus::Success {
            return io.complete(check);
        }
        self.backend.submit(io);
    }

    /// Complete a request that never reached the backend (in the next
    /// iteration, like every completion made during submit).
    fn fail(&self, slot: Box<Slot>, status: IoStatus) {
        self.home.in_submit.set(true);
        BdevIo::from_slot(slot).complete(status);
        self.home.in_submit.set(false);
    }
}

#[inline]
fn check(bdev: &Bdev, writable: bool, s: &Slot) -> IoStatus {
    if bdev.removing.load(Ordering::Relaxed) {
        return IoStatus::NoDevice;
    }
    if !bdev.supports(s.kind) {
        return IoStatus::Unsupported;
    }
    if s.kind.writes() && !writable {
        return IoStatus::ReadOnly;
    }
    if s.kind == IoType::Reset {
        return IoStatus::Success;
    }
    match s.offset_blocks.checked_add(s.num_blocks) {
        Some(end) if end <= bdev.num_blocks() && (s.num_blocks > 0 || s.kind == IoType::Flush) => {}
        _ => return IoStatus::OutOfRange,
    }
    if s.lend {
        // Lent memory: a read with no buffers, to a backend that lends.
        if s.kind != IoType::Read || !s.bufs.is_empty() || !bdev.backend.lends_reads() {
            return IoStatus::InvalidBuffer;
        }
    } else if s.kind.has_data() {
        let want = s.num_blocks * s.block_size as u64;
        let have: u64 = s.bufs.iter().map(|b| b.len() as u64).sum();
        if want != have {
            return IoStatus::InvalidBuffer;
        }
    } else if !s.bufs.is_empty() {
        return IoStatus::InvalidBuffer;
    }
    IoStatus::Success
}

/// Give the backend buffers it can use: if it needs aligned or contiguous
/// memory and the caller's buffers are not, swap in one bounce buffer (and
/// copy the data in for writes). The caller's buffers come back at completion.
#[inline]
pub(super) fn bounce_if_needed(bdev: &Bdev, s: &mut Slot) -> Result<(), IoStatus> {
    if !s.kind.has_data() || s.lend || (bdev.align == 1 && !bdev.contiguous) {
        return Ok(());
    }
    let (align, contiguous) = (bdev.align, bdev.contiguous);
    let aligned = s.bufs.iter().all(|b| b.addr() % align == 0 && b.len() % align == 0);
    if aligned && (!contiguous || s.bufs.len() <= 1) {
        return Ok(());
    }
    let total: usize = s.bufs.iter().map(|b| b.len()).sum();
    let mut bounce = match dma::pool().ok().and_then(|p| p.get(total)) {
        Some(b) => b,
        None => DmaBuf::alloc(total).map_err(|_| IoStatus::NoMemory)?,
    };
    bounce.set_len(total);
    if s.kind != IoType::Read {
        let mut off = 0;
        for b in &s.bufs {
            bounce[off..off + b.len()].copy_from_slice(b);
            off += b.len();
        }
    }
    let orig = std::mem::replace(&mut s.bufs, Vec::with_capacity(1));
    s.bufs.push(bounce);
    s.bounced = Some(orig);
    Ok(())
}

/// At completion: copy read data back and restore the caller's buffers.
pub(crate) fn unbounce(s: &mut Slot, mut orig: Vec<DmaBuf>) {
    if s.kind == IoType::Read && s.status == IoStatus::Success {
        let src = &s.bufs[0];
        let mut off = 0;
        for b in orig.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&src[off..off + n]);
            off += n;
        }
    }
    s.bufs = orig;
}
