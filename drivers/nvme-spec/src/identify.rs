//! Identify data structures (NVMe Base 2.0, 5.17; NVM Command Set 1.0, 4.1.5):
//! Identify Controller and Identify Namespace (4096 bytes each), the CNS
//! values that select them, LBA formats and power state descriptors.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The size of every Identify data structure.
pub const IDENTIFY_DATA_LEN: usize = 4096;

/// Controller or Namespace Structure (Identify CDW10 bits 7:0).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list: up to 1024 NSIDs above CDW1.NSID, ascending.
    pub const ACTIVE_NAMESPACE_LIST: u8 = 0x02;
    pub const NAMESPACE_DESCRIPTOR_LIST: u8 = 0x03;
    pub const NVM_SET_LIST: u8 = 0x04;
    pub const ALLOCATED_NAMESPACE_LIST: u8 = 0x10;
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    pub const NAMESPACE_ATTACHED_CONTROLLERS: u8 = 0x12;
    pub const CONTROLLER_LIST: u8 = 0x13;
}

/// The most NSIDs one active namespace list returns.
pub const NAMESPACE_LIST_LEN: usize = 1024;

/// Identify Controller data structure (CNS 01h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: U16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: U16,
    /// Serial number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI identifier.
    pub ieee: [u8; 3],
    /// Controller multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// Maximum data transfer size: 2^MDTS units of CAP.MPSMIN; 0 = no limit.
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version (same format as the VS register).
    pub ver: U32,
    pub rtd3r: U32,
    pub rtd3e: U32,
    /// Optional asynchronous events supported.
    pub oaes: U32,
    /// Controller attributes.
    pub ctratt: U32,
    pub rrls: U16,
    pub rsvd102: [u8; 9],
    /// Controller type: 1 I/O, 2 discovery, 3 administrative.
    pub cntrltype: u8,
    /// FRU globally unique identifier.
    pub fguid: [u8; 16],
    /// Command retry delay times (100 ms units).
    pub crdt: [U16; 3],
    pub rsvd134: [u8; 119],
    pub nvmsr: u8,
    pub vwci: u8,
    pub mec: u8,
    /// Optional admin command support (see [`oacs`]).
    pub oacs: U16,
    /// Abort command limit (zero-based).
    pub acl: u8,
    /// Asynchronous event request limit (zero-based).
    pub aerl: u8,
    pub frmw: u8,
    /// Log page attributes.
    pub lpa: u8,
    /// Error log page entries (zero-based).
    pub elpe: u8,
    /// Number of power states supported (zero-based).
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    /// Warning composite temperature threshold (kelvin).
    pub wctemp: U16,
    /// Critical composite temperature threshold (kelvin).
    pub cctemp: U16,
    pub mtfa: U16,
    pub hmpre: U32,
    pub hmmin: U32,
    /// Total NVM capacity (bytes, 128-bit).
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM capacity (bytes, 128-bit).
    pub unvmcap: [u8; 16],
    pub rpmbs: U32,
    pub edstt: U16,
    pub dsto: u8,
    pub fwug: u8,
    /// Keep alive support (100 ms granularity; 0 = not supported).
    pub kas: U16,
    pub hctma: U16,
    pub mntmt: U16,
    pub mxtmt: U16,
    pub sanicap: U32,
    pub hmminds: U32,
    pub hmmaxd: U16,
    pub nsetidmax: U16,
    pub endgidmax: U16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: U32,
    pub nanagrpid: U32,
    pub pels: U32,
    pub domainid: U16,
    pub rsvd358: [u8; 10],
    pub megcap: [u8; 16],
    pub rsvd384: [u8; 128],
    /// Submission queue entry size: required (bits 3:0) and maximum (7:4), log2.
    pub sqes: u8,
    /// Completion queue entry size: required (bits 3:0) and maximum (7:4), log2.
    pub cqes: u8,
    /// Maximum outstanding commands (fabrics).
    pub maxcmd: U16,
    /// Number of namespaces (the largest valid NSID).
    pub nn: U32,
    /// Optional NVM command support (see [`oncs`]).
    pub oncs: U16,
    pub fuses: U16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache: bit 0 present.
    pub vwc: u8,
    pub awun: U16,
    pub awupf: U16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: U16,
    pub ocfs: U16,
    /// SGL support (see [`sgls`]).
    pub sgls: U32,
    /// Maximum number of allowed namespaces.
    pub mnan: U32,
    pub maxdna: [u8; 16],
    pub maxcna: U32,
    pub rsvd564: [u8; 204],
    /// NVM subsystem NVMe qualified name (UTF-8, NUL padded).
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    /// Fabrics: I/O queue command capsule supported size (16-byte units).
    pub ioccsz: U32,
    /// Fabrics: I/O queue response capsule supported size (16-byte units).
    pub iorcsz: U32,
    /// Fabrics: in-capsule data offset (16-byte units).
    pub icdoff: U16,
    /// Fabrics: controller attributes (bit 0: dynamic (0) / static (1) model).
    pub fcatt: u8,
    /// Fabrics: maximum SGL data block descriptors.
    pub msdbd: u8,
    /// Fabrics: optional fabric commands supported.
    pub ofcs: U16,
    pub rsvd1806: [u8; 242],
    /// Power state descriptors 0..=31.
    pub psd: [PowerState; 32],
    pub vendor: [u8; 1024],
}
const _: () = assert!(size_of::<IdentifyController>() == IDENTIFY_DATA_LEN);

