//! Commands on a connection: taking a capsule into a request slot, getting
//! its data (in the capsule, or solicited with an R2T and received in
//! H2CData PDUs), running it (Fabrics, admin or NVM command set) and
//! sending back its data and completion.

use std::rc::Weak;
use std::time::Instant;

use pollux_core::dma::{self, copy_to_bufs};
use pollux_core::reactor;
use pollux_core::sock::{OutBuf, TxBuf};
use pollux_nvme_spec::cmd::Command;
use zerocopy::FromBytes;

use super::super::pdu::{self, Fatal, Fes};
use super::{Conn, DataDir, DirectRx, Queue, SGL_IN_CAPSULE, SGL_TRANSPORT, Slot, SlotState, State, data_timeout, fabrics_data_len};
use crate::ctrlr::connect::{self, Connected};
use crate::ctrlr::{AdminQueue, IoQpairRef, Response, admin};
use crate::io::{self as nvm, Completer, IoSink};
use crate::status;
use crate::transport::IoOwner;
use crate::wire::fabrics::{self, ConnectCommand, ConnectData, PropertyCommand};

impl Conn {
    pub(super) fn on_capsule(&self, st: &mut State, cmd: &Command, data: &[u8], data_ok: bool) {
        let idx = st.free.pop().expect("a free slot (checked by the caller)");
        let slot = &mut st.slots[idx as usize];
        slot.state = SlotState::Executing;
        slot.cmd = *cmd;
        slot.received = 0;
        slot.error = None;
        slot.bufs.clear();
        slot.lent = None;
        let dir = if cmd.opcode == fabrics::OPCODE { nvm::data_dir(raw(cmd)[4]) } else { nvm::data_dir(cmd.opcode) };
        let sgl = cmd.dptr.sgl();
        let len = sgl.length.get();
        slot.dir = if len == 0 { DataDir::None } else { dir };
        slot.len = if slot.dir == DataDir::None { 0 } else { len };
        if !data_ok {
            return self.respond(st, idx, Response::err(status::TRANSIENT_TRANSPORT_ERROR));
        }
        if slot.dir == DataDir::None {
            if !data.is_empty() {
                return self.respond(st, idx, Response::err(status::INVALID_FIELD));
            }
            return self.execute(st, idx);
        }
        let max = self.opts.max_io_size.max(fabrics_data_len()).max(64 * 1024);
        if len > max {
            return self.respond(st, idx, Response::err(status::DATA_SGL_LENGTH_INVALID));
        }
        match sgl.id {
            SGL_IN_CAPSULE => {
                let off = sgl.address.get();
                if slot.dir != DataDir::HostToController || off > data.len() as u64 {
                    return self.respond(st, idx, Response::err(status::SGL_OFFSET_INVALID));
                }
                if off + u64::from(len) > data.len() as u64 {
                    return self.respond(st, idx, Response::err(status::DATA_SGL_LENGTH_INVALID));
                }
                if !get_buffers(&mut st.slots[idx as usize], self.opts.io_unit_size) {
                    // Retryable: the pool is empty and the data cannot wait.
                    return self.respond(
                        st,
                        idx,
                        Response::err(status::Status::new(pollux_nvme_spec::status::StatusCodeType::Generic, 0x06)),
                    );
                }
                let slot = &mut st.slots[idx as usize];
                copy_to_bufs(&mut slot.bufs, 0, &data[off as usize..off as usize + len as usize]);
                slot.received = len;
                self.execute(st, idx)
            }
            SGL_TRANSPORT => {
                if !data.is_empty() {
                    return self.respond(st, idx, Response::err(status::INVALID_FIELD));
                }
                self.start_transfer(st, idx)
            }
            _ => self.respond(st, idx, Response::err(status::SGL_DESCRIPTOR_TYPE_INVALID)),
        }
    }

    /// Get buffers for a command's data, then solicit it (writes) or run
    /// the command (reads).
    pub(super) fn start_transfer(&self, st: &mut State, idx: u16) {
        if Self::lent_read(st, idx) {
            // The namespace's bdev lends the read its memory: no buffers.
            st.slots[idx as usize].state = SlotState::Executing;
            return self.execute(st, idx);
        }
        let slot = &mut st.slots[idx as usize];
        if !get_buffers(slot, self.opts.io_unit_size) {
            slot.state = SlotState::AwaitBuffer;
            st.waiting_buffers.push_back(idx);
            return;
        }
        if slot.dir == DataDir::HostToController {
            slot.state = SlotState::Receiving;
            let (cid, len) = (slot.cmd.cid.get(), slot.len);
            pdu::r2t(st.tx.bytes(), cid, idx, 0, len, st.framing.header_digest);
            if st.receiving == 0 {
                st.last_data = Instant::now();
            }
            st.receiving += 1;
        } else {
            slot.state = SlotState::Executing;
            self.execute(st, idx);
        }
    }

