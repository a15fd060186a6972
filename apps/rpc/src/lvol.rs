//! Logical-volume methods, with rpc.py's argument forms.

use clap::Subcommand;
use serde_json::Value;

use crate::params::{o, obj, v};
use crate::{Request, Show};

// The variants are the methods' names, which all start with bdev_lvol.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// Make an lvol store on a bdev; prints its UUID
    #[command(name = "bdev_lvol_create_lvstore", rename_all = "kebab-case")]
    BdevLvolCreateLvstore {
        bdev_name: String,
        lvs_name: String,
        /// Cluster size in bytes (default 4 MiB)
        #[arg(short = 'c', long = "cluster-sz")]
        cluster_sz: Option<u32>,
        /// none, unmap or write_zeroes (default unmap)
        #[arg(long)]
        clear_method: Option<String>,
        /// Metadata pages per cluster, in percent (default 100)
        #[arg(short = 'm', long = "md-pages-per-cluster-ratio")]
        num_md_pages_per_cluster_ratio: Option<u32>,
    },
    /// Destroy an lvol store and its lvols
    #[command(name = "bdev_lvol_delete_lvstore", rename_all = "kebab-case")]
    BdevLvolDeleteLvstore {
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'l', long)]
        lvs_name: Option<String>,
    },
    /// Grow an lvol store to fill its base bdev (which grew)
    #[command(name = "bdev_lvol_grow_lvstore", rename_all = "kebab-case")]
    BdevLvolGrowLvstore {
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'l', long)]
        lvs_name: Option<String>,
    },
    /// Lvol stores
    #[command(name = "bdev_lvol_get_lvstores", rename_all = "kebab-case")]
    BdevLvolGetLvstores {
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'l', long)]
        lvs_name: Option<String>,
    },
    /// Rename an lvol store
    #[command(name = "bdev_lvol_rename_lvstore", rename_all = "kebab-case")]
    BdevLvolRenameLvstore { old_name: String, new_name: String },
    /// Make an lvol; prints its bdev name
    #[command(name = "bdev_lvol_create", rename_all = "kebab-case")]
    BdevLvolCreate {
        lvol_name: String,
        size_in_mib: u64,
        #[arg(short = 't', long)]
        thin_provision: bool,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'l', long)]
        lvs_name: Option<String>,
        #[arg(short = 'c', long)]
        clear_method: Option<String>,
    },
    /// Snapshot an lvol; prints the snapshot's bdev name
    #[command(name = "bdev_lvol_snapshot", rename_all = "kebab-case")]
    BdevLvolSnapshot { lvol_name: String, snapshot_name: String },
    /// Clone a snapshot; prints the clone's bdev name
    #[command(name = "bdev_lvol_clone", rename_all = "kebab-case")]
    BdevLvolClone { snapshot_name: String, clone_name: String },
    /// Rename an lvol
    #[command(name = "bdev_lvol_rename", rename_all = "kebab-case")]
    BdevLvolRename { old_name: String, new_name: String },
    /// Resize an lvol to SIZE_IN_MIB
    #[command(name = "bdev_lvol_resize", rename_all = "kebab-case")]
    BdevLvolResize { name: String, size_in_mib: u64 },
    /// Make an lvol read-only
    #[command(name = "bdev_lvol_set_read_only", rename_all = "kebab-case")]
    BdevLvolSetReadOnly { name: String },
    /// Delete an lvol
    #[command(name = "bdev_lvol_delete", rename_all = "kebab-case")]
    BdevLvolDelete { name: String },
    /// Make a thin lvol a clone of a snapshot of its size
    #[command(name = "bdev_lvol_set_parent", rename_all = "kebab-case")]
    BdevLvolSetParent { lvol_name: String, parent_name: String },
    /// Allocate every cluster of an lvol and drop its parent
    #[command(name = "bdev_lvol_inflate", rename_all = "kebab-case")]
    BdevLvolInflate { name: String },
    /// Allocate the clusters an lvol's parents have, then drop its parent
    #[command(name = "bdev_lvol_decouple_parent", rename_all = "kebab-case")]
    BdevLvolDecoupleParent { name: String },
    /// Lvols, of every store or of one
    #[command(name = "bdev_lvol_get_lvols", rename_all = "kebab-case")]
    BdevLvolGetLvols {
        #[arg(short = 'u', long)]
        lvs_uuid: Option<String>,
        #[arg(short = 'l', long)]
        lvs_name: Option<String>,
    },
}

