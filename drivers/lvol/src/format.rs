//! SPDK's blobstore on-disk format (version 3, as SPDK 24.01 writes it):
//! the super block, the three bit masks, and metadata pages with their
//! descriptors. Pure functions of bytes: every length is checked, nothing
//! panics on a corrupt page (the `lvol_md` fuzz target holds us to it).
//!
//! Layout (units of 4 KiB pages from the start of the device): page 0 is
//! the super block; then the used-metadata-page mask, the used-cluster mask
//! (with room to grow), the used-blob-ID mask; then `md_len` metadata pages.
//! A blob's ID is `1 << 32 | p` where `p` is its first metadata page; more
//! pages chain through `next`. Cluster indices in extent descriptors count
//! clusters from the start of the device (0 = not allocated).

use thiserror::Error;

pub const PAGE: usize = 4096;
pub const SIGNATURE: &[u8; 8] = b"SPDKBLOB";
pub const VERSION: u32 = 3;
pub const MIN_VERSION: u32 = 1;
/// The blobstore type an lvol store writes.
pub const BSTYPE_LVOL: [u8; 16] = *b"LVOLSTORE\0\0\0\0\0\0\0";
pub const INVALID_PAGE: u32 = u32::MAX;
pub const BLOBID_HIGH_BIT: u64 = 1 << 32;
pub const BLOBID_INVALID: u64 = u64::MAX;
/// Clusters one extent page describes (SPDK_EXTENTS_PER_EP for 4 KiB pages).
pub const EXTENTS_PER_EP: usize = 512;
/// Room for descriptors in a metadata page.
pub const DESC_AREA: usize = 4072;
const DESC_START: usize = 16;
const NEXT_AT: usize = 4088;
const CRC_AT: usize = 4092;

pub const DESC_PADDING: u8 = 0;
pub const DESC_EXTENT_RLE: u8 = 1;
pub const DESC_XATTR: u8 = 2;
pub const DESC_FLAGS: u8 = 3;
pub const DESC_XATTR_INTERNAL: u8 = 4;
pub const DESC_EXTENT_TABLE: u8 = 5;
pub const DESC_EXTENT_PAGE: u8 = 6;

/// invalid_flags bits.
pub const FLAG_THIN_PROV: u64 = 1 << 0;
pub const FLAG_INTERNAL_XATTR: u64 = 1 << 1;
pub const FLAG_EXTENT_TABLE: u64 = 1 << 2;
pub const FLAG_EXTERNAL_SNAPSHOT: u64 = 1 << 3;
pub const INVALID_FLAGS_MASK: u64 = FLAG_THIN_PROV | FLAG_INTERNAL_XATTR | FLAG_EXTENT_TABLE | FLAG_EXTERNAL_SNAPSHOT;
/// data_ro_flags bits.
pub const FLAG_READ_ONLY: u64 = 1 << 0;
/// md_ro_flags: the clear method in bits 0-1.
pub const CLEAR_METHOD_MASK: u64 = 3;

pub const MASK_USED_PAGES: u8 = 0;
pub const MASK_USED_CLUSTERS: u8 = 1;
pub const MASK_USED_BLOBIDS: u8 = 2;

/// Internal xattrs the blobstore keeps.
pub const XATTR_SNAPSHOT: &str = "SNAP";
pub const XATTR_SNAPSHOT_IN_PROGRESS: &str = "SNAPTMP";
pub const XATTR_SNAPSHOT_PENDING_REMOVAL: &str = "SNAPRM";
pub const XATTR_EXTERNAL_SNAPSHOT: &str = "EXTSNAP";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    #[error("no blobstore here (signature {0:02x?})")]
    NoSignature([u8; 8]),
    #[error("blobstore version {0} is not supported (1 to 3)")]
    Version(u32),
    #[error("{0}: crc {found:#010x}, expected {want:#010x}", found = .1, want = .2)]
    Crc(&'static str, u32, u32),
    #[error("{0}")]
    Invalid(String),
}

