//! The `accel` subsystem's `accel_set_options`. SPDK
//! sizes the task, sequence and buffer pools of its acceleration framework
//! with them; Pollux has no such framework (CRC32C digests are computed
//! inline with the CPU's instruction, copies are done in place), so the
//! options are kept and written back by save_config, so that SPDK's saved
//! configs load, and change nothing.

use std::rc::Rc;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::app::{App, ConfigWriter, Subsystem};
use crate::rpc::{Responder, States};

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AccelOptions {
    small_cache_size: u32,
    large_cache_size: u32,
    task_count: u32,
    sequence_count: u32,
    buf_count: u32,
}

/// SPDK's defaults.
static OPTIONS: Mutex<AccelOptions> =
    Mutex::new(AccelOptions { small_cache_size: 128, large_cache_size: 16, task_count: 2048, sequence_count: 2048, buf_count: 2048 });

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    small_cache_size: Option<u32>,
    large_cache_size: Option<u32>,
    task_count: Option<u32>,
    sequence_count: Option<u32>,
    buf_count: Option<u32>,
}

fn options() -> AccelOptions {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

struct AccelSubsystem;

impl Subsystem for AccelSubsystem {
    fn name(&self) -> &'static str {
        "accel"
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        out.call("accel_set_options", options());
    }
}

/// Register the `accel` subsystem and its methods.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(AccelSubsystem));
    let m = app.methods();
    m.register("accel_set_options", States::STARTUP, |p: SetOptions, r: Responder| {
        let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        o.small_cache_size = p.small_cache_size.unwrap_or(o.small_cache_size);
        o.large_cache_size = p.large_cache_size.unwrap_or(o.large_cache_size);
        o.task_count = p.task_count.unwrap_or(o.task_count);
        o.sequence_count = p.sequence_count.unwrap_or(o.sequence_count);
        o.buf_count = p.buf_count.unwrap_or(o.buf_count);
        r.ok(true)
    });
}
