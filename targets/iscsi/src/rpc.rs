//! The iSCSI RPC methods, with SPDK's names, parameters and result shapes,
//! and the `iscsi` subsystem's `save_config` calls.

use std::sync::Arc;

use pollux_core::app::ConfigWriter;
use pollux_core::reactor;
use pollux_core::rpc::{Methods, NoParams, Responder, RpcError, States};
use pollux_scsi::Device;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{self, AuthGroup, ChapPolicy, InitiatorGroup, Portal, PortalGroup, Secret, TargetNode, valid_netmask};
use crate::{conn, portal, session};

fn einval(msg: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(msg)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    auth_file: Option<String>,
    node_base: Option<String>,
    nop_timeout: Option<i32>,
    nop_in_interval: Option<i32>,
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<i32>,
    max_sessions: Option<u32>,
    max_queue_depth: Option<u32>,
    max_connections_per_session: Option<u32>,
    default_time2wait: Option<u32>,
    default_time2retain: Option<u32>,
    first_burst_length: Option<u32>,
    immediate_data: Option<bool>,
    error_recovery_level: Option<u32>,
    allow_duplicated_isid: Option<bool>,
    max_large_datain_per_connection: Option<u32>,
    max_r2t_per_connection: Option<u32>,
    pdu_pool_size: Option<u32>,
    immediate_data_pool_size: Option<u32>,
    data_out_pool_size: Option<u32>,
    login_timeout: Option<u32>,
    max_connections_per_portal: Option<u32>,
}

fn set_options(p: SetOptions) -> Result<bool, RpcError> {
    let mut cfg = config::lock();
    if cfg.options_set {
        return Err(RpcError::errno(libc::EPERM, "iscsi_set_options may be called only once"));
    }
    let mut o = cfg.options.clone();
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = p.$f { o.$f = v; } )* };
    }
    set!(
        auth_file,
        node_base,
        nop_timeout,
        nop_in_interval,
        disable_chap,
        require_chap,
        mutual_chap,
        chap_group,
        max_sessions,
        max_queue_depth
    );
    set!(max_connections_per_session, default_time2wait, default_time2retain, first_burst_length, immediate_data, error_recovery_level);
    set!(
        allow_duplicated_isid,
        max_large_datain_per_connection,
        max_r2t_per_connection,
        pdu_pool_size,
        immediate_data_pool_size,
        data_out_pool_size,
        login_timeout,
        max_connections_per_portal
    );
    if !(1..=3600).contains(&o.login_timeout) {
        return Err(einval("parameter 'login_timeout' must be 1..3600 (seconds)"));
    }
    if !(1..=1_000_000).contains(&o.max_connections_per_portal) {
        return Err(einval("parameter 'max_connections_per_portal' must be 1..1000000"));
    }
    if o.error_recovery_level != 0 {
        return Err(einval("parameter 'error_recovery_level': only 0 is supported"));
    }
    if !(1..=65535).contains(&o.max_connections_per_session) {
        return Err(einval("parameter 'max_connections_per_session' must be 1..65535"));
    }
    if !(1..=65535).contains(&o.max_sessions) || !(1..=4096).contains(&o.max_queue_depth) {
        return Err(einval("parameters 'max_sessions' (1..65535) and 'max_queue_depth' (1..4096) out of range"));
    }
    if !(512..=16_777_215).contains(&o.first_burst_length) {
        return Err(einval("parameter 'first_burst_length' must be 512..16777215"));
    }
    if o.nop_timeout < 1 || o.nop_timeout > 3600 || o.nop_in_interval < 1 || o.nop_in_interval > 3600 {
        return Err(einval("parameters 'nop_timeout' and 'nop_in_interval' must be 1..3600"));
    }
    if o.default_time2wait > 3600 || o.default_time2retain > 3600 {
        return Err(einval("parameters 'default_time2wait' and 'default_time2retain' must be 0..3600"));
    }
    if o.disable_chap && o.require_chap || o.mutual_chap && !o.require_chap {
        return Err(einval("CHAP parameters conflict (disable and require, or mutual without require)"));
    }
    if o.node_base.is_empty() {
        return Err(einval("parameter 'node_base' must not be empty"));
    }
    if !o.auth_file.is_empty() {
        return Err(einval("parameter 'auth_file': CHAP secret files are not supported; use iscsi_create_auth_group"));
    }
    cfg.discovery =
        ChapPolicy { disable_chap: o.disable_chap, require_chap: o.require_chap, mutual_chap: o.mutual_chap, chap_group: o.chap_group };
    cfg.options = o;
    cfg.options_set = true;
    Ok(true)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Chap {
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<i32>,
}

