//! The initiator's SCSI: the CDBs it sends (SBC-4, SPC-5), the data it
//! parses (standard INQUIRY, VPD pages 00, 80, 83, B0, B2, READ CAPACITY,
//! REPORT LUNS), the sense data it decodes, and the 8-byte LUN field.
//!
//! Pure code, no I/O. Parsers take what the target sent, honour its length
//! fields without trusting them (they clamp to the slice) and never panic.

use std::fmt;

/// SCSI status bytes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// The name of a status byte, as SAM-5 spells it.
pub fn status_name(s: u8) -> &'static str {
    match s {
        status::GOOD => "GOOD",
        status::CHECK_CONDITION => "CHECK CONDITION",
        status::CONDITION_MET => "CONDITION MET",
        status::BUSY => "BUSY",
        status::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
        status::TASK_SET_FULL => "TASK SET FULL",
        status::ACA_ACTIVE => "ACA ACTIVE",
        status::TASK_ABORTED => "TASK ABORTED",
        _ => "unknown status",
    }
}

/// Sense keys (SPC-5 table 49).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const BLANK_CHECK: u8 = 0x8;
    pub const VENDOR_SPECIFIC: u8 = 0x9;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const VOLUME_OVERFLOW: u8 = 0xd;
    pub const MISCOMPARE: u8 = 0xe;
    pub const COMPLETED: u8 = 0xf;
}

/// Decoded sense data: sense key, additional sense code and qualifier, and
/// the information field (an LBA or offset) when the target marked it valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u64>,
}

impl Sense {
    /// Decode sense data in fixed (0x70/0x71) or descriptor (0x72/0x73)
    /// format: the bytes after iSCSI's 2-byte SenseLength. None if too short
    /// to hold the sense key or the response code is unknown. Bytes beyond
    /// the ADDITIONAL SENSE LENGTH are ignored; fields past it read as 0.
    pub fn parse(b: &[u8]) -> Option<Sense> {
        let code = *b.first()? & 0x7f;
        // ADDITIONAL SENSE LENGTH is byte 7 in both formats.
        let b = match b.get(7) {
            Some(&n) => &b[..b.len().min(8 + usize::from(n))],
            None => b,
        };
        match code {
            0x70 | 0x71 => {
                let key = *b.get(2)? & 0x0f;
                let information = (b[0] & 0x80 != 0 && b.len() >= 7).then(|| u64::from(be32(b, 3)));
                Some(Sense { key, asc: byte(b, 12), ascq: byte(b, 13), information })
            }
            0x72 | 0x73 => {
                if b.len() < 4 {
                    return None;
                }
                let mut information = None;
                let mut off = 8;
                while off + 2 <= b.len() {
                    let (kind, len) = (b[off], b[off + 1]);
                    let end = off + 2 + usize::from(len);
                    if end > b.len() {
                        break;
                    }
                    // Information descriptor (type 0): VALID bit, 8-byte field.
                    if kind == 0x00 && len == 0x0a && b[off + 2] & 0x80 != 0 {
                        information = Some(be64(b, off + 4));
                    }
                    off = end;
                }
                Some(Sense { key: b[1] & 0x0f, asc: b[2], ascq: b[3], information })
            }
            _ => None,
        }
    }

    /// The sense key's name ("ILLEGAL REQUEST").
    pub fn key_name(&self) -> &'static str {
        match self.key {
            key::NO_SENSE => "NO SENSE",
            key::RECOVERED_ERROR => "RECOVERED ERROR",
            key::NOT_READY => "NOT READY",
            key::MEDIUM_ERROR => "MEDIUM ERROR",
            key::HARDWARE_ERROR => "HARDWARE ERROR",
            key::ILLEGAL_REQUEST => "ILLEGAL REQUEST",
            key::UNIT_ATTENTION => "UNIT ATTENTION",
            key::DATA_PROTECT => "DATA PROTECT",
            key::BLANK_CHECK => "BLANK CHECK",
            key::VENDOR_SPECIFIC => "VENDOR SPECIFIC",
            key::COPY_ABORTED => "COPY ABORTED",
            key::ABORTED_COMMAND => "ABORTED COMMAND",
            key::VOLUME_OVERFLOW => "VOLUME OVERFLOW",
            key::MISCOMPARE => "MISCOMPARE",
            key::COMPLETED => "COMPLETED",
            _ => "reserved sense key",
        }
    }

    /// The name of the ASC/ASCQ pair, if it is one an initiator commonly meets.
    pub fn asc_name(&self) -> Option<&'static str> {
        asc_name(self.asc, self.ascq)
    }
}

