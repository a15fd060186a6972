//! Pieces every module's RPC methods share.

use std::sync::atomic::{AtomicU64, Ordering};

use pollux_core::bdev;
use pollux_core::rpc::{Responder, RpcError};
use serde::Deserialize;

/// `{"name": ...}`, the parameters of every `bdev_*_delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    pub name: String,
}

/// Delete a bdev of `module`; answers once every user has closed it.
pub fn delete_rpc(module: &str, p: Delete, r: Responder) {
    delete_or_forgotten(module, &p.name, false, r)
}

/// [`delete_rpc`] for a module that keeps bdevs asked for before their
/// base exists: with `forgotten` (the module just dropped such a pending
/// one by that name), a bdev that is not there is deleted already.
pub fn delete_or_forgotten(module: &str, name: &str, forgotten: bool, r: Responder) {
    match bdev::get(name) {
        None if forgotten => r.ok(true),
        None => r.err(RpcError::errno(libc::ENODEV, format!("bdev {name} not found"))),
        Some(b) if b.backend().module_name() != module => {
            r.err(RpcError::errno(libc::ENODEV, format!("bdev {name} is not a {module} bdev")))
        }
        Some(_) => bdev::unregister(name, move |res| r.result(res.map(|()| true))),
    }
}

/// Refuse parameters Pollux accepts by name but does not implement, when they
/// ask for something other than the default.
pub fn reject_unsupported(params: &[(&str, bool)]) -> Result<(), RpcError> {
    match params.iter().find(|(_, set)| *set) {
        Some((name, _)) => {
            Err(RpcError::errno(libc::EOPNOTSUPP, format!("parameter '{name}' is not supported by Pollux (leave it at its default)")))
        }
        None => Ok(()),
    }
}

/// The first free name `PrefixN` (as SPDK names bdevs created without one).
pub fn next_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed));
        if bdev::get(&n).is_none() {
            return n;
        }
    }
}
