//! The `scheduler` subsystem: SPDK's `framework_set_scheduler` and
//! `framework_get_scheduler`. Pollux schedules statically, as SPDK's
//! `static` scheduler does: every object stays on the reactor that owns it
//! (connections are placed round robin when accepted) and idle reactors
//! sleep only in `--interrupt-mode`. `static` is accepted with its period
//! (kept and reported); `dynamic` and `gscheduler`, which move threads
//! between cores, are refused.
//!
//! `idle_poll_us` is Pollux's own: in `--interrupt-mode`, how long a reactor
//! keeps polling after its last work before it sleeps (default 50 us; 0
//! sleeps at once). Under load the next request comes within the window, so
//! the reactor behaves as if busy polling; idle, it sleeps after one window.
//! SPDK's `framework_set_scheduler` decodes its parameters leniently and its
//! static scheduler takes no options, so a saved configuration with the key
//! still loads into SPDK.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::json;

use crate::app::{App, ConfigWriter, Subsystem};
use crate::rpc::{NoParams, Responder, RpcError, States};

/// SPDK's default scheduler period, 1 s.
const DEFAULT_PERIOD_US: u64 = 1_000_000;

static PERIOD_US: AtomicU64 = AtomicU64::new(DEFAULT_PERIOD_US);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetScheduler {
    name: String,
    period: Option<u64>,
    load_limit: Option<u8>,
    core_limit: Option<u8>,
    core_busy: Option<u8>,
    mappings: Option<String>,
    idle_poll_us: Option<u64>,
}

fn set(p: SetScheduler, r: Responder) {
    if p.name != "static" {
        return r.err(RpcError::errno(
            libc::EOPNOTSUPP,
            format!("scheduler {} is not available: Pollux keeps every object on its reactor (static)", p.name),
        ));
    }
    let dynamic_only =
        [("load_limit", p.load_limit.is_some()), ("core_limit", p.core_limit.is_some()), ("core_busy", p.core_busy.is_some())];
    if let Some((name, _)) = dynamic_only.iter().find(|(_, set)| *set) {
        return r.err(RpcError::invalid_params(format!("{name} applies to the dynamic scheduler only")));
    }
    if p.mappings.is_some() {
        return r.err(RpcError::errno(libc::EOPNOTSUPP, "mappings: Pollux does not move threads between cores"));
    }
    if p.idle_poll_us.is_some_and(|us| us > 1_000_000) {
        return r.err(RpcError::invalid_params("idle_poll_us must be 0..1000000"));
    }
    if let Some(us) = p.idle_poll_us {
        crate::reactor::set_idle_poll(std::time::Duration::from_micros(us));
    }
    if let Some(period) = p.period {
        if period == 0 {
            return r.err(RpcError::invalid_params("period must be above 0"));
        }
        PERIOD_US.store(period, Ordering::Relaxed);
    }
    r.ok(true)
}

fn idle_poll_us() -> u64 {
    crate::reactor::idle_poll().as_micros().min(u64::MAX as u128) as u64
}

struct SchedulerSubsystem;

impl Subsystem for SchedulerSubsystem {
    fn name(&self) -> &'static str {
        "scheduler"
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        out.call(
            "framework_set_scheduler",
            json!({"name": "static", "period": PERIOD_US.load(Ordering::Relaxed), "idle_poll_us": idle_poll_us()}),
        );
    }
}

/// Register the `scheduler` subsystem and its methods.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(SchedulerSubsystem));
    let m = app.methods();
    m.register("framework_set_scheduler", States::ANY, set);
    m.register("framework_get_scheduler", States::ANY, |_: NoParams, r: Responder| {
        r.ok(json!({"scheduler_name": "static", "scheduler_period": PERIOD_US.load(Ordering::Relaxed), "idle_poll_us": idle_poll_us()}))
    });
}
