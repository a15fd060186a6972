//! Memory a bdev lends a read instead of copying into the reader's buffers.
//!
//! A RAM disk holds the data a read asks for already; copying it into pool
//! buffers only for the socket to copy it again costs a pass over memory
//! (SPDK's malloc bdev lends its memory to a read that brings no buffer, for
//! the same reason). A [`Lent`] names a range of such memory and keeps it
//! mapped while it lives. It gives no `&[u8]`: other reactors may write the
//! same bytes at any time (the lender's contract with its writers, see the
//! malloc bdev), so its bytes are read only by the kernel (`writev`, see
//! `sock::tx`) or through the lender's own copy ([`Lent::copy_to`]). What a
//! reader sees when a write races it is some mix of old and new data, as
//! with a real disk. A transport that protects data with a digest copies
//! the lent bytes once and computes the digest over that copy (the bytes
//! could change between two reads of them), so digest and data agree.

use std::fmt;
use std::sync::Arc;

/// Memory that can be lent to reads.
///
/// # Safety
/// `base()` must point to `size()` bytes that stay mapped and readable as
/// long as the value lives: the kernel reads them from raw pointers
/// (`writev`) with no other check.
pub unsafe trait LendSource: Send + Sync + 'static {
    fn base(&self) -> *const u8;
    fn size(&self) -> usize;
    /// Copy `dst.len()` bytes from byte `off` the way the owner's
    /// concurrent writers allow (never a plain Rust read of shared memory).
    fn copy_out(&self, off: usize, dst: &mut [u8]);
}

/// A range of lent memory; holds its source alive.
#[derive(Clone)]
pub struct Lent {
    src: Arc<dyn LendSource>,
    off: usize,
    len: usize,
}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").field("off", &self.off).field("len", &self.len).finish()
    }
}

impl Lent {
    /// `len` bytes of `src` from byte `off`.
    pub fn new(src: Arc<dyn LendSource>, off: usize, len: usize) -> Lent {
        assert!(off.checked_add(len).is_some_and(|end| end <= src.size()), "lent range outside its source");
        Lent { src, off, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of byte `start`, for the kernel to read up to the end of the
    /// range; valid while `self` lives. Never dereference it in Rust.
    pub fn ptr_at(&self, start: usize) -> *const u8 {
        assert!(start <= self.len);
        // In bounds of the source (checked at `new`): no overflow.
        self.src.base().wrapping_add(self.off + start)
    }

    /// Copy `dst.len()` bytes from byte `start` of the range.
    pub fn copy_to(&self, start: usize, dst: &mut [u8]) {
        assert!(start.checked_add(dst.len()).is_some_and(|end| end <= self.len), "copy outside the lent range");
        self.src.copy_out(self.off + start, dst);
    }

    /// Append `n` bytes from byte `start` to `out`.
    pub fn append_to(&self, start: usize, n: usize, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + n, 0);
        self.copy_to(start, &mut out[at..]);
    }

    /// CRC32C of `n` bytes from byte `start`, continuing `crc` (a copy
    /// through a small stack buffer: the bytes are never borrowed).
    pub fn crc32c_append(&self, mut crc: u32, start: usize, n: usize) -> u32 {
        let mut chunk = [0u8; 4096];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(chunk.len());
            self.copy_to(start + done, &mut chunk[..k]);
            crc = crc32c::crc32c_append(crc, &chunk[..k]);
            done += k;
        }
        crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Box<[u8]>);
    // SAFETY: a boxed slice, alive and unchanging while the value lives.
    unsafe impl LendSource for Mem {
        fn base(&self) -> *const u8 {
            self.0.as_ptr()
        }
        fn size(&self) -> usize {
            self.0.len()
        }
        fn copy_out(&self, off: usize, dst: &mut [u8]) {
            dst.copy_from_slice(&self.0[off..off + dst.len()]);
        }
    }

    fn mem(n: usize) -> Arc<dyn LendSource> {
        Arc::new(Mem((0..n).map(|i| (i * 7 % 251) as u8).collect()))
    }

    #[test]
    fn a_lent_range_copies_and_checksums_its_own_bytes() {
        let src = mem(20_000);
        let l = Lent::new(src.clone(), 1000, 10_000);
        let mut want = vec![0u8; 10_000];
        src.copy_out(1000, &mut want);
        let mut out = vec![9u8];
        l.append_to(0, 10_000, &mut out);
        assert_eq!(&out[1..], &want[..]);
        let mut part = [0u8; 300];
        l.copy_to(9_700, &mut part);
        assert_eq!(&part[..], &want[9_700..]);
        // Over several of the stack chunks, from an odd start.
        assert_eq!(l.crc32c_append(0, 3, 9_000), crc32c::crc32c(&want[3..9_003]));
        assert_eq!(l.ptr_at(0), src.base().wrapping_add(1000));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_range_past_its_source_is_refused() {
        Lent::new(mem(100), 50, 51);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_copy_past_the_range_is_refused() {
        Lent::new(mem(100), 0, 10).copy_to(5, &mut [0u8; 6]);
    }
}
