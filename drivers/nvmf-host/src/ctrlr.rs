//! A remote controller: bring-up over the admin queue, the I/O queue of
//! each reactor, keep alive and shutdown.
//!
//! Bring-up, on the reactor that attaches (the main one): TCP connect and
//! ICReq/ICResp, Fabrics Connect of the admin queue (dynamic controller
//! id, the keep alive timeout), Property Get CAP and VS, Property Set
//! CC.EN, Property Get CSTS until RDY, Identify Controller, Set Features
//! Number of Queues, the active namespace list and Identify Namespace for
//! each. Each reactor that uses the controller then connects its own I/O
//! queue (Fabrics Connect with the controller id) when its channel is made;
//! requests wait until it is up.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pollux_core::bdev::{BdevIo, IoStatus};
use pollux_core::io_channel::IoDevice;
use pollux_core::reactor::{self, ReactorId};
use pollux_nvme_spec::cmd::{Command, admin};
use pollux_nvme_spec::fabrics::{self, ConnectCommand, ConnectData, PropertyCommand, property};
use pollux_nvme_spec::identify::{IdentifyController, IdentifyNamespace, cns};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::HostError;
use crate::qpair::{AdminDone, Fabric, Qpair, QpairConfig, Route};

/// The largest command transfer over RDMA (each command slot of a queue
/// pair registers a buffer this large).
pub const RDMA_MAX_TRANSFER: u32 = 128 * 1024;

/// Where a controller is and who the host is.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// TCP or RDMA.
    pub fabric: Fabric,
    pub addr: SocketAddr,
    pub hostaddr: Option<IpAddr>,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub hdgst: bool,
    pub ddgst: bool,
    /// I/O queues to ask for (0: one per reactor).
    pub num_io_queues: u32,
    /// Entries of each I/O queue.
    pub io_queue_size: u16,
    /// Keep alive timeout in ms (0: none).
    pub kato_ms: u32,
    pub connect_timeout: Duration,
    /// Largest transfer per command the host makes (MDTS caps it further).
    pub max_transfer: u32,
    /// After losing the controller: how long to keep reconnecting before
    /// deleting it (-1: forever; 0: one attempt), SPDK's
    /// `ctrlr_loss_timeout_sec`.
    pub ctrlr_loss_timeout_sec: i32,
    /// Between reconnect attempts.
    pub reconnect_delay_sec: u32,
    /// After this long down, I/O fails instead of waiting (0: it waits
    /// until the controller is back or deleted).
    pub fast_io_fail_timeout_sec: u32,
    /// An I/O command outstanding this long times out (None: never),
    /// SPDK's `timeout_us`.
    pub io_timeout: Option<Duration>,
    /// A timed-out I/O command is aborted first (SPDK's `action_on_timeout`
    /// `abort`); otherwise (`reset`) its queue pair ends and the controller
    /// reconnects, the commands sent again.
    pub abort_on_timeout: bool,
    /// Times a request whose command timed out is sent again before it
    /// fails (-1: no limit), SPDK's `bdev_retry_count`.
    pub bdev_retry_count: i32,
}

impl ConnectOptions {
    /// SPDK's defaults: digests off, 128-entry I/O queues, a 10 s keep
    /// alive timeout, a random host NQN and id.
    pub fn new(addr: SocketAddr, subnqn: &str) -> ConnectOptions {
        let id = uuid::Uuid::new_v4();
        ConnectOptions {
            fabric: Fabric::Tcp,
            addr,
            hostaddr: None,
            subnqn: subnqn.to_string(),
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{id}"),
            hostid: *id.as_bytes(),
            hdgst: false,
            ddgst: false,
            num_io_queues: 0,
            io_queue_size: 128,
            kato_ms: 10_000,
            connect_timeout: Duration::from_secs(10),
            max_transfer: 1 << 20,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            io_timeout: None,
            abort_on_timeout: false,
            bdev_retry_count: 3,
        }
    }
}

/// One namespace of a remote controller.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub metadata_size: u16,
    pub nguid: [u8; 16],
    /// From the namespace identification descriptors (zeros if none):
    /// Linux's nvmet gives a UUID and no NGUID unless configured.
    pub uuid: [u8; 16],
    pub eui64: [u8; 8],
    pub can_share: bool,
    /// ANA group (0: none).
    pub anagrpid: u32,
}

impl Namespace {
    /// What makes it this namespace and not another under the same NSID:
    /// its format and its first identifier of NGUID, UUID and EUI-64 that
    /// it has. (One, not all: a target that pins a namespace's NGUID in its
    /// configuration may still derive a UUID anew at each start. Linux's
    /// host compares all three.)
    pub fn ident(&self) -> Ident {
        let mut eui64 = [0; 16];
        eui64[..8].copy_from_slice(&self.eui64);
        let id = [(2, self.nguid), (3, self.uuid), (1, eui64)].into_iter().find(|(_, v)| *v != [0; 16]).unwrap_or((0, [0; 16]));
        Ident { id, block_size: self.block_size, metadata_size: self.metadata_size }
    }

    /// The UUID its bdev takes: the NGUID, else the UUID (as SPDK's
    /// `spdk_nvme_ns_get_uuid`), else none.
    pub fn bdev_uuid(&self) -> Option<[u8; 16]> {
        [self.nguid, self.uuid].into_iter().find(|u| *u != [0; 16])
    }
}

/// A namespace's identity (see [`Namespace::ident`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    /// The identifier's type (NIDT) and value.
    id: (u8, [u8; 16]),
    block_size: u32,
    metadata_size: u16,
}

/// ANA states and their SPDK names.
pub use pollux_nvme_spec::ana;

/// What the reactors' channels hold of an active namespace through one
/// path: its ANA state. A channel looks it up when the path set changes
/// (never per request), so the namespace list may change under it.
/// A namespace that goes away, or is another one under the same NSID,
/// leaves its state behind marked gone: a channel still holding it sends
/// nothing there.
#[derive(Debug)]
pub struct NsState {
    ana: AtomicU8,
    gone: AtomicBool,
    ident: Ident,
}

impl NsState {
    fn new(state: u8, ident: Ident) -> Arc<NsState> {
        Arc::new(NsState { ana: AtomicU8::new(state), gone: AtomicBool::new(false), ident })
    }

    pub fn ana_state(&self) -> u8 {
        self.ana.load(Ordering::Relaxed)
    }

    /// Whether the namespace is no longer active (as this) on its path.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Whether this is the namespace with identity `ident`.
    pub fn is(&self, ident: &Ident) -> bool {
        self.ident == *ident
    }

    fn set_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    fn set(&self, state: u8) -> bool {
        self.ana.swap(state, Ordering::Relaxed) != state
    }

