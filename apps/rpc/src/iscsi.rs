//! iscsi methods, with rpc.py's argument forms (SPDK's `scripts/rpc.py`
//! iscsi_* commands): positional tags, names and quoted lists
//! (`'Malloc0:0 Malloc1:1'`, `'1:1 2:1'`, `'127.0.0.1:3260'`), CHAP flags.

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::{Request, Show};

/// CHAP flags shared by several commands.
#[derive(Args, Debug, Clone)]
pub struct ChapArgs {
    /// Disable CHAP
    #[arg(short = 'd', long, conflicts_with = "require_chap")]
    disable_chap: bool,
    /// Require CHAP
    #[arg(short = 'r', long)]
    require_chap: bool,
    /// Require mutual (bidirectional) CHAP
    #[arg(short = 'm', long)]
    mutual_chap: bool,
    /// Auth group tag
    #[arg(short = 'g', long)]
    chap_group: Option<i32>,
}

impl ChapArgs {
    fn add(&self, m: &mut Map<String, Value>) {
        m.insert("disable_chap".into(), self.disable_chap.into());
        m.insert("require_chap".into(), self.require_chap.into());
        m.insert("mutual_chap".into(), self.mutual_chap.into());
        if let Some(g) = self.chap_group {
            m.insert("chap_group".into(), g.into());
        }
    }
}

