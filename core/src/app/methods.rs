//! The framework's own RPC methods, with SPDK's names, parameters and result
//! shapes: rpc_get_methods, spdk_get_version, framework_*, thread_*,
//! spdk_kill_instance, log_* and notify_*.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock;
use crate::cpuset::CoreMask;
use crate::log::{self, Level};
use crate::reactor::{self, ReactorStats};
use crate::rpc::{Methods, NoParams, Responder, RpcError, States};
use crate::sys;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    with_batches: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillInstance {
    sig_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLevel {
    level: Level,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFlag {
    flag: String,
}

/// `notify_get_notifications`: from event `id` (the oldest kept when it is
/// older, or absent), at most `max` (no limit when absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetNotifications {
    #[serde(default)]
    id: u64,
    #[serde(default = "no_limit")]
    max: u64,
}

fn no_limit() -> u64 {
    u64::MAX
}

/// `log_set_flag` / `log_clear_flag`: a flag, a pattern, or `all`.
fn set_log_flag(p: LogFlag, on: bool) -> Result<bool, RpcError> {
    log::set_flag(&p.flag, on).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    Ok(true)
}

pub(crate) fn register(m: &std::rc::Rc<Methods>) {
    let table = std::rc::Rc::downgrade(m);
    m.register("rpc_get_methods", States::ANY, move |p: GetMethods, r: Responder| match table.upgrade() {
        Some(t) => r.ok(t.names(p.current, p.include_aliases)),
        None => r.err(RpcError::internal("method table gone")),
    });
    m.register("spdk_get_version", States::ANY, |_: NoParams, r: Responder| r.ok(version()));
    m.register("notify_get_types", States::RUNTIME, |_: NoParams, r: Responder| r.ok(json!(crate::notify::types())));
    m.register("notify_get_notifications", States::RUNTIME, |p: GetNotifications, r: Responder| {
        let events: Vec<Value> =
            crate::notify::events(p.id, p.max).into_iter().map(|e| json!({"type": e.kind, "ctx": e.ctx, "id": e.id})).collect();
        r.ok(json!(events))
    });
    m.register("framework_get_subsystems", States::ANY, |_: NoParams, r: Responder| {
        let list: Vec<Value> = super::subsystem_list().into_iter().map(|(n, d)| json!({"subsystem": n, "depends_on": d})).collect();
        r.ok(list)
    });
    m.register("framework_get_config", States::ANY, |p: GetConfig, r: Responder| match super::subsystem_config(&p.name, p.with_batches) {
        Some(c) => r.ok(c),
        None => r.err(RpcError::invalid_params(format!("subsystem '{}' not found", p.name))),
    });
    m.register("framework_start_init", States::STARTUP, |_: NoParams, r: Responder| super::rpc_start_init(r));
    m.register("framework_wait_init", States::ANY, |_: NoParams, r: Responder| super::wait_init(r));
    m.register("framework_get_reactors", States::ANY, |_: NoParams, r: Responder| {
        reactor::map_reactors(collect, move |all| r.ok(reactors_json(&all)))
    });
    m.register("thread_get_stats", States::ANY, |_: NoParams, r: Responder| {
        reactor::map_reactors(collect, move |all| r.ok(thread_stats_json(&all)))
    });
    m.register("thread_get_pollers", States::ANY, |_: NoParams, r: Responder| {
        reactor::map_reactors(
            || {
                let (s, p) = collect();
                let (active, timed, paused) = reactor::poller_infos();
                (s, p, json!({"active_pollers": active, "timed_pollers": timed, "paused_pollers": paused}))
            },
            move |all| {
                let threads: Vec<Value> = all
                    .into_iter()
                    .map(|(s, _, mut pollers)| {
                        let obj = pollers.as_object_mut().expect("object");
                        obj.insert("name".into(), thread_name(&s).into());
                        obj.insert("id".into(), thread_id(&s).into());
                        pollers
                    })
                    .collect();
                r.ok(json!({"tick_rate": clock::tick_rate(), "threads": threads}))
            },
        )
    });
    m.register("thread_get_io_channels", States::ANY, |_: NoParams, r: Responder| {
        reactor::map_reactors(collect, move |all| {
            let threads: Vec<Value> =
                all.iter().map(|(s, _)| json!({"name": thread_name(s), "id": thread_id(s), "io_channel_count": s.io_channels})).collect();
            r.ok(json!({"tick_rate": clock::tick_rate(), "threads": threads}))
        })
    });
    m.register("spdk_kill_instance", States::ANY, |p: KillInstance, r: Responder| {
        let sig = match p.sig_name.as_str() {
            "SIGINT" => libc::SIGINT,
            "SIGTERM" => libc::SIGTERM,
            "SIGQUIT" => libc::SIGQUIT,
            "SIGHUP" => libc::SIGHUP,
            "SIGKILL" => libc::SIGKILL,
            "SIGUSR1" => libc::SIGUSR1,
            other => {
                return r.err(RpcError::invalid_params(format!(
                    "parameter 'sig_name': unsupported signal '{other}' (expected SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGKILL or SIGUSR1)"
                )));
            }
        };
        r.ok(true);
        // After the answer has been queued and written.
        let me = reactor::current();
        reactor::send_msg(me, move || {
            if let Err(e) = sys::raise_signal(sig) {
                tracing::error!("spdk_kill_instance: cannot raise signal {sig}: {e}");
            }
        });
    });
    m.register("log_set_level", States::ANY, |p: SetLevel, r: Responder| {
        log::set_level(p.level);
        r.ok(true)
    });
    m.register("log_get_level", States::ANY, |_: NoParams, r: Responder| r.ok(log::level().name()));
    m.register("log_set_print_level", States::ANY, |p: SetLevel, r: Responder| {
        log::set_print_level(p.level);
        r.ok(true)
    });
    m.register("log_get_print_level", States::ANY, |_: NoParams, r: Responder| r.ok(log::print_level().name()));
    m.register("log_set_flag", States::ANY, |p: LogFlag, r: Responder| r.result(set_log_flag(p, true)));
    m.register("log_clear_flag", States::ANY, |p: LogFlag, r: Responder| r.result(set_log_flag(p, false)));
    m.register("log_get_flags", States::ANY, |_: NoParams, r: Responder| {
        r.ok(log::flags().into_iter().map(|(f, on)| (f.to_string(), Value::from(on))).collect::<serde_json::Map<_, _>>())
    });
}

fn version() -> Value {
    let mut parts = crate::VERSION.splitn(3, '.').map(|p| p.split('-').next().unwrap_or("0").parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let suffix = crate::VERSION.split_once('-').map(|(_, s)| format!("-{s}")).unwrap_or_default();
    json!({
        "version": format!("Pollux v{}", crate::VERSION),
        "fields": {"major": major, "minor": minor, "patch": patch, "suffix": suffix}
    })
}

/// Per-reactor facts gathered on the reactor itself.
fn collect() -> (ReactorStats, Option<(u64, u64)>) {
    let s = reactor::stats();
    let cpu = sys::thread_cpu_ticks(s.tid);
    (s, cpu)
}

fn thread_name(s: &ReactorStats) -> String {
    if s.id.0 == 0 { "app_thread".to_string() } else { format!("reactor_{}", s.core) }
}

fn thread_id(s: &ReactorStats) -> usize {
    s.id.0 + 1
}

fn cpumask(s: &ReactorStats) -> String {
    CoreMask::from_cores(vec![s.core]).to_hex()
}

fn core_freq_mhz(core: usize) -> Option<u64> {
    let khz = std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{core}/cpufreq/scaling_cur_freq")).ok()?;
    khz.trim().parse::<u64>().ok().map(|k| k / 1000)
}

fn reactors_json(all: &[(ReactorStats, Option<(u64, u64)>)]) -> Value {
    let reactors: Vec<Value> = all
        .iter()
        .map(|(s, cpu)| {
            let (usr, sys) = cpu.unwrap_or((0, 0));
            let mut r = json!({
                "lcore": s.core,
                "tid": s.tid,
                "busy": s.busy_ticks,
                "idle": s.idle_ticks,
                "in_interrupt": s.in_interrupt,
                "irq": 0,
                "sys": sys,
                "usr": usr,
                "lw_threads": [{
                    "name": thread_name(s),
                    "id": thread_id(s),
                    "cpumask": cpumask(s),
                    "elapsed": s.elapsed_ticks,
                }],
            });
            if let Some(f) = core_freq_mhz(s.core) {
                r["core_freq"] = f.into();
            }
            r
        })
        .collect();
    json!({"tick_rate": clock::tick_rate(), "pid": std::process::id(), "reactors": reactors})
}

fn thread_stats_json(all: &[(ReactorStats, Option<(u64, u64)>)]) -> Value {
    let threads: Vec<Value> = all
        .iter()
        .map(|(s, _)| {
            let mut t = json!({
                "name": thread_name(s),
                "id": thread_id(s),
                "cpumask": cpumask(s),
                "busy": s.busy_ticks,
                "idle": s.idle_ticks,
                "in_interrupt": s.in_interrupt,
                "active_pollers_count": s.active_pollers,
                "timed_pollers_count": s.timed_pollers,
                "paused_pollers_count": s.paused_pollers,
                "iterations": s.iterations,
                // Pollux's own.
                "messages": s.messages,
                "sleeps": s.sleeps,
            });
            if let Some(n) = s.allocations {
                t["allocations"] = n.into();
            }
            t
        })
        .collect();
    json!({"tick_rate": clock::tick_rate(), "threads": threads})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_has_spdk_shape() {
        let v = version();
        assert!(v["version"].as_str().unwrap().starts_with("Pollux v"));
        assert!(v["fields"]["major"].is_u64());
        assert!(v["fields"]["suffix"].is_string());
    }
}
