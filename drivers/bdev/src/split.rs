//! Split bdevs (SPDK's `bdev_split_*`): a base bdev cut into equal slices
//! named `<base>p0`, `<base>p1`, ..., each a bdev of its own. The base is
//! claimed while they exist; the split is kept by the base's name, so a
//! base that goes and comes back (or is made after the split is asked for)
//! is split again.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::app::App;
use pollux_core::bdev::{self, Bdev, Examination};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::part::{self, Base, PartInner, PartKind};

struct Split {
    /// The call that makes the whole split (written by slice 0 only).
    config: Option<Value>,
}

impl PartKind for Split {
    fn module_name(&self) -> &'static str {
        "split"
    }
    fn product_name(&self) -> &'static str {
        "Split Disk"
    }
    fn driver_specific(&self, part: &PartInner) -> Value {
        json!({"base_bdev": part.base.bdev().name(), "offset_blocks": part.offset})
    }
    fn config_call(&self, _b: &Bdev, _base: &Bdev) -> Option<(&'static str, Value)> {
        self.config.clone().map(|v| ("bdev_split_create", v))
    }
}

struct Config {
    base: String,
    split_count: u32,
    split_size_mb: u64,
}

impl Config {
    fn params(&self) -> Value {
        json!({"base_bdev": self.base, "split_count": self.split_count, "split_size_mb": self.split_size_mb})
    }
}

thread_local! {
    static CONFIGS: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    base_bdev: String,
    split_count: u32,
    #[serde(default)]
    split_size_mb: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteSplit {
    base_bdev: String,
}

/// Slice the base of `c` if it is there (SPDK's `vbdev_split_create`):
/// `split_size_mb` MiB each, or the base divided by `split_count`; as many
/// as fit, at most `split_count`. Returns the slices' names.
fn make(c: &Config) -> Result<Vec<String>, RpcError> {
    let Some(b) = bdev::get(&c.base) else { return Ok(Vec::new()) };
    let bs = b.block_size() as u64;
    let size = if c.split_size_mb > 0 {
        let bytes = c.split_size_mb.checked_mul(1 << 20).ok_or_else(|| RpcError::invalid_params("split_size_mb is too large"))?;
        if bytes % bs != 0 {
            return Err(RpcError::invalid_params(format!("a split of {} MiB is not a whole number of {bs}-byte blocks", c.split_size_mb)));
        }
        bytes / bs
    } else {
        b.num_blocks() / c.split_count as u64
    };
    if size == 0 || size > b.num_blocks() {
        return Err(RpcError::invalid_params(format!("bdev {} ({} blocks) cannot hold a split of {size} blocks", c.base, b.num_blocks())));
    }
    let count = (c.split_count as u64).min(b.num_blocks() / size);
    if count < c.split_count as u64 {
        tracing::warn!("split {}: room for {count} splits of {size} blocks, not {}", c.base, c.split_count);
    }
    let base_name = b.name().to_string();
    let names: Vec<String> = (0..count).map(|i| format!("{base_name}p{i}")).collect();
    if let Some(n) = names.iter().find(|n| bdev::get(n).is_some()) {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {n} exists")));
    }
    let gone = names.clone();
    let base = Base::open(&c.base, "split", move || {
        for n in &gone {
            bdev::unregister(n, |_| {});
        }
    })?;
    let mut made = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let config = (i == 0).then(|| c.params());
        match part::register(n, &base, i as u64 * size, size, None, Split { config }) {
            Ok(_) => made.push(n.clone()),
            Err(e) => {
                for m in &made {
                    bdev::unregister(m, |_| {});
                }
                return Err(e);
            }
        }
    }
    Ok(made)
}

fn create(p: Create) -> Result<Vec<String>, RpcError> {
    if p.split_count == 0 {
        return Err(RpcError::invalid_params("split_count must be at least 1"));
    }
    if CONFIGS.with(|c| c.borrow().iter().any(|c| c.base == p.base_bdev)) {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {} is split already", p.base_bdev)));
    }
    let c = Config { base: p.base_bdev, split_count: p.split_count, split_size_mb: p.split_size_mb };
    let names = make(&c)?;
    if names.is_empty() {
        tracing::info!("split of {}: waiting for the bdev", c.base);
    }
    bdev::register_examiner("split", examine).map_err(RpcError::from)?;
    CONFIGS.with(|cs| cs.borrow_mut().push(c));
    Ok(names)
}

fn examine(b: &Arc<Bdev>, _done: Examination) {
    CONFIGS.with(|cs| {
        for c in cs.borrow().iter().filter(|c| b.answers_to(&c.base) && b.claimed_by().is_none()) {
            if let Err(e) = make(c) {
                tracing::error!("split of {}: {}", c.base, e.message);
            }
        }
    });
}

/// `bdev_split_delete`: the slices go (once their users closed them) and
/// the split is forgotten.
fn delete(p: DeleteSplit, r: Responder) {
    let known = CONFIGS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let before = cs.len();
        cs.retain(|c| c.base != p.base_bdev);
        before != cs.len()
    });
    if !known {
        return r.err(RpcError::errno(libc::ENOENT, format!("bdev {} is not split", p.base_bdev)));
    }
    let base_name = bdev::get(&p.base_bdev).map(|b| b.name().to_string()).unwrap_or(p.base_bdev);
    let slices: Vec<String> = bdev::list()
        .into_iter()
        .filter(|b| b.backend().module_name() == "split" && b.backend().driver_specific()["base_bdev"] == base_name.as_str())
        .map(|b| b.name().to_string())
        .collect();
    let left = Rc::new(Cell::new(slices.len()));
    if slices.is_empty() {
        return r.result(Ok::<_, RpcError>(true));
    }
    let r = Rc::new(RefCell::new(Some(r)));
    for n in slices {
        let (left, r) = (left.clone(), r.clone());
        bdev::unregister(&n, move |_| {
            left.set(left.get() - 1);
            if left.get() == 0 {
                if let Some(r) = r.borrow_mut().take() {
                    r.result(Ok::<_, RpcError>(true));
                }
            }
        });
    }
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_split_create", States::RUNTIME, |p: Create, r: Responder| r.result(create(p)));
    m.register("bdev_split_delete", States::RUNTIME, delete);
}
