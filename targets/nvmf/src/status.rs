//! The completion statuses the target reports, as `pollux-nvme-spec`
//! [`Status`] values: the generic and media codes it uses, and the Fabrics
//! Connect codes (NVMe over Fabrics 1.1, Figure 21), which share the
//! command-specific code space.

pub use pollux_nvme_spec::status::Status;
use pollux_nvme_spec::status::StatusCodeType::{CommandSpecific, Generic, MediaAndDataIntegrity};

const fn generic(sc: u8) -> Status {
    Status::new(Generic, sc).with_dnr()
}
const fn specific(sc: u8) -> Status {
    Status::new(CommandSpecific, sc).with_dnr()
}

pub const SUCCESS: Status = Status::SUCCESS;
pub const INVALID_OPCODE: Status = generic(0x01);
pub const INVALID_FIELD: Status = generic(0x02);
pub const DATA_TRANSFER_ERROR: Status = generic(0x04);
pub const INTERNAL_ERROR: Status = generic(0x06);
pub const ABORT_REQUESTED: Status = generic(0x07);
pub const ABORTED_SQ_DELETION: Status = generic(0x08);
pub const INVALID_NAMESPACE: Status = generic(0x0b);
pub const COMMAND_SEQUENCE_ERROR: Status = generic(0x0c);
pub const DATA_SGL_LENGTH_INVALID: Status = generic(0x0f);
pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = generic(0x11);
pub const SGL_OFFSET_INVALID: Status = generic(0x16);
/// Retryable: a data digest did not match.
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::new(Generic, 0x22);
pub const LBA_OUT_OF_RANGE: Status = generic(0x80);
/// Retryable: the namespace is going away or not there yet.
pub const NAMESPACE_NOT_READY: Status = Status::new(Generic, 0x82);

pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = specific(0x05);
pub const INVALID_LOG_PAGE: Status = specific(0x09);
pub const FEATURE_NOT_SAVEABLE: Status = specific(0x0d);
pub const FEATURE_NOT_CHANGEABLE: Status = specific(0x0e);
/// Connect: the record format is not supported.
pub const CONNECT_INCOMPATIBLE_FORMAT: Status = specific(0x80);
/// Connect: the controller is busy (queue already connected).
pub const CONNECT_CONTROLLER_BUSY: Status = specific(0x81);
/// Connect: a parameter is invalid; dword 0 says which ([`ConnectError`]).
pub const CONNECT_INVALID_PARAMETERS: Status = specific(0x82);
/// Connect: the host may not use this subsystem.
pub const CONNECT_INVALID_HOST: Status = specific(0x84);

pub const WRITE_FAULT: Status = Status::new(MediaAndDataIntegrity, 0x80).with_dnr();
pub const UNRECOVERED_READ_ERROR: Status = Status::new(MediaAndDataIntegrity, 0x81).with_dnr();
pub const COMPARE_FAILURE: Status = Status::new(MediaAndDataIntegrity, 0x85).with_dnr();

/// Where a Connect parameter was wrong: dword 0 of the failed completion
/// (IATTR in bits 7:0, IPO in bits 31:16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectError {
    /// The field is in the Connect data (true) or the command (false).
    pub in_data: bool,
    /// Byte offset of the field.
    pub offset: u16,
}

impl ConnectError {
    pub fn dw0(self) -> u32 {
        (u32::from(self.offset) << 16) | u32::from(self.in_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fabrics_statuses_encode_as_the_spec_says() {
        assert_eq!(INVALID_FIELD.to_completion_field(), 0x8004);
        assert_eq!(CONNECT_INVALID_HOST.to_completion_field(), 0x8000 | (1 << 9) | (0x84 << 1));
        assert_eq!(TRANSIENT_TRANSPORT_ERROR.to_completion_field(), 0x22 << 1);
        assert_eq!(ConnectError { in_data: true, offset: 256 }.dw0(), (256 << 16) | 1);
    }
}
