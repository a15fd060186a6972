//! RPC methods on subsystems: create, delete, list; listeners, hosts and
//! namespaces; and each subsystem's part of `save_config`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::app::ConfigWriter;
use pollux_core::bdev::{self, BdevEvent, Uuid};
use pollux_core::reactor::{self, ReactorId};
use pollux_core::rpc::{Methods, Responder, States};
use pollux_nvme_spec::ana;
use serde_json::{Value, json};

use super::params::*;
use crate::ctrlr::notify_namespace_change;
use crate::subsystem::{
    AnaStates, DEFAULT_MAX_NAMESPACES, DEFAULT_MODEL, DEFAULT_SERIAL, HostSet, Listener, MAX_NS_HOSTS, Namespace, Subsystem,
    SubsystemConfig, SubsystemKind, validate_nqn,
};
use crate::target::{Target, check_target_name, target};
use crate::transport::Endpoint;
use crate::wire::fabrics::{CNTLID_MAX, DISCOVERY_NQN};
use crate::{NvmfError, group};

pub fn register(m: &Methods) {
    m.register("nvmf_create_subsystem", States::RUNTIME, |p: CreateSubsystem, r: Responder| r.result(create(p)));
    m.register("nvmf_delete_subsystem", States::RUNTIME, delete);
    m.register("nvmf_get_subsystems", States::RUNTIME, |p: GetSubsystems, r: Responder| r.result(get(p)));
    m.register("nvmf_subsystem_add_listener", States::RUNTIME, |p: AddListener, r: Responder| r.result(add_listener(p)));
    m.register("nvmf_subsystem_remove_listener", States::RUNTIME, |p: RemoveListener, r: Responder| r.result(remove_listener(p)));
    m.register("nvmf_subsystem_get_listeners", States::RUNTIME, |p: SubsystemNqn, r: Responder| r.result(get_listeners(p)));
    m.register("nvmf_subsystem_listener_set_ana_state", States::RUNTIME, listener_set_ana_state);
    m.register("nvmf_subsystem_set_ns_ana_group", States::RUNTIME, set_ns_ana_group);
    m.register("nvmf_subsystem_get_controllers", States::RUNTIME, |p: SubsystemNqn, r: Responder| r.result(get_controllers(p)));
    m.register("nvmf_subsystem_get_qpairs", States::RUNTIME, get_qpairs);
    m.register("nvmf_subsystem_add_ns", States::RUNTIME, add_ns);
    m.register("nvmf_subsystem_remove_ns", States::RUNTIME, remove_ns);
    m.register("nvmf_subsystem_add_host", States::RUNTIME, |p: AddHost, r: Responder| r.result(add_host(p)));
    m.register("nvmf_subsystem_remove_host", States::RUNTIME, |p: RemoveHost, r: Responder| r.result(remove_host(p)));
    m.register("nvmf_subsystem_allow_any_host", States::RUNTIME, |p: AllowAnyHost, r: Responder| r.result(allow_any_host(p)));
    m.register("nvmf_ns_add_host", States::RUNTIME, |p: NsHost, r: Responder| ns_host(p, true, r));
    m.register("nvmf_ns_remove_host", States::RUNTIME, |p: NsHost, r: Responder| ns_host(p, false, r));
}

fn find(t: &Target, nqn: &str, tgt_name: Option<&str>) -> Result<Rc<Subsystem>, NvmfError> {
    check_target_name(tgt_name)?;
    t.find(nqn).ok_or_else(|| NvmfError::NotFound(format!("subsystem {nqn}")))
}

fn find_nvm(t: &Target, nqn: &str, tgt_name: Option<&str>) -> Result<Rc<Subsystem>, NvmfError> {
    let s = find(t, nqn, tgt_name)?;
    if s.is_discovery() {
        return Err(NvmfError::InvalidParam(format!("{nqn} is the discovery subsystem")));
    }
    Ok(s)
}

fn printable(s: &str, max: usize, what: &str) -> Result<(), NvmfError> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(NvmfError::InvalidParam(format!("{what} \"{s}\" must be 1 to {max} printable ASCII characters")));
    }
    Ok(())
}