/// SPC-5 Annex F names of the ASC/ASCQ pairs an initiator commonly meets.
pub fn asc_name(asc: u8, ascq: u8) -> Option<&'static str> {
    Some(match (asc, ascq) {
        (0x00, 0x00) => "NO ADDITIONAL SENSE INFORMATION",
        (0x04, 0x00) => "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE",
        (0x04, 0x01) => "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
        (0x04, 0x02) => "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
        (0x04, 0x03) => "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
        (0x04, 0x04) => "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS",
        (0x04, 0x05) => "LOGICAL UNIT NOT READY, REBUILD IN PROGRESS",
        (0x04, 0x06) => "LOGICAL UNIT NOT READY, RECALCULATION IN PROGRESS",
        (0x04, 0x07) => "LOGICAL UNIT NOT READY, OPERATION IN PROGRESS",
        (0x04, 0x08) => "LOGICAL UNIT NOT READY, LONG WRITE IN PROGRESS",
        (0x04, 0x09) => "LOGICAL UNIT NOT READY, SELF-TEST IN PROGRESS",
        (0x04, 0x0a) => "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
        (0x04, 0x0b) => "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
        (0x04, 0x0c) => "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
        (0x0c, 0x00) => "WRITE ERROR",
        (0x11, 0x00) => "UNRECOVERED READ ERROR",
        (0x1a, 0x00) => "PARAMETER LIST LENGTH ERROR",
        (0x1d, 0x00) => "MISCOMPARE DURING VERIFY OPERATION",
        (0x20, 0x00) => "INVALID COMMAND OPERATION CODE",
        (0x21, 0x00) => "LOGICAL BLOCK ADDRESS OUT OF RANGE",
        (0x24, 0x00) => "INVALID FIELD IN CDB",
        (0x25, 0x00) => "LOGICAL UNIT NOT SUPPORTED",
        (0x26, 0x00) => "INVALID FIELD IN PARAMETER LIST",
        (0x27, 0x00) => "WRITE PROTECTED",
        (0x27, 0x07) => "SPACE ALLOCATION FAILED WRITE PROTECT",
        (0x28, 0x00) => "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED",
        (0x29, 0x00) => "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
        (0x29, 0x01) => "POWER ON OCCURRED",
        (0x29, 0x02) => "SCSI BUS RESET OCCURRED",
        (0x29, 0x03) => "BUS DEVICE RESET FUNCTION OCCURRED",
        (0x29, 0x04) => "DEVICE INTERNAL RESET",
        (0x29, 0x05) => "TRANSCEIVER MODE CHANGED TO SINGLE-ENDED",
        (0x29, 0x06) => "TRANSCEIVER MODE CHANGED TO LVD",
        (0x29, 0x07) => "I_T NEXUS LOSS OCCURRED",
        (0x2a, 0x01) => "MODE PARAMETERS CHANGED",
        (0x2a, 0x03) => "RESERVATIONS PREEMPTED",
        (0x2a, 0x04) => "RESERVATIONS RELEASED",
        (0x2a, 0x05) => "REGISTRATIONS PREEMPTED",
        (0x2a, 0x06) => "ASYMMETRIC ACCESS STATE CHANGED",
        (0x2a, 0x09) => "CAPACITY DATA HAS CHANGED",
        (0x2f, 0x00) => "COMMANDS CLEARED BY ANOTHER INITIATOR",
        (0x38, 0x07) => "THIN PROVISIONING SOFT THRESHOLD REACHED",
        (0x3a, 0x00) => "MEDIUM NOT PRESENT",
        (0x3f, 0x03) => "INQUIRY DATA HAS CHANGED",
        (0x3f, 0x0e) => "REPORTED LUNS DATA HAS CHANGED",
        (0x44, 0x00) => "INTERNAL TARGET FAILURE",
        (0x47, 0x00) => "SCSI PARITY ERROR",
        (0x47, 0x05) => "PROTOCOL SERVICE CRC ERROR",
        (0x49, 0x00) => "INVALID MESSAGE ERROR",
        (0x4b, 0x00) => "DATA PHASE ERROR",
        (0x4b, 0x02) => "TOO MUCH WRITE DATA",
        (0x4b, 0x03) => "ACK/NAK TIMEOUT",
        (0x4b, 0x04) => "NAK RECEIVED",
        (0x4b, 0x05) => "DATA OFFSET ERROR",
        (0x4b, 0x06) => "INITIATOR RESPONSE TIMEOUT",
        (0x55, 0x03) => "INSUFFICIENT RESOURCES",
        _ => return None,
    })
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.asc_name() {
            Some(name) => write!(f, "{}: {name} (ASC 0x{:02x}, ASCQ 0x{:02x})", self.key_name(), self.asc, self.ascq),
            None => write!(f, "{}: ASC 0x{:02x}, ASCQ 0x{:02x}", self.key_name(), self.asc, self.ascq),
        }
    }
}

/// Operation codes of the commands built here (SPC-5, SBC-4).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const INQUIRY: u8 = 0x12;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const UNMAP: u8 = 0x42;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// SERVICE ACTION IN (16) service action.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
}

/// A CDB and its length (6, 10, 12 or 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cdb {
    pub bytes: [u8; 16],
    pub len: u8,
}

impl Cdb {
    fn new(opcode: u8, len: u8) -> Cdb {
        let mut bytes = [0; 16];
        bytes[0] = opcode;
        Cdb { bytes, len }
    }

    fn put(&mut self, at: usize, field: &[u8]) {
        self.bytes[at..at + field.len()].copy_from_slice(field);
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// The first `len` bytes (at most 16).
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(16)]
    }
}

pub fn test_unit_ready() -> Cdb {
    Cdb::new(op::TEST_UNIT_READY, 6)
}

/// INQUIRY: standard data, or the VPD page `page` (EVPD=1).
pub fn inquiry(page: Option<u8>, alloc: u16) -> Cdb {
    let mut c = Cdb::new(op::INQUIRY, 6);
    if let Some(p) = page {
        c.bytes[1] = 0x01;
        c.bytes[2] = p;
    }
    c.put(3, &alloc.to_be_bytes());
    c
}

pub fn read_capacity10() -> Cdb {
    Cdb::new(op::READ_CAPACITY_10, 10)
}

/// SERVICE ACTION IN (16) / READ CAPACITY (16).
pub fn read_capacity16(alloc: u32) -> Cdb {
    let mut c = Cdb::new(op::SERVICE_ACTION_IN_16, 16);
    c.bytes[1] = op::SAI_READ_CAPACITY_16;
    c.put(10, &alloc.to_be_bytes());
    c
}

/// REPORT LUNS, SELECT REPORT 0 (all LUNs addressable through this nexus).
pub fn report_luns(alloc: u32) -> Cdb {
    let mut c = Cdb::new(op::REPORT_LUNS, 12);
    c.put(6, &alloc.to_be_bytes());
    c
}

/// Whether a (lba, blocks) pair fits the 10-byte form.
fn fits10(lba: u64, blocks: u32) -> bool {
    lba <= u64::from(u32::MAX) && blocks <= u32::from(u16::MAX)
}