fn bad(s: impl Into<String>) -> FormatError {
    FormatError::Invalid(s.into())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The crc SPDK keeps in the last 4 bytes of a 4 KiB page (CRC-32C of the
/// rest).
pub fn page_crc(page: &[u8]) -> u32 {
    crc32c::crc32c(&page[..CRC_AT])
}

pub fn blob_id_of_page(page: u32) -> u64 {
    BLOBID_HIGH_BIT | page as u64
}

pub fn page_of_blob_id(id: u64) -> u32 {
    id as u32
}

/// The super block (page 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperBlock {
    pub version: u32,
    pub clean: bool,
    pub super_blob: u64,
    pub cluster_size: u32,
    pub used_page_mask_start: u32,
    pub used_page_mask_len: u32,
    pub used_cluster_mask_start: u32,
    pub used_cluster_mask_len: u32,
    pub md_start: u32,
    pub md_len: u32,
    pub bstype: [u8; 16],
    pub used_blobid_mask_start: u32,
    pub used_blobid_mask_len: u32,
    /// Bytes of the device the store uses.
    pub size: u64,
    pub io_unit_size: u32,
}

impl SuperBlock {
    /// Parse and check page 0 of a device of `dev_bytes` bytes.
    pub fn parse(b: &[u8], dev_bytes: u64) -> Result<SuperBlock, FormatError> {
        if b.len() < PAGE {
            return Err(bad("the super block is shorter than a page"));
        }
        let sig: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if &sig != SIGNATURE {
            return Err(FormatError::NoSignature(sig));
        }
        let version = u32_at(b, 8);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::Version(version));
        }
        let (found, want) = (u32_at(b, CRC_AT), page_crc(b));
        if found != want {
            return Err(FormatError::Crc("super block", found, want));
        }
        let md_page_size = u32_at(b, 92);
        if md_page_size != 0 && md_page_size as usize != PAGE {
            return Err(bad(format!("metadata page size {md_page_size} is not supported (4096 only)")));
        }
        let mut s = SuperBlock {
            version,
            clean: u32_at(b, 16) == 1,
            super_blob: u64_at(b, 20),
            cluster_size: u32_at(b, 28),
            used_page_mask_start: u32_at(b, 32),
            used_page_mask_len: u32_at(b, 36),
            used_cluster_mask_start: u32_at(b, 40),
            used_cluster_mask_len: u32_at(b, 44),
            md_start: u32_at(b, 48),
            md_len: u32_at(b, 52),
            bstype: b[56..72].try_into().expect("16 bytes"),
            used_blobid_mask_start: u32_at(b, 72),
            used_blobid_mask_len: u32_at(b, 76),
            size: u64_at(b, 80),
            io_unit_size: u32_at(b, 88),
        };
        if s.size == 0 {
            s.size = dev_bytes;
        }
        if s.io_unit_size == 0 {
            s.io_unit_size = PAGE as u32;
        }
        if s.size > dev_bytes {
            return Err(bad(format!("the store is {} bytes, its device only {dev_bytes}", s.size)));
        }
        if s.cluster_size == 0 || s.cluster_size as usize % PAGE != 0 {
            return Err(bad(format!("cluster size {} is not a multiple of 4 KiB", s.cluster_size)));
        }
        let pages = s.size / PAGE as u64;
        let within = |start: u32, len: u32| start as u64 + len as u64 <= pages;
        if !within(s.used_page_mask_start, s.used_page_mask_len)
            || !within(s.used_cluster_mask_start, s.used_cluster_mask_len)
            || !within(s.used_blobid_mask_start, s.used_blobid_mask_len)
            || !within(s.md_start, s.md_len)
            || s.md_start == 0
        {
            return Err(bad("a metadata region lies beyond the device"));
        }
        if s.used_page_mask_len == 0 || s.used_cluster_mask_len == 0 {
            return Err(bad("a used-page or used-cluster mask has no pages"));
        }
        let bits = |pages: u32| 8 * (pages as u64 * PAGE as u64).saturating_sub(5);
        if s.md_len as u64 > bits(s.used_page_mask_len) {
            return Err(bad("the used-page mask is too short for the metadata region"));
        }
        if s.used_blobid_mask_len == 0 {
            return Err(bad(format!("a version {} blobstore without a used-blob-ID mask is not supported", s.version)));
        }
        if s.md_len as u64 > bits(s.used_blobid_mask_len) {
            return Err(bad("the used-blob-ID mask is too short for the metadata region"));
        }
        if s.total_clusters() > bits(s.used_cluster_mask_len) {
            return Err(bad("the used-cluster mask is too short for the store's clusters"));
        }
        if s.total_clusters() > u32::MAX as u64 {
            return Err(bad("more than 2^32 clusters"));
        }
        Ok(s)
    }

    pub fn render(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        b[0..8].copy_from_slice(SIGNATURE);
        put32(&mut b, 8, self.version);
        put32(&mut b, 12, PAGE as u32);
        put32(&mut b, 16, self.clean as u32);
        put64(&mut b, 20, self.super_blob);
        put32(&mut b, 28, self.cluster_size);
        put32(&mut b, 32, self.used_page_mask_start);
        put32(&mut b, 36, self.used_page_mask_len);
        put32(&mut b, 40, self.used_cluster_mask_start);
        put32(&mut b, 44, self.used_cluster_mask_len);
        put32(&mut b, 48, self.md_start);
        put32(&mut b, 52, self.md_len);
        b[56..72].copy_from_slice(&self.bstype);
        put32(&mut b, 72, self.used_blobid_mask_start);
        put32(&mut b, 76, self.used_blobid_mask_len);
        put64(&mut b, 80, self.size);
        put32(&mut b, 88, self.io_unit_size);
        let crc = page_crc(&b);
        put32(&mut b, CRC_AT, crc);
        b
    }

    pub fn total_clusters(&self) -> u64 {
        self.size / self.cluster_size as u64
    }

    pub fn pages_per_cluster(&self) -> u64 {
        self.cluster_size as u64 / PAGE as u64
    }

    /// Clusters the super block, masks and metadata pages take at the front.
    pub fn md_clusters(&self) -> u64 {
        (self.md_start as u64 + self.md_len as u64).div_ceil(self.pages_per_cluster())
    }

    /// Pages between the used-cluster mask's start and the next region:
    /// how large that mask may grow (`spdk_bs_init` reserves room for as
    /// many clusters as metadata pages).
    pub fn used_cluster_mask_room(&self) -> u32 {
        self.used_blobid_mask_start.saturating_sub(self.used_cluster_mask_start).max(self.used_cluster_mask_len)
    }

    /// The most bytes the store can grow to (SPDK's
    /// `spdk_bs_get_max_growable_size`): what a used-cluster mask filling
    /// its room can track. SPDK computes the room from the metadata
    /// region's size, which is the same for every store `spdk_bs_init`
    /// makes; this reads it from the layout, which also holds for stores
    /// made before SPDK reserved room to grow.
    pub fn max_growable_size(&self) -> u64 {
        (self.used_cluster_mask_room() as u64 * PAGE as u64 - 5) * 8 * self.cluster_size as u64
    }

    /// The layout SPDK's `spdk_bs_init` gives a fresh store.
    pub fn new_layout(size: u64, cluster_size: u32, md_pages: u32, io_unit_size: u32) -> Result<SuperBlock, FormatError> {
        let total_clusters = size / cluster_size as u64;
        let used_page_mask_len = mask_pages(md_pages as u64);
        let used_cluster_mask_len = mask_pages(total_clusters);
        let room = used_cluster_mask_len.max(mask_pages(md_pages as u64));
        let used_blobid_mask_len = mask_pages(md_pages as u64);
        let used_page_mask_start = 1;
        let used_cluster_mask_start = used_page_mask_start + used_page_mask_len;
        let used_blobid_mask_start = used_cluster_mask_start + room;
        let md_start = used_blobid_mask_start + used_blobid_mask_len;
        let s = SuperBlock {
            version: VERSION,
            clean: false,
            super_blob: BLOBID_INVALID,
            cluster_size,
            used_page_mask_start,
            used_page_mask_len,
            used_cluster_mask_start,
            used_cluster_mask_len,
            md_start,
            md_len: md_pages,
            bstype: BSTYPE_LVOL,
            used_blobid_mask_start,
            used_blobid_mask_len,
            size,
            io_unit_size,
        };
        if s.md_clusters() >= total_clusters {
            return Err(bad(format!(
                "the metadata ({} pages) takes every cluster of the device: use a larger device or smaller clusters",
                md_start as u64 + md_pages as u64
            )));
        }
        Ok(s)
    }
}

