//! I/O requests: what a consumer submits and a backend completes.
//!
//! A [`BdevIo`] owns everything about one request, including its data
//! buffers, from submission to completion; the backend gets it by value and
//! hands it back with [`BdevIo::complete`]; the consumer's callback receives
//! it with its status and buffers. Requests come from a per-channel free list
//! and return to it when dropped, so steady-state I/O allocates nothing.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use crate::dma::{DmaBuf, Lent};
use crate::inline_fn::InlineFn;

use super::stats::IoStats;

/// The kinds of request a bdev may support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
    Compare,
}

impl IoType {
    pub const ALL: [IoType; 7] =
        [IoType::Read, IoType::Write, IoType::Flush, IoType::Unmap, IoType::WriteZeroes, IoType::Reset, IoType::Compare];

    /// SPDK's name in `supported_io_types`.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
            IoType::Compare => "compare",
        }
    }

    /// This type's bit in a supported-types mask.
    #[inline]
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Whether the request carries data buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write | IoType::Compare)
    }

    /// Whether the request changes the medium.
    pub fn writes(self) -> bool {
        matches!(self, IoType::Write | IoType::Unmap | IoType::WriteZeroes)
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// Not completed yet.
    Pending,
    Success,
    /// The device failed the request (I/O error).
    Failed,
    /// The bdev does not support this kind of request.
    Unsupported,
    /// The blocks are beyond the end of the bdev.
    OutOfRange,
    /// The buffers do not hold `num_blocks` blocks (or are misaligned).
    InvalidBuffer,
    /// A write through a descriptor opened read-only.
    ReadOnly,
    /// The bdev is gone (hot removed or deleted).
    NoDevice,
    /// No resources right now: the caller may retry.
    NoMemory,
    Aborted,
    /// A compare found different data at this byte offset of the request.
    Miscompare {
        offset: u64,
    },
    /// A media error (unrecovered read error, write fault).
    Media,
    /// A thin-provisioned device has no space left for the write
    /// (NVMe Capacity Exceeded, SCSI SPACE ALLOCATION FAILED).
    NoSpace,
    /// NVMe status from a device, passed through for NVMe-aware consumers.
    Nvme {
        sct: u8,
        sc: u8,
    },
}

impl IoStatus {
    pub fn is_ok(self) -> bool {
        self == IoStatus::Success
    }

    /// The status of a request an NVMe device (local or remote) completed
    /// with status code type `sct` and code `sc`: aborts, compare failures
    /// and media errors by their meaning, anything else passed through.
    pub fn from_nvme(sct: u8, sc: u8) -> IoStatus {
        match (sct, sc) {
            (0, 0) => IoStatus::Success,
            // Command Abort Requested, Aborted due to SQ Deletion.
            (0, 0x07 | 0x08) => IoStatus::Aborted,
            // Compare Failure.
            (2, 0x85) => IoStatus::Miscompare { offset: 0 },
            // Capacity Exceeded.
            (0, 0x81) => IoStatus::NoSpace,
            (2, _) => IoStatus::Media,
            _ => IoStatus::Nvme { sct, sc },
        }
    }
}

/// The completion callback: called once, on the submitting reactor.
pub(crate) type Callback = InlineFn<BdevIo>;

/// The pooled body of a request.
pub(crate) struct Slot {
    pub(crate) kind: IoType,
    pub(crate) offset_blocks: u64,
    pub(crate) num_blocks: u64,
    pub(crate) block_size: u32,
    pub(crate) bufs: Vec<DmaBuf>,
    pub(crate) status: IoStatus,
    pub(crate) cb: Option<Callback>,
    pub(crate) submitted: u64,
    pub(crate) completed: u64,
    /// Bounce buffer use: the caller's buffers while the backend works on a copy.
    pub(crate) bounced: Option<Vec<DmaBuf>>,
    /// A read that brought no buffers: the backend lends its memory.
    pub(crate) lend: bool,
    /// What the backend lent such a read.
    pub(crate) lent: Option<Lent>,
    /// Times the backend sent the request again (see [`BdevIo::retried`]).
    pub(crate) retries: u32,
    /// Forwarded to another bdev ([`Descriptor::forward`](super::Descriptor::forward)),
    /// perhaps through several (a passthru on a split): its own offset,
    /// given back at completion.
    pub(crate) forwarded: Option<u64>,
    /// Who counts it while forwarded, one per level that asked (kept
    /// allocated with the request).
    pub(crate) counters: Vec<Rc<Cell<u64>>>,
    /// Sent by a remapped bdev's fast path as a write (see `remap`): its
    /// channel's [`Home::remap_writes`] counts it until completion.
    pub(crate) remap_write: bool,
    pub(crate) home: Rc<Home>,
}

