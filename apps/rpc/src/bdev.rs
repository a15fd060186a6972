//! bdev and iobuf methods, with rpc.py's argument forms.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::params::{o, obj, v};
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
    /// Grow a null bdev to NEW_SIZE MiB
    #[command(name = "bdev_null_resize", rename_all = "kebab-case")]
    BdevNullResize { name: String, new_size: u64 },
    /// Put a delay bdev on another: bdev_delay_create -b BASE -d NAME -r AVG_READ_US -t P99_READ_US -w AVG_WRITE_US -n P99_WRITE_US
    #[command(name = "bdev_delay_create", rename_all = "kebab-case")]
    BdevDelayCreate {
        #[arg(short = 'b', long)]
        base_bdev_name: String,
        #[arg(short = 'd', long)]
        name: String,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'r', long)]
        avg_read_latency: u64,
        #[arg(short = 't', long)]
        p99_read_latency: u64,
        #[arg(short = 'w', long)]
        avg_write_latency: u64,
        #[arg(short = 'n', long)]
        p99_write_latency: u64,
    },
    /// All of a bdev under another name: bdev_passthru_create -b BASE -p NAME
    #[command(name = "bdev_passthru_create", rename_all = "kebab-case")]
    BdevPassthruCreate {
        #[arg(short = 'b', long)]
        base_bdev_name: String,
        #[arg(short = 'p', long)]
        name: String,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a passthru bdev
    #[command(name = "bdev_passthru_delete", rename_all = "kebab-case")]
    BdevPassthruDelete { name: String },
    /// Cut a bdev into SPLIT_COUNT slices (of SPLIT_SIZE_MB MiB each); prints their names
    #[command(name = "bdev_split_create", rename_all = "kebab-case")]
    BdevSplitCreate {
        base_bdev: String,
        split_count: u32,
        #[arg(short = 's', long)]
        split_size_mb: Option<u64>,
    },
    /// Delete the slices of a bdev
    #[command(name = "bdev_split_delete", rename_all = "kebab-case")]
    BdevSplitDelete { base_bdev: String },
    /// Put an error injection bdev (EE_BASE) on a bdev
    #[command(name = "bdev_error_create", rename_all = "kebab-case")]
    BdevErrorCreate {
        base_name: String,
        #[arg(long)]
        uuid: Option<String>,
    },
    /// Delete an error injection bdev
    #[command(name = "bdev_error_delete", rename_all = "kebab-case")]
    BdevErrorDelete { name: String },
    /// Fail, hold or corrupt the next requests of an error injection bdev
    #[command(name = "bdev_error_inject_error", rename_all = "kebab-case")]
    BdevErrorInjectError {
        name: String,
        #[arg(value_parser = ["clear", "read", "write", "unmap", "flush", "all"])]
        io_type: String,
        #[arg(value_parser = ["failure", "nvme_failure", "pending", "corrupt_data", "nomem"])]
        error_type: String,
        #[arg(long)]
        nvme_sct: Option<u32>,
        #[arg(long)]
        nvme_sc: Option<u32>,
        #[arg(short = 'n', long)]
        num: Option<u32>,
        #[arg(short = 'q', long)]
        queue_depth: Option<u64>,
        #[arg(short = 'o', long)]
        corrupt_offset: Option<u64>,
        #[arg(short = 'v', long)]
        corrupt_value: Option<u8>,
    },
    /// Send on the requests an error injection bdev holds
    #[command(name = "bdev_error_resume_pending", rename_all = "kebab-case")]
    BdevErrorResumePending { name: String },
    /// Make a RAID bdev: bdev_raid_create -n NAME -r LEVEL [-z STRIP_KB] -b "BASE1 BASE2" [-s]
    #[command(name = "bdev_raid_create", rename_all = "kebab-case")]
    BdevRaidCreate {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(short = 'z', long)]
        strip_size_kb: Option<u64>,
        #[arg(short = 'r', long, value_parser = ["raid0", "0", "raid1", "1", "concat"])]
        raid_level: String,
        /// Whitespace-separated, in quotes
        #[arg(short = 'b', long)]
        base_bdevs: String,
        #[arg(long)]
        uuid: Option<String>,
        /// Keep SPDK's superblock on every member
        #[arg(short = 's', long)]
        superblock: bool,
    },
    /// Delete a RAID bdev
    #[command(name = "bdev_raid_delete", rename_all = "kebab-case")]
    BdevRaidDelete {
        name: String,
        /// Zero the superblock on its members first
        #[arg(short = 'c', long)]
        clear_sb: bool,
    },
    /// RAID bdevs: all, online, configuring or offline
    #[command(name = "bdev_raid_get_bdevs", rename_all = "kebab-case")]
    BdevRaidGetBdevs {
        #[arg(value_parser = ["all", "online", "configuring", "offline"])]
        category: String,
    },
    /// Add a member to a RAID bdev (a raid1 rebuilds it)
    #[command(name = "bdev_raid_add_base_bdev", rename_all = "kebab-case")]
    BdevRaidAddBaseBdev { raid_bdev: String, base_bdev: String },
    /// Take a member out of its RAID bdev
    #[command(name = "bdev_raid_remove_base_bdev", rename_all = "kebab-case")]
    BdevRaidRemoveBaseBdev { name: String },
    /// Rebuild window and bandwidth of RAID bdevs
    #[command(name = "bdev_raid_set_options", rename_all = "kebab-case")]
    BdevRaidSetOptions {
        #[arg(short = 'w', long)]
        process_window_size_kb: Option<u64>,
        #[arg(short = 'b', long)]
        process_max_bandwidth_mb_sec: Option<u64>,
    },
    /// Rate limits of a bdev (0 removes one; left out: unchanged)
    #[command(name = "bdev_set_qos_limit", rename_all = "kebab-case")]
    BdevSetQosLimit {
        name: String,
        #[arg(long)]
        rw_ios_per_sec: Option<u64>,
        #[arg(long)]
        rw_mbytes_per_sec: Option<u64>,
        #[arg(long)]
        r_mbytes_per_sec: Option<u64>,
        #[arg(long)]
        w_mbytes_per_sec: Option<u64>,
    },
    /// Keep a crypto key (AES_XTS: key and key2 in hex)
    #[command(name = "accel_crypto_key_create", rename_all = "kebab-case")]
    AccelCryptoKeyCreate {
        #[arg(short = 'c', long, value_parser = ["AES_CBC", "AES_XTS"])]
        cipher: String,
        #[arg(short = 'k', long)]
        key: String,
        #[arg(short = 'e', long)]
        key2: Option<String>,
        #[arg(short = 't', long)]
        tweak_mode: Option<String>,
        #[arg(short = 'n', long)]
        name: String,
    },
    /// Crypto keys (with their material, as SPDK shows them)
    #[command(name = "accel_crypto_keys_get", rename_all = "kebab-case")]
    AccelCryptoKeysGet {
        #[arg(short = 'k', long)]
        key_name: Option<String>,
    },
    /// Forget a crypto key no bdev uses
    #[command(name = "accel_crypto_key_destroy", rename_all = "kebab-case")]
    AccelCryptoKeyDestroy {
        #[arg(short = 'n', long)]
        key_name: String,
    },
    /// Encrypt a bdev with a key: bdev_crypto_create BASE NAME -n KEY_NAME
    #[command(name = "bdev_crypto_create", rename_all = "kebab-case")]
    BdevCryptoCreate {
        base_bdev_name: String,
        name: String,
        #[arg(short = 'n', long)]
        key_name: String,
    },
    /// Delete a crypto bdev
    #[command(name = "bdev_crypto_delete", rename_all = "kebab-case")]
    BdevCryptoDelete { name: String },
    /// Delete a delay bdev
    #[command(name = "bdev_delay_delete", rename_all = "kebab-case")]
    BdevDelayDelete { name: String },
    /// Change one latency of a delay bdev (microseconds)
    #[command(name = "bdev_delay_update_latency", rename_all = "kebab-case")]
    BdevDelayUpdateLatency {
        delay_bdev_name: String,
        #[arg(value_parser = ["avg_read", "avg_write", "p99_read", "p99_write"])]
        latency_type: String,
        latency_us: u64,
    },
    /// Create a bdev on a file or block device through io_uring
    #[command(name = "bdev_uring_create", rename_all = "kebab-case")]
    BdevUringCreate {
        filename: String,
        name: String,
        block_size: Option<u32>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Connect to a Ceph cluster once, for RBD bdevs to share
    #[command(name = "bdev_rbd_register_cluster", rename_all = "kebab-case")]
    BdevRbdRegisterCluster {
        name: String,
        /// Ceph user name (admin, not client.admin)
        #[arg(long = "user")]
        user_id: Option<String>,
        /// key=value, a Ceph option (repeatable)
        #[arg(long = "config-param", value_parser = key_value)]
        config_param: Vec<(String, String)>,
        #[arg(long)]
        config_file: Option<String>,
        #[arg(long)]
        key_file: Option<String>,
        #[arg(long)]
        core_mask: Option<String>,
    },
    /// Forget a registered Ceph cluster (no bdev may use it)
    #[command(name = "bdev_rbd_unregister_cluster", rename_all = "kebab-case")]
    BdevRbdUnregisterCluster { name: String },
    /// Registered Ceph clusters
    #[command(name = "bdev_rbd_get_clusters_info", rename_all = "kebab-case")]
    BdevRbdGetClustersInfo {
        #[arg(short = 'b', long)]
        name: Option<String>,
    },
    /// Open a Ceph RBD image as a bdev; prints its name
    #[command(name = "bdev_rbd_create", rename_all = "kebab-case")]
    BdevRbdCreate {
        pool_name: String,
        rbd_name: String,
        block_size: u32,
        #[arg(short = 'b', long)]
        name: Option<String>,
        #[arg(long = "user")]
        user_id: Option<String>,
        /// key=value, a Ceph option (repeatable)
        #[arg(long, value_parser = key_value)]
        config: Vec<(String, String)>,
        #[arg(short = 'c', long)]
        cluster_name: Option<String>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'r', long = "readonly")]
        read_only: bool,
    },
    /// Delete an RBD bdev
    #[command(name = "bdev_rbd_delete", rename_all = "kebab-case")]
    BdevRbdDelete { name: String },
    /// Grow an RBD bdev and its image to NEW_SIZE MiB
    #[command(name = "bdev_rbd_resize", rename_all = "kebab-case")]
    BdevRbdResize { name: String, new_size: u64 },
    /// Delete a uring bdev
    #[command(name = "bdev_uring_delete", rename_all = "kebab-case")]
    BdevUringDelete { name: String },
    /// Read a uring bdev's size again (its file or device grew)
    #[command(name = "bdev_uring_rescan", rename_all = "kebab-case")]
    BdevUringRescan { name: String },
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
    /// Read an aio bdev's size again (its file or device grew)
    #[command(name = "bdev_aio_rescan", rename_all = "kebab-case")]
    BdevAioRescan { name: String },
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

