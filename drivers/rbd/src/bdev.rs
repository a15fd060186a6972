//! The RBD bdev: an image behind the bdev layer. Each reactor's channel
//! submits with librbd's asynchronous calls (`rbd_aio_readv` and friends,
//! which do not block) and takes completions from a lock-free queue that
//! librbd's callback threads fill; in interrupt mode the callback also
//! rings an eventfd the reactor sleeps on (once per batch: a flag says
//! whether the bell already rang). The bell is watched edge-triggered and
//! never read: each ring wakes the reactor once, and a pass of the poller
//! that finds nothing costs no system call.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::c_void;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use pollux_core::bdev::{Backend, BackendChannel, Bdev, BdevIo, IoStatus, IoType};
use pollux_core::log::FaultLog;
use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::sys::{EventFd, Interest};
use serde_json::{Value, json};

use crate::rados::{self, Image};
use crate::sys::RbdCompletionT;

/// Requests in flight per channel (more wait in the channel).
const SLOTS: usize = 256;
/// How long a dropped channel's requests may stay with librbd before their
/// memory is given up for lost (leaked: librbd may still use it).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// A submit call that takes longer held the reactor: logged (at WARN for
/// the first few of a channel, as failed requests are). librbd takes locks
/// of its own in the call, and with `rbd_non_blocking_aio` false does all
/// its dispatching there (see the RPC module; seen: waits up to 0.2 ms with
/// the OSD on the same two cores); a thread preempted in the call also
/// shows up here, hence a bound well above a scheduler's time slice.
const SLOW_SUBMIT: Duration = Duration::from_millis(10);

/// What `bdev_rbd_create` was given (for `bdev_get_bdevs` and save_config).
#[derive(Clone, Debug)]
pub struct RbdSpec {
    pub pool_name: String,
    pub rbd_name: String,
    pub user_id: Option<String>,
    pub config: Option<BTreeMap<String, String>>,
    pub cluster_name: Option<String>,
    pub read_only: bool,
    /// The registered cluster's settings, for `driver_specific`.
    pub cluster_info: Option<Value>,
}

pub struct RbdBackend {
    pub spec: RbdSpec,
    /// Taken (and closed off the reactors) when the bdev is destroyed;
    /// channels hold their own references.
    image: std::sync::Mutex<Option<Arc<Image>>>,
}

impl RbdBackend {
    pub fn new(spec: RbdSpec, image: Arc<Image>) -> RbdBackend {
        RbdBackend { spec, image: std::sync::Mutex::new(Some(image)) }
    }

    pub fn image(&self) -> Option<Arc<Image>> {
        self.image.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Backend for RbdBackend {
    fn module_name(&self) -> &'static str {
        "rbd"
    }
    fn product_name(&self) -> &'static str {
        "Ceph Rbd Disk"
    }
    fn supports(&self, kind: IoType) -> bool {
        match kind {
            IoType::Read | IoType::Flush | IoType::Reset => true,
            IoType::Write | IoType::Unmap | IoType::WriteZeroes => !self.spec.read_only,
            IoType::Compare => false,
        }
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        match self.image() {
            Some(img) => match RbdChannel::new(img) {
                Ok(c) => Box::new(c),
                Err(e) => {
                    tracing::error!("rbd {}/{}: cannot set up a channel on this reactor: {e}", self.spec.pool_name, self.spec.rbd_name);
                    Box::new(Failing)
                }
            },
            None => Box::new(Failing),
        }
    }
    fn driver_specific(&self) -> Value {
        let s = &self.spec;
        let mut rbd = json!({"pool_name": s.pool_name, "rbd_name": s.rbd_name});
        if let Some(info) = &s.cluster_info {
            // As SPDK: a registered cluster's settings in place of the bdev's.
            for k in ["user_id", "config_param", "config_file", "key_file"] {
                if let Some(v) = info.get(k) {
                    rbd[k] = v.clone();
                }
            }
        } else {
            if let Some(u) = &s.user_id {
                rbd["user_id"] = u.clone().into();
            }
            if let Some(c) = &s.config {
                rbd["config"] = json!(c);
            }
        }
        // The bdev layer puts it under "rbd", as SPDK's dump_info_json does.
        rbd
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        let s = &self.spec;
        let mut p = json!({"name": b.name(), "pool_name": s.pool_name, "rbd_name": s.rbd_name, "block_size": b.block_size(), "uuid": b.uuid().to_string()});
        if let Some(u) = &s.user_id {
            p["user_id"] = u.clone().into();
        }
        if let Some(c) = &s.config {
            p["config"] = json!(c);
        }
        if let Some(c) = &s.cluster_name {
            p["cluster_name"] = c.clone().into();
        }
        if s.read_only {
            p["read_only"] = true.into();
        }
        Some(("bdev_rbd_create", p))
    }
    fn destroy(&self) {
        if let Some(img) = self.image.lock().unwrap_or_else(|e| e.into_inner()).take() {
            rados::close_off_reactor(img);
        }
    }
}

