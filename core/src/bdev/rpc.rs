//! The `iobuf` and `bdev` subsystems and the bdev layer's RPC methods:
//! bdev_get_bdevs, bdev_get_iostat, bdev_reset_iostat, bdev_enable_histogram,
//! bdev_get_histogram, bdev_set_options, bdev_examine, bdev_wait_for_examine,
//! iobuf_set_options, iobuf_get_stats. Modules (malloc, null, ...) register
//! their own create/delete methods and describe themselves through
//! [`super::Backend::config_call`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::stats::{IoStats, ResetMode};
use super::{Bdev, IoType};
use crate::app::{App, ConfigWriter, Done, Subsystem};
use crate::clock;
use crate::dma::{self, IobufOptions};
use crate::io_channel::try_get_io_channel;
use crate::reactor::{self, PollStatus, Poller};
use crate::rpc::{NoParams, Responder, RpcError, States};

/// Add the iobuf and bdev subsystems and their RPC methods to an app.
pub fn register(app: &mut App) {
    // The accel subsystem's crypto keys are named by crypto bdevs: it
    // comes with the bdev layer, and its config loads first.
    crate::accel::register(app);
    app.add_subsystem(Rc::new(IobufSubsystem));
    app.add_subsystem(Rc::new(BdevSubsystem));
    let m = app.methods();
    m.register("iobuf_set_options", States::STARTUP, iobuf_set_options);
    m.register("iobuf_get_stats", States::RUNTIME, |_: NoParams, r: Responder| {
        reactor::map_reactors(
            || dma::pool().map(|p| p.stats()).unwrap_or_default(),
            move |all| {
                let v: Vec<Value> = all
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        json!({
                            "module": "pollux",
                            "reactor": i,
                            "small_pool": {"cache": s.small_gets - s.small_misses, "main": 0, "retry": s.small_misses, "total": s.small_total, "free": s.small_free},
                            "large_pool": {"cache": s.large_gets - s.large_misses, "main": 0, "retry": s.large_misses, "total": s.large_total, "free": s.large_free},
                        })
                    })
                    .collect();
                r.ok(v)
            },
        )
    });
    m.register("bdev_set_options", States::STARTUP, |p: BdevOptions, r: Responder| {
        *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = p;
        r.ok(true)
    });
    m.register("bdev_examine", States::RUNTIME, |p: ExamineParams, r: Responder| r.result(super::examine_bdev(&p.name).map(|_| true)));
    m.register("bdev_wait_for_examine", States::RUNTIME, |_: NoParams, r: Responder| super::wait_for_examine(move || r.ok(true)));
    m.register("bdev_get_bdevs", States::RUNTIME, get_bdevs);
    m.register("bdev_get_iostat", States::RUNTIME, get_iostat);
    m.register("bdev_reset_iostat", States::RUNTIME, reset_iostat);
    m.register("bdev_enable_histogram", States::RUNTIME, enable_histogram);
    m.register("bdev_get_histogram", States::RUNTIME, get_histogram);
    m.register("bdev_set_qos_limit", States::RUNTIME, |p: QosLimit, r: Responder| r.result(set_qos_limit(p)));
}

/// `bdev_set_qos_limit` (SPDK's parameters; a limit left out is kept, 0
/// removes it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QosLimit {
    name: String,
    rw_ios_per_sec: Option<u64>,
    rw_mbytes_per_sec: Option<u64>,
    r_mbytes_per_sec: Option<u64>,
    w_mbytes_per_sec: Option<u64>,
}

fn set_qos_limit(p: QosLimit) -> Result<bool, RpcError> {
    let b = super::get(&p.name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.name)))?;
    let given = [p.rw_ios_per_sec, p.rw_mbytes_per_sec, p.r_mbytes_per_sec, p.w_mbytes_per_sec];
    if given.iter().all(Option::is_none) {
        return Err(RpcError::invalid_params("No rate limits specified"));
    }
    b.qos.set(given);
    tracing::info!("bdev {}: rate limits {:?}", b.name(), super::qos::NAMES.iter().zip(b.qos.assigned()).collect::<Vec<_>>());
    Ok(true)
}

