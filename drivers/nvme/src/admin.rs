//! The admin queue: one command at a time, run to completion by polling
//! (control path only: bring-up, queue creation, tools), and the builders of
//! the admin commands the driver and its tools send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_core::dma::DmaError;
use pollux_nvme_spec::cmd::{Command, Completion, admin, feature, queue};
use pollux_nvme_spec::identify::cns;
use pollux_nvme_spec::log::get_log_page_dwords;

use crate::error::{CommandError, CommandInfo, NvmeError, QueueKind};
use crate::queue::Rings;
use crate::regs::Registers;
use crate::sys::DeviceMemory;

/// Admin queue entries.
pub(crate) const ADMIN_ENTRIES: u16 = 32;
/// The admin data buffer: enough for any identify structure or log page
/// the tools read in one command.
pub(crate) const ADMIN_BUF: usize = 64 << 10;

/// Data buffers set aside after timeouts before a reset makes them
/// reusable; past this many, data commands wait for a reset.
const MAX_RETIRED: usize = 16;

/// The admin queue pair and a data buffer for its commands.
pub(crate) struct AdminQueue {
    pub rings: Rings,
    /// The data of a command, then its PRP list (the page after
    /// `ADMIN_BUF`): a command that timed out may still read or write
    /// both, so after a timeout they are set aside together.
    data: DeviceMemory,
    /// Buffers of commands that timed out: the device may still move their
    /// data (late DMA into the next command's buffer) until it is
    /// disabled, so they are kept, unused, until [`AdminQueue::disabled`].
    retired: Vec<DeviceMemory>,
    /// `data` is one a timed-out command may still use (no memory for a
    /// fresh one, or too many set aside).
    stale: bool,
    next_cid: u16,
    regs: Arc<dyn Registers>,
    page: usize,
}

// SAFETY: the admin queue's device memory is made of region-backed DMA
// buffers (`DmaBuf::alloc`, whose home is an `Arc<Region>`, not a reactor's
// pool), so moving it to another thread moves only that Arc and raw
// pointers; it is only ever used under the controller's mutex.
unsafe impl Send for AdminQueue {}

impl AdminQueue {
    pub fn new(regs: Arc<dyn Registers>, dstrd: u8, page: usize) -> Result<AdminQueue, DmaError> {
        // One scratch slot of a page for the PRP list of large transfers.
        Ok(AdminQueue {
            rings: Rings::new(0, ADMIN_ENTRIES, dstrd, 1, 4096)?,
            data: DeviceMemory::alloc(ADMIN_BUF + page)?,
            retired: Vec::new(),
            stale: false,
            next_cid: 0,
            regs,
            page,
        })
    }