/// A bit mask as SPDK stores it: type, length in bits, then the bits (bit
/// i in byte i/8, least significant first).
/// Pages a bit mask of `bits` bits takes with its 5-byte header.
pub fn mask_pages(bits: u64) -> u32 {
    (5 + bits.div_ceil(8)).div_ceil(PAGE as u64) as u32
}

pub fn parse_mask(b: &[u8], want_type: u8, max_bits: u64) -> Result<Vec<bool>, FormatError> {
    if b.len() < 5 {
        return Err(bad("a mask shorter than its header"));
    }
    if b[0] != want_type {
        return Err(bad(format!("mask of type {} where {want_type} was expected", b[0])));
    }
    let bits = u32_at(b, 1) as u64;
    if bits > max_bits || bits.div_ceil(8) > (b.len() - 5) as u64 {
        return Err(bad(format!("a mask of {bits} bits does not fit its region")));
    }
    Ok((0..bits as usize).map(|i| b[5 + i / 8] & (1 << (i % 8)) != 0).collect())
}

pub fn render_mask(kind: u8, bits: &[bool], pages: u32) -> Vec<u8> {
    // Room for the header and every bit (the super block's checks make the
    // region large enough; never index past it).
    let need = (5 + bits.len().div_ceil(8)).div_ceil(PAGE).max(1);
    let mut b = vec![0u8; (pages as usize).max(need) * PAGE];
    b[0] = kind;
    put32(&mut b, 1, bits.len() as u32);
    for (i, _) in bits.iter().enumerate().filter(|(_, v)| **v) {
        b[5 + i / 8] |= 1 << (i % 8);
    }
    b
}

