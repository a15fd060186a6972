//! `/dev/nbdX` devices served by Pollux: each is a socket pair whose one
//! end the kernel's NBD driver takes (`NBD_SET_SOCK`) and whose other end
//! a [`Conn`] serves on the main reactor, and a thread of its own blocked
//! in `NBD_DO_IT` for as long as the kernel runs the device (SPDK's
//! design). All of it lives on the main reactor.
//!
//! Start: the device must be free (not ours, no `pid` attribute in
//! sysfs); `NBD_SET_SOCK` is retried for a second while the kernel is
//! still tearing down a previous user (`EBUSY`), then, for a device picked
//! by Pollux, the next one is tried. The call answers once the kernel
//! shows the device's size, so a client may use it at once (SPDK answers
//! before, and its scripts poll).
//!
//! Stop: `NBD_DISCONNECT` (on a thread: it may wait for the socket) makes
//! the kernel send its disconnect; the connection answers what is under
//! way and closes; `NBD_DO_IT` returns; the device is cleared and closed,
//! and only then the call answers. A kernel that does not disconnect
//! within [`STOP_LIMIT`] has its socket closed under it. A bdev deleted
//! under a device closes the socket at once (the kernel fails what it
//! has outstanding), as SPDK does.

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_core::bdev::{self, BdevEvent};
use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use pollux_core::rpc::RpcError;

use crate::conn::{self, Conn};
use crate::sys;

/// How long `NBD_SET_SOCK` is retried while the kernel says `EBUSY`.
const SET_SOCK_LIMIT: Duration = Duration::from_secs(1);
const SET_SOCK_RETRY: Duration = Duration::from_millis(20);
/// How long a start waits for the kernel to show the device.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// How long a stop waits for the kernel's disconnect.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How long an exit waits for the kernel's disconnect (within the
/// application's 5 s for every subsystem to finish).
const EXIT_STOP_LIMIT: Duration = Duration::from_secs(2);
/// `NBD_SET_TIMEOUT`: seconds before the kernel gives up on a request.
const IO_TIMEOUT_S: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    Stopping,
    Gone,
}

pub(crate) struct Disk {
    /// Callbacks (threads, bdev events) find their disk by this (not by
    /// path: a late one must not reach the next disk on the same device).
    id: u64,
    pub path: String,
    index: u32,
    pub bdev_name: String,
    dev: Arc<OwnedFd>,
    state: Cell<State>,
    conn: RefCell<Option<Rc<Conn>>>,
    /// The kernel took our socket (`NBD_SET_SOCK` succeeded): only then is
    /// the device ours to clear. Before, it may be another process's,
    /// half set up.
    sock_set: Cell<bool>,
    /// `NBD_DO_IT` is running on its thread.
    do_it: Cell<bool>,
    /// A resize is under way (on a thread), and whether another is owed.
    resizing: Cell<bool>,
    resize_again: Cell<bool>,
    /// The start's answer, until the device is ready.
    started: RefCell<Option<StartDone>>,
    /// Who waits for the device to be gone.
    waiters: RefCell<Vec<Box<dyn FnOnce()>>>,
    timer: RefCell<Option<Poller>>,
    /// When a stop closes the socket of a kernel that has not disconnected
    /// (the shortest limit asked for wins: an exit during a stop).
    stop_by: Cell<Option<Instant>>,
}

pub(crate) type StartDone = Box<dyn FnOnce(Result<String, RpcError>)>;

