//! Admin commands on a live controller: identify, log pages, features,
//! format, abort, I/O queue creation and deletion, raw pass-through.

use std::time::Duration;

use pollux_nvme_spec::cmd::{Command, Completion};
use pollux_nvme_spec::identify::{IDENTIFY_DATA_LEN, IdentifyNamespace, NAMESPACE_LIST_LEN};
use zerocopy::IntoBytes;

use super::Controller;
use crate::admin::{self, ADMIN_BUF, AdminQueue};
use crate::error::NvmeError;
use crate::queue::Rings;

/// The most namespaces Pollux takes from one controller (far beyond any
/// device made; each costs an Identify and a bdev).
pub const MAX_NAMESPACES: usize = 1 << 16;

/// Which way an admin command moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Controller to host (identify, get log page).
    FromDevice,
    /// Host to controller (set features with data, namespace management).
    ToDevice,
}

/// What creating an I/O queue pair tells the controller about its rings
/// (plain values: it travels to the thread that sends the commands).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueSpec {
    pub qid: u16,
    pub entries: u16,
    pub cq_iova: u64,
    pub sq_iova: u64,
}

impl QueueSpec {
    pub fn of(rings: &Rings) -> QueueSpec {
        QueueSpec { qid: rings.qid, entries: rings.entries(), cq_iova: rings.cq_iova().0, sq_iova: rings.sq_iova().0 }
    }
}

