//! Safe handles over librados and librbd: a connected cluster, a pool's
//! I/O context, an open image. Creating, connecting, opening and closing
//! block (tens of milliseconds, up to `client_mount_timeout` when the
//! cluster is unreachable): callers run them off the reactors. Dropping a
//! handle releases it in the same blocking way, so the last reference must
//! be dropped off the reactors too ([`close_off_reactor`]).

use std::ffi::{CString, c_int};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::sys::{Lib, RadosIoctxT, RadosT, RbdImageT};

/// Why a librados or librbd call failed: the call and its errno.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotAvailable(String),
    #[error("{call}: {} (errno {errno}){}", std::io::Error::from_raw_os_error(*.errno), detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Call { call: &'static str, errno: i32, detail: Option<String> },
    #[error("{0} contains a NUL byte")]
    Nul(String),
}

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotAvailable(_) => libc::ENOSYS,
            Error::Call { errno, .. } => *errno,
            Error::Nul(_) => libc::EINVAL,
        }
    }
}

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// librados and librbd, opened on first use and kept for the process.
pub fn lib() -> Result<&'static Lib, Error> {
    match LIB.get_or_init(Lib::load) {
        Ok(l) => Ok(l),
        Err(e) => Err(Error::NotAvailable(e.clone())),
    }
}

fn cstr(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Nul(s.to_string()))
}

fn check(call: &'static str, rc: c_int, detail: impl FnOnce() -> Option<String>) -> Result<(), Error> {
    if rc < 0 { Err(Error::Call { call, errno: -rc, detail: detail() }) } else { Ok(()) }
}

/// How to reach a cluster.
#[derive(Clone, Debug, Default)]
pub struct ConnectSpec {
    /// The user, without `client.` (`None`: librados' default, admin).
    pub user_id: Option<String>,
    /// A config file to read; `None` reads the default search path when
    /// `read_default_file`.
    pub config_file: Option<String>,
    pub read_default_file: bool,
    /// Options set after the file, in order.
    pub params: Vec<(String, String)>,
    pub key_file: Option<String>,
    /// CPUs for librados' threads (they inherit the creating thread's).
    pub cpus: Option<Vec<usize>>,
    /// Start librados' and librbd's threads with `SCHED_BATCH` (see
    /// [`starting_threads`]): set where the reactors sleep when idle.
    pub batch_threads: bool,
}

/// A connected `rados_t`.
#[derive(Debug)]
pub struct Cluster {
    h: RadosT,
    /// [`ConnectSpec::batch_threads`], for the images opened on it.
    batch_threads: bool,
}

// SAFETY: a rados_t may be used from any thread (librados is thread-safe);
// Pollux calls rados_shutdown once, from Drop, when no other reference is left.
unsafe impl Send for Cluster {}
// SAFETY: as above: every librados call Pollux makes on a shared rados_t is
// thread-safe.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Create, configure and connect (blocks).
    pub fn connect(spec: &ConnectSpec) -> Result<Cluster, Error> {
        let lib = lib()?;
        if let Some(cpus) = &spec.cpus {
            if let Err(e) = pollux_core::sys::set_affinity(cpus) {
                tracing::warn!("rbd: cannot set the CPU affinity of librados' threads: {e}");
            }
        }
        let id = spec.user_id.as_deref().map(cstr).transpose()?;
        let mut h: RadosT = std::ptr::null_mut();
        // SAFETY: `h` is a valid out-pointer; `id` is null or a live C string.
        let rc = unsafe { (lib.rados_create)(&mut h, id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) };
        check("rados_create", rc, || spec.user_id.clone())?;
        // From here on `c` shuts the handle down on every error path.
        let c = Cluster { h, batch_threads: spec.batch_threads };
        if spec.config_file.is_some() || spec.read_default_file {
            let path = spec.config_file.as_deref().map(cstr).transpose()?;
            // SAFETY: a created rados_t and a null or live C string.
            let rc = unsafe { (lib.rados_conf_read_file)(c.h, path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr())) };
            // As SPDK: the default file may be absent; a named one may not.
            if spec.config_file.is_some() {
                check("rados_conf_read_file", rc, || spec.config_file.clone())?;
            }
        }
        let key = spec.key_file.iter().map(|k| ("keyring".to_string(), k.clone()));
        for (k, v) in spec.params.iter().cloned().chain(key) {
            let (ck, cv) = (cstr(&k)?, cstr(&v)?);
            // SAFETY: a created rados_t and live C strings.
            let rc = unsafe { (lib.rados_conf_set)(c.h, ck.as_ptr(), cv.as_ptr()) };
            check("rados_conf_set", rc, || Some(format!("{k} = {v}")))?;
        }
        // SAFETY: a created, configured rados_t.
        let rc = starting_threads(spec.batch_threads, || unsafe { (lib.rados_connect)(c.h) });
        check("rados_connect", rc, || None)?;
        Ok(c)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: our handle, not used again; every pool and image of it
            // holds an Arc to it, so none is left.
            unsafe { (lib.rados_shutdown)(self.h) };
        }
    }
}