fn req(method: &'static str, pairs: &[(&str, Option<Value>)], show: Show) -> Request {
    Request { method, params: Some(obj(pairs)), show }
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        match self {
            BdevLvolCreateLvstore { bdev_name, lvs_name, cluster_sz, clear_method, num_md_pages_per_cluster_ratio } => req(
                "bdev_lvol_create_lvstore",
                &[
                    ("bdev_name", v(bdev_name)),
                    ("lvs_name", v(lvs_name)),
                    ("cluster_sz", o(cluster_sz)),
                    ("clear_method", o(clear_method)),
                    ("num_md_pages_per_cluster_ratio", o(num_md_pages_per_cluster_ratio)),
                ],
                Show::Text,
            ),
            BdevLvolDeleteLvstore { uuid, lvs_name } => {
                req("bdev_lvol_delete_lvstore", &[("uuid", o(uuid)), ("lvs_name", o(lvs_name))], Show::Nothing)
            }
            BdevLvolGrowLvstore { uuid, lvs_name } => {
                req("bdev_lvol_grow_lvstore", &[("uuid", o(uuid)), ("lvs_name", o(lvs_name))], Show::Nothing)
            }
            BdevLvolGetLvstores { uuid, lvs_name } => {
                req("bdev_lvol_get_lvstores", &[("uuid", o(uuid)), ("lvs_name", o(lvs_name))], Show::Json)
            }
            BdevLvolRenameLvstore { old_name, new_name } => {
                req("bdev_lvol_rename_lvstore", &[("old_name", v(old_name)), ("new_name", v(new_name))], Show::Nothing)
            }
            BdevLvolCreate { lvol_name, size_in_mib, thin_provision, uuid, lvs_name, clear_method } => req(
                "bdev_lvol_create",
                &[
                    ("lvol_name", v(lvol_name)),
                    ("size_in_mib", v(size_in_mib)),
                    ("thin_provision", v(thin_provision)),
                    ("uuid", o(uuid)),
                    ("lvs_name", o(lvs_name)),
                    ("clear_method", o(clear_method)),
                ],
                Show::Text,
            ),
            BdevLvolSnapshot { lvol_name, snapshot_name } => {
                req("bdev_lvol_snapshot", &[("lvol_name", v(lvol_name)), ("snapshot_name", v(snapshot_name))], Show::Text)
            }
            BdevLvolClone { snapshot_name, clone_name } => {
                req("bdev_lvol_clone", &[("snapshot_name", v(snapshot_name)), ("clone_name", v(clone_name))], Show::Text)
            }
            BdevLvolRename { old_name, new_name } => {
                req("bdev_lvol_rename", &[("old_name", v(old_name)), ("new_name", v(new_name))], Show::Nothing)
            }
            BdevLvolResize { name, size_in_mib } => {
                req("bdev_lvol_resize", &[("name", v(name)), ("size_in_mib", v(size_in_mib))], Show::Nothing)
            }
            BdevLvolSetReadOnly { name } => req("bdev_lvol_set_read_only", &[("name", v(name))], Show::Nothing),
            BdevLvolDelete { name } => req("bdev_lvol_delete", &[("name", v(name))], Show::Nothing),
            BdevLvolSetParent { lvol_name, parent_name } => {
                req("bdev_lvol_set_parent", &[("lvol_name", v(lvol_name)), ("parent_name", v(parent_name))], Show::Nothing)
            }
            BdevLvolInflate { name } => req("bdev_lvol_inflate", &[("name", v(name))], Show::Nothing),
            BdevLvolDecoupleParent { name } => req("bdev_lvol_decouple_parent", &[("name", v(name))], Show::Nothing),
            BdevLvolGetLvols { lvs_uuid, lvs_name } => {
                req("bdev_lvol_get_lvols", &[("lvs_uuid", o(lvs_uuid)), ("lvs_name", o(lvs_name))], Show::Json)
            }
        }
    }
}
