//! `status`: hugepages, hugetlbfs mounts, IOMMU/VFIO state and NVMe controllers.

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::Result;
use crate::hugepages::{self, HugetlbfsMount, Pool, format_size_kb};
use crate::nvme::{self, Controller};
use crate::system::{Os, System, list_dir};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub default_page_size_kb: Option<u64>,
    pub hugepages: Vec<Pool>,
    pub hugetlbfs: Vec<HugetlbfsMount>,
    /// The kernel has IOMMU groups (VFIO can work).
    pub iommu: bool,
    pub vfio_pci_loaded: bool,
    pub nvme: Vec<Controller>,
}

pub fn status<O: Os>(sys: &System<O>) -> Result<Status> {
    Ok(Status {
        default_page_size_kb: hugepages::default_page_size_kb(sys)?,
        hugepages: hugepages::pools(sys)?,
        hugetlbfs: hugepages::hugetlbfs_mounts(sys)?,
        iommu: !list_dir(&sys.path("sys/kernel/iommu_groups"))?.is_empty(),
        vfio_pci_loaded: sys.path("sys/bus/pci/drivers/vfio-pci").is_dir(),
        nvme: nvme::controllers(sys, false)?,
    })
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

impl Status {
    /// The human-readable form `pollux-setup status` prints.
    pub fn render(&self) -> String {
        let mut s = String::from("Hugepages\n");
        let _ = writeln!(s, "  {:<6} {:<5} {:>8} {:>8}", "size", "node", "total", "free");
        for p in &self.hugepages {
            let _ = writeln!(s, "  {:<6} {:<5} {:>8} {:>8}", format_size_kb(p.page_size_kb), or_dash(p.node), p.total, p.free);
        }
        s.push_str("Hugetlbfs mounts\n");
        if self.hugetlbfs.is_empty() {
            s.push_str("  none\n");
        }
        for m in &self.hugetlbfs {
            let size = m.page_size_kb.or(self.default_page_size_kb).map(format_size_kb);
            let _ = writeln!(s, "  {} (pagesize {})", m.path.display(), or_dash(size));
        }
        let _ = writeln!(
            s,
            "IOMMU: {}; vfio-pci: {}",
            if self.iommu { "yes" } else { "NO (VFIO cannot work)" },
            if self.vfio_pci_loaded { "loaded" } else { "not loaded" }
        );
        s.push_str("NVMe controllers\n");
        if self.nvme.is_empty() {
            s.push_str("  none\n");
            return s;
        }
        let _ = writeln!(
            s,
            "  {:<13} {:<10} {:<20} {:<9} {:<5} {:<4} namespaces / in use",
            "address", "id", "model", "driver", "group", "numa"
        );
        for c in &self.nvme {
            let id = format!("{}:{}", c.vendor.trim_start_matches("0x"), c.device.trim_start_matches("0x"));
            let mut uses = if c.namespaces.is_empty() { "-".to_string() } else { c.namespaces.join(",") };
            if c.usage.is_empty() {
                uses.push_str(" / no");
            }
            let _ = writeln!(
                s,
                "  {:<13} {:<10} {:<20} {:<9} {:<5} {:<4} {}",
                c.bdf.as_str(),
                id,
                or_dash(c.model.as_deref()),
                or_dash(c.driver.as_deref()),
                or_dash(c.iommu_group),
                or_dash(c.numa_node.filter(|&n| n >= 0)),
                uses
            );
            for u in &c.usage {
                let _ = writeln!(s, "      in use: {u}");
            }
        }
        s
    }
}
