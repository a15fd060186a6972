//! Completion status (NVMe Base 2.0, 4.6.1.2): the status code type (SCT),
//! status code (SC), Command Retry Delay, More and Do Not Retry bits, and the
//! named status codes of each type.

use std::fmt;

/// Status Code Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCodeType {
    Generic,
    CommandSpecific,
    MediaAndDataIntegrity,
    Path,
    VendorSpecific,
    /// 4h..6h.
    Reserved(u8),
}

impl StatusCodeType {
    pub fn from_code(code: u8) -> Self {
        match code & 0x7 {
            0 => Self::Generic,
            1 => Self::CommandSpecific,
            2 => Self::MediaAndDataIntegrity,
            3 => Self::Path,
            7 => Self::VendorSpecific,
            other => Self::Reserved(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Generic => 0,
            Self::CommandSpecific => 1,
            Self::MediaAndDataIntegrity => 2,
            Self::Path => 3,
            Self::VendorSpecific => 7,
            Self::Reserved(c) => c & 0x7,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::CommandSpecific => "command specific",
            Self::MediaAndDataIntegrity => "media and data integrity",
            Self::Path => "path related",
            Self::VendorSpecific => "vendor specific",
            Self::Reserved(_) => "reserved",
        }
    }
}

macro_rules! status_codes {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:literal => $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($variant = $code,)* }

        impl $name {
            /// The named code for `code`, if the specification defines one.
            pub fn from_code(code: u8) -> Option<Self> {
                match code {
                    $($code => Some(Self::$variant),)*
                    _ => None,
                }
            }

            pub fn code(self) -> u8 {
                self as u8
            }

            /// The specification's name, upper case as nvme-cli prints it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }

            /// This code as a [`Status`].
            pub fn status(self) -> Status {
                Status::new(Self::SCT, self as u8)
            }
        }
    };
}

status_codes! {
    /// Generic command status (SCT 0h).
    GenericStatus {
        Success = 0x00 => "SUCCESS",
        InvalidOpcode = 0x01 => "INVALID COMMAND OPCODE",
        InvalidField = 0x02 => "INVALID FIELD IN COMMAND",
        CommandIdConflict = 0x03 => "COMMAND ID CONFLICT",
        DataTransferError = 0x04 => "DATA TRANSFER ERROR",
        AbortedPowerLoss = 0x05 => "COMMANDS ABORTED DUE TO POWER LOSS NOTIFICATION",
        InternalError = 0x06 => "INTERNAL ERROR",
        AbortRequested = 0x07 => "COMMAND ABORT REQUESTED",
        AbortedSqDeletion = 0x08 => "COMMAND ABORTED DUE TO SQ DELETION",
        AbortedFailedFused = 0x09 => "COMMAND ABORTED DUE TO FAILED FUSED COMMAND",
        AbortedMissingFused = 0x0a => "COMMAND ABORTED DUE TO MISSING FUSED COMMAND",
        InvalidNamespaceOrFormat = 0x0b => "INVALID NAMESPACE OR FORMAT",
        CommandSequenceError = 0x0c => "COMMAND SEQUENCE ERROR",
        InvalidSglSegmentDescriptor = 0x0d => "INVALID SGL SEGMENT DESCRIPTOR",
        InvalidSglDescriptorCount = 0x0e => "INVALID NUMBER OF SGL DESCRIPTORS",
        DataSglLengthInvalid = 0x0f => "DATA SGL LENGTH INVALID",
        MetadataSglLengthInvalid = 0x10 => "METADATA SGL LENGTH INVALID",
        SglDescriptorTypeInvalid = 0x11 => "SGL DESCRIPTOR TYPE INVALID",
        InvalidUseOfCmb = 0x12 => "INVALID USE OF CONTROLLER MEMORY BUFFER",
        PrpOffsetInvalid = 0x13 => "PRP OFFSET INVALID",
        AtomicWriteUnitExceeded = 0x14 => "ATOMIC WRITE UNIT EXCEEDED",
        OperationDenied = 0x15 => "OPERATION DENIED",
        SglOffsetInvalid = 0x16 => "SGL OFFSET INVALID",
        HostIdInconsistentFormat = 0x18 => "HOST IDENTIFIER INCONSISTENT FORMAT",
        KeepAliveExpired = 0x19 => "KEEP ALIVE TIMER EXPIRED",
        KeepAliveInvalid = 0x1a => "KEEP ALIVE TIMEOUT INVALID",
        AbortedPreempt = 0x1b => "COMMAND ABORTED DUE TO PREEMPT AND ABORT",
        SanitizeFailed = 0x1c => "SANITIZE FAILED",
        SanitizeInProgress = 0x1d => "SANITIZE IN PROGRESS",
        SglDataBlockGranularityInvalid = 0x1e => "SGL DATA BLOCK GRANULARITY INVALID",
        CommandNotSupportedForQueueInCmb = 0x1f => "COMMAND NOT SUPPORTED FOR QUEUE IN CMB",
        NamespaceWriteProtected = 0x20 => "NAMESPACE IS WRITE PROTECTED",
        CommandInterrupted = 0x21 => "COMMAND INTERRUPTED",
        TransientTransportError = 0x22 => "TRANSIENT TRANSPORT ERROR",
        LbaOutOfRange = 0x80 => "LBA OUT OF RANGE",
        CapacityExceeded = 0x81 => "CAPACITY EXCEEDED",
        NamespaceNotReady = 0x82 => "NAMESPACE NOT READY",
        ReservationConflict = 0x83 => "RESERVATION CONFLICT",
        FormatInProgress = 0x84 => "FORMAT IN PROGRESS",
    }
}

