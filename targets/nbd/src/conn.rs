//! The server end of the socket the kernel's NBD driver reads and writes:
//! requests in, bdev I/O on this reactor's channel, replies out. It knows
//! nothing of `/dev/nbdX` (see [`crate::disk`]), so tests and the fuzz
//! target play the kernel's part on a socket pair.
//!
//! Bounds: at most [`MAX_REQUESTS`] requests at the bdev, and
//! [`MAX_HELD`] bytes of data held (buffers of requests under way and
//! read data not yet sent); beyond either the socket is not read until
//! some finish or go out (the kernel waits). Data buffers come from the
//! reactor's pool; when it is short a write's header waits (nothing more
//! is read) and a read waits, retried every millisecond, rather than
//! failing: only a connection holding nothing may take a region of its
//! own. A bdev that answers "no memory" gets the request again a
//! millisecond later, as SPDK's bdev layer retries. A header with the wrong
//! magic ends the connection; a request the bdev cannot do is answered
//! with an errno and its data, if any, read and dropped.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSliceMut, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::{Rc, Weak};

use pollux_core::bdev::{Bdev, BdevIo, Descriptor, IoStatus};
use pollux_core::dma::{self, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::sock::{Flushed, OutBuf, TxQueue};
use pollux_core::sys::Interest;

use crate::proto::{self, Frame, Framer, Geometry, Op, Request, errno};

/// Requests at the bdev at once.
pub const MAX_REQUESTS: usize = 256;
/// Bytes of data held: buffers of requests under way and replies queued.
pub const MAX_HELD: usize = 64 << 20;
/// The most one read or write may move (the kernel's NBD queue allows
/// 32 MiB per request).
pub const MAX_IO: u32 = 32 << 20;
/// Receive buffer for headers and small writes.
const RX_LEN: usize = 64 << 10;
/// Write data of at least this many bytes still to come is read straight
/// into its buffers.
const DIRECT_MIN: u64 = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// No more requests (the kernel sent its disconnect, or we are
    /// stopping): answer what is under way, then close.
    Draining,
    /// The socket is gone: wait for the bdev's requests, then close.
    Dead,
    Closed,
}

/// A write whose data is still arriving.
struct Incoming {
    req: Request,
    /// What to do once the data is in (or the errno to answer with; the
    /// data is then dropped).
    op: Result<Op, u32>,
    bufs: Vec<DmaBuf>,
    filled: usize,
}

struct State {
    framer: Framer,
    rx: Box<[u8]>,
    pos: usize,
    end: usize,
    cur: Option<Incoming>,
    phase: Phase,
    /// Requests at the bdev.
    outstanding: usize,
    /// Bytes of data buffers held for requests not yet answered.
    held: usize,
    /// What the socket is watched for in interrupt mode: (read, write);
    /// `None` once it is no longer watched at all.
    watching: Option<(bool, bool)>,
    /// A write's header whose data waits for buffers (nothing more is read).
    parked: Option<Request>,
    /// Requests to submit again (memory was short).
    retry: std::collections::VecDeque<Retry>,
}

/// Counters for `nbd_get_disks`-style views and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub requests: u64,
    pub refused: u64,
    pub failed: u64,
}

/// How often requests waiting for memory are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// A request waiting for memory: its buffers (a write's data), if any.
type Retry = ([u8; 8], Op, Vec<DmaBuf>);

pub struct Conn {
    name: String,
    sock: UnixStream,
    io: RefCell<Option<(Descriptor, IoChannel<Bdev>)>>,
    geo: Cell<Geometry>,
    lends: bool,
    st: RefCell<State>,
    tx: RefCell<TxQueue<OutBuf>>,
    poller: RefCell<Option<Poller>>,
    /// While something waits for memory: kicks `poller` every [`RETRY`].
    waker: RefCell<Option<Poller>>,
    /// The waiting requests may be tried: [`RETRY`] passed, or memory came
    /// back (so a request that cannot go does not spin the reactor).
    due: Cell<bool>,
    on_closed: RefCell<Option<Box<dyn FnOnce()>>>,
    stats: Cell<ConnStats>,
}