/// Fails every request (a channel that could not be set up, or a bdev
/// being destroyed).
struct Failing;
impl BackendChannel for Failing {
    fn submit(&self, io: BdevIo) {
        io.complete(IoStatus::NoDevice);
    }
}

/// Where librbd's callbacks leave finished requests for one channel:
/// (slot, completion).
struct Inbox {
    done: ArrayQueue<(u32, usize)>,
    /// Interrupt mode: rung once per batch (see [`Inbox::put`]).
    doorbell: Option<EventFd>,
    /// The bell has rung and the reactor has not taken it yet.
    rung: AtomicBool,
}

impl Inbox {
    /// Leave a finished request (on a librbd thread) and, in interrupt
    /// mode, ring the bell unless it is already ringing. The flag is
    /// claimed before the bell rings, so of several callbacks at once one
    /// rings. (Checking the flag, ringing, then setting it lost wake-ups:
    /// two callbacks at once could leave the flag set over a bell the
    /// reactor had drained, and every later completion skipped ringing.)
    fn put(&self, item: (u32, usize)) {
        // One request per slot at a time and room for every slot: never full.
        let _ = self.done.push(item);
        if let Some(d) = &self.doorbell {
            if !self.rung.swap(true, Ordering::SeqCst) {
                d.notify();
            }
        }
    }

    /// Take the bell (on the reactor) before reading the queue: clear the
    /// flag, so a request left after the queue has been read rings again.
    /// The eventfd is not read: it is watched edge-triggered, so each ring
    /// wakes the reactor once whatever count it holds (a ring that comes
    /// after its request was taken costs one spare wake-up), and a count of
    /// rings cannot fill a u64. Reading it on every pass cost a system call
    /// per pass of an idle-polling reactor (28 per request measured through
    /// the gateway with a 50 us idle-poll window), and a level-triggered
    /// bell must be read or it wakes the reactor for ever.
    fn take_bell(&self) {
        // Set only by a ring (interrupt mode).
        if self.rung.load(Ordering::SeqCst) {
            self.rung.store(false, Ordering::SeqCst);
        }
    }
}

/// The callback argument of one slot: its inbox and index. Lives in a
/// boxed slice of the channel, at a fixed address, while any request of
/// the slot is in flight.
struct SlotArg {
    inbox: *const Inbox,
    slot: u32,
}

/// librbd's completion callback (on one of its threads).
///
/// # Safety
///
/// `arg` points to the [`SlotArg`] given at `rbd_aio_create_completion`,
/// which outlives the request: its channel is not finished while the
/// request is in flight (see [`RbdChannel`]'s Drop and [`finish`]).
unsafe extern "C" fn on_complete(c: RbdCompletionT, arg: *mut c_void) {
    // SAFETY: per the function's contract, `arg` is a live SlotArg whose
    // inbox (held by an Arc in the same channel) is alive too. Until the
    // request is in the inbox's queue its channel is not finished; once it
    // is, the reactor may take it and finish the channel at once, while
    // this thread still rings the bell: a reference of its own, taken
    // before, keeps the inbox (and its eventfd) alive until then.
    let (inbox, slot) = unsafe {
        let a = &*(arg as *const SlotArg);
        Arc::increment_strong_count(a.inbox);
        (Arc::from_raw(a.inbox), a.slot)
    };
    inbox.put((slot, c as usize));
}

