//! PCI addresses and the sysfs facts the driver checks before opening a
//! device: class, vendor and device ids, the bound kernel driver.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The PCI class code of an NVM Express controller (mass storage, NVM, NVMe).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// A PCI address, `DDDD:BB:DD.F`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// A string that is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a PCI address (expected DDDD:BB:DD.F, for example 0000:00:04.0)")]
pub struct BadPciAddress(pub String);

impl FromStr for PciAddress {
    type Err = BadPciAddress;

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), as SPDK and lspci write them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPciAddress(s.to_string());
        let hex = |t: &str, max_len: usize| -> Result<u32, BadPciAddress> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let (rest, func) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [d, b, v] => (hex(d, 4)?, hex(b, 2)?, hex(v, 2)?),
            [b, v] => (0, hex(b, 2)?, hex(v, 2)?),
            _ => return Err(bad()),
        };
        let function = hex(func, 1)?;
        if dev > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(PciAddress { domain: domain as u16, bus: bus as u8, device: dev as u8, function: function as u8 })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

impl PciAddress {
    /// `/sys/bus/pci/devices/<address>`.
    pub fn sysfs_path(&self) -> PathBuf {
        PathBuf::from(format!("/sys/bus/pci/devices/{self}"))
    }
}

/// What sysfs says about a PCI function.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PciFunction {
    pub address: String,
    pub class: u32,
    pub vendor_id: u16,
    pub device_id: u16,
    /// The bound kernel driver (`vfio-pci`, `nvme`), if any.
    pub driver: Option<String>,
    /// The IOMMU group, if the function is in one.
    pub iommu_group: Option<u32>,
}

fn read_hex(path: PathBuf) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

impl PciFunction {
    /// Reads the function's facts from sysfs; `None` if it does not exist.
    pub fn probe(addr: PciAddress) -> Option<PciFunction> {
        let dir = addr.sysfs_path();
        let class = read_hex(dir.join("class"))?;
        let name_of =
            |link: &str| std::fs::read_link(dir.join(link)).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        Some(PciFunction {
            address: addr.to_string(),
            class,
            vendor_id: read_hex(dir.join("vendor")).unwrap_or(0) as u16,
            device_id: read_hex(dir.join("device")).unwrap_or(0) as u16,
            driver: name_of("driver"),
            iommu_group: name_of("iommu_group").and_then(|g| g.parse().ok()),
        })
    }

    pub fn is_nvme(&self) -> bool {
        self.class == NVME_CLASS
    }
}

/// Every NVMe controller sysfs knows, sorted by address.
pub fn nvme_functions() -> Vec<(PciAddress, PciFunction)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else { return out };
    for entry in dir.flatten() {
        let Ok(addr) = entry.file_name().to_string_lossy().parse::<PciAddress>() else { continue };
        if let Some(f) = PciFunction::probe(addr).filter(PciFunction::is_nvme) {
            out.push((addr, f));
        }
    }
    out.sort_by_key(|(a, _)| *a);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_addresses() {
        let a: PciAddress = "0000:00:04.0".parse().unwrap();
        assert_eq!(a, PciAddress { domain: 0, bus: 0, device: 4, function: 0 });
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b: PciAddress = "3a:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3a:1f.7");
        assert_eq!("ABCD:EF:01.2".parse::<PciAddress>().unwrap().to_string(), "abcd:ef:01.2");
        for bad in [
            "",
            "0000:00:04",
            "00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "x000:00:04.0",
            "00000:00:04.0",
            "0000:00:04.0.1",
            "0000:000:04.0",
            "../../x:00.0",
            "0000:00:04.0 ",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(a.sysfs_path(), PathBuf::from("/sys/bus/pci/devices/0000:00:04.0"));
    }
}
