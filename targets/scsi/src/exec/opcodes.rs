//! REPORT SUPPORTED OPERATION CODES: every command we execute, with its
//! CDB usage data (which bits the device server looks at).

use crate::cdb::op;

/// A supported command: operation code, service action, CDB usage data.
pub(crate) struct Supported {
    pub opcode: u8,
    pub sa: Option<u16>,
    pub usage: &'static [u8],
}

const fn c(opcode: u8, usage: &'static [u8]) -> Supported {
    Supported { opcode, sa: None, usage }
}

const fn s(opcode: u8, sa: u16, usage: &'static [u8]) -> Supported {
    Supported { opcode, sa: Some(sa), usage }
}

const RW10: [u8; 10] = [0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07];
const RW12: [u8; 12] = [0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07];
const RW16: [u8; 16] = [0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07];

macro_rules! with_op {
    ($op:expr, $base:expr) => {{
        const U: [u8; $base.len()] = {
            let mut u = $base;
            u[0] = $op;
            u
        };
        &U
    }};
}

const fn flags(mut u: [u8; 16], b1: u8) -> [u8; 16] {
    u[1] = b1;
    u
}
const fn flags10(mut u: [u8; 10], b1: u8) -> [u8; 10] {
    u[1] = b1;
    u
}
const fn flags12(mut u: [u8; 12], b1: u8) -> [u8; 12] {
    u[1] = b1;
    u
}

