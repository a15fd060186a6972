//! The SCSI path of a connection: SCSI Command PDUs, immediate and
//! unsolicited data, R2Ts and Data-Out, execution through the session's
//! LUN ports, and the answer (Data-In with status piggy-backed, or a SCSI
//! Response with sense data), with residuals.

use std::rc::Rc;

use pollux_core::dma::{self, DmaBuf, copy_to_bufs};
use pollux_core::sock::OutBuf;
use pollux_scsi::{DataDir, ScsiCommand, Task, decode_lun};

use super::ffp::Window;
use super::{BufSource, Close, Conn, Fate, Inflight};
use crate::pdu::{Bhs, RESERVED_TAG, op, reject};

/// Largest expected data transfer length we buffer for one command.
pub const MAX_EDTL: u32 = 16 << 20;
/// Data-out buffers of one connection's writes in progress, at most. A
/// write is charged its unsolicited part when it arrives, and the rest of
/// its transfer when its first R2T goes out (or it waits, if that is over
/// the budget and other writes hold some: those always complete, so the
/// waiting ones get their turn). Buffers themselves are taken as each R2T
/// goes out.
pub const WRITE_BUDGET: usize = 32 << 20;

/// One outstanding R2T of a write.
#[derive(Clone, Copy, Debug)]
struct R2t {
    ttt: u32,
    end: u32,
    next_data_sn: u32,
}

/// A SCSI command on this connection.
pub(crate) struct IscsiCmd {
    task: Task,
    conn: Option<Rc<Conn>>,
    itt: u32,
    pub(crate) lun: u64,
    lun_raw: [u8; 8],
    edtl: u32,
    read: bool,
    write: bool,
    /// Data-out bytes we accept (EDTL, capped).
    want: u32,
    received: u32,
    /// Unsolicited data may run up to here.
    unsolicited_end: u32,
    unsolicited_data_sn: u32,
    /// Next offset to solicit with an R2T.
    r2t_next: u32,
    /// Bytes of data-out buffers taken so far (from offset 0).
    allocated: u32,
    /// Bytes charged to the connection's write budget.
    charged: u32,
    r2t_sn: u32,
    r2ts: Vec<R2t>,
    /// The command failed before execution (answered without running it).
    early: Option<pollux_scsi::sense::Sense>,
}

impl ScsiCommand for IscsiCmd {
    fn task(&mut self) -> &mut Task {
        &mut self.task
    }

    fn complete(mut self: Box<Self>) {
        match self.conn.take() {
            Some(c) => c.scsi_done(self),
            None => drop(self),
        }
    }

    fn complete_after_aborting(self: Box<Self>, lun: u64, nexuses: Vec<std::sync::Arc<pollux_scsi::lun::Nexus>>) {
        match self.conn.as_ref().and_then(|c| c.session()) {
            Some(s) => super::tmf::complete_after_aborting(&s, lun, nexuses, self),
            None => self.complete(),
        }
    }
}

impl IscsiCmd {
    fn new() -> Box<IscsiCmd> {
        Box::new(IscsiCmd {
            task: Task::new(),
            conn: None,
            itt: 0,
            lun: 0,
            lun_raw: [0; 8],
            edtl: 0,
            read: false,
            write: false,
            want: 0,
            received: 0,
            unsolicited_end: 0,
            unsolicited_data_sn: 0,
            r2t_next: 0,
            allocated: 0,
            charged: 0,
            r2t_sn: 0,
            r2ts: Vec::with_capacity(4),
            early: None,
        })
    }
}

/// The residual flags (O 0x04, U 0x02) and count of a command's answer:
/// against its EDTL, what a read sent (`sent`), or what a write's CDB
/// asked to transfer (`xfer`). A failed read transferred nothing.
pub(crate) fn data_in_residual(good: bool, read: bool, xfer: u32, edtl: u32, sent: u32) -> (u8, u32) {
    match (good, read) {
        (true, true) if xfer > edtl && sent == edtl => (0x04, xfer - edtl),
        (true, true) if sent < edtl => (0x02, edtl - sent),
        (true, true) => (0, 0),
        (true, false) if xfer > edtl => (0x04, xfer - edtl),
        (true, false) if xfer < edtl => (0x02, edtl - xfer),
        (false, true) if edtl > 0 => (0x02, edtl),
        _ => (0, 0),
    }
}

