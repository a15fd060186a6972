//! Reactors: one pinned thread per core that drains its message inbox and runs
//! its pollers, forever.
//!
//! Every object belongs to one reactor. Code on another reactor never touches
//! it; it sends the owner a message ([`send_msg`]) through the owner's
//! lock-free inbox. Reactor-owned types (pollers, I/O channels, anything in
//! [`set_local`]) are `!Send`, so the compiler keeps them home.
//!
//! The free functions of this module act on the *current* reactor: the one
//! whose loop is running the calling code. Outside a reactor use a [`Handle`].

mod harness;
mod msg;
mod poller;
pub mod task;

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering, fence};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::clock;
use crate::sys::{self, Epoll, EventFd, Interest, TimerFd};

pub use harness::Harness;
pub use msg::Msg;
pub use poller::{PollStatus, Poller, PollerInfo, drain_in_background};

/// Messages taken from each queue per iteration, by default.
pub const DEFAULT_MSG_BATCH: usize = 64;
/// Inbox capacity; a full inbox parks further messages in the sender's overflow.
const INBOX_CAPACITY: usize = 16 * 1024;

const TOKEN_DOORBELL: u64 = 0;
const TOKEN_TIMER: u64 = u64::MAX;

/// Index of a reactor within its runtime (0 is the main reactor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReactorId(pub usize);

impl fmt::Display for ReactorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reactor {}", self.0)
    }
}

/// The part of a reactor other threads can reach: its inbox and doorbell.
struct Mailbox {
    queue: ArrayQueue<Msg>,
    sleeping: AtomicBool,
    doorbell: Option<EventFd>,
    core: usize,
    tid: AtomicI32,
}

/// State shared by all reactors of one runtime.
struct Shared {
    mailboxes: Box<[Mailbox]>,
    interrupt_mode: bool,
    msg_batch: usize,
    /// Interrupt mode's idle-poll window, in ticks and as set (us).
    idle_poll_ticks: AtomicU64,
    idle_poll_us: AtomicU64,
}

