//! The RDMA wire of a host queue pair (NVMe over Fabrics RDMA Transport
//! Specification 1.0): an RDMA CM connection whose event channel and
//! completion channel fds sit in the reactor's [`ClientGroup`] under the
//! queue pair's token.
//!
//! Connecting: resolve the address, then the route, then make the queue
//! pair (a completion queue, registered buffers, receives posted) and
//! connect with the NVMe/RDMA private data (queue id, HRQSIZE, HSQSIZE);
//! the controller's accept gives its receive queue size (commands
//! outstanding at most), its reject a status that becomes the error.
//!
//! Each command slot owns a capsule buffer (the 64-byte command, then
//! in-capsule data on I/O queues) and a data buffer of the largest
//! transfer: the controller reads write data from it and writes read data
//! into it (RDMA READ/WRITE through a keyed SGL), copied from and to the
//! request's buffers. Responses land in receive buffers of 16 bytes, one
//! more than the commands that may be outstanding, posted again as one
//! chain per pass. Every SEND is signaled: a slot's capsule buffer is
//! reused only after its SEND completed, so a response that comes first
//! waits for it.

// Posting work requests is unsafe (the device uses the memory until the
// request completes): each post says why its memory stays valid.
#![allow(unsafe_code)]

use std::rc::Rc;

use pollux_core::sock::ClientGroup;
use pollux_nvme_spec::cmd::{Command, Completion, SglDescriptor};
use pollux_nvme_spec::rdma as cm_data;
use pollux_rdma::sys::{IBV_WC_RECV, IBV_WC_SUCCESS, IBV_WC_WR_FLUSH_ERR, ibv_sge, ibv_wc};
use pollux_rdma::{
    CmEvent, CmEventKind, CmId, CompletionChannel, CompletionQueue, ConnParam, EventChannel, MemoryRegion, ProtectionDomain, QpCaps,
    SendOp, SendWr,
};
use zerocopy::{FromBytes, IntoBytes};

use super::{Data, Done, FailCb, Link, Phase, Qpair, QpairConfig, ReadyCb, Slot, State, Wire};
use crate::HostError;

const CMD: usize = 64;
const RESP: usize = 16;
/// Work request kinds, in bits 32.. of a wr_id (the slot or receive
/// buffer index below).
const WR_RECV: u64 = 1 << 32;
const WR_SEND: u64 = 2 << 32;
/// Sends posted as one chain at most.
const CHAIN: usize = 16;
/// What the CM may take to resolve an address or a route (the queue
/// pair's connect timeout bounds the whole).
const RESOLVE_MS: i32 = 2000;
/// RDMA READs the controller may have outstanding against our buffers.
const RESPONDER_RESOURCES: u8 = 16;

/// The registered memory of a queue pair: each region before the memory
/// it covers (dropped first).
struct Bufs {
    send_mr: MemoryRegion,
    recv_mr: MemoryRegion,
    data_mr: MemoryRegion,
    send: Box<[u8]>,
    recv: Box<[u8]>,
    data: Box<[u8]>,
}

/// What a closing queue pair lets go of (its QP first).
pub(super) struct Released {
    _cm: Option<CmId>,
    _bufs: Option<Bufs>,
    _cq: Option<Rc<CompletionQueue>>,
    _cch: Option<Rc<CompletionChannel>>,
}

pub(super) struct RdmaWire {
    /// Declared first: dropping it destroys the QP before the memory goes.
    cm: Option<CmId>,
    bufs: Option<Bufs>,
    cq: Option<Rc<CompletionQueue>>,
    cch: Option<Rc<CompletionChannel>>,
    ch: Rc<EventChannel>,
    qid: u16,
    /// Command slots.
    depth: u16,
    /// Bytes of a slot's capsule buffer: the command and in-capsule data.
    capsule: usize,
    /// Bytes of a slot's data buffer.
    data_len: usize,
    connected: bool,
    /// Capsules to send: slot, length.
    pending: Vec<(u16, u32)>,
    /// Receive buffers whose responses were taken, to post again.
    repost: Vec<u16>,
    recv_wrs: Vec<(u64, ibv_sge)>,
    /// Per slot: its SEND has not completed; a response that came first.
    sending: Vec<bool>,
    early: Vec<Option<Completion>>,
}

fn rdma_err(addr: std::net::SocketAddr) -> impl Fn(pollux_rdma::Error) -> HostError {
    move |e| HostError::Connect(addr.to_string(), e.to_string())
}

