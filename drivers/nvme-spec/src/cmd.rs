//! Submission and completion queue entries (NVMe Base 2.0, 4.2 and 4.6),
//! opcodes and the data pointer forms (PRP entries and SGL descriptors).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::status::Status;

/// A 64-byte submission queue entry: the common command format.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Command {
    /// CDW0 bits 7:0.
    pub opcode: u8,
    /// CDW0 bits 15:8: FUSE (bits 1:0) and PSDT (bits 7:6), see [`flags`].
    pub flags: u8,
    /// CDW0 bits 31:16: command identifier, unique among the queue's
    /// outstanding commands.
    pub cid: U16,
    /// Namespace identifier (0 = none, 0xffff_ffff = all).
    pub nsid: U32,
    pub cdw2: U32,
    pub cdw3: U32,
    /// Metadata pointer.
    pub mptr: U64,
    /// Data pointer: two PRP entries or one SGL descriptor.
    pub dptr: DataPointer,
    pub cdw10: U32,
    pub cdw11: U32,
    pub cdw12: U32,
    pub cdw13: U32,
    pub cdw14: U32,
    pub cdw15: U32,
}
const _: () = assert!(size_of::<Command>() == 64);

impl Command {
    /// A zeroed command with `opcode` set.
    pub fn new(opcode: u8) -> Self {
        Self { opcode, ..Self::default() }
    }

    /// PSDT: how `dptr` is to be read.
    pub fn data_transfer(&self) -> DataTransfer {
        match (self.flags & flags::PSDT_MASK) >> 6 {
            0 => DataTransfer::Prp,
            1 => DataTransfer::SglContiguousMetadata,
            2 => DataTransfer::SglMetadataSegment,
            _ => DataTransfer::Reserved,
        }
    }

    pub fn set_data_transfer(&mut self, t: DataTransfer) {
        let bits = match t {
            DataTransfer::Prp => 0,
            DataTransfer::SglContiguousMetadata => 1,
            DataTransfer::SglMetadataSegment => 2,
            DataTransfer::Reserved => 3,
        };
        self.flags = (self.flags & !flags::PSDT_MASK) | (bits << 6);
    }

    /// FUSE bits: 0 normal, 1 first of a fused pair, 2 second.
    pub fn fuse(&self) -> u8 {
        self.flags & flags::FUSE_MASK
    }

    /// The starting LBA of a read, write, compare, write zeroes or verify
    /// (CDW10 low, CDW11 high).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }

    pub fn set_slba(&mut self, lba: u64) {
        self.cdw10.set(lba as u32);
        self.cdw11.set((lba >> 32) as u32);
    }

    /// The number of logical blocks of a read, write, compare, write zeroes
    /// or verify (CDW12 bits 15:0 are zero-based, so this is 1..=65536).
    pub fn nlb(&self) -> u32 {
        (self.cdw12.get() & 0xffff) + 1
    }

    /// Sets CDW12's zero-based NLB field; `blocks` must be 1..=65536.
    /// Other CDW12 bits (FUA, LR, DEAC...) are kept.
    pub fn set_nlb(&mut self, blocks: u32) {
        debug_assert!((1..=65536).contains(&blocks));
        let v = self.cdw12.get() & !0xffff;
        self.cdw12.set(v | (blocks.wrapping_sub(1) & 0xffff));
    }
}

/// Bits of [`Command::flags`] (CDW0 bits 15:8).
pub mod flags {
    pub const FUSE_MASK: u8 = 0x03;
    pub const FUSE_FIRST: u8 = 0x01;
    pub const FUSE_SECOND: u8 = 0x02;
    pub const PSDT_MASK: u8 = 0xc0;
    /// PSDT = 01b: SGLs, metadata pointer to a contiguous buffer.
    pub const PSDT_SGL: u8 = 0x40;
}

/// PRP or SGL for Data Transfer (PSDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataTransfer {
    Prp,
    SglContiguousMetadata,
    SglMetadataSegment,
    Reserved,
}

/// The 16-byte data pointer of a command: PRP entry 1 and 2, or (through
/// [`DataPointer::sgl`]) one SGL descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DataPointer {
    pub prp1: U64,
    pub prp2: U64,
}
const _: () = assert!(size_of::<DataPointer>() == 16);

impl DataPointer {
    /// The same 16 bytes read as an SGL descriptor.
    pub fn sgl(&self) -> SglDescriptor {
        zerocopy::transmute!(*self)
    }

