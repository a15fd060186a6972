//! The uring bdev: a file or block device through `io_uring`, one ring per
//! reactor. Requests are queued in the submission ring as they arrive and
//! handed to the kernel once per reactor iteration (one `io_uring_enter` per
//! batch); a poller reaps completions from the mapped completion ring without
//! a system call. The file is opened with `O_DIRECT` when it allows it (buffers
//! then need the logical block alignment, which the bdev layer provides).
//!
//! `bdev_aio_create` is answered by this module too: same device, same ring.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{IoUring, opcode, types};
use pollux_core::app::App;
use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevIo, BdevSpec, IoStatus, IoType, Uuid};
use pollux_core::reactor::{self, Poller};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::{Delete, delete_rpc};

/// Entries per ring (and requests in flight per reactor and bdev).
const RING_ENTRIES: u32 = 256;
/// A dropped channel's requests still in the kernel this long after the
/// drop are logged (an error; the channel keeps reaping them).
const DRAIN_WARN: std::time::Duration = std::time::Duration::from_secs(30);

/// Which RPC created the bdev (save_config writes the same one back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Uring,
    Aio { readonly: bool, fallocate: bool },
}

struct UringBackend {
    /// Shared with the channels: a channel dropped with requests still
    /// queued keeps the file open until they are done.
    file: Arc<File>,
    filename: String,
    direct: bool,
    logical_block: u32,
    block_size: u32,
    flavor: Flavor,
}

impl Backend for UringBackend {
    fn module_name(&self) -> &'static str {
        match self.flavor {
            Flavor::Uring => "uring",
            Flavor::Aio { .. } => "aio",
        }
    }
    fn product_name(&self) -> &'static str {
        match self.flavor {
            Flavor::Uring => "URING bdev",
            Flavor::Aio { .. } => "AIO disk",
        }
    }
    fn supports(&self, kind: IoType) -> bool {
        match (self.flavor, kind) {
            (_, IoType::Read | IoType::Flush | IoType::Reset) => true,
            (Flavor::Aio { readonly: true, .. }, _) => false,
            (_, IoType::Write) => true,
            (Flavor::Aio { fallocate: false, .. }, IoType::Unmap | IoType::WriteZeroes) => false,
            (_, IoType::Unmap | IoType::WriteZeroes) => true,
            (_, IoType::Compare) => false,
        }
    }
    fn buffer_alignment(&self) -> usize {
        if self.direct { self.logical_block as usize } else { 1 }
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        match UringChannel::new(self.file.clone(), &self.filename) {
            Ok(c) => Box::new(c),
            Err(e) => {
                tracing::error!("{}: cannot set up io_uring on this reactor: {e}", self.filename);
                Box::new(FailingChannel)
            }
        }
    }
    fn driver_specific(&self) -> Value {
        json!({"filename": self.filename, "o_direct": self.direct})
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        Some(match self.flavor {
            Flavor::Uring => (
                "bdev_uring_create",
                json!({"name": b.name(), "filename": self.filename, "block_size": self.block_size, "uuid": b.uuid().to_string()}),
            ),
            Flavor::Aio { readonly, fallocate } => (
                "bdev_aio_create",
                json!({"name": b.name(), "filename": self.filename, "block_size": self.block_size, "readonly": readonly, "fallocate": fallocate, "uuid": b.uuid().to_string()}),
            ),
        })
    }
}

/// Used only if a reactor cannot create a ring: fails every request.
struct FailingChannel;
impl BackendChannel for FailingChannel {
    fn submit(&self, io: BdevIo) {
        io.complete(IoStatus::Failed);
    }
}

/// A request in the kernel (owning its buffers; its iovecs, which point
/// into them, are its slot's in `Ring::iovs`).
struct InFlight {
    io: BdevIo,
    expect: i32,
}

