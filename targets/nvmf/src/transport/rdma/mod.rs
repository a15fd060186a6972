//! The NVMe/RDMA transport (NVMe over Fabrics 1.1, RDMA transport
//! binding), on `pollux-rdma`: listeners are RDMA CM ids on one event
//! channel whose fd the main reactor waits on; a connection request
//! carries the host's queue sizes in its private data and is answered
//! with ours; each queue pair then has its own completion queue, polled
//! (busy mode) or woken through its completion channel (interrupt mode).
//!
//! Data moves without copies through the host's keyed SGLs: write data
//! is fetched with RDMA READ into the command's buffer, read data is
//! pushed with RDMA WRITE from it, the completion follows in a SEND.
//! Small writes may come in the capsule (in-capsule data).
//!
//! The libraries are loaded when the transport is created: on a machine
//! without rdma-core or without an RDMA device, `nvmf_create_transport -t
//! RDMA` fails with the reason and nothing else changes.
//!
//! Admin queues stay on the main reactor with their controllers; each I/O
//! queue pair goes to a reactor in turn (as on TCP): its CM id moves to
//! that reactor's event channel (`rdma_migrate_id`) before it is accepted,
//! so its queue pair, buffers and events all live there.

#[doc(hidden)]
pub mod capsule;
mod qpair;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pollux_core::log::FaultLog;
use pollux_core::sock::{ConnLimit, ConnSlot, RoundRobin};

use pollux_core::dma::{BufPool, DmaBuf};
use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::sys::Interest;
use pollux_nvme_spec::rdma::{self as cm_data, reject_data};
use pollux_rdma::{CmEventKind, CmId, ConnectRequest, Device, EventChannel, MemoryRegion, ProtectionDomain, SharedReceiveQueue};
use serde_json::{Value, json};

use super::{Endpoint, Transport, TransportKind, TransportOpts};
use crate::NvmfError;

pub(crate) use qpair::RdmaQpair;

struct Listener {
    /// The CM context of its id (connection requests name it).
    ctx: u64,
    ep: Endpoint,
    uses: Cell<u32>,
    /// Its queue pairs open now (on every reactor), at most
    /// `max_connections_per_listener`.
    limit: ConnLimit,
    faults: FaultLog,
    _id: CmId,
}

/// A reactor's share of the transport: its CM event channel (the main
/// reactor's also serves the listeners), its queue pairs, protection
/// domains and counters.
pub(crate) struct Group {
    pub(crate) opts: TransportOpts,
    ch: Rc<EventChannel>,
    /// Main reactor only: the listeners, and where I/O queue pairs go.
    listeners: RefCell<Vec<Listener>>,
    placement: RoundRobin,
    /// Every queue pair by its id (also the CM context of its id).
    qpairs: RefCell<HashMap<u64, Rc<RdmaQpair>>>,
    pds: RefCell<Vec<Rc<ProtectionDomain>>>,
    /// The reactor's buffer pool registered on each device (through its
    /// protection domain here).
    pool_regions: RefCell<Vec<(Device, Rc<PoolRegions>)>>,
    /// The shared receive queue of each device (`no_srq` false): every
    /// queue pair of this reactor on the device takes its capsules from it.
    srqs: RefCell<Vec<(Device, Rc<SharedReceiveQueue>)>>,
    cm_poller: RefCell<Option<Poller>>,
    /// Ends queue pairs that never connect (`connect_timeout_sec`).
    timeout_poller: RefCell<Option<Poller>>,
    pub(crate) stats: RefCell<RdmaStats>,
}

thread_local! {
    /// This reactor's group, once it has RDMA queue pairs (or is the main
    /// reactor of a live transport).
    static GROUP: RefCell<Option<Rc<Group>>> = const { RefCell::new(None) };
}

/// Queue pair and listener ids, unique in the process; RDMA's have the
/// top bit set (TCP's do not).
static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 63);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Counters of a reactor's RDMA poll group, with SPDK's `nvmf_get_stats`
/// names.
#[derive(Clone, Debug, Default)]
pub struct RdmaStats {
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
    pub current_admin_qpairs: u64,
    pub current_io_qpairs: u64,
    pub completed_nvme_io: u64,
    pub pending_bdev_io: u64,
    pub devices: Vec<DeviceStats>,
}

