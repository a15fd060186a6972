//! Per-reactor buffer pools (SPDK's iobuf): small and large DMA buffers,
//! taken and returned without locks or allocation. A buffer goes back to its
//! pool when dropped. When a pool is empty, callers may queue for the next
//! buffer ([`BufPool::get_or_wait`]) instead of failing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::{DmaError, Iova, Region, allocate_region};
use crate::inline_fn::InlineFn;
use crate::reactor::{self, PollStatus, Poller};

/// Sizes and counts of the buffer pools, process-wide (`iobuf_set_options`).
/// Counts are totals, split evenly among reactors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IobufOptions {
    pub small_pool_count: u64,
    pub large_pool_count: u64,
    pub small_bufsize: u64,
    pub large_bufsize: u64,
}

impl Default for IobufOptions {
    fn default() -> Self {
        IobufOptions { small_pool_count: 4096, large_pool_count: 512, small_bufsize: 8 * 1024, large_bufsize: 128 * 1024 }
    }
}

static OPTIONS: Mutex<Option<IobufOptions>> = Mutex::new(None);

pub fn iobuf_options() -> IobufOptions {
    OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_default()
}

/// Set pool options; affects pools created afterwards.
pub fn set_iobuf_options(o: IobufOptions) {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
}

/// Where a buffer goes when dropped.
enum Home {
    Pool(Rc<Class>),
    /// A region of its own, shared by the buffers carved from it (queues,
    /// large one-off buffers); released when the last of them goes.
    Region {
        _owner: Rc<Owned>,
    },
    /// A view into buffers carved by [`carve`]: keeps them until the last
    /// view goes.
    View {
        _parent: Rc<CarvedInner>,
    },
}

/// A region given back (unmapped from every IOMMU) when dropped.
struct Owned(Arc<Region>);

impl Drop for Owned {
    fn drop(&mut self) {
        super::release_region(&self.0);
    }
}