impl IdentifyController {
    /// An all-zero structure (allocated on the heap: it is 4 KiB).
    pub fn zeroed_box() -> Box<Self> {
        Box::new(Self::new_zeroed())
    }

    pub fn serial(&self) -> String {
        crate::ascii_field(&self.sn)
    }

    pub fn model(&self) -> String {
        crate::ascii_field(&self.mn)
    }

    pub fn firmware(&self) -> String {
        crate::ascii_field(&self.fr)
    }

    pub fn subsystem_nqn(&self) -> String {
        crate::ascii_field(&self.subnqn)
    }

    /// Total NVM capacity in bytes (the low 64 bits of TNVMCAP).
    pub fn total_capacity(&self) -> u128 {
        u128::from_le_bytes(self.tnvmcap)
    }

    /// The largest transfer in bytes given the controller's minimum page
    /// size, or `None` when MDTS is 0 (no limit) or says more than a
    /// `usize` holds (as good as none: `checked_shl` only refuses shifts
    /// of 64 and more, so 4096 << 52 gave 0 bytes).
    pub fn max_transfer_bytes(&self, min_page_size: usize) -> Option<usize> {
        match u32::from(self.mdts) {
            0 => None,
            n if n < min_page_size.leading_zeros() => Some(min_page_size << n),
            _ => None,
        }
    }
}

/// Bits of [`IdentifyController::oacs`].
pub mod oacs {
    pub const SECURITY: u16 = 1 << 0;
    pub const FORMAT: u16 = 1 << 1;
    pub const FIRMWARE: u16 = 1 << 2;
    pub const NAMESPACE_MANAGEMENT: u16 = 1 << 3;
    pub const SELF_TEST: u16 = 1 << 4;
    pub const DIRECTIVES: u16 = 1 << 5;
    pub const NVME_MI: u16 = 1 << 6;
    pub const VIRTUALIZATION: u16 = 1 << 7;
    pub const DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
    pub const GET_LBA_STATUS: u16 = 1 << 9;
}

/// Bits of [`IdentifyController::oncs`].
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const SAVE_SELECT: u16 = 1 << 4;
    pub const RESERVATIONS: u16 = 1 << 5;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const VERIFY: u16 = 1 << 7;
    pub const COPY: u16 = 1 << 8;
}

