//! SPDK's bdev_nvme RPC methods for PCIe controllers:
//! `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`,
//! `bdev_nvme_get_controllers`, `bdev_nvme_reset_controller`,
//! `bdev_nvme_set_options` and `bdev_nvme_set_hotplug`.
//!
//! Every parameter SPDK's schema defines is accepted by name; the ones that
//! only mean something for NVMe-oF (or features Pollux lacks) are refused
//! with a clear error when set to anything but their default.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use pollux_core::app::App;
use pollux_core::reactor;
use pollux_core::rpc::{Responder, RpcError, States};
use pollux_nvme_spec::identify::IdentifyController;
use pollux_nvme_spec::log::{SmartLog, lid};
use pollux_nvmf_host::qpair::Fabric;
use serde::Deserialize;
use serde_json::{Value, json};
use zerocopy::FromBytes;

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
        if !controllers().is_empty() || super::attaching() {
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
        let mut list = describe_controllers(p.name.as_deref());
        list.extend(pollux_nvmf_host::bdev::describe_controllers(p.name.as_deref()));
        match p.name {
            Some(n) if list.is_empty() => r.err(RpcError::errno(libc::ENODEV, format!("Controller {n} does not exist"))),
            _ => r.ok(list),
        }
    });
    m.register("bdev_nvme_get_controller_health_info", States::RUNTIME, health_info);
    m.register("bdev_nvme_get_io_paths", States::RUNTIME, |p: GetIoPaths, r: Responder| {
        if let Some(n) = &p.name {
            if pollux_core::bdev::get(n).is_none() {
                return r.err(RpcError::errno(libc::ENODEV, format!("bdev {n} does not exist")));
            }
        }
        pollux_nvmf_host::bdev::io_paths(p.name.as_deref(), move |v| r.ok(v));
    });
    m.register("bdev_nvme_set_multipath_policy", States::RUNTIME, |p: SetPolicy, r: Responder| {
        let Some(policy) = pollux_nvmf_host::bdev::policy(&p.name) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("NVMe-oF bdev {} does not exist", p.name)));
        };
        let active_active = match p.policy.as_str() {
            "active_active" => true,
            "active_passive" => false,
            other => return r.err(RpcError::invalid_params(format!("policy must be active_active or active_passive, not {other}"))),
        };
        let queue_depth = match p.selector.as_deref() {
            None | Some("round_robin") => false,
            Some("queue_depth") => true,
            Some(other) => return r.err(RpcError::invalid_params(format!("selector must be round_robin or queue_depth, not {other}"))),
        };
        // SPDK's rules: a selector only for active-active, rr_min_io only
        // for round robin, and at least 1.
        if !active_active && p.selector.is_some() {
            return r.err(RpcError::invalid_params("selector only applies to the active_active policy"));
        }
        if p.rr_min_io.is_some() && (!active_active || queue_depth) {
            return r.err(RpcError::invalid_params("rr_min_io only applies to the round_robin selector"));
        }
        if p.rr_min_io == Some(0) {
            return r.err(RpcError::invalid_params("rr_min_io must be at least 1"));
        }
        policy.apply(active_active, queue_depth, p.rr_min_io.unwrap_or(1));
        r.ok(true)
    });
    m.register("bdev_nvme_start_discovery", States::RUNTIME, start_discovery);
    m.register("bdev_nvme_stop_discovery", States::RUNTIME, |p: StopDiscovery, r: Responder| {
        if !pollux_nvmf_host::discovery::exists(&p.name) {
            return r.err(RpcError::errno(libc::ENOENT, format!("no discovery service named {}", p.name)));
        }
        let _ = pollux_nvmf_host::discovery::stop(&p.name, move || r.ok(true));
    });
    m.register("bdev_nvme_get_discovery_info", States::RUNTIME, |_: Option<Value>, r: Responder| {
        r.ok(pollux_nvmf_host::discovery::describe())
    });
    m.register("bdev_nvme_reset_controller", States::RUNTIME, |p: Reset, r: Responder| {
        if controller(&p.name).is_none() && pollux_nvmf_host::bdev::attached(&p.name) {
            return pollux_nvmf_host::bdev::reset(&p.name, p.cntlid, move |res| match res {
                Ok(()) => r.ok(true),
                Err(e) => r.err(RpcError::errno(libc::ENXIO, e)),
            });
        }
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
                    "trtype {} is not supported: Pollux attaches local NVMe controllers (trtype PCIe) and NVMe-oF controllers over TCP and RDMA",
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

/// What `bdev_nvme_set_options` sets for every NVMe-oF controller (keep
/// alive, I/O timeouts and their action, `bdev_retry_count`), and the
/// reconnect knobs: the call's values, else the options', checked by
/// SPDK's rules.
fn apply_host_options(
    opts: &mut pollux_nvmf_host::ctrlr::ConnectOptions,
    loss: Option<i32>,
    delay: Option<u32>,
    fast: Option<u32>,
) -> Result<(), &'static str> {
    let o = options::options();
    if o.keep_alive_timeout_ms != 0 {
        opts.kato_ms = o.keep_alive_timeout_ms;
    }
    // I/O timeouts as for PCIe.
    opts.io_timeout = (o.timeout_us != 0 && o.action_on_timeout != "none").then(|| std::time::Duration::from_micros(o.timeout_us));
    opts.abort_on_timeout = o.action_on_timeout == "abort";
    opts.bdev_retry_count = o.bdev_retry_count;
    opts.ctrlr_loss_timeout_sec = loss.unwrap_or(o.ctrlr_loss_timeout_sec);
    opts.reconnect_delay_sec = delay.unwrap_or(o.reconnect_delay_sec);
    opts.fast_io_fail_timeout_sec = fast.unwrap_or(o.fast_io_fail_timeout_sec);
    match reconnect_rules(opts) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Set the keys of `v` whose values were given.
fn put_given<const N: usize>(v: &mut Value, pairs: [(&str, Option<Value>); N]) {
    for (k, x) in pairs {
        if let Some(x) = x {
            v[k] = x;
        }
    }
}

/// SPDK's rules for `ctrlr_loss_timeout_sec`, `reconnect_delay_sec` and
/// `fast_io_fail_timeout_sec`: why these are refused, if they are.
fn reconnect_rules(opts: &pollux_nvmf_host::ctrlr::ConnectOptions) -> Option<&'static str> {
    let (loss, delay, fast) = (opts.ctrlr_loss_timeout_sec, opts.reconnect_delay_sec, opts.fast_io_fail_timeout_sec);
    if loss < -1 {
        Some("ctrlr_loss_timeout_sec must be -1 (forever), 0 or a number of seconds")
    } else if loss == 0 && (delay != 0 || fast != 0) {
        Some("reconnect_delay_sec and fast_io_fail_timeout_sec need a non-zero ctrlr_loss_timeout_sec")
    } else if loss != 0 && delay == 0 {
        Some("reconnect_delay_sec must be above 0 when ctrlr_loss_timeout_sec is not 0")
    } else if loss > 0 && (i64::from(delay) > i64::from(loss) || i64::from(fast) > i64::from(loss)) {
        Some("reconnect_delay_sec and fast_io_fail_timeout_sec must not exceed ctrlr_loss_timeout_sec")
    } else if fast != 0 && fast < delay {
        Some("fast_io_fail_timeout_sec must not be below reconnect_delay_sec")
    } else {
        None
    }
}

/// `trtype` TCP or RDMA: the NVMe-oF host (`pollux-nvmf-host`).
fn attach_fabric(fabric: Fabric, p: Attach, r: Responder) {
    let refuse = |name: &str, why: &str| {
        RpcError::errno(libc::EOPNOTSUPP, format!("parameter '{name}' is not supported by Pollux's NVMe-oF host yet ({why})"))
    };
    let unsupported: [(&str, bool, &str); 8] = [
        ("prchk_reftag", p.prchk_reftag, "no end-to-end protection information"),
        ("prchk_guard", p.prchk_guard, "no end-to-end protection information"),
        ("allow_unrecognized_csi", p.allow_unrecognized_csi, "only the NVM command set"),
        ("psk", p.psk.is_some(), "no TLS"),
        ("dhchap_key", p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some(), "no in-band authentication"),
        ("multipath_opts", p.multipath_opts.is_some(), "set the policy with bdev_nvme_set_multipath_policy"),
        ("hostsvcid", p.hostsvcid.is_some(), "the host port is the kernel's choice"),
        ("disable_sq_flow_control", p.disable_sq_flow_control, "SQ flow control stays on"),
    ];
    if let Some((name, _, why)) = unsupported.iter().find(|(_, set, _)| *set) {
        return r.err(refuse(name, why));
    }
    if fabric == Fabric::Rdma && (p.hdgst || p.ddgst) {
        return r.err(RpcError::invalid_params("hdgst and ddgst are NVMe/TCP digests: trtype RDMA has none"));
    }
    if p.name.is_empty() {
        return r.err(RpcError::invalid_params("name must not be empty"));
    }
    if let Some(f) = &p.adrfam {
        if !matches!(f.to_ascii_lowercase().as_str(), "ipv4" | "ipv6") {
            return r.err(RpcError::invalid_params(format!("adrfam {f}: {} takes IPv4 or IPv6", fabric.name())));
        }
    }
    let Some(subnqn) = p.subnqn.clone() else {
        return r.err(RpcError::invalid_params(format!("subnqn is required for trtype {}", fabric.name())));
    };
    let port = match p.trsvcid.as_deref().unwrap_or("4420").parse::<u16>() {
        Ok(n) => n,
        Err(_) => return r.err(RpcError::invalid_params(format!("trsvcid {} is not a port", p.trsvcid.as_deref().unwrap_or_default()))),
    };
    let ip = match p.traddr.parse::<std::net::IpAddr>() {
        Ok(a) => a,
        Err(_) => return r.err(RpcError::invalid_params(format!("traddr {} is not an IP address", p.traddr))),
    };
    let hostaddr = match p.hostaddr.as_deref().map(str::parse::<std::net::IpAddr>) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return r.err(RpcError::invalid_params(format!("hostaddr {} is not an IP address", p.hostaddr.as_deref().unwrap_or_default())));
        }
    };
    if p.num_io_queues.is_some_and(|n| n == 0 || n > 65535) {
        return r.err(RpcError::invalid_params("num_io_queues must be in (0, 65535]"));
    }
    let mode = p.multipath.as_deref().unwrap_or("failover");
    if !matches!(mode, "disable" | "failover" | "multipath") {
        return r.err(RpcError::invalid_params(format!("multipath must be disable, failover or multipath, not {mode}")));
    }
    if super::name_taken(&p.name) {
        return r.err(RpcError::errno(libc::EEXIST, format!("A controller named {} already exists (a PCIe controller)", p.name)));
    }
    let another_path = pollux_nvmf_host::bdev::exists(&p.name);
    if another_path && mode == "disable" {
        return r.err(RpcError::errno(libc::EEXIST, format!("A controller named {} already exists and multipath is disabled", p.name)));
    }
    let mut opts = pollux_nvmf_host::ctrlr::ConnectOptions::new(std::net::SocketAddr::new(ip, port), &subnqn);
    opts.fabric = fabric;
    opts.hostaddr = hostaddr;
    if let Some(h) = &p.hostnqn {
        opts.hostnqn = h.clone();
    }
    if another_path {
        // Another path: the same host (NQN and host identifier) as the
        // first, as SPDK assumes.
        if let Some(first) = pollux_nvmf_host::bdev::controllers().into_iter().find(|c| c.name() == p.name) {
            if p.hostnqn.is_none() {
                opts.hostnqn = first.opts.hostnqn.clone();
            }
            opts.hostid = first.opts.hostid;
        }
    }
    opts.hdgst = p.hdgst;
    opts.ddgst = p.ddgst;
    opts.num_io_queues = p.num_io_queues.unwrap_or(0);
    if let Some(us) = p.fabrics_connect_timeout_us.filter(|&us| us > 0) {
        opts.connect_timeout = std::time::Duration::from_micros(us);
    }
    if let Err(why) = apply_host_options(&mut opts, p.ctrlr_loss_timeout_sec, p.reconnect_delay_sec, p.fast_io_fail_timeout_sec) {
        return r.err(RpcError::invalid_params(why));
    }
    let mut config = json!({"name": p.name, "trtype": fabric.name(), "adrfam": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": p.traddr, "trsvcid": port.to_string(), "subnqn": subnqn, "hostnqn": opts.hostnqn,
        "hdgst": p.hdgst, "ddgst": p.ddgst});
    put_given(
        &mut config,
        [
            ("hostaddr", p.hostaddr.clone().map(Value::from)),
            ("num_io_queues", p.num_io_queues.map(Value::from)),
            ("max_bdevs", p.max_bdevs.map(Value::from)),
            ("ctrlr_loss_timeout_sec", p.ctrlr_loss_timeout_sec.map(Value::from)),
            ("reconnect_delay_sec", p.reconnect_delay_sec.map(Value::from)),
            ("fast_io_fail_timeout_sec", p.fast_io_fail_timeout_sec.map(Value::from)),
            ("multipath", p.multipath.clone().map(Value::from)),
        ],
    );
    let max_bdevs = p.max_bdevs;
    let name = p.name.clone();
    pollux_nvmf_host::bdev::attach(&p.name, opts, config, mode != "disable", move |res| match res {
        Ok(mut names) => {
            if let Some(max) = max_bdevs {
                names.truncate(max as usize);
            }
            r.ok(names)
        }
        Err(e) => r.err(RpcError::errno(e.errno(), format!("cannot attach {name}: {e}"))),
    });
}

