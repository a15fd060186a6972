//! An lvol's I/O: each reactor's channel maps a request's blocks to the
//! device clusters of the volume (or of the snapshots under it) and sends
//! it to the base bdev, with no lock and no allocation when the clusters
//! are there. A write to a cluster the volume does not own yet waits while
//! the store's owner reactor allocates it (copying the snapshot's data or
//! zeroes first); requests that span clusters go piece by piece through
//! bounce buffers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pollux_core::bdev::remap::{ClusterTable, Remap, RemapShared};
use pollux_core::bdev::{Backend, BackendChannel, Bdev, BdevIo, Descriptor, IoStatus, IoType};
use pollux_core::dma::{self, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor::{self, ReactorId};
use serde_json::{Value, json};

/// Where a volume's clusters are: its own map (which the bdev layer's
/// fast path reads too, see `pollux_core::bdev::remap`), then its
/// parent's.
pub struct Layout {
    pub own: Arc<ClusterTable>,
    pub parent: Option<Arc<Layout>>,
}

impl Layout {
    pub fn new(clusters: &[u32], parent: Option<Arc<Layout>>) -> Arc<Layout> {
        Arc::new(Layout { own: Arc::new(ClusterTable::new(clusters)), parent })
    }
    fn own(&self, k: usize) -> u32 {
        self.own.get(k)
    }
    /// The device cluster with blob cluster `k`'s data, if any layer has it.
    fn resolve(&self, k: usize) -> Option<u32> {
        let mut l = self;
        loop {
            match l.own(k) {
                0 => l = l.parent.as_deref()?,
                c => return Some(c),
            }
        }
    }
}

/// What the lvol store layer tells a volume's channels (shared by all
/// reactors).
pub struct Volume {
    pub blob_id: u64,
    pub base: Descriptor,
    /// Identifies the store on the main reactor (its UUID).
    pub lvs_uuid: uuid::Uuid,
    layout: Mutex<Arc<Layout>>,
    /// What the bdev layer's fast path shares: the cluster size, the own
    /// map, its generation (changed with every new layout, and when a
    /// cluster of a map in one run moves), and the
    /// switches: `read_only`, and `frozen` (writes wait while a snapshot
    /// moves the volume's clusters).
    pub remap: Arc<RemapShared>,
    /// `bdev_get_bdevs`' `driver_specific.lvol`, kept current by the store
    /// layer.
    pub describe: Mutex<Value>,
}

impl Volume {
    pub fn new(blob_id: u64, base: Descriptor, cluster_blocks: u64, lvs_uuid: uuid::Uuid, layout: Arc<Layout>, read_only: bool) -> Volume {
        let remap = Arc::new(RemapShared::new(cluster_blocks, layout.own.clone(), read_only));
        Volume { blob_id, base, lvs_uuid, layout: Mutex::new(layout), remap, describe: Mutex::new(json!({})) }
    }

    /// Base blocks per cluster (a power of two).
    pub fn cluster_blocks(&self) -> u64 {
        self.remap.cluster_blocks()
    }

    /// Cluster index and block within it of block `off`.
    #[inline(always)]
    fn split(&self, off: u64) -> (u64, u64) {
        self.remap.split(off)
    }

    pub fn layout(&self) -> Arc<Layout> {
        self.layout.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Give channels a new map (resize, snapshot, new parent).
    pub fn set_layout(&self, l: Arc<Layout>) {
        let own = l.own.clone();
        *self.layout.lock().unwrap_or_else(|e| e.into_inner()) = l;
        self.remap.set_table(own);
    }
}

/// How a channel asks the owner reactor for a cluster: (store, blob,
/// cluster) and the answer to deliver back on the asking reactor.
pub type Allocator = fn(uuid::Uuid, u64, usize, Box<dyn FnOnce(Result<(), i32>) + Send>);

pub struct LvolBackend {
    pub vol: Arc<Volume>,
    pub allocate: Allocator,
    pub on_destroy: Box<dyn Fn() + Send + Sync>,
}

impl Backend for LvolBackend {
    fn module_name(&self) -> &'static str {
        "lvol"
    }
    fn product_name(&self) -> &'static str {
        "Logical Volume"
    }
    fn supports(&self, kind: IoType) -> bool {
        // Write zeroes only where the base zeroes (a clone's copied cluster
        // must read zeroes after it).
        match kind {
            IoType::Read | IoType::Write | IoType::Unmap | IoType::Flush | IoType::Reset => true,
            IoType::WriteZeroes => self.vol.base.bdev().supports(kind),
            _ => false,
        }
    }
    fn buffer_alignment(&self) -> usize {
        self.vol.base.bdev().buffer_alignment()
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        let vol = self.vol.clone();
        let st = Rc::new_cyclic(|me| Chan {
            me: me.clone(),
            ch: vol.base.channel(),
            generation: Cell::new(vol.remap.generation()),
            layout: RefCell::new(vol.layout()),
            vol,
            allocate: self.allocate,
            waiting: RefCell::new(HashMap::new()),
            writes: Rc::new(Cell::new(0)),
            held: RefCell::new(Vec::new()),
        });
        let key = Arc::as_ptr(&self.vol) as usize;
        VOL_CHANS.with(|m| {
            let mut m = m.borrow_mut();
            m.retain(|_, w| w.strong_count() > 0);
            m.insert(key, Rc::downgrade(&st));
        });
        Box::new(LvolChannel(st))
    }
    fn driver_specific(&self) -> Value {
        self.vol.describe.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn destroy(&self) {
        (self.on_destroy)()
    }
}

type Done = Box<dyn FnOnce(IoStatus, Vec<DmaBuf>)>;

/// A request waiting for its cluster.
struct Waiting {
    kind: IoType,
    bufs: Vec<DmaBuf>,
    off: u64,
    n: u64,
    done: Done,
}

struct Chan {
    me: Weak<Chan>,
    vol: Arc<Volume>,
    ch: IoChannel<Bdev>,
    generation: Cell<u64>,
    layout: RefCell<Arc<Layout>>,
    allocate: Allocator,
    /// Requests waiting for cluster k of the volume, by k.
    waiting: RefCell<HashMap<usize, Vec<Waiting>>>,
    /// Writes sent to the base and not finished.
    writes: Rc<Cell<u64>>,
    /// Writes held while the volume is frozen.
    held: RefCell<Vec<Waiting>>,
}

struct LvolChannel(Rc<Chan>);

impl BackendChannel for LvolChannel {
    fn remap(&self) -> Option<Remap> {
        let st = &self.0;
        Some(Remap::new(st.vol.remap.clone(), st.ch.clone(), st.vol.base.writable(), st.writes.clone()))
    }

    fn submit(&self, io: BdevIo) {
        let st = &self.0;
        let (kind, off, n) = (io.kind(), io.offset_blocks(), io.num_blocks());
        let (k, within) = st.vol.split(off);
        if n > 0 && within + n <= st.vol.cluster_blocks() {
            // The fast path: the request, as it is, to the base cluster
            // that holds it.
            let k = k as usize;
            st.refresh_layout();
            let target = {
                let layout = st.layout.borrow();
                match kind {
                    IoType::Read => layout.resolve(k),
                    IoType::Write | IoType::WriteZeroes | IoType::Unmap
                        if !st.vol.remap.read_only()
                            && !st.vol.remap.frozen()
                            && (kind == IoType::Write || st.vol.base.bdev().supports(kind)) =>
                    {
                        Some(layout.own(k)).filter(|c| *c != 0)
                    }
                    _ => None,
                }
            };
            if let Some(c) = target {
                let counter = kind.writes().then(|| st.writes.clone());
                return st.vol.base.forward(&st.ch, io, st.vol.remap.base_block(c, within), counter);
            }
        }
        slow(st, io)
    }
}

/// Everything but a request within one cluster that is there: resets,
/// flushes, clusters to allocate or read as zeroes, requests across
/// clusters.
#[inline(never)]
#[cold]
fn slow(st: &Rc<Chan>, mut io: BdevIo) {
    let (kind, off, n) = (io.kind(), io.offset_blocks(), io.num_blocks());
    match kind {
        IoType::Reset => return io.complete(IoStatus::Success),
        IoType::Flush => {
            let base = st.vol.base.bdev().num_blocks();
            return st.vol.base.flush(&st.ch, 0, base, move |c| io.complete(c.status()));
        }
        _ => {}
    }
    let cb = st.vol.cluster_blocks();
    if n == 0 || off / cb == (off + n - 1) / cb {
        let bufs = io.take_buffers();
        return st.single(kind, bufs, off, n, move |s, bufs| {
            io.put_buffers(bufs);
            io.complete(s)
        });
    }
    split(st, io);
}

impl Chan {
    /// Take the volume's current map if it changed.
    #[inline(always)]
    fn refresh_layout(&self) {
        let g = self.vol.remap.generation();
        if g != self.generation.get() {
            *self.layout.borrow_mut() = self.vol.layout();
            self.generation.set(g);
        }
    }

    fn layout(&self) -> Arc<Layout> {
        self.refresh_layout();
        self.layout.borrow().clone()
    }

    /// A request within one cluster.
    fn single(&self, kind: IoType, mut bufs: Vec<DmaBuf>, off: u64, n: u64, done: impl FnOnce(IoStatus, Vec<DmaBuf>) + 'static) {
        let (k, within) = self.vol.split(off);
        let k = k as usize;
        let layout = self.layout();
        let base = &self.vol.base;
        let to_base = |c: u32| self.vol.remap.base_block(c, within);
        match kind {
            IoType::Read => match layout.resolve(k) {
                Some(c) => base.submit(&self.ch, kind, bufs, to_base(c), n, move |mut child| {
                    let b = child.take_buffers();
                    done(child.status(), b)
                }),
                None => {
                    bufs.iter_mut().for_each(|b| b.zero());
                    done(IoStatus::Success, bufs)
                }
            },
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                if self.vol.remap.read_only() {
                    return done(IoStatus::ReadOnly, bufs);
                }
                if self.vol.remap.frozen() {
                    return self.held.borrow_mut().push(Waiting { kind, bufs, off, n, done: Box::new(done) });
                }
                let own = layout.own(k);
                if own != 0 {
                    if kind != IoType::Write && !base.bdev().supports(kind) {
                        return done(IoStatus::Success, bufs);
                    }
                    self.writes.set(self.writes.get() + 1);
                    let me = self.me.clone();
                    return base.submit(&self.ch, kind, bufs, to_base(own), n, move |mut child| {
                        if let Some(st) = me.upgrade() {
                            st.writes.set(st.writes.get() - 1);
                        }
                        let b = child.take_buffers();
                        done(child.status(), b)
                    });
                }
                // Not ours yet. Unmapping it, or zeroing what reads as
                // zeroes anyway, changes nothing.
                if kind == IoType::Unmap || (kind == IoType::WriteZeroes && layout.resolve(k).is_none()) {
                    return done(IoStatus::Success, bufs);
                }
                if k >= layout.own.len() {
                    return done(IoStatus::OutOfRange, bufs);
                }
                self.wait_for_cluster(k, Waiting { kind, bufs, off, n, done: Box::new(done) });
            }
            _ => done(IoStatus::Unsupported, bufs),
        }
    }

    fn wait_for_cluster(&self, k: usize, w: Waiting) {
        let first = {
            let mut waiting = self.waiting.borrow_mut();
            let q = waiting.entry(k).or_default();
            q.push(w);
            q.len() == 1
        };
        if !first {
            return;
        }
        let here = reactor::current();
        let token = ChanRef::new(self.me.clone());
        (self.allocate)(
            self.vol.lvs_uuid,
            self.vol.blob_id,
            k,
            Box::new(move |r| {
                reactor::send_msg(here, move || {
                    if let Some(st) = token.get() {
                        st.cluster_ready(k, r)
                    }
                })
            }),
        );
    }

    fn cluster_ready(&self, k: usize, r: Result<(), i32>) {
        let ws = self.waiting.borrow_mut().remove(&k).unwrap_or_default();
        for w in ws {
            match r {
                Ok(()) => self.single(w.kind, w.bufs, w.off, w.n, w.done),
                Err(e) => (w.done)(if e == libc::ENOSPC { IoStatus::NoSpace } else { IoStatus::Failed }, w.bufs),
            }
        }
    }
}

