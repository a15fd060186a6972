//! Errors of the set-up library: one variant per failed operation, with context.

use std::io;
use std::path::PathBuf;

use crate::nvme::Bdf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} needs root (run it with sudo, or use --dry-run to see what it would do)")]
    NotRoot { action: &'static str },

    #[error(
        "no IOMMU: {detail}. VFIO cannot work without one; enable it in the firmware and \
         on the kernel command line (intel_iommu=on or amd_iommu=on)"
    )]
    NoIommu { detail: String },

    #[error("the kernel has no vfio-pci driver ({detail}); install a kernel with CONFIG_VFIO_PCI")]
    NoVfioPci { detail: String },

    #[error("`modprobe {module}` failed: {message}")]
    Modprobe { module: String, message: String },

    #[error("hugepage size {0} is not supported by this kernel (see /sys/kernel/mm/hugepages)")]
    UnsupportedPageSize(String),

    #[error("NUMA node {0} does not exist")]
    NoSuchNode(u32),

    #[error("invalid PCI address {0:?} (expected DDDD:BB:DD.F or BB:DD.F)")]
    BadBdf(String),

    #[error("{0} is not an NVMe controller (PCI class 0x010802) on this machine")]
    NotNvme(Bdf),

    #[error("user {0:?} is not in /etc/passwd")]
    UnknownUser(String),

    #[error("{bdf} did not bind to {wanted} (driver now: {now})")]
    BindFailed { bdf: Bdf, wanted: &'static str, now: String },

    #[error("{bdf}: /dev/vfio/{group} did not appear")]
    NoVfioGroupDevice { bdf: Bdf, group: u32 },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot parse {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
