//! The nvme bdev module: one bdev per active namespace of an attached
//! controller (`Nvme0n1`, `Nvme0n2`...). A bdev's channel on a reactor is the
//! controller's queue pair on that reactor, shared by all its namespaces.
//!
//! Attached controllers live in a registry on the main reactor, with a
//! health poller each (hot removal: registers read all ones; fatal status:
//! reset). Detaching, removal and the daemon stopping delete the bdevs
//! (users are told to close them) and then shut the controller down
//! (CC.SHN).

mod hotplug;
pub mod options;
pub mod rpc;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevIo, BdevSpec, IoType, Uuid};
use pollux_core::io_channel::{IoChannel, get_io_channel};
use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use serde_json::{Value, json};

use crate::controller::{Controller, Namespace, State, lock};
use crate::error::NvmeError;
use crate::pci::PciAddress;
use crate::qpair::QueuePair;

/// One namespace as a bdev.
struct NamespaceBackend {
    ctrl: Arc<Controller>,
    nsid: u32,
    block_size: u32,
    /// The first namespace of its controller writes the attach call in
    /// save_config (SPDK writes one `bdev_nvme_attach_controller` per
    /// controller in the bdev subsystem).
    attach_call: Option<Value>,
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
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => true,
            IoType::Unmap => self.ctrl.supports_deallocate(),
            IoType::WriteZeroes => self.ctrl.supports_write_zeroes(),
            IoType::Compare => self.ctrl.supports_compare(),
        }
    }

    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(NamespaceChannel { qp: get_io_channel(&self.ctrl), nsid: self.nsid })
    }

    /// Whole blocks at block-aligned addresses: any buffer boundary is then
    /// a place a request may be split.
    fn buffer_alignment(&self) -> usize {
        self.block_size as usize
    }

    fn driver_specific(&self) -> Value {
        let c = &self.ctrl;
        let id = c.identify_data();
        let ns = c.namespace(self.nsid);
        json!([{
            "pci_address": c.address().map(|a| a.to_string()),
            "trid": {"trtype": "PCIe", "traddr": c.address().map(|a| a.to_string())},
            "cntlid": id.cntlid.get(),
            "ctrlr_data": {
                "cntlid": id.cntlid.get(),
                "vendor_id": format!("{:#06x}", id.vid.get()),
                "model_number": id.model(),
                "serial_number": id.serial(),
                "firmware_revision": id.firmware(),
                "subnqn": id.subsystem_nqn(),
                "oacs": {"security": (id.oacs.get() & 1) as u8, "format": ((id.oacs.get() >> 1) & 1) as u8, "firmware": ((id.oacs.get() >> 2) & 1) as u8, "ns_manage": ((id.oacs.get() >> 3) & 1) as u8},
                "multi_ctrlr": id.cmic & 2 != 0,
                "ana_reporting": id.cmic & 8 != 0,
            },
            "vs": {"nvme_version": c.version().to_string()},
            "ns_data": {"id": self.nsid, "can_share": ns.as_ref().is_some_and(|n| n.data.nmic & 1 != 0)},
            "state": c.state().name(),
        }])
    }

    fn config_call(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        self.attach_call.clone().map(|p| ("bdev_nvme_attach_controller", p))
    }

    fn destroy(&self) {
        namespace_destroyed(self.ctrl.name());
    }
}

struct NamespaceChannel {
    qp: IoChannel<Controller>,
    nsid: u32,
}

impl BackendChannel for NamespaceChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        let qp: &QueuePair = &self.qp;
        qp.submit(self.nsid, io);
    }
}

/// What runs once a controller is detached.
type OnDetached = Box<dyn FnOnce()>;

/// An attached controller.
struct Attached {
    ctrl: Arc<Controller>,
    bdevs: Vec<String>,
    /// Namespace bdevs not yet destroyed.
    live: usize,
    attach_params: Value,
    /// Called once the controller is detached (bdevs gone, shut down).
    on_detached: Vec<OnDetached>,
    detaching: bool,
    _health: Poller,
}

#[derive(Default)]
struct Registry {
    ctrls: RefCell<Vec<Attached>>,
    /// Controllers being brought up off the reactor ([`bring_up`]): their
    /// names and addresses are taken meanwhile.
    attaching: RefCell<Vec<(String, PciAddress)>>,
}

fn registry() -> Rc<Registry> {
    assert_eq!(reactor::current(), ReactorId(0), "the nvme controller registry lives on the main reactor");
    match reactor::local::<Registry>() {
        Some(r) => r,
        None => {
            let r = Rc::new(Registry::default());
            reactor::set_local(r.clone());
            r
        }
    }
}