    pub(super) fn retry_buffers(&self, st: &mut State) {
        while let Some(&idx) = st.waiting_buffers.front() {
            if !get_buffers(&mut st.slots[idx as usize], self.opts.io_unit_size) {
                return;
            }
            // Buffers are in place now; start_transfer takes the fast path.
            st.waiting_buffers.pop_front();
            self.start_transfer(st, idx);
        }
    }

    pub(super) fn on_h2c_data(&self, st: &mut State, hdr: &pdu::DataHeader, data: &[u8], data_ok: bool) -> Result<(), Fatal> {
        let idx = h2c_check(st, hdr)?;
        copy_to_bufs(&mut st.slots[idx as usize].bufs, hdr.datao.get() as usize, data);
        self.h2c_done(st, idx, hdr.datal.get(), data_ok);
        Ok(())
    }

    /// The header of an H2CData PDU whose data is still arriving: check it,
    /// take the data that came with it, and have the rest read from the
    /// socket straight into the command's buffers (see `Conn::read_direct`).
    pub(super) fn begin_direct(&self, st: &mut State, hdr: &pdu::DataHeader, present: &[u8]) -> Result<(), Fatal> {
        let idx = h2c_check(st, hdr)?;
        let datao = hdr.datao.get() as usize;
        copy_to_bufs(&mut st.slots[idx as usize].bufs, datao, present);
        let data_digest = st.framing.data_digest;
        st.direct = Some(DirectRx {
            idx,
            hdr: *hdr,
            off: datao + present.len(),
            left: hdr.datal.get() as usize - present.len(),
            crc: if data_digest { crc32c::crc32c(present) } else { 0 },
            digest: [0; pdu::DIGEST_LEN],
            digest_left: if data_digest { pdu::DIGEST_LEN } else { 0 },
        });
        st.last_data = Instant::now();
        Ok(())
    }

    /// An H2CData PDU's data is all in (`data_ok`: its digest matched):
    /// run the command once its whole transfer has come.
    pub(super) fn h2c_done(&self, st: &mut State, idx: u16, datal: u32, data_ok: bool) {
        let slot = &mut st.slots[idx as usize];
        slot.received += datal;
        if !data_ok {
            slot.error = Some(status::TRANSIENT_TRANSPORT_ERROR);
        }
        st.last_data = Instant::now();
        if slot.received == slot.len {
            st.receiving -= 1;
            let slot = &mut st.slots[idx as usize];
            slot.state = SlotState::Executing;
            if let Some(e) = slot.error {
                self.respond(st, idx, Response::err(e));
            } else {
                self.execute(st, idx);
            }
        }
    }

    // ---- Execute ----

    pub(super) fn execute(&self, st: &mut State, idx: u16) {
        let cmd = st.slots[idx as usize].cmd;
        if cmd.opcode == fabrics::OPCODE {
            return self.fabrics(st, idx, &cmd);
        }
        match &st.queue {
            Queue::Unbound => self.respond(st, idx, Response::err(status::COMMAND_SEQUENCE_ERROR)),
            Queue::Admin(c) => {
                let c = c.clone();
                if !c.enabled() {
                    return self.respond(st, idx, Response::err(status::COMMAND_SEQUENCE_ERROR));
                }
                let Ok(target) = crate::target::target() else {
                    return self.respond(st, idx, Response::err(status::INTERNAL_ERROR));
                };
                // Admin data fits one buffer (at most the large size).
                if st.slots[idx as usize].bufs.len() > 1 {
                    return self.respond(st, idx, Response::err(status::DATA_SGL_LENGTH_INVALID));
                }
                let slot = &mut st.slots[idx as usize];
                let len = slot.len as usize;
                let to_host = slot.dir == DataDir::ControllerToHost;
                let mut empty = [0u8; 0];
                let data: &mut [u8] = match slot.bufs.first_mut() {
                    Some(b) => &mut b[..len],
                    None => &mut empty,
                };
                if to_host {
                    // Pool buffers hold old data: never send it.
                    data.fill(0);
                }
                match admin::execute(&target, &c, &cmd, data) {
                    admin::Outcome::Done(r, _) => self.respond(st, idx, r),
                    admin::Outcome::Pending => self.release(st, idx),
                }
            }
            Queue::Io { view, owner, .. } => {
                let (view, owner) = (view.clone(), owner.clone());
                let tag = (u32::from(st.slots[idx as usize].generation) << 16) | u32::from(idx);
                let sink: Weak<dyn IoSink> = self.me.clone();
                let slot = &mut st.slots[idx as usize];
                let len = u64::from(slot.len);
                if let Some(r) = nvm::execute(&view, &owner, &cmd, &mut slot.bufs, len, Completer { sink, tag }) {
                    self.respond(st, idx, r);
                }
            }
        }
    }

