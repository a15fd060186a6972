//! The malloc bdev: a RAM disk.
//!
//! Its memory is an anonymous private mapping, so blocks that were never
//! written (or were unmapped) take no memory and read as zeroes: a malloc bdev
//! is thin-provisioned. All reactors reach the same memory, so two requests
//! from different reactors may touch the same bytes at once (a real disk gives
//! some mix of both writes then, and so does this one). Copies to and from the
//! shared memory are therefore never plain Rust memory accesses: they are
//! `rep movsb` in inline assembly on x86-64 (opaque to the compiler, like a
//! call into a function using atomics, and as fast as memcpy for 4 KiB), and
//! relaxed atomic word copies elsewhere. There is no data race in Rust's
//! sense, hence no undefined behaviour, whatever initiators do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use pollux_core::app::App;
use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevIo, BdevSpec, IoStatus, IoType, Uuid};
use pollux_core::dma::{LendSource, Lent};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::{delete_rpc, next_name, reject_unsupported};

/// A malloc bdev's memory and creation parameters.
pub struct Malloc {
    /// Raw: the mapping is shared with every reactor and never seen as a
    /// Rust slice (an `MmapMut` would make one on each `as_ptr`).
    map: memmap2::MmapRaw,
    len: usize,
    block_size: u32,
    num_blocks: u64,
    optimal_io_boundary: u32,
    page: usize,
}

// The mapping is only reached through `words`/`bytes` below (atomics).
impl Malloc {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The bytes `[off, off+len)` as atomics.
    fn bytes(&self, off: usize, len: usize) -> &[AtomicU8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (checked); AtomicU8 has the size and alignment of
        // u8; the mapping lives as long as `self`, and every access to it
        // goes through atomics.
        unsafe { std::slice::from_raw_parts(self.base().add(off).cast::<AtomicU8>(), len) }
    }

    /// The 8-byte words of `[off, off+len)`; `off` and `len` multiples of 8.
    fn words(&self, off: usize, len: usize) -> &[AtomicU64] {
        assert!(off % 8 == 0 && len % 8 == 0 && off + len <= self.len);
        // SAFETY: in bounds and 8-aligned (the mapping is page aligned);
        // AtomicU64 has the layout of u64; all access is atomic.
        unsafe { std::slice::from_raw_parts(self.base().add(off).cast::<AtomicU64>(), len / 8) }
    }

    fn read_into(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.len);
        // SAFETY: the source range is inside the mapping (checked) and the
        // destination is an exclusive slice of the same length.
        unsafe { shared_copy(self.base().add(off), dst.as_mut_ptr(), dst.len()) }
    }

    fn write_from(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len);
        // SAFETY: the destination range is inside the mapping (checked) and
        // the source is a live slice of the same length.
        unsafe { shared_copy(src.as_ptr(), self.base().add(off), src.len()) }
    }

    /// Zero a range; whole pages are given back to the kernel.
    fn zero(&self, off: usize, len: usize) {
        let start = off.div_ceil(self.page) * self.page;
        let end = ((off + len) / self.page) * self.page;
        if end > start {
            // SAFETY: [start, end) is inside our private anonymous mapping;
            // MADV_DONTNEED makes those pages read as zero afterwards, which
            // is exactly the contents we want; no reference to them exists
            // (all access is through atomics that re-read memory).
            unsafe { libc::madvise(self.base().add(start).cast(), end - start, libc::MADV_DONTNEED) };
            self.write_zeroes_slow(off, start - off);
            self.write_zeroes_slow(end, off + len - end);
        } else {
            self.write_zeroes_slow(off, len);
        }
    }

    fn write_zeroes_slow(&self, off: usize, len: usize) {
        if len == 0 {
            return;
        }
        if off % 8 == 0 && len % 8 == 0 {
            self.words(off, len).iter().for_each(|w| w.store(0, Ordering::Relaxed));
        } else {
            self.bytes(off, len).iter().for_each(|b| b.store(0, Ordering::Relaxed));
        }
    }
}

/// Copy `len` bytes between our shared mapping and a private buffer.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the
/// two ranges must not overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn shared_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: per the contract; `rep movsb` reads [src, src+len) and writes
    // [dst, dst+len) only, with the direction flag clear (the ABI default).
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        )
    };
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn shared_copy(src: *const u8, dst: *mut u8, len: usize) {
    use std::sync::atomic::AtomicU8;
    for i in 0..len {
        // SAFETY: per the contract; AtomicU8 has the layout of u8.
        unsafe {
            let v = (*src.add(i).cast::<AtomicU8>()).load(Ordering::Relaxed);
            (*dst.add(i).cast::<AtomicU8>()).store(v, Ordering::Relaxed);
        }
    }
}

// SAFETY: the mapping is `len` bytes, mapped while the `Malloc` lives
// (it is unmapped on drop only), and readable throughout (unwritten pages
// read as zeroes). `copy_out` goes through `read_into`, never a Rust read.
unsafe impl LendSource for Malloc {
    fn base(&self) -> *const u8 {
        self.base()
    }
    fn size(&self) -> usize {
        self.len
    }
    fn copy_out(&self, off: usize, dst: &mut [u8]) {
        self.read_into(off, dst);
    }
}

struct MallocBackend {
    disk: Arc<Malloc>,
}

