//! The admin command set of a fabrics controller: Identify, Get Log Page,
//! Set/Get Features, Asynchronous Event Request, Keep Alive and Abort.
//! Discovery controllers accept the subset the discovery service needs.

use std::rc::Rc;

use pollux_nvme_spec::ana;
use pollux_nvme_spec::cmd::{Command, admin, feature};
use pollux_nvme_spec::identify::{self, IdentifyController, IdentifyNamespace, cns, nidt};
use pollux_nvme_spec::log::{SmartLog, lid};
use pollux_nvme_spec::set_ascii_field;
use zerocopy::{FromZeros, IntoBytes};

use crate::status;
use crate::target::Target;
use crate::wire::identify::{Page, ctrlr as cdef};
use crate::wire::set_nul_field;

use super::{Controller, Response, VERSION};

/// ANA Transition Time reported (ANATT, seconds), as SPDK's.
pub const ANA_TRANSITION_TIME_S: u8 = 10;

/// How an admin command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed; for controller-to-host commands `len` bytes of the data
    /// buffer hold the answer.
    Done(Response, usize),
    /// Completes later (an Asynchronous Event Request).
    Pending,
}

fn done(r: Response) -> Outcome {
    Outcome::Done(r, 0)
}

/// Execute an admin command. `data` is the command's data buffer: filled
/// for controller-to-host commands, holding the host's data otherwise.
pub fn execute(target: &Target, c: &Rc<Controller>, cmd: &Command, data: &mut [u8]) -> Outcome {
    let discovery = c.is_discovery();
    match cmd.opcode {
        admin::IDENTIFY => identify(c, cmd, data),
        admin::GET_LOG_PAGE => get_log_page(target, c, cmd, data),
        admin::SET_FEATURES => done(set_features(c, cmd)),
        admin::GET_FEATURES => done(get_features(c, cmd, data)),
        admin::ASYNC_EVENT_REQUEST => match c.add_aer(cmd.cid.get()) {
            Ok(()) => Outcome::Pending,
            Err(s) => done(Response::err(s)),
        },
        admin::KEEP_ALIVE => {
            c.keep_alive();
            done(Response::ok())
        }
        admin::ABORT if !discovery => {
            let sqid = cmd.cdw10.get() & 0xffff;
            let cid = (cmd.cdw10.get() >> 16) as u16;
            // Only a waiting AER can be aborted; anything else is already
            // with a bdev (dword 0 bit 0 set: not aborted).
            let aborted = sqid == 0 && c.abort_aer(cid);
            done(Response::ok_dw0(u32::from(!aborted)))
        }
        _ => done(Response::err(status::INVALID_OPCODE)),
    }
}

fn identify(c: &Rc<Controller>, cmd: &Command, data: &mut [u8]) -> Outcome {
    let page_cns = (cmd.cdw10.get() & 0xff) as u8;
    let nsid = cmd.nsid.get();
    let n = data.len().min(identify::IDENTIFY_DATA_LEN);
    data.fill(0);
    let r = match page_cns {
        cns::CONTROLLER => {
            let id = identify_controller(c);
            data[..n].copy_from_slice(&id.as_bytes()[..n]);
            Response::ok()
        }
        _ if c.is_discovery() => Response::err(status::INVALID_FIELD),
        cns::NAMESPACE => match identify_namespace(c, nsid) {
            Ok(Some(ns)) => {
                data[..n].copy_from_slice(&ns.as_bytes()[..n]);
                Response::ok()
            }
            // An inactive but valid NSID reads as zeroes.
            Ok(None) => Response::ok(),
            Err(s) => Response::err(s),
        },
        cns::ACTIVE_NAMESPACE_LIST => {
            if nsid >= 0xffff_fffe {
                Response::err(status::INVALID_NAMESPACE)
            } else {
                let mut p = Page(&mut data[..n]);
                let ids: Vec<u32> = c.visible_nsids().into_iter().filter(|&id| id > nsid).take(n / 4).collect();
                for (i, id) in ids.into_iter().enumerate() {
                    p.u32(i * 4, id);
                }
                Response::ok()
            }
        }
        cns::NAMESPACE_DESCRIPTOR_LIST => match c.namespace(nsid) {
            None => Response::err(status::INVALID_NAMESPACE),
            Some(ns) => {
                let mut list: Vec<u8> = Vec::with_capacity(64);
                let mut push = |kind: u8, id: &[u8]| {
                    list.extend_from_slice(&[kind, id.len() as u8, 0, 0]);
                    list.extend_from_slice(id);
                };
                if let Some(e) = ns.eui64 {
                    push(nidt::EUI64, &e);
                }
                push(nidt::NGUID, &ns.nguid);
                push(nidt::UUID, ns.uuid.as_bytes());
                let k = list.len().min(n);
                data[..k].copy_from_slice(&list[..k]);
                Response::ok()
            }
        },
        _ => Response::err(status::INVALID_FIELD),
    };
    Outcome::Done(r, n)
}