struct InFlight {
    io: BdevIo,
}

struct ChanState {
    image: Option<Arc<Image>>,
    inbox: Arc<Inbox>,
    args: Box<[SlotArg]>,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    waiting: VecDeque<BdevIo>,
    /// Failed requests logged at WARN, the first few of the channel; the
    /// rest at DEBUG.
    errors: FaultLog,
    /// [`SLOW_SUBMIT`] in clock ticks, and the log budget of slow submits.
    slow_ticks: u64,
    slow: FaultLog,
    /// Each slot's iovecs (pointing into its request's buffers until the
    /// completion), kept with their capacity: no allocation per request.
    iovs: Vec<Vec<libc::iovec>>,
    /// Finished requests of one reap, kept with its capacity.
    finished: Vec<(InFlight, isize)>,
}

struct RbdChannel {
    st: Rc<RefCell<ChanState>>,
    poller: Poller,
}

impl RbdChannel {
    fn new(image: Arc<Image>) -> std::io::Result<RbdChannel> {
        let irq = reactor::interrupt_mode();
        let inbox = Arc::new(Inbox {
            done: ArrayQueue::new(SLOTS),
            doorbell: if irq { Some(EventFd::new()?) } else { None },
            rung: AtomicBool::new(false),
        });
        let args: Box<[SlotArg]> = (0..SLOTS as u32).map(|slot| SlotArg { inbox: Arc::as_ptr(&inbox), slot }).collect();
        let st = Rc::new(RefCell::new(ChanState {
            image: Some(image),
            inbox: inbox.clone(),
            args,
            slots: (0..SLOTS).map(|_| None).collect(),
            free: (0..SLOTS as u32).rev().collect(),
            waiting: VecDeque::new(),
            errors: FaultLog::new(),
            slow_ticks: pollux_core::clock::duration_to_ticks(SLOW_SUBMIT),
            slow: FaultLog::new(),
            iovs: (0..SLOTS).map(|_| Vec::new()).collect(),
            finished: Vec::with_capacity(SLOTS),
        }));
        let s = st.clone();
        let poller = reactor::register_poller("rbd_bdev", move || if reap(&s) > 0 { PollStatus::Busy } else { PollStatus::Idle });
        if let Some(d) = &inbox.doorbell {
            poller.add_wake_fd(d.as_raw_fd(), Interest::READABLE.edge())?;
        }
        Ok(RbdChannel { st, poller })
    }
}

impl BackendChannel for RbdChannel {
    fn submit(&self, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        if st.waiting.is_empty() {
            if let Err(io) = start(&mut st, io) {
                st.waiting.push_back(io);
            }
        } else {
            st.waiting.push_back(io);
        }
    }
}