struct Ring {
    ring: IoUring,
    slots: Vec<Option<InFlight>>,
    /// Each slot's iovecs, kept at a stable address while its request is
    /// in the kernel, and kept with their capacity for the next request
    /// (no allocation per request).
    iovs: Vec<Vec<libc::iovec>>,
    /// Requests finished in one pass, with their status, completed after
    /// the ring is let go (kept for its capacity).
    done: Vec<(BdevIo, IoStatus)>,
    free: Vec<usize>,
    /// Requests waiting for a free slot.
    waiting: VecDeque<BdevIo>,
    unsubmitted: u32,
    /// Interrupt mode: the eventfd the kernel signals on each completion.
    doorbell: Option<pollux_core::sys::EventFd>,
}

struct UringChannel {
    /// The file's descriptor, for the ring's entries (held open by `file`).
    fd: i32,
    file: Arc<File>,
    /// For the log.
    filename: String,
    ring: Rc<RefCell<Ring>>,
    poller: Poller,
}

impl UringChannel {
    fn new(file: Arc<File>, filename: &str) -> std::io::Result<UringChannel> {
        let fd = file.as_raw_fd();
        let ring = IoUring::new(RING_ENTRIES)?;
        let ring = Rc::new(RefCell::new(Ring {
            ring,
            slots: (0..RING_ENTRIES).map(|_| None).collect(),
            iovs: (0..RING_ENTRIES).map(|_| Vec::new()).collect(),
            done: Vec::new(),
            free: (0..RING_ENTRIES as usize).rev().collect(),
            waiting: VecDeque::new(),
            unsubmitted: 0,
            doorbell: None,
        }));
        let r = ring.clone();
        let poller = reactor::register_poller("uring_bdev", move || poll(fd, &r).into());
        // In interrupt mode the ring's completions must wake the reactor:
        // register an eventfd with the ring.
        let mut chan = UringChannel { fd, file, filename: filename.to_string(), ring, poller };
        if reactor::interrupt_mode() {
            chan.watch_completions()?;
        }
        Ok(chan)
    }

    fn watch_completions(&mut self) -> std::io::Result<()> {
        let efd = pollux_core::sys::EventFd::new()?;
        self.ring.borrow().ring.submitter().register_eventfd(efd.as_raw_fd())?;
        // Edge-triggered, never read: each batch of completions the kernel
        // posts wakes the reactor once, and a pass that finds the ring
        // empty costs no system call (see `Interest::edge`).
        self.poller.add_wake_fd(efd.as_raw_fd(), pollux_core::sys::Interest::READABLE.edge())?;
        self.ring.borrow_mut().doorbell = Some(efd);
        Ok(())
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        let doorbell = self.ring.borrow().doorbell.as_ref().map(|d| d.as_raw_fd());
        if let Some(fd) = doorbell {
            self.poller.remove_wake_fd(fd);
        }
        if reactor::try_current().is_none() {
            // Off a reactor (not expected) no request can complete: the
            // kernel may still write into their buffers, so the ring and
            // the requests are leaked.
            if in_flight(&self.ring) > 0 || !self.ring.borrow().waiting.is_empty() {
                tracing::error!("uring: a channel dropped off its reactor with requests in it; leaked");
                std::mem::forget(self.ring.clone());
            }
            return;
        }
        // Requests that never reached the ring end here: sent after their
        // consumer let go, a write could land over newer data written since
        // through another path.
        let waiting = std::mem::take(&mut self.ring.borrow_mut().waiting);
        for io in waiting {
            io.complete(IoStatus::Aborted);
        }
        // A consumer let go of its channel with requests still in the
        // kernel (a session that ended, a RAID member replaced). The kernel
        // may still write into their buffers, so the ring and the buffers
        // stay until each completes: a poller of their own reaps them (the
        // wait was in this drop, and a request stuck on a hung device or a
        // stalled network file system stalled the reactor with it,
        // unbounded). The file stays open until then. At exit the
        // reactor's pollers go without it: the ring and the requests are
        // leaked, with no callback.
        let (file, r) = (self.file.clone(), self.ring.clone());
        reactor::drain_in_background(
            "uring_drain",
            format!("uring {}", self.filename),
            DRAIN_WARN,
            doorbell.map(|fd| (fd, pollux_core::sys::Interest::READABLE.edge())),
            // Hands queued entries to the kernel and reaps what is done.
            move || (poll(file.as_raw_fd(), &r), in_flight(&r)),
            // The ring goes with the poller's closure.
            || {},
        );
    }
}