thread_local! {
    static DISKS: RefCell<Vec<Rc<Disk>>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

fn find(path: &str) -> Option<Rc<Disk>> {
    DISKS.with(|d| d.borrow().iter().find(|x| x.path == path).cloned())
}

fn find_id(id: u64) -> Option<Rc<Disk>> {
    DISKS.with(|d| d.borrow().iter().find(|x| x.id == id).cloned())
}

/// `(device, bdev)` of every device served, in start order.
pub(crate) fn list() -> Vec<(String, String, bool)> {
    DISKS.with(|d| d.borrow().iter().map(|x| (x.path.clone(), x.bdev_name.clone(), x.state.get() == State::Running)).collect())
}

pub(crate) fn exists(path: &str) -> bool {
    find(path).is_some()
}

fn busy(path: &str) -> RpcError {
    RpcError::errno(libc::EBUSY, format!("nbd device {path} is in use"))
}

fn os_error(what: &str, e: std::io::Error) -> RpcError {
    RpcError::errno(e.raw_os_error().unwrap_or(libc::EIO), format!("{what}: {e}"))
}

/// Whether `index` may be taken: not ours, not attached in the kernel.
fn free(index: u32) -> Result<bool, RpcError> {
    if exists(&format!("/dev/nbd{index}")) {
        return Ok(false);
    }
    sys::attached(index).map(|a| !a).map_err(|e| os_error(&format!("/sys/block/nbd{index}/pid"), e))
}

/// The first free device from `from` on, while `/dev/nbdN` exists.
fn next_free(from: u32) -> Option<u32> {
    (from..).take_while(|&i| sys::exists(i)).find(|&i| free(i).unwrap_or(false))
}

/// `nbd_start_disk`.
pub(crate) fn start(bdev_name: String, path: Option<String>, done: StartDone) {
    match path {
        Some(p) => {
            let Some(index) = sys::index_of(&p) else {
                return done(Err(RpcError::errno(libc::ENODEV, format!("illegal nbd device {p}"))));
            };
            match free(index) {
                Ok(true) => try_device(bdev_name, index, false, done),
                Ok(false) => done(Err(busy(&p))),
                Err(e) => done(Err(e)),
            }
        }
        None => match next_free(0) {
            Some(i) => try_device(bdev_name, i, true, done),
            None => done(Err(RpcError::errno(libc::ENODEV, "nbd device not found (is the nbd module loaded? all in use?)"))),
        },
    }
}

fn try_device(bdev_name: String, index: u32, auto: bool, done: StartDone) {
    let path = format!("/dev/nbd{index}");
    let id = NEXT_ID.with(|n| n.replace(n.get() + 1));
    let desc = match bdev::open(&bdev_name, true, move |ev| on_bdev_event(id, ev)) {
        Ok(d) => d,
        Err(e) => return done(Err(RpcError::errno(e.errno(), format!("cannot open bdev {bdev_name}: {e}")))),
    };
    let bs = desc.bdev().block_size();
    if !bs.is_power_of_two() || !(512..=4096).contains(&bs) {
        return done(Err(RpcError::errno(
            libc::EINVAL,
            format!("bdev {bdev_name} has {bs}-byte blocks: the kernel's NBD devices take 512 to 4096, a power of two"),
        )));
    }
    let dev = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => Arc::new(OwnedFd::from(f)),
        Err(e) => return done(Err(os_error(&format!("open {path}"), e))),
    };
    let (ours, kernel) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return done(Err(os_error("socketpair", e))),
    };
    let disk = Rc::new(Disk {
        id,
        path: path.clone(),
        index,
        bdev_name: bdev_name.clone(),
        dev,
        state: Cell::new(State::Starting),
        conn: RefCell::new(None),
        sock_set: Cell::new(false),
        do_it: Cell::new(false),
        resizing: Cell::new(false),
        resize_again: Cell::new(false),
        started: RefCell::new(Some(done)),
        waiters: RefCell::new(Vec::new()),
        timer: RefCell::new(None),
        stop_by: Cell::new(None),
    });
    DISKS.with(|d| d.borrow_mut().push(disk.clone()));
    // NBD_SET_SOCK, retried while a previous user's teardown holds it.
    let t0 = Instant::now();
    let attempt = {
        let disk = disk.clone();
        let mut pending = Some((ours, kernel, desc));
        move || -> PollStatus {
            let Some((_, kernel, _)) = pending.as_ref() else { return PollStatus::Idle };
            match sys::ioctl(disk.dev.as_raw_fd(), sys::SET_SOCK, kernel.as_raw_fd() as u64) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t0.elapsed() < SET_SOCK_LIMIT => PollStatus::Idle,
                Err(e) => {
                    disk.timer.borrow_mut().take();
                    let busy = e.raw_os_error() == Some(libc::EBUSY);
                    let done = disk.forget();
                    match (busy && auto, done) {
                        (true, Some(done)) => match next_free(index + 1) {
                            Some(i) => try_device(bdev_name.clone(), i, true, done),
                            None => done(Err(RpcError::errno(libc::ENODEV, "nbd device not found: every one is busy"))),
                        },
                        (false, Some(done)) => done(Err(os_error(&format!("{}: NBD_SET_SOCK", disk.path), e))),
                        (_, None) => {}
                    }
                    PollStatus::Busy
                }
                Ok(()) => {
                    disk.timer.borrow_mut().take();
                    disk.sock_set.set(true);
                    let (ours, kernel, desc) = pending.take().expect("pending");
                    disk.configure(ours, kernel, desc);
                    PollStatus::Busy
                }
            }
        }
    };
    let mut attempt = attempt;
    if attempt() == PollStatus::Idle {
        *disk.timer.borrow_mut() = Some(reactor::register_timed_poller("nbd_set_sock", SET_SOCK_RETRY, attempt));
    }
}

