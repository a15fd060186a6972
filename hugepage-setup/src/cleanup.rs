//! `cleanup`: hugepage files left in hugetlbfs mounts by processes that died
//! without removing them still pin their pages. A file is stale when no live
//! process has it open or mapped and, if its name carries a pid (`..pid1234..`,
//! as SPDK's and Pollux's do), that process is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::Report;
use crate::error::{Error, Result};
use crate::hugepages::hugetlbfs_mounts;
use crate::system::{Os, System, list_dir, open_files};

/// Paths (as the machine sees them) open or mapped by any process.
fn referenced<O: Os>(sys: &System<O>) -> Result<HashSet<PathBuf>> {
    let mut refs = HashSet::new();
    refs.extend(open_files(sys)?.into_iter().map(|f| f.path));
    for pid in list_dir(&sys.path("proc"))?.iter().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        let proc_dir = sys.path(format!("proc/{pid}"));
        // A process may exit or deny access while we look: skip what cannot be read.
        if let Ok(maps) = std::fs::read_to_string(proc_dir.join("maps")) {
            for line in maps.lines() {
                // address perms offset dev inode path...
                if let Some(path) = line.split_whitespace().nth(5) {
                    if path.starts_with('/') {
                        refs.insert(PathBuf::from(path));
                    }
                }
            }
        }
    }
    Ok(refs)
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
            if refs.contains(&seen) {
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
}