fn attach(p: Attach, r: Responder) {
    if let Some(f) = Fabric::parse(&p.trtype) {
        return attach_fabric(f, p, r);
    }
    let addr = match p.check() {
        Ok(a) => a,
        Err(e) => return r.err(e),
    };
    if super::name_taken(&p.name) || pollux_nvmf_host::bdev::exists(&p.name) {
        return r.err(RpcError::errno(libc::EEXIST, format!("A controller named {} already exists and multipath is disabled", p.name)));
    }
    if super::address_taken(addr) {
        return r.err(RpcError::errno(libc::EEXIST, format!("A controller with the provided trid (traddr: {addr}) already exists.")));
    }
    let mut opts = options::attach_options();
    if let Some(n) = p.num_io_queues {
        opts.num_io_queues = n;
    }
    let config = p.config(addr);
    let (name, max_bdevs) = (p.name.clone(), p.max_bdevs);
    // Answered once the controller is up (as SPDK's, whose probe is
    // polled): the reactor serves everything else meanwhile.
    super::bring_up(
        p.name,
        addr,
        move || Controller::attach_pci(&name, addr, opts),
        move |res| {
            let ctrl = match res {
                Ok(c) => c,
                Err(e) => return r.err(RpcError::errno(e.errno(), format!("cannot attach {addr}: {e}"))),
            };
            match add_controller(ctrl, config) {
                Ok(mut names) => {
                    if let Some(max) = max_bdevs {
                        names.truncate(max as usize);
                    }
                    r.ok(names)
                }
                Err(e) => r.err(RpcError::errno(e.errno(), e)),
            }
        },
    );
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
    if controller(&p.name).is_none() && pollux_nvmf_host::bdev::exists(&p.name) {
        let fabric = match p.trtype.as_deref().map(|t| (t, Fabric::parse(t))) {
            None => None,
            Some((_, Some(f))) => Some(f),
            Some((t, None)) => return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} has no {t} path", p.name))),
        };
        if !pollux_nvmf_host::bdev::attached(&p.name) {
            return r.err(RpcError::errno(libc::EBUSY, format!("Controller {} is still being attached", p.name)));
        }
        if fabric.is_none() && p.traddr.is_none() && p.trsvcid.is_none() && p.hostaddr.is_none() {
            let _ = pollux_nvmf_host::bdev::detach(&p.name, move || r.ok(true));
            return;
        }
        // The paths matching every address field given, as SPDK matches.
        let traddr = match p.traddr.as_deref().map(str::parse::<std::net::IpAddr>) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                return r.err(RpcError::invalid_params(format!("traddr {} is not an IP address", p.traddr.unwrap_or_default())));
            }
        };
        let trsvcid = match p.trsvcid.as_deref().map(str::parse::<u16>) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => return r.err(RpcError::invalid_params(format!("trsvcid {} is not a port", p.trsvcid.unwrap_or_default()))),
        };
        let hostaddr = match p.hostaddr.as_deref().map(str::parse::<std::net::IpAddr>) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                return r.err(RpcError::invalid_params(format!("hostaddr {} is not an IP address", p.hostaddr.unwrap_or_default())));
            }
        };
        let same_subsystem = pollux_nvmf_host::bdev::controllers()
            .into_iter()
            .find(|c| c.name() == p.name)
            .is_some_and(|c| p.subnqn.as_deref().is_none_or(|s| s == c.opts.subnqn));
        let family_ok = p.adrfam.as_deref().is_none_or(|f| match traddr {
            Some(a) => f.eq_ignore_ascii_case(if a.is_ipv4() { "ipv4" } else { "ipv6" }),
            None => matches!(f.to_ascii_lowercase().as_str(), "ipv4" | "ipv6"),
        });
        let m = pollux_nvmf_host::bdev::PathMatch { fabric, traddr, trsvcid, hostaddr };
        if !same_subsystem || !family_ok || !pollux_nvmf_host::bdev::has_path(&p.name, m) {
            return r.err(RpcError::errno(libc::ENODEV, format!("Controller {} has no path matching the address given", p.name)));
        }
        let _ = pollux_nvmf_host::bdev::detach_path(&p.name, m, move || r.ok(true));
        return;
    }
    let Some(c) = controller(&p.name) else {
        if super::name_taken(&p.name) {
            return r.err(RpcError::errno(libc::EBUSY, format!("Controller {} is still being attached", p.name)));
        }
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
pub(crate) struct HealthInfo {
    pub name: String,
}

thread_local! {
    /// Health reads under way (main reactor), by controller name, with the
    /// calls waiting for them.
    static HEALTH_READS: RefCell<HashMap<String, Vec<Responder>>> = RefCell::default();
}

/// `bdev_nvme_get_controller_health_info`: the controller's SMART / Health
/// Information log page, in SPDK's fields. The Get Log Page waits for the
/// device (up to the admin timeout): off the reactor. One read per
/// controller at a time: calls that come while one is under way get its
/// answer (a silent device holds one thread, not one per call).
pub(crate) fn health_info(p: HealthInfo, r: Responder) {
    let first = HEALTH_READS.with(|m| match m.borrow_mut().entry(p.name.clone()) {
        Entry::Occupied(mut e) => {
            e.get_mut().push(r);
            false
        }
        Entry::Vacant(e) => {
            e.insert(vec![r]);
            true
        }
    });
    if !first {
        return;
    }
    let answer = HealthAnswer(Some(p.name.clone()));
    read_health(p.name, move |res| answer.give(res));
}

/// Answers the calls waiting for a controller's health read; dropped
/// without answering (a read whose result was lost), it answers them with
/// an error, so that the name is free for the next read.
struct HealthAnswer(Option<String>);

impl HealthAnswer {
    fn give(mut self, res: Result<Value, RpcError>) {
        if let Some(name) = self.0.take() {
            answer_health(&name, res);
        }
    }
}

impl Drop for HealthAnswer {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            let lost = Err(RpcError::internal(format!("{name}: the health read ended without an answer")));
            match reactor::try_current() {
                Some(reactor::ReactorId(0)) => answer_health(&name, lost),
                Some(_) => reactor::send_msg(reactor::ReactorId(0), move || answer_health(&name, lost)),
                None => tracing::error!("{name}: a health read ended off the reactors without an answer"),
            }
        }
    }
}