/// A DMA buffer: memory a device may read or write, with its IOVA. Owned by
/// one reactor (`!Send`); returned to its pool on drop. `len` is the part in
/// use, up to `capacity`.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    home: Home,
    /// Known to hold only zeroes: set by [`DmaBuf::zero`], cleared by every
    /// way to write the buffer (`deref_mut`, `as_ptr`).
    zeroed: std::cell::Cell<bool>,
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("iova", &format_args!("{:#x}", self.iova().0))
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl DmaBuf {
    /// A zeroed buffer with a region of its own, page aligned. For long-lived
    /// device memory (queues); the I/O path uses pools.
    pub fn alloc(len: usize) -> Result<DmaBuf, DmaError> {
        let region = allocate_region(len.max(1))?;
        let ptr = NonNull::new(region.as_ptr()).expect("region pointer");
        let cap = region.len();
        // SAFETY: the region is at least `len` bytes, freshly mapped, ours.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Ok(DmaBuf { ptr, len, cap, home: Home::Region { _owner: Rc::new(Owned(region)) }, zeroed: std::cell::Cell::new(true) })
    }

    /// `count` zeroed buffers of `len` bytes each (page aligned) carved from
    /// one region: many large buffers without a hugepage each.
    pub fn alloc_many(len: usize, count: usize) -> Result<Vec<DmaBuf>, DmaError> {
        let stride = len.max(1).div_ceil(4096) * 4096;
        let region = allocate_region(stride * count.max(1))?;
        let base = region.as_ptr();
        // SAFETY: the region is at least stride * count bytes, fresh and ours.
        unsafe { std::ptr::write_bytes(base, 0, stride * count) };
        let owner = Rc::new(Owned(region));
        Ok((0..count)
            .map(|i| DmaBuf {
                // SAFETY: i * stride + stride <= region length.
                ptr: NonNull::new(unsafe { base.add(i * stride) }).expect("non-null"),
                len,
                cap: stride,
                home: Home::Region { _owner: owner.clone() },
                zeroed: std::cell::Cell::new(true),
            })
            .collect())
    }

    /// Fill the buffer with zeroes, skipping the work when it is known to
    /// hold zeroes already (nothing could have written it since).
    pub fn zero(&mut self) {
        if !self.zeroed.get() {
            // SAFETY: ptr..ptr+cap is memory this buffer owns exclusively.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.cap) };
            self.zeroed.set(true);
        }
    }

    /// Whether a holder that could let this buffer go (a write queue whose
    /// reader is behind) should: its pool is short, with requests waiting
    /// or under a quarter of its buffers free. Buffers not from a pool:
    /// always.
    pub fn wanted_back(&self) -> bool {
        match &self.home {
            Home::Pool(c) => !c.waiters.borrow().is_empty() || c.free.borrow().len() * 4 < c.count,
            Home::Region { .. } | Home::View { .. } => true,
        }
    }

    /// The memory of the pool the buffer comes from (its buffers' count
    /// times their size); 0 for a buffer not from a pool.
    pub fn pool_size(&self) -> usize {
        match &self.home {
            Home::Pool(c) => c.count * c.size,
            Home::Region { .. } | Home::View { .. } => 0,
        }
    }

    /// Whether the buffer is known to hold only zeroes (nothing could have
    /// written it since it was last zeroed).
    pub fn is_known_zero(&self) -> bool {
        self.zeroed.get()
    }

    /// The address a device reaches the buffer at. A device may write it
    /// there, so it no longer counts as zeroed.
    pub fn iova(&self) -> Iova {
        self.zeroed.set(false);
        Iova(self.ptr.as_ptr() as u64)
    }

    /// The address for comparisons and alignment checks (not for writing).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// A raw pointer to the data, for devices and system calls. The buffer
    /// may be written through it, so it no longer counts as zeroed.
    pub fn as_ptr(&self) -> *mut u8 {
        self.zeroed.set(false);
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Set the length in use; panics beyond the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "DmaBuf length {len} beyond capacity {}", self.cap);
        self.len = len;
    }
}

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is inside memory this buffer owns exclusively;
        // while a device may write it the buffer is owned by an I/O request,
        // so no reference to it can exist.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.zeroed.set(false);
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        match &self.home {
            // Whether it holds zeroes goes back with it: a null bdev's
            // reads then zero each pool buffer once, not once per read.
            Home::Pool(c) => c.free.borrow_mut().push((self.ptr, self.zeroed.get())),
            Home::Region { .. } => {} // the shared owner releases the region
            Home::View { .. } => {}   // the carved buffers go back whole
        }
    }
}

/// One size class of a pool.
struct Class {
    size: usize,
    count: usize,
    /// Free buffers, and whether each is known to hold zeroes.
    free: RefCell<Vec<(NonNull<u8>, bool)>>,
    waiters: RefCell<VecDeque<InlineFn<DmaBuf>>>,
    /// Keeps the memory mapped while buffers exist.
    _region: Option<Arc<Region>>,
    gets: Cell<u64>,
    misses: Cell<u64>,
}

impl Class {
    fn new(size: usize, count: usize) -> Result<Rc<Class>, DmaError> {
        let (region, free) = if count == 0 || size == 0 {
            (None, Vec::new())
        } else {
            let region = allocate_region(size * count)?;
            let base = region.as_ptr();
            // SAFETY: i * size + size <= size * count <= region length.
            let free = (0..count).rev().map(|i| (NonNull::new(unsafe { base.add(i * size) }).expect("non-null"), false)).collect();
            (Some(region), free)
        };
        Ok(Rc::new(Class {
            size,
            count,
            free: RefCell::new(free),
            waiters: RefCell::new(VecDeque::new()),
            _region: region,
            gets: Cell::new(0),
            misses: Cell::new(0),
        }))
    }

    fn take(self: &Rc<Self>, len: usize) -> Option<DmaBuf> {
        self.gets.set(self.gets.get() + 1);
        let free = self.free.borrow_mut().pop();
        match free {
            Some((ptr, zeroed)) => {
                Some(DmaBuf { ptr, len, cap: self.size, home: Home::Pool(self.clone()), zeroed: std::cell::Cell::new(zeroed) })
            }
            None => {
                self.misses.set(self.misses.get() + 1);
                None
            }
        }
    }

