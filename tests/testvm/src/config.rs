//! What a guest looks like: memory, CPUs, emulated NVMe controllers, networking.

use std::time::Duration;

/// Which driver owns the emulated NVMe controllers when the command starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NvmeDriver {
    /// The kernel's `nvme` driver is loaded; namespaces show up as `/dev/nvmeXnY`
    /// before the command starts.
    #[default]
    Kernel,
    /// `vfio-pci` is loaded and every NVMe controller is bound to it;
    /// `/dev/vfio/<group>` exists for each before the command starts.
    Vfio,
}

impl NvmeDriver {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NvmeDriver::Kernel => "kernel",
            NvmeDriver::Vfio => "vfio",
        }
    }
}

/// The shape of one guest. Build it with the chained setters:
///
/// ```
/// use pollux_testvm::{NvmeDriver, VmConfig};
/// let cfg = VmConfig::new().controllers(2).namespaces(2).nvme_driver(NvmeDriver::Vfio);
/// assert_eq!(cfg.controller_count(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub(crate) controllers: u32,
    pub(crate) namespaces: u32,
    pub(crate) namespace_bytes: u64,
    pub(crate) memory_mib: u32,
    pub(crate) cpus: u32,
    pub(crate) hugepages: u32,
    pub(crate) network: bool,
    pub(crate) nvme_driver: NvmeDriver,
    pub(crate) timeout: Duration,
}

/// Most controllers or namespaces per controller a config accepts (QEMU's limit
/// on PCI slots of the root bus is lower than this anyway).
pub const MAX_CONTROLLERS: u32 = 16;
/// Most namespaces per controller a config accepts.
pub const MAX_NAMESPACES: u32 = 32;

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            controllers: 1,
            namespaces: 1,
            namespace_bytes: 256 << 20,
            memory_mib: 1024,
            cpus: 2,
            hugepages: 0,
            network: false,
            nvme_driver: NvmeDriver::Kernel,
            timeout: Duration::from_secs(300),
        }
    }
}

impl VmConfig {
    /// One controller with one 256 MiB namespace on the kernel driver, 1 GiB of
    /// memory, 2 vCPUs, no network, no boot-time hugepages, 300 s timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of emulated NVMe controllers (0 to [`MAX_CONTROLLERS`]).
    pub fn controllers(mut self, n: u32) -> Self {
        self.controllers = n;
        self
    }

    /// Namespaces per controller (1 to [`MAX_NAMESPACES`]).
    pub fn namespaces(mut self, n: u32) -> Self {
        self.namespaces = n;
        self
    }

    /// Size of each namespace in bytes (a sparse file on the host; a multiple of 4 KiB).
    pub fn namespace_size(mut self, bytes: u64) -> Self {
        self.namespace_bytes = bytes;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of virtual CPUs.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// 2 MiB hugepages reserved at boot (`hugepages=` on the kernel command line).
    pub fn hugepages(mut self, n: u32) -> Self {
        self.hugepages = n;
        self
    }

    /// User-mode networking: the guest is 10.0.2.15/24 and reaches the host's
    /// 127.0.0.1 as 10.0.2.2. Without it the guest has only loopback.
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    /// Which driver owns the NVMe controllers when the command starts.
    pub fn nvme_driver(mut self, driver: NvmeDriver) -> Self {
        self.nvme_driver = driver;
        self
    }

    /// Wall-clock bound on the whole run (boot, command, power-off); QEMU is
    /// killed when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn controller_count(&self) -> u32 {
        self.controllers
    }

    pub fn namespace_count(&self) -> u32 {
        self.namespaces
    }

    pub fn driver(&self) -> NvmeDriver {
        self.nvme_driver
    }

    pub fn time_limit(&self) -> Duration {
        self.timeout
    }

    /// Checks the values QEMU or the guest would reject, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.controllers > MAX_CONTROLLERS {
            return Err(format!("{} NVMe controllers requested, at most {MAX_CONTROLLERS}", self.controllers));
        }
        if self.namespaces == 0 || self.namespaces > MAX_NAMESPACES {
            return Err(format!("{} namespaces per controller requested, between 1 and {MAX_NAMESPACES} allowed", self.namespaces));
        }
        if self.namespace_bytes == 0 || self.namespace_bytes % 4096 != 0 {
            return Err(format!("namespace size {} is not a positive multiple of 4096 bytes", self.namespace_bytes));
        }
        if self.memory_mib < 256 {
            return Err(format!("{} MiB of guest memory, at least 256 needed", self.memory_mib));
        }
        let huge_mib = u64::from(self.hugepages) * 2;
        if huge_mib + 192 > u64::from(self.memory_mib) {
            return Err(format!("{} hugepages ({huge_mib} MiB) leave too little of {} MiB guest memory", self.hugepages, self.memory_mib));
        }
        if self.cpus == 0 || self.cpus > 64 {
            return Err(format!("{} vCPUs requested, between 1 and 64 allowed", self.cpus));
        }
        if self.timeout.is_zero() {
            return Err("timeout is zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(VmConfig::new().validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(VmConfig::new().namespaces(0).validate().is_err());
        assert!(VmConfig::new().namespace_size(1000).validate().is_err());
        assert!(VmConfig::new().controllers(17).validate().is_err());
        assert!(VmConfig::new().memory_mib(512).hugepages(200).validate().is_err());
        assert!(VmConfig::new().cpus(0).validate().is_err());
        assert!(VmConfig::new().timeout(Duration::ZERO).validate().is_err());
        assert!(VmConfig::new().memory_mib(512).hugepages(64).validate().is_ok());
    }
}