/// Bits of [`IdentifyController::sgls`].
pub mod sgls {
    /// Bits 1:0: 01b SGLs supported (no alignment), 10b dword aligned.
    pub const SUPPORT_MASK: u32 = 0x3;
    pub const KEYED_DATA_BLOCK: u32 = 1 << 2;
    pub const BIT_BUCKET: u32 = 1 << 16;
    pub const METADATA_BYTE_ALIGNED: u32 = 1 << 17;
    pub const LENGTH_LARGER_THAN_DATA: u32 = 1 << 18;
    pub const MPTR_SGL: u32 = 1 << 19;
    pub const ADDRESS_AS_OFFSET: u32 = 1 << 20;
    pub const TRANSPORT_DATA_BLOCK: u32 = 1 << 21;
}

/// A power state descriptor (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PowerState {
    /// Maximum power (centiwatts, or 0.0001 W when MXPS is set).
    pub mp: U16,
    pub rsvd2: u8,
    /// Bit 0 MXPS, bit 1 NOPS.
    pub flags: u8,
    /// Entry latency (us).
    pub enlat: U32,
    /// Exit latency (us).
    pub exlat: U32,
    pub rrt: u8,
    pub rrl: u8,
    pub rwt: u8,
    pub rwl: u8,
    pub idlp: U16,
    pub ips: u8,
    pub rsvd19: u8,
    pub actp: U16,
    pub apw_aps: u8,
    pub rsvd23: [u8; 9],
}
const _: () = assert!(size_of::<PowerState>() == 32);

/// An LBA format (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: U16,
    /// LBA data size, log2 (9 = 512 bytes); 0 = format not available.
    pub lbads: u8,
    /// Relative performance (bits 1:0; 0 best).
    pub rp: u8,
}
const _: () = assert!(size_of::<LbaFormat>() == 4);

impl LbaFormat {
    /// The data size in bytes, or `None` when the format is unavailable or
    /// its size is not a sane block size (below 512 B or above 2 GiB).
    pub fn block_size(&self) -> Option<u32> {
        (9..=31).contains(&self.lbads).then(|| 1u32 << self.lbads)
    }
}

/// Identify Namespace data structure for the NVM command set (CNS 00h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct IdentifyNamespace {
    /// Namespace size (logical blocks).
    pub nsze: U64,
    /// Namespace capacity (logical blocks).
    pub ncap: U64,
    /// Namespace utilization (logical blocks).
    pub nuse: U64,
    /// Namespace features (bit 0: thin provisioning, bit 2: DAE...).
    pub nsfeat: u8,
    /// Number of LBA formats (zero-based).
    pub nlbaf: u8,
    /// Formatted LBA size: format index bits 3:0 (and 6:5 above 16 formats),
    /// bit 4 metadata at the end of the data LBA.
    pub flbas: u8,
    /// Metadata capabilities.
    pub mc: u8,
    /// End-to-end data protection capabilities.
    pub dpc: u8,
    /// End-to-end data protection type settings.
    pub dps: u8,
    /// Namespace multi-path I/O and sharing capabilities.
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    pub fpi: u8,
    /// Deallocate logical block features: bits 2:0 the value read from
    /// deallocated blocks (1 = zeroes), bit 3 Write Zeroes can deallocate.
    pub dlfeat: u8,
    pub nawun: U16,
    pub nawupf: U16,
    pub nacwu: U16,
    pub nabsn: U16,
    pub nabo: U16,
    pub nabspf: U16,
    /// Namespace optimal I/O boundary (blocks).
    pub noiob: U16,
    pub nvmcap: [u8; 16],
    pub npwg: U16,
    pub npwa: U16,
    pub npdg: U16,
    pub npda: U16,
    pub nows: U16,
    pub mssrl: U16,
    pub mcl: U32,
    pub msrc: u8,
    pub rsvd81: u8,
    pub nulbaf: u8,
    pub rsvd83: [u8; 9],
    pub anagrpid: U32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: U16,
    pub endgid: U16,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; 64],
    pub vendor: [u8; 3712],
}
const _: () = assert!(size_of::<IdentifyNamespace>() == IDENTIFY_DATA_LEN);

impl IdentifyNamespace {
    pub fn zeroed_box() -> Box<Self> {
        Box::new(Self::new_zeroed())
    }

    /// The index of the formatted LBA format (FLBAS bits 3:0 and 6:5).
    pub fn format_index(&self) -> usize {
        usize::from(self.flbas & 0xf) | (usize::from((self.flbas >> 5) & 0x3) << 4)
    }