impl Shared {
    fn new(cores: &[usize], interrupt_mode: bool, msg_batch: usize, idle_poll: Duration) -> io::Result<Arc<Shared>> {
        let mailboxes = cores
            .iter()
            .map(|&core| {
                Ok(Mailbox {
                    queue: ArrayQueue::new(INBOX_CAPACITY),
                    sleeping: AtomicBool::new(false),
                    doorbell: if interrupt_mode { Some(EventFd::new()?) } else { None },
                    core,
                    tid: AtomicI32::new(0),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Shared {
            mailboxes: mailboxes.into(),
            interrupt_mode,
            msg_batch: msg_batch.max(1),
            idle_poll_ticks: AtomicU64::new(0),
            idle_poll_us: AtomicU64::new(0),
        };
        shared.set_idle_poll(idle_poll);
        Ok(Arc::new(shared))
    }

    fn set_idle_poll(&self, window: Duration) {
        self.idle_poll_us.store(window.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.idle_poll_ticks.store(clock::duration_to_ticks(window), Ordering::Relaxed);
    }

    /// Push a message; on a full inbox give it back.
    #[inline]
    fn try_push(&self, to: ReactorId, msg: Msg) -> Result<(), Msg> {
        let mb = &self.mailboxes[to.0];
        mb.queue.push(msg)?;
        if self.interrupt_mode {
            // Pairs with the fence in `Inner::sleep`: either the sleeper sees
            // the message or we see it sleeping.
            fence(Ordering::SeqCst);
            if mb.sleeping.load(Ordering::Relaxed) {
                if let Some(d) = &mb.doorbell {
                    d.notify();
                }
            }
        }
        Ok(())
    }
}

/// A `Send + Sync` handle on a runtime, for threads that are not reactors.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("reactors", &self.shared.mailboxes.len()).finish()
    }
}

impl Handle {
    pub fn reactor_count(&self) -> usize {
        self.shared.mailboxes.len()
    }

    /// The CPU core a reactor runs on.
    pub fn core_of(&self, r: ReactorId) -> usize {
        self.shared.mailboxes[r.0].core
    }

    /// Send a message. From a reactor of this runtime this is [`send_msg`];
    /// from any other thread it waits for room in a full inbox.
    pub fn send<F: FnOnce() + Send + 'static>(&self, to: ReactorId, f: F) {
        let mut msg = Msg::new(f);
        let on_own_reactor = try_with_current(|r| Arc::ptr_eq(&r.shared, &self.shared)).unwrap_or(false);
        if on_own_reactor {
            with_current(|r| r.send(to, msg));
            return;
        }
        while let Err(m) = self.shared.try_push(to, msg) {
            msg = m;
            std::thread::yield_now();
        }
    }
}

/// Interrupt-mode machinery of one reactor.
pub(crate) struct Irq {
    pub(crate) epoll: Epoll,
    timer: TimerFd,
    /// The deadline (ticks) the timer is armed for, `u64::MAX` if none:
    /// a sleep with the same deadline leaves it be.
    armed: Cell<u64>,
    events: RefCell<Vec<libc::epoll_event>>,
}

#[derive(Default)]
struct Stats {
    /// When the last iteration that did work ended (interrupt mode's
    /// idle-poll window counts from it).
    last_busy: Cell<u64>,
    /// When the reactor last woke from a sleep, how long that sleep was,
    /// and `busy` then (interrupt mode's loaded window).
    woke: Cell<u64>,
    slept: Cell<u64>,
    busy_at_wake: Cell<u64>,
    sleeps: Cell<u64>,
    /// Messages run (from other reactors and from this one).
    messages: Cell<u64>,
    busy: Cell<u64>,
    idle: Cell<u64>,
    iterations: Cell<u64>,
    last: Cell<u64>,
    start: Cell<u64>,
}

/// The reactor-local half of a reactor.
pub(crate) struct Inner {
    id: ReactorId,
    pub(crate) me: Weak<Inner>,
    shared: Arc<Shared>,
    pub(crate) pollers: poller::PollerSet,
    local: RefCell<VecDeque<Msg>>,
    overflow: RefCell<VecDeque<(ReactorId, Msg)>>,
    pub(crate) channels: RefCell<HashMap<usize, Weak<dyn Any>>>,
    locals: RefCell<HashMap<TypeId, Rc<dyn Any>, BuildHasherDefault<TypeIdHasher>>>,
    stats: Stats,
    /// A recent tick count: the start of this iteration, or later when
    /// refreshed ([`refresh_now`]). Hot paths stamp requests with it instead of
    /// reading the TSC for each one.
    now: Cell<u64>,
    exit: Cell<bool>,
    pub(crate) irq: Option<Irq>,
}

thread_local! {
    static CURRENT: Cell<*const Inner> = const { Cell::new(std::ptr::null()) };
}

/// Makes a reactor current for the lifetime of the guard.
struct Enter {
    prev: *const Inner,
    _keep: Rc<Inner>,
}

impl Drop for Enter {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.prev));
    }
}

#[inline]
fn try_with_current<R>(f: impl FnOnce(&Inner) -> R) -> Option<R> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: CURRENT is only non-null while an `Enter` guard on this thread
    // keeps the `Rc<Inner>` it points to alive; the reference handed to `f`
    // cannot outlive this call.
    Some(f(unsafe { &*p }))
}

#[inline]
#[track_caller]
pub(crate) fn with_current<R>(f: impl FnOnce(&Inner) -> R) -> R {
    match try_with_current(f) {
        Some(r) => r,
        None => panic!("this must run on a reactor (no reactor is current on this thread)"),
    }
}

impl Inner {
    #[inline]
    fn send(&self, to: ReactorId, msg: Msg) {
        if to == self.id {
            self.local.borrow_mut().push_back(msg);
            return;
        }
        let mut overflow = self.overflow.borrow_mut();
        if !overflow.is_empty() {
            // Keep per-destination order behind earlier parked messages.
            overflow.push_back((to, msg));
            return;
        }
        if let Err(msg) = self.shared.try_push(to, msg) {
            overflow.push_back((to, msg));
        }
    }

