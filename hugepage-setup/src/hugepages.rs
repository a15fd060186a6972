//! Hugepage pools (per size, globally and per NUMA node) and hugetlbfs mounts.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::procfs::{MountEntry, hugetlbfs_page_size_kb, parse_mountinfo};
use crate::system::{Os, System, list_dir, read_number};

/// Pages of one size, machine-wide (`node: None`) or on one NUMA node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub page_size_kb: u64,
    pub node: Option<u32>,
    pub total: u64,
    pub free: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HugetlbfsMount {
    pub path: PathBuf,
    /// `None` when the mount does not say (the default hugepage size applies).
    pub page_size_kb: Option<u64>,
}

/// `2M`, `1G`, `2048K`, `2048kB`, `1024M` -> KiB.
pub fn parse_size_kb(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "k" | "K" | "kB" | "KB" | "KiB" => 1,
        "m" | "M" | "MB" | "MiB" => 1024,
        "g" | "G" | "GB" | "GiB" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&kb| kb > 0)
}

/// `2048` -> `2M`, `1048576` -> `1G`.
pub fn format_size_kb(kb: u64) -> String {
    if kb % (1024 * 1024) == 0 {
        format!("{}G", kb / (1024 * 1024))
    } else if kb % 1024 == 0 {
        format!("{}M", kb / 1024)
    } else {
        format!("{kb}K")
    }
}

fn size_dir_kb(name: &str) -> Option<u64> {
    name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()
}

fn read_pools(base: &Path, node: Option<u32>) -> Result<Vec<Pool>> {
    let mut pools = Vec::new();
    for name in list_dir(base)? {
        let Some(page_size_kb) = size_dir_kb(&name) else {
            continue;
        };
        let dir = base.join(&name);
        pools.push(Pool {
            page_size_kb,
            node,
            total: read_number(&dir.join("nr_hugepages"))?.unwrap_or(0),
            free: read_number(&dir.join("free_hugepages"))?.unwrap_or(0),
        });
    }
    pools.sort_by_key(|p| p.page_size_kb);
    Ok(pools)
}

/// NUMA nodes that exist (from `sys/devices/system/node/nodeN`).
pub fn nodes<O: Os>(sys: &System<O>) -> Result<Vec<u32>> {
    let mut nodes: Vec<u32> =
        list_dir(&sys.path("sys/devices/system/node"))?.iter().filter_map(|n| n.strip_prefix("node")?.parse().ok()).collect();
    nodes.sort_unstable();
    Ok(nodes)
}

/// Machine-wide pools first, then each node's.
pub fn pools<O: Os>(sys: &System<O>) -> Result<Vec<Pool>> {
    let mut all = read_pools(&sys.path("sys/kernel/mm/hugepages"), None)?;
    for node in nodes(sys)? {
        let base = sys.path(format!("sys/devices/system/node/node{node}/hugepages"));
        all.extend(read_pools(&base, Some(node))?);
    }
    Ok(all)
}

/// The `nr_hugepages` file for a size, machine-wide or for one node.
pub fn nr_hugepages_path<O: Os>(sys: &System<O>, page_size_kb: u64, node: Option<u32>) -> Result<PathBuf> {
    let global = sys.path(format!("sys/kernel/mm/hugepages/hugepages-{page_size_kb}kB"));
    if !global.is_dir() {
        return Err(Error::UnsupportedPageSize(format_size_kb(page_size_kb)));
    }
    let dir = match node {
        None => global,
        Some(n) => {
            if !nodes(sys)?.contains(&n) {
                return Err(Error::NoSuchNode(n));
            }
            sys.path(format!("sys/devices/system/node/node{n}/hugepages/hugepages-{page_size_kb}kB"))
        }
    };
    Ok(dir.join("nr_hugepages"))
}

/// The kernel's default hugepage size (`Hugepagesize:` in meminfo), in KiB.
pub fn default_page_size_kb<O: Os>(sys: &System<O>) -> Result<Option<u64>> {
    let path = sys.path("proc/meminfo");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    Ok(text.lines().find_map(|l| {
        let rest = l.strip_prefix("Hugepagesize:")?;
        rest.split_whitespace().next()?.parse().ok()
    }))
}

pub fn mount_table<O: Os>(sys: &System<O>) -> Result<Vec<MountEntry>> {
    let path = sys.path("proc/self/mountinfo");
    // A mount point that is not UTF-8 (mountinfo escapes only blanks and
    // backslashes) made the file unreadable as text and every command fail.
    let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    Ok(parse_mountinfo(&String::from_utf8_lossy(&bytes)))
}

pub fn hugetlbfs_mounts<O: Os>(sys: &System<O>) -> Result<Vec<HugetlbfsMount>> {
    Ok(mount_table(sys)?
        .into_iter()
        .filter(|m| m.fs_type == "hugetlbfs")
        .map(|m| HugetlbfsMount { page_size_kb: hugetlbfs_page_size_kb(&m.super_options), path: m.mount_point })
        .collect())
}

/// Where `config` mounts hugetlbfs for a page size when none is mounted.
pub fn default_mount_point(page_size_kb: u64, default_kb: Option<u64>) -> PathBuf {
    if Some(page_size_kb) == default_kb || (default_kb.is_none() && page_size_kb == 2048) {
        PathBuf::from("/dev/hugepages")
    } else {
        PathBuf::from(format!("/dev/hugepages-{}", format_size_kb(page_size_kb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size_kb("2M"), Some(2048));
        assert_eq!(parse_size_kb("1G"), Some(1 << 20));
        assert_eq!(parse_size_kb("1024M"), Some(1 << 20));
        assert_eq!(parse_size_kb("2048kB"), Some(2048));
        assert_eq!(parse_size_kb("2X"), None);
        assert_eq!(parse_size_kb("M"), None);
        assert_eq!(parse_size_kb("0M"), None);
        assert_eq!(parse_size_kb("99999999999999999999G"), None);
        assert_eq!(format_size_kb(2048), "2M");
        assert_eq!(format_size_kb(1 << 20), "1G");
        assert_eq!(format_size_kb(64), "64K");
    }

    #[test]
    fn mount_point_follows_the_default_size() {
        assert_eq!(default_mount_point(2048, Some(2048)), PathBuf::from("/dev/hugepages"));
        assert_eq!(default_mount_point(1 << 20, Some(2048)), PathBuf::from("/dev/hugepages-1G"));
        assert_eq!(default_mount_point(1 << 20, Some(1 << 20)), PathBuf::from("/dev/hugepages"));
    }
}