/// How many requests of the ring are with the kernel (or queued for it).
fn in_flight(ring: &Rc<RefCell<Ring>>) -> usize {
    RING_ENTRIES as usize - ring.borrow().free.len()
}

impl BackendChannel for UringChannel {
    fn submit(&self, io: BdevIo) {
        let mut r = self.ring.borrow_mut();
        if !r.waiting.is_empty() {
            return r.waiting.push_back(io);
        }
        match queue(self.fd, &mut r, io) {
            Queued::Ring => {}
            Queued::Full(io) => r.waiting.push_back(io),
            Queued::Now(io, st) => {
                // Not under the ring's borrow: the callback may submit.
                drop(r);
                io.complete(st)
            }
        }
    }
}

/// What `queue` did with a request.
enum Queued {
    /// In the submission ring.
    Ring,
    /// No room: given back.
    Full(BdevIo),
    /// Needs no ring entry (reset, compare): to complete with this status,
    /// once the ring is let go.
    Now(BdevIo, IoStatus),
}

/// Put a request in the submission ring.
fn queue(fd: i32, r: &mut Ring, mut io: BdevIo) -> Queued {
    if matches!(io.kind(), IoType::Reset | IoType::Compare) {
        let st = if io.kind() == IoType::Reset { IoStatus::Success } else { IoStatus::Unsupported };
        return Queued::Now(io, st);
    }
    let Some(slot) = r.free.pop() else { return Queued::Full(io) };
    let off = io.offset_bytes();
    let len = io.len_bytes();
    let iov = &mut r.iovs[slot];
    iov.clear();
    if matches!(io.kind(), IoType::Read | IoType::Write) {
        iov.extend(io.buffers_mut().iter_mut().map(|b| libc::iovec { iov_base: b.as_ptr().cast(), iov_len: b.len() }));
    }
    let fd = types::Fd(fd);
    let entry = match io.kind() {
        IoType::Read => opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32).offset(off).build(),
        IoType::Write => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32).offset(off).build(),
        IoType::Flush => opcode::Fsync::new(fd).build(),
        IoType::Unmap => opcode::Fallocate::new(fd, len).offset(off).mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).build(),
        IoType::WriteZeroes => {
            opcode::Fallocate::new(fd, len).offset(off).mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE).build()
        }
        IoType::Reset | IoType::Compare => unreachable!("answered above"),
    };
    let expect = if io.kind().has_data() { len as i32 } else { 0 };
    let entry = entry.user_data(slot as u64);
    // SAFETY: the iovecs are `iovs[slot]`, left alone (not grown, so not
    // moved) until the completion for `slot` is reaped, and the buffers
    // they point to are owned by the InFlight stored in `slots[slot]`
    // below, kept (and not moved out of their heap allocations) as long.
    let pushed = unsafe { r.ring.submission().push(&entry) };
    if pushed.is_err() {
        r.free.push(slot);
        return Queued::Full(io);
    }
    r.slots[slot] = Some(InFlight { io, expect });
    r.unsubmitted += 1;
    Queued::Ring
}

/// Submit queued entries, reap completions, retry waiting requests.
fn poll(fd: i32, ring: &Rc<RefCell<Ring>>) -> usize {
    let mut submitted = 0;
    let mut done = {
        let mut r = ring.borrow_mut();
        let mut done = std::mem::take(&mut r.done);
        if r.unsubmitted > 0 {
            match r.ring.submit() {
                Ok(_) => submitted = std::mem::take(&mut r.unsubmitted) as usize,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => tracing::error!("io_uring submit failed: {e}"),
            }
        }
        let r = &mut *r;
        for cqe in r.ring.completion() {
            let slot = cqe.user_data() as usize;
            if let Some(f) = r.slots.get_mut(slot).and_then(Option::take) {
                r.free.push(slot);
                done.push((f.io, status_of(cqe.result(), f.expect)));
            }
        }
        while let Some(io) = r.waiting.pop_front() {
            match queue(fd, r, io) {
                Queued::Ring => {}
                Queued::Full(io) => {
                    r.waiting.push_front(io);
                    break;
                }
                // Completed with the pass's completions, below.
                Queued::Now(io, st) => done.push((io, st)),
            }
        }
        done
    };
    let n = done.len();
    // Complete outside the borrow: callbacks may submit again.
    for (io, status) in done.drain(..) {
        io.complete(status);
    }
    // The list back for the next pass (unless a callback's drop of the
    // channel reaped in the meantime: then this one simply goes).
    let mut r = ring.borrow_mut();
    if r.done.capacity() == 0 {
        r.done = done;
    }
    n + submitted
}

