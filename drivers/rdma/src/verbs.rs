//! Verbs objects with owners: protection domains, registered memory,
//! completion channels and completion queues. Each frees itself when
//! dropped, and holds what it was made from (an [`Rc`]) so that a PD
//! outlives its memory regions and a CQ the QPs that use it.
//!
//! They are `!Send`: verbs objects may be used from any thread, but a
//! Pollux object has one owner reactor, so these stay on the one that made
//! them (the device context comes from a connection's CM id).

use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::rc::Rc;

use crate::sys::{self, ibv_comp_channel, ibv_context, ibv_cq, ibv_mr, ibv_pd, ibv_sge, ibv_srq, ibv_wc};
use crate::{Error, lib};

/// A device context, borrowed from a CM id bound to the device (the
/// library owns it; it lives while an id uses the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device(pub(crate) *mut ibv_context);

impl Device {
    /// The kernel's name of the device (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> String {
        // SAFETY: the context is live (an id holds it) and its device is
        // the library's, for the life of the context; `name` is a
        // NUL-terminated array (bounded: not past its end).
        let name = unsafe { &(*(*self.0).device).name };
        let bytes: Vec<u8> = name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The device's limits (`ibv_query_device`).
    pub fn limits(&self) -> Result<DeviceLimits, Error> {
        let lib = lib()?;
        let mut attr = sys::ibv_device_attr::default();
        // SAFETY: the context is live (an id holds it) and `attr` is a
        // valid, writable ibv_device_attr.
        let rc = unsafe { (lib.ibv_query_device)(self.0, &mut attr) };
        if rc != 0 {
            return Err(Error::QueryDevice(io::Error::from_raw_os_error(rc)));
        }
        Ok(DeviceLimits {
            max_qp_wr: attr.max_qp_wr.max(0) as u32,
            max_sge: attr.max_sge.max(0) as u32,
            max_cqe: attr.max_cqe.max(0) as u32,
            max_qp_rd_atom: attr.max_qp_rd_atom.max(0) as u32,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom.max(0) as u32,
            max_srq_wr: attr.max_srq_wr.max(0) as u32,
        })
    }
}

/// What a device can do, as far as queue sizes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cqe: u32,
    /// RDMA READs this end serves at once (responder resources).
    pub max_qp_rd_atom: u32,
    /// RDMA READs this end may have outstanding (initiator depth).
    pub max_qp_init_rd_atom: u32,
    pub max_srq_wr: u32,
}

/// A protection domain: memory regions and queue pairs that may be used
/// together.
#[derive(Debug)]
pub struct ProtectionDomain {
    pub(crate) pd: *mut ibv_pd,
    device: Device,
}

impl ProtectionDomain {
    pub fn new(device: Device) -> Result<Rc<ProtectionDomain>, Error> {
        let lib = lib()?;
        // SAFETY: the context is live (an id on the device holds it).
        let pd = unsafe { (lib.ibv_alloc_pd)(device.0) };
        if pd.is_null() {
            return Err(Error::AllocPd(io::Error::last_os_error()));
        }
        Ok(Rc::new(ProtectionDomain { pd, device }))
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Register `len` bytes at `addr` for local writes and the peer's RDMA
    /// READ and WRITE.
    ///
    /// # Safety
    ///
    /// The memory stays allocated and is not moved while the region lives
    /// (the device reads and writes it by address, also on the peer's
    /// behalf); nothing holds a Rust reference to the part the device may
    /// write while it may write it.
    pub unsafe fn register(self: &Rc<Self>, addr: *mut u8, len: usize) -> Result<MemoryRegion, Error> {
        let access = sys::IBV_ACCESS_LOCAL_WRITE | sys::IBV_ACCESS_REMOTE_READ | sys::IBV_ACCESS_REMOTE_WRITE;
        // SAFETY: the caller's promise, passed on.
        unsafe { self.register_with(addr, len, access) }
    }

    /// Register `len` bytes at `addr` for local use only: receives, and
    /// the local side of our own SENDs, RDMA READs and WRITEs. The peer
    /// cannot reach it with RDMA whatever key it tries (a target's
    /// buffers: only the host's are named to the peer).
    ///
    /// # Safety
    ///
    /// As [`ProtectionDomain::register`].
    pub unsafe fn register_local(self: &Rc<Self>, addr: *mut u8, len: usize) -> Result<MemoryRegion, Error> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.register_with(addr, len, sys::IBV_ACCESS_LOCAL_WRITE) }
    }

    /// # Safety
    ///
    /// As [`ProtectionDomain::register`].
    unsafe fn register_with(self: &Rc<Self>, addr: *mut u8, len: usize, access: u32) -> Result<MemoryRegion, Error> {
        let lib = lib()?;
        let access = access as i32;
        // SAFETY: the PD is live (self); the caller vouches for the memory.
        // Constant flags without optional-range bits, as sys::Lib's
        // `ibv_reg_mr` requires.
        let mr = unsafe { (lib.ibv_reg_mr)(self.pd, addr.cast(), len, access) };
        if mr.is_null() {
            return Err(Error::RegMr(io::Error::last_os_error()));
        }
        // SAFETY: a region ibv_reg_mr just returned; its keys never change.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(MemoryRegion { mr, lkey, rkey, addr: addr as u64, len, _pd: self.clone() })
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: every region and QP on it holds an Rc to it, so none
            // is left.
            let rc = unsafe { (lib.ibv_dealloc_pd)(self.pd) };
            if rc != 0 {
                tracing::warn!("rdma: ibv_dealloc_pd: {}", io::Error::from_raw_os_error(rc));
            }
        }
    }
}

