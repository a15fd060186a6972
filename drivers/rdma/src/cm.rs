//! The connection manager: event channels, CM ids (listening, or one end
//! of a connection with its queue pair) and their events, with the
//! private data NVMe-oF exchanges when connecting.
//!
//! An [`EventChannel`]'s fd is nonblocking: a reactor waits for it to be
//! readable, then takes events with [`EventChannel::next`]. An event is
//! acknowledged when dropped; a connection request becomes the new
//! connection's [`CmId`] with [`CmEvent::into_request`], which copies what
//! it carried and acknowledges it first (a CM id cannot be destroyed while
//! an event about it is unacknowledged).

use std::ffi::c_void;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr;
use std::rc::Rc;

use crate::sys::{self, ibv_sge, rdma_cm_event, rdma_cm_id, rdma_event_channel};
use crate::verbs::{CompletionQueue, Device, ProtectionDomain, SharedReceiveQueue, set_nonblocking};
use crate::{Error, lib};

/// Largest private data in a CM message (its length is a u8).
pub const MAX_PRIVATE_DATA: usize = 255;

/// A channel CM events arrive on.
#[derive(Debug)]
pub struct EventChannel {
    ch: *mut rdma_event_channel,
}

impl EventChannel {
    /// A new channel, its fd nonblocking. Fails with a clear error on a
    /// machine without RDMA (no libraries, or no `/dev/infiniband/rdma_cm`).
    pub fn new() -> Result<Rc<EventChannel>, Error> {
        let lib = lib()?;
        // SAFETY: no arguments; returns an owned channel or null.
        let ch = unsafe { (lib.rdma_create_event_channel)() };
        if ch.is_null() {
            return Err(Error::CreateEventChannel(io::Error::last_os_error()));
        }
        let c = EventChannel { ch };
        set_nonblocking(c.fd()).map_err(Error::CreateEventChannel)?;
        Ok(Rc::new(c))
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is live; its fd never changes.
        unsafe { (*self.ch).fd }
    }

    /// The next event, or None if there is none now.
    pub fn next(self: &Rc<Self>) -> Result<Option<CmEvent>, Error> {
        let lib = lib()?;
        let mut ev: *mut rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is live and nonblocking; `ev` is writable.
        let rc = unsafe { (lib.rdma_get_cm_event)(self.ch, &mut ev) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::GetCmEvent(e));
        }
        Ok(Some(CmEvent { ev, ch: self.clone() }))
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: every id and event on the channel holds an Rc to it,
            // so none is left (events are acknowledged when dropped).
            unsafe { (lib.rdma_destroy_event_channel)(self.ch) };
        }
    }
}

/// What a CM event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmEventKind {
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    ConnectRequest,
    ConnectResponse,
    ConnectError,
    Unreachable,
    Rejected,
    Established,
    Disconnected,
    DeviceRemoval,
    TimewaitExit,
    AddrChange,
    Other(u32),
}

impl CmEventKind {
    fn from_raw(e: u32) -> CmEventKind {
        use CmEventKind::*;
        match e {
            sys::RDMA_CM_EVENT_ADDR_RESOLVED => AddrResolved,
            sys::RDMA_CM_EVENT_ADDR_ERROR => AddrError,
            sys::RDMA_CM_EVENT_ROUTE_RESOLVED => RouteResolved,
            sys::RDMA_CM_EVENT_ROUTE_ERROR => RouteError,
            sys::RDMA_CM_EVENT_CONNECT_REQUEST => ConnectRequest,
            sys::RDMA_CM_EVENT_CONNECT_RESPONSE => ConnectResponse,
            sys::RDMA_CM_EVENT_CONNECT_ERROR => ConnectError,
            sys::RDMA_CM_EVENT_UNREACHABLE => Unreachable,
            sys::RDMA_CM_EVENT_REJECTED => Rejected,
            sys::RDMA_CM_EVENT_ESTABLISHED => Established,
            sys::RDMA_CM_EVENT_DISCONNECTED => Disconnected,
            sys::RDMA_CM_EVENT_DEVICE_REMOVAL => DeviceRemoval,
            sys::RDMA_CM_EVENT_TIMEWAIT_EXIT => TimewaitExit,
            sys::RDMA_CM_EVENT_ADDR_CHANGE => AddrChange,
            other => Other(other),
        }
    }
}

