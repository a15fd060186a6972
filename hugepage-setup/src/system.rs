//! The machine being set up: a root folder under which `sys/`, `proc/`, `dev/` and
//! `etc/` are read (`/` normally, a fake tree in unit tests), and the [`Os`]
//! operations that are not plain file reads. All unsafe code of the crate is here.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Side effects on the running kernel. [`RealOs`] performs them; unit tests use a
/// fake that records them and imitates the kernel on a fake tree.
pub trait Os {
    /// Effective user is root.
    fn is_root(&self) -> bool;
    /// `modprobe MODULE`; `Err` carries modprobe's message.
    fn modprobe(&self, module: &str) -> Result<(), String>;
    /// Writes a sysfs/procfs attribute (the file must exist).
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Mounts hugetlbfs with the given page size at `target` (which exists).
    fn mount_hugetlbfs(&self, target: &Path, page_size_kb: u64) -> io::Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// This process's soft RLIMIT_MEMLOCK in bytes; `None` means unlimited.
    fn memlock_limit(&self) -> Option<u64>;
    /// Opens a block device exclusively (`O_EXCL`), as the kernel claims a
    /// device it mounts, assembles (md, dm, btrfs, ZFS) or swaps on:
    /// `EBUSY` while anyone holds such a claim. Held, the claim keeps
    /// others from taking the device until the returned value is dropped.
    fn claim(&self, path: &Path) -> io::Result<Box<dyn std::any::Any>>;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealOs;

impl Os for RealOs {
    fn is_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn modprobe(&self, module: &str) -> Result<(), String> {
        let out = Command::new("modprobe").arg(module).stdin(Stdio::null()).output().map_err(|e| format!("cannot run modprobe: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
    }

    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        // One write() call: sysfs attributes take the whole value in one store.
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(value.as_bytes())
    }

    fn mount_hugetlbfs(&self, target: &Path, page_size_kb: u64) -> io::Result<()> {
        let nul = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let target = CString::new(target.as_os_str().as_bytes()).map_err(nul)?;
        let options = CString::new(format!("pagesize={}K", page_size_kb)).map_err(nul)?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call;
        // mount(2) does not keep them.
        let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"hugetlbfs".as_ptr(), 0, options.as_ptr().cast()) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }

    fn memlock_limit(&self) -> Option<u64> {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        Some(lim.rlim_cur)
    }

    fn claim(&self, path: &Path) -> io::Result<Box<dyn std::any::Any>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL | libc::O_CLOEXEC).open(path)?;
        Ok(Box::new(f))
    }
}

/// A machine: where its files are, how to change it, and how long to wait for the
/// kernel to finish an asynchronous change (driver binding, device nodes).
pub struct System<O: Os = RealOs> {
    root: PathBuf,
    pub os: O,
    pub settle: Duration,
}

impl System<RealOs> {
    /// The running machine.
    pub fn real() -> Self {
        Self::new("/", RealOs)
    }
}

impl<O: Os> System<O> {
    pub fn new(root: impl Into<PathBuf>, os: O) -> Self {
        Self { root: root.into(), os, settle: Duration::from_secs(10) }
    }

    /// `rel` (like `sys/bus/pci`) under the root.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Maps a path seen by the machine (`/dev/hugepages`) under the root.
    pub fn host_path(&self, abs: &Path) -> PathBuf {
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    /// The machine's view of a path under the root (inverse of [`System::host_path`]).
    pub fn machine_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => path.to_path_buf(),
        }
    }

    /// Polls `done` until it holds or [`System::settle`] passes.
    pub fn wait_until(&self, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + self.settle;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn write(&self, path: &Path, value: &str) -> Result<()> {
        self.os.write_attr(path, value).map_err(|e| Error::io("writing", path, e))
    }
}

/// Reads a small attribute file, trimmed; `Ok(None)` when it does not exist.
pub fn read_attr(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// Reads and parses a numeric attribute; `Ok(None)` when it does not exist.
pub fn read_number(path: &Path) -> Result<Option<u64>> {
    match read_attr(path)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| Error::Parse { path: path.to_path_buf(), detail: format!("{s:?} is not a number") }),
    }
}

/// The file name a symlink points to (`driver` -> `nvme`); `None` if no link.
pub fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Names in a folder, sorted; empty when it does not exist.
pub fn list_dir(path: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(path) {
        Ok(rd) => {
            let mut names = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| Error::io("listing", path, e))?;
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("listing", path, e)),
    }
}

/// A user from `etc/passwd` under the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

pub fn lookup_user<O: Os>(sys: &System<O>, name: &str) -> Result<User> {
    let path = sys.path("etc/passwd");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
            (f[0] == name).then(|| User { name: name.to_string(), uid, gid })
        })
        .next()
        .ok_or_else(|| Error::UnknownUser(name.to_string()))
}

/// A file some process has open: its pid, command name and the path its
/// descriptor names (as the machine sees it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    pub pid: u32,
    pub command: String,
    pub path: PathBuf,
    /// The descriptor itself (`proc/PID/fd/N` under the root): a stat
    /// through it gives the open file's device and inode, right whatever
    /// mount namespace the process sees its path in.
    pub link: PathBuf,
}

/// Every file open in every process but this one (`/proc/*/fd`). A
/// process that exits or denies access while we look is skipped.
pub fn open_files<O: Os>(sys: &System<O>) -> Result<Vec<OpenFile>> {
    let me = std::process::id();
    let mut out = Vec::new();
    for pid in list_dir(&sys.path("proc"))? {
        let Some(n) = pid.parse::<u32>().ok().filter(|&n| n != me) else { continue };
        let dir = sys.path(format!("proc/{pid}"));
        let command = read_attr(&dir.join("comm")).ok().flatten().unwrap_or_else(|| "?".into());
        for fd in list_dir(&dir.join("fd")).unwrap_or_default() {
            let link = dir.join("fd").join(fd);
            if let Ok(path) = std::fs::read_link(&link) {
                out.push(OpenFile { pid: n, command: command.clone(), path, link });
            }
        }
    }
    Ok(out)
}
