//! The block-device layer ("bdev"): one interface in front of every kind of
//! block device, as SPDK's.
//!
//! Providers implement [`Backend`] (what a module such as malloc, null,
//! io_uring or NVMe knows about its device) and [`BackendChannel`] (its
//! per-reactor submission state), then [`register`] a bdev. Consumers (targets,
//! `pollux-perf`) [`open`] a bdev by name and get a [`Descriptor`]; on each
//! reactor they take the bdev's I/O channel ([`Descriptor::channel`]) and
//! submit requests with a completion callback that runs on that reactor.
//!
//! The layer checks every request (range, buffer length, type, write access),
//! gives backends aligned or contiguous buffers when they need them (bounce
//! buffers), counts statistics per channel, and defers completions made inside
//! a submit to the next iteration so callbacks never recurse.
//!
//! The registry lives on the main reactor: registering, opening and deleting
//! bdevs happen there. Descriptors are `Send + Sync` handles that may be used
//! on any reactor; requests and channels never leave the reactor they belong to.

mod channel;
mod io;
pub mod qos;
mod registry;
pub mod remap;
pub mod rpc;
pub mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub use channel::BdevChannel;
pub use io::{BdevIo, IoStatus, IoType};
pub use registry::{
    BdevEvent, Descriptor, Examination, add_alias, examine_bdev, get, list, notify_blockcnt_change, open, open_count, register,
    register_examiner, remove_alias, unregister, wait_for_examine,
};
pub use stats::IoStats;
pub use uuid::Uuid;

use crate::dma::DmaBuf;
use crate::inline_fn::InlineFn;
use crate::io_channel::{IoChannel, get_io_channel};

/// What a bdev module knows about one of its devices. Shared by all reactors.
pub trait Backend: Send + Sync + 'static {
    /// The module that made it (`"malloc"`), as in SPDK's `driver_specific`.
    fn module_name(&self) -> &'static str;
    /// A product name for `bdev_get_bdevs` (`"Malloc disk"`).
    fn product_name(&self) -> &'static str;
    fn supports(&self, kind: IoType) -> bool;
    /// Per-reactor submission state; called on the reactor that will use it.
    fn create_channel(&self) -> Box<dyn BackendChannel>;
    /// Required alignment of data buffers (address and length), in bytes.
    fn buffer_alignment(&self) -> usize {
        1
    }
    /// Whether every request must come in one buffer.
    fn needs_contiguous(&self) -> bool {
        false
    }
    /// Whether reads may come without buffers, to be lent the backend's own
    /// memory ([`Descriptor::read_lend`], [`BdevIo::lend`]): a RAM disk.
    fn lends_reads(&self) -> bool {
        false
    }
    /// The key of [`Backend::driver_specific`] in `bdev_get_bdevs`'
    /// `driver_specific` (SPDK's: usually the module's name).
    fn driver_specific_key(&self) -> &'static str {
        self.module_name()
    }
    /// Module-specific facts for `bdev_get_bdevs`.
    fn driver_specific(&self) -> Value {
        Value::Object(Default::default())
    }
    /// The RPC call that recreates this bdev, for `save_config`.
    fn config_call(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        None
    }
    /// The bdev was unregistered and no descriptor is open any more.
    fn destroy(&self) {}
    /// The backend as `Any`, for its module's own RPCs (a rescan, a
    /// member list) to reach their type.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// A backend's per-reactor half: takes requests and completes them later
/// (or at once) with [`BdevIo::complete`], on the same reactor.
pub trait BackendChannel {
    fn submit(&self, io: BdevIo);
    /// For a bdev whose blocks sit cluster by cluster on another (an
    /// lvol): the fast path the bdev layer takes for reads and writes
    /// within one mapped cluster, without calling [`submit`](Self::submit)
    /// (see [`remap`]). Asked once, when the layer's channel is made.
    fn remap(&self) -> Option<remap::Remap> {
        None
    }
}

/// Everything needed to register a bdev.
pub struct BdevSpec {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    /// `None` generates a random UUID.
    pub uuid: Option<Uuid>,
    pub backend: Arc<dyn Backend>,
}

