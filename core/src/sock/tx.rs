//! A connection's write queue: bytes the protocol built (headers, small
//! PDUs) and data buffers it hands over whole, flushed together with
//! `writev`, in order.
//!
//! Buffers are sent from where they are: a read's data goes from its DMA
//! buffer to the socket with no copy but the kernel's. When the socket is
//! full (the peer does not read as fast as we answer), buffers stay queued
//! as they are while the peer goes on reading, as SPDK's requests keep
//! theirs until sent: copying them out at every full socket would cost a
//! pass over memory for each reader that is only briefly behind, which on
//! a link slower than the target is every reader of large transfers.
//!
//! What a reader that is behind can hold is bounded. The unsent part of
//! the queued buffers is copied into the queue's own bytes and the buffers
//! dropped (so they go back to their owner):
//! - beyond half of a pool's memory per queue ([`TxBuf::hold_cap`]; a
//!   buffer's whole capacity counts, [`TxBuf::pool_bytes`]), so that one
//!   reader that is behind cannot take the reactor's pool, which other
//!   connections need, by itself;
//! - when a buffer's pool runs short ([`TxBuf::release_when_blocked`]): at
//!   the next buffer queued, flush or tick of the connection;
//! - when the peer has read nothing for a whole period of the owner's
//!   timer ([`TxQueue::tick`]: the kernel's send queue did not shrink and
//!   nothing was written), and from then on until it reads again; memory a
//!   bdev lent (which no one else waits for) is let go then (a deleted RAM
//!   disk's is unmapped when its last holder goes).
//!
//! A stalled or hostile reader thus holds heap memory, bounded by the
//! caller's backlog limit, and at most half of the pool.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;

use crate::dma::{DmaBuf, Lent};

/// Most pieces handed to one `writev` (Linux's UIO_MAXIOV is 1024; a few
/// dozen already fill a socket buffer).
const MAX_IOV: usize = 64;
/// A queue that grew past this (a burst of output to a slow reader) gives
/// the memory back, keeping [`KEEP`], once it has been used lightly: at
/// the owner's timer ([`TxQueue::tick`]) after a period in which no drain
/// used more than `KEEP`, or after [`SHRINK_AFTER`] such drains in a row
/// (owners without a timer). Shrinking at every drain made a steady load of
/// large writes (an initiator's 32 writes of 1 MiB in flight) shrink and
/// grow the buffer again every few requests: allocations on the I/O path.
const SHRINK_ABOVE: usize = 8 << 20;
const KEEP: usize = 1 << 20;
const SHRINK_AFTER: u32 = 64;

enum Seg<B> {
    /// `len` bytes of `bytes`, starting at the end of the segments before.
    Bytes(usize),
    /// `len` bytes of a buffer from byte `start`.
    Buf(B, usize, usize),
}

impl<B> Seg<B> {
    fn len(&self) -> usize {
        match self {
            Seg::Bytes(n) | Seg::Buf(_, _, n) => *n,
        }
    }
}

/// A buffer a write queue sends from.
pub trait TxBuf {
    fn tx_len(&self) -> usize;
    /// Address of byte `start`, for the kernel to read (`writev`) up to
    /// `tx_len()`; valid while `self` lives.
    fn tx_ptr(&self, start: usize) -> *const u8;
    /// Append `n` bytes from byte `start` to `out`.
    fn tx_copy(&self, start: usize, n: usize, out: &mut Vec<u8>);
    /// Whether the buffer should go back as soon as the socket is full
    /// (copied into the queue's bytes) rather than wait there for a reader
    /// that is still reading. Yes unless the type says otherwise.
    fn release_when_blocked(&self) -> bool {
        true
    }
    /// Pool memory the buffer holds while queued (its whole capacity: a
    /// short read still takes a whole pool buffer). None unless the type
    /// says otherwise.
    fn pool_bytes(&self) -> usize {
        0
    }
    /// The most pool memory ([`TxBuf::pool_bytes`]) a queue whose socket
    /// is full may hold with this buffer among its own. None unless the
    /// type says otherwise.
    fn hold_cap(&self) -> usize {
        0
    }
}

impl<T: AsRef<[u8]>> TxBuf for T {
    fn tx_len(&self) -> usize {
        self.as_ref().len()
    }
    fn tx_ptr(&self, start: usize) -> *const u8 {
        self.as_ref()[start..].as_ptr()
    }
    fn tx_copy(&self, start: usize, n: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.as_ref()[start..start + n]);
    }
}

/// Read data on its way out: a pool buffer the read filled, or memory its
/// bdev lent (see `dma::Lent`).
#[derive(Debug)]
pub enum OutBuf {
    Dma(DmaBuf),
    Lent(Lent),
}

