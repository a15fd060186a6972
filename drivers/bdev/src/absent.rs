//! Global options of an SPDK bdev module Pollux does not have, raid
//! (`bdev_raid_set_options`). SPDK's save_config writes them whenever the
//! module is built in, so without them an SPDK config would not load. They
//! are kept (save_config writes them back once set) and change nothing:
//! creating a raid bdev is an unknown method in Pollux.

use std::sync::Mutex;

use pollux_core::app::{App, ConfigWriter};
use pollux_core::rpc::{Responder, States};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RaidOptions {
    #[serde(default = "raid_window")]
    process_window_size_kb: u32,
    #[serde(default)]
    process_max_bandwidth_mb_sec: u32,
}

fn raid_window() -> u32 {
    1024
}

static RAID: Mutex<Option<RaidOptions>> = Mutex::new(None);

fn write_config(out: &mut ConfigWriter) {
    if let Some(o) = *RAID.lock().unwrap_or_else(|e| e.into_inner()) {
        out.call("bdev_raid_set_options", o);
    }
}

pub fn register(app: &mut App) {
    pollux_core::bdev::rpc::register_module_config("absent", write_config);
    let m = app.methods();
    m.register("bdev_raid_set_options", States::ANY, |p: RaidOptions, r: Responder| {
        *RAID.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        r.ok(true)
    });
}