/// One CM event, acknowledged when dropped.
#[derive(Debug)]
pub struct CmEvent {
    ev: *mut rdma_cm_event,
    ch: Rc<EventChannel>,
}

impl CmEvent {
    fn raw(&self) -> &rdma_cm_event {
        // SAFETY: the library keeps the event unchanged until it is
        // acknowledged (in drop).
        unsafe { &*self.ev }
    }

    pub fn kind(&self) -> CmEventKind {
        CmEventKind::from_raw(self.raw().event)
    }

    /// The library's name for the event ("RDMA_CM_EVENT_ESTABLISHED").
    pub fn name(&self) -> &'static str {
        lib().map_or("?", |l| l.event_str(self.raw().event))
    }

    /// 0, a negative errno, or (Rejected) the peer's reject reason.
    pub fn status(&self) -> i32 {
        self.raw().status
    }

    /// The `context` of the id the event is about (for a connection
    /// request: of the listening id).
    pub fn context(&self) -> u64 {
        let r = self.raw();
        let id = if r.event == sys::RDMA_CM_EVENT_CONNECT_REQUEST { r.listen_id } else { r.id };
        if id.is_null() {
            return 0;
        }
        // SAFETY: the id lives at least until the event is acknowledged.
        unsafe { (*id).context as u64 }
    }

    /// The private data of a connection request, response, establishment
    /// or rejection (empty for other events).
    pub fn private_data(&self) -> &[u8] {
        let r = self.raw();
        match r.event {
            sys::RDMA_CM_EVENT_CONNECT_REQUEST
            | sys::RDMA_CM_EVENT_CONNECT_RESPONSE
            | sys::RDMA_CM_EVENT_ESTABLISHED
            | sys::RDMA_CM_EVENT_REJECTED => {
                // SAFETY: for these events `param.conn` is the member set.
                let c = unsafe { r.param.conn };
                if c.private_data.is_null() || c.private_data_len == 0 {
                    return &[];
                }
                // SAFETY: the library keeps the private data with the event
                // until it is acknowledged.
                unsafe { std::slice::from_raw_parts(c.private_data.cast::<u8>(), c.private_data_len as usize) }
            }
            _ => &[],
        }
    }

    /// A connection request: the new connection's id (owned from now on,
    /// with `context` set), what the peer sent, and its RDMA READ depths.
    /// The event is acknowledged here. None if this is not a request.
    pub fn into_request(self, context: u64) -> Option<ConnectRequest> {
        let r = *self.raw();
        if r.event != sys::RDMA_CM_EVENT_CONNECT_REQUEST || r.id.is_null() {
            return None;
        }
        // SAFETY: `param.conn` is the member a connection request sets.
        let c = unsafe { r.param.conn };
        let private_data = self.private_data().to_vec();
        // SAFETY: the new id is ours to set up until we accept or reject.
        unsafe { (*r.id).context = context as *mut c_void };
        let ch = self.ch.clone();
        drop(self);
        Some(ConnectRequest {
            id: CmId { id: r.id, has_qp: false, _ch: ch, _pd: None, _cqs: Vec::new(), _srq: None },
            private_data,
            responder_resources: c.responder_resources,
            initiator_depth: c.initiator_depth,
        })
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: the event came from rdma_get_cm_event and is
            // acknowledged once.
            unsafe { (lib.rdma_ack_cm_event)(self.ev) };
        }
    }
}

/// A peer's request to connect.
#[derive(Debug)]
pub struct ConnectRequest {
    pub id: CmId,
    pub private_data: Vec<u8>,
    pub responder_resources: u8,
    pub initiator_depth: u8,
}

/// What `connect` and `accept` send.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnParam<'a> {
    /// At most [`MAX_PRIVATE_DATA`] bytes.
    pub private_data: &'a [u8],
    /// RDMA READs the peer may have outstanding against us.
    pub responder_resources: u8,
    /// RDMA READs we may have outstanding against the peer.
    pub initiator_depth: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
}

impl ConnParam<'_> {
    fn raw(&self) -> Result<sys::rdma_conn_param, io::Error> {
        if self.private_data.len() > MAX_PRIVATE_DATA {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "private data over 255 bytes"));
        }
        let p = sys::rdma_conn_param {
            private_data: self.private_data.as_ptr().cast(),
            private_data_len: self.private_data.len() as u8,
            responder_resources: self.responder_resources,
            initiator_depth: self.initiator_depth,
            retry_count: self.retry_count,
            rnr_retry_count: self.rnr_retry_count,
            ..Default::default()
        };
        Ok(p)
    }
}

