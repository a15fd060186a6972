//! Remote namespaces as bdevs: one bdev per namespace of a bdev
//! controller, named as SPDK names them (`Nvme0n1`). A bdev controller has
//! one path or several (`multipath`): a controller each, with its own
//! connections. A bdev's channel on a reactor sends each request through
//! the I/O queue of the path its policy chooses (see [`crate::multipath`]).
//!
//! Bdev controllers live in a registry on the main reactor, with each
//! path's admin queue pair and keep alive poller. Detaching deletes the
//! bdevs (users are told to close them), then shuts each controller down
//! (CC.SHN) and closes its connections; detaching one path of several
//! moves its requests to the others.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pollux_core::app::ConfigWriter;
use pollux_core::bdev::{self, Backend, BackendChannel, BdevSpec, IoStatus, IoType, Uuid};
use pollux_core::io_channel::try_get_io_channel;
use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use serde_json::{Value, json};

use crate::HostError;
use crate::ctrlr::{self, ConnectOptions, Controller, Ident, Namespace};
use crate::multipath::{self, NamespaceChannel, NsPaths, PathSet, PathState, Policy};
use crate::qpair::Qpair;

struct NamespaceBackend {
    set: Arc<PathSet>,
    /// The path the bdev was made from (what it supports).
    first: Arc<Controller>,
    nsid: u32,
    /// The namespace's identity: a path whose namespace `nsid` is another
    /// one is no path of this bdev.
    ident: Ident,
    policy: Arc<Policy>,
}

impl Backend for NamespaceBackend {
    fn module_name(&self) -> &'static str {
        "nvme"
    }

    fn product_name(&self) -> &'static str {
        "NVMe disk"
    }

    fn supports(&self, kind: IoType) -> bool {
        match kind {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::Unmap => self.first.supports_deallocate(),
            IoType::WriteZeroes => self.first.supports_write_zeroes(),
            IoType::Compare => self.first.supports_compare(),
            IoType::Reset => false,
        }
    }

    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(NamespaceChannel(NsPaths::new(self.set.clone(), self.nsid, self.ident, self.policy.clone())))
    }

    fn driver_specific(&self) -> Value {
        let paths = self.set.paths();
        let paths = if paths.is_empty() { vec![self.first.clone()] } else { paths };
        json!(
            paths
                .iter()
                .map(|c| {
                    let o = &c.opts;
                    let ns = c.namespace(self.nsid);
                    json!({
                        "trid": trid(o),
                        "cntlid": c.cntlid(),
                        "host": {"nqn": o.hostnqn, "addr": o.hostaddr.map(|a| a.to_string()).unwrap_or_default(), "svcid": ""},
                        "ctrlr_data": {
                            "cntlid": c.cntlid(),
                            "vendor_id": format!("{:#06x}", c.id.vid.get()),
                            "model_number": c.id.model(),
                            "serial_number": c.id.serial(),
                            "firmware_revision": c.id.firmware(),
                            "subnqn": c.id.subsystem_nqn(),
                            "multi_ctrlr": c.id.cmic & 2 != 0,
                            "ana_reporting": c.id.cmic & 8 != 0,
                        },
                        "vs": {"nvme_version": c.version()},
                        "ns_data": {"id": self.nsid, "can_share": ns.is_some_and(|n| n.can_share), "ana_state": ctrlr::ana::name(c.ana_state(self.nsid))},
                    })
                })
                .collect::<Vec<_>>()
        )
    }

    fn destroy(&self) {
        let (set, nsid) = (self.set.clone(), self.nsid);
        // Runs where the last descriptor closed: the registry is the main
        // reactor's.
        reactor::send_msg(ReactorId(0), move || namespace_destroyed(&set, nsid));
    }
}

fn trid(o: &ConnectOptions) -> Value {
    json!({
        "trtype": o.fabric.name(),
        "adrfam": if o.addr.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": o.addr.ip().to_string(),
        "trsvcid": o.addr.port().to_string(),
        "subnqn": o.subnqn,
    })
}

/// One path of a bdev controller: a controller and its admin queue (main
/// reactor).
struct Link {
    ctrl: Arc<Controller>,
    admin: Rc<Qpair>,
    attach_params: Value,
    _keep_alive: Option<Poller>,
    /// Since when the controller is lost (reconnecting).
    lost_at: Option<Instant>,
    /// The next reconnect attempt, while lost.
    retry: Option<Poller>,
    /// An attempt is under way.
    attempting: bool,
    resets: u64,
    /// Told how the reconnect under way ends (bdev_nvme_reset_controller).
    waiters: Vec<ResetDone>,
    /// While a namespace is in ANA change through this path: the check
    /// after the controller's ANA transition time.
    anatt: Option<Poller>,
    /// Reading the namespaces again after a notice; `Some(true)`: another
    /// notice came meanwhile, read them all again after.
    rescan: Option<bool>,
    /// After a failed read of the namespaces (the notice is spent): the
    /// next attempt.
    rescan_retry: Option<Poller>,
}

type ResetDone = Box<dyn FnOnce(Result<(), String>)>;

/// A namespace bdev of a bdev controller.
struct NsBdev {
    name: String,
    nsid: u32,
    policy: Arc<Policy>,
    /// The namespace as the bdev shows it (its size follows the
    /// controller's).
    info: Namespace,
}

/// A bdev controller (SPDK's `nvme_bdev_ctrlr`): its paths and its
/// namespace bdevs (main reactor).
struct Group {
    name: String,
    set: Arc<PathSet>,
    links: Vec<Link>,
    /// The namespace bdevs.
    bdevs: Vec<NsBdev>,
    /// Namespaces whose bdev is being deleted (gone from every path, or
    /// another namespace now under its NSID): no new bdev for them until
    /// the old one is gone.
    leaving: Vec<u32>,
    /// Namespaces that get no bdev (as identified), not reported again.
    unusable: Vec<Namespace>,
    /// Registered bdevs not yet destroyed (those leaving included).
    live: usize,
    on_detached: Vec<Done>,
    detaching: bool,
}

impl Group {
    fn link(&mut self, c: &Arc<Controller>) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| Arc::ptr_eq(&l.ctrl, c))
    }
}

/// The bdev controller that has path `c`.
fn group_of<'a>(groups: &'a mut [Group], c: &Arc<Controller>) -> Option<&'a mut Group> {
    groups.iter_mut().find(|g| g.links.iter().any(|l| Arc::ptr_eq(&l.ctrl, c)))
}

