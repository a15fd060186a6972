//! NVM subsystems as configured: NQN, identity, namespaces on bdevs, the
//! hosts allowed in and the addresses listened on; plus the discovery
//! subsystem. Owned by the main reactor (the subsystems' reactor), where
//! their controllers and admin queues live.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use pollux_nvme_spec::ana;

use pollux_core::bdev::{Descriptor, Uuid};

use crate::NvmfError;
use crate::ctrlr::Controller;
use crate::transport::Endpoint;
use crate::wire::fabrics::{CNTLID_MAX, DISCOVERY_NQN, NQN_MAX_LEN};

/// Default serial and model numbers, as SPDK's.
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
pub const DEFAULT_MODEL: &str = "Pollux bdev Controller";
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;

/// Discovery or NVM subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    Discovery,
    Nvme,
}

/// A namespace: a bdev exported under an NSID.
pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub desc: Descriptor,
    pub uuid: Uuid,
    pub nguid: [u8; 16],
    pub eui64: Option<[u8; 8]>,
    /// ANA group (1..=max_namespaces); changed by `nvmf_subsystem_set_ns_ana_group`.
    pub anagrpid: Cell<u32>,
    /// Reservations (main reactor; reactors hold copies).
    pub resv: RefCell<crate::resv::ResvState>,
    /// Where the reservation state persists (SPDK's `ptpl_file`); without
    /// one PTPL cannot be turned on.
    pub ptpl_file: Option<std::path::PathBuf>,
    /// The hosts that see the namespace: `None`, every host (SPDK's
    /// default); added with `no_auto_visible`, those given by
    /// `nvmf_ns_add_host`. What reactors get a copy of.
    pub hosts: RefCell<Option<Arc<HostSet>>>,
}

impl Namespace {
    /// The copy of the reservation state reactors check against (`None`
    /// while there is nothing to check or report).
    pub fn resv_snapshot(&self) -> Option<Arc<crate::resv::ResvState>> {
        let r = self.resv.borrow();
        (*r != crate::resv::ResvState::default()).then(|| Arc::new(r.clone()))
    }

    /// Whether a controller of host `hostnqn` sees this namespace.
    pub fn visible_to(&self, hostnqn: &str) -> bool {
        self.hosts.borrow().as_ref().is_none_or(|h| h.contains(hostnqn))
    }

    /// The hosts that see it (`None`: every host).
    pub fn host_set(&self) -> Option<Arc<HostSet>> {
        self.hosts.borrow().clone()
    }

    pub fn block_size(&self) -> u32 {
        self.desc.bdev().block_size()
    }
    pub fn num_blocks(&self) -> u64 {
        self.desc.bdev().num_blocks()
    }
}

/// Hosts a namespace may be shown to one by one (`nvmf_ns_add_host`).
pub const MAX_NS_HOSTS: usize = 1024;

/// The host NQNs a namespace is visible to, sorted: what an I/O queue pair
/// checks its host against (a binary search, no allocation).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostSet(Box<[Box<str>]>);

impl<S: Into<Box<str>>> FromIterator<S> for HostSet {
    fn from_iter<I: IntoIterator<Item = S>>(hosts: I) -> HostSet {
        let mut v: Vec<Box<str>> = hosts.into_iter().map(Into::into).collect();
        v.sort();
        v.dedup();
        HostSet(v.into())
    }
}

impl HostSet {
    #[inline]
    pub fn contains(&self, hostnqn: &str) -> bool {
        self.0.binary_search_by(|h| (**h).cmp(hostnqn)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|h| &**h)
    }

    /// This set with `host` in it (`present`) or out of it; `None` when
    /// that is what it already is.
    pub fn with(&self, host: &str, present: bool) -> Option<HostSet> {
        if self.contains(host) == present {
            return None;
        }
        Some(if present { self.iter().chain([host]).collect() } else { self.iter().filter(|h| *h != host).collect() })
    }
}

/// Settings given at creation.
#[derive(Clone, Debug)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub max_namespaces: u32,
    pub allow_any_host: bool,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    pub admin_label: Option<String>,
    pub dmrsl: u32,
    pub wzsl: u8,
    /// Asymmetric Namespace Access reporting: per listener and ANA group
    /// states, the ANA log page and its change events.
    pub ana_reporting: bool,
}

