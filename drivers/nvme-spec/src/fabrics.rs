//! The Fabrics command set (NVMe over Fabrics 1.1, section 3.3): commands
//! with opcode 0x7f whose type is in byte 4 (FCTYPE).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The opcode of every Fabrics command.
pub const OPCODE: u8 = 0x7f;

/// Fabrics command types (FCTYPE).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// The NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Maximum NQN length in bytes (without the terminating NUL).
pub const NQN_MAX_LEN: usize = 223;
/// A Connect for an admin queue that asks the subsystem to pick the
/// controller id (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;
/// Highest controller id a subsystem may give out.
pub const CNTLID_MAX: u16 = 0xffef;

/// The Connect command (Figure 20).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ConnectCommand {
    pub opcode: u8,
    pub rsvd1: u8,
    pub cid: U16,
    pub fctype: u8,
    pub rsvd2: [u8; 19],
    pub sgl1: [u8; 16],
    /// Record format: 0.
    pub recfmt: U16,
    /// Queue id: 0 for the admin queue.
    pub qid: U16,
    /// Submission queue size, zero based.
    pub sqsize: U16,
    /// Connect attributes: bit 2 disables SQ flow control.
    pub cattr: u8,
    pub rsvd3: u8,
    /// Keep alive timeout in milliseconds (admin queue only).
    pub kato: U32,
    pub rsvd4: [u8; 12],
}
const _: () = assert!(size_of::<ConnectCommand>() == 64);

impl ConnectCommand {
    pub const OFFSET_RECFMT: u16 = 40;
    pub const OFFSET_QID: u16 = 42;
    pub const OFFSET_SQSIZE: u16 = 44;
    pub const OFFSET_CATTR: u16 = 46;
    /// CATTR bit 2: the host disables SQ flow control (no SQHD updates).
    pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
}

/// The 1024 bytes of data a Connect carries (Figure 22).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: U16,
    pub rsvd1: [u8; 238],
    pub subnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub rsvd2: [u8; 256],
}
const _: () = assert!(size_of::<ConnectData>() == 1024);

impl ConnectData {
    pub const OFFSET_HOSTID: u16 = 0;
    pub const OFFSET_CNTLID: u16 = 16;
    pub const OFFSET_SUBNQN: u16 = 256;
    pub const OFFSET_HOSTNQN: u16 = 512;
}

/// Property Get and Property Set (Figures 26 and 29): the same layout; a
/// Get ignores `value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PropertyCommand {
    pub opcode: u8,
    pub rsvd1: u8,
    pub cid: U16,
    pub fctype: u8,
    pub rsvd2: [u8; 35],
    /// Bits 2:0: size, 0 = 4 bytes, 1 = 8 bytes.
    pub attrib: u8,
    pub rsvd3: [u8; 3],
    /// Offset of the property (the controller register offset).
    pub ofst: U32,
    pub value: U64,
    pub rsvd4: [u8; 8],
}
const _: () = assert!(size_of::<PropertyCommand>() == 64);

/// Property (register) offsets the target implements.
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}
