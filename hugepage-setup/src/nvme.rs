//! NVMe controllers (PCI class 0x010802) and whether anything uses them.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hugepages::mount_table;
use crate::procfs::parse_swaps;
use crate::system::{OpenFile, Os, System, link_name, list_dir, open_files, read_attr};

pub const NVME_CLASS: &str = "0x010802";

/// A PCI address, normalised to `dddd:bb:dd.f` in lower case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Bdf(String);

impl Bdf {
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        let full = if t.matches(':').count() == 1 { format!("0000:{t}") } else { t };
        let bad = || Error::BadBdf(text.to_string());
        let (domain, rest) = full.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
        let dev_ok = hex(dev, 2) && u8::from_str_radix(dev, 16).is_ok_and(|d| d < 32);
        let func_ok = func.len() == 1 && matches!(func.as_bytes()[0], b'0'..=b'7');
        if !(hex(domain, 4) && hex(bus, 2) && dev_ok && func_ok) {
            return Err(bad());
        }
        Ok(Bdf(full))
    }

    /// Comma-separated list, as given to `--allow` / `--block`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>> {
        text.split(',').filter(|s| !s.trim().is_empty()).map(Bdf::parse).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that makes it unsafe to take a controller away from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Usage {
    /// A file system on the namespace or one of its partitions is mounted.
    Mounted { device: String, mount_point: PathBuf },
    /// Active swap.
    Swap { device: String },
    /// Another block device (device-mapper/LVM, md RAID) is built on it.
    Holder { device: String, holder: String },
    /// Claimed exclusively: an `O_EXCL` open fails with EBUSY. What the
    /// other checks cannot see: a mount in another mount namespace, a
    /// btrfs or ZFS pool member, md, bcache, a program holding it O_EXCL.
    Claimed { device: String },
    /// A process has the device (a namespace, a partition, the
    /// controller's character device, or the VFIO group) open.
    Open { device: String, pid: u32, command: String },
    /// Not in use, but holds data (a partition table or file-system signature)
    /// that binding would expose to a userspace driver. Only this one yields to `--force`.
    Data { device: String, what: String },
}

impl Usage {
    /// A program has the controller open through VFIO (its group or its
    /// device file).
    pub fn is_vfio_open(&self) -> bool {
        matches!(self, Usage::Open { device, .. } if device.starts_with("vfio/"))
    }

