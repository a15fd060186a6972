//! Progress lines, the end of the run, and the final report.
//!
//! On a terminal, a line a second per job: IOPS, MiB/s, mean and p99
//! latency over that second (from each job's histogram, the second's part
//! taken as the difference with the previous one). Not on a terminal, or
//! with `--json`, nothing until the report. The report: IOPS, MiB/s, mean
//! and p50 to p99.99 latency per job and in all; with `--histogram`, the
//! latency histogram of all jobs as text bars.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pollux_core::app;
use pollux_core::reactor::{self, PollStatus, Poller};
use serde_json::json;

use crate::job::Jobs;
use crate::pattern::Mismatch;

/// What one job did, gathered at the end.
#[derive(Clone)]
pub struct JobResult {
    pub bdev: String,
    pub core: usize,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub resets: u64,
    pub hist: Histogram<u64>,
    pub mismatch: Option<Mismatch>,
    pub first_error: Option<String>,
}

/// How the run shows itself (set once, before it starts).
#[derive(Clone, Copy, Default)]
pub struct Show {
    pub json: bool,
    pub live: bool,
    pub histogram: bool,
}

static SHOW: std::sync::Mutex<Show> = std::sync::Mutex::new(Show { json: false, live: false, histogram: false });

pub fn set_show(s: Show) {
    *SHOW.lock().unwrap_or_else(|e| e.into_inner()) = s;
}

