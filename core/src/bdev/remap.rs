//! Remapped bdevs: a bdev whose blocks sit, cluster by cluster, on
//! another bdev (a logical volume on its store's bdev).
//!
//! The bdev layer sends a read or write that stays within one cluster the
//! map has (or, when the whole map is one run on the base, any read or
//! write) straight to the base bdev's backend, at the mapped offset, as
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

use super::io::{BdevIo, IoType, Slot};
use super::{Bdev, channel};
use crate::io_channel::IoChannel;

/// Where each cluster of a bdev is on its base: `get(k)` is the base
/// cluster of cluster `k`, 0 when it has none (yet).
///
/// A table whose clusters lie in one run on the base (cluster `k` at base
/// cluster `first + k` for every `k`: a thick volume on a store that had
/// the room in one piece, the usual case) says so, and the fast path then
/// maps a request by adding one offset, with no lookup and no limit at
/// cluster boundaries.
#[derive(Debug)]
pub struct ClusterTable {
    clusters: Box<[AtomicU32]>,
    /// The base cluster of cluster 0 when the table is one run, else 0
    /// (base cluster 0 holds the store's super block, never data).
    run_first: AtomicU32,
}

impl ClusterTable {
    pub fn new(clusters: &[u32]) -> ClusterTable {
        let first = clusters.first().copied().unwrap_or(0);
        let one_run = first != 0
            && u32::try_from(clusters.len()).ok().and_then(|n| first.checked_add(n)).is_some()
            && clusters.iter().enumerate().all(|(k, c)| *c == first + k as u32);
        ClusterTable {
            clusters: clusters.iter().map(|c| AtomicU32::new(*c)).collect(),
            run_first: AtomicU32::new(if one_run { first } else { 0 }),
        }
    }