// Variant names are the RPC method names.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// Set global iSCSI options (before framework_start_init)
    #[command(name = "iscsi_set_options", rename_all = "kebab-case")]
    IscsiSetOptions {
        #[arg(short = 'f', long)]
        auth_file: Option<String>,
        #[arg(short = 'b', long)]
        node_base: Option<String>,
        #[arg(short = 'o', long)]
        nop_timeout: Option<i32>,
        #[arg(short = 'n', long)]
        nop_in_interval: Option<i32>,
        #[arg(short = 'd', long, conflicts_with = "require_chap")]
        disable_chap: bool,
        #[arg(short = 'r', long)]
        require_chap: bool,
        #[arg(short = 'm', long)]
        mutual_chap: bool,
        #[arg(short = 'g', long)]
        chap_group: Option<i32>,
        #[arg(short = 'a', long)]
        max_sessions: Option<u32>,
        #[arg(short = 'q', long)]
        max_queue_depth: Option<u32>,
        #[arg(short = 'c', long)]
        max_connections_per_session: Option<u32>,
        #[arg(short = 'w', long)]
        default_time2wait: Option<u32>,
        #[arg(short = 'v', long)]
        default_time2retain: Option<u32>,
        #[arg(short = 's', long)]
        first_burst_length: Option<u32>,
        #[arg(short = 'i', long)]
        immediate_data: bool,
        #[arg(short = 'l', long)]
        error_recovery_level: Option<u32>,
        #[arg(short = 'p', long)]
        allow_duplicated_isid: bool,
        #[arg(short = 'x', long)]
        max_large_datain_per_connection: Option<u32>,
        #[arg(short = 'k', long)]
        max_r2t_per_connection: Option<u32>,
        #[arg(short = 'u', long)]
        pdu_pool_size: Option<u32>,
        #[arg(short = 'j', long)]
        immediate_data_pool_size: Option<u32>,
        #[arg(short = 'z', long)]
        data_out_pool_size: Option<u32>,
    },
    /// Show global iSCSI options
    IscsiGetOptions,
    /// Set CHAP for discovery sessions
    IscsiSetDiscoveryAuth(ChapArgs),
    /// Create a CHAP auth group: TAG [-c 'user:u secret:s muser:mu msecret:ms,...']
    #[command(name = "iscsi_create_auth_group", rename_all = "kebab-case")]
    IscsiCreateAuthGroup {
        tag: i32,
        #[arg(short = 'c', long)]
        secrets: Option<String>,
    },
    /// Delete a CHAP auth group
    IscsiDeleteAuthGroup { tag: i32 },
    /// Show CHAP auth groups
    IscsiGetAuthGroups,
    /// Add a secret to an auth group
    #[command(name = "iscsi_auth_group_add_secret", rename_all = "kebab-case")]
    IscsiAuthGroupAddSecret {
        tag: i32,
        #[arg(short = 'u', long)]
        user: String,
        #[arg(short = 's', long)]
        secret: String,
        #[arg(short = 'm', long)]
        muser: Option<String>,
        #[arg(short = 'r', long)]
        msecret: Option<String>,
    },
    /// Remove a secret from an auth group
    #[command(name = "iscsi_auth_group_remove_secret", rename_all = "kebab-case")]
    IscsiAuthGroupRemoveSecret {
        tag: i32,
        #[arg(short = 'u', long)]
        user: String,
    },
    /// Show initiator groups
    IscsiGetInitiatorGroups,
    /// Create an initiator group: TAG 'INITIATORS' 'NETMASKS'
    IscsiCreateInitiatorGroup { tag: i32, initiators: String, netmasks: String },
    /// Delete an initiator group
    IscsiDeleteInitiatorGroup { tag: i32 },
    /// Add initiators or netmasks to a group
    #[command(name = "iscsi_initiator_group_add_initiators", rename_all = "kebab-case")]
    IscsiInitiatorGroupAddInitiators {
        tag: i32,
        #[arg(short = 'n')]
        initiators: Option<String>,
        #[arg(short = 'm')]
        netmasks: Option<String>,
    },
    /// Remove initiators or netmasks from a group
    #[command(name = "iscsi_initiator_group_remove_initiators", rename_all = "kebab-case")]
    IscsiInitiatorGroupRemoveInitiators {
        tag: i32,
        #[arg(short = 'n')]
        initiators: Option<String>,
        #[arg(short = 'm')]
        netmasks: Option<String>,
    },
    /// Show target nodes
    IscsiGetTargetNodes,
    /// Create a target node: NAME ALIAS 'bdev:lun ...' 'pg:ig ...' QUEUE_DEPTH
    #[command(name = "iscsi_create_target_node", rename_all = "kebab-case")]
    IscsiCreateTargetNode {
        name: String,
        alias_name: String,
        luns: String,
        pg_ig_maps: String,
        queue_depth: i32,
        #[command(flatten)]
        chap: ChapArgs,
        /// Require header digests
        #[arg(short = 'H', long)]
        header_digest: bool,
        /// Require data digests
        #[arg(short = 'D', long)]
        data_digest: bool,
    },
    /// Delete a target node
    IscsiDeleteTargetNode { target_node_name: String },
    /// Add a LUN to a target node
    #[command(name = "iscsi_target_node_add_lun", rename_all = "kebab-case")]
    IscsiTargetNodeAddLun {
        name: String,
        bdev_name: String,
        #[arg(short = 'i', long)]
        lun_id: Option<i32>,
    },
    /// Set CHAP for a target node
    #[command(name = "iscsi_target_node_set_auth", rename_all = "kebab-case")]
    IscsiTargetNodeSetAuth {
        name: String,
        #[command(flatten)]
        chap: ChapArgs,
    },
    /// Add portal-group to initiator-group maps: NAME 'pg:ig ...'
    IscsiTargetNodeAddPgIgMaps { name: String, pg_ig_maps: String },
    /// Remove portal-group to initiator-group maps
    IscsiTargetNodeRemovePgIgMaps { name: String, pg_ig_maps: String },
    /// Show portal groups
    IscsiGetPortalGroups,
    /// Create a portal group: TAG 'host:port ...'
    #[command(name = "iscsi_create_portal_group", rename_all = "kebab-case")]
    IscsiCreatePortalGroup {
        tag: i32,
        portals: String,
        #[arg(short = 'p', long)]
        private: bool,
        #[arg(short = 'w', long)]
        wait: bool,
    },
    /// Start listening on a portal group created with --wait
    IscsiStartPortalGroup { tag: i32 },
    /// Delete a portal group
    IscsiDeletePortalGroup { tag: i32 },
    /// Set CHAP for discovery sessions through a portal group
    #[command(name = "iscsi_portal_group_set_auth", rename_all = "kebab-case")]
    IscsiPortalGroupSetAuth {
        tag: i32,
        #[command(flatten)]
        chap: ChapArgs,
    },
    /// Show iSCSI connections
    IscsiGetConnections,
    /// Show iSCSI connection counts
    IscsiGetStats,
    /// Commands, bytes, digest errors, sessions and refused logins per target node and portal (Pollux's own)
    IscsiGetTargetStats,
}

fn req(method: &'static str, params: Value, show: Show) -> Request {
    Request { method, params: Some(params), show }
}

fn words(s: &str) -> Vec<&str> {
    s.split(' ').filter(|w| !w.is_empty()).collect()
}