    /// Set `to` if the state is `from`; returns whether it was.
    fn replace(&self, from: u8, to: u8) -> bool {
        self.ana.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// An active namespace of a controller, as last identified.
#[derive(Clone, Debug)]
struct Active {
    info: Namespace,
    state: Arc<NsState>,
}

/// What a new list of active namespaces changed against the old one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NsChanges {
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
    /// Identified again with another size, block size or identity.
    pub changed: Vec<u32>,
}

impl NsChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A controller that is up: what bring-up learnt, shared by all reactors.
pub struct Controller {
    name: String,
    pub opts: ConnectOptions,
    /// The controller id of the current association (changes on reconnect).
    cntlid: AtomicU16,
    /// Down: I/O waits (parked per reactor) until reconnected.
    down: AtomicBool,
    /// Given up on (fast I/O fail or controller loss): I/O fails at once.
    failing: AtomicBool,
    /// Taken out of its bdev controller (path detached): not chosen again.
    removed: AtomicBool,
    pub cap: u64,
    pub vs: u32,
    pub id: Box<IdentifyController>,
    /// Number of Namespaces (NN) of the current association's Identify
    /// Controller (`id` is the first association's).
    nn: AtomicU32,
    /// The active namespaces (by NSID), with the ANA state of each through
    /// this controller (optimized when it does not report ANA). They
    /// change with namespace attribute notices and reconnects (main
    /// reactor); a lock, never taken on the I/O path.
    namespaces: Mutex<Vec<Active>>,
    /// I/O queues the controller granted.
    pub io_queues: u16,
    /// Largest transfer per command (MDTS and the host's cap).
    pub max_transfer: u32,
    /// In-capsule data the controller takes on I/O queues.
    pub in_capsule: u32,
    /// Which I/O queue ids are in use (index qid - 1).
    qids: Mutex<Vec<bool>>,
    /// Commands of its I/O queues that timed out, and Aborts sent for
    /// them (`bdev_nvme_get_controllers`).
    pub timeouts: Arc<std::sync::atomic::AtomicU64>,
    pub aborts: std::sync::atomic::AtomicU64,
}

impl Controller {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid.load(Ordering::Relaxed)
    }

    /// Whether the controller is connected (not being reconnected).
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Mark the controller down (its I/O waits) or up again.
    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if !down {
            self.failing.store(false, Ordering::Relaxed);
        }
    }

    /// I/O fails at once from now until the controller is up again.
    pub(crate) fn set_failing(&self) {
        self.failing.store(true, Ordering::Relaxed);
    }

    /// Whether I/O to this controller fails at once (given up on).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub(crate) fn set_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// Whether this path was taken out of its bdev controller.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_cntlid(&self, id: u16) {
        self.cntlid.store(id, Ordering::Relaxed);
    }

    pub fn version(&self) -> String {
        format!("{}.{}", self.vs >> 16, (self.vs >> 8) & 0xff)
    }

    /// Whether the controller reports ANA states (CMIC bit 3).
    pub fn reports_ana(&self) -> bool {
        self.id.cmic & 8 != 0
    }

    /// The controller's Number of Namespaces (NN), as its last association
    /// reported it.
    pub fn nn(&self) -> u32 {
        self.nn.load(Ordering::Relaxed)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Vec<Active>> {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active namespaces, in NSID order.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.active().iter().map(|a| a.info.clone()).collect()
    }

    /// What `f` takes from active namespace `nsid`, if it is.
    fn with_active<T>(&self, nsid: u32, f: impl FnOnce(&Active) -> T) -> Option<T> {
        let list = self.active();
        list.binary_search_by_key(&nsid, |a| a.info.nsid).ok().map(|i| f(&list[i]))
    }

    /// Active namespace `nsid`, if it is.
    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        self.with_active(nsid, |a| a.info.clone())
    }

    /// The ANA state of active namespace `nsid` through this controller,
    /// for a channel to hold (None: not active here).
    pub fn ns_state(&self, nsid: u32) -> Option<Arc<NsState>> {
        self.with_active(nsid, |a| a.state.clone())
    }

    /// The ANA state of namespace `nsid` through this controller
    /// (inaccessible when it is not active here).
    pub fn ana_state(&self, nsid: u32) -> u8 {
        self.with_active(nsid, |a| a.state.ana_state()).unwrap_or(ana::INACCESSIBLE)
    }

    /// Take namespace `nsid`'s state from a command's path status (until
    /// the ANA log says otherwise). Returns whether it changed.
    pub(crate) fn mark_ana(&self, nsid: u32, state: u8) -> bool {
        self.with_active(nsid, |a| a.state.set(state)).unwrap_or(false)
    }

    /// Whether an active namespace is in ANA change through this controller.
    pub fn any_in_transition(&self) -> bool {
        self.active().iter().any(|a| a.state.ana_state() == ana::CHANGE)
    }

    /// Take the namespaces still in ANA change as inaccessible (until the
    /// ANA log says otherwise); returns their NSIDs.
    pub(crate) fn end_transitions(&self) -> Vec<u32> {
        self.active().iter().filter(|a| a.state.replace(ana::CHANGE, ana::INACCESSIBLE)).map(|a| a.info.nsid).collect()
    }

    /// Take the states an ANA log page (log identifier 0x0c) gives: each
    /// group descriptor's state for the namespaces it lists. Returns
    /// whether any changed; a malformed log changes nothing.
    pub fn apply_ana_log(&self, log: &[u8]) -> bool {
        let Some(groups) = parse_ana_log(log) else {
            tracing::warn!("nvmf host {}: malformed ANA log page", self.name);
            return false;
        };
        let mut changed = false;
        for a in self.active().iter() {
            let ns = &a.info;
            let by_nsid = groups.iter().find(|(_, _, nsids)| nsids.contains(&ns.nsid));
            let by_group = groups.iter().find(|(g, _, _)| *g == ns.anagrpid && ns.anagrpid != 0);
            if let Some((_, state, _)) = by_nsid.or(by_group) {
                changed |= a.state.set(*state);
            }
        }
        changed
    }

    /// Take a new identification of namespaces: `fresh` holds what was
    /// identified (a namespace with no blocks is not active), `scope` the
    /// NSIDs it covers (None: every namespace, `fresh` is the whole active
    /// list). A namespace kept keeps its ANA state; a new one starts
    /// optimized until the ANA log is read.
    pub(crate) fn update_namespaces(&self, fresh: Vec<Namespace>, scope: Option<&[u32]>) -> NsChanges {
        merge_namespaces(&mut self.active(), fresh, scope)
    }

    pub fn supports_compare(&self) -> bool {
        self.id.oncs.get() & pollux_nvme_spec::identify::oncs::COMPARE != 0
    }

    pub fn supports_write_zeroes(&self) -> bool {
        self.id.oncs.get() & pollux_nvme_spec::identify::oncs::WRITE_ZEROES != 0
    }

    pub fn supports_deallocate(&self) -> bool {
        self.id.oncs.get() & pollux_nvme_spec::identify::oncs::DATASET_MANAGEMENT != 0
    }

    /// The queue-pair settings of an I/O queue.
    fn io_config(&self) -> QpairConfig {
        let depth = self.opts.io_queue_size.min(((self.cap & 0xffff) as u16).saturating_add(1)).max(2) - 1;
        QpairConfig {
            fabric: self.opts.fabric,
            addr: self.opts.addr,
            hostaddr: self.opts.hostaddr,
            hdgst: self.opts.hdgst,
            ddgst: self.opts.ddgst,
            depth,
            max_transfer: self.max_transfer,
            in_capsule: self.in_capsule,
            connect_timeout: self.opts.connect_timeout,
            cmd_timeout: self.opts.io_timeout,
            requeue: true,
            retry_limit: u32::try_from(self.opts.bdev_retry_count).ok(),
            timeouts: Some(self.timeouts.clone()),
        }
    }

    fn take_qid(&self) -> Option<u16> {
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        let i = q.iter().position(|used| !used)?;
        q[i] = true;
        Some(i as u16 + 1)
    }

    fn put_qid(&self, qid: u16) {
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = q.get_mut(usize::from(qid).wrapping_sub(1)) {
            *u = false;
        }
    }
}