fn chap_policy(c: &Chap, cfg: &config::Config) -> Result<ChapPolicy, RpcError> {
    let p = ChapPolicy {
        disable_chap: c.disable_chap.unwrap_or(false),
        require_chap: c.require_chap.unwrap_or(false),
        mutual_chap: c.mutual_chap.unwrap_or(false),
        chap_group: c.chap_group.unwrap_or(0),
    };
    if p.disable_chap && p.require_chap {
        return Err(einval("disable_chap and require_chap are mutually exclusive"));
    }
    if p.mutual_chap && !p.require_chap {
        return Err(einval("mutual_chap needs require_chap"));
    }
    if p.chap_group < 0 || p.chap_group != 0 && !cfg.auth_groups.contains_key(&p.chap_group) {
        return Err(einval(format!("chap_group {} does not exist", p.chap_group)));
    }
    Ok(p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tag {
    tag: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAuthGroup {
    tag: i32,
    #[serde(default)]
    secrets: Vec<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSecret {
    tag: i32,
    user: String,
    secret: String,
    muser: Option<String>,
    msecret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveSecret {
    tag: i32,
    user: String,
}

fn check_secret(s: &Secret) -> Result<(), RpcError> {
    if s.user.is_empty() || s.secret.is_empty() {
        return Err(einval("a CHAP secret needs a user and a secret"));
    }
    if s.muser.is_some() != s.msecret.is_some() {
        return Err(einval("muser and msecret go together"));
    }
    if s.user.len() > 255 || s.secret.len() > 255 {
        return Err(einval("CHAP user and secret are limited to 255 bytes"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateInitiatorGroup {
    tag: i32,
    initiators: Vec<String>,
    netmasks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeInitiators {
    tag: i32,
    #[serde(default)]
    initiators: Vec<String>,
    #[serde(default)]
    netmasks: Vec<String>,
}

fn check_initiators(initiators: &[String], netmasks: &[String]) -> Result<(), RpcError> {
    for i in initiators {
        if i.is_empty() || i.len() > 223 + 1 {
            return Err(einval(format!("bad initiator name {i:?}")));
        }
    }
    for m in netmasks {
        if !valid_netmask(m) {
            return Err(einval(format!("bad netmask {m:?}")));
        }
    }
    Ok(())
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct PgIg {
    pg_tag: i32,
    ig_tag: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunSpec {
    lun_id: Option<i32>,
    bdev_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTarget {
    name: String,
    alias_name: String,
    pg_ig_maps: Vec<PgIg>,
    luns: Vec<LunSpec>,
    queue_depth: i32,
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<i32>,
    header_digest: Option<bool>,
    data_digest: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLun {
    name: String,
    bdev_name: String,
    lun_id: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetAuth {
    name: String,
    #[serde(flatten)]
    chap: ChapFields,
}

#[derive(Deserialize)]
struct ChapFields {
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetMaps {
    name: String,
    pg_ig_maps: Vec<PgIg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePortalGroup {
    tag: i32,
    portals: Vec<Portal>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalGroupAuth {
    tag: i32,
    #[serde(flatten)]
    chap: ChapFields,
}

fn check_maps(cfg: &config::Config, maps: &[PgIg]) -> Result<(), RpcError> {
    for m in maps {
        if !cfg.portal_groups.contains_key(&m.pg_tag) {
            return Err(einval(format!("portal group {} does not exist", m.pg_tag)));
        }
        if !cfg.initiator_groups.contains_key(&m.ig_tag) {
            return Err(einval(format!("initiator group {} does not exist", m.ig_tag)));
        }
    }
    Ok(())
}

fn create_target(p: CreateTarget) -> Result<bool, RpcError> {
    let mut cfg = config::lock();
    let name = cfg.full_name(&p.name);
    if name.len() > 223 || p.name.is_empty() || name.contains(char::is_whitespace) {
        return Err(einval(format!("bad target node name {:?}", p.name)));
    }
    if cfg.target(&name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("target node {name} already exists")));
    }
    if p.queue_depth < 1 || p.queue_depth as u32 > cfg.options.max_queue_depth.max(1) {
        return Err(einval(format!("queue_depth must be 1..{}", cfg.options.max_queue_depth)));
    }
    if p.pg_ig_maps.is_empty() {
        return Err(einval("a target node needs at least one pg_ig_map"));
    }
    check_maps(&cfg, &p.pg_ig_maps)?;
    let chap = chap_policy(
        &Chap { disable_chap: p.disable_chap, require_chap: p.require_chap, mutual_chap: p.mutual_chap, chap_group: p.chap_group },
        &cfg,
    )?;
    if p.luns.is_empty() {
        return Err(einval("a target node needs at least one LUN"));
    }
    let device = Device::new(&name);
    let mut luns = Vec::new();
    for (i, l) in p.luns.iter().enumerate() {
        let bdev = l.bdev_name.clone().ok_or_else(|| einval(format!("luns[{i}] needs bdev_name")))?;
        let id = l.lun_id.unwrap_or(i as i32);
        if id < 0 || id as u64 > pollux_scsi::MAX_LUN {
            return Err(einval(format!("luns[{i}]: bad lun_id {id}")));
        }
        if let Err(e) = device.add_lun(id as u64, &bdev) {
            device.clear();
            return Err(RpcError::errno(e.errno(), format!("cannot add LUN {id}: {e}")));
        }
        luns.push((id as u64, bdev));
    }
    let node = TargetNode {
        name,
        alias: p.alias_name,
        pg_ig_maps: p.pg_ig_maps.iter().map(|m| (m.pg_tag, m.ig_tag)).collect(),
        luns,
        queue_depth: p.queue_depth as u32,
        chap,
        header_digest: p.header_digest.unwrap_or(false),
        data_digest: p.data_digest.unwrap_or(false),
        device,
    };
    node.sync_ports();
    cfg.targets.push(node);
    Ok(true)
}

/// Close a target's sessions everywhere, then run `then` on this reactor.
fn close_target_sessions(name: String, then: impl FnOnce() + Send + 'static) {
    for (tsih, _) in session::of_target(&name) {
        session::unregister(tsih);
    }
    reactor::for_each_reactor(move || conn::close_all(Some(&name)), then);
}

fn target_json(t: &TargetNode) -> Value {
    json!({
        "name": t.name,
        "alias_name": t.alias,
        "pg_ig_maps": t.pg_ig_maps.iter().map(|(p, i)| json!({"pg_tag": p, "ig_tag": i})).collect::<Vec<_>>(),
        "luns": t.luns.iter().map(|(id, b)| json!({"bdev_name": b, "lun_id": id})).collect::<Vec<_>>(),
        "queue_depth": t.queue_depth,
        "disable_chap": t.chap.disable_chap,
        "require_chap": t.chap.require_chap,
        "mutual_chap": t.chap.mutual_chap,
        "chap_group": t.chap.chap_group,
        "header_digest": t.header_digest,
        "data_digest": t.data_digest,
    })
}

fn pg_json(pg: &PortalGroup) -> Value {
    json!({"tag": pg.tag, "portals": pg.portals, "private": pg.private})
}

fn ig_json(ig: &InitiatorGroup) -> Value {
    json!({"tag": ig.tag, "initiators": ig.initiators, "netmasks": ig.netmasks})
}

fn auth_json(a: &AuthGroup) -> Value {
    json!({"tag": a.tag, "secrets": a.secrets})
}

/// Register every method.
pub fn register(m: &Methods) {
    m.register("iscsi_set_options", States::STARTUP, |p: SetOptions, r: Responder| r.result(set_options(p)));
    m.register("iscsi_get_options", States::ANY, |_: NoParams, r: Responder| {
        let cfg = config::lock();
        r.ok(&cfg.options)
    });
    m.register("iscsi_set_discovery_auth", States::ANY, |p: Chap, r: Responder| {
        let mut cfg = config::lock();
        match chap_policy(&p, &cfg) {
            Ok(c) => {
                cfg.discovery = c;
                r.ok(true)
            }
            Err(e) => r.err(e),
        }
    });
    m.register("iscsi_create_auth_group", States::ANY, |p: CreateAuthGroup, r: Responder| {
        let mut cfg = config::lock();
        if p.tag <= 0 {
            return r.err(einval("tag must be above 0"));
        }
        if cfg.auth_groups.contains_key(&p.tag) {
            return r.err(RpcError::errno(libc::EEXIST, format!("auth group {} already exists", p.tag)));
        }
        for s in &p.secrets {
            if let Err(e) = check_secret(s) {
                return r.err(e);
            }
        }
        cfg.auth_groups.insert(p.tag, AuthGroup { tag: p.tag, secrets: p.secrets });
        r.ok(true)
    });
    m.register("iscsi_delete_auth_group", States::ANY, |p: Tag, r: Responder| {
        let mut cfg = config::lock();
        match cfg.auth_groups.remove(&p.tag) {
            Some(_) => r.ok(true),
            None => r.err(RpcError::errno(libc::ENODEV, format!("auth group {} not found", p.tag))),
        }
    });
    m.register("iscsi_get_auth_groups", States::ANY, |_: NoParams, r: Responder| {
        let cfg = config::lock();
        r.ok(cfg.auth_groups.values().map(auth_json).collect::<Vec<_>>())
    });
    m.register("iscsi_auth_group_add_secret", States::ANY, |p: AddSecret, r: Responder| {
        let mut cfg = config::lock();
        let s = Secret { user: p.user, secret: p.secret, muser: p.muser, msecret: p.msecret };
        if let Err(e) = check_secret(&s) {
            return r.err(e);
        }
        let Some(g) = cfg.auth_groups.get_mut(&p.tag) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("auth group {} not found", p.tag)));
        };
        if g.secrets.iter().any(|x| x.user == s.user) {
            return r.err(RpcError::errno(libc::EEXIST, format!("user {} already in auth group {}", s.user, p.tag)));
        }
        g.secrets.push(s);
        r.ok(true)
    });
    m.register("iscsi_auth_group_remove_secret", States::ANY, |p: RemoveSecret, r: Responder| {
        let mut cfg = config::lock();
        let Some(g) = cfg.auth_groups.get_mut(&p.tag) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("auth group {} not found", p.tag)));
        };
        let n = g.secrets.len();
        g.secrets.retain(|s| s.user != p.user);
        if g.secrets.len() == n {
            r.err(RpcError::errno(libc::ENODEV, format!("user {} not in auth group {}", p.user, p.tag)))
        } else {
            r.ok(true)
        }
    });
    m.register("iscsi_create_initiator_group", States::RUNTIME, |p: CreateInitiatorGroup, r: Responder| {
        let mut cfg = config::lock();
        if p.tag <= 0 {
            return r.err(einval("tag must be above 0"));
        }
        if cfg.initiator_groups.contains_key(&p.tag) {
            return r.err(RpcError::errno(libc::EEXIST, format!("initiator group {} already exists", p.tag)));
        }
        if p.initiators.is_empty() || p.netmasks.is_empty() {
            return r.err(einval("an initiator group needs initiators and netmasks"));
        }
        if let Err(e) = check_initiators(&p.initiators, &p.netmasks) {
            return r.err(e);
        }
        cfg.initiator_groups.insert(p.tag, InitiatorGroup { tag: p.tag, initiators: p.initiators, netmasks: p.netmasks });
        r.ok(true)
    });
    m.register("iscsi_delete_initiator_group", States::RUNTIME, |p: Tag, r: Responder| {
        let mut cfg = config::lock();
        if cfg.targets.iter().any(|t| t.pg_ig_maps.iter().any(|(_, i)| *i == p.tag)) {
            return r.err(RpcError::errno(libc::EBUSY, format!("initiator group {} is used by a target node", p.tag)));
        }
        match cfg.initiator_groups.remove(&p.tag) {
            Some(_) => r.ok(true),
            None => r.err(RpcError::errno(libc::ENODEV, format!("initiator group {} not found", p.tag))),
        }
    });
    m.register("iscsi_initiator_group_add_initiators", States::RUNTIME, |p: ChangeInitiators, r: Responder| {
        let mut cfg = config::lock();
        if let Err(e) = check_initiators(&p.initiators, &p.netmasks) {
            return r.err(e);
        }
        let Some(g) = cfg.initiator_groups.get_mut(&p.tag) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("initiator group {} not found", p.tag)));
        };
        for i in p.initiators {
            if !g.initiators.contains(&i) {
                g.initiators.push(i);
            }
        }
        for m in p.netmasks {
            if !g.netmasks.contains(&m) {
                g.netmasks.push(m);
            }
        }
        r.ok(true)
    });
    m.register("iscsi_initiator_group_remove_initiators", States::RUNTIME, |p: ChangeInitiators, r: Responder| {
        let mut cfg = config::lock();
        let Some(g) = cfg.initiator_groups.get_mut(&p.tag) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("initiator group {} not found", p.tag)));
        };
        g.initiators.retain(|i| !p.initiators.contains(i));
        g.netmasks.retain(|m| !p.netmasks.contains(m));
        r.ok(true)
    });
    m.register("iscsi_get_initiator_groups", States::ANY, |_: NoParams, r: Responder| {
        let cfg = config::lock();
        r.ok(cfg.initiator_groups.values().map(ig_json).collect::<Vec<_>>())
    });
    m.register("iscsi_create_target_node", States::RUNTIME, |p: CreateTarget, r: Responder| r.result(create_target(p)));
    m.register("iscsi_delete_target_node", States::RUNTIME, |p: Name, r: Responder| {
        let t = {
            let mut cfg = config::lock();
            let name = cfg.full_name(&p.name);
            match cfg.targets.iter().position(|t| t.name.eq_ignore_ascii_case(&name)) {
                Some(i) => cfg.targets.remove(i),
                None => return r.err(RpcError::errno(libc::ENODEV, format!("target node {name} not found"))),
            }
        };
        let dev = t.device.clone();
        close_target_sessions(t.name.clone(), move || {
            dev.clear();
            r.ok(true)
        });
    });
    m.register("iscsi_target_node_add_lun", States::RUNTIME, |p: AddLun, r: Responder| {
        let mut cfg = config::lock();
        let name = cfg.full_name(&p.name);
        let Some(t) = cfg.targets.iter_mut().find(|t| t.name.eq_ignore_ascii_case(&name)) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("target node {name} not found")));
        };
        let id = match p.lun_id {
            None | Some(-1) => (0..=pollux_scsi::MAX_LUN).find(|i| !t.luns.iter().any(|(l, _)| l == i)).unwrap_or(0),
            Some(i) if i >= 0 && i as u64 <= pollux_scsi::MAX_LUN => i as u64,
            Some(i) => return r.err(einval(format!("bad lun_id {i}"))),
        };
        match t.device.add_lun(id, &p.bdev_name) {
            Ok(_) => {
                t.luns.push((id, p.bdev_name));
                r.ok(true)
            }
            Err(e) => r.err(RpcError::errno(e.errno(), format!("cannot add LUN {id}: {e}"))),
        }
    });
    m.register("iscsi_target_node_set_auth", States::RUNTIME, |p: TargetAuth, r: Responder| {
        let mut cfg = config::lock();
        let c = Chap {
            disable_chap: p.chap.disable_chap,
            require_chap: p.chap.require_chap,
            mutual_chap: p.chap.mutual_chap,
            chap_group: p.chap.chap_group,
        };
        let pol = match chap_policy(&c, &cfg) {
            Ok(x) => x,
            Err(e) => return r.err(e),
        };
        let name = cfg.full_name(&p.name);
        match cfg.targets.iter_mut().find(|t| t.name.eq_ignore_ascii_case(&name)) {
            Some(t) => {
                t.chap = pol;
                r.ok(true)
            }
            None => r.err(RpcError::errno(libc::ENODEV, format!("target node {name} not found"))),
        }
    });
    m.register("iscsi_target_node_add_pg_ig_maps", States::RUNTIME, |p: TargetMaps, r: Responder| {
        let mut cfg = config::lock();
        if let Err(e) = check_maps(&cfg, &p.pg_ig_maps) {
            return r.err(e);
        }
        let name = cfg.full_name(&p.name);
        let Some(t) = cfg.targets.iter_mut().find(|t| t.name.eq_ignore_ascii_case(&name)) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("target node {name} not found")));
        };
        let added = p.pg_ig_maps.iter().try_for_each(|m| {
            if t.pg_ig_maps.contains(&(m.pg_tag, m.ig_tag)) {
                return Err(RpcError::errno(libc::EEXIST, format!("map {}:{} exists", m.pg_tag, m.ig_tag)));
            }
            t.pg_ig_maps.push((m.pg_tag, m.ig_tag));
            Ok(())
        });
        // Maps added before a refused one stay: the ports follow them.
        t.sync_ports();
        r.result(added.map(|()| true))
    });
    m.register("iscsi_target_node_remove_pg_ig_maps", States::RUNTIME, |p: TargetMaps, r: Responder| {
        let mut cfg = config::lock();
        let name = cfg.full_name(&p.name);
        let Some(t) = cfg.targets.iter_mut().find(|t| t.name.eq_ignore_ascii_case(&name)) else {
            return r.err(RpcError::errno(libc::ENODEV, format!("target node {name} not found")));
        };
        let removed = p.pg_ig_maps.iter().try_for_each(|m| {
            let n = t.pg_ig_maps.len();
            t.pg_ig_maps.retain(|x| *x != (m.pg_tag, m.ig_tag));
            if t.pg_ig_maps.len() == n {
                return Err(RpcError::errno(libc::ENODEV, format!("map {}:{} not found", m.pg_tag, m.ig_tag)));
            }
            Ok(())
        });
        t.sync_ports();
        r.result(removed.map(|()| true))
    });
    m.register("iscsi_get_target_nodes", States::ANY, |_: NoParams, r: Responder| {
        let cfg = config::lock();
        r.ok(cfg.targets.iter().map(target_json).collect::<Vec<_>>())
    });
    m.register("iscsi_create_portal_group", States::RUNTIME, |p: CreatePortalGroup, r: Responder| {
        {
            let cfg = config::lock();
            // The TPGT is 16 bits on the wire and is the relative port of
            // the nexus: a larger tag wrapped.
            if p.tag <= 0 || p.tag > i32::from(u16::MAX) {
                return r.err(einval("tag must be 1 to 65535"));
            }
            if cfg.portal_groups.contains_key(&p.tag) {
                return r.err(RpcError::errno(libc::EEXIST, format!("portal group {} already exists", p.tag)));
            }
            if p.portals.is_empty() {
                return r.err(einval("a portal group needs portals"));
            }
            for pt in &p.portals {
                if let Err(e) = portal::resolve(pt) {
                    return r.err(einval(format!("portal {}:{}: {e}", pt.host, pt.port)));
                }
            }
        }
        if !p.wait {
            if let Err(e) = portal::start(p.tag, &p.portals) {
                return r.err(RpcError::errno(e.raw_os_error().unwrap_or(libc::EINVAL), e));
            }
        }
        config::lock()
            .portal_groups
            .insert(p.tag, PortalGroup { tag: p.tag, portals: p.portals, private: p.private, wait: p.wait, discovery: None });
        r.ok(true)
    });
    m.register("iscsi_start_portal_group", States::RUNTIME, |p: Tag, r: Responder| {
        let pg = config::lock().portal_groups.get(&p.tag).cloned();
        match pg {
            None => r.err(RpcError::errno(libc::ENODEV, format!("portal group {} not found", p.tag))),
            Some(pg) => match portal::start(pg.tag, &pg.portals) {
                Ok(()) => {
                    if let Some(g) = config::lock().portal_groups.get_mut(&p.tag) {
                        g.wait = false;
                    }
                    r.ok(true)
                }
                Err(e) => r.err(RpcError::errno(e.raw_os_error().unwrap_or(libc::EINVAL), e)),
            },
        }
    });
    m.register("iscsi_delete_portal_group", States::RUNTIME, |p: Tag, r: Responder| {
        let mut cfg = config::lock();
        if cfg.targets.iter().any(|t| t.pg_ig_maps.iter().any(|(pg, _)| *pg == p.tag)) {
            return r.err(RpcError::errno(libc::EBUSY, format!("portal group {} is used by a target node", p.tag)));
        }
        match cfg.portal_groups.remove(&p.tag) {
            Some(_) => {
                portal::stop(p.tag);
                r.ok(true)
            }
            None => r.err(RpcError::errno(libc::ENODEV, format!("portal group {} not found", p.tag))),
        }
    });
    m.register("iscsi_portal_group_set_auth", States::RUNTIME, |p: PortalGroupAuth, r: Responder| {
        let mut cfg = config::lock();
        let c = Chap {
            disable_chap: p.chap.disable_chap,
            require_chap: p.chap.require_chap,
            mutual_chap: p.chap.mutual_chap,
            chap_group: p.chap.chap_group,
        };
        let pol = match chap_policy(&c, &cfg) {
            Ok(x) => x,
            Err(e) => return r.err(e),
        };
        match cfg.portal_groups.get_mut(&p.tag) {
            Some(g) => {
                g.discovery = Some(pol);
                r.ok(true)
            }
            None => r.err(RpcError::errno(libc::ENODEV, format!("portal group {} not found", p.tag))),
        }
    });
    m.register("iscsi_get_portal_groups", States::ANY, |_: NoParams, r: Responder| {
        let cfg = config::lock();
        r.ok(cfg.portal_groups.values().map(pg_json).collect::<Vec<_>>())
    });
    m.register("iscsi_get_connections", States::RUNTIME, |_: NoParams, r: Responder| {
        reactor::map_reactors(conn::describe_all, move |all| r.ok(all.into_iter().flatten().collect::<Vec<_>>()))
    });
    m.register("iscsi_get_target_stats", States::RUNTIME, |_: NoParams, r: Responder| {
        reactor::map_reactors(conn::counters_snapshot, move |all| r.ok(crate::counters::report(all)))
    });
    m.register("iscsi_get_stats", States::RUNTIME, |_: NoParams, r: Responder| {
        reactor::map_reactors(conn::state_counts, move |all| {
            let (running, exiting) = all.iter().fold((0, 0), |(r, e), (a, b)| (r + a, e + b));
            r.ok(json!({"invalid": 0, "running": running, "exiting": exiting, "exited": 0}))
        })
    });
}

