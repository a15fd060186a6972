//! A PCI BAR mapped into this process: device registers reached only through
//! bounds-checked, aligned volatile accesses of 8 bytes or less.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use crate::regs::{RegisterError, Registers};

/// A mapped register window (BAR0 of an NVMe controller).
pub struct Bar {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is device memory shared by all threads by design; every
// access is a single volatile load or store of at most 8 bytes, which the
// device sees as one register access whatever thread makes it.
unsafe impl Send for Bar {}
// SAFETY: as above; `Bar` has no interior state besides the mapping.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps `len` bytes at `offset` of a VFIO device file descriptor.
    ///
    /// # Safety
    /// `fd` must be an open VFIO device and `offset`/`len` one of its
    /// mmap-able regions as `VFIO_DEVICE_GET_REGION_INFO` reported, so the
    /// mapping is device memory that nothing in this process aliases as Rust
    /// data.
    pub unsafe fn map(fd: RawFd, offset: u64, len: usize) -> io::Result<Bar> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BAR offset out of range"))?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty BAR"));
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks; the
        // caller guarantees fd/offset/len name a mappable device region.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, offset) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Bar { base, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(&self, offset: usize, width: usize) -> Result<*mut u8, RegisterError> {
        match offset.checked_add(width) {
            Some(end) if end <= self.len && offset % width == 0 => {
                // SAFETY: offset + width <= len, so the pointer stays inside
                // the mapping.
                Ok(unsafe { self.base.as_ptr().add(offset) })
            }
            _ => Err(RegisterError::OutOfBounds { offset, width, len: self.len }),
        }
    }
}

impl Registers for Bar {
    #[inline]
    fn read32(&self, offset: usize) -> Result<u32, RegisterError> {
        let p = self.check(offset, 4)?;
        // SAFETY: in bounds and 4-byte aligned (the mapping is page aligned);
        // device memory is only ever accessed volatile.
        Ok(unsafe { p.cast::<u32>().read_volatile() })
    }

    #[inline]
    fn read64(&self, offset: usize) -> Result<u64, RegisterError> {
        let p = self.check(offset, 8)?;
        // SAFETY: as in read32, 8 bytes, 8-byte aligned.
        Ok(unsafe { p.cast::<u64>().read_volatile() })
    }

    #[inline]
    fn write32(&self, offset: usize, value: u32) -> Result<(), RegisterError> {
        let p = self.check(offset, 4)?;
        // SAFETY: as in read32.
        unsafe { p.cast::<u32>().write_volatile(value) };
        Ok(())
    }

    #[inline]
    fn write64(&self, offset: usize, value: u64) -> Result<(), RegisterError> {
        let p = self.check(offset, 8)?;
        // SAFETY: as in read64.
        unsafe { p.cast::<u64>().write_volatile(value) };
        Ok(())
    }

    fn window_len(&self) -> Option<usize> {
        Some(self.len)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