/// `Controller::update_namespaces` on list `list` (sorted by NSID, and
/// kept so). A namespace removed, or replaced by another under its NSID,
/// has its state marked gone.
fn merge_namespaces(list: &mut Vec<Active>, mut fresh: Vec<Namespace>, scope: Option<&[u32]>) -> NsChanges {
    let mut ch = NsChanges::default();
    fresh.retain(|f| f.num_blocks > 0);
    fresh.sort_by_key(|f| f.nsid);
    fresh.dedup_by_key(|f| f.nsid);
    let scope: Option<Vec<u32>> = scope.map(|s| {
        let mut v = s.to_vec();
        v.sort_unstable();
        v
    });
    let in_scope = |nsid: u32| scope.as_ref().is_none_or(|s| s.binary_search(&nsid).is_ok());
    list.retain(|a| {
        let keep = !in_scope(a.info.nsid) || fresh.binary_search_by_key(&a.info.nsid, |f| f.nsid).is_ok();
        if !keep {
            a.state.set_gone();
            ch.removed.push(a.info.nsid);
        }
        keep
    });
    let mut new = Vec::new();
    for f in fresh.into_iter().filter(|f| in_scope(f.nsid)) {
        match list.binary_search_by_key(&f.nsid, |a| a.info.nsid) {
            Ok(i) => {
                let a = &mut list[i];
                if a.info.ident() != f.ident() {
                    // Another namespace now: requests for the old one must
                    // not reach it.
                    a.state.set_gone();
                    a.state = NsState::new(ana::OPTIMIZED, f.ident());
                    ch.changed.push(f.nsid);
                } else if a.info.num_blocks != f.num_blocks || a.info.anagrpid != f.anagrpid {
                    ch.changed.push(f.nsid);
                }
                a.info = f;
            }
            Err(_) => {
                ch.added.push(f.nsid);
                new.push(Active { state: NsState::new(ana::OPTIMIZED, f.ident()), info: f });
            }
        }
    }
    if !new.is_empty() {
        list.extend(new);
        list.sort_by_key(|a| a.info.nsid);
    }
    ch
}

/// Who sends requests through an I/O queue (a namespace bdev's channel on
/// this reactor): requests the queue cannot send any more go back to it,
/// so it can choose another path, and it hears when the path is back.
pub(crate) trait PathUser {
    /// A request of this user that its path gave back.
    fn requeue(&self, io: BdevIo);
    /// The path changed state (up again, or given up on): look again at
    /// what waits.
    fn path_changed(&self);
}

/// A reactor's I/O queue of one controller: its queue pair (replaced on
/// reconnect, keeping its queue id), and the requests parked while the
/// controller is down and no user took them back.
pub struct IoQueue {
    ctrl: Arc<Controller>,
    qp: RefCell<Option<Rc<Qpair>>>,
    parked: RefCell<std::collections::VecDeque<(Route, BdevIo)>>,
    qid: u16,
    /// The queue pair is connected (Fabrics Connect done).
    live: Cell<bool>,
    /// The users, by route (namespace id and user).
    users: RefCell<Vec<(Route, Weak<dyn PathUser>)>>,
}

impl IoQueue {
    pub fn qpair(&self) -> Option<Rc<Qpair>> {
        self.qp.borrow().clone()
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }

    /// Whether requests go out now (connected, controller up).
    pub fn is_live(&self) -> bool {
        self.live.get() && self.ctrl.is_up() && !self.ctrl.is_failing() && !self.ctrl.is_removed()
    }

    /// Requests in flight or waiting on this queue.
    pub fn outstanding(&self) -> usize {
        self.qp.borrow().as_ref().map_or(0, |q| q.outstanding()) + self.parked.borrow().len()
    }

    /// `user` sends requests by `route` through this queue.
    pub(crate) fn add_user(&self, route: Route, user: Weak<dyn PathUser>) {
        let mut u = self.users.borrow_mut();
        u.retain(|(r, w)| *r != route && w.strong_count() > 0);
        u.push((route, user));
    }

    fn user(&self, route: Route) -> Option<Rc<dyn PathUser>> {
        self.users.borrow().iter().find(|(r, _)| *r == route).and_then(|(_, w)| w.upgrade())
    }

    pub(crate) fn tell_users(&self) {
        let users: Vec<_> = self.users.borrow().iter().filter_map(|(_, w)| w.upgrade()).collect();
        for u in users {
            u.path_changed();
        }
    }

    /// Send a request, or park it while the controller is down.
    pub fn submit(self: &Rc<Self>, route: Route, io: BdevIo) {
        if self.qid == 0 {
            return io.complete(IoStatus::NoDevice);
        }
        if self.ctrl.is_failing() {
            return io.complete(IoStatus::Failed);
        }
        if self.ctrl.is_removed() {
            return self.give_back(vec![(route, io)]);
        }
        let qp = self.qp.borrow().clone();
        match qp {
            Some(qp) if !qp.is_closed() && self.ctrl.is_up() => qp.submit(route, io),
            _ => self.parked.borrow_mut().push_back((route, io)),
        }
    }

    /// Requests this queue cannot send: back to their users (who choose
    /// another path, or wait). One whose user is gone (its bdev's channel
    /// closed) fails: sent later, it could reach another namespace that
    /// took the NSID meanwhile.
    fn give_back(&self, ios: Vec<(Route, BdevIo)>) {
        for (route, io) in ios {
            match self.user(route) {
                Some(u) => u.requeue(io),
                None => io.complete(IoStatus::NoDevice),
            }
        }
    }

    /// Connect (again) with the controller's current id; parked requests
    /// go once the Fabrics Connect succeeded.
    pub(crate) fn connect(self: &Rc<Self>) {
        if self.qid == 0 || self.ctrl.is_removed() {
            return;
        }
        // A queue pair still open is replaced; its requests park and go
        // on the new one.
        let old = self.qp.borrow_mut().take();
        self.live.set(false);
        if let Some(old) = old {
            let ios = old.close_take();
            self.park_front(ios);
        }
        let cfg = self.ctrl.io_config();
        let sqsize = cfg.depth;
        let qid = self.qid;
        let me = Rc::downgrade(self);
        let me2 = me.clone();
        let ctrl = self.ctrl.clone();
        let qp = Qpair::connect(
            cfg,
            qid,
            move |r| {
                let Some(q) = me.upgrade() else { return };
                if r.is_err() {
                    return; // on_fail says why
                }
                let Some(qp) = q.qpair() else { return };
                let q2 = q.clone();
                let qp2 = qp.clone();
                fabrics_connect(&qp, qid, sqsize, 0, ctrl.cntlid(), &ctrl.opts, move |r| match r {
                    Ok(_) => {
                        qp2.open_gate();
                        q2.live.set(true);
                        q2.flush_parked();
                        q2.tell_users();
                    }
                    Err(e) => qp2.fail(e),
                });
            },
            move |e, ios| {
                let Some(q) = me2.upgrade() else {
                    for (_, io) in ios {
                        io.complete(IoStatus::Failed);
                    }
                    return;
                };
                q.live.set(false);
                if q.ctrl.is_failing() {
                    q.park_front(ios);
                    q.fail_parked(IoStatus::Failed);
                } else {
                    q.give_back(ios);
                }
                let ctrl = q.ctrl.clone();
                let why = e.to_string();
                // The controller's reconnect runs on the main reactor.
                reactor::send_msg(ReactorId(0), move || crate::bdev::lost(&ctrl, &why));
            },
        );
        match qp {
            Ok(qp) => {
                let me = Rc::downgrade(self);
                qp.set_on_path_error(Rc::new(move |route, io, sc| {
                    let Some(q) = me.upgrade() else { return io.complete(IoStatus::Nvme { sct: 3, sc }) };
                    q.path_error(route, io, sc);
                }));
                if self.ctrl.opts.abort_on_timeout {
                    // The Abort goes on the admin queue, on the main reactor.
                    let ctrl = self.ctrl.clone();
                    qp.set_on_timeout(Rc::new(move |cid| {
                        let c = ctrl.clone();
                        reactor::send_msg(ReactorId(0), move || crate::bdev::abort_command(&c, qid, cid));
                    }));
                }
                *self.qp.borrow_mut() = Some(qp);
            }
            Err(e) => {
                tracing::error!("nvmf host {}: I/O queue {qid}: {e}", self.ctrl.name);
                let ctrl = self.ctrl.clone();
                let why = e.to_string();
                reactor::send_msg(ReactorId(0), move || crate::bdev::lost(&ctrl, &why));
            }
        }
    }

