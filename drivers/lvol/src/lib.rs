//! Logical volumes on SPDK's on-disk format: a blobstore on any bdev
//! ([`store`], in SPDK's [`format`]), the lvol store layer that names
//! volumes ([`lvs`]), each volume's I/O path ([`volume`]) and SPDK's
//! `bdev_lvol_*` methods. A store written by SPDK loads here and the
//! reverse; a bdev that carries one is examined and its volumes appear as
//! bdevs by themselves.
//!
//! Concurrency: the store and its metadata belong to the main reactor,
//! which makes one metadata change at a time, as `async` tasks awaiting
//! the base bdev; each volume's I/O runs on every reactor's channel, which
//! reaches the main reactor only to get a cluster allocated.

pub mod blob;
pub mod dev;
pub mod format;
pub mod lvs;
mod rpc;
pub mod store;
pub mod volume;

#[cfg(test)]
mod crash_tests;

use std::rc::Rc;

use pollux_core::app::App;
use pollux_core::app::Subsystem;

struct LvolSubsystem;

impl Subsystem for LvolSubsystem {
    fn name(&self) -> &'static str {
        "lvol"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["bdev"]
    }
    fn init(&self, done: pollux_core::app::Done) {
        if let Err(e) = pollux_core::bdev::register_examiner("lvol", lvs::examine) {
            tracing::error!("lvol: {e}");
        }
        done(Ok(()))
    }
    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        // Before the bdevs go: write every store back clean.
        pollux_core::reactor::task::spawn_local(async move {
            lvs::close_all().await;
            done()
        });
    }
}

pub fn register(app: &mut App) {
    rpc::register(app);
    app.add_subsystem(Rc::new(LvolSubsystem));
}
