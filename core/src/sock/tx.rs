//! A connection's write queue: bytes the protocol built (headers, small
//! PDUs) and data buffers it hands over whole, flushed together with
//! `writev`, in order.
//!
//! Buffers are sent from where they are: a read's data goes from its DMA
//! buffer to the socket with no copy but the kernel's. A buffer is held only
//! while the socket takes what it is given. When the socket is full (the peer
//! does not read as fast as we answer), the buffers still queued are copied
//! into the queue's own bytes and dropped, so they go back to their pool at
//! once: a slow or hostile reader holds heap memory, bounded by the caller's
//! backlog limit, never the reactor's DMA buffers, which other connections
//! need to make progress.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Most pieces handed to one `writev` (Linux's UIO_MAXIOV is 1024; a few
/// dozen already fill a socket buffer).
const MAX_IOV: usize = 64;
/// A queue that grew past this (a burst of output to a slow reader) gives
/// the memory back once it is empty, keeping [`KEEP`].
const SHRINK_ABOVE: usize = 8 << 20;
const KEEP: usize = 1 << 20;

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
    /// The last flush found the socket full: new buffers are copied.
    blocked: bool,
    /// Where a spill builds the new bytes (kept for its capacity).
    spare: Vec<u8>,
}

impl<B: AsRef<[u8]>> Default for TxQueue<B> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<B: AsRef<[u8]>> TxQueue<B> {
    pub fn with_capacity(bytes: usize) -> Self {
        TxQueue {
            bytes: Vec::with_capacity(bytes),
            bytes_pos: 0,
            sealed: 0,
            segs: VecDeque::with_capacity(16),
            head_done: 0,
            queued: 0,
            blocked: false,
            spare: Vec::new(),
        }
    }

    /// Where to append bytes to send (a PDU header, a small PDU).
    pub fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Queue the first `len` bytes of `buf`, sent from the buffer itself
    /// unless the socket is full (then they are copied and `buf` dropped).
    pub fn push_buf(&mut self, buf: B, len: usize) {
        self.push_buf_at(buf, 0, len);
    }

    /// Queue `len` bytes of `buf` from byte `start`, as [`TxQueue::push_buf`].
    pub fn push_buf_at(&mut self, buf: B, start: usize, len: usize) {
        let start = start.min(buf.as_ref().len());
        let len = len.min(buf.as_ref().len() - start);
        if len == 0 {
            return;
        }
        if self.blocked {
            self.bytes.extend_from_slice(&buf.as_ref()[start..start + len]);
            return;
        }
        self.seal();
        self.queued += len;
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
        W: Write,
    {
        self.seal();
        while self.queued > 0 {
            let written = {
                let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                let mut pos = self.bytes_pos;
                for (i, seg) in self.segs.iter().take(MAX_IOV).enumerate() {
                    let skip = if i == 0 { self.head_done } else { 0 };
                    let piece = match seg {
                        Seg::Bytes(len) => {
                            let p = &self.bytes[pos + skip..pos + len];
                            pos += len;
                            p
                        }
                        Seg::Buf(b, start, len) => &b.as_ref()[start + skip..start + len],
                    };
                    iov[n] = IoSlice::new(piece);
                    n += 1;
                }
                out.write_vectored(&iov[..n])
            };
            match written {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the connection took no bytes")),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.spill();
                    self.blocked = true;
                    return Ok(Flushed::Blocked);
                }
                Err(e) => return Err(e),
            }
        }
        self.bytes.clear();
        self.bytes_pos = 0;
        self.sealed = 0;
        self.blocked = false;
        if self.bytes.capacity() > SHRINK_ABOVE {
            self.bytes.shrink_to(KEEP);
        }
        Ok(Flushed::All)
    }

