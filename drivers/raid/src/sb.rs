//! SPDK's RAID superblock (`bdev_raid_sb.c`), at block 0 of every member
//! of an array made with `superblock`: which array a bdev belongs to, in
//! which slot, where its data are, and which members were online when it
//! was last written (`seq_number` orders the writes), so arrays reassemble
//! by themselves whatever order their members appear in, and move between
//! SPDK and Pollux.
//!
//! Layout (little-endian): a 256-byte header (`SPDKRAID`, version 1.0,
//! length, CRC-32C over `length` bytes with the CRC field zero, seed 0 and
//! no final XOR, flags, the array's UUID and name, size in blocks, block
//! size, level, strip size in blocks, state, seq_number, member count,
//! entries count at byte 255), then 64 bytes per member (UUID, data
//! offset, data size, state, flags, slot).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pollux_core::bdev::{Descriptor, IoStatus, IoType};
use pollux_core::dma::DmaBuf;
use pollux_core::reactor::task::Slot;

use crate::array::{FAILED, Level, MISSING, ONLINE, Shared};

pub const SIGNATURE: &[u8; 8] = b"SPDKRAID";
pub const HEADER: usize = 256;
pub const ENTRY: usize = 64;
pub const MAX_MEMBERS: usize = 255;
pub const MAX_LENGTH: usize = HEADER + MAX_MEMBERS * ENTRY;
/// Data start 1 MiB into each member.
pub const DATA_OFFSET_BYTES: u64 = 1 << 20;

/// Entry states.
pub const SB_MISSING: u32 = 0;
pub const SB_CONFIGURED: u32 = 1;
pub const SB_FAILED: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub uuid: uuid::Uuid,
    pub data_offset: u64,
    pub data_size: u64,
    pub state: u32,
    pub slot: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: uuid::Uuid,
    pub name: String,
    pub raid_size: u64,
    pub block_size: u32,
    pub level: u32,
    pub strip_size: u32,
    pub seq_number: u64,
    pub num_base_bdevs: u8,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum SbError {
    #[error("no RAID superblock")]
    None,
    #[error("invalid RAID superblock: {0}")]
    Invalid(String),
    #[error("{0:?}")]
    Io(IoStatus),
}

pub fn level_code(l: Level) -> u32 {
    match l {
        Level::Raid0 => 0,
        Level::Raid1 => 1,
        Level::Concat => 99,
    }
}

pub fn level_of(code: u32) -> Option<Level> {
    Some(match code {
        0 => Level::Raid0,
        1 => Level::Raid1,
        99 => Level::Concat,
        _ => return None,
    })
}

fn crc(b: &[u8]) -> u32 {
    !crc32c::crc32c_append(0xFFFF_FFFF, b)
}

impl Superblock {
    pub fn length(&self) -> usize {
        HEADER + ENTRY * self.entries.len()
    }

    /// What the geometry must satisfy before an array is assembled from
    /// this superblock (its CRC says only that the bytes are as written):
    /// the data of member `entry`, on a bdev of `blocks` blocks, after the
    /// superblock and within the bdev (as SPDK's examine checks), and the
    /// array no larger than its members' data hold. Otherwise the array's
    /// I/O would land on the superblock or past a member's end.
    pub fn check_geometry(&self, level: Level, entry: &Entry, blocks: u64) -> Result<(), String> {
        let bs = u64::from(self.block_size.max(1));
        let sb_blocks = (self.length() as u64).div_ceil(bs);
        if entry.data_offset < sb_blocks {
            return Err(format!(
                "the superblock puts the data of slot {} at block {}, over the superblock ({sb_blocks} blocks)",
                entry.slot, entry.data_offset
            ));
        }
        if entry.data_size == 0 || entry.data_offset.checked_add(entry.data_size).is_none_or(|end| end > blocks) {
            return Err(format!(
                "the superblock puts {} blocks of data of slot {} at block {}: beyond the end of the bdev ({blocks} blocks)",
                entry.data_size, entry.slot, entry.data_offset
            ));
        }
        // Concat counts every slot's data, the others the configured
        // members'. None: more than 64 bits hold (no limit then).
        let sizes: Vec<u64> =
            self.entries.iter().filter(|e| level == Level::Concat || e.state == SB_CONFIGURED).map(|e| e.data_size).collect();
        let holds = crate::array::capacity(level, u64::from(self.strip_size), &sizes, u64::from(self.num_base_bdevs));
        if self.raid_size == 0 || holds.is_some_and(|h| self.raid_size > h) {
            return Err(format!(
                "the superblock's array of {} blocks is larger than its members' data hold ({} blocks)",
                self.raid_size,
                holds.unwrap_or(0)
            ));
        }
        Ok(())
    }

