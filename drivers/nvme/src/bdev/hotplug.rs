//! Hot insertion (`bdev_nvme_set_hotplug --hotplug`): a timed poller on the main
//! reactor looks for NVMe controllers bound to vfio-pci that no one has
//! attached and attaches each as `HotInNvme<N>`, as SPDK names them.
//! Removal needs no poller: every attached controller's health poller
//! handles it.

use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use pollux_core::reactor::{self, PollStatus, Poller};
use serde_json::json;

use super::options::{self, Hotplug};
use super::{add_controller, address_taken, bring_up, name_taken};
use crate::controller::Controller;
use crate::pci::{self, PciAddress};

struct State {
    _poller: Poller,
}

/// Addresses hot insertion leaves alone until they disappear from the bus:
/// those that failed to attach (in use by another process, say: logged
/// once, not retried every period) and those detached on request (as in
/// SPDK, detaching is not undone by the next scan).
static SKIP: Mutex<Vec<PciAddress>> = Mutex::new(Vec::new());

fn skip_list() -> std::sync::MutexGuard<'static, Vec<PciAddress>> {
    SKIP.lock().unwrap_or_else(|e| e.into_inner())
}

/// A controller at `addr` was detached on request: do not attach it again.
pub fn skip(addr: PciAddress) {
    let mut s = skip_list();
    if !s.contains(&addr) {
        s.push(addr);
    }
}

/// Start or stop the hot-insert poller (main reactor).
pub fn apply(h: Hotplug) {
    drop(reactor::take_local::<State>());
    if !h.enable {
        return;
    }
    let poller = reactor::register_timed_poller("nvme_hotplug", Duration::from_micros(h.period_us), || {
        if scan() { PollStatus::Busy } else { PollStatus::Idle }
    });
    reactor::set_local(Rc::new(State { _poller: poller }));
}

/// Attach every new vfio-pci NVMe function (brought up off the reactor);
/// true when one was started.
fn scan() -> bool {
    let present = pci::nvme_functions();
    skip_list().retain(|a| present.iter().any(|(p, _)| p == a));
    let mut any = false;
    for (addr, f) in present {
        if f.driver.as_deref() != Some("vfio-pci") || address_taken(addr) || skip_list().contains(&addr) {
            continue;
        }
        let name = (0..).map(|n| format!("HotInNvme{n}")).find(|n| !name_taken(n)).expect("a free name");
        let n2 = name.clone();
        // On the reactor: they read the reactor's mode and count.
        let opts = options::attach_options();
        any = true;
        bring_up(
            name.clone(),
            addr,
            move || Controller::attach_pci(&n2, addr, opts),
            move |res| match res {
                Ok(ctrl) => match add_controller(ctrl, json!({"name": name, "trtype": "PCIe", "traddr": addr.to_string()})) {
                    Ok(bdevs) => tracing::info!("NVMe hotplug: attached {addr} as {name}: {}", bdevs.join(", ")),
                    Err(e) => {
                        tracing::warn!("NVMe hotplug: {addr}: {e}");
                        skip(addr);
                    }
                },
                Err(e) => {
                    tracing::warn!("NVMe hotplug: cannot attach {addr}: {e}");
                    skip(addr);
                }
            },
        );
    }
    any
}
