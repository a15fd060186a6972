//! Log pages (NVMe Base 2.0, 5.16): identifiers, Get Log Page command dwords,
//! SMART / Health Information (02h) and Error Information entries (01h).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Log page identifiers.
pub mod lid {
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACE_LIST: u8 = 0x04;
    pub const COMMANDS_SUPPORTED_AND_EFFECTS: u8 = 0x05;
    pub const DEVICE_SELF_TEST: u8 = 0x06;
    pub const TELEMETRY_HOST: u8 = 0x07;
    pub const TELEMETRY_CONTROLLER: u8 = 0x08;
    pub const ENDURANCE_GROUP: u8 = 0x09;
    pub const ASYMMETRIC_NAMESPACE_ACCESS: u8 = 0x0c;
    pub const PERSISTENT_EVENT: u8 = 0x0d;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESERVATION_NOTIFICATION: u8 = 0x80;
    pub const SANITIZE_STATUS: u8 = 0x81;
}

/// CDW10 and CDW11 of a Get Log Page for `len` bytes (a multiple of 4,
/// at least 4) of log `lid`; `rae` keeps asynchronous events pending.
pub fn get_log_page_dwords(lid: u8, len: usize, rae: bool) -> (u32, u32) {
    let numd = (len / 4).saturating_sub(1) as u32;
    let cdw10 = u32::from(lid) | (u32::from(rae) << 15) | ((numd & 0xffff) << 16);
    (cdw10, numd >> 16)
}

/// The byte count a Get Log Page asks for (from NUMDL/NUMDU), or `None` when
/// it does not fit a `usize`.
pub fn get_log_page_len(cdw10: u32, cdw11: u32) -> Option<usize> {
    let numd = (u64::from(cdw11 & 0xffff) << 16) | u64::from(cdw10 >> 16);
    usize::try_from((numd + 1) * 4).ok()
}

/// SMART / Health Information log page (512 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SmartLog {
    /// Critical warning bits (see [`critical_warning`]).
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature: U16,
    /// Available spare, percent.
    pub avail_spare: u8,
    pub spare_thresh: u8,
    /// Percentage of life used (may exceed 100).
    pub percent_used: u8,
    pub endurance_group_critical_warning: u8,
    pub rsvd7: [u8; 25],
    /// In thousands of 512-byte units (128-bit counters follow).
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_read_commands: [u8; 16],
    pub host_write_commands: [u8; 16],
    /// Minutes.
    pub controller_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub num_err_log_entries: [u8; 16],
    /// Minutes above the warning temperature.
    pub warning_temp_time: U32,
    /// Minutes above the critical temperature.
    pub critical_comp_time: U32,
    /// Temperature sensors 1..8 (kelvin, 0 = absent).
    pub temp_sensor: [U16; 8],
    pub thm_temp1_trans_count: U32,
    pub thm_temp2_trans_count: U32,
    pub thm_temp1_total_time: U32,
    pub thm_temp2_total_time: U32,
    pub rsvd232: [u8; 280],
}
const _: () = assert!(size_of::<SmartLog>() == 512);

/// Bits of [`SmartLog::critical_warning`].
pub mod critical_warning {
    pub const SPARE_BELOW_THRESHOLD: u8 = 1 << 0;
    pub const TEMPERATURE: u8 = 1 << 1;
    pub const RELIABILITY_DEGRADED: u8 = 1 << 2;
    pub const READ_ONLY: u8 = 1 << 3;
    pub const VOLATILE_BACKUP_FAILED: u8 = 1 << 4;
    pub const PMR_READ_ONLY: u8 = 1 << 5;
}

/// Reads a 128-bit little-endian counter of a log page.
pub fn counter128(raw: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*raw)
}

/// One Error Information log entry (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ErrorLogEntry {
    /// A unique, increasing error count; 0 = the entry is empty.
    pub error_count: U64,
    pub sqid: U16,
    pub cid: U16,
    /// Phase tag (bit 0) and status field, as in a completion.
    pub status_field: U16,
    /// Byte (7:0) and bit (10:8) of the command parameter in error.
    pub parm_error_location: U16,
    pub lba: U64,
    pub nsid: U32,
    pub vs: u8,
    pub trtype: u8,
    pub rsvd30: [u8; 2],
    pub cs: U64,
    pub trtype_spec_info: U16,
    pub rsvd42: [u8; 22],
}
const _: () = assert!(size_of::<ErrorLogEntry>() == 64);

impl ErrorLogEntry {
    pub fn status(&self) -> crate::status::Status {
        crate::status::Status::from_completion_field(self.status_field.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn smart_offsets() {
        assert_eq!(offset_of!(SmartLog, temperature), 1);
        assert_eq!(offset_of!(SmartLog, avail_spare), 3);
        assert_eq!(offset_of!(SmartLog, percent_used), 5);
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, power_cycles), 112);
        assert_eq!(offset_of!(SmartLog, num_err_log_entries), 176);
        assert_eq!(offset_of!(SmartLog, warning_temp_time), 192);
        assert_eq!(offset_of!(SmartLog, temp_sensor), 200);
        assert_eq!(offset_of!(SmartLog, thm_temp1_trans_count), 216);
        assert_eq!(offset_of!(SmartLog, rsvd232), 232);
    }

    #[test]
    fn error_entry_offsets() {
        assert_eq!(offset_of!(ErrorLogEntry, status_field), 12);
        assert_eq!(offset_of!(ErrorLogEntry, lba), 16);
        assert_eq!(offset_of!(ErrorLogEntry, nsid), 24);
        assert_eq!(offset_of!(ErrorLogEntry, cs), 32);
        assert_eq!(offset_of!(ErrorLogEntry, trtype_spec_info), 40);
    }

    #[test]
    fn log_page_dwords() {
        let (c10, c11) = get_log_page_dwords(lid::SMART_HEALTH, 512, false);
        assert_eq!(c10, 0x007f_0002);
        assert_eq!(c11, 0);
        assert_eq!(get_log_page_len(c10, c11), Some(512));
        let (c10, c11) = get_log_page_dwords(lid::ERROR_INFORMATION, 1 << 20, true);
        assert_eq!(c10 & 0x8000, 0x8000);
        assert_eq!(c11, 0x3);
        assert_eq!(get_log_page_len(c10, c11), Some(1 << 20));
        assert_eq!(get_log_page_len(0xffff_0000, 0xffff), Some(1 << 34));
    }

    #[test]
    fn counters() {
        let mut raw = [0u8; 16];
        raw[0] = 1;
        raw[8] = 1;
        assert_eq!(counter128(&raw), (1u128 << 64) + 1);
    }
}