    fn flush_overflow(&self) -> bool {
        let mut overflow = self.overflow.borrow_mut();
        while let Some((to, msg)) = overflow.pop_front() {
            if let Err(msg) = self.shared.try_push(to, msg) {
                overflow.push_front((to, msg));
                return true;
            }
        }
        false
    }

    #[inline]
    fn process_messages(&self) -> usize {
        let batch = self.shared.msg_batch;
        let mut n = 0;
        while n < batch {
            let m = self.local.borrow_mut().pop_front();
            match m {
                Some(m) => m.run(),
                None => break,
            }
            n += 1;
        }
        let queue = &self.shared.mailboxes[self.id.0].queue;
        for _ in 0..batch {
            match queue.pop() {
                Some(m) => m.run(),
                None => break,
            }
            n += 1;
        }
        n
    }

    /// One loop iteration. Returns whether any work was done.
    fn iterate(&self, may_sleep: bool) -> bool {
        let now = self.stats.last.get();
        self.now.set(now);
        let msgs = self.process_messages();
        let mut busy = msgs > 0;
        if busy {
            self.stats.messages.set(self.stats.messages.get() + msgs as u64);
        }
        busy |= self.pollers.run_active();
        busy |= self.pollers.run_timed(now);
        busy |= self.flush_overflow();
        busy |= self.pollers.compact();

        let end = clock::ticks();
        let dt = end.saturating_sub(now);
        if busy {
            self.stats.busy.set(self.stats.busy.get() + dt);
            self.stats.last_busy.set(end);
        } else {
            self.stats.idle.set(self.stats.idle.get() + dt);
        }
        self.stats.iterations.set(self.stats.iterations.get() + 1);
        self.stats.last.set(end);

        // In interrupt mode an idle reactor keeps polling for the idle-poll
        // window after its last work: under load the next request usually
        // comes within it, and sleeping then waking for it costs more than
        // the poll (and puts the peer and the reactor in lock-step).
        if !busy
            && may_sleep
            && self.irq.is_some()
            && !self.exit.get()
            && end.saturating_sub(self.stats.last_busy.get()) >= self.idle_window(end)
            // The pollers' last look (arming what must be armed): work
            // found there means another iteration instead of sleep.
            && !self.pollers.before_sleep()
        {
            let blocked = self.sleep(end);
            let woke = clock::ticks();
            self.stats.idle.set(self.stats.idle.get() + woke.saturating_sub(end));
            self.stats.last.set(woke);
            if blocked {
                self.stats.woke.set(woke);
                self.stats.slept.set(woke.saturating_sub(end));
                self.stats.busy_at_wake.set(self.stats.busy.get());
                self.stats.sleeps.set(self.stats.sleeps.get() + 1);
            }
        }
        busy
    }

    /// How long interrupt mode polls after the last work before it sleeps:
    /// the idle-poll window, or [`LOADED_WINDOW_FACTOR`] times it for a
    /// loaded reactor: one whose last sleep was cut short by work (within
    /// the longer window) and that has been busy at least a quarter of the
    /// time since. Such a reactor is between the pieces of a stream of work
    /// (a large transfer arriving segment by segment) and would only pay
    /// for sleeping and waking (and make its peers pay for the wake-ups);
    /// a lightly loaded one sleeps between requests as before.
    fn idle_window(&self, now: u64) -> u64 {
        let base = self.shared.idle_poll_ticks.load(Ordering::Relaxed);
        let long = base.saturating_mul(LOADED_WINDOW_FACTOR);
        let awake = now.saturating_sub(self.stats.woke.get());
        let worked = self.stats.busy.get().saturating_sub(self.stats.busy_at_wake.get());
        if self.stats.slept.get() < long && worked.saturating_mul(4) >= awake { long } else { base }
    }