thread_local! {
    /// This reactor's channel of each volume (by the volume's address).
    static VOL_CHANS: RefCell<HashMap<usize, Weak<Chan>>> = RefCell::new(HashMap::new());
}

fn chan_of(vol: &Arc<Volume>) -> Option<Rc<Chan>> {
    VOL_CHANS.with(|m| m.borrow().get(&(Arc::as_ptr(vol) as usize)).and_then(Weak::upgrade))
}

/// Hold new writes to `vol` on every reactor and wait for those already
/// sent to the base to finish; `done` runs on the calling reactor after.
pub fn freeze(vol: &Arc<Volume>, done: impl FnOnce() + Send + 'static) {
    vol.remap.set_frozen(true);
    let origin = reactor::current();
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(reactor::count()));
    let done: DoneOnce = Arc::new(Mutex::new(Some(Box::new(done))));
    for r in reactor::all() {
        let (vol, left, done) = (vol.clone(), left.clone(), done.clone());
        reactor::send_msg(r, move || drain(vol, left, done, origin));
    }
}

type DoneOnce = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// On one reactor: come back until its channel has no write in flight.
fn drain(vol: Arc<Volume>, left: Arc<std::sync::atomic::AtomicUsize>, done: DoneOnce, origin: ReactorId) {
    if chan_of(&vol).is_some_and(|c| c.writes.get() > 0) {
        let here = reactor::current();
        return reactor::send_msg(here, move || drain(vol, left, done, origin));
    }
    if left.fetch_sub(1, Ordering::AcqRel) == 1 {
        reactor::send_msg(origin, move || {
            if let Some(f) = done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                f()
            }
        });
    }
}

