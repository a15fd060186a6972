//! In the guest: open an emulated NVMe controller bound to vfio-pci through
//! `vfio-ioctls` (no KVM needed), map BAR0 and read the controller registers.

mod mmio;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use pollux_testvm::{NvmeDriver, VmConfig, in_guest};
use vfio_ioctls::{VfioContainer, VfioDevice};

/// `VFIO_PCI_BAR0_REGION_INDEX` and `VFIO_REGION_INFO_FLAG_MMAP` from linux/vfio.h.
const BAR0: u32 = 0;
const REGION_FLAG_MMAP: u32 = 1 << 2;
/// NVMe controller registers (NVMe base spec 1.4, section 3.1).
const REG_CAP: usize = 0x00;
const REG_VS: usize = 0x08;

fn vfio_bound_nvme() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/bus/pci/devices").expect("list PCI devices") {
        let dev = entry.expect("PCI entry").path();
        let class = std::fs::read_to_string(dev.join("class")).unwrap_or_default();
        let driver = std::fs::read_link(dev.join("driver")).unwrap_or_default();
        if class.trim() == "0x010802" && driver.ends_with("vfio-pci") {
            found.push(dev);
        }
    }
    found.sort();
    found
}

#[test]
fn vfio_maps_bar0_and_reads_nvme_version() {
    in_guest(&VmConfig::new().controllers(1).nvme_driver(NvmeDriver::Vfio), || {
        let devices = vfio_bound_nvme();
        assert_eq!(devices.len(), 1, "one NVMe controller bound to vfio-pci: {devices:?}");
        let container = Arc::new(VfioContainer::new(None).expect("open /dev/vfio/vfio"));
        let device = VfioDevice::new(&devices[0], container, false).expect("open VFIO device");

        let size = device.get_region_size(BAR0);
        assert!(size >= 0x1000, "BAR0 is {size} bytes");
        assert_ne!(device.get_region_flags(BAR0) & REGION_FLAG_MMAP, 0, "BAR0 is mmap-able");
        let len = usize::try_from(size).expect("BAR0 size fits usize");
        // SAFETY: BAR0 of this VFIO device, with the offset and size VFIO reported.
        let bar = unsafe { mmio::MappedRegion::map(device.as_raw_fd(), device.get_region_offset(BAR0), len) }.expect("mmap BAR0");

        let vs = bar.read32(REG_VS).expect("VS in bounds");
        println!("NVMe VS = {vs:#010x}, BAR0 {size} bytes");
        assert_eq!(vs, 0x0001_0400, "QEMU 7.2's NVMe controller reports version 1.4.0");
        let cap = bar.read64(REG_CAP).expect("CAP in bounds");
        assert_eq!(cap & 0xffff, 0x7ff, "CAP.MQES: 2048 entries per queue ({cap:#x})");
        assert_ne!(cap & (1 << 37), 0, "CAP.CSS advertises the NVM command set ({cap:#x})");
        assert!(bar.read32(len).is_none(), "reads past BAR0 are refused");
        assert!(bar.read32(2).is_none(), "misaligned reads are refused");
    });
}