fn create(p: CreateSubsystem) -> Result<bool, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    validate_nqn(&p.nqn)?;
    for (on, what) in [(p.passthrough, "passthrough"), (p.enable_nssr, "enable_nssr")] {
        if on {
            return Err(NvmfError::Unsupported(format!("{what} is not supported by Pollux")));
        }
    }
    let serial = p.serial_number.unwrap_or_else(|| DEFAULT_SERIAL.into());
    printable(&serial, 20, "serial_number")?;
    let model = p.model_number.unwrap_or_else(|| DEFAULT_MODEL.into());
    printable(&model, 40, "model_number")?;
    if let Some(l) = &p.admin_label {
        if l.len() < 4 || l.len() > 256 || !l.is_ascii() {
            return Err(NvmfError::InvalidParam("admin_label must be 4 to 256 ASCII characters".into()));
        }
    }
    let min_cntlid = p.min_cntlid.unwrap_or(1);
    let max_cntlid = p.max_cntlid.unwrap_or(CNTLID_MAX);
    if min_cntlid == 0 || min_cntlid > max_cntlid || max_cntlid > CNTLID_MAX {
        return Err(NvmfError::InvalidParam(format!("controller id range {min_cntlid}..={max_cntlid} must be within 1..={CNTLID_MAX}")));
    }
    let max_namespaces = match p.max_namespaces {
        None | Some(0) => DEFAULT_MAX_NAMESPACES,
        Some(n) if n > 1024 => {
            return Err(NvmfError::InvalidParam(format!("max_namespaces {n} is above 1024")));
        }
        Some(n) => n,
    };
    let t = target()?;
    if t.find(&p.nqn).is_some() {
        return Err(NvmfError::Exists(format!("subsystem {}", p.nqn)));
    }
    if t.subsystems.borrow().len() > t.max_subsystems.get() as usize {
        return Err(NvmfError::Busy(format!("the target already has {} subsystems (nvmf_set_max_subsystems)", t.max_subsystems.get())));
    }
    let config = SubsystemConfig {
        nqn: p.nqn.clone(),
        serial,
        model,
        max_namespaces,
        allow_any_host: p.allow_any_host,
        min_cntlid,
        max_cntlid,
        admin_label: p.admin_label,
        dmrsl: p.dmrsl.unwrap_or(0),
        wzsl: p.wzsl.unwrap_or(0),
        ana_reporting: p.ana_reporting,
    };
    let s = Rc::new(Subsystem::new(t.next_subsystem_id(), SubsystemKind::Nvme, config));
    t.subsystems.borrow_mut().push(s);
    t.discovery_changed();
    tracing::info!("nvmf: subsystem {} created", p.nqn);
    Ok(true)
}

/// Disconnect a subsystem's hosts, stop its listeners and close its
/// namespaces; it is then no longer in the target.
pub fn teardown(t: &Target, s: &Rc<Subsystem>) {
    let ctrlrs: Vec<_> = s.controllers.borrow().values().cloned().collect();
    for c in ctrlrs {
        c.destroy("subsystem deleted");
    }
    for l in s.listeners.borrow_mut().drain(..) {
        if let Ok(tr) = t.transport(l.ep.kind) {
            tr.stop_listen(&l.ep);
        }
    }
    s.namespaces.borrow_mut().clear();
    t.subsystems.borrow_mut().retain(|x| !Rc::ptr_eq(x, s));
}

fn delete(p: SubsystemNqn, r: Responder) {
    let res = target().and_then(|t| {
        let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
        teardown(&t, &s);
        t.discovery_changed();
        Ok(s.id)
    });
    match res {
        // Answer once no reactor holds the namespaces any more.
        Ok(id) => group::publish_subsystem_removed(id, move || r.ok(true)),
        Err(e) => r.err(e.into()),
    }
}

