//! The connection's limits, each in a process of its own (they change
//! process-wide settings: the buffer pool's size, the reactor runtime).
//! One test, so nothing runs beside it:
//! - with a short buffer pool, writes wait for buffers (no region of their
//!   own, no error to the kernel) and go on when buffers come back; a write
//!   larger than the whole pool still goes, alone, in one region;
//! - a read larger than the pool, which needs the connection to hold
//!   nothing, is not starved by a steady stream of small requests (no new
//!   request is taken while one waits for memory);
//! - in interrupt mode, a connection whose socket is dead, or that has
//!   stopped reading at its bound while the kernel's end is gone, lets
//!   the reactor sleep while its requests are held at the bdev (a dead
//!   socket reports a hang-up whatever it is watched for);
//! - in interrupt mode, a read waiting for buffers and a request the bdev
//!   answers "no memory" again and again let the reactor sleep, and the
//!   latter is submitted again about once a millisecond, not every pass.
//!
//! Every one of these faults was found by review.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_core::bdev::{self, IoStatus, IoType};
use pollux_core::dma;
use pollux_core::reactor::{self, Harness, Options, PollStatus, Poller};
use pollux_nbd::conn::Conn;
use pollux_nbd::fuzzing::{Rig, hold};
use pollux_nbd::proto::{Request, cmd};

fn req(c: u16, n: u64, from: u64, len: u32) -> Request {
    Request { cmd: c, flags: 0, handle: n.to_be_bytes(), from, len }
}

fn pump_until(r: &mut Rig, what: &str, mut f: impl FnMut(&mut Rig) -> bool) {
    let t0 = Instant::now();
    while !f(r) {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        r.pump();
    }
}

/// 16 large buffers of 128 KiB: 2 MiB in all.
const SHORT_POOL: dma::IobufOptions =
    dma::IobufOptions { small_pool_count: 64, large_pool_count: 16, small_bufsize: 8 << 10, large_bufsize: 128 << 10 };

fn short_pool() {
    let before = dma::iobuf_options();
    dma::set_iobuf_options(SHORT_POOL);
    let h = Harness::new(1);
    h.on(0, || hold::create("hold0"));
    let mut r = Rig::new(h, "hold0");
    for i in 0..2u64 {
        r.request(&req(cmd::WRITE, i, i << 20, 1 << 20), &vec![1u8; 1 << 20]);
    }
    pump_until(&mut r, "two writes at the bdev", |r| r.h.on(0, hold::held).len() == 2);
    let regions = dma::stats().regions;
    // The pool is taken: a third write waits, and so does what follows it.
    r.request(&req(cmd::WRITE, 2, 2 << 20, 1 << 20), &vec![2u8; 1 << 20]);
    r.request(&req(cmd::READ, 3, 0, 512), &[]);
    for _ in 0..500 {
        r.pump();
    }
    assert_eq!(r.h.on(0, hold::held).len(), 2, "a request went past a write waiting for buffers");
    assert!(r.take_replies().is_empty(), "a write short of buffers was answered");
    assert_eq!(dma::stats().regions, regions, "a write short of buffers took a region of its own");
    // Buffers come back: the third write and the read go.
    r.h.on(0, || hold::release(IoStatus::Success));
    pump_until(&mut r, "the waiting write at the bdev", |r| r.h.on(0, hold::held).len() == 2);
    r.h.on(0, || hold::release(IoStatus::Success));
    let mut got = Vec::new();
    pump_until(&mut r, "four replies", |r| {
        got.extend(r.take_replies());
        got.len() == 4
    });
    assert!(got.iter().all(|x| x.error == 0), "{got:?}");
    // Larger than the whole pool, alone: one region of its own.
    r.request(&req(cmd::WRITE, 4, 0, 4 << 20), &vec![4u8; 4 << 20]);
    pump_until(&mut r, "the large write at the bdev", |r| r.h.on(0, hold::held).len() == 1);
    r.h.on(0, || hold::release(IoStatus::Success));
    let mut got = Vec::new();
    pump_until(&mut r, "its reply", |r| {
        got.extend(r.take_replies());
        got.len() == 1
    });
    assert_eq!(got[0].error, 0);

    // Queue depth 2 of small writes, then a 4 MiB read: the oldest write
    // finishes and a new one comes, again and again; the read must go.
    let mut r = r;
    r.request(&req(cmd::WRITE, 100, 0, 4096), &[1u8; 4096]);
    r.request(&req(cmd::WRITE, 101, 0, 4096), &[1u8; 4096]);
    pump_until(&mut r, "two writes at the bdev", |r| r.h.on(0, hold::held).len() == 2);
    r.request(&req(cmd::READ, 1, 0, 4 << 20), &[]);
    let mut next = 102;
    let mut went = false;
    for _ in 0..2000 {
        r.h.on(0, || hold::release_first(IoStatus::Success));
        r.request(&req(cmd::WRITE, next, 0, 4096), &[1u8; 4096]);
        next += 1;
        for _ in 0..50 {
            r.pump();
            if r.h.on(0, hold::held).len() >= 2 {
                break;
            }
        }
        if r.h.on(0, hold::held).contains(&IoType::Read) {
            went = true;
            break;
        }
    }
    assert!(went, "the 4 MiB read never reached the bdev while {} later writes came", next - 102);
    r.h.on(0, || hold::release(IoStatus::Success));
    pump_until(&mut r, "the rest at the bdev, then answered", |r| {
        r.h.on(0, || hold::release(IoStatus::Success));
        r.take_replies();
        r.conn.backlog() == (0, 0) && r.unsent() == 0
    });
    dma::set_iobuf_options(before);
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is this thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

/// What one second of a connection in interrupt mode cost its reactor.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    wakeups: u64,
    cpu: Duration,
    wall: Duration,
    /// Requests the hold bdev saw.
    submitted: u64,
}