    pub fn render(&self) -> Vec<u8> {
        let len = self.length();
        let mut b = vec![0u8; len];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&0u16.to_le_bytes());
        b[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        b[24..40].copy_from_slice(self.uuid.as_bytes());
        let name = self.name.as_bytes();
        let n = name.len().min(63);
        b[40..40 + n].copy_from_slice(&name[..n]);
        b[104..112].copy_from_slice(&self.raid_size.to_le_bytes());
        b[112..116].copy_from_slice(&self.block_size.to_le_bytes());
        b[116..120].copy_from_slice(&self.level.to_le_bytes());
        b[120..124].copy_from_slice(&self.strip_size.to_le_bytes());
        b[128..136].copy_from_slice(&self.seq_number.to_le_bytes());
        b[136] = self.num_base_bdevs;
        b[255] = self.entries.len() as u8;
        for (i, e) in self.entries.iter().enumerate() {
            let at = HEADER + i * ENTRY;
            b[at..at + 16].copy_from_slice(e.uuid.as_bytes());
            b[at + 16..at + 24].copy_from_slice(&e.data_offset.to_le_bytes());
            b[at + 24..at + 32].copy_from_slice(&e.data_size.to_le_bytes());
            b[at + 32..at + 36].copy_from_slice(&e.state.to_le_bytes());
            b[at + 40] = e.slot;
        }
        let c = crc(&b);
        b[16..20].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Parse (SPDK's `raid_bdev_parse_superblock` checks, in its order).
    pub fn parse(b: &[u8]) -> Result<Superblock, SbError> {
        if b.len() < HEADER || &b[0..8] != SIGNATURE {
            return Err(SbError::None);
        }
        let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().expect("2"));
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let len = u32_at(12) as usize;
        if !(HEADER..=MAX_LENGTH).contains(&len) || len > b.len() {
            return Err(SbError::Invalid(format!("length {len}")));
        }
        let mut copy = b[..len].to_vec();
        copy[16..20].fill(0);
        let want = u32_at(16);
        if crc(&copy) != want {
            return Err(SbError::Invalid("CRC mismatch".into()));
        }
        if u16_at(8) != 1 {
            return Err(SbError::Invalid(format!("version {}.{}", u16_at(8), u16_at(10))));
        }
        let num = b[136];
        let size = b[255] as usize;
        if HEADER + size * ENTRY > len {
            return Err(SbError::Invalid(format!("{size} entries in {len} bytes")));
        }
        let mut entries = Vec::with_capacity(size);
        for i in 0..size {
            let at = HEADER + i * ENTRY;
            let e = Entry {
                uuid: uuid::Uuid::from_slice(&b[at..at + 16]).expect("16 bytes"),
                data_offset: u64_at(at + 16),
                data_size: u64_at(at + 24),
                state: u32_at(at + 32),
                slot: b[at + 40],
            };
            if e.slot >= num {
                return Err(SbError::Invalid(format!("entry {i} names slot {} of {num}", e.slot)));
            }
            entries.push(e);
        }
        let name_end = b[40..104].iter().position(|c| *c == 0).unwrap_or(63);
        let name = std::str::from_utf8(&b[40..40 + name_end])
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| SbError::Invalid("the array's name is empty or not UTF-8".into()))?;
        Ok(Superblock {
            uuid: uuid::Uuid::from_slice(&b[24..40]).expect("16 bytes"),
            name: name.to_string(),
            raid_size: u64_at(104),
            block_size: u32_at(112),
            level: u32_at(116),
            strip_size: u32_at(120),
            seq_number: u64_at(128),
            num_base_bdevs: num,
            entries,
        })
    }