    /// Whether this use still refuses binding with or without `--force`.
    pub fn refuses(&self, force: bool) -> bool {
        !matches!(self, Usage::Data { .. }) || !force
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Usage::Mounted { device, mount_point } => {
                write!(f, "/dev/{device} is mounted on {} (unmount it first)", mount_point.display())
            }
            Usage::Swap { device } => write!(f, "/dev/{device} is active swap (swapoff it first)"),
            Usage::Holder { device, holder } => {
                write!(f, "/dev/{device} is held by {holder} (device-mapper/LVM/md; deactivate it first)")
            }
            Usage::Claimed { device } => write!(
                f,
                "/dev/{device} is claimed exclusively by the kernel or a program (a file system mounted in \
                 another mount namespace, a btrfs/ZFS/md member, an O_EXCL open; release it first)"
            ),
            Usage::Open { device, pid, command } => {
                write!(f, "/dev/{device} is open in process {pid} ({command}; stop it first)")
            }
            Usage::Data { device, what } => {
                write!(f, "/dev/{device} contains {what} (--force binds anyway)")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Controller {
    pub bdf: Bdf,
    pub vendor: String,
    pub device: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
    /// Block devices of its namespaces (only while the kernel driver owns it).
    pub namespaces: Vec<String>,
    pub usage: Vec<Usage>,
}

impl Controller {
    pub fn sysfs_dir<O: Os>(&self, sys: &System<O>) -> PathBuf {
        sys.path(format!("sys/bus/pci/devices/{}", self.bdf))
    }
}

/// Every NVMe controller on the PCI bus, sorted by address. With
/// `probe_claims`, each namespace and partition nothing else shows in use
/// is probed with an exclusive open (`config` and `reset` do; `status`
/// does not: for that instant the probe is a claim, and a mount or an
/// array assembly racing it would fail).
pub fn controllers<O: Os>(sys: &System<O>, probe_claims: bool) -> Result<Vec<Controller>> {
    let mut found = Vec::new();
    let context = UsageContext::read(sys, probe_claims)?;
    for name in list_dir(&sys.path("sys/bus/pci/devices"))? {
        let dir = sys.path("sys/bus/pci/devices").join(&name);
        if read_attr(&dir.join("class"))?.as_deref() != Some(NVME_CLASS) {
            continue;
        }
        let Ok(bdf) = Bdf::parse(&name) else { continue };
        let ctrl_names: Vec<String> = list_dir(&dir.join("nvme"))?.into_iter().filter(|n| n.starts_with("nvme")).collect();
        let ctrl_dir = ctrl_names.first().map(|c| dir.join("nvme").join(c));
        let attr = |file: &str| -> Result<Option<String>> {
            match &ctrl_dir {
                Some(d) => Ok(read_attr(&d.join(file))?.filter(|s| !s.is_empty())),
                None => Ok(None),
            }
        };
        let mut namespaces = Vec::new();
        for ctrl in &ctrl_names {
            namespaces.extend(namespaces_of(sys, &dir.join("nvme").join(ctrl), ctrl)?);
        }
        namespaces.sort();
        namespaces.dedup();
        let mut usage = Vec::new();
        for ns in &namespaces {
            usage.extend(context.usage_of(sys, ns)?);
            // Its generic character device (`nvme io-passthru`, io_uring).
            if let Some(rest) = ns.strip_prefix("nvme") {
                usage.extend(openers(&context.open, &format!("ng{rest}")));
            }
        }
        for ctrl in &ctrl_names {
            usage.extend(openers(&context.open, ctrl));
        }
        let iommu_group: Option<u32> = link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok());
        if let Some(g) = iommu_group {
            // A program driving it through VFIO (Pollux, SPDK, a VM): by its
            // group, or by its device file (iommufd, `/dev/vfio/devices/`).
            usage.extend(openers(&context.open, &format!("vfio/{g}")));
        }
        for cdev in list_dir(&dir.join("vfio-dev"))?.into_iter().filter(|n| n.starts_with("vfio")) {
            usage.extend(openers(&context.open, &format!("vfio/devices/{cdev}")));
        }
        found.push(Controller {
            vendor: read_attr(&dir.join("vendor"))?.unwrap_or_default(),
            device: read_attr(&dir.join("device"))?.unwrap_or_default(),
            model: attr("model")?,
            serial: attr("serial")?,
            driver: link_name(&dir.join("driver")),
            iommu_group,
            numa_node: read_attr(&dir.join("numa_node"))?.and_then(|n| n.parse().ok()),
            bdf,
            namespaces,
            usage,
        });
    }
    Ok(found)
}

/// `nvme0n1` entries of a controller; with native multipath the namespaces are
/// heads (`/sys/block/nvmeXnY`) whose `multipath/` lists this controller's paths.
fn namespaces_of<O: Os>(sys: &System<O>, ctrl_dir: &std::path::Path, ctrl: &str) -> Result<Vec<String>> {
    let is_ns = |n: &str| {
        n.strip_prefix("nvme").and_then(|r| r.split_once('n')).is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit())
        })
    };
    let mut names: Vec<String> = list_dir(ctrl_dir)?.into_iter().filter(|n| is_ns(n)).collect();
    let instance = ctrl.strip_prefix("nvme").unwrap_or("");
    let path_marker = format!("c{instance}n");
    for block in list_dir(&sys.path("sys/block"))?.into_iter().filter(|n| is_ns(n)) {
        let paths = list_dir(&sys.path(format!("sys/block/{block}/multipath")))?;
        if paths.iter().any(|p| p.starts_with("nvme") && p.contains(&path_marker)) {
            names.push(block);
        }
    }
    Ok(names)
}