impl Slot {
    /// A forwarded request is done: give it back its own offset and let go
    /// of its in-flight counts.
    #[inline(always)]
    fn unforward(&mut self) {
        if let Some(offset) = self.forwarded.take() {
            self.offset_blocks = offset;
            if self.remap_write {
                self.remap_write = false;
                let c = &self.home.remap_writes;
                c.set(c.get() - 1);
            }
            if !self.counters.is_empty() {
                self.uncount();
            }
        }
    }

    /// The in-flight counts of levels that forwarded it (not the remapped
    /// fast path's, which is `remap_write`): out of line, so that the
    /// completion path stays small.
    #[inline(never)]
    fn uncount(&mut self) {
        for c in self.counters.drain(..) {
            c.set(c.get() - 1);
        }
    }
}

/// Per-channel state a request needs at completion.
pub(crate) struct Home {
    // Boxed: a request owns its slot by pointer while in flight, and the
    // free list hands the same allocations out again.
    #[allow(clippy::vec_box)]
    pub(crate) free: RefCell<Vec<Box<Slot>>>,
    pub(crate) stats: RefCell<IoStats>,
    /// Set while the backend's submit runs: completions are deferred then.
    pub(crate) in_submit: Cell<bool>,
    pub(crate) deferred: Rc<super::channel::Deferred>,
    pub(crate) outstanding: Cell<u64>,
    pub(crate) histogram: Cell<bool>,
    /// A remapped bdev's fast-path writes in flight, shared with its
    /// backend (see `remap`); a count no one reads for other bdevs (so the
    /// completion need not ask which it is).
    pub(crate) remap_writes: Rc<Cell<u64>>,
    /// The channel has been let go of: requests still in flight finish
    /// here, and their slots are freed instead of kept for reuse.
    pub(crate) closed: Cell<bool>,
    /// The bdev, whose retired statistics count what finishes after the
    /// channel closed.
    pub(crate) bdev: std::sync::Arc<super::Bdev>,
}

/// One I/O request. `!Send`: it lives on the reactor that submitted it.
pub struct BdevIo {
    slot: Option<Box<Slot>>,
}

impl fmt::Debug for BdevIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.slot();
        f.debug_struct("BdevIo")
            .field("kind", &s.kind)
            .field("offset_blocks", &s.offset_blocks)
            .field("num_blocks", &s.num_blocks)
            .field("status", &s.status)
            .finish()
    }
}

impl BdevIo {
    pub(crate) fn from_slot(slot: Box<Slot>) -> BdevIo {
        BdevIo { slot: Some(slot) }
    }

    #[inline]
    pub(crate) fn slot(&self) -> &Slot {
        self.slot.as_deref().expect("live request")
    }

    #[inline]
    pub(crate) fn slot_mut(&mut self) -> &mut Slot {
        self.slot.as_deref_mut().expect("live request")
    }

    #[inline]
    pub fn kind(&self) -> IoType {
        self.slot().kind
    }

    #[inline]
    pub fn offset_blocks(&self) -> u64 {
        self.slot().offset_blocks
    }

    #[inline]
    pub fn num_blocks(&self) -> u64 {
        self.slot().num_blocks
    }

    #[inline]
    pub fn block_size(&self) -> u32 {
        self.slot().block_size
    }

    #[inline]
    /// Byte offset of the request on the bdev.
    pub fn offset_bytes(&self) -> u64 {
        self.slot().offset_blocks * self.slot().block_size as u64
    }

    /// Length of the request in bytes.
    #[inline]
    pub fn len_bytes(&self) -> u64 {
        self.slot().num_blocks * self.slot().block_size as u64
    }

    pub fn status(&self) -> IoStatus {
        self.slot().status
    }

    pub fn is_ok(&self) -> bool {
        self.slot().status.is_ok()
    }

    /// Ticks (see `clock`) from submission to completion.
    pub fn latency_ticks(&self) -> u64 {
        self.slot().completed.saturating_sub(self.slot().submitted)
    }

    /// The data buffers (read: to fill; write: to take data from).
    pub fn buffers(&self) -> &[DmaBuf] {
        &self.slot().bufs
    }

    pub fn buffers_mut(&mut self) -> &mut [DmaBuf] {
        &mut self.slot_mut().bufs
    }

    /// Take the buffers out (the consumer keeps them after completion).
    pub fn take_buffers(&mut self) -> Vec<DmaBuf> {
        std::mem::take(&mut self.slot_mut().bufs)
    }

    /// Take the last buffer out, leaving the request's buffer list (and its
    /// capacity, for reuse without allocation) in place.
    pub fn take_buffer(&mut self) -> Option<DmaBuf> {
        self.slot_mut().bufs.pop()
    }

    /// Take the buffers out into `out` without allocating.
    pub fn take_buffers_into(&mut self, out: &mut Vec<DmaBuf>) {
        out.append(&mut self.slot_mut().bufs);
    }

