//! A blobstore on one bdev, owned by the main reactor: its super block,
//! bit masks and blobs in memory, and every change to its metadata, made
//! one at a time ([`Store::lock`]) in the order SPDK's blobstore makes
//! them so that a crash at any point leaves a store that loads:
//!
//! - the super block says "dirty" before the first metadata write after a
//!   load, and "clean" only after the masks are written at unload;
//! - a blob's pages other than its first are always written to fresh pages,
//!   then the first page in place (the switch), then the old pages are
//!   released and zeroed;
//! - a cluster is allocated (and its data copied or zeroed) before the
//!   metadata naming it is written, and released only after the metadata
//!   no longer names it.
//!
//! On a dirty load the masks on disk are not trusted: the metadata region
//! is replayed as SPDK's `bs_recover` does, and the masks rebuilt.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::blob::{Blob, ClearMethod, Parse};
use crate::dev::{Dev, DevError};
use crate::format::{self, FormatError, PAGE, SuperBlock};
use pollux_core::reactor::task::Slot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Dev(#[from] DevError),
    #[error("no free cluster left in the store")]
    NoSpace,
    #[error("no free metadata page left in the store")]
    NoMdSpace,
    #[error("blob {0:#x} not found")]
    NoBlob(u64),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    CannotGrow(String),
}

impl StoreError {
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Format(_) => libc::EILSEQ,
            StoreError::Dev(_) => libc::EIO,
            StoreError::NoSpace | StoreError::NoMdSpace | StoreError::CannotGrow(_) => libc::ENOSPC,
            StoreError::NoBlob(_) => libc::ENOENT,
            StoreError::Invalid(_) => libc::EINVAL,
        }
    }
}

pub struct State {
    pub sb: SuperBlock,
    pub used_pages: Vec<bool>,
    pub used_clusters: Vec<bool>,
    pub used_blobids: Vec<bool>,
    pub blobs: BTreeMap<u64, Blob>,
    /// Whether the super block on disk says "clean".
    pub clean_on_disk: bool,
}

impl State {
    /// Rebuild the used-cluster and used-page masks from the blobs.
    fn reclaim(&mut self) {
        let md = self.sb.md_clusters() as usize;
        let mut clusters = vec![false; self.used_clusters.len()];
        clusters.iter_mut().take(md).for_each(|u| *u = true);
        let mut pages = vec![false; self.used_pages.len()];
        for b in self.blobs.values() {
            for &c in b.clusters.iter().filter(|c| **c != 0) {
                if let Some(u) = clusters.get_mut(c as usize) {
                    *u = true;
                }
            }
            for &p in b.pages.iter().chain(b.extent_pages.iter().flatten()).filter(|p| **p != 0 || b.pages.first() == Some(p)) {
                if let Some(u) = pages.get_mut(p as usize) {
                    *u = true;
                }
            }
        }
        let freed = self.used_clusters.iter().zip(&clusters).filter(|(a, b)| **a && !**b).count();
        if freed > 0 {
            tracing::warn!("lvol: {freed} cluster(s) no blob owns after the replay are free again");
        }
        self.used_clusters = clusters;
        self.used_pages = pages;
        self.used_blobids =
            self.used_blobids.iter().enumerate().map(|(i, _)| self.blobs.contains_key(&format::blob_id_of_page(i as u32))).collect();
    }

    pub fn free_clusters(&self) -> u64 {
        self.used_clusters.iter().filter(|u| !**u).count() as u64
    }
    pub fn total_data_clusters(&self) -> u64 {
        self.sb.total_clusters().saturating_sub(self.sb.md_clusters())
    }
    fn claim_cluster(&mut self) -> Result<u32, StoreError> {
        let c = self.used_clusters.iter().position(|u| !*u).ok_or(StoreError::NoSpace)?;
        self.used_clusters[c] = true;
        Ok(c as u32)
    }
    fn claim_page(&mut self, from: usize) -> Result<u32, StoreError> {
        let p = self.used_pages.iter().skip(from).position(|u| !*u).ok_or(StoreError::NoMdSpace)? + from;
        self.used_pages[p] = true;
        Ok(p as u32)
    }
    fn release_page(&mut self, p: u32) {
        if let Some(u) = self.used_pages.get_mut(p as usize) {
            *u = false;
        }
    }
    fn release_cluster(&mut self, c: u32) {
        if let Some(u) = self.used_clusters.get_mut(c as usize) {
            *u = false;
        }
    }
    /// Byte offset of metadata page `p` on the device.
    fn md_at(&self, p: u32) -> u64 {
        (self.sb.md_start as u64 + p as u64) * PAGE as u64
    }
    pub fn cluster_at(&self, c: u32) -> u64 {
        c as u64 * self.sb.cluster_size as u64
    }
    /// The device cluster holding blob cluster `k` of `id`, looking through
    /// its parents.
    pub fn resolve(&self, mut id: u64, k: usize) -> Option<u32> {
        for _ in 0..=self.blobs.len() {
            let b = self.blobs.get(&id)?;
            match b.clusters.get(k) {
                Some(&c) if c != 0 => return Some(c),
                _ => id = b.parent()?,
            }
        }
        None
    }
}

/// Which extent pages a persist writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extents {
    /// Only those the blob did not have (its other ones are current).
    New,
    /// Every one, in place (a resize: the table caps what they cover).
    InPlace,
    /// Every one, to fresh pages, the old ones released after the switch:
    /// the chain's first page is then the only commit point (a merge).
    Fresh,
}

