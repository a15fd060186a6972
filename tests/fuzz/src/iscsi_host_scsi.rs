//! `iscsi_host_scsi`: every parser the iSCSI initiator applies to what a
//! target sends besides PDUs (`pollux_iscsi_host::scsi`: sense data,
//! standard INQUIRY, the VPD pages 00, 80, 83, B0 and B2, READ CAPACITY
//! (16) and (10), REPORT LUNS and its LUN fields; and
//! `login::parse_send_targets`).
//!
//! Input: byte 0 picks the parser (modulo 12, in the order of [`PARSERS`];
//! 11: every one of them), the rest is the data as the target sent it.
//!
//! Invariants: a parser takes only what its length fields and the slice
//! both hold, and refuses a slice too short for its fixed fields; sense
//! comes from a fixed or descriptor response code, its key four bits; the
//! strings taken from the data are printable ASCII of at most their field's
//! size; a VPD page is taken only with its page code; a capacity has blocks
//! and a block size that every export can describe, the size in bytes
//! within 64 bits; REPORT LUNS gives at most `MAX_REPORTED_LUNS` LUN
//! fields, no more than the list length and the slice hold, and a LUN number
//! decoded from one encodes back to itself; a SendTargets answer gives one
//! target per TargetName and no more addresses than it lists.

use pollux_iscsi_host::login::parse_send_targets;
use pollux_iscsi_host::scsi::{self, ParseError, Sense};

type Parser = fn(&[u8]);

/// The parsers, in the order byte 0 picks them.
pub(crate) const PARSERS: [(&str, Parser); 11] = [
    ("sense", sense),
    ("inquiry", inquiry),
    ("supported-vpd", supported_vpd),
    ("unit-serial", unit_serial),
    ("device-id", device_id),
    ("block-limits", block_limits),
    ("provisioning", provisioning),
    ("read-capacity16", read_capacity16),
    ("read-capacity10", read_capacity10),
    ("report-luns", report_luns),
    ("send-targets", send_targets),
];