    /// Interrupt mode: block in epoll until a message, a timer or a wake fd.
    /// Returns whether it blocked (not when work was already waiting).
    fn sleep(&self, now: u64) -> bool {
        let Some(irq) = &self.irq else { return false };
        let mb = &self.shared.mailboxes[self.id.0];
        let deadline = self.pollers.next_deadline();
        if deadline <= now {
            return false;
        }
        mb.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !mb.queue.is_empty() || !self.local.borrow().is_empty() || !self.overflow.borrow().is_empty() {
            mb.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        // The timer stays armed across sleeps for the same deadline (one
        // system call per sleep saved) and is not disarmed after one (one
        // more): left armed for a deadline that went away, it wakes the
        // reactor once for nothing.
        if deadline != u64::MAX && deadline != irq.armed.get() {
            let _ = irq.timer.arm(clock::ticks_to_duration(deadline - now));
            irq.armed.set(deadline);
        }
        let mut events = irq.events.borrow_mut();
        let res = irq.epoll.wait(&mut events, None);
        mb.sleeping.store(false, Ordering::Relaxed);
        if res.is_err() {
            return true;
        }
        for ev in events.iter() {
            match ev.u64 {
                TOKEN_DOORBELL => {
                    if let Some(d) = &mb.doorbell {
                        d.drain();
                    }
                }
                TOKEN_TIMER => {
                    irq.timer.drain();
                    irq.armed.set(u64::MAX);
                }
                id => self.pollers.kick_id(id),
            }
        }
        true
    }

    /// Release everything this reactor owns (at exit).
    fn teardown(&self) {
        // Let already-sent messages run: they may release resources.
        for _ in 0..16 {
            if self.process_messages() == 0 && !self.flush_overflow() {
                break;
            }
        }
        self.pollers.clear();
        let locals = std::mem::take(&mut *self.locals.borrow_mut());
        drop(locals);
        let chans = std::mem::take(&mut *self.channels.borrow_mut());
        drop(chans);
        while self.local.borrow_mut().pop_front().is_some() {}
    }
}

/// One reactor. `!Send`: it lives and dies on the thread that runs it.
pub struct Reactor {
    inner: Rc<Inner>,
}

impl Reactor {
    fn new(shared: Arc<Shared>, id: ReactorId) -> io::Result<Reactor> {
        let irq = if shared.interrupt_mode {
            let epoll = Epoll::new()?;
            let timer = TimerFd::new()?;
            use std::os::fd::AsRawFd;
            if let Some(d) = &shared.mailboxes[id.0].doorbell {
                epoll.add(d.as_raw_fd(), Interest::READABLE, TOKEN_DOORBELL)?;
            }
            epoll.add(timer.as_raw_fd(), Interest::READABLE, TOKEN_TIMER)?;
            Some(Irq { epoll, timer, armed: Cell::new(u64::MAX), events: RefCell::new(Vec::with_capacity(64)) })
        } else {
            None
        };
        let now = clock::ticks();
        let inner = Rc::new_cyclic(|me| Inner {
            id,
            me: me.clone(),
            shared,
            pollers: poller::PollerSet::new(),
            local: RefCell::new(VecDeque::with_capacity(1024)),
            overflow: RefCell::new(VecDeque::new()),
            channels: RefCell::new(HashMap::new()),
            locals: RefCell::new(HashMap::default()),
            stats: Stats { last: Cell::new(now), start: Cell::new(now), ..Default::default() },
            now: Cell::new(now),
            exit: Cell::new(false),
            irq,
        });
        Ok(Reactor { inner })
    }

    pub fn id(&self) -> ReactorId {
        self.inner.id
    }

    fn enter(&self) -> Enter {
        let prev = CURRENT.with(|c| c.replace(Rc::as_ptr(&self.inner)));
        Enter { prev, _keep: self.inner.clone() }
    }

    /// Run `f` with this reactor current.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.enter();
        f()
    }

    /// One iteration without sleeping (for the test harness).
    pub fn run_once(&self) -> bool {
        let _g = self.enter();
        self.inner.iterate(false)
    }

