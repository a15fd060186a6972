//! The `nbd_*` methods (bdevs as the kernel's `/dev/nbdX`), with rpc.py's
//! argument forms.

use clap::Subcommand;
use serde_json::json;

use crate::{Request, Show};

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // rpc.py's names, every one nbd_*
pub enum Cmd {
    /// Export a bdev as an nbd disk; prints the device
    #[command(name = "nbd_start_disk", rename_all = "kebab-case")]
    NbdStartDisk {
        /// Name of the bdev to export
        bdev_name: String,
        /// Path to the NBD device, e.g. /dev/nbd0 (default: the first free one)
        nbd_device: Option<String>,
    },
    /// Stop an nbd disk
    #[command(name = "nbd_stop_disk", rename_all = "kebab-case")]
    NbdStopDisk {
        /// Path to the NBD device, e.g. /dev/nbd0
        nbd_device: String,
    },
    /// Show the nbd disks (all, or one)
    #[command(name = "nbd_get_disks", rename_all = "kebab-case")]
    NbdGetDisks {
        /// Path to the NBD device, e.g. /dev/nbd0 (default: all)
        #[arg(short = 'n', long)]
        nbd_device: Option<String>,
    },
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        match self {
            NbdStartDisk { bdev_name, nbd_device } => {
                let mut p = json!({"bdev_name": bdev_name});
                if let Some(d) = nbd_device {
                    p["nbd_device"] = json!(d);
                }
                Request { method: "nbd_start_disk", params: Some(p), show: Show::Text }
            }
            NbdStopDisk { nbd_device } => {
                Request { method: "nbd_stop_disk", params: Some(json!({"nbd_device": nbd_device})), show: Show::Nothing }
            }
            NbdGetDisks { nbd_device } => {
                Request { method: "nbd_get_disks", params: nbd_device.as_ref().map(|d| json!({"nbd_device": d})), show: Show::Json }
            }
        }
    }
}