    /// The controller failed a request of namespace `nsid` with ANA status
    /// `sc` (1 persistent loss, 2 inaccessible, 3 transition): the path is
    /// taken as that for the namespace until the ANA log (read again now)
    /// says otherwise, and the request goes back to its user, who sends it
    /// on another path, waits for a transition, or fails it.
    fn path_error(&self, route: Route, io: BdevIo, sc: u8) {
        let nsid = route.nsid;
        if !self.ctrl.reports_ana() {
            // No ANA log to learn better from: the status is the answer.
            return io.complete(IoStatus::Nvme { sct: 3, sc });
        }
        let state = match sc {
            1 => ana::PERSISTENT_LOSS,
            2 => ana::INACCESSIBLE,
            _ => ana::CHANGE,
        };
        if self.ctrl.mark_ana(nsid, state) {
            let ctrl = self.ctrl.clone();
            reactor::send_msg(ReactorId(0), move || crate::bdev::ana_changed(&ctrl));
        }
        match self.user(route) {
            Some(u) => u.requeue(io),
            None => io.complete(IoStatus::Nvme { sct: 3, sc }),
        }
    }

    /// Close the queue pair (the controller went down, or this path was
    /// taken away): its requests go back to their users, who send them on
    /// another path or wait for this one.
    pub(crate) fn disconnect(&self) {
        let qp = self.qp.borrow_mut().take();
        self.live.set(false);
        let mut ios = qp.map(|qp| qp.close_take()).unwrap_or_default();
        ios.extend(self.parked.borrow_mut().drain(..));
        self.give_back(ios);
        self.tell_users();
    }

    fn park_front(&self, ios: Vec<(Route, BdevIo)>) {
        let mut p = self.parked.borrow_mut();
        for x in ios.into_iter().rev() {
            p.push_front(x);
        }
    }

    fn flush_parked(self: &Rc<Self>) {
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        for (route, io) in parked {
            self.submit(route, io);
        }
    }

    /// Fail what is parked (fast I/O fail, controller lost, detach), and
    /// have the users look again at what they hold for this path.
    pub(crate) fn fail_parked(&self, status: IoStatus) {
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        for (_, io) in parked {
            io.complete(status);
        }
        self.tell_users();
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        if let Some(qp) = self.qp.get_mut().take() {
            qp.close();
        }
        for (_, io) in self.parked.get_mut().drain(..) {
            io.complete(IoStatus::NoDevice);
        }
        if self.qid != 0 {
            self.ctrl.put_qid(self.qid);
        }
    }
}

impl IoDevice for Controller {
    type Channel = Rc<IoQueue>;

    fn create_channel(self: &Arc<Self>) -> Rc<IoQueue> {
        let qid = self.take_qid().unwrap_or_else(|| {
            tracing::error!("nvmf host {}: no I/O queue left for this reactor ({} granted)", self.name, self.io_queues);
            0
        });
        let q = Rc::new(IoQueue {
            ctrl: self.clone(),
            qp: RefCell::new(None),
            parked: RefCell::new(Default::default()),
            qid,
            live: Cell::new(false),
            users: RefCell::new(Vec::new()),
        });
        q.connect();
        q
    }
}

/// Send a Fabrics Connect for queue `qid` as the queue pair's first
/// command; `done` gets the controller id.
fn fabrics_connect(
    qp: &Rc<Qpair>,
    qid: u16,
    sqsize: u16,
    kato_ms: u32,
    cntlid: u16,
    o: &ConnectOptions,
    done: impl FnOnce(Result<u16, HostError>) + 'static,
) {
    let mut c = ConnectCommand::new_zeroed();
    c.opcode = fabrics::OPCODE;
    c.fctype = fabrics::fctype::CONNECT;
    c.qid = U16::new(qid);
    c.sqsize = U16::new(sqsize);
    c.kato = U32::new(kato_ms);
    let mut d = ConnectData::new_zeroed();
    d.hostid = o.hostid;
    d.cntlid = U16::new(cntlid);
    pollux_nvme_spec::set_nul_field(&mut d.subnqn, &o.subnqn);
    pollux_nvme_spec::set_nul_field(&mut d.hostnqn, &o.hostnqn);
    let cmd = Command::read_from_bytes(c.as_bytes()).expect("64 bytes");
    let (sub, host) = (o.subnqn.clone(), o.hostnqn.clone());
    qp.admin_first(
        cmd,
        d.as_bytes().to_vec(),
        Box::new(move |r| {
            done(r.and_then(|a: AdminDone| {
                let s = a.cqe.status();
                if s.is_success() {
                    Ok(a.cqe.result.get() as u16)
                } else {
                    Err(HostError::Refused(format!(
                        "Connect of queue {qid} to {sub} as {host} refused: {}",
                        connect_status(s, a.cqe.result.get())
                    )))
                }
            }))
        }),
    );
}

/// A failed Connect's status, with the invalid parameter it names.
fn connect_status(s: pollux_nvme_spec::status::Status, dw0: u32) -> String {
    let what = match (s.sct().code(), s.sc()) {
        (1, 0x80) => "incompatible format".to_string(),
        (1, 0x81) => "controller busy".to_string(),
        (1, 0x82) => {
            let (iattr, ipo) = (dw0 >> 16 & 1, dw0 & 0xffff);
            let field = match (iattr, ipo) {
                (1, 256) => "SUBNQN (no such subsystem)",
                (1, 512) => "HOSTNQN (the host is not allowed)",
                (1, 16) => "CNTLID",
                (1, _) => "a Connect data field",
                _ => "a Connect command field",
            };
            format!("invalid parameter: {field}")
        }
        (1, 0x83) => "restart discovery".into(),
        (1, 0x84) => "invalid host (the host is not allowed)".into(),
        _ => String::new(),
    };
    if what.is_empty() { s.to_string() } else { format!("{s}: {what}") }
}