/// One Data-In PDU of a read's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataInPdu {
    pub offset: usize,
    pub len: usize,
    /// The last PDU of a MaxBurstLength sequence (F bit).
    pub ends_burst: bool,
    /// The last PDU of the answer (F and S bits, status).
    pub last: bool,
}

/// How `len` bytes are cut into Data-In PDUs: at most
/// MaxRecvDataSegmentLength (`seg`) bytes each, in sequences of at most
/// MaxBurstLength (`burst`) bytes.
pub(crate) struct DataInLayout {
    off: usize,
    len: usize,
    seg: usize,
    burst: usize,
}

impl DataInLayout {
    pub(crate) fn new(len: usize, seg: usize, burst: usize) -> DataInLayout {
        DataInLayout { off: 0, len, seg: seg.max(1), burst: burst.max(1) }
    }
}

impl Iterator for DataInLayout {
    type Item = DataInPdu;

    fn next(&mut self) -> Option<DataInPdu> {
        if self.off >= self.len {
            return None;
        }
        let n = self.seg.min(self.len - self.off).min(self.burst - self.off % self.burst);
        let p = DataInPdu { offset: self.off, len: n, ends_burst: (self.off + n) % self.burst == 0, last: self.off + n == self.len };
        self.off += n;
        Some(p)
    }
}

/// Grow a write's data-out buffers to cover `[0, upto)` (pieces of the
/// pool's large size). Returns the bytes added, or `None` if memory ran out.
fn grow(c: &mut IscsiCmd, upto: u32) -> Option<u32> {
    let pool = dma::pool().ok()?;
    let piece = pool.large_size().max(4096) as u32;
    let before = c.allocated;
    while c.allocated < upto {
        let n = (upto - c.allocated).min(piece) as usize;
        let b = match pool.get(n) {
            Some(mut b) => {
                b.set_len(n);
                b
            }
            None => DmaBuf::alloc(n).ok()?,
        };
        c.task.bufs.push(b);
        c.allocated += n as u32;
    }
    Some(c.allocated - before)
}

impl Conn {
    pub(super) fn recycle(self: &Rc<Self>, mut c: Box<IscsiCmd>) {
        c.conn = None;
        c.task.bufs.clear();
        c.task.lent = None;
        c.r2ts.clear();
        c.allocated = 0;
        if c.charged > 0 {
            // Its budget is back: writes waiting for it may go on.
            self.write_bytes.set(self.write_bytes.get().saturating_sub(c.charged as usize));
            c.charged = 0;
            self.resume_waiting_writes();
        }
        let mut free = self.free_cmds.borrow_mut();
        if free.len() < 256 {
            free.push(c);
        }
    }

