//! Memory shared with the controller (queues, PRP/SGL lists, small admin
//! buffers): a DMA buffer reached only through raw pointers and volatile
//! accesses, never through a Rust reference, because the device may write it
//! at any time.

use pollux_core::dma::{DmaBuf, DmaError, Iova};
use pollux_nvme_spec::cmd::{Command, Completion};
use zerocopy::{FromBytes, IntoBytes};

/// A block of device-visible memory with typed volatile accessors. Every
/// accessor checks its bounds (an out-of-range index is a driver bug and
/// panics rather than touching foreign memory).
pub struct DeviceMemory {
    buf: DmaBuf,
    base: *mut u8,
    len: usize,
}

impl DeviceMemory {
    /// `len` zeroed bytes of DMA memory in a region of their own.
    pub fn alloc(len: usize) -> Result<DeviceMemory, DmaError> {
        let buf = DmaBuf::alloc(len)?;
        let base = buf.as_ptr();
        Ok(DeviceMemory { buf, base, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of byte `offset`.
    pub fn iova(&self, offset: usize) -> Iova {
        assert!(offset <= self.len, "device memory offset {offset} beyond {}", self.len);
        self.buf.iova().offset(offset)
    }

    #[inline]
    fn at(&self, offset: usize, width: usize) -> *mut u8 {
        assert!(offset.checked_add(width).is_some_and(|e| e <= self.len), "device memory access {offset}+{width} beyond {}", self.len);
        // SAFETY: offset + width <= len, inside the buffer.
        unsafe { self.base.add(offset) }
    }

    /// Zero `len` bytes at `offset`.
    pub fn zero(&self, offset: usize, len: usize) {
        let p = self.at(offset, len);
        // SAFETY: in bounds (checked); raw write, no reference is formed.
        unsafe { std::ptr::write_bytes(p, 0, len) };
    }

    /// Store a submission queue entry at byte `offset`.
    #[inline]
    pub fn write_command(&self, offset: usize, cmd: &Command) {
        let p = self.at(offset, size_of::<Command>());
        // SAFETY: in bounds; `Command` has alignment 1; volatile so the
        // stores are not elided or merged with later ones.
        unsafe { p.cast::<Command>().write_volatile(*cmd) };
    }

    /// The 16-bit status/phase half-word of the completion at `offset`.
    #[inline]
    pub fn completion_status(&self, offset: usize) -> u16 {
        let p = self.at(offset + 14, 2);
        // SAFETY: in bounds; CQ entries are 16-byte aligned (queues start on a
        // page), so this is an aligned 2-byte device write target.
        u16::from_le(unsafe { p.cast::<u16>().read_volatile() })
    }

    /// Load the completion queue entry at byte `offset`.
    #[inline]
    pub fn read_completion(&self, offset: usize) -> Completion {
        let p = self.at(offset, size_of::<Completion>());
        // SAFETY: in bounds; `Completion` has alignment 1 and every bit
        // pattern is valid (FromBytes).
        unsafe { p.cast::<Completion>().read_volatile() }
    }

    /// Store a little-endian u64 (a PRP entry) at `offset`.
    #[inline]
    pub fn write_u64(&self, offset: usize, v: u64) {
        let p = self.at(offset, 8);
        // SAFETY: in bounds; unaligned store of plain bytes.
        unsafe { p.cast::<[u8; 8]>().write_volatile(v.to_le_bytes()) };
    }

    /// Store plain bytes (an SGL descriptor, DSM range) at `offset`.
    pub fn write_bytes<T: IntoBytes + zerocopy::Immutable + ?Sized>(&self, offset: usize, v: &T) {
        let src = v.as_bytes();
        let p = self.at(offset, src.len());
        // SAFETY: in bounds; `src` is ordinary memory that cannot overlap
        // this buffer (nothing holds references into device memory).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
    }

    /// Copy `out.len()` bytes at `offset` out (data the device wrote, once
    /// the command that wrote it has completed).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        let p = self.at(offset, out.len());
        // SAFETY: in bounds; a raw copy into our own buffer.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
    }

    /// Read a structure out of device memory by value.
    pub fn read_struct<T: FromBytes>(&self, offset: usize) -> T {
        let p = self.at(offset, size_of::<T>());
        // SAFETY: in bounds; `T: FromBytes` accepts any bit pattern and
        // `read_unaligned` needs no alignment.
        unsafe { p.cast::<T>().read_unaligned() }
    }
}