fn subsystem_json(s: &Subsystem) -> Value {
    let listeners: Vec<Value> =
        s.listeners.borrow().iter().map(|l| serde_json::to_value(l.ep.to_listen_address()).unwrap_or_default()).collect();
    let hosts: Vec<Value> = s.hosts.borrow().iter().map(|h| json!({ "nqn": h })).collect();
    let mut v = json!({
        "nqn": s.nqn(),
        "subtype": if s.is_discovery() { "Discovery" } else { "NVMe" },
        "listen_addresses": listeners,
        "allow_any_host": s.allow_any_host.get(),
        "hosts": hosts,
    });
    if !s.is_discovery() {
        let c = &s.config;
        let namespaces: Vec<Value> = s
            .namespaces
            .borrow()
            .values()
            .map(|n| {
                let mut j = json!({
                    "nsid": n.nsid,
                    "bdev_name": n.bdev_name,
                    "name": n.bdev_name,
                    "nguid": hex(&n.nguid),
                    "uuid": n.uuid.to_string(),
                    "anagrpid": n.anagrpid.get(),
                    "no_auto_visible": n.hosts.borrow().is_some(),
                });
                if let Some(hosts) = &*n.hosts.borrow() {
                    j["hosts"] = hosts.iter().map(|h| json!({ "nqn": h })).collect::<Vec<_>>().into();
                }
                if let Some(e) = n.eui64 {
                    j["eui64"] = hex(&e).into();
                }
                if let Some(p) = &n.ptpl_file {
                    j["ptpl_file"] = p.display().to_string().into();
                }
                j
            })
            .collect();
        let o = v.as_object_mut().expect("object");
        o.insert("serial_number".into(), c.serial.clone().into());
        o.insert("model_number".into(), c.model.clone().into());
        o.insert("max_namespaces".into(), c.max_namespaces.into());
        o.insert("min_cntlid".into(), c.min_cntlid.into());
        o.insert("max_cntlid".into(), c.max_cntlid.into());
        o.insert("namespaces".into(), namespaces.into());
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn get(p: GetSubsystems) -> Result<Value, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    let t = target()?;
    let subs = t.subsystems.borrow();
    let list: Vec<Value> = match &p.nqn {
        Some(n) => {
            let s = subs.iter().find(|s| s.nqn() == n).ok_or_else(|| NvmfError::NotFound(format!("subsystem {n}")))?;
            vec![subsystem_json(s)]
        }
        None => subs.iter().map(|s| subsystem_json(s)).collect(),
    };
    Ok(Value::Array(list))
}

fn add_listener(p: AddListener) -> Result<bool, NvmfError> {
    if p.secure_channel {
        return Err(NvmfError::Unsupported("secure channels (TLS) are not supported".into()));
    }
    let initial = match &p.ana_state {
        Some(n) => settable_ana_state(n)?,
        None => ana::OPTIMIZED,
    };
    if let Some(imp) = p.sock_impl.as_deref().filter(|i| *i != "posix") {
        return Err(NvmfError::Unsupported(format!("sock_impl {imp} is not supported (posix sockets only)")));
    }
    let t = target()?;
    let s = find(&t, &p.nqn, p.tgt_name.as_deref())?;
    let ep = Endpoint::parse(&p.listen_address)?;
    if s.listeners.borrow().iter().any(|l| l.ep == ep) {
        return Err(NvmfError::Exists(format!("listener {ep} of {}", p.nqn)));
    }
    t.transport(ep.kind)?.listen(&ep)?;
    // One state per possible ANA group (1..=max_namespaces), as SPDK.
    s.listeners.borrow_mut().push(Listener { ep, ana: Arc::new(AnaStates::new(s.max_nsid(), initial)) });
    t.discovery_changed();
    Ok(true)
}

fn remove_listener(p: RemoveListener) -> Result<bool, NvmfError> {
    let t = target()?;
    let s = find(&t, &p.nqn, p.tgt_name.as_deref())?;
    let ep = Endpoint::parse(&p.listen_address)?;
    let had = {
        let mut l = s.listeners.borrow_mut();
        let before = l.len();
        l.retain(|x| x.ep != ep);
        before != l.len()
    };
    if !had {
        return Err(NvmfError::NotFound(format!("listener {ep} of {}", p.nqn)));
    }
    t.transport(ep.kind)?.stop_listen(&ep);
    // Hosts that came in through this address lose their controllers.
    let gone: Vec<_> = s.controllers.borrow().values().filter(|c| c.endpoint == ep).cloned().collect();
    for c in gone {
        c.destroy("its listener was removed");
    }
    t.discovery_changed();
    Ok(true)
}

fn get_listeners(p: SubsystemNqn) -> Result<Value, NvmfError> {
    let t = target()?;
    let s = find(&t, &p.nqn, p.tgt_name.as_deref())?;
    Ok(s.listeners.borrow().iter().map(|l| listener_json(&s, l)).collect())
}

/// A listener as `nvmf_subsystem_get_listeners` shows it: with its state
/// per ANA group where the subsystem reports ANA (as SPDK).
fn listener_json(s: &Subsystem, l: &Listener) -> Value {
    let mut v = json!({ "address": l.ep.to_listen_address() });
    if s.config.ana_reporting {
        let states: Vec<Value> = (1..=l.ana.groups()).map(|g| json!({ "ana_group": g, "ana_state": ana::name(l.ana.get(g)) })).collect();
        v["ana_states"] = states.into();
    }
    v
}

/// The states an RPC may set (SPDK's: change and persistent loss are not).
fn settable_ana_state(name: &str) -> Result<u8, NvmfError> {
    match ana::from_name(name) {
        Some(st @ (ana::OPTIMIZED | ana::NON_OPTIMIZED | ana::INACCESSIBLE)) => Ok(st),
        _ => Err(NvmfError::InvalidParam(format!("ana_state \"{name}\" must be optimized, non_optimized or inaccessible"))),
    }
}

fn check_anagrpid(s: &Subsystem, grp: u32) -> Result<(), NvmfError> {
    if grp == 0 || grp > s.max_nsid() {
        return Err(NvmfError::InvalidParam(format!("anagrpid {grp} of {} must be within 1..={} (max_namespaces)", s.nqn(), s.max_nsid())));
    }
    Ok(())
}

fn listener_set_ana_state(p: ListenerSetAnaState, r: Responder) {
    let res = target().and_then(|t| {
        let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
        if !s.config.ana_reporting {
            return Err(NvmfError::InvalidParam(format!("{} does not report ANA (create it with ana_reporting)", p.nqn)));
        }
        let state = settable_ana_state(&p.ana_state)?;
        let grp = p.anagrpid.filter(|&g| g != 0);
        if let Some(g) = grp {
            check_anagrpid(&s, g)?;
        }
        let ep = Endpoint::parse(&p.listen_address)?;
        let table = s.listener_ana(&ep).ok_or_else(|| NvmfError::NotFound(format!("listener {ep} of {}", p.nqn)))?;
        let changed = table.set(grp, state);
        if changed {
            tracing::info!(
                "nvmf: {} on {ep}: ANA {} now {}",
                p.nqn,
                grp.map_or("groups".to_string(), |g| format!("group {g}")),
                ana::name(state)
            );
        }
        Ok((s.id, ep, changed))
    });
    match res {
        // Every reactor runs a message before the answer, so commands
        // admitted from then on see the new state; then the controllers
        // that came through this listener hear of it.
        Ok((sid, ep, true)) => reactor::for_each_reactor(
            || {},
            move || {
                if let Some(s) = target().ok().and_then(|t| t.find_id(sid)) {
                    let ctrlrs: Vec<_> = s.controllers.borrow().values().filter(|c| c.endpoint == ep).cloned().collect();
                    for c in ctrlrs {
                        c.notify_ana_change();
                    }
                }
                r.ok(true);
            },
        ),
        Ok(_) => r.ok(true),
        Err(e) => r.err(e.into()),
    }
}

fn set_ns_ana_group(p: SetNsAnaGroup, r: Responder) {
    let res = target().and_then(|t| {
        let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
        check_anagrpid(&s, p.anagrpid)?;
        let ns =
            s.namespaces.borrow().get(&p.nsid).cloned().ok_or_else(|| NvmfError::NotFound(format!("namespace {} of {}", p.nsid, p.nqn)))?;
        ns.anagrpid.set(p.anagrpid);
        Ok(s.id)
    });
    match res {
        Ok(sid) => {
            let (nsid, grp) = (p.nsid, p.anagrpid);
            group::update_namespace(
                sid,
                nsid,
                move |ns| ns.anagrpid.set(grp),
                move || {
                    namespace_changed(sid, nsid);
                    r.ok(true);
                },
            );
        }
        Err(e) => r.err(e.into()),
    }
}

fn get_controllers(p: SubsystemNqn) -> Result<Value, NvmfError> {
    let t = target()?;
    let s = find(&t, &p.nqn, p.tgt_name.as_deref())?;
    Ok(s.controllers
        .borrow()
        .values()
        .map(|c| {
            json!({
                "cntlid": c.cntlid,
                "hostnqn": c.hostnqn,
                "hostid": Uuid::from_bytes(c.hostid).to_string(),
                "num_io_qpairs": c.io_qpairs.borrow().len(),
            })
        })
        .collect())
}

/// SPDK's queue pair list, with Pollux's counters of each queue pair
/// (commands, failures, bytes each way) for per-connection rates.
fn get_qpairs(p: SubsystemNqn, r: Responder) {
    let sid = match target().and_then(|t| find(&t, &p.nqn, p.tgt_name.as_deref())) {
        Ok(s) => s.id,
        Err(e) => return r.err(e.into()),
    };
    reactor::task::spawn_local(async move {
        let per = reactor::task::each_reactor(move || crate::counters::qpairs(sid)).await;
        let hosts: std::collections::HashMap<u16, String> = match target() {
            Ok(t) => t
                .subsystems
                .borrow()
                .iter()
                .find(|s| s.id == sid)
                .map(|s| s.controllers.borrow().values().map(|c| (c.cntlid, c.hostnqn.clone())).collect())
                .unwrap_or_default(),
            Err(e) => return r.err(e.into()),
        };
        let mut out = Vec::new();
        for (i, list) in per.into_iter().enumerate() {
            for (q, c) in list {
                let peer = q.peer.map(|a| {
                    let ep = Endpoint { kind: q.ep.kind, addr: a };
                    ep.to_listen_address()
                });
                out.push(json!({
                    "cntlid": q.cntlid,
                    "qid": q.qid,
                    "state": "active",
                    "thread": format!("nvmf_tgt_poll_group_{i:03}"),
                    "hostnqn": hosts.get(&q.cntlid).cloned().unwrap_or_default(),
                    "listen_address": q.ep.to_listen_address(),
                    "peer_address": peer,
                    "completed_commands": c.commands,
                    "failed_commands": c.errors,
                    "bytes_read": c.read_bytes,
                    "bytes_written": c.written_bytes,
                }));
            }
        }
        r.ok(Value::Array(out))
    });
}

fn add_ns(p: AddNs, r: Responder) {
    match prepare_ns(p) {
        Ok((s, ns)) => {
            let (sid, nsid) = (s.id, ns.nsid);
            let desc = group::NsPublish::of(&ns);
            s.namespaces.borrow_mut().insert(nsid, Rc::new(ns));
            tracing::info!("nvmf: namespace {nsid} of {} added", s.nqn());
            group::publish_namespace(sid, nsid, Some(desc), move || {
                namespace_changed(sid, nsid);
                r.ok(nsid);
            });
        }
        Err(e) => r.err(e.into()),
    }
}

/// Tell the hosts that see namespace `nsid` that it changed.
fn namespace_changed(subsystem_id: u32, nsid: u32) {
    let Ok(t) = target() else { return };
    let Some(s) = t.find_id(subsystem_id) else { return };
    let Some(hosts) = s.namespaces.borrow().get(&nsid).map(|ns| ns.host_set()) else { return };
    notify_namespace_change(&s, nsid, hosts.as_deref());
}

/// Tell `hosts` (`None`: every host), those that saw namespace `nsid`,
/// that it is gone.
fn namespace_gone(subsystem_id: u32, nsid: u32, hosts: Option<Arc<HostSet>>) {
    let Ok(t) = target() else { return };
    let Some(s) = t.find_id(subsystem_id) else { return };
    notify_namespace_change(&s, nsid, hosts.as_deref());
}

fn prepare_ns(p: AddNs) -> Result<(Rc<Subsystem>, Namespace), NvmfError> {
    let t = target()?;
    let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
    let n = p.namespace;
    if n.hide_metadata {
        return Err(NvmfError::Unsupported("hide_metadata is not supported".into()));
    }
    let nsid = match n.nsid {
        None | Some(0) => s
            .free_nsid()
            .ok_or_else(|| NvmfError::Busy(format!("{} has no free namespace id (max_namespaces {})", p.nqn, s.config.max_namespaces)))?,
        Some(id) if id > s.config.max_namespaces => {
            return Err(NvmfError::InvalidParam(format!("nsid {id} is above max_namespaces {} of {}", s.config.max_namespaces, p.nqn)));
        }
        Some(id) if s.namespaces.borrow().contains_key(&id) => {
            return Err(NvmfError::Exists(format!("namespace {id} of {}", p.nqn)));
        }
        Some(id) => id,
    };
    // As SPDK: a namespace's ANA group is its NSID unless given.
    let anagrpid = n.anagrpid.filter(|&g| g != 0).unwrap_or(nsid);
    check_anagrpid(&s, anagrpid)?;
    let b = bdev::get(&n.bdev_name).ok_or_else(|| NvmfError::NotFound(format!("bdev {}", n.bdev_name)))?;
    b.check_exportable_block_size("an NVMe namespace").map_err(|e| NvmfError::InvalidParam(e.to_string()))?;
    let uuid = match &n.uuid {
        Some(u) => Uuid::parse_str(u).map_err(|_| NvmfError::InvalidParam(format!("uuid \"{u}\" is not a UUID")))?,
        None => b.uuid(),
    };
    let nguid = match &n.nguid {
        Some(g) => parse_hex::<16>(g, "nguid")?,
        None => *uuid.as_bytes(),
    };
    let eui64 = n.eui64.as_deref().map(|e| parse_hex::<8>(e, "eui64")).transpose()?;
    // Reservations persisted by an earlier run (SPDK's file format).
    let ptpl_file = n.ptpl_file.as_deref().filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let resv = match &ptpl_file {
        Some(p) => crate::resv::load(p, &b.uuid()).map_err(NvmfError::InvalidParam)?.unwrap_or_default(),
        None => Default::default(),
    };
    // A bdev deleted under us takes its namespace away (with the event).
    let sid = s.id;
    let desc = bdev::open(&n.bdev_name, true, move |ev| match ev {
        BdevEvent::Remove => hot_remove(sid, nsid),
        BdevEvent::Resize => resized(sid, nsid),
    })?;
    Ok((
        s,
        Namespace {
            nsid,
            bdev_name: n.bdev_name,
            desc,
            uuid,
            nguid,
            eui64,
            anagrpid: Cell::new(anagrpid),
            resv: RefCell::new(resv),
            ptpl_file,
            hosts: RefCell::new(n.no_auto_visible.then(Arc::default)),
        },
    ))
}

/// The bdev of a namespace changed size: every reactor learns the new one,
/// then hosts get a namespace attribute notice (and read the new NSZE).
fn resized(subsystem_id: u32, nsid: u32) {
    let Ok(t) = target() else { return };
    let Some(s) = t.find_id(subsystem_id) else { return };
    let Some(ns) = s.namespaces.borrow().get(&nsid).cloned() else { return };
    let blocks = ns.num_blocks();
    tracing::info!("nvmf: namespace {nsid} of {} now has {blocks} blocks", s.nqn());
    group::update_namespace(subsystem_id, nsid, move |ns| ns.num_blocks.set(blocks), move || namespace_changed(subsystem_id, nsid));
}

/// The bdev of a namespace is going away: remove the namespace.
fn hot_remove(subsystem_id: u32, nsid: u32) {
    debug_assert_eq!(reactor::current(), ReactorId(0));
    let Ok(t) = target() else { return };
    let Some(s) = t.find_id(subsystem_id) else {
        return;
    };
    let removed = s.namespaces.borrow_mut().remove(&nsid);
    if let Some(ns) = removed {
        tracing::info!("nvmf: namespace {nsid} of {} removed: its bdev is gone", s.nqn());
        let hosts = ns.host_set();
        group::publish_namespace(subsystem_id, nsid, None, move || namespace_gone(subsystem_id, nsid, hosts));
    }
}

fn remove_ns(p: RemoveNs, r: Responder) {
    let res = target().and_then(|t| {
        let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
        let ns =
            s.namespaces.borrow_mut().remove(&p.nsid).ok_or_else(|| NvmfError::NotFound(format!("namespace {} of {}", p.nsid, p.nqn)))?;
        Ok((s.id, ns.host_set()))
    });
    match res {
        Ok((sid, hosts)) => {
            let nsid = p.nsid;
            group::publish_namespace(sid, nsid, None, move || {
                namespace_gone(sid, nsid, hosts);
                r.ok(true);
            });
        }
        Err(e) => r.err(e.into()),
    }
}

fn add_host(p: AddHost) -> Result<bool, NvmfError> {
    for (v, what) in [(&p.psk, "psk"), (&p.dhchap_key, "dhchap_key"), (&p.dhchap_ctrlr_key, "dhchap_ctrlr_key")] {
        if v.is_some() {
            return Err(NvmfError::Unsupported(format!("{what}: TLS and DH-HMAC-CHAP are not supported")));
        }
    }
    validate_nqn(&p.host)?;
    let t = target()?;
    let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
    if s.hosts.borrow().contains(&p.host) {
        return Err(NvmfError::Exists(format!("host {} of {}", p.host, p.nqn)));
    }
    s.hosts.borrow_mut().push(p.host);
    t.discovery_changed();
    Ok(true)
}

fn remove_host(p: RemoveHost) -> Result<bool, NvmfError> {
    let t = target()?;
    let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
    let had = {
        let mut h = s.hosts.borrow_mut();
        let before = h.len();
        h.retain(|x| *x != p.host);
        before != h.len()
    };
    if !had {
        return Err(NvmfError::NotFound(format!("host {} of {}", p.host, p.nqn)));
    }
    if !s.allow_any_host.get() {
        let gone: Vec<_> = s.controllers.borrow().values().filter(|c| c.hostnqn == p.host).cloned().collect();
        for c in gone {
            c.destroy("its host was removed from the allowed list");
        }
    }
    t.discovery_changed();
    Ok(true)
}

/// `nvmf_ns_add_host` (`visible`) and `nvmf_ns_remove_host`: which hosts
/// see a namespace added with `no_auto_visible`. As SPDK's: adding a host
/// twice or removing one that is not there changes nothing and succeeds;
/// the host's controllers get a namespace attribute notice (and, where the
/// subsystem reports ANA, an ANA change notice: the groups their ANA log
/// lists changed) when their view changes. Answers once every reactor has
/// the new list; a removal, once every reactor has also finished the
/// commands it had at the namespace's bdev (a removed host's I/O
/// included). A call that changes nothing still waits for the ones before
/// it (a retried removal answers no sooner than the first).
fn ns_host(p: NsHost, visible: bool, r: Responder) {
    let res = target().and_then(|t| {
        let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
        validate_nqn(&p.host)?;
        let ns =
            s.namespaces.borrow().get(&p.nsid).cloned().ok_or_else(|| NvmfError::NotFound(format!("namespace {} of {}", p.nsid, p.nqn)))?;
        let Some(hosts) = ns.host_set() else {
            return Err(NvmfError::InvalidParam(format!(
                "namespace {} of {} is visible to every host: add it with no_auto_visible to choose its hosts",
                p.nsid, p.nqn
            )));
        };
        let new = hosts.with(&p.host, visible);
        if new.is_some() && visible && hosts.len() >= MAX_NS_HOSTS {
            return Err(NvmfError::Busy(format!("namespace {} of {} already has {MAX_NS_HOSTS} hosts", p.nsid, p.nqn)));
        }
        let changed = new.is_some();
        let set = new.map_or(hosts, Arc::new);
        *ns.hosts.borrow_mut() = Some(set.clone());
        Ok((s.id, changed, set))
    });
    match res {
        Ok((sid, changed, set)) => {
            let (nsid, host) = (p.nsid, p.host);
            if changed {
                tracing::info!("nvmf: namespace {nsid} of {} {} host {host}", p.nqn, if visible { "visible to" } else { "hidden from" });
            }
            group::publish_hosts(sid, nsid, Some(set), !visible, move || {
                if changed {
                    visibility_changed(sid, nsid, host);
                }
                r.ok(true);
            });
        }
        Err(e) => r.err(e.into()),
    }
}

/// Host `host` gained or lost sight of namespace `nsid`: its controllers
/// get a namespace attribute notice and, where the subsystem reports ANA,
/// an ANA change notice (their ANA log lists other namespaces now: a host
/// that reads the groups of a namespace from it finds the new one there).
fn visibility_changed(subsystem_id: u32, nsid: u32, host: String) {
    let Ok(t) = target() else { return };
    let Some(s) = t.find_id(subsystem_id) else { return };
    let ctrlrs: Vec<_> = s.controllers.borrow().values().filter(|c| c.hostnqn == host).cloned().collect();
    for c in ctrlrs {
        c.notify_ns_changed(nsid);
        c.notify_ana_change();
    }
}

fn allow_any_host(p: AllowAnyHost) -> Result<bool, NvmfError> {
    let t = target()?;
    let s = find_nvm(&t, &p.nqn, p.tgt_name.as_deref())?;
    s.allow_any_host.set(p.allow_any_host);
    t.discovery_changed();
    Ok(true)
}

/// The calls that rebuild one subsystem.
pub fn write_config(s: &Subsystem, out: &mut ConfigWriter) {
    let nqn = s.nqn();
    // ANA states are kept too (SPDK's save_config drops them): a listener
    // whose groups share one state gets it in add_listener, the others a
    // listener_set_ana_state call per group that differs from group 1.
    let listen = |out: &mut ConfigWriter| {
        for l in s.listeners.borrow().iter() {
            let addr = l.ep.to_listen_address();
            let mut call = json!({ "nqn": nqn, "listen_address": addr, "secure_channel": false });
            let first = l.ana.get(1);
            if s.config.ana_reporting && first != ana::OPTIMIZED {
                call["ana_state"] = ana::name(first).into();
            }
            out.call("nvmf_subsystem_add_listener", call);
            if s.config.ana_reporting && l.ana.uniform().is_none() {
                for g in (2..=l.ana.groups()).filter(|&g| l.ana.get(g) != first) {
                    out.call(
                        "nvmf_subsystem_listener_set_ana_state",
                        json!({ "nqn": nqn, "listen_address": l.ep.to_listen_address(), "ana_state": ana::name(l.ana.get(g)), "anagrpid": g }),
                    );
                }
            }
        }
    };
    if s.is_discovery() {
        debug_assert_eq!(nqn, DISCOVERY_NQN);
        return listen(out);
    }
    let c = &s.config;
    let mut create = json!({
        "nqn": nqn,
        "serial_number": c.serial,
        "model_number": c.model,
        "max_namespaces": c.max_namespaces,
        "allow_any_host": s.allow_any_host.get(),
        "ana_reporting": c.ana_reporting,
        "min_cntlid": c.min_cntlid,
        "max_cntlid": c.max_cntlid,
    });
    if let Some(l) = &c.admin_label {
        create["admin_label"] = l.clone().into();
    }
    if c.dmrsl != 0 {
        create["dmrsl"] = c.dmrsl.into();
    }
    if c.wzsl != 0 {
        create["wzsl"] = c.wzsl.into();
    }
    out.call("nvmf_create_subsystem", create);
    listen(out);
    for h in s.hosts.borrow().iter() {
        out.call("nvmf_subsystem_add_host", json!({ "nqn": nqn, "host": h }));
    }
    for n in s.namespaces.borrow().values() {
        let hosts = n.host_set();
        let mut ns = json!({ "nsid": n.nsid, "bdev_name": n.bdev_name, "nguid": hex(&n.nguid), "uuid": n.uuid.to_string(), "anagrpid": n.anagrpid.get(), "no_auto_visible": hosts.is_some() });
        if let Some(e) = n.eui64 {
            ns["eui64"] = hex(&e).into();
        }
        if let Some(p) = &n.ptpl_file {
            ns["ptpl_file"] = p.display().to_string().into();
        }
        out.call("nvmf_subsystem_add_ns", json!({ "nqn": nqn, "namespace": ns }));
        for h in hosts.iter().flat_map(|h| h.iter()) {
            out.call("nvmf_ns_add_host", json!({ "nqn": nqn, "nsid": n.nsid, "host": h }));
        }
    }
}