fn on_bdev_event(id: u64, ev: BdevEvent) {
    let Some(d) = find_id(id) else { return };
    match ev {
        BdevEvent::Remove => {
            tracing::warn!("nbd {}: bdev {} is going away: closing the device", d.path, d.bdev_name);
            if d.state.get() == State::Running || d.state.get() == State::Starting {
                d.state.set(State::Stopping);
            }
            let c = d.conn();
            match c {
                Some(c) => c.abort(),
                None => d.maybe_finish(),
            }
        }
        BdevEvent::Resize => {
            if d.state.get() != State::Gone {
                d.resize();
            }
        }
    }
}

impl Disk {
    /// Give the device back to the kernel clean, if it is ours.
    fn clear(&self) {
        if self.sock_set.replace(false) {
            let fd = self.dev.as_raw_fd();
            let _ = sys::ioctl(fd, sys::CLEAR_QUE, 0);
            let _ = sys::ioctl(fd, sys::CLEAR_SOCK, 0);
        }
    }

    /// Tell the kernel the bdev's size, one `NBD_SET_SIZE_BLOCKS` at a
    /// time (on a thread: the ioctl takes the device's lock, which a
    /// disconnect may hold while it writes to our socket), the latest
    /// size last.
    fn resize(self: &Rc<Self>) {
        if self.resizing.replace(true) {
            self.resize_again.set(true);
            return;
        }
        let Some(n) = self.conn().and_then(|c| c.resized()) else {
            self.resizing.set(false);
            return;
        };
        let dev = self.dev.clone();
        let p = self.path.clone();
        let id = self.id;
        reactor::off_reactor(
            "nbd-resize",
            move || sys::ioctl(dev.as_raw_fd(), sys::SET_SIZE_BLOCKS, n),
            move |r| {
                match r {
                    Ok(Ok(())) => tracing::info!("nbd {p}: now {n} blocks"),
                    Ok(Err(e)) => tracing::warn!("nbd {p}: NBD_SET_SIZE_BLOCKS {n}: {e}"),
                    Err(e) => tracing::warn!("nbd {p}: resize not run: {e:?}"),
                }
                let Some(d) = find_id(id) else { return };
                d.resizing.set(false);
                if d.resize_again.replace(false) {
                    d.resize();
                }
            },
        );
    }

    /// The connection, if serving (a clone: no borrow is held).
    fn conn(&self) -> Option<Rc<Conn>> {
        self.conn.borrow().clone()
    }

    /// Leave the list before anything ran; the start's answer, if not sent.
    fn forget(self: &Rc<Self>) -> Option<StartDone> {
        self.state.set(State::Gone);
        DISKS.with(|d| d.borrow_mut().retain(|x| !Rc::ptr_eq(x, self)));
        self.started.borrow_mut().take()
    }

    fn fail_start(self: &Rc<Self>, e: RpcError) {
        let done = self.started.borrow_mut().take();
        if let Some(done) = done {
            done(Err(e));
        }
    }