/// Registered memory: its keys, and the range they cover.
#[derive(Debug)]
pub struct MemoryRegion {
    mr: *mut ibv_mr,
    lkey: u32,
    rkey: u32,
    addr: u64,
    len: usize,
    _pd: Rc<ProtectionDomain>,
}

impl MemoryRegion {
    /// The key local work requests name the memory with.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// The key the peer's RDMA READ and WRITE name it with.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[addr, addr + len)` lies within the region.
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        addr >= self.addr && addr.checked_add(len as u64).is_some_and(|end| end <= self.addr + self.len as u64)
    }

    /// A scatter-gather entry for `len` bytes at `addr` of the region.
    /// Panics if the range is outside it (a bug in the caller).
    pub fn sge(&self, addr: u64, len: u32) -> sys::ibv_sge {
        assert!(self.covers(addr, len as usize), "an SGE outside its memory region");
        sys::ibv_sge { addr, length: len, lkey: self.lkey }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: the region is live and dropped once.
            let rc = unsafe { (lib.ibv_dereg_mr)(self.mr) };
            if rc != 0 {
                tracing::warn!("rdma: ibv_dereg_mr: {}", io::Error::from_raw_os_error(rc));
            }
        }
    }
}

/// A completion channel: an fd that becomes readable when an armed CQ on
/// it gets a completion (interrupt mode).
#[derive(Debug)]
pub struct CompletionChannel {
    ch: *mut ibv_comp_channel,
}

impl CompletionChannel {
    pub fn new(device: Device) -> Result<Rc<CompletionChannel>, Error> {
        let lib = lib()?;
        // SAFETY: the context is live.
        let ch = unsafe { (lib.ibv_create_comp_channel)(device.0) };
        if ch.is_null() {
            return Err(Error::CreateCompChannel(io::Error::last_os_error()));
        }
        let c = CompletionChannel { ch };
        set_nonblocking(c.fd()).map_err(Error::CreateCompChannel)?;
        Ok(Rc::new(c))
    }

    /// The fd to wait on (nonblocking).
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is live; its fd never changes.
        unsafe { (*self.ch).fd }
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: every CQ on the channel holds an Rc to it, so none is
            // left.
            let rc = unsafe { (lib.ibv_destroy_comp_channel)(self.ch) };
            if rc != 0 {
                tracing::warn!("rdma: ibv_destroy_comp_channel: {}", io::Error::from_raw_os_error(rc));
            }
        }
    }
}

/// A completion queue, polled; in interrupt mode armed on a completion
/// channel.
///
/// It keeps track of its arming so that a poller that runs with nothing
/// to do makes no system call: arming an armed CQ does nothing, and the
/// channel is read only for events the CQ owes (an armed CQ raises one
/// event at its next completion, so a poll that finds completions while
/// armed means one event is, or is about to be, on the channel).
#[derive(Debug)]
pub struct CompletionQueue {
    pub(crate) cq: *mut ibv_cq,
    channel: Option<Rc<CompletionChannel>>,
    /// Channel events taken and not yet acknowledged.
    unacked: std::cell::Cell<u32>,
    /// Armed since the last completion was polled.
    armed: std::cell::Cell<bool>,
    /// Events raised (by completions polled while armed) and not yet
    /// taken from the channel.
    owed: std::cell::Cell<u32>,
}