fn answer_health(name: &str, res: Result<Value, RpcError>) {
    for r in HEALTH_READS.with(|m| m.borrow_mut().remove(name)).unwrap_or_default() {
        match &res {
            Ok(v) => r.ok(v.clone()),
            Err(e) => r.err(e.clone()),
        }
    }
}

fn read_health(name: String, done: impl FnOnce(Result<Value, RpcError>) + Send + 'static) {
    let len = std::mem::size_of::<SmartLog>();
    let parse = move |raw: &[u8]| SmartLog::read_from_bytes(&raw[..raw.len().min(len)]).ok();
    let short = |name: &str, raw: &[u8]| RpcError::internal(format!("{name}: short health log ({} bytes)", raw.len()));
    let Some(c) = controller(&name) else {
        // A controller attached over NVMe-oF: through its admin queue.
        let n = name.clone();
        return pollux_nvmf_host::bdev::health_log(&name, len, move |res| {
            done(match res {
                Ok((ctrl, raw)) => match parse(&raw) {
                    Some(log) => Ok(health_json(&ctrl.id, &ctrl.opts.addr.ip().to_string(), &log)),
                    None => Err(short(&n, &raw)),
                },
                Err(Some(e)) => Err(RpcError::errno(libc::EIO, format!("{n}: {e}"))),
                Err(None) => {
                    tracing::error!("nvme ctrlr name '{n}' does not exist");
                    Err(RpcError::new(RpcError::INTERNAL_ERROR, "Device not found"))
                }
            })
        });
    };
    let c2 = c.clone();
    c2.off_reactor(
        "nvme-health",
        false,
        move |c| c.get_log_page(lid::SMART_HEALTH, u32::MAX, len),
        move |res| {
            done(match res {
                Err(e) => Err(RpcError::errno(e.errno(), format!("{name}: cannot read the health log: {e}"))),
                Ok(raw) => match parse(&raw) {
                    Some(log) => Ok(health_json(c.identify_data(), &c.address().map(|a| a.to_string()).unwrap_or_default(), &log)),
                    None => Err(short(&name, &raw)),
                },
            })
        },
    );
}

