//! A PCI function opened through VFIO (`vfio-ioctls`, type1 IOMMU, no KVM):
//! its container, group and device, BAR0 mapped, PCI config space accesses
//! that return their errors, bus mastering, and the IOMMU mapping of every
//! DMA region (IOVA = virtual address).

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pollux_core::dma::{self, DmaMapper, Iova, MapperId};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::bar::Bar;
use crate::error::PciError;
use crate::pci::{PciAddress, PciFunction};

/// `VFIO_PCI_BAR0_REGION_INDEX` and `VFIO_PCI_CONFIG_REGION_INDEX` (linux/vfio.h).
const BAR0: u32 = 0;
const CONFIG: u32 = 7;
/// `VFIO_PCI_REQ_IRQ_INDEX`: the kernel asks the user to release the device
/// (it is being unbound or removed).
const REQ_IRQ: u32 = 4;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
const MSIX_IRQ: u32 = 2;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
const REGION_FLAG_MMAP: u32 = 1 << 2;
/// PCI command register and its bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Maps DMA regions into one VFIO container.
struct ContainerMapper(Arc<VfioContainer>);

impl DmaMapper for ContainerMapper {
    fn map(&self, vaddr: *mut u8, iova: Iova, len: usize) -> io::Result<()> {
        // SAFETY: `vaddr..vaddr+len` is a DMA region owned by the allocator in
        // pollux-core for the life of the process (or until it is released,
        // which unmaps it from every mapper first). Memory the device may
        // access is only reached through raw pointers and volatile accesses
        // while the device owns it (queues), or belongs to an I/O request that
        // no one references until the device is done (data buffers).
        unsafe { self.0.vfio_dma_map(iova.0, len, vaddr) }.map_err(io::Error::other)
    }

    fn unmap(&self, iova: Iova, len: usize) -> io::Result<()> {
        self.0.vfio_dma_unmap(iova.0, len).map_err(io::Error::other)
    }
}

/// An NVMe controller's PCI function, opened through VFIO.
pub struct VfioPci {
    addr: PciAddress,
    // Drop order: the mapper is unregistered in `Drop`, then BAR0 is
    // unmapped, then the device and finally the container are closed.
    mapper: Option<MapperId>,
    /// Signalled when the kernel wants the device back.
    release_request: Option<EventFd>,
    /// One eventfd per enabled MSI-X vector.
    msix: Vec<EventFd>,
    bar0: Arc<Bar>,
    device: VfioDevice,
    /// Outlives `device`: see [`DeviceLink`].
    _link: DeviceLink,
    _container: Arc<VfioContainer>,
}

/// A directory standing in for the device's sysfs directory when it is
/// opened: named after the device, holding an `iommu_group` link.
///
/// `vfio-ioctls` finds the group from `<path>/iommu_group` twice: when the
/// device is opened and again in `VfioDevice`'s `Drop`, *after* it closed the
/// device, and it unwraps that second lookup. When the kernel is removing the
/// device (hot removal), closing the device lets the removal finish and the
/// sysfs directory vanish, so a sysfs path would make that `Drop` panic (the
/// reactor then aborts the daemon). This directory stays until the device is
/// dropped.
struct DeviceLink {
    /// The directory to remove.
    dir: PathBuf,
    /// `dir/<device name>`, holding the `iommu_group` link.
    path: PathBuf,
}