/// The geometry a bdev gives the kernel.
pub fn geometry(desc: &Descriptor) -> Geometry {
    let b = desc.bdev();
    use pollux_core::bdev::IoType;
    Geometry {
        block_size: b.block_size(),
        num_blocks: b.num_blocks(),
        max_io: MAX_IO,
        flush: b.supports(IoType::Flush),
        unmap: b.supports(IoType::Unmap),
        write_zeroes: b.supports(IoType::WriteZeroes),
    }
}

impl Conn {
    /// Serve `sock` (nonblocking) with the bdev of `desc`, on this reactor.
    /// `on_closed` runs once the connection is closed and the bdev let go.
    pub fn start(name: &str, sock: UnixStream, desc: Descriptor, on_closed: impl FnOnce() + 'static) -> io::Result<Rc<Conn>> {
        sock.set_nonblocking(true)?;
        let ch = desc.channel();
        let c = Rc::new(Conn {
            name: name.to_string(),
            geo: Cell::new(geometry(&desc)),
            lends: desc.bdev().lends_reads(),
            io: RefCell::new(Some((desc, ch))),
            sock,
            st: RefCell::new(State {
                framer: Framer::default(),
                rx: vec![0u8; RX_LEN].into_boxed_slice(),
                pos: 0,
                end: 0,
                cur: None,
                phase: Phase::Open,
                outstanding: 0,
                held: 0,
                watching: Some((true, false)),
                parked: None,
                retry: std::collections::VecDeque::new(),
            }),
            tx: RefCell::new(TxQueue::with_capacity(4096)),
            poller: RefCell::new(None),
            waker: RefCell::new(None),
            due: Cell::new(false),
            on_closed: RefCell::new(Some(Box::new(on_closed))),
            stats: Cell::new(ConnStats::default()),
        });
        let w: Weak<Conn> = Rc::downgrade(&c);
        let p = reactor::register_poller(&format!("nbd_{name}"), move || match w.upgrade() {
            Some(c) => c.poll(),
            None => PollStatus::Idle,
        });
        p.add_wake_fd(c.sock.as_raw_fd(), Interest::READABLE)?;
        *c.poller.borrow_mut() = Some(p);
        Ok(c)
    }

    pub fn stats(&self) -> ConnStats {
        self.stats.get()
    }

    /// Bytes of replies queued, and requests at the bdev.
    pub fn backlog(&self) -> (usize, usize) {
        (self.tx.borrow().len(), self.st.borrow().outstanding)
    }

    /// Whether the connection is closed (the bdev let go).
    pub fn is_closed(&self) -> bool {
        self.st.borrow().phase == Phase::Closed
    }

    /// Take the bdev's size again (it changed): the new block count.
    pub fn resized(&self) -> Option<u64> {
        let n = self.io.borrow().as_ref()?.0.bdev().num_blocks();
        let mut g = self.geo.get();
        g.num_blocks = n;
        self.geo.set(g);
        Some(n)
    }

    /// Take no more requests; close once those under way are answered.
    pub fn drain(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Open {
            st.phase = Phase::Draining;
        }
        drop(st);
        self.kick();
    }