/// Why a bdev operation failed. Each maps to the negative errno SPDK's RPCs
/// report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BdevError {
    #[error("bdev {0} already exists")]
    Exists(String),
    #[error("bdev {0} not found")]
    NotFound(String),
    #[error("bdev {0} is being deleted")]
    Removing(String),
    #[error("invalid bdev parameters: {0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error("the bdev layer runs on the main reactor only")]
    WrongReactor,
}

impl BdevError {
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::Exists(_) => libc::EEXIST,
            BdevError::NotFound(_) => libc::ENODEV,
            BdevError::Removing(_) => libc::EBUSY,
            BdevError::Invalid(_) => libc::EINVAL,
            BdevError::Busy(_) => libc::EBUSY,
            BdevError::WrongReactor => libc::EPERM,
        }
    }
}

impl From<BdevError> for crate::rpc::RpcError {
    fn from(e: BdevError) -> Self {
        crate::rpc::RpcError::errno(e.errno(), e)
    }
}

/// Smallest block size a protocol export accepts (see [`Bdev::check_exportable_block_size`]).
pub const MIN_EXPORT_BLOCK_SIZE: u32 = 512;
/// Largest block size a protocol export accepts.
pub const MAX_EXPORT_BLOCK_SIZE: u32 = 64 * 1024;

/// Whether `bs` is a block size every export can describe: a power of two
/// from [`MIN_EXPORT_BLOCK_SIZE`] to [`MAX_EXPORT_BLOCK_SIZE`]. It is also
/// what the initiators take from a remote namespace or LUN (the most Linux
/// takes from a disk too, `BLK_MAX_BLOCK_SIZE`): a remote device that
/// claims 2 GiB blocks would otherwise make the examiners' first read of
/// one block allocate that much.
pub fn exportable_block_size(bs: u32) -> bool {
    bs.is_power_of_two() && (MIN_EXPORT_BLOCK_SIZE..=MAX_EXPORT_BLOCK_SIZE).contains(&bs)
}

/// The block sizes [`exportable_block_size`] takes, in words, for the
/// messages of everything that refuses one.
pub fn exportable_block_sizes() -> String {
    format!("a power of two from {MIN_EXPORT_BLOCK_SIZE} to {MAX_EXPORT_BLOCK_SIZE} bytes")
}

/// Why a device's namespace of `num_blocks` blocks of `block_size` bytes,
/// behind a controller that moves at most `max_transfer` bytes a command,
/// cannot be a bdev; `None` when it can. The rules the NVMe drivers (PCIe
/// and NVMe-oF) apply to what a controller reports: a block size every
/// export can describe, a size in bytes that fits in 64 bits, and a block
/// one command can carry.
pub fn unusable_geometry(block_size: u32, num_blocks: u64, max_transfer: usize) -> Option<String> {
    if !exportable_block_size(block_size) {
        return Some(format!("{block_size}-byte blocks (Pollux takes {})", exportable_block_sizes()));
    }
    if num_blocks.checked_mul(u64::from(block_size)).is_none() {
        return Some(format!("{num_blocks} blocks of {block_size} bytes, which do not fit in 64 bits"));
    }
    if block_size as usize > max_transfer {
        return Some(format!("{block_size}-byte blocks, more than the controller's largest transfer ({max_transfer} bytes)"));
    }
    None
}

/// A registered block device. Shared by all reactors (`Arc<Bdev>`); its
/// per-reactor state is its [`BdevChannel`].
pub struct Bdev {
    name: String,
    block_size: u32,
    /// Changes only by [`notify_blockcnt_change`] (a resized device).
    num_blocks: std::sync::atomic::AtomicU64,
    uuid: Uuid,
    pub(crate) backend: Arc<dyn Backend>,
    /// The backend's answers, asked once at registration (the I/O path
    /// checks them on every request).
    pub(crate) supported: u8,
    pub(crate) align: usize,
    pub(crate) contiguous: bool,
    pub(crate) removing: AtomicBool,
    pub(crate) histogram: AtomicBool,
    /// Statistics of channels already destroyed.
    pub(crate) retired: Mutex<IoStats>,
    /// Other names it answers to ([`add_alias`]).
    pub(crate) aliases: Mutex<Vec<String>>,
    /// The module that took it for itself ([`Bdev::claim`]).
    pub(crate) claimed: Mutex<Option<&'static str>>,
    /// Rate limits (`bdev_set_qos_limit`).
    pub(crate) qos: qos::Qos,
    /// Modules still examining it; when none is left after registration,
    /// its `bdev_register` notification goes out (once: `announced`).
    pub(crate) examining: std::sync::atomic::AtomicU32,
    pub(crate) announced: AtomicBool,
}

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bdev")
            .field("name", &self.name)
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

