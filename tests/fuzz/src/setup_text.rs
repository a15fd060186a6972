//! `setup_text`: the text pollux-setup parses (`hugepage-setup`):
//! `/proc/self/mountinfo` and `/proc/swaps` (`parse_mountinfo`,
//! `parse_swaps`), lines of `/proc/PID/maps` (`mapped`, which finds the
//! processes holding a device or a hugepage file), hugepage sizes
//! (`parse_size_kb`, hugetlbfs' `pagesize=` option), hugetlbfs file names
//! (`ours`, `pid_in_name`) and PCI addresses from the command line
//! (`Bdf::parse`, `parse_list`).
//!
//! Input: the first byte picks the parser (its value modulo 8; 7: all of
//! them), the rest is the text (bytes; parsers of `&str` get it decoded
//! lossily, as pollux-setup reads these files).
//!
//! Invariants: no panic; one mount entry at most per line with " - " in
//! it, its device and file system type without spaces, its mount point and
//! source unescaped no longer than the line; one swap device at most per
//! line after the header; a size that parses is positive and formats to a
//! size that parses to the same; `pagesize=` reads as the size it names; a
//! mapped path is absolute; a PCI address that parses is in its canonical
//! form (`dddd:bb:dd.f`, lower case) and parses to itself again.

use pollux_setup::parsers::{
    Bdf, format_size_kb, hugetlbfs_page_size_kb, mapped, ours, parse_mountinfo, parse_size_kb, parse_swaps, pid_in_name,
};

pub fn setup_text(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(bytes);
    let all = which % 8 == 7;
    if all || which % 8 == 0 {
        mountinfo(&text);
    }
    if all || which % 8 == 1 {
        let lines = text.lines().count();
        assert!(parse_swaps(&text).len() <= lines.saturating_sub(1));
    }
    if all || which % 8 == 2 {
        for line in bytes.split(|&b| b == b'\n') {
            if let Some((path, _)) = mapped(line) {
                assert!(path.is_absolute(), "{path:?} from {line:?}");
            }
        }
    }
    if all || which % 8 == 3 {
        size(&text);
        for part in text.split(',') {
            size(part);
        }
    }
    if all || which % 8 == 4 {
        if let Some(kb) = hugetlbfs_page_size_kb(&text) {
            let named = text.split(',').find_map(|o| o.strip_prefix("pagesize=")).expect("a size without pagesize=");
            assert_eq!(parse_size_kb(named), Some(kb));
        }
    }
    if all || which % 8 == 5 {
        let _ = ours(&text);
        let _ = pid_in_name(&text);
    }
    if all || which % 8 == 6 {
        bdf(&text);
        if let Ok(list) = Bdf::parse_list(&text) {
            for b in &list {
                bdf(b.as_str());
            }
        }
    }
}

fn mountinfo(text: &str) {
    let entries = parse_mountinfo(text);
    let with_sep = text.lines().filter(|l| l.contains(" - ")).count();
    assert!(entries.len() <= with_sep, "{} entries from {with_sep} lines", entries.len());
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    for e in &entries {
        assert!(!e.dev.contains(' ') && !e.fs_type.contains(' '), "{e:?}");
        // Unescaping only shortens (\040 -> one byte; lossy decoding of a
        // lone byte may take three).
        assert!(e.mount_point.as_os_str().len() <= 3 * longest && e.source.len() <= 3 * longest, "{e:?}");
    }
}

fn size(text: &str) {
    if let Some(kb) = parse_size_kb(text) {
        assert!(kb > 0);
        let f = format_size_kb(kb);
        assert_eq!(parse_size_kb(&f), Some(kb), "{text:?} -> {kb} KiB -> {f:?}");
    }
}

fn bdf(text: &str) {
    if let Ok(b) = Bdf::parse(text) {
        let s = b.as_str();
        assert!(s.len() == 12 && s.as_bytes()[4] == b':' && s.as_bytes()[7] == b':' && s.as_bytes()[10] == b'.', "{s:?}");
        assert!(!s.bytes().any(|c| c.is_ascii_uppercase()), "{s:?}");
        assert_eq!(Bdf::parse(s).ok().as_ref(), Some(&b));
    }
}