/// Sizes of a queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// A send-queue work request's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// A SEND, landing in a receive the peer posted.
    Send,
    /// Read the peer's memory at `remote_addr` (key `rkey`) into ours.
    Read { remote_addr: u64, rkey: u32 },
    /// Write ours into the peer's memory at `remote_addr` (key `rkey`).
    Write { remote_addr: u64, rkey: u32 },
}

/// A CM id: listening, or one end of a connection with its queue pair.
/// Destroyed (its QP first) when dropped.
#[derive(Debug)]
pub struct CmId {
    id: *mut rdma_cm_id,
    has_qp: bool,
    _ch: Rc<EventChannel>,
    _pd: Option<Rc<ProtectionDomain>>,
    _cqs: Vec<Rc<CompletionQueue>>,
    /// The shared receive queue its QP takes receives from.
    _srq: Option<Rc<SharedReceiveQueue>>,
}

fn check(rc: i32, f: fn(io::Error) -> Error) -> Result<(), Error> {
    if rc == 0 { Ok(()) } else { Err(f(io::Error::last_os_error())) }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A socket address the library wrote, if it is IPv4 or IPv6.
///
/// # Safety
///
/// `sa` is null or points to a sockaddr_storage-sized address.
unsafe fn socket_addr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a readable address; the family says
    // which layout it has.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let s = &*sa.cast::<libc::sockaddr_in>();
                let ip = std::net::Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::new(ip.into(), u16::from_be(s.sin_port)))
            }
            libc::AF_INET6 => {
                let s = &*sa.cast::<libc::sockaddr_in6>();
                let ip = std::net::Ipv6Addr::from(s.sin6_addr.s6_addr);
                Some(SocketAddr::new(ip.into(), u16::from_be(s.sin6_port)))
            }
            _ => None,
        }
    }
}

/// A CM id on its way to another thread (a connection request handed to
/// the reactor that will own the connection). It owns the id: dropped, it
/// destroys it; [`CmId::adopt`] makes it a [`CmId`] again there.
#[derive(Debug)]
pub struct MovingCmId(*mut rdma_cm_id);

// SAFETY: a CM id may be used from any thread (librdmacm locks what it
// shares); this one has no QP, no Rust owner elsewhere, and its events go
// to the channel it is adopted into.
unsafe impl Send for MovingCmId {}

impl Drop for MovingCmId {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: the id is live and owned here alone.
            unsafe { (lib.rdma_destroy_id)(self.0) };
        }
    }
}

impl CmId {
    /// Hand this id (of a connection request, before a QP is made on it)
    /// to another thread.
    pub fn into_moving(self) -> Result<MovingCmId, CmId> {
        if self.has_qp {
            return Err(self);
        }
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is not used again and never dropped: each of the
        // fields that own something is read out once and dropped here (the
        // id itself goes on in the MovingCmId).
        unsafe {
            drop(ptr::read(&me._ch));
            drop(ptr::read(&me._pd));
            drop(ptr::read(&me._cqs));
            drop(ptr::read(&me._srq));
        }
        Ok(MovingCmId(me.id))
    }

    /// Take a moving id on this thread: its events go to `ch` from now on.
    pub fn adopt(m: MovingCmId, ch: &Rc<EventChannel>) -> Result<CmId, (MovingCmId, Error)> {
        let lib = match lib() {
            Ok(l) => l,
            Err(e) => return Err((m, e)),
        };
        // SAFETY: the id is live and ours; the channel is live.
        if unsafe { (lib.rdma_migrate_id)(m.0, ch.ch) } != 0 {
            return Err((m, Error::MigrateId(io::Error::last_os_error())));
        }
        let id = m.0;
        std::mem::forget(m);
        Ok(CmId { id, has_qp: false, _ch: ch.clone(), _pd: None, _cqs: Vec::new(), _srq: None })
    }

