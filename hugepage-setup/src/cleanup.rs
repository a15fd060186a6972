//! `cleanup`: hugepage files left in hugetlbfs mounts by processes that died
//! without removing them still pin their pages. A file is stale when its name
//! is one DPDK, SPDK or Pollux gives (`<prefix>map_<n>`, `spdk_pid<pid>map_<n>`,
//! `pollux_pid<pid>_<n>`), no live process has it open or mapped and, if its
//! name carries a pid, that process is gone. Other files are left alone (a
//! database's or a VM's persistent hugetlbfs files are not ours to remove).
//!
//! Open and mapped files are matched by device and inode as well as by
//! path: a process in a container sees its hugepage files under its own
//! mount namespace's paths (a Kubernetes pod's `/dev/hugepages` is a
//! kubelet folder on the host), and its pid in the names is its own
//! namespace's, so by path and pid alone its files looked stale.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::Report;
use crate::error::{Error, Result};
use crate::hugepages::hugetlbfs_mounts;
use crate::system::{Os, System, list_dir, open_files};

/// Files open or mapped by any process: by path (as the process sees
/// it) and by device and inode.
#[derive(Default)]
struct Referenced {
    paths: HashSet<PathBuf>,
    ids: HashSet<(u64, u64)>,
}

impl Referenced {
    fn contains(&self, seen: &Path, file: &Path) -> bool {
        self.paths.contains(seen) || file_id(file).is_some_and(|id| self.ids.contains(&id))
    }
}

/// A file's device and inode.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn referenced<O: Os>(sys: &System<O>) -> Result<Referenced> {
    let mut refs = Referenced::default();
    for f in open_files(sys)? {
        refs.ids.extend(file_id(&f.link));
        refs.paths.insert(f.path);
    }
    for pid in list_dir(&sys.path("proc"))?.iter().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        let proc_dir = sys.path(format!("proc/{pid}"));
        // A process may exit or deny access while we look: skip what cannot be read.
        // Bytes, not text: one path that is not UTF-8 made the whole file
        // unreadable, and that process's mappings went uncounted.
        if let Ok(maps) = std::fs::read(proc_dir.join("maps")) {
            for (path, id) in maps.split(|&b| b == b'\n').filter_map(mapped) {
                refs.paths.insert(path);
                refs.ids.extend(id);
            }
        }
    }
    Ok(refs)
}

/// The file a `/proc/PID/maps` line maps (`address perms offset dev inode
/// path`; the path may hold spaces and any bytes), if any, with its
/// device and inode (`dev` as hex `major:minor`, the inode in decimal)
/// when they read as such.
pub fn mapped(line: &[u8]) -> Option<(PathBuf, Option<(u64, u64)>)> {
    use std::os::unix::ffi::OsStrExt;
    let mut fields = [&line[..0]; 5];
    let mut rest = line;
    for field in &mut fields {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        rest = &rest[start..];
        let end = rest.iter().position(|b| b.is_ascii_whitespace())?;
        (*field, rest) = rest.split_at(end);
    }
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let path = &rest[start..];
    if path.first() != Some(&b'/') {
        return None;
    }
    let id = || {
        let (major, minor) = std::str::from_utf8(fields[3]).ok()?.split_once(':')?;
        let dev = libc::makedev(u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
        Some((dev, std::str::from_utf8(fields[4]).ok()?.parse().ok()?))
    };
    Some((PathBuf::from(std::ffi::OsStr::from_bytes(path)), id()))
}

/// Whether a hugetlbfs file's name is one DPDK (`<prefix>map_<n>`), SPDK
/// (`spdk_pid<pid>map_<n>`) or Pollux (`pollux_pid<pid>_<n>`) gives.
pub fn ours(name: &str) -> bool {
    let dpdk = name.rsplit_once("map_").is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    dpdk || (name.starts_with("pollux_pid") && pid_in_name(name).is_some())
}

/// The pid in names like `spdk_pid1234map_0` or `pollux_pid1234_7`.
pub fn pid_in_name(name: &str) -> Option<u32> {
    let (_, rest) = name.split_once("pid")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for name in list_dir(dir)? {
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("inspecting", &path, e))?;
        if meta.is_dir() {
            out.extend(files_in(&path)?);
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

pub fn cleanup<O: Os>(sys: &System<O>, dry_run: bool) -> Result<Report> {
    if !dry_run && !sys.os.is_root() {
        return Err(Error::NotRoot { action: "pollux-setup cleanup" });
    }
    let refs = referenced(sys)?;
    let mut report = Report { dry_run, ..Report::default() };
    for mount in hugetlbfs_mounts(sys)? {
        for file in files_in(&sys.host_path(&mount.path))? {
            let seen = sys.machine_path(&file);
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if refs.contains(&seen, &file) {
                continue;
            }
            if !ours(&name) {
                report.warnings.push(format!(
                    "left {}: not a DPDK, SPDK or Pollux hugepage file (remove it by hand if nothing needs it)",
                    seen.display()
                ));
                continue;
            }
            if let Some(pid) = pid_in_name(&name) {
                if sys.path(format!("proc/{pid}")).exists() {
                    continue;
                }
            }
            if dry_run {
                report.actions.push(format!("remove stale {}", seen.display()));
            } else {
                std::fs::remove_file(&file).map_err(|e| Error::io("removing", &file, e))?;
                report.actions.push(format!("removed stale {}", seen.display()));
            }
        }
    }
    if report.actions.is_empty() {
        report.actions.push("no stale hugepage files".into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_in_names() {
        assert_eq!(pid_in_name("spdk_pid1234map_0"), Some(1234));
        assert_eq!(pid_in_name("pollux_pid77_3"), Some(77));
        assert_eq!(pid_in_name("rtemap_0"), None);
        assert_eq!(pid_in_name("pid"), None);
    }

    #[test]
    fn only_dpdk_spdk_and_pollux_names_are_ours() {
        for name in ["rtemap_0", "spdk_pid1234map_17", "vhostmap_3", "pollux_pid77_3"] {
            assert!(ours(name), "{name}");
        }
        for name in ["postgres_shm", "map_", "rtemap_x", "libvirt-qemu-guest", "pollux_data"] {
            assert!(!ours(name), "{name}");
        }
    }

    #[test]
    fn maps_lines_give_their_device_and_inode() {
        let id = |line: &[u8]| mapped(line).and_then(|(_, id)| id);
        assert_eq!(id(b"7f00-7f20 rw-s 00000000 00:29 17 /dev/hugepages/rtemap_0"), Some((libc::makedev(0, 0x29), 17)));
        assert_eq!(id(b"7f00-7f20 rw-s 00000000 fd:1a 123456 /x"), Some((libc::makedev(0xfd, 0x1a), 123_456)));
        assert_eq!(id(b"7f00-7f20 rw-s 00000000 zz 1 /x"), None);
    }

    #[test]
    fn maps_lines_give_their_paths_with_spaces_and_any_bytes() {
        let mapped_path = |line: &[u8]| mapped(line).map(|(path, _)| path);
        let line = b"7f00-7f20 rw-s 00000000 00:29 17 /dev/hugepages/a file\xff";
        assert_eq!(mapped_path(line).unwrap().as_os_str().len(), "/dev/hugepages/a file".len() + 1);
        assert_eq!(mapped_path(b"7f00-7f20 r--p 00000000 00:00 0 "), None);
        assert_eq!(mapped_path(b"7f00-7f20 r--p 00000000 00:00 0 [stack]"), None);
        assert_eq!(mapped_path(b"garbage"), None);
    }
}