/// A request's status from its completion's result (`expect`: the bytes
/// it moves, 0 for none).
fn status_of(res: i32, expect: i32) -> IoStatus {
    if res == expect || (expect == 0 && res >= 0) {
        IoStatus::Success
    } else if res == -libc::EOPNOTSUPP {
        IoStatus::Unsupported
    } else {
        tracing::debug!("uring request failed: result {res}, expected {expect}");
        IoStatus::Failed
    }
}

/// Size and logical block size of a file or block device.
fn geometry(file: &File) -> std::io::Result<(u64, u32)> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKGETSIZE64 writes a u64 and BLKSSZGET an int into the
        // pointed-to locals, which live for the call.
        unsafe {
            if libc::ioctl(file.as_raw_fd(), 0x8008_1272, &mut size) < 0 || libc::ioctl(file.as_raw_fd(), 0x1268, &mut lbs) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok((size, lbs.max(512) as u32))
    } else {
        Ok((meta.len(), 512))
    }
}

fn open_file(filename: &str, readonly: bool) -> Result<(File, bool), RpcError> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(!readonly);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(filename)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!("{filename}: O_DIRECT not supported here; using the page cache");
            open(false)
                .map(|f| (f, false))
                .map_err(|e| RpcError::errno(e.raw_os_error().unwrap_or(libc::EIO), format!("cannot open {filename}: {e}")))
        }
        Err(e) => Err(RpcError::errno(e.raw_os_error().unwrap_or(libc::EIO), format!("cannot open {filename}: {e}"))),
    }
}