/// Start connecting queue `qid` to `cfg.addr` over RDMA.
pub(super) fn connect(
    group: Rc<ClientGroup<Qpair>>,
    cfg: QpairConfig,
    qid: u16,
    on_ready: ReadyCb,
    on_fail: FailCb,
) -> Result<Rc<Qpair>, HostError> {
    let err = rdma_err(cfg.addr);
    let ch =
        EventChannel::new().map_err(|e| HostError::Connect(cfg.addr.to_string(), format!("RDMA is not available on this machine: {e}")))?;
    let cm = CmId::new(&ch, 0).map_err(&err)?;
    cm.resolve_addr(cfg.addr, RESOLVE_MS).map_err(&err)?;
    if cfg.hostaddr.is_some() {
        tracing::warn!("nvmf host: queue {qid} to {}: a host address is not used over RDMA", cfg.addr);
    }
    let depth = cfg.depth.max(1);
    // An admin queue takes no in-capsule data over RDMA.
    let inline = if qid == 0 { 0 } else { cfg.in_capsule as usize };
    let wire = RdmaWire {
        cm: Some(cm),
        bufs: None,
        cq: None,
        cch: None,
        ch: ch.clone(),
        qid,
        depth,
        capsule: CMD + inline,
        data_len: cfg.max_transfer.max(4096) as usize,
        connected: false,
        pending: Vec::with_capacity(usize::from(depth)),
        repost: Vec::with_capacity(usize::from(depth) + 1),
        recv_wrs: Vec::with_capacity(usize::from(depth) + 1),
        sending: vec![false; usize::from(depth)],
        early: vec![None; usize::from(depth)],
    };
    let fd = ch.fd();
    let st = State::new(cfg, Wire::Rdma(Box::new(wire)), on_ready, on_fail);
    let token = group.next_token();
    let qp = Rc::new(Qpair { token, qid, group: group.clone(), link: Link::Rdma(fd), st: std::cell::RefCell::new(st) });
    let add = group.add(&qp, fd, token).and_then(|()| group.watch(fd, token, true, false));
    add.map_err(|e| HostError::Connect(qp.peer(), e.to_string()))?;
    Ok(qp)
}

impl RdmaWire {
    pub(super) fn has_output(&self) -> bool {
        !self.pending.is_empty() || !self.repost.is_empty()
    }

    /// Make the QP, its completion queue and registered buffers, post the
    /// receives (the route is resolved).
    fn setup(&mut self) -> Result<(), pollux_rdma::Error> {
        let Some(cm) = self.cm.as_mut() else { return Ok(()) };
        let dev = cm.device().ok_or_else(|| pollux_rdma::Error::CreateQp(std::io::Error::other("the CM id has no device")))?;
        let pd = ProtectionDomain::new(dev)?;
        let cch = CompletionChannel::new(dev)?;
        let n = u32::from(self.depth);
        let cq = CompletionQueue::new(dev, 2 * n + 2, Some(cch.clone()))?;
        let caps = QpCaps { max_send_wr: n, max_recv_wr: n + 1, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 };
        cm.create_qp(&pd, &cq, &cq, caps)?;
        let depth = usize::from(self.depth);
        let mut send = vec![0u8; self.capsule * depth].into_boxed_slice();
        let mut recv = vec![0u8; RESP * (depth + 1)].into_boxed_slice();
        let mut data = vec![0u8; self.data_len * depth].into_boxed_slice();
        // The three registrations: each buffer is a Box kept in the same
        // `Bufs` as its region, declared after it (so it is freed after
        // the region is deregistered), its heap memory never moves, and the
        // QP that may use it is destroyed before both (`cm` is dropped
        // first, see `RdmaWire` and `Released`).
        // SAFETY: as just said.
        let send_mr = unsafe { pd.register_local(send.as_mut_ptr(), send.len()) }?;
        // SAFETY: as above.
        let recv_mr = unsafe { pd.register_local(recv.as_mut_ptr(), recv.len()) }?;
        // SAFETY: as above.
        let data_mr = unsafe { pd.register(data.as_mut_ptr(), data.len()) }?;
        let bufs = Bufs { send_mr, recv_mr, data_mr, send, recv, data };
        self.recv_wrs.clear();
        for i in 0..=self.depth {
            let at = bufs.recv_mr.addr() + (usize::from(i) * RESP) as u64;
            self.recv_wrs.push((WR_RECV | u64::from(i), bufs.recv_mr.sge(at, RESP as u32)));
        }
        // SAFETY: the receive buffers live in `bufs` until after the QP is
        // destroyed, and nothing reads a buffer until its receive completed.
        unsafe { cm.post_recv_chain(&self.recv_wrs) }?;
        cq.arm()?;
        self.bufs = Some(bufs);
        self.cq = Some(cq);
        self.cch = Some(cch);
        Ok(())
    }