/// Params with the options that were given.
/// A `key=value` argument (rpc.py's form for Ceph options).
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s}: expected key=value"))
}

/// `key=value` arguments as a JSON object; none given: absent.
fn key_values(items: &[(String, String)]) -> Option<Value> {
    (!items.is_empty()).then(|| Value::Object(items.iter().map(|(k, v)| (k.clone(), json!(v))).collect()))
}

fn params(pairs: &[(&str, Option<Value>)]) -> Option<Value> {
    Some(obj(pairs))
}

fn req(method: &'static str, params: Option<Value>, show: Show) -> Request {
    Request { method, params, show }
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        match self {
            BdevMallocCreate { name, uuid, total_size, block_size, optimal_io_boundary } => {
                let num_blocks = ((total_size * 1024.0 * 1024.0) as u64) / (*block_size).max(1) as u64;
                req(
                    "bdev_malloc_create",
                    params(&[
                        ("name", o(name)),
                        ("uuid", o(uuid)),
                        ("num_blocks", v(&num_blocks)),
                        ("block_size", v(block_size)),
                        ("optimal_io_boundary", o(optimal_io_boundary)),
                    ]),
                    Show::Text,
                )
            }
            BdevMallocDelete { name } => req("bdev_malloc_delete", Some(json!({"name": name})), Show::Nothing),
            BdevNullCreate { name, total_size, block_size, uuid } => {
                let num_blocks = total_size * 1024 * 1024 / (*block_size).max(1) as u64;
                req(
                    "bdev_null_create",
                    params(&[("name", v(name)), ("num_blocks", v(&num_blocks)), ("block_size", v(block_size)), ("uuid", o(uuid))]),
                    Show::Text,
                )
            }
            BdevNullDelete { name } => req("bdev_null_delete", Some(json!({"name": name})), Show::Nothing),
            BdevNullResize { name, new_size } => req("bdev_null_resize", Some(json!({"name": name, "new_size": new_size})), Show::Nothing),
            BdevDelayCreate { base_bdev_name, name, uuid, avg_read_latency, p99_read_latency, avg_write_latency, p99_write_latency } => {
                req(
                    "bdev_delay_create",
                    params(&[
                        ("base_bdev_name", v(base_bdev_name)),
                        ("name", v(name)),
                        ("uuid", o(uuid)),
                        ("avg_read_latency", v(avg_read_latency)),
                        ("p99_read_latency", v(p99_read_latency)),
                        ("avg_write_latency", v(avg_write_latency)),
                        ("p99_write_latency", v(p99_write_latency)),
                    ]),
                    Show::Text,
                )
            }
            BdevDelayDelete { name } => req("bdev_delay_delete", Some(json!({"name": name})), Show::Nothing),
            AccelCryptoKeyCreate { cipher, key, key2, tweak_mode, name } => req(
                "accel_crypto_key_create",
                params(&[("cipher", v(cipher)), ("key", v(key)), ("key2", o(key2)), ("tweak_mode", o(tweak_mode)), ("name", v(name))]),
                Show::Nothing,
            ),
            AccelCryptoKeysGet { key_name } => req("accel_crypto_keys_get", params(&[("key_name", o(key_name))]), Show::Json),
            AccelCryptoKeyDestroy { key_name } => req("accel_crypto_key_destroy", Some(json!({"key_name": key_name})), Show::Nothing),
            BdevCryptoCreate { base_bdev_name, name, key_name } => {
                req("bdev_crypto_create", Some(json!({"base_bdev_name": base_bdev_name, "name": name, "key_name": key_name})), Show::Text)
            }
            BdevCryptoDelete { name } => req("bdev_crypto_delete", Some(json!({"name": name})), Show::Nothing),
            BdevSetQosLimit { name, rw_ios_per_sec, rw_mbytes_per_sec, r_mbytes_per_sec, w_mbytes_per_sec } => req(
                "bdev_set_qos_limit",
                params(&[
                    ("name", v(name)),
                    ("rw_ios_per_sec", o(rw_ios_per_sec)),
                    ("rw_mbytes_per_sec", o(rw_mbytes_per_sec)),
                    ("r_mbytes_per_sec", o(r_mbytes_per_sec)),
                    ("w_mbytes_per_sec", o(w_mbytes_per_sec)),
                ]),
                Show::Nothing,
            ),
            BdevRaidCreate { name, strip_size_kb, raid_level, base_bdevs, uuid, superblock } => {
                let bases: Vec<&str> = base_bdevs.split_whitespace().collect();
                req(
                    "bdev_raid_create",
                    params(&[
                        ("name", v(name)),
                        ("strip_size_kb", o(strip_size_kb)),
                        ("raid_level", v(raid_level)),
                        ("base_bdevs", v(&bases)),
                        ("uuid", o(uuid)),
                        ("superblock", v(superblock)),
                    ]),
                    Show::Nothing,
                )
            }
            BdevRaidDelete { name, clear_sb } => req("bdev_raid_delete", Some(json!({"name": name, "clear_sb": clear_sb})), Show::Nothing),
            BdevRaidGetBdevs { category } => req("bdev_raid_get_bdevs", Some(json!({"category": category})), Show::Json),
            BdevRaidAddBaseBdev { raid_bdev, base_bdev } => {
                req("bdev_raid_add_base_bdev", Some(json!({"raid_bdev": raid_bdev, "base_bdev": base_bdev})), Show::Nothing)
            }
            BdevRaidRemoveBaseBdev { name } => req("bdev_raid_remove_base_bdev", Some(json!({"name": name})), Show::Nothing),
            BdevRaidSetOptions { process_window_size_kb, process_max_bandwidth_mb_sec } => req(
                "bdev_raid_set_options",
                params(&[
                    ("process_window_size_kb", o(process_window_size_kb)),
                    ("process_max_bandwidth_mb_sec", o(process_max_bandwidth_mb_sec)),
                ]),
                Show::Nothing,
            ),
            BdevPassthruCreate { base_bdev_name, name, uuid } => req(
                "bdev_passthru_create",
                params(&[("base_bdev_name", v(base_bdev_name)), ("name", v(name)), ("uuid", o(uuid))]),
                Show::Text,
            ),
            BdevPassthruDelete { name } => req("bdev_passthru_delete", Some(json!({"name": name})), Show::Nothing),
            BdevSplitCreate { base_bdev, split_count, split_size_mb } => req(
                "bdev_split_create",
                params(&[("base_bdev", v(base_bdev)), ("split_count", v(split_count)), ("split_size_mb", o(split_size_mb))]),
                Show::Text,
            ),
            BdevSplitDelete { base_bdev } => req("bdev_split_delete", Some(json!({"base_bdev": base_bdev})), Show::Nothing),
            BdevErrorCreate { base_name, uuid } => {
                req("bdev_error_create", params(&[("base_name", v(base_name)), ("uuid", o(uuid))]), Show::Text)
            }
            BdevErrorDelete { name } => req("bdev_error_delete", Some(json!({"name": name})), Show::Nothing),
            BdevErrorInjectError { name, io_type, error_type, nvme_sct, nvme_sc, num, queue_depth, corrupt_offset, corrupt_value } => req(
                "bdev_error_inject_error",
                params(&[
                    ("name", v(name)),
                    ("io_type", v(io_type)),
                    ("error_type", v(error_type)),
                    ("nvme_sct", o(nvme_sct)),
                    ("nvme_sc", o(nvme_sc)),
                    ("num", o(num)),
                    ("queue_depth", o(queue_depth)),
                    ("corrupt_offset", o(corrupt_offset)),
                    ("corrupt_value", o(corrupt_value)),
                ]),
                Show::Nothing,
            ),
            BdevErrorResumePending { name } => req("bdev_error_resume_pending", Some(json!({"name": name})), Show::Nothing),
            BdevDelayUpdateLatency { delay_bdev_name, latency_type, latency_us } => req(
                "bdev_delay_update_latency",
                params(&[("delay_bdev_name", v(delay_bdev_name)), ("latency_type", v(latency_type)), ("latency_us", v(latency_us))]),
                Show::Nothing,
            ),
            BdevUringCreate { filename, name, block_size, uuid } => req(
                "bdev_uring_create",
                params(&[("filename", v(filename)), ("name", v(name)), ("block_size", o(block_size)), ("uuid", o(uuid))]),
                Show::Text,
            ),
            BdevUringDelete { name } => req("bdev_uring_delete", Some(json!({"name": name})), Show::Nothing),
            BdevUringRescan { name } => req("bdev_uring_rescan", Some(json!({"name": name})), Show::Nothing),
            BdevRbdRegisterCluster { name, user_id, config_param, config_file, key_file, core_mask } => req(
                "bdev_rbd_register_cluster",
                params(&[
                    ("name", v(name)),
                    ("user_id", o(user_id)),
                    ("config_param", key_values(config_param)),
                    ("config_file", o(config_file)),
                    ("key_file", o(key_file)),
                    ("core_mask", o(core_mask)),
                ]),
                Show::Text,
            ),
            BdevRbdUnregisterCluster { name } => req("bdev_rbd_unregister_cluster", Some(json!({"name": name})), Show::Nothing),
            BdevRbdGetClustersInfo { name } => req("bdev_rbd_get_clusters_info", params(&[("name", o(name))]), Show::Json),
            BdevRbdCreate { pool_name, rbd_name, block_size, name, user_id, config, cluster_name, uuid, read_only } => req(
                "bdev_rbd_create",
                params(&[
                    ("pool_name", v(pool_name)),
                    ("rbd_name", v(rbd_name)),
                    ("block_size", v(block_size)),
                    ("name", o(name)),
                    ("user_id", o(user_id)),
                    ("config", key_values(config)),
                    ("cluster_name", o(cluster_name)),
                    ("uuid", o(uuid)),
                    ("read_only", read_only.then_some(json!(true))),
                ]),
                Show::Text,
            ),
            BdevRbdDelete { name } => req("bdev_rbd_delete", Some(json!({"name": name})), Show::Nothing),
            BdevRbdResize { name, new_size } => req("bdev_rbd_resize", Some(json!({"name": name, "new_size": new_size})), Show::Nothing),
            BdevAioCreate { filename, name, block_size, readonly, fallocate, uuid } => req(
                "bdev_aio_create",
                params(&[
                    ("filename", v(filename)),
                    ("name", v(name)),
                    ("block_size", o(block_size)),
                    ("readonly", readonly.then_some(json!(true))),
                    ("fallocate", fallocate.then_some(json!(true))),
                    ("uuid", o(uuid)),
                ]),
                Show::Text,
            ),
            BdevAioDelete { name } => req("bdev_aio_delete", Some(json!({"name": name})), Show::Nothing),
            BdevAioRescan { name } => req("bdev_aio_rescan", Some(json!({"name": name})), Show::Nothing),
            BdevGetBdevs { name, timeout } => req("bdev_get_bdevs", params(&[("name", o(name)), ("timeout", o(timeout))]), Show::Json),
            BdevGetIostat { per_channel, reset_mode, names } => req(
                "bdev_get_iostat",
                params(&[("per_channel", per_channel.then_some(json!(true))), ("reset_mode", o(reset_mode)), ("names", o(names))]),
                Show::Json,
            ),
            BdevResetIostat { name, mode } => req("bdev_reset_iostat", params(&[("name", o(name)), ("mode", o(mode))]), Show::Nothing),
            BdevEnableHistogram { name, histogram, .. } => {
                req("bdev_enable_histogram", Some(json!({"name": name, "enable": histogram})), Show::Nothing)
            }
            BdevGetHistogram { name } => req("bdev_get_histogram", Some(json!({"name": name})), Show::Json),
            BdevWaitForExamine => req("bdev_wait_for_examine", None, Show::Nothing),
            IobufSetOptions { small_pool_count, large_pool_count, small_bufsize, large_bufsize } => req(
                "iobuf_set_options",
                params(&[
                    ("small_pool_count", o(small_pool_count)),
                    ("large_pool_count", o(large_pool_count)),
                    ("small_bufsize", o(small_bufsize)),
                    ("large_bufsize", o(large_bufsize)),
                ]),
                Show::Nothing,
            ),
            IobufGetStats => req("iobuf_get_stats", None, Show::Json),
        }
    }
}