    /// The kernel has the socket: size, flags, then serve and run.
    fn configure(self: &Rc<Self>, ours: UnixStream, kernel: UnixStream, desc: bdev::Descriptor) {
        let geo = conn::geometry(&desc);
        let fd = self.dev.as_raw_fd();
        let steps = [
            (sys::SET_BLKSIZE, geo.block_size as u64),
            (sys::SET_SIZE_BLOCKS, geo.num_blocks),
            (sys::SET_TIMEOUT, IO_TIMEOUT_S),
            (sys::SET_FLAGS, geo.transmission_flags()),
        ];
        for (req, arg) in steps {
            if let Err(e) = sys::ioctl(fd, req, arg) {
                self.clear();
                if let Some(done) = self.forget() {
                    done(Err(os_error(&format!("{}: {} {arg}", self.path, sys::name(req)), e)));
                }
                return;
            }
        }
        // The kernel holds its own reference to its end.
        drop(kernel);
        let me = Rc::downgrade(self);
        let c = match Conn::start(&format!("nbd{}", self.index), ours, desc, move || {
            if let Some(d) = me.upgrade() {
                d.maybe_finish();
            }
        }) {
            Ok(c) => c,
            Err(e) => {
                self.clear();
                if let Some(done) = self.forget() {
                    done(Err(os_error(&format!("{}: serving its socket", self.path), e)));
                }
                return;
            }
        };
        *self.conn.borrow_mut() = Some(c);
        self.do_it.set(true);
        let dev = self.dev.clone();
        let path = self.path.clone();
        let id = self.id;
        reactor::off_reactor_before_exit(
            &format!("nbd{}", self.index),
            move || sys::ioctl(dev.as_raw_fd(), sys::DO_IT, 0),
            move |r| {
                let Some(d) = find_id(id) else { return };
                match &r {
                    Ok(Ok(())) => tracing::info!("nbd {path}: the kernel stopped the device"),
                    Ok(Err(e)) => tracing::info!("nbd {path}: NBD_DO_IT ended: {e}"),
                    Err(e) => tracing::error!("nbd {path}: NBD_DO_IT not run: {e:?}"),
                }
                d.do_it.set(false);
                if d.started.borrow().is_some() {
                    let why = match r {
                        Ok(Err(e)) => format!("the kernel ended the device before it was ready: {e}"),
                        _ => "the kernel ended the device before it was ready".to_string(),
                    };
                    d.fail_start(RpcError::errno(libc::EIO, format!("{path}: {why}")));
                }
                if d.state.get() != State::Gone {
                    d.state.set(State::Stopping);
                }
                let c = d.conn();
                match c {
                    Some(c) if !c.is_closed() => c.abort(),
                    _ => d.maybe_finish(),
                }
            },
        );
        // Answer once the kernel shows the device.
        let t0 = Instant::now();
        let me = self.clone();
        let wait = move || -> PollStatus {
            if me.started.borrow().is_none() {
                me.timer.borrow_mut().take();
                return PollStatus::Idle;
            }
            if me.state.get() != State::Starting {
                // Stopped under it (its bdev went away, the application
                // is exiting): the stop answers who waits.
                me.timer.borrow_mut().take();
                me.fail_start(RpcError::errno(libc::ENODEV, format!("{}: stopped while starting", me.path)));
                return PollStatus::Busy;
            }
            if sys::sectors(me.index) > 0 {
                me.timer.borrow_mut().take();
                me.state.set(State::Running);
                let done = me.started.borrow_mut().take();
                if let Some(done) = done {
                    tracing::info!("nbd {}: serving bdev {}", me.path, me.bdev_name);
                    done(Ok(me.path.clone()));
                }
                return PollStatus::Busy;
            }
            if t0.elapsed() > READY_LIMIT {
                me.timer.borrow_mut().take();
                me.fail_start(RpcError::errno(libc::ETIMEDOUT, format!("{}: the kernel did not start the device", me.path)));
                me.state.set(State::Running);
                me.stop(STOP_LIMIT, Box::new(|| {}));
                return PollStatus::Busy;
            }
            PollStatus::Idle
        };
        *self.timer.borrow_mut() = Some(reactor::register_timed_poller("nbd_ready", Duration::from_millis(1), wait));
    }