    /// A new id on `ch` (reliable connected), with `context` given back
    /// in its events.
    pub fn new(ch: &Rc<EventChannel>, context: u64) -> Result<CmId, Error> {
        let lib = lib()?;
        let mut id: *mut rdma_cm_id = ptr::null_mut();
        // SAFETY: the channel is live; `id` is writable.
        let rc = unsafe { (lib.rdma_create_id)(ch.ch, &mut id, context as *mut c_void, sys::RDMA_PS_TCP) };
        check(rc, Error::CreateId)?;
        Ok(CmId { id, has_qp: false, _ch: ch.clone(), _pd: None, _cqs: Vec::new(), _srq: None })
    }

    /// Bind to a local address (port 0: any), then listen.
    pub fn listen(&self, addr: SocketAddr, backlog: i32) -> Result<(), Error> {
        let lib = lib()?;
        let (mut ss, _) = sockaddr(addr);
        // SAFETY: the id is live; the address is a valid sockaddr.
        check(unsafe { (lib.rdma_bind_addr)(self.id, (&raw mut ss).cast()) }, Error::BindAddr)?;
        // SAFETY: the id is live and bound.
        check(unsafe { (lib.rdma_listen)(self.id, backlog) }, Error::Listen)
    }

    /// Start resolving `dst` (an ADDR_RESOLVED or ADDR_ERROR event follows).
    pub fn resolve_addr(&self, dst: SocketAddr, timeout_ms: i32) -> Result<(), Error> {
        let lib = lib()?;
        let (mut ss, _) = sockaddr(dst);
        // SAFETY: the id is live; the address is valid; no source address.
        check(unsafe { (lib.rdma_resolve_addr)(self.id, ptr::null_mut(), (&raw mut ss).cast(), timeout_ms) }, Error::ResolveAddr)
    }

    /// Start resolving the route (ROUTE_RESOLVED or ROUTE_ERROR follows).
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<(), Error> {
        let lib = lib()?;
        // SAFETY: the id is live with its address resolved.
        check(unsafe { (lib.rdma_resolve_route)(self.id, timeout_ms) }, Error::ResolveRoute)
    }

    /// The device the id is bound to (after bind, address resolution or a
    /// connection request).
    pub fn device(&self) -> Option<Device> {
        // SAFETY: the id is live.
        let v = unsafe { (*self.id).verbs };
        (!v.is_null()).then_some(Device(v))
    }

    /// Create the id's queue pair (reliable connected) on `pd`, completing
    /// into `send_cq` and `recv_cq`. Returns the sizes granted.
    pub fn create_qp(
        &mut self,
        pd: &Rc<ProtectionDomain>,
        send_cq: &Rc<CompletionQueue>,
        recv_cq: &Rc<CompletionQueue>,
        caps: QpCaps,
    ) -> Result<QpCaps, Error> {
        self.make_qp(pd, send_cq, recv_cq, caps, None)
    }

    /// As [`CmId::create_qp`], the QP taking its receives from `srq`
    /// (`caps.max_recv_wr` does not apply).
    pub fn create_qp_srq(
        &mut self,
        pd: &Rc<ProtectionDomain>,
        send_cq: &Rc<CompletionQueue>,
        recv_cq: &Rc<CompletionQueue>,
        caps: QpCaps,
        srq: &Rc<SharedReceiveQueue>,
    ) -> Result<QpCaps, Error> {
        self.make_qp(pd, send_cq, recv_cq, caps, Some(srq))
    }

