//! SPDK's bdev_nvme RPC methods for PCIe controllers:
//! `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`,
//! `bdev_nvme_get_controllers`, `bdev_nvme_reset_controller`,
//! `bdev_nvme_set_options` and `bdev_nvme_set_hotplug`.
//!
//! Every parameter SPDK's schema defines is accepted by name; the ones that
//! only mean something for NVMe-oF (or features Pollux lacks) are refused
//! with a clear error when set to anything but their default.

use pollux_core::app::App;
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use super::options::{self, Hotplug, NvmeOptions};
use super::{add_controller, controller, controllers, describe_controllers, detach, hotplug};
use crate::controller::Controller;
use crate::pci::PciAddress;

pub fn register(app: &mut App) {
    pollux_core::bdev::rpc::register_module_config("nvme", options::write_config);
    let m = app.methods();
    m.register("bdev_nvme_set_options", States::ANY, |p: NvmeOptions, r: Responder| {
        if let Err(e) = p.check() {
            return r.err(e);
        }
        // As in SPDK: options apply to controllers attached later, and
        // changing them under attached ones is refused.
        if !controllers().is_empty() {
            return r.err(RpcError::errno(libc::EPERM, "bdev_nvme_set_options must be called before any NVMe controller is attached"));
        }
        options::set_options(p);
        r.ok(true)
    });
    m.register("bdev_nvme_set_hotplug", States::ANY, |p: Hotplug, r: Responder| {
        if p.enable && p.period_us == 0 {
            return r.err(RpcError::invalid_params("period_us must be above 0"));
        }
        options::set_hotplug(p);
        hotplug::apply(p);
        r.ok(true)
    });
    m.register("bdev_nvme_attach_controller", States::RUNTIME, attach);
    m.register("bdev_nvme_detach_controller", States::RUNTIME, detach_rpc);
    m.register("bdev_nvme_get_controllers", States::RUNTIME, |p: GetControllers, r: Responder| {
        let list = describe_controllers(p.name.as_deref());
        match p.name {
            Some(n) if list.is_empty() => r.err(RpcError::errno(libc::ENODEV, format!("Controller {n} does not exist"))),
            _ => r.ok(list),
        }
    });
    m.register("bdev_nvme_reset_controller", States::RUNTIME, |p: Reset, r: Responder| {
        let Some(c) = controller(&p.name) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} does not exist", p.name)));
        };
        if let Some(id) = p.cntlid {
            if id != c.identify_data().cntlid.get() {
                return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} has no cntlid {id}", p.name)));
            }
        }
        c.reset(move |res| match res {
            Ok(()) => r.ok(true),
            Err(e) => r.err(RpcError::errno(libc::EIO, e)),
        });
    });
}

/// `bdev_nvme_attach_controller` parameters (every one of SPDK's schema).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Attach {
    name: String,
    trtype: String,
    traddr: String,
    adrfam: Option<String>,
    trsvcid: Option<String>,
    priority: Option<Value>,
    subnqn: Option<String>,
    hostnqn: Option<String>,
    hostaddr: Option<String>,
    hostsvcid: Option<String>,
    #[serde(default)]
    prchk_reftag: bool,
    #[serde(default)]
    prchk_guard: bool,
    #[serde(default)]
    hdgst: bool,
    #[serde(default)]
    ddgst: bool,
    fabrics_connect_timeout_us: Option<u64>,
    multipath: Option<String>,
    num_io_queues: Option<u32>,
    ctrlr_loss_timeout_sec: Option<i32>,
    reconnect_delay_sec: Option<u32>,
    fast_io_fail_timeout_sec: Option<u32>,
    psk: Option<String>,
    max_bdevs: Option<u32>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    allow_unrecognized_csi: bool,
    multipath_opts: Option<Value>,
    #[serde(default)]
    disable_sq_flow_control: bool,
}

fn unsupported(name: &str, why: &str) -> RpcError {
    RpcError::errno(libc::EOPNOTSUPP, format!("parameter '{name}' is not supported by Pollux's NVMe PCIe driver ({why})"))
}