    pub fn set_sgl(&mut self, d: SglDescriptor) {
        *self = zerocopy::transmute!(d);
    }
}

/// A 16-byte SGL descriptor (NVMe Base 2.0, 4.1.2).
///
/// `length` covers bytes 8..12 for data block, segment and transport
/// descriptors; keyed data block descriptors (RDMA) use 3 length bytes and a
/// 4-byte key instead (see [`SglDescriptor::keyed_length`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SglDescriptor {
    pub address: U64,
    pub length: U32,
    pub reserved: [u8; 3],
    /// SGL identifier: descriptor type (bits 7:4) and subtype (bits 3:0).
    pub id: u8,
}
const _: () = assert!(size_of::<SglDescriptor>() == 16);

impl SglDescriptor {
    pub fn new(kind: SglType, subtype: SglSubtype, address: u64, length: u32) -> Self {
        Self { address: U64::new(address), length: U32::new(length), reserved: [0; 3], id: ((kind as u8) << 4) | subtype as u8 }
    }

    /// The descriptor type, or the raw value when reserved.
    pub fn kind(&self) -> Result<SglType, u8> {
        SglType::from_code(self.id >> 4).ok_or(self.id >> 4)
    }

    /// The descriptor subtype, or the raw value when reserved.
    pub fn subtype(&self) -> Result<SglSubtype, u8> {
        SglSubtype::from_code(self.id & 0xf).ok_or(self.id & 0xf)
    }

    /// A keyed data block descriptor (RDMA, subtype 0h: address): `len`
    /// bytes (24 bits) of the host's memory at `address` under `key`.
    pub fn keyed(address: u64, len: u32, key: u32) -> Self {
        let l = len.to_le_bytes();
        let k = key.to_le_bytes();
        Self {
            address: U64::new(address),
            length: U32::from_bytes([l[0], l[1], l[2], k[0]]),
            reserved: [k[1], k[2], k[3]],
            id: (SglType::KeyedDataBlock as u8) << 4,
        }
    }

    /// The 24-bit length of a keyed data block descriptor.
    pub fn keyed_length(&self) -> u32 {
        let b = self.length.to_bytes();
        u32::from_le_bytes([b[0], b[1], b[2], 0])
    }

    /// The key of a keyed data block descriptor (bytes 11..15).
    pub fn key(&self) -> u32 {
        let b = self.length.to_bytes();
        u32::from_le_bytes([b[3], self.reserved[0], self.reserved[1], self.reserved[2]])
    }
}

/// SGL descriptor types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SglType {
    DataBlock = 0x0,
    BitBucket = 0x1,
    Segment = 0x2,
    LastSegment = 0x3,
    KeyedDataBlock = 0x4,
    TransportDataBlock = 0x5,
}

impl SglType {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x0 => Self::DataBlock,
            0x1 => Self::BitBucket,
            0x2 => Self::Segment,
            0x3 => Self::LastSegment,
            0x4 => Self::KeyedDataBlock,
            0x5 => Self::TransportDataBlock,
            _ => return None,
        })
    }
}

/// SGL descriptor subtypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SglSubtype {
    Address = 0x0,
    /// The address is an offset (in-capsule data on fabrics).
    Offset = 0x1,
    /// Transport specific (NVMe/TCP: data comes in H2CData PDUs).
    Transport = 0xa,
}

impl SglSubtype {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x0 => Self::Address,
            0x1 => Self::Offset,
            0xa => Self::Transport,
            _ => return None,
        })
    }
}

/// A 16-byte completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Completion {
    /// Command specific (DW0).
    pub result: U32,
    /// Command specific (DW1), reserved for most commands.
    pub dw1: U32,
    /// The submission queue head pointer after this command was fetched.
    pub sq_head: U16,
    /// The submission queue the command came from.
    pub sq_id: U16,
    pub cid: U16,
    /// Phase tag (bit 0) and status field (bits 15:1), see [`Status`].
    pub status: U16,
}
const _: () = assert!(size_of::<Completion>() == 16);

impl Completion {
    /// The phase tag, which flips each time the controller wraps the queue.
    pub fn phase(&self) -> bool {
        self.status.get() & 1 != 0
    }

    /// The decoded status field.
    pub fn status(&self) -> Status {
        Status::from_completion_field(self.status.get())
    }