    /// Run `cmd` and wait for its completion up to `timeout`. `data_len`
    /// bytes of the admin data buffer are attached as its data (PRPs). A
    /// failed status is an error naming the command.
    pub fn run(&mut self, mut cmd: Command, data_len: usize, timeout: Duration) -> Result<Completion, NvmeError> {
        if data_len > ADMIN_BUF {
            return Err(NvmeError::Invalid(format!("admin transfer of {data_len} bytes exceeds {ADMIN_BUF}")));
        }
        if data_len > 0 {
            self.usable()?;
        }
        self.next_cid = self.next_cid.wrapping_add(1);
        let cid = self.next_cid;
        cmd.cid.set(cid);
        if data_len > 0 {
            self.attach_data(&mut cmd, data_len);
        }
        let info = CommandInfo { queue: QueueKind::Admin, opcode: cmd.opcode, cid, nsid: cmd.nsid.get() };
        self.rings.push(&cmd);
        self.rings.ring_sq(&*self.regs)?;
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            while let Some(cqe) = self.rings.next_completion() {
                self.rings.ring_cq(&*self.regs)?;
                if cqe.cid.get() != cid {
                    // A late completion of a command we gave up on: drop it.
                    tracing::debug!("admin queue: dropping stale completion of cid {}", cqe.cid.get());
                    continue;
                }
                let status = cqe.status();
                if !status.is_success() {
                    return Err(CommandError::from_status(info, status).into());
                }
                return Ok(cqe);
            }
            spins += 1;
            if spins % 64 == 0 {
                if start.elapsed() > timeout {
                    if data_len > 0 {
                        self.retire();
                    }
                    return Err(NvmeError::Timeout { cmd: info, ms: timeout.as_millis() as u64 });
                }
                if self.regs.read32(pollux_nvme_spec::registers::offset::CSTS as usize)? == u32::MAX {
                    return Err(NvmeError::Gone);
                }
                // Past the first millisecond (a device this slow is waited
                // for off the reactors: resets, Aborts), poll without
                // taking a core.
                if start.elapsed() > Duration::from_millis(1) {
                    std::thread::sleep(Duration::from_micros(20));
                } else {
                    std::thread::yield_now();
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Set the data buffer (and its PRP list) of a command that timed out
    /// aside and take a fresh one. Without memory for one, data commands
    /// fail until the next reset.
    fn retire(&mut self) {
        if self.retired.len() >= MAX_RETIRED {
            self.stale = true;
            return;
        }
        match DeviceMemory::alloc(ADMIN_BUF + self.page) {
            Ok(fresh) => self.retired.push(std::mem::replace(&mut self.data, fresh)),
            Err(e) => {
                tracing::error!("admin queue: no memory for a fresh data buffer after a timeout: {e}");
                self.stale = true;
            }
        }
    }

    /// Whether the data buffer can take a command: not one a timed-out
    /// command may still use.
    pub fn usable(&self) -> Result<(), NvmeError> {
        if self.stale {
            return Err(NvmeError::Invalid(format!(
                "{} admin commands with data timed out; their buffers wait for a controller reset",
                self.retired.len()
            )));
        }
        Ok(())
    }

    /// The controller is disabled: no command can move data any more, the
    /// buffers set aside go.
    pub fn disabled(&mut self) {
        self.retired.clear();
        self.stale = false;
    }

    /// PRPs for the first `len` bytes of the data buffer (page aligned);
    /// a list goes in the page after the data.
    fn attach_data(&mut self, cmd: &mut Command, len: usize) {
        let base = self.data.iova(0).0;
        let pages = len.div_ceil(self.page);
        cmd.dptr.prp1.set(base);
        match pages {
            1 => {}
            2 => cmd.dptr.prp2.set(base + self.page as u64),
            n => {
                for i in 1..n {
                    self.data.write_u64(ADMIN_BUF + (i - 1) * 8, base + (i * self.page) as u64);
                }
                cmd.dptr.prp2.set(self.data.iova(ADMIN_BUF).0);
            }
        }
    }

    /// Copy the first `out.len()` bytes of the data buffer out.
    pub fn read_data(&self, out: &mut [u8]) {
        self.data.read_bytes(0, out)
    }

    /// Put `src` at the start of the data buffer (for commands that send data).
    pub fn write_data(&self, src: &[u8]) {
        self.data.write_bytes(0, src)
    }
}

/// Identify (CNS in CDW10, NSID).
pub fn identify(cns_value: u8, nsid: u32) -> Command {
    let mut c = Command::new(admin::IDENTIFY);
    c.nsid.set(nsid);
    c.cdw10.set(u32::from(cns_value));
    c
}

/// Identify Controller.
pub fn identify_controller() -> Command {
    identify(cns::CONTROLLER, 0)
}

/// Active namespace list of NSIDs above `after`.
pub fn active_namespaces(after: u32) -> Command {
    identify(cns::ACTIVE_NAMESPACE_LIST, after)
}

/// Set Features, Number of Queues (1-based counts).
pub fn set_number_of_queues(sq: u16, cq: u16) -> Command {
    let mut c = Command::new(admin::SET_FEATURES);
    c.cdw10.set(u32::from(feature::NUMBER_OF_QUEUES));
    c.cdw11.set(u32::from(sq.saturating_sub(1)) | (u32::from(cq.saturating_sub(1)) << 16));
    c
}

/// Get Features `fid` with select `sel` (see `feature::SELECT_*`).
pub fn get_features(fid: u8, sel: u32, nsid: u32, cdw11: u32) -> Command {
    let mut c = Command::new(admin::GET_FEATURES);
    c.nsid.set(nsid);
    c.cdw10.set(u32::from(fid) | ((sel & 0x7) << 8));
    c.cdw11.set(cdw11);
    c
}

/// Set Features `fid` to `value` (CDW11), optionally saved.
pub fn set_features(fid: u8, value: u32, nsid: u32, save: bool) -> Command {
    let mut c = Command::new(admin::SET_FEATURES);
    c.nsid.set(nsid);
    c.cdw10.set(u32::from(fid) | (u32::from(save) << 31));
    c.cdw11.set(value);
    c
}

/// Get Log Page `lid` for `len` bytes.
pub fn get_log_page(lid: u8, nsid: u32, len: usize) -> Command {
    let mut c = Command::new(admin::GET_LOG_PAGE);
    c.nsid.set(nsid);
    let (cdw10, cdw11) = get_log_page_dwords(lid, len, false);
    c.cdw10.set(cdw10);
    c.cdw11.set(cdw11);
    c
}

/// Create I/O Completion Queue `qid` (physically contiguous), polled or
/// signalling interrupt `vector`.
pub fn create_io_cq(qid: u16, entries: u16, iova: u64, vector: Option<u16>) -> Command {
    let mut c = Command::new(admin::CREATE_IO_CQ);
    c.dptr.prp1.set(iova);
    c.cdw10.set(u32::from(qid) | (u32::from(entries - 1) << 16));
    c.cdw11.set(match vector {
        Some(v) => queue::PC | queue::IEN | (u32::from(v) << 16),
        None => queue::PC,
    });
    c
}

/// Create I/O Submission Queue `qid` bound to completion queue `cqid`.
pub fn create_io_sq(qid: u16, entries: u16, iova: u64, cqid: u16) -> Command {
    let mut c = Command::new(admin::CREATE_IO_SQ);
    c.dptr.prp1.set(iova);
    c.cdw10.set(u32::from(qid) | (u32::from(entries - 1) << 16));
    c.cdw11.set(queue::PC | (u32::from(cqid) << 16));
    c
}

pub fn delete_io_sq(qid: u16) -> Command {
    let mut c = Command::new(admin::DELETE_IO_SQ);
    c.cdw10.set(u32::from(qid));
    c
}

pub fn delete_io_cq(qid: u16) -> Command {
    let mut c = Command::new(admin::DELETE_IO_CQ);
    c.cdw10.set(u32::from(qid));
    c
}

/// Abort command `cid` of submission queue `sqid`.
pub fn abort(sqid: u16, cid: u16) -> Command {
    let mut c = Command::new(admin::ABORT);
    c.cdw10.set(u32::from(sqid) | (u32::from(cid) << 16));
    c
}

/// Format NVM of `nsid` with LBA format `lbaf` and secure erase setting `ses`
/// (0 none, 1 user data erase, 2 cryptographic erase).
pub fn format_nvm(nsid: u32, lbaf: u8, ses: u8) -> Command {
    let mut c = Command::new(admin::FORMAT_NVM);
    c.nsid.set(nsid);
    c.cdw10.set(u32::from(lbaf & 0xf) | (u32::from((lbaf >> 4) & 0x3) << 12) | (u32::from(ses & 0x7) << 9));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_dwords() {
        let c = set_number_of_queues(4, 4);
        assert_eq!(c.cdw10.get(), 7);
        assert_eq!(c.cdw11.get(), 0x0003_0003);
        let c = create_io_sq(3, 256, 0x1000, 3);
        assert_eq!(c.cdw10.get(), 0x00ff_0003);
        assert_eq!(c.cdw11.get(), 0x0003_0001);
        let c = create_io_cq(3, 256, 0x2000, None);
        assert_eq!(c.cdw11.get(), 1, "contiguous, interrupts off");
        assert_eq!(create_io_cq(3, 256, 0x2000, Some(3)).cdw11.get(), 0x0003_0003, "vector 3, interrupts on");
        assert_eq!(abort(2, 9).cdw10.get(), 0x0009_0002);
        assert_eq!(format_nvm(1, 0x13, 1).cdw10.get(), 0x3 | (1 << 12) | (1 << 9));
        assert_eq!(get_features(feature::VOLATILE_WRITE_CACHE, feature::SELECT_DEFAULT, 0, 0).cdw10.get(), 0x106);
        assert_eq!(set_features(feature::VOLATILE_WRITE_CACHE, 1, 0, true).cdw10.get(), 0x8000_0006);
        assert_eq!(identify(cns::ACTIVE_NAMESPACE_LIST, 5).nsid.get(), 5);
    }
}