impl Bdev {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Other names this bdev answers to.
    pub fn aliases(&self) -> Vec<String> {
        self.aliases.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn has_alias(&self, name: &str) -> bool {
        self.aliases.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|a| a == name)
    }
    /// Whether the bdev answers to `name` (its name or an alias).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.has_alias(name)
    }
    /// Take the bdev for a module's exclusive use (an lvol store on it, as
    /// SPDK's `spdk_bdev_module_claim_bdev`): exports and other modules
    /// refuse a claimed bdev. Fails if another module has it.
    pub fn claim(&self, module: &'static str) -> Result<(), BdevError> {
        let mut c = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        match *c {
            Some(m) => Err(BdevError::Busy(format!("bdev {} is claimed by module {m}", self.name))),
            None => {
                *c = Some(module);
                Ok(())
            }
        }
    }
    pub fn release_claim(&self) {
        *self.claimed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    /// The module holding the bdev, if any.
    pub fn claimed_by(&self) -> Option<&'static str> {
        *self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Refuse a block size that a protocol cannot describe: NVMe encodes
    /// it as a power of two (LBADS), and SCSI initiators and EXTENDED COPY
    /// descriptors expect one. The bdev layer itself takes any multiple of
    /// 512 (as SPDK's does), so exports check with this.
    pub fn check_exportable_block_size(&self, export: &str) -> Result<(), BdevError> {
        let bs = self.block_size;
        if exportable_block_size(bs) {
            return Ok(());
        }
        Err(BdevError::Invalid(format!("bdev {} has {bs}-byte blocks; {export} needs {}", self.name, exportable_block_sizes())))
    }
    #[inline]
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks() * self.block_size as u64
    }
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    #[inline]
    pub fn supports(&self, kind: IoType) -> bool {
        self.supported & kind.bit() != 0
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn is_removing(&self) -> bool {
        self.removing.load(Ordering::Relaxed)
    }
    /// Whether reads may be lent the backend's memory ([`Descriptor::read_lend`]).
    pub fn lends_reads(&self) -> bool {
        self.backend.lends_reads()
    }
    /// Required alignment of buffers handed to the backend (the layer
    /// bounces misaligned ones, so consumers only need it for speed).
    pub fn buffer_alignment(&self) -> usize {
        self.align
    }
}

impl Descriptor {
    /// The current reactor's channel to this bdev.
    pub fn channel(&self) -> IoChannel<Bdev> {
        get_io_channel(self.bdev())
    }

    /// Submit any request. `bufs` must hold exactly `num_blocks` blocks for
    /// read, write and compare, and nothing otherwise. `cb` runs once, on this
    /// reactor, with the finished request (its status and buffers).
    pub fn submit(
        &self,
        ch: &IoChannel<Bdev>,
        kind: IoType,
        bufs: impl IntoIterator<Item = DmaBuf>,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(BdevIo) + 'static,
    ) {
        debug_assert!(Arc::ptr_eq(ch.device(), self.bdev()), "channel of another bdev");
        ch.submit(self.writable(), kind, bufs, offset_blocks, num_blocks, InlineFn::new(cb));
    }

    /// From a virtual bdev's backend: a request to this (underlying) bdev
    /// on the buffers of `parent`, a request made to the virtual bdev,
    /// for a backend that works on the data after the child finishes (a
    /// read to decrypt) or picks where it goes (a mirror's read). The
    /// buffers are back on `parent` when `cb(child, parent)` runs; nothing
    /// is allocated, where `take_buffers` and `put_buffers` around a
    /// [`Descriptor::submit`] allocate a buffer list per request. (For a
    /// request passed on as it is, [`Descriptor::forward`].)
    pub fn submit_child(
        &self,
        ch: &IoChannel<Bdev>,
        kind: IoType,
        parent: BdevIo,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(BdevIo, BdevIo) + 'static,
    ) {
        debug_assert!(Arc::ptr_eq(ch.device(), self.bdev()), "channel of another bdev");
        ch.submit_child(self.writable(), kind, parent, offset_blocks, num_blocks, cb);
    }