/// The header of a metadata page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub sequence: u32,
    pub next: u32,
}

/// Check a metadata page's crc and read its header.
pub fn page_header(p: &[u8]) -> Result<PageHeader, FormatError> {
    if p.len() < PAGE {
        return Err(bad("a metadata page shorter than 4 KiB"));
    }
    let (found, want) = (u32_at(p, CRC_AT), page_crc(p));
    if found != want {
        return Err(FormatError::Crc("metadata page", found, want));
    }
    Ok(PageHeader { id: u64_at(p, 0), sequence: u32_at(p, 8), next: u32_at(p, NEXT_AT) })
}

/// One descriptor of a metadata page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desc {
    Flags {
        invalid: u64,
        data_ro: u64,
        md_ro: u64,
    },
    Xattr {
        internal: bool,
        name: String,
        value: Vec<u8>,
    },
    /// Runs of (first cluster, count); cluster 0 = not allocated.
    ExtentRle(Vec<(u32, u32)>),
    /// The blob's size in clusters and its extent pages as runs of (page,
    /// count); page 0 = none (a run of them).
    ExtentTable {
        num_clusters: u64,
        pages: Vec<(u32, u32)>,
    },
    ExtentPage {
        start: u32,
        clusters: Vec<u32>,
    },
    /// A type this version does not know (kept out of the blob, as SPDK).
    Unknown(u8),
}