/// One metadata change at a time.
#[derive(Default)]
pub struct Lock {
    held: Cell<bool>,
    waiters: RefCell<VecDeque<Slot<()>>>,
}

pub struct Guard<'a>(&'a Lock);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        match self.0.waiters.borrow_mut().pop_front() {
            Some(next) => next.set(()), // handed over: stays held
            None => self.0.held.set(false),
        }
    }
}

impl Lock {
    pub async fn lock(&self) -> Guard<'_> {
        if self.held.replace(true) {
            let s = Slot::new();
            self.waiters.borrow_mut().push_back(s.clone());
            s.await;
        }
        Guard(self)
    }
}

pub struct Store {
    pub dev: Dev,
    pub state: RefCell<State>,
    lock: Lock,
}

impl Store {
    pub async fn lock(&self) -> Guard<'_> {
        self.lock.lock().await
    }

    /// Read page 0 and say whether it is a blobstore of type `bstype`.
    pub async fn probe(dev: &Dev) -> Result<Option<SuperBlock>, StoreError> {
        if dev.bytes() < PAGE as u64 || dev.block > PAGE as u64 {
            return Ok(None);
        }
        let p = dev.read(0, PAGE).await?;
        if &p[0..8] != format::SIGNATURE {
            return Ok(None);
        }
        Ok(Some(SuperBlock::parse(&p, dev.bytes())?))
    }

    /// Load the store on `dev` (its super block already probed).
    pub async fn load(dev: Dev, sb: SuperBlock) -> Result<Rc<Store>, StoreError> {
        if !dev.block.is_power_of_two() {
            return Err(StoreError::Invalid(format!("blocks of {} bytes are not supported (a power of two)", dev.block)));
        }
        if !sb.cluster_size.is_power_of_two() {
            return Err(StoreError::Invalid(format!(
                "cluster size {} is not a power of two, which Pollux does not support",
                sb.cluster_size
            )));
        }
        if sb.cluster_size as u64 % dev.block != 0 || (sb.io_unit_size as u64) < dev.block && sb.io_unit_size as u64 % dev.block != 0 {
            return Err(StoreError::Invalid(format!("cluster size {} does not suit blocks of {}", sb.cluster_size, dev.block)));
        }
        let total = sb.total_clusters() as usize;
        let md_len = sb.md_len as usize;
        let trusted = sb.clean && sb.used_blobid_mask_len > 0;
        let (used_pages, used_clusters, used_blobids) = if trusted {
            // A mask is read only as far as `bits` bits of it go: the super
            // block may say its region runs to the end of the device, and
            // whatever a bdev's first page holds (a tenant's data too) is
            // examined at start-up.
            let read_mask =
                |start: u32, len: u32, bits: u64| dev.read(start as u64 * PAGE as u64, len.min(format::mask_pages(bits)) as usize * PAGE);
            let p = format::parse_mask(
                &read_mask(sb.used_page_mask_start, sb.used_page_mask_len, md_len as u64).await?,
                format::MASK_USED_PAGES,
                md_len as u64,
            )?;
            let mut c = format::parse_mask(
                &read_mask(sb.used_cluster_mask_start, sb.used_cluster_mask_len, total as u64).await?,
                format::MASK_USED_CLUSTERS,
                u64::MAX,
            )?;
            let b = format::parse_mask(
                &read_mask(sb.used_blobid_mask_start, sb.used_blobid_mask_len, md_len as u64).await?,
                format::MASK_USED_BLOBIDS,
                md_len as u64,
            )?;
            if p.len() != md_len || b.len() != md_len || c.len() < total {
                return Err(FormatError::Invalid("a mask's length does not match the store".into()).into());
            }
            c.truncate(total);
            (p, c, b)
        } else {
            tracing::warn!("lvol: the blobstore on {} was not shut down cleanly: replaying its metadata", dev.desc.bdev().name());
            replay(&dev, &sb).await?
        };
        let store = Rc::new(Store {
            dev,
            state: RefCell::new(State { sb, used_pages, used_clusters, used_blobids, blobs: BTreeMap::new(), clean_on_disk: false }),
            lock: Lock::default(),
        });
        let ids: Vec<u64> = store
            .state
            .borrow()
            .used_blobids
            .iter()
            .enumerate()
            .filter(|(_, u)| **u)
            .map(|(p, _)| format::blob_id_of_page(p as u32))
            .collect();
        for id in ids {
            let blob = store.read_blob(id).await?;
            {
                let st = store.state.borrow();
                for &c in blob.clusters.iter().filter(|c| **c != 0) {
                    if !st.used_clusters.get(c as usize).copied().unwrap_or(false) || (c as u64) < st.sb.md_clusters() {
                        return Err(FormatError::Invalid(format!("blob {id:#x} names cluster {c}, which is not allocated")).into());
                    }
                }
            }
            store.state.borrow_mut().blobs.insert(id, blob);
        }
        {
            let mut st = store.state.borrow_mut();
            st.clean_on_disk = st.sb.clean;
        }
        store.finish_interrupted_snapshots().await?;
        check_ownership(&store.state.borrow())?;
        if !trusted {
            // The replay marked what the metadata region names; what no
            // loaded blob uses (an extent page grown for a resize whose
            // switch never happened, a blob's pages from before its last
            // switch) is free again, so nothing leaks for ever.
            store.state.borrow_mut().reclaim();
        }
        if !trusted {
            // As SPDK after a recovery: the rebuilt masks go to disk (the
            // super block stays dirty until a clean unload).
            store.write_masks().await?;
        }
        Ok(store)
    }

    /// Snapshots cut short by a crash, resolved as SPDK's `bs_load_iter`
    /// does. A snapshot being made is marked `SNAPTMP` (its origin), one
    /// being deleted into its one clone `SNAPRM` (that clone). If the other
    /// blob names the snapshot as its parent, the snapshot stands (made, or
    /// not yet merged): the mark goes and it is read-only. If not, it goes
    /// (the origin never switched to it, or the clone took its clusters),
    /// leaving what the other blob also names to it.
    async fn finish_interrupted_snapshots(&self) -> Result<(), StoreError> {
        for mark in [format::XATTR_SNAPSHOT_PENDING_REMOVAL, format::XATTR_SNAPSHOT_IN_PROGRESS] {
            let marked: Vec<(u64, Option<u64>)> = {
                let st = self.state.borrow();
                st.blobs.iter().filter_map(|(id, b)| Some((*id, b.internal_xattr(mark)?.try_into().ok().map(u64::from_le_bytes)))).collect()
            };
            for (id, other) in marked {
                let named = other.is_some_and(|o| self.state.borrow().blobs.get(&o).is_some_and(|b| b.parent() == Some(id)));
                if named {
                    tracing::warn!("lvol: snapshot {id:#x} ({mark}, interrupted by a crash) stands");
                    if let Some(b) = self.state.borrow_mut().blobs.get_mut(&id) {
                        b.remove_internal(mark);
                        b.data_ro_flags |= format::FLAG_READ_ONLY;
                    }
                    self.persist(id, Extents::New).await?;
                } else {
                    tracing::warn!("lvol: snapshot {id:#x} ({mark}, interrupted by a crash) goes");
                    self.forget_shared(id, other.unwrap_or(0));
                    self.delete_blob(id).await?;
                }
            }
        }
        Ok(())
    }

    /// Drop from blob `id`'s map the clusters and extent pages blob `other`
    /// also names (they are `other`'s), before `id` is deleted.
    fn forget_shared(&self, id: u64, other: u64) {
        let mut st = self.state.borrow_mut();
        let (oc, oe): (std::collections::HashSet<u32>, std::collections::HashSet<u32>) = match st.blobs.get(&other) {
            Some(o) => (
                o.clusters.iter().copied().filter(|c| *c != 0).collect(),
                o.extent_pages.iter().flatten().copied().filter(|p| *p != 0).collect(),
            ),
            None => Default::default(),
        };
        let b = st.blobs.get_mut(&id).expect("blob");
        b.clusters.iter_mut().filter(|c| oc.contains(c)).for_each(|c| *c = 0);
        if let Some(eps) = &mut b.extent_pages {
            eps.iter_mut().filter(|p| oe.contains(p)).for_each(|p| *p = 0);
        }
        b.invalid_flags |= format::FLAG_THIN_PROV;
    }

    /// Delete snapshot `snap` into its one clone `clone` (SPDK's
    /// `delete_snapshot`): the snapshot is marked `SNAPRM`; the clone takes
    /// every cluster it lacks from the snapshot and the snapshot's parent
    /// (the switch); then the snapshot, without those, is deleted. The
    /// caller holds the lock and has frozen the clone's writes.
    pub async fn merge_snapshot(&self, snap: u64, clone: u64) -> Result<(), StoreError> {
        {
            let mut st = self.state.borrow_mut();
            let s = st.blobs.get_mut(&snap).ok_or(StoreError::NoBlob(snap))?;
            s.set_internal(format::XATTR_SNAPSHOT_PENDING_REMOVAL, clone.to_le_bytes().to_vec());
        }
        self.persist(snap, Extents::New).await?;
        {
            let mut st = self.state.borrow_mut();
            let (sc, sp) = {
                let s = &st.blobs[&snap];
                (s.clusters.clone(), s.parent())
            };
            let c = st.blobs.get_mut(&clone).ok_or(StoreError::NoBlob(clone))?;
            for (k, slot) in c.clusters.iter_mut().enumerate() {
                if *slot == 0 {
                    *slot = sc.get(k).copied().unwrap_or(0);
                }
            }
            c.set_parent(sp);
        }
        self.persist(clone, Extents::Fresh).await?;
        self.forget_shared(snap, clone);
        self.delete_blob(snap).await
    }

    /// Remove blob `id`'s parent (after its clusters were allocated):
    /// with `thick`, it becomes a thick blob (inflate), else it stays thin
    /// (decouple).
    pub async fn drop_parent(&self, id: u64, thick: bool) -> Result<(), StoreError> {
        {
            let mut st = self.state.borrow_mut();
            let b = st.blobs.get_mut(&id).ok_or(StoreError::NoBlob(id))?;
            if thick && b.clusters.contains(&0) {
                return Err(StoreError::Invalid(format!("blob {id:#x} still has unallocated clusters")));
            }
            b.set_parent(None);
            if thick {
                b.invalid_flags &= !format::FLAG_THIN_PROV;
            }
        }
        self.persist(id, Extents::New).await
    }

    /// Snapshot blob `origin` as a new blob carrying `xattrs` (SPDK's
    /// `spdk_bs_create_snapshot`): the snapshot takes the origin's clusters
    /// and its parent; the origin becomes a thin clone of the snapshot.
    /// The caller holds the lock and has frozen the origin's writes.
    /// Returns the snapshot's ID.
    pub async fn snapshot(&self, origin: u64, xattrs: Vec<(String, Vec<u8>)>) -> Result<u64, StoreError> {
        let (n, extent_table) = {
            let st = self.state.borrow();
            let o = st.blobs.get(&origin).ok_or(StoreError::NoBlob(origin))?;
            if o.read_only() {
                return Err(StoreError::Invalid("a read-only lvol (a snapshot) cannot be snapshotted".into()));
            }
            (o.clusters.len(), o.extent_pages.is_some())
        };
        // 1. The snapshot, empty, marked in progress.
        let mut snap = Blob::new(0, true, extent_table);
        snap.xattrs = xattrs;
        snap.set_internal(format::XATTR_SNAPSHOT_IN_PROGRESS, origin.to_le_bytes().to_vec());
        let id = self.create_blob(snap, n).await?;
        // 2. It takes the origin's clusters, flags and parent.
        let before = self.state.borrow().blobs.get(&origin).cloned().ok_or(StoreError::NoBlob(origin))?;
        {
            let mut st = self.state.borrow_mut();
            let (clusters, eps, flags, parent, md_ro) = {
                let o = st.blobs.get_mut(&origin).expect("origin");
                let eps = o.extent_pages.as_mut().map(|e| std::mem::replace(e, vec![0; e.len()]));
                (std::mem::replace(&mut o.clusters, vec![0; n]), eps, o.invalid_flags, o.parent(), o.md_ro_flags)
            };
            let s = st.blobs.get_mut(&id).expect("snapshot");
            s.clusters = clusters;
            s.extent_pages = eps;
            s.invalid_flags = flags | format::FLAG_INTERNAL_XATTR;
            s.md_ro_flags = md_ro;
            s.set_parent(parent);
        }
        let mut r = self.persist(id, Extents::New).await;
        if r.is_ok() {
            // 3. The origin: a thin clone of the snapshot (the switch).
            {
                let mut st = self.state.borrow_mut();
                let o = st.blobs.get_mut(&origin).expect("origin");
                o.invalid_flags |= format::FLAG_THIN_PROV;
                o.set_parent(Some(id));
            }
            r = self.persist(origin, Extents::New).await;
        }
        if let Err(e) = r {
            // Before the switch: the origin keeps its clusters (on disk it
            // still names them); the snapshot goes without them, as a load
            // after a crash here would do.
            let pages = self.state.borrow().blobs.get(&origin).map(|o| o.pages.clone()).unwrap_or_default();
            {
                let mut st = self.state.borrow_mut();
                let mut back = before;
                back.pages = pages;
                st.blobs.insert(origin, back);
            }
            self.forget_shared(id, origin);
            if let Err(e2) = self.delete_blob(id).await {
                tracing::warn!("lvol: removing the failed snapshot {id:#x}: {e2}");
            }
            return Err(e);
        }
        // 4. The snapshot is done and read-only.
        {
            let mut st = self.state.borrow_mut();
            let s = st.blobs.get_mut(&id).expect("snapshot");
            s.remove_internal(format::XATTR_SNAPSHOT_IN_PROGRESS);
            if s.internal.is_empty() {
                s.invalid_flags &= !format::FLAG_INTERNAL_XATTR;
            }
            s.data_ro_flags |= format::FLAG_READ_ONLY;
        }
        self.persist(id, Extents::New).await?;
        Ok(id)
    }

    async fn read_blob(&self, id: u64) -> Result<Blob, StoreError> {
        let (md_len, total) = {
            let st = self.state.borrow();
            (st.sb.md_len, st.sb.total_clusters())
        };
        let mut parse = Parse::new(id);
        let mut page_no = format::page_of_blob_id(id);
        let mut seq = 0u32;
        loop {
            if page_no >= md_len || seq > md_len {
                return Err(FormatError::Invalid(format!("blob {id:#x}: its page chain leaves the metadata region")).into());
            }
            let at = self.state.borrow().md_at(page_no);
            let p = self.dev.read(at, PAGE).await?;
            let h = format::page_header(&p)?;
            if h.id != id || h.sequence != seq {
                return Err(
                    FormatError::Invalid(format!("blob {id:#x}: page {page_no} belongs to {:#x} (sequence {})", h.id, h.sequence)).into()
                );
            }
            parse.page(page_no, &p, total)?;
            if h.next == format::INVALID_PAGE {
                break;
            }
            page_no = h.next;
            seq += 1;
        }
        for (i, ep) in parse.extent_pages().into_iter().enumerate() {
            if ep == 0 {
                continue;
            }
            if ep >= md_len {
                return Err(FormatError::Invalid(format!("blob {id:#x}: extent page {ep} beyond the metadata region")).into());
            }
            let at = self.state.borrow().md_at(ep);
            let p = self.dev.read(at, PAGE).await?;
            parse.extent_page(i, &p)?;
        }
        Ok(parse.finish()?)
    }

    /// Mark the super block dirty before the first metadata write.
    async fn mark_dirty(&self) -> Result<(), StoreError> {
        let sb = {
            let st = self.state.borrow();
            if !st.clean_on_disk {
                return Ok(());
            }
            let mut sb = st.sb.clone();
            sb.clean = false;
            sb
        };
        self.dev.write(0, &sb.render()).await?;
        let mut st = self.state.borrow_mut();
        st.clean_on_disk = false;
        st.sb.clean = false;
        Ok(())
    }

    async fn write_masks(&self) -> Result<(), StoreError> {
        let writes = {
            let st = self.state.borrow();
            let sb = &st.sb;
            vec![
                (sb.used_page_mask_start, format::render_mask(format::MASK_USED_PAGES, &st.used_pages, sb.used_page_mask_len)),
                (sb.used_cluster_mask_start, format::render_mask(format::MASK_USED_CLUSTERS, &st.used_clusters, sb.used_cluster_mask_len)),
                (sb.used_blobid_mask_start, format::render_mask(format::MASK_USED_BLOBIDS, &st.used_blobids, sb.used_blobid_mask_len)),
            ]
        };
        for (start, img) in writes {
            if !img.is_empty() {
                self.dev.write(start as u64 * PAGE as u64, &img).await?;
            }
        }
        Ok(())
    }

    /// Write the masks and mark the store clean (SPDK's unload).
    pub async fn unload(&self) -> Result<(), StoreError> {
        let _g = self.lock().await;
        self.write_masks().await?;
        self.dev.flush().await?;
        let sb = {
            let mut st = self.state.borrow_mut();
            st.sb.clean = true;
            st.sb.clone()
        };
        self.dev.write(0, &sb.render()).await?;
        self.dev.flush().await?;
        self.state.borrow_mut().clean_on_disk = true;
        Ok(())
    }

    /// Make a fresh store on `dev` (SPDK's `spdk_bs_init`), then write its
    /// super block, clean, with no blobs.
    pub async fn init(dev: Dev, cluster_size: u32, md_pages: u32, clear: ClearMethod) -> Result<Rc<Store>, StoreError> {
        let size = dev.bytes();
        let sb = SuperBlock::new_layout(size, cluster_size, md_pages, dev.block as u32)?;
        let total = sb.total_clusters() as usize;
        let md_bytes = (sb.md_start as u64 + sb.md_len as u64) * PAGE as u64;
        dev.zero(0, md_bytes).await?;
        let data_at = md_bytes;
        match clear {
            ClearMethod::Unmap | ClearMethod::Default => dev.unmap(data_at, size - data_at - (size - data_at) % dev.block).await?,
            ClearMethod::WriteZeroes => dev.zero(data_at, size - data_at - (size - data_at) % dev.block).await?,
            ClearMethod::None => {}
        }
        let mut used_clusters = vec![false; total];
        for u in used_clusters.iter_mut().take(sb.md_clusters() as usize) {
            *u = true;
        }
        let md_len = sb.md_len as usize;
        let store = Rc::new(Store {
            dev,
            state: RefCell::new(State {
                sb,
                used_pages: vec![false; md_len],
                used_clusters,
                used_blobids: vec![false; md_len],
                blobs: BTreeMap::new(),
                clean_on_disk: false,
            }),
            lock: Lock::default(),
        });
        let sb = store.state.borrow().sb.clone();
        store.dev.write(0, &sb.render()).await?;
        store.write_masks().await?;
        Ok(store)
    }

    /// Grow the store to fill its device (SPDK's `spdk_bs_grow_live`):
    /// the super block, marked dirty, gets the new size and used-cluster
    /// mask length in one write; the new clusters are free. A crash before
    /// that write leaves the old store, after it a dirty one whose load
    /// rebuilds the masks at the new size. Returns whether it grew.
    pub async fn grow(&self) -> Result<bool, StoreError> {
        let _g = self.lock().await;
        let dev_size = self.dev.bytes();
        let mut sb = self.state.borrow().sb.clone();
        if dev_size == sb.size {
            return Ok(false);
        }
        let total = dev_size / sb.cluster_size as u64;
        let mask_len = format::mask_pages(total);
        if dev_size < sb.size {
            return Err(StoreError::CannotGrow(format!("the device ({dev_size} bytes) is smaller than the store ({} bytes)", sb.size)));
        }
        if mask_len > sb.used_cluster_mask_room() || total > u32::MAX as u64 {
            return Err(StoreError::CannotGrow(format!(
                "the store cannot grow past {} bytes (its used-cluster mask has room for that many clusters); the device has {dev_size}",
                sb.max_growable_size()
            )));
        }
        if total < self.state.borrow().used_clusters.len() as u64 {
            return Ok(false);
        }
        sb.clean = false;
        sb.size = dev_size;
        sb.used_cluster_mask_len = mask_len;
        self.dev.write(0, &sb.render()).await?;
        let mut st = self.state.borrow_mut();
        st.used_clusters.resize(total as usize, false);
        st.sb = sb;
        st.clean_on_disk = false;
        Ok(true)
    }

    /// Point the super block at the store's super blob.
    pub async fn set_super_blob(&self, id: u64) -> Result<(), StoreError> {
        self.mark_dirty().await?;
        let sb = {
            let mut st = self.state.borrow_mut();
            st.sb.super_blob = id;
            st.sb.clone()
        };
        self.dev.write(0, &sb.render()).await?;
        Ok(())
    }

    /// Create a blob of `num_clusters` clusters (thick ones allocated and
    /// cleared) with `xattrs`, and persist it. Returns its ID.
    pub async fn create_blob(&self, mut blob: Blob, num_clusters: usize) -> Result<u64, StoreError> {
        let id = {
            let mut st = self.state.borrow_mut();
            let p = st.used_pages.iter().position(|u| !*u).ok_or(StoreError::NoMdSpace)?;
            if st.used_blobids[p] {
                return Err(StoreError::Invalid(format!("metadata page {p} is free but its blob ID is taken")));
            }
            st.used_pages[p] = true;
            st.used_blobids[p] = true;
            format::blob_id_of_page(p as u32)
        };
        blob.id = id;
        blob.pages = vec![format::page_of_blob_id(id)];
        self.state.borrow_mut().blobs.insert(id, blob);
        let r = self.resize_blob(id, num_clusters).await;
        if let Err(e) = r {
            let mut st = self.state.borrow_mut();
            st.blobs.remove(&id);
            let p = format::page_of_blob_id(id) as usize;
            st.used_pages[p] = false;
            st.used_blobids[p] = false;
            return Err(e);
        }
        Ok(id)
    }

    /// Grow or shrink a blob to `n` clusters and persist it. New clusters of
    /// a thick blob are allocated and cleared first; clusters given up are
    /// released after the metadata no longer names them.
    pub async fn resize_blob(&self, id: u64, n: usize) -> Result<(), StoreError> {
        let (thin, old, clear) = {
            let st = self.state.borrow();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            (b.thin(), b.clusters.len(), b.clear_method())
        };
        let mut fresh = Vec::new();
        if !thin && n > old {
            let mut st = self.state.borrow_mut();
            if st.free_clusters() < (n - old) as u64 {
                return Err(StoreError::NoSpace);
            }
            for _ in old..n {
                fresh.push(st.claim_cluster()?);
            }
        }
        for &c in &fresh {
            let (at, len) = {
                let st = self.state.borrow();
                (st.cluster_at(c), st.sb.cluster_size as u64)
            };
            if let Err(e) = self.clear(at, len, clear).await {
                let mut st = self.state.borrow_mut();
                fresh.iter().for_each(|c| st.release_cluster(*c));
                return Err(e);
            }
        }
        let freed = {
            let mut st = self.state.borrow_mut();
            let b = st.blobs.get_mut(&id).ok_or(StoreError::NoBlob(id))?;
            let freed: Vec<u32> = b.clusters.iter().skip(n).copied().filter(|c| *c != 0).collect();
            let old_eps: Vec<u32> =
                b.extent_pages.as_ref().map(|e| e.iter().skip(n.div_ceil(format::EXTENTS_PER_EP)).copied().collect()).unwrap_or_default();
            b.set_num_clusters(n);
            if !fresh.is_empty() {
                b.clusters[old..n].copy_from_slice(&fresh);
            }
            (freed, old_eps)
        };
        // Changed extent pages go to fresh pages: the chain's first page
        // stays the one commit point (a shrink rewriting its last kept
        // page in place, then cut short, would leave a short page before
        // a longer one, which neither SPDK nor Pollux loads).
        self.persist(id, Extents::Fresh).await?;
        self.release(freed.0, freed.1, clear).await
    }

    async fn clear(&self, at: u64, len: u64, how: ClearMethod) -> Result<(), StoreError> {
        match how {
            ClearMethod::None => Ok(()),
            ClearMethod::WriteZeroes => Ok(self.dev.zero(at, len).await?),
            ClearMethod::Unmap | ClearMethod::Default => Ok(self.dev.unmap(at, len).await?),
        }
    }

    /// Give clusters and extent pages back (their metadata already
    /// persisted without them), clearing the clusters as the blob asks.
    async fn release(&self, clusters: Vec<u32>, extent_pages: Vec<u32>, how: ClearMethod) -> Result<(), StoreError> {
        for &c in &clusters {
            let (at, len) = {
                let st = self.state.borrow();
                (st.cluster_at(c), st.sb.cluster_size as u64)
            };
            // A failed clear leaves old data in a free cluster: the next
            // owner's first write zeroes or copies over it anyway.
            if let Err(e) = self.clear(at, len, how).await {
                tracing::warn!("lvol: clearing cluster {c}: {e}");
            }
        }
        for &p in extent_pages.iter().filter(|p| **p != 0) {
            let at = self.state.borrow().md_at(p);
            self.dev.zero(at, PAGE as u64).await?;
        }
        let mut st = self.state.borrow_mut();
        clusters.iter().for_each(|c| st.release_cluster(*c));
        extent_pages.iter().filter(|p| **p != 0).for_each(|p| st.release_page(*p));
        Ok(())
    }

    /// Write a blob's metadata: extent pages (all of them when
    /// `extents`), then the chain's pages after the first to fresh pages,
    /// then the first page in place, then the old chain pages released.
    pub async fn persist(&self, id: u64, extents: Extents) -> Result<(), StoreError> {
        self.mark_dirty().await?;
        // Extent pages first: pages for those the blob lacks (and, Fresh,
        // for every one that changes; the old ones go after the switch).
        let (ep_writes, replaced) = {
            let mut st = self.state.borrow_mut();
            let n_eps = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?.extent_pages.as_ref().map(|e| e.len()).unwrap_or(0);
            let mut writes = Vec::new();
            let mut replaced = Vec::new();
            for i in 0..n_eps {
                let b = &st.blobs[&id];
                let empty = b.extent_page_clusters(i).iter().all(|c| *c == 0);
                let have = b.extent_pages.as_ref().expect("table")[i];
                if empty && have == 0 {
                    continue;
                }
                let page = match (have, extents) {
                    (0, _) | (_, Extents::Fresh) => {
                        let p = st.claim_page(1)?;
                        if have != 0 {
                            replaced.push(have);
                        }
                        st.blobs.get_mut(&id).expect("blob").extent_pages.as_mut().expect("table")[i] = p;
                        p
                    }
                    (_, Extents::InPlace) => have,
                    (_, Extents::New) => continue,
                };
                let b = &st.blobs[&id];
                let img = format::extent_page(id, (i * format::EXTENTS_PER_EP) as u32, b.extent_page_clusters(i));
                writes.push((st.md_at(page), img));
            }
            (writes, replaced)
        };
        for (at, img) in ep_writes {
            self.dev.write(at, &img).await?;
        }
        self.write_chain(id).await?;
        for p in replaced {
            let at = self.state.borrow().md_at(p);
            if let Err(e) = self.dev.zero(at, PAGE as u64).await {
                tracing::warn!("lvol: zeroing replaced extent page {p}: {e}");
            }
            self.state.borrow_mut().release_page(p);
        }
        Ok(())
    }

    /// Write one extent page of a blob (after a cluster allocation), or the
    /// whole chain when the extent page is new or the blob uses RLE.
    async fn persist_cluster(&self, id: u64, k: usize) -> Result<(), StoreError> {
        self.mark_dirty().await?;
        let write = {
            let mut st = self.state.borrow_mut();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            match &b.extent_pages {
                None => None,
                Some(eps) => {
                    let i = k / format::EXTENTS_PER_EP;
                    let (page, new) = match eps[i] {
                        0 => (st.claim_page(1)?, true),
                        p => (p, false),
                    };
                    let b = st.blobs.get_mut(&id).expect("blob");
                    b.extent_pages.as_mut().expect("table")[i] = page;
                    let img = format::extent_page(id, (i * format::EXTENTS_PER_EP) as u32, b.extent_page_clusters(i));
                    Some((st.md_at(page), img, new))
                }
            }
        };
        match write {
            None => self.write_chain(id).await,
            Some((at, img, new)) => {
                let r = match self.dev.write(at, &img).await {
                    Ok(()) if new => self.write_chain(id).await,
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.into()),
                };
                if r.is_err() && new {
                    // The table never named the new page: forget it.
                    let mut st = self.state.borrow_mut();
                    let i = k / format::EXTENTS_PER_EP;
                    if let Some(eps) = st.blobs.get_mut(&id).and_then(|b| b.extent_pages.as_mut()) {
                        eps[i] = 0;
                    }
                    let page = ((at / PAGE as u64) - st.sb.md_start as u64) as u32;
                    st.release_page(page);
                }
                r
            }
        }
    }

    async fn write_chain(&self, id: u64) -> Result<(), StoreError> {
        let (pages, old, writes) = {
            let mut st = self.state.borrow_mut();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            let mut imgs = format::layout_pages(id, &b.descriptors())?;
            let old: Vec<u32> = b.pages.iter().skip(1).copied().collect();
            let mut pages = vec![format::page_of_blob_id(id)];
            let mut from = 0;
            for _ in 1..imgs.len() {
                let p = st.claim_page(from)?;
                from = p as usize + 1;
                pages.push(p);
            }
            for (i, img) in imgs.iter_mut().enumerate() {
                let next = pages.get(i + 1).copied().unwrap_or(format::INVALID_PAGE);
                format::seal_page(img, next);
            }
            let writes: Vec<(u64, Vec<u8>)> = pages.iter().zip(imgs).map(|(p, img)| (st.md_at(*p), img)).collect();
            (pages, old, writes)
        };
        // Pages after the first, then the first: the switch.
        for (at, img) in writes.iter().skip(1) {
            self.dev.write(*at, img).await?;
        }
        self.dev.write(writes[0].0, &writes[0].1).await?;
        {
            let mut st = self.state.borrow_mut();
            st.blobs.get_mut(&id).expect("blob").pages = pages;
        }
        // After the switch: a failure here must not undo what is written.
        for p in old {
            let at = self.state.borrow().md_at(p);
            if let Err(e) = self.dev.zero(at, PAGE as u64).await {
                tracing::warn!("lvol: zeroing old metadata page {p}: {e}");
            }
            self.state.borrow_mut().release_page(p);
        }
        Ok(())
    }

    /// Delete a blob: zero its first page (it no longer exists), then give
    /// back its other pages, extent pages and clusters.
    pub async fn delete_blob(&self, id: u64) -> Result<(), StoreError> {
        self.mark_dirty().await?;
        let (first, pages, eps, clusters, how) = {
            let st = self.state.borrow();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            let eps = b.extent_pages.clone().unwrap_or_default();
            let clusters: Vec<u32> = b.clusters.iter().copied().filter(|c| *c != 0).collect();
            (format::page_of_blob_id(id), b.pages.iter().skip(1).copied().collect::<Vec<_>>(), eps, clusters, b.clear_method())
        };
        let at = self.state.borrow().md_at(first);
        self.dev.zero(at, PAGE as u64).await?;
        {
            let mut st = self.state.borrow_mut();
            st.blobs.remove(&id);
            st.release_page(first);
            st.used_blobids[first as usize] = false;
        }
        for p in pages {
            let at = self.state.borrow().md_at(p);
            self.dev.zero(at, PAGE as u64).await?;
            self.state.borrow_mut().release_page(p);
        }
        self.release(clusters, eps, how).await
    }

    /// Give blob cluster `k` of `id` a device cluster of its own: claim
    /// one, fill it from the parents (or zeroes), then persist the
    /// metadata naming it. Returns the device cluster (an existing one if
    /// another request got there first).
    pub async fn allocate_cluster(&self, id: u64, k: usize) -> Result<u32, StoreError> {
        let _g = self.lock().await;
        let (c, src, at, len) = {
            let mut st = self.state.borrow_mut();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            match b.clusters.get(k) {
                None => return Err(StoreError::Invalid(format!("cluster {k} is beyond blob {id:#x}"))),
                Some(&c) if c != 0 => return Ok(c),
                Some(_) => {}
            }
            let src = b.parent().and_then(|p| st.resolve(p, k));
            let c = st.claim_cluster()?;
            (c, src.map(|s| st.cluster_at(s)), st.cluster_at(c), st.sb.cluster_size as u64)
        };
        let filled = match src {
            Some(from) => self.dev.copy(from, at, len).await,
            // SPDK leaves a thin cluster's old contents when nothing backs
            // it; Pollux zeroes it so a volume never shows a deleted
            // volume's data.
            None => self.dev.zero(at, len).await,
        };
        if let Err(e) = filled {
            self.state.borrow_mut().release_cluster(c);
            return Err(e.into());
        }
        self.state.borrow_mut().blobs.get_mut(&id).expect("blob").clusters[k] = c;
        if let Err(e) = self.persist_cluster(id, k).await {
            let mut st = self.state.borrow_mut();
            st.blobs.get_mut(&id).expect("blob").clusters[k] = 0;
            st.release_cluster(c);
            return Err(e);
        }
        Ok(c)
    }
}