impl DeviceLink {
    fn new(addr: PciAddress) -> io::Result<DeviceLink> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let group = std::fs::read_link(addr.sysfs_path().join("iommu_group"))?;
        let dir = std::env::temp_dir().join(format!("pollux-vfio-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let link = DeviceLink { path: dir.join(addr.to_string()), dir };
        // Left behind by a process that had our pid and crashed.
        let _ = std::fs::remove_dir_all(&link.dir);
        std::fs::create_dir_all(&link.path)?;
        std::os::unix::fs::symlink(group, link.path.join("iommu_group"))?;
        Ok(link)
    }

    /// The path to open the device by: its last component is the device's
    /// name, as `vfio-ioctls` needs.
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DeviceLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl VfioPci {
    /// Open `addr`, which must be an NVMe controller bound to vfio-pci, map
    /// its BAR0, map all DMA memory into its IOMMU domain and enable bus
    /// mastering.
    pub fn open(addr: PciAddress) -> Result<VfioPci, PciError> {
        let func = PciFunction::probe(addr).ok_or(PciError::NotFound(addr))?;
        if !func.is_nvme() {
            return Err(PciError::NotNvme { addr, class: func.class });
        }
        if func.driver.as_deref() != Some("vfio-pci") {
            return Err(PciError::NotVfio { addr, driver: func.driver.unwrap_or_else(|| "no driver".into()) });
        }
        let container =
            Arc::new(VfioContainer::new(None).map_err(|e| PciError::Vfio { addr, what: "open /dev/vfio/vfio", source: Box::new(e) })?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let link = DeviceLink::new(addr).map_err(|source| PciError::Io {
            addr,
            what: "link its IOMMU group into a temporary directory",
            source,
        })?;
        let device = VfioDevice::new(link.path(), ops, false).map_err(|e| PciError::Vfio {
            addr,
            what: "open the VFIO device",
            source: Box::new(e),
        })?;
        let size = device.get_region_size(BAR0);
        if size < 0x2000 || device.get_region_flags(BAR0) & REGION_FLAG_MMAP == 0 {
            return Err(PciError::Bar0 { addr, size });
        }
        let len = usize::try_from(size).map_err(|_| PciError::Bar0 { addr, size })?;
        // SAFETY: BAR0 of this VFIO device, with the offset and size VFIO
        // reported for it; only `Bar` accesses the mapping.
        let bar0 = unsafe { Bar::map(device.as_raw_fd(), device.get_region_offset(BAR0), len) }.map_err(|source| PciError::Io {
            addr,
            what: "map BAR0",
            source,
        })?;
        let mut pci = VfioPci {
            addr,
            mapper: None,
            release_request: None,
            msix: Vec::new(),
            bar0: Arc::new(bar0),
            device,
            _link: link,
            _container: container.clone(),
        };
        pci.enable_bus_master()?;
        // Hot removal: without this the kernel waits for us forever.
        match EventFd::new(EFD_NONBLOCK) {
            Ok(efd) => match pci.device.enable_irq(REQ_IRQ, vec![&efd]) {
                Ok(()) => pci.release_request = Some(efd),
                Err(e) => tracing::warn!("{addr}: no VFIO release requests ({e}); hot removal is seen only when the device vanishes"),
            },
            Err(e) => tracing::warn!("{addr}: eventfd: {e}"),
        }
        dma::require_hugepages();
        let id = dma::register_mapper(Arc::new(ContainerMapper(container))).map_err(|e| PciError::Dma { addr, source: e })?;
        pci.mapper = Some(id);
        Ok(pci)
    }

    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// Whether the kernel asked for the device back (unbind or removal)
    /// since the last call.
    pub fn release_requested(&self) -> bool {
        self.release_request.as_ref().is_some_and(|e| e.read().is_ok_and(|n| n > 0))
    }

    /// Enable up to `wanted` MSI-X vectors, each signalling an eventfd.
    /// Must happen before the controller is enabled (CC.EN = 1): QEMU does
    /// not deliver vectors enabled later. Returns how many were enabled.
    pub fn enable_msix(&mut self, wanted: u32) -> Result<u32, PciError> {
        let available = self.device.get_irq_info(MSIX_IRQ).map(|i| i.count).unwrap_or(0);
        let n = wanted.min(available);
        if n == 0 {
            return Ok(0);
        }
        let fds = (0..n).map(|_| EventFd::new(EFD_NONBLOCK)).collect::<Result<Vec<_>, _>>().map_err(|source| PciError::Io {
            addr: self.addr,
            what: "create MSI-X eventfds",
            source,
        })?;
        self.device.enable_irq(MSIX_IRQ, fds.iter().collect()).map_err(|e| PciError::Vfio {
            addr: self.addr,
            what: "enable MSI-X",
            source: Box::new(e),
        })?;
        self.msix = fds;
        Ok(n)
    }

    /// The eventfd of MSI-X vector `v`, if enabled.
    pub fn msix_fd(&self, v: u16) -> Option<std::os::fd::RawFd> {
        self.msix.get(usize::from(v)).map(|e| e.as_raw_fd())
    }

    /// BAR0: the controller's registers and doorbells.
    pub fn bar0(&self) -> Arc<Bar> {
        self.bar0.clone()
    }

    /// Read `buf.len()` bytes of PCI configuration space at `offset`.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        let at = self.config_offset(offset, buf.len())?;
        let fd = self.device.as_raw_fd();
        // SAFETY: pread into a buffer we own exclusively, of its own length.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), at) };
        self.config_result("read PCI config space", n, buf.len())
    }

    /// Write `buf` to PCI configuration space at `offset`.
    pub fn config_write(&self, offset: u64, buf: &[u8]) -> Result<(), PciError> {
        let at = self.config_offset(offset, buf.len())?;
        let fd = self.device.as_raw_fd();
        // SAFETY: pwrite from a buffer we own, of its own length.
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), at) };
        self.config_result("write PCI config space", n, buf.len())
    }

    fn config_offset(&self, offset: u64, len: usize) -> Result<libc::off_t, PciError> {
        let size = self.device.get_region_size(CONFIG);
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(PciError::Io {
                addr: self.addr,
                what: "reach PCI config space",
                source: io::Error::new(io::ErrorKind::InvalidInput, format!("{len} bytes at {offset:#x} beyond {size}")),
            });
        }
        libc::off_t::try_from(self.device.get_region_offset(CONFIG) + offset).map_err(|_| PciError::Io {
            addr: self.addr,
            what: "reach PCI config space",
            source: io::Error::new(io::ErrorKind::InvalidInput, "offset too large"),
        })
    }

    fn config_result(&self, what: &'static str, n: isize, want: usize) -> Result<(), PciError> {
        if n < 0 {
            return Err(PciError::Io { addr: self.addr, what, source: io::Error::last_os_error() });
        }
        if n as usize != want {
            return Err(PciError::Io {
                addr: self.addr,
                what,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, format!("{n} of {want} bytes")),
            });
        }
        Ok(())
    }

    /// Let the function reach memory (memory space + bus master) and mask
    /// legacy interrupts (the driver polls).
    fn enable_bus_master(&self) -> Result<(), PciError> {
        let mut cmd = [0u8; 2];
        self.config_read(PCI_COMMAND, &mut cmd)?;
        let v = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
        self.config_write(PCI_COMMAND, &v.to_le_bytes())?;
        let mut back = [0u8; 2];
        self.config_read(PCI_COMMAND, &mut back)?;
        if u16::from_le_bytes(back) & PCI_COMMAND_MASTER == 0 {
            return Err(PciError::Io { addr: self.addr, what: "enable bus mastering", source: io::Error::other("the bit did not stick") });
        }
        Ok(())
    }

    /// PCI vendor and device id from config space.
    pub fn ids(&self) -> Result<(u16, u16), PciError> {
        let mut b = [0u8; 4];
        self.config_read(0, &mut b)?;
        Ok((u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]])))
    }
}

impl Drop for VfioPci {
    fn drop(&mut self) {
        if !self.msix.is_empty() {
            let _ = self.device.disable_irq(MSIX_IRQ);
            self.msix.clear();
        }
        if self.release_request.take().is_some() {
            let _ = self.device.disable_irq(REQ_IRQ);
        }
        if let Some(id) = self.mapper.take() {
            dma::unregister_mapper(id);
        }
        // Stop the function from reaching memory before the device is closed.
        let mut cmd = [0u8; 2];
        if self.config_read(PCI_COMMAND, &mut cmd).is_ok() {
            let v = u16::from_le_bytes(cmd) & !PCI_COMMAND_MASTER;
            let _ = self.config_write(PCI_COMMAND, &v.to_le_bytes());
        }
    }
}