    /// Run `start` and then the loop until [`stop_all`] (or [`stop`]) reaches
    /// this reactor; then release everything it owns.
    pub fn run(&self, start: impl FnOnce()) {
        let _g = self.enter();
        self.inner.shared.mailboxes[self.inner.id.0].tid.store(sys::gettid(), Ordering::Relaxed);
        let now = clock::ticks();
        self.inner.stats.last.set(now);
        self.inner.stats.start.set(now);
        // The loaded-window rule measures from here until the first sleep.
        self.inner.stats.woke.set(now);
        self.inner.stats.busy_at_wake.set(0);
        start();
        while !self.inner.exit.get() {
            self.inner.iterate(true);
        }
        self.inner.teardown();
    }

    pub fn handle(&self) -> Handle {
        Handle { shared: self.inner.shared.clone() }
    }
}

/// How to start a set of reactors.
#[derive(Clone, Debug)]
pub struct Options {
    /// Cores to run on; the first one is the main reactor (the calling thread).
    pub cores: Vec<usize>,
    /// Sleep in epoll when idle instead of busy polling.
    pub interrupt_mode: bool,
    /// Pin each reactor thread to its core.
    pub pin: bool,
    /// Messages drained from each queue per iteration.
    pub msg_batch: usize,
    /// Interrupt mode: how long a reactor keeps polling after its last work
    /// before it sleeps ([`DEFAULT_IDLE_POLL`]; see [`set_idle_poll`]).
    pub idle_poll: Duration,
}

impl Options {
    /// Busy-polling, pinned reactors on these cores.
    pub fn new(cores: Vec<usize>) -> Options {
        Options { cores, interrupt_mode: false, pin: true, msg_batch: DEFAULT_MSG_BATCH, idle_poll: DEFAULT_IDLE_POLL }
    }
}

/// Start one reactor per core. The calling thread becomes reactor 0 and runs
/// `start` on it; returns when every reactor has stopped.
pub fn launch(opts: &Options, start: impl FnOnce()) -> io::Result<()> {
    assert!(!opts.cores.is_empty(), "at least one core is required");
    // Before any pinning: where off-reactor threads may run.
    if let Ok(cpus) = sys::allowed_cpus() {
        let _ = PROCESS_CPUS.set(cpus);
    }
    let shared = Shared::new(&opts.cores, opts.interrupt_mode, opts.msg_batch, opts.idle_poll)?;
    let mut threads = Vec::new();
    for (i, &core) in opts.cores.iter().enumerate().skip(1) {
        let shared = shared.clone();
        let pin = opts.pin;
        let t = std::thread::Builder::new().name(format!("reactor_{core}")).spawn(move || {
            if pin {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
            }
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let r = Reactor::new(shared, ReactorId(i)).expect("reactor set-up");
                r.run(|| {});
            }));
            if res.is_err() {
                // A reactor that died would strand every message sent to it.
                tracing::error!(core, "reactor panicked; aborting the process");
                std::process::abort();
            }
        })?;
        threads.push(t);
    }
    if opts.pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: opts.cores[0] });
    }
    let main = Reactor::new(shared, ReactorId(0))?;
    main.run(start);
    drop(main);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

// ---- Free functions on the current reactor ----

/// The reactor running the caller. Panics off a reactor.
#[track_caller]
pub fn current() -> ReactorId {
    with_current(|r| r.id)
}

/// The current reactor, if the caller runs on one.
pub fn try_current() -> Option<ReactorId> {
    try_with_current(|r| r.id)
}

/// Number of reactors in the current runtime.
pub fn count() -> usize {
    with_current(|r| r.shared.mailboxes.len())
}

/// All reactors of the current runtime, in order.
pub fn all() -> impl Iterator<Item = ReactorId> {
    (0..count()).map(ReactorId)
}

/// A handle other threads can use to reach this runtime.
pub fn handle() -> Handle {
    with_current(|r| Handle { shared: r.shared.clone() })
}

/// The core a reactor runs on.
pub fn core_of(r: ReactorId) -> usize {
    with_current(|c| c.shared.mailboxes[r.0].core)
}

/// The default idle-poll window of interrupt mode (see [`set_idle_poll`]).
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_micros(50);

