//! Command descriptor blocks: operation codes and the decoding of the LBA,
//! length and flag fields of the block commands. Decoders return the sense
//! data naming the bad field instead of trusting it.

use crate::sense::Sense;

/// Operation codes (SPC-5, SBC-4).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const SEND_DIAGNOSTIC: u8 = 0x1d;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_BUFFER: u8 = 0x3b;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;

    /// SERVICE ACTION IN (16) service actions.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const SAI_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
    /// RECEIVE COPY RESULTS service actions.
    pub const RCR_COPY_STATUS: u8 = 0x00;
    pub const RCR_OPERATING_PARAMETERS: u8 = 0x03;
}

/// Big-endian field readers.
#[inline]
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
pub fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
#[inline]
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
pub fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// The length of a CDB from its operation code group (SPC-5 4.2.5.1).
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// The fields of a block read, write or verify command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rw {
    pub lba: u64,
    /// Blocks to transfer.
    pub blocks: u32,
    /// Protection field (RDPROTECT, WRPROTECT, VRPROTECT): bits 7-5 of byte 1.
    pub protect: u8,
    pub dpo: bool,
    pub fua: bool,
    /// BYTCHK of VERIFY, WRITE AND VERIFY (bits 2-1 of byte 1).
    pub bytchk: u8,
}

/// Decode a READ, WRITE, VERIFY, WRITE AND VERIFY, ORWRITE, PRE-FETCH,
/// WRITE SAME, SYNCHRONIZE CACHE CDB of length 6, 10, 12 or 16.
pub fn rw(cdb: &[u8; 16]) -> Rw {
    let b1 = cdb[1];
    let flags = |r: Rw| Rw { protect: b1 >> 5, dpo: b1 & 0x10 != 0, fua: b1 & 0x08 != 0, bytchk: (b1 >> 1) & 3, ..r };
    match cdb_len(cdb[0]) {
        6 => {
            let lba = be24(cdb, 1) as u64 & 0x1f_ffff;
            // A transfer length of 0 means 256 blocks for READ(6)/WRITE(6).
            let blocks = if cdb[4] == 0 { 256 } else { cdb[4] as u32 };
            Rw { lba, blocks, protect: 0, dpo: false, fua: false, bytchk: 0 }
        }
        10 => flags(Rw { lba: be32(cdb, 2) as u64, blocks: be16(cdb, 7) as u32, protect: 0, dpo: false, fua: false, bytchk: 0 }),
        12 => flags(Rw { lba: be32(cdb, 2) as u64, blocks: be32(cdb, 6), protect: 0, dpo: false, fua: false, bytchk: 0 }),
        // WRITE ATOMIC(16) has a 2-byte transfer length after the atomic boundary.
        _ if cdb[0] == op::WRITE_ATOMIC_16 => {
            flags(Rw { lba: be64(cdb, 2), blocks: be16(cdb, 12) as u32, protect: 0, dpo: false, fua: false, bytchk: 0 })
        }
        _ => flags(Rw { lba: be64(cdb, 2), blocks: be32(cdb, 10), protect: 0, dpo: false, fua: false, bytchk: 0 }),
    }
}

/// The allocation length of a command that returns data, or the parameter
/// list length of one that takes a parameter list.
pub fn alloc_len(cdb: &[u8; 16]) -> Result<u32, Sense> {
    use op::*;
    Ok(match cdb[0] {
        INQUIRY => be16(cdb, 3) as u32,
        REQUEST_SENSE | MODE_SENSE_6 | MODE_SELECT_6 => cdb[4] as u32,
        MODE_SENSE_10 | MODE_SELECT_10 | PERSISTENT_RESERVE_IN | READ_DEFECT_DATA_10 | UNMAP => be16(cdb, 7) as u32,
        PERSISTENT_RESERVE_OUT => be32(cdb, 5),
        REPORT_LUNS | MAINTENANCE_IN | READ_DEFECT_DATA_12 => be32(cdb, 6),
        SERVICE_ACTION_IN_16 => be32(cdb, 10),
        EXTENDED_COPY | RECEIVE_COPY_RESULTS => be32(cdb, 10),
        READ_CAPACITY_10 => 8,
        _ => return Err(Sense::invalid_opcode()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn decodes_each_rw_form() {
        let r = rw(&cdb(&[op::READ_6, 0x1f, 0xff, 0xff, 0]));
        assert_eq!((r.lba, r.blocks), (0x1f_ffff, 256));
        let r = rw(&cdb(&[op::WRITE_10, 0x18, 0, 0, 1, 0, 0, 0, 8, 0]));
        assert_eq!((r.lba, r.blocks, r.dpo, r.fua), (256, 8, true, true));
        let r = rw(&cdb(&[op::READ_12, 0xe0, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0]));
        assert_eq!((r.lba, r.blocks, r.protect), (9, 256, 7));
        let r = rw(&cdb(&[op::READ_16, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]));
        assert_eq!((r.lba, r.blocks), (1 << 32, 2));
    }

    #[test]
    fn unknown_opcodes_have_no_allocation_length() {
        assert!(alloc_len(&cdb(&[0xff])).is_err());
        assert_eq!(alloc_len(&cdb(&[op::INQUIRY, 0, 0, 1, 2, 0])).unwrap(), 258);
    }
}
