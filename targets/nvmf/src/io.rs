//! The NVM command set on an I/O queue pair's reactor: Read, Write, Flush,
//! Write Zeroes, Dataset Management (deallocate) and Compare, turned into
//! bdev requests on the reactor's own channel.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use pollux_core::bdev::{BdevIo, IoStatus, IoType};
use pollux_core::dma::DmaBuf;
use pollux_nvme_spec::cmd::{Command, DsmRange, io as op};
use pollux_nvme_spec::status::{Status, StatusCodeType};
use zerocopy::FromBytes;

use crate::ctrlr::Response;
use crate::group::{InFlight, SubsystemView};
use crate::resv;
use crate::status;
use crate::transport::IoOwner;

/// Where a submitted command's completion goes: the queue pair, told which
/// request by `tag`. The buffers come back in the `BdevIo`.
pub trait IoSink {
    fn io_done(&self, tag: u32, resp: Response, io: Option<BdevIo>);
}

/// How to hand a completion back.
#[derive(Clone)]
pub struct Completer {
    pub sink: Weak<dyn IoSink>,
    pub tag: u32,
}

impl Completer {
    pub(crate) fn done(self, resp: Response, io: Option<BdevIo>) {
        if let Some(s) = self.sink.upgrade() {
            s.io_done(self.tag, resp, io);
        }
    }
}

/// Direction of a command's data, from opcode bits 1:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    HostToController,
    ControllerToHost,
}

pub fn data_dir(opcode: u8) -> DataDir {
    match opcode & 0x3 {
        1 => DataDir::HostToController,
        2 => DataDir::ControllerToHost,
        _ => DataDir::None,
    }
}

/// The NVMe status of a finished bdev request.
pub fn status_of(s: IoStatus, kind: IoType) -> Status {
    match s {
        IoStatus::Success => status::SUCCESS,
        IoStatus::Pending | IoStatus::Failed => status::INTERNAL_ERROR,
        IoStatus::Unsupported => status::INVALID_OPCODE,
        IoStatus::OutOfRange => status::LBA_OUT_OF_RANGE,
        IoStatus::InvalidBuffer => status::DATA_SGL_LENGTH_INVALID,
        IoStatus::ReadOnly => Status::new(StatusCodeType::Generic, 0x20).with_dnr(),
        IoStatus::NoDevice => status::INVALID_NAMESPACE,
        IoStatus::NoMemory => Status::new(StatusCodeType::Generic, 0x06),
        IoStatus::Aborted => status::ABORT_REQUESTED,
        IoStatus::Miscompare { .. } => status::COMPARE_FAILURE,
        IoStatus::Media if kind == IoType::Read => status::UNRECOVERED_READ_ERROR,
        IoStatus::Media => status::WRITE_FAULT,
        // Capacity Exceeded.
        IoStatus::NoSpace => Status::new(StatusCodeType::Generic, 0x81).with_dnr(),
        IoStatus::Nvme { sct, sc } => Status::new(StatusCodeType::from_code(sct), sc),
    }
}

fn finish(io: BdevIo, done: Completer) {
    let st = status_of(io.status(), io.kind());
    done.done(Response::err(st), Some(io));
}

/// [`finish`], then the command leaves its namespace's count (after its
/// answer is on its way: a fence waiting for it answers after it).
fn finish_in(io: BdevIo, done: Completer, inflight: InFlight) {
    finish(io, done);
    drop(inflight);
}

