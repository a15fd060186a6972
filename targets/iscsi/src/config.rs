//! The target's configuration, as SPDK's iSCSI target has it: global
//! options, portal groups, initiator groups, target nodes (LUNs on bdevs,
//! portal-group-to-initiator-group maps, CHAP settings) and CHAP auth groups.
//!
//! RPCs change it on the main reactor; logins on any reactor read it. It is
//! control-path state behind one mutex, never touched per I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use pollux_scsi::Device;
use serde::{Deserialize, Serialize};

/// Global options (`iscsi_set_options`), with SPDK's defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Options {
    pub auth_file: String,
    pub node_base: String,
    pub nop_timeout: i32,
    pub nop_in_interval: i32,
    pub disable_chap: bool,
    pub require_chap: bool,
    pub mutual_chap: bool,
    pub chap_group: i32,
    pub max_sessions: u32,
    pub max_queue_depth: u32,
    pub max_connections_per_session: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub error_recovery_level: u32,
    pub allow_duplicated_isid: bool,
    pub max_large_datain_per_connection: u32,
    pub max_r2t_per_connection: u32,
    pub pdu_pool_size: u32,
    pub immediate_data_pool_size: u32,
    pub data_out_pool_size: u32,
    /// Seconds a connection may take to log in (SPDK's compile-time
    /// ISCSI_LOGIN_TIMEOUT). Pollux's own option, see [`Options::POLLUX_ONLY`].
    #[serde(default = "default_login_timeout")]
    pub login_timeout: u32,
    /// Connections one portal serves at once, logged in or not (SPDK's
    /// compile-time MAX_ISCSI_CONNECTIONS, for all portals); one more is
    /// closed as it is accepted. Pollux's own option.
    #[serde(default = "default_max_connections_per_portal")]
    pub max_connections_per_portal: u32,
}

fn default_login_timeout() -> u32 {
    30
}

fn default_max_connections_per_portal() -> u32 {
    1024
}

impl Options {
    /// Options SPDK does not have: `iscsi_get_options` shows them, and
    /// `save_config` writes them only when changed, so a saved default
    /// configuration still loads into SPDK (which refuses unknown keys).
    pub const POLLUX_ONLY: [&str; 2] = ["login_timeout", "max_connections_per_portal"];

    /// The `iscsi_set_options` call `save_config` writes.
    pub fn for_config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("options serialise");
        let d = serde_json::to_value(Options::default()).expect("options serialise");
        pollux_core::app::omit_own_defaults(&mut v, &d, &Self::POLLUX_ONLY);
        v
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth_file: String::new(),
            node_base: "iqn.2016-06.io.spdk".into(),
            nop_timeout: 60,
            nop_in_interval: 30,
            disable_chap: false,
            require_chap: false,
            mutual_chap: false,
            chap_group: 0,
            max_sessions: 128,
            max_queue_depth: 64,
            max_connections_per_session: 2,
            default_time2wait: 2,
            default_time2retain: 20,
            first_burst_length: 8192,
            immediate_data: true,
            error_recovery_level: 0,
            allow_duplicated_isid: false,
            max_large_datain_per_connection: 64,
            max_r2t_per_connection: 4,
            pdu_pool_size: 36864,
            immediate_data_pool_size: 16384,
            data_out_pool_size: 2048,
            login_timeout: default_login_timeout(),
            max_connections_per_portal: default_max_connections_per_portal(),
        }
    }
}

/// CHAP settings of a target node, of discovery, or of a portal group.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChapPolicy {
    pub disable_chap: bool,
    pub require_chap: bool,
    pub mutual_chap: bool,
    pub chap_group: i32,
}