    /// Hand free buffers to queued waiters. Returns how many were served.
    fn serve(self: &Rc<Self>) -> usize {
        let mut n = 0;
        loop {
            if self.waiters.borrow().is_empty() || self.free.borrow().is_empty() {
                return n;
            }
            let w = self.waiters.borrow_mut().pop_front().expect("waiter");
            let b = self.take(self.size).expect("free buffer");
            w.call(b);
            n += 1;
        }
    }
}

impl Drop for Class {
    fn drop(&mut self) {
        if let Some(r) = &self._region {
            super::release_region(r);
        }
    }
}

/// Statistics of one reactor's pool.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PoolStats {
    pub small_total: usize,
    pub small_free: usize,
    pub small_gets: u64,
    pub small_misses: u64,
    pub large_total: usize,
    pub large_free: usize,
    pub large_gets: u64,
    pub large_misses: u64,
}

/// A reactor's buffer pool.
pub struct BufPool {
    small: Rc<Class>,
    large: Rc<Class>,
    waiter: RefCell<Option<Poller>>,
}

impl BufPool {
    /// A pool with these per-reactor counts.
    pub fn new(small: (usize, usize), large: (usize, usize)) -> Result<BufPool, DmaError> {
        Ok(BufPool { small: Class::new(small.0, small.1)?, large: Class::new(large.0, large.1)?, waiter: RefCell::new(None) })
    }

    pub fn small_size(&self) -> usize {
        self.small.size
    }

    pub fn large_size(&self) -> usize {
        self.large.size
    }

    fn class_for(&self, len: usize) -> Option<&Rc<Class>> {
        if len <= self.small.size && self.small.count > 0 {
            Some(&self.small)
        } else if len <= self.large.size {
            Some(&self.large)
        } else {
            None
        }
    }

    /// A buffer of at least `len` bytes (its length set to `len`), or `None`
    /// if the class is exhausted or `len` exceeds the large size (split the
    /// transfer into several buffers then).
    #[inline]
    pub fn get(&self, len: usize) -> Option<DmaBuf> {
        self.class_for(len)?.take(len)
    }

    /// Like [`BufPool::get`], but when the pool is empty queue `then` to run
    /// with the next buffer returned (in a later iteration). Returns whether
    /// `then` ran at once. `len` beyond the large size is a programming error.
    pub fn get_or_wait(self: &Rc<Self>, len: usize, then: impl FnOnce(DmaBuf) + 'static) -> bool {
        let class = self.class_for(len).unwrap_or_else(|| panic!("buffer of {len} bytes is larger than the large pool size"));
        if class.waiters.borrow().is_empty() {
            if let Some(mut b) = class.take(len) {
                b.set_len(len);
                then(b);
                return true;
            }
        }
        class.waiters.borrow_mut().push_back(InlineFn::new(move |mut b: DmaBuf| {
            b.set_len(len);
            then(b)
        }));
        self.ensure_waiter_poller();
        false
    }

    fn ensure_waiter_poller(self: &Rc<Self>) {
        if self.waiter.borrow().is_some() {
            return;
        }
        let me = Rc::downgrade(self);
        let p = reactor::register_poller("iobuf_waiters", move || {
            let Some(pool) = me.upgrade() else { return PollStatus::Idle };
            let n = pool.small.serve() + pool.large.serve();
            if pool.small.waiters.borrow().is_empty() && pool.large.waiters.borrow().is_empty() {
                // Nobody waits any more: stop polling (dropped at iteration end).
                pool.waiter.borrow_mut().take();
            }
            n.into()
        });
        *self.waiter.borrow_mut() = Some(p);
    }

    /// The memory the pool's buffers are carved from (one region per size
    /// class): what an RDMA device registers once to reach any of them.
    pub fn regions(&self) -> Vec<(*mut u8, usize)> {
        [&self.small, &self.large].iter().filter_map(|c| c._region.as_ref().map(|r| (r.as_ptr(), c.size * c.count))).collect()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            small_total: self.small.count,
            small_free: self.small.free.borrow().len(),
            small_gets: self.small.gets.get(),
            small_misses: self.small.misses.get(),
            large_total: self.large.count,
            large_free: self.large.free.borrow().len(),
            large_gets: self.large.gets.get(),
            large_misses: self.large.misses.get(),
        }
    }
}