/// Execute an I/O command whose data (if any) is in `bufs` (`len` bytes).
/// Returns a response now for commands that fail before reaching a bdev;
/// otherwise the completer runs later.
/// `owner` says whose queue pair this is: the namespaces its host sees,
/// the ANA states of its listener
/// where the subsystem reports ANA (through a path that is not optimized or
/// non-optimized, commands end with its path status, no DNR: the host
/// retries them on another path), and the host identifier that
/// reservations check.
pub fn execute(
    view: &SubsystemView,
    owner: &IoOwner,
    cmd: &Command,
    bufs: &mut Vec<DmaBuf>,
    len: u64,
    done: Completer,
) -> Option<Response> {
    let Some(ns) = view.namespace(cmd.nsid.get()) else {
        return Some(Response::err(status::INVALID_NAMESPACE));
    };
    // A namespace this host does not see is as good as absent.
    if ns.hosts.borrow().as_ref().is_some_and(|h| !h.contains(&owner.hostnqn)) {
        return Some(Response::err(status::INVALID_NAMESPACE));
    }
    if let Some(a) = &owner.ana {
        if let Some(sc) = pollux_nvme_spec::ana::path_status(a.get(ns.anagrpid.get())) {
            return Some(Response::err(Status::new(StatusCodeType::Path, sc)));
        }
    }
    if let Some(r) = &*ns.resv.borrow() {
        if let Some(st) = resv::check(r, &owner.hostid, cmd.opcode) {
            return Some(Response::err(st));
        }
    }
    let bs = u64::from(ns.block_size);
    match cmd.opcode {
        op::READ | op::WRITE | op::COMPARE => {
            let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
            if slba.checked_add(nlb).is_none_or(|end| end > ns.num_blocks.get()) {
                return Some(Response::err(status::LBA_OUT_OF_RANGE));
            }
            if nlb * bs != len {
                return Some(Response::err(status::DATA_SGL_LENGTH_INVALID));
            }
            let kind = match cmd.opcode {
                op::READ => IoType::Read,
                op::WRITE => IoType::Write,
                _ => IoType::Compare,
            };
            if kind == IoType::Write && cmd.cdw12.get() & op::CDW12_FUA != 0 && ns.desc.bdev().supports(IoType::Flush) {
                // Force Unit Access: the command completes once the data is
                // durable, so a flush of the written blocks follows the write.
                let inflight = ns.enter();
                ns.desc.submit(&ns.ch, kind, bufs.drain(..), slba, nlb, move |io| {
                    if !io.status().is_ok() {
                        return finish(io, done);
                    }
                    let ns = inflight.ns().clone();
                    ns.desc.flush(&ns.ch, slba, nlb, move |flushed| {
                        let st = status_of(flushed.status(), IoType::Flush);
                        drop(flushed);
                        done.done(Response::err(st), Some(io));
                        drop(inflight);
                    });
                });
                return None;
            }
            if kind == IoType::Read && bufs.is_empty() && ns.desc.bdev().lends_reads() {
                // The transport brought no buffers: the bdev lends its memory.
                let inflight = ns.enter();
                ns.desc.read_lend(&ns.ch, slba, nlb, move |io| finish_in(io, done, inflight));
                return None;
            }
            let inflight = ns.enter();
            ns.desc.submit(&ns.ch, kind, bufs.drain(..), slba, nlb, move |io| finish_in(io, done, inflight));
            None
        }
        op::WRITE_ZEROES => {
            let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
            if slba.checked_add(nlb).is_none_or(|end| end > ns.num_blocks.get()) {
                return Some(Response::err(status::LBA_OUT_OF_RANGE));
            }
            let inflight = ns.enter();
            ns.desc.write_zeroes(&ns.ch, slba, nlb, move |io| finish_in(io, done, inflight));
            None
        }
        op::FLUSH => {
            // A bdev without Flush has no volatile cache to write back. The
            // flush reaches the bdev through this reactor's channel; every
            // bdev's Flush (fsync of the file, NVMe Flush) covers all writes
            // completed before it, whichever queue they came on.
            if !ns.desc.bdev().supports(IoType::Flush) {
                return Some(Response::ok());
            }
            let inflight = ns.enter();
            ns.desc.flush(&ns.ch, 0, ns.num_blocks.get(), move |io| finish_in(io, done, inflight));
            None
        }
        op::DATASET_MANAGEMENT => dataset_management(&ns, cmd, bufs, len, done),
        op::RESERVATION_REPORT => {
            // From this reactor's copy of the state: NUMD + 1 dwords at most.
            let eds = cmd.cdw11.get() & 1 != 0;
            let state = ns.resv.borrow().clone().unwrap_or_default();
            Some(match state.report(eds) {
                Ok(data) => {
                    let want = ((u64::from(cmd.cdw10.get()) + 1) * 4).min(len) as usize;
                    // Pool buffers hold old data: never send it.
                    bufs.iter_mut().for_each(|b| b.fill(0));
                    pollux_core::dma::copy_to_bufs(bufs, 0, &data[..data.len().min(want)]);
                    Response::ok()
                }
                Err(s) => Response::err(s),
            })
        }
        op::RESERVATION_REGISTER | op::RESERVATION_ACQUIRE | op::RESERVATION_RELEASE => {
            // Register and Acquire carry two keys, Release one.
            let need = if cmd.opcode == op::RESERVATION_RELEASE { 8 } else { 16 };
            if len < need {
                return Some(Response::err(status::INVALID_FIELD));
            }
            let mut keys = [0u8; 16];
            pollux_core::dma::copy_from_bufs(bufs, 0, &mut keys[..need as usize]);
            resv::submit(owner, cmd.nsid.get(), cmd.opcode, cmd.cdw10.get(), keys, done);
            None
        }
        _ => Some(Response::err(status::INVALID_OPCODE)),
    }
}

/// Dataset Management: deallocate each range (other attributes are hints).
fn dataset_management(ns: &Rc<crate::group::NsView>, cmd: &Command, bufs: &[DmaBuf], len: u64, done: Completer) -> Option<Response> {
    let nr = (cmd.cdw10.get() & 0xff) as usize + 1;
    if len < (nr * size_of::<DsmRange>()) as u64 {
        return Some(Response::err(status::DATA_SGL_LENGTH_INVALID));
    }
    if cmd.cdw11.get() & op::DSM_ATTR_DEALLOCATE == 0 {
        return Some(Response::ok());
    }
    let mut ranges = Vec::with_capacity(nr);
    let mut raw = [0u8; 16];
    for i in 0..nr {
        pollux_core::dma::copy_from_bufs(bufs, i * 16, &mut raw);
        let r = DsmRange::read_from_bytes(&raw).expect("16 bytes");
        let (slba, nlb) = (r.slba.get(), u64::from(r.blocks.get()));
        if nlb == 0 {
            continue;
        }
        if slba.checked_add(nlb).is_none_or(|end| end > ns.num_blocks.get()) {
            return Some(Response::err(status::LBA_OUT_OF_RANGE));
        }
        ranges.push((slba, nlb));
    }
    if ranges.is_empty() {
        return Some(Response::ok());
    }
    if !ns.desc.bdev().supports(IoType::Unmap) {
        return Some(Response::ok());
    }
    // One unmap per range; the command completes with the last, reporting
    // the first failure.
    // The last range's completion drops the count.
    let state = Rc::new((Cell::new(ranges.len()), Cell::new(status::SUCCESS), RefCell::new(Some(ns.enter()))));
    for (slba, nlb) in ranges {
        let state = state.clone();
        let done = done.clone();
        ns.desc.unmap(&ns.ch, slba, nlb, move |io| {
            let st = status_of(io.status(), IoType::Unmap);
            if !st.is_success() && state.1.get().is_success() {
                state.1.set(st);
            }
            state.0.set(state.0.get() - 1);
            if state.0.get() == 0 {
                done.done(Response::err(state.1.get()), None);
                state.2.borrow_mut().take();
            }
        });
    }
    None
}
