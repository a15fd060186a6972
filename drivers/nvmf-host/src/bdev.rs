//! Remote namespaces as bdevs: one bdev per active namespace of an
//! attached controller, named as SPDK names them (`Nvme0n1`). A bdev's
//! channel on a reactor is the controller's I/O queue on that reactor,
//! shared by its namespaces.
//!
//! Attached controllers live in a registry on the main reactor, with the
//! admin queue pair and a keep alive poller each. Detaching deletes the
//! bdevs (users are told to close them), then shuts the controller down
//! (CC.SHN) and closes its connections.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevIo, BdevSpec, IoStatus, IoType, Uuid};
use pollux_core::io_channel::try_get_io_channel;
use pollux_core::io_channel::{IoChannel, get_io_channel};
use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use serde_json::{Value, json};

use crate::HostError;
use crate::ctrlr::{self, ConnectOptions, Controller, IoQueue};
use crate::qpair::Qpair;

struct NamespaceBackend {
    ctrl: Arc<Controller>,
    nsid: u32,
    /// The first namespace writes the attach call in save_config.
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
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::Unmap => self.ctrl.supports_deallocate(),
            IoType::WriteZeroes => self.ctrl.supports_write_zeroes(),
            IoType::Compare | IoType::Reset => false,
        }
    }

    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(NamespaceChannel { q: get_io_channel(&self.ctrl), nsid: self.nsid })
    }

    fn driver_specific(&self) -> Value {
        let c = &self.ctrl;
        let o = &c.opts;
        let ns = c.namespaces.iter().find(|n| n.nsid == self.nsid);
        json!([{
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
            "ns_data": {"id": self.nsid, "can_share": ns.is_some_and(|n| n.can_share)},
        }])
    }

    fn config_call(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        self.attach_call.clone().map(|p| ("bdev_nvme_attach_controller", p))
    }

    fn destroy(&self) {
        let name = self.ctrl.name().to_string();
        // Runs where the last descriptor closed: the registry is the main
        // reactor's.
        reactor::send_msg(ReactorId(0), move || namespace_destroyed(&name));
    }
}

fn trid(o: &ConnectOptions) -> Value {
    json!({
        "trtype": "TCP",
        "adrfam": if o.addr.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": o.addr.ip().to_string(),
        "trsvcid": o.addr.port().to_string(),
        "subnqn": o.subnqn,
    })
}

struct NamespaceChannel {
    q: IoChannel<Controller>,
    nsid: u32,
}

impl BackendChannel for NamespaceChannel {
    fn submit(&self, io: BdevIo) {
        let q: &Rc<IoQueue> = &self.q;
        q.submit(self.nsid, io);
    }
}

/// An attached controller (main reactor).
struct Attached {
    ctrl: Arc<Controller>,
    admin: Rc<Qpair>,
    bdevs: Vec<String>,
    live: usize,
    attach_params: Value,
    on_detached: Vec<Box<dyn FnOnce()>>,
    detaching: bool,
    _keep_alive: Option<Poller>,
    /// Since when the controller is lost (reconnecting).
    lost_at: Option<Instant>,
    /// The next reconnect attempt, while lost.
    retry: Option<Poller>,
    /// An attempt is under way.
    attempting: bool,
    resets: u64,
}

#[derive(Default)]
struct Registry {
    ctrls: RefCell<Vec<Attached>>,
    /// Names being attached (bring-up in progress).
    pending: RefCell<Vec<String>>,
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
    r.ctrls.borrow().iter().any(|a| a.ctrl.name() == name) || r.pending.borrow().iter().any(|n| n == name)
}

/// Whether a fabrics controller is attached (brought up) under this name.
pub fn attached(name: &str) -> bool {
    registry().ctrls.borrow().iter().any(|a| a.ctrl.name() == name)
}

/// The controllers attached, in attach order.
pub fn controllers() -> Vec<Arc<Controller>> {
    registry().ctrls.borrow().iter().map(|a| a.ctrl.clone()).collect()
}

/// Attach the controller at `opts.addr` under `name` (main reactor):
/// bring it up, then register a bdev per namespace. `done` gets the bdev
/// names. `attach_params` is what save_config writes back.
pub fn attach(name: &str, opts: ConnectOptions, attach_params: Value, done: impl FnOnce(Result<Vec<String>, HostError>) + 'static) {
    let reg = registry();
    reg.pending.borrow_mut().push(name.to_string());
    let n = name.to_string();
    ctrlr::connect(name, opts, reactor::count(), move |r| {
        let reg = registry();
        reg.pending.borrow_mut().retain(|p| p != &n);
        match r {
            Err(e) => done(Err(e)),
            Ok((ctrl, admin)) => done(Ok(add(ctrl, admin, attach_params))),
        }
    });
}