    pub(super) fn on_scsi_cmd(self: &Rc<Self>, h: &Bhs, data: &[u8]) -> Result<bool, Close> {
        if let Window::Ignore = self.window(h) {
            return Ok(true);
        }
        let Some(s) = self.session() else { return Ok(true) };
        let p = self.st.borrow().params;
        let read = h.flags & 0x40 != 0;
        let write = h.flags & 0x20 != 0;
        let edtl = h.w20.get();
        if !data.is_empty() && (!write || data.len() > p.first_burst as usize || data.len() > edtl as usize) {
            pollux_core::log_fault!(
                self.faults,
                "iscsi: {}: immediate data of {} bytes not allowed (W bit, FirstBurstLength, EDTL): rejected",
                self.ep.peer,
                data.len()
            );
            self.reject(h, reject::PROTOCOL_ERROR);
            return Ok(true);
        }
        if h.immediate() && s.outstanding.get() >= s.queue_depth {
            // Immediate commands bypass the command window: bounded here
            // by the queue depth (RFC 7143 11.17.1, reason 0x06).
            pollux_core::log_fault!(
                self.faults,
                "iscsi: {}: immediate command with {} commands outstanding (queue depth {}): rejected",
                self.ep.peer,
                s.outstanding.get(),
                s.queue_depth
            );
            self.reject(h, reject::IMMEDIATE_COMMAND_REJECT);
            return Ok(true);
        }
        if self.st.borrow().inflight.contains_key(&h.itt()) || self.st.borrow().writes.contains_key(&h.itt()) {
            // A task tag in use.
            self.reject(h, reject::TASK_IN_PROGRESS);
            return Ok(true);
        }
        let mut c = self.free_cmds.borrow_mut().pop().unwrap_or_else(IscsiCmd::new);
        // Bidirectional commands (R and W) are not supported: they end with
        // CHECK CONDITION before running, moving no data either way; their
        // immediate data is dropped, and so is any Data-Out that follows.
        let bidi = read && write;
        let (read, write) = if bidi { (false, false) } else { (read, write) };
        let dir = match (read, write) {
            (true, _) => DataDir::Read,
            (false, true) => DataDir::Write,
            _ => DataDir::None,
        };
        c.task.reset(&h.cdb(), edtl, dir);
        // With a data digest, lent memory would be copied into the send
        // queue for its digest (a burst of large reads grows the queue past
        // its bound and shrinks it again, a reallocation per read): read
        // into pool buffers instead, as a bdev that does not lend.
        c.task.no_lend = self.st.borrow().params.data_digest;
        c.itt = h.itt();
        c.lun_raw = h.lun;
        c.lun = decode_lun(h.lun).unwrap_or(u64::MAX);
        c.edtl = edtl;
        c.read = read;
        c.write = write;
        c.received = 0;
        c.r2t_sn = 0;
        c.unsolicited_data_sn = 0;
        c.early = None;
        s.outstanding.set(s.outstanding.get() + 1);
        if bidi {
            pollux_core::log_fault!(
                self.faults,
                "iscsi: {}: bidirectional command (R and W bits), opcode {:#04x}, refused",
                self.ep.peer,
                c.task.opcode()
            );
            c.want = 0;
            c.early = Some(pollux_scsi::sense::Sense::invalid_cdb_field(0, None));
        } else if write && edtl > MAX_EDTL {
            c.want = 0;
            c.early = Some(pollux_scsi::sense::Sense::invalid_cdb_field(0, None));
        } else {
            c.want = if write { edtl } else { 0 };
        }
        c.allocated = 0;
        c.charged = 0;
        if c.want > 0 {
            let imm = data.len().min(c.want as usize) as u32;
            c.unsolicited_end = if p.initial_r2t { imm } else { p.first_burst.min(c.want).max(imm) };
            if h.flags & 0x80 != 0 {
                // F set: no unsolicited Data-Out follows.
                c.unsolicited_end = imm;
            }
            c.r2t_next = c.unsolicited_end;
            // Buffers for what may come unsolicited (at most the first
            // burst); the rest as it is solicited.
            let upto = c.unsolicited_end;
            let grown = grow(&mut c, upto);
            c.charged = c.allocated;
            self.write_bytes.set(self.write_bytes.get() + c.charged as usize);
            match grown {
                Some(_) => {
                    copy_to_bufs(&mut c.task.bufs, 0, &data[..imm as usize]);
                    c.received = imm;
                }
                None => {
                    c.want = 0;
                    c.early = Some(pollux_scsi::sense::Sense::illegal(pollux_scsi::sense::Asc::INSUFFICIENT_RESOURCES));
                }
            }
        }
        if c.received < c.want {
            let itt = c.itt;
            self.st.borrow_mut().writes.insert(itt, c);
            self.send_r2ts(itt);
            return Ok(true);
        }
        self.execute(c);
        Ok(true)
    }

