//! bdev_nvme methods, with rpc.py's argument forms.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::params::obj;
use crate::{Request, Show};

/// Variants are named after the RPC methods (rpc.py's subcommands).
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// Attach an NVMe controller and create a bdev per namespace:
    /// bdev_nvme_attach_controller -b NAME -t PCIe -a 0000:00:04.0
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
    BdevNvmeDetachController {
        name: String,
        #[arg(short = 't', long)]
        trtype: Option<String>,
        #[arg(short = 'a', long)]
        traddr: Option<String>,
    },
    /// List NVMe controllers (or one)
    BdevNvmeGetControllers {
        #[arg(short = 'n', long)]
        name: Option<String>,
    },
    /// Reset an NVMe controller
    BdevNvmeResetController {
        name: String,
        #[arg(short = 'c', long)]
        cntlid: Option<u16>,
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
            Cmd::BdevNvmeResetController { name, cntlid } => {
                let p = obj(&[("name", Some(json!(name))), ("cntlid", cntlid.map(|c| json!(c)))]);
                req("bdev_nvme_reset_controller", Some(p), Show::Json)
            }
        }
    }
}