/// bdev_set_options, kept for save_config (the pools they size are ours).
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct BdevOptions {
    #[serde(default = "d_pool")]
    bdev_io_pool_size: u32,
    #[serde(default = "d_cache")]
    bdev_io_cache_size: u32,
    #[serde(default = "d_true")]
    bdev_auto_examine: bool,
    #[serde(default = "d_small")]
    iobuf_small_cache_size: u32,
    #[serde(default = "d_large")]
    iobuf_large_cache_size: u32,
}
fn d_pool() -> u32 {
    65535
}
fn d_cache() -> u32 {
    256
}
fn d_true() -> bool {
    true
}
fn d_small() -> u32 {
    128
}
fn d_large() -> u32 {
    16
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamineParams {
    name: String,
}

/// Whether new bdevs are examined by modules (`bdev_auto_examine`).
pub(crate) fn auto_examine() -> bool {
    OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).bdev_auto_examine
}

static OPTIONS: std::sync::Mutex<BdevOptions> = std::sync::Mutex::new(BdevOptions {
    bdev_io_pool_size: 65535,
    bdev_io_cache_size: 256,
    bdev_auto_examine: true,
    iobuf_small_cache_size: 128,
    iobuf_large_cache_size: 16,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IobufParams {
    small_pool_count: Option<u64>,
    large_pool_count: Option<u64>,
    small_bufsize: Option<u32>,
    large_bufsize: Option<u32>,
    #[serde(default)]
    enable_numa: bool,
}

fn iobuf_set_options(p: IobufParams, r: Responder) {
    let mut o = dma::iobuf_options();
    if let Some(v) = p.small_pool_count {
        o.small_pool_count = v;
    }
    if let Some(v) = p.large_pool_count {
        o.large_pool_count = v;
    }
    if let Some(v) = p.small_bufsize {
        o.small_bufsize = v as u64;
    }
    if let Some(v) = p.large_bufsize {
        o.large_bufsize = v as u64;
    }
    if o.small_bufsize == 0 || o.large_bufsize < o.small_bufsize {
        return r.err(RpcError::invalid_params("large_bufsize must be at least small_bufsize, and both above 0"));
    }
    if p.enable_numa {
        tracing::debug!("iobuf_set_options: enable_numa has no effect (one NUMA node per process)");
    }
    dma::set_iobuf_options(o);
    r.ok(true)
}

struct IobufSubsystem;

impl Subsystem for IobufSubsystem {
    fn name(&self) -> &'static str {
        "iobuf"
    }
    fn init(&self, done: Done) {
        // Create every reactor's pool now, so a memory shortage stops start-up
        // with a clear message instead of failing I/O later.
        reactor::map_reactors(|| dma::pool().map(drop).map_err(|e| e.to_string()), move |all| done(all.into_iter().collect()));
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        let o: IobufOptions = dma::iobuf_options();
        out.call("iobuf_set_options", o);
    }
}

/// Writes a bdev module's global options into save_config.
pub type ModuleConfig = fn(&mut ConfigWriter);

static MODULE_CONFIGS: std::sync::Mutex<Vec<(&'static str, ModuleConfig)>> = std::sync::Mutex::new(Vec::new());

/// Have save_config write module `name`'s global options (SPDK's module
/// `config_json`: `bdev_nvme_set_options` and the like) after
/// `bdev_set_options` and before the bdevs, so a saved config sets them
/// before it creates anything. Registering a name again replaces it.
pub fn register_module_config(name: &'static str, write: ModuleConfig) {
    let mut m = MODULE_CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|(n, _)| *n != name);
    m.push((name, write));
}

struct BdevSubsystem;

impl Subsystem for BdevSubsystem {
    fn name(&self) -> &'static str {
        "bdev"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["iobuf", "accel"]
    }
    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        // Delete bdevs newest first; each waits for its users to close.
        fn next(mut left: Vec<Arc<Bdev>>, done: Box<dyn FnOnce() + Send>) {
            match left.pop() {
                None => done(),
                Some(b) => super::unregister(b.name(), move |_| next(left, done)),
            }
        }
        next(super::list(), done);
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        let o = *OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        out.call("bdev_set_options", o);
        let modules = MODULE_CONFIGS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (_, write) in modules {
            write(out);
        }
        for b in super::list() {
            if let Some((method, params)) = b.backend.config_call(&b) {
                out.call(method, params);
            }
        }
        out.call_no_params("bdev_wait_for_examine");
        // After the examinations, so limits on bdevs they make (lvols) apply.
        for b in super::list() {
            if b.qos.active() {
                let mut v = rate_limits(&b);
                v["name"] = b.name().into();
                out.call("bdev_set_qos_limit", v);
            }
        }
    }
}

