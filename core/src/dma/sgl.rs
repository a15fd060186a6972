//! Copies to and from a scatter-gather list of buffers, at a byte offset
//! into the list as if it were one contiguous buffer.

use std::io::IoSliceMut;

use super::DmaBuf;

/// Copy `data` into `bufs` starting at byte `off` of the list. Returns how
/// many bytes were copied (less than `data.len()` when the list ends first).
pub fn copy_to_bufs(bufs: &mut [DmaBuf], mut off: usize, mut data: &[u8]) -> usize {
    let total = data.len();
    for b in bufs.iter_mut() {
        if data.is_empty() {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let n = (b.len() - off).min(data.len());
        b[off..off + n].copy_from_slice(&data[..n]);
        data = &data[n..];
        off = 0;
    }
    total - data.len()
}

/// Copy from `bufs`, starting at byte `off` of the list, into `out`. Returns
/// how many bytes were copied.
pub fn copy_from_bufs(bufs: &[DmaBuf], off: usize, out: &mut [u8]) -> usize {
    let mut at = 0;
    for_each_piece(bufs, off, out.len(), |p| {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    })
}

/// Hand `f` the pieces of `len` bytes of `bufs`, starting at byte `off` of
/// the list, in order (one per buffer touched). Returns how many bytes they
/// hold (less than `len` when the list ends first).
pub fn for_each_piece(bufs: &[DmaBuf], mut off: usize, len: usize, mut f: impl FnMut(&[u8])) -> usize {
    let mut left = len;
    for b in bufs {
        if left == 0 {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let n = (b.len() - off).min(left);
        f(&b[off..off + n]);
        left -= n;
        off = 0;
    }
    len - left
}

/// Fill `out` with views of `len` bytes of `bufs`, starting at byte `off`
/// of the list, in order (one per buffer touched), for a vectored read
/// straight into the buffers. Returns how many views were set; they hold
/// less than `len` when the list or `out` ends first.
pub fn slices_mut<'a>(bufs: &'a mut [DmaBuf], mut off: usize, len: usize, out: &mut [IoSliceMut<'a>]) -> usize {
    let mut left = len;
    let mut n = 0;
    for b in bufs.iter_mut() {
        if left == 0 || n == out.len() {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let k = (b.len() - off).min(left);
        out[n] = IoSliceMut::new(&mut b[off..off + k]);
        n += 1;
        left -= k;
        off = 0;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bufs(lens: &[usize]) -> Vec<DmaBuf> {
        lens.iter().map(|&l| DmaBuf::alloc(l).unwrap()).collect()
    }

    #[test]
    fn copies_across_buffer_boundaries_at_any_offset() {
        let mut list = bufs(&[3, 5, 4]);
        let data: Vec<u8> = (1..=12).collect();
        assert_eq!(copy_to_bufs(&mut list, 0, &data), 12);
        assert_eq!(&list[1][..], &[4, 5, 6, 7, 8]);
        let mut out = [0u8; 6];
        assert_eq!(copy_from_bufs(&list, 2, &mut out), 6);
        assert_eq!(out, [3, 4, 5, 6, 7, 8]);
        // Past the end: copies what fits.
        assert_eq!(copy_to_bufs(&mut list, 10, &[9, 9, 9, 9]), 2);
        assert_eq!(copy_from_bufs(&list, 11, &mut out), 1);
        assert_eq!(copy_from_bufs(&list, 50, &mut out), 0);
        let mut v = vec![0xff];
        assert_eq!(for_each_piece(&list, 2, 7, |p| v.extend_from_slice(p)), 7);
        assert_eq!(v, [0xff, 3, 4, 5, 6, 7, 8, 9]);
        // Views for a vectored read: from byte 2, 7 bytes, then capped by
        // the views there is room for.
        let mut out: [IoSliceMut<'_>; 4] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
        let n = slices_mut(&mut list, 2, 7, &mut out);
        assert_eq!(out[..n].iter().map(|v| v.len()).collect::<Vec<_>>(), [1, 5, 1]);
        assert_eq!(&out[0][..], &[3]);
        let mut two: [IoSliceMut<'_>; 2] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
        assert_eq!(slices_mut(&mut list, 0, 12, &mut two), 2);
        assert_eq!(two.iter().map(|v| v.len()).sum::<usize>(), 8);
        assert_eq!(for_each_piece(&list, 10, 5, |p| v.extend_from_slice(p)), 2);
        assert_eq!(v.len(), 10);
    }
}