/// The 10-byte (LBA 2-5, length 7-8) or 16-byte (LBA 2-9, length 10-13) form.
fn rw(op10: u8, op16: u8, use10: bool, lba: u64, blocks: u32) -> Cdb {
    if use10 {
        let mut c = Cdb::new(op10, 10);
        c.put(2, &(lba as u32).to_be_bytes());
        c.put(7, &(blocks as u16).to_be_bytes());
        c
    } else {
        let mut c = Cdb::new(op16, 16);
        c.put(2, &lba.to_be_bytes());
        c.put(10, &blocks.to_be_bytes());
        c
    }
}

/// READ(10) when the LBA and a nonzero length fit, else READ(16).
pub fn read(lba: u64, blocks: u32) -> Cdb {
    rw(op::READ_10, op::READ_16, blocks > 0 && fits10(lba, blocks), lba, blocks)
}

/// WRITE(10) or WRITE(16) as [`read`] chooses; FUA is bit 3 of byte 1.
pub fn write(lba: u64, blocks: u32, fua: bool) -> Cdb {
    let mut c = rw(op::WRITE_10, op::WRITE_16, blocks > 0 && fits10(lba, blocks), lba, blocks);
    if fua {
        c.bytes[1] |= 0x08;
    }
    c
}

/// SYNCHRONIZE CACHE(10) when it fits, else (16); 0 blocks means to the end.
pub fn synchronize_cache(lba: u64, blocks: u32) -> Cdb {
    rw(op::SYNCHRONIZE_CACHE_10, op::SYNCHRONIZE_CACHE_16, fits10(lba, blocks), lba, blocks)
}

/// WRITE SAME(16); UNMAP is bit 3 of byte 1. Data-out is one block.
pub fn write_same16(lba: u64, blocks: u32, unmap: bool) -> Cdb {
    let mut c = rw(0, op::WRITE_SAME_16, false, lba, blocks);
    if unmap {
        c.bytes[1] |= 0x08;
    }
    c
}

/// UNMAP with a parameter list of `param_len` bytes (see [`unmap_parameters`]).
pub fn unmap(param_len: u16) -> Cdb {
    let mut c = Cdb::new(op::UNMAP, 10);
    c.put(7, &param_len.to_be_bytes());
    c
}

/// The most block descriptors an UNMAP parameter list's 16-bit lengths hold.
pub const UNMAP_MAX_DESCRIPTORS: usize = (u16::MAX as usize - 6) / 16;

/// The UNMAP parameter list (SBC-4 5.32.2) for these (lba, blocks) ranges:
/// an 8-byte header (UNMAP DATA LENGTH, BLOCK DESCRIPTOR DATA LENGTH), then
/// a 16-byte descriptor per range.
///
/// # Panics
///
/// If there are more than [`UNMAP_MAX_DESCRIPTORS`] ranges; callers split
/// by the target's MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT, which is smaller.
pub fn unmap_parameters(ranges: &[(u64, u32)]) -> Vec<u8> {
    assert!(ranges.len() <= UNMAP_MAX_DESCRIPTORS, "{} UNMAP ranges, at most {UNMAP_MAX_DESCRIPTORS}", ranges.len());
    let descriptors = (16 * ranges.len()) as u16;
    let mut p = Vec::with_capacity(8 + 16 * ranges.len());
    p.extend_from_slice(&(descriptors + 6).to_be_bytes());
    p.extend_from_slice(&descriptors.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    for &(lba, blocks) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&blocks.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

/// The highest LUN with a flat space address; above it [`encode_lun`] uses
/// extended flat space addressing.
pub const MAX_FLAT_LUN: u16 = 0x3fff;

/// The 8-byte LUN field (SAM-5 4.7) for a LUN number: peripheral device
/// addressing below 256, flat space addressing (0x40 | high bits) up to
/// 16383, and extended flat space addressing (0xd2, 24-bit) above.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut b = [0; 8];
    let [hi, lo] = lun.to_be_bytes();
    if lun < 256 {
        b[1] = lo;
    } else if lun <= MAX_FLAT_LUN {
        b[0] = 0x40 | hi;
        b[1] = lo;
    } else {
        b[0] = 0xd2;
        b[2] = hi;
        b[3] = lo;
    }
    b
}

/// The LUN number of a single-level LUN field in peripheral (bus 0), flat
/// or extended flat space addressing; None for other methods, hierarchical
/// LUNs, and numbers beyond u16.
pub fn decode_lun(b: &[u8; 8]) -> Option<u16> {
    let (first, rest) = match b[0] {
        0x00 => (u16::from(b[1]), &b[2..]),
        0x40..=0x7f => (u16::from_be_bytes([b[0] & 0x3f, b[1]]), &b[2..]),
        0xd2 if b[1] == 0 => (u16::from_be_bytes([b[2], b[3]]), &b[4..]),
        _ => return None,
    };
    rest.iter().all(|&x| x == 0).then_some(first)
}

/// Why data from the target could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{what}: {len} bytes, at least {need} needed")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("{0}")]
    Invalid(String),
}

fn need(b: &[u8], what: &'static str, need: usize) -> Result<(), ParseError> {
    if b.len() < need { Err(ParseError::Short { what, len: b.len(), need }) } else { Ok(()) }
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// Big-endian field readers: 0 when the field is not wholly inside `b`.
fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).and_then(|s| s.try_into().ok()).map_or(0, u16::from_be_bytes)
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_be_bytes)
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// Printable ASCII, other bytes as '?', trailing spaces and NULs dropped.
fn ascii(b: &[u8]) -> String {
    let end = b.iter().rposition(|&c| c != b' ' && c != 0).map_or(0, |i| i + 1);
    b[..end].iter().map(|&c| if (0x20..0x7f).contains(&c) { char::from(c) } else { '?' }).collect()
}