fn add(ctrl: Arc<Controller>, admin: Rc<Qpair>, attach_params: Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut first = true;
    for ns in &ctrl.namespaces {
        let name = format!("{}n{}", ctrl.name(), ns.nsid);
        if ns.metadata_size != 0 || ns.block_size == 0 {
            tracing::warn!("{name}: namespace has {} metadata bytes per block (not supported); no bdev", ns.metadata_size);
            continue;
        }
        let uuid = (ns.nguid != [0; 16]).then(|| Uuid::from_bytes(ns.nguid));
        let backend = Arc::new(NamespaceBackend { ctrl: ctrl.clone(), nsid: ns.nsid, attach_call: first.then(|| attach_params.clone()) });
        match bdev::register(BdevSpec { name: name.clone(), block_size: ns.block_size, num_blocks: ns.num_blocks, uuid, backend }) {
            Ok(_) => {
                names.push(name);
                first = false;
            }
            Err(e) => tracing::error!("{name}: {e}"),
        }
    }
    let keep_alive = (ctrl.opts.kato_ms > 0).then(|| {
        let name = ctrl.name().to_string();
        // Half the timeout, as Linux and SPDK send it.
        let period = Duration::from_millis(u64::from(ctrl.opts.kato_ms / 2).max(100));
        reactor::register_timed_poller("nvmf_host_keep_alive", period, move || {
            let qp = registry().ctrls.borrow().iter().find(|a| a.ctrl.name() == name).map(|a| a.admin.clone());
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
    });
    tracing::info!("nvmf host: attached {} ({} at {}), bdevs {:?}", ctrl.name(), ctrl.opts.subnqn, ctrl.opts.addr, names);
    registry().ctrls.borrow_mut().push(Attached {
        live: names.len(),
        ctrl,
        admin,
        bdevs: names.clone(),
        attach_params,
        on_detached: Vec::new(),
        detaching: false,
        _keep_alive: keep_alive,
        lost_at: None,
        retry: None,
        attempting: false,
        resets: 0,
    });
    // A subsystem with no namespace yet stays attached, as with SPDK.
    names
}

/// Detach controller `name`: delete its bdevs, shut it down, forget it;
/// `done` runs when that has happened. `None` if no such controller.
pub fn detach(name: &str, done: impl FnOnce() + 'static) -> Option<()> {
    let bdevs = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let a = ctrls.iter_mut().find(|a| a.ctrl.name() == name)?;
        a.on_detached.push(Box::new(done));
        if a.detaching {
            return Some(());
        }
        a.detaching = true;
        a.bdevs.clone()
    };
    if bdevs.is_empty() {
        finish_detach(name);
    }
    for b in &bdevs {
        bdev::unregister(b, |_| {});
    }
    Some(())
}

fn namespace_destroyed(ctrl_name: &str) {
    let last = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(a) = ctrls.iter_mut().find(|a| a.ctrl.name() == ctrl_name) else { return };
        a.live = a.live.saturating_sub(1);
        a.detaching = true;
        a.live == 0
    };
    if last {
        finish_detach(ctrl_name);
    }
}

fn finish_detach(name: &str) {
    let entry = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(pos) = ctrls.iter().position(|a| a.ctrl.name() == name) else { return };
        ctrls.remove(pos)
    };
    let admin = entry.admin.clone();
    let n = name.to_string();
    let on_detached = entry.on_detached;
    let end = move || {
        admin.close();
        tracing::info!("nvmf host: {n} detached");
        for f in on_detached {
            f();
        }
    };
    if entry.admin.is_ready() {
        ctrlr::shutdown(&entry.admin, move |r| {
            if let Err(e) = r {
                tracing::warn!("nvmf host: shutdown: {e}");
            }
            end();
        });
    } else {
        end();
    }
}

/// A queue pair of controller `name` failed (main reactor): unless it is
/// being reconnected already, take the controller down (its I/O waits,
/// parked on each reactor), close its queues and reconnect it, as
/// `ctrlr_loss_timeout_sec`, `reconnect_delay_sec` and
/// `fast_io_fail_timeout_sec` say.
pub(crate) fn lost(name: &str, why: &str) {
    let ctrl = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(a) = ctrls.iter_mut().find(|a| a.ctrl.name() == name) else { return };
        if a.detaching || a.lost_at.is_some() {
            return;
        }
        a.lost_at = Some(Instant::now());
        a.resets += 1;
        a.ctrl.set_down(true);
        a.admin.close();
        a.ctrl.clone()
    };
    tracing::warn!("nvmf host: controller {name} lost ({why}); reconnecting");
    let c = ctrl.clone();
    reactor::for_each_reactor(
        move || {
            if let Some(q) = try_get_io_channel(&c) {
                q.disconnect();
            }
        },
        || {},
    );
    attempt(name);
}