status_codes! {
    /// Command specific status (SCT 1h) of admin commands (00h..7Fh) and of
    /// NVM command set I/O commands (80h..). Fabrics commands reuse 80h..
    /// with other meanings; those live with the fabrics definitions.
    CommandSpecificStatus {
        CompletionQueueInvalid = 0x00 => "COMPLETION QUEUE INVALID",
        InvalidQueueIdentifier = 0x01 => "INVALID QUEUE IDENTIFIER",
        InvalidQueueSize = 0x02 => "INVALID QUEUE SIZE",
        AbortCommandLimitExceeded = 0x03 => "ABORT COMMAND LIMIT EXCEEDED",
        AsyncEventRequestLimitExceeded = 0x05 => "ASYNCHRONOUS EVENT REQUEST LIMIT EXCEEDED",
        InvalidFirmwareSlot = 0x06 => "INVALID FIRMWARE SLOT",
        InvalidFirmwareImage = 0x07 => "INVALID FIRMWARE IMAGE",
        InvalidInterruptVector = 0x08 => "INVALID INTERRUPT VECTOR",
        InvalidLogPage = 0x09 => "INVALID LOG PAGE",
        InvalidFormat = 0x0a => "INVALID FORMAT",
        FirmwareRequiresConventionalReset = 0x0b => "FIRMWARE ACTIVATION REQUIRES CONVENTIONAL RESET",
        InvalidQueueDeletion = 0x0c => "INVALID QUEUE DELETION",
        FeatureNotSaveable = 0x0d => "FEATURE IDENTIFIER NOT SAVEABLE",
        FeatureNotChangeable = 0x0e => "FEATURE NOT CHANGEABLE",
        FeatureNotNamespaceSpecific = 0x0f => "FEATURE NOT NAMESPACE SPECIFIC",
        FirmwareRequiresSubsystemReset = 0x10 => "FIRMWARE ACTIVATION REQUIRES NVM SUBSYSTEM RESET",
        FirmwareRequiresReset = 0x11 => "FIRMWARE ACTIVATION REQUIRES CONTROLLER LEVEL RESET",
        FirmwareRequiresMaxTimeViolation = 0x12 => "FIRMWARE ACTIVATION REQUIRES MAXIMUM TIME VIOLATION",
        FirmwareActivationProhibited = 0x13 => "FIRMWARE ACTIVATION PROHIBITED",
        OverlappingRange = 0x14 => "OVERLAPPING RANGE",
        NamespaceInsufficientCapacity = 0x15 => "NAMESPACE INSUFFICIENT CAPACITY",
        NamespaceIdUnavailable = 0x16 => "NAMESPACE IDENTIFIER UNAVAILABLE",
        NamespaceAlreadyAttached = 0x18 => "NAMESPACE ALREADY ATTACHED",
        NamespaceIsPrivate = 0x19 => "NAMESPACE IS PRIVATE",
        NamespaceNotAttached = 0x1a => "NAMESPACE NOT ATTACHED",
        ThinProvisioningNotSupported = 0x1b => "THIN PROVISIONING NOT SUPPORTED",
        ControllerListInvalid = 0x1c => "CONTROLLER LIST INVALID",
        DeviceSelfTestInProgress = 0x1d => "DEVICE SELF-TEST IN PROGRESS",
        BootPartitionWriteProhibited = 0x1e => "BOOT PARTITION WRITE PROHIBITED",
        InvalidControllerIdentifier = 0x1f => "INVALID CONTROLLER IDENTIFIER",
        InvalidSecondaryControllerState = 0x20 => "INVALID SECONDARY CONTROLLER STATE",
        InvalidControllerResources = 0x21 => "INVALID NUMBER OF CONTROLLER RESOURCES",
        InvalidResourceIdentifier = 0x22 => "INVALID RESOURCE IDENTIFIER",
        SanitizeProhibitedPmrEnabled = 0x23 => "SANITIZE PROHIBITED WHILE PERSISTENT MEMORY REGION IS ENABLED",
        AnaGroupIdentifierInvalid = 0x24 => "ANA GROUP IDENTIFIER INVALID",
        AnaAttachFailed = 0x25 => "ANA ATTACH FAILED",
        ConflictingAttributes = 0x80 => "CONFLICTING ATTRIBUTES",
        InvalidProtectionInformation = 0x81 => "INVALID PROTECTION INFORMATION",
        WriteToReadOnlyRange = 0x82 => "ATTEMPTED WRITE TO READ ONLY RANGE",
        CommandSizeLimitExceeded = 0x83 => "COMMAND SIZE LIMIT EXCEEDED",
    }
}