impl Controller {
    /// Run an admin command with `data` moving as `dir` says (at most 64 KiB).
    /// For the tools' pass-through and the driver's own admin work.
    pub fn admin_command(
        &self,
        cmd: Command,
        dir: DataDirection,
        data: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Completion, NvmeError> {
        if data.len() > ADMIN_BUF {
            return Err(NvmeError::Invalid(format!("admin data of {} bytes exceeds {ADMIN_BUF}", data.len())));
        }
        let mut admin = self.admin()?;
        if dir != DataDirection::None {
            admin.usable()?;
        }
        let len = match dir {
            DataDirection::None => 0,
            DataDirection::FromDevice => data.len(),
            DataDirection::ToDevice => {
                admin.write_data(data);
                data.len()
            }
        };
        let cqe = admin.run(cmd, len, timeout.unwrap_or(self.opts.admin_timeout))?;
        if dir == DataDirection::FromDevice {
            admin.read_data(data);
        }
        Ok(cqe)
    }

    pub fn identify_namespace(&self, nsid: u32) -> Result<Box<IdentifyNamespace>, NvmeError> {
        let mut ns = IdentifyNamespace::zeroed_box();
        self.admin_command(
            admin::identify(pollux_nvme_spec::identify::cns::NAMESPACE, nsid),
            DataDirection::FromDevice,
            ns.as_mut_bytes(),
            None,
        )?;
        Ok(ns)
    }

    /// Every active namespace id, ascending (following the list past
    /// 1024), none above the controller's NN and at most
    /// [`MAX_NAMESPACES`] of them: the list was bounded only by the id
    /// space, so a device that kept answering full pages could have the
    /// main reactor issue four million commands into a vector of 16 GiB.
    pub fn active_namespace_ids(&self) -> Result<Vec<u32>, NvmeError> {
        let nn = self.identify_data().nn.get();
        let mut ids = Vec::new();
        let mut after = 0u32;
        loop {
            let mut raw = vec![0u8; IDENTIFY_DATA_LEN];
            self.admin_command(admin::active_namespaces(after), DataDirection::FromDevice, &mut raw, None)?;
            let mut n = 0;
            for chunk in raw.chunks_exact(4) {
                let id = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                if id == 0 {
                    break;
                }
                if id <= after || id == u32::MAX {
                    return Err(NvmeError::BadData(format!("active namespace list is not ascending ({id} after {after})")));
                }
                if id > nn || ids.len() >= MAX_NAMESPACES {
                    return Err(NvmeError::BadData(format!(
                        "active namespace list names {id} (the controller has {nn}; Pollux takes up to {MAX_NAMESPACES})"
                    )));
                }
                ids.push(id);
                after = id;
                n += 1;
            }
            if n < NAMESPACE_LIST_LEN {
                return Ok(ids);
            }
        }
    }

    /// Get Log Page into a vector of `len` bytes (a multiple of 4).
    pub fn get_log_page(&self, lid: u8, nsid: u32, len: usize) -> Result<Vec<u8>, NvmeError> {
        if len == 0 || len % 4 != 0 {
            return Err(NvmeError::Invalid(format!("log page length {len} is not a positive multiple of 4")));
        }
        let mut buf = vec![0u8; len];
        self.admin_command(admin::get_log_page(lid, nsid, len), DataDirection::FromDevice, &mut buf, None)?;
        Ok(buf)
    }

    /// Get Features: the value (CQE DW0).
    pub fn get_features(&self, fid: u8, sel: u32, nsid: u32, cdw11: u32) -> Result<u32, NvmeError> {
        Ok(self.admin_command(admin::get_features(fid, sel, nsid, cdw11), DataDirection::None, &mut [], None)?.result.get())
    }

    /// Set Features: the controller's answer (CQE DW0).
    pub fn set_features(&self, fid: u8, value: u32, nsid: u32, save: bool) -> Result<u32, NvmeError> {
        Ok(self.admin_command(admin::set_features(fid, value, nsid, save), DataDirection::None, &mut [], None)?.result.get())
    }

    /// Format NVM, then re-read the namespaces (sizes may change).
    pub fn format(&self, nsid: u32, lbaf: u8, ses: u8) -> Result<(), NvmeError> {
        self.admin_command(admin::format_nvm(nsid, lbaf, ses), DataDirection::None, &mut [], Some(Duration::from_secs(600)))?;
        self.scan_namespaces()
    }

    /// Abort command `cid` of queue `sqid`. Ok(true) if the controller says
    /// it aborted it (CQE DW0 bit 0 clear).
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool, NvmeError> {
        self.send_abort(&mut *self.admin()?, sqid, cid)
    }

    /// Send Abort on the locked admin queue and read its answer.
    fn send_abort(&self, admin: &mut AdminQueue, sqid: u16, cid: u16) -> Result<bool, NvmeError> {
        self.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cqe = admin.run(admin::abort(sqid, cid), 0, self.opts.admin_timeout)?;
        Ok(cqe.result.get() & 1 == 0)
    }

    /// [`Controller::abort`] from off the reactor, for a command of
    /// generation `generation` of the controller: not sent (None) if the
    /// controller was reset since or is not enabled, or `called_off` is set
    /// (its queue pair went; looked at under the admin queue's lock, which
    /// deleting the queue takes too).
    pub(crate) fn abort_in(
        &self,
        generation: u64,
        called_off: &std::sync::atomic::AtomicBool,
        sqid: u16,
        cid: u16,
    ) -> Result<Option<bool>, NvmeError> {
        let mut admin = match self.admin() {
            Ok(a) => a,
            Err(NvmeError::State(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.generation() != generation || called_off.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(None);
        }
        self.send_abort(&mut admin, sqid, cid).map(Some)
    }

    /// Create the completion and submission queue `q` describes, for
    /// generation `generation` of the controller (blocks up to the admin
    /// timeout for each command: off the reactors). A controller reset
    /// since is not given queues meant for the one before: a state error,
    /// after which the queue pair asks again (looked at under the admin
    /// queue's lock, which a reset holds).
    pub(crate) fn create_io_queues(&self, generation: u64, q: QueueSpec) -> Result<(), NvmeError> {
        let QueueSpec { qid, entries, cq_iova, sq_iova } = q;
        let vector = self.queue_interrupt(qid).map(|(v, _)| v);
        let mut admin = self.admin()?;
        if self.generation() != generation {
            return Err(NvmeError::State("reset since the queue was asked for"));
        }
        let timeout = self.opts.admin_timeout;
        admin.run(admin::create_io_cq(qid, entries, cq_iova, vector), 0, timeout)?;
        if let Err(e) = admin.run(admin::create_io_sq(qid, entries, sq_iova, qid), 0, timeout) {
            let _ = admin.run(admin::delete_io_cq(qid), 0, timeout);
            return Err(e);
        }
        Ok(())
    }

    /// Delete I/O queue pair `qid` (the SQ first: the controller finishes or
    /// aborts its commands before answering).
    pub(crate) fn delete_io_queues(&self, qid: u16) -> Result<(), NvmeError> {
        let sq = self.admin_command(admin::delete_io_sq(qid), DataDirection::None, &mut [], None);
        let cq = self.admin_command(admin::delete_io_cq(qid), DataDirection::None, &mut [], None);
        sq.and(cq).map(drop)
    }
}