/// Mount table, swap list and open files, read once per listing.
struct UsageContext {
    mounts: Vec<crate::procfs::MountEntry>,
    swaps: Vec<String>,
    open: Vec<OpenFile>,
    probe_claims: bool,
}

/// Who has `/dev/{device}` open.
fn openers(open: &[OpenFile], device: &str) -> Vec<Usage> {
    let path = Path::new("/dev").join(device);
    open.iter()
        .filter(|f| f.path == path)
        .map(|f| Usage::Open { device: device.to_string(), pid: f.pid, command: f.command.clone() })
        .collect()
}

/// Claim `/dev/{device}` exclusively: the claim (dropped, it goes), `None`
/// where the node is missing or not ours to open (that says nothing), or
/// the use that someone else's claim is.
fn claim<O: Os>(sys: &System<O>, device: &str) -> std::result::Result<Option<Box<dyn std::any::Any>>, Usage> {
    match sys.os.claim(&sys.path(format!("dev/{device}"))) {
        Ok(held) => Ok(Some(held)),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Usage::Claimed { device: device.to_string() }),
        Err(_) => Ok(None),
    }
}

/// Claims every namespace of `ctrl` exclusively, so that nothing mounts or
/// assembles it or one of its partitions between the checks and the
/// unbind (a claim on the whole disk keeps its partitions from being
/// claimed: claiming those too, each claim its own holder, refused every
/// partitioned namespace); the claims go when dropped. A namespace
/// claimed by someone else (or one of whose partitions is) is refused.
pub fn claim_all<O: Os>(sys: &System<O>, ctrl: &Controller) -> std::result::Result<Vec<Box<dyn std::any::Any>>, Vec<Usage>> {
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for device in &ctrl.namespaces {
        match claim(sys, device) {
            Ok(h) => held.extend(h),
            Err(u) => refused.push(u),
        }
    }
    if refused.is_empty() { Ok(held) } else { Err(refused) }
}

