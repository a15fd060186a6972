//! SPDK's `bdev_rbd_*` methods: clusters registered once and shared by
//! bdevs (`bdev_rbd_register_cluster`), or a connection per bdev from
//! `user_id` and `config`; images opened as bdevs; save_config writes both.
//! Connecting and opening block, so they run on a thread of their own and
//! the answer comes back to the main reactor by message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use pollux_bdev::{Delete, delete_rpc};
use pollux_core::app::{App, ConfigWriter};
use pollux_core::bdev::{self, Backend, BdevSpec, Uuid};
use pollux_core::cpuset::CoreMask;
use pollux_core::reactor;
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bdev::{RbdBackend, RbdSpec};
use crate::rados::{self, Cluster, ConnectSpec, Image, Pool};

/// `client_mount_timeout` unless the config sets it: librados' default
/// (300 s) would hold an RPC five minutes on an unreachable cluster.
const MOUNT_TIMEOUT_S: &str = "30";

/// With `rbd_non_blocking_aio` false in the config, librbd dispatches a
/// request inside the reactor's submit call instead of handing it to its
/// `io_context_pool` thread. What librbd 16 does there does not wait for
/// the cluster (the exclusive lock, an image refresh, QoS and the cache
/// queue a request and return) but may wait on librbd's own locks (traced
/// under load: 858 futex waits in 4 s, the longest 0.2 ms; the bdev logs a
/// submit that holds the reactor 10 ms) and on the Objecter's throttle,
/// whose wait would stop the reactor once 1024 requests or 100 MiB are in
/// flight: then Pollux lifts that throttle (0, no limit) unless the config
/// sets it, and bounds what is in flight itself (256 requests per bdev and
/// reactor). Measured (docs/benchmarks.md, before the bdev's doorbell
/// lost wake-ups were fixed), it paid for writes only (4 KiB random writes
/// 1.32x through `pollux-perf`, 1.05x through a gateway; reads 0.76x and
/// 0.83x); after that fix, about even (writes 1.02-1.04x, reads
/// 0.89-1.00x): librbd's default stays.
const INLINE_DISPATCH_PARAMS: [(&str, &str); 2] = [("objecter_inflight_ops", "0"), ("objecter_inflight_op_bytes", "0")];

/// A registered cluster: its settings (as given) and its connection.
struct ClusterEntry {
    user_id: Option<String>,
    config_param: Option<BTreeMap<String, String>>,
    config_file: Option<String>,
    key_file: Option<String>,
    core_mask: Option<String>,
    cluster: Arc<Cluster>,
}

impl ClusterEntry {
    fn info(&self, name: &str) -> Value {
        let mut v = json!({"cluster_name": name});
        if let Some(u) = &self.user_id {
            v["user_id"] = u.clone().into();
        }
        if let Some(c) = &self.config_param {
            v["config_param"] = json!(c);
        }
        if let Some(f) = &self.config_file {
            v["config_file"] = f.clone().into();
        }
        if let Some(k) = &self.key_file {
            v["key_file"] = k.clone().into();
        }
        if let Some(m) = &self.core_mask {
            v["core_mask"] = m.clone().into();
        }
        v
    }
}

#[derive(Default)]
struct Registry {
    clusters: BTreeMap<String, Arc<ClusterEntry>>,
    /// Names being connected (not yet answered).
    connecting: BTreeSet<String>,
    /// Bdev names being opened.
    opening: BTreeSet<String>,
    /// The backends of rbd bdevs by name (for resizes).
    backends: BTreeMap<String, std::sync::Weak<RbdBackend>>,
}

/// Control path only (RPCs, save_config): never taken on the I/O path.
static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// At exit, after the app has stopped: the registered clusters'
/// connections are shut down (`rados_shutdown`, on threads of their own,
/// waited for by [`crate::wait_closes`], bounded). Left in the registry,
/// librados' threads still ran while the process's static destructors
/// did, and the daemon now and then died of a signal on its way out.
pub(crate) fn close_clusters() {
    let all = with_registry(|g| std::mem::take(&mut g.clusters));
    for (name, entry) in all {
        rados::close_off_reactor(ExitClose { entry: Some(entry), name });
    }
}