impl CompletionQueue {
    /// A CQ of at least `depth` entries, with events on `channel` if given.
    pub fn new(device: Device, depth: u32, channel: Option<Rc<CompletionChannel>>) -> Result<Rc<CompletionQueue>, Error> {
        let lib = lib()?;
        let ch = channel.as_ref().map_or(ptr::null_mut(), |c| c.ch);
        // SAFETY: the context and channel (if any) are live.
        let cq = unsafe { (lib.ibv_create_cq)(device.0, depth.min(i32::MAX as u32) as i32, ptr::null_mut(), ch, 0) };
        if cq.is_null() {
            return Err(Error::CreateCq(io::Error::last_os_error()));
        }
        Ok(Rc::new(CompletionQueue {
            cq,
            channel,
            unacked: std::cell::Cell::new(0),
            armed: std::cell::Cell::new(false),
            owed: std::cell::Cell::new(0),
        }))
    }

    /// Take up to `wc.len()` completions; how many.
    pub fn poll(&self, wc: &mut [ibv_wc]) -> Result<usize, Error> {
        let n = wc.len().min(i32::MAX as usize) as i32;
        // SAFETY: the CQ is live, `wc` is writable for n entries, and the
        // CQ is only polled from its owner (the type is !Send).
        let got = unsafe { sys::poll_cq(self.cq, n, wc.as_mut_ptr()) };
        if got < 0 {
            return Err(Error::PollCq(got));
        }
        if got > 0 && self.armed.replace(false) {
            self.owed.set(self.owed.get() + 1);
        }
        Ok(got as usize)
    }

    /// Ask for a channel event at the next completion (nothing to do if
    /// it is armed already). Poll once more after arming: a completion that
    /// came in between raised no event.
    pub fn arm(&self) -> Result<(), Error> {
        if self.armed.get() {
            return Ok(());
        }
        // SAFETY: the CQ is live.
        let rc = unsafe { sys::req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(Error::ReqNotifyCq(io::Error::from_raw_os_error(rc)));
        }
        self.armed.set(true);
        Ok(())
    }

    /// Take the channel's events so that the fd quiets down; acknowledged
    /// in batches. Call before polling (as verbs' own pattern does: take
    /// the event, arm, poll): an event taken after the last poll may be
    /// that of a completion not polled yet, which would then wake no one. Without `look`, only when the CQ owes one (none owed: no
    /// system call); with it (the fd may be readable: the caller woke up),
    /// whatever is there. An event owed but not there yet is given up on:
    /// when it comes, its fd wakes the caller, who then looks.
    pub fn take_events(&self, look: bool) -> Result<u32, Error> {
        let Some(ch) = &self.channel else { return Ok(0) };
        if self.owed.get() == 0 && !look {
            return Ok(0);
        }
        let lib = lib()?;
        let mut n = 0;
        loop {
            let mut cq: *mut ibv_cq = ptr::null_mut();
            let mut ctx: *mut std::ffi::c_void = ptr::null_mut();
            // SAFETY: the channel is live and nonblocking; the out
            // pointers are writable.
            let rc = unsafe { (lib.ibv_get_cq_event)(ch.ch, &mut cq, &mut ctx) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.owed.set(0);
                    break;
                }
                return Err(Error::GetCqEvent(e));
            }
            n += 1;
            self.owed.set(self.owed.get().saturating_sub(1));
        }
        let unacked = self.unacked.get() + n;
        if unacked >= 64 {
            // SAFETY: the CQ is live; these events were taken from it.
            unsafe { (lib.ibv_ack_cq_events)(self.cq, unacked) };
            self.unacked.set(0);
        } else {
            self.unacked.set(unacked);
        }
        Ok(n)
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            let unacked = self.unacked.get();
            if unacked > 0 {
                // SAFETY: the CQ is live; destroying it waits for every
                // event taken to be acknowledged.
                unsafe { (lib.ibv_ack_cq_events)(self.cq, unacked) };
            }
            // SAFETY: every QP using the CQ holds an Rc to it, so none is
            // left.
            let rc = unsafe { (lib.ibv_destroy_cq)(self.cq) };
            if rc != 0 {
                tracing::warn!("rdma: ibv_destroy_cq: {}", io::Error::from_raw_os_error(rc));
            }
        }
    }
}