/// Identify Controller data of this controller.
pub fn identify_controller(c: &Controller) -> Box<IdentifyController> {
    let s = &c.subsystem;
    let o = &c.opts;
    let mut id = IdentifyController::zeroed_box();
    set_ascii_field(&mut id.sn, &s.config.serial);
    set_ascii_field(&mut id.mn, &s.config.model);
    set_ascii_field(&mut id.fr, pollux_core::VERSION);
    set_nul_field(&mut id.subnqn, s.nqn());
    id.cntlid.set(c.cntlid);
    id.ver.set(VERSION);
    for (field, v) in id.crdt.iter_mut().zip(crate::target::crdt()) {
        field.set(v);
    }
    // Multi-controller subsystem (several hosts may connect).
    id.cmic = 1 << 1;
    id.mdts = (o.max_io_size / 4096).trailing_zeros() as u8;
    id.aerl = (super::MAX_AERS - 1) as u8;
    id.acl = 3;
    id.elpe = 0;
    id.lpa = cdef::LPA_EXTENDED_DATA;
    id.kas.set(o.kas);
    id.sqes = 0x66;
    id.cqes = 0x44;
    let keyed = if c.endpoint.kind == crate::transport::TransportKind::Rdma { identify::sgls::KEYED_DATA_BLOCK } else { 0 };
    id.sgls.set(identify::sgls::SUPPORT_MASK & 1 | identify::sgls::ADDRESS_AS_OFFSET | identify::sgls::TRANSPORT_DATA_BLOCK | keyed);
    id.msdbd = 1;
    // Fabrics: command capsule = SQE + in-capsule data, in 16-byte units.
    id.ioccsz.set((64 + o.in_capsule_data_size) / 16);
    id.iorcsz.set(1);
    id.icdoff.set(0);
    id.fcatt = 0;
    if c.is_discovery() {
        id.cntrltype = cdef::TYPE_DISCOVERY;
        id.oaes.set(cdef::OAES_DISCOVERY_LOG_CHANGE);
        id.maxcmd.set(o.max_aq_depth as u16);
        return id;
    }
    id.cntrltype = cdef::TYPE_IO;
    id.oaes.set(cdef::OAES_NS_ATTRIBUTE);
    id.frmw = 1 << 1 | 1;
    id.maxcmd.set(o.max_queue_depth);
    id.nn.set(s.max_nsid());
    id.mnan.set(s.config.max_namespaces);
    if s.config.ana_reporting {
        // As SPDK: optimized, non-optimized and inaccessible are reported,
        // a namespace keeps its group while attached, one group per
        // possible namespace; states change within ANATT (10 s).
        id.cmic |= ana::CMIC_ANA_REPORTING;
        id.oaes.set(id.oaes.get() | ana::OAES_ANA_CHANGE);
        id.anatt = ANA_TRANSITION_TIME_S;
        id.anacap = ana::anacap::OPTIMIZED | ana::anacap::NON_OPTIMIZED | ana::anacap::INACCESSIBLE | ana::anacap::GRPID_NO_CHANGE;
        id.anagrpmax.set(s.max_nsid());
        id.nanagrpid.set(s.max_nsid());
    }
    let oncs = identify::oncs::COMPARE | identify::oncs::DATASET_MANAGEMENT | identify::oncs::WRITE_ZEROES | identify::oncs::RESERVATIONS;
    id.oncs.set(oncs & !o.masked_oncs);
    // A volatile write cache is present (Flush reaches the bdevs); a flush
    // of all namespaces at once (NSID FFFFFFFFh) is not supported.
    id.vwc = 1 | (0b10 << 1);
    id
}