impl OutBuf {
    /// CRC32C of `n` bytes from byte `start`, continuing `crc`.
    pub fn crc32c_append(&self, crc: u32, start: usize, n: usize) -> u32 {
        match self {
            OutBuf::Dma(b) => crc32c::crc32c_append(crc, &b[start..start + n]),
            OutBuf::Lent(l) => l.crc32c_append(crc, start, n),
        }
    }
}

impl TxBuf for OutBuf {
    fn tx_len(&self) -> usize {
        match self {
            OutBuf::Dma(b) => b.len(),
            OutBuf::Lent(l) => l.len(),
        }
    }
    fn tx_ptr(&self, start: usize) -> *const u8 {
        match self {
            OutBuf::Dma(b) => b.tx_ptr(start),
            OutBuf::Lent(l) => l.ptr_at(start),
        }
    }
    fn tx_copy(&self, start: usize, n: usize, out: &mut Vec<u8>) {
        match self {
            OutBuf::Dma(b) => b.tx_copy(start, n, out),
            OutBuf::Lent(l) => l.append_to(start, n, out),
        }
    }
    /// A pool buffer when its pool runs short; lent memory never (it is
    /// the bdev's, held by reference: no one else waits for it).
    fn release_when_blocked(&self) -> bool {
        match self {
            OutBuf::Dma(b) => b.wanted_back(),
            OutBuf::Lent(_) => false,
        }
    }
    fn pool_bytes(&self) -> usize {
        match self {
            OutBuf::Dma(b) => b.capacity(),
            OutBuf::Lent(_) => 0,
        }
    }
    /// Half the memory of the buffer's pool: enough for a reader that is
    /// only behind to keep all its reads queued (1 MiB reads at QD32 hold
    /// 32 MiB; with a 4 MiB cap, most of each was copied and the target
    /// spent 1.3-3x its CPU per read: benchmarks.md), and one such reader
    /// alone never takes the pool short. A buffer not from a pool: none.
    fn hold_cap(&self) -> usize {
        match self {
            OutBuf::Dma(b) => b.pool_size() / 2,
            OutBuf::Lent(_) => 0,
        }
    }
}

/// Where a write queue goes: `writev(2)` on a socket, or a test's sink.
pub trait Writev {
    fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize>;
}

