//! Fabrics Connect (NVMe over Fabrics 1.1, 3.3): creates a controller for
//! an admin queue, or attaches an I/O queue to an existing controller.

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

/// An NQN field: NUL terminated UTF-8 of at most 223 bytes.
fn nqn_field(raw: &[u8; 256], offset: u16) -> Result<&str, Response> {
    match text_field(raw) {
        Some(s) if !s.is_empty() && s.len() <= crate::wire::fabrics::NQN_MAX_LEN => Ok(s),
        _ => Err(invalid(true, offset)),
    }
}

/// Handle a Connect that arrived on `endpoint`. On success the response
/// carries the controller id in dword 0.
pub fn connect(
    target: &Target,
    cmd: &ConnectCommand,
    data: &ConnectData,
    endpoint: Endpoint,
    opts: &TransportOpts,
) -> Result<(Connected, Response), Response> {
    if cmd.recfmt.get() != 0 {
        return Err(Response::err(status::CONNECT_INCOMPATIBLE_FORMAT));
    }
    let subnqn = nqn_field(&data.subnqn, ConnectData::OFFSET_SUBNQN)?;
    let hostnqn = nqn_field(&data.hostnqn, ConnectData::OFFSET_HOSTNQN)?;
    let subsystem = target.find(subnqn).ok_or_else(|| {
        tracing::info!("nvmf: connect from {hostnqn} to unknown subsystem {subnqn}");
        invalid(true, ConnectData::OFFSET_SUBNQN)
    })?;
    if !subsystem.listens_on(&endpoint) {
        tracing::info!("nvmf: connect from {hostnqn}: {subnqn} does not listen on {endpoint}");
        return Err(invalid(true, ConnectData::OFFSET_SUBNQN));
    }
    if !subsystem.host_allowed(hostnqn) {
        tracing::warn!("nvmf: host {hostnqn} is not allowed to connect to {subnqn}");
        return Err(Response::err(status::CONNECT_INVALID_HOST));
    }
    let qid = cmd.qid.get();
    let sqsize = u32::from(cmd.sqsize.get());
    let max_depth = if qid == 0 { opts.max_aq_depth } else { u32::from(opts.max_queue_depth) };
    if sqsize == 0 || sqsize >= max_depth {
        return Err(invalid(false, ConnectCommand::OFFSET_SQSIZE));
    }
    let cntlid = data.cntlid.get();
    if qid == 0 {
        let requested = (cntlid != CNTLID_DYNAMIC).then_some(cntlid);
        let id = subsystem.allocate_cntlid(requested).ok_or_else(|| invalid(true, ConnectData::OFFSET_CNTLID))?;
        let ctrlr = Controller::new(id, subsystem.clone(), hostnqn.to_string(), data.hostid, endpoint, opts.clone(), cmd.kato.get());
        subsystem.controllers.borrow_mut().insert(id, ctrlr.clone());
        tracing::info!("nvmf: host {hostnqn} connected controller {id} of {subnqn} on {endpoint}");
        return Ok((Connected::Admin(ctrlr), Response::ok_dw0(u32::from(id))));
    }
    let ctrlr = subsystem.controllers.borrow().get(&cntlid).cloned().ok_or_else(|| invalid(true, ConnectData::OFFSET_CNTLID))?;
    if ctrlr.hostnqn != hostnqn {
        return Err(invalid(true, ConnectData::OFFSET_HOSTNQN));
    }
    if ctrlr.hostid != data.hostid {
        return Err(invalid(true, ConnectData::OFFSET_HOSTID));
    }
    if ctrlr.is_discovery() || qid > ctrlr.io_queue_limit() {
        return Err(invalid(false, ConnectCommand::OFFSET_QID));
    }
    if !ctrlr.enabled() {
        return Err(Response::err(status::COMMAND_SEQUENCE_ERROR));
    }
    if ctrlr.io_qpairs.borrow().contains_key(&qid) {
        return Err(Response::err(status::CONNECT_CONTROLLER_BUSY));
    }
    Ok((Connected::Io { ctrlr, qid }, Response::ok_dw0(u32::from(cntlid))))
}
