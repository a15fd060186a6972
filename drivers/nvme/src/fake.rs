//! A fake NVMe controller for unit tests: a register window whose doorbell
//! writes make it fetch commands from the queues in memory, execute them on
//! an in-memory disk and post completions with the phase tag -- the same
//! memory protocol as a device, without a VM. IOVA = virtual address here
//! (the DMA allocator's fallback memory), so "DMA" is a raw memory access.
//!
//! Test hooks: hold I/O commands (never complete them until released),
//! refuse aborts, fail the next I/O command with a status, and counters.

use std::collections::HashMap;
use std::sync::Mutex;

use pollux_nvme_spec::cmd::{Command, Completion, DataTransfer, DsmRange, SglDescriptor, SglType, admin, feature, io};
use pollux_nvme_spec::identify::{IdentifyController, IdentifyNamespace, cns, oncs};
use pollux_nvme_spec::registers::{Cc, Csts, offset};
use pollux_nvme_spec::set_ascii_field;
use pollux_nvme_spec::status::{CommandSpecificStatus, GenericStatus, MediaStatus, Status};
use zerocopy::{FromBytes, IntoBytes};

use crate::regs::{RegisterError, Registers};

const PAGE: u64 = 4096;

/// Reads `len` bytes of "device memory" at `iova`.
fn dma_read(iova: u64, out: &mut [u8]) {
    // SAFETY: test-only: IOVAs handed to the fake are addresses of the
    // driver's live DMA buffers (IOVA = VA), valid for the command's length.
    unsafe { std::ptr::copy_nonoverlapping(iova as *const u8, out.as_mut_ptr(), out.len()) }
}

fn dma_write(iova: u64, data: &[u8]) {
    // SAFETY: as in dma_read; the buffer belongs to the command being run.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), iova as *mut u8, data.len()) }
}

struct Queue {
    base: u64,
    entries: u16,
    head: u16,
    tail: u16,
    cqid: u16,
    phase: bool,
}

struct Held {
    qid: u16,
    cmd: Command,
}

#[derive(Default)]
pub struct Counters {
    pub io_commands: u64,
    pub sq_doorbells: u64,
    /// Submission queue doorbells written for a queue the device does not
    /// have (a real controller reports an invalid doorbell write).
    pub unknown_doorbells: u64,
    /// The most commands one doorbell write made available.
    pub max_batch: u64,
    pub aborts: u64,
    pub resets: u64,
    pub prp_lists: u64,
    pub sgl_commands: u64,
    pub opcodes: HashMap<u8, u64>,
    /// Admin commands taken, by opcode.
    pub admin_opcodes: HashMap<u8, u64>,
}

pub struct State {
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    sqs: HashMap<u16, Queue>,
    cqs: HashMap<u16, Queue>,
    disks: Vec<Vec<u8>>,
    block: usize,
    mdts: u8,
    sgl: bool,
    oncs: u16,
    hold_io: bool,
    refuse_abort: bool,
    fail_next_io: Option<Status>,
    gone: bool,
    held: Vec<Held>,
    counters: Counters,
    /// Refuse Create I/O Submission Queue (Invalid Queue Identifier).
    pub refuse_create_sq: bool,
    /// Take Aborts and never answer them.
    pub silent_abort: bool,
    /// Report this size (blocks) for this namespace id.
    pub nsze_override: Option<(u32, u64)>,
    /// Answer every active namespace list with a full page of ids.
    pub endless_ns_list: bool,
    /// Take admin commands of this opcode and never answer them.
    pub hold_admin: Option<u8>,
    /// Held admin commands write a page of 0xee to their data buffers
    /// right after the next admin command ran (a device's late DMA).
    pub late_admin_dma: bool,
    pub(crate) held_admin: Vec<Command>,
    /// CAP.TO, in 500 ms units.
    pub cap_to: u8,
    /// A controller enabled while set does not report ready (CSTS.RDY)
    /// until it is cleared.
    pub hold_ready: bool,
    pub(crate) ready_held: bool,
    /// The command id of every I/O command, in order.
    pub io_cids: Vec<u16>,
}

