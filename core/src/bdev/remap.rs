//! Remapped bdevs: a bdev whose blocks sit, cluster by cluster, on
//! another bdev (a logical volume on its store's bdev).
//!
//! The bdev layer sends a read or write that stays within one cluster the
//! map has straight to the base bdev's backend, at the mapped offset, as
//! [`Descriptor::forward`](super::Descriptor::forward) would, but without
//! going through the remapped bdev's own backend: no second dynamic call
//! and no second set of checks, which is most of what a volume costs over
//! its base when the base does nothing (the null bdev). Everything else
//! (clusters not allocated yet or held by a snapshot, requests across
//! clusters, other request types, writes while the volume is read-only or
//! frozen) goes to the backend as before.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::io::{BdevIo, IoType};
use super::{Bdev, channel};
use crate::io_channel::IoChannel;

/// Where each cluster of a bdev is on its base: `get(k)` is the base
/// cluster of cluster `k`, 0 when it has none (yet).
#[derive(Debug)]
pub struct ClusterTable(Box<[AtomicU32]>);

impl ClusterTable {
    pub fn new(clusters: &[u32]) -> ClusterTable {
        ClusterTable(clusters.iter().map(|c| AtomicU32::new(*c)).collect())
    }

    #[inline(always)]
    pub fn get(&self, k: usize) -> u32 {
        self.0.get(k).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Give cluster `k` base cluster `c` (a cluster allocated on first
    /// write); seen by every reactor's next request.
    pub fn set(&self, k: usize, c: u32) {
        if let Some(slot) = self.0.get(k) {
            slot.store(c, Ordering::Release);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a remapped bdev shares with every reactor's fast path: its
/// cluster size, its current table, and the switches that send writes to
/// the backend instead.
#[derive(Debug)]
pub struct RemapShared {
    cluster_blocks: u64,
    shift: u32,
    table: Mutex<Arc<ClusterTable>>,
    generation: AtomicU64,
    /// Writes are refused (the backend answers them).
    pub read_only: AtomicBool,
    /// Writes wait (the backend holds them while the map is being moved).
    pub frozen: AtomicBool,
}

impl RemapShared {
    /// `cluster_blocks` must be a power of two.
    pub fn new(cluster_blocks: u64, table: Arc<ClusterTable>, read_only: bool) -> RemapShared {
        assert!(cluster_blocks.is_power_of_two() && cluster_blocks < 1 << 32, "clusters of {cluster_blocks} blocks");
        RemapShared {
            cluster_blocks,
            shift: cluster_blocks.trailing_zeros(),
            table: Mutex::new(table),
            generation: AtomicU64::new(0),
            read_only: AtomicBool::new(read_only),
            frozen: AtomicBool::new(false),
        }
    }

    pub fn cluster_blocks(&self) -> u64 {
        self.cluster_blocks
    }

    /// Cluster index and block within it of block `off`.
    #[inline(always)]
    pub fn split(&self, off: u64) -> (u64, u64) {
        (off >> self.shift, off & (self.cluster_blocks - 1))
    }

    /// Base block of block `within` of base cluster `c`.
    #[inline(always)]
    pub fn base_block(&self, c: u32, within: u64) -> u64 {
        ((c as u64) << self.shift) + within
    }

    pub fn table(&self) -> Arc<ClusterTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new table (resize, snapshot, new parent): every reactor takes it
    /// before its next request.
    pub fn set_table(&self, t: Arc<ClusterTable>) {
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = t;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every [`RemapShared::set_table`].
    #[inline(always)]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// One reactor's fast path of a remapped bdev, given by its backend's
/// channel ([`BackendChannel::remap`](super::BackendChannel::remap)).
pub struct Remap {
    shared: Arc<RemapShared>,
    table: RefCell<Arc<ClusterTable>>,
    seen: Cell<u64>,
    base: IoChannel<Bdev>,
    base_writable: bool,
    /// The base wants aligned or contiguous buffers (the layer bounces
    /// for it).
    base_bounces: bool,
    /// Writes sent to the base and not finished, shared with the backend
    /// (which waits for them to drain when it freezes the bdev).
    writes: Rc<Cell<u64>>,
}

impl Remap {
    pub fn new(shared: Arc<RemapShared>, base: IoChannel<Bdev>, base_writable: bool, writes: Rc<Cell<u64>>) -> Remap {
        let seen = shared.generation();
        let table = RefCell::new(shared.table());
        let base_bounces = base.device().align != 1 || base.device().contiguous;
        Remap { shared, table, seen: Cell::new(seen), base, base_writable, base_bounces, writes }
    }

    /// The count of fast-path writes in flight.
    pub(crate) fn writes(&self) -> Rc<Cell<u64>> {
        self.writes.clone()
    }

    /// The block size of the base; the fast path is used only when the
    /// remapped bdev has the same one (checked once, by the layer).
    pub(crate) fn base_block_size(&self) -> u32 {
        self.base.device().block_size
    }

    /// Send `io` to the base if it is a read or write within one mapped
    /// cluster; else give it back for the backend. The layer has checked
    /// `io` against the remapped bdev (range, buffers, at least one block)
    /// and that both bdevs have one block size.
    #[inline]
    pub(crate) fn try_send(&self, mut io: BdevIo) -> Result<(), BdevIo> {
        let sh = &*self.shared;
        let s = io.slot_mut();
        let write = match s.kind {
            IoType::Read => false,
            IoType::Write => true,
            _ => return Err(io),
        };
        let (k, within) = sh.split(s.offset_blocks);
        if within + s.num_blocks > sh.cluster_blocks || s.lend {
            return Err(io);
        }
        if write && (!self.base_writable || sh.read_only.load(Ordering::Relaxed) || sh.frozen.load(Ordering::Acquire)) {
            return Err(io);
        }
        let g = sh.generation();
        if g != self.seen.get() {
            self.refresh(g);
        }
        let c = self.table.borrow().get(k as usize);
        if c == 0 {
            return Err(io);
        }
        let base: &Bdev = self.base.device();
        // The map is trusted to name clusters of the base, but a store's
        // metadata comes from a disk: the range is checked all the same
        // (the request ends within its cluster, `shift` < 32).
        if base.removing.load(Ordering::Relaxed) || (c as u64 + 1) << sh.shift > base.num_blocks() {
            return Err(io);
        }
        if self.base_bounces && s.bounced.is_none() && channel::bounce_if_needed(base, s).is_err() {
            return Err(io);
        }
        s.forwarded = Some(s.offset_blocks);
        s.offset_blocks = sh.base_block(c, within);
        if write {
            self.writes.set(self.writes.get() + 1);
            s.remap_write = true;
        }
        self.base.send_to_backend(io);
        Ok(())
    }

    #[cold]
    fn refresh(&self, g: u64) {
        *self.table.borrow_mut() = self.shared.table();
        self.seen.set(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_split_blocks_and_change_generation() {
        let t = Arc::new(ClusterTable::new(&[0, 7, 3]));
        let sh = RemapShared::new(2048, t.clone(), false);
        assert_eq!(sh.split(2048 * 2 + 5), (2, 5));
        assert_eq!(sh.base_block(7, 5), 7 * 2048 + 5);
        assert_eq!((t.get(0), t.get(1), t.get(9)), (0, 7, 0), "past the end reads as not there");
        t.set(0, 4);
        assert_eq!(sh.table().get(0), 4, "a cluster set is seen through the shared table");
        let g = sh.generation();
        sh.set_table(Arc::new(ClusterTable::new(&[1])));
        assert_ne!(sh.generation(), g);
        assert_eq!(sh.table().len(), 1);
    }
}
