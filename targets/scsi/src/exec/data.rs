//! Data buffers for commands: DMA buffers from the reactor's pool, in
//! pieces of at most the large buffer size.

use pollux_core::dma::{self, DmaBuf};

use crate::task::Task;

/// Buffers holding `len` bytes, or `None` when the pool is exhausted (the
/// command then ends with BUSY and the initiator retries).
pub(crate) fn alloc(len: usize, out: &mut Vec<DmaBuf>) -> bool {
    let Ok(pool) = dma::pool() else { return false };
    let piece = pool.large_size().max(4096);
    let mut left = len;
    while left > 0 {
        let n = left.min(piece);
        match pool.get(n) {
            Some(mut b) => {
                b.set_len(n);
                out.push(b);
            }
            None => match DmaBuf::alloc(n) {
                // Pool exhausted: a one-off region keeps the command going.
                Ok(b) => out.push(b),
                Err(_) => {
                    out.clear();
                    return false;
                }
            },
        }
        left -= n;
    }
    true
}

/// Return `data` as the command's data-in, cut to the allocation length.
pub(crate) fn put_data(t: &mut Task, data: &[u8], alloc_len: usize) -> bool {
    let n = data.len().min(alloc_len);
    t.bufs.clear();
    t.xfer_len = n as u64;
    t.data_len = 0;
    if !alloc(n, &mut t.bufs) {
        return false;
    }
    let mut off = 0;
    for b in t.bufs.iter_mut() {
        let k = b.len();
        b.copy_from_slice(&data[off..off + k]);
        off += k;
    }
    t.data_len = n;
    true
}

/// Keep exactly the first `len` bytes of `bufs` (dropping or shortening
/// the rest).
pub(crate) fn trim_to(bufs: &mut Vec<DmaBuf>, len: usize) {
    let mut left = len;
    let mut keep = 0;
    for b in bufs.iter_mut() {
        if left == 0 {
            break;
        }
        if b.len() > left {
            b.set_len(left);
        }
        left -= b.len();
        keep += 1;
    }
    bufs.truncate(keep);
}

/// Copy bytes `[off, off + out.len())` of the buffers into `out`.
pub(crate) fn copy_from(bufs: &[DmaBuf], mut off: usize, out: &mut [u8]) {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let n = (b.len() - off).min(out.len() - done);
        out[done..done + n].copy_from_slice(&b[off..off + n]);
        done += n;
        off = 0;
    }
}
