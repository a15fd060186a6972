//! Cross-reactor messages against a bare `crossbeam-queue` ring, same run.
//!
//! - stream: one reactor sends messages to another as fast as it can; the
//!   receiver drains its inbox in batches of 64 (the default) or 1.
//! - round trip: a message to the other reactor, whose handler sends one back.
//! - the baseline does the same with two pinned threads and `ArrayQueue`s of
//!   plain `u64`s (no closures, no reactor loop).
//!
//! Reactors and threads are pinned to cores 0 and 1.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use pollux_core::reactor::{self, Options, PollStatus, ReactorId};

const CORES: [usize; 2] = [0, 1];

thread_local! {
    static RECEIVED: Cell<u64> = const { Cell::new(0) };
}

fn opts(batch: usize) -> Options {
    Options { msg_batch: batch, ..Options::new(CORES.to_vec()) }
}

/// Elapsed time of the last stream run, in ns (a static so that messages
/// capture only plain values, like real ones do: ids, not shared counters).
static STREAM_NS: AtomicU64 = AtomicU64::new(0);

/// Reactor 0 streams `iters` messages to reactor 1; time until the last ran.
fn reactor_stream(iters: u64, batch: usize) -> Duration {
    reactor::launch(&opts(batch), move || {
        let t0 = Instant::now();
        let sent = Cell::new(0u64);
        let p = reactor::register_poller("sender", move || {
            // Send in slices so the inbox, not the overflow list, carries them.
            let end = (sent.get() + 1024).min(iters);
            for _ in sent.get()..end {
                reactor::send_msg(ReactorId(1), move || {
                    let n = RECEIVED.with(|r| {
                        r.set(r.get() + 1);
                        r.get()
                    });
                    if n == iters {
                        STREAM_NS.store(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        RECEIVED.with(|r| r.set(0));
                        reactor::send_msg(ReactorId(0), reactor::stop_all);
                    }
                });
            }
            sent.set(end);
            PollStatus::from(end > 0)
        });
        reactor::set_local(std::rc::Rc::new(p));
    })
    .unwrap();
    Duration::from_nanos(STREAM_NS.load(Ordering::SeqCst))
}

/// Ping-pong between reactors 0 and 1, `iters` round trips.
fn reactor_round_trip(iters: u64) -> Duration {
    fn ping(left: u64, t0: Instant, out: Arc<Mutex<Duration>>) {
        if left == 0 {
            *out.lock().unwrap() = t0.elapsed();
            reactor::stop_all();
            return;
        }
        reactor::send_msg(ReactorId(1), move || reactor::send_msg(ReactorId(0), move || ping(left - 1, t0, out)));
    }
    let took = Arc::new(Mutex::new(Duration::ZERO));
    let t = took.clone();
    reactor::launch(&opts(64), move || ping(iters, Instant::now(), t)).unwrap();
    let d = *took.lock().unwrap();
    d
}

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// Bare ring: a producer thread pushes `iters` u64s, the consumer pops them.
fn ring_stream(iters: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<u64>::new(16 * 1024));
    let q2 = q.clone();
    let consumer = std::thread::spawn(move || {
        pin(CORES[1]);
        let mut got = 0;
        while got < iters {
            if let Some(v) = q2.pop() {
                black_box(v);
                got += 1;
            }
        }
        Instant::now()
    });
    pin(CORES[0]);
    let t0 = Instant::now();
    for i in 0..iters {
        let mut v = i;
        while let Err(back) = q.push(v) {
            v = back;
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap() - t0
}

/// Bare rings: ping-pong a u64 between two pinned threads.
fn ring_round_trip(iters: u64) -> Duration {
    let a = Arc::new(ArrayQueue::<u64>::new(64));
    let b = Arc::new(ArrayQueue::<u64>::new(64));
    let done = Arc::new(AtomicBool::new(false));
    let (a2, b2, d2) = (a.clone(), b.clone(), done.clone());
    let echo = std::thread::spawn(move || {
        pin(CORES[1]);
        while !d2.load(Ordering::Relaxed) {
            if let Some(v) = a2.pop() {
                let _ = b2.push(v);
            }
        }
    });
    pin(CORES[0]);
    let t0 = Instant::now();
    for i in 0..iters {
        let _ = a.push(i);
        loop {
            if b.pop().is_some() {
                break;
            }
            std::hint::spin_loop();
        }
    }
    let took = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    took
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("reactor_send_msg_batch64", |b| b.iter_custom(|n| reactor_stream(n, 64)));
    g.bench_function("reactor_send_msg_batch1", |b| b.iter_custom(|n| reactor_stream(n, 1)));
    g.bench_function("bare_crossbeam_ring", |b| b.iter_custom(ring_stream));
    g.finish();

    let mut g = c.benchmark_group("round_trip");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("reactor_send_msg", |b| b.iter_custom(reactor_round_trip));
    g.bench_function("bare_crossbeam_ring", |b| b.iter_custom(ring_round_trip));
    g.finish();
}

criterion_group!(messages, benches);
criterion_main!(messages);
