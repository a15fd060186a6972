//! `lvol_md`: the metadata of SPDK's blobstore as Pollux's lvol store reads
//! it from disk (`pollux_lvol::format`, `pollux_lvol::blob::Parse`): a
//! super block, or a blob's chain of metadata pages with its extent pages.
//!
//! Input: the first byte chooses the super block (even) or a blob (odd);
//! the rest is cut into 4 KiB pages (the last zero padded, at most 8),
//! each given a valid crc so the fuzzer reaches the descriptors. For a
//! blob, page 0 onwards is its chain and its extent table's page numbers
//! name input pages (modulo their count).
//!
//! Invariants: no panic; a super block taken renders to a page that parses
//! to the same; a blob taken has a cluster map its extent table covers, a
//! thick blob no hole, and written back as SPDK's descriptors (chain and
//! extent pages) and read again it is the same blob.

use pollux_lvol::blob::{Blob, Parse};
use pollux_lvol::format::{self, PAGE, SuperBlock};

const MAX_PAGES: usize = 8;
const TOTAL_CLUSTERS: u64 = 1 << 12;

pub fn lvol_md(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut pages: Vec<Vec<u8>> = rest
        .chunks(PAGE)
        .take(MAX_PAGES)
        .map(|c| {
            let mut p = c.to_vec();
            p.resize(PAGE, 0);
            format::fix_crc(&mut p);
            p
        })
        .collect();
    if pages.is_empty() {
        pages.push(vec![0; PAGE]);
        format::fix_crc(&mut pages[0]);
    }
    if mode % 2 == 0 {
        let dev = 1u64 << 40;
        if let Ok(sb) = SuperBlock::parse(&pages[0], dev) {
            assert!(sb.md_start as u64 + sb.md_len as u64 <= sb.size / PAGE as u64);
            let again = SuperBlock::parse(&sb.render(), dev).expect("its own super block parses");
            assert_eq!(again, sb);
        }
        return;
    }
    let Ok(blob) = read(&pages) else { return };
    if let Some(eps) = &blob.extent_pages {
        assert_eq!(eps.len(), blob.clusters.len().div_ceil(format::EXTENTS_PER_EP));
    }
    if !blob.thin() {
        assert!(!blob.clusters.contains(&0), "a thick blob with a hole");
    }
    // Written back and read again: the same blob.
    let mut chain = format::layout_pages(blob.id, &blob.descriptors()).expect("its own descriptors fit pages");
    let n = chain.len();
    for (i, p) in chain.iter_mut().enumerate() {
        format::seal_page(p, if i + 1 < n { (i + 1) as u32 } else { format::INVALID_PAGE });
    }
    let mut written = chain;
    let mut eps = Vec::new();
    if let Some(table) = &blob.extent_pages {
        for (i, _) in table.iter().enumerate() {
            let clusters = blob.extent_page_clusters(i);
            if clusters.iter().all(|c| *c == 0) {
                eps.push(0);
            } else {
                eps.push(written.len() as u32);
                written.push(format::extent_page(blob.id, (i * format::EXTENTS_PER_EP) as u32, clusters));
            }
        }
    }
    let mut b2 = blob.clone();
    if let Some(t) = &mut b2.extent_pages {
        *t = eps;
    }
    let chain2 = format::layout_pages(b2.id, &b2.descriptors()).expect("fits");
    let n2 = chain2.len();
    for (i, mut p) in chain2.into_iter().enumerate() {
        format::seal_page(&mut p, if i + 1 < n2 { (i + 1) as u32 } else { format::INVALID_PAGE });
        written[i] = p;
    }
    let again = read_all(&written, n2).expect("its own pages parse");
    assert_eq!((&again.clusters, &again.xattrs, &again.internal), (&blob.clusters, &blob.xattrs, &blob.internal));
    assert_eq!((again.invalid_flags, again.data_ro_flags, again.md_ro_flags), (blob.invalid_flags, blob.data_ro_flags, blob.md_ro_flags));
}

/// The blob of an input: its chain follows `next` within the input pages.
fn read(pages: &[Vec<u8>]) -> Result<Blob, format::FormatError> {
    let h = format::page_header(&pages[0])?;
    let id = h.id;
    let mut parse = Parse::new(id);
    let mut cur = 0usize;
    let mut seen = 0;
    loop {
        let h = format::page_header(&pages[cur])?;
        parse.page(cur as u32, &pages[cur], TOTAL_CLUSTERS)?;
        seen += 1;
        if h.next == format::INVALID_PAGE || seen >= pages.len() {
            break;
        }
        cur = h.next as usize % pages.len();
    }
    for (i, ep) in parse.extent_pages().into_iter().enumerate() {
        if ep != 0 {
            parse.extent_page(i, &pages[ep as usize % pages.len()])?;
        }
    }
    parse.finish()
}

/// A chain of `chain_len` pages from page 0, extent pages by number.
fn read_all(pages: &[Vec<u8>], chain_len: usize) -> Result<Blob, format::FormatError> {
    let h = format::page_header(&pages[0])?;
    let mut parse = Parse::new(h.id);
    for (i, p) in pages.iter().enumerate().take(chain_len) {
        parse.page(i as u32, p, TOTAL_CLUSTERS)?;
    }
    for (i, ep) in parse.extent_pages().into_iter().enumerate() {
        if ep != 0 {
            parse.extent_page(i, &pages[ep as usize])?;
        }
    }
    parse.finish()
}
