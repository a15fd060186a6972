//! Data pointers: how a request's buffers become the PRP entries or SGL
//! descriptors of one or more commands.
//!
//! A request's data is a list of [`Segment`]s (device address, length). The
//! planner ([`next_chunk`]) cuts it into commands: each covers whole blocks,
//! at most the controller's maximum transfer, and -- with PRPs -- only
//! segments that join on page boundaries (PRP entries after the first must be
//! page aligned). With SGLs any segments may be joined, up to the descriptors
//! one scratch slot holds. [`build_prp`] and [`build_sgl`] then fill a
//! command's data pointer and its list.

use pollux_nvme_spec::cmd::{DataPointer, SglDescriptor, SglSubtype, SglType};

/// A contiguous piece of a request's data in device address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub iova: u64,
    pub len: usize,
}

/// A position inside a list of segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seg: usize,
    pub off: usize,
}

/// How a command's data may be described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Prp,
    /// SGLs, with at most this many data descriptors per command.
    Sgl {
        max_descriptors: usize,
    },
}

/// Why data cannot be described to the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("buffer at {iova:#x} is not dword aligned")]
    Misaligned { iova: u64 },
    #[error("a buffer of {len} bytes is not a multiple of the {block}-byte block")]
    PartialBlock { len: usize, block: usize },
    #[error("the PRP list needs {need} entries, the slot holds {have}")]
    ListTooSmall { need: usize, have: usize },
    #[error("nothing left to transfer")]
    Empty,
}

/// A place for PRP entries or SGL descriptors: a scratch slot of device
/// memory (or a vector in tests).
pub trait ListSink {
    /// The device address of the list.
    fn iova(&self) -> u64;
    /// Its size in bytes.
    fn capacity(&self) -> usize;
    fn set_u64(&mut self, index: usize, v: u64);
    fn set_descriptor(&mut self, index: usize, d: &SglDescriptor);
}

fn advance(segs: &[Segment], mut cur: Cursor, mut bytes: usize) -> Cursor {
    while bytes > 0 {
        let left = segs[cur.seg].len - cur.off;
        if bytes < left {
            cur.off += bytes;
            return cur;
        }
        bytes -= left;
        cur = Cursor { seg: cur.seg + 1, off: 0 };
    }
    // Skip exhausted segments so the cursor names real data.
    while cur.seg < segs.len() && cur.off == segs[cur.seg].len {
        cur = Cursor { seg: cur.seg + 1, off: 0 };
    }
    cur
}

/// Move `cur` forward by `bytes`.
pub fn advance_cursor(segs: &[Segment], cur: Cursor, bytes: usize) -> Cursor {
    advance(segs, cur, bytes)
}

/// The bytes the next command covers from `cur`: whole `block`s, at most
/// `max_bytes` (a multiple of `block`), and only what `mode` can describe in
/// one command.
pub fn next_chunk(segs: &[Segment], cur: Cursor, max_bytes: usize, block: usize, page: usize, mode: Mode) -> Result<usize, DataError> {
    debug_assert!(max_bytes >= block && max_bytes % block == 0);
    let mut cur = advance(segs, cur, 0);
    let mut total = 0usize;
    let mut pieces = 0usize;
    while cur.seg < segs.len() && total < max_bytes {
        let s = segs[cur.seg];
        if s.len % block != 0 {
            return Err(DataError::PartialBlock { len: s.len, block });
        }
        let addr = s.iova + cur.off as u64;
        if addr % 4 != 0 {
            return Err(DataError::Misaligned { iova: addr });
        }
        if pieces > 0 {
            match mode {
                // A new segment may only follow one that ended on a page
                // boundary and must itself start on one.
                Mode::Prp => {
                    let prev = segs[cur.seg - 1];
                    let prev_end = prev.iova + prev.len as u64;
                    if prev_end % page as u64 != 0 || addr % page as u64 != 0 {
                        break;
                    }
                }
                Mode::Sgl { max_descriptors } if pieces >= max_descriptors => break,
                Mode::Sgl { .. } => {}
            }
        }
        let take = (s.len - cur.off).min(max_bytes - total);
        total += take;
        pieces += 1;
        cur = Cursor { seg: cur.seg + 1, off: 0 };
    }
    if total == 0 {
        return Err(DataError::Empty);
    }
    // Whole blocks only (a cut inside a segment is at a block multiple
    // because max_bytes is; segment lengths were checked).
    Ok(total - total % block)
}