/// A timer of path `ctrl`: every `delay` until it is dropped, `then(ctrl)`
/// as a message to the main reactor (not from inside the poller, which
/// `then` may drop), while the controller exists.
fn path_timer(name: &'static str, ctrl: &Arc<Controller>, delay: Duration, then: fn(&Arc<Controller>)) -> Poller {
    let weak = Arc::downgrade(ctrl);
    reactor::register_timed_poller(name, delay, move || {
        let w = weak.clone();
        reactor::send_msg(ReactorId(0), move || {
            if let Some(c) = w.upgrade() {
                then(&c);
            }
        });
        PollStatus::Busy
    })
}

type Done = Box<dyn FnOnce()>;

#[derive(Default)]
struct Registry {
    groups: RefCell<Vec<Group>>,
    /// Names being attached (bring-up in progress).
    pending: RefCell<Vec<String>>,
    /// Paths being taken away, until every reactor let go of them.
    removing: RefCell<Vec<(Link, Done)>>,
}

fn registry() -> Rc<Registry> {
    assert_eq!(reactor::current(), ReactorId(0), "the nvmf host registry lives on the main reactor");
    match reactor::local::<Registry>() {
        Some(r) => r,
        None => {
            let r = Rc::new(Registry::default());
            reactor::set_local(r.clone());
            r
        }
    }
}

/// Whether a fabrics controller (attached or attaching) has this name.
pub fn exists(name: &str) -> bool {
    let r = registry();
    r.groups.borrow().iter().any(|g| g.name == name) || r.pending.borrow().iter().any(|n| n == name)
}

/// Whether a fabrics controller is attached (brought up) under this name.
pub fn attached(name: &str) -> bool {
    registry().groups.borrow().iter().any(|g| g.name == name)
}

/// The controllers attached (every path), in attach order.
pub fn controllers() -> Vec<Arc<Controller>> {
    registry().groups.borrow().iter().flat_map(|g| g.links.iter().map(|l| l.ctrl.clone())).collect()
}

/// Attach the controller at `opts.addr` under `name` (main reactor):
/// bring it up, then register a bdev per namespace. With `multipath` (SPDK's
/// `failover` or `multipath`) and an existing bdev controller of that
/// name, the controller becomes another path to its namespaces instead. `done` gets the bdev names.
/// `attach_params` is what save_config writes back.
pub fn attach(
    name: &str,
    opts: ConnectOptions,
    attach_params: Value,
    multipath: bool,
    done: impl FnOnce(Result<Vec<String>, HostError>) + 'static,
) {
    let reg = registry();
    if reg.pending.borrow().iter().any(|n| n == name) {
        return done(Err(HostError::Busy(format!("controller {name} is being attached"))));
    }
    {
        let groups = reg.groups.borrow();
        if let Some(g) = groups.iter().find(|g| g.name == name) {
            if !multipath {
                return done(Err(HostError::Exists(format!("A controller named {name} already exists and multipath is disabled"))));
            }
            if g.detaching {
                return done(Err(HostError::Busy(format!("controller {name} is being detached"))));
            }
            if let Some(l) = g.links.first() {
                if l.ctrl.opts.subnqn != opts.subnqn {
                    return done(Err(HostError::Invalid(format!(
                        "controller {name} is subsystem {}, not {}: paths of one controller lead to one subsystem",
                        l.ctrl.opts.subnqn, opts.subnqn
                    ))));
                }
                if l.ctrl.opts.hostnqn != opts.hostnqn {
                    return done(Err(HostError::Invalid(format!(
                        "controller {name} is attached as host {}: every path uses it",
                        l.ctrl.opts.hostnqn
                    ))));
                }
            }
            if g.links
                .iter()
                .any(|l| l.ctrl.opts.fabric == opts.fabric && l.ctrl.opts.addr == opts.addr && l.ctrl.opts.hostaddr == opts.hostaddr)
            {
                return done(Err(HostError::Exists(format!("A controller named {name} already exists with the specified network path"))));
            }
        }
    }
    let as_path = reg.groups.borrow().iter().any(|g| g.name == name);
    reg.pending.borrow_mut().push(name.to_string());
    let n = name.to_string();
    ctrlr::connect(name, opts, reactor::count(), move |r| {
        let reg = registry();
        reg.pending.borrow_mut().retain(|p| p != &n);
        match r {
            Err(e) => done(Err(e)),
            // A path to a controller detached meanwhile refuses itself
            // (add_path says so) rather than bring the controller back.
            Ok((ctrl, admin)) if as_path => done(add_path(&n, ctrl, admin, attach_params)),
            Ok((ctrl, admin)) => done(Ok(add(ctrl, admin, attach_params))),
        }
    });
}

/// The SMART / Health Information log page (`len` bytes) of bdev controller
/// `name`, read through its first path that is connected, with that path's
/// controller (main reactor; `bdev_nvme_get_controller_health_info`).
/// `Err(None)`: no attached controller has the name.
pub fn health_log(name: &str, len: usize, done: impl FnOnce(Result<(Arc<Controller>, Vec<u8>), Option<String>>) + 'static) {
    let found = {
        let reg = registry();
        let groups = reg.groups.borrow();
        groups
            .iter()
            .find(|g| g.name == name && !g.detaching)
            .map(|g| g.links.iter().find(|l| l.lost_at.is_none()).map(|l| (l.ctrl.clone(), l.admin.clone())))
    };
    let (ctrl, admin) = match found {
        None => return done(Err(None)),
        Some(None) => return done(Err(Some(format!("Controller {name} has no connected path")))),
        Some(Some(path)) => path,
    };
    // NSID FFFFFFFFh: the controller as a whole (Linux's target refuses
    // the SMART log for NSID 0).
    ctrlr::get_log_page_of(&admin, pollux_nvme_spec::log::lid::SMART_HEALTH, u32::MAX, 0, len, move |r| {
        match r.and_then(|d| ctrlr::whole(d, len, "Get Log Page")) {
            Ok(data) => done(Ok((ctrl, data))),
            Err(e) => done(Err(Some(format!("cannot read the health log: {e}")))),
        }
    });
}

/// The admin queue of path `ctrl`, if it is attached (main reactor).
fn admin_of(ctrl: &Arc<Controller>) -> Option<Rc<Qpair>> {
    registry().groups.borrow_mut().iter_mut().find_map(|g| g.link(ctrl).map(|l| l.admin.clone()))
}