    pub(super) fn fabrics(&self, st: &mut State, idx: u16, cmd: &Command) {
        let raw = raw(cmd);
        let fctype = raw[4];
        let r = match (fctype, &st.queue) {
            (fabrics::fctype::CONNECT, Queue::Unbound) => return self.connect(st, idx, &raw),
            (fabrics::fctype::CONNECT, _) => {
                pollux_core::log_fault!(
                    self.faults,
                    "nvmf: connect from {} on {} refused: queue {} is already connected",
                    self.peer,
                    self.ep,
                    st.qid
                );
                Response::err(status::COMMAND_SEQUENCE_ERROR)
            }
            (_, Queue::Unbound) => Response::err(status::COMMAND_SEQUENCE_ERROR),
            (fabrics::fctype::PROPERTY_GET, Queue::Admin(c)) => c.property_get(&PropertyCommand::read_from_bytes(&raw).expect("64 bytes")),
            (fabrics::fctype::PROPERTY_SET, Queue::Admin(c)) => c.property_set(&PropertyCommand::read_from_bytes(&raw).expect("64 bytes")),
            (fabrics::fctype::DISCONNECT, Queue::Io { .. }) => {
                self.respond(st, idx, Response::ok());
                st.terminating = true;
                return;
            }
            (fabrics::fctype::PROPERTY_GET | fabrics::fctype::PROPERTY_SET | fabrics::fctype::DISCONNECT, _) => {
                Response::err(status::INVALID_FIELD)
            }
            _ => Response::err(status::INVALID_OPCODE),
        };
        self.respond(st, idx, r)
    }

    pub(super) fn connect(&self, st: &mut State, idx: u16, raw: &[u8; 64]) {
        let cc = ConnectCommand::read_from_bytes(raw).expect("64 bytes");
        let slot = &st.slots[idx as usize];
        if slot.dir != DataDir::HostToController || slot.len as usize != size_of::<ConnectData>() || slot.bufs.len() != 1 {
            pollux_core::log_fault!(
                self.faults,
                "nvmf: connect from {} on {} refused: {} bytes of connect data (host to controller: {}), not {}",
                self.peer,
                self.ep,
                slot.len,
                slot.dir == DataDir::HostToController,
                size_of::<ConnectData>()
            );
            return self.respond(st, idx, Response::err(status::DATA_SGL_LENGTH_INVALID));
        }
        let data = ConnectData::read_from_bytes(&slot.bufs[0][..size_of::<ConnectData>()]).expect("1024 bytes");
        let (Ok(target), Some(shared)) = (crate::target::target(), self.shared.clone()) else {
            tracing::warn!("nvmf: connect from {} refused: the target is shutting down", self.peer);
            return self.respond(st, idx, Response::err(status::INTERNAL_ERROR));
        };
        let (connected, resp) = match connect::connect(&target, &cc, &data, self.ep, self.peer, &self.opts) {
            Ok(x) => x,
            Err(r) => {
                pollux_core::log_fault!(self.faults, "{}", r.why);
                return self.respond(st, idx, r.resp);
            }
        };
        st.qid = cc.qid.get();
        st.sq_entries = cc.sqsize.get().saturating_add(1);
        st.sq_flow_off = cc.cattr & ConnectCommand::CATTR_DISABLE_SQ_FLOW_CONTROL != 0;
        match connected {
            Connected::Admin(c) => {
                st.data_timeout = data_timeout(c.kato_ms());
                let me: Weak<dyn AdminQueue> = self.me.clone();
                c.set_admin_queue(me);
                st.counted = Some(self.counted(c.subsystem.id, c.cntlid, st.qid));
                st.queue = Queue::Admin(c);
            }
            Connected::Io { ctrlr, qid } => {
                st.data_timeout = data_timeout(ctrlr.kato_ms());
                let r = shared.pick_reactor();
                ctrlr.add_io_qpair(qid, IoQpairRef { reactor: r, id: self.id, close: super::super::group::close_conn });
                let sid = ctrlr.subsystem.id;
                if r == reactor::current() {
                    st.counted = Some(self.counted(sid, ctrlr.cntlid, st.qid));
                    st.queue = Queue::Io {
                        view: crate::group::subsystem(sid),
                        subsystem_id: sid,
                        cntlid: ctrlr.cntlid,
                        owner: IoOwner::of(&ctrlr),
                    };
                    if let Some(g) = self.group.upgrade() {
                        let mut s = g.stats.borrow_mut();
                        // Counted as admin when accepted; it is an I/O queue.
                        s.current_admin_qpairs = s.current_admin_qpairs.saturating_sub(1);
                        s.admin_qpairs = s.admin_qpairs.saturating_sub(1);
                        s.io_qpairs += 1;
                        s.current_io_qpairs += 1;
                    }
                } else {
                    st.move_to = Some((r, IoOwner::of(&ctrlr)));
                }
            }
        }
        self.respond(st, idx, resp)
    }