    /// The LBA format in use.
    pub fn current_format(&self) -> LbaFormat {
        self.lbaf[self.format_index()]
    }

    /// The logical block size in bytes, or `None` if the current format is
    /// not usable.
    pub fn block_size(&self) -> Option<u32> {
        self.current_format().block_size()
    }

    /// Whether deallocated blocks read back as zeroes (DLFEAT bits 2:0 = 001b).
    pub fn deallocated_reads_zeroes(&self) -> bool {
        self.dlfeat & 0x7 == 1
    }

    /// Whether Write Zeroes with DEAC deallocates (DLFEAT bit 3).
    pub fn write_zeroes_deallocates(&self) -> bool {
        self.dlfeat & 0x8 != 0
    }
}

/// Namespace identification descriptor types (CNS 03h).
pub mod nidt {
    pub const EUI64: u8 = 0x1;
    pub const NGUID: u8 = 0x2;
    pub const UUID: u8 = 0x3;
    pub const CSI: u8 = 0x4;
}

/// The header of a namespace identification descriptor; `nidl` bytes of
/// identifier follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct NamespaceIdDescriptor {
    pub nidt: u8,
    pub nidl: u8,
    pub rsvd: [u8; 2],
}
const _: () = assert!(size_of::<NamespaceIdDescriptor>() == 4);

/// The identifiers a namespace identification descriptor list (Identify
/// CNS 03h) gives; those absent are zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceIds {
    pub eui64: [u8; 8],
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
}

