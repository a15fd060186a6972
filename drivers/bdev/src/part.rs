//! Bdevs that are a range of another one (SPDK's "part" bdevs): the
//! passthru bdev (all of it), split bdevs (equal slices) and the error
//! injection bdev (all of it, with faults). Each request is handed to the
//! base as it is, at its offset plus the part's start
//! ([`Descriptor::forward`]): no second request, no copy.
//!
//! The base is opened for writing and claimed by the module (SPDK's
//! exclusive write claim: `claimed: true`, nothing else may write to it)
//! until the last part on it goes; when the base goes, its parts go.
//!
//! A part asked for while its base does not exist yet (a config that names
//! a base created later, an NVMe namespace not attached yet) is kept and
//! made when the base appears, as SPDK's examine does.

use std::sync::Arc;

use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevEvent, BdevIo, BdevSpec, Descriptor, IoType, Uuid};
use pollux_core::io_channel::IoChannel;
use pollux_core::rpc::RpcError;
use serde_json::Value;

/// An open, claimed base shared by the parts on it.
pub(crate) struct Base {
    pub desc: Descriptor,
}

impl Drop for Base {
    fn drop(&mut self) {
        self.desc.bdev().release_claim();
    }
}

impl Base {
    /// Open `name` for writing and claim it for `module`. When it goes,
    /// `on_remove` runs (on this reactor).
    pub fn open(name: &str, module: &'static str, on_remove: impl Fn() + Send + Sync + 'static) -> Result<Arc<Base>, RpcError> {
        let desc = bdev::open(name, true, move |ev| {
            if ev == BdevEvent::Remove {
                on_remove()
            }
        })
        .map_err(RpcError::from)?;
        desc.bdev().claim(module).map_err(RpcError::from)?;
        Ok(Arc::new(Base { desc }))
    }

    pub fn bdev(&self) -> &Arc<Bdev> {
        self.desc.bdev()
    }
}

/// What makes one kind of part differ: its names, its facts and, for the
/// error bdev, its channel.
pub(crate) trait PartKind: Send + Sync + 'static {
    fn module_name(&self) -> &'static str;
    fn product_name(&self) -> &'static str;
    /// The key of its facts in `driver_specific` (the module's name).
    fn driver_specific_key(&self) -> &'static str {
        self.module_name()
    }
    fn driver_specific(&self, part: &PartInner) -> Value;
    fn config_call(&self, _bdev: &Bdev, _base: &Bdev) -> Option<(&'static str, Value)> {
        None
    }
    fn destroy(&self, _bdev_name: &str) {}
    /// A channel of its own (the error bdev); `None`: plain forwarding.
    fn create_channel(&self, _part: &Arc<PartInner>) -> Option<Box<dyn BackendChannel>> {
        None
    }
}

pub(crate) struct PartInner {
    pub base: Arc<Base>,
    /// First block of the part on the base.
    pub offset: u64,
    pub name: String,
}

pub(crate) struct PartBackend<K: PartKind> {
    pub part: Arc<PartInner>,
    pub kind: K,
}

impl<K: PartKind> Backend for PartBackend<K> {
    fn module_name(&self) -> &'static str {
        self.kind.module_name()
    }
    fn product_name(&self) -> &'static str {
        self.kind.product_name()
    }
    fn supports(&self, kind: IoType) -> bool {
        self.part.base.bdev().supports(kind)
    }
    fn buffer_alignment(&self) -> usize {
        self.part.base.bdev().buffer_alignment()
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        if let Some(c) = self.kind.create_channel(&self.part) {
            return c;
        }
        Box::new(PartChannel { ch: self.part.base.desc.channel(), part: self.part.clone() })
    }
    fn driver_specific_key(&self) -> &'static str {
        self.kind.driver_specific_key()
    }
    fn driver_specific(&self) -> Value {
        self.kind.driver_specific(&self.part)
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        self.kind.config_call(b, self.part.base.bdev())
    }
    fn destroy(&self) {
        self.kind.destroy(&self.part.name)
    }
}

/// Plain forwarding at the part's offset.
pub(crate) struct PartChannel {
    pub ch: IoChannel<Bdev>,
    pub part: Arc<PartInner>,
}

impl BackendChannel for PartChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        let off = io.offset_blocks() + self.part.offset;
        self.part.base.desc.forward(&self.ch, io, off, None)
    }
}

/// Register a part of `num_blocks` blocks at `offset` of `base`.
pub(crate) fn register<K: PartKind>(
    name: &str,
    base: &Arc<Base>,
    offset: u64,
    num_blocks: u64,
    uuid: Option<Uuid>,
    kind: K,
) -> Result<Arc<Bdev>, RpcError> {
    let part = Arc::new(PartInner { base: base.clone(), offset, name: name.to_string() });
    let block_size = base.bdev().block_size();
    bdev::register(BdevSpec { name: name.to_string(), block_size, num_blocks, uuid, backend: Arc::new(PartBackend { part, kind }) })
        .map_err(RpcError::from)
}
