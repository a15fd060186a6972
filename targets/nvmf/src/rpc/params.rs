//! RPC parameter types: every parameter SPDK's schema defines for the
//! methods implemented, so SPDK's client (which sends the newest optional
//! ones) is understood; values the target cannot honour are refused with a
//! message naming them.

use serde::Deserialize;
use serde_json::Value;

use crate::NvmfError;
use crate::transport::{ListenAddress, TransportOpts};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TgtOnly {
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMaxSubsystems {
    pub max_subsystems: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Admin commands to pass through to an NVMe namespace's controller.
    pub admin_cmd_passthru: Option<serde_json::Map<String, Value>>,
    pub poll_groups_mask: Option<String>,
    /// Deprecated form: "match_any" or a comma-separated list.
    pub discovery_filter: Option<String>,
    pub discovery_filters: Option<Vec<String>>,
    pub dhchap_digests: Option<Vec<String>>,
    pub dhchap_dhgroups: Option<Vec<String>>,
    pub dup_host_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCrdt {
    #[serde(default)]
    pub crdt1: u16,
    #[serde(default)]
    pub crdt2: u16,
    #[serde(default)]
    pub crdt3: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetTransports {
    pub tgt_name: Option<String>,
    pub trtype: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTransport {
    pub trtype: String,
    pub tgt_name: Option<String>,
    pub max_queue_depth: Option<u16>,
    pub max_io_qpairs_per_ctrlr: Option<u16>,
    pub in_capsule_data_size: Option<u32>,
    pub max_io_size: Option<u32>,
    pub io_unit_size: Option<u32>,
    pub max_aq_depth: Option<u32>,
    /// Deprecated in SPDK (iobuf pools size the buffers): accepted, unused.
    #[serde(rename = "num_shared_buffers")]
    pub _num_shared_buffers: Option<u32>,
    #[serde(rename = "buf_cache_size")]
    pub _buf_cache_size: Option<u32>,
    #[serde(rename = "iobuf_small_cache_size")]
    pub _iobuf_small_cache_size: Option<u32>,
    #[serde(rename = "iobuf_large_cache_size")]
    pub _iobuf_large_cache_size: Option<u32>,
    #[serde(default)]
    pub zcopy: bool,
    /// RDMA only: accepted and ignored for TCP, as SPDK does.
    #[serde(rename = "num_cqe")]
    pub _num_cqe: Option<i32>,
    pub max_srq_depth: Option<u32>,
    #[serde(default)]
    pub no_srq: bool,
    pub c2h_success: Option<bool>,
    #[serde(default)]
    pub dif_insert_or_strip: bool,
    pub sock_priority: Option<u32>,
    pub acceptor_backlog: Option<i32>,
    pub abort_timeout_sec: Option<u32>,
    #[serde(default)]
    #[serde(rename = "no_wr_batching")]
    pub _no_wr_batching: bool,
    #[serde(rename = "control_msg_num")]
    pub _control_msg_num: Option<u16>,
    /// VFIO-USER only: accepted and ignored for TCP.
    #[serde(default)]
    #[serde(rename = "disable_mappable_bar0")]
    pub _disable_mappable_bar0: bool,
    #[serde(default)]
    #[serde(rename = "disable_adaptive_irq")]
    pub _disable_adaptive_irq: bool,
    #[serde(default)]
    #[serde(rename = "disable_shadow_doorbells")]
    pub _disable_shadow_doorbells: bool,
    pub acceptor_poll_rate: Option<u32>,
    #[serde(rename = "ack_timeout")]
    pub _ack_timeout: Option<u32>,
    #[serde(rename = "data_wr_pool_size")]
    pub _data_wr_pool_size: Option<u32>,
    /// Commands are never passed through here, so this changes nothing.
    #[serde(default)]
    #[serde(rename = "disable_command_passthru")]
    pub _disable_command_passthru: bool,
    pub kas: Option<u16>,
    pub min_kato: Option<u32>,
    pub masked_oncs: Option<Value>,
    pub masked_fuses: Option<Value>,
    pub connect_timeout_sec: Option<u32>,
    pub max_connections_per_listener: Option<u32>,
}

/// A bitmask given as a number or as a list of names.
fn bitmask(v: &Value, names: &[(&str, u32)], what: &str) -> Result<u32, NvmfError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| NvmfError::InvalidParam(format!("{what}: {n} is not a valid mask"))),
        Value::Array(items) => {
            let mut m = 0;
            for i in items {
                let name = i.as_str().ok_or_else(|| NvmfError::InvalidParam(format!("{what}: {i} is not a name")))?;
                if name == "all" {
                    m |= names.iter().fold(0, |a, (_, b)| a | b);
                    continue;
                }
                let bit = names
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or_else(|| NvmfError::InvalidParam(format!("{what}: unknown value {name}")))?
                    .1;
                m |= bit;
            }
            Ok(m)
        }
        Value::String(s) => bitmask(&Value::Array(s.split(',').map(|x| Value::String(x.trim().into())).collect()), names, what),
        _ => Err(NvmfError::InvalidParam(format!("{what} must be a number or a list of names"))),
    }
}

impl CreateTransport {
    pub fn into_opts(self) -> Result<TransportOpts, NvmfError> {
        if self.zcopy {
            return Err(NvmfError::Unsupported("zcopy is not supported by the Pollux TCP transport".into()));
        }
        if self.dif_insert_or_strip {
            return Err(NvmfError::Unsupported("dif_insert_or_strip is not supported (no bdev has protection information)".into()));
        }
        let d = TransportOpts::default();
        let mut o = TransportOpts {
            max_queue_depth: self.max_queue_depth.unwrap_or(d.max_queue_depth),
            max_io_qpairs_per_ctrlr: self.max_io_qpairs_per_ctrlr.unwrap_or(d.max_io_qpairs_per_ctrlr),
            in_capsule_data_size: self.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
            max_io_size: self.max_io_size.unwrap_or(d.max_io_size),
            io_unit_size: self.io_unit_size.unwrap_or(d.io_unit_size),
            max_aq_depth: self.max_aq_depth.unwrap_or(d.max_aq_depth),
            c2h_success: self.c2h_success.unwrap_or(d.c2h_success),
            sock_priority: self.sock_priority.unwrap_or(d.sock_priority),
            abort_timeout_sec: self.abort_timeout_sec.unwrap_or(d.abort_timeout_sec),
            acceptor_poll_rate: self.acceptor_poll_rate.unwrap_or(d.acceptor_poll_rate),
            kas: self.kas.unwrap_or(d.kas),
            min_kato: self.min_kato.unwrap_or(d.min_kato),
            masked_oncs: 0,
            connect_timeout_sec: self.connect_timeout_sec.unwrap_or(d.connect_timeout_sec),
            max_connections_per_listener: self.max_connections_per_listener.unwrap_or(d.max_connections_per_listener),
            max_srq_depth: self.max_srq_depth.unwrap_or(d.max_srq_depth),
            no_srq: self.no_srq,
            acceptor_backlog: self.acceptor_backlog.unwrap_or(d.acceptor_backlog),
        };
        if let Some(m) = &self.masked_oncs {
            // nvmcmps, nvmdsmsv, nvmwzsv, reservs, nvmcpys: ONCS bits 0, 2, 3, 5, 8.
            let names = [("nvmcmps", 1 << 0), ("nvmdsmsv", 1 << 2), ("nvmwzsv", 1 << 3), ("reservs", 1 << 5), ("nvmcpys", 1 << 8)];
            o.masked_oncs = bitmask(m, &names, "masked_oncs")? as u16;
        }
        if let Some(m) = &self.masked_fuses {
            // Fused compare-and-write is never offered, so masking it is moot.
            bitmask(m, &[("fcws", 1)], "masked_fuses")?;
        }
        Ok(o)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystem {
    pub nqn: String,
    pub tgt_name: Option<String>,
    pub serial_number: Option<String>,
    pub model_number: Option<String>,
    pub admin_label: Option<String>,
    pub max_namespaces: Option<u32>,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub ana_reporting: bool,
    pub min_cntlid: Option<u16>,
    pub max_cntlid: Option<u16>,
    pub dmrsl: Option<u32>,
    pub wzsl: Option<u8>,
    #[serde(default)]
    pub passthrough: bool,
    #[serde(default)]
    pub enable_nssr: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemNqn {
    pub nqn: String,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSubsystems {
    pub nqn: Option<String>,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddListener {
    pub nqn: String,
    pub tgt_name: Option<String>,
    pub listen_address: ListenAddress,
    #[serde(default)]
    pub secure_channel: bool,
    pub ana_state: Option<String>,
    pub sock_impl: Option<String>,
    #[serde(rename = "numa_id")]
    pub _numa_id: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveListener {
    pub nqn: String,
    pub tgt_name: Option<String>,
    pub listen_address: ListenAddress,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSetAnaState {
    pub nqn: String,
    pub tgt_name: Option<String>,
    pub listen_address: ListenAddress,
    pub ana_state: String,
    pub anagrpid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNsAnaGroup {
    pub nqn: String,
    pub nsid: u32,
    pub anagrpid: u32,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceParams {
    pub nsid: Option<u32>,
    pub bdev_name: String,
    pub nguid: Option<String>,
    pub eui64: Option<String>,
    pub uuid: Option<String>,
    pub ptpl_file: Option<String>,
    pub anagrpid: Option<u32>,
    #[serde(default)]
    pub no_auto_visible: bool,
    #[serde(default)]
    pub hide_metadata: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNs {
    pub nqn: String,
    pub namespace: NamespaceParams,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNs {
    pub nqn: String,
    pub nsid: u32,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddHost {
    pub nqn: String,
    pub host: String,
    pub tgt_name: Option<String>,
    pub psk: Option<String>,
    pub dhchap_key: Option<String>,
    pub dhchap_ctrlr_key: Option<String>,
}

/// `nvmf_ns_add_host`, `nvmf_ns_remove_host`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsHost {
    pub nqn: String,
    pub nsid: u32,
    pub host: String,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveHost {
    pub nqn: String,
    pub host: String,
    pub tgt_name: Option<String>,
    #[serde(rename = "timeout_ms")]
    pub _timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAnyHost {
    pub nqn: String,
    pub allow_any_host: bool,
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralParams {
    pub tgt_name: Option<String>,
    pub address: ListenAddress,
    #[serde(default)]
    pub secure_channel: bool,
    pub subnqn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveReferral {
    pub tgt_name: Option<String>,
    pub address: ListenAddress,
    pub subnqn: Option<String>,
}

/// Parse `n` bytes given in hexadecimal (dashes allowed, as in UUIDs).
pub fn parse_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], NvmfError> {
    let digits: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    let bad = || NvmfError::InvalidParam(format!("{what} \"{s}\" is not {N} bytes in hexadecimal"));
    if digits.len() != 2 * N {
        return Err(bad());
    }
    // `hex` takes only hex digits (`from_str_radix` also took a `+`).
    let mut out = [0u8; N];
    hex::decode_to_slice(&digits, &mut out).map_err(|_| bad())?;
    Ok(out)
}