/// A 128-bit log counter as a JSON number: exact up to 2^64 - 1, then a
/// float (serde_json's numbers stop at 64 bits; SPDK prints every digit).
fn counter(raw: &[u8; 16]) -> Value {
    let v = pollux_nvme_spec::log::counter128(raw);
    match u64::try_from(v) {
        Ok(n) => json!(n),
        Err(_) => json!(v as f64),
    }
}

/// SPDK's answer to `bdev_nvme_get_controller_health_info`, field for field
/// (temperatures in degrees Celsius, signed here where SPDK's unsigned
/// arithmetic wraps below 0 C; SPDK writes a `temperature_sensor_celsius`
/// key per sensor present, which a JSON reader takes as the last one, the
/// one given here).
fn health_json(id: &IdentifyController, traddr: &str, log: &SmartLog) -> Value {
    let celsius = |k: u16| i64::from(k) - 273;
    let mut v = json!({
        "model_number": id.model(),
        "serial_number": id.serial(),
        "firmware_revision": id.firmware(),
        "traddr": traddr,
        "critical_warning": log.critical_warning,
        "temperature_celsius": celsius(log.temperature.get()),
        "available_spare_percentage": log.avail_spare,
        "available_spare_threshold_percentage": log.spare_thresh,
        "percentage_used": log.percent_used,
        "data_units_read": counter(&log.data_units_read),
        "data_units_written": counter(&log.data_units_written),
        "host_read_commands": counter(&log.host_read_commands),
        "host_write_commands": counter(&log.host_write_commands),
        "controller_busy_time": counter(&log.controller_busy_time),
        "power_cycles": counter(&log.power_cycles),
        "power_on_hours": counter(&log.power_on_hours),
        "unsafe_shutdowns": counter(&log.unsafe_shutdowns),
        "media_errors": counter(&log.media_errors),
        "num_err_log_entries": counter(&log.num_err_log_entries),
        "warning_temperature_time_minutes": log.warning_temp_time.get(),
        "critical_composite_temperature_time_minutes": log.critical_comp_time.get(),
    });
    if let Some(k) = log.temp_sensor.iter().map(|t| t.get()).rfind(|&t| t != 0) {
        v["temperature_sensor_celsius"] = json!(celsius(k));
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllers {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartDiscovery {
    name: String,
    trtype: String,
    traddr: String,
    adrfam: Option<String>,
    trsvcid: Option<String>,
    hostnqn: Option<String>,
    #[serde(default)]
    wait_for_attach: bool,
    attach_timeout_ms: Option<u64>,
    ctrlr_loss_timeout_sec: Option<i32>,
    reconnect_delay_sec: Option<u32>,
    fast_io_fail_timeout_sec: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopDiscovery {
    name: String,
}

fn start_discovery(p: StartDiscovery, r: Responder) {
    let Some(fabric) = Fabric::parse(&p.trtype) else {
        return r.err(RpcError::invalid_params(format!("trtype {} is not supported: Pollux's NVMe-oF host speaks TCP and RDMA", p.trtype)));
    };
    if p.name.is_empty() {
        return r.err(RpcError::invalid_params("name must not be empty"));
    }
    if let Some(f) = &p.adrfam {
        if !matches!(f.to_ascii_lowercase().as_str(), "ipv4" | "ipv6") {
            return r.err(RpcError::invalid_params(format!("adrfam {f}: {} takes IPv4 or IPv6", fabric.name())));
        }
    }
    let Ok(ip) = p.traddr.parse::<std::net::IpAddr>() else {
        return r.err(RpcError::invalid_params(format!("traddr {} is not an IP address", p.traddr)));
    };
    let Ok(port) = p.trsvcid.as_deref().unwrap_or("8009").parse::<u16>() else {
        return r.err(RpcError::invalid_params(format!("trsvcid {} is not a port", p.trsvcid.as_deref().unwrap_or_default())));
    };
    if pollux_nvmf_host::discovery::exists(&p.name) {
        return r.err(RpcError::errno(libc::EEXIST, format!("a discovery service named {} already exists", p.name)));
    }
    let mut opts =
        pollux_nvmf_host::ctrlr::ConnectOptions::new(std::net::SocketAddr::new(ip, port), pollux_nvme_spec::fabrics::DISCOVERY_NQN);
    opts.fabric = fabric;
    if let Some(h) = &p.hostnqn {
        opts.hostnqn = h.clone();
    }
    // What the service attaches takes these, as an attach does.
    if let Err(why) = apply_host_options(&mut opts, p.ctrlr_loss_timeout_sec, p.reconnect_delay_sec, p.fast_io_fail_timeout_sec) {
        return r.err(RpcError::invalid_params(why));
    }
    let mut params = json!({"name": p.name, "trtype": fabric.name(), "adrfam": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": p.traddr, "trsvcid": port.to_string(), "hostnqn": opts.hostnqn, "wait_for_attach": true});
    put_given(
        &mut params,
        [
            ("ctrlr_loss_timeout_sec", p.ctrlr_loss_timeout_sec.map(Value::from)),
            ("reconnect_delay_sec", p.reconnect_delay_sec.map(Value::from)),
            ("fast_io_fail_timeout_sec", p.fast_io_fail_timeout_sec.map(Value::from)),
        ],
    );
    // The answer comes once the first log is read and what it lists is
    // attached (wait_for_attach; without it as well: Pollux attaches
    // before it answers either way, so a script that goes on finds the
    // bdevs). attach_timeout_ms bounds the wait.
    let _ = p.wait_for_attach;
    let name = p.name.clone();
    let r = std::rc::Rc::new(std::cell::RefCell::new(Some(r)));
    // Dropped (stopped) when the answer goes.
    let timer = p.attach_timeout_ms.filter(|&ms| ms > 0).map(|ms| {
        let (r2, n2) = (r.clone(), name.clone());
        reactor::register_timed_poller("nvmf_discovery_attach_timeout", std::time::Duration::from_millis(ms), move || {
            let Some(r) = r2.borrow_mut().take() else { return reactor::PollStatus::Idle };
            r.err(RpcError::errno(libc::ETIMEDOUT, format!("discovery {n2}: not attached within attach_timeout_ms")));
            let n3 = n2.clone();
            reactor::send_msg(reactor::current(), move || {
                let _ = pollux_nvmf_host::discovery::stop(&n3, || {});
            });
            reactor::PollStatus::Busy
        })
    });
    pollux_nvmf_host::discovery::start(&p.name, pollux_nvmf_host::discovery::ServiceOptions { opts, params }, move |res| {
        drop(timer);
        let Some(r) = r.borrow_mut().take() else { return };
        match res {
            Ok(_) => r.ok(true),
            Err(e) => r.err(RpcError::errno(e.errno(), format!("discovery {name}: {e}"))),
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIoPaths {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicy {
    name: String,
    policy: String,
    selector: Option<String>,
    rr_min_io: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reset {
    name: String,
    cntlid: Option<u16>,
}