    fn make_qp(
        &mut self,
        pd: &Rc<ProtectionDomain>,
        send_cq: &Rc<CompletionQueue>,
        recv_cq: &Rc<CompletionQueue>,
        caps: QpCaps,
        srq: Option<&Rc<SharedReceiveQueue>>,
    ) -> Result<QpCaps, Error> {
        let lib = lib()?;
        let mut attr = sys::ibv_qp_init_attr {
            send_cq: send_cq.cq,
            recv_cq: recv_cq.cq,
            srq: srq.map_or(ptr::null_mut(), |q| q.srq),
            qp_type: sys::IBV_QPT_RC,
            cap: sys::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline_data,
            },
            ..Default::default()
        };
        // SAFETY: the id, PD and CQs are live; the QP keeps Rcs to them.
        check(unsafe { (lib.rdma_create_qp)(self.id, pd.pd, &mut attr) }, Error::CreateQp)?;
        self.has_qp = true;
        self._pd = Some(pd.clone());
        self._cqs = vec![send_cq.clone(), recv_cq.clone()];
        self._srq = srq.cloned();
        let c = attr.cap;
        Ok(QpCaps {
            max_send_wr: c.max_send_wr,
            max_recv_wr: c.max_recv_wr,
            max_send_sge: c.max_send_sge,
            max_recv_sge: c.max_recv_sge,
            max_inline_data: c.max_inline_data,
        })
    }

    /// The QP number (0 without a QP).
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the id is live; its qp is null or live.
        unsafe {
            let qp = (*self.id).qp;
            if qp.is_null() { 0 } else { (*qp).qp_num }
        }
    }

    pub fn connect(&self, p: &ConnParam<'_>) -> Result<(), Error> {
        let lib = lib()?;
        let mut raw = p.raw().map_err(Error::Connect)?;
        // SAFETY: the id is live with its route resolved; the parameters
        // (and the private data they point to) are read during the call.
        check(unsafe { (lib.rdma_connect)(self.id, &mut raw) }, Error::Connect)
    }

    pub fn accept(&self, p: &ConnParam<'_>) -> Result<(), Error> {
        let lib = lib()?;
        let mut raw = p.raw().map_err(Error::Accept)?;
        // SAFETY: the id is a live connection request's; as in connect.
        check(unsafe { (lib.rdma_accept)(self.id, &mut raw) }, Error::Accept)
    }

    /// Refuse a connection request, with private data for the peer.
    pub fn reject(&self, private_data: &[u8]) -> Result<(), Error> {
        let lib = lib()?;
        let len = private_data.len().min(MAX_PRIVATE_DATA) as u8;
        // SAFETY: the id is a live connection request's; the data is read
        // during the call.
        check(unsafe { (lib.rdma_reject)(self.id, private_data.as_ptr().cast(), len) }, Error::Reject)
    }

    pub fn disconnect(&self) -> Result<(), Error> {
        let lib = lib()?;
        // SAFETY: the id is live.
        check(unsafe { (lib.rdma_disconnect)(self.id) }, Error::Disconnect)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is live; the address is a sockaddr_storage.
        unsafe { socket_addr(sys::rdma_get_local_addr(self.id)) }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as in local_addr.
        unsafe { socket_addr(sys::rdma_get_peer_addr(self.id)) }
    }

    fn qp(&self) -> Result<*mut sys::ibv_qp, io::Error> {
        // SAFETY: the id is live.
        let qp = unsafe { (*self.id).qp };
        if qp.is_null() { Err(io::Error::new(io::ErrorKind::NotConnected, "the CM id has no queue pair")) } else { Ok(qp) }
    }

    /// Post a receive of `sge` (one or more entries) as `wr_id`.
    ///
    /// # Safety
    ///
    /// The SGEs name registered memory (their lkeys) that stays registered,
    /// allocated and otherwise unused until the receive completes (or the
    /// QP is flushed and its completion polled).
    pub unsafe fn post_recv(&self, wr_id: u64, sge: &[ibv_sge]) -> Result<(), Error> {
        let qp = self.qp().map_err(Error::PostRecv)?;
        let mut wr = sys::ibv_recv_wr { wr_id, next: ptr::null_mut(), sg_list: sge.as_ptr().cast_mut(), num_sge: sge.len() as i32 };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is live; the request and SGEs are read during the
        // call; the caller vouches for the memory.
        let rc = unsafe { sys::post_recv(qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::PostRecv(io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    /// Post a send-queue request (SEND, RDMA READ or WRITE of `sge`) as
    /// `wr_id`; `signaled`: it makes a completion.
    ///
    /// # Safety
    ///
    /// As [`CmId::post_recv`] for the SGEs' memory, until the request
    /// completes (an unsignaled one: until a later signaled request on the
    /// same QP completes); for Read and Write the remote address and key
    /// are the peer's to give.
    pub unsafe fn post_send(&self, wr_id: u64, op: SendOp, sge: &[ibv_sge], signaled: bool) -> Result<(), Error> {
        let qp = self.qp().map_err(Error::PostSend)?;
        let mut wr = sys::ibv_send_wr {
            wr_id,
            sg_list: sge.as_ptr().cast_mut(),
            num_sge: sge.len() as i32,
            send_flags: if signaled { sys::IBV_SEND_SIGNALED } else { 0 },
            ..Default::default()
        };
        match op {
            SendOp::Send => wr.opcode = sys::IBV_WR_SEND,
            SendOp::Read { remote_addr, rkey } => {
                wr.opcode = sys::IBV_WR_RDMA_READ;
                wr.wr.rdma = sys::ibv_rdma_wr { remote_addr, rkey };
            }
            SendOp::Write { remote_addr, rkey } => {
                wr.opcode = sys::IBV_WR_RDMA_WRITE;
                wr.wr.rdma = sys::ibv_rdma_wr { remote_addr, rkey };
            }
        }
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is live; the request and SGEs are read during the
        // call; the caller vouches for the memory and the remote key.
        let rc = unsafe { sys::post_send(qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::PostSend(io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }
}

/// One send-queue work request of a chain ([`CmId::post_send_chain`]).
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    pub wr_id: u64,
    pub op: SendOp,
    pub sge: &'a [ibv_sge],
    pub signaled: bool,
}

/// Receives and sends posted in one call at most (longer lists go in
/// several).
const CHAIN: usize = 32;

impl CmId {
    /// Post up to a few send-queue requests as one chain (one call into the
    /// provider: on a software device one doorbell, one system call).
    ///
    /// # Safety
    ///
    /// As [`CmId::post_send`], for each request.
    pub unsafe fn post_send_chain(&self, wrs: &[SendWr<'_>]) -> Result<(), Error> {
        let qp = self.qp().map_err(Error::PostSend)?;
        for part in wrs.chunks(CHAIN) {
            let mut raw = [sys::ibv_send_wr::default(); CHAIN];
            for (i, w) in part.iter().enumerate() {
                let r = &mut raw[i];
                r.wr_id = w.wr_id;
                r.sg_list = w.sge.as_ptr().cast_mut();
                r.num_sge = w.sge.len() as i32;
                r.send_flags = if w.signaled { sys::IBV_SEND_SIGNALED } else { 0 };
                match w.op {
                    SendOp::Send => r.opcode = sys::IBV_WR_SEND,
                    SendOp::Read { remote_addr, rkey } => {
                        r.opcode = sys::IBV_WR_RDMA_READ;
                        r.wr.rdma = sys::ibv_rdma_wr { remote_addr, rkey };
                    }
                    SendOp::Write { remote_addr, rkey } => {
                        r.opcode = sys::IBV_WR_RDMA_WRITE;
                        r.wr.rdma = sys::ibv_rdma_wr { remote_addr, rkey };
                    }
                }
            }
            let base = raw.as_mut_ptr();
            for i in 1..part.len() {
                // SAFETY: i - 1 and i are within the array.
                unsafe { (*base.add(i - 1)).next = base.add(i) };
            }
            let mut bad = ptr::null_mut();
            // SAFETY: the QP is live; the chain and its SGEs are read during
            // the call; the caller vouches for the memory and keys.
            let rc = unsafe { sys::post_send(qp, base, &mut bad) };
            if rc != 0 {
                return Err(Error::PostSend(io::Error::from_raw_os_error(rc)));
            }
        }
        Ok(())
    }

    /// Post receives (`wr_id`, one SGE each) as chains of up to 32.
    ///
    /// # Safety
    ///
    /// As [`CmId::post_recv`], for each receive.
    pub unsafe fn post_recv_chain(&self, list: &[(u64, ibv_sge)]) -> Result<(), Error> {
        let qp = self.qp().map_err(Error::PostRecv)?;
        // SAFETY: the QP is live; each chain and its SGEs are read during
        // the call; the caller vouches for the memory.
        let rc = unsafe { sys::post_recv_list(list, |wr, bad| sys::post_recv(qp, wr, bad)) };
        if rc != 0 {
            return Err(Error::PostRecv(io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            if self.has_qp {
                // SAFETY: the id and its QP are live; the QP goes first.
                unsafe { (lib.rdma_destroy_qp)(self.id) };
            }
            // SAFETY: the id is live; every event about it was
            // acknowledged (events borrow the channel and are acknowledged
            // when dropped; a request's id is taken after its ack).
            let rc = unsafe { (lib.rdma_destroy_id)(self.id) };
            if rc != 0 {
                tracing::warn!("rdma: rdma_destroy_id: {}", io::Error::last_os_error());
            }
        }
    }
}