pub fn iscsi_host_scsi(data: &[u8]) {
    let Some((&pick, b)) = data.split_first() else { return };
    match PARSERS.get(usize::from(pick) % (PARSERS.len() + 1)) {
        Some((_, parse)) => parse(b),
        None => PARSERS.iter().for_each(|(_, parse)| parse(b)),
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

/// Printable ASCII, at most `max` bytes.
fn printable(s: &str, max: usize, what: &str) {
    assert!(s.len() <= max && s.bytes().all(|c| (0x20..0x7f).contains(&c)), "{what}: {s:?}");
}

/// Too short for the fixed fields is `Short`, naming the lengths.
fn short<T: std::fmt::Debug>(r: &Result<T, ParseError>, len: usize, need: usize, what: &str) {
    if len < need {
        assert!(matches!(r, Err(ParseError::Short { len: l, need: n, .. }) if *l == len && *n == need), "{what}, {len} bytes: {r:?}");
    }
}

/// The bytes of a VPD page the parser may read: its PAGE LENGTH or the
/// slice, whichever is shorter; None if `r` must be an error.
fn vpd<T: std::fmt::Debug>(b: &[u8], page: u8, r: &Result<T, ParseError>, what: &str) -> Option<usize> {
    short(r, b.len(), 4, what);
    if b.len() < 4 || b[1] != page {
        assert!(r.is_err(), "{what} taken with page code {:?}: {r:?}", b.get(1));
        return None;
    }
    Some(b.len().min(4 + be16(b, 2)))
}

fn sense(b: &[u8]) {
    let Some(s) = Sense::parse(b) else { return };
    let code = b[0] & 0x7f;
    assert!(matches!(code, 0x70..=0x73), "sense taken with response code {code:#04x}: {s:?}");
    assert!(s.key <= 0x0f, "{s:?}");
    if code <= 0x71 {
        assert_eq!(s.key, b[2] & 0x0f);
        assert!(s.information.is_none() || b[0] & 0x80 != 0, "information without VALID: {s:?}");
    } else {
        assert!(b.len() >= 4);
        assert_eq!((s.key, s.asc, s.ascq), (b[1] & 0x0f, b[2], b[3]));
    }
    let shown = s.to_string();
    assert!(shown.starts_with(s.key_name()), "{shown}");
    if let Some(name) = s.asc_name() {
        assert!(shown.contains(name), "{shown}");
    }
}

fn inquiry(b: &[u8]) {
    let r = scsi::parse_inquiry(b);
    short(&r, b.len(), 36, "standard INQUIRY");
    let Ok(i) = r else { return };
    assert!(i.qualifier <= 7 && i.device_type <= 0x1f, "{i:?}");
    assert_eq!((i.qualifier, i.device_type, i.removable, i.version), (b[0] >> 5, b[0] & 0x1f, b[1] & 0x80 != 0, b[2]));
    printable(&i.vendor, 8, "vendor");
    printable(&i.product, 16, "product");
    printable(&i.revision, 4, "revision");
}

fn supported_vpd(b: &[u8]) {
    let r = scsi::parse_supported_vpd(b);
    let Some(end) = vpd(b, 0x00, &r, "Supported VPD Pages") else { return };
    assert_eq!(r.expect("a page with its code"), &b[4..end]);
}

fn unit_serial(b: &[u8]) {
    let r = scsi::parse_unit_serial(b);
    let Some(end) = vpd(b, 0x80, &r, "Unit Serial Number") else { return };
    let s = r.expect("a page with its code");
    printable(&s, end - 4, "serial number");
    assert_eq!(s.trim(), s, "spaces around the serial number");
}

fn device_id(b: &[u8]) {
    let r = scsi::parse_device_id(b);
    let Some(end) = vpd(b, 0x83, &r, "Device Identification") else { return };
    let d = r.expect("a page with its code");
    let used: usize = d.iter().map(|x| 4 + x.value.len()).sum();
    assert!(4 + used <= end, "{used} bytes of designators in a {end}-byte page");
    for x in &d {
        assert!(x.code_set <= 0x0f && x.association <= 3 && x.kind <= 0x0f && x.value.len() <= 255, "{x:?}");
        let shown = x.display();
        printable(&shown, 2 * x.value.len() + 16, "designator");
    }
}

fn block_limits(b: &[u8]) {
    let r = scsi::parse_block_limits(b);
    let Some(end) = vpd(b, 0xb0, &r, "Block Limits") else { return };
    let l = r.expect("a page with its code");
    // A field the page does not hold wholly reads as 0 (not reported).
    for (at, len, v) in [
        (8, 4, u64::from(l.max_transfer_blocks)),
        (12, 4, u64::from(l.optimal_transfer_blocks)),
        (20, 4, u64::from(l.max_unmap_blocks)),
        (24, 4, u64::from(l.max_unmap_descriptors)),
        (28, 4, u64::from(l.unmap_granularity)),
        (36, 8, l.max_write_same_blocks),
    ] {
        if at + len > end {
            assert_eq!(v, 0, "a field at {at} beyond a page of {end} bytes: {l:?}");
        }
    }
}

fn provisioning(b: &[u8]) {
    let r = scsi::parse_provisioning(b);
    let Some(end) = vpd(b, 0xb2, &r, "Logical Block Provisioning") else { return };
    if end < 7 {
        assert!(matches!(r, Err(ParseError::Short { .. })), "{r:?}");
        return;
    }
    let p = r.expect("a whole page");
    assert!(p.provisioning_type <= 7, "{p:?}");
    assert_eq!((p.lbpu, p.provisioning_type), (b[5] & 0x80 != 0, b[6] & 0x07));
}

fn capacity(r: &Result<scsi::Capacity, ParseError>) {
    if let Ok(c) = r {
        assert!(c.num_blocks > 0 && pollux_core::bdev::exportable_block_size(c.block_size), "{c:?}");
        assert!(c.num_blocks.checked_mul(u64::from(c.block_size)).is_some(), "{c:?}");
    }
}

fn read_capacity16(b: &[u8]) {
    let r = scsi::parse_read_capacity16(b);
    short(&r, b.len(), 32, "READ CAPACITY(16)");
    capacity(&r);
    if let Ok(c) = r {
        assert_eq!(c.num_blocks - 1, u64::from_be_bytes(b[..8].try_into().expect("8 bytes")));
    }
}

fn read_capacity10(b: &[u8]) {
    let r = scsi::parse_read_capacity10(b);
    short(&r, b.len(), 8, "READ CAPACITY(10)");
    capacity(&r);
    if let Ok(c) = r {
        assert!(c.num_blocks <= u64::from(u32::MAX) && !c.lbpme && !c.lbprz, "{c:?}");
    }
}

fn report_luns(b: &[u8]) {
    let r = scsi::parse_report_luns(b);
    short(&r, b.len(), 8, "REPORT LUNS");
    let Ok(luns) = r else { return };
    let listed = u32::from_be_bytes(b[..4].try_into().expect("4 bytes")) as usize / 8;
    assert!(luns.len() <= scsi::MAX_REPORTED_LUNS && luns.len() <= (b.len() - 8) / 8 && luns.len() <= listed, "{} LUNs", luns.len());
    for (i, l) in luns.iter().enumerate() {
        assert_eq!(&l[..], &b[8 + 8 * i..16 + 8 * i], "LUN field {i}");
        if let Some(n) = scsi::decode_lun(l) {
            assert_eq!(scsi::decode_lun(&scsi::encode_lun(n)), Some(n), "{l:02x?}");
        }
    }
}

fn send_targets(b: &[u8]) {
    let Ok(found) = parse_send_targets(b) else { return };
    let records = || b.split(|&c| c == 0).filter(|r| !r.is_empty());
    let names = records().filter(|r| r.starts_with(b"TargetName=")).count();
    let addresses = records().filter(|r| r.starts_with(b"TargetAddress=")).count();
    assert_eq!(found.len(), names, "one target per TargetName");
    assert!(found.iter().map(|t| t.addresses.len()).sum::<usize>() <= addresses);
    assert!(found.iter().all(|t| t.addresses.len() <= 256), "more than 256 addresses for a target");
    for t in &found {
        assert!(!t.name.contains('\0') && t.addresses.iter().all(|a| !a.contains('\0')), "{t:?}");
    }
}