/// Hand a request to librbd; give it back if no slot is free.
fn start(st: &mut ChanState, mut io: BdevIo) -> Result<(), BdevIo> {
    let Some(slot) = st.free.pop() else { return Err(io) };
    let Some(image) = st.image.as_ref().map(|i| i.raw()) else {
        st.free.push(slot);
        io.complete(IoStatus::NoDevice);
        return Ok(());
    };
    let kind = io.kind();
    if matches!(kind, IoType::Reset | IoType::Compare) {
        st.free.push(slot);
        // Nothing to reset: librbd has no per-bdev state to clear.
        io.complete(if kind == IoType::Reset { IoStatus::Success } else { IoStatus::Unsupported });
        return Ok(());
    }
    let Ok(lib) = rados::lib() else {
        st.free.push(slot);
        io.complete(IoStatus::NoDevice);
        return Ok(());
    };
    let (off, len) = (io.offset_bytes(), io.len_bytes());
    let mut iov = std::mem::take(&mut st.iovs[slot as usize]);
    iov.clear();
    if kind.has_data() {
        iov.extend(io.buffers_mut().iter_mut().map(|b| libc::iovec { iov_base: b.as_ptr().cast(), iov_len: b.len() }));
    }
    let arg = (&st.args[slot as usize] as *const SlotArg).cast_mut().cast::<c_void>();
    let mut c: RbdCompletionT = std::ptr::null_mut();
    // SAFETY: `arg` is the slot's SlotArg, alive until the callback ran
    // (the channel is finished only once no request is in flight: see
    // RbdChannel's Drop); `on_complete` has librbd's callback type; `c` is
    // a valid out-pointer.
    let rc = unsafe { (lib.rbd_aio_create_completion)(arg, on_complete, &mut c) };
    if rc < 0 {
        st.free.push(slot);
        io.complete(IoStatus::NoMemory);
        return Ok(());
    }
    // The call is timed (see `SLOW_SUBMIT`).
    let t0 = pollux_core::clock::ticks();
    // SAFETY: an open image (the channel holds an Arc to it), a fresh
    // completion, and for reads and writes iovecs over the request's
    // buffers; the buffers stay in `slots[slot]` and the iovecs in
    // `iovs[slot]` until the completion comes back through the inbox.
    let rc = unsafe {
        match kind {
            IoType::Read => (lib.rbd_aio_readv)(image, iov.as_ptr(), iov.len() as i32, off, c),
            IoType::Write => (lib.rbd_aio_writev)(image, iov.as_ptr(), iov.len() as i32, off, c),
            IoType::Flush => (lib.rbd_aio_flush)(image, c),
            IoType::Unmap => (lib.rbd_aio_discard)(image, off, len, c),
            IoType::WriteZeroes => (lib.rbd_aio_write_zeroes)(image, off, len as usize, c, 0, 0),
            IoType::Reset | IoType::Compare => unreachable!("answered above"),
        }
    };
    let took = pollux_core::clock::ticks().wrapping_sub(t0);
    if took > st.slow_ticks {
        log_slow(st, kind, took);
    }
    if rc < 0 {
        // SAFETY: librbd did not take the completion: release it here.
        unsafe { (lib.rbd_aio_release)(c) };
        st.iovs[slot as usize] = iov;
        st.free.push(slot);
        log_error(st, kind, off, -rc);
        io.complete(status_of_errno(-rc));
        return Ok(());
    }
    // The iovecs' heap memory does not move with the Vec: librbd's
    // pointers into it stay valid while the slot keeps it.
    st.iovs[slot as usize] = iov;
    st.slots[slot as usize] = Some(InFlight { io });
    Ok(())
}

fn status_of_errno(errno: i32) -> IoStatus {
    match errno {
        libc::EROFS => IoStatus::ReadOnly,
        libc::ENOMEM | libc::EAGAIN => IoStatus::NoMemory,
        // The image was removed, or this client was blocklisted.
        libc::ENOENT | libc::ESHUTDOWN | libc::EBADF => IoStatus::NoDevice,
        libc::ECANCELED => IoStatus::Aborted,
        _ => IoStatus::Failed,
    }
}

fn log_error(st: &ChanState, kind: IoType, off: u64, errno: i32) {
    let e = std::io::Error::from_raw_os_error(errno);
    pollux_core::log_budgeted!(
        st.errors,
        warn,
        "rbd: further failed requests of this channel are logged at debug level",
        "rbd: {kind:?} at byte {off} failed: {e} (errno {errno})"
    );
}

#[cold]
fn log_slow(st: &ChanState, kind: IoType, took: u64) {
    let d = pollux_core::clock::ticks_to_duration(took);
    pollux_core::log_budgeted!(
        st.slow,
        warn,
        "rbd: further slow submits of this channel are logged at debug level",
        "rbd: a {kind:?} submit to librbd held the reactor {d:?} (librbd waiting on a lock, or the thread preempted; rbd_non_blocking_aio true, librbd's default, keeps librbd's dispatching off the reactor)"
    );
}