/// A registered cluster closed at exit (dropped on a closing thread).
struct ExitClose {
    entry: Option<Arc<ClusterEntry>>,
    name: String,
}

impl Drop for ExitClose {
    fn drop(&mut self) {
        // Shut down only if nothing else holds it (a bdev still draining).
        if let Some(last) = self.entry.take().and_then(Arc::into_inner) {
            drop(last);
            tracing::info!("rbd: cluster {} shut down at exit", self.name);
        }
    }
}

/// Blocking Ceph operations (threads) at most under way at once: a client
/// cannot pile up threads each waiting for an unreachable cluster.
const MAX_OFF_REACTOR: usize = 16;

/// Why an operation did not start (`then` got `None`).
const NOT_STARTED: &str = "too many Ceph operations under way, no thread could be started, or the operation failed unexpectedly: try again";

/// Run blocking `work` on a thread of its own ([`reactor::off_reactor`]),
/// at most [`MAX_OFF_REACTOR`] at once; `then` gets its result on the
/// calling reactor, `None` if it did not start.
fn off_reactor<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static, then: impl FnOnce(Option<T>) + Send + 'static) {
    static UNDER_WAY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    use std::sync::atomic::Ordering::SeqCst;
    if UNDER_WAY.fetch_add(1, SeqCst) >= MAX_OFF_REACTOR {
        UNDER_WAY.fetch_sub(1, SeqCst);
        tracing::warn!("rbd: {MAX_OFF_REACTOR} Ceph operations already under way; not starting one more ({what})");
        return then(None);
    }
    reactor::off_reactor(
        &format!("rbd-{what}"),
        move || {
            let v = work();
            UNDER_WAY.fetch_sub(1, SeqCst);
            v
        },
        move |v| {
            if v.is_err() {
                // No thread, or `work` panicked: not counted down above.
                UNDER_WAY.fetch_sub(1, SeqCst);
            }
            then(v.ok())
        },
    );
}

fn rados_err(e: rados::Error) -> RpcError {
    RpcError::errno(e.errno(), e.to_string())
}

/// A `config` / `config_param` object: Ceph option names to values.
fn config_map(v: Option<Value>, what: &str) -> Result<Option<BTreeMap<String, String>>, RpcError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Object(o) = v else {
        return Err(RpcError::invalid_params(format!("{what}: must be a JSON object of Ceph options and their values")));
    };
    let mut m = BTreeMap::new();
    for (k, v) in o {
        let s = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(RpcError::invalid_params(format!("{what}: the value of {k} must be a string, not {other}"))),
        };
        m.insert(k, s);
    }
    Ok(Some(m))
}