fn property_get(qp: &Qpair, ofst: u32, eight: bool, done: impl FnOnce(Result<u64, HostError>) + 'static) {
    let mut c = PropertyCommand::new_zeroed();
    c.opcode = fabrics::OPCODE;
    c.fctype = fabrics::fctype::PROPERTY_GET;
    c.attrib = u8::from(eight);
    c.ofst = U32::new(ofst);
    let cmd = Command::read_from_bytes(c.as_bytes()).expect("64 bytes");
    qp.admin(
        cmd,
        Vec::new(),
        false,
        Box::new(move |r| {
            done(r.and_then(|a| {
                if a.cqe.status().is_success() {
                    Ok(u64::from(a.cqe.result.get()) | u64::from(a.cqe.dw1.get()) << 32)
                } else {
                    Err(HostError::Status(format!("Property Get {ofst:#x}"), a.cqe.status()))
                }
            }))
        }),
    );
}

fn property_set(qp: &Qpair, ofst: u32, value: u32, done: impl FnOnce(Result<(), HostError>) + 'static) {
    let mut c = PropertyCommand::new_zeroed();
    c.opcode = fabrics::OPCODE;
    c.fctype = fabrics::fctype::PROPERTY_SET;
    c.ofst = U32::new(ofst);
    c.value = U64::new(u64::from(value));
    let cmd = Command::read_from_bytes(c.as_bytes()).expect("64 bytes");
    qp.admin(cmd, Vec::new(), false, Box::new(move |r| done(check(r, "Property Set").map(|_| ()))));
}

fn check(r: Result<AdminDone, HostError>, what: &str) -> Result<AdminDone, HostError> {
    let a = r?;
    if a.cqe.status().is_success() { Ok(a) } else { Err(HostError::Status(what.to_string(), a.cqe.status())) }
}

/// Identify with CNS `cns` for `nsid`: 4096 bytes.
pub fn identify(qp: &Qpair, cns: u8, nsid: u32, done: impl FnOnce(Result<Vec<u8>, HostError>) + 'static) {
    let mut cmd = Command::new(admin::IDENTIFY);
    cmd.nsid.set(nsid);
    cmd.cdw10.set(u32::from(cns));
    qp.admin(cmd, vec![0; 4096], true, Box::new(move |r| done(check(r, "Identify").and_then(|a| whole(a.data, 4096, "Identify")))));
}

/// `data` if the controller sent all `len` bytes asked for: a shorter
/// answer to a command whose layout is fixed is the controller's fault.
pub(crate) fn whole(data: Vec<u8>, len: usize, what: &str) -> Result<Vec<u8>, HostError> {
    if data.len() < len {
        return Err(HostError::Transport(format!("{what}: the controller sent {} of {len} bytes", data.len())));
    }
    Ok(data)
}

/// A controller brought up, and its admin queue pair.
pub type Up = (Arc<Controller>, Rc<Qpair>);
type UpCb = Box<dyn FnOnce(Result<Up, HostError>)>;

/// Everything a bring-up gathers before the controller exists.
struct Bringup {
    name: String,
    /// A reconnect: the controller whose association this renews.
    existing: Option<Arc<Controller>>,
    /// Set once up: from then on a failure of the admin queue is a lost
    /// controller.
    up: Rc<RefCell<Option<Arc<Controller>>>>,
    opts: ConnectOptions,
    qp: Rc<Qpair>,
    cntlid: u16,
    cap: u64,
    vs: u32,
    id: Option<Box<IdentifyController>>,
    io_queues: u16,
    namespaces: Vec<Namespace>,
    deadline: Instant,
    done: Option<UpCb>,
}

type B = Rc<RefCell<Bringup>>;

fn finish(b: &B, r: Result<(), HostError>) {
    let (done, res) = {
        let mut s = b.borrow_mut();
        let Some(done) = s.done.take() else { return };
        let res = match r {
            Err(e) => {
                s.qp.close();
                Err(e)
            }
            Ok(()) if s.existing.is_some() => {
                let c = s.existing.clone().expect("checked");
                c.set_cntlid(s.cntlid);
                if let Some(id) = &s.id {
                    c.nn.store(id.nn.get(), Ordering::Relaxed);
                }
                // Notices sent while the controller was away are lost: the
                // namespaces are those the new association identified.
                let changes = c.update_namespaces(std::mem::take(&mut s.namespaces), None);
                if !changes.is_empty() {
                    tracing::info!("nvmf host: {}: namespaces changed while reconnecting: {changes:?}", c.name);
                }
                *s.up.borrow_mut() = Some(c.clone());
                Ok((c, s.qp.clone()))
            }
            Ok(()) => {
                let id = s.id.take().expect("identified");
                let mdts = id.max_transfer_bytes(4096usize << ((s.cap >> 48) & 0xf)).unwrap_or(usize::MAX);
                // Over RDMA each command slot has a registered buffer of
                // the largest transfer: bounded, larger requests split.
                let host_max = if s.opts.fabric == Fabric::Rdma { s.opts.max_transfer.min(RDMA_MAX_TRANSFER) } else { s.opts.max_transfer };
                let max_transfer = (mdts.min(host_max as usize) as u32).max(4096);
                // IOCCSZ counts 16-byte units of the whole capsule: the
                // 64-byte command, then the data.
                let in_capsule = (id.ioccsz.get().saturating_mul(16)).saturating_sub(64).min(max_transfer);
                let in_capsule = if id.icdoff.get() != 0 { 0 } else { in_capsule };
                let mut namespaces = Vec::new();
                merge_namespaces(&mut namespaces, std::mem::take(&mut s.namespaces), None);
                let ctrl = Arc::new(Controller {
                    name: s.name.clone(),
                    opts: s.opts.clone(),
                    cntlid: AtomicU16::new(s.cntlid),
                    down: AtomicBool::new(false),
                    failing: AtomicBool::new(false),
                    removed: AtomicBool::new(false),
                    cap: s.cap,
                    vs: s.vs,
                    nn: AtomicU32::new(id.nn.get()),
                    id,
                    namespaces: Mutex::new(namespaces),
                    io_queues: s.io_queues,
                    max_transfer,
                    in_capsule,
                    qids: Mutex::new(vec![false; usize::from(s.io_queues)]),
                    timeouts: Arc::new(std::sync::atomic::AtomicU64::new(0)),
                    aborts: std::sync::atomic::AtomicU64::new(0),
                });
                *s.up.borrow_mut() = Some(ctrl.clone());
                Ok((ctrl, s.qp.clone()))
            }
        };
        (done, res)
    };
    done(res);
}

/// Bring a remote controller up on this reactor: `done` gets it and its
/// admin queue pair, or why not. A failure of the admin queue after that
/// is reported to `crate::bdev::lost`.
pub fn connect(name: &str, opts: ConnectOptions, num_reactors: usize, done: impl FnOnce(Result<Up, HostError>) + 'static) {
    bring_up(name, opts, num_reactors, None, done)
}

/// Connect the admin queue of `ctrl` again (a new association, a new
/// controller id); its I/O queues reconnect after.
pub fn reconnect(ctrl: &Arc<Controller>, done: impl FnOnce(Result<Up, HostError>) + 'static) {
    let want = u32::from(ctrl.io_queues.max(1));
    let mut opts = ctrl.opts.clone();
    opts.num_io_queues = want;
    bring_up(&ctrl.name, opts, want as usize, Some(ctrl.clone()), done)
}