    /// Sets the status field keeping the phase bit.
    pub fn set_status(&mut self, status: Status) {
        let phase = self.status.get() & 1;
        self.status.set(status.to_completion_field() | phase);
    }
}

/// Admin command opcodes.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const NAMESPACE_MANAGEMENT: u8 = 0x0d;
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    pub const FIRMWARE_IMAGE_DOWNLOAD: u8 = 0x11;
    pub const DEVICE_SELF_TEST: u8 = 0x14;
    pub const NAMESPACE_ATTACHMENT: u8 = 0x15;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const DIRECTIVE_SEND: u8 = 0x19;
    pub const DIRECTIVE_RECEIVE: u8 = 0x1a;
    pub const VIRTUALIZATION_MANAGEMENT: u8 = 0x1c;
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
    /// Fabrics commands (Connect, Property Get/Set, ...) share this opcode.
    pub const FABRICS: u8 = 0x7f;
    pub const FORMAT_NVM: u8 = 0x80;
    pub const SECURITY_SEND: u8 = 0x81;
    pub const SECURITY_RECEIVE: u8 = 0x82;
    pub const SANITIZE: u8 = 0x84;
    pub const GET_LBA_STATUS: u8 = 0x86;

    /// A name for an admin opcode, for logs and error messages.
    pub fn name(opcode: u8) -> &'static str {
        match opcode {
            DELETE_IO_SQ => "DELETE IO SQ",
            CREATE_IO_SQ => "CREATE IO SQ",
            GET_LOG_PAGE => "GET LOG PAGE",
            DELETE_IO_CQ => "DELETE IO CQ",
            CREATE_IO_CQ => "CREATE IO CQ",
            IDENTIFY => "IDENTIFY",
            ABORT => "ABORT",
            SET_FEATURES => "SET FEATURES",
            GET_FEATURES => "GET FEATURES",
            ASYNC_EVENT_REQUEST => "ASYNC EVENT REQUEST",
            NAMESPACE_MANAGEMENT => "NAMESPACE MANAGEMENT",
            FIRMWARE_COMMIT => "FIRMWARE COMMIT",
            FIRMWARE_IMAGE_DOWNLOAD => "FIRMWARE IMAGE DOWNLOAD",
            DEVICE_SELF_TEST => "DEVICE SELF-TEST",
            NAMESPACE_ATTACHMENT => "NAMESPACE ATTACHMENT",
            KEEP_ALIVE => "KEEP ALIVE",
            DIRECTIVE_SEND => "DIRECTIVE SEND",
            DIRECTIVE_RECEIVE => "DIRECTIVE RECEIVE",
            VIRTUALIZATION_MANAGEMENT => "VIRTUALIZATION MANAGEMENT",
            DOORBELL_BUFFER_CONFIG => "DOORBELL BUFFER CONFIG",
            FABRICS => "FABRICS",
            FORMAT_NVM => "FORMAT NVM",
            SECURITY_SEND => "SECURITY SEND",
            SECURITY_RECEIVE => "SECURITY RECEIVE",
            SANITIZE => "SANITIZE",
            GET_LBA_STATUS => "GET LBA STATUS",
            _ => "UNKNOWN ADMIN",
        }
    }
}

/// NVM command set I/O opcodes.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    pub const VERIFY: u8 = 0x0c;
    pub const RESERVATION_REGISTER: u8 = 0x0d;
    pub const RESERVATION_REPORT: u8 = 0x0e;
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    pub const RESERVATION_RELEASE: u8 = 0x15;
    pub const COPY: u8 = 0x19;

    /// CDW12 bit 30 of reads and writes: Force Unit Access.
    pub const CDW12_FUA: u32 = 1 << 30;
    /// CDW12 bit 31 of reads and writes: Limited Retry.
    pub const CDW12_LIMITED_RETRY: u32 = 1 << 31;
    /// CDW12 bit 25 of Write Zeroes: deallocate the blocks.
    pub const CDW12_DEAC: u32 = 1 << 25;
    /// CDW11 bit 2 of Dataset Management: Attribute - Deallocate.
    pub const DSM_ATTR_DEALLOCATE: u32 = 1 << 2;

    /// A name for an I/O opcode, for logs and error messages.
    pub fn name(opcode: u8) -> &'static str {
        match opcode {
            FLUSH => "FLUSH",
            WRITE => "WRITE",
            READ => "READ",
            WRITE_UNCORRECTABLE => "WRITE UNCORRECTABLE",
            COMPARE => "COMPARE",
            WRITE_ZEROES => "WRITE ZEROES",
            DATASET_MANAGEMENT => "DATASET MANAGEMENT",
            VERIFY => "VERIFY",
            RESERVATION_REGISTER => "RESERVATION REGISTER",
            RESERVATION_REPORT => "RESERVATION REPORT",
            RESERVATION_ACQUIRE => "RESERVATION ACQUIRE",
            RESERVATION_RELEASE => "RESERVATION RELEASE",
            COPY => "COPY",
            _ => "UNKNOWN IO",
        }
    }
}

