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
    match bdev::get(&p.name) {
        None => r.err(RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.name))),
        Some(b) if b.backend().module_name() != module => {
            r.err(RpcError::errno(libc::ENODEV, format!("bdev {} is not a {module} bdev", p.name)))
        }
        Some(_) => bdev::unregister(&p.name, move |res| r.result(res.map(|()| true))),
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
