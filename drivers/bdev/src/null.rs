//! The null bdev: writes are discarded, reads return zeroes. It measures what
//! the framework itself costs per I/O.

use std::sync::Arc;

use pollux_core::app::App;
use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevIo, BdevSpec, IoStatus, IoType, Uuid};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::{Delete, delete_rpc, reject_unsupported};

struct NullBackend {
    block_size: u32,
}

impl Backend for NullBackend {
    fn module_name(&self) -> &'static str {
        "null"
    }
    fn product_name(&self) -> &'static str {
        "Null disk"
    }
    fn supports(&self, kind: IoType) -> bool {
        kind != IoType::Compare
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(NullChannel)
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "bdev_null_create",
            json!({
                "name": b.name(),
                "num_blocks": b.num_blocks(),
                "block_size": self.block_size,
                "physical_block_size": self.block_size,
                "uuid": b.uuid().to_string(),
                "md_size": 0,
                "dif_type": 0,
                "dif_is_head_of_md": false,
                "dif_pi_format": 0,
            }),
        ))
    }
}

struct NullChannel;

impl BackendChannel for NullChannel {
    #[inline]
    fn submit(&self, mut io: BdevIo) {
        if io.kind() == IoType::Read {
            for b in io.buffers_mut() {
                b.zero();
            }
        }
        io.complete(IoStatus::Success);
    }
}

/// `bdev_null_create` parameters (every one SPDK defines).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    block_size: u32,
    num_blocks: u64,
    uuid: Option<Uuid>,
    physical_block_size: Option<u32>,
    #[serde(default)]
    md_size: u32,
    #[serde(default)]
    dif_type: i32,
    #[serde(default)]
    dif_pi_format: u32,
    #[serde(default)]
    dif_is_head_of_md: bool,
    preferred_write_granularity: Option<u32>,
    preferred_write_alignment: Option<u32>,
    optimal_write_size: Option<u32>,
    preferred_unmap_granularity: Option<u32>,
    preferred_unmap_alignment: Option<u32>,
}

/// Create a null bdev (main reactor).
pub fn create(name: &str, block_size: u32, num_blocks: u64, uuid: Option<Uuid>) -> Result<Arc<Bdev>, RpcError> {
    let spec = BdevSpec { name: name.to_string(), block_size, num_blocks, uuid, backend: Arc::new(NullBackend { block_size }) };
    bdev::register(spec).map_err(RpcError::from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    /// MiB.
    new_size: u64,
}

/// `bdev_null_resize`: grow a null bdev to `new_mib` MiB (SPDK refuses to
/// shrink one, and so does Pollux).
fn resize(name: &str, new_mib: u64) -> Result<bool, RpcError> {
    let b = bdev::get(name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {name} not found")))?;
    if b.backend().module_name() != "null" {
        return Err(RpcError::invalid_params(format!("bdev {name} is not a null bdev")));
    }
    let bytes = new_mib.checked_mul(1 << 20).ok_or_else(|| RpcError::invalid_params("new_size is too large"))?;
    if bytes < b.size_bytes() / (1 << 20) * (1 << 20) {
        return Err(RpcError::invalid_params(format!(
            "the new size ({new_mib} MiB) must not be smaller than the current one ({} MiB)",
            b.size_bytes() >> 20
        )));
    }
    bdev::notify_blockcnt_change(name, bytes / b.block_size() as u64)?;
    Ok(true)
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_null_create", States::RUNTIME, |p: Create, r: Responder| {
        let _hints = (
            p.preferred_write_granularity,
            p.preferred_write_alignment,
            p.optimal_write_size,
            p.preferred_unmap_granularity,
            p.preferred_unmap_alignment,
        );
        if let Err(e) = reject_unsupported(&[
            ("md_size", p.md_size != 0),
            ("dif_type", p.dif_type != 0),
            ("dif_pi_format", p.dif_pi_format != 0),
            ("dif_is_head_of_md", p.dif_is_head_of_md),
            ("physical_block_size", p.physical_block_size.is_some_and(|pbs| pbs != p.block_size && pbs != 0)),
        ]) {
            return r.err(e);
        }
        r.result(create(&p.name, p.block_size, p.num_blocks, p.uuid).map(|b| b.name().to_string()))
    });
    m.register("bdev_null_resize", States::RUNTIME, |p: Resize, r: Responder| r.result(resize(&p.name, p.new_size)));
    m.register("bdev_null_delete", States::RUNTIME, |p: Delete, r: Responder| delete_rpc("null", p, r));
}