/// Read a namespace identification descriptor list: descriptors one after
/// another until one of type 0 (or the end of the data). A descriptor whose
/// length is not its type's, or that runs past the data, ends the list
/// there; types this does not know are skipped.
pub fn parse_namespace_ids(data: &[u8]) -> NamespaceIds {
    let mut ids = NamespaceIds::default();
    let mut at = 0usize;
    while let Some(h) = data.get(at..at + 4) {
        let (t, len) = (h[0], usize::from(h[1]));
        if t == 0 {
            break;
        }
        let Some(v) = data.get(at + 4..at + 4 + len) else { break };
        match (t, len) {
            (nidt::EUI64, 8) => ids.eui64.copy_from_slice(v),
            (nidt::NGUID, 16) => ids.nguid.copy_from_slice(v),
            (nidt::UUID, 16) => ids.uuid.copy_from_slice(v),
            (nidt::EUI64 | nidt::NGUID | nidt::UUID, _) => break,
            _ => {}
        }
        at += 4 + len;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn namespace_ids_are_read_until_the_end_and_a_bad_descriptor_ends_them() {
        let mut d = vec![0u8; 4096];
        d[..4].copy_from_slice(&[nidt::UUID, 16, 0, 0]);
        d[4..20].copy_from_slice(&[7; 16]);
        d[20..24].copy_from_slice(&[nidt::CSI, 1, 0, 0]);
        d[24] = 0;
        d[25..29].copy_from_slice(&[nidt::EUI64, 8, 0, 0]);
        d[29..37].copy_from_slice(&[9; 8]);
        let ids = parse_namespace_ids(&d);
        assert_eq!(ids, NamespaceIds { eui64: [9; 8], nguid: [0; 16], uuid: [7; 16] });
        // A UUID descriptor claiming 8 bytes ends the list; so does one that
        // runs past the data.
        d[25..29].copy_from_slice(&[nidt::NGUID, 8, 0, 0]);
        assert_eq!(parse_namespace_ids(&d).nguid, [0; 16]);
        assert_eq!(parse_namespace_ids(&d[..30]).eui64, [0; 8]);
        assert_eq!(parse_namespace_ids(&[]), NamespaceIds::default());
        assert_eq!(parse_namespace_ids(&[nidt::UUID, 16, 0]), NamespaceIds::default());
    }

    #[test]
    fn controller_field_offsets() {
        assert_eq!(offset_of!(IdentifyController, sn), 4);
        assert_eq!(offset_of!(IdentifyController, mn), 24);
        assert_eq!(offset_of!(IdentifyController, fr), 64);
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, cntlid), 78);
        assert_eq!(offset_of!(IdentifyController, ver), 80);
        assert_eq!(offset_of!(IdentifyController, ctratt), 96);
        assert_eq!(offset_of!(IdentifyController, cntrltype), 111);
        assert_eq!(offset_of!(IdentifyController, crdt), 128);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, elpe), 262);
        assert_eq!(offset_of!(IdentifyController, wctemp), 266);
        assert_eq!(offset_of!(IdentifyController, tnvmcap), 280);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, anatt), 342);
        assert_eq!(offset_of!(IdentifyController, pels), 352);
        assert_eq!(offset_of!(IdentifyController, megcap), 368);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, maxcmd), 514);
        assert_eq!(offset_of!(IdentifyController, nn), 516);
        assert_eq!(offset_of!(IdentifyController, oncs), 520);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, mnan), 540);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, ioccsz), 1792);
        assert_eq!(offset_of!(IdentifyController, iorcsz), 1796);
        assert_eq!(offset_of!(IdentifyController, icdoff), 1800);
        assert_eq!(offset_of!(IdentifyController, fcatt), 1802);
        assert_eq!(offset_of!(IdentifyController, msdbd), 1803);
        assert_eq!(offset_of!(IdentifyController, psd), 2048);
        assert_eq!(offset_of!(IdentifyController, vendor), 3072);
    }

    #[test]
    fn namespace_field_offsets() {
        assert_eq!(offset_of!(IdentifyNamespace, nsfeat), 24);
        assert_eq!(offset_of!(IdentifyNamespace, flbas), 26);
        assert_eq!(offset_of!(IdentifyNamespace, dlfeat), 33);
        assert_eq!(offset_of!(IdentifyNamespace, noiob), 46);
        assert_eq!(offset_of!(IdentifyNamespace, nvmcap), 48);
        assert_eq!(offset_of!(IdentifyNamespace, mcl), 76);
        assert_eq!(offset_of!(IdentifyNamespace, anagrpid), 92);
        assert_eq!(offset_of!(IdentifyNamespace, nsattr), 99);
        assert_eq!(offset_of!(IdentifyNamespace, nvmsetid), 100);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
        assert_eq!(offset_of!(IdentifyNamespace, vendor), 384);
    }

    #[test]
    fn parses_from_bytes_and_decodes() {
        let mut raw = vec![0u8; IDENTIFY_DATA_LEN];
        raw[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        raw[4..12].copy_from_slice(b"deadbeef");
        raw[12..24].fill(b' ');
        raw[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
        raw[38..64].fill(b' ');
        raw[77] = 7;
        raw[516..520].copy_from_slice(&256u32.to_le_bytes());
        let id = IdentifyController::read_from_bytes(&raw[..]).unwrap();
        assert_eq!(id.vid.get(), 0x1b36);
        assert_eq!(id.serial(), "deadbeef");
        assert_eq!(id.model(), "QEMU NVMe Ctrl");
        assert_eq!(id.nn.get(), 256);
        assert_eq!(id.max_transfer_bytes(4096), Some(512 * 1024));
        assert!(IdentifyController::read_from_bytes(&raw[..4095]).is_err());

        let mut ns = IdentifyNamespace::zeroed_box();
        ns.nsze.set(1 << 20);
        ns.nlbaf = 1;
        ns.flbas = 1;
        ns.lbaf[0].lbads = 9;
        ns.lbaf[1].lbads = 12;
        ns.dlfeat = 0x9;
        assert_eq!(ns.block_size(), Some(4096));
        assert!(ns.deallocated_reads_zeroes() && ns.write_zeroes_deallocates());
        ns.flbas = 0x20; // index 16 through the extended bits
        assert_eq!(ns.format_index(), 16);
        assert_eq!(ns.block_size(), None, "an empty format is not usable");
        ns.lbaf[0].lbads = 40;
        ns.flbas = 0;
        assert_eq!(ns.block_size(), None, "absurd sizes are refused");
    }
}
