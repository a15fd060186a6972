//! # pollux-testvm: a QEMU guest for tests that need a real kernel
//!
//! The host has no `/dev/vfio`, no kernel modules and no NVMe devices; a guest has
//! all three. This crate boots a Debian 6.1 kernel under QEMU TCG with emulated
//! NVMe controllers behind an emulated Intel IOMMU, with the host's root file
//! system shared read-only over 9p (plus a tmpfs overlay) as the guest's root, so
//! host binaries -- cargo test binaries included -- run in it unchanged.
//!
//! - [`setup`] prepares the cache once (Debian packages, guest kernel, initramfs);
//!   the `pollux-testvm setup` command calls it.
//! - [`TestVm::run`] runs one [`GuestCommand`] in a fresh guest and returns its
//!   [`GuestOutput`] (status, stdout, stderr, console, timing); a VM that fails to
//!   boot, hangs or loses the status is an [`Error::Infrastructure`] instead.
//! - [`in_guest`] turns a `#[test]` into a test whose body runs in the guest.
//!
//! See `docs/testvm.md` for the design and the boot protocol.

mod config;
mod error;
mod guest_test;
mod initramfs;
mod kernel;
mod setup;
mod slot;
mod vm;

pub use config::{MAX_CONTROLLERS, MAX_NAMESPACES, NvmeDriver, VmConfig};
pub use error::{Error, InfraFailure, Infrastructure, Result, SETUP_COMMAND};
pub use guest_test::{TEST_ENV, in_guest, soft_roce};
pub use setup::{Cache, KERNEL_META, PACKAGES, SetupOptions, default_cache_dir, setup};
pub use vm::{GUEST_ENV, GuestCommand, GuestOutput, TestVm, Timing};

/// True when this process runs inside a test guest.
pub fn is_guest() -> bool {
    std::env::var_os(GUEST_ENV).is_some()
}