fn rate_limits(b: &Bdev) -> Value {
    let a = b.qos.assigned();
    Value::Object(super::qos::NAMES.iter().zip(a).map(|(n, v)| (n.to_string(), Value::from(v))).collect())
}

/// The `bdev_get_bdevs` description of one bdev.
pub fn describe(b: &Bdev) -> Value {
    let mut types = serde_json::Map::new();
    for t in IoType::ALL {
        types.insert(t.name().into(), b.supports(t).into());
    }
    for extra in [
        "nvme_admin",
        "nvme_io",
        "zcopy",
        "abort",
        "compare_and_write",
        "copy",
        "seek_hole",
        "seek_data",
        "get_zone_info",
        "zone_management",
        "zone_append",
        "nvme_iov_md",
    ] {
        types.insert(extra.into(), false.into());
    }
    json!({
        "name": b.name(),
        "aliases": b.aliases(),
        "product_name": b.backend.product_name(),
        "block_size": b.block_size(),
        "num_blocks": b.num_blocks(),
        "uuid": b.uuid().to_string(),
        "assigned_rate_limits": rate_limits(b),
        "claimed": b.claimed_by().is_some(),
        "zoned": false,
        "supported_io_types": types,
        "driver_specific": { b.backend.driver_specific_key(): b.backend.driver_specific() },
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    name: Option<String>,
    /// Milliseconds to wait for `name` to appear.
    #[serde(default)]
    timeout: u64,
}

fn get_bdevs(p: GetBdevs, r: Responder) {
    let Some(name) = p.name else {
        return r.ok(super::list().iter().map(|b| describe(b)).collect::<Vec<_>>());
    };
    if let Some(b) = super::get(&name) {
        return r.ok(vec![describe(&b)]);
    }
    if p.timeout == 0 {
        return r.err(RpcError::errno(libc::ENODEV, format!("bdev {name} not found")));
    }
    // Poll for the bdev until the timeout.
    let deadline = clock::ticks() + clock::duration_to_ticks(Duration::from_millis(p.timeout));
    let slot: Rc<RefCell<Option<(Poller, Responder)>>> = Rc::default();
    let s = slot.clone();
    let poller = reactor::register_timed_poller("bdev_get_bdevs_wait", Duration::from_millis(10), move || {
        let found = super::get(&name);
        if found.is_none() && clock::ticks() < deadline {
            return PollStatus::Idle;
        }
        if let Some((_p, r)) = s.borrow_mut().take() {
            match found {
                Some(b) => r.ok(vec![describe(&b)]),
                None => r.err(RpcError::errno(libc::ENODEV, format!("bdev {name} not found"))),
            }
        }
        PollStatus::Busy
    });
    *slot.borrow_mut() = Some((poller, r));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    /// Older clients send one `name`.
    name: Option<String>,
    names: Option<Vec<String>>,
    #[serde(default)]
    per_channel: bool,
    #[serde(default)]
    reset_mode: ResetMode,
}

fn select(name: Option<String>, names: Option<Vec<String>>) -> Result<Vec<Arc<Bdev>>, RpcError> {
    let wanted: Vec<String> = names.unwrap_or_default().into_iter().chain(name).collect();
    if wanted.is_empty() {
        return Ok(super::list());
    }
    wanted.iter().map(|n| super::get(n).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {n} not found")))).collect()
}

fn get_iostat(p: GetIostat, r: Responder) {
    let bdevs = match select(p.name, p.names) {
        Ok(b) => b,
        Err(e) => return r.err(e),
    };
    let mode = p.reset_mode;
    let per_channel = p.per_channel;
    let list = bdevs.clone();
    reactor::map_reactors(
        move || {
            list.iter()
                .map(|b| {
                    try_get_io_channel(b).map(|ch| {
                        let s = ch.stats();
                        ch.reset_stats(mode);
                        (s, ch.outstanding())
                    })
                })
                .collect::<Vec<Option<(IoStats, u64)>>>()
        },
        move |per_reactor| {
            let mut out = Vec::new();
            for (i, b) in bdevs.iter().enumerate() {
                if per_channel {
                    let channels: Vec<Value> = per_reactor
                        .iter()
                        .enumerate()
                        .filter_map(|(ri, v)| v[i].as_ref().map(|s| (ri, s)))
                        .map(|(ri, (s, qd))| {
                            let mut j = s.to_json(b.name());
                            j["thread_id"] = (ri + 1).into();
                            j["queue_depth"] = (*qd).into();
                            j
                        })
                        .collect();
                    out.push(json!({"name": b.name(), "channels": channels}));
                    continue;
                }
                let mut total = {
                    let mut retired = b.retired.lock().unwrap_or_else(|e| e.into_inner());
                    let t = retired.clone();
                    retired.reset(mode);
                    t
                };
                let mut qd = 0;
                for v in &per_reactor {
                    if let Some((s, q)) = &v[i] {
                        total.merge(s);
                        qd += q;
                    }
                }
                // Requests in flight now (SPDK gives it with sampling on).
                let mut j = total.to_json(b.name());
                j["queue_depth"] = qd.into();
                out.push(j);
            }
            r.ok(json!({"tick_rate": clock::tick_rate(), "ticks": clock::ticks(), "bdevs": out}))
        },
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetIostat {
    name: Option<String>,
    #[serde(default = "all")]
    mode: ResetMode,
}
fn all() -> ResetMode {
    ResetMode::All
}

fn reset_iostat(p: ResetIostat, r: Responder) {
    let bdevs = match select(p.name, None) {
        Ok(b) => b,
        Err(e) => return r.err(e),
    };
    let mode = p.mode;
    for b in &bdevs {
        b.retired.lock().unwrap_or_else(|e| e.into_inner()).reset(mode);
    }
    reactor::for_each_reactor(
        move || {
            for b in &bdevs {
                if let Some(ch) = try_get_io_channel(b) {
                    ch.reset_stats(mode);
                }
            }
        },
        move || r.ok(true),
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableHistogram {
    name: String,
    enable: bool,
    opc: Option<String>,
    granularity: Option<u8>,
    min_nsec: Option<u64>,
    max_nsec: Option<u64>,
}

fn enable_histogram(p: EnableHistogram, r: Responder) {
    let Some(b) = super::get(&p.name) else {
        return r.err(RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.name)));
    };
    if p.opc.is_some() || p.granularity.is_some() || p.min_nsec.is_some() || p.max_nsec.is_some() {
        tracing::debug!("bdev_enable_histogram: opc/granularity/min_nsec/max_nsec ignored (power-of-two buckets, all types)");
    }
    b.histogram.store(p.enable, Ordering::SeqCst);
    let on = p.enable;
    reactor::for_each_reactor(
        move || {
            if let Some(ch) = try_get_io_channel(&b) {
                ch.set_histogram(on);
            }
        },
        move || r.ok(true),
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetHistogram {
    name: String,
}

fn get_histogram(p: GetHistogram, r: Responder) {
    let Some(b) = super::get(&p.name) else {
        return r.err(RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.name)));
    };
    if !b.histogram.load(Ordering::SeqCst) {
        return r.err(RpcError::errno(libc::EFAULT, format!("histogram is not enabled on bdev {}", p.name)));
    }
    let bb = b.clone();
    reactor::map_reactors(
        move || try_get_io_channel(&bb).and_then(|ch| ch.stats().histogram),
        move |all| {
            let mut total = super::stats::Histogram::default();
            if let Some(h) = &b.retired.lock().unwrap_or_else(|e| e.into_inner()).histogram {
                total.merge(h);
            }
            for h in all.iter().flatten() {
                total.merge(h);
            }
            let buckets: Vec<Value> = total
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| json!({"min_ticks": 1u64 << i, "max_ticks": (1u128 << (i + 1)) - 1, "count": c}))
                .collect();
            r.ok(json!({"tick_rate": clock::tick_rate(), "bucket_shift": "power_of_two", "buckets": buckets}))
        },
    );
}
