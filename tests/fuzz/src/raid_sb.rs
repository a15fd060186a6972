//! `raid_sb`: SPDK's RAID superblock as Pollux reads it from a member
//! (`pollux_raid::sb::Superblock::parse`), the first bytes of any bdev
//! that appears (examine reads every one).
//!
//! Input: the bytes of the superblock's blocks; with the first byte odd
//! the CRC is made valid first, so the fuzzer reaches the fields.
//!
//! Invariants: no panic; a superblock taken has every entry's slot below
//! its member count and renders to bytes that parse to the same; checking
//! its geometry (what examine does before assembling) does not overflow,
//! and passes only for data after the superblock and inside the member.

use pollux_raid::array::Level;
use pollux_raid::sb::{MAX_LENGTH, Superblock};

pub fn raid_sb(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut b = rest[..rest.len().min(MAX_LENGTH)].to_vec();
    if mode % 2 == 1 && b.len() >= 20 {
        let len = (u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize).min(b.len());
        b[16..20].fill(0);
        let c = !crc32c::crc32c_append(0xFFFF_FFFF, &b[..len.max(20)]);
        b[16..20].copy_from_slice(&c.to_le_bytes());
    }
    let Ok(sb) = Superblock::parse(&b) else { return };
    assert!(sb.entries.iter().all(|e| e.slot < sb.num_base_bdevs), "{sb:?}");
    let again = Superblock::parse(&sb.render()).expect("a rendered superblock parses");
    assert_eq!(again, sb);
    // Member bdevs of a size taken from the input's last bytes.
    let tail = &rest[rest.len().saturating_sub(8)..];
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    let blocks = u64::from_le_bytes(last);
    for level in [Level::Raid0, Level::Raid1, Level::Concat] {
        for e in &sb.entries {
            if sb.check_geometry(level, e, blocks).is_ok() {
                assert!(e.data_offset > 0 && e.data_offset + e.data_size <= blocks, "{e:?} on {blocks} blocks");
                assert!(sb.raid_size > 0);
            }
        }
    }
}