/// Per RDMA device.
#[derive(Clone, Debug, Default)]
pub struct DeviceStats {
    pub name: String,
    pub polls: u64,
    pub idle_polls: u64,
    pub completions: u64,
    pub requests: u64,
    pub pending_rdma_read: u64,
    pub total_send_wrs: u64,
    pub total_recv_wrs: u64,
    /// Calls that posted send (receive) work requests: one doorbell each.
    pub send_doorbells: u64,
    pub recv_doorbells: u64,
}

impl RdmaStats {
    /// The index of a device's counters (added on first use).
    pub(crate) fn device(&mut self, name: &str) -> usize {
        match self.devices.iter().position(|d| d.name == name) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceStats { name: name.to_string(), ..Default::default() });
                self.devices.len() - 1
            }
        }
    }
}

fn current() -> Option<Rc<Group>> {
    GROUP.with(|g| g.borrow().clone())
}

/// This reactor's group, made on first use: its event channel, and a
/// poller woken by its fd.
fn group_here(opts: &TransportOpts) -> Result<Rc<Group>, pollux_rdma::Error> {
    if let Some(g) = current() {
        return Ok(g);
    }
    let ch = EventChannel::new()?;
    let g = Rc::new(Group {
        opts: opts.clone(),
        ch: ch.clone(),
        listeners: RefCell::new(Vec::new()),
        placement: RoundRobin::starting_at(1),
        qpairs: RefCell::new(HashMap::new()),
        pds: RefCell::new(Vec::new()),
        pool_regions: RefCell::new(Vec::new()),
        srqs: RefCell::new(Vec::new()),
        cm_poller: RefCell::new(None),
        timeout_poller: RefCell::new(None),
        stats: RefCell::new(RdmaStats::default()),
    });
    let period = Duration::from_micros(u64::from(opts.acceptor_poll_rate.max(100)));
    let weak = Rc::downgrade(&g);
    let poller = reactor::register_timed_poller("nvmf_rdma_cm", period, move || match weak.upgrade() {
        Some(g) => g.on_cm_events(),
        None => PollStatus::Idle,
    });
    poller.add_wake_fd(ch.fd(), Interest::READABLE).map_err(pollux_rdma::Error::CreateEventChannel)?;
    *g.cm_poller.borrow_mut() = Some(poller);
    let weak = Rc::downgrade(&g);
    let limit = Duration::from_secs(u64::from(opts.connect_timeout_sec));
    let timeouts = reactor::register_timed_poller("nvmf_rdma_timeouts", Duration::from_millis(500), move || match weak.upgrade() {
        Some(g) => g.end_unconnected(limit),
        None => PollStatus::Idle,
    });
    *g.timeout_poller.borrow_mut() = Some(timeouts);
    GROUP.with(|s| *s.borrow_mut() = Some(g.clone()));
    Ok(g)
}

impl Group {
    /// The protection domain of a device (one per device and reactor).
    fn pd(&self, dev: Device) -> Result<Rc<ProtectionDomain>, pollux_rdma::Error> {
        if let Some(pd) = self.pds.borrow().iter().find(|p| p.device() == dev) {
            return Ok(pd.clone());
        }
        let pd = ProtectionDomain::new(dev)?;
        self.pds.borrow_mut().push(pd.clone());
        Ok(pd)
    }

    /// End the queue pairs accepted over `limit` ago that never sent a
    /// Fabrics Connect: each holds registered memory for nothing.
    fn end_unconnected(&self, limit: Duration) -> PollStatus {
        let late: Vec<_> = self.qpairs.borrow().values().filter(|q| q.unconnected_for() > limit).cloned().collect();
        for q in &late {
            q.log_fault(&format!("no Connect within {limit:?}: closed"));
            q.close(&format!("no Connect within {limit:?}"));
        }
        if late.is_empty() { PollStatus::Idle } else { PollStatus::Busy }
    }

