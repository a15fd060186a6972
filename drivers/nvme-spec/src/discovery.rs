//! The discovery log page (log identifier 0x70; NVMe over Fabrics 1.1,
//! 5.3): a 1024-byte header followed by 1024-byte entries.

use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Log page identifier of the discovery log.
pub const LOG_ID: u8 = 0x70;

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct LogHeader {
    /// Generation counter: changes whenever the log changes.
    pub genctr: U64,
    /// Number of records (entries).
    pub numrec: U64,
    /// Record format: 0.
    pub recfmt: U16,
    pub rsvd: [u8; 1006],
}
const _: () = assert!(size_of::<LogHeader>() == 1024);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct LogEntry {
    /// Transport type: 3 = TCP.
    pub trtype: u8,
    /// Address family: 1 = IPv4, 2 = IPv6.
    pub adrfam: u8,
    /// 1 = referral to a discovery subsystem, 2 = NVM subsystem.
    pub subtype: u8,
    /// Transport requirements (secure channel, SQ flow control disable).
    pub treq: u8,
    pub portid: U16,
    /// 0xffff: dynamic controller model.
    pub cntlid: U16,
    /// Admin max submission queue size.
    pub asqsz: U16,
    pub eflags: U16,
    pub rsvd1: [u8; 20],
    pub trsvcid: [u8; 32],
    pub rsvd2: [u8; 192],
    pub subnqn: [u8; 256],
    pub traddr: [u8; 256],
    /// Transport specific address subtype; for TCP byte 0 is the security type.
    pub tsas: [u8; 256],
}
const _: () = assert!(size_of::<LogEntry>() == 1024);

pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
}

/// The RDMA transport-specific address subtype (TSAS) of a log entry.
pub mod rdma_tsas {
    /// Byte 0, RDMA QP service type: reliable connected.
    pub const QPTYPE_CONNECTED: u8 = 1;
    /// Byte 1, RDMA provider type: not specified.
    pub const PRTYPE_NOT_SPECIFIED: u8 = 1;
    /// Byte 2, RDMA connection management service: RDMA_IP_CM.
    pub const CMS_RDMA_CM: u8 = 1;
}

pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
}

pub mod subtype {
    pub const DISCOVERY_REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
}

pub mod treq {
    /// Bits 1:0 = 10b: a secure channel is not required.
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x2;
    /// Bits 1:0 = 01b: a secure channel is required.
    pub const SECURE_CHANNEL_REQUIRED: u8 = 0x1;
    /// Bit 2: the controller lets hosts disable SQ flow control.
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 0x4;
}