fn identify_namespace(c: &Controller, nsid: u32) -> Result<Option<Box<IdentifyNamespace>>, status::Status> {
    let s = &c.subsystem;
    if nsid == 0 || nsid > s.max_nsid() {
        return Err(status::INVALID_NAMESPACE);
    }
    // A namespace the host does not see is inactive for it.
    let Some(ns) = c.namespace(nsid) else {
        return Ok(None);
    };
    let mut id = IdentifyNamespace::zeroed_box();
    let blocks = ns.num_blocks();
    id.nsze.set(blocks);
    id.ncap.set(blocks);
    id.nuse.set(blocks);
    // Thin provisioning and deallocation (bit 0), and DLFEAT: deallocated
    // blocks read as zeroes, Write Zeroes may deallocate.
    id.nsfeat = 1;
    id.dlfeat = 1 | (1 << 3);
    id.nmic = 1;
    id.rescap = crate::resv::rescap(ns.ptpl_file.is_some());
    id.nlbaf = 0;
    id.flbas = 0;
    id.lbaf[0].lbads = ns.block_size().trailing_zeros() as u8;
    id.nguid = ns.nguid;
    if let Some(e) = ns.eui64 {
        id.eui64 = e;
    }
    // Without ANA reporting (CMIC bit 3 clear, no ANA log page) ANAGRPID
    // must be 0; the namespace keeps its configured group for save_config.
    if s.config.ana_reporting {
        let grp = ns.anagrpid.get();
        id.anagrpid.set(grp);
        // As SPDK: no capacity is in use through a path that cannot reach it.
        if matches!(c.ana_state(grp), ana::INACCESSIBLE | ana::PERSISTENT_LOSS) {
            id.nuse.set(0);
        }
    }
    Ok(Some(id))
}

fn get_log_page(target: &Target, c: &Rc<Controller>, cmd: &Command, data: &mut [u8]) -> Outcome {
    let cdw10 = cmd.cdw10.get();
    let log = (cdw10 & 0xff) as u8;
    let retain = cdw10 & (1 << 15) != 0;
    let Some(want) = pollux_nvme_spec::log::get_log_page_len(cdw10, cmd.cdw11.get()) else {
        return done(Response::err(status::INVALID_FIELD));
    };
    let offset = u64::from(cmd.cdw12.get()) | (u64::from(cmd.cdw13.get()) << 32);
    if offset % 4 != 0 {
        return done(Response::err(status::INVALID_FIELD));
    }
    let page: Vec<u8> = match log {
        lid::ERROR_INFORMATION => vec![0u8; 64],
        lid::DISCOVERY if c.is_discovery() => {
            c.unmask_discovery_notice();
            super::discovery_log(target, c)
        }
        _ if c.is_discovery() => return done(Response::err(status::INVALID_LOG_PAGE)),
        lid::SMART_HEALTH => {
            let mut smart = SmartLog::new_zeroed();
            // 25 C, full spare, nothing worn.
            smart.temperature.set(298);
            smart.avail_spare = 100;
            smart.spare_thresh = 10;
            smart.as_bytes().to_vec()
        }
        lid::FIRMWARE_SLOT => {
            let mut p = vec![0u8; 512];
            p[0] = 1;
            set_ascii_field(&mut p[8..16], pollux_core::VERSION);
            p
        }
        lid::ASYMMETRIC_NAMESPACE_ACCESS if c.subsystem.config.ana_reporting => {
            if !retain {
                c.unmask_ana_notice();
            }
            ana_log(c, cdw10 & ana::LSP_RGO != 0)
        }
        lid::RESERVATION_NOTIFICATION => c.take_reservation_notice(retain),
        lid::CHANGED_NAMESPACE_LIST => {
            let ids = c.take_changed_ns(retain);
            let mut p = vec![0u8; 4096];
            let mut w = Page(&mut p);
            for (i, id) in ids.iter().enumerate() {
                w.u32(i * 4, *id);
            }
            p
        }
        _ => return done(Response::err(status::INVALID_LOG_PAGE)),
    };
    if offset > page.len() as u64 {
        return done(Response::err(status::INVALID_FIELD));
    }
    let n = want.min(data.len());
    data[..n].fill(0);
    let src = &page[offset as usize..];
    let k = src.len().min(n);
    data[..k].copy_from_slice(&src[..k]);
    Outcome::Done(Response::ok(), n)
}

/// The ANA log page as this controller sees it: one descriptor per group
/// that has namespaces the host sees, with the states of the controller's
/// listener.
pub fn ana_log(c: &Controller, groups_only: bool) -> Vec<u8> {
    let groups: Vec<ana::Group> = c
        .subsystem
        .ana_groups(|ns| ns.visible_to(&c.hostnqn))
        .into_iter()
        .map(|(id, nsids)| ana::Group { id, state: c.ana_state(id), change_count: 0, nsids })
        .collect();
    ana::build_log(c.ana.as_ref().map_or(0, |a| a.change_count()), &groups, groups_only)
}