/// The ANA states of one listener of a subsystem, per ANA group (SPDK keeps
/// them per listener too: a host reaching the subsystem through another
/// address, another gateway, sees other states). Written on the main
/// reactor by RPCs; read by I/O queue pairs on every reactor with relaxed
/// loads, so the I/O path takes no lock. `nvmf_subsystem_listener_set_ana_state`
/// answers after every reactor has run a message, so once it has answered
/// no command admitted afterwards sees the old state.
#[derive(Debug)]
pub struct AnaStates {
    states: Box<[AtomicU8]>,
    change_count: AtomicU64,
}

impl AnaStates {
    pub fn new(groups: u32, initial: u8) -> AnaStates {
        AnaStates { states: (0..groups.max(1)).map(|_| AtomicU8::new(initial)).collect(), change_count: AtomicU64::new(0) }
    }

    /// The state of ANA group `grp` (1-based); a group outside the table
    /// (none is: groups are at most max_namespaces) reads inaccessible.
    #[inline]
    pub fn get(&self, grp: u32) -> u8 {
        match (grp as usize).checked_sub(1).and_then(|i| self.states.get(i)) {
            Some(s) => s.load(Ordering::Relaxed),
            None => ana::INACCESSIBLE,
        }
    }

    /// Set group `grp`, or every group when `None`; whether any changed
    /// (the change count then goes up by one).
    pub fn set(&self, grp: Option<u32>, state: u8) -> bool {
        let mut changed = false;
        for (i, s) in self.states.iter().enumerate() {
            if grp.is_none_or(|g| g as usize == i + 1) {
                changed |= s.swap(state, Ordering::Relaxed) != state;
            }
        }
        if changed {
            self.change_count.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    pub fn groups(&self) -> u32 {
        self.states.len() as u32
    }

    pub fn change_count(&self) -> u64 {
        self.change_count.load(Ordering::Relaxed)
    }

    /// The state every group has, if they all have the same.
    pub fn uniform(&self) -> Option<u8> {
        let first = self.get(1);
        (1..=self.groups()).all(|g| self.get(g) == first).then_some(first)
    }
}

/// An address a subsystem listens on, with its ANA states.
#[derive(Debug)]
pub struct Listener {
    pub ep: Endpoint,
    pub ana: Arc<AnaStates>,
}

pub struct Subsystem {
    /// Target-unique id, used by other reactors to find their view of it.
    pub id: u32,
    pub kind: SubsystemKind,
    pub config: SubsystemConfig,
    pub allow_any_host: Cell<bool>,
    pub hosts: RefCell<Vec<String>>,
    pub listeners: RefCell<Vec<Listener>>,
    pub namespaces: RefCell<BTreeMap<u32, Rc<Namespace>>>,
    pub controllers: RefCell<BTreeMap<u16, Rc<Controller>>>,
    next_cntlid: Cell<u16>,
}

impl Subsystem {
    pub fn new(id: u32, kind: SubsystemKind, config: SubsystemConfig) -> Subsystem {
        Subsystem {
            id,
            kind,
            allow_any_host: Cell::new(config.allow_any_host || kind == SubsystemKind::Discovery),
            next_cntlid: Cell::new(config.min_cntlid),
            config,
            hosts: RefCell::new(Vec::new()),
            listeners: RefCell::new(Vec::new()),
            namespaces: RefCell::new(BTreeMap::new()),
            controllers: RefCell::new(BTreeMap::new()),
        }
    }

    /// The discovery subsystem: any host, any listener, no namespaces.
    pub fn discovery() -> Subsystem {
        Subsystem::new(
            0,
            SubsystemKind::Discovery,
            SubsystemConfig {
                nqn: DISCOVERY_NQN.into(),
                serial: DEFAULT_SERIAL.into(),
                model: DEFAULT_MODEL.into(),
                max_namespaces: 0,
                allow_any_host: true,
                min_cntlid: 1,
                max_cntlid: CNTLID_MAX,
                admin_label: None,
                dmrsl: 0,
                wzsl: 0,
                ana_reporting: false,
            },
        )
    }

    pub fn nqn(&self) -> &str {
        &self.config.nqn
    }

    pub fn is_discovery(&self) -> bool {
        self.kind == SubsystemKind::Discovery
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host.get() || self.hosts.borrow().iter().any(|h| h == hostnqn)
    }

    /// Whether a host that reached the target on `ep` may use this subsystem.
    pub fn listens_on(&self, ep: &Endpoint) -> bool {
        self.is_discovery() || self.listeners.borrow().iter().any(|l| l.ep == *ep)
    }

    /// The ANA states a host connected through `ep` sees; `None` when the
    /// subsystem does not report ANA (every path is then optimized).
    pub fn listener_ana(&self, ep: &Endpoint) -> Option<Arc<AnaStates>> {
        if !self.config.ana_reporting {
            return None;
        }
        self.listeners.borrow().iter().find(|l| l.ep == *ep).map(|l| l.ana.clone())
    }

    /// The ANA groups in use (those with namespaces that pass `which`), in
    /// order, with their namespace ids.
    pub fn ana_groups(&self, which: impl Fn(&Namespace) -> bool) -> BTreeMap<u32, Vec<u32>> {
        let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for ns in self.namespaces.borrow().values().filter(|ns| which(ns)) {
            groups.entry(ns.anagrpid.get()).or_default().push(ns.nsid);
        }
        groups
    }

    /// The largest NSID a host may see (Identify NN).
    pub fn max_nsid(&self) -> u32 {
        let highest = self.namespaces.borrow().keys().next_back().copied().unwrap_or(0);
        self.config.max_namespaces.max(highest)
    }

    /// A free controller id for the dynamic model, or the requested one for
    /// the static model; `None` when none is available.
    pub fn allocate_cntlid(&self, requested: Option<u16>) -> Option<u16> {
        let (lo, hi) = (self.config.min_cntlid, self.config.max_cntlid);
        let used = self.controllers.borrow();
        if let Some(id) = requested {
            return ((lo..=hi).contains(&id) && !used.contains_key(&id)).then_some(id);
        }
        let span = u32::from(hi - lo) + 1;
        let mut id = self.next_cntlid.get();
        for _ in 0..span {
            if !(lo..=hi).contains(&id) {
                id = lo;
            }
            if !used.contains_key(&id) {
                self.next_cntlid.set(if id == hi { lo } else { id + 1 });
                return Some(id);
            }
            id = if id == hi { lo } else { id + 1 };
        }
        None
    }

    /// The lowest unused NSID.
    pub fn free_nsid(&self) -> Option<u32> {
        let ns = self.namespaces.borrow();
        (1..=self.config.max_namespaces.max(1)).find(|n| !ns.contains_key(n))
    }
}

/// Check an NQN as SPDK does: at most 223 bytes, `nqn.yyyy-mm.` followed by
/// a reverse domain name, or the UUID form `nqn.2014-08.org.nvmexpress:uuid:...`.
pub fn validate_nqn(nqn: &str) -> Result<(), NvmfError> {
    let bad = |why: &str| Err(NvmfError::InvalidParam(format!("invalid NQN \"{nqn}\": {why}")));
    if nqn.len() > NQN_MAX_LEN {
        return bad("longer than 223 bytes");
    }
    if nqn.len() < 11 || !nqn.is_char_boundary(11) {
        return bad("too short");
    }
    if let Some(u) = nqn.strip_prefix("nqn.2014-08.org.nvmexpress:uuid:") {
        return match Uuid::parse_str(u) {
            Ok(_) if u.len() == 36 => Ok(()),
            _ => bad("the UUID part is not a UUID"),
        };
    }
    let b = nqn.as_bytes();
    let date_ok = nqn.starts_with("nqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && matches!(&nqn[9..11], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12");
    if !date_ok || b.get(11) != Some(&b'.') {
        return bad("it must start with nqn.yyyy-mm. and a reverse domain name");
    }
    let domain = nqn[12..].split(':').next().unwrap_or("");
    if domain.is_empty() || !domain.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return bad("the reverse domain name is missing");
    }
    if nqn.chars().any(|c| c.is_control()) {
        return bad("it contains control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqns_are_checked_like_spdk() {
        for ok in ["nqn.2016-06.io.spdk:cnode1", "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", DISCOVERY_NQN] {
            validate_nqn(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "nqn.",
            "iqn.2016-06.io.spdk:x",
            "nqn.2016-13.io.spdk:x",
            "nqn.2016-06.:x",
            "nqn.2014-08.org.nvmexpress:uuid:nope",
            &format!("nqn.2016-06.io.spdk:{}", "a".repeat(220)),
        ] {
            assert!(validate_nqn(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn controller_ids_are_dynamic_or_static_within_the_range() {
        let mut c = Subsystem::discovery().config;
        c.nqn = "nqn.2016-06.io.spdk:a".into();
        c.min_cntlid = 5;
        c.max_cntlid = 6;
        let s = Subsystem::new(1, SubsystemKind::Nvme, c);
        assert_eq!(s.allocate_cntlid(None), Some(5));
        assert_eq!(s.allocate_cntlid(Some(4)), None);
        assert_eq!(s.allocate_cntlid(Some(6)), Some(6));
    }
}
