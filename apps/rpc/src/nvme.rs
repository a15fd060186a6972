//! bdev_nvme methods, with rpc.py's argument forms.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::params::{o, obj};
use crate::{Request, Show};

/// Variants are named after the RPC methods (rpc.py's subcommands).
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// Attach an NVMe controller and create a bdev per namespace:
    /// bdev_nvme_attach_controller -b NAME -t PCIe -a 0000:00:04.0
    #[command(name = "bdev_nvme_attach_controller", rename_all = "kebab-case")]
    BdevNvmeAttachController {
        /// Name of the controller, prefix of each bdev name
        #[arg(short = 'b', long)]
        name: String,
        /// Transport type (PCIe)
        #[arg(short = 't', long)]
        trtype: String,
        /// Transport address (a PCI address for PCIe)
        #[arg(short = 'a', long)]
        traddr: String,
        #[arg(short = 'f', long)]
        adrfam: Option<String>,
        #[arg(short = 's', long)]
        trsvcid: Option<String>,
        #[arg(short = 'n', long)]
        subnqn: Option<String>,
        #[arg(short = 'q', long)]
        hostnqn: Option<String>,
        #[arg(short = 'i', long)]
        hostaddr: Option<String>,
        #[arg(short = 'c', long)]
        hostsvcid: Option<String>,
        #[arg(short = 'x', long, value_parser = ["disable", "failover", "multipath"])]
        multipath: Option<String>,
        /// I/O queues to request from the controller
        #[arg(long)]
        num_io_queues: Option<u32>,
        #[arg(short = 'm', long)]
        max_bdevs: Option<u32>,
    },
    /// Detach an NVMe controller and delete its bdevs
    #[command(name = "bdev_nvme_detach_controller", rename_all = "kebab-case")]
    BdevNvmeDetachController {
        name: String,
        #[arg(short = 't', long)]
        trtype: Option<String>,
        #[arg(short = 'a', long)]
        traddr: Option<String>,
    },
    /// List NVMe controllers (or one)
    #[command(name = "bdev_nvme_get_controllers", rename_all = "kebab-case")]
    BdevNvmeGetControllers {
        #[arg(short = 'n', long)]
        name: Option<String>,
    },
    /// Show an NVMe controller's health (SMART) log
    #[command(name = "bdev_nvme_get_controller_health_info", rename_all = "kebab-case")]
    BdevNvmeGetControllerHealthInfo {
        /// Name of the NVMe bdev controller, e.g. Nvme0
        #[arg(short = 'c', long)]
        name: String,
    },
    /// Reset an NVMe controller
    #[command(name = "bdev_nvme_reset_controller", rename_all = "kebab-case")]
    BdevNvmeResetController {
        name: String,
        #[arg(short = 'c', long)]
        cntlid: Option<u16>,
    },
    /// Set the nvme module's options (before any controller is attached);
    /// the PCIe-related ones of rpc.py's, others through `call`
    #[command(name = "bdev_nvme_set_options", rename_all = "kebab-case")]
    BdevNvmeSetOptions {
        /// Action on a command timeout
        #[arg(short = 'a', long, value_parser = ["none", "reset", "abort"])]
        action_on_timeout: Option<String>,
        /// Timeout for each I/O command in microseconds (0: none)
        #[arg(short = 't', long)]
        timeout_us: Option<u64>,
        /// Timeout for each admin command in microseconds (0: as I/O)
        #[arg(long)]
        timeout_admin_us: Option<u64>,
        #[arg(short = 'k', long)]
        keep_alive_timeout_ms: Option<u32>,
        /// How often each controller's health is checked
        #[arg(short = 'p', long)]
        nvme_adminq_poll_period_us: Option<u64>,
        /// How often I/O queues are polled (0: every reactor iteration)
        #[arg(short = 'i', long)]
        nvme_ioq_poll_period_us: Option<u64>,
        #[arg(short = 's', long)]
        io_queue_requests: Option<u32>,
        #[arg(short = 'r', long)]
        bdev_retry_count: Option<i32>,
        /// Give namespaces without an NGUID a UUID derived from the serial
        /// number and namespace id
        #[arg(long)]
        generate_uuids: bool,
    },
    /// Turn hot insertion on or off: bdev_nvme_set_hotplug --hotplug [-r PERIOD_US]
    #[command(name = "bdev_nvme_set_hotplug", rename_all = "kebab-case")]
    BdevNvmeSetHotplug {
        #[arg(long, conflicts_with = "no_hotplug")]
        hotplug: bool,
        #[arg(long)]
        no_hotplug: bool,
        /// How often new controllers are looked for
        #[arg(short = 'r', long)]
        period_us: Option<u64>,
    },
}