/// Run `f` on path `ctrl`'s I/O queue on every reactor that has one.
fn each_queue(ctrl: Arc<Controller>, f: impl Fn(&Rc<ctrlr::IoQueue>) + Send + Sync + 'static) {
    reactor::for_each_reactor(
        move || {
            if let Some(q) = try_get_io_channel(&ctrl) {
                f(&q);
            }
        },
        || {},
    );
}

fn keep_alive_poller(ctrl: &Arc<Controller>) -> Option<Poller> {
    (ctrl.opts.kato_ms > 0).then(|| {
        let weak = Arc::downgrade(ctrl);
        // Half the timeout, as Linux and SPDK send it.
        let period = Duration::from_millis(u64::from(ctrl.opts.kato_ms / 2).max(100));
        reactor::register_timed_poller("nvmf_host_keep_alive", period, move || {
            let Some(c) = weak.upgrade() else { return PollStatus::Idle };
            let qp = admin_of(&c);
            let Some(qp) = qp else { return PollStatus::Idle };
            if !qp.is_ready() {
                return PollStatus::Idle;
            }
            ctrlr::keep_alive(&qp, |r| {
                if let Err(e) = r {
                    tracing::warn!("nvmf host: keep alive: {e}");
                }
            });
            PollStatus::Busy
        })
    })
}

fn new_link(ctrl: Arc<Controller>, admin: Rc<Qpair>, attach_params: Value) -> Link {
    Link {
        _keep_alive: keep_alive_poller(&ctrl),
        ctrl,
        admin,
        attach_params,
        lost_at: None,
        retry: None,
        attempting: false,
        resets: 0,
        waiters: Vec::new(),
        anatt: None,
        rescan: None,
        rescan_retry: None,
    }
}