/// Fill PRP1/PRP2 (and the list in `list`, when more than two pages) for
/// `bytes` of data starting at `cur`. The chunk must come from
/// [`next_chunk`] in [`Mode::Prp`].
pub fn build_prp(segs: &[Segment], cur: Cursor, bytes: usize, page: usize, list: &mut dyn ListSink) -> Result<DataPointer, DataError> {
    let page = page as u64;
    let mut cur = advance(segs, cur, 0);
    let mut left = bytes;
    let mut prp1 = None;
    let mut entries = 0usize;
    let mut second = 0u64;
    let cap = list.capacity() / 8;
    while left > 0 {
        let s = segs.get(cur.seg).ok_or(DataError::Empty)?;
        let start = s.iova + cur.off as u64;
        let len = (s.len - cur.off).min(left);
        let mut p = start & !(page - 1);
        while p < start + len as u64 {
            if prp1.is_none() {
                prp1 = Some(start);
            } else {
                if entries == 0 {
                    second = p;
                }
                if entries < cap {
                    list.set_u64(entries, p);
                }
                entries += 1;
            }
            p += page;
        }
        left -= len;
        cur = Cursor { seg: cur.seg + 1, off: 0 };
    }
    let mut dp = DataPointer::default();
    dp.prp1.set(prp1.ok_or(DataError::Empty)?);
    match entries {
        0 => {}
        1 => dp.prp2.set(second),
        n if n <= cap => dp.prp2.set(list.iova()),
        n => return Err(DataError::ListTooSmall { need: n, have: cap }),
    }
    Ok(dp)
}