/// The descriptors of a metadata page (its crc already checked).
pub fn descriptors(p: &[u8]) -> Result<Vec<Desc>, FormatError> {
    let area = &p[DESC_START..DESC_START + DESC_AREA];
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 5 <= area.len() {
        let kind = area[at];
        let len = u32_at(area, at + 1) as usize;
        if kind == DESC_PADDING && len == 0 {
            break;
        }
        let body = area.get(at + 5..at + 5 + len).ok_or_else(|| bad(format!("descriptor of type {kind} runs past its page")))?;
        match kind {
            DESC_PADDING => {}
            DESC_FLAGS => {
                if len != 24 {
                    return Err(bad("a flags descriptor of the wrong length"));
                }
                out.push(Desc::Flags { invalid: u64_at(body, 0), data_ro: u64_at(body, 8), md_ro: u64_at(body, 16) });
            }
            DESC_XATTR | DESC_XATTR_INTERNAL => {
                if len < 4 {
                    return Err(bad("an xattr descriptor shorter than its header"));
                }
                let nl = u16::from_le_bytes([body[0], body[1]]) as usize;
                let vl = u16::from_le_bytes([body[2], body[3]]) as usize;
                if len != 4 + nl + vl {
                    return Err(bad("an xattr descriptor whose lengths do not add up"));
                }
                let name = String::from_utf8(body[4..4 + nl].to_vec()).map_err(|_| bad("an xattr name that is not UTF-8"))?;
                out.push(Desc::Xattr { internal: kind == DESC_XATTR_INTERNAL, name, value: body[4 + nl..].to_vec() });
            }
            DESC_EXTENT_RLE => {
                if len == 0 || len % 8 != 0 {
                    return Err(bad("an extent descriptor of the wrong length"));
                }
                out.push(Desc::ExtentRle(body.chunks(8).map(|c| (u32_at(c, 0), u32_at(c, 4))).collect()));
            }
            DESC_EXTENT_TABLE => {
                if len < 8 || (len - 8) % 8 != 0 {
                    return Err(bad("an extent table of the wrong length"));
                }
                let pages = body[8..].chunks(8).map(|c| (u32_at(c, 0), u32_at(c, 4))).collect();
                out.push(Desc::ExtentTable { num_clusters: u64_at(body, 0), pages });
            }
            DESC_EXTENT_PAGE => {
                if len <= 4 || (len - 4) % 4 != 0 {
                    return Err(bad("an extent page descriptor of the wrong length"));
                }
                out.push(Desc::ExtentPage { start: u32_at(body, 0), clusters: body[4..].chunks(4).map(|c| u32_at(c, 0)).collect() });
            }
            other => out.push(Desc::Unknown(other)),
        }
        at += 5 + len;
    }
    Ok(out)
}

fn desc_len(d: &Desc) -> usize {
    5 + match d {
        Desc::Flags { .. } => 24,
        Desc::Xattr { name, value, .. } => 4 + name.len() + value.len(),
        Desc::ExtentRle(r) => 8 * r.len(),
        Desc::ExtentTable { pages, .. } => 8 + 8 * pages.len(),
        Desc::ExtentPage { clusters, .. } => 4 + 4 * clusters.len(),
        Desc::Unknown(_) => 0,
    }
}