/// A loaded reactor polls this many idle-poll windows before it sleeps
/// (1 ms by default; see `Inner::idle_window`).
pub const LOADED_WINDOW_FACTOR: u64 = 20;

/// Interrupt mode: after doing work a reactor keeps polling for `window`
/// before it sleeps (0: it sleeps as soon as a pass finds nothing to do).
/// Every reactor of the current reactor's set, from its next iteration.
pub fn set_idle_poll(window: Duration) {
    with_current(|r| r.shared.set_idle_poll(window))
}

/// The idle-poll window of the current reactor's set.
pub fn idle_poll() -> Duration {
    with_current(|r| Duration::from_micros(r.shared.idle_poll_us.load(Ordering::Relaxed)))
}

/// Whether reactors sleep when idle.
pub fn interrupt_mode() -> bool {
    with_current(|r| r.shared.interrupt_mode)
}

/// How many times this reactor has slept (interrupt mode): a poller that
/// sees it change knows the reactor woke since, possibly for one of its
/// descriptors.
pub fn sleeps() -> u64 {
    with_current(|r| r.stats.sleeps.get())
}

/// Run `f` on reactor `to`. Messages between two reactors run in the order
/// they were sent; a message to the current reactor runs in a later iteration,
/// never inline.
#[inline]
pub fn send_msg<F: FnOnce() + Send + 'static>(to: ReactorId, f: F) {
    with_current(|r| r.send(to, Msg::new(f)))
}

/// Why [`off_reactor`] work gave no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRun {
    /// No thread could be started: `work` did not run.
    NoThread,
    /// `work` panicked.
    Panicked,
}

/// Run blocking `work` on a thread of its own (named `name`), then `then`
/// with its result on the calling reactor (a later iteration, never
/// inline), so that what waits on something slow (a device coming ready, a
/// cluster answering) does not stall the reactor's other work. `then` gets
/// why there is no result if no thread could be started or `work`
/// panicked. Off a reactor both run on the calling thread, at once. For rare
/// operations: each call is a thread.
pub fn off_reactor<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
    then: impl FnOnce(Result<T, NotRun>) + Send + 'static,
) {
    spawn_off_reactor(name, false, work, then)
}

/// [`off_reactor`] for work that must end before the process does (a
/// device's shutdown): [`wait_before_exit`] waits for it.
pub fn off_reactor_before_exit<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
    then: impl FnOnce(Result<T, NotRun>) + Send + 'static,
) {
    spawn_off_reactor(name, true, work, then)
}

/// The CPUs the process was allowed before the reactors pinned
/// themselves: an off-reactor thread (started by a pinned reactor) takes
/// them, rather than its reactor's one core.
static PROCESS_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// [`off_reactor_before_exit`] work under way.
static BEFORE_EXIT: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static BEFORE_EXIT_DONE: std::sync::Condvar = std::sync::Condvar::new();

fn spawn_off_reactor<T: Send + 'static>(
    name: &str,
    before_exit: bool,
    work: impl FnOnce() -> T + Send + 'static,
    then: impl FnOnce(Result<T, NotRun>) + Send + 'static,
) {
    let Some(origin) = try_current() else {
        return then(Ok(work()));
    };
    let h = handle();
    let count = |d: isize| {
        let mut n = BEFORE_EXIT.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_add_signed(d);
        BEFORE_EXIT_DONE.notify_all();
    };
    if before_exit {
        count(1);
    }
    // Kept outside the thread's closure: a spawn that fails drops that.
    let then = Arc::new(std::sync::Mutex::new(Some(then)));
    let t2 = then.clone();
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        if let Some(cpus) = PROCESS_CPUS.get() {
            if let Err(e) = sys::set_affinity(cpus) {
                tracing::debug!("off-reactor thread: cannot widen its CPU affinity: {e}");
            }
        }
        // A panic in `work` is told to `then`, which still runs.
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|_| NotRun::Panicked);
        if before_exit {
            count(-1);
        }
        h.send(origin, move || {
            if let Some(f) = t2.lock().unwrap_or_else(|e| e.into_inner()).take() {
                f(v);
            }
        });
    });
    if let Err(e) = spawned {
        if before_exit {
            count(-1);
        }
        tracing::error!("cannot start a thread ({name}): {e}");
        if let Some(f) = then.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Not inline: the caller may hold what `then` takes.
            send_msg(origin, move || f(Err(NotRun::NoThread)));
        }
    }
}