    // ---- Complete ----

    pub(super) fn release(&self, st: &mut State, idx: u16) {
        let slot = &mut st.slots[idx as usize];
        slot.state = SlotState::Free;
        slot.generation = slot.generation.wrapping_add(1);
        slot.bufs.clear();
        slot.lent = None;
        st.free.push(idx);
    }

    /// Whether a command is a read from a namespace whose bdev lends reads
    /// its memory (`nvm::execute` then reads with no buffers). Not with a
    /// data digest: lent memory would have to be copied for its digest to
    /// cover the bytes sent, into the send queue, which a burst of large
    /// reads grows past its bound and then shrinks again (a reallocation
    /// per read); pool buffers, which the bdev copies into, are stable.
    fn lent_read(st: &State, idx: u16) -> bool {
        if st.c2h.data_digest {
            return false;
        }
        let slot = &st.slots[idx as usize];
        match &st.queue {
            Queue::Io { view, .. } if slot.cmd.opcode == pollux_nvme_spec::cmd::io::READ && slot.dir == DataDir::ControllerToHost => {
                view.namespace(slot.cmd.nsid.get()).is_some_and(|ns| ns.desc.bdev().lends_reads())
            }
            _ => false,
        }
    }

    pub(super) fn next_sq_head(st: &mut State) -> u16 {
        st.sq_head = (st.sq_head + 1) % st.sq_entries.max(1);
        st.sq_head
    }

    /// Whether a successful read may end with a C2HData PDU carrying
    /// SUCCESS instead of a CapsuleResp (`c2h_success`). Always when the
    /// host disabled SQ flow control at Connect (TP 8000). With flow
    /// control on, SPDK's nvmf_tgt omits the CapsuleResp all the same, so a
    /// host that follows SQHD strictly would never learn the head; here the
    /// head goes out (a CapsuleResp) at least once per quarter of the SQ.
    /// A strict host then sees its queue at most a quarter fuller than it
    /// is, so it can always submit once a quarter of the queue is truly
    /// free, and it waits for nothing that never comes.
    pub(super) fn may_omit_resp(st: &State) -> bool {
        st.sq_flow_off || st.unreported + 1 < (st.sq_entries / 4).max(1)
    }

    /// Queue the CapsuleResp of command `cid` (SQ head `sq_head`): the host
    /// now knows the head.
    pub(super) fn queue_capsule_resp(st: &mut State, cid: u16, sq_head: u16, r: &Response) {
        let cqe = r.cqe(cid, st.qid, sq_head);
        let hd = st.framing.header_digest;
        pdu::capsule_resp(st.tx.bytes(), &cqe, hd);
        st.unreported = 0;
    }

