//! NVMe/TCP PDU wire structures (NVMe over Fabrics TCP transport binding,
//! NVMe/TCP Transport Specification 1.0, section 3.6): the common header,
//! ICReq/ICResp, termination requests, capsules, data PDUs and R2T, shared
//! by the target (`pollux-nvmf`) and the host (`pollux-nvmf-host`).

use crate::cmd::{Command, Completion};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// PDU types.
pub mod kind {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command succeeded, no CapsuleResp follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal error status of a termination request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Fes {
    InvalidHeaderField = 0x01,
    PduSequenceError = 0x02,
    HeaderDigestError = 0x03,
    DataOutOfRange = 0x04,
    /// R2T limit or data transfer limit exceeded.
    LimitExceeded = 0x05,
    UnsupportedParameter = 0x06,
}

pub const DIGEST_LEN: usize = 4;
/// Longest PDU header a termination request echoes back.
pub const TERM_REQ_MAX_ECHO: usize = 152;

/// The 8-byte common header of every PDU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    /// Header length, without digest.
    pub hlen: u8,
    /// Data offset from the start of the PDU (0 without data).
    pub pdo: u8,
    /// Total PDU length, with digests and padding.
    pub plen: U32,
}
const _: () = assert!(size_of::<CommonHeader>() == 8);

impl CommonHeader {
    pub const OFFSET_FLAGS: u32 = 1;
    pub const OFFSET_HLEN: u32 = 2;
    pub const OFFSET_PDO: u32 = 3;
    pub const OFFSET_PLEN: u32 = 4;
}

/// Initialize Connection Request (host to controller).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct IcReq {
    pub ch: CommonHeader,
    /// PDU format version: 0.
    pub pfv: U16,
    /// Host PDU data alignment, zero based, in dwords.
    pub hpda: u8,
    /// Bit 0: header digests; bit 1: data digests.
    pub dgst: u8,
    /// Maximum outstanding R2Ts per command, zero based.
    pub maxr2t: U32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcReq>() == 128);

impl IcReq {
    pub const OFFSET_PFV: u32 = 8;
    pub const OFFSET_HPDA: u32 = 10;
    pub const OFFSET_DGST: u32 = 11;
}

/// Initialize Connection Response (controller to host).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct IcResp {
    pub ch: CommonHeader,
    pub pfv: U16,
    /// Controller PDU data alignment, zero based, in dwords.
    pub cpda: u8,
    pub dgst: u8,
    /// Largest H2CData payload the controller accepts.
    pub maxh2cdata: U32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcResp>() == 128);

/// Digest bits of ICReq/ICResp.
pub const DGST_HEADER: u8 = 0x1;
pub const DGST_DATA: u8 = 0x2;

/// H2CTermReq / C2HTermReq header; the offending PDU header follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TermReq {
    pub ch: CommonHeader,
    pub fes: U16,
    /// Fatal error information: the byte offset of a bad field.
    pub fei: U32,
    pub rsvd: [u8; 10],
}
const _: () = assert!(size_of::<TermReq>() == 24);

/// CapsuleCmd header: the common header and the 64-byte command.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CapsuleCmd {
    pub ch: CommonHeader,
    pub sqe: Command,
}
const _: () = assert!(size_of::<CapsuleCmd>() == 72);

/// CapsuleResp: the common header and the 16-byte completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CapsuleResp {
    pub ch: CommonHeader,
    pub cqe: Completion,
}
const _: () = assert!(size_of::<CapsuleResp>() == 24);

/// H2CData and C2HData header (C2H leaves `ttag` reserved).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DataHeader {
    pub ch: CommonHeader,
    /// Command capsule CID.
    pub cccid: U16,
    /// Transfer tag from the R2T (H2CData only).
    pub ttag: U16,
    /// Data offset within the command's transfer.
    pub datao: U32,
    /// Data length of this PDU.
    pub datal: U32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<DataHeader>() == 24);

impl DataHeader {
    pub const OFFSET_CCCID: u32 = 8;
    pub const OFFSET_TTAG: u32 = 10;
    pub const OFFSET_DATAO: u32 = 12;
    pub const OFFSET_DATAL: u32 = 16;
}

/// Ready to Transfer.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct R2t {
    pub ch: CommonHeader,
    pub cccid: U16,
    pub ttag: U16,
    /// Offset of the requested data.
    pub r2to: U32,
    /// Length of the requested data.
    pub r2tl: U32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<R2t>() == 24);