/// A bdev for namespace `ns` of `ctrl` (through the paths of `set`), if
/// the host can serve it.
fn register_namespace(ctrl: &Arc<Controller>, ns: &Namespace, set: &Arc<PathSet>) -> Result<NsBdev, String> {
    let name = format!("{}n{}", ctrl.name(), ns.nsid);
    if ns.metadata_size != 0 {
        return Err(format!("{name}: namespace has {} metadata bytes per block (not supported); no bdev", ns.metadata_size));
    }
    if let Some(why) = bdev::unusable_geometry(ns.block_size, ns.num_blocks, ctrl.max_transfer as usize) {
        return Err(format!("{name}: namespace has {why}; no bdev"));
    }
    let uuid = ns.bdev_uuid().map(Uuid::from_bytes);
    let policy = Arc::new(Policy::default());
    let backend =
        Arc::new(NamespaceBackend { set: set.clone(), first: ctrl.clone(), nsid: ns.nsid, ident: ns.ident(), policy: policy.clone() });
    match bdev::register(BdevSpec { name: name.clone(), block_size: ns.block_size, num_blocks: ns.num_blocks, uuid, backend }) {
        Ok(_) => Ok(NsBdev { name, nsid: ns.nsid, policy, info: ns.clone() }),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Make bdev controller `g`'s bdevs follow the namespaces its paths have
/// (SPDK's `nvme_ctrlr_populate_namespaces`): a bdev for each namespace
/// some path has (as the first such path in attach order identifies it),
/// the new size of one that changed it, no bdev for one no path has any
/// more (deleted: its users are told), and a new bdev for one that is
/// another namespace under the same NSID (identity or block size) once the
/// old one is gone. Channels look their namespaces up again. Returns the
/// bdevs registered.
fn reconcile(g: &mut Group) -> Vec<String> {
    if g.detaching {
        return Vec::new();
    }
    // Each namespace as the first connected path (attach order) sees it,
    // else as the first path that lists it: a path that is down may not
    // know what changed.
    let mut wanted: std::collections::BTreeMap<u32, (Arc<Controller>, Namespace)> = Default::default();
    for ready in [true, false] {
        for l in g.links.iter().filter(|l| link_ready(l) == ready) {
            for ns in l.ctrl.namespaces() {
                wanted.entry(ns.nsid).or_insert_with(|| (l.ctrl.clone(), ns));
            }
        }
    }
    let mut gone = Vec::new();
    for b in std::mem::take(&mut g.bdevs) {
        match wanted.get(&b.nsid) {
            Some((_, ns)) if ns.ident() == b.info.ident() => g.bdevs.push(b),
            _ => gone.push(b),
        }
    }
    for b in &mut g.bdevs {
        let ns = &wanted[&b.nsid].1;
        if ns.num_blocks != b.info.num_blocks {
            match bdev::notify_blockcnt_change(&b.name, ns.num_blocks) {
                Ok(()) => {
                    tracing::info!(
                        "nvmf host: {}: namespace {} resized, {} -> {} blocks",
                        b.name,
                        b.nsid,
                        b.info.num_blocks,
                        ns.num_blocks
                    );
                    b.info.num_blocks = ns.num_blocks;
                }
                Err(e) => tracing::error!("nvmf host: {}: namespace {} now has {} blocks: {e}", b.name, b.nsid, ns.num_blocks),
            }
        }
    }
    for b in gone {
        let why = if wanted.contains_key(&b.nsid) { "is another namespace now" } else { "is gone" };
        tracing::info!("nvmf host: {}: namespace {} {why}; deleting bdev {}", g.name, b.nsid, b.name);
        g.leaving.push(b.nsid);
        bdev::unregister(&b.name, |_| {});
    }
    g.unusable.retain(|u| wanted.get(&u.nsid).is_some_and(|(_, ns)| same(ns, u)));
    let mut added = Vec::new();
    let taken: std::collections::HashSet<u32> =
        g.bdevs.iter().map(|b| b.nsid).chain(g.leaving.iter().copied()).chain(g.unusable.iter().map(|u| u.nsid)).collect();
    for (nsid, (c, ns)) in &wanted {
        if taken.contains(nsid) {
            continue;
        }
        match register_namespace(c, ns, &g.set) {
            Ok(b) => {
                added.push(b.name.clone());
                g.live += 1;
                g.bdevs.push(b);
            }
            Err(e) => {
                tracing::warn!("nvmf host: {e}");
                g.unusable.push(ns.clone());
            }
        }
    }
    g.bdevs.sort_by_key(|b| b.nsid);
    g.set.touch();
    added
}

fn same(a: &Namespace, b: &Namespace) -> bool {
    a.nsid == b.nsid && a.num_blocks == b.num_blocks && a.ident() == b.ident()
}

fn add(ctrl: Arc<Controller>, admin: Rc<Qpair>, attach_params: Value) -> Vec<String> {
    let set = PathSet::new(ctrl.clone());
    let mut g = Group {
        name: ctrl.name().to_string(),
        set,
        live: 0,
        bdevs: Vec::new(),
        leaving: Vec::new(),
        unusable: Vec::new(),
        links: vec![new_link(ctrl.clone(), admin.clone(), attach_params)],
        on_detached: Vec::new(),
        detaching: false,
    };
    let names = reconcile(&mut g);
    tracing::info!("nvmf host: attached {} ({} at {}), bdevs {:?}", ctrl.name(), ctrl.opts.subnqn, ctrl.opts.addr, names);
    registry().groups.borrow_mut().push(g);
    watch_events(&ctrl, &admin);
    // A subsystem with no namespace yet stays attached, as with SPDK, and
    // gets a bdev for each namespace the target adds.
    names
}

/// Another path to the namespaces of bdev controller `name`: its
/// namespaces must be the same ones (a namespace only it has gets a bdev).
fn add_path(name: &str, ctrl: Arc<Controller>, admin: Rc<Qpair>, attach_params: Value) -> Result<Vec<String>, HostError> {
    let reg = registry();
    let mut groups = reg.groups.borrow_mut();
    let refuse = |why: String| {
        let a = admin.clone();
        ctrlr::shutdown(&admin, move |_| a.close());
        Err(HostError::Invalid(why))
    };
    let Some(g) = groups.iter_mut().find(|g| g.name == name) else {
        return refuse(format!("controller {name} went away while the path was attached"));
    };
    if g.detaching {
        return refuse(format!("controller {name} is being detached"));
    }
    // Its namespaces must be those the connected paths have (identity and
    // format; a size that differs is followed, as a resize; with every
    // path down, the new one's view counts), and it must carry a block of
    // each it shares.
    for ns in &ctrl.namespaces() {
        let theirs = g.links.iter().filter(|l| link_ready(l)).find_map(|l| l.ctrl.namespace(ns.nsid));
        if theirs.is_some_and(|t| t.ident() != ns.ident()) {
            return refuse(format!(
                "namespace {} at {} is not the namespace {} of controller {name} (its identifiers or format differ)",
                ns.nsid, ctrl.opts.addr, ns.nsid
            ));
        }
        if g.bdevs.iter().any(|b| b.nsid == ns.nsid) && ns.block_size > ctrl.max_transfer {
            return refuse(format!(
                "namespace {} has {}-byte blocks; the controller at {} transfers at most {} bytes a command",
                ns.nsid, ns.block_size, ctrl.opts.addr, ctrl.max_transfer
            ));
        }
    }
    g.set.add(ctrl.clone());
    tracing::info!("nvmf host: {name}: path {} added ({} paths)", ctrl.opts.addr, g.links.len() + 1);
    g.links.push(new_link(ctrl.clone(), admin.clone(), attach_params));
    reconcile(g);
    let names = g.bdevs.iter().map(|b| b.name.clone()).collect();
    let paths = g.set.paths();
    drop(groups);
    watch_events(&ctrl, &admin);
    // Requests waiting for a path (the others down) learn of this one.
    for c in paths {
        each_queue(c, |q| q.tell_users());
    }
    Ok(names)
}

/// Detach bdev controller `name`: delete its bdevs, shut its controllers
/// down, forget it; `done` runs when that has happened. `None` if no such
/// controller.
pub fn detach(name: &str, done: impl FnOnce() + 'static) -> Option<()> {
    let (bdevs, live) = {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let g = groups.iter_mut().find(|g| g.name == name)?;
        g.on_detached.push(Box::new(done));
        if g.detaching {
            return Some(());
        }
        g.detaching = true;
        (g.bdevs.iter().map(|b| b.name.clone()).collect::<Vec<_>>(), g.live)
    };
    // Bdevs already leaving finish the detach when they are gone.
    if live == 0 {
        finish_detach(name);
    }
    for b in &bdevs {
        bdev::unregister(b, |_| {});
    }
    Some(())
}

/// Which paths of a bdev controller a detach names: those matching every
/// field given (SPDK's rule for `bdev_nvme_detach_controller`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PathMatch {
    pub fabric: Option<crate::qpair::Fabric>,
    pub traddr: Option<std::net::IpAddr>,
    pub trsvcid: Option<u16>,
    pub hostaddr: Option<std::net::IpAddr>,
}

impl PathMatch {
    /// The path at exactly `addr` over `fabric`.
    pub fn at(fabric: crate::qpair::Fabric, addr: SocketAddr) -> PathMatch {
        PathMatch { fabric: Some(fabric), traddr: Some(addr.ip()), trsvcid: Some(addr.port()), hostaddr: None }
    }

    fn matches(&self, l: &Link) -> bool {
        let o = &l.ctrl.opts;
        self.fabric.is_none_or(|f| f == o.fabric)
            && self.traddr.is_none_or(|a| a == o.addr.ip())
            && self.trsvcid.is_none_or(|p| p == o.addr.port())
            && self.hostaddr.is_none_or(|h| o.hostaddr == Some(h))
    }
}

/// Whether bdev controller `name` has a path `m` names.
pub fn has_path(name: &str, m: PathMatch) -> bool {
    registry().groups.borrow().iter().filter(|g| g.name == name).flat_map(|g| g.links.iter()).any(|l| m.matches(l))
}

/// Detach the paths of bdev controller `name` that `m` names: their
/// requests move to the other paths. Naming every path takes the whole
/// controller. `None` if `m` names no path.
pub fn detach_path(name: &str, m: PathMatch, done: impl FnOnce() + 'static) -> Option<()> {
    let ctrls: Vec<Arc<Controller>> = {
        let reg = registry();
        let groups = reg.groups.borrow();
        let g = groups.iter().find(|g| g.name == name)?;
        let named: Vec<_> = g.links.iter().filter(|l| m.matches(l)).map(|l| l.ctrl.clone()).collect();
        if named.is_empty() {
            return None;
        }
        if named.len() == g.links.len() {
            drop(groups);
            return detach(name, done);
        }
        named
    };
    // `done` once every named path is gone.
    let left = Rc::new(std::cell::Cell::new(ctrls.len()));
    let done: Rc<RefCell<Option<Done>>> = Rc::new(RefCell::new(Some(Box::new(done))));
    for c in &ctrls {
        let (left, done) = (left.clone(), done.clone());
        remove_path(
            name,
            c,
            Box::new(move || {
                left.set(left.get() - 1);
                if left.get() == 0 {
                    if let Some(d) = done.borrow_mut().take() {
                        d();
                    }
                }
            }),
        );
    }
    Some(())
}

/// Take path `ctrl` out of bdev controller `name`: no channel chooses it
/// again, each reactor's queue gives its requests back to the bdevs'
/// channels (which send them on another path), then the controller is
/// shut down.
fn remove_path(name: &str, ctrl: &Arc<Controller>, done: Done) {
    {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(g) = groups.iter_mut().find(|g| g.name == name) else { return done() };
        let Some(pos) = g.links.iter().position(|l| Arc::ptr_eq(&l.ctrl, ctrl)) else { return done() };
        g.set.remove(ctrl);
        let link = g.links.remove(pos);
        // A namespace only this path had loses its bdev.
        reconcile(g);
        reg.removing.borrow_mut().push((link, done));
    }
    tracing::info!("nvmf host: {name}: path {} removed", ctrl.opts.addr);
    ctrl.set_removed();
    let c = ctrl.clone();
    let c2 = ctrl.clone();
    reactor::for_each_reactor(
        move || {
            if let Some(q) = try_get_io_channel(&c) {
                q.disconnect();
            }
        },
        move || {
            reactor::send_msg(ReactorId(0), move || {
                let reg = registry();
                let mut removing = reg.removing.borrow_mut();
                let Some(pos) = removing.iter().position(|(l, _)| Arc::ptr_eq(&l.ctrl, &c2)) else { return };
                let (link, done) = removing.remove(pos);
                drop(removing);
                shutdown_link(link, done);
            });
        },
    );
}

/// CC.SHN on a path's controller (if connected), then close its admin queue.
fn shutdown_link(link: Link, done: Done) {
    let admin = link.admin.clone();
    let a = link.admin.clone();
    let ready = link_ready(&link);
    let end = move || {
        admin.close();
        drop(link);
        done();
    };
    if ready {
        ctrlr::shutdown(&a, move |r| {
            if let Err(e) = r {
                tracing::warn!("nvmf host: shutdown: {e}");
            }
            end();
        });
    } else {
        end();
    }
}

fn link_ready(l: &Link) -> bool {
    l.lost_at.is_none() && l.admin.is_ready()
}

fn namespace_destroyed(set: &Arc<PathSet>, nsid: u32) {
    let name = {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(g) = groups.iter_mut().find(|g| Arc::ptr_eq(&g.set, set)) else { return };
        g.live = g.live.saturating_sub(1);
        if let Some(i) = g.leaving.iter().position(|n| *n == nsid) {
            // A namespace that went away: the controller stays; the
            // namespace may be back already (a bdev for it now).
            g.leaving.remove(i);
            reconcile(g);
        } else {
            g.detaching = true;
        }
        (g.detaching && g.live == 0).then(|| g.name.clone())
    };
    if let Some(n) = name {
        finish_detach(&n);
    }
}

fn finish_detach(name: &str) {
    let group = {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(pos) = groups.iter().position(|g| g.name == name) else { return };
        groups.remove(pos)
    };
    let n = name.to_string();
    let mut on_detached = group.on_detached;
    let finish: Done = Box::new(move || {
        tracing::info!("nvmf host: {n} detached");
        for f in on_detached.drain(..) {
            f();
        }
    });
    // Each path shuts down; the last one to finish runs `finish`.
    let left = Rc::new(std::cell::Cell::new(group.links.len()));
    let finish = Rc::new(RefCell::new(Some(finish)));
    if group.links.is_empty() {
        return finish.borrow_mut().take().expect("set")();
    }
    for l in group.links {
        l.ctrl.set_removed();
        let (left, finish) = (left.clone(), finish.clone());
        shutdown_link(
            l,
            Box::new(move || {
                left.set(left.get() - 1);
                if left.get() == 0 {
                    if let Some(f) = finish.borrow_mut().take() {
                        f();
                    }
                }
            }),
        );
    }
}

/// A queue pair of path `ctrl` failed (main reactor): unless it is being
/// reconnected already, take the controller down (its requests go to the
/// other paths, or wait), close its queues and reconnect it, as
/// `ctrlr_loss_timeout_sec`, `reconnect_delay_sec` and
/// `fast_io_fail_timeout_sec` say.
pub(crate) fn lost(ctrl: &Arc<Controller>, why: &str) {
    let admin = {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(g) = group_of(&mut groups, ctrl) else { return };
        if g.detaching {
            return;
        }
        let l = g.link(ctrl).expect("found");
        if l.lost_at.is_some() {
            return;
        }
        l.lost_at = Some(Instant::now());
        l.resets += 1;
        ctrl.set_down(true);
        l.admin.clone()
    };
    // Not under the borrow: closing fails the admin commands outstanding,
    // whose callbacks (a namespace read, an ANA read) look at the registry.
    admin.close();
    // Another connected path may now be the one whose view counts.
    if let Some(g) = group_of(&mut registry().groups.borrow_mut(), ctrl) {
        reconcile(g);
    }
    tracing::warn!("nvmf host: controller {} lost (path {}: {why}); reconnecting", ctrl.name(), ctrl.opts.addr);
    let c = ctrl.clone();
    each_queue(c, |q| q.disconnect());
    attempt(ctrl);
}

/// `bdev_nvme_reset_controller`: reconnect the paths of bdev controller
/// `name` (only the one with controller id `cntlid`, when given), as a lost
/// controller is: requests wait or move to other paths and are sent again.
/// `done` gets the outcome of the first reconnect attempt of each.
pub fn reset(name: &str, cntlid: Option<u16>, done: impl FnOnce(Result<(), String>) + 'static) {
    let ctrls: Vec<Arc<Controller>> = {
        let reg = registry();
        let groups = reg.groups.borrow();
        let Some(g) = groups.iter().find(|g| g.name == name && !g.detaching) else {
            return done(Err(format!("Controller {name} does not exist")));
        };
        g.links.iter().filter(|l| cntlid.is_none_or(|id| l.ctrl.cntlid() == id)).map(|l| l.ctrl.clone()).collect()
    };
    if ctrls.is_empty() {
        return done(Err(format!("Controller {name} has no controller id {}", cntlid.unwrap_or_default())));
    }
    // One answer for all: the first failure, else success once all are back.
    let state: Rc<RefCell<(usize, Option<ResetDone>)>> = Rc::new(RefCell::new((ctrls.len(), Some(Box::new(done)))));
    for c in &ctrls {
        let st = state.clone();
        let waiter: ResetDone = Box::new(move |r| {
            let d = {
                let mut s = st.borrow_mut();
                s.0 -= 1;
                if r.is_err() || s.0 == 0 { s.1.take() } else { None }
            };
            if let Some(d) = d {
                d(r);
            }
        });
        if let Some(l) = registry().groups.borrow_mut().iter_mut().find_map(|g| g.link(c)) {
            l.waiters.push(waiter);
        }
        lost(c, "reset requested (bdev_nvme_reset_controller)");
    }
}

/// One reconnect attempt; on failure, the next after `reconnect_delay_sec`
/// or the end (the path removed, or the controller deleted if it was the
/// last) once `ctrlr_loss_timeout_sec` passed.
fn attempt(ctrl: &Arc<Controller>) {
    {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(g) = group_of(&mut groups, ctrl) else { return };
        if g.detaching {
            return;
        }
        let l = g.link(ctrl).expect("found");
        if l.attempting {
            return;
        }
        l.attempting = true;
        l.retry = None;
    }
    let ctrl = ctrl.clone();
    ctrlr::reconnect(&ctrl.clone(), move |r| {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(g) = group_of(&mut groups, &ctrl) else {
            if let Ok((_, admin)) = r {
                admin.close();
            }
            return;
        };
        let (name, paths, detaching) = (g.name.clone(), g.links.len(), g.detaching);
        let l = g.link(&ctrl).expect("found");
        l.attempting = false;
        match r {
            Ok((c, admin)) if !detaching => {
                l.admin = admin.clone();
                l.lost_at = None;
                c.set_down(false);
                tracing::info!("nvmf host: controller {name} reconnected (path {}, controller id {})", c.opts.addr, c.cntlid());
                let waiters = std::mem::take(&mut l.waiters);
                // The namespaces are those the new association found.
                reconcile(g);
                drop(groups);
                for w in waiters {
                    w(Ok(()));
                }
                watch_events(&c, &admin);
                each_queue(c, |q| q.connect());
            }
            Ok((_, admin)) => admin.close(),
            Err(e) => {
                for w in std::mem::take(&mut l.waiters) {
                    w(Err(e.to_string()));
                }
                let o = &ctrl.opts;
                let down_for = l.lost_at.map(|t| t.elapsed()).unwrap_or_default();
                let loss = o.ctrlr_loss_timeout_sec;
                let give_up = loss == 0 || (loss > 0 && down_for >= Duration::from_secs(loss as u64));
                let fail_fast = o.fast_io_fail_timeout_sec > 0 && down_for >= Duration::from_secs(u64::from(o.fast_io_fail_timeout_sec));
                if give_up || fail_fast {
                    ctrl.set_failing();
                    let c2 = ctrl.clone();
                    each_queue(c2, |q| q.fail_parked(IoStatus::Failed));
                }
                if give_up {
                    drop(groups);
                    if paths > 1 {
                        tracing::error!(
                            "nvmf host: controller {name}: path {} lost for good ({e}); removing it (ctrlr_loss_timeout_sec {loss})",
                            ctrl.opts.addr
                        );
                        remove_path(&name, &ctrl, Box::new(|| {}));
                    } else {
                        tracing::error!("nvmf host: controller {name} lost for good ({e}); deleting it (ctrlr_loss_timeout_sec {loss})");
                        let _ = detach(&name, || {});
                    }
                    return;
                }
                tracing::warn!(
                    "nvmf host: controller {name} at {}: reconnect failed ({e}); next in {} s",
                    o.addr,
                    o.reconnect_delay_sec.max(1)
                );
                let delay = Duration::from_secs(u64::from(o.reconnect_delay_sec.max(1)));
                // The attempt replaces the timer.
                l.retry = Some(path_timer("nvmf_host_reconnect", &ctrl, delay, attempt));
            }
        }
    });
}

/// Follow what path `ctrl` (just up) reports: its ANA states (the ANA
/// log read now, and again on each ANA change notice) and its namespaces
/// (read again on each namespace attribute notice). The bring-up enabled
/// the notices its Identify Controller offers (`ctrlr::notices`); one
/// Asynchronous Event Request now waits for them.
fn watch_events(ctrl: &Arc<Controller>, admin: &Rc<Qpair>) {
    if ctrl.reports_ana() {
        ana_changed(ctrl);
    }
    if ctrlr::notices(&ctrl.id) != 0 {
        arm_event(Arc::downgrade(ctrl), Rc::downgrade(admin));
    }
}

/// Keep one Asynchronous Event Request outstanding on a path's admin
/// queue; an ANA change reads the ANA log again, a namespace attribute
/// change the namespaces. Ends with the queue (a reconnect arms a new one).
fn arm_event(ctrl: std::sync::Weak<Controller>, admin: std::rc::Weak<Qpair>) {
    use pollux_nvme_spec::log::lid;
    let Some(qp) = admin.upgrade() else { return };
    ctrlr::async_event(&qp, move |r| {
        let Some(c) = ctrl.upgrade() else { return };
        let dw0 = match r {
            Ok(dw0) => dw0,
            Err(e) => {
                // The queue ended (a reconnect arms a new request), or the
                // controller refused it: no more notices through it.
                if admin.upgrade().is_some_and(|q| q.is_ready()) {
                    tracing::warn!("nvmf host: {} at {}: Asynchronous Event Request: {e}; notices stop", c.name(), c.opts.addr);
                }
                return;
            }
        };
        tracing::debug!("nvmf host: {} at {}: asynchronous event {dw0:#x}", c.name(), c.opts.addr);
        arm_event(Arc::downgrade(&c), admin);
        let page = ((dw0 >> 16) & 0xff) as u8;
        if page == lid::ASYMMETRIC_NAMESPACE_ACCESS {
            tracing::info!("nvmf host: {} at {}: ANA change", c.name(), c.opts.addr);
            ana_changed(&c);
        } else if page == lid::CHANGED_NAMESPACE_LIST {
            tracing::info!("nvmf host: {} at {}: namespaces changed", c.name(), c.opts.addr);
            namespaces_changed(&c, false);
        }
    });
}

/// Read path `ctrl`'s namespaces again (main reactor): the Changed
/// Namespace List log (which also lets the controller send the next
/// notice), the active list, and Identify Namespace for those that changed
/// or came (all of them with `all`, or when the log overflowed); then its
/// bdev controller's bdevs follow. One read at a time per path; a notice
/// during one reads everything again after it.
fn namespaces_changed(ctrl: &Arc<Controller>, all: bool) {
    use pollux_nvme_spec::log::lid;
    let admin = {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(l) = groups.iter_mut().find_map(|g| g.link(ctrl)) else { return };
        if let Some(again) = l.rescan.as_mut() {
            *again = true;
            return;
        }
        if !link_ready(l) {
            // A reconnect reads them all.
            return;
        }
        l.rescan = Some(false);
        l.rescan_retry = None;
        l.admin.clone()
    };
    let c = ctrl.clone();
    let end = move |c: &Arc<Controller>, r: Result<(), HostError>| {
        let failed = r.is_err();
        if let Err(e) = r {
            tracing::warn!("nvmf host: {} at {}: reading the namespaces again: {e}; again in 1 s", c.name(), c.opts.addr);
        }
        let again = {
            let reg = registry();
            let mut groups = reg.groups.borrow_mut();
            let Some(l) = groups.iter_mut().find_map(|g| g.link(c)) else { return };
            if failed && link_ready(l) {
                // The log was read (the controller will not tell again):
                // read everything once more, later. A lost path reads
                // everything when it reconnects.
                // The rescan drops the timer.
                l.rescan_retry = Some(path_timer("nvmf_host_rescan", c, Duration::from_secs(1), |c| namespaces_changed(c, true)));
            }
            l.rescan.take() == Some(true)
        };
        if again {
            namespaces_changed(c, true);
        }
    };
    let a = admin.clone();
    ctrlr::get_log_page_upto(&admin, lid::CHANGED_NAMESPACE_LIST, 0, 4096, move |r| {
        let listed: Option<Vec<u32>> = match r {
            Ok(log) if !all => {
                let ids: Vec<u32> =
                    log.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4"))).take_while(|&n| n != 0).collect();
                // FFFFFFFFh first: more than 1024 changed.
                (ids.first() != Some(&u32::MAX)).then_some(ids)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("nvmf host: {} at {}: Changed Namespace List: {e}; reading every namespace", c.name(), c.opts.addr);
                None
            }
        };
        let a2 = a.clone();
        ctrlr::active_namespaces(&a, c.nn(), move |r| {
            let active = match r {
                Ok(ids) => ids,
                Err(e) => return end(&c, Err(e)),
            };
            let known: Vec<u32> = c.namespaces().iter().map(|n| n.nsid).collect();
            // What to identify: the listed ones still active, and any that
            // is new or gone whatever the log says.
            let mut scope: Vec<u32> = match &listed {
                Some(l) => l.clone(),
                None => active.clone(),
            };
            // (Both lists ascend: the active list's reader stops at
            // anything else.)
            let (has, had) = (|n: &u32| active.binary_search(n).is_ok(), |n: &u32| known.binary_search(n).is_ok());
            scope.extend(active.iter().filter(|n| !had(n)));
            scope.extend(known.iter().filter(|n| !has(n)));
            scope.sort_unstable();
            scope.dedup();
            let ask: Vec<u32> = scope.iter().copied().filter(|n| has(n)).collect();
            let whole = listed.is_none();
            ctrlr::identify_namespaces(&a2, ask, move |r| {
                let fresh = match r {
                    Ok(f) => f,
                    Err(e) => return end(&c, Err(e)),
                };
                let changes = c.update_namespaces(fresh, if whole { None } else { Some(&scope) });
                if !changes.is_empty() {
                    tracing::info!("nvmf host: {} at {}: namespaces {changes:?}", c.name(), c.opts.addr);
                }
                let c2 = c.clone();
                let follow = move || {
                    let reg = registry();
                    let mut groups = reg.groups.borrow_mut();
                    if let Some(g) = group_of(&mut groups, &c2) {
                        reconcile(g);
                    }
                    drop(groups);
                    each_queue(c2.clone(), |q| q.tell_users());
                    end(&c2, Ok(()));
                };
                // A new namespace's ANA state comes from the log before
                // its bdev takes requests.
                match admin_of(&c) {
                    Some(adm) if c.reports_ana() && !(changes.added.is_empty() && changes.changed.is_empty()) && adm.is_ready() => {
                        ctrlr::refresh_ana(&c, &adm, move |_| follow());
                    }
                    _ => follow(),
                }
            });
        });
    });
}

/// Read path `ctrl`'s ANA log again (main reactor), then have the bdevs'
/// channels on every reactor look at their paths again.
pub(crate) fn ana_changed(ctrl: &Arc<Controller>) {
    let admin = admin_of(ctrl);
    let Some(admin) = admin else { return };
    if !admin.is_ready() {
        return;
    }
    let c = ctrl.clone();
    ctrlr::refresh_ana(ctrl, &admin, move |r| {
        if let Err(e) = r {
            tracing::warn!("nvmf host: {}: reading the ANA log: {e}", c.name());
        }
        watch_transition(&c);
        each_queue(c, |q| q.tell_users());
    });
}

/// While a namespace is in ANA change through path `ctrl`, requests for it
/// wait; the controller's ANA transition time (ANATT, 10 s when it gives
/// none) bounds that: then the ANA log is read again, and a namespace still
/// in change is taken as inaccessible through this path (its waiting
/// requests go to another path or fail) until the log says otherwise.
fn watch_transition(ctrl: &Arc<Controller>) {
    let changing = ctrl.any_in_transition();
    let reg = registry();
    let mut groups = reg.groups.borrow_mut();
    let Some(l) = groups.iter_mut().find_map(|g| g.link(ctrl)) else { return };
    if !changing {
        l.anatt = None;
        return;
    }
    if l.anatt.is_some() {
        return;
    }
    let secs = if ctrl.id.anatt == 0 { 10 } else { u64::from(ctrl.id.anatt) };
    // The check drops the timer.
    l.anatt = Some(path_timer("nvmf_host_anatt", ctrl, Duration::from_secs(secs), transition_expired));
}

fn transition_expired(ctrl: &Arc<Controller>) {
    let admin = {
        let reg = registry();
        let mut groups = reg.groups.borrow_mut();
        let Some(l) = groups.iter_mut().find_map(|g| g.link(ctrl)) else { return };
        l.anatt = None;
        l.admin.clone()
    };
    if !admin.is_ready() {
        return;
    }
    let c = ctrl.clone();
    ctrlr::refresh_ana(ctrl, &admin, move |_| {
        for nsid in c.end_transitions() {
            tracing::warn!(
                "nvmf host: {} at {}: namespace {nsid} still in ANA change after the transition time; taken as inaccessible",
                c.name(),
                c.opts.addr,
            );
        }
        each_queue(c, |q| q.tell_users());
    });
}

/// Abort command `cid` on I/O queue `qid` of path `ctrl` (main reactor):
/// it timed out. If the controller does not abort it, the queue pair ends
/// when the command is still outstanding one timeout later (a reset).
pub(crate) fn abort_command(ctrl: &Arc<Controller>, qid: u16, cid: u16) {
    let admin = admin_of(ctrl);
    let Some(admin) = admin.filter(|a| a.is_ready()) else { return };
    ctrl.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (name, addr) = (ctrl.name().to_string(), ctrl.opts.addr);
    ctrlr::abort(&admin, qid, cid, move |r| match r {
        Ok(true) => tracing::info!("nvmf host: {name} at {addr}: command {cid} of queue {qid} aborted"),
        Ok(false) => {
            tracing::warn!("nvmf host: {name} at {addr}: command {cid} of queue {qid} not aborted; the queue is reset if it stays")
        }
        Err(e) => tracing::warn!("nvmf host: {name} at {addr}: Abort of command {cid} of queue {qid}: {e}"),
    });
}

/// `bdev_nvme_get_controllers` entries of fabrics controllers: one per
/// bdev controller, a `ctrlrs` entry per path.
pub fn describe_controllers(name: Option<&str>) -> Vec<Value> {
    registry()
        .groups
        .borrow()
        .iter()
        .filter(|g| name.is_none_or(|n| n == g.name))
        .map(|g| {
            let ctrlrs: Vec<Value> = g
                .links
                .iter()
                .map(|l| {
                    let c = &l.ctrl;
                    let state = if l.lost_at.is_some() {
                        if c.is_failing() { "failed" } else { "resetting" }
                    } else if l.admin.is_ready() {
                        "enabled"
                    } else {
                        "failed"
                    };
                    json!({
                        "state": state,
                        "cntlid": c.cntlid(),
                        "trid": trid(&c.opts),
                        "host": {"nqn": c.opts.hostnqn, "addr": c.opts.hostaddr.map(|a| a.to_string()).unwrap_or_default(), "svcid": ""},
                        "model_number": c.id.model(),
                        "serial_number": c.id.serial(),
                        "firmware_revision": c.id.firmware(),
                        "namespaces": g.bdevs.iter().map(|b| &b.name).collect::<Vec<_>>(),
                        "io_queues": c.io_queues,
                        "max_transfer_bytes": c.max_transfer,
                        "resets": l.resets,
                        "timeouts": c.timeouts.load(std::sync::atomic::Ordering::Relaxed),
                        "aborts": c.aborts.load(std::sync::atomic::Ordering::Relaxed),
                        "error": l.admin.error().map(|e| e.to_string()),
                    })
                })
                .collect();
            json!({
                "name": g.name,
                "ctrlrs": ctrlrs,
                "attach_params": g.links.first().map(|l| l.attach_params.clone()),
            })
        })
        .collect()
}

/// What save_config writes for the fabrics controllers: each path's
/// `bdev_nvme_attach_controller` as it was called, then each policy set by
/// `bdev_nvme_set_multipath_policy`.
pub fn write_config(out: &mut ConfigWriter) {
    let reg = registry();
    let groups = reg.groups.borrow();
    for g in groups.iter() {
        // Paths a discovery service attached have no call of their own.
        for l in g.links.iter().filter(|l| !l.attach_params.is_null()) {
            out.call("bdev_nvme_attach_controller", l.attach_params.clone());
        }
    }
    for p in crate::discovery::config_calls() {
        out.call("bdev_nvme_start_discovery", p);
    }
    for g in groups.iter() {
        for NsBdev { name: b, policy: p, .. } in &g.bdevs {
            if p.was_set() {
                let mut v = json!({"name": b, "policy": if p.is_active_active() { "active_active" } else { "active_passive" }});
                if p.is_active_active() {
                    v["selector"] = if p.is_queue_depth() { "queue_depth" } else { "round_robin" }.into();
                    if !p.is_queue_depth() {
                        v["rr_min_io"] = p.rr_min_io().into();
                    }
                }
                out.call("bdev_nvme_set_multipath_policy", v);
            }
        }
    }
}

/// The policy of namespace bdev `bdev`, if it is one of the host's.
pub fn policy(bdev: &str) -> Option<Arc<Policy>> {
    registry().groups.borrow().iter().flat_map(|g| g.bdevs.iter()).find(|b| b.name == bdev).map(|b| b.policy.clone())
}

/// `bdev_nvme_get_io_paths`: for each reactor with a channel, each
/// namespace bdev's paths there (connected, accessible, current).
pub fn io_paths(bdev_name: Option<&str>, done: impl FnOnce(Value) + Send + 'static) {
    let list: Vec<(String, u32, Arc<PathSet>, Arc<Policy>)> = registry()
        .groups
        .borrow()
        .iter()
        .flat_map(|g| g.bdevs.iter().map(|b| (b.name.clone(), b.nsid, g.set.clone(), b.policy.clone())))
        .filter(|(n, _, _, _)| bdev_name.is_none_or(|b| b == n))
        .collect();
    let list = Arc::new(Mutex::new(list));
    reactor::map_reactors(
        move || {
            let id = reactor::current();
            let thread = if id.0 == 0 { "app_thread".to_string() } else { std::thread::current().name().unwrap_or("reactor").to_string() };
            let list = list.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut paths = Vec::new();
            for (name, nsid, set, policy) in &list {
                let view = multipath::local_view(set, *nsid);
                if !view.iter().any(|(c, _)| try_get_io_channel(c).is_some()) {
                    continue;
                }
                let states: Vec<PathState> = view.iter().map(|(_, s)| *s).collect();
                // The best ANA state any connected path has: what the
                // policy uses.
                let best = [PathState::Ready, PathState::NonOptimized].into_iter().find(|b| states.contains(b));
                let first = best.and_then(|b| states.iter().position(|s| *s == b));
                for (i, (c, st)) in view.iter().enumerate() {
                    let current = if policy.is_active_active() { Some(*st) == best } else { Some(i) == first };
                    paths.push(json!({
                        "bdev_name": name,
                        "cntlid": c.cntlid(),
                        "current": current,
                        "connected": matches!(st, PathState::Ready | PathState::NonOptimized | PathState::Inaccessible | PathState::Changing),
                        "accessible": matches!(st, PathState::Ready | PathState::NonOptimized),
                        "ana_state": ctrlr::ana::name(c.ana_state(*nsid)),
                        "transport": trid(&c.opts),
                    }));
                }
            }
            (!paths.is_empty()).then(|| json!({"thread": thread, "io_paths": paths}))
        },
        move |all| done(json!({"poll_groups": all.into_iter().flatten().collect::<Vec<_>>()})),
    );
}
