//! Pollux's userspace NVMe driver: NVMe controllers on PCIe, reached through
//! VFIO, polled by the reactors, and exposed as bdevs (SPDK's `bdev_nvme`).
//!
//! - [`sys`]: all hardware access and nearly all `unsafe`: the BAR mapping
//!   (`Bar`, bounds-checked volatile accesses), VFIO (container, group,
//!   device, PCI config space, IOMMU mappings of DMA memory) and
//!   device-shared memory. Elsewhere only `AdminQueue`'s `Send` (its DMA
//!   memory is region-backed, see `admin.rs`) and the test-only fake
//!   controller's copies to and from IOVAs (`fake.rs`).
//! - [`regs`]: the register window as a trait, so everything above runs
//!   against a BAR or a fake controller in tests.
//! - [`queue`], [`prp`]: queue rings (phase tags, doorbells) and data
//!   pointers (PRP lists, SGLs, splitting requests into commands).
//! - [`admin`], [`controller`]: the admin queue, bring-up, identify,
//!   features, log pages, format, reset and shutdown.
//! - [`qpair`]: a reactor's I/O queue pair (created on first use by the
//!   controller's I/O channel), submission and the completion poller.
//! - [`bdev`]: one bdev per namespace and the `bdev_nvme_*` RPC methods.

pub mod admin;
pub mod bdev;
pub mod controller;
pub mod error;
pub mod pci;
pub mod prp;
pub mod qpair;
pub mod queue;
pub mod regs;
pub mod sys;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use pollux_core::app::App;

pub use controller::DataDirection;
pub use controller::{Controller, ControllerOptions, Namespace, State, TimeoutAction};
pub use error::{CommandError, NvmeError, PciError};
pub use pci::PciAddress;

/// Register the nvme bdev module's RPC methods with the app.
pub fn register(app: &mut App) {
    bdev::rpc::register(app);
}