fn show() -> Show {
    *SHOW.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job's counters at one moment, for the live line.
struct Snap {
    job: String,
    ios: u64,
    bytes: u64,
    hist: Histogram<u64>,
}

/// State of the run on the main reactor.
struct Run {
    started: Instant,
    json: bool,
    prev: RefCell<Vec<Snap>>,
    stopping: Cell<bool>,
    elapsed: Cell<Duration>,
    pollers: RefCell<Vec<Poller>>,
}

fn snaps() -> Vec<Snap> {
    let core = reactor::core_of(reactor::current());
    reactor::local::<Jobs>()
        .map(|jobs| {
            jobs.list
                .borrow()
                .iter()
                .map(|j| Snap {
                    job: format!("{} on core {core}", j.bdev),
                    ios: j.ios.get(),
                    bytes: j.bytes.get(),
                    hist: j.hist.borrow().clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One live line per job: what it did since the previous snapshot.
fn live_lines(run: &Run, now: Vec<Snap>) {
    let prev = run.prev.replace(Vec::new());
    let t = run.started.elapsed().as_secs_f64();
    for s in &now {
        let (pi, pb, mut h) = match prev.iter().find(|p| p.job == s.job) {
            Some(p) => {
                let mut h = s.hist.clone();
                let _ = h.subtract(&p.hist);
                (p.ios, p.bytes, h)
            }
            None => (0, 0, s.hist.clone()),
        };
        if h.is_empty() {
            h = new_histogram();
        }
        println!(
            "{t:>7.1} s  {:<28} {:>11.0} IOPS {:>9.1} MiB/s  avg {:>9.1} us  p99 {:>9.1} us",
            s.job,
            (s.ios - pi) as f64,
            (s.bytes - pb) as f64 / (1 << 20) as f64,
            ticks_to_us(h.mean()),
            us(&h, 0.99)
        );
    }
    *run.prev.borrow_mut() = now;
}

/// All jobs are running: print a line a second (on a terminal) and stop
/// after `time`.
pub fn begin(time: Duration) {
    let sh = show();
    let json = sh.json;
    let run = Rc::new(Run {
        started: Instant::now(),
        json,
        prev: RefCell::new(Vec::new()),
        stopping: Cell::new(false),
        elapsed: Cell::new(Duration::ZERO),
        pollers: RefCell::new(Vec::new()),
    });
    reactor::set_local(run.clone());
    if sh.live {
        let progress = reactor::register_timed_poller("perf_progress", Duration::from_secs(1), || {
            reactor::map_reactors(snaps, |all| {
                let Some(run) = reactor::local::<Run>() else { return };
                if run.stopping.get() {
                    return;
                }
                live_lines(&run, all.into_iter().flatten().collect());
            });
            PollStatus::Busy
        });
        run.pollers.borrow_mut().push(progress);
    }
    let end = reactor::register_timed_poller("perf_end", time, || {
        stop_early();
        PollStatus::Busy
    });
    run.pollers.borrow_mut().push(end);
}

/// Stop every job (the time is up, or one job failed), wait for their I/O to
/// finish, then report and exit.
pub fn stop_early() {
    let Some(run) = reactor::local::<Run>() else {
        // Failed before the run began (an error while filling the queues).
        return app::shutdown(1);
    };
    if run.stopping.replace(true) {
        return;
    }
    run.elapsed.set(run.started.elapsed());
    run.pollers.borrow_mut().clear();
    reactor::for_each_reactor(
        || {
            if let Some(jobs) = reactor::local::<Jobs>() {
                jobs.stop();
            }
        },
        drain,
    );
}

/// After the precondition pass was started: wait until its I/O is done,
/// drop those jobs, then run `next`.
pub fn after_fill(next: impl FnOnce() + Send + 'static) {
    let next: Box<dyn FnOnce() + Send> = Box::new(next);
    wait_idle(Box::new(move || {
        reactor::for_each_reactor(
            || {
                reactor::take_local::<Jobs>();
            },
            next,
        )
    }));
}

/// Run `then` (on the main reactor) once no job has I/O in flight.
fn wait_idle(then: Box<dyn FnOnce() + Send>) {
    reactor::map_reactors(
        || reactor::local::<Jobs>().map(|j| j.list.borrow().iter().map(|j| j.in_flight.get()).sum::<u32>()).unwrap_or(0),
        move |left| {
            if left.iter().sum::<u32>() == 0 {
                return then();
            }
            let then = std::sync::Mutex::new(Some(then));
            let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
            let s = slot.clone();
            *slot.borrow_mut() = Some(reactor::register_timed_poller("perf_wait", Duration::from_millis(5), move || {
                s.borrow_mut().take();
                if let Some(t) = then.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    wait_idle(t);
                }
                PollStatus::Busy
            }));
            std::mem::forget(slot);
        },
    );
}

/// Wait for every job's I/O to finish, then gather the results.
fn drain() {
    wait_idle(Box::new(|| {
        reactor::map_reactors(
            || {
                reactor::local::<Jobs>()
                    .map(|j| (j.list.borrow().iter().map(|j| j.result()).collect::<Vec<_>>(), j.allocations()))
                    .unwrap_or_default()
            },
            |all| {
                // Counted only if every reactor counted.
                let allocations = all.iter().map(|r| r.1).sum::<Option<u64>>();
                finish(all.into_iter().flat_map(|r| r.0).collect(), allocations)
            },
        )
    }));
}

/// The histogram as text: one line per doubling of latency, with its count
/// and a bar of up to 50 `#`.
pub fn bars(h: &Histogram<u64>) -> String {
    let mut out = String::from("\nLatency histogram (all jobs):\n");
    if h.is_empty() {
        return out;
    }
    let step = (pollux_core::clock::tick_rate() / 1_000_000).max(1); // 1 us
    let buckets: Vec<(f64, f64, u64)> = h
        .iter_log(step, 2.0)
        .map(|v| {
            (ticks_to_us(v.value_iterated_to() as f64 / 2.0), ticks_to_us(v.value_iterated_to() as f64), v.count_since_last_iteration())
        })
        .collect();
    let max = buckets.iter().map(|b| b.2).max().unwrap_or(1).max(1);
    for (lo, hi, n) in buckets.iter().filter(|b| b.2 > 0 || b.1 <= ticks_to_us(h.max() as f64)) {
        let w = (*n as f64 / max as f64 * 50.0).ceil() as usize;
        out.push_str(&format!("{lo:>10.1} - {hi:>10.1} us {n:>12} {}\n", "#".repeat(w)));
    }
    out
}

/// A latency histogram in ticks, up to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    let hour = pollux_core::clock::tick_rate().saturating_mul(3600);
    Histogram::new_with_bounds(1, hour, 3).expect("histogram bounds")
}

fn ticks_to_us(t: f64) -> f64 {
    t * 1e6 / pollux_core::clock::tick_rate() as f64
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    ticks_to_us(h.value_at_quantile(q) as f64)
}

fn finish(results: Vec<JobResult>, allocations: Option<u64>) {
    let Some(run) = reactor::local::<Run>() else { return };
    let secs = run.elapsed.get().as_secs_f64().max(1e-9);
    let mut total = new_histogram();
    let (mut ios, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    for r in &results {
        let _ = total.add(&r.hist);
        ios += r.ios;
        bytes += r.bytes;
        errors += r.errors;
    }
    let failed = errors > 0 || results.iter().any(|r| r.mismatch.is_some());
    let row = |name: String, ios: u64, bytes: u64, errors: u64, h: &Histogram<u64>| {
        json!({
            "job": name,
            "ios": ios,
            "iops": ios as f64 / secs,
            "mib_per_s": bytes as f64 / secs / (1 << 20) as f64,
            "avg_latency_us": ticks_to_us(h.mean()),
            "p50_latency_us": us(h, 0.50),
            "p90_latency_us": us(h, 0.90),
            "p99_latency_us": us(h, 0.99),
            "p999_latency_us": us(h, 0.999),
            "p9999_latency_us": us(h, 0.9999),
            "errors": errors,
        })
    };
    let jobs: Vec<_> = results.iter().map(|r| row(format!("{} on core {}", r.bdev, r.core), r.ios, r.bytes, r.errors, &r.hist)).collect();
    let sum = row("Total".into(), ios, bytes, errors, &total);
    let mismatches: Vec<_> = results
        .iter()
        .filter_map(|r| r.mismatch.as_ref().map(|m| json!({"bdev": r.bdev, "lba": m.lba, "byte_in_block": m.byte_in_block, "expected": format!("{:#018x}", m.expected), "found": format!("{:#018x}", m.found)})))
        .collect();
    let first_errors: Vec<_> = results.iter().filter_map(|r| r.first_error.clone()).collect();
    // The reactors' heap allocations during the run (null where not counted).
    let per_io = |n: u64| n as f64 / ios.max(1) as f64;
    let allocs = allocations.map(|n| json!({"count": n, "per_io": per_io(n)}));
    if run.json {
        let doc = json!({"seconds": secs, "jobs": jobs, "total": sum, "verify_mismatches": mismatches, "errors": first_errors, "resets": results.iter().map(|r| r.resets).sum::<u64>(), "allocations": allocs});
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        println!();
        println!(
            "{:<32} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "Job", "IOPS", "MiB/s", "avg us", "p50 us", "p90 us", "p99 us", "p99.9 us", "p99.99 us", "errors"
        );
        let f = |j: &serde_json::Value, k: &str| j[k].as_f64().unwrap_or(0.0);
        for j in jobs.iter().chain(std::iter::once(&sum)) {
            println!(
                "{:<32} {:>12.2} {:>10.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                j["job"].as_str().unwrap_or(""),
                f(j, "iops"),
                f(j, "mib_per_s"),
                f(j, "avg_latency_us"),
                f(j, "p50_latency_us"),
                f(j, "p90_latency_us"),
                f(j, "p99_latency_us"),
                f(j, "p999_latency_us"),
                f(j, "p9999_latency_us"),
                j["errors"]
            );
        }
        if let Some(n) = allocations {
            println!("\nHeap allocations on the reactors during the run: {n} ({:.4} per I/O)", per_io(n));
        }
        if show().histogram {
            print!("{}", bars(&total));
        }
        for e in &first_errors {
            println!("error: {e}");
        }
        for m in &mismatches {
            println!(
                "verify mismatch on {} at LBA {} (byte {} of the block): expected {}, found {}",
                m["bdev"].as_str().unwrap_or(""),
                m["lba"],
                m["byte_in_block"],
                m["expected"].as_str().unwrap_or(""),
                m["found"].as_str().unwrap_or("")
            );
        }
    }
    let code = if failed { 1 } else { 0 };
    // Close every job's descriptor before the bdevs are deleted at shutdown.
    reactor::for_each_reactor(
        || {
            reactor::take_local::<Jobs>();
        },
        move || app::shutdown(code),
    );
}
