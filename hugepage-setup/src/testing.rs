//! A fake machine for unit tests: a sysfs/procfs/dev tree in a temporary folder
//! and an [`Os`] that records changes and imitates the kernel's reaction to them
//! (unbind removes the `driver` link, `drivers_probe` honours `driver_override`
//! and creates `/dev/vfio/<group>`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use crate::system::{Os, System};

pub struct FakeOs {
    root: PathBuf,
    pub log: Rc<RefCell<Vec<String>>>,
    pub root_user: Cell<bool>,
    pub vfio_available: Cell<bool>,
    pub memlock: Cell<Option<u64>>,
    /// The kernel reserves at most this many hugepages.
    pub max_pages: Cell<u64>,
    /// Devices (`dev/nvme0n1`) someone else claims exclusively.
    pub claimed: RefCell<Vec<String>>,
    /// Claims that succeed before every device is taken by someone else
    /// (a mount racing the checks).
    pub claims_before_race: Cell<usize>,
}

impl Os for FakeOs {
    fn is_root(&self) -> bool {
        self.root_user.get()
    }

    fn modprobe(&self, module: &str) -> Result<(), String> {
        self.log.borrow_mut().push(format!("modprobe {module}"));
        if module == "vfio-pci" {
            if !self.vfio_available.get() {
                return Err("FATAL: Module vfio-pci not found".into());
            }
            let dir = self.root.join("sys/bus/pci/drivers/vfio-pci");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            for f in ["bind", "unbind"] {
                std::fs::write(dir.join(f), "").map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        self.log.borrow_mut().push(format!("write {} {value:?}", self.rel(path)));
        let mut value = value.to_string();
        if path.ends_with("nr_hugepages") {
            let n: u64 = value.trim().parse().map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            value = n.min(self.max_pages.get()).to_string();
        }
        // Like sysfs: the attribute must exist.
        std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
        std::fs::write(path, &value)?;
        let devices = self.root.join("sys/bus/pci/devices");
        if path.ends_with("unbind") {
            let _ = std::fs::remove_file(devices.join(value.trim()).join("driver"));
        } else if path.ends_with("drivers_probe") {
            let dev = devices.join(value.trim());
            let over = std::fs::read_to_string(dev.join("driver_override"))?;
            let driver = match over.trim() {
                "" | "(null)" => "nvme",
                other => other,
            };
            let driver_dir = self.root.join("sys/bus/pci/drivers").join(driver);
            if driver_dir.is_dir() && !dev.join("driver").exists() {
                symlink(&driver_dir, dev.join("driver"))?;
                if driver == "vfio-pci" {
                    let group = std::fs::read_link(dev.join("iommu_group"))?;
                    let group = group.file_name().unwrap_or_default();
                    std::fs::write(self.root.join("dev/vfio").join(group), "")?;
                }
            }
        }
        Ok(())
    }

    fn mount_hugetlbfs(&self, target: &Path, page_size_kb: u64) -> io::Result<()> {
        let seen = Path::new("/").join(self.rel(target));
        self.log.borrow_mut().push(format!("mount hugetlbfs {} {page_size_kb}", seen.display()));
        let info = self.root.join("proc/self/mountinfo");
        let mut text = std::fs::read_to_string(&info)?;
        text.push_str(&format!("99 22 0:99 / {} rw,relatime - hugetlbfs nodev rw,pagesize={}M\n", seen.display(), page_size_kb / 1024));
        std::fs::write(info, text)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.log.borrow_mut().push(format!("chown {} {uid}:{gid}", self.rel(path)));
        Ok(())
    }

    fn memlock_limit(&self) -> Option<u64> {
        self.memlock.get()
    }

    fn claim(&self, path: &Path) -> io::Result<Box<dyn std::any::Any>> {
        let rel = self.rel(path);
        self.log.borrow_mut().push(format!("claim {rel}"));
        if self.claimed.borrow().contains(&rel) || self.claims_before_race.get() == 0 {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.claims_before_race.set(self.claims_before_race.get() - 1);
        std::fs::File::open(path)?;
        Ok(Box::new(Release { log: self.log.clone(), what: rel }))
    }
}

/// A claim of the fake: logs its release when dropped.
struct Release {
    log: Rc<RefCell<Vec<String>>>,
    what: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.log.borrow_mut().push(format!("release {}", self.what));
    }
}

impl FakeOs {
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }
}

/// A fake machine with one NUMA node, 2M and 1G page sizes, an IOMMU, the nvme
/// driver, and no NVMe controllers until [`Fake::controller`] adds them.
pub struct Fake {
    pub dir: tempfile::TempDir,
    pub sys: System<FakeOs>,
}

fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

impl Fake {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let r = |p: &str| root.join(p);
        for size in ["2048", "1048576"] {
            for base in ["sys/kernel/mm/hugepages", "sys/devices/system/node/node0/hugepages"] {
                write(r(&format!("{base}/hugepages-{size}kB/nr_hugepages")), "0\n");
                write(r(&format!("{base}/hugepages-{size}kB/free_hugepages")), "0\n");
            }
        }
        write(r("sys/bus/pci/drivers/nvme/unbind"), "");
        write(r("sys/bus/pci/drivers/nvme/bind"), "");
        write(r("sys/bus/pci/drivers_probe"), "");
        std::fs::create_dir_all(r("sys/bus/pci/devices")).expect("mkdir");
        std::fs::create_dir_all(r("sys/kernel/iommu_groups")).expect("mkdir");
        std::fs::create_dir_all(r("sys/block")).expect("mkdir");
        std::fs::create_dir_all(r("dev/vfio")).expect("mkdir");
        write(r("proc/self/mountinfo"), "22 1 0:21 / / rw,relatime - overlay overlay rw\n");
        write(r("proc/swaps"), "Filename\tType\tSize\tUsed\tPriority\n");
        write(r("proc/meminfo"), "MemTotal: 1000000 kB\nHugepagesize:       2048 kB\n");
        write(r("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1001::/home/alice:/bin/sh\n");
        let os = FakeOs {
            root: root.clone(),
            log: Rc::default(),
            root_user: Cell::new(true),
            vfio_available: Cell::new(true),
            memlock: Cell::new(None),
            max_pages: Cell::new(u64::MAX),
            claimed: RefCell::new(Vec::new()),
            claims_before_race: Cell::new(usize::MAX),
        };
        let mut sys = System::new(root, os);
        sys.settle = Duration::ZERO;
        Fake { dir, sys }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Adds NVMe controller `index` at 0000:00:0{3+index}.0 in IOMMU group
    /// 3+index, on the nvme driver, with namespace `nvme{index}n1` (block
    /// device 259:index) whose contents are `disk`.
    pub fn controller(&self, index: u32, disk: &[u8]) -> String {
        let root = self.root();
        let bdf = format!("0000:00:{:02x}.0", 3 + index);
        let dev = root.join("sys/bus/pci/devices").join(&bdf);
        write(dev.join("class"), "0x010802\n");
        write(dev.join("vendor"), "0x1b36\n");
        write(dev.join("device"), "0x0010\n");
        write(dev.join("numa_node"), "-1\n");
        write(dev.join("driver_override"), "(null)\n");
        let group = root.join(format!("sys/kernel/iommu_groups/{}", 3 + index));
        std::fs::create_dir_all(&group).expect("mkdir");
        symlink(&group, dev.join("iommu_group")).expect("symlink");
        symlink(root.join("sys/bus/pci/drivers/nvme"), dev.join("driver")).expect("symlink");
        let ctrl = dev.join(format!("nvme/nvme{index}"));
        write(ctrl.join("model"), "QEMU NVMe Ctrl                          \n");
        write(ctrl.join("serial"), &format!("pollux{index}\n"));
        let ns = format!("nvme{index}n1");
        std::fs::create_dir_all(ctrl.join(&ns)).expect("mkdir");
        write(root.join(format!("sys/block/{ns}/dev")), &format!("259:{index}\n"));
        std::fs::create_dir_all(root.join(format!("sys/block/{ns}/holders"))).expect("mkdir");
        write(root.join(format!("dev/{ns}")), "");
        std::fs::write(root.join(format!("dev/{ns}")), disk).expect("disk");
        bdf
    }

    /// Process `pid` (command `comm`) has `/dev/{device}` open as fd 3.
    pub fn open_in(&self, pid: u32, comm: &str, device: &str) {
        let dir = self.root().join(format!("proc/{pid}"));
        write(dir.join("comm"), &format!("{comm}\n"));
        std::fs::create_dir_all(dir.join("fd")).expect("mkdir");
        let n = std::fs::read_dir(dir.join("fd")).expect("fd").count() + 3;
        symlink(format!("/dev/{device}"), dir.join(format!("fd/{n}"))).expect("symlink");
    }

    pub fn add_mount(&self, line: &str) {
        let path = self.root().join("proc/self/mountinfo");
        let mut text = std::fs::read_to_string(&path).expect("mountinfo");
        text.push_str(line);
        text.push('\n');
        std::fs::write(path, text).expect("mountinfo");
    }

    pub fn driver(&self, bdf: &str) -> Option<String> {
        crate::system::link_name(&self.root().join("sys/bus/pci/devices").join(bdf).join("driver"))
    }

    /// Every file, folder and link under the root with its contents.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("meta");
                if meta.file_type().is_symlink() {
                    out.insert(path.clone(), format!("-> {}", std::fs::read_link(&path).expect("link").display()));
                } else if meta.is_dir() {
                    out.insert(path.clone(), "dir".into());
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.root(), &mut out);
        out
    }
}

#[path = "tests_fake.rs"]
mod tests_fake;