fn bring_up(
    name: &str,
    opts: ConnectOptions,
    num_reactors: usize,
    existing: Option<Arc<Controller>>,
    done: impl FnOnce(Result<Up, HostError>) + 'static,
) {
    let cfg = QpairConfig {
        fabric: opts.fabric,
        addr: opts.addr,
        hostaddr: opts.hostaddr,
        hdgst: opts.hdgst,
        ddgst: opts.ddgst,
        depth: 31,
        max_transfer: 1 << 16,
        in_capsule: 8192,
        connect_timeout: opts.connect_timeout,
        // A keep alive (or any admin command) unanswered for the keep alive
        // timeout means the controller is gone.
        cmd_timeout: Some(Duration::from_millis(if opts.kato_ms == 0 { 10_000 } else { u64::from(opts.kato_ms.max(1000)) })),
        requeue: false,
        retry_limit: None,
        timeouts: None,
    };
    let up: Rc<RefCell<Option<Arc<Controller>>>> = Rc::new(RefCell::new(None));
    let up2 = up.clone();
    let slot: Rc<RefCell<Option<B>>> = Rc::new(RefCell::new(None));
    let s2 = slot.clone();
    let want_queues = if opts.num_io_queues == 0 { num_reactors as u32 } else { opts.num_io_queues }.clamp(1, 65535);
    let qp = Qpair::connect(
        cfg,
        0,
        move |r| {
            let Some(b) = s2.borrow_mut().take() else { return };
            if let Err(e) = r {
                return finish(&b, Err(e));
            }
            let (qp, opts) = {
                let s = b.borrow();
                (s.qp.clone(), s.opts.clone())
            };
            let b2 = b.clone();
            let q2 = qp.clone();
            fabrics_connect(&q2, 0, 31, opts.kato_ms, fabrics::CNTLID_DYNAMIC, &opts, move |r| match r {
                Err(e) => finish(&b2, Err(e)),
                Ok(cntlid) => {
                    b2.borrow_mut().cntlid = cntlid;
                    qp.open_gate();
                    read_cap(b2, want_queues);
                }
            });
        },
        move |e, _| {
            let ctrl = up2.borrow().clone();
            if let Some(c) = ctrl {
                let why = e.to_string();
                reactor::send_msg(ReactorId(0), move || crate::bdev::lost(&c, &why));
            }
        },
    );
    let qp = match qp {
        Ok(q) => q,
        Err(e) => return done(Err(e)),
    };
    let b = Rc::new(RefCell::new(Bringup {
        name: name.to_string(),
        existing,
        up,
        deadline: Instant::now(),
        opts,
        qp,
        cntlid: 0,
        cap: 0,
        vs: 0,
        id: None,
        io_queues: 0,
        namespaces: Vec::new(),
        done: Some(Box::new(done)),
    }));
    *slot.borrow_mut() = Some(b);
}

fn qp_of(b: &B) -> Rc<Qpair> {
    b.borrow().qp.clone()
}

fn read_cap(b: B, want_queues: u32) {
    let qp = qp_of(&b);
    property_get(&qp, property::CAP, true, move |r| match r {
        Err(e) => finish(&b, Err(e)),
        Ok(cap) => {
            b.borrow_mut().cap = cap;
            let qp = qp_of(&b);
            property_get(&qp, property::VS, false, move |r| match r {
                Err(e) => finish(&b, Err(e)),
                Ok(vs) => {
                    b.borrow_mut().vs = vs as u32;
                    enable(b, want_queues);
                }
            });
        }
    });
}

fn enable(b: B, want_queues: u32) {
    let qp = qp_of(&b);
    // CC: EN, I/O SQ entries 2^6, CQ entries 2^4, NVM command set, 4 KiB pages.
    let cc = 1 | 6 << 16 | 4 << 20;
    let to = Duration::from_millis(500 * ((b.borrow().cap >> 24) & 0xff).max(1));
    b.borrow_mut().deadline = Instant::now() + to;
    property_set(&qp, property::CC, cc, move |r| match r {
        Err(e) => finish(&b, Err(e)),
        Ok(()) => wait_ready(b, want_queues),
    });
}

fn wait_ready(b: B, want_queues: u32) {
    let qp = qp_of(&b);
    property_get(&qp, property::CSTS, false, move |r| match r {
        Err(e) => finish(&b, Err(e)),
        Ok(csts) if csts & 2 != 0 => finish(&b, Err(HostError::Transport("the controller reports a fatal status (CSTS.CFS)".into()))),
        Ok(csts) if csts & 1 != 0 => identify_ctrlr(b, want_queues),
        Ok(_) if Instant::now() > b.borrow().deadline => {
            finish(&b, Err(HostError::Timeout("the controller did not become ready within CAP.TO".into())))
        }
        Ok(_) => wait_ready(b, want_queues),
    });
}

fn identify_ctrlr(b: B, want_queues: u32) {
    let qp = qp_of(&b);
    identify(&qp, cns::CONTROLLER, 0, move |r| match r {
        Err(e) => finish(&b, Err(e)),
        Ok(data) => {
            let mut id = IdentifyController::zeroed_box();
            id.as_mut_bytes().copy_from_slice(&data[..4096]);
            b.borrow_mut().id = Some(id);
            // A discovery controller has no I/O queues and no namespaces.
            if b.borrow().opts.subnqn == fabrics::DISCOVERY_NQN {
                return finish(&b, Ok(()));
            }
            set_queues(b, want_queues);
        }
    });
}

fn set_queues(b: B, want: u32) {
    let qp = qp_of(&b);
    let mut cmd = Command::new(admin::SET_FEATURES);
    cmd.cdw10.set(u32::from(pollux_nvme_spec::cmd::feature::NUMBER_OF_QUEUES));
    cmd.cdw11.set((want - 1) | (want - 1) << 16);
    qp.admin(
        cmd,
        Vec::new(),
        false,
        Box::new(move |r| match check(r, "Set Features (Number of Queues)") {
            Err(e) => finish(&b, Err(e)),
            Ok(a) => {
                let dw0 = a.cqe.result.get();
                let granted = ((dw0 & 0xffff).min(dw0 >> 16) + 1).min(want);
                b.borrow_mut().io_queues = granted as u16;
                async_config(b);
            }
        }),
    );
}

/// Asynchronous Event Configuration: the notices the host follows (the
/// namespace attribute notices Identify Controller's OAES offers, and ANA
/// change notices where the controller reports ANA), enabled before the
/// namespaces are read so that no change after the read goes unnoticed.
/// A controller that refuses it is still used (its changes are not
/// followed).
fn async_config(b: B) {
    let qp = qp_of(&b);
    let aec = b.borrow().id.as_ref().map_or(0, |id| notices(id));
    if aec == 0 {
        return ns_list(b);
    }
    set_async_events(&qp, aec, move |r| {
        if let Err(e) = r {
            let s = b.borrow();
            tracing::warn!(
                "nvmf host: {} at {}: notices not enabled ({e}); changes of namespaces and ANA states are not followed",
                s.name,
                s.opts.addr
            );
        }
        ns_list(b);
    });
}

/// Asynchronous Event Configuration (and OAES) bit 8: namespace attribute
/// notices.
pub const NS_ATTRIBUTE_NOTICES: u32 = 1 << 8;

/// The notices a host follows from controller `id`.
pub fn notices(id: &IdentifyController) -> u32 {
    let ana = if id.cmic & 8 != 0 { ana::OAES_ANA_CHANGE } else { 0 };
    (id.oaes.get() & NS_ATTRIBUTE_NOTICES) | ana
}

