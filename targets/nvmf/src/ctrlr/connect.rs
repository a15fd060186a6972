//! Fabrics Connect (NVMe over Fabrics 1.1, 3.3): creates a controller for
//! an admin queue, or attaches an I/O queue to an existing controller.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::status::{self, ConnectError};
use crate::target::Target;
use crate::transport::{Endpoint, TransportOpts};
use crate::wire::fabrics::{CNTLID_DYNAMIC, ConnectCommand, ConnectData};
use crate::wire::text_field;

use super::{Controller, Response};

/// A queue that a Connect attached.
#[derive(Debug)]
pub enum Connected {
    Admin(Rc<Controller>),
    Io { ctrlr: Rc<Controller>, qid: u16 },
}

fn invalid(in_data: bool, offset: u16) -> Response {
    Response { status: status::CONNECT_INVALID_PARAMETERS, dw0: ConnectError { in_data, offset }.dw0(), dw1: 0 }
}

/// A refused Connect: its answer, and the line for the log (the transport
/// logs it, within the connection's budget of log lines).
#[derive(Debug)]
pub struct Refused {
    pub resp: Response,
    pub why: String,
}

fn refused(at: &Where, hostnqn: &str, why: std::fmt::Arguments<'_>, resp: Response) -> Refused {
    Refused { resp, why: format!("nvmf: connect from {} ({}) on {} refused: {why}", at.peer, host_name(hostnqn), at.endpoint) }
}

/// Where a Connect came from and arrived.
struct Where {
    peer: SocketAddr,
    endpoint: Endpoint,
}

/// A host NQN for the log (SPDK's hosts may send none).
pub(crate) fn host_name(hostnqn: &str) -> &str {
    if hostnqn.is_empty() { "a host with no host NQN" } else { hostnqn }
}

/// An NQN field: UTF-8, NUL terminated within 224 bytes (223 of text).
/// The host NQN may be empty, as Linux's and SPDK's targets accept: SPDK's
/// own host sends none unless its `hostnqn` is given.
fn nqn_field<'a>(raw: &'a [u8; 256], offset: u16, endpoint: &Where, what: &str, may_be_empty: bool) -> Result<&'a str, Refused> {
    match text_field(raw) {
        Some(s) if s.len() <= crate::wire::fabrics::NQN_MAX_LEN && (may_be_empty || !s.is_empty()) => Ok(s),
        Some("") => Err(refused(endpoint, "", format_args!("empty {what}"), invalid(true, offset))),
        Some(s) => Err(refused(
            endpoint,
            "",
            format_args!("{what} of {} bytes, over {}", s.len(), crate::wire::fabrics::NQN_MAX_LEN),
            invalid(true, offset),
        )),
        None => Err(refused(endpoint, "", format_args!("{what} is not UTF-8"), invalid(true, offset))),
    }
}