/// Options in order, with Pollux's mount timeout first unless given, and
/// the Objecter's throttle lifted when librbd dispatches on the reactor
/// ([`INLINE_DISPATCH_PARAMS`]). Ceph reads `rbd non-blocking aio` as
/// `rbd_non_blocking_aio`, and a bool as `false` or a number.
fn params_with_defaults(m: Option<&BTreeMap<String, String>>) -> Vec<(String, String)> {
    let given: Vec<(String, String)> = m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let norm = |k: &str| k.replace([' ', '-'], "_");
    let value = |key: &str| given.iter().find(|(k, _)| norm(k) == key).map(|(_, v)| v.trim().to_ascii_lowercase());
    let mut defaults = vec![("client_mount_timeout", MOUNT_TIMEOUT_S)];
    if value("rbd_non_blocking_aio").is_some_and(|v| v == "false" || v.parse::<i64>() == Ok(0)) {
        defaults.extend(INLINE_DISPATCH_PARAMS);
    }
    let mut v: Vec<(String, String)> =
        defaults.into_iter().filter(|(d, _)| value(d).is_none()).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.extend(given);
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterCluster {
    name: String,
    user_id: Option<String>,
    config_param: Option<Value>,
    config_file: Option<String>,
    key_file: Option<String>,
    core_mask: Option<String>,
}

fn register_cluster(p: RegisterCluster, r: Responder) {
    let config_param = match config_map(p.config_param, "config_param") {
        Ok(c) => c,
        Err(e) => return r.err(e),
    };
    let cpus = match p.core_mask.as_deref().map(|m| m.parse::<CoreMask>()) {
        None => None,
        Some(Ok(m)) => Some(m.cores().to_vec()),
        Some(Err(e)) => return r.err(RpcError::invalid_params(format!("core_mask {}: {e}", p.core_mask.unwrap_or_default()))),
    };
    if let Err(e) = rados::lib() {
        return r.err(rados_err(e));
    }
    let name = p.name.clone();
    let taken = with_registry(|g| {
        let taken = g.clusters.contains_key(&name) || g.connecting.contains(&name);
        if !taken {
            g.connecting.insert(name.clone());
        }
        taken
    });
    if taken {
        return r.err(RpcError::errno(libc::EEXIST, format!("cluster {name} is already registered")));
    }
    let spec = ConnectSpec {
        user_id: p.user_id.clone(),
        // As SPDK: the default config file is read when none is named
        // (and may be absent).
        config_file: p.config_file.clone(),
        read_default_file: true,
        params: params_with_defaults(config_param.as_ref()),
        key_file: p.key_file.clone(),
        cpus,
        batch_threads: reactor::interrupt_mode(),
    };
    let entry = move |cluster| ClusterEntry {
        user_id: p.user_id,
        config_param,
        config_file: p.config_file,
        key_file: p.key_file,
        core_mask: p.core_mask,
        cluster: Arc::new(cluster),
    };
    off_reactor(
        "connect",
        move || Cluster::connect(&spec),
        move |res| {
            let res = match res {
                Some(Ok(c)) => Ok(c),
                Some(Err(e)) => Err(rados_err(e)),
                None => Err(RpcError::errno(libc::EAGAIN, NOT_STARTED)),
            };
            with_registry(|g| g.connecting.remove(&name));
            match res {
                Ok(c) => {
                    with_registry(|g| g.clusters.insert(name.clone(), Arc::new(entry(c))));
                    tracing::info!("rbd: cluster {name} registered");
                    r.ok(name)
                }
                Err(e) => {
                    tracing::warn!("rbd: cluster {name}: {}", e.message);
                    r.err(e)
                }
            }
        },
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaybeNamed {
    name: Option<String>,
}

/// How many bdevs use cluster `name`.
fn cluster_users(name: &str) -> usize {
    bdev::list()
        .iter()
        .filter(|b| b.backend().module_name() == "rbd")
        .filter(|b| b.backend().config_call(b).is_some_and(|(_, p)| p["cluster_name"] == name))
        .count()
}

fn unregister_cluster(p: Named, r: Responder) {
    let users = cluster_users(&p.name);
    let res = with_registry(|g| {
        if !g.clusters.contains_key(&p.name) {
            return Err(RpcError::errno(libc::ENOENT, format!("cluster {} is not registered", p.name)));
        }
        if users > 0 {
            return Err(RpcError::errno(libc::EBUSY, format!("cluster {} is in use by {users} bdev(s)", p.name)));
        }
        Ok(g.clusters.remove(&p.name))
    });
    match res {
        Ok(entry) => {
            if let Some(e) = entry {
                rados::close_off_reactor(e);
            }
            tracing::info!("rbd: cluster {} unregistered", p.name);
            r.ok(true)
        }
        Err(e) => r.err(e),
    }
}

fn get_clusters_info(p: MaybeNamed, r: Responder) {
    let name = p.name;
    let res = with_registry(|g| match &name {
        Some(n) => {
            g.clusters.get(n).map(|e| e.info(n)).ok_or_else(|| RpcError::errno(libc::ENOENT, format!("cluster {n} is not registered")))
        }
        None if g.clusters.is_empty() => Err(RpcError::errno(libc::ENOENT, "no cluster is registered")),
        None => Ok(Value::Array(g.clusters.iter().map(|(n, e)| e.info(n)).collect())),
    });
    r.result(res)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: Option<String>,
    user_id: Option<String>,
    pool_name: String,
    rbd_name: String,
    block_size: u32,
    config: Option<Value>,
    cluster_name: Option<String>,
    uuid: Option<Uuid>,
    #[serde(default)]
    read_only: bool,
}

fn next_name() -> String {
    (0..).map(|i| format!("Ceph{i}")).find(|n| bdev::get(n).is_none() && !with_registry(|g| g.opening.contains(n))).expect("a free name")
}

fn create(p: Create, r: Responder) {
    let config = match config_map(p.config, "config") {
        Ok(c) => c,
        Err(e) => return r.err(e),
    };
    if !pollux_core::bdev::exportable_block_size(p.block_size) {
        return r.err(RpcError::invalid_params(format!(
            "block_size {} must be {}",
            p.block_size,
            pollux_core::bdev::exportable_block_sizes()
        )));
    }
    if let Err(e) = rados::lib() {
        return r.err(rados_err(e));
    }
    let name = p.name.clone().unwrap_or_else(next_name);
    let shared = match &p.cluster_name {
        Some(c) => match with_registry(|g| g.clusters.get(c).cloned()) {
            Some(e) => Some(e),
            None => return r.err(RpcError::errno(libc::ENOENT, format!("cluster {c} is not registered (bdev_rbd_register_cluster)"))),
        },
        None => None,
    };
    let taken = bdev::get(&name).is_some()
        || with_registry(|g| {
            let t = g.opening.contains(&name);
            if !t {
                g.opening.insert(name.clone());
            }
            t
        });
    if taken {
        return r.err(RpcError::errno(libc::EEXIST, format!("bdev {name} exists")));
    }
    let cluster_info = shared.as_ref().map(|e| e.info(p.cluster_name.as_deref().unwrap_or_default()));
    let connect = ConnectSpec {
        user_id: p.user_id.clone(),
        config_file: None,
        // As SPDK: with `config` only those options; without, the default file.
        read_default_file: config.is_none(),
        params: params_with_defaults(config.as_ref()),
        key_file: None,
        cpus: None,
        batch_threads: reactor::interrupt_mode(),
    };
    let cluster = shared.map(|e| e.cluster.clone());
    let (pool_name, rbd_name, read_only) = (p.pool_name.clone(), p.rbd_name.clone(), p.read_only);
    let spec = RbdSpec {
        pool_name: p.pool_name,
        rbd_name: p.rbd_name,
        user_id: p.user_id,
        config,
        cluster_name: p.cluster_name,
        read_only,
        cluster_info,
    };
    let (block_size, uuid) = (p.block_size, p.uuid);
    off_reactor(
        "open",
        move || -> Result<(Image, u64), rados::Error> {
            let cluster = match cluster {
                Some(c) => c,
                None => Arc::new(Cluster::connect(&connect)?),
            };
            let pool = Arc::new(Pool::open(cluster, &pool_name)?);
            let image = Image::open(pool, &rbd_name, read_only)?;
            let size = image.size()?;
            Ok((image, size))
        },
        move |res| {
            with_registry(|g| g.opening.remove(&name));
            let (image, size) = match res {
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    tracing::warn!("rbd: bdev {name} ({}/{}): {e}", spec.pool_name, spec.rbd_name);
                    return r.err(rados_err(e));
                }
                None => return r.err(RpcError::errno(libc::EAGAIN, NOT_STARTED)),
            };
            let num_blocks = size / u64::from(block_size);
            if num_blocks == 0 {
                rados::close_off_reactor(image);
                return r.err(RpcError::invalid_params(format!("image {}/{} is smaller than one block", spec.pool_name, spec.rbd_name)));
            }
            let (pool, img) = (spec.pool_name.clone(), spec.rbd_name.clone());
            let image = Arc::new(image);
            let backend = Arc::new(RbdBackend::new(spec, image.clone()));
            match bdev::register(BdevSpec { name: name.clone(), block_size, num_blocks, uuid, backend: backend.clone() }) {
                Ok(b) => {
                    tracing::info!("rbd: bdev {name}: image {pool}/{img}, {num_blocks} blocks of {block_size}");
                    with_registry(|g| g.backends.insert(name.clone(), Arc::downgrade(&backend)));
                    // Another client may resize the image: follow it.
                    let (h, n) = (reactor::handle(), name.clone());
                    let watched = image.watch(Box::new(move || {
                        let n = n.clone();
                        h.send(reactor::ReactorId(0), move || refresh_size(n));
                    }));
                    if let Err(e) = watched {
                        tracing::warn!("rbd: bdev {name}: the image's size is not followed: {e}");
                    }
                    r.ok(b.name().to_string())
                }
                Err(e) => {
                    backend.destroy();
                    r.err(e.into())
                }
            }
        },
    );
}

/// The backend of rbd bdev `name`, if it is one.
fn backend_of(name: &str) -> Result<(Arc<bdev::Bdev>, Arc<RbdBackend>), RpcError> {
    let b = bdev::get(name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {name} not found")))?;
    if b.backend().module_name() != "rbd" {
        return Err(RpcError::errno(libc::ENODEV, format!("bdev {name} is not an rbd bdev")));
    }
    let be = with_registry(|g| g.backends.get(name).and_then(std::sync::Weak::upgrade))
        .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {name} is being deleted")))?;
    Ok((b, be))
}

/// Read the image's size off the reactors and tell the bdev layer.
fn refresh_size(name: String) {
    let Ok((b, be)) = backend_of(&name) else { return };
    let Some(image) = be.image() else { return };
    let bs = u64::from(b.block_size());
    off_reactor(
        "size",
        move || image.size(),
        move |res| match res {
            Some(Ok(bytes)) if bytes / bs != 0 => {
                if let Err(e) = bdev::notify_blockcnt_change(&name, bytes / bs) {
                    tracing::warn!("rbd: bdev {name}: the image is now {bytes} bytes: {e}");
                }
            }
            Some(Ok(_)) => tracing::warn!("rbd: bdev {name}: the image shrank below one block"),
            Some(Err(e)) => tracing::warn!("rbd: bdev {name}: cannot read the image's size: {e}"),
            None => {}
        },
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    /// MiB, as SPDK.
    new_size: u64,
}

fn resize(p: Resize, r: Responder) {
    let (b, be) = match backend_of(&p.name) {
        Ok(x) => x,
        Err(e) => return r.err(e),
    };
    let Some(bytes) = p.new_size.checked_mul(1 << 20) else {
        return r.err(RpcError::invalid_params(format!("new_size {} MiB is too large", p.new_size)));
    };
    if bytes < b.size_bytes() {
        return r.err(RpcError::invalid_params(format!(
            "new_size {} MiB is below the current size of {} ({} MiB): images only grow here, as in SPDK",
            p.new_size,
            p.name,
            b.size_bytes() >> 20
        )));
    }
    if be.spec.read_only {
        return r.err(RpcError::errno(libc::EROFS, format!("bdev {} is read-only", p.name)));
    }
    let Some(image) = be.image() else { return r.err(RpcError::errno(libc::ENODEV, format!("bdev {} is being deleted", p.name))) };
    let (name, bs) = (p.name, u64::from(b.block_size()));
    off_reactor(
        "resize",
        move || image.resize(bytes).and_then(|()| image.size()),
        move |res| match res {
            Some(Ok(now)) => r.result(bdev::notify_blockcnt_change(&name, now / bs).map(|()| true).map_err(RpcError::from)),
            Some(Err(e)) => r.err(rados_err(e)),
            None => r.err(RpcError::errno(libc::EAGAIN, NOT_STARTED)),
        },
    );
}

/// Registered clusters, before the bdevs that use them.
fn write_config(out: &mut ConfigWriter) {
    with_registry(|g| {
        for (name, e) in &g.clusters {
            let mut v = e.info(name);
            let o = v.as_object_mut().expect("object");
            if let Some(n) = o.remove("cluster_name") {
                o.insert("name".into(), n);
            }
            out.call("bdev_rbd_register_cluster", v);
        }
    });
}

pub fn register(app: &mut App) {
    bdev::rpc::register_module_config("rbd", write_config);
    let m = app.methods();
    m.register("bdev_rbd_register_cluster", States::RUNTIME, register_cluster);
    m.register("bdev_rbd_unregister_cluster", States::RUNTIME, unregister_cluster);
    m.register("bdev_rbd_get_clusters_info", States::RUNTIME, get_clusters_info);
    m.register("bdev_rbd_create", States::RUNTIME, create);
    m.register("bdev_rbd_delete", States::RUNTIME, |p: Delete, r: Responder| delete_rpc("rbd", p, r));
    m.register("bdev_rbd_resize", States::RUNTIME, resize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_take_strings_numbers_and_bools_and_refuse_the_rest() {
        let m = config_map(Some(json!({"mon_host": "127.0.0.1:6789", "rados_osd_op_timeout": 3, "rbd_cache": false})), "config")
            .unwrap()
            .unwrap();
        assert_eq!(m["rados_osd_op_timeout"], "3");
        assert_eq!(m["rbd_cache"], "false");
        let e = config_map(Some(json!("mon_host=1.2.3.4")), "config_param").unwrap_err();
        assert!(e.message.contains("config_param") && !e.message.contains("invalid type"), "{}", e.message);
        assert!(config_map(Some(json!({"a": [1]})), "config").is_err());
        assert_eq!(config_map(None, "config").unwrap(), None);
    }

    #[test]
    fn pollux_defaults_apply_unless_given_in_any_spelling() {
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let with = |v: &[(&str, &str)]| params_with_defaults(Some(&v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        assert_eq!(params_with_defaults(None), pairs(&[("client_mount_timeout", MOUNT_TIMEOUT_S)]));
        assert_eq!(with(&[("client mount-timeout", "5")]), pairs(&[("client mount-timeout", "5")]));
        // librbd's own dispatch (the default, or asked for): its throttle stays.
        assert_eq!(
            with(&[("rbd_non_blocking_aio", "true")]),
            pairs(&[("client_mount_timeout", MOUNT_TIMEOUT_S), ("rbd_non_blocking_aio", "true")])
        );
        // Dispatch on the reactor: the throttle is lifted unless given.
        for off in ["false", "FALSE", "0"] {
            assert_eq!(
                with(&[("rbd non-blocking aio", off)]),
                pairs(&[
                    ("client_mount_timeout", MOUNT_TIMEOUT_S),
                    ("objecter_inflight_ops", "0"),
                    ("objecter_inflight_op_bytes", "0"),
                    ("rbd non-blocking aio", off),
                ])
            );
        }
        assert_eq!(
            with(&[("objecter_inflight_ops", "64"), ("rbd_non_blocking_aio", "false")]),
            pairs(&[
                ("client_mount_timeout", MOUNT_TIMEOUT_S),
                ("objecter_inflight_op_bytes", "0"),
                ("objecter_inflight_ops", "64"),
                ("rbd_non_blocking_aio", "false"),
            ])
        );
    }

    /// Debian's librbd1 and librados2 are installed on Pollux's test
    /// machines (the README's test command installs them): every symbol
    /// resolves.
    #[test]
    fn librbd_and_librados_load_here() {
        rados::lib().expect("librbd.so.1 and librados.so.2 load");
    }
}