/// Let writes to `vol` go again, the held ones first.
pub fn unfreeze(vol: &Arc<Volume>) {
    vol.remap.set_frozen(false);
    for r in reactor::all() {
        let vol = vol.clone();
        reactor::send_msg(r, move || {
            if let Some(c) = chan_of(&vol) {
                let held = std::mem::take(&mut *c.held.borrow_mut());
                for w in held {
                    c.single(w.kind, w.bufs, w.off, w.n, w.done);
                }
            }
        });
    }
}

/// A channel named across reactors by an ID only: the message that comes
/// back to the channel's reactor looks it up there.
struct ChanRef {
    reactor: ReactorId,
    id: u64,
}

thread_local! {
    static CHANS: RefCell<HashMap<u64, Weak<Chan>>> = RefCell::new(HashMap::new());
    static NEXT: Cell<u64> = const { Cell::new(1) };
}

impl ChanRef {
    fn new(me: Weak<Chan>) -> ChanRef {
        let id = NEXT.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        CHANS.with(|c| {
            let mut c = c.borrow_mut();
            c.retain(|_, w| w.strong_count() > 0);
            c.insert(id, me);
        });
        ChanRef { reactor: reactor::current(), id }
    }
    fn get(self) -> Option<Rc<Chan>> {
        debug_assert_eq!(self.reactor, reactor::current());
        CHANS.with(|c| c.borrow_mut().remove(&self.id)).and_then(|w| w.upgrade())
    }
}

