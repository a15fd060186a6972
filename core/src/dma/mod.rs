//! DMA memory: pinned regions that devices may read and write, and the
//! per-reactor buffer pools that hand them out on the I/O path.
//!
//! Regions come from hugepages (`MAP_HUGETLB`: 1 GiB pages for regions of a
//! gigabyte or more, else 2 MiB) and are mapped once, in large pieces. A
//! region's IOVA is its virtual address. When a VFIO container registers a
//! [`DmaMapper`], every existing region is mapped into it, and so is every
//! region created afterwards. Without hugepages the allocator falls back to
//! locked ordinary pages, with one warning: software bdevs and targets work,
//! only the VFIO driver needs real hugepages ([`require_hugepages`]).
//!
//! Why not the `hugepage-rs` crate: it maps one allocation per mmap, cannot
//! tell the IOVA of a buffer, does not pin, and has no hook to map memory into
//! an IOMMU. A DMA allocator needs all four, so this one is written on `libc`.

mod lent;
mod pool;
mod region;
pub mod sgl;

use std::sync::{Arc, Mutex, MutexGuard};

pub use lent::{LendSource, Lent};
pub use pool::{BufPool, Carver, DmaBuf, IobufOptions, PoolStats, Views, iobuf_options, pool, set_iobuf_options};
pub use region::{Backing, Iova, Region};
pub use sgl::{copy_from_bufs, copy_to_bufs, for_each_piece, slices_mut};

/// Maps DMA regions into a device's address space (a VFIO container).
pub trait DmaMapper: Send + Sync {
    fn map(&self, vaddr: *mut u8, iova: Iova, len: usize) -> std::io::Result<()>;
    fn unmap(&self, iova: Iova, len: usize) -> std::io::Result<()>;
}

/// Identifies a registered mapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapperId(u64);

/// Why DMA memory could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("DMA memory limit reached: {requested} more bytes asked for, {used} of {limit} bytes in use (raise --mem-size)")]
    Limit { requested: usize, used: usize, limit: usize },
    #[error("cannot map {len} bytes of DMA memory: {source}")]
    Map { len: usize, source: std::io::Error },
    #[error("no hugepages available for {len} bytes of DMA memory (the VFIO driver needs hugepages: run pollux-setup config)")]
    NoHugepages { len: usize },
    #[error("cannot map DMA region at {iova:#x} ({len} bytes) into the IOMMU: {source}")]
    IommuMap { iova: u64, len: usize, source: std::io::Error },
}

struct State {
    regions: Vec<Arc<Region>>,
    mappers: Vec<(MapperId, Arc<dyn DmaMapper>)>,
    next_mapper: u64,
    limit: Option<usize>,
    used: usize,
    warned_fallback: bool,
    hugepages_required: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    regions: Vec::new(),
    mappers: Vec::new(),
    next_mapper: 1,
    limit: None,
    used: 0,
    warned_fallback: false,
    hugepages_required: false,
});

/// The allocator's lock: control path only (region creation, mapper
/// registration), never taken per I/O.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Limit the total DMA memory (`--mem-size`); `None` removes the limit.
pub fn set_limit(bytes: Option<usize>) {
    state().limit = bytes;
}

/// From now on refuse to fall back to ordinary pages (the VFIO driver calls
/// this: devices need physically stable memory).
pub fn require_hugepages() {
    state().hugepages_required = true;
}

/// Map a new region of at least `len` bytes, counted against the limit and
/// mapped into every registered IOMMU.
pub fn allocate_region(len: usize) -> Result<Arc<Region>, DmaError> {
    let mut st = state();
    if let Some(limit) = st.limit {
        if st.used + len > limit {
            return Err(DmaError::Limit { requested: len, used: st.used, limit });
        }
    }
    let allow_fallback = !st.hugepages_required;
    let region = Region::map(len, allow_fallback)
        .map_err(|source| if allow_fallback { DmaError::Map { len, source } } else { DmaError::NoHugepages { len } })?;
    if !matches!(region.backing(), Backing::Hugepages { .. }) && !st.warned_fallback {
        st.warned_fallback = true;
        tracing::warn!(
            "no free hugepages: DMA memory falls back to {} ordinary pages (fine for software bdevs; \
             the VFIO NVMe driver needs hugepages: see pollux-setup)",
            if region.backing() == Backing::Locked { "locked" } else { "unlocked" }
        );
    }
    for (_, m) in &st.mappers {
        m.map(region.as_ptr(), region.iova(), region.len()).map_err(|source| DmaError::IommuMap {
            iova: region.iova().0,
            len: region.len(),
            source,
        })?;
    }
    st.used += region.len();
    let region = Arc::new(region);
    st.regions.push(region.clone());
    Ok(region)
}

/// Give a region back: unmap it from every IOMMU and stop counting it. The
/// memory itself is unmapped when the last reference goes.
pub(crate) fn release_region(region: &Arc<Region>) {
    let mut st = state();
    if let Some(pos) = st.regions.iter().position(|r| Arc::ptr_eq(r, region)) {
        let r = st.regions.swap_remove(pos);
        for (_, m) in &st.mappers {
            let _ = m.unmap(r.iova(), r.len());
        }
        st.used -= r.len();
    }
}

/// Register an IOMMU mapper; every existing region is mapped into it now and
/// every later region when it is created.
pub fn register_mapper(m: Arc<dyn DmaMapper>) -> Result<MapperId, DmaError> {
    let mut st = state();
    for r in &st.regions {
        m.map(r.as_ptr(), r.iova(), r.len()).map_err(|source| DmaError::IommuMap { iova: r.iova().0, len: r.len(), source })?;
    }
    let id = MapperId(st.next_mapper);
    st.next_mapper += 1;
    st.mappers.push((id, m));
    Ok(id)
}

/// Unmap every region from a mapper and forget it.
pub fn unregister_mapper(id: MapperId) {
    let mut st = state();
    if let Some(pos) = st.mappers.iter().position(|(i, _)| *i == id) {
        let (_, m) = st.mappers.remove(pos);
        for r in &st.regions {
            let _ = m.unmap(r.iova(), r.len());
        }
    }
}

/// Totals for `env_dpdk_get_mem_stats`-style reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryStats {
    pub regions: usize,
    pub total_bytes: usize,
    pub hugepage_bytes: usize,
    pub limit_bytes: Option<usize>,
    pub mappers: usize,
}

pub fn stats() -> MemoryStats {
    let st = state();
    MemoryStats {
        regions: st.regions.len(),
        total_bytes: st.used,
        hugepage_bytes: st.regions.iter().filter(|r| matches!(r.backing(), Backing::Hugepages { .. })).map(|r| r.len()).sum(),
        limit_bytes: st.limit,
        mappers: st.mappers.len(),
    }
}

/// Find the region holding `[ptr, ptr+len)`, for drivers translating buffers.
pub fn region_of(ptr: *const u8, len: usize) -> Option<Arc<Region>> {
    state().regions.iter().find(|r| r.contains(ptr, len)).cloned()
}

#[cfg(test)]
mod tests;