    /// The entry of slot `slot`.
    pub fn entry(&self, slot: usize) -> Option<&Entry> {
        self.entries.iter().find(|e| e.slot as usize == slot)
    }
}

/// The superblock describing `sh` now, with sequence number `seq`.
pub fn of(sh: &Shared, seq: u64) -> Superblock {
    let entries = sh
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| Entry {
            uuid: m.uuid.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(uuid::Uuid::nil()),
            data_offset: m.data_offset.load(Ordering::Acquire),
            data_size: m.data_size.load(Ordering::Acquire),
            state: match m.state() {
                ONLINE => SB_CONFIGURED,
                MISSING => SB_MISSING,
                FAILED => SB_FAILED,
                // Being rebuilt: not trusted until it is done.
                _ => SB_FAILED,
            },
            slot: i as u8,
        })
        .collect();
    Superblock {
        uuid: sh.uuid,
        name: sh.name.clone(),
        raid_size: sh.num_blocks.load(Ordering::Acquire),
        block_size: sh.block_size,
        level: level_code(sh.level),
        strip_size: sh.strip as u32,
        seq_number: seq,
        num_base_bdevs: sh.members.len() as u8,
        entries,
    }
}

/// One request of `n` blocks at `off` on `buf`, awaited on this reactor:
/// its status and the buffer back.
pub(crate) async fn one(d: &Descriptor, kind: IoType, buf: DmaBuf, off: u64, n: u64) -> (IoStatus, Option<DmaBuf>) {
    let ch = d.channel();
    let slot: Slot<(IoStatus, Option<DmaBuf>)> = Slot::new();
    let s = slot.clone();
    d.submit(&ch, kind, [buf], off, n, move |mut c| {
        let b = c.take_buffers().into_iter().next();
        s.set((c.status(), b))
    });
    slot.await
}

async fn io(d: &Descriptor, kind: IoType, buf: DmaBuf, blocks: u64) -> Result<DmaBuf, SbError> {
    match one(d, kind, buf, 0, blocks).await {
        (st, Some(b)) if st.is_ok() => Ok(b),
        (st, _) => Err(SbError::Io(st)),
    }
}

/// Read the superblock of a bdev, if it has one.
pub async fn read(d: &Descriptor) -> Result<Superblock, SbError> {
    let bs = d.bdev().block_size() as usize;
    let blocks = MAX_LENGTH.div_ceil(bs).min(d.bdev().num_blocks() as usize) as u64;
    if blocks == 0 {
        return Err(SbError::None);
    }
    let buf = DmaBuf::alloc(blocks as usize * bs).map_err(|_| SbError::Io(IoStatus::NoMemory))?;
    let buf = io(d, IoType::Read, buf, blocks).await?;
    Superblock::parse(&buf)
}

/// Write `sb` to block 0 of `d`.
pub async fn write(d: &Descriptor, sb: &Superblock) -> Result<(), SbError> {
    let bs = d.bdev().block_size() as usize;
    let img = sb.render();
    let blocks = img.len().div_ceil(bs);
    let mut buf = DmaBuf::alloc(blocks * bs).map_err(|_| SbError::Io(IoStatus::NoMemory))?;
    buf[..img.len()].copy_from_slice(&img);
    io(d, IoType::Write, buf, blocks as u64).await.map(|_| ())
}

/// Zero the blocks a superblock takes on `d` (`bdev_raid_delete`'s
/// `clear_sb`).
pub async fn clear(d: &Descriptor) -> Result<(), SbError> {
    let bs = d.bdev().block_size() as usize;
    let blocks = MAX_LENGTH.div_ceil(bs);
    let buf = DmaBuf::alloc(blocks * bs).map_err(|_| SbError::Io(IoStatus::NoMemory))?;
    io(d, IoType::Write, buf, blocks as u64).await.map(|_| ())
}