    /// Write command `cmd` (slot `cid`) in its capsule buffer, its data
    /// in the capsule or in the slot's data buffer (a keyed SGL names it),
    /// and queue the SEND. Returns the bytes to the controller that moved.
    pub(super) fn send(&mut self, cid: u16, cmd: &mut Command, data: Data<'_>) -> Result<u32, HostError> {
        let (capsule, data_len) = (self.capsule, self.data_len);
        let Some(b) = self.bufs.as_mut() else { return Err(HostError::Closed) };
        let slot = usize::from(cid);
        let keyed = |b: &Bufs, len: usize| -> Result<SglDescriptor, HostError> {
            if len > data_len {
                return Err(HostError::Invalid(format!("a {len}-byte transfer over the queue pair's {data_len}-byte buffers")));
            }
            Ok(SglDescriptor::keyed(b.data_mr.addr() + (slot * data_len) as u64, len as u32, b.data_mr.rkey()))
        };
        let mut len = CMD;
        let moved = match data {
            // No data: a null keyed descriptor (as Linux's host sends; a
            // transport data block is TCP's and nvmet-rdma refuses it).
            Data::None => {
                cmd.dptr.set_sgl(SglDescriptor::keyed(0, 0, 0));
                0
            }
            Data::ToHost(n) => {
                let d = keyed(b, n as usize)?;
                cmd.dptr.set_sgl(d);
                0
            }
            Data::Inline(src) if src.len() <= capsule - CMD => {
                let at = slot * capsule + CMD;
                src.copy_to(&mut b.send[at..at + src.len()]);
                len += src.len();
                src.len() as u32
            }
            Data::Inline(src) | Data::FromHost(src) => {
                let d = keyed(b, src.len())?;
                let at = slot * data_len;
                src.copy_to(&mut b.data[at..at + src.len()]);
                cmd.dptr.set_sgl(d);
                src.len() as u32
            }
        };
        let at = slot * capsule;
        b.send[at..at + CMD].copy_from_slice(cmd.as_bytes());
        self.pending.push((cid, len as u32));
        self.sending[slot] = true;
        Ok(moved)
    }

    /// Post the receives taken back and the queued capsules.
    pub(super) fn post(&mut self) -> Result<(), pollux_rdma::Error> {
        let (Some(cm), Some(b)) = (self.cm.as_ref(), self.bufs.as_ref()) else { return Ok(()) };
        if !self.repost.is_empty() {
            self.recv_wrs.clear();
            for &i in &self.repost {
                let at = b.recv_mr.addr() + (usize::from(i) * RESP) as u64;
                self.recv_wrs.push((WR_RECV | u64::from(i), b.recv_mr.sge(at, RESP as u32)));
            }
            self.repost.clear();
            // SAFETY: as in `setup`; these buffers' responses were taken.
            unsafe { cm.post_recv_chain(&self.recv_wrs) }?;
        }
        for part in self.pending.chunks(CHAIN) {
            let sges: [ibv_sge; CHAIN] = std::array::from_fn(|i| {
                part.get(i).map_or_else(ibv_sge::default, |&(cid, len)| {
                    b.send_mr.sge(b.send_mr.addr() + (usize::from(cid) * self.capsule) as u64, len)
                })
            });
            let wrs: [SendWr<'_>; CHAIN] = std::array::from_fn(|i| SendWr {
                wr_id: WR_SEND | part.get(i).map_or(0, |&(cid, _)| u64::from(cid)),
                op: SendOp::Send,
                sge: std::slice::from_ref(&sges[i]),
                signaled: true,
            });
            // SAFETY: the capsule buffers live in `bufs` until after the QP
            // is destroyed; a slot's buffer is not written again until its
            // SEND completed (`sending`).
            unsafe { cm.post_send_chain(&wrs[..part.len()]) }?;
        }
        self.pending.clear();
        Ok(())
    }
}

impl State {
    /// Disconnect and hand over what the RDMA wire holds, to be dropped
    /// (the QP first); its completion channel leaves the group.
    pub(super) fn rdma_release(&mut self, group: &ClientGroup<Qpair>) -> Option<Released> {
        let Wire::Rdma(r) = &mut self.wire else { return None };
        if let Some(cch) = &r.cch {
            group.remove_fd(cch.fd());
        }
        if let Some(cm) = &r.cm {
            if r.connected {
                let _ = cm.disconnect();
            }
        }
        r.connected = false;
        r.pending.clear();
        r.repost.clear();
        Some(Released { _cm: r.cm.take(), _bufs: r.bufs.take(), _cq: r.cq.take(), _cch: r.cch.take() })
    }