impl Cmd {
    pub fn request(&self) -> Request {
        let req = |method, params: Option<Value>, show| Request { method, params, show };
        match self {
            Cmd::BdevNvmeAttachController {
                name,
                trtype,
                traddr,
                adrfam,
                trsvcid,
                subnqn,
                hostnqn,
                hostaddr,
                hostsvcid,
                multipath,
                num_io_queues,
                max_bdevs,
            } => {
                let s = |v: &Option<String>| v.as_ref().map(|x| json!(x));
                let p = obj(&[
                    ("name", Some(json!(name))),
                    ("trtype", Some(json!(trtype))),
                    ("traddr", Some(json!(traddr))),
                    ("adrfam", s(adrfam)),
                    ("trsvcid", s(trsvcid)),
                    ("subnqn", s(subnqn)),
                    ("hostnqn", s(hostnqn)),
                    ("hostaddr", s(hostaddr)),
                    ("hostsvcid", s(hostsvcid)),
                    ("multipath", s(multipath)),
                    ("num_io_queues", num_io_queues.map(|n| json!(n))),
                    ("max_bdevs", max_bdevs.map(|n| json!(n))),
                ]);
                req("bdev_nvme_attach_controller", Some(p), Show::Json)
            }
            Cmd::BdevNvmeDetachController { name, trtype, traddr } => {
                let p = obj(&[
                    ("name", Some(json!(name))),
                    ("trtype", trtype.as_ref().map(|v| json!(v))),
                    ("traddr", traddr.as_ref().map(|v| json!(v))),
                ]);
                req("bdev_nvme_detach_controller", Some(p), Show::Nothing)
            }
            Cmd::BdevNvmeGetControllers { name } => req("bdev_nvme_get_controllers", name.as_ref().map(|n| json!({"name": n})), Show::Json),
            Cmd::BdevNvmeGetControllerHealthInfo { name } => {
                req("bdev_nvme_get_controller_health_info", Some(json!({"name": name})), Show::Json)
            }
            Cmd::BdevNvmeResetController { name, cntlid } => {
                let p = obj(&[("name", Some(json!(name))), ("cntlid", cntlid.map(|c| json!(c)))]);
                req("bdev_nvme_reset_controller", Some(p), Show::Json)
            }
            Cmd::BdevNvmeSetOptions {
                action_on_timeout,
                timeout_us,
                timeout_admin_us,
                keep_alive_timeout_ms,
                nvme_adminq_poll_period_us,
                nvme_ioq_poll_period_us,
                io_queue_requests,
                bdev_retry_count,
                generate_uuids,
            } => {
                let p = obj(&[
                    ("action_on_timeout", o(action_on_timeout)),
                    ("timeout_us", o(timeout_us)),
                    ("timeout_admin_us", o(timeout_admin_us)),
                    ("keep_alive_timeout_ms", o(keep_alive_timeout_ms)),
                    ("nvme_adminq_poll_period_us", o(nvme_adminq_poll_period_us)),
                    ("nvme_ioq_poll_period_us", o(nvme_ioq_poll_period_us)),
                    ("io_queue_requests", o(io_queue_requests)),
                    ("bdev_retry_count", o(bdev_retry_count)),
                    ("generate_uuids", generate_uuids.then(|| json!(true))),
                ]);
                req("bdev_nvme_set_options", Some(p), Show::Json)
            }
            Cmd::BdevNvmeSetHotplug { hotplug, no_hotplug: _, period_us } => {
                let p = obj(&[("enable", Some(json!(hotplug))), ("period_us", o(period_us))]);
                req("bdev_nvme_set_hotplug", Some(p), Show::Json)
            }
        }
    }
}