    /// The reactor's buffer pool as a device reaches it: its regions
    /// registered once (local use only: the target's memory is never
    /// named to a host).
    #[allow(unsafe_code)]
    pub(crate) fn pool_regions(&self, dev: Device) -> Result<Rc<PoolRegions>, String> {
        if let Some((_, r)) = self.pool_regions.borrow().iter().find(|(d, _)| *d == dev) {
            return Ok(r.clone());
        }
        let pool = pollux_core::dma::pool().map_err(|e| format!("no buffer pool: {e}"))?;
        let pd = self.pd(dev).map_err(|e| e.to_string())?;
        let mut mrs = Vec::new();
        for (ptr, len) in pool.regions() {
            // SAFETY: the pool's regions stay mapped while the pool lives,
            // and PoolRegions keeps the pool alive past its registrations
            // (declared after them); the device writes a buffer only for
            // an RDMA READ of the command that owns it, while nothing else
            // reads or writes it.
            mrs.push(unsafe { pd.register_local(ptr, len) }.map_err(|e| e.to_string())?);
        }
        let r = Rc::new(PoolRegions { mrs, pool });
        self.pool_regions.borrow_mut().push((dev, r.clone()));
        Ok(r)
    }

    /// The shared receive queue of a device on this reactor, made on first
    /// use: `max_srq_depth` capsule buffers (as many as the device grants).
    pub(crate) fn srq(&self, dev: Device, capsule: usize) -> Result<Rc<SharedReceiveQueue>, String> {
        if let Some((_, q)) = self.srqs.borrow().iter().find(|(d, _)| *d == dev) {
            return Ok(q.clone());
        }
        let pd = self.pd(dev).map_err(|e| e.to_string())?;
        let q = SharedReceiveQueue::new(&pd, self.opts.max_srq_depth, capsule, qpair::WR_RECV << 32).map_err(|e| e.to_string())?;
        let n = u64::from(q.count());
        let d = self.stats.borrow_mut().device(&dev.name());
        if let Some(s) = self.stats.borrow_mut().devices.get_mut(d) {
            s.total_recv_wrs += n;
            s.recv_doorbells += n.div_ceil(pollux_rdma::sys::RECV_CHAIN as u64);
        }
        tracing::debug!("nvmf rdma: shared receive queue of {} capsules on {}", n, dev.name());
        self.srqs.borrow_mut().push((dev, q.clone()));
        Ok(q)
    }

    pub(crate) fn forget(&self, id: u64) {
        self.qpairs.borrow_mut().remove(&id);
    }

    /// Close every queue pair of this group.
    fn close_everything(&self, reason: &str) {
        let all: Vec<_> = self.qpairs.borrow().values().cloned().collect();
        for q in all {
            q.close(reason);
        }
    }

    /// This group's counters, with the gauges (bdev I/O, RDMA READs
    /// waiting) read now.
    fn snapshot(&self) -> RdmaStats {
        let mut s = self.stats.borrow().clone();
        for q in self.qpairs.borrow().values() {
            let (executing, waiting, dev) = q.gauges();
            s.pending_bdev_io += u64::from(executing);
            if let Some(d) = s.devices.get_mut(dev) {
                d.pending_rdma_read += waiting as u64;
            }
        }
        s
    }