/// A VPD page checked for its page code, cut to its PAGE LENGTH (bytes
/// 2-3) or the slice, whichever is shorter. Offsets stay those of the page.
fn vpd_page<'a>(b: &'a [u8], page: u8, what: &'static str) -> Result<&'a [u8], ParseError> {
    need(b, what, 4)?;
    if b[1] != page {
        return Err(ParseError::Invalid(format!("{what}: page code 0x{:02x}, expected 0x{page:02x}", b[1])));
    }
    Ok(&b[..b.len().min(4 + usize::from(be16(b, 2)))])
}

/// Standard INQUIRY data (SPC-5 6.7.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandardInquiry {
    pub qualifier: u8,
    pub device_type: u8,
    pub removable: bool,
    pub version: u8,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

/// Decode the first 36 bytes of standard INQUIRY data.
pub fn parse_inquiry(b: &[u8]) -> Result<StandardInquiry, ParseError> {
    need(b, "standard INQUIRY data", 36)?;
    Ok(StandardInquiry {
        qualifier: b[0] >> 5,
        device_type: b[0] & 0x1f,
        removable: b[1] & 0x80 != 0,
        version: b[2],
        vendor: ascii(&b[8..16]),
        product: ascii(&b[16..32]),
        revision: ascii(&b[32..36]),
    })
}

/// The page codes listed by the Supported VPD Pages page (0x00).
pub fn parse_supported_vpd(b: &[u8]) -> Result<Vec<u8>, ParseError> {
    Ok(vpd_page(b, 0x00, "Supported VPD Pages")?[4..].to_vec())
}

/// The product serial number from the Unit Serial Number page (0x80),
/// without leading or trailing spaces (nor trailing NULs).
pub fn parse_unit_serial(b: &[u8]) -> Result<String, ParseError> {
    let p = vpd_page(b, 0x80, "Unit Serial Number")?;
    Ok(ascii(&p[4..]).trim_start().to_string())
}

/// One designation descriptor of the Device Identification page (0x83).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Designator {
    /// 1 binary, 2 ASCII, 3 UTF-8.
    pub code_set: u8,
    /// 0 logical unit, 1 target port, 2 target device.
    pub association: u8,
    /// Designator type: 1 T10 vendor ID, 2 EUI-64, 3 NAA, 8 SCSI name string, ...
    pub kind: u8,
    pub value: Vec<u8>,
}

impl Designator {
    /// `naa.<hex>`, `eui.<hex>`, `t10.<ascii>`, the SCSI name string as
    /// is, otherwise `type<N>.<hex>`.
    pub fn display(&self) -> String {
        let hex = || self.value.iter().map(|x| format!("{x:02x}")).collect::<String>();
        match self.kind {
            1 => format!("t10.{}", ascii(&self.value)),
            2 => format!("eui.{}", hex()),
            3 => format!("naa.{}", hex()),
            // NUL-terminated and NUL-padded to a multiple of 4 bytes.
            8 => ascii(&self.value),
            n => format!("type{n}.{}", hex()),
        }
    }
}

/// The designators of the Device Identification page (0x83). A descriptor
/// running past the page ends the walk without an error.
pub fn parse_device_id(b: &[u8]) -> Result<Vec<Designator>, ParseError> {
    let p = vpd_page(b, 0x83, "Device Identification")?;
    let mut out = Vec::new();
    let mut off = 4;
    while off + 4 <= p.len() {
        let end = off + 4 + usize::from(p[off + 3]);
        if end > p.len() {
            break;
        }
        out.push(Designator {
            code_set: p[off] & 0x0f,
            association: (p[off + 1] >> 4) & 0x03,
            kind: p[off + 1] & 0x0f,
            value: p[off + 4..end].to_vec(),
        });
        off = end;
    }
    Ok(out)
}

/// The Block Limits page (0xB0) fields an initiator uses, in blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLimits {
    pub max_transfer_blocks: u32,
    pub optimal_transfer_blocks: u32,
    pub max_unmap_blocks: u32,
    pub max_unmap_descriptors: u32,
    /// OPTIMAL UNMAP GRANULARITY.
    pub unmap_granularity: u32,
    pub max_write_same_blocks: u64,
}

/// Decode the Block Limits page (SBC-4 6.6.4). Fields beyond a short page
/// (SBC-2 targets send 0x10 bytes) are 0, meaning "not reported".
pub fn parse_block_limits(b: &[u8]) -> Result<BlockLimits, ParseError> {
    let p = vpd_page(b, 0xb0, "Block Limits")?;
    Ok(BlockLimits {
        max_transfer_blocks: be32(p, 8),
        optimal_transfer_blocks: be32(p, 12),
        max_unmap_blocks: be32(p, 20),
        max_unmap_descriptors: be32(p, 24),
        unmap_granularity: be32(p, 28),
        max_write_same_blocks: be64(p, 36),
    })
}

/// The Logical Block Provisioning page (0xB2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    /// UNMAP supported.
    pub lbpu: bool,
    /// WRITE SAME(16) with UNMAP supported.
    pub lbpws: bool,
    /// WRITE SAME(10) with UNMAP supported.
    pub lbpws10: bool,
    /// Unmapped blocks read as zeros.
    pub lbprz: bool,
    /// 0 not reported, 1 resource provisioned, 2 thin provisioned.
    pub provisioning_type: u8,
}

/// Decode the Logical Block Provisioning page (SBC-4 6.6.6). Byte 5 holds
/// LBPU (bit 7), LBPWS (6), LBPWS10 (5) and the 3-bit LBPRZ field (4-2),
/// whose xx1b values mean unmapped blocks read as zeros.
pub fn parse_provisioning(b: &[u8]) -> Result<Provisioning, ParseError> {
    let p = vpd_page(b, 0xb2, "Logical Block Provisioning")?;
    need(p, "Logical Block Provisioning", 7)?;
    Ok(Provisioning {
        lbpu: p[5] & 0x80 != 0,
        lbpws: p[5] & 0x40 != 0,
        lbpws10: p[5] & 0x20 != 0,
        lbprz: p[5] & 0x04 != 0,
        provisioning_type: p[6] & 0x07,
    })
}