    /// `n` bytes were written: drop what they finished.
    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(seg) = self.segs.front() else { break };
            let left = seg.len() - self.head_done;
            if n < left {
                self.head_done += n;
                return;
            }
            n -= left;
            if let Some(Seg::Bytes(len)) = self.segs.pop_front() {
                self.bytes_pos += len;
            }
            self.head_done = 0;
        }
    }

    /// The socket is full: copy the unsent part of every queued buffer into
    /// bytes, so the buffers go back now.
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
                Seg::Buf(b, start, len) => out.extend_from_slice(&b.as_ref()[start + skip..start + len]),
            }
        }
        // (`flush` sealed the open run: every byte is in a segment.)
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
                Seg::Buf(b, start, len) => out.extend_from_slice(&b.as_ref()[start + skip..start + len]),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A socket that takes at most `room` bytes per call, then says
    /// WouldBlock every `block_every` calls.
    struct Sink {
        got: Vec<u8>,
        room: usize,
        calls: usize,
        block_every: usize,
        iovs_seen: usize,
    }

    impl Write for &mut Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            self.iovs_seen = self.iovs_seen.max(bufs.len());
            if self.block_every > 0 && self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.room {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A buffer that counts how many of its kind are alive.
    struct Counted(Vec<u8>, Rc<Cell<usize>>);
    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.set(self.1.get() - 1);
        }
    }
    fn counted(bytes: Vec<u8>, alive: &Rc<Cell<usize>>) -> Counted {
        alive.set(alive.get() + 1);
        Counted(bytes, alive.clone())
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

    #[test]
    fn a_full_socket_releases_the_buffers_and_keeps_their_bytes() {
        let alive = Rc::new(Cell::new(0));
        let mut q = TxQueue::default();
        q.bytes().extend_from_slice(b"head");
        q.push_buf(counted(vec![7; 100], &alive), 100);
        q.push_buf(counted(vec![8; 100], &alive), 50);
        let mut s = Sink { got: vec![], room: 30, calls: 0, block_every: 2, iovs_seen: 0 };
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::Blocked);
        assert_eq!(alive.get(), 0, "no buffer is held while the peer does not read");
        assert_eq!(q.len(), 154 - 30);
        assert!(q.is_blocked());
        // While blocked, new buffers are copied at once.
        q.push_buf(counted(vec![9; 10], &alive), 10);
        assert_eq!(alive.get(), 0);
        s.block_every = 0;
        s.room = 1 << 20;
        assert_eq!(q.flush(&mut s).unwrap(), Flushed::All);
        let mut want = b"head".to_vec();
        want.extend([7; 100]);
        want.extend([8; 50]);
        want.extend([9; 10]);
        assert_eq!(s.got, want);
        assert!(!q.is_blocked());
    }

    #[test]
    fn a_failed_write_is_an_error_and_unsent_keeps_the_rest() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
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
        Buf(Vec<u8>, usize, usize),
        Flush(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Bytes),
            (proptest::collection::vec(any::<u8>(), 0..80), 0usize..40, 0usize..100).prop_map(|(b, at, n)| Op::Buf(b, at, n)),
            (1usize..64, 0usize..4).prop_map(|(room, every)| Op::Flush(room, every)),
        ]
    }

    proptest! {
        /// Whatever the socket takes per call and however often it is full,
        /// the bytes arrive exactly once, in the order queued, and no buffer
        /// outlives a flush that found the socket full.
        #[test]
        fn the_stream_is_what_was_queued(ops in proptest::collection::vec(op(), 0..60)) {
            let alive = Rc::new(Cell::new(0));
            let mut q = TxQueue::default();
            let mut want = Vec::new();
            let mut s = Sink { got: vec![], room: 1, calls: 0, block_every: 0, iovs_seen: 0 };
            for o in ops {
                match o {
                    Op::Bytes(b) => { want.extend_from_slice(&b); q.bytes().extend_from_slice(&b); }
                    Op::Buf(b, at, n) => {
                        let start = at.min(b.len());
                        want.extend_from_slice(&b[start..(start + n).min(b.len())]);
                        q.push_buf_at(counted(b, &alive), at, n);
                    }
                    Op::Flush(room, every) => {
                        s.room = room;
                        s.block_every = every;
                        if q.flush(&mut s).unwrap() == Flushed::Blocked {
                            prop_assert_eq!(alive.get(), 0);
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
            prop_assert_eq!(alive.get(), 0);
        }
    }
}