    /// Take every pending CM event.
    fn on_cm_events(self: &Rc<Self>) -> PollStatus {
        let mut busy = PollStatus::Idle;
        loop {
            let ev = match self.ch.next() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("nvmf rdma: {e}");
                    break;
                }
            };
            busy = PollStatus::Busy;
            let kind = ev.kind();
            let ctx = ev.context();
            match kind {
                CmEventKind::ConnectRequest => {
                    let id = next_id();
                    let Some(req) = ev.into_request(id) else { continue };
                    let ls = self.listeners.borrow();
                    let Some(l) = ls.iter().find(|l| l.ctx == ctx) else {
                        drop(ls);
                        let _ = req.id.reject(&reject_data(cm_data::reject::NO_RESOURCES));
                        continue;
                    };
                    let ep = l.ep;
                    match l.limit.admit() {
                        Some(slot) => {
                            drop(ls);
                            self.place(id, ep, req, slot);
                        }
                        None => {
                            pollux_core::log_fault!(
                                l.faults,
                                "nvmf rdma: connection from {:?} on {ep} refused: {} queue pairs open, the most it serves",
                                req.id.peer_addr(),
                                l.limit.max()
                            );
                            drop(ls);
                            let _ = req.id.reject(&reject_data(cm_data::reject::NO_RESOURCES));
                        }
                    }
                }
                CmEventKind::Established => {
                    drop(ev);
                    let q = self.qpairs.borrow().get(&ctx).cloned();
                    if let Some(q) = q {
                        q.established();
                    }
                }
                CmEventKind::Disconnected
                | CmEventKind::TimewaitExit
                | CmEventKind::ConnectError
                | CmEventKind::Unreachable
                | CmEventKind::Rejected
                | CmEventKind::DeviceRemoval => {
                    let name = ev.name();
                    drop(ev);
                    let q = self.qpairs.borrow().get(&ctx).cloned();
                    if let Some(q) = q {
                        q.close(&format!("CM event {name}"));
                    }
                }
                _ => tracing::debug!("nvmf rdma: CM event {} ignored", ev.name()),
            }
        }
        busy
    }

    /// Serve a connection request here (the admin queue, which stays with
    /// its controller on the main reactor) or on the next reactor in turn
    /// (an I/O queue: its CM id moves to that reactor's event channel).
    fn place(&self, id: u64, ep: Endpoint, req: ConnectRequest, slot: ConnSlot) {
        let qid = cm_data::Request::parse(&req.private_data).map(|r| r.qid);
        let here = reactor::current();
        let to = if qid.is_some_and(|q| q > 0) { self.placement.next() } else { here };
        let me = current().expect("this reactor's group");
        if to == here {
            return qpair::accept(&me, id, ep, req, slot);
        }
        let ConnectRequest { id: cm, private_data, responder_resources, initiator_depth } = req;
        let moving = match cm.into_moving() {
            Ok(m) => m,
            Err(cm) => {
                return qpair::accept(&me, id, ep, ConnectRequest { id: cm, private_data, responder_resources, initiator_depth }, slot);
            }
        };
        let opts = self.opts.clone();
        reactor::send_msg(to, move || {
            let g = match group_here(&opts) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!("nvmf rdma: no RDMA poll group on this reactor: {e}");
                    return;
                }
            };
            match CmId::adopt(moving, &g.ch) {
                Ok(cm) => qpair::accept(&g, id, ep, ConnectRequest { id: cm, private_data, responder_resources, initiator_depth }, slot),
                Err((_, e)) => tracing::warn!("nvmf rdma: moving a connection to this reactor: {e}"),
            }
        });
    }
}

/// Close the queue pair `id` of this reactor (an
/// [`crate::ctrlr::IoQpairRef`]'s `close`).
pub(crate) fn close_qpair(id: u64) {
    if let Some(q) = current().and_then(|g| g.qpairs.borrow().get(&id).cloned()) {
        q.close("its controller went away");
    }
}

/// Close every RDMA queue pair on every reactor and drop the groups
/// (target shutdown), then `then`.
pub fn close_all(then: impl FnOnce() + Send + 'static) {
    reactor::for_each_reactor(
        || {
            if let Some(g) = GROUP.with(|g| g.borrow_mut().take()) {
                g.close_everything("the target is shutting down");
                g.cm_poller.borrow_mut().take();
                g.timeout_poller.borrow_mut().take();
                g.listeners.borrow_mut().clear();
            }
        },
        then,
    );
}

/// A reactor's buffer pool and its registrations on one device: command
/// data buffers come from the pool (bounded, shared with TCP), not from
/// memory of each queue pair.
pub(crate) struct PoolRegions {
    /// Dropped before the pool.
    mrs: Vec<MemoryRegion>,
    pub(crate) pool: Rc<BufPool>,
}