/// Complete what librbd finished, then start waiting requests.
fn reap(st: &Rc<RefCell<ChanState>>) -> usize {
    let Ok(lib) = rados::lib() else { return 0 };
    let mut done = std::mem::take(&mut st.borrow_mut().finished);
    {
        let mut s = st.borrow_mut();
        s.inbox.take_bell();
        while let Some((slot, c)) = s.inbox.done.pop() {
            let c = c as RbdCompletionT;
            // SAFETY: a completion librbd handed back through our callback,
            // released once, here.
            let ret = unsafe {
                let r = (lib.rbd_aio_get_return_value)(c);
                (lib.rbd_aio_release)(c);
                r
            };
            if let Some(f) = s.slots.get_mut(slot as usize).and_then(Option::take) {
                s.free.push(slot);
                done.push((f, ret));
            }
        }
        while let Some(io) = s.waiting.pop_front() {
            if let Err(io) = start(&mut s, io) {
                s.waiting.push_front(io);
                break;
            }
        }
    }
    let n = done.len();
    for (f, ret) in done.drain(..) {
        let kind = f.io.kind();
        let status = if ret < 0 {
            let s = st.borrow();
            log_error(&s, kind, f.io.offset_bytes(), -ret as i32);
            status_of_errno(-ret as i32)
        } else if kind == IoType::Read && ret as u64 != f.io.len_bytes() {
            tracing::warn!("rbd: read at byte {} returned {ret} of {} bytes", f.io.offset_bytes(), f.io.len_bytes());
            IoStatus::Failed
        } else {
            IoStatus::Success
        };
        f.io.complete(status);
    }
    st.borrow_mut().finished = done;
    n
}

impl Drop for RbdChannel {
    fn drop(&mut self) {
        // Requests that never reached librbd end here.
        let waiting = std::mem::take(&mut self.st.borrow_mut().waiting);
        for io in waiting {
            io.complete(IoStatus::Aborted);
        }
        let bell = self.st.borrow().inbox.doorbell.as_ref().map(|d| d.as_raw_fd());
        if let Some(fd) = bell {
            self.poller.remove_wake_fd(fd);
        }
        reap(&self.st);
        if !in_flight(&self.st) || reactor::try_current().is_none() {
            return finish(&self.st, None);
        }
        // A consumer let go of its channel with requests still with librbd
        // (a connection that closed, a COMPARE AND WRITE's channel of the
        // moment). librbd holds their callback arguments and writes into
        // read buffers until each completes: a poller of their own reaps
        // them and then finishes the channel, instead of this drop waiting
        // for them on the reactor (up to DRAIN_LIMIT, everything else on
        // the reactor stalled: an unreachable OSD holds them that long).
        let holder: Rc<RefCell<Option<Draining>>> = Rc::default();
        let (h, st) = (holder.clone(), self.st.clone());
        let poller = reactor::register_poller("rbd_drain", move || {
            let n = reap(&st);
            if !in_flight(&st) {
                // Finishes the channel (Draining's drop) and unregisters this
                // poller from inside its own run.
                drop(h.borrow_mut().take());
            }
            if n > 0 { PollStatus::Busy } else { PollStatus::Idle }
        });
        if let Some(fd) = bell {
            if let Err(e) = poller.add_wake_fd(fd, Interest::READABLE.edge()) {
                // The poller still runs whenever the reactor is awake.
                tracing::warn!("rbd: a draining channel cannot wait for its bell ({e})");
            }
        }
        // The limit: a timed poller, which wakes a sleeping reactor.
        let h = holder.clone();
        let limit = reactor::register_timed_poller("rbd_drain_limit", DRAIN_LIMIT, move || {
            drop(h.borrow_mut().take());
            PollStatus::Busy
        });
        *holder.borrow_mut() = Some(Draining { st: self.st.clone(), pollers: Some((poller, limit)) });
        // What finished while the bell was between pollers (the reap clears
        // the bell's flag: later completions ring the new poller's bell).
        reap(&self.st);
    }
}