/// Run `f`, which starts librados' or librbd's threads, with the calling
/// thread's scheduling policy `SCHED_BATCH` when `batch`: the threads it
/// starts inherit it. The calling thread's own policy is put back after.
///
/// Why: on cores shared with sleeping (interrupt-mode) reactors, each
/// submit wakes one of librados' threads, and a woken `SCHED_OTHER`
/// thread preempts the reactor in the middle of its pass (then the reactor
/// preempts it back): two context switches per wake-up. A `SCHED_BATCH`
/// thread does not preempt on wake-up (the kernel's wake-up preemption
/// skips it); it runs when the reactor sleeps, on a free core, or at the
/// next tick. Through an NVMe/TCP gateway on this machine: the reactor's
/// context switches per write 0.27 -> 0.18, its CPU per write 8.0 ->
/// 6.6 us (benchmarks.md, "Ceph RBD gateway"). Not for busy-polling
/// reactors: one never sleeps, so a librados thread woken on its core
/// would wait for the tick (milliseconds) where it now preempts at once.
/// Only from `SCHED_OTHER`: a policy the operator chose (`chrt`) is kept.
pub fn starting_threads<T>(batch: bool, f: impl FnOnce() -> T) -> T {
    // SAFETY: sched_getscheduler(0) reads the calling thread's policy.
    if !batch || unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return f();
    }
    fn set(policy: libc::c_int) {
        let p = libc::sched_param { sched_priority: 0 };
        // SAFETY: a live sched_param; 0 is the calling thread; switching
        // between the non-real-time policies needs no privilege.
        if unsafe { libc::sched_setscheduler(0, policy, &p) } < 0 {
            tracing::warn!("rbd: cannot set the scheduling policy of librados' threads: {}", std::io::Error::last_os_error());
        }
    }
    /// Puts SCHED_OTHER back however `f` ends.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            set(libc::SCHED_OTHER);
        }
    }
    set(libc::SCHED_BATCH);
    let _restore = Restore;
    f()
}

/// A pool's I/O context.
#[derive(Debug)]
pub struct Pool {
    h: RadosIoctxT,
    _cluster: Arc<Cluster>,
}

// SAFETY: an ioctx may be used from any thread for the calls Pollux makes
// (rbd_open); it is destroyed once, from Drop.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    pub fn open(cluster: Arc<Cluster>, name: &str) -> Result<Pool, Error> {
        let lib = lib()?;
        let n = cstr(name)?;
        let mut h: RadosIoctxT = std::ptr::null_mut();
        // SAFETY: a connected cluster, a live C string, a valid out-pointer.
        let rc = unsafe { (lib.rados_ioctx_create)(cluster.h, n.as_ptr(), &mut h) };
        check("rados_ioctx_create", rc, || Some(format!("pool {name}")))?;
        Ok(Pool { h, _cluster: cluster })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            // SAFETY: our ioctx; every image opened on it holds an Arc to
            // this pool, so none is left.
            unsafe { (lib.rados_ioctx_destroy)(self.h) };
        }
    }
}

/// What an image's header watch calls (on a librbd thread).
type WatchFn = Box<dyn Fn() + Send + Sync>;

/// An open image.
pub struct Image {
    h: RbdImageT,
    /// `rbd_update_watch`'s handle and the callback its argument points to.
    watch: Mutex<Option<(u64, Box<WatchFn>)>>,
    _pool: Arc<Pool>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("h", &self.h).finish()
    }
}

/// `rbd_update_watch`'s callback.
///
/// # Safety
///
/// `arg` points to the [`WatchFn`] boxed in the image's `watch`, which
/// stays until `rbd_update_unwatch` has returned.
unsafe extern "C" fn on_update(arg: *mut std::ffi::c_void) {
    // SAFETY: per the function's contract.
    let f = unsafe { &*(arg as *const WatchFn) };
    f();
}