impl Attach {
    /// Refuse what a PCIe attach cannot honour.
    fn check(&self) -> Result<PciAddress, RpcError> {
        if !self.trtype.eq_ignore_ascii_case("pcie") {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!(
                    "trtype {} is not supported: Pollux attaches local NVMe controllers (trtype PCIe); it has no NVMe-oF initiator",
                    self.trtype
                ),
            ));
        }
        let fabrics: [(&str, bool); 13] = [
            ("adrfam", self.adrfam.is_some()),
            ("trsvcid", self.trsvcid.is_some()),
            ("priority", self.priority.is_some()),
            ("subnqn", self.subnqn.is_some()),
            ("hostnqn", self.hostnqn.is_some()),
            ("hostaddr", self.hostaddr.is_some()),
            ("hostsvcid", self.hostsvcid.is_some()),
            ("hdgst", self.hdgst),
            ("ddgst", self.ddgst),
            ("fabrics_connect_timeout_us", self.fabrics_connect_timeout_us.is_some()),
            ("psk", self.psk.is_some()),
            ("dhchap_key", self.dhchap_key.is_some() || self.dhchap_ctrlr_key.is_some()),
            ("disable_sq_flow_control", self.disable_sq_flow_control),
        ];
        if let Some((name, _)) = fabrics.iter().find(|(_, set)| *set) {
            return Err(unsupported(name, "it applies to NVMe-oF transports only"));
        }
        let features: [(&str, bool, &str); 7] = [
            ("prchk_reftag", self.prchk_reftag, "no end-to-end protection information"),
            ("prchk_guard", self.prchk_guard, "no end-to-end protection information"),
            ("allow_unrecognized_csi", self.allow_unrecognized_csi, "only the NVM command set"),
            ("multipath", self.multipath.as_deref().is_some_and(|m| m == "multipath"), "no multipath"),
            ("multipath_opts", self.multipath_opts.is_some(), "no multipath"),
            ("ctrlr_loss_timeout_sec", self.ctrlr_loss_timeout_sec.is_some_and(|v| v != 0), "a PCIe controller is reset, not reconnected"),
            (
                "reconnect_delay_sec",
                self.reconnect_delay_sec.is_some_and(|v| v != 0) || self.fast_io_fail_timeout_sec.is_some_and(|v| v != 0),
                "a PCIe controller is reset, not reconnected",
            ),
        ];
        if let Some((name, _, why)) = features.iter().find(|(_, set, _)| *set) {
            return Err(unsupported(name, why));
        }
        if let Some(m) = &self.multipath {
            if !matches!(m.as_str(), "disable" | "failover" | "multipath") {
                return Err(RpcError::invalid_params(format!("multipath must be disable, failover or multipath, not {m}")));
            }
        }
        if self.num_io_queues.is_some_and(|n| n == 0 || n > 65536) {
            return Err(RpcError::invalid_params("num_io_queues must be in (0, 65536]"));
        }
        if self.name.is_empty() {
            return Err(RpcError::invalid_params("name must not be empty"));
        }
        self.traddr.parse::<PciAddress>().map_err(|e| RpcError::errno(libc::EINVAL, e))
    }

    /// The call save_config writes to recreate this controller.
    fn config(&self, addr: PciAddress) -> Value {
        let mut v = json!({"name": self.name, "trtype": "PCIe", "traddr": addr.to_string()});
        if let Some(n) = self.num_io_queues {
            v["num_io_queues"] = n.into();
        }
        if let Some(n) = self.max_bdevs {
            v["max_bdevs"] = n.into();
        }
        v
    }
}

fn attach(p: Attach, r: Responder) {
    let addr = match p.check() {
        Ok(a) => a,
        Err(e) => return r.err(e),
    };
    if controller(&p.name).is_some() {
        return r.err(RpcError::errno(libc::EEXIST, format!("A controller named {} already exists and multipath is disabled", p.name)));
    }
    if super::controllers().iter().any(|c| c.address() == Some(addr)) {
        return r.err(RpcError::errno(libc::EEXIST, format!("A controller with the provided trid (traddr: {addr}) already exists.")));
    }
    let mut opts = options::attach_options();
    if let Some(n) = p.num_io_queues {
        opts.num_io_queues = n;
    }
    let ctrl = match Controller::attach_pci(&p.name, addr, opts) {
        Ok(c) => c,
        Err(e) => return r.err(RpcError::errno(e.errno(), format!("cannot attach {addr}: {e}"))),
    };
    let config = p.config(addr);
    match add_controller(ctrl, config) {
        Ok(mut names) => {
            if let Some(max) = p.max_bdevs {
                if names.len() > max as usize {
                    names.truncate(max as usize);
                }
            }
            r.ok(names)
        }
        Err(e) => r.err(RpcError::errno(e.errno(), e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Detach {
    name: String,
    trtype: Option<String>,
    traddr: Option<String>,
    adrfam: Option<String>,
    trsvcid: Option<String>,
    subnqn: Option<String>,
    hostaddr: Option<String>,
    hostsvcid: Option<String>,
}

fn detach_rpc(p: Detach, r: Responder) {
    let Some(c) = controller(&p.name) else {
        return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} does not exist", p.name)));
    };
    if let Some(t) = &p.trtype {
        if !t.eq_ignore_ascii_case("pcie") {
            return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} has no {t} path", p.name)));
        }
    }
    if let Some(a) = &p.traddr {
        let matches = a.parse::<PciAddress>().ok().is_some_and(|a| Some(a) == c.address());
        if !matches {
            return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} has no path with traddr {a}", p.name)));
        }
    }
    if [&p.adrfam, &p.trsvcid, &p.subnqn, &p.hostaddr, &p.hostsvcid].iter().any(|v| v.is_some()) {
        return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} has no NVMe-oF path", p.name)));
    }
    if let Some(addr) = c.address() {
        hotplug::skip(addr);
    }
    if let Err(e) = detach(&p.name, move || r.ok(true)) {
        tracing::warn!("bdev_nvme_detach_controller: {e}");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllers {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reset {
    name: String,
    cntlid: Option<u16>,
}
