//! Cross-reactor messages against a bare `crossbeam-queue` ring, same run.
//!
//! - stream: one reactor sends messages to another as fast as it can; the
//!   receiver drains its inbox in batches of 64 (the default) or 1.
//! - round trip: a message to the other reactor, whose handler sends one back.
//! - the baseline does the same with two pinned threads spinning on
//!   `ArrayQueue`s of plain `u64`s (no closures, no reactor loop).
//!
//! Both sides run on cores 0 and 1 and are warmed up before measuring: the
//! reactors are started once per benchmark and each sample is a request sent
//! to the running reactors, as in a long-running daemon.
//!
//! `cargo bench -p pollux-core --bench messages`

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use pollux_core::reactor::{self, Handle, Options, PollStatus, Poller, ReactorId};

const CORES: [usize; 2] = [0, 1];
const RING: usize = 16 * 1024;

thread_local! {
    static RECEIVED: Cell<u64> = const { Cell::new(0) };
}

/// Two running reactors, driven from the benchmark thread.
struct Reactors {
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reactors {
    fn start(batch: usize) -> Reactors {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let opts = Options { msg_batch: batch, ..Options::new(CORES.to_vec()) };
            reactor::launch(&opts, move || tx.send(reactor::handle()).unwrap()).unwrap();
        });
        let r = Reactors { handle: rx.recv().unwrap(), thread: Some(thread) };
        // Warm up: touch every inbox slot of both reactors.
        r.stream(4 * RING as u64);
        r
    }

    /// Reactor 0 streams `iters` messages to reactor 1.
    fn stream(&self, iters: u64) -> Duration {
        let (tx, rx) = mpsc::channel();
        self.handle.send(ReactorId(0), move || {
            let t0 = Instant::now();
            let sent = Cell::new(0u64);
            let slot: std::rc::Rc<std::cell::RefCell<Option<Poller>>> = Default::default();
            let s = slot.clone();
            *slot.borrow_mut() = Some(reactor::register_poller("sender", move || {
                let end = (sent.get() + 1024).min(iters);
                for _ in sent.get()..end {
                    reactor::send_msg(ReactorId(1), move || {
                        let n = RECEIVED.with(|r| {
                            r.set(r.get() + 1);
                            r.get()
                        });
                        if n == iters {
                            RECEIVED.with(|r| r.set(0));
                            DONE.with(|d| d.set(Some(t0.elapsed())));
                        }
                    });
                    sent.set(sent.get() + 1);
                }
                if sent.get() == iters {
                    // Ask reactor 1 (after the stream) for the time.
                    let tx = tx.clone();
                    reactor::send_msg(ReactorId(1), move || {
                        let _ = tx.send(DONE.with(|d| d.take()).unwrap_or_default());
                    });
                    s.borrow_mut().take();
                }
                PollStatus::Busy
            }));
            std::mem::forget(slot);
        });
        rx.recv().unwrap()
    }

    /// `iters` round trips 0 -> 1 -> 0.
    fn round_trip(&self, iters: u64) -> Duration {
        fn ping(left: u64, t0: Instant, tx: mpsc::Sender<Duration>) {
            if left == 0 {
                let _ = tx.send(t0.elapsed());
                return;
            }
            reactor::send_msg(ReactorId(1), move || reactor::send_msg(ReactorId(0), move || ping(left - 1, t0, tx)));
        }
        let (tx, rx) = mpsc::channel();
        self.handle.send(ReactorId(0), move || ping(iters, Instant::now(), tx));
        rx.recv().unwrap()
    }
}

thread_local! {
    static DONE: Cell<Option<Duration>> = const { Cell::new(None) };
}

impl Drop for Reactors {
    fn drop(&mut self) {
        self.handle.send(ReactorId(0), reactor::stop_all);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// Bare ring: a producer thread pushes `iters` copies of `v`, the consumer
/// pops them.
fn ring_stream<T: Copy + Send + 'static>(iters: u64, v: T) -> Duration {
    let q = Arc::new(ArrayQueue::<T>::new(RING));
    let ready = Arc::new(AtomicBool::new(false));
    let (q2, r2) = (q.clone(), ready.clone());
    let consumer = std::thread::spawn(move || {
        pin(CORES[1]);
        r2.store(true, Ordering::SeqCst);
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
    // Warm up the ring's pages, then wait for the consumer to be running.
    for _ in 0..RING {
        let _ = q.push(v);
    }
    while q.pop().is_some() {}
    while !ready.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        let mut x = v;
        while let Err(back) = q.push(x) {
            x = back;
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap() - t0
}

type Boxed = Box<dyn FnOnce() + Send>;

/// A ring of boxed closures: what messages would cost with `Box<dyn FnOnce>`.
fn boxed_ring_stream(iters: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<Boxed>::new(RING));
    let ready = Arc::new(AtomicBool::new(false));
    let (q2, r2) = (q.clone(), ready.clone());
    let consumer = std::thread::spawn(move || {
        pin(CORES[1]);
        r2.store(true, Ordering::SeqCst);
        let mut got = 0;
        while got < iters {
            if let Some(f) = q2.pop() {
                f();
                got += 1;
            }
        }
        Instant::now()
    });
    pin(CORES[0]);
    while !ready.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    let t0 = Instant::now();
    for i in 0..iters {
        let mut f: Boxed = Box::new(move || {
            black_box(i);
        });
        while let Err(back) = q.push(f) {
            f = back;
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
    // Warm up (and make sure the echo thread runs).
    for i in 0..1000 {
        let _ = a.push(i);
        // No PAUSE in the spin: the reactor loop does not pause either.
        while b.pop().is_none() {}
    }
    let t0 = Instant::now();
    for i in 0..iters {
        let _ = a.push(i);
        // No PAUSE in the spin: the reactor loop does not pause either.
        while b.pop().is_none() {}
    }
    let took = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    took
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    for batch in [64, 1] {
        let r = Reactors::start(batch);
        g.bench_function(format!("reactor_send_msg_batch{batch}"), |b| b.iter_custom(|n| r.stream(n)));
    }
    g.bench_function("bare_crossbeam_ring_u64", |b| b.iter_custom(|n| ring_stream(n, 0u64)));
    // Same entry size as a message (64 bytes).
    g.bench_function("bare_crossbeam_ring_64B", |b| b.iter_custom(|n| ring_stream(n, [0u64; 8])));
    g.bench_function("crossbeam_ring_boxed_closures", |b| b.iter_custom(boxed_ring_stream));
    g.finish();

    let mut g = c.benchmark_group("round_trip");
    g.measurement_time(Duration::from_secs(5));
    let r = Reactors::start(64);
    g.bench_function("reactor_send_msg", |b| b.iter_custom(|n| r.round_trip(n)));
    drop(r);
    g.bench_function("bare_crossbeam_ring", |b| b.iter_custom(ring_round_trip));
    g.finish();
}

criterion_group!(messages, benches);
criterion_main!(messages);