/// Whether requests of the channel are still with librbd.
fn in_flight(st: &Rc<RefCell<ChanState>>) -> bool {
    st.borrow().slots.iter().any(Option::is_some)
}

/// A dropped channel whose requests are still with librbd: its poller
/// reaps them; dropped once they are done or after [`DRAIN_LIMIT`], it
/// finishes the channel. (At exit, the reactor's pollers go without it:
/// the channel, its requests and its hold on the image are leaked, which
/// is safe; they were with librbd.)
struct Draining {
    st: Rc<RefCell<ChanState>>,
    /// The reaping poller and the limit's.
    pollers: Option<(Poller, Poller)>,
}

impl Drop for Draining {
    fn drop(&mut self) {
        finish(&self.st, self.pollers.take().map(|(p, _limit)| p));
    }
}

/// The end of a channel: requests still with librbd (after [`DRAIN_LIMIT`])
/// are leaked, with the channel's hold on the image (closing an image with
/// requests in flight is not allowed); otherwise the image is closed off
/// the reactor once no one holds it.
fn finish(st: &Rc<RefCell<ChanState>>, poller: Option<Poller>) {
    let mut st = st.borrow_mut();
    if let (Some(p), Some(d)) = (&poller, &st.inbox.doorbell) {
        p.remove_wake_fd(d.as_raw_fd());
    }
    drop(poller);
    let stuck = st.slots.iter().filter(|s| s.is_some()).count();
    if stuck > 0 {
        // Memory safety over memory: librbd may still call back into the
        // arguments and write into the buffers, so they are leaked.
        tracing::error!("rbd: {stuck} request(s) still with librbd after {DRAIN_LIMIT:?}; their memory is leaked");
        let args = std::mem::take(&mut st.args);
        std::mem::forget(args);
        std::mem::forget(st.inbox.clone());
        for s in st.slots.iter_mut() {
            std::mem::forget(s.take());
        }
        std::mem::forget(std::mem::take(&mut st.iovs));
        std::mem::forget(st.image.take());
    }
    if let Some(img) = st.image.take() {
        rados::close_off_reactor(img);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callbacks on several threads at once, the reactor sleeping on the
    /// bell between batches, watched edge-triggered as the reactor watches
    /// it: every request left is seen, and each one left after the reactor
    /// last read the queue is followed by a ring (a reactor asleep on the
    /// bell wakes).
    #[test]
    fn no_finished_request_waits_behind_a_silent_bell() {
        const THREADS: usize = 4;
        const EACH: usize = 20_000;
        let inbox =
            Arc::new(Inbox { done: ArrayQueue::new(THREADS), doorbell: Some(EventFd::new().unwrap()), rung: AtomicBool::new(false) });
        // Each thread keeps one request in flight, like a slot: it leaves
        // the next only once the reactor has taken the last.
        let taken: Arc<Vec<std::sync::atomic::AtomicUsize>> = Arc::new((0..THREADS).map(|_| Default::default()).collect());
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (inbox, taken) = (inbox.clone(), taken.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        while taken[t].load(Ordering::Acquire) < i {
                            std::thread::yield_now();
                        }
                        inbox.put((t as u32, i));
                    }
                })
            })
            .collect();
        let epoll = pollux_core::sys::Epoll::new().unwrap();
        epoll.add(inbox.doorbell.as_ref().unwrap().as_raw_fd(), Interest::READABLE.edge(), 1).unwrap();
        let mut events = Vec::with_capacity(1);
        let mut seen = 0;
        while seen < THREADS * EACH {
            let n = epoll.wait(&mut events, Some(Duration::from_secs(10))).unwrap();
            assert_eq!(n, 1, "the bell stayed silent with {} request(s) waiting ({seen} seen)", inbox.done.len());
            inbox.take_bell();
            while let Some((t, _)) = inbox.done.pop() {
                taken[t as usize].fetch_add(1, Ordering::Release);
                seen += 1;
            }
        }
        for p in producers {
            p.join().unwrap();
        }
    }
}