/// Write the array's superblock, one sequence number on, to every member
/// that is online.
pub async fn write_all(sh: &Arc<Shared>) -> Result<(), SbError> {
    let seq = sh.sb_seq.fetch_add(1, Ordering::AcqRel) + 1;
    let sb = of(sh, seq);
    let mut r = Ok(());
    for m in sh.members.iter().filter(|m| m.state() == ONLINE) {
        if let Some(d) = m.desc() {
            if let Err(e) = write(&d, &sb).await {
                tracing::error!("raid {}: superblock to {}: {e}", sh.name, d.bdev().name());
                r = Err(e);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_spdks_raw_crc32c() {
        assert_eq!(crc(b"123456789"), 0x58E3_FA20);
    }

    #[test]
    fn a_superblock_round_trips_and_refuses_damage() {
        let sb = Superblock {
            uuid: uuid::Uuid::new_v4(),
            name: "Raid1".into(),
            raid_size: 1000,
            block_size: 512,
            level: 1,
            strip_size: 0,
            seq_number: 7,
            num_base_bdevs: 2,
            entries: (0..2)
                .map(|i| Entry { uuid: uuid::Uuid::new_v4(), data_offset: 2048, data_size: 1000, state: SB_CONFIGURED, slot: i })
                .collect(),
        };
        let b = sb.render();
        assert_eq!(b.len(), 256 + 128);
        assert_eq!(Superblock::parse(&b).unwrap(), sb);
        let mut bad = b.clone();
        bad[300] ^= 1;
        assert!(matches!(Superblock::parse(&bad), Err(SbError::Invalid(_))));
        assert!(matches!(Superblock::parse(&[0u8; 512]), Err(SbError::None)));
        let mut short = b.clone();
        short[12..16].copy_from_slice(&100000u32.to_le_bytes());
        assert!(Superblock::parse(&short).is_err());
    }

    #[test]
    fn a_geometry_its_members_cannot_hold_is_refused() {
        let entry = |slot, data_offset, data_size| Entry { uuid: uuid::Uuid::new_v4(), data_offset, data_size, state: SB_CONFIGURED, slot };
        let mut sb = Superblock {
            uuid: uuid::Uuid::new_v4(),
            name: "R".into(),
            raid_size: 2048,
            block_size: 512,
            level: 0,
            strip_size: 128,
            seq_number: 1,
            num_base_bdevs: 2,
            entries: vec![entry(0, 2048, 1100), entry(1, 2048, 1024)],
        };
        let check = |sb: &Superblock, level, blocks| sb.check_geometry(level, &sb.entries[0], blocks);
        // raid0: 2 x 1024 (1100 rounded down to the 128-block strip).
        assert_eq!(check(&sb, Level::Raid0, 4096), Ok(()));
        sb.raid_size = 2049;
        assert!(check(&sb, Level::Raid0, 4096).unwrap_err().contains("array of 2049 blocks"));
        // concat: 1024 + 1024; raid1: the smaller member's 1024.
        assert_eq!(check(&sb, Level::Concat, 4096).unwrap_err(), check(&sb, Level::Raid0, 4096).unwrap_err());
        sb.raid_size = 1024;
        assert_eq!(check(&sb, Level::Raid1, 4096), Ok(()));
        sb.raid_size = 1025;
        assert!(check(&sb, Level::Raid1, 4096).is_err());
        sb.raid_size = 1024;
        // The member's data past its bdev's end, or over the superblock (384
        // bytes: block 0), or its end beyond 64 bits.
        assert!(check(&sb, Level::Raid1, 3147).unwrap_err().contains("beyond the end"));
        assert_eq!(check(&sb, Level::Raid1, 3148), Ok(()));
        sb.entries[0].data_offset = 0;
        assert!(check(&sb, Level::Raid1, 4096).unwrap_err().contains("over the superblock"));
        sb.entries[0].data_offset = 1;
        assert_eq!(check(&sb, Level::Raid1, 4096), Ok(()));
        sb.entries[0].data_offset = u64::MAX - 10;
        assert!(check(&sb, Level::Raid1, u64::MAX).unwrap_err().contains("beyond the end"));
        // Members holding more than 64 bits count: no overflow, no limit.
        sb.entries = vec![entry(0, 2048, u64::MAX - 5000), entry(1, 2048, u64::MAX - 5000)];
        sb.raid_size = u64::MAX;
        assert_eq!(check(&sb, Level::Raid0, u64::MAX), Ok(()));
        assert_eq!(check(&sb, Level::Concat, u64::MAX), Ok(()));
        sb.raid_size = 0;
        assert!(check(&sb, Level::Concat, u64::MAX).is_err());
    }
}
