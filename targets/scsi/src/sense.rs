//! Sense data (SPC-5 4.4): what went wrong with a command, in fixed or
//! descriptor format, naming the exact error (additional sense code), the
//! field of the CDB or parameter list at fault (sense-key specific field
//! pointer) and, where there is one, the LBA or offset (information field).

/// SCSI status codes (SAM-5 5.3).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-5 table 49).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    CopyAborted = 0xa,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

/// An additional sense code and qualifier (ASC, ASCQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL: Asc = Asc(0x00, 0x00);
    pub const WRITE_ERROR: Asc = Asc(0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1d, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1a, 0x00);
    pub const INVALID_OPCODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE: Asc = Asc(0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE: Asc = Asc(0x26, 0x09);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    /// SPACE ALLOCATION FAILED WRITE PROTECT (thin provisioning out of space).
    pub const SPACE_ALLOCATION_FAILED: Asc = Asc(0x27, 0x07);
    pub const POWER_ON_OCCURRED: Asc = Asc(0x29, 0x01);
    pub const BUS_RESET_OCCURRED: Asc = Asc(0x29, 0x02);
    pub const DEVICE_RESET_OCCURRED: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc(0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2a, 0x03);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2a, 0x09);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2a, 0x05);
    pub const CAPACITY_DATA_CHANGED: Asc = Asc(0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2f, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3a, 0x00);
    pub const REPORTED_LUNS_DATA_CHANGED: Asc = Asc(0x3f, 0x0e);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    pub const DATA_PHASE_ERROR: Asc = Asc(0x4b, 0x00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0e, 0x03);
    pub const INSUFFICIENT_RESOURCES: Asc = Asc(0x55, 0x03);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
    pub const LOGICAL_UNIT_NOT_READY: Asc = Asc(0x04, 0x00);
    pub const COPY_TARGET_DEVICE_NOT_REACHABLE: Asc = Asc(0x0d, 0x02);
}

/// Sense-key specific data: a pointer to the byte (and bit) at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// In the CDB (true) or in the parameter data (false).
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte, if the error is in a bit field.
    pub bit: Option<u8>,
}

/// One piece of sense data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// The information field (an LBA, an offset), when valid.
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Room for the longest sense data we build.
pub const SENSE_MAX: usize = 32;

impl Sense {
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense { key, asc, info: None, field: None }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and `bit`).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_CDB,
            info: None,
            field: Some(FieldPointer { in_cdb: true, byte, bit }),
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, pointing at `byte`.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            info: None,
            field: Some(FieldPointer { in_cdb: false, byte, bit }),
        }
    }

    pub const fn illegal(asc: Asc) -> Sense {
        Sense::new(SenseKey::IllegalRequest, asc)
    }

    pub const fn lba_out_of_range() -> Sense {
        Sense::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    pub const fn invalid_opcode() -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_OPCODE,
            info: None,
            field: Some(FieldPointer { in_cdb: true, byte: 0, bit: None }),
        }
    }

    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION at byte `offset`.
    pub const fn miscompare(offset: u64) -> Sense {
        Sense { key: SenseKey::Miscompare, asc: Asc::MISCOMPARE_DURING_VERIFY, info: Some(offset), field: None }
    }

    pub const fn unit_attention(asc: Asc) -> Sense {
        Sense::new(SenseKey::UnitAttention, asc)
    }

    /// Write the sense data into `out` (at least [`SENSE_MAX`] bytes) in
    /// fixed (`descriptor == false`) or descriptor format; returns its length.
    pub fn encode(&self, descriptor: bool, out: &mut [u8]) -> usize {
        if descriptor { self.encode_descriptor(out) } else { self.encode_fixed(out) }
    }

    fn sks(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80u8;
        if f.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    fn encode_fixed(&self, out: &mut [u8]) -> usize {
        let o = &mut out[..18];
        o.fill(0);
        o[0] = 0x70;
        o[2] = self.key as u8;
        if let Some(info) = self.info {
            // The fixed format holds 4 bytes of information.
            if let Ok(v) = u32::try_from(info) {
                o[0] |= 0x80;
                o[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        o[7] = 10;
        o[12] = self.asc.0;
        o[13] = self.asc.1;
        if let Some(s) = self.sks() {
            o[15..18].copy_from_slice(&s);
        }
        18
    }

    fn encode_descriptor(&self, out: &mut [u8]) -> usize {
        out[..8].fill(0);
        out[0] = 0x72;
        out[1] = self.key as u8;
        out[2] = self.asc.0;
        out[3] = self.asc.1;
        let mut n = 8;
        if let Some(info) = self.info {
            // Information descriptor (type 0).
            let d = &mut out[n..n + 12];
            d.fill(0);
            d[0] = 0x00;
            d[1] = 0x0a;
            d[2] = 0x80;
            d[4..12].copy_from_slice(&info.to_be_bytes());
            n += 12;
        }
        if let Some(s) = self.sks() {
            // Sense-key specific descriptor (type 2).
            let d = &mut out[n..n + 8];
            d.fill(0);
            d[0] = 0x02;
            d[1] = 0x06;
            d[4..7].copy_from_slice(&s);
            n += 8;
        }
        out[7] = (n - 8) as u8;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_names_the_field_at_fault() {
        let mut b = [0u8; SENSE_MAX];
        let n = Sense::invalid_cdb_field(2, Some(5)).encode(false, &mut b);
        assert_eq!(n, 18);
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), 2);
    }

    #[test]
    fn miscompare_carries_the_offset() {
        let mut b = [0u8; SENSE_MAX];
        Sense::miscompare(513).encode(false, &mut b);
        assert_eq!(b[0], 0xf0, "VALID bit set");
        assert_eq!(u32::from_be_bytes(b[3..7].try_into().unwrap()), 513);
        assert_eq!(b[2], 0x0e);
        let n = Sense::miscompare(513).encode(true, &mut b);
        assert_eq!(b[0], 0x72);
        assert_eq!(n, 8 + 12);
        assert_eq!(u64::from_be_bytes(b[12..20].try_into().unwrap()), 513);
    }
}