impl ChapPolicy {
    /// Whether CHAP is required (otherwise it is offered if a group is set,
    /// and None is accepted).
    pub fn required(&self) -> bool {
        self.require_chap && !self.disable_chap
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Portal {
    pub host: String,
    pub port: String,
}

#[derive(Clone, Debug)]
pub struct PortalGroup {
    pub tag: i32,
    pub portals: Vec<Portal>,
    pub private: bool,
    pub wait: bool,
    /// Discovery CHAP policy of this group (overrides the global one).
    pub discovery: Option<ChapPolicy>,
}

#[derive(Clone, Debug)]
pub struct InitiatorGroup {
    pub tag: i32,
    pub initiators: Vec<String>,
    pub netmasks: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret {
    pub user: String,
    pub secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msecret: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AuthGroup {
    pub tag: i32,
    pub secrets: Vec<Secret>,
}

/// A target node: a SCSI device exported through portal groups.
#[derive(Clone, Debug)]
pub struct TargetNode {
    pub name: String,
    pub alias: String,
    pub pg_ig_maps: Vec<(i32, i32)>,
    /// (LUN id, bdev name), in the order they were added.
    pub luns: Vec<(u64, String)>,
    pub queue_depth: u32,
    pub chap: ChapPolicy,
    pub header_digest: bool,
    pub data_digest: bool,
    pub device: Arc<Device>,
}

impl TargetNode {
    /// Tell the SCSI device which relative target ports (portal group
    /// tags) reach it; after every change of the maps.
    pub fn sync_ports(&self) {
        self.device.set_ports(self.pg_ig_maps.iter().filter_map(|&(pg, _)| u16::try_from(pg).ok()));
    }
}

/// Everything configured.
#[derive(Debug, Default)]
pub struct Config {
    pub options: Options,
    pub options_set: bool,
    pub discovery: ChapPolicy,
    pub portal_groups: BTreeMap<i32, PortalGroup>,
    pub initiator_groups: BTreeMap<i32, InitiatorGroup>,
    pub targets: Vec<TargetNode>,
    pub auth_groups: BTreeMap<i32, AuthGroup>,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// The configuration, created with defaults on first use.
pub fn lock() -> ConfigGuard {
    let mut g = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(Config::default());
    }
    ConfigGuard(g)
}

pub struct ConfigGuard(MutexGuard<'static, Option<Config>>);

impl std::ops::Deref for ConfigGuard {
    type Target = Config;
    fn deref(&self) -> &Config {
        self.0.as_ref().expect("config")
    }
}

impl std::ops::DerefMut for ConfigGuard {
    fn deref_mut(&mut self) -> &mut Config {
        self.0.as_mut().expect("config")
    }
}

impl Config {
    /// The full IQN of a node name: names without a type prefix get
    /// `node_base:` in front, as in SPDK.
    pub fn full_name(&self, name: &str) -> String {
        let l = name.to_ascii_lowercase();
        if l.starts_with("iqn.") || l.starts_with("eui.") || l.starts_with("naa.") {
            name.to_string()
        } else {
            format!("{}:{}", self.options.node_base, name)
        }
    }

    pub fn target(&self, name: &str) -> Option<&TargetNode> {
        self.targets.iter().find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// The portal group a local address belongs to.
    pub fn portal_group_of(&self, local: &std::net::SocketAddr) -> Option<i32> {
        for pg in self.portal_groups.values() {
            for p in &pg.portals {
                if p.port.parse::<u16>().ok() == Some(local.port()) && host_matches(&p.host, &local.ip()) {
                    return Some(pg.tag);
                }
            }
        }
        None
    }

    /// Whether `initiator` at `addr`, connected through portal group `pg`,
    /// may see target `t` (SPDK's rules: a map for that portal group whose
    /// initiator group allows the name and the address; denials win).
    pub fn allowed(&self, t: &TargetNode, pg: i32, initiator: &str, addr: &IpAddr) -> bool {
        let mut ok = false;
        for &(p, i) in &t.pg_ig_maps {
            if p != pg {
                continue;
            }
            let Some(ig) = self.initiator_groups.get(&i) else { continue };
            match name_allowed(ig, initiator) {
                Some(false) => return false,
                Some(true) if netmask_allowed(ig, addr) => ok = true,
                _ => {}
            }
        }
        ok
    }

    /// The CHAP secret for `user` in auth group `group`.
    pub fn secret(&self, group: i32, user: &str) -> Option<Secret> {
        self.auth_groups.get(&group)?.secrets.iter().find(|s| s.user == user).cloned()
    }
}

fn host_matches(host: &str, ip: &IpAddr) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h == "0.0.0.0" || h == "::" || h == "*" {
        return true;
    }
    h.parse::<IpAddr>().map(|a| a == *ip).unwrap_or(false)
}

/// `Some(true)` allowed, `Some(false)` denied, `None` not mentioned.
fn name_allowed(ig: &InitiatorGroup, name: &str) -> Option<bool> {
    let mut allowed = None;
    for i in &ig.initiators {
        if let Some(denied) = i.strip_prefix('!') {
            if denied.eq_ignore_ascii_case("ANY") || denied.eq_ignore_ascii_case(name) {
                return Some(false);
            }
        } else if i.eq_ignore_ascii_case("ANY") || i.eq_ignore_ascii_case(name) {
            allowed = Some(true);
        }
    }
    allowed
}

fn netmask_allowed(ig: &InitiatorGroup, addr: &IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*addr),
        a => *a,
    };
    ig.netmasks.iter().any(|m| netmask_matches(m, &addr))
}

/// Does `addr` fall in `mask` ("ANY", "a.b.c.d", "a.b.c.d/len", "[v6]/len")?
pub fn netmask_matches(mask: &str, addr: &IpAddr) -> bool {
    if mask.eq_ignore_ascii_case("ANY") {
        return true;
    }
    let (net, len) = match mask.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().ok()),
        None => (mask, None),
    };
    let net = net.trim_start_matches('[').trim_end_matches(']');
    match (net.parse::<IpAddr>(), addr) {
        (Ok(IpAddr::V4(n)), IpAddr::V4(a)) => {
            let len = len.unwrap_or(32).min(32);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & m == u32::from(*a) & m
        }
        (Ok(IpAddr::V6(n)), IpAddr::V6(a)) => {
            let len = len.unwrap_or(128).min(128);
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(n) & m == u128::from(*a) & m
        }
        _ => false,
    }
}

/// Check an initiator-group netmask for syntax.
pub fn valid_netmask(mask: &str) -> bool {
    if mask.eq_ignore_ascii_case("ANY") {
        return true;
    }
    let (net, len) = match mask.split_once('/') {
        Some((n, l)) => (n, Some(l)),
        None => (mask, None),
    };
    let net = net.trim_start_matches('[').trim_end_matches(']');
    match net.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => len.is_none_or(|l| l.parse::<u32>().is_ok_and(|l| l <= 32)),
        Ok(IpAddr::V6(_)) => len.is_none_or(|l| l.parse::<u32>().is_ok_and(|l| l <= 128)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(initiators: &[&str], netmasks: &[&str]) -> InitiatorGroup {
        InitiatorGroup {
            tag: 1,
            initiators: initiators.iter().map(|s| s.to_string()).collect(),
            netmasks: netmasks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn initiator_groups_allow_and_deny_by_name_and_netmask() {
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let b: IpAddr = "192.168.1.1".parse().unwrap();
        let g = ig(&["ANY", "!iqn.bad"], &["10.0.0.0/8"]);
        assert_eq!(name_allowed(&g, "iqn.good"), Some(true));
        assert_eq!(name_allowed(&g, "iqn.bad"), Some(false));
        assert!(netmask_allowed(&g, &a));
        assert!(!netmask_allowed(&g, &b));
        assert!(netmask_matches("ANY", &b));
        assert!(netmask_matches("192.168.1.1", &b));
        assert!(valid_netmask("10.0.0.0/8") && valid_netmask("ANY") && !valid_netmask("10.0.0.0/33") && !valid_netmask("x"));
    }

    #[test]
    fn names_get_the_node_base() {
        let c = Config::default();
        assert_eq!(c.full_name("disk1"), "iqn.2016-06.io.spdk:disk1");
        assert_eq!(c.full_name("iqn.2025-01.x:y"), "iqn.2025-01.x:y");
    }
}
