//! The target: the transport, the subsystems (discovery first), discovery
//! referrals and the discovery log generation counter. One per process,
//! kept on the main reactor; other reactors hold views of the namespaces
//! (see [`crate::group`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use pollux_core::reactor::{self, ReactorId};

use crate::NvmfError;
use crate::subsystem::Subsystem;
use crate::transport::{Endpoint, Transport, TransportKind};

/// SPDK's name for the one target of an application.
pub const DEFAULT_TARGET_NAME: &str = "nvmf_tgt";
pub const DEFAULT_MAX_SUBSYSTEMS: u32 = 1024;

/// A discovery referral: another discovery service (or subsystem) to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referral {
    pub ep: Endpoint,
    pub subnqn: Option<String>,
}

/// `nvmf_set_config`: what the discovery log filters on, and the
/// DH-HMAC-CHAP lists (kept for save_config; Pollux has no in-band
/// authentication and refuses DH-HMAC-CHAP keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetConfig {
    /// A listener is listed to a host only if it matches, on each of these,
    /// the listener the host's discovery connection came through.
    pub filter_transport: bool,
    pub filter_address: bool,
    pub filter_svcid: bool,
    pub dhchap_digests: Option<Vec<String>>,
    pub dhchap_dhgroups: Option<Vec<String>>,
}

impl TargetConfig {
    /// Whether listener `ep` is shown to a host connected through `via`.
    pub fn shows(&self, ep: &Endpoint, via: &Endpoint) -> bool {
        (!self.filter_transport || ep.kind == via.kind)
            && (!self.filter_address || ep.addr.ip() == via.addr.ip())
            && (!self.filter_svcid || ep.addr.port() == via.addr.port())
    }

    /// The filter as SPDK's `discovery_filter` string.
    pub fn filter_name(&self) -> String {
        let names: Vec<&str> = [(self.filter_transport, "transport"), (self.filter_address, "address"), (self.filter_svcid, "svcid")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() { "match_any".into() } else { names.join(",") }
    }
}

/// Command Retry Delay Times reported in Identify Controller
/// (`nvmf_set_crdt`, units of 100 ms), three u16 packed: read by admin
/// queues on any reactor.
static CRDT: AtomicU64 = AtomicU64::new(0);

pub fn crdt() -> [u16; 3] {
    let v = CRDT.load(Ordering::Relaxed);
    [v as u16, (v >> 16) as u16, (v >> 32) as u16]
}

pub fn set_crdt(c: [u16; 3]) {
    CRDT.store(u64::from(c[0]) | u64::from(c[1]) << 16 | u64::from(c[2]) << 32, Ordering::Relaxed);
}

pub struct Target {
    /// At most one of each kind (TCP, RDMA), in creation order.
    pub transports: RefCell<Vec<Rc<dyn Transport>>>,
    /// The discovery subsystem first, then NVM subsystems in creation order.
    pub subsystems: RefCell<Vec<Rc<Subsystem>>>,
    pub referrals: RefCell<Vec<Referral>>,
    pub max_subsystems: Cell<u32>,
    pub config: RefCell<TargetConfig>,
    genctr: Cell<u64>,
    next_id: Cell<u32>,
}

impl Target {
    fn new() -> Target {
        Target {
            transports: RefCell::new(Vec::new()),
            subsystems: RefCell::new(vec![Rc::new(Subsystem::discovery())]),
            referrals: RefCell::new(Vec::new()),
            max_subsystems: Cell::new(DEFAULT_MAX_SUBSYSTEMS),
            config: RefCell::new(TargetConfig::default()),
            genctr: Cell::new(0),
            next_id: Cell::new(1),
        }
    }

    pub fn find(&self, nqn: &str) -> Option<Rc<Subsystem>> {
        self.subsystems.borrow().iter().find(|s| s.nqn() == nqn).cloned()
    }

    pub fn find_id(&self, id: u32) -> Option<Rc<Subsystem>> {
        self.subsystems.borrow().iter().find(|s| s.id == id).cloned()
    }

    pub fn discovery(&self) -> Rc<Subsystem> {
        self.subsystems.borrow()[0].clone()
    }

    pub fn next_subsystem_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// The transport of this kind.
    pub fn transport(&self, kind: TransportKind) -> Result<Rc<dyn Transport>, NvmfError> {
        self.transports
            .borrow()
            .iter()
            .find(|t| t.kind() == kind)
            .cloned()
            .ok_or_else(|| NvmfError::NotFound(format!("transport {} (create it with nvmf_create_transport first)", kind.name())))
    }

    pub fn genctr(&self) -> u64 {
        self.genctr.get()
    }

    /// The discovery log changed: count it and tell discovery controllers
    /// that asked for discovery log change events.
    pub fn discovery_changed(&self) {
        self.genctr.set(self.genctr.get() + 1);
        for c in self.discovery().controllers.borrow().values() {
            c.notify_discovery_change();
        }
    }
}

/// The target of this process (main reactor only).
pub fn target() -> Result<Rc<Target>, NvmfError> {
    if reactor::current() != ReactorId(0) {
        return Err(NvmfError::WrongReactor);
    }
    Ok(match reactor::local::<Target>() {
        Some(t) => t,
        None => {
            let t = Rc::new(Target::new());
            reactor::set_local(t.clone());
            t
        }
    })
}

/// Check the `tgt_name` parameter of an RPC.
pub fn check_target_name(name: Option<&str>) -> Result<(), NvmfError> {
    match name {
        None | Some(DEFAULT_TARGET_NAME) => Ok(()),
        Some(n) => Err(NvmfError::NotFound(format!("target {n} (this application has one target, {DEFAULT_TARGET_NAME})"))),
    }
}
