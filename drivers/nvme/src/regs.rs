//! The controller's register window as a trait, so the driver runs against a
//! mapped BAR ([`crate::sys::Bar`]) or, in tests, a fake controller.

use pollux_nvme_spec::registers::{Cap, Cc, Csts, Version, offset};

/// A register access that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("register access of {width} bytes at {offset:#x} is outside the {len}-byte window or misaligned")]
    OutOfBounds { offset: usize, width: usize, len: usize },
}

/// 32- and 64-bit register accesses (never wider: some controllers, QEMU's
/// among them, only take accesses of 8 bytes or less).
pub trait Registers: Send + Sync {
    fn read32(&self, offset: usize) -> Result<u32, RegisterError>;
    fn read64(&self, offset: usize) -> Result<u64, RegisterError>;
    fn write32(&self, offset: usize, value: u32) -> Result<(), RegisterError>;
    fn write64(&self, offset: usize, value: u64) -> Result<(), RegisterError>;
    /// The register window's size in bytes, if it is bounded: the
    /// doorbells of the queues used must lie inside it.
    fn window_len(&self) -> Option<usize> {
        None
    }
}

/// Typed accessors for the registers bring-up uses.
pub(crate) trait ControllerRegisters {
    fn cap(&self) -> Result<Cap, RegisterError>;
    fn vs(&self) -> Result<Version, RegisterError>;
    fn cc(&self) -> Result<Cc, RegisterError>;
    fn set_cc(&self, cc: Cc) -> Result<(), RegisterError>;
    fn csts(&self) -> Result<Csts, RegisterError>;
}

impl<R: Registers + ?Sized> ControllerRegisters for R {
    fn cap(&self) -> Result<Cap, RegisterError> {
        self.read64(offset::CAP as usize).map(Cap)
    }
    fn vs(&self) -> Result<Version, RegisterError> {
        self.read32(offset::VS as usize).map(Version)
    }
    fn cc(&self) -> Result<Cc, RegisterError> {
        self.read32(offset::CC as usize).map(Cc)
    }
    fn set_cc(&self, cc: Cc) -> Result<(), RegisterError> {
        self.write32(offset::CC as usize, cc.0)
    }
    fn csts(&self) -> Result<Csts, RegisterError> {
        self.read32(offset::CSTS as usize).map(Csts)
    }
}