/// The calls that rebuild the live configuration.
pub fn write_config(out: &mut ConfigWriter) {
    let cfg = config::lock();
    out.call("iscsi_set_options", cfg.options.for_config());
    // Auth groups first: discovery and node CHAP settings name them.
    for a in cfg.auth_groups.values() {
        out.call("iscsi_create_auth_group", json!({"tag": a.tag, "secrets": a.secrets}));
    }
    out.call("iscsi_set_discovery_auth", cfg.discovery);
    for pg in cfg.portal_groups.values() {
        out.call("iscsi_create_portal_group", json!({"tag": pg.tag, "portals": pg.portals, "private": pg.private, "wait": pg.wait}));
        if let Some(d) = pg.discovery {
            out.call("iscsi_portal_group_set_auth", json!({"tag": pg.tag, "disable_chap": d.disable_chap, "require_chap": d.require_chap, "mutual_chap": d.mutual_chap, "chap_group": d.chap_group}));
        }
    }
    for ig in cfg.initiator_groups.values() {
        out.call("iscsi_create_initiator_group", json!({"tag": ig.tag, "initiators": ig.initiators, "netmasks": ig.netmasks}));
    }
    for t in &cfg.targets {
        out.call("iscsi_create_target_node", target_json(t));
    }
}

/// Drop every target's LUs (subsystem fini, after connections closed).
pub fn clear_targets() -> Vec<Arc<Device>> {
    let mut cfg = config::lock();
    let devs: Vec<Arc<Device>> = cfg.targets.drain(..).map(|t| t.device).collect();
    for d in &devs {
        d.clear();
    }
    devs
}