fn ns_list(b: B) {
    let qp = qp_of(&b);
    let nn = b.borrow().id.as_ref().map_or(0, |id| id.nn.get());
    active_namespaces(&qp, nn, move |r| match r {
        Err(e) => finish(&b, Err(e)),
        Ok(ids) => {
            let qp = qp_of(&b);
            identify_namespaces(&qp, ids, move |r| match r {
                Err(e) => finish(&b, Err(e)),
                Ok(nss) => {
                    b.borrow_mut().namespaces = nss;
                    finish(&b, Ok(()));
                }
            });
        }
    });
}

/// Namespaces a controller may have that the host follows: a bdev each,
/// an Identify each at attach and after each change (SPDK's
/// `nvmf_create_subsystem` allows 32 by default, Linux's nvmet 1024).
pub const MAX_NAMESPACES: usize = 4096;

/// The active namespace list (Identify CNS 02h), page after page while a
/// page is full, up to `nn` (the controller's Number of Namespaces) and
/// [`MAX_NAMESPACES`].
pub fn active_namespaces(qp: &Rc<Qpair>, nn: u32, done: impl FnOnce(Result<Vec<u32>, HostError>) + 'static) {
    next_ns_page(qp.clone(), nn, Vec::new(), Box::new(done));
}

fn next_ns_page(qp: Rc<Qpair>, nn: u32, mut ids: Vec<u32>, done: Box<dyn FnOnce(Result<Vec<u32>, HostError>)>) {
    let from = ids.last().copied().unwrap_or(0);
    let q = qp.clone();
    identify(&q, cns::ACTIVE_NAMESPACE_LIST, from, move |r| {
        let data = match r {
            Err(e) => return done(Err(e)),
            Ok(d) => d,
        };
        let page: Vec<u32> = data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).take_while(|&n| n != 0).collect();
        let full = page.len() == 1024;
        // The list ascends; anything else ends it (a controller that
        // repeats itself must not loop us), and so do NSIDs past what the
        // controller says it has.
        for n in page {
            if n <= ids.last().copied().unwrap_or(0) || n >= 0xffff_fffe || (nn != 0 && n > nn) {
                return done(Ok(ids));
            }
            if ids.len() == MAX_NAMESPACES {
                tracing::warn!(
                    "nvmf host: the controller has more than {MAX_NAMESPACES} active namespaces; those after NSID {from} are not followed"
                );
                return done(Ok(ids));
            }
            ids.push(n);
        }
        let last = ids.last().copied().unwrap_or(0);
        if full && (nn == 0 || last < nn) {
            next_ns_page(qp, nn, ids, done);
        } else {
            done(Ok(ids));
        }
    });
}

/// Identify Namespace for each of `nsids`, one after another. A namespace
/// that is not active (any more) comes back with no blocks.
pub fn identify_namespaces(qp: &Rc<Qpair>, nsids: Vec<u32>, done: impl FnOnce(Result<Vec<Namespace>, HostError>) + 'static) {
    next_ns(qp.clone(), nsids.into_iter(), Vec::new(), Box::new(done));
}

type NsDone = Box<dyn FnOnce(Result<Vec<Namespace>, HostError>)>;

fn next_ns(qp: Rc<Qpair>, mut nsids: std::vec::IntoIter<u32>, mut out: Vec<Namespace>, done: NsDone) {
    let Some(nsid) = nsids.next() else { return done(Ok(out)) };
    let q = qp.clone();
    identify(&q, cns::NAMESPACE, nsid, move |r| match r {
        // A namespace that went away between the list and its Identify
        // (older nvmet answers Invalid Namespace): not active. Only the
        // queue's failure fails the read.
        Err(HostError::Status(_, st)) => {
            tracing::debug!("nvmf host: Identify Namespace {nsid}: {st:?}; not active");
            next_ns(qp, nsids, out, done)
        }
        Err(e) => done(Err(e)),
        Ok(data) => {
            let ns = IdentifyNamespace::read_from_bytes(&data[..size_of::<IdentifyNamespace>()]).expect("4096 bytes");
            let f = ns.current_format();
            let info = Namespace {
                nsid,
                block_size: ns.block_size().unwrap_or(0),
                num_blocks: ns.nsze.get(),
                metadata_size: f.ms.get(),
                nguid: ns.nguid,
                uuid: [0; 16],
                eui64: ns.eui64,
                can_share: ns.nmic & 1 != 0,
                anagrpid: ns.anagrpid.get(),
            };
            if info.num_blocks == 0 {
                // Not active (any more): nothing more to read.
                out.push(info);
                return next_ns(qp, nsids, out, done);
            }
            // Its identifiers (a controller that has no list answers with
            // an error or zeros: the namespace has none beyond Identify's).
            let q = qp.clone();
            identify(&q, cns::NAMESPACE_DESCRIPTOR_LIST, nsid, move |r| {
                let mut info = info;
                if let Ok(d) = r {
                    let ids = pollux_nvme_spec::identify::parse_namespace_ids(&d);
                    info.uuid = ids.uuid;
                    if info.nguid == [0; 16] {
                        info.nguid = ids.nguid;
                    }
                    if info.eui64 == [0; 8] {
                        info.eui64 = ids.eui64;
                    }
                }
                out.push(info);
                next_ns(qp, nsids, out, done);
            });
        }
    });
}

/// Get Log Page `lid`: `len` bytes (a multiple of 4) from byte `offset`,
/// all of them (a shorter answer is an error).
pub fn get_log_page(qp: &Qpair, lid: u8, offset: u64, len: usize, done: impl FnOnce(Result<Vec<u8>, HostError>) + 'static) {
    get_log_page_upto(qp, lid, offset, len, move |r| done(r.and_then(|d| whole(d, len, "Get Log Page"))));
}

/// Get Log Page `lid`: up to `len` bytes from byte `offset` (a log that
/// may be shorter than asked, whose parser checks its own lengths).
pub fn get_log_page_upto(qp: &Qpair, lid: u8, offset: u64, len: usize, done: impl FnOnce(Result<Vec<u8>, HostError>) + 'static) {
    get_log_page_of(qp, lid, 0, offset, len, done)
}

/// Get Log Page `lid` for namespace `nsid` (`u32::MAX`: the controller as
/// a whole, as the SMART / Health log asks): up to `len` bytes from byte
/// `offset`.
pub fn get_log_page_of(qp: &Qpair, lid: u8, nsid: u32, offset: u64, len: usize, done: impl FnOnce(Result<Vec<u8>, HostError>) + 'static) {
    let mut cmd = Command::new(admin::GET_LOG_PAGE);
    cmd.nsid.set(nsid);
    let (cdw10, cdw11) = pollux_nvme_spec::log::get_log_page_dwords(lid, len, false);
    cmd.cdw10.set(cdw10);
    cmd.cdw11.set(cdw11);
    cmd.cdw12.set(offset as u32);
    cmd.cdw13.set((offset >> 32) as u32);
    qp.admin(cmd, vec![0; len], true, Box::new(move |r| done(check(r, "Get Log Page").map(|a| a.data))));
}

/// Set Features Asynchronous Event Configuration to `events`.
pub fn set_async_events(qp: &Qpair, events: u32, done: impl FnOnce(Result<(), HostError>) + 'static) {
    let mut cmd = Command::new(admin::SET_FEATURES);
    cmd.cdw10.set(u32::from(pollux_nvme_spec::cmd::feature::ASYNC_EVENT_CONFIG));
    cmd.cdw11.set(events);
    qp.admin(cmd, Vec::new(), false, Box::new(move |r| done(check(r, "Set Features (Asynchronous Event Configuration)").map(|_| ()))));
}

