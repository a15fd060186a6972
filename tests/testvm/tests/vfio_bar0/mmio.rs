//! The only unsafe code of this test: mapping a VFIO region and reading it with
//! bounds-checked volatile loads. (The real driver's `Bar` type comes with issue 5.)

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// A device register window mapped into this process.
pub struct MappedRegion {
    base: NonNull<u8>,
    len: usize,
}

impl MappedRegion {
    /// Maps `len` bytes at `offset` of a VFIO device file descriptor.
    ///
    /// # Safety
    /// `fd` must be an open VFIO device and `offset`/`len` one of its mmap-able
    /// regions as reported by `VFIO_DEVICE_GET_REGION_INFO`, so the mapping is
    /// device memory that nothing else in this process aliases as Rust data.
    pub unsafe fn map(fd: RawFd, offset: u64, len: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (addr = null); the
        // caller guarantees fd/offset/len describe a mappable device region.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, len })
    }

    fn check(&self, offset: usize, width: usize) -> Option<()> {
        let end = offset.checked_add(width)?;
        (end <= self.len && offset % width == 0).then_some(())
    }

    /// A 32-bit register, or `None` when out of bounds or misaligned.
    pub fn read32(&self, offset: usize) -> Option<u32> {
        self.check(offset, 4)?;
        // SAFETY: offset..offset+4 lies inside the live mapping and is 4-byte
        // aligned (the base is page-aligned); device memory is read volatile.
        Some(unsafe { self.base.as_ptr().add(offset).cast::<u32>().read_volatile() })
    }

    /// A 64-bit register, or `None` when out of bounds or misaligned.
    pub fn read64(&self, offset: usize) -> Option<u64> {
        self.check(offset, 8)?;
        // SAFETY: as in read32, for 8 bytes with 8-byte alignment.
        Some(unsafe { self.base.as_ptr().add(offset).cast::<u64>().read_volatile() })
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping created in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