/// What READ CAPACITY reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub num_blocks: u64,
    pub block_size: u32,
    /// Logical block provisioning management enabled (thin).
    pub lbpme: bool,
    /// Unmapped blocks read as zeros.
    pub lbprz: bool,
}

fn capacity(last_lba: u64, block_size: u32, lbpme: bool, lbprz: bool) -> Result<Capacity, ParseError> {
    let num_blocks =
        last_lba.checked_add(1).ok_or_else(|| ParseError::Invalid(format!("READ CAPACITY: last LBA 0x{last_lba:x} overflows")))?;
    if block_size == 0 {
        return Err(ParseError::Invalid("READ CAPACITY: block length 0".into()));
    }
    if !pollux_core::bdev::exportable_block_size(block_size) {
        return Err(ParseError::Invalid(format!(
            "READ CAPACITY: {block_size}-byte blocks (Pollux takes {})",
            pollux_core::bdev::exportable_block_sizes()
        )));
    }
    if num_blocks.checked_mul(u64::from(block_size)).is_none() {
        return Err(ParseError::Invalid(format!("READ CAPACITY: {num_blocks} blocks of {block_size} bytes do not fit in 64 bits")));
    }
    Ok(Capacity { num_blocks, block_size, lbpme, lbprz })
}

/// Decode READ CAPACITY(16) parameter data (SBC-4 5.20.2).
pub fn parse_read_capacity16(b: &[u8]) -> Result<Capacity, ParseError> {
    need(b, "READ CAPACITY(16) data", 32)?;
    capacity(be64(b, 0), be32(b, 8), b[14] & 0x80 != 0, b[14] & 0x40 != 0)
}

/// Decode READ CAPACITY(10) parameter data (SBC-4 5.19.2). A last LBA of
/// 0xffffffff (too many blocks for this form) is Invalid: use (16).
pub fn parse_read_capacity10(b: &[u8]) -> Result<Capacity, ParseError> {
    need(b, "READ CAPACITY(10) data", 8)?;
    let last = be32(b, 0);
    if last == u32::MAX {
        return Err(ParseError::Invalid("READ CAPACITY(10): capacity needs READ CAPACITY(16)".into()));
    }
    capacity(u64::from(last), be32(b, 4), false, false)
}

/// The most LUNs [`parse_report_luns`] returns.
pub const MAX_REPORTED_LUNS: usize = 16384;

