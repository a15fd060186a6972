//! Command execution: a session's view of one LU on its reactor
//! ([`LunPort`]), the checks every command goes through (unit attentions,
//! reservations), and the dispatch by operation code.
//!
//! Completion is a trait method of the transport's command type
//! ([`ScsiCommand::complete`]), so the closures handed to the bdev layer
//! carry only the boxed command and fit in its inline storage: no
//! allocation per I/O.

mod block;
mod control;
mod data;
mod inquiry;
mod opcodes;
mod xcopy;

use std::rc::Rc;
use std::sync::Arc;

use pollux_core::bdev::{Bdev, BdevIo, IoStatus};
use pollux_core::io_channel::IoChannel;

use crate::cdb::op;
use crate::lun::pr::Access;
use crate::lun::{Lun, Nexus};
use crate::sense::{Asc, Sense, SenseKey, status};
use crate::task::Task;

pub(crate) use data::put_data;

/// Standard INQUIRY data for a LUN with no LU.
pub(crate) fn inquiry_no_lun() -> Vec<u8> {
    inquiry::no_lun()
}

/// A transport's command that carries a [`Task`].
pub trait ScsiCommand: 'static {
    fn task(&mut self) -> &mut Task;
    /// The task has finished (status, sense and data are set). Runs on the
    /// reactor that called [`LunPort::execute`], possibly inside that call.
    fn complete(self: Box<Self>);

    /// The task has finished (a PERSISTENT RESERVE OUT PREEMPT AND ABORT,
    /// its status set), but is to be answered only once the transport has
    /// aborted the tasks of `nexuses` on LU `lun` (they end with TASK
    /// ABORTED, the control mode page having TAS set) and they have
    /// finished: nothing a preempted initiator sent lands after the
    /// answer. A transport with one nexus per LU has nothing to abort.
    fn complete_after_aborting(self: Box<Self>, lun: u64, nexuses: Vec<Arc<Nexus>>) {
        let _ = (lun, nexuses);
        self.complete();
    }
}

/// One session's access to one LU, on the session's reactor: the nexus and
/// this reactor's bdev channel. `!Send`.
pub struct LunPort {
    lun: Arc<Lun>,
    nexus: Arc<Nexus>,
    ch: IoChannel<Bdev>,
}

impl std::fmt::Debug for LunPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LunPort").field("lun", &self.lun.id()).field("nexus", &self.nexus.initiator_port).finish()
    }
}

impl Drop for LunPort {
    fn drop(&mut self) {
        self.lun.detach(&self.nexus);
    }
}

impl LunPort {
    /// Attach a nexus to a LU on the current reactor.
    pub fn new(lun: Arc<Lun>, nexus: Arc<Nexus>) -> Rc<LunPort> {
        lun.attach(&nexus);
        let ch = lun.descriptor().channel();
        Rc::new(LunPort { lun, nexus, ch })
    }

    pub fn lun(&self) -> &Arc<Lun> {
        &self.lun
    }

    pub fn nexus(&self) -> &Arc<Nexus> {
        &self.nexus
    }

    pub(crate) fn channel(&self) -> &IoChannel<Bdev> {
        &self.ch
    }

    /// Execute a command; `cmd.complete()` runs when it is done.
    pub fn execute<C: ScsiCommand>(self: &Rc<Self>, mut cmd: Box<C>) {
        let lun = &self.lun;
        let t = cmd.task();
        t.descriptor_sense = lun.descriptor_sense.load(std::sync::atomic::Ordering::Relaxed);
        let opcode = t.opcode();
        if lun.is_removed() {
            t.fail(Sense::new(SenseKey::NotReady, Asc::LOGICAL_UNIT_NOT_READY));
            return cmd.complete();
        }
        // Unit attentions are reported to every command but these.
        if !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
            if let Some(ua) = lun.take_ua(&self.nexus) {
                t.fail(ua);
                return cmd.complete();
            }
        }
        if lun.conflicts(&self.nexus, access_of(&t.cdb)) {
            t.set_status(status::RESERVATION_CONFLICT);
            return cmd.complete();
        }
        self.dispatch(cmd);
    }

    fn dispatch<C: ScsiCommand>(self: &Rc<Self>, mut cmd: Box<C>) {
        use op::*;
        let opcode = cmd.task().opcode();
        match opcode {
            READ_6 | READ_10 | READ_12 | READ_16 => block::read(self, cmd),
            WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 | WRITE_ATOMIC_16 => block::write(self, cmd),
            WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => block::write(self, cmd),
            VERIFY_10 | VERIFY_12 | VERIFY_16 => block::verify(self, cmd),
            ORWRITE_16 => block::orwrite(self, cmd),
            COMPARE_AND_WRITE => block::compare_and_write(self, cmd),
            WRITE_SAME_10 | WRITE_SAME_16 => block::write_same(self, cmd),
            UNMAP => block::unmap(self, cmd),
            SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => block::sync_cache(self, cmd),
            PRE_FETCH_10 | PRE_FETCH_16 => block::prefetch(self, cmd),
            SERVICE_ACTION_IN_16 => match cmd.task().cdb[1] & 0x1f {
                SAI_READ_CAPACITY_16 => control::read_capacity_16(self, cmd),
                SAI_GET_LBA_STATUS => block::get_lba_status(self, cmd),
                _ => fail(cmd, Sense::invalid_cdb_field(1, Some(4))),
            },
            EXTENDED_COPY => xcopy::extended_copy(self, cmd),
            RECEIVE_COPY_RESULTS => xcopy::receive_copy_results(self, cmd),
            _ => control::execute(self, cmd),
        }
    }
}