/// One reconnect attempt; on failure, the next after `reconnect_delay_sec`
/// or the end (the controller deleted) once `ctrlr_loss_timeout_sec` passed.
fn attempt(name: &str) {
    let ctrl = {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(a) = ctrls.iter_mut().find(|a| a.ctrl.name() == name) else { return };
        if a.attempting || a.detaching {
            return;
        }
        a.attempting = true;
        a.retry = None;
        a.ctrl.clone()
    };
    let n = name.to_string();
    ctrlr::reconnect(&ctrl, move |r| {
        let reg = registry();
        let mut ctrls = reg.ctrls.borrow_mut();
        let Some(a) = ctrls.iter_mut().find(|a| a.ctrl.name() == n) else {
            if let Ok((_, admin)) = r {
                admin.close();
            }
            return;
        };
        a.attempting = false;
        match r {
            Ok((c, admin)) if !a.detaching => {
                a.admin = admin;
                a.lost_at = None;
                c.set_down(false);
                tracing::info!("nvmf host: controller {n} reconnected (controller id {})", c.cntlid());
                drop(ctrls);
                reactor::for_each_reactor(
                    move || {
                        if let Some(q) = try_get_io_channel(&c) {
                            q.connect();
                        }
                    },
                    || {},
                );
            }
            Ok((_, admin)) => admin.close(),
            Err(e) => {
                let o = &a.ctrl.opts;
                let down_for = a.lost_at.map(|t| t.elapsed()).unwrap_or_default();
                let loss = o.ctrlr_loss_timeout_sec;
                let give_up = loss == 0 || (loss > 0 && down_for >= Duration::from_secs(loss as u64));
                let fail_fast = o.fast_io_fail_timeout_sec > 0 && down_for >= Duration::from_secs(u64::from(o.fast_io_fail_timeout_sec));
                let c = a.ctrl.clone();
                if give_up || fail_fast {
                    c.set_failing();
                    let c2 = c.clone();
                    reactor::for_each_reactor(
                        move || {
                            if let Some(q) = try_get_io_channel(&c2) {
                                q.fail_parked(IoStatus::Failed);
                            }
                        },
                        || {},
                    );
                }
                if give_up {
                    tracing::error!("nvmf host: controller {n} lost for good ({e}); deleting it (ctrlr_loss_timeout_sec {loss})");
                    drop(ctrls);
                    let _ = detach(&n, || {});
                    return;
                }
                tracing::warn!("nvmf host: controller {n}: reconnect failed ({e}); next in {} s", o.reconnect_delay_sec.max(1));
                let n2 = n.clone();
                let delay = Duration::from_secs(u64::from(o.reconnect_delay_sec.max(1)));
                a.retry = Some(reactor::register_timed_poller("nvmf_host_reconnect", delay, move || {
                    let n3 = n2.clone();
                    // Not from inside the poller: the attempt replaces it.
                    reactor::send_msg(ReactorId(0), move || attempt(&n3));
                    PollStatus::Busy
                }));
            }
        }
    });
}

/// `bdev_nvme_get_controllers` entries of fabrics controllers.
pub fn describe_controllers(name: Option<&str>) -> Vec<Value> {
    registry()
        .ctrls
        .borrow()
        .iter()
        .filter(|a| name.is_none_or(|n| n == a.ctrl.name()))
        .map(|a| {
            let c = &a.ctrl;
            let state = if a.lost_at.is_some() {
                "resetting"
            } else if a.admin.is_ready() {
                "enabled"
            } else {
                "failed"
            };
            json!({
                "name": c.name(),
                "ctrlrs": [{
                    "state": state,
                    "cntlid": c.cntlid(),
                    "trid": trid(&c.opts),
                    "host": {"nqn": c.opts.hostnqn, "addr": c.opts.hostaddr.map(|a| a.to_string()).unwrap_or_default(), "svcid": ""},
                    "model_number": c.id.model(),
                    "serial_number": c.id.serial(),
                    "firmware_revision": c.id.firmware(),
                    "namespaces": a.bdevs,
                    "io_queues": c.io_queues,
                    "max_transfer_bytes": c.max_transfer,
                    "resets": a.resets,
                    "error": a.admin.error().map(|e| e.to_string()),
                }],
                "attach_params": a.attach_params,
            })
        })
        .collect()
}
