//! A blob's metadata in memory: flags, xattrs, its cluster map and where
//! its metadata pages are; read from and turned back into SPDK's
//! descriptors.

use crate::format::{self, Desc, FormatError};

/// How a blob's freed clusters are cleared (md_ro_flags bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearMethod {
    Default,
    None,
    Unmap,
    WriteZeroes,
}

impl ClearMethod {
    pub fn from_bits(b: u64) -> ClearMethod {
        match b & format::CLEAR_METHOD_MASK {
            1 => ClearMethod::None,
            2 => ClearMethod::Unmap,
            3 => ClearMethod::WriteZeroes,
            _ => ClearMethod::Default,
        }
    }
    pub fn bits(self) -> u64 {
        match self {
            ClearMethod::Default => 0,
            ClearMethod::None => 1,
            ClearMethod::Unmap => 2,
            ClearMethod::WriteZeroes => 3,
        }
    }
    /// SPDK's RPC names (`bdev_lvol_create`'s `clear_method`).
    pub fn parse(s: &str) -> Option<ClearMethod> {
        Some(match s {
            "none" => ClearMethod::None,
            "unmap" => ClearMethod::Unmap,
            "write_zeroes" => ClearMethod::WriteZeroes,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub id: u64,
    pub invalid_flags: u64,
    pub data_ro_flags: u64,
    pub md_ro_flags: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub internal: Vec<(String, Vec<u8>)>,
    /// Device cluster of each blob cluster; 0 = not allocated.
    pub clusters: Vec<u32>,
    /// Extent pages (metadata page numbers, 0 = none) when the blob uses an
    /// extent table, else `None` (RLE extents in the chain).
    pub extent_pages: Option<Vec<u32>>,
    /// The metadata pages of its chain as last written (first = its ID's).
    pub pages: Vec<u32>,
}

impl Blob {
    pub fn new(id: u64, thin: bool, extent_table: bool) -> Blob {
        let mut invalid = 0;
        if thin {
            invalid |= format::FLAG_THIN_PROV;
        }
        if extent_table {
            invalid |= format::FLAG_EXTENT_TABLE;
        }
        Blob {
            id,
            invalid_flags: invalid,
            data_ro_flags: 0,
            md_ro_flags: 0,
            xattrs: Vec::new(),
            internal: Vec::new(),
            clusters: Vec::new(),
            extent_pages: extent_table.then(Vec::new),
            pages: Vec::new(),
        }
    }

    pub fn thin(&self) -> bool {
        self.invalid_flags & format::FLAG_THIN_PROV != 0
    }
    /// Read-only, or carrying data flags this version does not know (SPDK
    /// opens such a blob read-only too).
    pub fn read_only(&self) -> bool {
        self.data_ro_flags != 0
    }
    pub fn clear_method(&self) -> ClearMethod {
        ClearMethod::from_bits(self.md_ro_flags)
    }
    pub fn xattr(&self, name: &str) -> Option<&[u8]> {
        self.xattrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
    pub fn internal_xattr(&self, name: &str) -> Option<&[u8]> {
        self.internal.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
    pub fn set_xattr(&mut self, name: &str, value: Vec<u8>) {
        set(&mut self.xattrs, name, value)
    }
    pub fn set_internal(&mut self, name: &str, value: Vec<u8>) {
        set(&mut self.internal, name, value);
        self.invalid_flags |= format::FLAG_INTERNAL_XATTR;
    }
    pub fn remove_internal(&mut self, name: &str) {
        self.internal.retain(|(n, _)| n != name);
        if self.internal.is_empty() {
            self.invalid_flags &= !format::FLAG_INTERNAL_XATTR;
        }
    }
    /// The snapshot this blob is a clone of (only a thin blob has one, as
    /// SPDK reads it).
    pub fn parent(&self) -> Option<u64> {
        if !self.thin() {
            return None;
        }
        let v = self.internal_xattr(format::XATTR_SNAPSHOT)?;
        Some(u64::from_le_bytes(v.try_into().ok()?))
    }
    pub fn set_parent(&mut self, parent: Option<u64>) {
        match parent {
            Some(p) => self.set_internal(format::XATTR_SNAPSHOT, p.to_le_bytes().to_vec()),
            None => self.remove_internal(format::XATTR_SNAPSHOT),
        }
    }
    pub fn allocated(&self) -> usize {
        self.clusters.iter().filter(|c| **c != 0).count()
    }

    /// Resize the cluster map (and extent table) to `n` clusters.
    pub fn set_num_clusters(&mut self, n: usize) {
        self.clusters.resize(n, 0);
        if let Some(ep) = &mut self.extent_pages {
            ep.resize(n.div_ceil(format::EXTENTS_PER_EP), 0);
        }
    }

    /// The descriptors of its metadata chain, in SPDK's order: flags,
    /// xattrs, internal xattrs, then the extent table or RLE extents.
    pub fn descriptors(&self) -> Vec<Desc> {
        let mut d = vec![Desc::Flags { invalid: self.invalid_flags, data_ro: self.data_ro_flags, md_ro: self.md_ro_flags }];
        for (name, value) in &self.xattrs {
            d.push(Desc::Xattr { internal: false, name: name.clone(), value: value.clone() });
        }
        for (name, value) in &self.internal {
            d.push(Desc::Xattr { internal: true, name: name.clone(), value: value.clone() });
        }
        match &self.extent_pages {
            Some(ep) => d.push(Desc::ExtentTable { num_clusters: self.clusters.len() as u64, pages: format::extent_table_runs(ep) }),
            None if !self.clusters.is_empty() => d.push(Desc::ExtentRle(format::rle(&self.clusters))),
            None => {}
        }
        d
    }

    /// The clusters one extent page holds (index `i` of the table).
    pub fn extent_page_clusters(&self, i: usize) -> &[u32] {
        let start = (i * format::EXTENTS_PER_EP).min(self.clusters.len());
        let end = ((i + 1) * format::EXTENTS_PER_EP).min(self.clusters.len());
        &self.clusters[start..end]
    }
}

fn set(list: &mut Vec<(String, Vec<u8>)>, name: &str, value: Vec<u8>) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => *v = value,
        None => list.push((name.to_string(), value)),
    }
}

/// The most clusters a blob of a store of `total` clusters may have: 1024
/// times the store (thin volumes may promise more than there is), at
/// least 2^20. The map takes 8 bytes a cluster in memory; a corrupt
/// size must not make the loader allocate without bound.
pub fn max_clusters(total: u64) -> u64 {
    (total.saturating_mul(1024)).max(1 << 20)
}

fn bad(s: impl Into<String>) -> FormatError {
    FormatError::Invalid(s.into())
}

/// A blob being read: its chain's descriptors first ([`Parse::page`]), then
/// its extent pages ([`Parse::extent_page`]), then [`Parse::finish`].
pub struct Parse {
    blob: Blob,
    rle_found: bool,
    table: Option<(u64, Vec<u32>)>,
    /// Extent pages read: (table index, their clusters).
    pages_read: Vec<(usize, Vec<u32>)>,
}

impl Parse {
    pub fn new(id: u64) -> Parse {
        Parse { blob: Blob::new(id, false, false), rle_found: false, table: None, pages_read: Vec::new() }
    }

    /// One page of the chain (crc and header checked by the caller).
    pub fn page(&mut self, page_no: u32, p: &[u8], total_clusters: u64) -> Result<(), FormatError> {
        self.blob.pages.push(page_no);
        for d in format::descriptors(p)? {
            match d {
                Desc::Flags { invalid, data_ro, md_ro } => {
                    if invalid & !format::INVALID_FLAGS_MASK != 0 {
                        return Err(bad(format!("blob {:#x} has flags this version does not know ({invalid:#x})", self.blob.id)));
                    }
                    if invalid & format::FLAG_EXTERNAL_SNAPSHOT != 0 {
                        return Err(bad(format!(
                            "blob {:#x} is a clone of an external snapshot, which Pollux does not support",
                            self.blob.id
                        )));
                    }
                    self.blob.invalid_flags = invalid;
                    self.blob.data_ro_flags = data_ro;
                    self.blob.md_ro_flags = md_ro;
                }
                Desc::Xattr { internal, name, value } => {
                    let list = if internal { &mut self.blob.internal } else { &mut self.blob.xattrs };
                    list.push((name, value));
                }
                Desc::ExtentRle(runs) => {
                    if self.table.is_some() {
                        return Err(bad("both an extent table and RLE extents"));
                    }
                    self.rle_found = true;
                    for (c, n) in runs {
                        if self.blob.clusters.len() as u64 + n as u64 > max_clusters(total_clusters) {
                            return Err(bad(format!("a blob of more than {} clusters", max_clusters(total_clusters))));
                        }
                        for j in 0..n {
                            let c = if c == 0 { 0 } else { c.checked_add(j).ok_or_else(|| bad("cluster index overflow"))? };
                            self.blob.clusters.push(c);
                        }
                    }
                }
                Desc::ExtentTable { num_clusters, pages } => {
                    if self.rle_found {
                        return Err(bad("both an extent table and RLE extents"));
                    }
                    let t = self.table.get_or_insert_with(|| (num_clusters, Vec::new()));
                    if t.0 != num_clusters {
                        return Err(bad("extent tables that disagree on the blob's size"));
                    }
                    if num_clusters > max_clusters(total_clusters) {
                        return Err(bad(format!("a blob of {num_clusters} clusters, more than {}", max_clusters(total_clusters))));
                    }
                    for (p, n) in pages {
                        if p != 0 {
                            if n != 1 {
                                return Err(bad("an extent table run of allocated pages"));
                            }
                            t.1.push(p);
                        } else {
                            if t.1.len() as u64 + n as u64 > num_clusters.div_ceil(format::EXTENTS_PER_EP as u64) {
                                return Err(bad("an extent table longer than its blob"));
                            }
                            t.1.extend(std::iter::repeat_n(0, n as usize));
                        }
                    }
                }
                Desc::ExtentPage { .. } => return Err(bad("an extent page descriptor in a metadata chain")),
                Desc::Unknown(_) => {}
            }
        }
        Ok(())
    }

    /// The extent pages the table names (page numbers, in order; 0 = none).
    pub fn extent_pages(&self) -> Vec<u32> {
        self.table.as_ref().map(|t| t.1.clone()).unwrap_or_default()
    }

    /// One extent page of the table (index `i`), crc checked by the caller.
    pub fn extent_page(&mut self, i: usize, p: &[u8]) -> Result<(), FormatError> {
        let h = format::page_header(p)?;
        // Its ID is not checked: a snapshot takes over its origin's extent
        // pages, which keep the origin's ID (SPDK checks it neither).
        if h.sequence != 0 || h.next != format::INVALID_PAGE {
            return Err(bad(format!("extent page {i} of blob {:#x} is not an extent page", self.blob.id)));
        }
        let ds = format::descriptors(p)?;
        let [Desc::ExtentPage { start, clusters }] = ds.as_slice() else {
            return Err(bad("an extent page without exactly one extent descriptor"));
        };
        if *start as usize != i * format::EXTENTS_PER_EP || clusters.len() > format::EXTENTS_PER_EP {
            return Err(bad(format!("extent page {i} starts at cluster {start}")));
        }
        self.pages_read.push((i, clusters.clone()));
        Ok(())
    }

    /// The blob, its size as SPDK takes it: the table's entries in turn,
    /// an extent page giving its clusters, a missing one up to 512
    /// unallocated, never beyond the size the table announces. (A resize
    /// cut short between writing extent pages and the chain leaves pages
    /// longer or shorter than the table; the table caps, the pages cover.)
    pub fn finish(mut self) -> Result<Blob, FormatError> {
        if let Some((announced, table)) = self.table.take() {
            let mut remaining = announced as usize;
            let mut clusters: Vec<u32> = Vec::new();
            let mut read = self.pages_read.into_iter().peekable();
            let mut used_pages = Vec::new();
            for (i, &page) in table.iter().enumerate() {
                if remaining == 0 {
                    break;
                }
                if page == 0 {
                    let n = remaining.min(format::EXTENTS_PER_EP);
                    clusters.extend(std::iter::repeat_n(0, n));
                    remaining -= n;
                    used_pages.push(0);
                    continue;
                }
                let Some((j, cs)) = read.next_if(|(j, _)| *j == i) else {
                    return Err(bad(format!("blob {:#x}: extent page {i} was not read", self.blob.id)));
                };
                if clusters.len() != j * format::EXTENTS_PER_EP {
                    return Err(bad(format!("blob {:#x}: extent page {j} follows a short one", self.blob.id)));
                }
                let n = cs.len().min(remaining);
                clusters.extend_from_slice(&cs[..n]);
                remaining -= n;
                used_pages.push(page);
            }
            self.blob.clusters = clusters;
            self.blob.extent_pages = Some(used_pages);
            let have = self.blob.clusters.len().div_ceil(format::EXTENTS_PER_EP);
            if let Some(eps) = &mut self.blob.extent_pages {
                eps.resize(have, 0);
            }
        }
        if !self.blob.thin() && self.blob.clusters.contains(&0) {
            return Err(bad(format!("thick blob {:#x} has unallocated clusters", self.blob.id)));
        }
        Ok(self.blob)
    }
}