    /// Solicit more data for a write, up to MaxOutstandingR2T at a time,
    /// taking its buffers as it goes, within the connection's budget.
    fn send_r2ts(self: &Rc<Self>, itt: u32) {
        let p = self.st.borrow().params;
        loop {
            let r = {
                let mut st = self.st.borrow_mut();
                let ttt = st.next_ttt;
                let Some(c) = st.writes.get_mut(&itt) else { return };
                if c.r2t_next >= c.want || c.r2ts.len() >= p.max_outstanding_r2t as usize {
                    return;
                }
                let off = c.r2t_next;
                let len = (c.want - off).min(p.max_burst);
                if c.charged < c.want {
                    // First R2T: charge the rest of the transfer, if the
                    // budget has room (one write alone always goes ahead).
                    let need = (c.want - c.charged) as usize;
                    let spent = self.write_bytes.get();
                    if spent > 0 && spent + need > WRITE_BUDGET {
                        if !st.waiting_r2t.contains(&itt) {
                            st.waiting_r2t.push_back(itt);
                        }
                        return;
                    }
                    self.write_bytes.set(spent + need);
                    c.charged = c.want;
                }
                if grow(c, off + len).is_none() {
                    drop(st);
                    return self.fail_write(itt, pollux_scsi::sense::Sense::illegal(pollux_scsi::sense::Asc::INSUFFICIENT_RESOURCES));
                }
                c.r2t_next += len;
                c.r2ts.push(R2t { ttt, end: off + len, next_data_sn: 0 });
                let sn = c.r2t_sn;
                c.r2t_sn += 1;
                let lun = c.lun_raw;
                st.next_ttt = st.next_ttt.wrapping_add(1).max(1);
                let stat_sn = st.stat_sn;
                (ttt, off, len, sn, lun, stat_sn)
            };
            let (ttt, off, len, sn, lun, stat_sn) = r;
            let mut h = Bhs::new(op::R2T, 0x80);
            h.lun = lun;
            h.itt.set(itt);
            h.w20.set(ttt);
            h.w24.set(stat_sn);
            self.fill_window(&mut h);
            h.w36.set(sn);
            h.w40.set(off);
            h.w44.set(len);
            self.send(&mut h, &[]);
        }
    }

    /// Writes that waited for the budget: solicit their data now, in turn.
    fn resume_waiting_writes(self: &Rc<Self>) {
        loop {
            let next = {
                let mut st = self.st.borrow_mut();
                if self.write_bytes.get() >= WRITE_BUDGET {
                    return;
                }
                st.waiting_r2t.pop_front()
            };
            let Some(itt) = next else { return };
            self.send_r2ts(itt);
            let mut st = self.st.borrow_mut();
            if let Some(at) = st.waiting_r2t.iter().position(|&w| w == itt) {
                // Still over budget: back to the head of the line, and wait
                // (send_r2ts queued it at the tail; the others would go
                // round for ever while the room left fits none of them).
                st.waiting_r2t.remove(at);
                st.waiting_r2t.push_front(itt);
                return;
            }
        }
    }

    /// End a write that waits for data with CHECK CONDITION (its data-out
    /// is no longer accepted).
    fn fail_write(self: &Rc<Self>, itt: u32, sense: pollux_scsi::sense::Sense) {
        let c = self.st.borrow_mut().writes.remove(&itt);
        if let Some(mut c) = c {
            c.early = Some(sense);
            c.want = 0;
            c.received = 0;
            c.task.bufs.clear();
            self.execute(c);
        }
    }