/// `'a:b c:d'` into objects with the two keys (numbers where they parse).
fn pairs(s: &str, k1: &str, k2: &str, numeric_first: bool) -> Value {
    words(s)
        .iter()
        .map(|w| {
            let (a, b) = w.rsplit_once(':').unwrap_or((w, ""));
            let num = |x: &str| x.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(x));
            let first = if numeric_first { num(a) } else { Value::from(a) };
            json!({ k1: first, k2: num(b) })
        })
        .collect()
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        match self {
            IscsiSetOptions {
                auth_file,
                node_base,
                nop_timeout,
                nop_in_interval,
                disable_chap,
                require_chap,
                mutual_chap,
                chap_group,
                max_sessions,
                max_queue_depth,
                max_connections_per_session,
                default_time2wait,
                default_time2retain,
                first_burst_length,
                immediate_data,
                error_recovery_level,
                allow_duplicated_isid,
                max_large_datain_per_connection,
                max_r2t_per_connection,
                pdu_pool_size,
                immediate_data_pool_size,
                data_out_pool_size,
            } => {
                let mut m = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                };
                put("auth_file", auth_file.clone().map(Value::from));
                put("node_base", node_base.clone().map(Value::from));
                put("nop_timeout", nop_timeout.map(Value::from));
                put("nop_in_interval", nop_in_interval.map(Value::from));
                put("disable_chap", Some((*disable_chap).into()));
                put("require_chap", Some((*require_chap).into()));
                put("mutual_chap", Some((*mutual_chap).into()));
                put("chap_group", chap_group.map(Value::from));
                put("max_sessions", max_sessions.map(Value::from));
                put("max_queue_depth", max_queue_depth.map(Value::from));
                put("max_connections_per_session", max_connections_per_session.map(Value::from));
                put("default_time2wait", default_time2wait.map(Value::from));
                put("default_time2retain", default_time2retain.map(Value::from));
                put("first_burst_length", first_burst_length.map(Value::from));
                put("immediate_data", Some((*immediate_data).into()));
                put("error_recovery_level", error_recovery_level.map(Value::from));
                put("allow_duplicated_isid", Some((*allow_duplicated_isid).into()));
                put("max_large_datain_per_connection", max_large_datain_per_connection.map(Value::from));
                put("max_r2t_per_connection", max_r2t_per_connection.map(Value::from));
                put("pdu_pool_size", pdu_pool_size.map(Value::from));
                put("immediate_data_pool_size", immediate_data_pool_size.map(Value::from));
                put("data_out_pool_size", data_out_pool_size.map(Value::from));
                req("iscsi_set_options", Value::Object(m), Show::Nothing)
            }
            IscsiGetOptions => Request { method: "iscsi_get_options", params: None, show: Show::Json },
            IscsiSetDiscoveryAuth(c) => {
                let mut m = Map::new();
                c.add(&mut m);
                req("iscsi_set_discovery_auth", Value::Object(m), Show::Nothing)
            }
            IscsiCreateAuthGroup { tag, secrets } => {
                let mut p = json!({"tag": tag});
                if let Some(s) = secrets {
                    let list: Vec<Value> = s
                        .split(',')
                        .filter(|x| !x.trim().is_empty())
                        .map(|one| {
                            let m: Map<String, Value> = words(one)
                                .iter()
                                .filter_map(|kv| kv.split_once(':'))
                                .map(|(k, v)| (k.to_string(), Value::from(v)))
                                .collect();
                            Value::Object(m)
                        })
                        .collect();
                    p["secrets"] = Value::Array(list);
                }
                req("iscsi_create_auth_group", p, Show::Nothing)
            }
            IscsiDeleteAuthGroup { tag } => req("iscsi_delete_auth_group", json!({"tag": tag}), Show::Nothing),
            IscsiGetAuthGroups => Request { method: "iscsi_get_auth_groups", params: None, show: Show::Json },
            IscsiAuthGroupAddSecret { tag, user, secret, muser, msecret } => {
                let mut p = json!({"tag": tag, "user": user, "secret": secret});
                if let Some(m) = muser {
                    p["muser"] = m.clone().into();
                }
                if let Some(m) = msecret {
                    p["msecret"] = m.clone().into();
                }
                req("iscsi_auth_group_add_secret", p, Show::Nothing)
            }
            IscsiAuthGroupRemoveSecret { tag, user } => {
                req("iscsi_auth_group_remove_secret", json!({"tag": tag, "user": user}), Show::Nothing)
            }
            IscsiGetInitiatorGroups => Request { method: "iscsi_get_initiator_groups", params: None, show: Show::Json },
            IscsiCreateInitiatorGroup { tag, initiators, netmasks } => req(
                "iscsi_create_initiator_group",
                json!({"tag": tag, "initiators": words(initiators), "netmasks": words(netmasks)}),
                Show::Nothing,
            ),
            IscsiDeleteInitiatorGroup { tag } => req("iscsi_delete_initiator_group", json!({"tag": tag}), Show::Nothing),
            IscsiInitiatorGroupAddInitiators { tag, initiators, netmasks }
            | IscsiInitiatorGroupRemoveInitiators { tag, initiators, netmasks } => {
                let method = if matches!(self, IscsiInitiatorGroupAddInitiators { .. }) {
                    "iscsi_initiator_group_add_initiators"
                } else {
                    "iscsi_initiator_group_remove_initiators"
                };
                let mut p = json!({"tag": tag});
                if let Some(i) = initiators {
                    p["initiators"] = json!(words(i));
                }
                if let Some(n) = netmasks {
                    p["netmasks"] = json!(words(n));
                }
                req(method, p, Show::Nothing)
            }
            IscsiGetTargetNodes => Request { method: "iscsi_get_target_nodes", params: None, show: Show::Json },
            IscsiCreateTargetNode { name, alias_name, luns, pg_ig_maps, queue_depth, chap, header_digest, data_digest } => {
                let mut m = Map::new();
                m.insert("name".into(), name.clone().into());
                m.insert("alias_name".into(), alias_name.clone().into());
                m.insert("luns".into(), pairs(luns, "bdev_name", "lun_id", false));
                m.insert("pg_ig_maps".into(), pairs(pg_ig_maps, "pg_tag", "ig_tag", true));
                m.insert("queue_depth".into(), (*queue_depth).into());
                chap.add(&mut m);
                m.insert("header_digest".into(), (*header_digest).into());
                m.insert("data_digest".into(), (*data_digest).into());
                req("iscsi_create_target_node", Value::Object(m), Show::Nothing)
            }
            IscsiDeleteTargetNode { target_node_name } => req("iscsi_delete_target_node", json!({"name": target_node_name}), Show::Nothing),
            IscsiTargetNodeAddLun { name, bdev_name, lun_id } => {
                let mut p = json!({"name": name, "bdev_name": bdev_name});
                if let Some(i) = lun_id {
                    p["lun_id"] = (*i).into();
                }
                req("iscsi_target_node_add_lun", p, Show::Nothing)
            }
            IscsiTargetNodeSetAuth { name, chap } => {
                let mut m = Map::new();
                m.insert("name".into(), name.clone().into());
                chap.add(&mut m);
                req("iscsi_target_node_set_auth", Value::Object(m), Show::Nothing)
            }
            IscsiTargetNodeAddPgIgMaps { name, pg_ig_maps } => req(
                "iscsi_target_node_add_pg_ig_maps",
                json!({"name": name, "pg_ig_maps": pairs(pg_ig_maps, "pg_tag", "ig_tag", true)}),
                Show::Nothing,
            ),
            IscsiTargetNodeRemovePgIgMaps { name, pg_ig_maps } => req(
                "iscsi_target_node_remove_pg_ig_maps",
                json!({"name": name, "pg_ig_maps": pairs(pg_ig_maps, "pg_tag", "ig_tag", true)}),
                Show::Nothing,
            ),
            IscsiGetPortalGroups => Request { method: "iscsi_get_portal_groups", params: None, show: Show::Json },
            IscsiCreatePortalGroup { tag, portals, private, wait } => {
                let list: Vec<Value> = words(portals)
                    .iter()
                    .map(|p| {
                        let (h, port) = p.rsplit_once(':').unwrap_or((p, "3260"));
                        json!({"host": h, "port": port})
                    })
                    .collect();
                req("iscsi_create_portal_group", json!({"tag": tag, "portals": list, "private": private, "wait": wait}), Show::Nothing)
            }
            IscsiStartPortalGroup { tag } => req("iscsi_start_portal_group", json!({"tag": tag}), Show::Nothing),
            IscsiDeletePortalGroup { tag } => req("iscsi_delete_portal_group", json!({"tag": tag}), Show::Nothing),
            IscsiPortalGroupSetAuth { tag, chap } => {
                let mut m = Map::new();
                m.insert("tag".into(), (*tag).into());
                chap.add(&mut m);
                req("iscsi_portal_group_set_auth", Value::Object(m), Show::Nothing)
            }
            IscsiGetConnections => Request { method: "iscsi_get_connections", params: None, show: Show::Json },
            IscsiGetStats => Request { method: "iscsi_get_stats", params: None, show: Show::Json },
            IscsiGetTargetStats => Request { method: "iscsi_get_target_stats", params: None, show: Show::Json },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_lists_become_spdk_objects() {
        assert_eq!(
            pairs("Malloc0:0 Malloc1:3", "bdev_name", "lun_id", false),
            json!([{"bdev_name": "Malloc0", "lun_id": 0}, {"bdev_name": "Malloc1", "lun_id": 3}])
        );
        assert_eq!(pairs("1:1 2:5", "pg_tag", "ig_tag", true), json!([{"pg_tag": 1, "ig_tag": 1}, {"pg_tag": 2, "ig_tag": 5}]));
    }
}