/// The LUN fields of REPORT LUNS parameter data (SPC-5 6.33.2), as many as
/// the LUN LIST LENGTH and the slice both hold, at most [`MAX_REPORTED_LUNS`].
pub fn parse_report_luns(b: &[u8]) -> Result<Vec<[u8; 8]>, ParseError> {
    need(b, "REPORT LUNS data", 8)?;
    let listed = usize::try_from(be32(b, 0)).unwrap_or(usize::MAX) / 8;
    let n = listed.min((b.len() - 8) / 8).min(MAX_REPORTED_LUNS);
    Ok(b[8..8 + 8 * n].chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|x| u8::from_str_radix(x, 16).unwrap()).collect()
    }

    fn is(c: Cdb, bytes: &str) {
        assert_eq!(c.as_slice(), hex(bytes), "{c:?}");
        assert_eq!(usize::from(c.len), c.as_slice().len());
    }

    #[test]
    fn status_names() {
        assert_eq!(status_name(status::CHECK_CONDITION), "CHECK CONDITION");
        assert_eq!(status_name(status::RESERVATION_CONFLICT), "RESERVATION CONFLICT");
        assert_eq!(status_name(status::TASK_SET_FULL), "TASK SET FULL");
        assert_eq!(status_name(0x01), "unknown status");
    }

    #[test]
    fn small_cdbs() {
        is(test_unit_ready(), "00 00 00 00 00 00");
        is(inquiry(None, 36), "12 00 00 00 24 00");
        is(inquiry(Some(0x83), 0x1000), "12 01 83 10 00 00");
        is(inquiry(Some(0x00), 0xff), "12 01 00 00 ff 00");
        is(read_capacity10(), "25 00 00 00 00 00 00 00 00 00");
        is(read_capacity16(32), "9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00");
        is(report_luns(0x1000), "a0 00 00 00 00 00 00 00 10 00 00 00");
        is(unmap(24), "42 00 00 00 00 00 00 00 18 00");
        is(write_same16(0x1000, 0x800, true), "93 08 00 00 00 00 00 00 10 00 00 00 08 00 00 00");
        is(write_same16(0x0102_0304_0506_0708, 1, false), "93 00 01 02 03 04 05 06 07 08 00 00 00 01 00 00");
        assert_eq!(read(0, 1).opcode(), op::READ_10);
    }

    #[test]
    fn read_write_pick_10_or_16() {
        is(read(0x1234_5678, 8), "28 00 12 34 56 78 00 00 08 00");
        is(read(u64::from(u32::MAX), 65535), "28 00 ff ff ff ff 00 ff ff 00");
        is(read(0, 65536), "88 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00");
        is(read(1 << 32, 1), "88 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00");
        is(read(7, 0), "88 00 00 00 00 00 00 00 00 07 00 00 00 00 00 00");
        is(write(0x1234_5678, 8, false), "2a 00 12 34 56 78 00 00 08 00");
        is(write(0x1234_5678, 8, true), "2a 08 12 34 56 78 00 00 08 00");
        is(write(1 << 32, 0x10000, true), "8a 08 00 00 00 01 00 00 00 00 00 01 00 00 00 00");
        is(synchronize_cache(0, 0), "35 00 00 00 00 00 00 00 00 00");
        is(synchronize_cache(0x10, 0x20), "35 00 00 00 00 10 00 00 20 00");
        is(synchronize_cache(1 << 40, 0), "91 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00");
        is(synchronize_cache(0, 0x1_0000), "91 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00");
    }

    #[test]
    fn unmap_parameter_list() {
        let p = unmap_parameters(&[(0x1000, 0x800), (1 << 33, 1)]);
        assert_eq!(
            p,
            hex("00 26 00 20 00 00 00 00 \
                 00 00 00 00 00 00 10 00 00 00 08 00 00 00 00 00 \
                 00 00 00 02 00 00 00 00 00 00 00 01 00 00 00 00")
        );
        assert_eq!(unmap_parameters(&[]), hex("00 06 00 00 00 00 00 00"));
        let max = unmap_parameters(&vec![(0, 1); UNMAP_MAX_DESCRIPTORS]);
        assert_eq!(usize::from(u16::from_be_bytes([max[0], max[1]])) + 2, max.len());
    }

    #[test]
    fn fixed_sense_with_information() {
        // LIO: LBA out of range at 0x1000, VALID set.
        let s = Sense::parse(&hex("f0 00 05 00 00 10 00 0a 00 00 00 00 21 00 00 00 00 00")).unwrap();
        assert_eq!(s, Sense { key: key::ILLEGAL_REQUEST, asc: 0x21, ascq: 0x00, information: Some(0x1000) });
        assert_eq!(s.key_name(), "ILLEGAL REQUEST");
        assert_eq!(s.to_string(), "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (ASC 0x21, ASCQ 0x00)");
        // No VALID bit: the information field is not reported.
        let s = Sense::parse(&hex("70 00 06 00 00 00 05 0a 00 00 00 00 29 07 00 00 00 00")).unwrap();
        assert_eq!((s.key, s.asc, s.ascq, s.information), (key::UNIT_ATTENTION, 0x29, 0x07, None));
        assert_eq!(s.to_string(), "UNIT ATTENTION: I_T NEXUS LOSS OCCURRED (ASC 0x29, ASCQ 0x07)");
        // Deferred error, and bytes beyond ADDITIONAL SENSE LENGTH ignored.
        let s = Sense::parse(&hex("71 00 03 00 00 00 00 04 00 00 00 00 11 00")).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (key::MEDIUM_ERROR, 0, 0));
    }

    #[test]
    fn descriptor_sense_with_information() {
        // Sense-key specific descriptor, then information 0x12345678.
        let b = hex("72 03 11 00 00 00 00 14 02 06 00 00 80 00 10 00 00 0a 80 00 00 00 00 00 12 34 56 78");
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s, Sense { key: key::MEDIUM_ERROR, asc: 0x11, ascq: 0x00, information: Some(0x1234_5678) });
        assert_eq!(s.to_string(), "MEDIUM ERROR: UNRECOVERED READ ERROR (ASC 0x11, ASCQ 0x00)");
        // The information descriptor cut off by the slice, then by the length.
        assert_eq!(Sense::parse(&b[..b.len() - 1]).unwrap().information, None);
        let mut short = b.clone();
        short[7] = 8;
        assert_eq!(Sense::parse(&short).unwrap().information, None);
        let s = Sense::parse(&hex("72 05 99 01 00 00 00 00")).unwrap();
        assert_eq!(s.to_string(), "ILLEGAL REQUEST: ASC 0x99, ASCQ 0x01");
        assert_eq!(s.asc_name(), None);
    }

    #[test]
    fn sense_rejects_junk() {
        assert_eq!(Sense::parse(&[]), None);
        assert_eq!(Sense::parse(&[0x70, 0x00]), None);
        assert_eq!(Sense::parse(&[0x72, 0x05, 0x24]), None);
        assert_eq!(Sense::parse(&hex("7f 00 05 00 00 00 00 0a 00 00 00 00 24 00")), None);
        assert_eq!(Sense::parse(&hex("00 00 05 00")), None);
    }

    #[test]
    fn inquiry_lio_and_tgt() {
        let mut b = hex("00 00 06 12 5b 00 10 02");
        b.extend_from_slice(b"LIO-ORG disk0           4.0 ");
        b.resize(96, 0);
        let i = parse_inquiry(&b).unwrap();
        assert_eq!((i.qualifier, i.device_type, i.removable, i.version), (0, 0, false, 6));
        assert_eq!((i.vendor.as_str(), i.product.as_str(), i.revision.as_str()), ("LIO-ORG", "disk0", "4.0"));

        let mut b = hex("00 80 05 02 1f 00 00 02");
        b.extend_from_slice(b"IET     VIRTUAL-DISK    0001");
        let i = parse_inquiry(&b).unwrap();
        assert!(i.removable);
        assert_eq!((i.vendor.as_str(), i.product.as_str(), i.revision.as_str()), ("IET", "VIRTUAL-DISK", "0001"));

        b[0] = 0x7f;
        b[16] = 0xff;
        b[31] = 0;
        let i = parse_inquiry(&b).unwrap();
        assert_eq!((i.qualifier, i.device_type, i.product.as_str()), (3, 0x1f, "?IRTUAL-DISK"));
        assert_eq!(parse_inquiry(&b[..35]), Err(ParseError::Short { what: "standard INQUIRY data", len: 35, need: 36 }));
    }

    #[test]
    fn supported_vpd_pages() {
        let b = hex("00 00 00 07 00 80 83 86 b0 b1 b2");
        assert_eq!(parse_supported_vpd(&b).unwrap(), vec![0x00, 0x80, 0x83, 0x86, 0xb0, 0xb1, 0xb2]);
        // PAGE LENGTH clamped to the slice, and honoured when shorter.
        assert_eq!(parse_supported_vpd(&hex("00 00 00 40 00 80")).unwrap(), vec![0x00, 0x80]);
        assert_eq!(parse_supported_vpd(&hex("00 00 00 01 00 80 83")).unwrap(), vec![0x00]);
        assert!(matches!(parse_supported_vpd(&hex("00 80 00 01 00")), Err(ParseError::Invalid(_))));
        assert!(matches!(parse_supported_vpd(&[0, 0, 0]), Err(ParseError::Short { .. })));
    }

    #[test]
    fn unit_serial_lio() {
        // LIO counts the terminating NUL in the page length.
        let mut b = hex("00 80 00 25");
        b.extend_from_slice(b"b1c9f6f2-0c5f-4dbb-9a1e-8f1f3d5e2a10\0");
        assert_eq!(parse_unit_serial(&b).unwrap(), "b1c9f6f2-0c5f-4dbb-9a1e-8f1f3d5e2a10");
        let mut b = hex("00 80 00 08");
        b.extend_from_slice(b"  beaf11");
        assert_eq!(parse_unit_serial(&b).unwrap(), "beaf11");
    }

    fn lio_device_id() -> Vec<u8> {
        let mut p = hex("00 83 00 00");
        // NAA IEEE Registered Extended, LU.
        p.extend(hex("01 03 00 10 60 01 40 5b 1c 9f 6f 20 c5 f4 db b9 a1 e8 f1 f3"));
        // T10 vendor ID, LU, with LIO's trailing NUL.
        p.extend(hex("02 01 00 2d"));
        p.extend_from_slice(b"LIO-ORG b1c9f6f2-0c5f-4dbb-9a1e-8f1f3d5e2a10\0");
        // Relative target port 1 and target port group 0 (iSCSI, PIV).
        p.extend(hex("51 94 00 04 00 00 00 01 51 95 00 04 00 00 00 00"));
        // SCSI name string of the target port, NUL-padded to 4 bytes.
        let name = b"iqn.2003-01.org.linux-iscsi.h1:sn.0a1b,t,0x0001\0";
        p.extend(hex("53 98 00"));
        p.push(name.len() as u8);
        p.extend_from_slice(name);
        let len = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn device_id_lio() {
        let b = lio_device_id();
        let d = parse_device_id(&b).unwrap();
        let shown: Vec<String> = d.iter().map(Designator::display).collect();
        assert_eq!(
            shown,
            [
                "naa.6001405b1c9f6f20c5f4dbb9a1e8f1f3",
                "t10.LIO-ORG b1c9f6f2-0c5f-4dbb-9a1e-8f1f3d5e2a10",
                "type4.00000001",
                "type5.00000000",
                "iqn.2003-01.org.linux-iscsi.h1:sn.0a1b,t,0x0001",
            ]
        );
        assert_eq!((d[0].code_set, d[0].association, d[0].kind), (1, 0, 3));
        assert_eq!((d[4].code_set, d[4].association, d[4].kind), (3, 1, 8));
        // A truncated descriptor ends the walk.
        assert_eq!(parse_device_id(&b[..b.len() - 1]).unwrap().len(), 4);
        assert_eq!(parse_device_id(&b[..30]).unwrap().len(), 1);
        let eui = Designator { code_set: 1, association: 0, kind: 2, value: hex("00 11 22 33 44 55 66 77") };
        assert_eq!(eui.display(), "eui.0011223344556677");
    }

    #[test]
    fn block_limits_lio_and_short() {
        // LIO: WSNZ, CAW 1, max and optimal transfer 0x400, UGAVALID.
        let mut b = hex("00 b0 00 3c 01 01 00 01 00 00 04 00 00 00 04 00 00 00 00 00");
        b.extend(hex("ff ff ff ff 00 00 00 01 00 00 00 08 80 00 00 00 00 00 00 00 00 00 ff ff"));
        b.resize(64, 0);
        let l = parse_block_limits(&b).unwrap();
        assert_eq!(
            l,
            BlockLimits {
                max_transfer_blocks: 0x400,
                optimal_transfer_blocks: 0x400,
                max_unmap_blocks: 0xffff_ffff,
                max_unmap_descriptors: 1,
                unmap_granularity: 8,
                max_write_same_blocks: 0xffff,
            }
        );
        // SBC-2 page: 0x10 bytes, even if the target sends more.
        let mut old = hex("00 b0 00 0c 00 00 00 00 00 00 00 80 00 00 00 40");
        old.extend(hex("ff ff ff ff ff ff ff ff"));
        let l = parse_block_limits(&old).unwrap();
        assert_eq!(l, BlockLimits { max_transfer_blocks: 0x80, optimal_transfer_blocks: 0x40, ..BlockLimits::default() });
    }

    #[test]
    fn provisioning_lio() {
        let p = parse_provisioning(&hex("00 b2 00 04 00 e4 02 00")).unwrap();
        assert_eq!(p, Provisioning { lbpu: true, lbpws: true, lbpws10: true, lbprz: true, provisioning_type: 2 });
        let p = parse_provisioning(&hex("00 b2 00 04 00 88 01 00")).unwrap();
        assert_eq!(p, Provisioning { lbpu: true, lbprz: false, provisioning_type: 1, ..Provisioning::default() });
        assert!(matches!(parse_provisioning(&hex("00 b2 00 02 00 e4 02 00")), Err(ParseError::Short { .. })));
    }

    #[test]
    fn read_capacity() {
        let mut b = hex("00 00 00 00 00 1f ff ff 00 00 02 00 00 03 c0 00");
        b.resize(32, 0);
        let c = parse_read_capacity16(&b).unwrap();
        assert_eq!(c, Capacity { num_blocks: 0x20_0000, block_size: 512, lbpme: true, lbprz: true });
        assert!(matches!(parse_read_capacity16(&b[..16]), Err(ParseError::Short { need: 32, .. })));
        b[..8].fill(0xff);
        assert!(matches!(parse_read_capacity16(&b), Err(ParseError::Invalid(_))));
        b[..8].fill(0);
        b[8..12].fill(0);
        assert!(matches!(parse_read_capacity16(&b), Err(ParseError::Invalid(_))));
        // Blocks no export can describe (2 GiB, 1536 bytes, 128 KiB), and a
        // size in bytes beyond 64 bits (2^62 blocks of 4 KiB): refused.
        for bs in [0x8000_0000u32, 1536, 128 << 10] {
            b[8..12].copy_from_slice(&bs.to_be_bytes());
            let e = parse_read_capacity16(&b);
            assert!(matches!(&e, Err(ParseError::Invalid(m)) if m.contains(&format!("{bs}-byte blocks"))), "{e:?}");
        }
        b[..8].copy_from_slice(&((1u64 << 62) - 1).to_be_bytes());
        b[8..12].copy_from_slice(&4096u32.to_be_bytes());
        assert!(matches!(parse_read_capacity16(&b), Err(ParseError::Invalid(m)) if m.contains("do not fit in 64 bits")));
        b[..8].copy_from_slice(&((1u64 << 52) - 1).to_be_bytes());
        assert!(parse_read_capacity16(&b).is_err(), "2^52 blocks of 4 KiB: 2^64 bytes");
        b[..8].copy_from_slice(&((1u64 << 52) - 2).to_be_bytes());
        assert_eq!(parse_read_capacity16(&b).unwrap().num_blocks, (1 << 52) - 1, "one block fewer fits");

        let c = parse_read_capacity10(&hex("00 1f ff ff 00 00 10 00")).unwrap();
        assert_eq!(c, Capacity { num_blocks: 0x20_0000, block_size: 4096, lbpme: false, lbprz: false });
        assert!(matches!(parse_read_capacity10(&hex("ff ff ff ff 00 00 02 00")), Err(ParseError::Invalid(_))));
        assert!(matches!(parse_read_capacity10(&hex("00 00 00 01 00 00 00 00")), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn lun_field() {
        for (lun, field) in [
            (0, "00 00 00 00 00 00 00 00"),
            (1, "00 01 00 00 00 00 00 00"),
            (255, "00 ff 00 00 00 00 00 00"),
            (256, "41 00 00 00 00 00 00 00"),
            (16383, "7f ff 00 00 00 00 00 00"),
            (16384, "d2 00 40 00 00 00 00 00"),
        ] {
            assert_eq!(encode_lun(lun).to_vec(), hex(field), "{lun}");
            assert_eq!(decode_lun(&encode_lun(lun)), Some(lun));
        }
        for lun in 0..=u16::MAX {
            assert_eq!(decode_lun(&encode_lun(lun)), Some(lun));
        }
        // Bus 1, logical unit addressing, a second level: not a plain number.
        assert_eq!(decode_lun(&[0x01, 0x02, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[0x80, 0x02, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[0x00, 0x02, 0x40, 0x01, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[0xd2, 0x01, 0x00, 0x00, 0, 0, 0, 0]), None);
    }

    #[test]
    fn report_luns_list() {
        let b = hex("00 00 00 18 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 41 00 00 00 00 00 00 00");
        let l = parse_report_luns(&b).unwrap();
        assert_eq!(l.iter().map(decode_lun).collect::<Vec<_>>(), [Some(0), Some(1), Some(256)]);
        // The list length exceeds the slice (allocation too small): clamp.
        let mut short = b.clone();
        short[3] = 0xf8;
        assert_eq!(parse_report_luns(&short[..27]).unwrap().len(), 2);
        // The list length is shorter than the slice: honour it.
        short[3] = 0x08;
        assert_eq!(parse_report_luns(&short).unwrap().len(), 1);
        assert_eq!(parse_report_luns(&hex("00 00 00 00 00 00 00 00")).unwrap().len(), 0);
        assert!(matches!(parse_report_luns(&[0; 7]), Err(ParseError::Short { .. })));
        let mut huge = vec![0xff; 8 + 8 * (MAX_REPORTED_LUNS + 3)];
        huge[4..8].fill(0);
        assert_eq!(parse_report_luns(&huge).unwrap().len(), MAX_REPORTED_LUNS);
    }

    /// The LBA and block count a READ/WRITE/SYNCHRONIZE CACHE CDB carries.
    fn lba_blocks(c: &Cdb) -> (u64, u32) {
        let b = c.as_slice();
        match b.len() {
            10 => (u64::from(be32(b, 2)), u32::from(be16(b, 7))),
            _ => (be64(b, 2), be32(b, 10)),
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Some(s) = Sense::parse(&b) {
                let _ = s.to_string();
            }
            let _ = parse_inquiry(&b);
            let _ = parse_supported_vpd(&b);
            let _ = parse_unit_serial(&b);
            if let Ok(d) = parse_device_id(&b) {
                d.iter().for_each(|d| { let _ = d.display(); });
            }
            let _ = parse_block_limits(&b);
            let _ = parse_provisioning(&b);
            let _ = parse_read_capacity16(&b);
            let _ = parse_read_capacity10(&b);
            if let Ok(l) = parse_report_luns(&b) {
                l.iter().for_each(|l| { let _ = decode_lun(l); });
            }
        }

        #[test]
        fn vpd_and_sense_never_panic_with_their_codes(mut b in proptest::collection::vec(any::<u8>(), 4..600), kind in 0u8..6) {
            // Arbitrary bytes rarely carry a valid page or response code: force one.
            b[1] = [0x00, 0x80, 0x83, 0xb0, 0xb2, 0x00][usize::from(kind)];
            b[0] = 0x70 + kind % 4;
            let _ = Sense::parse(&b);
            let _ = (parse_supported_vpd(&b), parse_unit_serial(&b), parse_block_limits(&b), parse_provisioning(&b));
            if let Ok(d) = parse_device_id(&b) {
                d.iter().for_each(|d| { let _ = d.display(); });
            }
        }

        #[test]
        fn block_cdbs_carry_lba_and_count(lba in any::<u64>(), blocks in any::<u32>(), fua in any::<bool>()) {
            prop_assert_eq!(lba_blocks(&read(lba, blocks)), (lba, blocks));
            prop_assert_eq!(lba_blocks(&write(lba, blocks, fua)), (lba, blocks));
            prop_assert_eq!(lba_blocks(&synchronize_cache(lba, blocks)), (lba, blocks));
            prop_assert_eq!(lba_blocks(&write_same16(lba, blocks, fua)), (lba, blocks));
        }
    }
}