// A port holds its reactor's channel: it never leaves that reactor.
static_assertions::assert_not_impl_any!(LunPort: Send, Sync);

/// How a command touches the medium, for reservation checks.
fn access_of(cdb: &[u8; 16]) -> Access {
    use op::*;
    match cdb[0] {
        INQUIRY | REPORT_LUNS | REQUEST_SENSE | RELEASE_6 | RELEASE_10 => Access::Free,
        MAINTENANCE_IN => Access::Free,
        TEST_UNIT_READY | READ_CAPACITY_10 | PERSISTENT_RESERVE_IN | PERSISTENT_RESERVE_OUT => Access::PrFree,
        SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == SAI_READ_CAPACITY_16 => Access::PrFree,
        READ_6 | READ_10 | READ_12 | READ_16 | VERIFY_10 | VERIFY_12 | VERIFY_16 | PRE_FETCH_10 | PRE_FETCH_16 | MODE_SENSE_6
        | MODE_SENSE_10 | SERVICE_ACTION_IN_16 | READ_DEFECT_DATA_10 | READ_DEFECT_DATA_12 | RECEIVE_COPY_RESULTS => Access::Read,
        _ => Access::Write,
    }
}

/// Finish with CHECK CONDITION.
pub(crate) fn fail<C: ScsiCommand>(mut cmd: Box<C>, s: Sense) {
    cmd.task().fail(s);
    cmd.complete();
}

/// Finish with GOOD (and whatever data was set).
pub(crate) fn good<C: ScsiCommand>(mut cmd: Box<C>) {
    cmd.task().set_status(status::GOOD);
    cmd.complete();
}

/// Finish with a bare status.
pub(crate) fn finish_status<C: ScsiCommand>(mut cmd: Box<C>, st: u8) {
    cmd.task().set_status(st);
    cmd.complete();
}

/// The SCSI outcome of a bdev status: `None` for success.
pub(crate) fn io_outcome(st: IoStatus, writing: bool) -> Option<Result<Sense, u8>> {
    Some(match st {
        IoStatus::Success => return None,
        IoStatus::OutOfRange => Ok(Sense::lba_out_of_range()),
        IoStatus::Miscompare { offset } => Ok(Sense::miscompare(offset)),
        IoStatus::ReadOnly => Ok(Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)),
        IoStatus::NoSpace => Ok(Sense::new(SenseKey::DataProtect, Asc::SPACE_ALLOCATION_FAILED)),
        IoStatus::NoDevice => Ok(Sense::new(SenseKey::NotReady, Asc::LOGICAL_UNIT_NOT_READY)),
        IoStatus::Unsupported => Ok(Sense::invalid_opcode()),
        IoStatus::NoMemory => Err(status::BUSY),
        IoStatus::Aborted => Err(status::TASK_ABORTED),
        IoStatus::Media if writing => Ok(Sense::new(SenseKey::MediumError, Asc::WRITE_ERROR)),
        IoStatus::Media => Ok(Sense::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR)),
        _ => Ok(Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE)),
    })
}

/// Set the task's status from a finished bdev request. Returns whether it
/// succeeded.
pub(crate) fn apply_io_status(t: &mut Task, io: &BdevIo, writing: bool) -> bool {
    match io_outcome(io.status(), writing) {
        None => true,
        Some(Ok(s)) => {
            t.fail(s);
            false
        }
        Some(Err(st)) => {
            t.set_status(st);
            false
        }
    }
}
