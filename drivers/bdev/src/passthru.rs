//! The passthru bdev (SPDK's `bdev_passthru_*`): another name for all of
//! a base bdev, which it claims. SPDK's example of a virtual bdev; here
//! also what tests and operators put between a device and its users to
//! rename or fence it.

use std::cell::RefCell;
use std::sync::Arc;

use pollux_core::app::App;
use pollux_core::bdev::{self, Bdev, Examination, Uuid};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::Delete;
use crate::part::{self, Base, PartInner, PartKind};

struct Passthru;

impl PartKind for Passthru {
    fn module_name(&self) -> &'static str {
        "passthru"
    }
    fn product_name(&self) -> &'static str {
        "passthru"
    }
    fn driver_specific(&self, part: &PartInner) -> Value {
        json!({"name": part.name, "base_bdev_name": part.base.bdev().name()})
    }
    fn config_call(&self, b: &Bdev, base: &Bdev) -> Option<(&'static str, Value)> {
        Some(("bdev_passthru_create", json!({"base_bdev_name": base.name(), "name": b.name(), "uuid": b.uuid().to_string()})))
    }
}

/// A passthru bdev asked for: made now or when its base appears.
struct Config {
    name: String,
    base: String,
    uuid: Option<Uuid>,
}

thread_local! {
    static CONFIGS: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    base_bdev_name: String,
    uuid: Option<Uuid>,
}

/// Make the passthru bdev of `c` if its base is there.
fn make(c: &Config) -> Result<Option<Arc<Bdev>>, RpcError> {
    if bdev::get(&c.base).is_none() {
        return Ok(None);
    }
    let name = c.name.clone();
    let base = Base::open(&c.base, "passthru", move || bdev::unregister(&name, |_| {}))?;
    let n = base.bdev().num_blocks();
    part::register(&c.name, &base, 0, n, c.uuid, Passthru).map(Some)
}

fn create(p: Create) -> Result<String, RpcError> {
    if CONFIGS.with(|c| c.borrow().iter().any(|c| c.name == p.name)) || bdev::get(&p.name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {} exists", p.name)));
    }
    let c = Config { name: p.name.clone(), base: p.base_bdev_name, uuid: p.uuid };
    if make(&c)?.is_none() {
        tracing::info!("passthru {}: waiting for bdev {}", c.name, c.base);
    }
    bdev::register_examiner("passthru", examine).map_err(RpcError::from)?;
    CONFIGS.with(|cs| cs.borrow_mut().push(c));
    Ok(p.name)
}

fn examine(b: &Arc<Bdev>, _done: Examination) {
    CONFIGS.with(|cs| {
        for c in cs.borrow().iter().filter(|c| b.answers_to(&c.base) && bdev::get(&c.name).is_none()) {
            if let Err(e) = make(c) {
                tracing::error!("passthru {} on {}: {}", c.name, c.base, e.message);
            }
        }
    });
}

fn delete(p: Delete, r: Responder) {
    let known = CONFIGS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let before = cs.len();
        cs.retain(|c| c.name != p.name);
        before != cs.len()
    });
    crate::delete_or_forgotten("passthru", &p.name, known, r)
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_passthru_create", States::RUNTIME, |p: Create, r: Responder| r.result(create(p)));
    m.register("bdev_passthru_delete", States::RUNTIME, delete);
}