    #[inline(always)]
    pub fn get(&self, k: usize) -> u32 {
        self.clusters.get(k).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// The base cluster of cluster 0 if every cluster follows it on the
    /// base in order, else 0.
    #[inline(always)]
    pub fn run_first(&self) -> u32 {
        self.run_first.load(Ordering::Acquire)
    }

    /// Give cluster `k` base cluster `c` (a cluster allocated on first
    /// write); seen by every reactor's next request. Use
    /// [`RemapShared::set_cluster`] for a table a fast path may hold. (A
    /// table in one run has every cluster already; should one change all
    /// the same, the table stops being a run, and this says so: the fast
    /// paths keep the run's offset and must take the table again.)
    fn set(&self, k: usize, c: u32) -> bool {
        let Some(slot) = self.clusters.get(k) else { return false };
        let broke = self.run_first.load(Ordering::Relaxed) != 0 && slot.load(Ordering::Relaxed) != c;
        if broke {
            self.run_first.store(0, Ordering::Release);
        }
        slot.store(c, Ordering::Release);
        broke
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
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
    /// The table's generation (`GENERATION` per [`RemapShared::set_table`],
    /// and per run a [`RemapShared::set_cluster`] ends) and the two
    /// switches, in one word: the fast path reads it once.
    state: AtomicU64,
    /// The fast path is off for good ([`RemapShared::stop`]).
    stopped: AtomicBool,
}

/// Writes are refused (the backend answers them).
const READ_ONLY: u64 = 1;
/// Writes wait (the backend holds them while the map is being moved).
const FROZEN: u64 = 2;
const SWITCHES: u64 = READ_ONLY | FROZEN;
const GENERATION: u64 = 4;

impl RemapShared {
    /// `cluster_blocks` must be a power of two.
    pub fn new(cluster_blocks: u64, table: Arc<ClusterTable>, read_only: bool) -> RemapShared {
        assert!(cluster_blocks.is_power_of_two() && cluster_blocks < 1 << 32, "clusters of {cluster_blocks} blocks");
        RemapShared {
            cluster_blocks,
            shift: cluster_blocks.trailing_zeros(),
            table: Mutex::new(table),
            state: AtomicU64::new(if read_only { READ_ONLY } else { 0 }),
            stopped: AtomicBool::new(false),
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
    /// before its next request. (After [`RemapShared::stop`], the empty one
    /// stays.)
    pub fn set_table(&self, t: Arc<ClusterTable>) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !self.stopped.load(Ordering::Relaxed) {
            *table = t;
        }
        self.state.fetch_add(GENERATION, Ordering::Release);
    }

    /// Turn the fast path off for good: every request goes to the backend
    /// from each reactor's next one on (an empty table maps nothing). For a
    /// base being removed: the layer refuses new I/O to a bdev being
    /// removed, and the fast path, which does not look at the base's state
    /// per request, is stopped as soon as the remapped bdev's owner hears
    /// of it.
    pub fn stop(&self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::Relaxed);
        *table = Arc::new(ClusterTable::new(&[]));
        self.state.fetch_add(GENERATION, Ordering::Release);
    }

    /// Give cluster `k` of `table` (the current table, or one about to be
    /// set) base cluster `c`; seen by every reactor's next request.
    pub fn set_cluster(&self, table: &ClusterTable, k: usize, c: u32) {
        if table.set(k, c) {
            // The table was one run and is no longer: the fast paths map
            // by the run's offset, which they took with the generation.
            self.state.fetch_add(GENERATION, Ordering::Release);
        }
    }

    /// Changes with every [`RemapShared::set_table`] (and when a
    /// [`RemapShared::set_cluster`] ends a run).
    #[inline(always)]
    pub fn generation(&self) -> u64 {
        self.state.load(Ordering::Acquire) / GENERATION
    }

    /// Writes are refused: the backend answers them.
    pub fn read_only(&self) -> bool {
        self.state.load(Ordering::Acquire) & READ_ONLY != 0
    }

    pub fn set_read_only(&self, on: bool) {
        self.switch(READ_ONLY, on)
    }

    /// Writes wait: the backend holds them while the map is being moved.
    pub fn frozen(&self) -> bool {
        self.state.load(Ordering::Acquire) & FROZEN != 0
    }

    pub fn set_frozen(&self, on: bool) {
        self.switch(FROZEN, on)
    }

    fn switch(&self, bit: u64, on: bool) {
        if on {
            self.state.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.state.fetch_and(!bit, Ordering::SeqCst);
        }
    }
}

/// One reactor's fast path of a remapped bdev, given by its backend's
/// channel ([`BackendChannel::remap`](super::BackendChannel::remap)).
pub struct Remap {
    shared: Arc<RemapShared>,
    table: RefCell<Arc<ClusterTable>>,
    /// The shared state word of the table in hand, switches off: a read
    /// may go when the word has this generation, a write when the word is
    /// this exactly.
    seen: Cell<u64>,
    /// When the table in hand is one run on the base: what to add to a
    /// block to get its base block (never 0: base cluster 0 is the
    /// store's); else 0. Taken with the table: a table stops being a run
    /// only with a new generation (`set_cluster`).
    run_add: Cell<u64>,
    /// With a run: the end of the blocks that may go by it, the table's
    /// and the base's ends in one (a bdev that is open may grow, never
    /// shrink, so the base's end checked when the table was taken holds).
    run_end: Cell<u64>,
    /// `READ_ONLY` when the base may not be written (every write then goes
    /// to the backend), else 0.
    no_writes: u64,
    base: IoChannel<Bdev>,
    /// The base bdev (its channel's, held here to be one load away).
    base_bdev: Arc<Bdev>,
    /// The base wants aligned or contiguous buffers (the layer bounces
    /// for it).
    base_bounces: bool,
    /// Writes sent to the base and not finished, shared with the backend
    /// (which waits for them to drain when it freezes the bdev).
    writes: Rc<Cell<u64>>,
}

impl Remap {
    pub fn new(shared: Arc<RemapShared>, base: IoChannel<Bdev>, base_writable: bool, writes: Rc<Cell<u64>>) -> Remap {
        let seen = shared.state.load(Ordering::Acquire) & !SWITCHES;
        let table = shared.table();
        let base_bdev = base.device().clone();
        let base_bounces = base_bdev.align != 1 || base_bdev.contiguous;
        let no_writes = if base_writable { 0 } else { READ_ONLY };
        let r = Remap {
            shared,
            table: RefCell::new(table),
            seen: Cell::new(seen),
            run_add: Cell::new(0),
            run_end: Cell::new(0),
            no_writes,
            base,
            base_bdev,
            base_bounces,
            writes,
        };
        r.took_table();
        r
    }

    /// The table in hand is new: what it covers, and whether it is a run.
    fn took_table(&self) {
        let table = self.table.borrow();
        let blocks = (table.len() as u64) << self.shared.shift;
        let add = (table.run_first() as u64) << self.shared.shift;
        self.run_add.set(add);
        self.run_end.set(blocks.min(self.base_bdev.num_blocks().saturating_sub(add)));
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

    /// Send a request to the base if it is a read or write within one
    /// mapped cluster (or anywhere in a table that is one run); else give
    /// it back for the backend. The layer has checked the request against
    /// the remapped bdev (range, buffers, at least one block) and that both
    /// bdevs have one block size, and passes its type and whether it is to
    /// be lent memory (which it has at hand).
    #[inline(always)]
    pub(crate) fn try_send(&self, mut s: Box<Slot>, kind: IoType, lend: bool) -> Result<(), Box<Slot>> {
        let write = match kind {
            IoType::Read if !lend => false,
            IoType::Write => true,
            _ => return Err(s),
        };
        let sh = &*self.shared;
        let state = sh.state.load(Ordering::Acquire);
        let state = if write { state | self.no_writes } else { state & !SWITCHES };
        if state != self.seen.get() && !self.refreshed(state, write) {
            return Err(s);
        }
        // The map is trusted to name clusters of the base, but a store's
        // metadata comes from a disk: the base's range is checked all the
        // same (`shift` < 32 and clusters < 2^32: no overflow).
        let run_add = self.run_add.get();
        let to = if run_add != 0 {
            // One run: any request within the table and the base, across
            // clusters too.
            if s.offset_blocks + s.num_blocks > self.run_end.get() {
                return Err(s);
            }
            s.offset_blocks + run_add
        } else {
            let (k, within) = sh.split(s.offset_blocks);
            if within + s.num_blocks > sh.cluster_blocks {
                return Err(s);
            }
            // SAFETY: `table` is replaced only by `refreshed`, on this
            // reactor, which has returned; the reference is not kept.
            let c = unsafe { &*self.table.as_ptr() }.get(k as usize);
            if c == 0 || (c as u64 + 1) << sh.shift > self.base_bdev.num_blocks() {
                return Err(s);
            }
            sh.base_block(c, within)
        };
        // A base being removed is not looked at here: its removal stops
        // the fast path (`RemapShared::stop`, from the owner's event).
        if self.base_bounces && !self.bounced(&mut s) {
            return Err(s);
        }
        s.forwarded = Some(s.offset_blocks);
        s.offset_blocks = to;
        if write {
            self.writes.set(self.writes.get() + 1);
            s.remap_write = true;
        }
        self.base.send_to_backend(BdevIo::from_slot(s));
        Ok(())
    }

    /// The base wants aligned or contiguous buffers: give it a bounce
    /// buffer if the request's are not. False if none could be had.
    #[cold]
    fn bounced(&self, s: &mut Slot) -> bool {
        s.bounced.is_some() || channel::bounce_if_needed(&self.base_bdev, s).is_ok()
    }

    /// The shared state moved on from `seen`: take the new table if its
    /// generation changed; say whether the request may go (a write not
    /// while a switch is on or the base is not writable).
    #[cold]
    fn refreshed(&self, state: u64, write: bool) -> bool {
        let generation = state & !SWITCHES;
        if generation != self.seen.get() {
            *self.table.borrow_mut() = self.shared.table();
            self.took_table();
            self.seen.set(generation);
        }
        !write || state & SWITCHES == 0
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
        sh.set_cluster(&t, 0, 4);
        assert_eq!(sh.table().get(0), 4, "a cluster set is seen through the shared table");
        let g = sh.generation();
        sh.set_table(Arc::new(ClusterTable::new(&[1])));
        assert_ne!(sh.generation(), g);
        assert_eq!(sh.table().len(), 1);
    }

    #[test]
    fn a_table_knows_when_its_clusters_are_one_run_on_the_base() {
        assert_eq!(ClusterTable::new(&[5, 6, 7]).run_first(), 5);
        assert_eq!(ClusterTable::new(&[9]).run_first(), 9);
        for not in [&[5, 7, 8][..], &[6, 5], &[0, 1, 2], &[3, 4, 0], &[], &[u32::MAX - 1, u32::MAX]] {
            assert_eq!(ClusterTable::new(not).run_first(), 0, "{not:?}");
        }
        let t = Arc::new(ClusterTable::new(&[5, 6, 7]));
        let sh = RemapShared::new(8, t.clone(), false);
        let g = sh.generation();
        sh.set_cluster(&t, 1, 6);
        assert_eq!((t.run_first(), sh.generation()), (5, g), "setting what is there keeps the run");
        sh.set_cluster(&t, 1, 9);
        assert_eq!((t.run_first(), t.get(1)), (0, 9), "a cluster moved: no longer a run");
        assert_eq!(sh.generation(), g + 1, "and the fast paths, which keep the run's offset, take the table again");
    }

    #[test]
    fn the_switches_and_the_generation_share_one_word() {
        let sh = RemapShared::new(8, Arc::new(ClusterTable::new(&[1])), true);
        assert!(sh.read_only() && !sh.frozen());
        sh.set_frozen(true);
        sh.set_read_only(false);
        assert!(!sh.read_only() && sh.frozen());
        let g = sh.generation();
        sh.set_table(Arc::new(ClusterTable::new(&[2])));
        assert_eq!(sh.generation(), g + 1);
        assert!(sh.frozen(), "a new table leaves the switches as they were");
    }

    #[test]
    fn a_stopped_fast_path_stays_stopped() {
        let sh = RemapShared::new(8, Arc::new(ClusterTable::new(&[1, 2])), false);
        let g = sh.generation();
        sh.stop();
        assert_eq!((sh.table().len(), sh.table().run_first()), (0, 0), "an empty table maps nothing");
        assert_ne!(sh.generation(), g, "every channel takes it before its next request");
        let g = sh.generation();
        sh.set_table(Arc::new(ClusterTable::new(&[3, 4])));
        assert_eq!(sh.table().len(), 0, "a later layout does not turn it back on");
        assert_ne!(sh.generation(), g);
    }
}