impl Backend for MallocBackend {
    fn module_name(&self) -> &'static str {
        "malloc"
    }
    fn product_name(&self) -> &'static str {
        "Malloc disk"
    }
    fn supports(&self, _kind: IoType) -> bool {
        true
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(MallocChannel { disk: self.disk.clone() })
    }
    /// Its memory holds the data already: a read that brings no buffers
    /// is lent the range (no copy; see `dma::Lent`), as SPDK's malloc bdev
    /// does.
    fn lends_reads(&self) -> bool {
        true
    }
    fn driver_specific(&self) -> Value {
        json!({})
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "bdev_malloc_create",
            json!({
                "name": b.name(),
                "num_blocks": self.disk.num_blocks,
                "block_size": self.disk.block_size,
                "physical_block_size": self.disk.block_size,
                "uuid": b.uuid().to_string(),
                "optimal_io_boundary": self.disk.optimal_io_boundary,
                "md_size": 0,
                "dif_type": 0,
                "dif_is_head_of_md": false,
                "dif_pi_format": 0,
            }),
        ))
    }
}

struct MallocChannel {
    disk: Arc<Malloc>,
}

impl BackendChannel for MallocChannel {
    fn submit(&self, mut io: BdevIo) {
        let disk = &self.disk;
        let mut off = io.offset_bytes() as usize;
        let len = io.len_bytes() as usize;
        let status = match io.kind() {
            IoType::Read if io.wants_lend() => {
                let lent = Lent::new(disk.clone(), off, len);
                io.lend(lent);
                IoStatus::Success
            }
            IoType::Read => {
                for b in io.buffers_mut() {
                    disk.read_into(off, b);
                    off += b.len();
                }
                IoStatus::Success
            }
            IoType::Write => {
                for b in io.buffers() {
                    disk.write_from(off, b);
                    off += b.len();
                }
                IoStatus::Success
            }
            IoType::Compare => {
                let mut status = IoStatus::Success;
                let mut pos = 0u64;
                let mut tmp = [0u8; 512];
                'outer: for b in io.buffers() {
                    for chunk in b.chunks(512) {
                        disk.read_into(off, &mut tmp[..chunk.len()]);
                        if let Some(i) = chunk.iter().zip(&tmp).position(|(a, b)| a != b) {
                            status = IoStatus::Miscompare { offset: pos + i as u64 };
                            break 'outer;
                        }
                        off += chunk.len();
                        pos += chunk.len() as u64;
                    }
                }
                status
            }
            IoType::Unmap | IoType::WriteZeroes => {
                disk.zero(off, len);
                IoStatus::Success
            }
            IoType::Flush | IoType::Reset => IoStatus::Success,
        };
        io.complete(status);
    }
}

/// `bdev_malloc_create` parameters (every one SPDK defines).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: Option<String>,
    block_size: u32,
    num_blocks: u64,
    uuid: Option<Uuid>,
    #[serde(default)]
    optimal_io_boundary: u32,
    #[serde(default)]
    md_size: u32,
    #[serde(default)]
    md_interleave: bool,
    #[serde(default)]
    dif_type: i32,
    #[serde(default)]
    dif_is_head_of_md: bool,
    physical_block_size: Option<u32>,
    #[serde(default)]
    dif_pi_format: u32,
    numa_id: Option<i32>,
}

/// Create a malloc bdev (main reactor).
pub fn create(name: &str, block_size: u32, num_blocks: u64, uuid: Option<Uuid>, optimal_io_boundary: u32) -> Result<Arc<Bdev>, RpcError> {
    let len = (num_blocks as u128 * block_size as u128).try_into().map_err(|_| RpcError::invalid_params("size too large"))?;
    if len == 0 {
        return Err(RpcError::invalid_params("num_blocks and block_size must be above 0"));
    }
    let map = memmap2::MmapMut::map_anon(len)
        .map_err(|e| RpcError::errno(libc::ENOMEM, format!("cannot allocate {len} bytes for {name}: {e}")))?;
    // SAFETY: madvise on our own fresh anonymous mapping. Transparent huge
    // pages cut TLB misses on large disks (SPDK's malloc uses hugepages);
    // where THP is off this is a no-op.
    unsafe { libc::madvise(map.as_ptr() as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let map = memmap2::MmapRaw::from(map);
    let disk = Arc::new(Malloc { map, len, block_size, num_blocks, optimal_io_boundary, page });
    let spec = BdevSpec { name: name.to_string(), block_size, num_blocks, uuid, backend: Arc::new(MallocBackend { disk }) };
    bdev::register(spec).map_err(RpcError::from)
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_malloc_create", States::RUNTIME, |p: Create, r: Responder| {
        if let Err(e) = reject_unsupported(&[
            ("md_size", p.md_size != 0),
            ("md_interleave", p.md_interleave),
            ("dif_type", p.dif_type != 0),
            ("dif_is_head_of_md", p.dif_is_head_of_md),
            ("dif_pi_format", p.dif_pi_format != 0),
            ("physical_block_size", p.physical_block_size.is_some_and(|pbs| pbs != p.block_size && pbs != 0)),
        ]) {
            return r.err(e);
        }
        let _ = p.numa_id;
        let name = p.name.unwrap_or_else(|| next_name("Malloc"));
        r.result(create(&name, p.block_size, p.num_blocks, p.uuid, p.optimal_io_boundary).map(|b| b.name().to_string()))
    });
    m.register("bdev_malloc_delete", States::RUNTIME, |p: crate::common::Delete, r: Responder| delete_rpc("malloc", p, r));
}
