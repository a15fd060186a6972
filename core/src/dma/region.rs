//! Regions: large, pinned mappings that devices may read and write.

use std::io;
use std::ptr::NonNull;

use crate::sys::syscall;

/// The I/O virtual address a device uses for a byte of DMA memory. Pollux
/// maps memory into the IOMMU with IOVA = virtual address, but the type keeps
/// device addresses from being mixed up with pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl Iova {
    pub fn offset(self, by: usize) -> Iova {
        Iova(self.0 + by as u64)
    }
}

/// What backs a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    /// 2 MiB or 1 GiB hugepages: physically stable, what VFIO needs.
    Hugepages { page_size: usize },
    /// Ordinary pages locked in memory (the fallback without hugepages).
    Locked,
    /// Ordinary pages that could not be locked (no CAP_IPC_LOCK and a small
    /// memlock limit); fine for software bdevs, not for devices.
    Unlocked,
}

/// One mapping of DMA memory. Unmapped when dropped; the allocator keeps
/// regions for the life of the process.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: a Region is an address range; it hands out raw pointers only and
// the memory it maps is not tied to any thread.
unsafe impl Send for Region {}
// SAFETY: as above; Region has no interior mutability.
unsafe impl Sync for Region {}

const HUGE_2M: usize = 2 << 20;
const HUGE_1G: usize = 1 << 30;

fn mmap(len: usize, extra_flags: i32) -> io::Result<NonNull<u8>> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | extra_flags;
    // SAFETY: anonymous private mapping with no address hint; the kernel
    // chooses a fresh range that nothing else references.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(p.cast()).expect("mmap never returns null on success"))
}

impl Region {
    /// Map `len` bytes (rounded up to the page size) on hugepages if any are
    /// free, else on locked ordinary pages.
    pub(crate) fn map(len: usize, allow_fallback: bool) -> io::Result<Region> {
        let attempts: &[(usize, i32)] = &[(HUGE_1G, libc::MAP_HUGETLB | libc::MAP_HUGE_1GB), (HUGE_2M, libc::MAP_HUGETLB)];
        let mut last_err = None;
        for &(page, flags) in attempts {
            // 1 GiB pages only for regions that use at least one whole page.
            if page == HUGE_1G && len < HUGE_1G {
                continue;
            }
            let rounded = len.div_ceil(page) * page;
            match mmap(rounded, flags) {
                Ok(ptr) => return Ok(Region { ptr, len: rounded, backing: Backing::Hugepages { page_size: page } }),
                Err(e) => last_err = Some(e),
            }
        }
        if !allow_fallback {
            return Err(last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM)));
        }
        let page = 4096;
        let rounded = len.div_ceil(page) * page;
        let ptr = mmap(rounded, 0)?;
        let backing = match syscall!(mlock(ptr.as_ptr().cast(), rounded)) {
            Ok(_) => Backing::Locked,
            Err(_) => Backing::Unlocked,
        };
        Ok(Region { ptr, len: rounded, backing })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iova(&self) -> Iova {
        Iova(self.ptr.as_ptr() as u64)
    }

    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Whether `[ptr, ptr+len)` lies inside this region.
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let p = ptr as usize;
        p >= start && p.checked_add(len).is_some_and(|end| end <= start + self.len)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; nothing refers to it once the region
        // is dropped (buffers keep their region alive).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