/// Attached controllers, in attach order (main reactor).
pub fn controllers() -> Vec<Arc<Controller>> {
    registry().ctrls.borrow().iter().map(|a| a.ctrl.clone()).collect()
}

/// The controller attached under `name` (main reactor).
pub fn controller(name: &str) -> Option<Arc<Controller>> {
    registry().ctrls.borrow().iter().find(|a| a.ctrl.name() == name).map(|a| a.ctrl.clone())
}

/// Whether a controller named `name` is attached or being brought up
/// (main reactor).
pub fn name_taken(name: &str) -> bool {
    let reg = registry();
    reg.ctrls.borrow().iter().any(|a| a.ctrl.name() == name) || reg.attaching.borrow().iter().any(|(n, _)| n == name)
}

/// Whether a controller is being brought up (main reactor).
pub fn attaching() -> bool {
    !registry().attaching.borrow().is_empty()
}

/// Whether the controller at `addr` is attached or being brought up (main
/// reactor).
pub fn address_taken(addr: PciAddress) -> bool {
    let reg = registry();
    reg.ctrls.borrow().iter().any(|a| a.ctrl.address() == Some(addr)) || reg.attaching.borrow().iter().any(|(_, a)| *a == addr)
}

/// Bring up a controller, `name` at `addr`, with `start` off the reactor
/// (main reactor): enabling it waits up to CAP.TO (127.5 s at most) and each
/// admin command up to the admin timeout, which held the reactor, and
/// every connection and device on it, for as long when a device was slow
/// or did not answer. Meanwhile the name and address are taken
/// ([`name_taken`], [`address_taken`]); `then` gets the controller (or why
/// not) on this reactor, to register it.
pub fn bring_up(
    name: String,
    addr: PciAddress,
    start: impl FnOnce() -> Result<Arc<Controller>, NvmeError> + Send + 'static,
    then: impl FnOnce(Result<Arc<Controller>, NvmeError>) + Send + 'static,
) {
    registry().attaching.borrow_mut().push((name.clone(), addr));
    let thread = format!("nvme-attach-{addr}");
    // The process waits for the bring-up at exit; a controller it leaves
    // that no reactor took is shut down then (it stayed enabled).
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| pollux_core::app::at_exit(shut_down_unclaimed));
    let work = move || {
        let ctrl = start()?;
        let mut u = lock(&UNCLAIMED);
        if u.exiting {
            // The exit stopped waiting (a bring-up longer than its wait):
            // no one will take it or shut it down but this thread.
            drop(u);
            ctrl.shutdown_or_warn();
            return Err(NvmeError::Cancelled(format!("{addr} not attached: the process is exiting")));
        }
        u.ctrls.push(ctrl.clone());
        Ok(ctrl)
    };
    reactor::off_reactor_before_exit(&thread, work, move |r| {
        {
            let reg = registry();
            let mut a = reg.attaching.borrow_mut();
            if let Some(i) = a.iter().position(|(n, x)| *n == name && *x == addr) {
                a.remove(i);
            }
        }
        if let Ok(Ok(ctrl)) = &r {
            lock(&UNCLAIMED).ctrls.retain(|c| !Arc::ptr_eq(c, ctrl));
        }
        let r = match r {
            // Up after the application began to stop: not registered (its
            // bdevs would come after the bdev layer's teardown).
            Ok(Ok(ctrl)) if pollux_core::app::is_stopping() => {
                shut_down_in_background(ctrl);
                Err(NvmeError::Cancelled(format!("{addr} not attached: the application is shutting down")))
            }
            Ok(r) => r,
            Err(e) => Err(NvmeError::Invalid(format!("the bring-up of {addr} did not run ({e:?})"))),
        };
        then(r)
    });
}

/// Controllers brought up whose reactor has not taken them yet.
static UNCLAIMED: std::sync::Mutex<Unclaimed> = std::sync::Mutex::new(Unclaimed { ctrls: Vec::new(), exiting: false });

struct Unclaimed {
    ctrls: Vec<Arc<Controller>>,
    /// The exit hook ran: a bring-up that ends later shuts its controller
    /// down itself.
    exiting: bool,
}

/// At exit: shut down the controllers brought up after the reactors
/// stopped (their answer never reached one); a bring-up still running
/// shuts its own down when it ends.
pub fn shut_down_unclaimed() {
    lock(&UNCLAIMED).exiting = true;
    shut_down_unclaimed_where(|_| true);
}

