//! Moving a PCI function between drivers through sysfs: `driver_override`, the old
//! driver's `unbind`, then `drivers_probe`, waiting for the kernel to finish.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::nvme::Controller;
use crate::system::{Os, System, link_name, list_dir};

pub const VFIO_PCI: &str = "vfio-pci";
pub const NVME: &str = "nvme";

/// Fails with [`Error::NoIommu`] unless the kernel has IOMMU groups and `ctrl` is in one.
pub fn check_iommu<O: Os>(sys: &System<O>, ctrl: &Controller) -> Result<u32> {
    if list_dir(&sys.path("sys/kernel/iommu_groups"))?.is_empty() {
        return Err(Error::NoIommu { detail: "/sys/kernel/iommu_groups is empty".into() });
    }
    ctrl.iommu_group.ok_or_else(|| Error::NoIommu { detail: format!("{} is in no IOMMU group", ctrl.bdf) })
}

/// Loads vfio-pci; [`Error::NoVfioPci`] when the kernel does not have it.
pub fn load_vfio_pci<O: Os>(sys: &System<O>) -> Result<()> {
    let driver_dir = sys.path("sys/bus/pci/drivers/vfio-pci");
    let loaded = sys.os.modprobe(VFIO_PCI);
    if driver_dir.is_dir() {
        return Ok(());
    }
    let detail = match loaded {
        Err(msg) => format!("modprobe vfio-pci: {msg}"),
        Ok(()) => format!("{} is missing after modprobe", sys.machine_path(&driver_dir).display()),
    };
    Err(Error::NoVfioPci { detail })
}

/// `/dev/vfio/<group>` as seen by the machine.
pub fn vfio_group_device(group: u32) -> PathBuf {
    PathBuf::from(format!("/dev/vfio/{group}"))
}

fn rebind<O: Os>(sys: &System<O>, ctrl: &Controller, override_value: &str, wanted: &'static str) -> Result<()> {
    let dir = ctrl.sysfs_dir(sys);
    let bdf = ctrl.bdf.as_str();
    sys.write(&dir.join("driver_override"), override_value)?;
    if dir.join("driver").exists() {
        sys.write(&dir.join("driver/unbind"), bdf)?;
    }
    sys.write(&sys.path("sys/bus/pci/drivers_probe"), bdf)?;
    if !sys.wait_until(|| link_name(&dir.join("driver")).as_deref() == Some(wanted)) {
        let now = link_name(&dir.join("driver")).unwrap_or_else(|| "none".into());
        return Err(Error::BindFailed { bdf: ctrl.bdf.clone(), wanted, now });
    }
    Ok(())
}

/// Binds `ctrl` to vfio-pci and waits for its group device; returns the group.
/// The caller has checked that nothing uses it.
pub fn bind_vfio<O: Os>(sys: &System<O>, ctrl: &Controller, group: u32) -> Result<()> {
    if ctrl.driver.as_deref() != Some(VFIO_PCI) {
        rebind(sys, ctrl, VFIO_PCI, VFIO_PCI)?;
    }
    let node = sys.host_path(&vfio_group_device(group));
    if !sys.wait_until(|| node.exists()) {
        return Err(Error::NoVfioGroupDevice { bdf: ctrl.bdf.clone(), group });
    }
    Ok(())
}

/// Clears the override and lets the nvme driver probe `ctrl` again.
pub fn bind_nvme<O: Os>(sys: &System<O>, ctrl: &Controller) -> Result<()> {
    rebind(sys, ctrl, "\n", NVME)
}
