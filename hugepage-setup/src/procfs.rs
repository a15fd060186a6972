//! Parsers for `/proc/self/mountinfo` and `/proc/swaps`. They never panic on odd
//! input: malformed lines are skipped.

use std::path::PathBuf;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (`pagesize=2M` for hugetlbfs).
    pub super_options: String,
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                dev: l.get(2)?.to_string(),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1)?),
                super_options: r.get(2).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Device paths in `/proc/swaps` (the header line is skipped).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(unescape).collect()
}

/// `pagesize=2M` / `pagesize=1024M` / `pagesize=1G` in hugetlbfs options, in KiB.
pub fn hugetlbfs_page_size_kb(options: &str) -> Option<u64> {
    let value = options.split(',').find_map(|o| o.strip_prefix("pagesize="))?;
    crate::hugepages::parse_size_kb(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/hostroot
30 22 259:1 / /mnt/my\\040data rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
31 22 0:40 / /dev/hugepages rw,relatime - hugetlbfs nodev rw,pagesize=2M
garbage line
";

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].dev, "259:1");
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/my data"));
        assert_eq!(m[1].source, "/dev/nvme0n1p1");
        assert_eq!(m[2].fs_type, "hugetlbfs");
        assert_eq!(hugetlbfs_page_size_kb(&m[2].super_options), Some(2048));
    }

    #[test]
    fn swaps_skip_the_header() {
        let s = "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p2 partition 1024 0 -2\n";
        assert_eq!(parse_swaps(s), ["/dev/nvme0n1p2"]);
        assert!(parse_swaps("").is_empty());
    }

    #[test]
    fn odd_escapes_do_not_panic() {
        assert_eq!(unescape("a\\"), "a\\");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("\\777"), "\\777");
    }
}
