//! The limits the block limits VPD page advertises and the commands enforce.

use crate::lun::Lun;

/// Largest single transfer, in bytes.
pub const MAX_TRANSFER_BYTES: u32 = 4 << 20;
/// Preferred transfer size, in bytes.
pub const OPTIMAL_TRANSFER_BYTES: u32 = 128 << 10;
/// Largest COMPARE AND WRITE, in blocks.
pub const MAX_COMPARE_AND_WRITE: u8 = 255;
/// UNMAP limits.
pub const MAX_UNMAP_BLOCKS: u32 = 0xffff_ffff;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Piece size for pattern writes, scans and copies, in bytes.
pub const PATTERN_CHUNK: usize = 1 << 20;

pub fn max_transfer_blocks(lun: &Lun) -> u32 {
    MAX_TRANSFER_BYTES / lun.block_size()
}

pub fn optimal_transfer_blocks(lun: &Lun) -> u32 {
    OPTIMAL_TRANSFER_BYTES / lun.block_size()
}

/// Atomic writes: up to the largest buffer the bdev layer writes in one request.
pub fn max_atomic_blocks(lun: &Lun) -> u32 {
    (128 << 10) / lun.block_size()
}

/// WRITE SAME covers up to 65535 blocks per command.
pub fn max_write_same_blocks(lun: &Lun) -> u64 {
    lun.num_blocks().min(0xffff)
}

/// Log2 of logical blocks per physical block, for READ CAPACITY (16) and
/// the unmap granularity: one (the bdev layer has no physical block size,
/// and every block can be unmapped on its own).
pub fn physical_exponent(_lun: &Lun) -> u8 {
    0
}