fn set_features(c: &Rc<Controller>, cmd: &Command) -> Response {
    let cdw10 = cmd.cdw10.get();
    let fid = (cdw10 & 0xff) as u8;
    let cdw11 = cmd.cdw11.get();
    if cdw10 & (1 << 31) != 0 {
        return Response::err(status::FEATURE_NOT_SAVEABLE);
    }
    match fid {
        feature::KEEP_ALIVE_TIMER => {
            c.set_kato(cdw11);
            Response::ok()
        }
        feature::ASYNC_EVENT_CONFIG => {
            c.set_aec(cdw11);
            Response::ok()
        }
        feature::NUMBER_OF_QUEUES if !c.is_discovery() => {
            let nsqr = (cdw11 & 0xffff) as u16;
            let ncqr = (cdw11 >> 16) as u16;
            if nsqr == 0xffff || ncqr == 0xffff {
                return Response::err(status::INVALID_FIELD);
            }
            let n = c.set_io_queues(nsqr.max(ncqr).saturating_add(1));
            let v = u32::from(n - 1);
            Response::ok_dw0(v | (v << 16))
        }
        feature::VOLATILE_WRITE_CACHE if !c.is_discovery() => {
            if cdw11 & 1 == 0 {
                // The cache of a bdev cannot be turned off from here.
                Response::err(status::FEATURE_NOT_CHANGEABLE)
            } else {
                Response::ok()
            }
        }
        feature::HOST_IDENTIFIER => Response::err(status::COMMAND_SEQUENCE_ERROR),
        feature::RESERVATION_NOTIFICATION_MASK if !c.is_discovery() => {
            c.set_resv_mask(cdw11);
            Response::ok()
        }
        feature::RESERVATION_PERSISTENCE if !c.is_discovery() => set_ptpl(c, cmd.nsid.get(), cdw11 & 1 != 0),
        feature::ARBITRATION | feature::POWER_MANAGEMENT | feature::TEMPERATURE_THRESHOLD | feature::ERROR_RECOVERY
            if !c.is_discovery() =>
        {
            Response::ok()
        }
        _ => Response::err(status::INVALID_FIELD),
    }
}

/// Set Features Reservation Persistence: turn PTPL on (only with a
/// `ptpl_file`) or off for one namespace.
fn set_ptpl(c: &Controller, nsid: u32, on: bool) -> Response {
    let s = &c.subsystem;
    let Some(ns) = c.namespace(nsid) else {
        return Response::err(status::INVALID_NAMESPACE);
    };
    if on && ns.ptpl_file.is_none() {
        return Response::err(status::INVALID_FIELD);
    }
    if std::mem::replace(&mut ns.resv.borrow_mut().ptpl, on) != on {
        if !crate::resv::persist(s, &ns) {
            ns.resv.borrow_mut().ptpl = !on;
            return Response::err(status::INTERNAL_ERROR);
        }
        crate::group::publish_resv(s.id, nsid, ns.resv_snapshot(), false, || {});
    }
    Response::ok()
}

fn get_features(c: &Rc<Controller>, cmd: &Command, data: &mut [u8]) -> Response {
    let cdw10 = cmd.cdw10.get();
    let fid = (cdw10 & 0xff) as u8;
    let select = (cdw10 >> 8) & 0x7;
    if select == feature::SELECT_SUPPORTED_CAPABILITIES {
        // Nothing is saveable or namespace specific; everything changeable.
        return Response::ok_dw0(1 << 2);
    }
    let current = select == feature::SELECT_CURRENT;
    match fid {
        feature::KEEP_ALIVE_TIMER => Response::ok_dw0(if current { c.kato_ms() } else { 0 }),
        feature::ASYNC_EVENT_CONFIG => Response::ok_dw0(if current { c.aec() } else { 0 }),
        feature::NUMBER_OF_QUEUES if !c.is_discovery() => {
            let v = u32::from(c.io_queue_limit().saturating_sub(1));
            Response::ok_dw0(v | (v << 16))
        }
        feature::VOLATILE_WRITE_CACHE if !c.is_discovery() => Response::ok_dw0(1),
        feature::RESERVATION_NOTIFICATION_MASK if !c.is_discovery() => Response::ok_dw0(if current { c.resv_mask() } else { 0 }),
        feature::RESERVATION_PERSISTENCE if !c.is_discovery() => match c.namespace(cmd.nsid.get()) {
            Some(ns) => Response::ok_dw0(u32::from(current && ns.resv.borrow().ptpl)),
            None => Response::err(status::INVALID_NAMESPACE),
        },
        feature::ARBITRATION | feature::POWER_MANAGEMENT | feature::ERROR_RECOVERY if !c.is_discovery() => Response::ok_dw0(0),
        // Composite temperature threshold: 343 K (70 C).
        feature::TEMPERATURE_THRESHOLD if !c.is_discovery() => Response::ok_dw0(343),
        feature::HOST_IDENTIFIER => {
            // 128-bit host identifier (EXHID set) as sent in Connect.
            if cmd.cdw11.get() & 1 == 0 || data.len() < 16 {
                return Response::err(status::INVALID_FIELD);
            }
            data[..16].copy_from_slice(&c.hostid);
            Response::ok()
        }
        _ => Response::err(status::INVALID_FIELD),
    }
}