    /// Close the socket now (the kernel sees it end and fails what it has
    /// outstanding); the bdev is let go once its requests finish.
    pub fn abort(self: &Rc<Self>) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.dead();
        self.kick();
    }

    /// Stop waking on the socket: a dead one reports a hang-up whatever it
    /// is watched for, and would wake the reactor for ever (completions
    /// kick the poller).
    fn unwatch(&self) {
        if self.st.borrow_mut().watching.take().is_some() {
            if let Some(p) = self.poller.borrow().as_ref() {
                p.remove_wake_fd(self.sock.as_raw_fd());
            }
        }
    }

    fn kick(&self) {
        if let Some(p) = self.poller.borrow().as_ref() {
            p.kick();
        }
    }

    fn count(&self, f: impl FnOnce(&mut ConnStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn poll(self: &Rc<Self>) -> PollStatus {
        let mut busy = self.flush();
        busy |= self.retry();
        busy |= self.read();
        busy |= self.flush();
        self.watch();
        self.maybe_close();
        busy.into()
    }

    fn may_read(&self, st: &State) -> bool {
        // No new request while one waits for memory (it would wait for ever
        // behind a steady stream); a write's data still comes.
        st.phase == Phase::Open
            && st.parked.is_none()
            && (st.retry.is_empty() || st.framer.data_left() > 0)
            && st.outstanding < MAX_REQUESTS
            && st.held + self.tx.borrow().len() < MAX_HELD
    }

    /// In interrupt mode, wake for reading only while requests are taken,
    /// for writing only while replies wait for room; not at all when
    /// neither (a hang-up would wake it for nothing).
    fn watch(&self) {
        let (was, want) = {
            let st = self.st.borrow();
            if matches!(st.phase, Phase::Dead | Phase::Closed) {
                return;
            }
            (st.watching, (self.may_read(&st), self.tx.borrow().is_blocked()))
        };
        if was == Some(want) || (was.is_none() && want == (false, false)) {
            return;
        }
        if want == (false, false) {
            return self.unwatch();
        }
        let interest = match want {
            (true, true) => Interest::BOTH,
            (true, false) => Interest::READABLE,
            _ => Interest::WRITABLE,
        };
        self.st.borrow_mut().watching = Some(want);
        if let Some(p) = self.poller.borrow().as_ref() {
            let fd = self.sock.as_raw_fd();
            let r = if was.is_some() { p.modify_wake_fd(fd, interest) } else { p.add_wake_fd(fd, interest) };
            if let Err(e) = r {
                tracing::warn!("nbd {}: cannot change what wakes it: {e}", self.name);
            }
        }
    }

    /// Send queued replies. Returns whether anything was written.
    fn flush(&self) -> bool {
        let mut tx = self.tx.borrow_mut();
        if tx.is_empty() || self.st.borrow().phase == Phase::Dead {
            return false;
        }
        let before = tx.len();
        match tx.flush(&self.sock) {
            Ok(Flushed::All) | Ok(Flushed::Blocked) => tx.len() < before,
            Err(e) => {
                drop(tx);
                tracing::info!("nbd {}: the kernel's socket failed ({e}): closing", self.name);
                self.dead();
                true
            }
        }
    }

    fn dead(&self) {
        let mut st = self.st.borrow_mut();
        if st.phase != Phase::Closed {
            st.phase = Phase::Dead;
        }
        drop(st);
        self.tx.borrow_mut().clear();
        self.unwatch();
    }

    /// Read and act on requests while they may be taken.
    fn read(self: &Rc<Self>) -> bool {
        let mut did = false;
        loop {
            let mut st = self.st.borrow_mut();
            if !self.may_read(&st) {
                return did;
            }
            if st.pos < st.end {
                let (pos, end) = (st.pos, st.end);
                let (n, frame) = {
                    let State { framer, rx, .. } = &mut *st;
                    framer.step(&rx[pos..end])
                };
                st.pos += n;
                did = true;
                match frame {
                    None => {}
                    Some(Frame::Data(k)) => {
                        let State { rx, cur, .. } = &mut *st;
                        if let Some(c) = cur.as_mut() {
                            if c.op.is_ok() {
                                dma::copy_to_bufs(&mut c.bufs, c.filled, &rx[pos..pos + k]);
                            }
                            c.filled += k;
                        }
                        if st.framer.data_left() == 0 {
                            let c = st.cur.take();
                            drop(st);
                            if let Some(c) = c {
                                self.data_in(c);
                            }
                        }
                    }
                    Some(Frame::Request(r)) => {
                        drop(st);
                        self.request(r);
                    }
                    Some(Frame::BadMagic(m)) => {
                        drop(st);
                        tracing::error!("nbd {}: request with magic {:#010x}: the stream is out of step, closing", self.name, m.0);
                        self.abort();
                        return true;
                    }
                }
                continue;
            }
            st.pos = 0;
            st.end = 0;
            let left = st.framer.data_left();
            let direct = left >= DIRECT_MIN && st.cur.as_ref().is_some_and(|c| c.op.is_ok());
            let got = if direct {
                let c = st.cur.as_mut().expect("a write under way");
                read_into(&self.sock, &mut c.bufs, c.filled, left as usize)
            } else {
                (&self.sock).read(&mut st.rx)
            };
            match got {
                Ok(0) => {
                    drop(st);
                    tracing::info!("nbd {}: the kernel closed its socket", self.name);
                    self.dead();
                    return true;
                }
                Ok(n) if direct => {
                    did = true;
                    st.framer.took_data(n);
                    let c = st.cur.as_mut().expect("a write under way");
                    c.filled += n;
                    if st.framer.data_left() == 0 {
                        let c = st.cur.take().expect("a write under way");
                        drop(st);
                        self.data_in(c);
                    }
                }
                Ok(n) => {
                    did = true;
                    st.end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return did,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    drop(st);
                    tracing::info!("nbd {}: reading the kernel's socket failed ({e}): closing", self.name);
                    self.dead();
                    return true;
                }
            }
        }
    }

    /// A whole header came.
    fn request(self: &Rc<Self>, r: Request) {
        self.count(|s| s.requests += 1);
        let op = proto::check(&r, &self.geo.get());
        if r.payload_len() > 0 {
            match op {
                Ok(op) => self.take_write(r, op),
                Err(e) => self.st.borrow_mut().cur = Some(Incoming { req: r, op: Err(e), bufs: Vec::new(), filled: 0 }),
            }
            return;
        }
        match op {
            Ok(Op::Disconnect) => {
                tracing::info!("nbd {}: the kernel disconnects", self.name);
                self.drain();
            }
            Ok(op) => self.submit(r.handle, op, Vec::new()),
            Err(e) => self.refuse(r.handle, e),
        }
    }

    /// Buffers for a write's data, or wait for them (its data stays in the
    /// socket, and so does everything after it).
    fn take_write(self: &Rc<Self>, r: Request, op: Op) {
        let (op, bufs) = match self.alloc(r.len as usize) {
            Alloc::Got(bufs) => (Ok(op), bufs),
            Alloc::Wait => {
                self.st.borrow_mut().parked = Some(r);
                self.wait_for_memory();
                return;
            }
            Alloc::Never => (Err(libc::ENOMEM as u32), Vec::new()),
        };
        let mut st = self.st.borrow_mut();
        if op.is_ok() {
            st.held += r.len as usize;
        }
        st.cur = Some(Incoming { req: r, op, bufs, filled: 0 });
    }

    /// Kick the poller every [`RETRY`] while something waits for memory.
    fn wait_for_memory(self: &Rc<Self>) {
        if self.waker.borrow().is_some() || self.poller.borrow().is_none() {
            return;
        }
        let w = Rc::downgrade(self);
        *self.waker.borrow_mut() = Some(reactor::register_timed_poller(&format!("nbd_{}_retry", self.name), RETRY, move || {
            if let Some(c) = w.upgrade() {
                c.due.set(true);
                c.kick();
            }
            PollStatus::Idle
        }));
    }

    /// Submit again what waited for memory; take up a parked write.
    /// Returns whether anything moved.
    fn retry(self: &Rc<Self>) -> bool {
        let mut moved = false;
        let dead = matches!(self.st.borrow().phase, Phase::Dead | Phase::Closed);
        let due = self.due.replace(false) || dead;
        let parked = self.st.borrow().parked;
        if let Some(r) = parked.filter(|_| due) {
            if self.st.borrow().phase == Phase::Open {
                let op = proto::check(&r, &self.geo.get());
                self.st.borrow_mut().parked = None;
                match op {
                    Ok(op) => self.take_write(r, op),
                    Err(e) => self.st.borrow_mut().cur = Some(Incoming { req: r, op: Err(e), bufs: Vec::new(), filled: 0 }),
                }
                moved = self.st.borrow().parked.is_none();
            }
        }
        let n = if due { self.st.borrow().retry.len() } else { 0 };
        for _ in 0..n {
            let Some((handle, op, bufs)) = self.st.borrow_mut().retry.pop_front() else { break };
            if matches!(self.st.borrow().phase, Phase::Dead | Phase::Closed) {
                // Nobody to answer: let the memory go.
                let held = bufs.iter().map(|b| b.len()).sum::<usize>();
                self.st.borrow_mut().held -= held;
                moved = true;
                continue;
            }
            let before = self.st.borrow().retry.len();
            self.submit(handle, op, bufs);
            // Only a request that did not come straight back is work.
            moved |= self.st.borrow().retry.len() == before;
        }
        let st = self.st.borrow();
        if st.retry.is_empty() && (st.parked.is_none() || st.phase != Phase::Open) {
            drop(st);
            self.waker.borrow_mut().take();
        }
        moved
    }

    /// Try `(handle, op, bufs)` again in a moment (the request stays
    /// counted as held, not as at the bdev).
    fn later(self: &Rc<Self>, handle: [u8; 8], op: Op, bufs: Vec<DmaBuf>) {
        self.st.borrow_mut().retry.push_back((handle, op, bufs));
        self.wait_for_memory();
    }

    /// A write's data is all in.
    fn data_in(self: &Rc<Self>, c: Incoming) {
        match c.op {
            Ok(op) => self.submit(c.req.handle, op, c.bufs),
            Err(e) => self.refuse(c.req.handle, e),
        }
    }

    fn refuse(&self, handle: [u8; 8], e: u32) {
        self.count(|s| s.refused += 1);
        self.reply(handle, e);
    }

    fn reply(&self, handle: [u8; 8], e: u32) {
        if self.st.borrow().phase == Phase::Dead {
            return;
        }
        self.tx.borrow_mut().bytes().extend_from_slice(&proto::reply(handle, e));
    }

    fn submit(self: &Rc<Self>, handle: [u8; 8], op: Op, mut bufs: Vec<DmaBuf>) {
        let Some((desc, ch)) = self.io.borrow().clone() else { return };
        if let (Op::Read { num_blocks, .. }, false) = (op, self.lends) {
            // A read brings its buffers (a bdev that lends its memory
            // brings its own).
            match self.alloc(self.bytes(num_blocks)) {
                Alloc::Got(b) => bufs = b,
                Alloc::Wait => return self.later(handle, op, Vec::new()),
                Alloc::Never => return self.refuse(handle, libc::ENOMEM as u32),
            }
        }
        let me = self.clone();
        let held = bufs.iter().map(|b| b.len()).sum::<usize>();
        self.st.borrow_mut().outstanding += 1;
        match op {
            Op::Read { offset_blocks, num_blocks } => {
                // Held until the data has gone out (lent memory included).
                let len = self.bytes(num_blocks);
                self.st.borrow_mut().held += len;
                if self.lends {
                    desc.read_lend(&ch, offset_blocks, num_blocks, move |io| me.read_done(handle, op, io, len));
                } else {
                    desc.read(&ch, bufs, offset_blocks, num_blocks, move |io| me.read_done(handle, op, io, len));
                }
            }
            Op::Write { offset_blocks, num_blocks, fua } => {
                let d2 = desc.clone();
                desc.write(&ch, bufs, offset_blocks, num_blocks, move |mut io| {
                    if fua && io.is_ok() && !me.is_closed() {
                        // The data is kept until the flush is done: a flush
                        // short of memory writes it again.
                        let ch = d2.channel();
                        let bufs = io.take_buffers();
                        drop(io);
                        d2.flush(&ch, offset_blocks, num_blocks, move |io| me.done(handle, op, io, held, bufs));
                    } else {
                        let bufs = io.take_buffers();
                        me.done(handle, op, io, held, bufs);
                    }
                });
            }
            Op::Flush => {
                let n = self.geo.get().num_blocks;
                desc.flush(&ch, 0, n, move |io| me.done(handle, op, io, 0, Vec::new()));
            }
            Op::Unmap { offset_blocks, num_blocks } => {
                desc.unmap(&ch, offset_blocks, num_blocks, move |io| me.done(handle, op, io, 0, Vec::new()))
            }
            Op::WriteZeroes { offset_blocks, num_blocks } => {
                desc.write_zeroes(&ch, offset_blocks, num_blocks, move |io| me.done(handle, op, io, 0, Vec::new()))
            }
            Op::Disconnect => unreachable!("answered by request()"),
        }
    }

    /// Bytes of `num_blocks` blocks.
    fn bytes(&self, num_blocks: u64) -> usize {
        (num_blocks * self.geo.get().block_size as u64) as usize
    }

    fn finished(&self, held: usize) {
        // Memory came back: what waits for it may go.
        self.due.set(true);
        let mut st = self.st.borrow_mut();
        st.outstanding -= 1;
        st.held -= held;
        drop(st);
        self.kick();
    }

    fn done(self: &Rc<Self>, handle: [u8; 8], op: Op, io: BdevIo, held: usize, bufs: Vec<DmaBuf>) {
        if io.status() == IoStatus::NoMemory && !matches!(self.st.borrow().phase, Phase::Dead | Phase::Closed) {
            // Again in a moment, with the same data (still counted held).
            self.st.borrow_mut().outstanding -= 1;
            return self.later(handle, op, bufs);
        }
        drop(bufs);
        self.finished(held);
        if io.is_ok() {
            self.reply(handle, 0);
        } else {
            self.count(|s| s.failed += 1);
            tracing::debug!("nbd {}: {:?} failed: {:?}", self.name, io.kind(), io.status());
            self.reply(handle, errno::EIO);
        }
    }

    fn read_done(self: &Rc<Self>, handle: [u8; 8], op: Op, mut io: BdevIo, held: usize) {
        self.finished(held);
        if io.status() == IoStatus::NoMemory && !matches!(self.st.borrow().phase, Phase::Dead | Phase::Closed) {
            return self.later(handle, op, Vec::new());
        }
        if !io.is_ok() {
            self.count(|s| s.failed += 1);
            return self.reply(handle, errno::EIO);
        }
        if self.st.borrow().phase == Phase::Dead {
            return;
        }
        let mut tx = self.tx.borrow_mut();
        tx.bytes().extend_from_slice(&proto::reply(handle, 0));
        if let Some(l) = io.take_lent() {
            let n = l.len();
            tx.push_buf(OutBuf::Lent(l), n);
        } else {
            for b in io.take_buffers() {
                let n = b.len();
                tx.push_buf(OutBuf::Dma(b), n);
            }
        }
    }

    fn maybe_close(&self) {
        let mut st = self.st.borrow_mut();
        let done = match st.phase {
            Phase::Draining => st.outstanding == 0 && st.retry.is_empty() && self.tx.borrow().is_empty(),
            Phase::Dead => st.outstanding == 0 && st.retry.is_empty(),
            Phase::Open | Phase::Closed => false,
        };
        if !done {
            return;
        }
        st.phase = Phase::Closed;
        st.cur = None;
        st.parked = None;
        drop(st);
        self.waker.borrow_mut().take();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.tx.borrow_mut().clear();
        self.unwatch();
        self.poller.borrow_mut().take();
        // Let go of the bdev before telling (a deletion waits for it).
        drop(self.io.borrow_mut().take());
        let f = self.on_closed.borrow_mut().take();
        if let Some(f) = f {
            f();
        }
    }
}

/// What [`Conn::alloc`] found.
enum Alloc {
    Got(Vec<DmaBuf>),
    /// The pool is short: wait for buffers to come back.
    Wait,
    /// Not even a region of its own, with nothing else held.
    Never,
}

impl Conn {
    /// Data buffers for `len` bytes from the reactor's pool. When it is
    /// short, a connection that holds nothing takes one region of its own
    /// (so a request larger than the pool still goes); others wait.
    fn alloc(&self, len: usize) -> Alloc {
        if let Ok(pool) = dma::pool() {
            let piece = pool.large_size().max(4096);
            let mut out = Vec::with_capacity(len.div_ceil(piece));
            let mut left = len;
            while left > 0 {
                let n = left.min(piece);
                let Some(mut b) = pool.get(n) else { break };
                b.set_len(n);
                out.push(b);
                left -= n;
            }
            if left == 0 {
                return Alloc::Got(out);
            }
        }
        let st = self.st.borrow();
        if st.held > 0 || st.outstanding > 0 {
            return Alloc::Wait;
        }
        match DmaBuf::alloc(len) {
            Ok(b) => Alloc::Got(vec![b]),
            Err(e) => {
                tracing::warn!("nbd {}: no memory for {len} bytes: {e}", self.name);
                Alloc::Never
            }
        }
    }
}

/// Read into the buffers from byte `off`, at most `max` bytes.
fn read_into(sock: &UnixStream, bufs: &mut [DmaBuf], off: usize, max: usize) -> io::Result<usize> {
    let mut iov: [IoSliceMut<'_>; 16] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let n = dma::slices_mut(bufs, off, max, &mut iov);
    (&*sock).read_vectored(&mut iov[..n])
}