/// A Dataset Management range (16 bytes; up to 256 per command).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: U32,
    /// Length in logical blocks.
    pub blocks: U32,
    pub slba: U64,
}
const _: () = assert!(size_of::<DsmRange>() == 16);

/// The most ranges one Dataset Management command carries.
pub const DSM_MAX_RANGES: usize = 256;

/// Feature identifiers (Get/Set Features CDW10 bits 7:0).
pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const LBA_RANGE_TYPE: u8 = 0x03;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// CDW11 / result: NSQR (bits 15:0) and NCQR (bits 31:16), zero-based.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const AUTONOMOUS_POWER_STATE_TRANSITION: u8 = 0x0c;
    pub const HOST_MEMORY_BUFFER: u8 = 0x0d;
    pub const TIMESTAMP: u8 = 0x0e;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_CONTROLLED_THERMAL_MANAGEMENT: u8 = 0x10;
    pub const NON_OPERATIONAL_POWER_STATE: u8 = 0x11;
    pub const HOST_BEHAVIOR_SUPPORT: u8 = 0x16;
    pub const SOFTWARE_PROGRESS_MARKER: u8 = 0x80;
    pub const HOST_IDENTIFIER: u8 = 0x81;
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;

    /// Get Features CDW10 bits 10:8: which value to return.
    pub const SELECT_CURRENT: u32 = 0;
    pub const SELECT_DEFAULT: u32 = 1;
    pub const SELECT_SAVED: u32 = 2;
    pub const SELECT_SUPPORTED_CAPABILITIES: u32 = 3;

    /// A name for a feature identifier, as nvme-cli prints it.
    pub fn name(fid: u8) -> &'static str {
        match fid {
            ARBITRATION => "Arbitration",
            POWER_MANAGEMENT => "Power Management",
            LBA_RANGE_TYPE => "LBA Range Type",
            TEMPERATURE_THRESHOLD => "Temperature Threshold",
            ERROR_RECOVERY => "Error Recovery",
            VOLATILE_WRITE_CACHE => "Volatile Write Cache",
            NUMBER_OF_QUEUES => "Number of Queues",
            INTERRUPT_COALESCING => "Interrupt Coalescing",
            INTERRUPT_VECTOR_CONFIG => "Interrupt Vector Configuration",
            WRITE_ATOMICITY => "Write Atomicity Normal",
            ASYNC_EVENT_CONFIG => "Async Event Configuration",
            AUTONOMOUS_POWER_STATE_TRANSITION => "Autonomous Power State Transition",
            HOST_MEMORY_BUFFER => "Host Memory Buffer",
            TIMESTAMP => "Timestamp",
            KEEP_ALIVE_TIMER => "Keep Alive Timer",
            HOST_CONTROLLED_THERMAL_MANAGEMENT => "Host Controlled Thermal Management",
            NON_OPERATIONAL_POWER_STATE => "Non-Operational Power State Config",
            HOST_BEHAVIOR_SUPPORT => "Host Behavior Support",
            SOFTWARE_PROGRESS_MARKER => "Software Progress Marker",
            HOST_IDENTIFIER => "Host Identifier",
            RESERVATION_NOTIFICATION_MASK => "Reservation Notification Mask",
            RESERVATION_PERSISTENCE => "Reservation Persistence",
            _ => "Unknown",
        }
    }
}

