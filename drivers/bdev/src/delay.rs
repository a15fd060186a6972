//! The delay bdev (SPDK's `bdev_delay_*`): a bdev on top of another that
//! completes each request a set time after its base did, to see how hosts
//! and targets behave with slow storage (timeouts, resets, queue depth).
//! Reads and compares take the read latencies; writes, write zeroes,
//! unmaps and flushes the write latencies; one request in a hundred takes
//! the p99 latency instead of the average. Resets pass straight through.
//!
//! Each reactor's channel keeps finished requests until they are due and
//! completes them from a timed poller (100 us resolution).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pollux_core::app::App;
use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevEvent, BdevIo, BdevSpec, Descriptor, IoStatus, IoType, Uuid};
use pollux_core::clock;
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor::{self, PollStatus, Poller};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::{Delete, delete_rpc};

/// Latencies in microseconds, changeable while I/O runs.
#[derive(Default)]
struct Latencies {
    avg_read: AtomicU64,
    p99_read: AtomicU64,
    avg_write: AtomicU64,
    p99_write: AtomicU64,
    /// Requests seen, to send one in a hundred to the p99 latency.
    count: AtomicU64,
}

impl Latencies {
    fn pick(&self, kind: IoType) -> Duration {
        let tail = self.count.fetch_add(1, Ordering::Relaxed) % 100 == 99;
        let read = matches!(kind, IoType::Read | IoType::Compare);
        let us = match (read, tail) {
            (true, false) => &self.avg_read,
            (true, true) => &self.p99_read,
            (false, false) => &self.avg_write,
            (false, true) => &self.p99_write,
        };
        Duration::from_micros(us.load(Ordering::Relaxed))
    }

    fn json(&self) -> Value {
        json!({
            "avg_read_latency": self.avg_read.load(Ordering::Relaxed),
            "p99_read_latency": self.p99_read.load(Ordering::Relaxed),
            "avg_write_latency": self.avg_write.load(Ordering::Relaxed),
            "p99_write_latency": self.p99_write.load(Ordering::Relaxed),
        })
    }
}

struct DelayBackend {
    name: String,
    base: Descriptor,
    lat: Arc<Latencies>,
}

impl Backend for DelayBackend {
    fn module_name(&self) -> &'static str {
        "delay"
    }
    fn product_name(&self) -> &'static str {
        "delay"
    }
    fn supports(&self, kind: IoType) -> bool {
        self.base.bdev().supports(kind)
    }
    fn buffer_alignment(&self) -> usize {
        self.base.bdev().buffer_alignment()
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        let due: Rc<RefCell<VecDeque<Due>>> = Rc::new(RefCell::new(VecDeque::with_capacity(256)));
        let q = due.clone();
        // The poller runs only while requests wait (paused when none do, so
        // an idle reactor in interrupt mode sleeps); it reaches itself
        // weakly, through the channel that owns it.
        let poller: Rc<std::cell::OnceCell<Poller>> = Rc::default();
        let me = Rc::downgrade(&poller);
        let p = reactor::register_timed_poller("bdev_delay", Duration::from_micros(100), move || {
            let st = complete_due(&q);
            if q.borrow().is_empty() {
                if let Some(p) = me.upgrade().as_deref().and_then(std::cell::OnceCell::get) {
                    p.pause();
                }
            }
            st
        });
        p.pause();
        let _ = poller.set(p);
        Box::new(DelayChannel { base: self.base.clone(), ch: self.base.channel(), lat: self.lat.clone(), due, poller })
    }
    fn driver_specific(&self) -> Value {
        let mut v = self.lat.json();
        v["base_bdev_name"] = self.base.bdev().name().into();
        v
    }
    fn destroy(&self) {
        forget(&self.name);
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        let mut v = self.lat.json();
        v["name"] = b.name().into();
        v["base_bdev_name"] = self.base.bdev().name().into();
        v["uuid"] = b.uuid().to_string().into();
        Some(("bdev_delay_create", v))
    }
}

/// A request its base finished, waiting for its time.
struct Due {
    at: u64,
    io: BdevIo,
    status: IoStatus,
}

fn complete_due(q: &RefCell<VecDeque<Due>>) -> PollStatus {
    let now = clock::ticks();
    let mut done = 0;
    loop {
        // Requests are kept in completion order; one with a long (p99)
        // latency may hold back shorter ones behind it by up to its time.
        let next = {
            let mut q = q.borrow_mut();
            match q.front() {
                Some(d) if d.at <= now => q.pop_front(),
                _ => None,
            }
        };
        let Some(Due { io, status, .. }) = next else { break };
        io.complete(status);
        done += 1;
    }
    if done > 0 { PollStatus::Busy } else { PollStatus::Idle }
}

