//! Seeds of `lvol_md`: blobs as SPDK lays them out (an lvol with an extent
//! table over two extent pages, a thick blob with RLE extents, the super
//! blob of an lvol store), and a super block.

use pollux_lvol::blob::Blob;
use pollux_lvol::format::{self, SuperBlock};

/// A blob's input: mode byte 1, its chain, then its extent pages (their
/// numbers in the table point at them).
fn blob_input(mut b: Blob) -> Vec<u8> {
    let chain_len = format::layout_pages(b.id, &b.descriptors()).expect("fits").len();
    let mut eps = Vec::new();
    if let Some(t) = &b.extent_pages {
        let mut next = chain_len as u32;
        for i in 0..t.len() {
            let clusters = b.extent_page_clusters(i);
            if clusters.iter().all(|c| *c == 0) {
                continue;
            }
            eps.push((next, format::extent_page(b.id, (i * format::EXTENTS_PER_EP) as u32, clusters)));
            next += 1;
        }
        let mut table = t.clone();
        let mut k = 0;
        for (i, slot) in table.iter_mut().enumerate() {
            if !b.extent_page_clusters(i).iter().all(|c| *c == 0) {
                *slot = eps[k].0;
                k += 1;
            }
        }
        b.extent_pages = Some(table);
    }
    let mut chain = format::layout_pages(b.id, &b.descriptors()).expect("fits");
    let n = chain.len();
    let mut out = vec![1u8];
    for (i, p) in chain.iter_mut().enumerate() {
        format::seal_page(p, if i + 1 < n { (i + 1) as u32 } else { format::INVALID_PAGE });
        out.extend_from_slice(p);
    }
    for (_, p) in eps {
        out.extend_from_slice(&p);
    }
    out
}

pub(super) fn lvol_md() -> Vec<(String, Vec<u8>)> {
    let id = format::blob_id_of_page(3);
    let mut thin = Blob::new(id, true, true);
    thin.set_xattr("name", b"vol0".iter().copied().chain(std::iter::repeat_n(0, 60)).collect());
    thin.set_xattr("uuid", b"c110dd88-9922-4a33-bfd6-f741f019b6d4\0".to_vec());
    thin.set_parent(Some(format::blob_id_of_page(5)));
    thin.set_num_clusters(600);
    thin.clusters[5] = 9;
    thin.clusters[513] = 40;
    let mut thick = Blob::new(format::blob_id_of_page(7), false, false);
    thick.set_xattr("name", b"thick\0".to_vec());
    thick.clusters = (20..36).collect();
    let mut sup = Blob::new(format::blob_id_of_page(0), false, true);
    sup.set_xattr("uuid", b"437df6d4-1ff9-4c0d-b885-465bdce81fe2\0".to_vec());
    sup.set_xattr("name", b"lvs0\0".to_vec());
    let sb = SuperBlock::new_layout(64 << 20, 1 << 20, 64, 512).expect("layout");
    let mut super_input = vec![0u8];
    super_input.extend_from_slice(&sb.render());
    vec![
        ("seed-thin-clone-two-extent-pages".into(), blob_input(thin)),
        ("seed-thick-rle".into(), blob_input(thick)),
        ("seed-super-blob".into(), blob_input(sup)),
        ("seed-super-block".into(), super_input),
    ]
}