/// Wait, at most `limit`, for the [`off_reactor_before_exit`] work under
/// way (the application does, once its reactors have stopped). Returns how
/// many are still running.
pub fn wait_before_exit(limit: Duration) -> usize {
    let n = BEFORE_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    let (n, _) = BEFORE_EXIT_DONE.wait_timeout_while(n, limit, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
    *n
}

/// Run `f` on every reactor in turn (0, 1, ...) and collect the results, then
/// run `then` with them on the calling reactor.
pub fn map_reactors<T, F, G>(f: F, then: G)
where
    T: Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
    G: FnOnce(Vec<T>) + Send + 'static,
{
    struct Chain<T, F> {
        f: Arc<F>,
        acc: Vec<T>,
        origin: ReactorId,
        n: usize,
        then: Box<dyn FnOnce(Vec<T>) + Send>,
    }
    fn step<T: Send + 'static, F: Fn() -> T + Send + Sync + 'static>(mut c: Chain<T, F>) {
        c.acc.push((c.f)());
        let next = c.acc.len();
        if next == c.n {
            send_msg(c.origin, move || (c.then)(c.acc));
        } else {
            send_msg(ReactorId(next), move || step(c));
        }
    }
    let n = count();
    let c = Chain { f: Arc::new(f), acc: Vec::with_capacity(n), origin: current(), n, then: Box::new(then) };
    send_msg(ReactorId(0), move || step(c));
}

/// Run `f` on every reactor in turn, then `then` on the calling reactor.
pub fn for_each_reactor<F, G>(f: F, then: G)
where
    F: Fn() + Send + Sync + 'static,
    G: FnOnce() + Send + 'static,
{
    map_reactors(f, move |_| then());
}

/// Run `f` on every reactor in turn (0, 1, ...), each passing on to the
/// next only when it calls the continuation `f` is given (at once, or
/// later, from a completion on that reactor); then `then` on the calling
/// reactor. For a change every reactor must finish with before the caller
/// goes on (a reservation fence waiting for commands to drain).
pub fn for_each_reactor_in_turn<F, G>(f: F, then: G)
where
    F: Fn(Box<dyn FnOnce()>) + Send + Sync + 'static,
    G: FnOnce() + Send + 'static,
{
    struct Chain<F> {
        f: Arc<F>,
        at: usize,
        origin: ReactorId,
        then: Box<dyn FnOnce() + Send>,
    }
    fn step<F: Fn(Box<dyn FnOnce()>) + Send + Sync + 'static>(c: Chain<F>) {
        let f = c.f.clone();
        f(Box::new(move || {
            let next = c.at + 1;
            if next == count() {
                send_msg(c.origin, c.then);
            } else {
                send_msg(ReactorId(next), move || step(Chain { at: next, ..c }));
            }
        }));
    }
    let c = Chain { f: Arc::new(f), at: 0, origin: current(), then: Box::new(then) };
    send_msg(ReactorId(0), move || step(c));
}

/// Register a poller that runs every iteration.
pub fn register_poller(name: &str, f: impl FnMut() -> PollStatus + 'static) -> Poller {
    with_current(|r| r.pollers.register(r.me.clone(), name, 0, r.stats.last.get(), Box::new(f)))
}

/// Register a poller that runs once per `period` (a zero period means every
/// iteration). Deadlines stay on a fixed grid, so a busy reactor does not
/// stretch the period; missed periods are skipped, not replayed.
pub fn register_timed_poller(name: &str, period: Duration, f: impl FnMut() -> PollStatus + 'static) -> Poller {
    let ticks = clock::duration_to_ticks(period);
    with_current(|r| r.pollers.register(r.me.clone(), name, ticks, r.stats.last.get(), Box::new(f)))
}

