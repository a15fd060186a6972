//! Bdevs as Linux block devices through the kernel's NBD driver, with
//! SPDK's methods and names: `nbd_start_disk` (`bdev_name`, optional
//! `nbd_device`: the first free `/dev/nbdX` otherwise; answers with the
//! device's path), `nbd_stop_disk` (`nbd_device`), `nbd_get_disks`
//! (optional `nbd_device`), and the `nbd` subsystem whose `save_config`
//! starts them again.
//!
//! [`proto`] is the wire format and its checks, [`conn`] the server end
//! of the kernel's socket, [`disk`] the device's life cycle.

pub mod conn;
mod disk;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
mod sys;
#[cfg(test)]
mod tests;

use std::rc::Rc;

use pollux_core::app::{App, ConfigWriter, Subsystem};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::json;

struct NbdSubsystem;

impl Subsystem for NbdSubsystem {
    fn name(&self) -> &'static str {
        "nbd"
    }

    fn depends_on(&self) -> &'static [&'static str] {
        &["bdev"]
    }

    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        disk::stop_all(done);
    }

    fn write_config(&self, out: &mut ConfigWriter) {
        for (dev, bdev, running) in disk::list() {
            if running {
                out.call("nbd_start_disk", json!({"nbd_device": dev, "bdev_name": bdev}));
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartDisk {
    bdev_name: String,
    #[serde(default)]
    nbd_device: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopDisk {
    nbd_device: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetDisks {
    #[serde(default)]
    nbd_device: Option<String>,
}

fn get_disks(p: GetDisks) -> Result<serde_json::Value, RpcError> {
    let all = disk::list();
    if let Some(dev) = &p.nbd_device {
        if !all.iter().any(|(d, _, _)| d == dev) {
            return Err(RpcError::errno(libc::ENODEV, format!("nbd device {dev} is not served")));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(d, _, _)| p.nbd_device.as_ref().is_none_or(|x| x == d))
        .map(|(d, b, _)| json!({"nbd_device": d, "bdev_name": b}))
        .collect())
}

/// Register the `nbd` subsystem and the `nbd_*` methods.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(NbdSubsystem));
    let m = app.methods();
    m.register("nbd_start_disk", States::RUNTIME, |p: StartDisk, r: Responder| {
        disk::start(p.bdev_name, p.nbd_device, Box::new(move |res| r.result(res)))
    });
    m.register("nbd_stop_disk", States::RUNTIME, |p: StopDisk, r: Responder| disk::stop(&p.nbd_device, Box::new(move |res| r.result(res))));
    m.register("nbd_get_disks", States::RUNTIME, |p: GetDisks, r: Responder| r.result(get_disks(p)));
}