impl<T: AsRawFd> Writev for &T {
    fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: every iovec points into a buffer the queue holds for the
        // length of the call (see `TxQueue::flush`); at most MAX_IOV of them.
        let n = unsafe { libc::writev(self.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

/// What [`TxQueue::flush`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket is full: wait for it to become writable.
    Blocked,
}

/// A write queue of bytes and whole buffers of type `B`.
pub struct TxQueue<B> {
    /// Bytes appended by [`TxQueue::bytes`]; `Seg::Bytes` segments index
    /// into it in order, from `bytes_pos`.
    bytes: Vec<u8>,
    /// Where the first unsent `Seg::Bytes` starts in `bytes`.
    bytes_pos: usize,
    /// End of `bytes` covered by segments; what follows is a run still open.
    sealed: usize,
    segs: VecDeque<Seg<B>>,
    /// Bytes of the first segment already written.
    head_done: usize,
    /// Unsent bytes in `segs` (not counting the open run).
    queued: usize,
    /// The last flush found the socket full.
    blocked: bool,
    /// The peer read nothing for a whole timer period while the socket was
    /// full: buffers were copied out, and new ones are copied in.
    stalled: bool,
    /// Bytes were written since the last [`TxQueue::tick`].
    progressed: bool,
    /// Pool memory of the queued buffers ([`TxBuf::pool_bytes`]).
    held_pool: usize,
    /// The most of it a full socket may hold: the [`TxBuf::hold_cap`] of
    /// the last buffer queued that had pool memory.
    hold_cap: usize,
    /// The kernel's unsent bytes at the last tick while blocked.
    in_kernel: Option<usize>,
    /// Where a spill builds the new bytes (kept for its capacity).
    spare: Vec<u8>,
    /// Drains in a row that used at most [`KEEP`] bytes, and the most a
    /// drain used since the last tick (see [`SHRINK_ABOVE`]).
    light_drains: u32,
    peak: usize,
}

/// An empty queue that has allocated nothing (its lists grow on first
/// use), so that `std::mem::take` of a queue, to lend it out for a moment,
/// costs no allocation.
impl<B: TxBuf> Default for TxQueue<B> {
    fn default() -> Self {
        TxQueue {
            bytes: Vec::new(),
            bytes_pos: 0,
            sealed: 0,
            segs: VecDeque::new(),
            head_done: 0,
            queued: 0,
            blocked: false,
            stalled: false,
            progressed: false,
            held_pool: 0,
            hold_cap: usize::MAX,
            in_kernel: None,
            spare: Vec::new(),
            light_drains: 0,
            peak: 0,
        }
    }
}

impl<B: TxBuf> TxQueue<B> {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut q = Self::default();
        q.bytes.reserve_exact(bytes);
        q.segs.reserve_exact(16);
        q
    }

    /// Where to append bytes to send (a PDU header, a small PDU).
    pub fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Queue the first `len` bytes of `buf`, sent from the buffer itself
    /// (copied, and `buf` dropped, if the socket is full and the buffer
    /// should go back, the queue holds its share of the pool, or the peer
    /// has stopped reading).
    pub fn push_buf(&mut self, buf: B, len: usize) {
        self.push_buf_at(buf, 0, len);
    }

    /// Queue `len` bytes of `buf` from byte `start`, as [`TxQueue::push_buf`].
    pub fn push_buf_at(&mut self, buf: B, start: usize, len: usize) {
        let start = start.min(buf.tx_len());
        let len = len.min(buf.tx_len() - start);
        if len == 0 {
            return;
        }
        let pool = buf.pool_bytes();
        if self.blocked {
            let wanted = buf.release_when_blocked();
            if self.stalled || wanted || (pool > 0 && self.held_pool + pool > buf.hold_cap()) {
                buf.tx_copy(start, len, &mut self.bytes);
                if wanted {
                    // Its pool is short: let go of the others too.
                    self.seal();
                    self.spill();
                }
                return;
            }
        }
        self.seal();
        self.queued += len;
        if pool > 0 {
            self.held_pool += pool;
            self.hold_cap = buf.hold_cap();
        }
        self.segs.push_back(Seg::Buf(buf, start, len));
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.queued + self.bytes.len() - self.sealed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the last flush left the socket full.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    fn seal(&mut self) {
        let open = self.bytes.len() - self.sealed;
        if open > 0 {
            self.sealed = self.bytes.len();
            self.queued += open;
            match self.segs.back_mut() {
                // Two runs of bytes in a row are one segment (the last
                // segment's bytes end where the open run begins).
                Some(Seg::Bytes(n)) => *n += open,
                _ => self.segs.push_back(Seg::Bytes(open)),
            }
        }
    }

    /// Write as much as the socket takes. An error is the connection's end
    /// (the queue keeps what was not written).
    pub fn flush<W>(&mut self, mut out: W) -> io::Result<Flushed>
    where
        W: Writev,
    {
        self.seal();
        while self.queued > 0 {
            let written = {
                let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOV];
                let mut n = 0;
                let mut pos = self.bytes_pos;
                for (i, seg) in self.segs.iter().take(MAX_IOV).enumerate() {
                    let skip = if i == 0 { self.head_done } else { 0 };
                    let (ptr, len) = match seg {
                        Seg::Bytes(len) => {
                            let p = &self.bytes[pos + skip..pos + len];
                            pos += len;
                            (p.as_ptr(), p.len())
                        }
                        Seg::Buf(b, start, len) => {
                            debug_assert!(start + len <= b.tx_len());
                            (b.tx_ptr(start + skip), len - skip)
                        }
                    };
                    // Pointers into `self.bytes` and the queued buffers, which
                    // nothing touches until the call returns.
                    iov[n] = libc::iovec { iov_base: ptr as *mut libc::c_void, iov_len: len };
                    n += 1;
                }
                out.writev(&iov[..n])
            };
            match written {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the connection took no bytes")),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    if self.stalled || self.held_pool > self.hold_cap || self.holds_wanted() {
                        self.spill();
                    }
                    return Ok(Flushed::Blocked);
                }
                Err(e) => return Err(e),
            }
        }
        let used = self.bytes.len();
        self.peak = self.peak.max(used);
        self.light_drains = if used <= KEEP { self.light_drains.saturating_add(1) } else { 0 };
        self.bytes.clear();
        self.bytes_pos = 0;
        self.sealed = 0;
        self.blocked = false;
        self.stalled = false;
        self.in_kernel = None;
        if self.light_drains >= SHRINK_AFTER {
            self.trim();
        }
        Ok(Flushed::All)
    }

    /// `n` bytes were written: drop what they finished.
    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        self.progressed = true;
        self.stalled = false;
        while n > 0 {
            let Some(seg) = self.segs.front() else { break };
            let left = seg.len() - self.head_done;
            if n < left {
                self.head_done += n;
                return;
            }
            n -= left;
            match self.segs.pop_front() {
                Some(Seg::Bytes(len)) => self.bytes_pos += len,
                Some(Seg::Buf(b, ..)) => self.held_pool -= b.pool_bytes(),
                None => {}
            }
            self.head_done = 0;
        }
    }

    /// For the owner's periodic timer (every 100 ms to a second), with a
    /// way to read the kernel's unsent bytes on the socket
    /// ([`super::unsent_bytes`]; asked only while the socket is full). A
    /// queue whose socket stayed full for a whole period, with nothing
    /// written and the kernel's queue not shrinking (the peer read
    /// nothing), is stalled and lets its buffers go; so does one holding a
    /// buffer whose pool has run short since it was queued. Without the
    /// kernel's figure, a period with nothing written is a stall.
    pub fn tick(&mut self, in_kernel: impl FnOnce() -> Option<usize>) {
        if self.blocked {
            let now = in_kernel();
            let read = match (now, self.in_kernel) {
                (Some(n), Some(before)) => n < before,
                // First look since the socket filled: give it a period.
                (Some(_), None) => true,
                (None, _) => false,
            };
            self.in_kernel = now;
            let moving = self.progressed || read;
            if !moving || self.holds_wanted() {
                self.stalled |= !moving;
                self.seal();
                self.spill();
            }
        }
        self.progressed = false;
        if self.peak <= KEEP && self.queued == 0 && self.bytes.is_empty() {
            self.trim();
        }
        self.peak = 0;
    }

    /// Give back what the bytes grew to beyond [`SHRINK_ABOVE`].
    fn trim(&mut self) {
        if self.bytes.capacity() > SHRINK_ABOVE {
            self.bytes.shrink_to(KEEP);
        }
    }

    /// Whether the socket is full and the peer stopped reading (see
    /// [`TxQueue::tick`]).
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// A queued buffer should go back now.
    fn holds_wanted(&self) -> bool {
        self.segs.iter().any(|s| matches!(s, Seg::Buf(b, ..) if b.release_when_blocked()))
    }

    /// Copy the unsent part of every queued buffer into bytes, so the
    /// buffers go back now. Every byte must be in a segment (sealed).
    fn spill(&mut self) {
        if !self.segs.iter().any(|s| matches!(s, Seg::Buf(..))) {
            return;
        }
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        out.reserve(self.queued + self.bytes.len() - self.sealed);
        let mut pos = self.bytes_pos;
        for (i, seg) in self.segs.drain(..).enumerate() {
            let skip = if i == 0 { self.head_done } else { 0 };
            match seg {
                Seg::Bytes(len) => {
                    out.extend_from_slice(&self.bytes[pos + skip..pos + len]);
                    pos += len;
                }
                Seg::Buf(b, start, len) => b.tx_copy(start + skip, len - skip, &mut out),
            }
        }
        // (`flush` sealed the open run: every byte is in a segment.)
        self.held_pool = 0;
        self.spare = std::mem::replace(&mut self.bytes, out);
        self.spare.clear();
        if self.spare.capacity() > KEEP {
            // A stalled reader's queue is not kept twice.
            self.spare = Vec::new();
        }
        self.bytes_pos = 0;
        self.head_done = 0;
        self.sealed = self.bytes.len();
        if self.queued > 0 {
            self.segs.push_back(Seg::Bytes(self.queued));
        }
    }

    /// A copy of everything not yet written (a connection moving to
    /// another reactor takes its output with it).
    pub fn unsent(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        let mut pos = self.bytes_pos;
        for (i, seg) in self.segs.iter().enumerate() {
            let skip = if i == 0 { self.head_done } else { 0 };
            match seg {
                Seg::Bytes(len) => {
                    out.extend_from_slice(&self.bytes[pos + skip..pos + len]);
                    pos += len;
                }
                Seg::Buf(b, start, len) => b.tx_copy(start + skip, len - skip, &mut out),
            }
        }
        out.extend_from_slice(&self.bytes[self.sealed..]);
        out
    }

    /// Forget everything queued (the connection is gone).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.bytes.clear();
        self.bytes_pos = 0;
        self.sealed = 0;
        self.head_done = 0;
        self.queued = 0;
        self.blocked = false;
        self.stalled = false;
        self.progressed = false;
        self.held_pool = 0;
        self.in_kernel = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_default_queue_has_allocated_nothing() {
        // Sessions lend their queue out with `std::mem::take` for every
        // PDU they build (iSCSI initiator): a default that allocated cost
        // a malloc and a free per command.
        let q = TxQueue::<Vec<u8>>::default();
        assert_eq!((q.bytes.capacity(), q.segs.capacity(), q.spare.capacity()), (0, 0, 0));
        assert!(TxQueue::<Vec<u8>>::with_capacity(4096).segs.capacity() >= 16);
    }

    /// A queue that grew keeps its memory while it is used heavily, and
    /// gives it back once used lightly (`SHRINK_ABOVE`): it shrank at every
    /// drain, so a steady load of 1 MiB writes grew it again by doubling
    /// every few requests (allocations on the I/O path, seen at QD 32).
    #[test]
    fn a_grown_queue_shrinks_only_once_used_lightly() {
        let mut q = TxQueue::<Vec<u8>>::default();
        let mut s = Sink { got: vec![], room: 1 << 20, calls: 0, block_every: 0, iovs_seen: 0 };
        let mut burst = |q: &mut TxQueue<Vec<u8>>, n: usize| {
            q.bytes().resize(n, 7);
            s.drain(q);
            s.got.clear();
        };
        burst(&mut q, 16 << 20);
        let grown = q.bytes.capacity();
        assert!(grown >= 16 << 20);
        // Heavy drains between light ones: no shrinking, no growing.
        for _ in 0..3 {
            for _ in 0..SHRINK_AFTER - 1 {
                burst(&mut q, 4096);
            }
            burst(&mut q, 16 << 20);
            assert_eq!(q.bytes.capacity(), grown);
        }
        // A tick after a period of heavy use keeps it; after a light one
        // (or none) gives it back.
        q.tick(|| None);
        assert_eq!(q.bytes.capacity(), grown);
        q.tick(|| None);
        assert!(q.bytes.capacity() <= SHRINK_ABOVE, "an idle period gives the memory back");
        // Without ticks: after SHRINK_AFTER light drains in a row.
        burst(&mut q, 16 << 20);
        for _ in 0..SHRINK_AFTER - 1 {
            burst(&mut q, 4096);
        }
        assert!(q.bytes.capacity() > SHRINK_ABOVE);
        burst(&mut q, 4096);
        assert!(q.bytes.capacity() <= SHRINK_ABOVE);
    }

    /// A socket that takes at most `room` bytes per call, then says
    /// WouldBlock every `block_every` calls.
    struct Sink {
        got: Vec<u8>,
        room: usize,
        calls: usize,
        block_every: usize,
        iovs_seen: usize,
    }

    impl Sink {
        /// Take everything the queue holds, in one or more calls.
        fn drain<B: TxBuf>(&mut self, q: &mut TxQueue<B>) {
            self.block_every = 0;
            self.room = 1 << 20;
            assert_eq!(q.flush(&mut *self).unwrap(), Flushed::All);
        }
    }

    impl Writev for &mut Sink {
        fn writev(&mut self, bufs: &[libc::iovec]) -> io::Result<usize> {
            self.calls += 1;
            self.iovs_seen = self.iovs_seen.max(bufs.len());
            if self.block_every > 0 && self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for v in bufs {
                // SAFETY: the queue's iovecs point into memory it holds
                // (the tests' buffers are plain vectors) for this call.
                let b = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                let take = b.len().min(self.room - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.room {
                    break;
                }
            }
            Ok(n)
        }
    }

    /// A buffer that goes back as soon as the socket is full, as every
    /// type does by default (the plain byte vectors of the RPC server and
    /// the hosts), counted in `alive`.
    fn counted(bytes: Vec<u8>, alive: &Rc<Cell<usize>>) -> Held {
        held(bytes, alive, &Rc::new(Cell::new(true)))
    }

    #[test]
    fn buffers_go_out_in_order_between_bytes_with_one_writev() {
        let alive = Rc::new(Cell::new(0));
        let mut q = TxQueue::default();
        q.bytes().extend_from_slice(b"hdr1");
        q.push_buf(counted(b"DATA-ONE+unsent".to_vec(), &alive), 8);
        q.bytes().extend_from_slice(b"hdr2");
        q.push_buf(counted(b"DATA-TWO".to_vec(), &alive), 8);
        q.bytes().extend_from_slice(b"tail");
        assert_eq!(q.len(), 28);
        let mut s = Sink { got: vec![], room: 1 << 20, calls: 0, block_every: 0, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::All);
        assert_eq!(s.got, b"hdr1DATA-ONEhdr2DATA-TWOtail");
        assert_eq!((s.calls, s.iovs_seen), (1, 5));
        assert_eq!(alive.get(), 0, "written buffers are dropped");
        assert!(q.is_empty());
    }

    /// A buffer that may stay queued while the socket is full (as lent
    /// memory, or a pool buffer whose pool is not short), or not, as its
    /// flag says, holding `pool` bytes of pool memory; counted in `alive`
    /// while it lives.
    struct Held {
        data: Vec<u8>,
        alive: Rc<Cell<usize>>,
        release: Rc<Cell<bool>>,
        pool: usize,
    }
    impl TxBuf for Held {
        fn tx_len(&self) -> usize {
            self.data.len()
        }
        fn tx_ptr(&self, start: usize) -> *const u8 {
            self.data[start..].as_ptr()
        }
        fn tx_copy(&self, start: usize, n: usize, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.data[start..start + n]);
        }
        fn release_when_blocked(&self) -> bool {
            self.release.get()
        }
        fn pool_bytes(&self) -> usize {
            self.pool
        }
        fn hold_cap(&self) -> usize {
            HOLD
        }
    }
    /// The tests' cap on pool memory held at a full socket.
    const HOLD: usize = 4 << 20;
    impl Drop for Held {
        fn drop(&mut self) {
            self.alive.set(self.alive.get() - 1);
        }
    }
    fn held(data: Vec<u8>, alive: &Rc<Cell<usize>>, release: &Rc<Cell<bool>>) -> Held {
        alive.set(alive.get() + 1);
        Held { data, alive: alive.clone(), release: release.clone(), pool: 0 }
    }

    /// A queue holding one 100-byte buffer (counted in `alive`, let go
    /// when `release` says) that `s` found full after writing at most 30
    /// bytes (none if `block_every` is 1).
    fn blocked(fill: u8, block_every: usize, alive: &Rc<Cell<usize>>, release: &Rc<Cell<bool>>) -> (TxQueue<Held>, Sink) {
        let mut q = TxQueue::default();
        q.push_buf(held(vec![fill; 100], alive, release), 100);
        let mut s = Sink { got: vec![], room: 30, calls: 0, block_every, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        (q, s)
    }

    #[test]
    fn a_blocked_queue_holds_at_most_its_share_of_the_pool() {
        let (alive, release) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let pooled = |b: Vec<u8>| {
            let mut h = held(b, &alive, &release);
            h.pool = 1 << 20;
            h
        };
        let mut q = TxQueue::default();
        q.push_buf(pooled(vec![1; 100]), 100);
        let mut s = Sink { got: vec![], room: 30, calls: 0, block_every: 2, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        // Up to the cap (4 MiB of pool buffers here) stays queued as it is...
        for i in 0..3 {
            q.push_buf(pooled(vec![2 + i; 100]), 100);
        }
        assert_eq!(alive.get(), 4);
        // ...what comes beyond is copied.
        q.push_buf(pooled(vec![5; 100]), 100);
        assert_eq!(alive.get(), 4);
        // Lent memory (no pool bytes) is not counted against it.
        q.push_buf(held(vec![6; 100], &alive, &release), 100);
        assert_eq!(alive.get(), 5);
        // Written out, the buffers leave the count: room for another.
        s.drain(&mut q);
        assert_eq!(alive.get(), 0);
        let want: Vec<u8> = (1..=6).flat_map(|b| vec![b as u8; 100]).collect();
        assert_eq!(s.got, want);
        s.block_every = 1;
        q.push_buf(pooled(vec![7; 10]), 10);
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        for _ in 0..3 {
            q.push_buf(pooled(vec![8; 10]), 10);
        }
        assert_eq!(alive.get(), 4, "4 MiB held again after the queue drained");
    }

    #[test]
    fn a_reader_that_drains_the_kernels_queue_is_not_stalled() {
        let (alive, release) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let (mut q, _s) = blocked(1, 1, &alive, &release); // full at once: nothing written
        q.tick(|| Some(5000)); // the first look since it filled
        assert_eq!(alive.get(), 1);
        q.tick(|| Some(4000)); // the peer read 1000 bytes of the kernel's queue
        assert_eq!(alive.get(), 1);
        assert!(!q.is_stalled());
        q.tick(|| Some(4000)); // a whole period without reading
        assert!(q.is_stalled());
        assert_eq!(alive.get(), 0);
    }

    #[test]
    fn a_full_socket_keeps_buffers_while_the_peer_reads_and_lets_them_go_when_it_stops() {
        let (alive, release) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let mut q = TxQueue::default();
        q.bytes().extend_from_slice(b"head");
        q.push_buf(held(vec![7; 100], &alive, &release), 100);
        let mut s = Sink { got: vec![], room: 30, calls: 0, block_every: 2, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        assert!(q.is_blocked() && !q.is_stalled());
        // Behind, not stalled: buffers stay as they are, new ones too.
        q.push_buf(held(vec![8; 50], &alive, &release), 50);
        assert_eq!(alive.get(), 2, "no copy for a reader that is only behind");
        q.tick(|| None); // 30 bytes went out in this period
        assert_eq!(alive.get(), 2);
        // The peer reads some more: still not stalled.
        s.calls = 0;
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        q.tick(|| None);
        assert_eq!(alive.get(), 2);
        // A whole period with nothing read: the buffers go, their bytes stay.
        q.tick(|| None);
        assert!(q.is_stalled());
        assert_eq!(alive.get(), 0, "a stalled reader holds no buffer");
        q.push_buf(held(vec![9; 10], &alive, &release), 10);
        assert_eq!(alive.get(), 0, "nor new ones while it stays stalled");
        // It reads again: no longer stalled, buffers are held again.
        s.calls = 0;
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        assert!(!q.is_stalled());
        q.push_buf(held(vec![10; 5], &alive, &release), 5);
        assert_eq!(alive.get(), 1);
        // Its pool runs short: the next full socket lets it go at once.
        release.set(true);
        s.calls = 0;
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        assert_eq!(alive.get(), 0);
        s.drain(&mut q);
        let mut want = b"head".to_vec();
        want.extend([7; 100]);
        want.extend([8; 50]);
        want.extend([9; 10]);
        want.extend([10; 5]);
        assert_eq!(s.got, want);
        assert!(!q.is_blocked() && !q.is_stalled());
    }

    #[test]
    fn a_tick_lets_go_of_a_buffer_whose_pool_ran_short_while_it_waited() {
        let (alive, release) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let (mut q, mut s) = blocked(1, 2, &alive, &release);
        release.set(true);
        q.tick(|| None); // the peer did read in this period, but the pool needs it
        assert_eq!(alive.get(), 0);
        assert!(!q.is_stalled());
        s.drain(&mut q);
        assert_eq!(s.got, vec![1; 100]);
    }

    #[test]
    fn a_full_socket_releases_the_buffers_and_keeps_their_bytes() {
        let alive = Rc::new(Cell::new(0));
        let mut q = TxQueue::default();
        q.bytes().extend_from_slice(b"head");
        q.push_buf(counted(vec![7; 100], &alive), 100);
        q.push_buf(counted(vec![8; 100], &alive), 50);
        let mut s = Sink { got: vec![], room: 30, calls: 0, block_every: 2, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        assert_eq!(alive.get(), 0, "buffers that should go back are not held while the socket is full");
        assert_eq!(q.len(), 154 - 30);
        assert!(q.is_blocked());
        // While blocked, new buffers are copied at once.
        q.push_buf(counted(vec![9; 10], &alive), 10);
        assert_eq!(alive.get(), 0);
        s.drain(&mut q);
        let mut want = b"head".to_vec();
        want.extend([7; 100]);
        want.extend([8; 50]);
        want.extend([9; 10]);
        assert_eq!(s.got, want);
        assert!(!q.is_blocked());
    }

    /// Memory lent by a bdev goes out like a buffer: from where it is,
    /// from any offset; it stays queued while the socket is full and the
    /// peer reads, and is copied out (through its lender) and let go once
    /// the peer has read nothing for a period.
    #[test]
    fn lent_memory_goes_out_from_itself_and_is_copied_when_the_peer_stalls() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Shelf(Vec<u8>, Arc<AtomicUsize>);
        // SAFETY: a vector nobody changes, alive while the value lives.
        unsafe impl crate::dma::LendSource for Shelf {
            fn base(&self) -> *const u8 {
                self.0.as_ptr()
            }
            fn size(&self) -> usize {
                self.0.len()
            }
            fn copy_out(&self, off: usize, dst: &mut [u8]) {
                self.1.fetch_add(1, Ordering::Relaxed);
                dst.copy_from_slice(&self.0[off..off + dst.len()]);
            }
        }
        let copies = Arc::new(AtomicUsize::new(0));
        let data: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        let src: Arc<dyn crate::dma::LendSource> = Arc::new(Shelf(data.clone(), copies.clone()));
        let lent = |off, len| OutBuf::Lent(crate::dma::Lent::new(src.clone(), off, len));
        let mut q: TxQueue<OutBuf> = TxQueue::default();
        q.bytes().extend_from_slice(b"hd");
        q.push_buf_at(lent(100, 400), 50, 300);
        q.push_buf(lent(0, 1000), 1000);
        // Two writes from the memory itself, then the socket is full.
        let mut s = Sink { got: vec![], room: 64, calls: 0, block_every: 3, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        assert_eq!(copies.load(Ordering::Relaxed), 0, "lent memory waits where it is");
        assert_eq!(Arc::strong_count(&src), 3);
        q.tick(|| None); // bytes went out in this period
        assert_eq!(copies.load(Ordering::Relaxed), 0);
        q.tick(|| None);
        assert_eq!(copies.load(Ordering::Relaxed), 2, "the two unsent pieces were copied out, once each");
        assert_eq!(Arc::strong_count(&src), 1, "no lent memory is held once the peer stopped reading");
        s.drain(&mut q);
        let mut want = b"hd".to_vec();
        want.extend_from_slice(&data[150..450]);
        want.extend_from_slice(&data);
        assert_eq!(s.got, want);
    }

    #[test]
    fn a_failed_write_is_an_error_and_unsent_keeps_the_rest() {
        struct Broken;
        impl Writev for Broken {
            fn writev(&mut self, _: &[libc::iovec]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let mut q: TxQueue<Vec<u8>> = TxQueue::default();
        q.bytes().extend_from_slice(b"abc");
        q.push_buf(b"def".to_vec(), 3);
        assert_eq!(q.flush(Broken).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(q.unsent(), b"abcdef");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bytes(Vec<u8>),
        /// A buffer, bytes from `at`, `n` of them, of a kind: 0 let go
        /// when the socket is full, 1 held until the peer stalls (lent
        /// memory), 2 the same with 1.5 MiB of pool memory.
        Buf(Vec<u8>, usize, usize, u8),
        Flush(usize, usize),
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Bytes),
            (proptest::collection::vec(any::<u8>(), 0..80), 0usize..40, 0usize..100, 0u8..3).prop_map(|(b, at, n, k)| Op::Buf(b, at, n, k)),
            (1usize..64, 0usize..4).prop_map(|(room, every)| Op::Flush(room, every)),
            Just(Op::Tick),
        ]
    }

    proptest! {
        /// Whatever the socket takes per call, however often it is full and
        /// the timer ticks, the bytes arrive exactly once, in the order
        /// queued; no buffer that should go back outlives a flush that found
        /// the socket full, no more than the cap of pool memory does, and
        /// no buffer at all two ticks with nothing written.
        #[test]
        fn the_stream_is_what_was_queued(ops in proptest::collection::vec(op(), 0..60)) {
            let (alive, alive_held, alive_pooled) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
            let (yes, no) = (Rc::new(Cell::new(true)), Rc::new(Cell::new(false)));
            let mut ticks_since_write = 0;
            let mut q = TxQueue::default();
            let mut want = Vec::new();
            let mut s = Sink { got: vec![], room: 1, calls: 0, block_every: 0, iovs_seen: 0 };
            for o in ops {
                match o {
                    Op::Bytes(b) => { want.extend_from_slice(&b); q.bytes().extend_from_slice(&b); }
                    Op::Buf(b, at, n, kind) => {
                        let start = at.min(b.len());
                        want.extend_from_slice(&b[start..(start + n).min(b.len())]);
                        match kind {
                            0 => q.push_buf_at(held(b, &alive, &yes), at, n),
                            1 => q.push_buf_at(held(b, &alive_held, &no), at, n),
                            _ => {
                                let mut h = held(b, &alive_pooled, &no);
                                h.pool = 3 << 19;
                                q.push_buf_at(h, at, n);
                            }
                        }
                    }
                    Op::Flush(room, every) => {
                        s.room = room;
                        s.block_every = every;
                        let before = s.got.len();
                        if q.flush(&mut s).unwrap() == Flushed::Blocked {
                            prop_assert_eq!(alive.get(), 0);
                            prop_assert!(alive_pooled.get() * (3 << 19) <= HOLD);
                        }
                        if s.got.len() > before {
                            ticks_since_write = 0;
                        }
                    }
                    Op::Tick => {
                        ticks_since_write += 1;
                        q.tick(|| None);
                        if q.is_blocked() && ticks_since_write >= 2 {
                            prop_assert_eq!(alive_held.get() + alive_pooled.get(), 0);
                        }
                    }
                }
                prop_assert_eq!(s.got.len() + q.len(), want.len());
                prop_assert_eq!(&[&s.got[..], &q.unsent()[..]].concat(), &want);
            }
            s.room = 1 << 20;
            s.block_every = 0;
            prop_assert_eq!(q.flush(&mut s).unwrap(), Flushed::All);
            prop_assert_eq!(&s.got, &want);
            prop_assert_eq!(alive.get() + alive_held.get() + alive_pooled.get(), 0);
        }
    }
}