/// One Asynchronous Event Request: `done` gets the event (completion
/// dword 0: type bits 2:0, information 15:8, log page 23:16) when the
/// controller has one, or the error that ended the admin queue. It waits
/// for as long as it takes (no command timeout).
pub fn async_event(qp: &Qpair, done: impl FnOnce(Result<u32, HostError>) + 'static) {
    let cmd = Command::new(admin::ASYNC_EVENT_REQUEST);
    qp.admin(cmd, Vec::new(), false, Box::new(move |r| done(check(r, "Asynchronous Event Request").map(|a| a.cqe.result.get()))));
}

/// Abort command `cid` of submission queue `sqid`; `done` gets whether
/// the controller aborted it (completion dword 0 bit 0 clear).
pub fn abort(qp: &Qpair, sqid: u16, cid: u16, done: impl FnOnce(Result<bool, HostError>) + 'static) {
    let mut cmd = Command::new(admin::ABORT);
    cmd.cdw10.set(u32::from(sqid) | u32::from(cid) << 16);
    qp.admin(cmd, Vec::new(), false, Box::new(move |r| done(check(r, "Abort").map(|a| a.cqe.result.get() & 1 == 0))));
}

/// Keep Alive on the admin queue.
pub fn keep_alive(qp: &Qpair, done: impl FnOnce(Result<(), HostError>) + 'static) {
    let cmd = Command::new(admin::KEEP_ALIVE);
    qp.admin(cmd, Vec::new(), false, Box::new(move |r| done(check(r, "Keep Alive").map(|_| ()))));
}

/// Shut the controller down (CC.SHN normal), then `done`.
pub fn shutdown(qp: &Qpair, done: impl FnOnce(Result<(), HostError>) + 'static) {
    let cc = 1 | 6 << 16 | 4 << 20 | 1 << 14;
    property_set(qp, property::CC, cc, done);
}

pub use pollux_nvme_spec::ana::parse_log as parse_ana_log;

/// Bytes of ANA log page to read for this controller: the header, every
/// group it may report and every namespace id once.
pub fn ana_log_len(ctrl: &Controller) -> usize {
    let groups = ctrl.id.nanagrpid.get().clamp(1, 1024) as usize;
    // Every namespace the controller may list (not only those known: more
    // may have come), within what the host follows.
    let nsids = (ctrl.nn() as usize).max(ctrl.active().len()).clamp(1, MAX_NAMESPACES);
    (16 + 32 * groups + 4 * nsids).next_multiple_of(4).min(1 << 20)
}

/// Read the ANA log page of `ctrl` over its admin queue and take its
/// states; `done` says whether any changed.
pub fn refresh_ana(ctrl: &Arc<Controller>, qp: &Qpair, done: impl FnOnce(Result<bool, HostError>) + 'static) {
    if !ctrl.reports_ana() {
        return done(Ok(false));
    }
    let c = ctrl.clone();
    get_log_page_upto(qp, pollux_nvme_spec::log::lid::ASYMMETRIC_NAMESPACE_ACCESS, 0, ana_log_len(ctrl), move |r| {
        done(r.map(|log| c.apply_ana_log(&log)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(nsid: u32, num_blocks: u64) -> Namespace {
        Namespace {
            nsid,
            block_size: 512,
            num_blocks,
            metadata_size: 0,
            nguid: [nsid as u8; 16],
            uuid: [0; 16],
            eui64: [0; 8],
            can_share: true,
            anagrpid: 1,
        }
    }

    fn nsids(list: &[Active]) -> Vec<u32> {
        list.iter().map(|a| a.info.nsid).collect()
    }

    #[test]
    fn a_whole_list_adds_removes_and_resizes_and_keeps_the_ana_state_of_what_stays() {
        let mut list = Vec::new();
        let ch = merge_namespaces(&mut list, vec![ns(1, 100), ns(3, 100)], None);
        assert_eq!(ch, NsChanges { added: vec![1, 3], ..Default::default() });
        list[0].state.set(ana::NON_OPTIMIZED);
        let held = list[0].state.clone();
        let three = list[1].state.clone();
        // 3 gone, 2 new, 1 grown; one with no blocks is not active.
        let ch = merge_namespaces(&mut list, vec![ns(2, 50), ns(1, 200), ns(7, 0)], None);
        assert_eq!(ch, NsChanges { added: vec![2], removed: vec![3], changed: vec![1] });
        assert_eq!(nsids(&list), [1, 2]);
        assert_eq!(list[0].info.num_blocks, 200);
        assert!(Arc::ptr_eq(&list[0].state, &held), "a channel's state stays the namespace's");
        assert!(!held.is_gone());
        assert!(three.is_gone(), "a channel holding a removed namespace sends nothing there");
        assert_eq!(list[0].state.ana_state(), ana::NON_OPTIMIZED);
        assert_eq!(list[1].state.ana_state(), ana::OPTIMIZED);
        let ch = merge_namespaces(&mut list, vec![ns(2, 50), ns(1, 200)], None);
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn a_scoped_identification_changes_only_the_namespaces_it_covers() {
        let mut list = Vec::new();
        merge_namespaces(&mut list, vec![ns(1, 100), ns(2, 100), ns(3, 100)], None);
        // The log names 2 (gone: not identified) and 4 (new); 1 and 3 are
        // outside the scope and stay, though `fresh` does not have them.
        let ch = merge_namespaces(&mut list, vec![ns(4, 10)], Some(&[2, 4]));
        assert_eq!(ch, NsChanges { added: vec![4], removed: vec![2], changed: vec![] });
        assert_eq!(nsids(&list), [1, 3, 4]);
        // Identified with no blocks (inactive by the time it was asked).
        let ch = merge_namespaces(&mut list, vec![ns(3, 0)], Some(&[3]));
        assert_eq!(ch.removed, [3]);
        assert_eq!(nsids(&list), [1, 4]);
        // A UUID that changes beside the same NGUID: the same namespace (a
        // target that pins the NGUID and derives the UUID at each start).
        let mut same = ns(1, 100);
        same.uuid = [0xdd; 16];
        assert!(merge_namespaces(&mut list, vec![same], Some(&[1])).is_empty());
        // Another namespace under NSID 1: same size, another identity (its
        // UUID only, as Linux's nvmet tells them apart: it has no NGUID).
        list[0].info.nguid = [0; 16];
        let old = list[0].state.clone();
        let mut other = ns(1, 100);
        other.nguid = [0; 16];
        other.uuid = [0xee; 16];
        let ch = merge_namespaces(&mut list, vec![other.clone()], Some(&[1]));
        assert_eq!(ch.changed, [1]);
        assert!(old.is_gone() && !old.is(&other.ident()));
        assert!(!list[0].state.is_gone() && list[0].state.is(&other.ident()), "a new state for the new namespace");
    }

    #[test]
    fn many_namespaces_merge_in_order() {
        // 4096 namespaces (MAX_NAMESPACES), given in reverse, then every
        // other one removed in one scoped identification.
        let mut list = Vec::new();
        merge_namespaces(&mut list, (1..=4096).rev().map(|n| ns(n, 10)).collect(), None);
        let gone: Vec<u32> = (1..=4096).step_by(2).collect();
        let ch = merge_namespaces(&mut list, Vec::new(), Some(&gone));
        assert_eq!(ch.removed.len(), 2048);
        assert_eq!(nsids(&list), (2..=4096).step_by(2).collect::<Vec<_>>());
    }
}