/// A request that spans clusters: one piece per cluster (at most a large
/// buffer each), each through its own bounce buffer.
fn split(st: &Rc<Chan>, io: BdevIo) {
    let (kind, off, n) = (io.kind(), io.offset_blocks(), io.num_blocks());
    let bs = io.block_size() as u64;
    let cb = st.vol.cluster_blocks();
    let pool = match dma::pool() {
        Ok(p) => p,
        Err(_) => return io.complete(IoStatus::NoMemory),
    };
    let max_blocks = (pool.large_size() as u64 / bs).max(1);
    let mut pieces = Vec::new();
    let mut at = off;
    while at < off + n {
        let end = (at - at % cb + cb).min(off + n).min(at + max_blocks);
        pieces.push((at, end - at));
        at = end;
    }
    let state = Rc::new(Split { io: RefCell::new(Some(io)), left: Cell::new(pieces.len()), status: Cell::new(IoStatus::Success) });
    for (p_off, p_n) in pieces {
        let (st, state, pool2) = (st.clone(), state.clone(), pool.clone());
        let len = (p_n * bs) as usize;
        let byte = ((p_off - off) * bs) as usize;
        pool2.get_or_wait(len, move |mut b| {
            let has_data = kind.has_data();
            if kind == IoType::Write {
                if let Some(io) = state.io.borrow().as_ref() {
                    io.copy_out(byte, &mut b[..len]);
                }
            }
            let bufs = if has_data { vec![b] } else { Vec::new() };
            let state2 = state.clone();
            st.single(kind, bufs, p_off, p_n, move |s, bufs| {
                if kind == IoType::Read && s.is_ok() {
                    if let (Some(io), Some(b)) = (state2.io.borrow_mut().as_mut(), bufs.first()) {
                        io.copy_in(byte, &b[..len]);
                    }
                }
                drop(bufs);
                state2.piece_done(s);
            });
        });
    }
}

struct Split {
    io: RefCell<Option<BdevIo>>,
    left: Cell<usize>,
    status: Cell<IoStatus>,
}

impl Split {
    fn piece_done(&self, s: IoStatus) {
        if !s.is_ok() && self.status.get().is_ok() {
            self.status.set(s);
        }
        self.left.set(self.left.get() - 1);
        if self.left.get() == 0 {
            if let Some(io) = self.io.borrow_mut().take() {
                io.complete(self.status.get());
            }
        }
    }
}
