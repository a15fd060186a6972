//! One RAID bdev: its members, how its blocks map onto them, and each
//! reactor's channel, which sends requests to the members.
//!
//! - raid0: strips of `strip` blocks laid round-robin over the members;
//!   a request within one strip goes to its member as it is (forwarded, no
//!   second request); one across strips is cut at strip boundaries into
//!   views of its buffers (no copy); unmaps and write zeroes become one
//!   contiguous range per member.
//! - concat: the members one after the other (each rounded down to whole
//!   strips); a request within one member is forwarded, one across members
//!   is cut at the boundary.
//! - raid1: reads go to one online member in turn and, if it fails, to the
//!   next; writes (and unmaps, write zeroes, flushes) to every member that
//!   is online or being rebuilt, with the same buffers. A member that fails
//!   a write is failed: the array goes on degraded, and the request
//!   succeeds if an online member took it.
//!
//! Member changes (a failure, a removal, an addition) are made on the main
//! reactor; channels take the new member list when its generation changes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pollux_core::bdev::{BackendChannel, Bdev, BdevIo, Descriptor, IoStatus, IoType};
use pollux_core::dma;
use pollux_core::io_channel::IoChannel;

/// RAID levels Pollux has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Raid0,
    Raid1,
    Concat,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
            Level::Concat => "concat",
        }
    }
    /// SPDK's names and aliases.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "raid0" | "0" => Level::Raid0,
            "raid1" | "1" => Level::Raid1,
            "concat" => Level::Concat,
            _ => return None,
        })
    }
    /// Members that may be missing with the array still serving.
    pub fn redundancy(self, members: usize) -> usize {
        match self {
            Level::Raid1 => members.saturating_sub(1),
            _ => 0,
        }
    }
}

/// A member slot's state.
pub const ONLINE: u8 = 0;
/// Failed (an I/O error) or removed: holds no descriptor.
pub const FAILED: u8 = 1;
/// Never attached since the array was (re)assembled.
pub const MISSING: u8 = 2;
/// Being rebuilt: takes writes, serves no reads.
pub const REBUILDING: u8 = 3;

pub fn state_name(s: u8) -> &'static str {
    match s {
        ONLINE => "online",
        FAILED => "failed",
        MISSING => "missing",
        _ => "rebuilding",
    }
}

/// One member slot.
pub struct Member {
    pub name: Mutex<Option<String>>,
    pub uuid: Mutex<Option<uuid::Uuid>>,
    pub desc: Mutex<Option<Descriptor>>,
    pub state: AtomicU8,
    /// First block of the array's data on the member, and how many.
    pub data_offset: AtomicU64,
    pub data_size: AtomicU64,
}