pub(crate) static SUPPORTED: &[Supported] = &[
    c(op::TEST_UNIT_READY, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0x07]),
    c(op::REQUEST_SENSE, &[op::REQUEST_SENSE, 0x01, 0, 0, 0xff, 0x07]),
    c(op::READ_6, &[op::READ_6, 0x1f, 0xff, 0xff, 0xff, 0x07]),
    c(op::WRITE_6, &[op::WRITE_6, 0x1f, 0xff, 0xff, 0xff, 0x07]),
    c(op::INQUIRY, &[op::INQUIRY, 0x01, 0xff, 0xff, 0xff, 0x07]),
    c(op::MODE_SELECT_6, &[op::MODE_SELECT_6, 0x11, 0, 0, 0xff, 0x07]),
    c(op::RESERVE_6, &[op::RESERVE_6, 0, 0, 0, 0, 0x07]),
    c(op::RELEASE_6, &[op::RELEASE_6, 0, 0, 0, 0, 0x07]),
    c(op::MODE_SENSE_6, &[op::MODE_SENSE_6, 0x08, 0xff, 0xff, 0xff, 0x07]),
    c(op::START_STOP_UNIT, &[op::START_STOP_UNIT, 0x01, 0, 0x0f, 0xf7, 0x07]),
    c(op::SEND_DIAGNOSTIC, &[op::SEND_DIAGNOSTIC, 0xf4, 0, 0xff, 0xff, 0x07]),
    c(op::PREVENT_ALLOW, &[op::PREVENT_ALLOW, 0, 0, 0, 0x03, 0x07]),
    c(op::READ_CAPACITY_10, &[op::READ_CAPACITY_10, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0x07]),
    c(op::READ_10, with_op!(op::READ_10, RW10)),
    c(op::WRITE_10, with_op!(op::WRITE_10, RW10)),
    c(op::WRITE_AND_VERIFY_10, with_op!(op::WRITE_AND_VERIFY_10, flags10(RW10, 0xf6))),
    c(op::VERIFY_10, with_op!(op::VERIFY_10, flags10(RW10, 0xf6))),
    c(op::PRE_FETCH_10, with_op!(op::PRE_FETCH_10, flags10(RW10, 0x02))),
    c(op::SYNCHRONIZE_CACHE_10, with_op!(op::SYNCHRONIZE_CACHE_10, flags10(RW10, 0x02))),
    c(op::READ_DEFECT_DATA_10, &[op::READ_DEFECT_DATA_10, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    c(op::WRITE_SAME_10, with_op!(op::WRITE_SAME_10, flags10(RW10, 0xe8))),
    c(op::UNMAP, &[op::UNMAP, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x07]),
    c(op::MODE_SELECT_10, &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    c(op::RESERVE_10, &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0x07]),
    c(op::RELEASE_10, &[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0x07]),
    c(op::MODE_SENSE_10, &[op::MODE_SENSE_10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_IN, 0, &[op::PERSISTENT_RESERVE_IN, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_IN, 1, &[op::PERSISTENT_RESERVE_IN, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_IN, 2, &[op::PERSISTENT_RESERVE_IN, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_IN, 3, &[op::PERSISTENT_RESERVE_IN, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 0, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 1, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 2, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 3, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 4, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 5, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 6, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::PERSISTENT_RESERVE_OUT, 7, &[op::PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
    s(op::EXTENDED_COPY, 0, &[op::EXTENDED_COPY, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
    s(op::RECEIVE_COPY_RESULTS, 0, &[op::RECEIVE_COPY_RESULTS, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
    s(op::RECEIVE_COPY_RESULTS, 3, &[op::RECEIVE_COPY_RESULTS, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
    c(op::READ_16, with_op!(op::READ_16, RW16)),
    c(op::COMPARE_AND_WRITE, &[op::COMPARE_AND_WRITE, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x07]),
    c(op::WRITE_16, with_op!(op::WRITE_16, RW16)),
    c(op::ORWRITE_16, with_op!(op::ORWRITE_16, RW16)),
    c(op::WRITE_AND_VERIFY_16, with_op!(op::WRITE_AND_VERIFY_16, flags(RW16, 0xf6))),
    c(op::VERIFY_16, with_op!(op::VERIFY_16, flags(RW16, 0xf6))),
    c(op::PRE_FETCH_16, with_op!(op::PRE_FETCH_16, flags(RW16, 0x02))),
    c(op::SYNCHRONIZE_CACHE_16, with_op!(op::SYNCHRONIZE_CACHE_16, flags(RW16, 0x02))),
    c(op::WRITE_SAME_16, with_op!(op::WRITE_SAME_16, flags(RW16, 0xe9))),
    c(op::WRITE_ATOMIC_16, &[op::WRITE_ATOMIC_16, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0x1f, 0x07]),
    s(
        op::SERVICE_ACTION_IN_16,
        op::SAI_READ_CAPACITY_16 as u16,
        &[op::SERVICE_ACTION_IN_16, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
    s(
        op::SERVICE_ACTION_IN_16,
        op::SAI_GET_LBA_STATUS as u16,
        &[op::SERVICE_ACTION_IN_16, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
    c(op::REPORT_LUNS, &[op::REPORT_LUNS, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
    s(
        op::MAINTENANCE_IN,
        op::MI_REPORT_SUPPORTED_OPCODES as u16,
        &[op::MAINTENANCE_IN, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
    c(op::READ_12, with_op!(op::READ_12, RW12)),
    c(op::WRITE_12, with_op!(op::WRITE_12, RW12)),
    c(op::WRITE_AND_VERIFY_12, with_op!(op::WRITE_AND_VERIFY_12, flags12(RW12, 0xf6))),
    c(op::VERIFY_12, with_op!(op::VERIFY_12, flags12(RW12, 0xf6))),
    c(op::READ_DEFECT_DATA_12, &[op::READ_DEFECT_DATA_12, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
];

/// Whether an operation code has service actions.
pub(crate) fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED.iter().any(|s| s.opcode == opcode && s.sa.is_some())
}

/// The command timeouts descriptor (no specific timeouts: zero).
pub(crate) const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The report for the whole table (reporting option 0).
pub(crate) fn all(rctd: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for s in SUPPORTED {
        let sa = s.sa.unwrap_or(0);
        body.push(s.opcode);
        body.push(0);
        body.extend_from_slice(&sa.to_be_bytes());
        body.push(0);
        body.push((rctd as u8) << 1 | s.sa.is_some() as u8);
        body.extend_from_slice(&(s.usage.len() as u16).to_be_bytes());
        if rctd {
            body.extend_from_slice(&TIMEOUTS);
        }
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The report for one command (options 1-3): `None` is an invalid request.
pub(crate) fn one(opcode: u8, sa: u16, option: u8, rctd: bool) -> Option<Vec<u8>> {
    let with_sa = has_service_actions(opcode);
    let found = match option {
        1 if with_sa => return None,
        1 => SUPPORTED.iter().find(|s| s.opcode == opcode && s.sa.is_none()),
        2 if !with_sa && SUPPORTED.iter().any(|s| s.opcode == opcode) => return None,
        2 => SUPPORTED.iter().find(|s| s.opcode == opcode && s.sa == Some(sa)),
        3 => SUPPORTED.iter().find(|s| s.opcode == opcode && (s.sa.is_none() || s.sa == Some(sa))),
        _ => return None,
    };
    let mut out = vec![0u8; 4];
    match found {
        None => out[1] = 0x01,
        Some(s) => {
            out[1] = (rctd as u8) << 7 | 0x03;
            out[2..4].copy_from_slice(&(s.usage.len() as u16).to_be_bytes());
            out.extend_from_slice(s.usage);
            if rctd {
                out.extend_from_slice(&TIMEOUTS);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_data_starts_with_the_opcode_and_has_the_cdb_length() {
        for s in SUPPORTED {
            assert_eq!(s.usage[0], s.opcode, "{:#x}", s.opcode);
            assert_eq!(s.usage.len(), crate::cdb::cdb_len(s.opcode), "{:#x}", s.opcode);
        }
    }

    #[test]
    fn one_command_rejects_the_wrong_option() {
        assert!(one(op::PERSISTENT_RESERVE_IN, 0, 1, false).is_none());
        assert!(one(op::READ_10, 0, 2, false).is_none());
        assert_eq!(one(op::READ_10, 0, 1, false).unwrap()[1], 3);
        assert_eq!(one(0xff, 0, 1, false).unwrap()[1], 1);
    }
}