struct DelayChannel {
    base: Descriptor,
    ch: IoChannel<Bdev>,
    lat: Arc<Latencies>,
    due: Rc<RefCell<VecDeque<Due>>>,
    poller: Rc<std::cell::OnceCell<Poller>>,
}

impl BackendChannel for DelayChannel {
    fn submit(&self, io: BdevIo) {
        let kind = io.kind();
        let (offset, blocks) = (io.offset_blocks(), io.num_blocks());
        if kind == IoType::Reset {
            return self.base.submit_child(&self.ch, kind, io, offset, blocks, move |child, io| io.complete(child.status()));
        }
        let (lat, due, poller) = (self.lat.clone(), self.due.clone(), self.poller.clone());
        self.base.submit_child(&self.ch, kind, io, offset, blocks, move |child, io| {
            let at = clock::ticks() + clock::duration_to_ticks(lat.pick(kind));
            due.borrow_mut().push_back(Due { at, io, status: child.status() });
            if let Some(p) = poller.get() {
                p.resume();
            }
        });
    }
}

/// `bdev_delay_create` (SPDK's parameters; latencies in microseconds).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    base_bdev_name: String,
    avg_read_latency: u64,
    p99_read_latency: u64,
    avg_write_latency: u64,
    p99_write_latency: u64,
    uuid: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateLatency {
    delay_bdev_name: String,
    latency_type: String,
    latency_us: u64,
}

fn create(p: Create) -> Result<String, RpcError> {
    if p.p99_read_latency < p.avg_read_latency || p.p99_write_latency < p.avg_write_latency {
        return Err(RpcError::invalid_params("a p99 latency cannot be below its average"));
    }
    // When the base goes away, so does the delay bdev on it.
    let name = p.name.clone();
    let base = bdev::open(&p.base_bdev_name, true, move |ev| {
        if matches!(ev, BdevEvent::Remove) {
            bdev::unregister(&name, |_| {});
        }
    })
    .map_err(RpcError::from)?;
    let lat = Arc::new(Latencies::default());
    lat.avg_read.store(p.avg_read_latency, Ordering::Relaxed);
    lat.p99_read.store(p.p99_read_latency, Ordering::Relaxed);
    lat.avg_write.store(p.avg_write_latency, Ordering::Relaxed);
    lat.p99_write.store(p.p99_write_latency, Ordering::Relaxed);
    let b = base.bdev().clone();
    LATENCIES.with(|m| m.borrow_mut().push((p.name.clone(), lat.clone())));
    let spec = BdevSpec {
        name: p.name.clone(),
        block_size: b.block_size(),
        num_blocks: b.num_blocks(),
        uuid: p.uuid,
        backend: Arc::new(DelayBackend { name: p.name.clone(), base, lat }),
    };
    bdev::register(spec).map(|b| b.name().to_string()).map_err(|e| {
        forget(&p.name);
        RpcError::from(e)
    })
}

fn update(p: UpdateLatency) -> Result<bool, RpcError> {
    let lat = LATENCIES
        .with(|m| m.borrow().iter().find(|(n, _)| *n == p.delay_bdev_name).map(|(_, l)| l.clone()))
        .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("delay bdev {} not found", p.delay_bdev_name)))?;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let v = p.latency_us;
    let (field, ok) = match p.latency_type.as_str() {
        "avg_read" => (&lat.avg_read, v <= get(&lat.p99_read)),
        "p99_read" => (&lat.p99_read, v >= get(&lat.avg_read)),
        "avg_write" => (&lat.avg_write, v <= get(&lat.p99_write)),
        "p99_write" => (&lat.p99_write, v >= get(&lat.avg_write)),
        other => return Err(RpcError::invalid_params(format!("latency_type {other}: avg_read, p99_read, avg_write or p99_write"))),
    };
    if !ok {
        return Err(RpcError::invalid_params("a p99 latency cannot be below its average"));
    }
    field.store(v, Ordering::Relaxed);
    Ok(true)
}

thread_local! {
    /// The latencies of each delay bdev by name (main reactor), for
    /// `bdev_delay_update_latency`.
    static LATENCIES: RefCell<Vec<(String, Arc<Latencies>)>> = const { RefCell::new(Vec::new()) };
}

fn forget(name: &str) {
    LATENCIES.with(|m| m.borrow_mut().retain(|(n, _)| n != name));
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_delay_create", States::RUNTIME, |p: Create, r: Responder| r.result(create(p)));
    m.register("bdev_delay_delete", States::RUNTIME, |p: Delete, r: Responder| delete_rpc("delay", p, r));
    m.register("bdev_delay_update_latency", States::RUNTIME, |p: UpdateLatency, r: Responder| r.result(update(p)));
}
