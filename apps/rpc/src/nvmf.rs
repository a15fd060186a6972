//! nvmf methods, with rpc.py's argument forms (SPDK's `scripts/rpc.py` and
//! the PyPI `spdk-rpc` accept the same command lines).

use clap::Subcommand;
use serde_json::{Value, json};

use crate::params::{o, obj, v};
use crate::{Request, Show};

/// The parts of a listen address, as rpc.py takes them.
#[derive(clap::Args, Debug)]
#[command(rename_all = "kebab-case")]
pub struct Address {
    /// NVMe-oF transport type: e.g. tcp
    #[arg(short = 't', long)]
    trtype: String,
    /// Transport address: an IP address
    #[arg(short = 'a', long)]
    traddr: String,
    /// Address family: ipv4 or ipv6
    #[arg(short = 'f', long)]
    adrfam: Option<String>,
    /// Transport service id: the port
    #[arg(short = 's', long)]
    trsvcid: Option<String>,
}

impl Address {
    fn json(&self) -> Value {
        obj(&[("trtype", v(&self.trtype)), ("traddr", v(&self.traddr)), ("adrfam", o(&self.adrfam)), ("trsvcid", o(&self.trsvcid))])
    }
}

/// rpc.py's method names are the command names, so every variant starts
/// with `Nvmf`.
#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)]
pub enum Cmd {
    /// Create an NVMe-oF transport (TCP)
    #[command(name = "nvmf_create_transport", rename_all = "kebab-case")]
    NvmfCreateTransport {
        #[arg(short = 't', long)]
        trtype: String,
        #[arg(short = 'g', long)]
        tgt_name: Option<String>,
        #[arg(short = 'q', long)]
        max_queue_depth: Option<u16>,
        #[arg(short = 'm', long)]
        max_io_qpairs_per_ctrlr: Option<u16>,
        #[arg(short = 'c', long)]
        in_capsule_data_size: Option<u32>,
        #[arg(short = 'i', long)]
        max_io_size: Option<u32>,
        #[arg(short = 'u', long)]
        io_unit_size: Option<u32>,
        #[arg(short = 'a', long)]
        max_aq_depth: Option<u32>,
        /// Disable the C2H success optimisation
        #[arg(short = 'o', long = "c2h-success")]
        no_c2h_success: bool,
        #[arg(short = 'z', long)]
        zcopy: bool,
        #[arg(short = 'f', long)]
        dif_insert_or_strip: bool,
        #[arg(short = 'y', long)]
        sock_priority: Option<u32>,
        #[arg(short = 'x', long)]
        abort_timeout_sec: Option<u32>,
        #[arg(long)]
        acceptor_poll_rate: Option<u32>,
        #[arg(long)]
        kas: Option<u16>,
        #[arg(long)]
        min_kato: Option<u32>,
        /// Comma-separated ONCS features to hide: nvmcmps, nvmdsmsv, nvmwzsv, reservs, nvmcpys, all
        #[arg(long, value_delimiter = ',')]
        masked_oncs: Option<Vec<String>>,
    },
    /// Show transports
    #[command(name = "nvmf_get_transports", rename_all = "kebab-case")]
    NvmfGetTransports {
        #[arg(long)]
        trtype: Option<String>,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Show subsystems (or one)
    #[command(name = "nvmf_get_subsystems", rename_all = "kebab-case")]
    NvmfGetSubsystems {
        nqn: Option<String>,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Create an NVM subsystem
    #[command(name = "nvmf_create_subsystem", rename_all = "kebab-case")]
    NvmfCreateSubsystem {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(short = 's', long)]
        serial_number: Option<String>,
        #[arg(short = 'd', long)]
        model_number: Option<String>,
        #[arg(short = 'a', long)]
        allow_any_host: bool,
        #[arg(short = 'm', long)]
        max_namespaces: Option<u32>,
        #[arg(short = 'r', long)]
        ana_reporting: bool,
        #[arg(short = 'i', long)]
        min_cntlid: Option<u16>,
        #[arg(short = 'I', long)]
        max_cntlid: Option<u16>,
        #[arg(long)]
        dmrsl: Option<u32>,
        #[arg(long)]
        wzsl: Option<u8>,
        #[arg(short = 'p', long)]
        passthrough: bool,
        #[arg(short = 'n', long)]
        enable_nssr: bool,
        #[arg(long)]
        admin_label: Option<String>,
    },
    /// Delete a subsystem
    #[command(name = "nvmf_delete_subsystem", rename_all = "kebab-case")]
    NvmfDeleteSubsystem {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Listen for a subsystem on an address ('discovery' for the discovery subsystem)
    #[command(name = "nvmf_subsystem_add_listener", rename_all = "kebab-case")]
    NvmfSubsystemAddListener {
        nqn: String,
        #[command(flatten)]
        address: Address,
        #[arg(short = 'p', long)]
        tgt_name: Option<String>,
        #[arg(short = 'k', long)]
        secure_channel: bool,
        #[arg(short = 'n', long)]
        ana_state: Option<String>,
        #[arg(short = 'S', long)]
        sock_impl: Option<String>,
    },
    /// Stop listening for a subsystem on an address
    #[command(name = "nvmf_subsystem_remove_listener", rename_all = "kebab-case")]
    NvmfSubsystemRemoveListener {
        nqn: String,
        #[command(flatten)]
        address: Address,
        #[arg(short = 'p', long)]
        tgt_name: Option<String>,
    },
    /// Set the ANA state of a listener, for one ANA group or all
    #[command(name = "nvmf_subsystem_listener_set_ana_state", rename_all = "kebab-case")]
    NvmfSubsystemListenerSetAnaState {
        nqn: String,
        #[arg(short = 'n', long, value_parser = ["optimized", "non_optimized", "inaccessible"])]
        ana_state: String,
        #[command(flatten)]
        address: Address,
        #[arg(short = 'p', long)]
        tgt_name: Option<String>,
        #[arg(short = 'g', long)]
        anagrpid: Option<u32>,
    },
    /// Move a namespace to another ANA group
    #[command(name = "nvmf_subsystem_set_ns_ana_group", rename_all = "kebab-case")]
    NvmfSubsystemSetNsAnaGroup {
        nqn: String,
        nsid: u32,
        anagrpid: u32,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Listeners of a subsystem
    #[command(name = "nvmf_subsystem_get_listeners", rename_all = "kebab-case")]
    NvmfSubsystemGetListeners {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Controllers of a subsystem
    #[command(name = "nvmf_subsystem_get_controllers", rename_all = "kebab-case")]
    NvmfSubsystemGetControllers {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Queue pairs of a subsystem, with their commands and bytes
    #[command(name = "nvmf_subsystem_get_qpairs", rename_all = "kebab-case")]
    NvmfSubsystemGetQpairs {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Commands, failures, bytes and queue pairs per subsystem and listener (Pollux's own)
    #[command(name = "nvmf_get_listener_stats", rename_all = "kebab-case")]
    NvmfGetListenerStats {
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Export a bdev as a namespace; prints the NSID
    #[command(name = "nvmf_subsystem_add_ns", rename_all = "kebab-case")]
    NvmfSubsystemAddNs {
        nqn: String,
        bdev_name: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(short = 'p', long)]
        ptpl_file: Option<String>,
        #[arg(short = 'n', long)]
        nsid: Option<u32>,
        #[arg(short = 'g', long)]
        nguid: Option<String>,
        #[arg(short = 'e', long)]
        eui64: Option<String>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'a', long)]
        anagrpid: Option<u32>,
        #[arg(short = 'i', long)]
        no_auto_visible: bool,
    },
    /// Remove a namespace
    #[command(name = "nvmf_subsystem_remove_ns", rename_all = "kebab-case")]
    NvmfSubsystemRemoveNs {
        nqn: String,
        nsid: u32,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Allow a host NQN
    #[command(name = "nvmf_subsystem_add_host", rename_all = "kebab-case")]
    NvmfSubsystemAddHost {
        nqn: String,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(long)]
        psk: Option<String>,
        #[arg(long)]
        dhchap_key: Option<String>,
        #[arg(long)]
        dhchap_ctrlr_key: Option<String>,
    },
    /// Disallow a host NQN (and disconnect it)
    #[command(name = "nvmf_subsystem_remove_host", rename_all = "kebab-case")]
    NvmfSubsystemRemoveHost {
        nqn: String,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(short = 'T', long)]
        timeout_ms: Option<u64>,
    },
    /// Make a namespace added with --no-auto-visible visible to a host's controllers
    #[command(name = "nvmf_ns_add_host", rename_all = "kebab-case")]
    NvmfNsAddHost {
        nqn: String,
        nsid: u32,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Hide a namespace added with --no-auto-visible from a host's controllers
    #[command(name = "nvmf_ns_remove_host", rename_all = "kebab-case")]
    NvmfNsRemoveHost {
        nqn: String,
        nsid: u32,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Let any host connect (--allow-any-host) or only listed ones (--no-allow-any-host)
    #[command(name = "nvmf_subsystem_allow_any_host", rename_all = "kebab-case")]
    NvmfSubsystemAllowAnyHost {
        nqn: String,
        #[arg(long, overrides_with = "no_allow_any_host")]
        allow_any_host: bool,
        #[arg(long)]
        no_allow_any_host: bool,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Queue pair statistics of every poll group
    #[command(name = "nvmf_get_stats", rename_all = "kebab-case")]
    NvmfGetStats {
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Add a discovery referral
    #[command(name = "nvmf_discovery_add_referral", rename_all = "kebab-case")]
    NvmfDiscoveryAddReferral {
        #[command(flatten)]
        address: Address,
        #[arg(short = 'p', long)]
        tgt_name: Option<String>,
        #[arg(short = 'k', long)]
        secure_channel: bool,
        #[arg(short = 'n', long)]
        subnqn: Option<String>,
    },
    /// Remove a discovery referral
    #[command(name = "nvmf_discovery_remove_referral", rename_all = "kebab-case")]
    NvmfDiscoveryRemoveReferral {
        #[command(flatten)]
        address: Address,
        #[arg(short = 'p', long)]
        tgt_name: Option<String>,
        #[arg(short = 'n', long)]
        subnqn: Option<String>,
    },
    /// Show discovery referrals
    #[command(name = "nvmf_discovery_get_referrals", rename_all = "kebab-case")]
    NvmfDiscoveryGetReferrals {
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
}

fn req(method: &'static str, pairs: &[(&str, Option<Value>)], show: Show) -> Request {
    Request { method, params: Some(obj(pairs)), show }
}

/// rpc.py's shortcut for the discovery subsystem.
fn nqn(n: &str) -> Option<Value> {
    Some(json!(if n == "discovery" { "nqn.2014-08.org.nvmexpress.discovery" } else { n }))
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        match self {
            NvmfCreateTransport {
                trtype,
                tgt_name,
                max_queue_depth,
                max_io_qpairs_per_ctrlr,
                in_capsule_data_size,
                max_io_size,
                io_unit_size,
                max_aq_depth,
                no_c2h_success,
                zcopy,
                dif_insert_or_strip,
                sock_priority,
                abort_timeout_sec,
                acceptor_poll_rate,
                kas,
                min_kato,
                masked_oncs,
            } => req(
                "nvmf_create_transport",
                &[
                    ("trtype", v(trtype)),
                    ("tgt_name", o(tgt_name)),
                    ("max_queue_depth", o(max_queue_depth)),
                    ("max_io_qpairs_per_ctrlr", o(max_io_qpairs_per_ctrlr)),
                    ("in_capsule_data_size", o(in_capsule_data_size)),
                    ("max_io_size", o(max_io_size)),
                    ("io_unit_size", o(io_unit_size)),
                    ("max_aq_depth", o(max_aq_depth)),
                    ("c2h_success", v(&!no_c2h_success)),
                    ("zcopy", v(zcopy)),
                    ("dif_insert_or_strip", v(dif_insert_or_strip)),
                    ("sock_priority", o(sock_priority)),
                    ("abort_timeout_sec", o(abort_timeout_sec)),
                    ("acceptor_poll_rate", o(acceptor_poll_rate)),
                    ("kas", o(kas)),
                    ("min_kato", o(min_kato)),
                    ("masked_oncs", o(masked_oncs)),
                ],
                Show::Nothing,
            ),
            NvmfGetTransports { trtype, tgt_name } => {
                req("nvmf_get_transports", &[("trtype", o(trtype)), ("tgt_name", o(tgt_name))], Show::Json)
            }
            NvmfGetSubsystems { nqn, tgt_name } => req("nvmf_get_subsystems", &[("nqn", o(nqn)), ("tgt_name", o(tgt_name))], Show::Json),
            NvmfCreateSubsystem {
                nqn,
                tgt_name,
                serial_number,
                model_number,
                allow_any_host,
                max_namespaces,
                ana_reporting,
                min_cntlid,
                max_cntlid,
                dmrsl,
                wzsl,
                passthrough,
                enable_nssr,
                admin_label,
            } => req(
                "nvmf_create_subsystem",
                &[
                    ("nqn", v(nqn)),
                    ("tgt_name", o(tgt_name)),
                    ("serial_number", o(serial_number)),
                    ("model_number", o(model_number)),
                    ("allow_any_host", v(allow_any_host)),
                    ("max_namespaces", o(max_namespaces)),
                    ("ana_reporting", v(ana_reporting)),
                    ("min_cntlid", o(min_cntlid)),
                    ("max_cntlid", o(max_cntlid)),
                    ("dmrsl", o(dmrsl)),
                    ("wzsl", o(wzsl)),
                    ("passthrough", v(passthrough)),
                    ("enable_nssr", v(enable_nssr)),
                    ("admin_label", o(admin_label)),
                ],
                Show::Nothing,
            ),
            NvmfDeleteSubsystem { nqn, tgt_name } => {
                req("nvmf_delete_subsystem", &[("nqn", v(nqn)), ("tgt_name", o(tgt_name))], Show::Nothing)
            }
            NvmfSubsystemAddListener { nqn: n, address, tgt_name, secure_channel, ana_state, sock_impl } => req(
                "nvmf_subsystem_add_listener",
                &[
                    ("nqn", nqn(n)),
                    ("listen_address", Some(address.json())),
                    ("tgt_name", o(tgt_name)),
                    ("secure_channel", v(secure_channel)),
                    ("ana_state", o(ana_state)),
                    ("sock_impl", o(sock_impl)),
                ],
                Show::Nothing,
            ),
            NvmfSubsystemRemoveListener { nqn: n, address, tgt_name } => req(
                "nvmf_subsystem_remove_listener",
                &[("nqn", nqn(n)), ("listen_address", Some(address.json())), ("tgt_name", o(tgt_name))],
                Show::Nothing,
            ),
            NvmfSubsystemListenerSetAnaState { nqn, ana_state, address, tgt_name, anagrpid } => req(
                "nvmf_subsystem_listener_set_ana_state",
                &[
                    ("nqn", v(nqn)),
                    ("listen_address", Some(address.json())),
                    ("ana_state", v(ana_state)),
                    ("tgt_name", o(tgt_name)),
                    ("anagrpid", o(anagrpid)),
                ],
                Show::Nothing,
            ),
            NvmfSubsystemSetNsAnaGroup { nqn, nsid, anagrpid, tgt_name } => req(
                "nvmf_subsystem_set_ns_ana_group",
                &[("nqn", v(nqn)), ("nsid", v(nsid)), ("anagrpid", v(anagrpid)), ("tgt_name", o(tgt_name))],
                Show::Nothing,
            ),
            NvmfSubsystemGetListeners { nqn, tgt_name } => {
                req("nvmf_subsystem_get_listeners", &[("nqn", v(nqn)), ("tgt_name", o(tgt_name))], Show::Json)
            }
            NvmfSubsystemGetQpairs { nqn, tgt_name } => {
                req("nvmf_subsystem_get_qpairs", &[("nqn", v(nqn)), ("tgt_name", o(tgt_name))], Show::Json)
            }
            NvmfGetListenerStats { tgt_name } => req("nvmf_get_listener_stats", &[("tgt_name", o(tgt_name))], Show::Json),
            NvmfSubsystemGetControllers { nqn, tgt_name } => {
                req("nvmf_subsystem_get_controllers", &[("nqn", v(nqn)), ("tgt_name", o(tgt_name))], Show::Json)
            }
            NvmfSubsystemAddNs { nqn, bdev_name, tgt_name, ptpl_file, nsid, nguid, eui64, uuid, anagrpid, no_auto_visible } => req(
                "nvmf_subsystem_add_ns",
                &[
                    ("nqn", v(nqn)),
                    ("tgt_name", o(tgt_name)),
                    (
                        "namespace",
                        Some(obj(&[
                            ("bdev_name", v(bdev_name)),
                            ("ptpl_file", o(ptpl_file)),
                            ("nsid", o(nsid)),
                            ("nguid", o(nguid)),
                            ("eui64", o(eui64)),
                            ("uuid", o(uuid)),
                            ("anagrpid", o(anagrpid)),
                            ("no_auto_visible", v(no_auto_visible)),
                        ])),
                    ),
                ],
                Show::Json,
            ),
            NvmfSubsystemRemoveNs { nqn, nsid, tgt_name } => {
                req("nvmf_subsystem_remove_ns", &[("nqn", v(nqn)), ("nsid", v(nsid)), ("tgt_name", o(tgt_name))], Show::Nothing)
            }
            NvmfSubsystemAddHost { nqn, host, tgt_name, psk, dhchap_key, dhchap_ctrlr_key } => req(
                "nvmf_subsystem_add_host",
                &[
                    ("nqn", v(nqn)),
                    ("host", v(host)),
                    ("tgt_name", o(tgt_name)),
                    ("psk", o(psk)),
                    ("dhchap_key", o(dhchap_key)),
                    ("dhchap_ctrlr_key", o(dhchap_ctrlr_key)),
                ],
                Show::Nothing,
            ),
            NvmfSubsystemRemoveHost { nqn, host, tgt_name, timeout_ms } => req(
                "nvmf_subsystem_remove_host",
                &[("nqn", v(nqn)), ("host", v(host)), ("tgt_name", o(tgt_name)), ("timeout_ms", o(timeout_ms))],
                Show::Nothing,
            ),
            NvmfNsAddHost { nqn, nsid, host, tgt_name } => {
                req("nvmf_ns_add_host", &[("nqn", v(nqn)), ("nsid", v(nsid)), ("host", v(host)), ("tgt_name", o(tgt_name))], Show::Nothing)
            }
            NvmfNsRemoveHost { nqn, nsid, host, tgt_name } => req(
                "nvmf_ns_remove_host",
                &[("nqn", v(nqn)), ("nsid", v(nsid)), ("host", v(host)), ("tgt_name", o(tgt_name))],
                Show::Nothing,
            ),
            NvmfSubsystemAllowAnyHost { nqn, allow_any_host, no_allow_any_host, tgt_name } => req(
                "nvmf_subsystem_allow_any_host",
                &[("nqn", v(nqn)), ("allow_any_host", v(&(*allow_any_host && !no_allow_any_host))), ("tgt_name", o(tgt_name))],
                Show::Nothing,
            ),
            NvmfGetStats { tgt_name } => req("nvmf_get_stats", &[("tgt_name", o(tgt_name))], Show::Json),
            NvmfDiscoveryAddReferral { address, tgt_name, secure_channel, subnqn } => req(
                "nvmf_discovery_add_referral",
                &[
                    ("address", Some(address.json())),
                    ("tgt_name", o(tgt_name)),
                    ("secure_channel", v(secure_channel)),
                    ("subnqn", subnqn.as_deref().and_then(nqn)),
                ],
                Show::Nothing,
            ),
            NvmfDiscoveryRemoveReferral { address, tgt_name, subnqn } => req(
                "nvmf_discovery_remove_referral",
                &[("address", Some(address.json())), ("tgt_name", o(tgt_name)), ("subnqn", subnqn.as_deref().and_then(nqn))],
                Show::Nothing,
            ),
            NvmfDiscoveryGetReferrals { tgt_name } => req("nvmf_discovery_get_referrals", &[("tgt_name", o(tgt_name))], Show::Json),
        }
    }
}