    /// The request's buffer list itself, for moving buffers in and out
    /// without allocating ([`crate::dma::Carver::load`] and `unload`): keep
    /// its capacity (append and drain it rather than replace it).
    pub fn buffer_list(&mut self) -> &mut Vec<DmaBuf> {
        &mut self.slot_mut().bufs
    }

    /// Give the request back the buffers taken with [`take_buffers`]
    /// (a backend that passed them on to another bdev, such as delay).
    ///
    /// [`take_buffers`]: BdevIo::take_buffers
    pub fn put_buffers(&mut self, bufs: Vec<DmaBuf>) {
        self.slot_mut().bufs = bufs;
    }

    /// Whether this read brought no buffers and takes the backend's memory
    /// instead ([`Descriptor::read_lend`]): a backend that says it lends
    /// ([`Backend::lends_reads`]) then calls [`BdevIo::lend`].
    ///
    /// [`Descriptor::read_lend`]: super::Descriptor::read_lend
    /// [`Backend::lends_reads`]: super::Backend::lends_reads
    pub fn wants_lend(&self) -> bool {
        self.slot().lend
    }

    /// Lend the read the data it asked for (backends; the whole request).
    pub fn lend(&mut self, lent: Lent) {
        debug_assert!(self.slot().lend && lent.len() as u64 == self.len_bytes());
        self.slot_mut().lent = Some(lent);
    }

    /// The memory lent to this read (consumers, after completion).
    pub fn take_lent(&mut self) -> Option<Lent> {
        self.slot_mut().lent.take()
    }

    /// Count one more time the backend sends this request again (after a
    /// command timeout, say) and return the count so far, for backends that
    /// bound their retries (SPDK's `bdev_retry_count`).
    pub fn retried(&mut self) -> u32 {
        let s = self.slot_mut();
        s.retries = s.retries.saturating_add(1);
        s.retries
    }

    /// Copy `data` into the request's buffers from byte `offset` (backends).
    pub fn copy_in(&mut self, offset: usize, data: &[u8]) {
        crate::dma::copy_to_bufs(&mut self.slot_mut().bufs, offset, data);
    }

    /// Copy the request's buffers into `out`, from byte `offset` (backends).
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) {
        crate::dma::copy_from_bufs(&self.slot().bufs, offset, out);
    }

    /// Finish the request. Called once, by the backend, on the reactor that
    /// submitted it. The consumer's callback runs now, or in the next
    /// iteration when the backend completes from inside its submit (so a
    /// consumer that resubmits from its callback never recurses).
    pub fn complete(mut self, status: IoStatus) {
        debug_assert!(status != IoStatus::Pending);
        let home = {
            let s = self.slot_mut();
            s.status = status;
            if let Some(orig) = s.bounced.take() {
                super::channel::unbounce(s, orig);
            }
            s.unforward();
            s.home.clone()
        };
        home.outstanding.set(home.outstanding.get() - 1);
        if home.in_submit.get() {
            home.deferred.push(self);
        } else {
            self.finish_at(crate::reactor::refresh_now());
        }
    }

    /// Count the request and run the consumer's callback. Latency is
    /// measured up to here (`now`): what the consumer sees.
    pub(crate) fn finish_at(mut self, now: u64) {
        let s = self.slot_mut();
        s.completed = now;
        let home = &s.home;
        let bytes = s.num_blocks * s.block_size as u64;
        let latency = now.saturating_sub(s.submitted);
        if home.closed.get() {
            // The channel's counts went to the bdev when it closed: a
            // request that ends later (a backend draining) is counted there.
            home.bdev.retired.lock().unwrap_or_else(|e| e.into_inner()).record(s.kind, bytes, s.status, latency, home.histogram.get());
        } else {
            home.stats.borrow_mut().record(s.kind, bytes, s.status, latency, home.histogram.get());
        }
        match s.cb.take() {
            Some(cb) => cb.call(self),
            None => drop(self),
        }
    }
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        if let Some(mut s) = self.slot.take() {
            s.unforward();
            if s.status == IoStatus::Pending && s.cb.is_some() {
                // A backend dropped a request without completing it: the
                // consumer still gets its callback, so nothing waits forever.
                s.home.outstanding.set(s.home.outstanding.get() - 1);
                s.status = IoStatus::Aborted;
                if let Some(orig) = s.bounced.take() {
                    s.bufs = orig;
                }
                let cb = s.cb.take().expect("callback");
                cb.call(BdevIo { slot: Some(s) });
                return;
            }
            s.bufs.clear();
            s.bounced = None;
            s.lend = false;
            s.lent = None;
            s.cb = None;
            let home = s.home.clone();
            // A closed channel's slots are not kept: each holds its home,
            // and the home's free list would hold them (a cycle, leaked).
            if !home.closed.get() {
                home.free.borrow_mut().push(s);
            }
        }
    }
}