/// The fake controller.
pub struct FakeController {
    st: Mutex<State>,
}

impl FakeController {
    /// `namespaces` namespaces of `blocks` blocks of `block` bytes; MDTS in
    /// 4 KiB units as a power of two; SGL support on or off.
    pub fn new(namespaces: usize, blocks: usize, block: usize, mdts: u8, sgl: bool) -> FakeController {
        FakeController {
            st: Mutex::new(State {
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                sqs: HashMap::new(),
                cqs: HashMap::new(),
                disks: vec![vec![0u8; blocks * block]; namespaces],
                block,
                mdts,
                sgl,
                oncs: oncs::COMPARE | oncs::DATASET_MANAGEMENT | oncs::WRITE_ZEROES,
                hold_io: false,
                refuse_abort: false,
                fail_next_io: None,
                gone: false,
                held: Vec::new(),
                counters: Counters::default(),
                refuse_create_sq: false,
                silent_abort: false,
                nsze_override: None,
                endless_ns_list: false,
                hold_admin: None,
                late_admin_dma: false,
                held_admin: Vec::new(),
                cap_to: 1,
                hold_ready: false,
                ready_held: false,
                io_cids: Vec::new(),
            }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The optional NVM commands Identify Controller reports (before bring-up).
    pub fn set_oncs(&self, oncs: u16) {
        self.st().oncs = oncs;
    }

    pub fn set_hold_io(&self, on: bool) {
        self.st().hold_io = on;
    }

    pub fn set_refuse_abort(&self, on: bool) {
        self.st().refuse_abort = on;
    }

    pub fn fail_next_io(&self, s: Status) {
        self.st().fail_next_io = Some(s);
    }

    /// The device disappears: every register reads all ones.
    pub fn remove(&self) {
        self.st().gone = true;
    }

    /// Change (or look at) the fake's state.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.st())
    }

    /// Post a completion for `cid` on queue `qid` as if a command finished.
    pub fn inject_cqe(&self, qid: u16, cid: u16) {
        let mut c = Command::new(io::READ);
        c.cid.set(cid);
        self.st().post(qid, &c, 0, Status::SUCCESS);
    }

    pub fn held(&self) -> usize {
        self.st().held.len()
    }

    pub fn disk(&self, ns: usize) -> Vec<u8> {
        self.st().disks[ns].clone()
    }

    pub fn counters<R>(&self, f: impl FnOnce(&Counters) -> R) -> R {
        f(&self.st().counters)
    }
}

impl Registers for FakeController {
    fn read32(&self, off: usize) -> Result<u32, RegisterError> {
        let mut st = self.st();
        if st.gone {
            return Ok(u32::MAX);
        }
        Ok(match off as u32 {
            offset::VS => 0x0001_0400,
            offset::CC => st.cc,
            offset::CSTS => {
                // Enabled while `hold_ready` was set: ready once it is not.
                if st.ready_held && !st.hold_ready {
                    st.ready_held = false;
                    st.csts |= Csts::RDY;
                }
                st.csts
            }
            offset::AQA => st.aqa,
            _ => 0,
        })
    }

    fn read64(&self, off: usize) -> Result<u64, RegisterError> {
        let st = self.st();
        if st.gone {
            return Ok(u64::MAX);
        }
        match off as u32 {
            // MQES 1023, CQR, TO (500 ms by default), DSTRD 0, CSS NVM, MPSMIN 4K, MPSMAX 64K.
            offset::CAP => Ok(0x0040_0020_0000_03ff | (1 << 16) | (u64::from(st.cap_to) << 24)),
            o => {
                drop(st);
                Ok(u64::from(self.read32(o as usize)?))
            }
        }
    }

    fn write32(&self, off: usize, v: u32) -> Result<(), RegisterError> {
        let mut st = self.st();
        if st.gone {
            return Ok(());
        }
        match off as u32 {
            offset::CC => st.write_cc(v),
            offset::AQA => st.aqa = v,
            o if o >= offset::DOORBELLS => {
                let idx = (o - offset::DOORBELLS) / 4;
                let qid = (idx / 2) as u16;
                if idx % 2 == 0 {
                    st.sq_doorbell(qid, v as u16);
                } else if let Some(q) = st.cqs.get_mut(&qid) {
                    q.head = v as u16;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn write64(&self, off: usize, v: u64) -> Result<(), RegisterError> {
        let mut st = self.st();
        match off as u32 {
            offset::ASQ => st.asq = v,
            offset::ACQ => st.acq = v,
            _ => {}
        }
        Ok(())
    }
}

impl State {
    /// The command id of the first command held.
    pub fn held_cid(&self) -> u16 {
        self.held[0].cmd.cid.get()
    }

    /// Carry out the admin commands held so far and post their answers
    /// (late), holding no more.
    pub fn answer_held_admin(&mut self) {
        self.hold_admin = None;
        for cmd in std::mem::take(&mut self.held_admin) {
            let (result, status) = self.exec_admin(&cmd);
            self.post(0, &cmd, result, status);
        }
    }

    /// The I/O submission queues the device has now.
    pub fn io_queue_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.sqs.keys().copied().filter(|&q| q != 0).collect();
        ids.sort_unstable();
        ids
    }

    fn write_cc(&mut self, v: u32) {
        let was = Cc(self.cc).enabled();
        self.cc = v;
        let cc = Cc(v);
        if cc.enabled() && !was {
            let sq_entries = (self.aqa & 0xfff) as u16 + 1;
            let cq_entries = ((self.aqa >> 16) & 0xfff) as u16 + 1;
            self.sqs.clear();
            self.cqs.clear();
            self.sqs.insert(0, Queue { base: self.asq, entries: sq_entries, head: 0, tail: 0, cqid: 0, phase: true });
            self.cqs.insert(0, Queue { base: self.acq, entries: cq_entries, head: 0, tail: 0, cqid: 0, phase: true });
            self.ready_held = self.hold_ready;
            self.csts = if self.hold_ready { 0 } else { Csts::RDY };
        } else if !cc.enabled() && was {
            // Controller reset: every queue and held command is gone.
            self.held_admin.clear();
            self.sqs.clear();
            self.cqs.clear();
            self.held.clear();
            self.ready_held = false;
            self.csts = 0;
            self.counters.resets += 1;
        }
        if cc.shutdown_notification() != 0 {
            self.csts = (self.csts & !Csts::SHST_MASK) | Csts::SHST_COMPLETE;
        }
    }

    fn sq_doorbell(&mut self, qid: u16, tail: u16) {
        self.counters.sq_doorbells += 1;
        let Some(q) = self.sqs.get_mut(&qid) else {
            self.counters.unknown_doorbells += 1;
            return;
        };
        q.tail = tail;
        let mut batch = 0;
        loop {
            let q = self.sqs.get_mut(&qid).expect("queue");
            if q.head == q.tail {
                break;
            }
            let mut raw = [0u8; 64];
            dma_read(q.base + u64::from(q.head) * 64, &mut raw);
            q.head = (q.head + 1) % q.entries;
            let cmd = Command::read_from_bytes(&raw[..]).expect("64 bytes");
            batch += 1;
            if qid == 0 {
                *self.counters.admin_opcodes.entry(cmd.opcode).or_default() += 1;
                if cmd.opcode == admin::ABORT && self.silent_abort {
                    self.counters.aborts += 1;
                    continue;
                }
                if self.hold_admin == Some(cmd.opcode) {
                    self.held_admin.push(cmd);
                    continue;
                }
                let (result, status) = self.exec_admin(&cmd);
                if self.late_admin_dma {
                    for late in std::mem::take(&mut self.held_admin) {
                        self.transfer_out(&late, &[0xee; 4096]);
                    }
                }
                self.post(0, &cmd, result, status);
            } else {
                self.counters.io_commands += 1;
                self.io_cids.push(cmd.cid.get());
                *self.counters.opcodes.entry(cmd.opcode).or_default() += 1;
                if self.hold_io {
                    self.held.push(Held { qid, cmd });
                    continue;
                }
                let (result, status) = self.exec_io(&cmd);
                self.post(qid, &cmd, result, status);
            }
        }
        self.counters.max_batch = self.counters.max_batch.max(batch);
    }

    fn post(&mut self, sqid: u16, cmd: &Command, result: u32, status: Status) {
        let Some(sq) = self.sqs.get(&sqid) else { return };
        let (cqid, sq_head) = (sq.cqid, sq.head);
        let Some(cq) = self.cqs.get_mut(&cqid) else { return };
        let mut cqe = Completion::default();
        cqe.result.set(result);
        cqe.sq_head.set(sq_head);
        cqe.sq_id.set(sqid);
        cqe.cid.set(cmd.cid.get());
        cqe.status.set(status.to_completion_field() | u16::from(cq.phase));
        dma_write(cq.base + u64::from(cq.tail) * 16, cqe.as_bytes());
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
    }

    fn exec_admin(&mut self, c: &Command) -> (u32, Status) {
        let ok = (0, Status::SUCCESS);
        let invalid = (0, GenericStatus::InvalidField.status());
        match c.opcode {
            admin::IDENTIFY => {
                let mut page = vec![0u8; 4096];
                match c.cdw10.get() as u8 {
                    cns::CONTROLLER => {
                        let mut id = IdentifyController::read_from_bytes(&page[..]).expect("4096");
                        id.vid.set(0x1b36);
                        set_ascii_field(&mut id.sn, "fake0001");
                        set_ascii_field(&mut id.mn, "Pollux Fake Ctrl");
                        set_ascii_field(&mut id.fr, "1.0");
                        id.mdts = self.mdts;
                        id.nn.set(self.disks.len() as u32);
                        id.oncs.set(self.oncs);
                        id.sgls.set(u32::from(self.sgl));
                        id.sqes = 0x66;
                        id.cqes = 0x44;
                        page.copy_from_slice(id.as_bytes());
                    }
                    cns::NAMESPACE => {
                        let nsid = c.nsid.get() as usize;
                        if nsid == 0 || nsid > self.disks.len() {
                            return (0, GenericStatus::InvalidNamespaceOrFormat.status());
                        }
                        let mut ns = IdentifyNamespace::read_from_bytes(&page[..]).expect("4096");
                        let blocks = (self.disks[nsid - 1].len() / self.block) as u64;
                        ns.nsze.set(blocks);
                        if let Some((_, v)) = self.nsze_override.filter(|(n, _)| *n as usize == nsid) {
                            ns.nsze.set(v);
                        }
                        ns.ncap.set(blocks);
                        ns.lbaf[0].lbads = self.block.trailing_zeros() as u8;
                        ns.dlfeat = 0x9;
                        page.copy_from_slice(ns.as_bytes());
                    }
                    cns::ACTIVE_NAMESPACE_LIST => {
                        let after = c.nsid.get() as usize;
                        let last = if self.endless_ns_list { after + 1024 } else { self.disks.len() };
                        for (i, id) in (after + 1..=last).enumerate() {
                            page[i * 4..i * 4 + 4].copy_from_slice(&(id as u32).to_le_bytes());
                        }
                    }
                    _ => return invalid,
                }
                self.transfer_out(c, &page);
                ok
            }
            admin::SET_FEATURES if c.cdw10.get() as u8 == feature::NUMBER_OF_QUEUES => (0x0007_0007, Status::SUCCESS),
            admin::SET_FEATURES | admin::GET_FEATURES => ok,
            admin::CREATE_IO_CQ => {
                let qid = c.cdw10.get() as u16;
                let entries = (c.cdw10.get() >> 16) as u16 + 1;
                if qid == 0 || self.cqs.contains_key(&qid) {
                    return (0, CommandSpecificStatus::InvalidQueueIdentifier.status());
                }
                self.cqs.insert(qid, Queue { base: c.dptr.prp1.get(), entries, head: 0, tail: 0, cqid: qid, phase: true });
                ok
            }
            admin::CREATE_IO_SQ => {
                if self.refuse_create_sq {
                    return (0, CommandSpecificStatus::InvalidQueueIdentifier.status());
                }
                let qid = c.cdw10.get() as u16;
                let entries = (c.cdw10.get() >> 16) as u16 + 1;
                let cqid = (c.cdw11.get() >> 16) as u16;
                if qid == 0 || self.sqs.contains_key(&qid) {
                    return (0, CommandSpecificStatus::InvalidQueueIdentifier.status());
                }
                if !self.cqs.contains_key(&cqid) {
                    return (0, CommandSpecificStatus::CompletionQueueInvalid.status());
                }
                self.sqs.insert(qid, Queue { base: c.dptr.prp1.get(), entries, head: 0, tail: 0, cqid, phase: true });
                ok
            }
            admin::DELETE_IO_SQ => {
                let qid = c.cdw10.get() as u16;
                self.held.retain(|h| h.qid != qid);
                if self.sqs.remove(&qid).is_none() { (0, CommandSpecificStatus::InvalidQueueIdentifier.status()) } else { ok }
            }
            admin::DELETE_IO_CQ => {
                if self.cqs.remove(&(c.cdw10.get() as u16)).is_none() {
                    (0, CommandSpecificStatus::InvalidQueueIdentifier.status())
                } else {
                    ok
                }
            }
            admin::ABORT => {
                self.counters.aborts += 1;
                let sqid = c.cdw10.get() as u16;
                let cid = (c.cdw10.get() >> 16) as u16;
                if self.refuse_abort {
                    return (1, Status::SUCCESS);
                }
                match self.held.iter().position(|h| h.qid == sqid && h.cmd.cid.get() == cid) {
                    Some(pos) => {
                        let h = self.held.remove(pos);
                        self.post(h.qid, &h.cmd, 0, GenericStatus::AbortRequested.status());
                        (0, Status::SUCCESS)
                    }
                    None => (1, Status::SUCCESS),
                }
            }
            admin::GET_LOG_PAGE => {
                let len = pollux_nvme_spec::log::get_log_page_len(c.cdw10.get(), c.cdw11.get()).unwrap_or(0);
                let mut page = vec![0u8; len];
                if c.cdw10.get() as u8 == pollux_nvme_spec::log::lid::SMART_HEALTH && len >= 512 {
                    // 300 K, 7% used, 5,000 units read, 1,234 hours on, a
                    // second sensor at 310 K.
                    page[1..3].copy_from_slice(&300u16.to_le_bytes());
                    page[3] = 100;
                    page[4] = 10;
                    page[5] = 7;
                    page[32..40].copy_from_slice(&5000u64.to_le_bytes());
                    page[128..136].copy_from_slice(&1234u64.to_le_bytes());
                    page[202..204].copy_from_slice(&310u16.to_le_bytes());
                } else if c.cdw10.get() as u8 == pollux_nvme_spec::log::lid::SMART_HEALTH && len >= 3 {
                    page[1..3].copy_from_slice(&300u16.to_le_bytes());
                }
                self.transfer_out(c, &page);
                ok
            }
            _ => (0, GenericStatus::InvalidOpcode.status()),
        }
    }

    fn exec_io(&mut self, c: &Command) -> (u32, Status) {
        if let Some(s) = self.fail_next_io.take() {
            return (0, s);
        }
        let nsid = c.nsid.get() as usize;
        if nsid == 0 || nsid > self.disks.len() {
            return (0, GenericStatus::InvalidNamespaceOrFormat.status());
        }
        let bs = self.block;
        let cap = self.disks[nsid - 1].len() / bs;
        let range = |c: &Command| -> Option<(usize, usize)> {
            let lba = c.slba() as usize;
            let n = c.nlb() as usize;
            (lba + n <= cap).then_some((lba * bs, n * bs))
        };
        match c.opcode {
            io::FLUSH => (0, Status::SUCCESS),
            io::READ | io::WRITE | io::COMPARE => {
                let Some((off, len)) = range(c) else { return (0, GenericStatus::LbaOutOfRange.status()) };
                if self.mdts != 0 && u32::from(self.mdts) < 4096usize.leading_zeros() && len > (4096usize << self.mdts) {
                    return (0, GenericStatus::InvalidField.status());
                }
                let Some(segs) = self.data_segments(c, len) else { return (0, GenericStatus::DataTransferError.status()) };
                let mut pos = off;
                for (iova, l) in segs {
                    let disk = &mut self.disks[nsid - 1];
                    match c.opcode {
                        io::READ => dma_write(iova, &disk[pos..pos + l]),
                        io::WRITE => dma_read(iova, &mut disk[pos..pos + l]),
                        _ => {
                            let mut tmp = vec![0u8; l];
                            dma_read(iova, &mut tmp);
                            if tmp != disk[pos..pos + l] {
                                return (0, MediaStatus::CompareFailure.status());
                            }
                        }
                    }
                    pos += l;
                }
                (0, Status::SUCCESS)
            }
            io::WRITE_ZEROES => {
                let Some((off, len)) = range(c) else { return (0, GenericStatus::LbaOutOfRange.status()) };
                self.disks[nsid - 1][off..off + len].fill(0);
                (0, Status::SUCCESS)
            }
            io::DATASET_MANAGEMENT => {
                let n = (c.cdw10.get() & 0xff) as usize + 1;
                let mut raw = vec![0u8; n * 16];
                dma_read(c.dptr.prp1.get(), &mut raw);
                for chunk in raw.chunks_exact(16) {
                    let r = DsmRange::read_from_bytes(chunk).expect("16");
                    let (lba, blocks) = (r.slba.get() as usize, r.blocks.get() as usize);
                    if lba + blocks > cap {
                        return (0, GenericStatus::LbaOutOfRange.status());
                    }
                    self.disks[nsid - 1][lba * bs..(lba + blocks) * bs].fill(0);
                }
                (0, Status::SUCCESS)
            }
            _ => (0, GenericStatus::InvalidOpcode.status()),
        }
    }

    /// Walk a command's PRPs or SGL into (address, length) pieces, checking
    /// the rules a device checks.
    fn data_segments(&mut self, c: &Command, len: usize) -> Option<Vec<(u64, usize)>> {
        if c.data_transfer() != DataTransfer::Prp {
            self.counters.sgl_commands += 1;
            let d = c.dptr.sgl();
            let descs = match d.kind().ok()? {
                SglType::DataBlock => vec![d],
                SglType::LastSegment => {
                    let mut raw = vec![0u8; d.length.get() as usize];
                    dma_read(d.address.get(), &mut raw);
                    raw.chunks_exact(16).map(|b| SglDescriptor::read_from_bytes(b).expect("16")).collect()
                }
                _ => return None,
            };
            let segs: Vec<(u64, usize)> = descs.iter().map(|d| (d.address.get(), d.length.get() as usize)).collect();
            return (segs.iter().map(|s| s.1).sum::<usize>() == len).then_some(segs);
        }
        let prp1 = c.dptr.prp1.get();
        let prp2 = c.dptr.prp2.get();
        if prp1 % 4 != 0 {
            return None;
        }
        let first = ((PAGE - prp1 % PAGE) as usize).min(len);
        let mut segs = vec![(prp1, first)];
        let mut left = len - first;
        if left == 0 {
            return Some(segs);
        }
        if left <= PAGE as usize {
            if prp2 % PAGE != 0 {
                return None;
            }
            segs.push((prp2, left));
            return Some(segs);
        }
        self.counters.prp_lists += 1;
        if prp2 % 8 != 0 {
            return None;
        }
        let n = left.div_ceil(PAGE as usize);
        let mut raw = vec![0u8; n * 8];
        dma_read(prp2, &mut raw);
        for e in raw.chunks_exact(8) {
            let p = u64::from_le_bytes(e.try_into().expect("8"));
            if p % PAGE != 0 {
                return None;
            }
            let l = left.min(PAGE as usize);
            segs.push((p, l));
            left -= l;
        }
        Some(segs)
    }

    /// Copy data to the host for an admin command (PRP1, PRP2 or a list).
    fn transfer_out(&mut self, c: &Command, data: &[u8]) {
        if let Some(segs) = self.data_segments(c, data.len()) {
            let mut pos = 0;
            for (iova, l) in segs {
                dma_write(iova, &data[pos..pos + l]);
                pos += l;
            }
        }
    }
}
