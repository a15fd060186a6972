//! RAID bdevs with SPDK's names, parameters and on-disk superblock
//! (`bdev_raid_*`): raid0 (strips over the members), raid1 (mirrors,
//! degraded operation and rebuild while I/O runs) and concat (members one
//! after the other). See `docs/data-services.md`.

pub mod array;
pub mod rebuild;
pub mod rpc;
pub mod sb;

use std::rc::Rc;

use pollux_core::app::{App, Subsystem};

struct RaidSubsystem;

impl Subsystem for RaidSubsystem {
    fn name(&self) -> &'static str {
        "raid"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["bdev"]
    }
    fn init(&self, done: pollux_core::app::Done) {
        // Arrays with a superblock assemble as their members appear.
        if let Err(e) = pollux_core::bdev::register_examiner("raid", rpc::examine) {
            tracing::error!("raid: {e}");
        }
        done(Ok(()))
    }
    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        done()
    }
}

pub fn register(app: &mut App) {
    rpc::register_rpcs(app);
    app.add_subsystem(Rc::new(RaidSubsystem));
}