impl UsageContext {
    fn read<O: Os>(sys: &System<O>, probe_claims: bool) -> Result<Self> {
        let swaps_path = sys.path("proc/swaps");
        let swaps = match std::fs::read(&swaps_path) {
            Ok(t) => parse_swaps(&String::from_utf8_lossy(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("reading", swaps_path, e)),
        };
        Ok(Self { mounts: mount_table(sys)?, swaps, open: open_files(sys)?, probe_claims })
    }

    /// Uses of a namespace block device and of its partitions.
    fn usage_of<O: Os>(&self, sys: &System<O>, ns: &str) -> Result<Vec<Usage>> {
        let block_dir = sys.path(format!("sys/block/{ns}"));
        let partitions: Vec<String> = list_dir(&block_dir)?.into_iter().filter(|p| p.starts_with(ns) && p.len() > ns.len()).collect();
        let mut uses = Vec::new();
        let mut devices = vec![(ns.to_string(), block_dir.clone())];
        devices.extend(partitions.iter().map(|p| (p.clone(), block_dir.join(p))));
        for (device, dir) in &devices {
            let dev_no = read_attr(&dir.join("dev"))?;
            let dev_path = format!("/dev/{device}");
            for m in &self.mounts {
                if dev_no.as_deref() == Some(m.dev.as_str()) || m.source == dev_path {
                    uses.push(Usage::Mounted { device: device.clone(), mount_point: m.mount_point.clone() });
                }
            }
            if self.swaps.contains(&dev_path) {
                uses.push(Usage::Swap { device: device.clone() });
            }
            uses.extend(openers(&self.open, device));
            for holder in list_dir(&dir.join("holders"))? {
                let name = read_attr(&sys.path(format!("sys/block/{holder}/dm/name")))?;
                let holder = match name {
                    Some(n) if !n.is_empty() => format!("{holder} ({n})"),
                    _ => holder,
                };
                uses.push(Usage::Holder { device: device.clone(), holder });
            }
        }
        // A claim says nothing new about a device known mounted, swapped on
        // or held (a partition's claim makes its disk look claimed too);
        // on one none of those checks saw, it is what they missed.
        let kernel_use = uses.iter().any(|u| matches!(u, Usage::Mounted { .. } | Usage::Swap { .. } | Usage::Holder { .. }));
        if !kernel_use && self.probe_claims {
            // A probe: the claim goes at once.
            uses.extend(devices.iter().filter_map(|(device, _)| claim(sys, device).err()));
        }
        if !partitions.is_empty() {
            uses.push(Usage::Data { device: ns.to_string(), what: format!("{} partition(s)", partitions.len()) });
        } else if let Some(what) = signature(sys, ns)? {
            uses.push(Usage::Data { device: ns.to_string(), what });
        }
        Ok(uses)
    }
}

/// Bytes read from the start of a namespace to look for signatures.
const PROBE_BYTES: usize = 68 * 1024;

/// A partition-table or file-system signature at the start of `/dev/NAME`.
fn signature<O: Os>(sys: &System<O>, name: &str) -> Result<Option<String>> {
    let path = sys.path(format!("dev/{name}"));
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    match std::fs::File::open(&path) {
        Ok(f) => {
            f.take(PROBE_BYTES as u64).read_to_end(&mut buf).map_err(|e| Error::io("reading", &path, e))?;
        }
        // No device node (or no permission): nothing to say about its contents.
        Err(_) => return Ok(None),
    }
    Ok(detect_signature(&buf).map(str::to_string))
}

/// Well-known magic numbers, checked against the first bytes of a disk.
pub fn detect_signature(buf: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| buf.get(off..off + magic.len()) == Some(magic);
    if at(512, b"EFI PART") {
        return Some("a GPT partition table");
    }
    if at(512, b"LABELONE") || at(1024, b"LABELONE") {
        return Some("an LVM physical volume");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("a LUKS volume");
    }
    if at(0, b"XFSB") {
        return Some("an XFS file system");
    }
    if at(0x438, &[0x53, 0xef]) {
        return Some("an ext2/3/4 file system");
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some("a btrfs file system");
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return Some("a swap area");
    }
    // An MBR: boot signature plus at least one non-empty partition entry.
    if at(510, &[0x55, 0xaa]) && (0..4).any(|i| buf.get(446 + i * 16 + 4).is_some_and(|&t| t != 0)) {
        return Some("an MBR partition table");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parsing_normalises_and_rejects() {
        assert_eq!(Bdf::parse("00:03.0").unwrap().as_str(), "0000:00:03.0");
        assert_eq!(Bdf::parse("0000:AF:1f.7").unwrap().as_str(), "0000:af:1f.7");
        for bad in ["", "03.0", "0000:00:03", "0000:00:20.0", "0000:00:03.8", "zz:00.0", "0:00:03.0"] {
            assert!(Bdf::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Bdf::parse_list("00:03.0, 00:04.0,").unwrap().len(), 2);
        assert!(Bdf::parse_list("00:03.0,nope").is_err());
    }

    #[test]
    fn signatures_are_recognised() {
        let mut disk = vec![0u8; PROBE_BYTES];
        assert_eq!(detect_signature(&disk), None);
        disk[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(detect_signature(&disk), Some("an ext2/3/4 file system"));
        let mut gpt = vec![0u8; 1024];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(detect_signature(&gpt), Some("a GPT partition table"));
        let mut mbr = vec![0u8; 1024];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(detect_signature(&mbr), None, "boot signature alone is not a table");
        mbr[446 + 4] = 0x83;
        assert_eq!(detect_signature(&mbr), Some("an MBR partition table"));
        assert_eq!(detect_signature(b"short"), None);
    }

    #[test]
    fn only_data_yields_to_force() {
        let mounted = Usage::Mounted { device: "nvme0n1".into(), mount_point: "/mnt".into() };
        let data = Usage::Data { device: "nvme0n1".into(), what: "x".into() };
        assert!(mounted.refuses(true) && mounted.refuses(false));
        assert!(data.refuses(false) && !data.refuses(true));
        assert!(mounted.to_string().contains("mounted on /mnt"));
    }
}
