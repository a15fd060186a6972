//! bdev and iobuf methods, with rpc.py's argument forms.

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::{Request, Show};

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// Create a RAM disk: bdev_malloc_create [-b NAME] [-u UUID] SIZE_MB BLOCK_SIZE
    #[command(name = "bdev_malloc_create", rename_all = "kebab-case")]
    BdevMallocCreate {
        #[arg(short = 'b', long)]
        name: Option<String>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        /// Size in MiB
        total_size: f64,
        block_size: u32,
        #[arg(short = 'o', long)]
        optimal_io_boundary: Option<u32>,
    },
    /// Delete a malloc bdev
    #[command(name = "bdev_malloc_delete", rename_all = "kebab-case")]
    BdevMallocDelete { name: String },
    /// Create a null bdev: bdev_null_create NAME SIZE_MB BLOCK_SIZE
    #[command(name = "bdev_null_create", rename_all = "kebab-case")]
    BdevNullCreate {
        name: String,
        /// Size in MiB
        total_size: u64,
        block_size: u32,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a null bdev
    #[command(name = "bdev_null_delete", rename_all = "kebab-case")]
    BdevNullDelete { name: String },
    /// Create a bdev on a file or block device through io_uring
    #[command(name = "bdev_uring_create", rename_all = "kebab-case")]
    BdevUringCreate {
        filename: String,
        name: String,
        block_size: Option<u32>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a uring bdev
    #[command(name = "bdev_uring_delete", rename_all = "kebab-case")]
    BdevUringDelete { name: String },
    /// Create a bdev on a file or block device (served by io_uring)
    #[command(name = "bdev_aio_create", rename_all = "kebab-case")]
    BdevAioCreate {
        filename: String,
        name: String,
        block_size: Option<u32>,
        #[arg(short = 'r', long)]
        readonly: bool,
        #[arg(long)]
        fallocate: bool,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete an aio bdev
    #[command(name = "bdev_aio_delete", rename_all = "kebab-case")]
    BdevAioDelete { name: String },
    /// List bdevs (or one)
    #[command(name = "bdev_get_bdevs", rename_all = "kebab-case")]
    BdevGetBdevs {
        #[arg(short = 'b', long)]
        name: Option<String>,
        /// Milliseconds to wait for the bdev to appear
        #[arg(short = 't', long = "timeout-ms")]
        timeout: Option<u64>,
    },
    /// I/O statistics of all bdevs (or some)
    #[command(name = "bdev_get_iostat", rename_all = "kebab-case")]
    BdevGetIostat {
        #[arg(short = 'c', long)]
        per_channel: bool,
        #[arg(long, value_parser = ["all", "maxmin", "error", "none"])]
        reset_mode: Option<String>,
        /// Comma-separated bdev names
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
    },
    /// Reset I/O statistics
    #[command(name = "bdev_reset_iostat", rename_all = "kebab-case")]
    BdevResetIostat {
        #[arg(short = 'b', long)]
        name: Option<String>,
        #[arg(short = 'm', long, value_parser = ["all", "maxmin", "error", "none"])]
        mode: Option<String>,
    },
    /// Turn the latency histogram of a bdev on or off
    #[command(name = "bdev_enable_histogram", rename_all = "kebab-case")]
    BdevEnableHistogram {
        name: String,
        /// Turn the histogram on
        #[arg(long, required_unless_present = "no_histogram", conflicts_with = "no_histogram")]
        histogram: bool,
        /// Turn the histogram off
        #[arg(long)]
        no_histogram: bool,
    },
    /// Show the latency histogram of a bdev
    #[command(name = "bdev_get_histogram", rename_all = "kebab-case")]
    BdevGetHistogram { name: String },
    /// Wait until bdev examination has finished
    BdevWaitForExamine,
    /// Size the buffer pools (before framework_start_init)
    #[command(name = "iobuf_set_options", rename_all = "kebab-case")]
    IobufSetOptions {
        #[arg(long)]
        small_pool_count: Option<u64>,
        #[arg(long)]
        large_pool_count: Option<u64>,
        #[arg(long)]
        small_bufsize: Option<u32>,
        #[arg(long)]
        large_bufsize: Option<u32>,
    },
    /// Buffer pool statistics
    IobufGetStats,
}

/// An object of the parameters that are set.
fn params(pairs: &[(&str, Option<Value>)]) -> Option<Value> {
    let m: Map<String, Value> = pairs.iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect();
    Some(Value::Object(m))
}

fn req(method: &'static str, params: Option<Value>, show: Show) -> Request {
    Request { method, params, show }
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        let j = |v: &dyn erased::ToJson| Some(v.to_json());
        match self {
            BdevMallocCreate { name, uuid, total_size, block_size, optimal_io_boundary } => {
                let num_blocks = ((total_size * 1024.0 * 1024.0) as u64) / (*block_size).max(1) as u64;
                req(
                    "bdev_malloc_create",
                    params(&[
                        ("name", name.as_ref().map(|n| json!(n))),
                        ("uuid", uuid.as_ref().map(|u| json!(u))),
                        ("num_blocks", j(&num_blocks)),
                        ("block_size", j(block_size)),
                        ("optimal_io_boundary", optimal_io_boundary.map(|o| json!(o))),
                    ]),
                    Show::Text,
                )
            }
            BdevMallocDelete { name } => req("bdev_malloc_delete", Some(json!({"name": name})), Show::Nothing),
            BdevNullCreate { name, total_size, block_size, uuid } => {
                let num_blocks = total_size * 1024 * 1024 / (*block_size).max(1) as u64;
                req(
                    "bdev_null_create",
                    params(&[("name", j(name)), ("num_blocks", j(&num_blocks)), ("block_size", j(block_size)), ("uuid", uuid.as_ref().map(|u| json!(u)))]),
                    Show::Text,
                )
            }
            BdevNullDelete { name } => req("bdev_null_delete", Some(json!({"name": name})), Show::Nothing),
            BdevUringCreate { filename, name, block_size, uuid } => req(
                "bdev_uring_create",
                params(&[("filename", j(filename)), ("name", j(name)), ("block_size", block_size.map(|b| json!(b))), ("uuid", uuid.as_ref().map(|u| json!(u)))]),
                Show::Text,
            ),
            BdevUringDelete { name } => req("bdev_uring_delete", Some(json!({"name": name})), Show::Nothing),
            BdevAioCreate { filename, name, block_size, readonly, fallocate, uuid } => req(
                "bdev_aio_create",
                params(&[
                    ("filename", j(filename)),
                    ("name", j(name)),
                    ("block_size", block_size.map(|b| json!(b))),
                    ("readonly", readonly.then_some(json!(true))),
                    ("fallocate", fallocate.then_some(json!(true))),
                    ("uuid", uuid.as_ref().map(|u| json!(u))),
                ]),
                Show::Text,
            ),
            BdevAioDelete { name } => req("bdev_aio_delete", Some(json!({"name": name})), Show::Nothing),
            BdevGetBdevs { name, timeout } => {
                req("bdev_get_bdevs", params(&[("name", name.as_ref().map(|n| json!(n))), ("timeout", timeout.map(|t| json!(t)))]), Show::Json)
            }
            BdevGetIostat { per_channel, reset_mode, names } => req(
                "bdev_get_iostat",
                params(&[
                    ("per_channel", per_channel.then_some(json!(true))),
                    ("reset_mode", reset_mode.as_ref().map(|m| json!(m))),
                    ("names", names.as_ref().map(|n| json!(n))),
                ]),
                Show::Json,
            ),
            BdevResetIostat { name, mode } => {
                req("bdev_reset_iostat", params(&[("name", name.as_ref().map(|n| json!(n))), ("mode", mode.as_ref().map(|m| json!(m)))]), Show::Nothing)
            }
            BdevEnableHistogram { name, histogram, .. } => req("bdev_enable_histogram", Some(json!({"name": name, "enable": histogram})), Show::Nothing),
            BdevGetHistogram { name } => req("bdev_get_histogram", Some(json!({"name": name})), Show::Json),
            BdevWaitForExamine => req("bdev_wait_for_examine", None, Show::Nothing),
            IobufSetOptions { small_pool_count, large_pool_count, small_bufsize, large_bufsize } => req(
                "iobuf_set_options",
                params(&[
                    ("small_pool_count", small_pool_count.map(|v| json!(v))),
                    ("large_pool_count", large_pool_count.map(|v| json!(v))),
                    ("small_bufsize", small_bufsize.map(|v| json!(v))),
                    ("large_bufsize", large_bufsize.map(|v| json!(v))),
                ]),
                Show::Nothing,
            ),
            IobufGetStats => req("iobuf_get_stats", None, Show::Json),
        }
    }
}

/// `json!` for references of any serialisable type, usable as `&dyn`.
mod erased {
    pub trait ToJson {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> ToJson for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}