/// Whether a controller named `name` is up and not yet taken by its
/// reactor.
#[cfg(test)]
pub(crate) fn unclaimed(name: &str) -> bool {
    lock(&UNCLAIMED).ctrls.iter().any(|c| c.name() == name)
}

pub(crate) fn shut_down_unclaimed_where(which: impl Fn(&Controller) -> bool) {
    let left: Vec<Arc<Controller>> = {
        let mut u = lock(&UNCLAIMED);
        let (left, keep) = std::mem::take(&mut u.ctrls).into_iter().partition(|c| which(c));
        u.ctrls = keep;
        left
    };
    for ctrl in left {
        tracing::info!("NVMe controller {} came up while the application stopped: shutting it down", ctrl.name());
        ctrl.shutdown_or_warn();
    }
}

/// Shut down a controller no one registered (CC.SHN, waiting up to RTD3E)
/// off the reactor, so that whoever lets go of it last does not wait for
/// the device in its drop; the process waits for it at exit.
fn shut_down_in_background(ctrl: Arc<Controller>) {
    let name = ctrl.name().to_string();
    ctrl.off_reactor("nvme-shutdown", true, Controller::shutdown, move |r| {
        if let Err(e) = r {
            tracing::warn!("NVMe controller {name}: shutdown failed: {e}");
        }
    });
}

/// Register a started controller and a bdev for each usable namespace
/// (main reactor). Returns the bdev names.
pub fn add_controller(ctrl: Arc<Controller>, attach_params: Value) -> Result<Vec<String>, NvmeError> {
    let reg = registry();
    let mut names = Vec::new();
    let mut first = true;
    for ns in ctrl.namespaces() {
        match register_namespace(&ctrl, &ns, first.then(|| attach_params.clone())) {
            Ok(Some(name)) => {
                names.push(name);
                first = false;
            }
            Ok(None) => {}
            Err(e) => {
                // Nothing half-attached: the bdevs made so far go (they
                // stayed, with no controller entry to detach or watch).
                for n in &names {
                    bdev::unregister(n, |_| {});
                }
                // The controller's drop would wait for the device's
                // shutdown here.
                shut_down_in_background(ctrl);
                return Err(e);
            }
        }
    }
    let weak = Arc::downgrade(&ctrl);
    // How often the health poller reads CSTS and the release request.
    let period = options::options().health_period();
    let health = reactor::register_timed_poller("nvme_health", period, move || {
        let Some(c) = weak.upgrade() else { return PollStatus::Idle };
        check_health(&c)
    });
    reg.ctrls.borrow_mut().push(Attached {
        live: names.len(),
        ctrl,
        bdevs: names.clone(),
        attach_params,
        on_detached: Vec::new(),
        detaching: false,
        _health: health,
    });
    Ok(names)
}

fn register_namespace(ctrl: &Arc<Controller>, ns: &Namespace, attach_call: Option<Value>) -> Result<Option<String>, NvmeError> {
    let name = format!("{}n{}", ctrl.name(), ns.nsid);
    if ns.metadata_size != 0 {
        tracing::warn!("{name}: namespace has {} metadata bytes per block (not supported); no bdev", ns.metadata_size);
        return Ok(None);
    }
    if let Some(why) = bdev::unusable_geometry(ns.block_size, ns.num_blocks, ctrl.max_transfer()) {
        // A bigger block than one command carries failed every read and
        // write (and panicked in debug builds).
        tracing::warn!("{name}: namespace has {why}; no bdev");
        return Ok(None);
    }
    let uuid = if ns.data.nguid != [0; 16] {
        Some(Uuid::from_bytes(ns.data.nguid))
    } else if options::options().generate_uuids {
        // SPDK's generate_uuids: stable across restarts, from the serial
        // number and the namespace id (name-based, SHA-1).
        Some(Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{}:{}", ctrl.identify_data().serial(), ns.nsid).as_bytes()))
    } else {
        None
    };
    let backend = Arc::new(NamespaceBackend { ctrl: ctrl.clone(), nsid: ns.nsid, block_size: ns.block_size, attach_call });
    let spec = BdevSpec { name: name.clone(), block_size: ns.block_size, num_blocks: ns.num_blocks, uuid, backend };
    match bdev::register(spec) {
        Ok(_) => Ok(Some(name)),
        Err(bdev::BdevError::Exists(n)) => Err(NvmeError::Invalid(format!("bdev {n} already exists"))),
        Err(e) => Err(NvmeError::Invalid(e.to_string())),
    }
}

fn check_health(c: &Arc<Controller>) -> PollStatus {
    if c.state() != State::Enabled {
        return PollStatus::Idle;
    }
    match c.check_health() {
        Ok(()) => PollStatus::Idle,
        Err(NvmeError::Gone) => {
            c.mark_removed();
            remove_bdevs(c.name());
            PollStatus::Busy
        }
        Err(NvmeError::Fatal) => {
            tracing::error!("NVMe controller {}: fatal status; resetting", c.name());
            c.reset(|_| {});
            PollStatus::Busy
        }
        Err(e) => {
            tracing::warn!("NVMe controller {}: health check: {e}", c.name());
            PollStatus::Idle
        }
    }
}

/// Delete every bdev of controller `name` (users are told to close them);
/// the controller is released when the last one is gone.
fn remove_bdevs(name: &str) {
    let bdevs = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(a) = ctrls.iter_mut().find(|a| a.ctrl.name() == name) else { return };
        if a.detaching {
            return;
        }
        a.detaching = true;
        a.bdevs.clone()
    };
    for b in &bdevs {
        bdev::unregister(b, |_| {});
    }
    if bdevs.is_empty() {
        finish_detach(name);
    }
}