/// Fill an SGL data pointer (one data block descriptor, or a last-segment
/// descriptor pointing at data block descriptors in `list`) for `bytes` of
/// data starting at `cur`. The chunk must come from [`next_chunk`] in
/// [`Mode::Sgl`] with at most `list.capacity() / 16` descriptors.
pub fn build_sgl(segs: &[Segment], cur: Cursor, bytes: usize, list: &mut dyn ListSink) -> Result<DataPointer, DataError> {
    let mut cur = advance(segs, cur, 0);
    let mut left = bytes;
    let mut n = 0usize;
    let mut first = None;
    let cap = list.capacity() / 16;
    while left > 0 {
        let s = segs.get(cur.seg).ok_or(DataError::Empty)?;
        let len = (s.len - cur.off).min(left);
        let d = SglDescriptor::new(SglType::DataBlock, SglSubtype::Address, s.iova + cur.off as u64, len as u32);
        if n == 0 {
            first = Some(d);
        }
        if n < cap {
            list.set_descriptor(n, &d);
        }
        n += 1;
        left -= len;
        cur = Cursor { seg: cur.seg + 1, off: 0 };
    }
    let mut dp = DataPointer::default();
    match n {
        0 => return Err(DataError::Empty),
        1 => dp.set_sgl(first.expect("one descriptor")),
        n if n <= cap => dp.set_sgl(SglDescriptor::new(SglType::LastSegment, SglSubtype::Address, list.iova(), (n * 16) as u32)),
        n => return Err(DataError::ListTooSmall { need: n, have: cap }),
    }
    Ok(dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    struct VecList {
        iova: u64,
        words: Vec<u64>,
        descs: Vec<SglDescriptor>,
        cap: usize,
    }

    impl VecList {
        fn new(cap: usize) -> VecList {
            VecList { iova: 0xdead_0000, words: vec![0; cap / 8], descs: vec![SglDescriptor::default(); cap / 16], cap }
        }
    }

    impl ListSink for VecList {
        fn iova(&self) -> u64 {
            self.iova
        }
        fn capacity(&self) -> usize {
            self.cap
        }
        fn set_u64(&mut self, i: usize, v: u64) {
            self.words[i] = v;
        }
        fn set_descriptor(&mut self, i: usize, d: &SglDescriptor) {
            self.descs[i] = *d;
        }
    }

    fn seg(iova: u64, len: usize) -> Segment {
        Segment { iova, len }
    }

    #[test]
    fn one_page_and_two_pages() {
        let segs = [seg(0x10000, 4096)];
        let mut l = VecList::new(4096);
        assert_eq!(next_chunk(&segs, Cursor::default(), 128 << 10, 512, PAGE, Mode::Prp), Ok(4096));
        let dp = build_prp(&segs, Cursor::default(), 4096, PAGE, &mut l).unwrap();
        assert_eq!((dp.prp1.get(), dp.prp2.get()), (0x10000, 0));
        // 512 bytes at an offset within a page: one entry with an offset.
        let segs = [seg(0x10200, 512)];
        let dp = build_prp(&segs, Cursor::default(), 512, PAGE, &mut l).unwrap();
        assert_eq!((dp.prp1.get(), dp.prp2.get()), (0x10200, 0));
        // 8 KiB starting mid-page spans three pages: a list.
        let segs = [seg(0x10800, 8192)];
        let dp = build_prp(&segs, Cursor::default(), 8192, PAGE, &mut l).unwrap();
        assert_eq!(dp.prp1.get(), 0x10800);
        assert_eq!(dp.prp2.get(), l.iova);
        assert_eq!(&l.words[..2], &[0x11000, 0x12000]);
        // 8 KiB page aligned: PRP2 is the second page itself.
        let segs = [seg(0x20000, 8192)];
        let dp = build_prp(&segs, Cursor::default(), 8192, PAGE, &mut l).unwrap();
        assert_eq!((dp.prp1.get(), dp.prp2.get()), (0x20000, 0x21000));
    }

    #[test]
    fn large_transfer_is_cut_at_the_maximum_and_lists_every_page() {
        let segs = [seg(0x100000, 1 << 20)];
        let max = 512 << 10;
        let c = next_chunk(&segs, Cursor::default(), max, 512, PAGE, Mode::Prp).unwrap();
        assert_eq!(c, max);
        let mut l = VecList::new(4096);
        let dp = build_prp(&segs, Cursor::default(), c, PAGE, &mut l).unwrap();
        assert_eq!(dp.prp1.get(), 0x100000);
        assert_eq!(dp.prp2.get(), l.iova);
        for i in 0..127 {
            assert_eq!(l.words[i], 0x101000 + (i as u64) * 4096);
        }
        let cur = advance_cursor(&segs, Cursor::default(), c);
        assert_eq!(cur, Cursor { seg: 0, off: max });
        assert_eq!(next_chunk(&segs, cur, max, 512, PAGE, Mode::Prp), Ok(max));
        let dp = build_prp(&segs, cur, max, PAGE, &mut l).unwrap();
        assert_eq!(dp.prp1.get(), 0x180000);
        let end = advance_cursor(&segs, cur, max);
        assert_eq!(end.seg, 1);
        assert_eq!(next_chunk(&segs, end, max, 512, PAGE, Mode::Prp), Err(DataError::Empty));
    }

    #[test]
    fn page_contiguous_segments_join_others_split() {
        // Two 8 KiB pool buffers, each page aligned: one command.
        let segs = [seg(0x40000, 8192), seg(0x90000, 8192)];
        assert_eq!(next_chunk(&segs, Cursor::default(), 1 << 20, 512, PAGE, Mode::Prp), Ok(16384));
        let mut l = VecList::new(4096);
        let dp = build_prp(&segs, Cursor::default(), 16384, PAGE, &mut l).unwrap();
        assert_eq!(dp.prp1.get(), 0x40000);
        assert_eq!(&l.words[..3], &[0x41000, 0x90000, 0x91000]);
        // 512-byte pieces do not join with PRPs: one command each.
        let segs = [seg(0x50000, 512), seg(0x50200, 512), seg(0x60000, 1024)];
        assert_eq!(next_chunk(&segs, Cursor::default(), 1 << 20, 512, PAGE, Mode::Prp), Ok(512));
        let c1 = advance_cursor(&segs, Cursor::default(), 512);
        assert_eq!(next_chunk(&segs, c1, 1 << 20, 512, PAGE, Mode::Prp), Ok(512));
        // ... but do with SGLs, up to the descriptor limit.
        assert_eq!(next_chunk(&segs, Cursor::default(), 1 << 20, 512, PAGE, Mode::Sgl { max_descriptors: 256 }), Ok(2048));
        assert_eq!(next_chunk(&segs, Cursor::default(), 1 << 20, 512, PAGE, Mode::Sgl { max_descriptors: 2 }), Ok(1024));
        let dp = build_sgl(&segs, Cursor::default(), 2048, &mut l).unwrap();
        let d = dp.sgl();
        assert_eq!(d.kind(), Ok(SglType::LastSegment));
        assert_eq!((d.address.get(), d.length.get()), (l.iova, 48));
        assert_eq!(l.descs[1].address.get(), 0x50200);
        assert_eq!(l.descs[2].length.get(), 1024);
        // One segment: the descriptor sits in the command itself.
        let dp = build_sgl(&segs[2..], Cursor::default(), 1024, &mut l).unwrap();
        assert_eq!(dp.sgl().kind(), Ok(SglType::DataBlock));
        assert_eq!(dp.sgl().address.get(), 0x60000);
    }

    #[test]
    fn bad_buffers_are_errors_not_panics() {
        let segs = [seg(0x1002, 512)];
        assert_eq!(next_chunk(&segs, Cursor::default(), 4096, 512, PAGE, Mode::Prp), Err(DataError::Misaligned { iova: 0x1002 }));
        let segs = [seg(0x1000, 100)];
        assert_eq!(next_chunk(&segs, Cursor::default(), 4096, 512, PAGE, Mode::Prp), Err(DataError::PartialBlock { len: 100, block: 512 }));
        assert_eq!(next_chunk(&[], Cursor::default(), 4096, 512, PAGE, Mode::Prp), Err(DataError::Empty));
        let segs = [seg(0x100000, 64 << 10)];
        let mut small = VecList::new(64);
        assert_eq!(build_prp(&segs, Cursor::default(), 64 << 10, PAGE, &mut small), Err(DataError::ListTooSmall { need: 15, have: 8 }));
        let many: Vec<Segment> = (0..5).map(|i| seg(0x1000 * i, 512)).collect();
        assert_eq!(build_sgl(&many, Cursor::default(), 2560, &mut small), Err(DataError::ListTooSmall { need: 5, have: 4 }));
    }

    #[test]
    fn cursor_skips_finished_segments() {
        let segs = [seg(0x1000, 512), seg(0x3000, 512)];
        let c = advance_cursor(&segs, Cursor::default(), 512);
        assert_eq!(c, Cursor { seg: 1, off: 0 });
        assert_eq!(next_chunk(&segs, Cursor { seg: 0, off: 512 }, 4096, 512, PAGE, Mode::Prp), Ok(512));
        let mut l = VecList::new(4096);
        let dp = build_prp(&segs, Cursor { seg: 0, off: 512 }, 512, PAGE, &mut l).unwrap();
        assert_eq!(dp.prp1.get(), 0x3000);
    }
}