    /// Send a command's data (controller to host) and completion; free its slot.
    pub(super) fn respond(&self, st: &mut State, idx: u16, r: Response) {
        let sq_head = Self::next_sq_head(st);
        let slot = &st.slots[idx as usize];
        let cid = slot.cmd.cid.get();
        let mut send_resp = true;
        if let Some(c) = &st.counted {
            c.command(r.status.is_success(), slot.dir, slot.len);
        }
        if slot.dir == DataDir::ControllerToHost && r.status.is_success() && slot.len > 0 {
            let success = self.opts.c2h_success && r.dw0 == 0 && r.dw1 == 0 && Self::may_omit_resp(st);
            let len = slot.len as usize;
            let c2h = st.c2h;
            pdu::c2h_data_header(st.tx.bytes(), &c2h, cid, 0, len, true, success);
            // The data goes from the buffers themselves (see `TxQueue`),
            // its digest computed on the way.
            let (mut left, mut crc) = (len, 0u32);
            let slot = &mut st.slots[idx as usize];
            let lent = slot.lent.take().map(OutBuf::Lent);
            for b in lent.into_iter().chain(slot.bufs.drain(..).map(OutBuf::Dma)) {
                let n = b.tx_len().min(left);
                left -= n;
                if c2h.data_digest && matches!(b, OutBuf::Lent(_)) {
                    // Lent memory can change under us (a write to those
                    // blocks): the digest must cover the very bytes sent,
                    // so they are copied once and the CRC taken over them.
                    let at = st.tx.bytes().len();
                    b.tx_copy(0, n, st.tx.bytes());
                    crc = crc32c::crc32c_append(crc, &st.tx.bytes()[at..]);
                    continue;
                }
                if c2h.data_digest {
                    crc = b.crc32c_append(crc, 0, n);
                }
                st.tx.push_buf(b, n);
            }
            if c2h.data_digest {
                st.tx.bytes().extend_from_slice(&crc.to_le_bytes());
            }
            send_resp = !success;
        }
        if send_resp {
            Self::queue_capsule_resp(st, cid, sq_head, &r);
        } else {
            st.unreported = st.unreported.saturating_add(1);
        }
        if matches!(st.queue, Queue::Io { .. }) {
            if let Some(g) = self.group.upgrade() {
                g.stats.borrow_mut().completed_nvme_io += 1;
            }
        }
        self.release(st, idx);
    }
}

/// Check an H2CData header against the transfer it answers: the R2T's
/// tag, the command, the offset expected next, the length, and the last-PDU
/// flag. Returns the command's slot.
fn h2c_check(st: &State, hdr: &pdu::DataHeader) -> Result<u16, Fatal> {
    let echo = size_of::<pdu::DataHeader>();
    let idx = hdr.ttag.get();
    let Some(slot) = st.slots.get(idx as usize) else {
        return Err(Fatal { fes: Fes::InvalidHeaderField, fei: pdu::DataHeader::OFFSET_TTAG, echo });
    };
    if slot.state != SlotState::Receiving {
        return Err(Fatal { fes: Fes::InvalidHeaderField, fei: pdu::DataHeader::OFFSET_TTAG, echo });
    }
    if slot.cmd.cid.get() != hdr.cccid.get() {
        return Err(Fatal { fes: Fes::InvalidHeaderField, fei: pdu::DataHeader::OFFSET_CCCID, echo });
    }
    let (datao, datal) = (hdr.datao.get(), hdr.datal.get());
    if datao != slot.received {
        return Err(Fatal { fes: Fes::DataOutOfRange, fei: pdu::DataHeader::OFFSET_DATAO, echo });
    }
    if u64::from(datao) + u64::from(datal) > u64::from(slot.len) {
        return Err(Fatal { fes: Fes::DataOutOfRange, fei: pdu::DataHeader::OFFSET_DATAL, echo });
    }
    let last = hdr.ch.flags & pdu::flags::LAST_PDU != 0;
    if last != (datao + datal == slot.len) {
        return Err(Fatal { fes: Fes::InvalidHeaderField, fei: pdu::CommonHeader::OFFSET_FLAGS, echo });
    }
    Ok(idx)
}

/// The 64 bytes of a command (Fabrics commands are read in other layouts).
fn raw(cmd: &Command) -> [u8; 64] {
    let mut b = [0u8; 64];
    b.copy_from_slice(zerocopy::IntoBytes::as_bytes(cmd));
    b
}

/// Take buffers for `slot.len` bytes from this reactor's pool, in pieces of
/// at most `unit` (and the pool's large size). False if the pool is empty.
fn get_buffers(slot: &mut Slot, unit: u32) -> bool {
    if !slot.bufs.is_empty() {
        return true;
    }
    let Ok(pool) = dma::pool() else { return false };
    let unit = (unit as usize).min(pool.large_size()).max(1);
    let mut left = slot.len as usize;
    while left > 0 {
        let n = left.min(unit);
        match pool.get(n) {
            Some(b) => slot.bufs.push(b),
            None => {
                slot.bufs.clear();
                return false;
            }
        }
        left -= n;
    }
    true
}