status_codes! {
    /// Media and data integrity errors (SCT 2h).
    MediaStatus {
        WriteFault = 0x80 => "WRITE FAULT",
        UnrecoveredReadError = 0x81 => "UNRECOVERED READ ERROR",
        GuardCheckError = 0x82 => "END-TO-END GUARD CHECK ERROR",
        ApplicationTagCheckError = 0x83 => "END-TO-END APPLICATION TAG CHECK ERROR",
        ReferenceTagCheckError = 0x84 => "END-TO-END REFERENCE TAG CHECK ERROR",
        CompareFailure = 0x85 => "COMPARE FAILURE",
        AccessDenied = 0x86 => "ACCESS DENIED",
        DeallocatedOrUnwrittenBlock = 0x87 => "DEALLOCATED OR UNWRITTEN LOGICAL BLOCK",
        StorageTagCheckError = 0x88 => "END-TO-END STORAGE TAG CHECK ERROR",
    }
}

status_codes! {
    /// Path related status (SCT 3h).
    PathStatus {
        InternalPathError = 0x00 => "INTERNAL PATH ERROR",
        AsymmetricAccessPersistentLoss = 0x01 => "ASYMMETRIC ACCESS PERSISTENT LOSS",
        AsymmetricAccessInaccessible = 0x02 => "ASYMMETRIC ACCESS INACCESSIBLE",
        AsymmetricAccessTransition = 0x03 => "ASYMMETRIC ACCESS TRANSITION",
        ControllerPathingError = 0x60 => "CONTROLLER PATHING ERROR",
        HostPathingError = 0x70 => "HOST PATHING ERROR",
        CommandAbortedByHost = 0x71 => "COMMAND ABORTED BY HOST",
    }
}

impl GenericStatus {
    const SCT: StatusCodeType = StatusCodeType::Generic;
}
impl CommandSpecificStatus {
    const SCT: StatusCodeType = StatusCodeType::CommandSpecific;
}
impl MediaStatus {
    const SCT: StatusCodeType = StatusCodeType::MediaAndDataIntegrity;
}
impl PathStatus {
    const SCT: StatusCodeType = StatusCodeType::Path;
}

/// The status field of a completion (bits 15:1 of CQE DW3's upper half):
/// SC (bits 7:0 here), SCT (10:8), CRD (12:11), More (13), DNR (14).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(u16);

impl Status {
    pub const SUCCESS: Status = Status(0);

    /// A status with the given type and code, no CRD/More/DNR bits.
    pub const fn new(sct: StatusCodeType, sc: u8) -> Self {
        let sct = match sct {
            StatusCodeType::Generic => 0,
            StatusCodeType::CommandSpecific => 1,
            StatusCodeType::MediaAndDataIntegrity => 2,
            StatusCodeType::Path => 3,
            StatusCodeType::VendorSpecific => 7,
            StatusCodeType::Reserved(c) => c & 7,
        };
        Status(sc as u16 | ((sct as u16) << 8))
    }

    /// Decodes the 16-bit field of a CQE (the phase bit, bit 0, is ignored).
    pub const fn from_completion_field(field: u16) -> Self {
        Status(field >> 1)
    }

    /// The 16-bit CQE field with the phase bit clear.
    pub const fn to_completion_field(self) -> u16 {
        self.0 << 1
    }

    /// Sets Do Not Retry.
    pub const fn with_dnr(self) -> Self {
        Status(self.0 | (1 << 14))
    }

    /// Sets More (more information in the Error Information log).
    pub const fn with_more(self) -> Self {
        Status(self.0 | (1 << 13))
    }

    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    pub fn sct(self) -> StatusCodeType {
        StatusCodeType::from_code((self.0 >> 8) as u8 & 0x7)
    }