/// Detach controller `name`: delete its bdevs, shut it down, forget it.
/// `done` runs when that has happened.
pub fn detach(name: &str, done: impl FnOnce() + 'static) -> Result<(), NvmeError> {
    {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let a = ctrls
            .iter_mut()
            .find(|a| a.ctrl.name() == name)
            .ok_or_else(|| NvmeError::Invalid(format!("no NVMe controller named {name}")))?;
        a.on_detached.push(Box::new(done));
    }
    remove_bdevs(name);
    Ok(())
}

fn namespace_destroyed(ctrl_name: &str) {
    let last = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(a) = ctrls.iter_mut().find(|a| a.ctrl.name() == ctrl_name) else { return };
        a.live = a.live.saturating_sub(1);
        // Deleted one by one (bdev_get_bdevs users, the bdev subsystem
        // stopping): once none is left the controller goes too.
        a.detaching = true;
        a.live == 0
    };
    if last {
        finish_detach(ctrl_name);
    }
}

fn finish_detach(name: &str) {
    let Some(ctrl) = controller(name) else { return };
    // The shutdown waits for the device (up to RTD3E, or for a reset under
    // way): on a thread, the reactor going on meanwhile. The controller
    // stays listed (its name and device taken) until it is done.
    let (c, name) = (ctrl.clone(), name.to_string());
    c.off_reactor("nvme-shutdown", true, Controller::shutdown, move |r| {
        if let Err(e) = r {
            tracing::warn!("NVMe controller {name}: shutdown: {e}");
        }
        let entry = {
            let reg = registry();
            let mut ctrls = reg.ctrls.borrow_mut();
            let Some(pos) = ctrls.iter().position(|a| Arc::ptr_eq(&a.ctrl, &ctrl)) else { return };
            ctrls.remove(pos)
        };
        ctrl.kick_queue_pairs();
        tracing::info!("NVMe controller {name} detached");
        for f in entry.on_detached {
            f();
        }
    });
}

/// `bdev_nvme_get_controllers` entries.
pub fn describe_controllers(name: Option<&str>) -> Vec<Value> {
    registry()
        .ctrls
        .borrow()
        .iter()
        .filter(|a| name.is_none_or(|n| n == a.ctrl.name()))
        .map(|a| {
            let c = &a.ctrl;
            let id = c.identify_data();
            json!({
                "name": c.name(),
                "ctrlrs": [{
                    "state": c.state().name(),
                    "cntlid": id.cntlid.get(),
                    "trid": {"trtype": "PCIe", "traddr": c.address().map(|x| x.to_string())},
                    "host": {"nqn": "", "addr": "", "svcid": ""},
                    "model_number": id.model(),
                    "serial_number": id.serial(),
                    "firmware_revision": id.firmware(),
                    // While a detach waits for users, only those left.
                    "namespaces": a.bdevs.iter().filter(|n| bdev::get(n).is_some()).collect::<Vec<_>>(),
                    "io_queues": c.io_queue_count(),
                    "max_transfer_bytes": c.max_transfer(),
                    "resets": c.reset_count(),
                    "timeouts": c.timeout_count(),
                    "aborts": c.abort_count(),
                }],
                "attach_params": a.attach_params,
            })
        })
        .collect()
}
