//! The driver's errors: one variant per failed operation, with its cause.

use pollux_core::dma::DmaError;
use pollux_nvme_spec::cmd::{admin, io};
use pollux_nvme_spec::status::{Status, StatusCodeType};

use crate::pci::PciAddress;
use crate::regs::RegisterError;

/// Opening a PCI function through VFIO failed.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no PCI function {0} (is the address right? `pollux-setup status` lists NVMe devices)")]
    NotFound(PciAddress),
    #[error("{addr} is not an NVMe controller (PCI class {class:#08x})")]
    NotNvme { addr: PciAddress, class: u32 },
    #[error("{addr} is bound to {driver}, not vfio-pci (bind it with `pollux-setup config`)")]
    NotVfio { addr: PciAddress, driver: String },
    #[error("cannot {what} for {addr}: {source}")]
    Vfio { addr: PciAddress, what: &'static str, source: Box<vfio_ioctls::VfioError> },
    #[error("{addr}: BAR0 is missing, too small ({size} bytes) or not mmap-able")]
    Bar0 { addr: PciAddress, size: u64 },
    #[error("cannot {what} of {addr}: {source}")]
    Io { addr: PciAddress, what: &'static str, source: std::io::Error },
    #[error("cannot map DMA memory into the IOMMU of {addr}: {source}")]
    Dma { addr: PciAddress, source: DmaError },
}

/// Which queue a command went to, to name it in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Admin,
    Io,
}

/// A command, as errors name it: queue, opcode and its name, namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandInfo {
    pub queue: QueueKind,
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
}

impl std::fmt::Display for CommandInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.queue {
            QueueKind::Admin => admin::name(self.opcode),
            QueueKind::Io => io::name(self.opcode),
        };
        write!(f, "{name} ({:02x}h, cid {}", self.opcode, self.cid)?;
        if self.nsid != 0 {
            write!(f, ", nsid {}", self.nsid)?;
        }
        f.write_str(")")
    }
}

/// The class of a failed command's status, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{cmd} failed: {status}")]
    Generic { cmd: CommandInfo, status: Status },
    #[error("{cmd} failed (command specific): {status}")]
    CommandSpecific { cmd: CommandInfo, status: Status },
    #[error("{cmd} failed (media error): {status}")]
    Media { cmd: CommandInfo, status: Status },
    #[error("{cmd} failed (path error): {status}")]
    Path { cmd: CommandInfo, status: Status },
    #[error("{cmd} failed (vendor specific): {status}")]
    Vendor { cmd: CommandInfo, status: Status },
}

impl CommandError {
    /// Classify a non-success status of `cmd`.
    pub fn from_status(cmd: CommandInfo, status: Status) -> CommandError {
        match status.sct() {
            StatusCodeType::Generic => CommandError::Generic { cmd, status },
            StatusCodeType::CommandSpecific => CommandError::CommandSpecific { cmd, status },
            StatusCodeType::MediaAndDataIntegrity => CommandError::Media { cmd, status },
            StatusCodeType::Path => CommandError::Path { cmd, status },
            StatusCodeType::VendorSpecific | StatusCodeType::Reserved(_) => CommandError::Vendor { cmd, status },
        }
    }

    pub fn status(&self) -> Status {
        match self {
            CommandError::Generic { status, .. }
            | CommandError::CommandSpecific { status, .. }
            | CommandError::Media { status, .. }
            | CommandError::Path { status, .. }
            | CommandError::Vendor { status, .. } => *status,
        }
    }

    pub fn command(&self) -> CommandInfo {
        match self {
            CommandError::Generic { cmd, .. }
            | CommandError::CommandSpecific { cmd, .. }
            | CommandError::Media { cmd, .. }
            | CommandError::Path { cmd, .. }
            | CommandError::Vendor { cmd, .. } => *cmd,
        }
    }
}

/// A controller operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{cmd} timed out after {ms} ms")]
    Timeout { cmd: CommandInfo, ms: u64 },
    #[error("controller did not become {what} within {ms} ms (CSTS {csts:#x})")]
    NotReady { what: &'static str, ms: u64, csts: u32 },
    #[error("controller reports a fatal status (CSTS.CFS)")]
    Fatal,
    #[error("controller is gone (registers read all ones)")]
    Gone,
    #[error("controller is {0}")]
    State(&'static str),
    #[error("controller does not support {0}")]
    Unsupported(String),
    #[error("controller returned invalid data: {0}")]
    BadData(String),
    #[error(transparent)]
    Dma(#[from] DmaError),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Called off (the application is shutting down, say).
    #[error("{0}")]
    Cancelled(String),
}

impl NvmeError {
    /// The negative errno SPDK's RPCs would report.
    pub fn errno(&self) -> i32 {
        match self {
            NvmeError::Pci(PciError::NotFound(_)) => libc::ENODEV,
            NvmeError::Pci(_) => libc::ENXIO,
            NvmeError::Timeout { .. } | NvmeError::NotReady { .. } => libc::ETIMEDOUT,
            NvmeError::Gone => libc::ENODEV,
            NvmeError::Unsupported(_) => libc::EOPNOTSUPP,
            NvmeError::Invalid(_) => libc::EINVAL,
            NvmeError::Dma(_) => libc::ENOMEM,
            NvmeError::State(_) => libc::EBUSY,
            NvmeError::Cancelled(_) => libc::ECANCELED,
            _ => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollux_nvme_spec::status::{GenericStatus, MediaStatus};

    #[test]
    fn errors_name_the_command_and_status() {
        let cmd = CommandInfo { queue: QueueKind::Io, opcode: io::READ, cid: 7, nsid: 1 };
        let e = CommandError::from_status(cmd, MediaStatus::UnrecoveredReadError.status());
        assert!(matches!(e, CommandError::Media { .. }));
        assert_eq!(e.to_string(), "READ (02h, cid 7, nsid 1) failed (media error): UNRECOVERED READ ERROR (sct 2h / sc 81h)");
        let a = CommandInfo { queue: QueueKind::Admin, opcode: admin::IDENTIFY, cid: 1, nsid: 0 };
        let e = CommandError::from_status(a, GenericStatus::InvalidField.status().with_dnr());
        assert_eq!(e.to_string(), "IDENTIFY (06h, cid 1) failed: INVALID FIELD IN COMMAND (sct 0h / sc 02h) DNR");
        assert_eq!(e.status().generic(), Some(GenericStatus::InvalidField));
        assert_eq!(e.command().opcode, admin::IDENTIFY);
    }
}