// SAFETY: librbd's asynchronous calls and rbd_get_size are thread-safe on
// one image; rbd_close runs once, from Drop, when no request is in flight
// (every channel holds an Arc and waits for its requests before dropping).
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    pub fn open(pool: Arc<Pool>, name: &str, read_only: bool) -> Result<Image, Error> {
        let lib = lib()?;
        let n = cstr(name)?;
        let mut h: RbdImageT = std::ptr::null_mut();
        let open = if read_only { lib.rbd_open_read_only } else { lib.rbd_open };
        // SAFETY: a live ioctx, a live C string, a valid out-pointer, no
        // snapshot.
        let rc = starting_threads(pool._cluster.batch_threads, || unsafe { open(pool.h, n.as_ptr(), &mut h, std::ptr::null()) });
        check("rbd_open", rc, || Some(format!("image {name}")))?;
        Ok(Image { h, watch: Mutex::new(None), _pool: pool })
    }

    /// Call `f` (on a librbd thread) whenever the image's header changes:
    /// a resize by this or another client, a snapshot, a lock change. `f`
    /// must not call into librbd for this image (send a message instead).
    pub fn watch(&self, f: WatchFn) -> Result<(), Error> {
        let lib = lib()?;
        let boxed: Box<WatchFn> = Box::new(f);
        let arg = (&*boxed as *const WatchFn).cast_mut().cast::<std::ffi::c_void>();
        let mut handle = 0u64;
        // SAFETY: an open image; `arg` points into `boxed`, which is kept in
        // `self.watch` until unwatched (Drop); `on_update` has librbd's type.
        let rc = unsafe { (lib.rbd_update_watch)(self.h, &mut handle, on_update, arg) };
        check("rbd_update_watch", rc, || None)?;
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some((handle, boxed));
        Ok(())
    }

    pub fn raw(&self) -> RbdImageT {
        self.h
    }

    /// The image's size in bytes.
    pub fn size(&self) -> Result<u64, Error> {
        let lib = lib()?;
        let mut s = 0u64;
        // SAFETY: an open image and a valid out-pointer.
        let rc = unsafe { (lib.rbd_get_size)(self.h, &mut s) };
        check("rbd_get_size", rc, || None)?;
        Ok(s)
    }

    /// Resize to `bytes` (blocks).
    pub fn resize(&self, bytes: u64) -> Result<(), Error> {
        let lib = lib()?;
        // SAFETY: an open image.
        let rc = unsafe { (lib.rbd_resize)(self.h, bytes) };
        check("rbd_resize", rc, || None)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Ok(lib) = lib() {
            if let Some((handle, f)) = self.watch.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
                // SAFETY: the watch registered by `watch`; after it returns
                // no callback runs, so the box may go.
                unsafe { (lib.rbd_update_unwatch)(self.h, handle) };
                drop(f);
            }
            // SAFETY: our image, with no request in flight (see the Sync
            // impl), not used again.
            let rc = unsafe { (lib.rbd_close)(self.h) };
            if rc < 0 {
                tracing::warn!("rbd: rbd_close: {}", std::io::Error::from_raw_os_error(-rc));
            }
        }
    }
}

/// Threads closing images and clusters: joined at exit so that closes
/// finish (and exclusive locks are released) before the process ends.
static CLOSING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Drop `what` (the last reference to an image or cluster) on a thread of
/// its own.
pub fn close_off_reactor<T: Send + 'static>(what: T) {
    let t = std::thread::Builder::new().name("rbd-close".into()).spawn(move || drop(what));
    match t {
        Ok(t) => {
            let mut list = CLOSING.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|h| !h.is_finished());
            list.push(t);
        }
        Err(e) => tracing::error!("rbd: cannot start a thread to close an image: {e}"),
    }
}

/// How long exit waits for closes: one to an unreachable cluster never ends.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait for every close started by [`close_off_reactor`] (at exit), at
/// most [`CLOSE_WAIT`].
pub fn wait_closes() {
    let list = std::mem::take(&mut *CLOSING.lock().unwrap_or_else(|e| e.into_inner()));
    let t0 = std::time::Instant::now();
    while list.iter().any(|t| !t.is_finished()) {
        if t0.elapsed() > CLOSE_WAIT {
            let n = list.iter().filter(|t| !t.is_finished()).count();
            tracing::warn!("rbd: {n} image(s) or cluster(s) still closing after {CLOSE_WAIT:?}; exiting without them");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::starting_threads;

    fn policy() -> i32 {
        // SAFETY: reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// Threads started inside take SCHED_BATCH when asked (librados' threads
    /// inherit it from the thread that connects), the calling thread gets
    /// its own policy back, also when `f` panics, and without `batch`
    /// nothing changes. (On a fresh thread: the test runner's may have
    /// been given another policy, which `starting_threads` leaves alone.)
    #[test]
    fn threads_started_for_librados_inherit_sched_batch() {
        std::thread::spawn(|| {
            let mine = policy();
            let spawned = |batch| starting_threads(batch, || std::thread::spawn(policy).join().unwrap());
            let expect = if mine == libc::SCHED_OTHER { libc::SCHED_BATCH } else { mine };
            assert_eq!(spawned(true), expect);
            assert_eq!(policy(), mine, "the calling thread keeps its policy");
            assert_eq!(spawned(false), mine);
            let r = std::panic::catch_unwind(|| starting_threads(true, || panic!("in f")));
            assert!(r.is_err());
            assert_eq!(policy(), mine, "a panic in f leaves the policy restored");
        })
        .join()
        .unwrap();
    }
}