    /// Disconnect; `done` runs once the device is gone. A kernel that has
    /// not disconnected within `limit` has its socket closed.
    pub(crate) fn stop(self: &Rc<Self>, limit: Duration, done: Box<dyn FnOnce()>) {
        if self.state.get() == State::Gone {
            return done();
        }
        self.waiters.borrow_mut().push(done);
        let by = Instant::now() + limit;
        if self.stop_by.get().is_none_or(|t| by < t) {
            self.stop_by.set(Some(by));
        }
        if self.state.get() == State::Stopping && !self.do_it.get() {
            return self.maybe_finish();
        }
        let first = self.state.get() != State::Stopping;
        self.state.set(State::Stopping);
        if !first {
            return;
        }
        if !self.do_it.get() {
            if let Some(c) = self.conn() {
                c.abort();
            }
            return self.maybe_finish();
        }
        let dev = self.dev.clone();
        let path = self.path.clone();
        let id = self.id;
        reactor::off_reactor(
            "nbd-disconnect",
            move || sys::ioctl(dev.as_raw_fd(), sys::DISCONNECT, 0),
            move |r| {
                if let Ok(Err(e)) | Err(e) = r.map_err(|e| std::io::Error::other(format!("{e:?}"))) {
                    tracing::warn!("nbd {path}: NBD_DISCONNECT: {e}: closing its socket");
                    if let Some(c) = find_id(id).and_then(|d| d.conn()) {
                        c.abort();
                    }
                }
            },
        );
        // A kernel that does not disconnect loses its socket.
        let me = self.clone();
        *self.timer.borrow_mut() = Some(reactor::register_timed_poller("nbd_stop", Duration::from_millis(100), move || {
            if me.state.get() == State::Gone {
                me.timer.borrow_mut().take();
                return PollStatus::Idle;
            }
            if me.stop_by.get().is_some_and(|t| Instant::now() > t) {
                tracing::warn!("nbd {}: the kernel did not disconnect in time: closing its socket", me.path);
                me.timer.borrow_mut().take();
                if let Some(c) = me.conn() {
                    c.abort();
                }
                return PollStatus::Busy;
            }
            PollStatus::Idle
        }));
    }

    /// Once `NBD_DO_IT` has returned and the connection is closed: clear
    /// the device, close it, leave the list, answer who waits.
    fn maybe_finish(self: &Rc<Self>) {
        if self.do_it.get() || self.state.get() == State::Gone {
            return;
        }
        if self.conn().is_some_and(|c| !c.is_closed()) {
            return;
        }
        self.clear();
        self.timer.borrow_mut().take();
        self.conn.borrow_mut().take();
        self.fail_start(RpcError::errno(libc::EIO, format!("{}: the device ended while starting", self.path)));
        self.forget();
        tracing::info!("nbd {}: released", self.path);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w();
        }
    }
}

/// `nbd_stop_disk`.
pub(crate) fn stop(path: &str, done: Box<dyn FnOnce(Result<bool, RpcError>)>) {
    let Some(d) = find(path) else {
        return done(Err(RpcError::errno(libc::ENODEV, format!("nbd device {path} is not served"))));
    };
    if d.state.get() == State::Starting {
        return done(Err(RpcError::errno(libc::EBUSY, format!("nbd device {path} is still starting"))));
    }
    d.stop(STOP_LIMIT, Box::new(move || done(Ok(true))));
}

/// Stop every device (application exit); `done` once all are gone.
pub(crate) fn stop_all(done: Box<dyn FnOnce() + Send>) {
    debug_assert_eq!(reactor::current(), ReactorId(0));
    let all: Vec<Rc<Disk>> = DISKS.with(|d| d.borrow().clone());
    let left = Rc::new(Cell::new(all.len() + 1));
    let done = Rc::new(RefCell::new(Some(done)));
    let one = move || {
        left.set(left.get() - 1);
        if left.get() == 0 {
            if let Some(f) = done.borrow_mut().take() {
                f();
            }
        }
    };
    let one = Rc::new(one);
    for d in all {
        let o = one.clone();
        if d.state.get() == State::Starting {
            d.fail_start(RpcError::errno(libc::ESHUTDOWN, "the application is stopping"));
            d.state.set(State::Running);
        }
        d.stop(EXIT_STOP_LIMIT, Box::new(move || o()));
    }
    one();
}