/// The current reactor's pool, created on first use with its share of the
/// [`iobuf_options`] counts.
pub fn pool() -> Result<Rc<BufPool>, DmaError> {
    if let Some(p) = reactor::local::<BufPool>() {
        return Ok(p);
    }
    let o = iobuf_options();
    let n = reactor::count().max(1) as u64;
    let share = |total: u64| total.div_ceil(n) as usize;
    let p = Rc::new(BufPool::new(
        (o.small_bufsize as usize, share(o.small_pool_count)),
        (o.large_bufsize as usize, share(o.large_pool_count)),
    )?);
    reactor::set_local(p.clone());
    Ok(p)
}

/// A request's buffers lent out as views to several children at once: a
/// RAID 0 strip each, or the same data to every mirror of a RAID 1 write,
/// without copying. Reused from request to request, it allocates nothing
/// once warm: [`Carver::load`] moves the buffers in (the request's list
/// keeps its capacity), [`Carver::views`] makes views that hold the carver's
/// cell (a reference count, not an allocation), and [`Carver::unload`] moves
/// the buffers back once every view is gone.
#[derive(Default)]
pub struct Carver(Rc<CarvedInner>);

/// The carved buffers. Never read or written while views exist: nothing
/// reaches them but the carver, whose `load` and `unload` need the views
/// gone.
#[derive(Default)]
pub struct CarvedInner(Vec<DmaBuf>);

impl Carver {
    /// Move the buffers of `bufs` in (it keeps its capacity). False, and
    /// nothing taken, if the carver is not empty or views of what it held
    /// are still alive.
    pub fn load(&mut self, bufs: &mut Vec<DmaBuf>) -> bool {
        match Rc::get_mut(&mut self.0) {
            Some(inner) if inner.0.is_empty() => {
                // Views may be written: the buffers no longer count as zeroed.
                for b in bufs.iter() {
                    b.zeroed.set(false);
                }
                inner.0.append(bufs);
                true
            }
            _ => false,
        }
    }

    /// The bytes held.
    pub fn len(&self) -> usize {
        self.0.0.iter().map(|b| b.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.0.is_empty()
    }

    /// Views of the bytes `off..off + len` of the buffers held (seen as one
    /// run), one per buffer the range touches; `None` if the range is not
    /// inside the run. The iterator holds the carver's cell, not the carver.
    ///
    /// # Safety
    ///
    /// No byte may be written through a view while another view of it
    /// exists: views of the same bytes (a mirror's) must only be read (the
    /// data of write requests, which backends only read); views of
    /// disjoint ranges may be written.
    pub unsafe fn views(&self, off: usize, len: usize) -> Option<Views> {
        let end = off.checked_add(len)?;
        (end <= self.len()).then(|| Views { inner: self.0.clone(), at: 0, off, len })
    }

    /// Move the buffers back onto `bufs`, if no view is left (false, and
    /// nothing moved, otherwise).
    pub fn unload(&mut self, bufs: &mut Vec<DmaBuf>) -> bool {
        match Rc::get_mut(&mut self.0) {
            Some(inner) => {
                bufs.append(&mut inner.0);
                true
            }
            None => false,
        }
    }
}

/// The views of one range ([`Carver::views`]).
pub struct Views {
    inner: Rc<CarvedInner>,
    /// The buffer the range goes on in.
    at: usize,
    /// Where in it, and the bytes left.
    off: usize,
    len: usize,
}

impl Iterator for Views {
    type Item = DmaBuf;

    fn next(&mut self) -> Option<DmaBuf> {
        while self.len > 0 {
            let b = self.inner.0.get(self.at)?;
            self.at += 1;
            if self.off >= b.len {
                self.off -= b.len;
                continue;
            }
            let n = self.len.min(b.len - self.off);
            let view = DmaBuf {
                // SAFETY: off + n <= b.len: inside that buffer, which the
                // views' shared `inner` keeps alive and untouched.
                ptr: NonNull::new(unsafe { b.ptr.as_ptr().add(self.off) }).expect("non-null"),
                len: n,
                cap: n,
                home: Home::View { _parent: self.inner.clone() },
                zeroed: std::cell::Cell::new(false),
            };
            self.len -= n;
            self.off = 0;
            return Some(view);
        }
        None
    }
}