/// No device cluster may belong to two blobs, nor to the metadata.
fn check_ownership(st: &State) -> Result<(), StoreError> {
    let mut owner: Vec<u64> = vec![0; st.used_clusters.len()];
    for (id, b) in &st.blobs {
        for &c in b.clusters.iter().filter(|c| **c != 0) {
            let o = owner
                .get_mut(c as usize)
                .ok_or_else(|| FormatError::Invalid(format!("blob {id:#x} names cluster {c} beyond the store")))?;
            if *o != 0 {
                return Err(FormatError::Invalid(format!("cluster {c} belongs to blobs {:#x} and {id:#x}", *o)).into());
            }
            *o = *id;
        }
    }
    Ok(())
}

/// Rebuild the masks from the metadata region (SPDK's `bs_recover`):
/// every valid first page of a chain is a blob, its chain and extent pages
/// are used, and so are the clusters they name.
async fn replay(dev: &Dev, sb: &SuperBlock) -> Result<(Vec<bool>, Vec<bool>, Vec<bool>), StoreError> {
    let md_len = sb.md_len as usize;
    let total = sb.total_clusters() as usize;
    let mut win = Window { dev, base: sb.md_start as u64 * PAGE as u64, md_len, first: u32::MAX, data: Vec::new() };
    let mut used_pages = vec![false; md_len];
    let mut used_blobids = vec![false; md_len];
    let mut used_clusters = vec![false; total];
    let mark_clusters = |ds: &[format::Desc], used: &mut Vec<bool>| -> Result<Vec<u32>, StoreError> {
        let mut eps = Vec::new();
        for d in ds {
            match d {
                format::Desc::ExtentRle(runs) => {
                    for &(c, n) in runs.iter().filter(|(c, _)| *c != 0) {
                        for j in 0..n as usize {
                            *used
                                .get_mut(c as usize + j)
                                .ok_or_else(|| FormatError::Invalid(format!("cluster {} beyond the store", c as usize + j)))? = true;
                        }
                    }
                }
                format::Desc::ExtentPage { clusters, .. } => {
                    for &c in clusters.iter().filter(|c| **c != 0) {
                        *used.get_mut(c as usize).ok_or_else(|| FormatError::Invalid(format!("cluster {c} beyond the store")))? = true;
                    }
                }
                format::Desc::ExtentTable { pages, .. } => eps.extend(pages.iter().filter(|(p, _)| *p != 0).map(|(p, _)| *p)),
                _ => {}
            }
        }
        Ok(eps)
    };
    for first in 0..md_len as u32 {
        if used_pages[first as usize] {
            continue;
        }
        let Ok(h) = format::page_header(win.page(first).await?) else { continue };
        if h.sequence != 0 || h.id != format::blob_id_of_page(first) {
            continue;
        }
        // An extent page also has sequence 0 but another blob's ID.
        let mut chain = vec![first];
        let mut cur = h;
        let mut ok = true;
        while cur.next != format::INVALID_PAGE {
            let n = cur.next;
            if n as usize >= md_len || chain.contains(&n) {
                ok = false;
                break;
            }
            match format::page_header(win.page(n).await?) {
                Ok(h2) if h2.id == h.id && h2.sequence == chain.len() as u32 => {
                    chain.push(n);
                    cur = h2;
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let mut descs = Vec::new();
        for &p in &chain {
            descs.extend(format::descriptors(win.page(p).await?)?);
        }
        let eps = mark_clusters(&descs, &mut used_clusters)?;
        for &p in &chain {
            used_pages[p as usize] = true;
        }
        used_blobids[first as usize] = true;
        for ep in eps {
            if ep as usize >= md_len {
                return Err(FormatError::Invalid(format!("extent page {ep} beyond the metadata region")).into());
            }
            let p = win.page(ep).await?;
            format::page_header(p)?;
            let ds = format::descriptors(p)?;
            mark_clusters(&ds, &mut used_clusters)?;
            used_pages[ep as usize] = true;
        }
    }
    for u in used_clusters.iter_mut().take(sb.md_clusters() as usize) {
        *u = true;
    }
    Ok((used_pages, used_clusters, used_blobids))
}

/// Metadata pages read 256 at a time (1 MiB), for the replay's scan.
struct Window<'a> {
    dev: &'a Dev,
    base: u64,
    md_len: usize,
    first: u32,
    data: Vec<u8>,
}

impl Window<'_> {
    const PAGES: u32 = 256;

    async fn page(&mut self, p: u32) -> Result<&[u8], StoreError> {
        if p < self.first || p >= self.first.saturating_add(Self::PAGES) {
            let first = p - p % Self::PAGES;
            let n = (self.md_len as u32 - first).min(Self::PAGES) as usize;
            self.data = self.dev.read(self.base + first as u64 * PAGE as u64, n * PAGE).await?;
            self.first = first;
        }
        let i = (p - self.first) as usize;
        Ok(&self.data[i * PAGE..(i + 1) * PAGE])
    }
}