/// Handle a Connect that arrived on `endpoint`. On success the response
/// carries the controller id in dword 0; a refusal carries its reason.
pub fn connect(
    target: &Target,
    cmd: &ConnectCommand,
    data: &ConnectData,
    endpoint: Endpoint,
    peer: SocketAddr,
    opts: &TransportOpts,
) -> Result<(Connected, Response), Refused> {
    let ep = &Where { peer, endpoint };
    if cmd.recfmt.get() != 0 {
        let why = format_args!("record format {} (only 0 exists)", cmd.recfmt.get());
        return Err(refused(ep, "", why, Response::err(status::CONNECT_INCOMPATIBLE_FORMAT)));
    }
    let hostnqn = nqn_field(&data.hostnqn, ConnectData::OFFSET_HOSTNQN, ep, "host NQN", true)?;
    let subnqn = nqn_field(&data.subnqn, ConnectData::OFFSET_SUBNQN, ep, "subsystem NQN", false)?;
    let refuse = |why: std::fmt::Arguments<'_>, resp: Response| refused(ep, hostnqn, why, resp);
    let subsystem =
        target.find(subnqn).ok_or_else(|| refuse(format_args!("no subsystem {subnqn}"), invalid(true, ConnectData::OFFSET_SUBNQN)))?;
    if !subsystem.listens_on(&endpoint) {
        return Err(refuse(format_args!("{subnqn} does not listen on {endpoint}"), invalid(true, ConnectData::OFFSET_SUBNQN)));
    }
    if !subsystem.host_allowed(hostnqn) {
        return Err(refuse(format_args!("the host is not allowed to use {subnqn}"), Response::err(status::CONNECT_INVALID_HOST)));
    }
    let qid = cmd.qid.get();
    let sqsize = u32::from(cmd.sqsize.get());
    let max_depth = if qid == 0 { opts.max_aq_depth } else { u32::from(opts.max_queue_depth) };
    if sqsize == 0 || sqsize >= max_depth {
        let why = format_args!("queue {qid}: SQSIZE {sqsize} outside 1..{}", max_depth - 1);
        return Err(refuse(why, invalid(false, ConnectCommand::OFFSET_SQSIZE)));
    }
    let cntlid = data.cntlid.get();
    if qid == 0 {
        let requested = (cntlid != CNTLID_DYNAMIC).then_some(cntlid);
        let Some(id) = subsystem.allocate_cntlid(requested) else {
            let why = match requested {
                Some(c) => format!("controller ID {c} of {subnqn} is taken or out of range"),
                None => format!("{subnqn} has no free controller ID"),
            };
            return Err(refuse(format_args!("{why}"), invalid(true, ConnectData::OFFSET_CNTLID)));
        };
        let ctrlr = Controller::new(id, subsystem.clone(), hostnqn.to_string(), data.hostid, endpoint, opts.clone(), cmd.kato.get());
        subsystem.controllers.borrow_mut().insert(id, ctrlr.clone());
        tracing::info!("nvmf: {} ({peer}) connected controller {id} of {subnqn} on {endpoint}", host_name(hostnqn));
        return Ok((Connected::Admin(ctrlr), Response::ok_dw0(u32::from(id))));
    }
    let ctrlr = subsystem.controllers.borrow().get(&cntlid).cloned().ok_or_else(|| {
        refuse(
            format_args!("I/O queue {qid} for controller {cntlid} of {subnqn}, which does not exist"),
            invalid(true, ConnectData::OFFSET_CNTLID),
        )
    })?;
    // An I/O queue belongs to the controller with this ID and host NQN (as
    // in Linux's target). Hosts may send a different host identifier on
    // each connection: accepted, as Linux's and SPDK's targets do.
    if ctrlr.hostnqn != hostnqn {
        let why = format_args!("I/O queue {qid} for controller {cntlid} of {subnqn}, which belongs to host {}", host_name(&ctrlr.hostnqn));
        return Err(refuse(why, invalid(true, ConnectData::OFFSET_HOSTNQN)));
    }
    // With ANA reporting, a controller's queues all come through one
    // listener: its ANA states are the listener's (as SPDK checks).
    if ctrlr.ana.is_some() && ctrlr.endpoint != endpoint {
        let why =
            format_args!("I/O queue {qid} of controller {cntlid} on {endpoint}, not on its admin queue's listener {}", ctrlr.endpoint);
        return Err(refuse(why, invalid(false, ConnectCommand::OFFSET_QID)));
    }
    if ctrlr.hostid != data.hostid {
        tracing::info!(
            "nvmf: {} connects I/O queue {qid} of controller {cntlid} with host identifier {}, not its admin queue's {}: accepted",
            host_name(hostnqn),
            hex(&data.hostid),
            hex(&ctrlr.hostid)
        );
    }
    if ctrlr.is_discovery() || qid > ctrlr.io_queue_limit() {
        let why =
            format_args!("I/O queue {qid} of controller {cntlid}: a discovery controller, or above its {} queues", ctrlr.io_queue_limit());
        return Err(refuse(why, invalid(false, ConnectCommand::OFFSET_QID)));
    }
    if !ctrlr.enabled() {
        let why = format_args!("I/O queue {qid} of controller {cntlid} before the controller was enabled (CC.EN)");
        return Err(refuse(why, Response::err(status::COMMAND_SEQUENCE_ERROR)));
    }
    if ctrlr.io_qpairs.borrow().contains_key(&qid) {
        return Err(refuse(
            format_args!("I/O queue {qid} of controller {cntlid} is already connected"),
            Response::err(status::CONNECT_CONTROLLER_BUSY),
        ));
    }
    Ok((Connected::Io { ctrlr, qid }, Response::ok_dw0(u32::from(cntlid))))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