fn put_desc(area: &mut [u8], d: &Desc) {
    let len = desc_len(d) - 5;
    let (kind, body) = area.split_at_mut(5);
    match d {
        Desc::Flags { invalid, data_ro, md_ro } => {
            kind[0] = DESC_FLAGS;
            put64(body, 0, *invalid);
            put64(body, 8, *data_ro);
            put64(body, 16, *md_ro);
        }
        Desc::Xattr { internal, name, value } => {
            kind[0] = if *internal { DESC_XATTR_INTERNAL } else { DESC_XATTR };
            body[0..2].copy_from_slice(&(name.len() as u16).to_le_bytes());
            body[2..4].copy_from_slice(&(value.len() as u16).to_le_bytes());
            body[4..4 + name.len()].copy_from_slice(name.as_bytes());
            body[4 + name.len()..4 + name.len() + value.len()].copy_from_slice(value);
        }
        Desc::ExtentRle(runs) => {
            kind[0] = DESC_EXTENT_RLE;
            for (i, (c, n)) in runs.iter().enumerate() {
                put32(body, 8 * i, *c);
                put32(body, 8 * i + 4, *n);
            }
        }
        Desc::ExtentTable { num_clusters, pages } => {
            kind[0] = DESC_EXTENT_TABLE;
            put64(body, 0, *num_clusters);
            for (i, (p, n)) in pages.iter().enumerate() {
                put32(body, 8 + 8 * i, *p);
                put32(body, 12 + 8 * i, *n);
            }
        }
        Desc::ExtentPage { start, clusters } => {
            kind[0] = DESC_EXTENT_PAGE;
            put32(body, 0, *start);
            for (i, c) in clusters.iter().enumerate() {
                put32(body, 4 + 4 * i, *c);
            }
        }
        Desc::Unknown(_) => unreachable!("never written"),
    }
    kind[1..5].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Lay descriptors out in a chain of pages as SPDK's `blob_serialize`
/// does: fill a page, then start the next; a descriptor never straddles
/// two. Extent tables and RLE extents too long for the room left are cut
/// into several descriptors. Returns page images without `next` and crc
/// (see [`seal_page`]).
pub fn layout_pages(id: u64, descs: &[Desc]) -> Result<Vec<Vec<u8>>, FormatError> {
    let mut pages: Vec<Vec<u8>> = Vec::new();
    let new_page = |pages: &mut Vec<Vec<u8>>| {
        let mut p = vec![0u8; PAGE];
        put64(&mut p, 0, id);
        put32(&mut p, 8, pages.len() as u32);
        put32(&mut p, NEXT_AT, INVALID_PAGE);
        pages.push(p);
    };
    new_page(&mut pages);
    let mut at = 0;
    for d in descs {
        // Split long extent lists over pages.
        let parts: Vec<Desc> = match d {
            Desc::ExtentTable { num_clusters, pages: runs } => {
                let room = (DESC_AREA - at).saturating_sub(5 + 8) / 8;
                split_runs(runs, room).into_iter().map(|r| Desc::ExtentTable { num_clusters: *num_clusters, pages: r }).collect()
            }
            Desc::ExtentRle(runs) => {
                let room = (DESC_AREA - at).saturating_sub(5) / 8;
                split_runs(runs, room).into_iter().map(Desc::ExtentRle).collect()
            }
            other => vec![other.clone()],
        };
        for part in parts {
            let len = desc_len(&part);
            if len > DESC_AREA {
                return Err(bad("a descriptor larger than a metadata page"));
            }
            if at + len > DESC_AREA {
                new_page(&mut pages);
                at = 0;
            }
            let p = pages.last_mut().expect("a page");
            put_desc(&mut p[DESC_START + at..DESC_START + at + len], &part);
            at += len;
        }
    }
    Ok(pages)
}

/// Cut runs into groups: the first of at most `first_room` entries (at
/// least one group, even empty), the rest of a full page's worth.
fn split_runs(runs: &[(u32, u32)], first_room: usize) -> Vec<Vec<(u32, u32)>> {
    let full = (DESC_AREA - 5 - 8) / 8;
    let first = if first_room == 0 { full } else { first_room };
    let mut out = vec![runs[..runs.len().min(first)].to_vec()];
    let mut rest = &runs[runs.len().min(first)..];
    while !rest.is_empty() {
        let n = rest.len().min(full);
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// Recompute a page's crc (leaving its `next` as it is).
pub fn fix_crc(p: &mut [u8]) {
    let crc = page_crc(p);
    put32(p, CRC_AT, crc);
}

/// Set a page's `next` pointer and crc.
pub fn seal_page(p: &mut [u8], next: u32) {
    put32(p, NEXT_AT, next);
    let crc = page_crc(p);
    put32(p, CRC_AT, crc);
}

/// An extent page image: clusters `start..` of a blob (at most
/// [`EXTENTS_PER_EP`]).
pub fn extent_page(id: u64, start: u32, clusters: &[u32]) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    put64(&mut p, 0, id);
    put32(&mut p, NEXT_AT, INVALID_PAGE);
    let d = Desc::ExtentPage { start, clusters: clusters.to_vec() };
    let len = desc_len(&d);
    put_desc(&mut p[DESC_START..DESC_START + len], &d);
    seal_page(&mut p, INVALID_PAGE);
    p
}

/// Run-length encode a blob's clusters for an RLE extent descriptor: runs
/// of consecutive clusters, and runs of unallocated ones.
pub fn rle(clusters: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &c in clusters {
        if let Some((start, n)) = out.last_mut() {
            let follows = if *start == 0 { c == 0 } else { c != 0 && c == *start + *n };
            if follows {
                *n += 1;
                continue;
            }
        }
        out.push((c, 1));
    }
    out
}

/// Run-length encode extent page numbers for an extent table: allocated
/// pages one by one, runs of zeroes together.
pub fn extent_table_runs(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((0, n)) if p == 0 => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_chain_reads_back_as_written() {
        let id = blob_id_of_page(9);
        let mut descs = vec![
            Desc::Flags { invalid: FLAG_THIN_PROV | FLAG_EXTENT_TABLE, data_ro: 0, md_ro: 1 },
            Desc::Xattr { internal: false, name: "name".into(), value: b"vol\0".to_vec() },
        ];
        // Enough xattrs to need three pages.
        for i in 0..40 {
            descs.push(Desc::Xattr { internal: true, name: format!("x{i}"), value: vec![i as u8; 200] });
        }
        let runs: Vec<(u32, u32)> = (0..300).map(|i| (if i % 2 == 0 { 0 } else { 100 + i }, if i % 2 == 0 { 512 } else { 1 })).collect();
        descs.push(Desc::ExtentTable { num_clusters: 77_000, pages: runs.clone() });
        let mut pages = layout_pages(id, &descs).unwrap();
        assert!(pages.len() >= 3);
        let n = pages.len();
        for (i, p) in pages.iter_mut().enumerate() {
            seal_page(p, if i + 1 < n { 50 + i as u32 } else { INVALID_PAGE });
        }
        let mut got = Vec::new();
        let mut got_runs = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            let h = page_header(p).unwrap();
            assert_eq!((h.id, h.sequence), (id, i as u32));
            for d in descriptors(p).unwrap() {
                match d {
                    Desc::ExtentTable { num_clusters, pages } => {
                        assert_eq!(num_clusters, 77_000);
                        got_runs.extend(pages);
                    }
                    d => got.push(d),
                }
            }
        }
        assert_eq!(got, descs[..descs.len() - 1]);
        assert_eq!(got_runs, runs);
    }

    #[test]
    fn run_length_encoding_keeps_clusters() {
        let c = [0, 0, 5, 6, 7, 9, 0, 10, 11];
        let r = rle(&c);
        assert_eq!(r, vec![(0, 2), (5, 3), (9, 1), (0, 1), (10, 2)]);
        assert_eq!(extent_table_runs(&[0, 0, 7, 8, 0]), vec![(0, 2), (7, 1), (8, 1), (0, 1)]);
    }

    #[test]
    fn a_corrupt_page_is_an_error_not_a_panic() {
        let mut p = vec![0u8; PAGE];
        p[DESC_START] = DESC_XATTR;
        p[DESC_START + 1..DESC_START + 5].copy_from_slice(&5000u32.to_le_bytes());
        seal_page(&mut p, INVALID_PAGE);
        assert!(descriptors(&p).is_err());
        p[100] ^= 1;
        assert!(matches!(page_header(&p), Err(FormatError::Crc(..))));
    }
}
