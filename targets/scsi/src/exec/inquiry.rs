//! INQUIRY: standard data and the vital product data pages 00, 80, 83,
//! B0 (block limits), B1 (block device characteristics), B2 (logical block
//! provisioning).

use crate::limits;
use crate::lun::{Lun, Nexus};

/// Pages offered, in order.
const PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSIONS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];

/// Standard INQUIRY data for a LU (peripheral device type 0, disk).
pub(crate) fn standard(lun: &Lun) -> Vec<u8> {
    let id = lun.identity();
    let mut d = vec![0u8; 96];
    d[0] = 0x00;
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x08; // 3PC: EXTENDED COPY
    d[6] = 0x10; // MULTIP
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&id.vendor);
    d[16..32].copy_from_slice(&id.product);
    d[32..36].copy_from_slice(&id.revision);
    for (i, v) in VERSIONS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Standard INQUIRY data for a LUN with no LU behind it.
pub fn no_lun() -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[0] = 0x7f; // qualifier 011b, type 1fh: no LU
    d[2] = 0x06;
    d[3] = 0x02;
    d[4] = 31;
    d
}

fn designator(out: &mut Vec<u8>, proto_code: u8, piv_assoc_type: u8, body: &[u8]) {
    out.push(proto_code);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(body.len() as u8);
    out.extend_from_slice(body);
}

fn page(code: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + body.len());
    d.extend_from_slice(&[0x00, code]);
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

fn name_string(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    while b.len() % 4 != 0 {
        b.push(0);
    }
    b
}

/// A VPD page, or `None` if it is not offered.
pub(crate) fn vpd(lun: &Lun, nexus: &Nexus, code: u8) -> Option<Vec<u8>> {
    let id = lun.identity();
    Some(match code {
        0x00 => page(0x00, PAGES.to_vec()),
        0x80 => page(0x80, id.serial.as_bytes().to_vec()),
        0x83 => {
            let mut b = Vec::new();
            // NAA, LU, binary.
            designator(&mut b, 0x01, 0x03, &id.naa);
            // T10 vendor ID, LU, ASCII: vendor + serial.
            let mut t10 = id.vendor.to_vec();
            t10.extend_from_slice(id.serial.as_bytes());
            designator(&mut b, 0x02, 0x01, &t10);
            // Relative target port, target port, iSCSI.
            let mut rel = [0u8; 4];
            rel[2..4].copy_from_slice(&nexus.relative_port.to_be_bytes());
            designator(&mut b, 0x50 | 0x01, 0x80 | 0x10 | 0x04, &rel);
            // SCSI name string of the target port, UTF-8.
            if !nexus.target_port.is_empty() {
                designator(&mut b, 0x50 | 0x03, 0x80 | 0x10 | 0x08, &name_string(&nexus.target_port));
            }
            // SCSI name string of the target device.
            if !id.device_name.is_empty() {
                designator(&mut b, 0x50 | 0x03, 0x80 | 0x20 | 0x08, &name_string(&id.device_name));
            }
            page(0x83, b)
        }
        0xb0 => {
            let mut b = vec![0u8; 0x3c];
            // byte 4 (b[0] here is page byte 4): WSNZ = 0.
            b[1] = limits::MAX_COMPARE_AND_WRITE;
            b[2..4].copy_from_slice(&1u16.to_be_bytes());
            b[4..8].copy_from_slice(&limits::max_transfer_blocks(lun).to_be_bytes());
            b[8..12].copy_from_slice(&limits::optimal_transfer_blocks(lun).to_be_bytes());
            b[12..16].copy_from_slice(&limits::max_transfer_blocks(lun).to_be_bytes());
            if lun.thin() {
                b[16..20].copy_from_slice(&limits::MAX_UNMAP_BLOCKS.to_be_bytes());
                b[20..24].copy_from_slice(&limits::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                let gran = 1u32 << limits::physical_exponent(lun);
                b[24..28].copy_from_slice(&gran.to_be_bytes());
                b[28] = 0x80; // UGAVALID, alignment 0
            }
            b[32..40].copy_from_slice(&limits::max_write_same_blocks(lun).to_be_bytes());
            b[40..44].copy_from_slice(&limits::max_atomic_blocks(lun).to_be_bytes());
            b[44..48].copy_from_slice(&1u32.to_be_bytes());
            b[48..52].copy_from_slice(&1u32.to_be_bytes());
            page(0xb0, b)
        }
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
            b[3] = 0x00;
            page(0xb1, b)
        }
        0xb2 => {
            let mut b = vec![0u8; 4];
            if lun.thin() {
                // LBPU, LBPWS, LBPWS10, LBPRZ (001b in bits 4-2).
                b[1] = 0x80 | 0x40 | 0x20 | 0x04;
                b[2] = 0x02; // thin provisioned
            }
            page(0xb2, b)
        }
        _ => return None,
    })
}