/// A recent tick count (see [`crate::clock`]): the start of the current
/// iteration or the last [`refresh_now`]. Costs no TSC read.
#[inline]
pub fn now() -> u64 {
    with_current(|r| r.now.get())
}

/// Read the clock and make it the current reactor's [`now`]; returns it.
/// Code that runs a batch of completions calls this once per batch.
#[inline]
pub fn refresh_now() -> u64 {
    let t = clock::ticks();
    with_current(|r| r.now.set(t));
    t
}

/// Ask the current reactor to leave its loop after this iteration.
pub fn stop() {
    with_current(|r| r.exit.set(true))
}

/// Stop every reactor: the others first, the current one last.
pub fn stop_all() {
    let me = current();
    for r in all() {
        if r != me {
            send_msg(r, stop);
        }
    }
    send_msg(me, stop);
}

/// Hasher of the reactor-local map's keys: a `TypeId` is a hash already,
/// so its bits pass through (SipHash on every lookup was 5% of a loaded
/// iSCSI reactor's profile).
#[derive(Default)]
struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// Store a reactor-local value, one per type, replacing any earlier one.
/// Messages use this to find reactor-owned state from plain ids.
pub fn set_local<T: 'static>(v: Rc<T>) -> Option<Rc<T>> {
    let old = with_current(|r| r.locals.borrow_mut().insert(TypeId::of::<T>(), v));
    old.and_then(|o| o.downcast().ok())
}

/// The reactor-local value of type `T`, if set.
pub fn local<T: 'static>() -> Option<Rc<T>> {
    with_current(|r| r.locals.borrow().get(&TypeId::of::<T>()).cloned()).and_then(|o| o.downcast().ok())
}

/// Remove and return the reactor-local value of type `T`.
pub fn take_local<T: 'static>() -> Option<Rc<T>> {
    with_current(|r| r.locals.borrow_mut().remove(&TypeId::of::<T>())).and_then(|o| o.downcast().ok())
}

/// Statistics of one reactor.
#[derive(Clone, Debug)]
pub struct ReactorStats {
    pub id: ReactorId,
    pub core: usize,
    pub tid: i32,
    pub busy_ticks: u64,
    pub idle_ticks: u64,
    pub iterations: u64,
    /// Times the reactor slept (interrupt mode).
    pub sleeps: u64,
    /// Messages it ran.
    pub messages: u64,
    pub elapsed_ticks: u64,
    pub in_interrupt: bool,
    pub active_pollers: usize,
    pub timed_pollers: usize,
    pub paused_pollers: usize,
    pub io_channels: usize,
    /// Heap allocations this reactor's thread made, if the process counts
    /// them ([`crate::alloc::Counting`]).
    pub allocations: Option<u64>,
}

/// Statistics of the current reactor.
pub fn stats() -> ReactorStats {
    with_current(|r| {
        let (active, timed, paused) = r.pollers.counts();
        let mb = &r.shared.mailboxes[r.id.0];
        ReactorStats {
            id: r.id,
            core: mb.core,
            tid: mb.tid.load(Ordering::Relaxed),
            busy_ticks: r.stats.busy.get(),
            idle_ticks: r.stats.idle.get(),
            iterations: r.stats.iterations.get(),
            sleeps: r.stats.sleeps.get(),
            messages: r.stats.messages.get(),
            elapsed_ticks: clock::ticks().saturating_sub(r.stats.start.get()),
            in_interrupt: r.irq.is_some(),
            active_pollers: active,
            timed_pollers: timed,
            paused_pollers: paused,
            io_channels: r.channels.borrow().values().filter(|w| w.strong_count() > 0).count(),
            allocations: crate::alloc::count(),
        }
    })
}

/// Snapshots of the current reactor's pollers: (active, timed, paused).
pub fn poller_infos() -> (Vec<PollerInfo>, Vec<PollerInfo>, Vec<PollerInfo>) {
    with_current(|r| r.pollers.infos())
}

#[cfg(test)]
mod tests;