    pub(super) fn on_data_out(self: &Rc<Self>, h: &Bhs, data: &[u8]) -> Result<bool, Close> {
        let itt = h.itt();
        let ttt = h.w20.get();
        let data_sn = h.w36.get();
        let off = h.w40.get();
        // Ok(done) or Err((reject reason, why)).
        let outcome: Result<bool, (u8, String)> = {
            let mut st = self.st.borrow_mut();
            let Some(c) = st.writes.get_mut(&itt) else {
                // Data for a command already answered or aborted: drop it.
                return Ok(true);
            };
            let end = off as u64 + data.len() as u64;
            if off != c.received || end > c.want as u64 {
                Err((reject::PROTOCOL_ERROR, format!("Data-Out at offset {off} (+{}) where {} was expected", data.len(), c.received)))
            } else if ttt == RESERVED_TAG {
                if end > c.unsolicited_end as u64 || data_sn != c.unsolicited_data_sn {
                    Err((reject::PROTOCOL_ERROR, format!("unsolicited Data-Out (DataSN {data_sn}) out of its burst or sequence")))
                } else {
                    c.unsolicited_data_sn += 1;
                    Ok(())
                }
            } else {
                match c.r2ts.iter_mut().find(|r| r.ttt == ttt) {
                    None => Err((reject::INVALID_PDU_FIELD, format!("Data-Out with unknown TTT {ttt:#x}"))),
                    Some(r) if data_sn != r.next_data_sn || end > r.end as u64 => {
                        Err((reject::PROTOCOL_ERROR, format!("Data-Out DataSN {data_sn} where {} was expected", r.next_data_sn)))
                    }
                    Some(r) => {
                        r.next_data_sn += 1;
                        if end == r.end as u64 {
                            c.r2ts.retain(|r| r.ttt != ttt);
                        }
                        Ok(())
                    }
                }
            }
            .map(|()| {
                copy_to_bufs(&mut c.task.bufs, off as usize, data);
                c.received += data.len() as u32;
                c.received == c.want
            })
        };
        match outcome {
            Ok(true) => {
                let c = self.st.borrow_mut().writes.remove(&itt);
                if let Some(c) = c {
                    self.execute(c);
                }
            }
            Ok(false) => self.send_r2ts(itt),
            Err((reason, why)) => {
                // Reject the PDU and end its command with CHECK CONDITION;
                // later Data-Out of that command is dropped. The
                // connection and its other commands go on.
                pollux_core::log_fault!(self.faults, "iscsi: {}: {why}", self.ep.peer);
                self.reject(h, reason);
                let c = self.st.borrow_mut().writes.remove(&itt);
                if let Some(mut c) = c {
                    c.early = Some(pollux_scsi::sense::Sense::new(
                        pollux_scsi::sense::SenseKey::AbortedCommand,
                        pollux_scsi::sense::Asc::DATA_PHASE_ERROR,
                    ));
                    c.want = 0;
                    c.received = 0;
                    c.task.bufs.clear();
                    self.execute(c);
                }
            }
        }
        Ok(true)
    }

    /// Hand a command with all its data to the SCSI layer.
    fn execute(self: &Rc<Self>, mut c: Box<IscsiCmd>) {
        let Some(s) = self.session() else { return self.recycle(c) };
        c.task.data_len = c.received as usize;
        c.conn = Some(self.clone());
        self.st.borrow_mut().inflight.insert(c.itt, Inflight::new(c.lun));
        if let Some(sense) = c.early.take() {
            c.task.fail(sense);
            return c.complete();
        }
        let Some(dev) = s.device.clone() else { return c.complete() };
        if c.task.opcode() == pollux_scsi::cdb::op::REPORT_LUNS {
            return dev.report_luns(c);
        }
        match s.port(c.lun) {
            Some(p) => p.execute(c),
            None => dev.no_lun(c),
        }
    }

    /// The SCSI layer finished a command: answer it.
    pub(super) fn scsi_done(self: &Rc<Self>, mut c: Box<IscsiCmd>) {
        let entry = self.st.borrow_mut().inflight.remove(&c.itt);
        if let Some(s) = self.session() {
            s.outstanding.set(s.outstanding.get().saturating_sub(1));
        }
        let (fate, drains) = entry.map_or((Fate::Silent, Vec::new()), |e| (e.fate, e.drains));
        if fate == Fate::TaskAborted {
            c.task.set_status(pollux_scsi::sense::status::TASK_ABORTED);
        }
        if fate == Fate::Silent || self.is_closed() {
            self.recycle(c);
        } else {
            self.answer(c);
        }
        // Task management functions waiting for this task may answer now.
        for d in drains {
            d.release();
        }
    }

    /// End a command that waits for Data-Out with a bare status (a reset
    /// from another session aborted it).
    pub(super) fn end_with_status(self: &Rc<Self>, mut c: Box<IscsiCmd>, status: u8) {
        c.want = 0;
        c.received = 0;
        c.task.bufs.clear();
        c.task.set_status(status);
        c.conn = Some(self.clone());
        self.st.borrow_mut().inflight.insert(c.itt, Inflight::new(c.lun));
        c.complete();
    }