/// A shared receive queue with its own receive buffers: `count` buffers
/// of `size` bytes, registered for local use only, all posted when made.
/// Queue pairs made on it (`CmId::create_qp_srq`) take their receives
/// from it; whoever handles a receive completion reads its buffer
/// ([`SharedReceiveQueue::buffer`]) and gives it back ([`repost`]).
///
/// The buffers belong to the queue, so they live exactly as long as the
/// device may write them: the queue is destroyed (when the last `Rc`,
/// its own owner's or a queue pair's, goes) before its region is
/// deregistered and before its memory is freed.
///
/// [`repost`]: SharedReceiveQueue::repost
#[derive(Debug)]
pub struct SharedReceiveQueue {
    pub(crate) srq: *mut ibv_srq,
    /// Dropped after the queue is destroyed (in `drop`), before `buf`.
    mr: MemoryRegion,
    buf: Box<[u8]>,
    size: usize,
    count: u32,
    wrs: std::cell::RefCell<Vec<(u64, ibv_sge)>>,
}

impl SharedReceiveQueue {
    /// A queue of `count` buffers of `size` bytes (`count` capped by what
    /// the device grants), every buffer posted with its index as wr_id
    /// plus `wr_base`.
    pub fn new(pd: &Rc<ProtectionDomain>, count: u32, size: usize, wr_base: u64) -> Result<Rc<SharedReceiveQueue>, Error> {
        let lib = lib()?;
        let mut attr =
            sys::ibv_srq_init_attr { attr: sys::ibv_srq_attr { max_wr: count.max(1), max_sge: 1, srq_limit: 0 }, ..Default::default() };
        // SAFETY: the PD is live; the attributes are read (and the granted
        // sizes written back) during the call.
        let srq = unsafe { (lib.ibv_create_srq)(pd.pd, &mut attr) };
        if srq.is_null() {
            return Err(Error::CreateSrq(io::Error::last_os_error()));
        }
        let count = count.max(1).min(attr.attr.max_wr.max(1));
        let mut buf = vec![0u8; size * count as usize].into_boxed_slice();
        // SAFETY: the buffer is a Box owned by the queue with the region
        // (dropped after it), never moved.
        let mr = match unsafe { pd.register_local(buf.as_mut_ptr(), buf.len()) } {
            Ok(mr) => mr,
            Err(e) => {
                // SAFETY: the SRQ was just made and nothing uses it.
                unsafe { (lib.ibv_destroy_srq)(srq) };
                return Err(e);
            }
        };
        let q = Rc::new(SharedReceiveQueue { srq, mr, buf, size, count, wrs: std::cell::RefCell::new(Vec::with_capacity(count as usize)) });
        let all: Vec<u32> = (0..count).collect();
        q.repost(&all, wr_base)?;
        Ok(q)
    }

    /// Buffers in the queue.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes per buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The first `len` bytes of buffer `i`.
    ///
    /// # Safety
    ///
    /// Buffer `i`'s receive has completed and the buffer has not been
    /// posted again since (the device does not write it meanwhile).
    pub unsafe fn buffer(&self, i: u32, len: usize) -> &[u8] {
        let at = i as usize * self.size;
        &self.buf[at..at + len.min(self.size)]
    }

    /// Post buffers `list` again (their receives completed and whoever
    /// took them is done with them), as chains; wr_id = `wr_base` + index.
    pub fn repost(&self, list: &[u32], wr_base: u64) -> Result<(), Error> {
        let mut wrs = self.wrs.borrow_mut();
        wrs.clear();
        for &i in list.iter().filter(|&&i| i < self.count) {
            let at = self.mr.addr() + (i as usize * self.size) as u64;
            wrs.push((wr_base + u64::from(i), self.mr.sge(at, self.size as u32)));
        }
        let srq = self.srq;
        // SAFETY: the SRQ is live; each chain and its SGEs are read during
        // the call; the buffers are the queue's own, registered, and no
        // longer read by whoever took them.
        let rc = unsafe { sys::post_recv_list(&wrs, |wr, bad| sys::post_srq_recv(srq, wr, bad)) };
        if rc != 0 {
            return Err(Error::PostSrqRecv(io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: every QP on it holds an Rc to it, so none is left;
            // its region and buffer are dropped after this.
            let rc = unsafe { (lib.ibv_destroy_srq)(self.srq) };
            if rc != 0 {
                tracing::warn!("rdma: ibv_destroy_srq: {}", io::Error::from_raw_os_error(rc));
            }
        }
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