    /// One work completion.
    fn on_wc(&mut self, w: &ibv_wc, done: &mut Vec<Done>) -> Result<(), HostError> {
        let peer = self.cfg.addr;
        if w.status != IBV_WC_SUCCESS {
            if w.status == IBV_WC_WR_FLUSH_ERR {
                return Err(HostError::Transport(format!("{peer}: the queue pair was flushed (disconnected)")));
            }
            let why = pollux_rdma::lib().map_or("?", |l| l.wc_status_str(w.status));
            return Err(HostError::Transport(format!("{peer}: work completion error: {why} (vendor error {:#x})", w.vendor_err)));
        }
        let Wire::Rdma(r) = &mut self.wire else { return Ok(()) };
        let idx = (w.wr_id & 0xffff) as u16;
        if w.wr_id & WR_RECV != 0 && w.opcode & IBV_WC_RECV != 0 {
            let Some(b) = r.bufs.as_ref() else { return Ok(()) };
            if (w.byte_len as usize) < RESP || idx > r.depth {
                return Err(HostError::Transport(format!("{peer}: a response of {} bytes", w.byte_len)));
            }
            let at = usize::from(idx) * RESP;
            let cqe = Completion::read_from_bytes(&b.recv[at..at + RESP]).expect("16 bytes");
            r.repost.push(idx);
            let cid = usize::from(cqe.cid.get());
            if r.sending.get(cid).copied().unwrap_or(false) {
                // Its SEND has not completed yet: settle it once it has.
                r.early[cid] = Some(cqe);
                return Ok(());
            }
            return self.rdma_complete(cqe, done);
        }
        if w.wr_id & WR_SEND != 0 {
            let cid = usize::from(idx);
            if let Some(s) = r.sending.get_mut(cid) {
                *s = false;
            }
            if let Some(cqe) = r.early.get_mut(cid).and_then(Option::take) {
                return self.rdma_complete(cqe, done);
            }
        }
        Ok(())
    }

    /// A response: the data the controller wrote into the slot's buffer
    /// goes to the request, then the command completes as on any wire.
    fn rdma_complete(&mut self, cqe: Completion, done: &mut Vec<Done>) -> Result<(), HostError> {
        let cid = usize::from(cqe.cid.get());
        let State { wire, slots, parents, .. } = self;
        if let (Wire::Rdma(r), true) = (&*wire, cqe.status().is_success()) {
            if let Some(b) = r.bufs.as_ref() {
                let data = b.data.get(cid * r.data_len..(cid + 1) * r.data_len).unwrap_or(&[]);
                match slots.get_mut(cid) {
                    Some(Slot::Io { parent, off, len, to_host: true, moved, .. }) if (*len as usize) <= data.len() => {
                        if let Some(io) = parents.get_mut(*parent as usize).and_then(|p| p.io.as_mut()) {
                            io.copy_in(*off as usize, &data[..*len as usize]);
                        }
                        *moved = *len;
                    }
                    Some(Slot::Admin { data: buf, to_host: true, received, .. }) if buf.len() <= data.len() => {
                        let n = buf.len();
                        buf.copy_from_slice(&data[..n]);
                        *received = n;
                    }
                    _ => {}
                }
            }
        }
        self.complete(cqe, done)
    }
}