/// A connection on a hold bdev, on one reactor in interrupt mode: the
/// kernel sends `bytes`; every 50 ms `start` is asked whether to begin
/// (it may act first: close the kernel's end, abort); then one second is
/// measured, after which the requests are let go and the connection
/// closed.
fn one_second(bytes: Vec<u8>, auto: Option<IoStatus>, mut start: impl FnMut(&Rc<Conn>, &mut Option<UnixStream>) -> bool + 'static) -> Cost {
    let (ours, kernel) = UnixStream::pair().unwrap();
    let out = Rc::new(Cell::new(Cost::default()));
    let o2 = out.clone();
    let opts =
        Options { cores: vec![0], interrupt_mode: true, pin: false, msg_batch: reactor::DEFAULT_MSG_BATCH, idle_poll: Duration::ZERO };
    reactor::launch(&opts, move || {
        hold::create("hold0");
        hold::set_auto(auto);
        let desc = bdev::open("hold0", true, |_| {}).unwrap();
        let conn = Conn::start("test", ours, desc, || {}).unwrap();
        let mut k = Some(kernel);
        k.as_mut().unwrap().write_all(&bytes).unwrap();
        let t0 = Instant::now();
        let mut phase = 0;
        let mut mark = (0u64, Duration::ZERO, Instant::now(), 0u64);
        let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
        let s2 = slot.clone();
        *slot.borrow_mut() = Some(reactor::register_timed_poller("test", Duration::from_millis(50), move || {
            match phase {
                0 if start(&conn, &mut k) => {
                    mark = (reactor::sleeps(), thread_cpu(), Instant::now(), hold::submitted());
                    phase = 1;
                }
                0 => assert!(t0.elapsed() < Duration::from_secs(20), "never ready to measure ({} held)", hold::held().len()),
                1 if mark.2.elapsed() > Duration::from_secs(1) => {
                    o2.set(Cost {
                        wakeups: reactor::sleeps() - mark.0,
                        cpu: thread_cpu() - mark.1,
                        wall: mark.2.elapsed(),
                        submitted: hold::submitted() - mark.3,
                    });
                    hold::set_auto(None);
                    conn.abort();
                    k.take();
                    hold::release(IoStatus::Success);
                    phase = 2;
                }
                2 if !hold::held().is_empty() => hold::release(IoStatus::Success),
                2 if conn.is_closed() => {
                    s2.borrow_mut().take();
                    reactor::stop_all();
                }
                2 => assert!(t0.elapsed() < Duration::from_secs(40), "the connection did not close"),
                _ => {}
            }
            PollStatus::Idle
        }));
        std::mem::forget(slot);
    })
    .unwrap();
    out.get()
}

/// `n` reads held at the bdev, then the kernel's end closes (or the
/// connection aborts).
fn dead_socket(kernel_closes: bool, n: u64) -> Cost {
    let bytes = (0..n).flat_map(|i| req(cmd::READ, i, 0, 4096).encode()).collect();
    one_second(bytes, None, move |conn, k| {
        if hold::held().len() as u64 != n.min(256) {
            return false;
        }
        if kernel_closes {
            k.take();
        } else {
            conn.abort();
        }
        true
    })
}

/// `nomem`: the bdev answers "no memory" to a trim for ever; otherwise,
/// with a short pool, a third 1 MiB read waits for buffers.
fn waiting_for_memory(nomem: bool) -> Cost {
    if nomem {
        one_second(req(cmd::TRIM, 1, 0, 4096).encode().to_vec(), Some(IoStatus::NoMemory), |_, _| hold::submitted() > 0)
    } else {
        let bytes = (0..3u64).flat_map(|i| req(cmd::READ, i, 0, 1 << 20).encode()).collect();
        one_second(bytes, None, |_, _| hold::held().len() == 2)
    }
}

#[test]
fn limits_hold_without_failing_requests_or_spinning() {
    short_pool();
    let before = dma::iobuf_options();
    dma::set_iobuf_options(SHORT_POOL);
    for nomem in [false, true] {
        let c = waiting_for_memory(nomem);
        assert!(c.cpu < c.wall / 4, "no memory {nomem}: {c:?}");
        assert!(c.submitted <= 2 * c.wall.as_millis() as u64 + 10, "no memory {nomem}: {c:?}");
    }
    dma::set_iobuf_options(before);
    for (kernel_closes, n) in [(true, 1), (false, 1), (true, 300)] {
        let c = dead_socket(kernel_closes, n);
        // A timed poller every 50 ms wakes it about 20 times a second.
        assert!(c.wakeups < 200 && c.cpu < c.wall / 4, "kernel closes {kernel_closes}, {n} requests: {c:?}");
    }
}