/// Create I/O Completion/Submission Queue CDW11 bits.
pub mod queue {
    /// Physically contiguous (both).
    pub const PC: u32 = 1 << 0;
    /// Interrupts enabled (Create I/O CQ).
    pub const IEN: u32 = 1 << 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GenericStatus, StatusCodeType};
    use zerocopy::FromBytes;

    #[test]
    fn command_layout_matches_the_spec() {
        let mut c = Command::new(io::READ);
        c.cid.set(0x1234);
        c.nsid.set(1);
        c.dptr.prp1.set(0x1122_3344_5566_7788);
        c.set_slba(0x1_0000_0002);
        c.set_nlb(8);
        c.cdw12.set(c.cdw12.get() | io::CDW12_FUA);
        let b = c.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[2..4], &[0x34, 0x12]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[40..44], &[2, 0, 0, 0]);
        assert_eq!(&b[44..48], &[1, 0, 0, 0]);
        assert_eq!(&b[48..52], &[7, 0, 0, 0x40]);
        let _ = b;
        assert_eq!(c.slba(), 0x1_0000_0002);
        assert_eq!(c.nlb(), 8);
        c.set_nlb(65536);
        assert_eq!(c.nlb(), 65536);
        assert_eq!(c.cdw12.get() & io::CDW12_FUA, io::CDW12_FUA, "set_nlb keeps FUA");
        let back = Command::read_from_bytes(c.as_bytes()).unwrap();
        assert_eq!(back.slba(), 0x1_0000_0002);
    }

    #[test]
    fn psdt_and_sgl_descriptor() {
        let mut c = Command::new(io::WRITE);
        assert_eq!(c.data_transfer(), DataTransfer::Prp);
        c.set_data_transfer(DataTransfer::SglContiguousMetadata);
        assert_eq!(c.flags, flags::PSDT_SGL);
        assert_eq!(c.data_transfer(), DataTransfer::SglContiguousMetadata);
        let d = SglDescriptor::new(SglType::TransportDataBlock, SglSubtype::Transport, 0, 8192);
        c.dptr.set_sgl(d);
        let b = c.as_bytes();
        assert_eq!(b[39], 0x5a, "SGL identifier in byte 15 of the data pointer");
        assert_eq!(&b[32..36], &8192u32.to_le_bytes());
        let back = c.dptr.sgl();
        assert_eq!(back.kind(), Ok(SglType::TransportDataBlock));
        assert_eq!(back.subtype(), Ok(SglSubtype::Transport));
        assert_eq!(back.length.get(), 8192);
        let mut raw = back;
        raw.id = 0xf7;
        assert_eq!(raw.kind(), Err(0xf));
        assert_eq!(raw.subtype(), Err(0x7));
    }

    #[test]
    fn keyed_descriptor_fields() {
        let d = SglDescriptor {
            length: U32::from_bytes([0x00, 0x10, 0x00, 0xaa]),
            reserved: [0xbb, 0xcc, 0xdd],
            id: 0x40,
            ..Default::default()
        };
        assert_eq!(d.keyed_length(), 0x1000);
        assert_eq!(d.key(), 0xddcc_bbaa);
        assert_eq!(d.kind(), Ok(SglType::KeyedDataBlock));
        let k = SglDescriptor::keyed(0x1234_5678_9abc, 0x1000, 0xddcc_bbaa);
        assert_eq!((k.address.get(), k.keyed_length(), k.key()), (0x1234_5678_9abc, 0x1000, 0xddcc_bbaa));
        assert_eq!((k.kind(), k.subtype()), (Ok(SglType::KeyedDataBlock), Ok(SglSubtype::Address)));
    }

    #[test]
    fn completion_status_and_phase() {
        let mut raw = [0u8; 16];
        raw[12..14].copy_from_slice(&7u16.to_le_bytes());
        // phase 1, SCT 0, SC 0x02 (invalid field), DNR.
        let status: u16 = 1 | (0x02 << 1) | (1 << 15);
        raw[14..16].copy_from_slice(&status.to_le_bytes());
        let c = Completion::read_from_bytes(&raw[..]).unwrap();
        assert!(c.phase());
        assert_eq!(c.cid.get(), 7);
        let s = c.status();
        assert_eq!(s.sct(), StatusCodeType::Generic);
        assert_eq!(s.generic(), Some(GenericStatus::InvalidField));
        assert!(s.dnr());
        let mut c2 = c;
        c2.set_status(Status::SUCCESS);
        assert!(c2.phase(), "set_status keeps the phase");
        assert!(c2.status().is_success());
    }

    #[test]
    fn short_buffers_are_refused() {
        assert!(Command::read_from_bytes(&[0u8; 63][..]).is_err());
        assert!(Completion::read_from_bytes(&[0u8; 15][..]).is_err());
    }
}
