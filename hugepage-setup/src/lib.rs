//! # pollux-setup: prepare a machine for Pollux
//!
//! Pollux's NVMe driver runs in userspace: it needs hugepages for DMA memory, a
//! hugetlbfs mount to allocate them from, and NVMe controllers handed from the
//! kernel's `nvme` driver to `vfio-pci` (which needs an IOMMU). This crate does
//! that, like SPDK's `setup.sh`, and refuses to take a controller that is in use.
//!
//! Every file the logic reads lives under a [`System`] root and every change to
//! the kernel goes through its [`Os`], so the logic runs against a fake tree in
//! unit tests; the real thing is tested in the test VM (`tests/guest.rs`).

mod bind;
mod cleanup;
mod config;
mod error;
mod hugepages;
mod nvme;
mod procfs;
mod status;
mod system;
#[cfg(test)]
mod testing;

pub use bind::{NVME, VFIO_PCI};
pub use cleanup::cleanup;
pub use config::{Amount, ConfigRequest, Report, Selection, config, reset};
pub use error::{Error, Result};
pub use hugepages::{HugetlbfsMount, Pool, format_size_kb, parse_size_kb};
pub use nvme::{Bdf, Controller, NVME_CLASS, Usage, detect_signature};
pub use status::{Status, status};
pub use system::{Os, RealOs, System, User};

/// The parsers of what the kernel (and the command line) give
/// pollux-setup, for the fuzz target `setup_text` (`tests/fuzz`).
pub mod parsers {
    pub use crate::cleanup::{mapped, ours, pid_in_name};
    pub use crate::hugepages::{format_size_kb, parse_size_kb};
    pub use crate::nvme::Bdf;
    pub use crate::procfs::{MountEntry, hugetlbfs_page_size_kb, parse_mountinfo, parse_swaps};
}
