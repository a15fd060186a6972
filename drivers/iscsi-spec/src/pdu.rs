//! iSCSI PDUs (RFC 7143 section 11): the 48-byte basic header segment as a
//! `#[repr(C)]` wire structure with explicit big-endian fields, opcodes,
//! and the framing rules (AHS, padding, header and data digests).

use static_assertions::const_assert_eq;
use zerocopy::byteorder::{BigEndian, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const BHS_LEN: usize = 48;
pub const DIGEST_LEN: usize = 4;
/// The reserved tag value (no task / no transfer).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes sent by initiators.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TASK_MGMT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    /// Opcodes sent by targets.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TASK_MGMT_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// The basic header segment. Field names follow their most common use;
/// opcode-specific meanings are given by the accessors of each PDU kind.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Default, Debug)]
#[repr(C)]
pub struct Bhs {
    /// Immediate bit (0x40) and opcode (low 6 bits).
    pub opcode: u8,
    /// Final bit (0x80) and opcode-specific flags.
    pub flags: u8,
    pub b2: u8,
    pub b3: u8,
    /// Total AHS length in 4-byte words.
    pub ahs_words: u8,
    /// Data segment length, 24-bit big-endian.
    pub data_len: [u8; 3],
    /// LUN, or ISID + TSIH during login.
    pub lun: [u8; 8],
    pub itt: U32<BigEndian>,
    /// TTT, EDTL, CID, referenced task tag...
    pub w20: U32<BigEndian>,
    /// CmdSN (initiator) or StatSN (target).
    pub w24: U32<BigEndian>,
    /// ExpStatSN (initiator) or ExpCmdSN (target).
    pub w28: U32<BigEndian>,
    /// MaxCmdSN, RefCmdSN, or CDB bytes 0-3.
    pub w32: U32<BigEndian>,
    /// DataSN, R2TSN, ExpDataSN, or CDB bytes 4-7.
    pub w36: U32<BigEndian>,
    /// Buffer offset, or CDB bytes 8-11.
    pub w40: U32<BigEndian>,
    /// Residual count, desired transfer length, or CDB bytes 12-15.
    pub w44: U32<BigEndian>,
}

const_assert_eq!(std::mem::size_of::<Bhs>(), BHS_LEN);

impl Bhs {
    pub fn new(opcode: u8, flags: u8) -> Bhs {
        Bhs { opcode, flags, ..Default::default() }
    }

    /// Parse a header from the first 48 bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<Bhs> {
        Bhs::read_from_prefix(b).ok().map(|(h, _)| h)
    }

    pub fn opcode(&self) -> u8 {
        self.opcode & 0x3f
    }

    pub fn immediate(&self) -> bool {
        self.opcode & 0x40 != 0
    }

    pub fn is_final(&self) -> bool {
        self.flags & 0x80 != 0
    }

    pub fn data_len(&self) -> usize {
        u32::from_be_bytes([0, self.data_len[0], self.data_len[1], self.data_len[2]]) as usize
    }

    pub fn set_data_len(&mut self, n: usize) {
        let b = (n as u32).to_be_bytes();
        self.data_len = [b[1], b[2], b[3]];
    }

    pub fn ahs_len(&self) -> usize {
        self.ahs_words as usize * 4
    }

    pub fn itt(&self) -> u32 {
        self.itt.get()
    }

    /// The CDB of a SCSI Command PDU (bytes 32-47).
    pub fn cdb(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c.copy_from_slice(&self.as_bytes()[32..48]);
        c
    }

    pub fn set_cdb_area(&mut self, b: &[u8; 16]) {
        self.w32.set(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        self.w36.set(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
        self.w40.set(u32::from_be_bytes([b[8], b[9], b[10], b[11]]));
        self.w44.set(u32::from_be_bytes([b[12], b[13], b[14], b[15]]));
    }

    /// Login: ISID (bytes 8-13) and TSIH (bytes 14-15).
    pub fn isid(&self) -> [u8; 6] {
        let mut i = [0u8; 6];
        i.copy_from_slice(&self.lun[..6]);
        i
    }

    pub fn tsih(&self) -> u16 {
        u16::from_be_bytes([self.lun[6], self.lun[7]])
    }

    /// Login, logout: CID (bytes 20-21).
    pub fn cid(&self) -> u16 {
        (self.w20.get() >> 16) as u16
    }
}

/// Bytes of padding after a data segment of `n` bytes.
pub fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// The CRC32C digest of a header or data segment (with its padding).
pub fn digest(parts: &[&[u8]]) -> u32 {
    let mut c = 0u32;
    for p in parts {
        c = crc32c::crc32c_append(c, p);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_big_endian_at_their_offsets() {
        let mut raw = [0u8; 48];
        raw[0] = 0x41;
        raw[1] = 0x81;
        raw[5..8].copy_from_slice(&[0x01, 0x02, 0x03]);
        raw[16..20].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        raw[32] = 0x28;
        let h = Bhs::parse(&raw).unwrap();
        assert_eq!(h.opcode(), op::SCSI_CMD);
        assert!(h.immediate() && h.is_final());
        assert_eq!(h.data_len(), 0x010203);
        assert_eq!(h.itt(), 0xdeadbeef);
        assert_eq!(h.cdb()[0], 0x28);
        assert_eq!(h.as_bytes(), &raw);
        assert!(Bhs::parse(&raw[..47]).is_none());
    }

    #[test]
    fn crc32c_matches_the_rfc_example() {
        // RFC 7143 appendix B.4: 32 bytes of zeroes.
        assert_eq!(digest(&[&[0u8; 32]]), 0x8a9136aa);
        assert_eq!(digest(&[&[0u8; 16], &[0u8; 16]]), 0x8a9136aa);
    }
}
