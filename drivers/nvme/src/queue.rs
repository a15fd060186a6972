//! A submission/completion queue pair in device memory: tails, heads and the
//! phase tag, the doorbells, and nothing else (no knowledge of requests).
//!
//! Commands are stored with [`Rings::push`] and made visible to the
//! controller with one doorbell write per batch ([`Rings::ring_sq`]);
//! completions are consumed with [`Rings::next_completion`] (the phase tag
//! tells new entries from old) and acknowledged with one head doorbell write
//! per batch ([`Rings::ring_cq`]).

use std::sync::atomic::{Ordering, fence};

use pollux_core::dma::{DmaError, Iova};
use pollux_nvme_spec::cmd::{Command, Completion};
use pollux_nvme_spec::registers::{cq_head_doorbell, sq_tail_doorbell};

use crate::regs::{RegisterError, Registers};
use crate::sys::DeviceMemory;

pub(crate) const SQE_SIZE: usize = 64;
pub(crate) const CQE_SIZE: usize = 16;
const PAGE: usize = 4096;

/// Where a queue pair's parts lie in its memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub sq_offset: usize,
    pub cq_offset: usize,
    /// Per-command scratch (PRP/SGL lists, DSM ranges): `slots` pieces of
    /// `slot_size` bytes from `slots_offset`, each inside one page.
    pub slots_offset: usize,
    pub slot_size: usize,
    pub slots: usize,
    pub total: usize,
}

impl Layout {
    pub fn new(entries: u16, slots: usize, slot_size: usize) -> Layout {
        let round = |n: usize| n.div_ceil(PAGE) * PAGE;
        let sq = round(usize::from(entries) * SQE_SIZE);
        let cq = round(usize::from(entries) * CQE_SIZE);
        let slots_bytes = round(slots * slot_size);
        Layout { sq_offset: 0, cq_offset: sq, slots_offset: sq + cq, slot_size, slots, total: sq + cq + slots_bytes }
    }
}

/// The rings of one queue pair (admin or I/O).
pub(crate) struct Rings {
    pub mem: DeviceMemory,
    pub layout: Layout,
    pub qid: u16,
    entries: u16,
    sq_tail: u16,
    /// The controller's SQ head, from the last completion.
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    /// The tail moved since the last SQ doorbell.
    sq_dirty: bool,
    /// The head moved since the last CQ doorbell.
    cq_dirty: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
}

impl Rings {
    /// Allocate zeroed rings for queue `qid` with `entries` slots each.
    pub fn new(qid: u16, entries: u16, dstrd: u8, slots: usize, slot_size: usize) -> Result<Rings, DmaError> {
        assert!(entries >= 2, "a queue needs at least two entries");
        assert!(slot_size == 0 || (PAGE % slot_size == 0 && slot_size >= 16), "scratch slots must tile a page");
        let layout = Layout::new(entries, slots, slot_size);
        let mem = DeviceMemory::alloc(layout.total)?;
        Ok(Rings {
            mem,
            layout,
            qid,
            entries,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            sq_dirty: false,
            cq_dirty: false,
            sq_doorbell: sq_tail_doorbell(qid, dstrd),
            cq_doorbell: cq_head_doorbell(qid, dstrd),
        })
    }

    /// Forget everything and zero the completion queue (after a controller
    /// reset or before re-creating the queues).
    pub fn reset(&mut self) {
        self.mem.zero(self.layout.cq_offset, usize::from(self.entries) * CQE_SIZE);
        self.sq_tail = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.phase = true;
        self.sq_dirty = false;
        self.cq_dirty = false;
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    pub fn sq_iova(&self) -> Iova {
        self.mem.iova(self.layout.sq_offset)
    }

    pub fn cq_iova(&self) -> Iova {
        self.mem.iova(self.layout.cq_offset)
    }

    /// The device address and offset of scratch slot `i`.
    pub fn slot(&self, i: usize) -> (usize, u64) {
        assert!(i < self.layout.slots);
        let off = self.layout.slots_offset + i * self.layout.slot_size;
        (off, self.mem.iova(off).0)
    }

    /// Whether another command fits (one entry always stays free).
    pub fn sq_full(&self) -> bool {
        (self.sq_tail + 1) % self.entries == self.sq_head
    }

    /// Store a command at the tail. The controller sees it after the next
    /// [`Rings::ring_sq`].
    #[inline]
    pub fn push(&mut self, cmd: &Command) {
        debug_assert!(!self.sq_full());
        let off = self.layout.sq_offset + usize::from(self.sq_tail) * SQE_SIZE;
        self.mem.write_command(off, cmd);
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        self.sq_dirty = true;
    }

    /// Write the SQ tail doorbell if commands were added since the last one.
    /// Returns whether it wrote.
    #[inline]
    pub fn ring_sq(&mut self, regs: &dyn Registers) -> Result<bool, RegisterError> {
        if !self.sq_dirty {
            return Ok(false);
        }
        // The entries must be in memory before the controller is told.
        fence(Ordering::SeqCst);
        regs.write32(self.sq_doorbell, u32::from(self.sq_tail))?;
        self.sq_dirty = false;
        Ok(true)
    }

    /// The next new completion, if the controller posted one.
    #[inline]
    pub fn next_completion(&mut self) -> Option<Completion> {
        let off = self.layout.cq_offset + usize::from(self.cq_head) * CQE_SIZE;
        let status = self.mem.completion_status(off);
        if (status & 1 != 0) != self.phase {
            return None;
        }
        // Read the rest of the entry only after seeing its phase tag.
        fence(Ordering::Acquire);
        let cqe = self.mem.read_completion(off);
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        self.cq_dirty = true;
        let head = cqe.sq_head.get();
        if head < self.entries {
            self.sq_head = head;
        }
        Some(cqe)
    }

    /// Whether a new completion waits at the head (without consuming it).
    pub fn has_completion(&self) -> bool {
        let off = self.layout.cq_offset + usize::from(self.cq_head) * CQE_SIZE;
        (self.mem.completion_status(off) & 1 != 0) == self.phase
    }

    /// Write the CQ head doorbell if completions were consumed since the last one.
    #[inline]
    pub fn ring_cq(&mut self, regs: &dyn Registers) -> Result<bool, RegisterError> {
        if !self.cq_dirty {
            return Ok(false);
        }
        regs.write32(self.cq_doorbell, u32::from(self.cq_head))?;
        self.cq_dirty = false;
        Ok(true)
    }
}