fn create(name: &str, filename: &str, block_size: Option<u32>, uuid: Option<Uuid>, flavor: Flavor) -> Result<Arc<Bdev>, RpcError> {
    let readonly = matches!(flavor, Flavor::Aio { readonly: true, .. });
    let (file, direct) = open_file(filename, readonly)?;
    let (size, logical) = geometry(&file).map_err(|e| RpcError::errno(libc::EIO, format!("cannot size {filename}: {e}")))?;
    let block_size = block_size.filter(|&b| b != 0).unwrap_or(logical);
    if block_size < logical || block_size % logical != 0 {
        return Err(RpcError::invalid_params(format!(
            "block_size {block_size} is not a multiple of {filename}'s logical block size {logical}"
        )));
    }
    let num_blocks = size / block_size as u64;
    if num_blocks == 0 {
        return Err(RpcError::invalid_params(format!("{filename} is smaller than one block of {block_size} bytes")));
    }
    let backend = UringBackend { file: Arc::new(file), filename: filename.to_string(), direct, logical_block: logical, block_size, flavor };
    bdev::register(BdevSpec { name: name.to_string(), block_size, num_blocks, uuid, backend: Arc::new(backend) }).map_err(RpcError::from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    name: String,
    filename: String,
    block_size: Option<u32>,
    uuid: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioCreate {
    name: String,
    filename: String,
    block_size: Option<u32>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    fallocate: bool,
    uuid: Option<Uuid>,
    #[serde(default)]
    nowait: bool,
}

/// `bdev_uring_rescan` / `bdev_aio_rescan`: the file or device behind
/// `name` changed size; tell the bdev's users (SPDK's `bdev_aio_rescan`).
fn rescan(module: &str, name: &str) -> Result<bool, RpcError> {
    let b = bdev::get(name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {name} not found")))?;
    let be =
        b.backend().as_any().and_then(|a| a.downcast_ref::<UringBackend>()).filter(|u| u.module_name() == module).ok_or_else(|| {
            RpcError::errno(libc::ENODEV, format!("bdev {name} is not a{} {module} bdev", if module == "aio" { "n" } else { "" }))
        })?;
    let (size, _) = geometry(&be.file).map_err(|e| RpcError::errno(libc::EIO, format!("cannot size {}: {e}", be.filename)))?;
    let blocks = size / be.block_size as u64;
    if blocks != b.num_blocks() {
        tracing::info!("{}: {name} is now {blocks} blocks (was {})", be.filename, b.num_blocks());
        bdev::notify_blockcnt_change(name, blocks)?;
    }
    Ok(true)
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_uring_create", States::RUNTIME, |p: UringCreate, r: Responder| {
        r.result(create(&p.name, &p.filename, p.block_size, p.uuid, Flavor::Uring).map(|b| b.name().to_string()))
    });
    m.register("bdev_uring_delete", States::RUNTIME, |p: Delete, r: Responder| delete_rpc("uring", p, r));
    m.register("bdev_uring_rescan", States::RUNTIME, |p: Delete, r: Responder| r.result(rescan("uring", &p.name)));
    m.register("bdev_aio_rescan", States::RUNTIME, |p: Delete, r: Responder| r.result(rescan("aio", &p.name)));
    m.register("bdev_aio_create", States::RUNTIME, |p: AioCreate, r: Responder| {
        if p.nowait {
            tracing::debug!("bdev_aio_create: nowait has no effect with io_uring");
        }
        let flavor = Flavor::Aio { readonly: p.readonly, fallocate: p.fallocate };
        r.result(create(&p.name, &p.filename, p.block_size, p.uuid, flavor).map(|b| b.name().to_string()))
    });
    m.register("bdev_aio_delete", States::RUNTIME, |p: Delete, r: Responder| delete_rpc("aio", p, r));
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use pollux_core::reactor::Harness;

    use super::*;

    /// A reset waiting behind a full ring is answered with the pass's
    /// completions, after the ring is let go: its callback may submit to
    /// the same channel. (It was completed inside `queue`, under the ring's
    /// borrow, and a submit from its callback panicked on that borrow.)
    #[test]
    fn a_reset_behind_a_full_ring_may_submit_from_its_callback() {
        let path = std::env::temp_dir().join(format!("pollux-uring-test-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let h = Harness::new(1);
        let flushed = Rc::new(Cell::new(0u64));
        let after_reset = Rc::new(Cell::new(None));
        let (f, a, p) = (flushed.clone(), after_reset.clone(), path.to_str().unwrap().to_string());
        let d = h.on(0, move || {
            create("U0", &p, Some(512), None, Flavor::Uring).unwrap();
            let d = bdev::open("U0", true, |_| {}).unwrap();
            let ch = d.channel();
            // More flushes than the ring has slots: the rest wait.
            for _ in 0..RING_ENTRIES + 8 {
                let f = f.clone();
                d.flush(&ch, 0, 1, move |io| {
                    assert!(io.is_ok());
                    f.set(f.get() + 1)
                });
            }
            let (d2, ch2) = (d.clone(), ch.clone());
            d.reset(&ch, move |io| {
                assert!(io.is_ok(), "reset: {:?}", io.status());
                drop(io);
                // A request from the callback, on the same channel.
                d2.flush(&ch2, 0, 1, move |io| a.set(Some(io.is_ok())));
            });
            // Held: a channel let go with requests waiting aborts them.
            (d, ch)
        });
        // Bounded by time, not passes: 264 fsyncs take many passes on a
        // loaded machine (100,000 passes were not enough in CI).
        let t0 = std::time::Instant::now();
        while (after_reset.get().is_none() || flushed.get() < u64::from(RING_ENTRIES) + 8)
            && t0.elapsed() < std::time::Duration::from_secs(60)
        {
            h.step_all();
        }
        assert_eq!(after_reset.get(), Some(true), "the flush sent from the reset's callback finished");
        assert_eq!(flushed.get(), u64::from(RING_ENTRIES) + 8);
        h.on(0, move || drop(d));
        let _ = std::fs::remove_file(&path);
    }

    /// A channel dropped with a read stuck in the kernel (on a pipe no one
    /// writes to, standing for a hung device) leaves the reactor at once;
    /// the read is reaped when it completes and its consumer still gets
    /// the data. (The drop waited for the kernel, with nothing else on the
    /// reactor running, for as long as the request took.)
    #[test]
    fn a_channel_dropped_with_a_request_stuck_in_the_kernel_does_not_stall_the_reactor() {
        struct Pipe(Arc<File>);
        impl Backend for Pipe {
            fn module_name(&self) -> &'static str {
                "uring"
            }
            fn product_name(&self) -> &'static str {
                "test pipe"
            }
            fn supports(&self, kind: IoType) -> bool {
                kind == IoType::Read
            }
            fn create_channel(&self) -> Box<dyn BackendChannel> {
                Box::new(UringChannel::new(self.0.clone(), "pipe").unwrap())
            }
        }
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let h = Harness::new(1);
        use std::os::fd::FromRawFd;
        // SAFETY: fresh descriptors of ours, each owned once from here.
        let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        // Room for all the data at once: the writer never waits for the
        // reads (the test joins it before it reaps them).
        // SAFETY: F_SETPIPE_SZ on our pipe's descriptor.
        assert!(unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 512 * RING_ENTRIES as i32) } >= 512 * RING_ENTRIES as i32);
        let backend: Arc<dyn Backend> = Arc::new(Pipe(Arc::new(rd)));
        h.on(0, || bdev::register(BdevSpec { name: "pipe0".into(), block_size: 512, num_blocks: 8, uuid: None, backend }).unwrap());
        type Got = Rc<RefCell<Vec<(IoStatus, Vec<u8>)>>>;
        let got: Got = Rc::default();
        let g = got.clone();
        let n = RING_ENTRIES as usize + 1;
        let held = h.on(0, move || {
            let d = bdev::open("pipe0", false, |_| {}).unwrap();
            let ch = d.channel();
            // One more than the ring holds: the last waits in the channel.
            for _ in 0..n {
                let buf = pollux_core::dma::pool().unwrap().get(512).unwrap();
                let g = g.clone();
                d.read(&ch, [buf], 0, 1, move |mut io| {
                    let data = io.take_buffers().iter().flat_map(|b| b.to_vec()).collect();
                    g.borrow_mut().push((io.status(), data));
                });
            }
            (d, ch)
        });
        // The reads go to the kernel and stay there.
        h.run_until_idle(10);
        assert!(got.borrow().is_empty(), "the reads wait for the pipe");
        // Data comes once the drop has returned, or after 20 s if it never
        // does on its own.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let late = rx.recv_timeout(std::time::Duration::from_secs(20)).is_err();
            std::io::Write::write_all(&mut wr, &vec![0x5a; 512 * RING_ENTRIES as usize]).unwrap();
            late
        });
        h.on(0, move || drop(held));
        tx.send(()).unwrap();
        // The read that never reached the kernel ends with the drop (sent
        // later, after its consumer let go, a write could land over newer
        // data).
        assert_eq!(got.borrow().iter().map(|g| g.0).collect::<Vec<_>>(), [IoStatus::Aborted], "the waiting read, at the drop");
        assert!(!writer.join().unwrap(), "the channel's drop waited for the kernel");
        let t0 = std::time::Instant::now();
        while got.borrow().len() < n && t0.elapsed() < std::time::Duration::from_secs(60) {
            h.step_all();
        }
        let got = got.borrow();
        assert_eq!(got.len(), n, "the stuck reads were reaped after the drop");
        assert!(got[1..].iter().all(|g| *g == (IoStatus::Success, vec![0x5a; 512])));
        // The drain is over: its poller went.
        let (a, t, p) = h.on(0, reactor::poller_infos);
        assert!(!a.iter().chain(&t).chain(&p).any(|i| i.name.starts_with("uring_drain")), "{a:?} {t:?}");
    }
}