impl PoolRegions {
    /// The SGE of `len` bytes of pool buffer `b`, or None if `b` is not
    /// the pool's (a bdev gave other memory back).
    pub(crate) fn sge(&self, b: &DmaBuf, len: u32) -> Option<pollux_rdma::sys::ibv_sge> {
        let addr = b.addr() as u64;
        self.mrs.iter().find(|m| m.covers(addr, len as usize)).map(|m| m.sge(addr, len))
    }
}

/// Every reactor's RDMA counters, in reactor order (None: no RDMA there).
pub fn group_stats(then: impl FnOnce(Vec<Option<RdmaStats>>) + Send + 'static) {
    reactor::map_reactors(|| current().map(|g| g.snapshot()), then);
}

/// The RDMA transport (main reactor).
pub struct RdmaTransport {
    main: Rc<Group>,
}

impl RdmaTransport {
    /// Load the RDMA libraries and open the connection manager; fails with
    /// the reason where RDMA is not available.
    pub fn new(opts: TransportOpts) -> Result<RdmaTransport, NvmfError> {
        // A command's data is one buffer of the iobuf pool.
        let large = pollux_core::dma::iobuf_options().large_bufsize;
        if u64::from(opts.max_io_size) > large {
            return Err(NvmfError::Unsupported(format!(
                "RDMA: max_io_size {} is larger than the iobuf large buffer size {large} (a command's data is one pool buffer; raise large_bufsize with iobuf_set_options)",
                opts.max_io_size
            )));
        }
        let main = group_here(&opts).map_err(|e| NvmfError::Unsupported(format!("RDMA is not available on this machine: {e}")))?;
        Ok(RdmaTransport { main })
    }
}

impl Transport for RdmaTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Rdma
    }

    fn opts(&self) -> &TransportOpts {
        &self.main.opts
    }

    fn listen(&self, ep: &Endpoint) -> Result<(), NvmfError> {
        let mut ls = self.main.listeners.borrow_mut();
        if let Some(l) = ls.iter().find(|l| l.ep == *ep) {
            l.uses.set(l.uses.get() + 1);
            return Ok(());
        }
        let ctx = next_id();
        let err = |e| NvmfError::Listen(ep.to_string(), std::io::Error::other(e));
        let id = CmId::new(&self.main.ch, ctx).map_err(err)?;
        id.listen(ep.addr, self.main.opts.acceptor_backlog.max(1)).map_err(err)?;
        let limit = ConnLimit::new(self.main.opts.max_connections_per_listener as usize);
        ls.push(Listener { ctx, ep: *ep, uses: Cell::new(1), limit, faults: FaultLog::default(), _id: id });
        tracing::info!("nvmf: listening on {ep}");
        Ok(())
    }

    fn stop_listen(&self, ep: &Endpoint) {
        let mut ls = self.main.listeners.borrow_mut();
        if let Some(pos) = ls.iter().position(|l| l.ep == *ep) {
            let l = &ls[pos];
            l.uses.set(l.uses.get().saturating_sub(1));
            if l.uses.get() == 0 {
                ls.remove(pos);
                tracing::info!("nvmf: stopped listening on {ep}");
            }
        }
    }

    fn describe(&self) -> Value {
        let o = &self.main.opts;
        json!({
            "trtype": "RDMA",
            "max_queue_depth": o.max_queue_depth,
            "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
            "in_capsule_data_size": o.in_capsule_data_size,
            "max_io_size": o.max_io_size,
            "io_unit_size": o.io_unit_size,
            "max_aq_depth": o.max_aq_depth,
            "num_shared_buffers": 0,
            "buf_cache_size": 0,
            "dif_insert_or_strip": false,
            "zcopy": false,
            "abort_timeout_sec": o.abort_timeout_sec,
            "acceptor_poll_rate": o.acceptor_poll_rate,
            "max_srq_depth": o.max_srq_depth,
            "no_srq": o.no_srq,
            "acceptor_backlog": o.acceptor_backlog,
            "no_wr_batching": false,
            "kas": o.kas,
            "min_kato": o.min_kato,
            "connect_timeout_sec": o.connect_timeout_sec,
            "max_connections_per_listener": o.max_connections_per_listener,
        })
    }
}
