//! `rpc_params`: the parameters of every RPC method `pollux-tgt` registers,
//! decoded and acted on by the method's handler: a sequence of calls on a
//! fresh application (the daemon's method table, built by the same
//! registration calls) on a step harness reactor.
//!
//! Input: records `[method][flags][params JSON][0x00]`. `method` indexes
//! the sorted list of the daemon's method names, aliases included
//! ([`rpc_method_names`]); flags bit 0 calls it in the start-up state (else
//! at run time), bit 1 sends no params at all. Params that are not JSON
//! skip the record (`jsonrpc_framing` covers malformed JSON).
//!
//! What is left out, and why ([`EXCLUDED_METHODS`]): methods that would
//! touch hardware or files, spawn work outside the reactor, or end the
//! process. And so that fuzzing never binds a real port or asks DNS,
//! listener addresses are rewritten before the call: every `port` and
//! `trsvcid` becomes "0" (a port of the kernel's choice, never connected
//! to), a `host` that is not an IP address becomes 127.0.0.1, and a
//! `ptpl_file` (a path read and written) is dropped.
//!
//! Each execution starts from nothing: a new harness and application, and
//! the process-wide settings (iSCSI configuration, socket, buffer pool,
//! CRDT, NVMe driver and log options) put back as they were. The process
//! runs with small buffer pools and a 64 MiB DMA memory limit (`-s 64`).

use std::sync::OnceLock;

use pollux_core::reactor::Harness;
use pollux_core::rpc::{RpcError, RpcState};
use serde_json::{Map, Value, json};

use crate::common::{self, Input};

/// Methods never called, with the reason.
pub const EXCLUDED_METHODS: &[(&str, &str)] = &[
    ("spdk_kill_instance", "raises a signal in the process: SIGTERM, SIGKILL..."),
    ("bdev_nvme_attach_controller", "attaches a PCIe NVMe controller through VFIO (hardware)"),
    ("bdev_nvme_set_hotplug", "starts scanning the PCI bus and attaching the devices it finds"),
    ("bdev_aio_create", "opens a file or block device of the machine, by path, read-write"),
    ("bdev_uring_create", "opens a file or block device of the machine, by path, read-write"),
    ("bdev_iscsi_create", "connects to an iSCSI target at whatever address the input names"),
    ("bdev_rbd_register_cluster", "connects to a Ceph cluster (the machine's config or a file the input names) on a thread of its own"),
    ("bdev_rbd_create", "connects to a Ceph cluster and opens an image, on a thread of its own"),
    ("framework_start_metrics", "binds the TCP address the input names (an HTTP server)"),
    ("nbd_start_disk", "hands a bdev to the machine's kernel as /dev/nbdX, with a thread blocked in the kernel"),
];

/// Calls one input may make.
const MAX_CALLS: usize = 32;

/// The sorted method names of `pollux-tgt`, aliases included: what the
/// method byte of a record indexes.
pub fn rpc_method_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| common::tgt_app().methods().names(false, true))
}

/// Once per process: small buffer pools (each execution's new reactor
/// makes its own when a method asks for it) within a DMA memory limit, as
/// `pollux-tgt -s 64` would have, so a fuzzed `iobuf_set_options` asking
/// for gigabytes fails at once instead of mapping them.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        common::init_process();
        pollux_core::dma::set_limit(Some(64 << 20));
        let mut o = pollux_core::dma::iobuf_options();
        o.small_pool_count = 64;
        o.large_pool_count = 16;
        pollux_core::dma::set_iobuf_options(o);
    });
}

pub fn rpc_params(data: &[u8]) {
    init();
    let names = rpc_method_names();
    let mut calls = Vec::new();
    let mut inp = Input::new(data);
    while !inp.is_empty() && calls.len() < MAX_CALLS {
        let method = &names[usize::from(inp.u8()) % names.len()];
        let flags = inp.u8();
        let text = inp.until(0);
        if EXCLUDED_METHODS.iter().any(|(m, _)| m == method) {
            continue;
        }
        let params = if flags & 0x02 != 0 {
            None
        } else if text.is_empty() {
            Some(json!({}))
        } else {
            match serde_json::from_slice::<Value>(text) {
                Ok(mut v) => {
                    sanitize(&mut v);
                    Some(v)
                }
                Err(_) => continue,
            }
        };
        let state = if flags & 0x01 != 0 { RpcState::Startup } else { RpcState::Runtime };
        calls.push((method.as_str(), state, params));
    }
    if calls.is_empty() {
        return;
    }
    let baseline = Baseline::take();
    let h = Harness::new(1);
    let app = common::tgt_app();
    let m = app.methods().clone();
    for (method, state, params) in calls {
        if let Some(Err(e)) = common::call(&h, &m, state, method, params) {
            check_error(method, &e);
        }
    }
    // Reactor-owned state goes with the harness; the rest is put back.
    h.on(0, || baseline.restore());
    common::settle(&h);
    drop(app);
    drop(m);
    drop(h);
}