    pub fn read(
        &self,
        ch: &IoChannel<Bdev>,
        bufs: impl IntoIterator<Item = DmaBuf>,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(BdevIo) + 'static,
    ) {
        self.submit(ch, IoType::Read, bufs, offset_blocks, num_blocks, cb)
    }

    /// Read with no buffers: the backend lends its memory, which the
    /// finished request hands over with [`BdevIo::take_lent`]. Only for a
    /// bdev whose backend [`lends_reads`](Backend::lends_reads) (others
    /// fail it with [`IoStatus::InvalidBuffer`]); a consumer asks
    /// [`Bdev::lends_reads`] first and brings buffers otherwise.
    pub fn read_lend(&self, ch: &IoChannel<Bdev>, offset_blocks: u64, num_blocks: u64, cb: impl FnOnce(BdevIo) + 'static) {
        debug_assert!(Arc::ptr_eq(ch.device(), self.bdev()), "channel of another bdev");
        ch.submit_with(self.writable(), IoType::Read, None, true, offset_blocks, num_blocks, InlineFn::new(cb));
    }

    pub fn write(
        &self,
        ch: &IoChannel<Bdev>,
        bufs: impl IntoIterator<Item = DmaBuf>,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(BdevIo) + 'static,
    ) {
        self.submit(ch, IoType::Write, bufs, offset_blocks, num_blocks, cb)
    }

    /// Compare the blocks with `bufs`; a difference ends with
    /// [`IoStatus::Miscompare`].
    pub fn compare(
        &self,
        ch: &IoChannel<Bdev>,
        bufs: impl IntoIterator<Item = DmaBuf>,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(BdevIo) + 'static,
    ) {
        self.submit(ch, IoType::Compare, bufs, offset_blocks, num_blocks, cb)
    }

    /// From a virtual bdev's backend: pass `io`, a request made to the
    /// virtual bdev, to this (underlying) bdev's backend at
    /// `offset_blocks`, as it is: no second request, no second pass
    /// through the layer. It is checked against this bdev (range, type,
    /// write access, block size), and its completion finishes the
    /// original request with its own offset and statistics (this bdev's
    /// statistics do not count it). `inflight`, if given, counts it while
    /// it runs. Completions made during the virtual bdev's submit are
    /// deferred as usual.
    pub fn forward(&self, ch: &IoChannel<Bdev>, io: BdevIo, offset_blocks: u64, inflight: Option<std::rc::Rc<std::cell::Cell<u64>>>) {
        debug_assert!(Arc::ptr_eq(ch.device(), self.bdev()), "channel of another bdev");
        ch.forward(self.writable(), io, offset_blocks, inflight)
    }

    pub fn unmap(&self, ch: &IoChannel<Bdev>, offset_blocks: u64, num_blocks: u64, cb: impl FnOnce(BdevIo) + 'static) {
        self.submit(ch, IoType::Unmap, None, offset_blocks, num_blocks, cb)
    }

    pub fn write_zeroes(&self, ch: &IoChannel<Bdev>, offset_blocks: u64, num_blocks: u64, cb: impl FnOnce(BdevIo) + 'static) {
        self.submit(ch, IoType::WriteZeroes, None, offset_blocks, num_blocks, cb)
    }

    pub fn flush(&self, ch: &IoChannel<Bdev>, offset_blocks: u64, num_blocks: u64, cb: impl FnOnce(BdevIo) + 'static) {
        self.submit(ch, IoType::Flush, None, offset_blocks, num_blocks, cb)
    }

    pub fn reset(&self, ch: &IoChannel<Bdev>, cb: impl FnOnce(BdevIo) + 'static) {
        self.submit(ch, IoType::Reset, None, 0, 0, cb)
    }
}

#[cfg(test)]
mod tests;