impl Qpair {
    /// The CM event channel or the completion channel is readable.
    pub(super) fn rdma_events(self: &Rc<Self>) {
        loop {
            let ev = {
                let st = self.st.borrow();
                if st.phase == Phase::Closed {
                    return;
                }
                let Wire::Rdma(r) = &st.wire else { return };
                r.ch.next()
            };
            match ev {
                Ok(Some(ev)) => {
                    if let Err(e) = self.on_cm_event(ev) {
                        return self.fail(e);
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(HostError::Transport(e.to_string())),
            }
        }
        self.poll_cq();
    }

    fn on_cm_event(self: &Rc<Self>, ev: CmEvent) -> Result<(), HostError> {
        let addr = self.st.borrow().cfg.addr;
        let refused = |why: String| HostError::Connect(addr.to_string(), why);
        match ev.kind() {
            CmEventKind::AddrResolved => {
                let st = self.st.borrow();
                if let Wire::Rdma(r) = &st.wire {
                    if let Some(cm) = &r.cm {
                        cm.resolve_route(RESOLVE_MS).map_err(rdma_err(addr))?;
                    }
                }
            }
            CmEventKind::RouteResolved => {
                let mut st = self.st.borrow_mut();
                let depth = st.cfg.depth.max(1);
                let Wire::Rdma(r) = &mut st.wire else { return Ok(()) };
                r.setup().map_err(rdma_err(addr))?;
                if let Some(cch) = &r.cch {
                    let fd = cch.fd();
                    self.group
                        .add_fd(fd, self.token)
                        .and_then(|()| self.group.watch(fd, self.token, true, false))
                        .map_err(|e| refused(e.to_string()))?;
                }
                let req = cm_data::Request { recfmt: cm_data::RECFMT, qid: r.qid, hrqsize: depth + 1, hsqsize: depth }.to_bytes();
                let p = ConnParam {
                    private_data: &req,
                    responder_resources: RESPONDER_RESOURCES,
                    initiator_depth: 0,
                    retry_count: 7,
                    rnr_retry_count: 7,
                };
                if let Some(cm) = &r.cm {
                    cm.connect(&p).map_err(rdma_err(addr))?;
                }
            }
            CmEventKind::Established => {
                let crqsize = cm_data::parse_accept(ev.private_data());
                let ready = {
                    let mut st = self.st.borrow_mut();
                    let st = &mut *st;
                    let Wire::Rdma(r) = &mut st.wire else { return Ok(()) };
                    r.connected = true;
                    let Some(crqsize) = crqsize.filter(|&c| c > 0) else {
                        return Err(refused(format!("malformed accept private data {:02x?}", ev.private_data())));
                    };
                    // No more commands outstanding than the controller takes.
                    if crqsize < r.depth {
                        st.free.retain(|&c| c < crqsize);
                    }
                    st.phase = Phase::Ready;
                    st.on_ready.take()
                };
                if let Some(cb) = ready {
                    cb(Ok(()));
                }
                let mut st = self.st.borrow_mut();
                st.issue_waiting();
                drop(st);
                self.kick();
            }
            CmEventKind::Rejected => {
                let why = match cm_data::parse_reject(ev.private_data()) {
                    Some(sts) => format!("queue rejected: {} ({sts})", cm_data::reject::name(sts)),
                    None => format!("queue rejected (reason {})", ev.status()),
                };
                return Err(refused(why));
            }
            CmEventKind::AddrError | CmEventKind::RouteError | CmEventKind::Unreachable | CmEventKind::ConnectError => {
                let e = std::io::Error::from_raw_os_error(-ev.status());
                return Err(refused(format!("{}: {e}", ev.name())));
            }
            CmEventKind::Disconnected | CmEventKind::DeviceRemoval => {
                if let Wire::Rdma(r) = &mut self.st.borrow_mut().wire {
                    r.connected = false;
                }
                return Err(HostError::Transport(format!("{addr}: {}", ev.name())));
            }
            _ => {}
        }
        Ok(())
    }

    /// Take the completions; arm the completion queue once it is empty,
    /// then look once more (a completion between the last poll and the
    /// arming raised no event).
    fn poll_cq(&self) {
        let Some(cq) = (match &self.st.borrow().wire {
            Wire::Rdma(r) => r.cq.clone(),
            Wire::Tcp(_) => None,
        }) else {
            return;
        };
        // Woken by a readable fd: take what the channel has first, then
        // poll (no completion is left behind an event taken).
        if let Err(e) = cq.take_events(true) {
            return self.fail(HostError::Transport(e.to_string()));
        }
        let mut wc = [ibv_wc::default(); 32];
        let mut armed = false;
        loop {
            let n = match cq.poll(&mut wc) {
                Ok(n) => n,
                Err(e) => return self.fail(HostError::Transport(e.to_string())),
            };
            if n == 0 {
                if armed {
                    return;
                }
                armed = true;
                if let Err(e) = cq.arm() {
                    return self.fail(HostError::Transport(e.to_string()));
                }
                continue;
            }
            let r = {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                if st.phase == Phase::Closed {
                    return;
                }
                let mut done = std::mem::take(&mut st.done);
                let mut res = Ok(());
                for w in &wc[..n] {
                    if let Err(e) = st.on_wc(w, &mut done) {
                        res = Err(e);
                        break;
                    }
                }
                if res.is_ok() {
                    st.issue_waiting();
                }
                res.map(|()| done)
            };
            match r {
                Ok(done) => self.finish(done),
                Err(e) => return self.fail(e),
            }
        }
    }
}