impl Member {
    pub fn empty() -> Member {
        Member {
            name: Mutex::new(None),
            uuid: Mutex::new(None),
            desc: Mutex::new(None),
            state: AtomicU8::new(MISSING),
            data_offset: AtomicU64::new(0),
            data_size: AtomicU64::new(0),
        }
    }
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
    pub fn name(&self) -> Option<String> {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn desc(&self) -> Option<Descriptor> {
        self.desc.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Let go of the member's bdev (closed, its claim released).
    pub fn release(&self) {
        if let Some(d) = self.desc.lock().unwrap_or_else(|e| e.into_inner()).take() {
            d.bdev().release_claim();
        }
    }
}

/// What every reactor shares about an array.
pub struct Shared {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub level: Level,
    /// Strip size in blocks (a power of two; raid1: 0) and its log2.
    pub strip: u64,
    pub strip_shift: u32,
    pub block_size: u32,
    pub num_blocks: AtomicU64,
    pub members: Vec<Member>,
    /// Bumped when a member's descriptor or state changes.
    pub generation: AtomicU64,
    /// Rebuild: writes overlapping blocks `window` wait; `epoch` tags writes
    /// so the rebuild can wait for those sent before a window was set.
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    pub epoch: AtomicU64,
    /// Where the rebuild is (blocks done), for `bdev_raid_get_bdevs`.
    pub rebuild_done: AtomicU64,
    /// The slot being rebuilt, or `u64::MAX`.
    pub rebuild_slot: AtomicU64,
    /// The superblock's last sequence number (0: none written).
    pub sb_seq: AtomicU64,
    /// A rebuild task is running (set when one starts, cleared when it
    /// ends, whatever `rebuild_slot` says): never two at once.
    pub rebuild_running: std::sync::atomic::AtomicBool,
}

/// Whether a member's error says the device is bad (it is then failed),
/// rather than the request (unsupported, out of range, aborted, no
/// resources: the request fails, the member stays).
pub fn device_error(st: IoStatus) -> bool {
    matches!(st, IoStatus::Failed | IoStatus::Media | IoStatus::NoDevice | IoStatus::Nvme { .. })
}

impl Shared {
    pub fn new(name: &str, uuid: uuid::Uuid, level: Level, strip: u64, block_size: u32, members: usize) -> Shared {
        Shared {
            name: name.to_string(),
            uuid,
            level,
            strip,
            strip_shift: if strip > 0 { strip.trailing_zeros() } else { 0 },
            block_size,
            num_blocks: AtomicU64::new(0),
            members: (0..members).map(|_| Member::empty()).collect(),
            generation: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            window_end: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            rebuild_done: AtomicU64::new(0),
            rebuild_slot: AtomicU64::new(u64::MAX),
            sb_seq: AtomicU64::new(0),
            rebuild_running: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The whole strips of `size` blocks (all of them when there are no
/// strips: `strip` 0).
pub fn whole_strips(size: u64, strip: u64) -> u64 {
    if strip.is_power_of_two() { size & !(strip - 1) } else { size }
}

/// Blocks an array of `members` holds when its members give it `sizes`
/// blocks of data: raid0, the smallest member's whole strips times the
/// members; raid1, the smallest member's blocks; concat, every member's
/// whole strips. None past 64 bits. The one rule for an array made by RPC
/// and for the size a superblock may claim.
pub fn capacity(level: Level, strip: u64, sizes: &[u64], members: u64) -> Option<u64> {
    let whole = |s: &u64| whole_strips(*s, strip);
    match level {
        Level::Raid0 => sizes.iter().map(whole).min().unwrap_or(0).checked_mul(members),
        Level::Raid1 => Some(sizes.iter().copied().min().unwrap_or(0)),
        Level::Concat => sizes.iter().map(whole).try_fold(0u64, |a, u| a.checked_add(u)),
    }
}

impl Shared {
    /// Blocks each member gives the array (raid0, raid1: the smallest
    /// member's, whole strips; concat: its own, whole strips).
    pub fn usable(&self, slot: usize) -> u64 {
        whole_strips(self.members[slot].data_size.load(Ordering::Acquire), self.strip)
    }

    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Members online (or rebuilding, with `writes`).
    pub fn count(&self, states: &[u8]) -> usize {
        self.members.iter().filter(|m| states.contains(&m.state())).count()
    }

    /// Concat: the slot and block within it of array block `lba`, and the
    /// blocks left in that member.
    fn concat_map(&self, mut lba: u64) -> Option<(usize, u64, u64)> {
        for i in 0..self.members.len() {
            let n = self.usable(i);
            if lba < n {
                return Some((i, lba, n - lba));
            }
            lba -= n;
        }
        None
    }

    /// Raid0: the slot and block within it of array block `lba`, and the
    /// blocks left in that strip.
    fn raid0_map(&self, lba: u64) -> (usize, u64, u64) {
        let n = self.members.len() as u64;
        let stripe = lba >> self.strip_shift;
        let within = lba & (self.strip - 1);
        ((stripe % n) as usize, ((stripe / n) << self.strip_shift) + within, self.strip - within)
    }

    /// Whether a write to `[lba, lba + n)` must wait for the rebuild window.
    #[inline]
    fn in_window(&self, lba: u64, n: u64) -> bool {
        let (s, e) = (self.window_start.load(Ordering::Acquire), self.window_end.load(Ordering::Acquire));
        s < e && lba < e && lba + n.max(1) > s
    }
}

/// A reactor's channel to the array.
pub struct Chan {
    pub sh: Arc<Shared>,
    me: Weak<Chan>,
    generation: Cell<u64>,
    /// Per slot: the member's descriptor and channel, while it has one.
    members: RefCell<Vec<Option<MemberChan>>>,
    next_read: Cell<usize>,
    /// Writes in flight by epoch parity (see [`Shared::epoch`]).
    pub writes: [Cell<u64>; 2],
    /// Writes waiting for the rebuild window to move.
    held: RefCell<Vec<BdevIo>>,
    /// Finished gathers, kept for the next request that fans out (with
    /// their carvers' lists): no allocation per request once warm.
    spare: RefCell<Vec<Rc<Gather>>>,
}

type MemberChan = (Descriptor, IoChannel<Bdev>);

thread_local! {
    /// Each reactor's channels of each array (by its shared state).
    static CHANS: RefCell<HashMap<usize, Weak<Chan>>> = RefCell::new(HashMap::new());
}

/// This reactor's channel of array `sh`, if it has one.
pub fn chan_of(sh: &Arc<Shared>) -> Option<Rc<Chan>> {
    CHANS.with(|m| m.borrow().get(&(Arc::as_ptr(sh) as usize)).and_then(Weak::upgrade))
}

pub fn new_channel(sh: &Arc<Shared>) -> Box<dyn BackendChannel> {
    let st = Rc::new_cyclic(|me| Chan {
        sh: sh.clone(),
        me: me.clone(),
        generation: Cell::new(u64::MAX),
        members: RefCell::new(Vec::new()),
        next_read: Cell::new(0),
        writes: [Cell::new(0), Cell::new(0)],
        held: RefCell::new(Vec::new()),
        spare: RefCell::new(Vec::new()),
    });
    st.refresh();
    CHANS.with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|_, w| w.strong_count() > 0);
        m.insert(Arc::as_ptr(sh) as usize, Rc::downgrade(&st));
    });
    Box::new(RaidChannel(st))
}

struct RaidChannel(Rc<Chan>);

impl BackendChannel for RaidChannel {
    fn submit(&self, io: BdevIo) {
        self.0.submit(io)
    }
}

/// How the children of one request finish it. Kept by the channel and
/// reused (see `Chan::spare`).
struct Gather {
    chan: Weak<Chan>,
    io: RefCell<Option<BdevIo>>,
    /// The request's buffers while its children hold views of them.
    carver: RefCell<dma::Carver>,
    left: Cell<usize>,
    status: Cell<IoStatus>,
    /// raid1 writes: succeed if an online member took it (`any_ok`), fail
    /// to be retried if a member had no resources (`retry`).
    any_mode: Cell<bool>,
    any_ok: Cell<bool>,
    retry: Cell<bool>,
    /// raid1 writes: the epoch whose count this request holds until done.
    epoch: Cell<Option<usize>>,
}

impl Gather {
    fn note(&self, st: IoStatus) {
        if !st.is_ok() && self.status.get().is_ok() {
            self.status.set(st);
        }
    }

    /// One child finished; the last one completes the request.
    fn done(self: &Rc<Self>) {
        self.left.set(self.left.get() - 1);
        if self.left.get() > 0 {
            return;
        }
        let chan = self.chan.upgrade();
        if let (Some(e), Some(me)) = (self.epoch.take(), &chan) {
            me.writes[e].set(me.writes[e].get() - 1);
        }
        let Some(mut io) = self.io.borrow_mut().take() else { return };
        if !self.carver.borrow_mut().unload(io.buffer_list()) {
            tracing::error!("raid: a view of a request's buffers outlived its children");
        }
        let st = match (self.any_mode.get(), self.retry.get(), self.any_ok.get(), self.status.get()) {
            (false, ..) => self.status.get(),
            (true, true, ..) => IoStatus::NoMemory,
            (true, false, true, _) => IoStatus::Success,
            (true, false, false, st) if !st.is_ok() => st,
            _ => IoStatus::Failed,
        };
        io.complete(st);
        if let Some(me) = chan {
            me.spare.borrow_mut().push(self.clone());
        }
    }
}

impl Chan {
    /// Take the member list if it changed.
    #[inline]
    fn refresh(&self) {
        let g = self.sh.generation.load(Ordering::Acquire);
        if g == self.generation.get() {
            return;
        }
        let list = self
            .sh
            .members
            .iter()
            .map(|m| match m.state() {
                ONLINE | REBUILDING => m.desc().map(|d| {
                    let ch = d.channel();
                    (d, ch)
                }),
                _ => None,
            })
            .collect();
        let old = std::mem::replace(&mut *self.members.borrow_mut(), list);
        self.generation.set(g);
        // Dropping a member's channel may complete its requests (and so
        // submit new ones here): not while the list is borrowed.
        drop(old);
    }

    /// Drop every member descriptor this channel holds (a member leaves).
    pub fn refresh_now(&self) {
        self.generation.set(u64::MAX);
        self.refresh();
    }

    /// A gather for `io` (a spare one if there is), holding one count of
    /// its own: add one per child sent, and call [`Gather::done`] once
    /// after the last is sent.
    fn gather(&self, io: BdevIo) -> Rc<Gather> {
        let spare = self.spare.borrow_mut().pop().filter(|g| Rc::strong_count(g) == 1 && g.carver.borrow().is_empty());
        let g = spare.unwrap_or_else(|| {
            Rc::new(Gather {
                chan: self.me.clone(),
                io: RefCell::new(None),
                carver: RefCell::new(dma::Carver::default()),
                left: Cell::new(0),
                status: Cell::new(IoStatus::Success),
                any_mode: Cell::new(false),
                any_ok: Cell::new(false),
                retry: Cell::new(false),
                epoch: Cell::new(None),
            })
        });
        *g.io.borrow_mut() = Some(io);
        g.left.set(1);
        g.status.set(IoStatus::Success);
        g.any_mode.set(false);
        g.any_ok.set(false);
        g.retry.set(false);
        g.epoch.set(None);
        g
    }

    /// Lend the buffers of the request in `g` to its children (views by
    /// [`Gather::carver`]); false if they could not be, or if they do not
    /// hold the request's `bytes` (then no child may go: a write must not
    /// land in part). Whatever was taken goes back at `done`.
    fn carve(&self, g: &Gather, bytes: usize) -> bool {
        let mut io = g.io.borrow_mut();
        let io = io.as_mut().expect("request");
        let mut carver = g.carver.borrow_mut();
        carver.load(io.buffer_list()) && carver.len() == bytes
    }

    /// The member slots that have a descriptor.
    fn targets(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.sh.members.len()).filter(|s| self.members.borrow().get(*s).is_some_and(Option::is_some))
    }

    pub fn submit(&self, io: BdevIo) {
        self.refresh();
        match self.sh.level {
            Level::Raid1 => self.raid1(io),
            Level::Raid0 | Level::Concat => self.striped(io),
        }
    }

    fn member(&self, slot: usize) -> Option<MemberChan> {
        self.members.borrow().get(slot).cloned().flatten()
    }

    fn offset(&self, slot: usize) -> u64 {
        self.sh.members[slot].data_offset.load(Ordering::Acquire)
    }

    /// raid0 and concat.
    fn striped(&self, io: BdevIo) {
        let (kind, lba, n) = (io.kind(), io.offset_blocks(), io.num_blocks());
        match kind {
            IoType::Flush | IoType::Reset => return self.to_all(io),
            IoType::Unmap | IoType::WriteZeroes if self.sh.level == Level::Raid0 => return self.raid0_ranges(io),
            _ => {}
        }
        let map = |lba: u64| match self.sh.level {
            Level::Raid0 => Some(self.sh.raid0_map(lba)),
            _ => self.sh.concat_map(lba),
        };
        let Some((slot, mlba, room)) = map(lba) else { return io.complete(IoStatus::OutOfRange) };
        if n <= room {
            let Some((d, ch)) = self.member(slot) else { return io.complete(IoStatus::NoDevice) };
            let off = self.offset(slot) + mlba;
            return d.forward(&ch, io, off, None);
        }
        // Across strips or members: one child per piece, on views of the
        // buffers.
        let bs = self.sh.block_size as u64;
        let pieces = || {
            let mut at = lba;
            std::iter::from_fn(move || {
                if at >= lba + n {
                    return None;
                }
                let piece = map(at).map(|(slot, mlba, room)| {
                    let k = room.min(lba + n - at);
                    (slot, mlba, k, ((at - lba) * bs) as usize)
                });
                at = piece.map_or(u64::MAX, |p| at + p.2);
                Some(piece)
            })
        };
        if pieces().any(|p| p.is_none()) {
            return io.complete(IoStatus::OutOfRange);
        }
        self.send_pieces(io, pieces().flatten());
    }

    /// Send the `pieces` (slot, member block, blocks, byte offset in the
    /// request) of `io` as children.
    fn send_pieces(&self, io: BdevIo, pieces: impl Iterator<Item = (usize, u64, u64, usize)>) {
        let kind = io.kind();
        let bs = self.sh.block_size as u64;
        let bytes = (io.num_blocks() * bs) as usize;
        let g = self.gather(io);
        if kind.has_data() && !self.carve(&g, bytes) {
            g.note(IoStatus::InvalidBuffer);
            return g.done();
        }
        for (slot, mlba, k, at) in pieces {
            // SAFETY: the pieces are disjoint ranges of the request.
            let views = if kind.has_data() { unsafe { g.carver.borrow().views(at, (k * bs) as usize) } } else { None };
            if kind.has_data() && views.is_none() {
                g.note(IoStatus::InvalidBuffer);
                continue;
            }
            let Some((d, ch)) = self.member(slot) else {
                g.note(IoStatus::NoDevice);
                continue;
            };
            g.left.set(g.left.get() + 1);
            let g2 = g.clone();
            d.submit(&ch, kind, views.into_iter().flatten(), self.offset(slot) + mlba, k, move |c| {
                g2.note(c.status());
                // The child's views go before the last child gives the
                // request its buffers back.
                drop(c);
                g2.done()
            });
        }
        g.done();
    }

    /// raid0 unmap / write zeroes: one contiguous range per member (its
    /// blocks in the request are contiguous on it).
    fn raid0_ranges(&self, io: BdevIo) {
        let (lba, n) = (io.offset_blocks(), io.num_blocks());
        if n == 0 {
            return io.complete(IoStatus::Success);
        }
        let m = self.sh.members.len() as u64;
        let shift = self.sh.strip_shift;
        let (first, last) = (lba >> shift, (lba + n - 1) >> shift);
        let pieces = || {
            (0..m).filter_map(move |slot| {
                // The member's first and last stripes in the request.
                let f = first + (slot + m - first % m) % m;
                let l = last.checked_sub((last % m + m - slot) % m)?;
                if f > l {
                    return None;
                }
                let start = if f == first { self.sh.raid0_map(lba).1 } else { (f / m) << shift };
                let end = if l == last { self.sh.raid0_map(lba + n - 1).1 + 1 } else { ((l / m) + 1) << shift };
                Some((slot as usize, start, end - start, 0))
            })
        };
        self.send_pieces(io, pieces())
    }

    /// Flush and reset of raid0 and concat, resets of raid1: every member
    /// that has a descriptor.
    fn to_all(&self, io: BdevIo) {
        let kind = io.kind();
        if self.targets().next().is_none() {
            return io.complete(IoStatus::NoDevice);
        }
        let g = self.gather(io);
        for slot in 0..self.sh.members.len() {
            let Some((d, ch)) = self.member(slot) else { continue };
            g.left.set(g.left.get() + 1);
            let g2 = g.clone();
            let (off, len) = match kind {
                IoType::Reset => (0, 0),
                _ => (0, d.bdev().num_blocks()),
            };
            d.submit(&ch, kind, None, off, len, move |c| {
                g2.note(c.status());
                g2.done()
            });
        }
        g.done();
    }

    /// A raid1 write-like child finished on `slot`: a member that fails
    /// one is failed (the array goes on degraded).
    fn member_result(&self, slot: usize, st: IoStatus, g: &Gather) {
        match st {
            IoStatus::Success => {
                if self.sh.members[slot].state() == ONLINE {
                    g.any_ok.set(true);
                }
            }
            IoStatus::NoMemory => g.retry.set(true),
            st => {
                g.note(st);
                if device_error(st) {
                    crate::rpc::fail_member(&self.sh, slot, st);
                }
            }
        }
    }

    fn raid1(&self, io: BdevIo) {
        match io.kind() {
            IoType::Read => self.raid1_read(io, 0, None, None),
            IoType::Reset => self.to_all(io),
            _ => self.raid1_write(io),
        }
    }

    /// Read from the next online member, trying the others if it fails.
    fn raid1_read(&self, io: BdevIo, tried: usize, last: Option<IoStatus>, failed: Option<usize>) {
        let n = self.sh.members.len();
        if tried >= n {
            return io.complete(last.unwrap_or(IoStatus::NoDevice));
        }
        let start = self.next_read.get();
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|s| Some(*s) != failed && self.sh.members[*s].state() == ONLINE && self.member(*s).is_some());
        let Some(slot) = pick else { return io.complete(last.unwrap_or(IoStatus::NoDevice)) };
        self.next_read.set((slot + 1) % n);
        let (d, ch) = self.member(slot).expect("picked");
        let (lba, k) = (io.offset_blocks(), io.num_blocks());
        let me = self.me.clone();
        d.submit_child(&ch, IoType::Read, io, self.offset(slot) + lba, k, move |c, io| {
            let st = c.status();
            drop(c);
            let Some(me) = me.upgrade() else { return io.complete(st) };
            match (st, failed) {
                // Not written back to the member that failed the read
                // (SPDK does): a user write to the same blocks meanwhile
                // would be undone on that member for good.
                (IoStatus::Success, _) => io.complete(st),
                (IoStatus::NoMemory, _) => me.raid1_read(io, tried + 1, Some(st), failed),
                (st, _) => {
                    tracing::warn!("raid {}: read from member {slot} failed ({st:?}); reading another", me.sh.name);
                    me.raid1_read(io, tried + 1, Some(st), failed.or(Some(slot)))
                }
            }
        });
    }

    /// Writes, unmaps, write zeroes and flushes: to every member online or
    /// being rebuilt, the data shared (views of the same buffers).
    fn raid1_write(&self, io: BdevIo) {
        let (kind, lba, n) = (io.kind(), io.offset_blocks(), io.num_blocks());
        let writes = kind.writes();
        // The epoch first, then the window (the rebuild sets them in the
        // other order): a write that misses a new window is counted in the
        // epoch the rebuild waits for.
        let epoch = (self.sh.epoch.load(Ordering::Acquire) & 1) as usize;
        if writes && self.sh.in_window(lba, n) {
            return self.held.borrow_mut().push(io);
        }
        if self.targets().next().is_none() {
            return io.complete(IoStatus::NoDevice);
        }
        let bytes = (n * self.sh.block_size as u64) as usize;
        let g = self.gather(io);
        if kind.has_data() && !self.carve(&g, bytes) {
            g.note(IoStatus::InvalidBuffer);
            return g.done();
        }
        g.any_mode.set(true);
        if writes {
            self.writes[epoch].set(self.writes[epoch].get() + 1);
            g.epoch.set(Some(epoch));
        }
        for slot in 0..self.sh.members.len() {
            let Some((d, ch)) = self.member(slot) else { continue };
            // SAFETY: write data are only read by the members' backends.
            let views = if kind.has_data() { unsafe { g.carver.borrow().views(0, bytes) } } else { None };
            if kind.has_data() && views.is_none() {
                g.note(IoStatus::InvalidBuffer);
                continue;
            }
            g.left.set(g.left.get() + 1);
            let (me, g2) = (self.me.clone(), g.clone());
            let (off, len) = if kind == IoType::Flush { (0, d.bdev().num_blocks()) } else { (self.offset(slot) + lba, n) };
            d.submit(&ch, kind, views.into_iter().flatten(), off, len, move |c| {
                let st = c.status();
                drop(c);
                if let Some(me) = me.upgrade() {
                    me.member_result(slot, st, &g2);
                }
                g2.done()
            });
        }
        g.done();
    }

    /// Send the writes held for the rebuild window (it moved).
    pub fn release_held(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        for io in held {
            self.submit(io);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_counts_whole_strips_and_refuses_past_64_bits() {
        // Strips of 8 blocks: 21 blocks give 16, 30 give 24.
        assert_eq!(capacity(Level::Raid0, 8, &[21, 30], 2), Some(32));
        assert_eq!(capacity(Level::Concat, 8, &[21, 30], 2), Some(40));
        assert_eq!(capacity(Level::Raid1, 0, &[21, 30], 2), Some(21));
        assert_eq!(capacity(Level::Raid0, 8, &[7, 30], 2), Some(0));
        assert_eq!(capacity(Level::Raid0, 8, &[u64::MAX, u64::MAX], 2), None);
        assert_eq!(capacity(Level::Concat, 8, &[u64::MAX, 8], 2), None);
    }
}
