//! Verify patterns: every 8-byte word of a written block is a function of the
//! block's LBA, the write's generation and the word's position, so a read
//! that returns stale data, another block's data or a torn write is caught,
//! and the first difference can be named.

/// The expected word at `word` (index in the block) of block `lba`.
#[inline]
fn word(seed: u64, lba: u64, generation: u64, word: u64) -> u64 {
    let mut x = seed ^ lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation.rotate_left(32) ^ word.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    // One round of splitmix64's finaliser.
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 29)
}

/// Fill `buf` (starting at block `lba`) with the pattern of `generation`.
pub fn fill(buf: &mut [u8], block_size: usize, seed: u64, lba: u64, generation: u64) {
    for (b, block) in buf.chunks_exact_mut(block_size).enumerate() {
        for (w, chunk) in block.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&word(seed, lba + b as u64, generation, w as u64).to_le_bytes());
        }
    }
}

/// The first difference between `buf` and the pattern, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    pub byte_in_block: usize,
    pub expected: u64,
    pub found: u64,
}

pub fn check(buf: &[u8], block_size: usize, seed: u64, lba: u64, generation: u64) -> Option<Mismatch> {
    for (b, block) in buf.chunks_exact(block_size).enumerate() {
        for (w, chunk) in block.chunks_exact(8).enumerate() {
            let found = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let expected = word(seed, lba + b as u64, generation, w as u64);
            if found != expected {
                return Some(Mismatch { lba: lba + b as u64, byte_in_block: w * 8, expected, found });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_buffer_checks_clean_and_any_change_is_found() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 512, 7, 100, 3);
        assert_eq!(check(&buf, 512, 7, 100, 3), None);
        // Another generation, LBA or seed does not match.
        assert!(check(&buf, 512, 7, 100, 4).is_some());
        assert!(check(&buf, 512, 7, 101, 3).is_some());
        assert!(check(&buf, 512, 8, 100, 3).is_some());
        buf[512 * 5 + 17] ^= 1;
        let m = check(&buf, 512, 7, 100, 3).unwrap();
        assert_eq!((m.lba, m.byte_in_block), (105, 16));
        assert_ne!(m.expected, m.found);
    }
}