/// An error must be one a client can read: a JSON-RPC code or a negative
/// errno, with a message.
fn check_error(method: &str, e: &RpcError) {
    let known = matches!(e.code, RpcError::INVALID_PARAMS | RpcError::INVALID_STATE | RpcError::INTERNAL_ERROR | RpcError::INVALID_REQUEST)
        || (-4095..0).contains(&e.code);
    assert!(known, "{method}: error code {} ({})", e.code, e.message);
    assert!(!e.message.is_empty(), "{method}: error {} without a message", e.code);
}

/// Rewrite listener addresses: no real port is bound, no name resolved.
fn sanitize(v: &mut Value) {
    match v {
        Value::Object(o) => sanitize_object(o),
        Value::Array(a) => a.iter_mut().for_each(sanitize),
        _ => {}
    }
}

fn sanitize_object(o: &mut Map<String, Value>) {
    for (k, v) in o.iter_mut() {
        match (k.as_str(), &*v) {
            ("port" | "trsvcid", Value::String(_) | Value::Number(_)) => *v = json!("0"),
            // A namespace's reservation file: a path of the machine, read
            // and written.
            ("ptpl_file", _) => *v = Value::Null,
            ("host", Value::String(s)) if s.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_err() => {
                *v = json!("127.0.0.1")
            }
            _ => sanitize(v),
        }
    }
}

/// Process-wide settings an execution may change, as they were before it.
struct Baseline {
    iobuf: pollux_core::dma::IobufOptions,
    sock: Vec<(&'static str, Value)>,
    log: (pollux_core::log::Level, pollux_core::log::Level),
    log_flags: Vec<&'static str>,
    nvme: pollux_nvme_driver::bdev::options::NvmeOptions,
    hotplug: pollux_nvme_driver::bdev::options::Hotplug,
}

impl Baseline {
    fn take() -> Baseline {
        static SOCK: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
        let sock = SOCK.get_or_init(|| {
            // The defaults, read once through the getter.
            let h = Harness::new(1);
            let m = common::tgt_app().methods().clone();
            let sock = ["posix", "ssl"]
                .into_iter()
                .map(|name| {
                    let v = common::call(&h, &m, RpcState::Runtime, "sock_impl_get_options", Some(json!({"impl_name": name})));
                    (name, v.and_then(Result::ok).unwrap_or(Value::Null))
                })
                .collect();
            drop(m);
            sock
        });
        Baseline {
            iobuf: pollux_core::dma::iobuf_options(),
            sock: sock.clone(),
            log: (pollux_core::log::level(), pollux_core::log::print_level()),
            log_flags: pollux_core::log::flags().into_iter().filter(|f| f.1).map(|f| f.0).collect(),
            nvme: pollux_nvme_driver::bdev::options::options(),
            hotplug: pollux_nvme_driver::bdev::options::hotplug(),
        }
    }

    /// Put everything back (on reactor 0: the iSCSI configuration holds
    /// devices whose release sends messages).
    fn restore(&self) {
        *pollux_iscsi::config::lock() = Default::default();
        pollux_core::dma::set_iobuf_options(self.iobuf);
        pollux_core::log::set_level(self.log.0);
        pollux_core::log::set_print_level(self.log.1);
        pollux_core::log::set_flag("all", false).expect("all");
        for f in &self.log_flags {
            pollux_core::log::set_flag(f, true).expect("a flag it had");
        }
        pollux_nvme_driver::bdev::options::set_options(self.nvme.clone());
        pollux_nvme_driver::bdev::options::set_hotplug(self.hotplug);
        pollux_nvmf::target::set_crdt([0; 3]);
        let m = common::tgt_app().methods().clone();
        for (name, v) in &self.sock {
            if let Value::Object(o) = v {
                let mut p = o.clone();
                p.insert("impl_name".into(), json!(name));
                m.set_state(RpcState::Runtime);
                m.call("sock_impl_set_options", Some(Value::Object(p)), pollux_core::rpc::Responder::new(drop));
            }
        }
    }
}