    /// Send a finished command's Data-In and status, or its SCSI Response.
    fn answer(self: &Rc<Self>, mut c: Box<IscsiCmd>) {
        let t = &c.task;
        let good = t.is_good();
        let xfer = t.xfer_len.min(u32::MAX as u64) as u32;
        let edtl = c.edtl as usize;
        // Data-In carries what the command read, up to the EDTL: whatever
        // is not sent is counted in the residual.
        let have: usize = t.bufs.iter().map(|b| b.len()).sum::<usize>() + t.lent.as_ref().map_or(0, |l| l.len());
        let send_len = if c.read && good { t.data_len.min(edtl).min(have) } else { 0 };
        self.counts.command(good, send_len as u64, if c.write { u64::from(c.received) } else { 0 });
        let (flags, residual) = data_in_residual(good, c.read, xfer, c.edtl, send_len as u32);
        let p = self.st.borrow().params;
        let mut data_sn = 0u32;
        if send_len > 0 {
            let (status, lun, itt) = (t.status, c.lun_raw, c.itt);
            let layout = DataInLayout::new(send_len, p.max_send_seg as usize, p.max_burst as usize);
            // The buffers go to the socket layer as the PDUs take them.
            // Memory the bdev lent (then there are no buffers), or the
            // buffers the read filled.
            let lent = c.task.lent.take().map(OutBuf::Lent);
            let mut src = BufSource::new(lent.into_iter().chain(c.task.bufs.drain(..).map(OutBuf::Dma)));
            for pdu in layout {
                let mut h = Bhs::new(op::DATA_IN, 0);
                if pdu.last {
                    h.flags = 0x80 | 0x01 | flags;
                    h.b3 = status;
                    h.w24.set(self.next_stat_sn());
                    h.w44.set(residual);
                } else if pdu.ends_burst {
                    h.flags = 0x80;
                }
                h.lun = lun;
                h.itt.set(itt);
                h.w20.set(RESERVED_TAG);
                self.fill_window(&mut h);
                h.w36.set(data_sn);
                h.w40.set(pdu.offset as u32);
                data_sn += 1;
                self.send_from_bufs(&mut h, pdu.len, &mut src);
            }
            drop(src);
            return self.recycle(c);
        }
        let mut h = Bhs::new(op::SCSI_RESP, 0x80 | flags);
        h.b3 = t.status;
        h.itt.set(c.itt);
        h.w24.set(self.next_stat_sn());
        self.fill_window(&mut h);
        h.w36.set(if c.read { data_sn } else { c.r2t_sn });
        h.w44.set(residual);
        let sense = t.sense();
        if sense.is_empty() {
            self.send(&mut h, &[]);
        } else {
            let len = (sense.len() as u16).to_be_bytes();
            self.send(&mut h, &[&len, sense]);
        }
        self.recycle(c);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{DataInLayout, data_in_residual};

    proptest! {
        /// Every byte of a read goes out exactly once, in order, in PDUs of
        /// at most MaxRecvDataSegmentLength that never cross a
        /// MaxBurstLength sequence, whatever the two were negotiated to.
        #[test]
        fn data_in_pdus_cover_the_read_within_the_negotiated_limits(
            len in 1usize..(40 << 20),
            seg in 512usize..(1 << 24),
            burst in 512usize..(1 << 24),
        ) {
            let mut next = 0;
            let mut count = 0;
            for p in DataInLayout::new(len, seg, burst) {
                prop_assert_eq!(p.offset, next);
                prop_assert!(p.len > 0 && p.len <= seg);
                prop_assert_eq!(p.offset / burst, (p.offset + p.len - 1) / burst, "PDU crosses a burst");
                prop_assert_eq!(p.ends_burst, (p.offset + p.len) % burst == 0);
                next += p.len;
                count += 1;
                prop_assert_eq!(p.last, next == len);
                prop_assert!(count <= len / 512 + 2);
            }
            prop_assert_eq!(next, len);
        }

        /// What a read sends plus its underflow residual is its EDTL; an
        /// overflow is reported only when the whole EDTL was sent.
        #[test]
        fn read_residuals_account_for_every_byte(xfer in 0u32..(64 << 20), edtl in 0u32..(64 << 20), sent_cap in 0u32..(64 << 20)) {
            let sent = xfer.min(edtl).min(sent_cap);
            let (flags, residual) = data_in_residual(true, true, xfer, edtl, sent);
            match flags {
                0x02 => prop_assert_eq!(sent + residual, edtl),
                0x04 => { prop_assert_eq!(sent, edtl); prop_assert_eq!(residual, xfer - edtl); }
                0 => { prop_assert_eq!(sent, edtl); prop_assert!(xfer <= edtl); }
                f => prop_assert!(false, "flags {f:#x}"),
            }
        }
    }
}
