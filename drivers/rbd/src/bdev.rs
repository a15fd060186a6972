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
/// A dropped channel's requests still with librbd this long after the drop
/// are logged (an error; the channel keeps reaping them).
const DRAIN_WARN: Duration = Duration::from_secs(30);
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
            Some(img) => match RbdChannel::new(Some(img), format!("rbd {}/{}", self.spec.pool_name, self.spec.rbd_name)) {
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

/// How a request left [`start`] when it did not go to librbd: finished at
/// once (a reset, a failed submit), or back for want of a slot.
enum Started {
    InFlight,
    Done(BdevIo, IoStatus),
}

/// What a reaped request ends with: librbd's return value, or a status
/// decided without librbd.
enum Outcome {
    Ret(isize),
    Status(IoStatus),
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
    finished: Vec<(BdevIo, Outcome)>,
}

struct RbdChannel {
    st: Rc<RefCell<ChanState>>,
    poller: Poller,
    /// `rbd POOL/IMAGE`, for the log.
    label: String,
}

impl RbdChannel {
    fn new(image: Option<Arc<Image>>, label: String) -> std::io::Result<RbdChannel> {
        let irq = reactor::interrupt_mode();
        let inbox = Arc::new(Inbox {
            done: ArrayQueue::new(SLOTS),
            doorbell: if irq { Some(EventFd::new()?) } else { None },
            rung: AtomicBool::new(false),
        });
        let args: Box<[SlotArg]> = (0..SLOTS as u32).map(|slot| SlotArg { inbox: Arc::as_ptr(&inbox), slot }).collect();
        let st = Rc::new(RefCell::new(ChanState {
            image,
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
        Ok(RbdChannel { st, poller, label })
    }
}

impl BackendChannel for RbdChannel {
    fn submit(&self, io: BdevIo) {
        let done = {
            let mut st = self.st.borrow_mut();
            if st.waiting.is_empty() {
                match start(&mut st, io) {
                    Ok(Started::InFlight) => None,
                    Ok(Started::Done(io, status)) => Some((io, status)),
                    Err(io) => {
                        st.waiting.push_back(io);
                        None
                    }
                }
            } else {
                st.waiting.push_back(io);
                None
            }
        };
        // Completed with the channel's state let go: the consumer's
        // callback may submit again.
        if let Some((io, status)) = done {
            io.complete(status);
        }
    }
}

/// Hand a request to librbd; give it back if no slot is free. A request
/// that ends without librbd comes back as [`Started::Done`], to be
/// completed by the caller once it has let go of the channel's state (the
/// consumer's callback may submit to the channel again: completed under
/// the borrow, it panicked the reactor).
fn start(st: &mut ChanState, mut io: BdevIo) -> Result<Started, BdevIo> {
    let Some(slot) = st.free.pop() else { return Err(io) };
    let Some(image) = st.image.as_ref().map(|i| i.raw()) else {
        st.free.push(slot);
        return Ok(Started::Done(io, IoStatus::NoDevice));
    };
    let kind = io.kind();
    if matches!(kind, IoType::Reset | IoType::Compare) {
        st.free.push(slot);
        // Nothing to reset: librbd has no per-bdev state to clear.
        return Ok(Started::Done(io, if kind == IoType::Reset { IoStatus::Success } else { IoStatus::Unsupported }));
    }
    let Ok(lib) = rados::lib() else {
        st.free.push(slot);
        return Ok(Started::Done(io, IoStatus::NoDevice));
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
        return Ok(Started::Done(io, IoStatus::NoMemory));
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
        return Ok(Started::Done(io, status_of_errno(-rc)));
    }
    // The iovecs' heap memory does not move with the Vec: librbd's
    // pointers into it stay valid while the slot keeps it.
    st.iovs[slot as usize] = iov;
    st.slots[slot as usize] = Some(InFlight { io });
    Ok(Started::InFlight)
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
                done.push((f.io, Outcome::Ret(ret)));
            }
        }
        // Requests that end without librbd are completed below, with the
        // rest, once the state is let go.
        while let Some(io) = s.waiting.pop_front() {
            match start(&mut s, io) {
                Ok(Started::InFlight) => {}
                Ok(Started::Done(io, status)) => done.push((io, Outcome::Status(status))),
                Err(io) => {
                    s.waiting.push_front(io);
                    break;
                }
            }
        }
    }
    let n = done.len();
    for (io, outcome) in done.drain(..) {
        let kind = io.kind();
        let status = match outcome {
            Outcome::Status(status) => status,
            Outcome::Ret(ret) if ret < 0 => {
                let s = st.borrow();
                log_error(&s, kind, io.offset_bytes(), -ret as i32);
                status_of_errno(-ret as i32)
            }
            Outcome::Ret(ret) if kind == IoType::Read && ret as u64 != io.len_bytes() => {
                tracing::warn!("rbd: read at byte {} returned {ret} of {} bytes", io.offset_bytes(), io.len_bytes());
                IoStatus::Failed
            }
            Outcome::Ret(_) => IoStatus::Success,
        };
        io.complete(status);
    }
    st.borrow_mut().finished = done;
    n
}

impl Drop for RbdChannel {
    fn drop(&mut self) {
        let bell = self.st.borrow().inbox.doorbell.as_ref().map(|d| d.as_raw_fd());
        if let Some(fd) = bell {
            self.poller.remove_wake_fd(fd);
        }
        if reactor::try_current().is_none() {
            // Off a reactor (not expected) no request can complete.
            return leak(&self.st);
        }
        // Requests that never reached librbd end here: sent after their
        // consumer let go, a write could land over newer data written since
        // through another path (a host that retried on another gateway).
        let waiting = std::mem::take(&mut self.st.borrow_mut().waiting);
        for io in waiting {
            io.complete(IoStatus::Aborted);
        }
        // (None left: finished at once.) A consumer let go of its channel
        // with requests still with librbd (a connection that closed, a
        // callback that submitted once more).
        // librbd holds their callback arguments and writes into read
        // buffers until each completes: a poller of their own reaps them
        // and then finishes the channel, instead of this drop waiting for
        // them on the reactor (an unreachable OSD holds them up to
        // librados' op timeout, or for ever, with everything else on the
        // reactor stalled). At exit the reactor's pollers go without it:
        // the channel, its requests and its hold on the image are leaked,
        // which is safe; they were with librbd.
        let (st, end) = (self.st.clone(), self.st.clone());
        reactor::drain_in_background(
            "rbd_drain",
            std::mem::take(&mut self.label),
            DRAIN_WARN,
            bell.map(|fd| (fd, Interest::READABLE.edge())),
            move || (reap(&st), in_flight(&st)),
            move || finish(&end),
        );
    }
}

/// How many requests of the channel are with librbd.
fn in_flight(st: &Rc<RefCell<ChanState>>) -> usize {
    SLOTS - st.borrow().free.len()
}

/// The end of a channel whose requests are all done: the image is closed
/// off the reactor once no one holds it.
fn finish(st: &Rc<RefCell<ChanState>>) {
    let img = st.borrow_mut().image.take();
    if let Some(img) = img {
        rados::close_off_reactor(img);
    }
}

/// Memory safety over memory: librbd may still call back into the slots'
/// arguments and write into their buffers, so the channel's state (and its
/// hold on the image) is leaked.
fn leak(st: &Rc<RefCell<ChanState>>) {
    let n = in_flight(st) + st.borrow().waiting.len();
    if n > 0 {
        tracing::error!("rbd: a channel dropped off its reactor with {n} request(s); leaked");
        std::mem::forget(st.clone());
    } else {
        finish(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollux_core::bdev::{self, BdevSpec};
    use pollux_core::reactor::Harness;
    use std::cell::Cell;

    /// Channels without an image (as a finished channel is): every request
    /// that reaches `start` ends there, without librbd.
    struct NoImage;

    thread_local! {
        static STATE: RefCell<Option<Rc<RefCell<ChanState>>>> = const { RefCell::new(None) };
    }

    impl Backend for NoImage {
        fn module_name(&self) -> &'static str {
            "rbd"
        }
        fn product_name(&self) -> &'static str {
            "test"
        }
        fn supports(&self, kind: IoType) -> bool {
            kind != IoType::Compare
        }
        fn create_channel(&self) -> Box<dyn BackendChannel> {
            let c = RbdChannel::new(None, "test".into()).unwrap();
            STATE.with(|s| *s.borrow_mut() = Some(c.st.clone()));
            Box::new(c)
        }
    }

    /// A request that waited for a slot and then ends without librbd (a
    /// reset, a submit librbd refused) is completed from the channel's
    /// poller; its consumer's callback submits again to the same channel.
    /// It was completed with the channel's state borrowed: the second
    /// submit panicked the reactor ("already borrowed").
    #[test]
    fn a_callback_may_submit_again_when_a_waiting_request_fails_at_start() {
        // The channel's poller does nothing without the library.
        rados::lib().expect("librbd is needed for this test (apt install librbd1)");
        let h = Harness::new(1);
        let backend: Arc<dyn Backend> = Arc::new(NoImage);
        h.on(0, || bdev::register(BdevSpec { name: "rbd_noimage".into(), block_size: 512, num_blocks: 64, uuid: None, backend }).unwrap());
        let statuses: Rc<RefCell<Vec<IoStatus>>> = Rc::default();
        let slots = Rc::new(Cell::new(Vec::new()));
        let (out, held) = (statuses.clone(), slots.clone());
        h.on(0, move || {
            let d = Rc::new(bdev::open("rbd_noimage", true, |_| {}).unwrap());
            let ch = Rc::new(d.channel());
            // Every slot busy: the reset waits in the channel.
            let st = STATE.with(|s| s.borrow().clone().unwrap());
            held.set(std::mem::take(&mut st.borrow_mut().free));
            let (d2, ch2) = (d.clone(), ch.clone());
            d.reset(&ch, move |io: BdevIo| {
                out.borrow_mut().push(io.status());
                let out = out.clone();
                d2.reset(&ch2, move |io: BdevIo| out.borrow_mut().push(io.status()));
            });
            reactor::set_local(Rc::new((d, ch)));
        });
        h.run_until_idle(10);
        assert!(statuses.borrow().is_empty(), "the reset waited for a slot");
        // Slots come free: the channel's poller starts the reset.
        let st = STATE.with(|s| s.borrow().clone().unwrap());
        st.borrow_mut().free = slots.take();
        h.run_until_idle(10);
        assert_eq!(*statuses.borrow(), [IoStatus::NoDevice, IoStatus::NoDevice]);
    }

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

    /// A channel dropped with a request waiting for a slot ends it there,
    /// Aborted: sent to librbd after its consumer let go, a write could
    /// land over newer data written since through another path.
    #[test]
    fn a_dropped_channel_aborts_what_never_reached_librbd() {
        let h = Harness::new(1);
        let backend: Arc<dyn Backend> = Arc::new(NoImage);
        h.on(0, || bdev::register(BdevSpec { name: "rbd_noimage2".into(), block_size: 512, num_blocks: 64, uuid: None, backend }).unwrap());
        let statuses: Rc<RefCell<Vec<IoStatus>>> = Rc::default();
        let out = statuses.clone();
        h.on(0, move || {
            let d = bdev::open("rbd_noimage2", true, |_| {}).unwrap();
            let ch = d.channel();
            let st = STATE.with(|s| s.borrow().clone().unwrap());
            let slots = std::mem::take(&mut st.borrow_mut().free);
            d.reset(&ch, move |io: BdevIo| out.borrow_mut().push(io.status()));
            // The slots come free as the channel goes: the reset is not
            // started.
            st.borrow_mut().free = slots;
            drop((d, ch));
        });
        assert_eq!(*statuses.borrow(), [IoStatus::Aborted]);
        h.run_until_idle(10);
        assert_eq!(*statuses.borrow(), [IoStatus::Aborted]);
    }
}