    /// Command Retry Delay index (0 = retry at once).
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// SCT 0, SC 0 (the CRD/More/DNR bits do not matter).
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// The generic status, when this is one the specification names.
    pub fn generic(self) -> Option<GenericStatus> {
        (self.sct() == StatusCodeType::Generic).then(|| GenericStatus::from_code(self.sc())).flatten()
    }

    pub fn command_specific(self) -> Option<CommandSpecificStatus> {
        (self.sct() == StatusCodeType::CommandSpecific).then(|| CommandSpecificStatus::from_code(self.sc())).flatten()
    }

    pub fn media(self) -> Option<MediaStatus> {
        (self.sct() == StatusCodeType::MediaAndDataIntegrity).then(|| MediaStatus::from_code(self.sc())).flatten()
    }

    pub fn path(self) -> Option<PathStatus> {
        (self.sct() == StatusCodeType::Path).then(|| PathStatus::from_code(self.sc())).flatten()
    }

    /// The specification's name of this status, or "UNKNOWN".
    pub fn name(self) -> &'static str {
        let named = match self.sct() {
            StatusCodeType::Generic => self.generic().map(GenericStatus::name),
            StatusCodeType::CommandSpecific => self.command_specific().map(CommandSpecificStatus::name),
            StatusCodeType::MediaAndDataIntegrity => self.media().map(MediaStatus::name),
            StatusCodeType::Path => self.path().map(PathStatus::name),
            _ => None,
        };
        named.unwrap_or("UNKNOWN")
    }
}

impl From<GenericStatus> for Status {
    fn from(s: GenericStatus) -> Self {
        s.status()
    }
}
impl From<CommandSpecificStatus> for Status {
    fn from(s: CommandSpecificStatus) -> Self {
        s.status()
    }
}
impl From<MediaStatus> for Status {
    fn from(s: MediaStatus) -> Self {
        s.status()
    }
}
impl From<PathStatus> for Status {
    fn from(s: PathStatus) -> Self {
        s.status()
    }
}

/// `INVALID FIELD IN COMMAND (sct 0h / sc 02h)`, plus ` DNR` / ` MORE`.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sct {:x}h / sc {:02x}h)", self.name(), self.sct().code(), self.sc())?;
        if self.more() {
            f.write_str(" MORE")?;
        }
        if self.dnr() {
            f.write_str(" DNR")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let s = Status::new(StatusCodeType::MediaAndDataIntegrity, 0x81).with_dnr();
        let field = s.to_completion_field() | 1;
        let back = Status::from_completion_field(field);
        assert_eq!(back, s);
        assert_eq!(back.sct(), StatusCodeType::MediaAndDataIntegrity);
        assert_eq!(back.media(), Some(MediaStatus::UnrecoveredReadError));
        assert!(back.dnr() && !back.more());
        assert_eq!(back.to_string(), "UNRECOVERED READ ERROR (sct 2h / sc 81h) DNR");
    }

    #[test]
    fn spec_bit_positions() {
        // CQE DW3 bits 31:17 -> status field bits 15:1 of the 16-bit half:
        // SC 8:1, SCT 11:9, CRD 13:12, M 14, DNR 15.
        #[allow(clippy::unusual_byte_groupings)] // DNR M CRD SCT SC P
        let s = Status::from_completion_field(0b1_1_01_011_00000010_0);
        assert_eq!(s.sc(), 0x02);
        assert_eq!(s.sct(), StatusCodeType::Path);
        assert_eq!(s.crd(), 1);
        assert!(s.more());
        assert!(s.dnr());
        assert!(!s.is_success());
        assert!(Status::from_completion_field(0x0001).is_success(), "phase bit only");
        assert!(Status::SUCCESS.with_dnr().is_success());
    }

    #[test]
    fn named_codes() {
        assert_eq!(Status::from(GenericStatus::LbaOutOfRange).name(), "LBA OUT OF RANGE");
        assert_eq!(Status::from(CommandSpecificStatus::InvalidQueueIdentifier).to_string(), "INVALID QUEUE IDENTIFIER (sct 1h / sc 01h)");
        assert_eq!(Status::from(PathStatus::HostPathingError).path(), Some(PathStatus::HostPathingError));
        assert_eq!(Status::new(StatusCodeType::Generic, 0x17).name(), "UNKNOWN");
        assert_eq!(Status::new(StatusCodeType::VendorSpecific, 0x01).sct(), StatusCodeType::VendorSpecific);
        assert_eq!(Status::new(StatusCodeType::Reserved(5), 0).sct(), StatusCodeType::Reserved(5));
        assert_eq!(GenericStatus::from_code(0x17), None);
        for code in 0..=255u8 {
            if let Some(g) = GenericStatus::from_code(code) {
                assert_eq!(g.code(), code);
            }
        }
    }
}
