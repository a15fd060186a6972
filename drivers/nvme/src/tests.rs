//! The driver against the fake controller on the step harness: bring-up,
//! queues and phase tags, PRP/SGL data pointers, splitting, status
//! decoding, timeouts, reset, removal and shutdown -- no VM needed.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pollux_core::bdev::{self, BdevEvent, BdevIo, Descriptor, IoStatus};
use pollux_core::dma::{self, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor::{self, Harness};
use pollux_nvme_spec::cmd::io;
use pollux_nvme_spec::registers::Cc;
use pollux_nvme_spec::status::MediaStatus;
use serde_json::json;

use crate::controller::{Controller, ControllerOptions, State, TimeoutAction};
use crate::fake::FakeController;
use crate::qpair::QueuePair;
use crate::regs::Registers;

static_assertions::assert_not_impl_any!(QueuePair: Send, Sync);
static_assertions::assert_impl_all!(Controller: Send, Sync);

struct Setup {
    h: Harness,
    fake: Arc<FakeController>,
    ctrl: Arc<Controller>,
}

fn setup(name: &str, namespaces: usize, mdts: u8, sgl: bool, opts: ControllerOptions) -> Setup {
    setup_with(name, namespaces, mdts, sgl, opts, |_| {})
}

fn setup_with(name: &str, namespaces: usize, mdts: u8, sgl: bool, opts: ControllerOptions, tune: impl FnOnce(&FakeController)) -> Setup {
    let h = Harness::new(1);
    let fake = Arc::new(FakeController::new(namespaces, 4096, 512, mdts, sgl));
    tune(&fake);
    let regs: Arc<dyn Registers> = fake.clone();
    let ctrl = h.on(0, || Controller::start(name, regs, None, opts).expect("bring-up"));
    let c = ctrl.clone();
    let names = h.on(0, move || crate::bdev::add_controller(c, json!({"name": "x"})).expect("bdevs"));
    assert_eq!(names.len(), namespaces);
    Setup { h, fake, ctrl }
}

type Done = Rc<RefCell<Vec<(u64, IoStatus, Vec<u8>)>>>;

fn record(out: &Done, tag: u64) -> impl FnOnce(BdevIo) + 'static {
    let out = out.clone();
    move |mut io: BdevIo| {
        let data: Vec<u8> = io.take_buffers().iter().flat_map(|b| b.to_vec()).collect();
        out.borrow_mut().push((tag, io.status(), data));
    }
}

fn buf(len: usize, fill: u8) -> DmaBuf {
    let pool = dma::pool().expect("pool");
    let mut b = if len <= pool.large_size() { pool.get(len).expect("pool buffer") } else { DmaBuf::alloc(len).expect("buffer") };
    b.set_len(len);
    b.fill(fill);
    b
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn buf_from(data: &[u8]) -> DmaBuf {
    let mut b = buf(data.len(), 0);
    b.copy_from_slice(data);
    b
}

/// Open `name` and keep the descriptor and channel on reactor 0.
fn open(s: &Setup, name: &str) -> (Descriptor, IoChannel<bdev::Bdev>) {
    let name = name.to_string();
    s.h.on(0, move || {
        let d = bdev::open(&name, true, |_| {}).expect("open");
        let ch = d.channel();
        (d, ch)
    })
}

/// Step until `cond` or `limit`.
fn run_until(h: &Harness, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "condition not reached within {limit:?}");
        h.step_all();
    }
}

/// Reset `ctrl` from reactor 0 and step the reactors until it ends.
fn reset_and_wait(h: &Harness, ctrl: &Arc<Controller>) -> Result<(), String> {
    let c = ctrl.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    h.on(0, move || c.reset(move |r| tx.send(r).unwrap()));
    recv_stepping(h, &rx)
}

/// Step the reactors until `rx` has a value (10 s at most).
fn recv_stepping<T>(h: &Harness, rx: &std::sync::mpsc::Receiver<T>) -> T {
    let mut res = None;
    run_until(h, Duration::from_secs(10), || {
        res = rx.try_recv().ok();
        res.is_some()
    });
    res.expect("received")
}

/// Call `bdev_nvme_get_controller_health_info` for `name` on reactor 0;
/// the answer comes on the receiver.
fn ask_health(s: &Setup, name: &str) -> std::sync::mpsc::Receiver<pollux_core::rpc::RpcResult> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = crate::bdev::rpc::HealthInfo { name: name.into() };
    s.h.on(0, move || crate::bdev::rpc::health_info(p, pollux_core::rpc::Responder::new(move |r| tx.send(r).unwrap())));
    rx
}

fn run_until_done(s: &Setup, out: &Done, n: usize) {
    run_until(&s.h, Duration::from_secs(10), || out.borrow().len() >= n);
}

/// Step the reactors for `d` (to see that something does not happen).
fn step_for(h: &Harness, d: Duration) {
    let until = Instant::now() + d;
    run_until(h, d + Duration::from_secs(5), || Instant::now() >= until);
}

/// Read block 0 into a fresh buffer, recorded in `out` under `tag`.
fn read_block0(s: &Setup, d: &Descriptor, ch: &IoChannel<bdev::Bdev>, out: &Done, tag: u64) {
    let o = out.clone();
    s.h.on(0, || d.read(ch, [buf(512, 0)], 0, 1, record(&o, tag)));
}

#[test]
fn bring_up_identifies_and_registers_one_bdev_per_namespace() {
    let s = setup("Fake0", 3, 5, false, ControllerOptions::default());
    let id = s.ctrl.identify_data();
    assert_eq!(id.model(), "Pollux Fake Ctrl");
    assert_eq!(id.serial(), "fake0001");
    assert_eq!(s.ctrl.max_transfer(), 128 << 10, "MDTS 5 with 4 KiB pages");
    assert_eq!(s.ctrl.io_queue_count(), 8, "as Set Features granted");
    assert_eq!(s.ctrl.namespaces().len(), 3);
    let bdevs = s.h.on(0, bdev::list);
    let names: Vec<&str> = bdevs.iter().map(|b| b.name()).collect();
    assert_eq!(names, ["Fake0n1", "Fake0n2", "Fake0n3"]);
    assert_eq!(bdevs[0].num_blocks(), 4096);
    assert_eq!(bdevs[0].block_size(), 512);
    assert!(bdevs[0].supports(bdev::IoType::Unmap) && bdevs[0].supports(bdev::IoType::WriteZeroes));
    let calls: Vec<_> = bdevs.iter().filter_map(|b| b.backend().config_call(b)).collect();
    assert_eq!(calls.len(), 1, "one attach call per controller in save_config");
}

#[test]
fn large_requests_are_split_at_the_maximum_transfer_and_use_prp_lists() {
    let s = setup("Split", 1, 2, false, ControllerOptions::default());
    let (d, ch) = open(&s, "Splitn1");
    let out: Done = Rc::default();
    let data = pattern(96 << 10, 7);
    let (o, w) = (out.clone(), data.clone());
    s.h.on(0, || d.write(&ch, [buf_from(&w)], 8, 192, record(&o, 1)));
    run_until_done(&s, &out, 1);
    assert_eq!(out.borrow()[0].1, IoStatus::Success);
    assert_eq!(&s.fake.disk(0)[8 * 512..8 * 512 + data.len()], &data[..]);
    // 96 KiB with MDTS 2 (16 KiB): six commands, each with a PRP list.
    assert_eq!(s.fake.counters(|c| c.opcodes.get(&io::WRITE).copied()), Some(6));
    assert!(s.fake.counters(|c| c.prp_lists) >= 6);
    let o = out.clone();
    s.h.on(0, || d.read(&ch, [buf(64 << 10, 0), buf(32 << 10, 0)], 8, 192, record(&o, 2)));
    run_until_done(&s, &out, 2);
    assert_eq!(out.borrow()[1].1, IoStatus::Success);
    assert_eq!(out.borrow()[1].2, data, "read back what was written");
    s.h.on(0, move || drop((ch, d)));
}

#[test]
fn pieces_that_break_prp_rules_use_sgls_when_supported_and_split_otherwise() {
    for sgl in [false, true] {
        let name = if sgl { "Sgl" } else { "Prp" };
        let s = setup(name, 1, 5, sgl, ControllerOptions::default());
        let (d, ch) = open(&s, &format!("{name}n1"));
        let out: Done = Rc::default();
        let parts: Vec<Vec<u8>> = (0..4).map(|i| pattern(512, i)).collect();
        let (o, p) = (out.clone(), parts.clone());
        // Four 512-byte pool buffers: none ends on a page boundary.
        s.h.on(0, || d.write(&ch, p.iter().map(|x| buf_from(x)), 100, 4, record(&o, 1)));
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Success);
        let want: Vec<u8> = parts.concat();
        assert_eq!(&s.fake.disk(0)[100 * 512..104 * 512], &want[..]);
        let writes = s.fake.counters(|c| c.opcodes.get(&io::WRITE).copied().unwrap_or(0));
        if sgl {
            assert_eq!(writes, 1, "one command with four SGL descriptors");
            assert_eq!(s.fake.counters(|c| c.sgl_commands), 1);
        } else {
            assert_eq!(writes, 4, "one command per piece with PRPs");
        }
        s.h.on(0, move || drop((ch, d)));
    }
}

#[test]
fn a_batch_of_submissions_rings_the_doorbell_once_and_the_queue_wraps() {
    let opts = ControllerOptions { io_queue_entries: 16, ..Default::default() };
    let s = setup("Batch", 1, 5, false, opts);
    let (d, ch) = open(&s, "Batchn1");
    let out: Done = Rc::default();
    let o = out.clone();
    s.h.on(0, || {
        for i in 0..12u64 {
            d.write(&ch, [buf(4096, i as u8 + 1)], i * 8, 8, record(&o, i));
        }
    });
    run_until_done(&s, &out, 12);
    assert_eq!(s.fake.counters(|c| c.max_batch), 12, "twelve commands behind one SQ doorbell write");
    // Far more requests than queue entries: requests wait for free command
    // ids, the phase tag flips many times, every request completes once.
    let d = Rc::new(d);
    let ch = Rc::new(ch);
    let count = 400u64;
    for round in 0..count / 20 {
        let (o, d2, c2) = (out.clone(), d.clone(), ch.clone());
        s.h.on(0, move || {
            for i in 0..20u64 {
                let n = round * 20 + i;
                d2.write(&c2, [buf(512, (n % 251) as u8)], n % 4096, 1, record(&o, 100 + n));
            }
        });
    }
    run_until_done(&s, &out, 12 + count as usize);
    let done = out.borrow();
    let mut tags: Vec<u64> = done.iter().map(|x| x.0).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 12 + count as usize, "every request completed exactly once");
    assert!(done.iter().all(|x| x.1 == IoStatus::Success));
    drop(done);
    s.h.on(0, move || drop((ch, d)));
}

#[test]
fn write_zeroes_and_deallocate_read_back_zeroes() {
    // With Write Zeroes, unmap is Write Zeroes + DEAC; without, DSM deallocate.
    for wz in [true, false] {
        let name = if wz { "Zero" } else { "Dsm" };
        let oncs =
            pollux_nvme_spec::identify::oncs::DATASET_MANAGEMENT | if wz { pollux_nvme_spec::identify::oncs::WRITE_ZEROES } else { 0 };
        let s = setup_with(name, 1, 5, false, ControllerOptions::default(), |f| f.set_oncs(oncs));
        let (d, ch) = open(&s, &format!("{name}n1"));
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || d.write(&ch, [buf(64 << 10, 0xee)], 0, 128, record(&o, 1)));
        run_until_done(&s, &out, 1);
        let o = out.clone();
        s.h.on(0, || {
            if wz {
                d.write_zeroes(&ch, 0, 64, record(&o, 2));
            } else {
                d.unmap(&ch, 0, 64, record(&o, 2));
            }
            d.unmap(&ch, 64, 32, record(&o, 3));
            d.flush(&ch, 0, 128, record(&o, 4));
        });
        run_until_done(&s, &out, 4);
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(64 << 10, 0x55)], 0, 128, record(&o, 5)));
        run_until_done(&s, &out, 5);
        let done = out.borrow();
        assert!(done.iter().all(|x| x.1 == IoStatus::Success), "{:?}", done.iter().map(|x| x.1).collect::<Vec<_>>());
        let data = &done[4].2;
        assert!(data[..96 * 512].iter().all(|&b| b == 0), "zeroed and deallocated blocks read as zeroes");
        assert!(data[96 * 512..].iter().all(|&b| b == 0xee), "the rest is untouched");
        let count = |op| s.fake.counters(|c| c.opcodes.get(&op).copied().unwrap_or(0));
        if wz {
            assert_eq!((count(io::WRITE_ZEROES), count(io::DATASET_MANAGEMENT)), (2, 0));
        } else {
            assert_eq!((count(io::WRITE_ZEROES), count(io::DATASET_MANAGEMENT)), (0, 2));
            assert!(!s.h.on(0, || bdev::get("Dsmn1").unwrap().supports(bdev::IoType::WriteZeroes)));
        }
        assert_eq!(count(io::FLUSH), 1);
        drop(done);
        s.h.on(0, move || drop((ch, d)));
    }
}

#[test]
fn failed_commands_report_decoded_status_and_compare_detects_differences() {
    let s = setup("Err", 1, 5, false, ControllerOptions::default());
    let (d, ch) = open(&s, "Errn1");
    let out: Done = Rc::default();
    s.fake.fail_next_io(MediaStatus::UnrecoveredReadError.status());
    let o = out.clone();
    s.h.on(0, || d.read(&ch, [buf(4096, 0)], 0, 8, record(&o, 1)));
    run_until_done(&s, &out, 1);
    assert_eq!(out.borrow()[0].1, IoStatus::Media);
    s.fake.fail_next_io(pollux_nvme_spec::status::GenericStatus::NamespaceNotReady.status());
    let o = out.clone();
    s.h.on(0, || d.read(&ch, [buf(4096, 0)], 0, 8, record(&o, 2)));
    run_until_done(&s, &out, 2);
    assert_eq!(out.borrow()[1].1, IoStatus::Nvme { sct: 0, sc: 0x82 });
    let o = out.clone();
    s.h.on(0, || {
        d.write(&ch, [buf(512, 9)], 5, 1, record(&o, 3));
    });
    run_until_done(&s, &out, 3);
    let o = out.clone();
    s.h.on(0, || {
        d.compare(&ch, [buf(512, 9)], 5, 1, record(&o, 4));
        d.compare(&ch, [buf(512, 8)], 5, 1, record(&o, 5));
    });
    run_until_done(&s, &out, 5);
    assert_eq!(out.borrow()[3].1, IoStatus::Success);
    assert!(matches!(out.borrow()[4].1, IoStatus::Miscompare { .. }));
    s.h.on(0, move || drop((ch, d)));
}

/// A reset waits for the device (CAP.TO for each of disable and enable):
/// the reactor that asked goes on meanwhile (it stalled for the whole
/// reset, every other device and connection on it with it), and I/O to
/// the controller waits for the reset and then runs.
#[test]
fn a_reset_waiting_for_the_device_leaves_the_reactor_free() {
    // CAP.TO 30 s; the device does not come ready until let go.
    let s = setup_with("Slow", 1, 5, false, ControllerOptions::default(), |f| f.with(|st| st.cap_to = 60));
    let (d, ch) = open(&s, "Slown1");
    let resets = s.fake.counters(|c| c.resets);
    s.fake.with(|st| st.hold_ready = true);
    let (tx, rx) = std::sync::mpsc::channel();
    let c = s.ctrl.clone();
    s.h.on(0, move || c.reset(move |r| tx.send(r).unwrap()));
    // Back from the reactor with the reset still waiting for the device.
    assert_eq!(s.ctrl.state(), State::Resetting, "the reset ran to its end on the reactor");
    let out: Done = Rc::default();
    let (o, w) = (out.clone(), pattern(4096, 3));
    s.h.on(0, || d.write(&ch, [buf_from(&w)], 0, 8, record(&o, 1)));
    // The reactor keeps running (messages, pollers) while the device is
    // disabled and not yet ready; the write waits.
    run_until(&s.h, Duration::from_secs(10), || s.fake.counters(|c| c.resets) > resets);
    for _ in 0..100 {
        s.h.step_all();
    }
    assert!(out.borrow().is_empty(), "a write completed while the controller was resetting");
    assert!(rx.try_recv().is_err(), "the reset ended before the device was ready");
    s.fake.with(|st| st.hold_ready = false);
    let mut res = None;
    run_until(&s.h, Duration::from_secs(20), || {
        res = rx.try_recv().ok();
        res.is_some()
    });
    assert_eq!(res, Some(Ok(())));
    assert_eq!(s.ctrl.state(), State::Enabled);
    run_until_done(&s, &out, 1);
    assert_eq!(out.borrow()[0].1, IoStatus::Success);
    assert_eq!(&s.fake.disk(0)[..4096], &w[..]);
    s.h.on(0, move || drop((ch, d)));
}

#[test]
fn reset_during_io_resubmits_in_flight_commands_once() {
    let s = setup("Reset", 1, 5, false, ControllerOptions::default());
    let (d, ch) = open(&s, "Resetn1");
    let out: Done = Rc::default();
    s.fake.set_hold_io(true);
    let o = out.clone();
    s.h.on(0, || {
        for i in 0..16u64 {
            d.write(&ch, [buf(4096, i as u8 + 1)], i * 8, 8, record(&o, i));
        }
    });
    run_until(&s.h, Duration::from_secs(5), || s.fake.held() == 16);
    assert!(out.borrow().is_empty(), "held by the device");
    // The device loses everything in the reset; the driver must resubmit.
    s.fake.set_hold_io(false);
    let o = out.clone();
    s.h.on(0, || d.reset(&ch, record(&o, 99)));
    run_until_done(&s, &out, 17);
    s.h.run_until_idle(100);
    let done = out.borrow();
    assert_eq!(done.len(), 17, "no request lost, none completed twice");
    assert!(done.iter().all(|x| x.1 == IoStatus::Success), "{:?}", done.iter().map(|x| x.1).collect::<Vec<_>>());
    let disk = s.fake.disk(0);
    for i in 0..16usize {
        assert!(disk[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8 + 1), "block range {i} written after the reset");
    }
    assert_eq!(s.ctrl.reset_count(), 1);
    assert_eq!(s.fake.counters(|c| c.resets), 1);
    drop(done);
    s.h.on(0, move || drop((ch, d)));
}

#[test]
fn a_timed_out_command_is_aborted() {
    let opts =
        ControllerOptions { io_timeout: Some(Duration::from_millis(50)), timeout_action: TimeoutAction::Abort, ..Default::default() };
    let s = setup("Abort", 1, 5, false, opts);
    let (d, ch) = open(&s, "Abortn1");
    let out: Done = Rc::default();
    s.fake.set_hold_io(true);
    let o = out.clone();
    s.h.on(0, || d.read(&ch, [buf(4096, 0)], 0, 8, record(&o, 1)));
    run_until_done(&s, &out, 1);
    assert_eq!(out.borrow()[0].1, IoStatus::Aborted);
    assert_eq!(s.fake.counters(|c| c.aborts), 1);
    assert_eq!(s.ctrl.reset_count(), 0);
    assert_eq!((s.ctrl.timeout_count(), s.ctrl.abort_count()), (1, 1), "the controller's counters (bdev_nvme_get_controllers)");
    s.h.on(0, move || drop((ch, d)));
}

#[test]
fn a_command_the_controller_will_not_abort_leads_to_a_reset_and_a_retry() {
    let opts =
        ControllerOptions { io_timeout: Some(Duration::from_millis(50)), timeout_action: TimeoutAction::Abort, ..Default::default() };
    let s = setup("Stuck", 1, 5, false, opts);
    let (d, ch) = open(&s, "Stuckn1");
    let out: Done = Rc::default();
    s.fake.set_hold_io(true);
    s.fake.set_refuse_abort(true);
    let o = out.clone();
    s.h.on(0, || d.write(&ch, [buf(4096, 0x42)], 16, 8, record(&o, 1)));
    run_until(&s.h, Duration::from_secs(5), || s.fake.held() == 1);
    // Stuck until the reset; after it the device works again.
    s.fake.set_hold_io(false);
    run_until_done(&s, &out, 1);
    assert_eq!(out.borrow()[0].1, IoStatus::Success);
    assert_eq!(s.ctrl.reset_count(), 1);
    assert!(s.fake.disk(0)[16 * 512..24 * 512].iter().all(|&b| b == 0x42));
    s.h.on(0, move || drop((ch, d)));
}

#[test]
fn hot_removal_tells_bdev_users_and_fails_io() {
    let s = setup("Gone", 2, 5, false, ControllerOptions::default());
    let events = Arc::new(AtomicUsize::new(0));
    let ev = events.clone();
    let d = s.h.on(0, move || {
        bdev::open("Gonen1", true, move |e| {
            assert_eq!(e, BdevEvent::Remove);
            ev.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
    });
    let ch = s.h.on(0, || d.channel());
    s.fake.remove();
    run_until(&s.h, Duration::from_secs(5), || events.load(Ordering::SeqCst) == 1);
    assert_eq!(s.ctrl.state(), State::Removed);
    let out: Done = Rc::default();
    let o = out.clone();
    s.h.on(0, || d.read(&ch, [buf(512, 0)], 0, 1, record(&o, 1)));
    run_until_done(&s, &out, 1);
    assert_eq!(out.borrow()[0].1, IoStatus::NoDevice);
    s.h.on(0, move || drop((ch, d)));
    s.h.run_until_idle(100);
    assert!(s.h.on(0, bdev::list).is_empty(), "the removed controller's bdevs are gone");
}

/// `bdev_nvme_get_controller_health_info`: the SMART log in SPDK's
/// fields; an unknown name is "Device not found", as in SPDK.
#[test]
fn health_info_reads_the_smart_log_in_spdks_fields() {
    let s = setup("Health", 1, 5, false, ControllerOptions::default());
    let ask = |name: &str| recv_stepping(&s.h, &ask_health(&s, name));
    let v = ask("Health").expect("health info");
    assert_eq!(v["model_number"], "Pollux Fake Ctrl");
    assert_eq!(v["serial_number"], "fake0001");
    assert_eq!(v["temperature_celsius"], 27);
    assert_eq!(v["available_spare_percentage"], 100);
    assert_eq!(v["available_spare_threshold_percentage"], 10);
    assert_eq!(v["percentage_used"], 7);
    assert_eq!(v["data_units_read"], 5000);
    assert_eq!(v["power_on_hours"], 1234);
    assert_eq!(v["media_errors"], 0);
    assert_eq!(v["temperature_sensor_celsius"], 37);
    let e = ask("Nope").unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (pollux_core::rpc::RpcError::INTERNAL_ERROR, "Device not found"));
}

/// A device that does not answer the Get Log Page: the reactor goes on,
/// and the call fails once the admin timeout has passed. Calls that come
/// meanwhile share the read under way (each had a thread of its own, and
/// sent a Get Log Page of its own, all waiting out the timeout).
#[test]
fn health_info_of_a_silent_device_leaves_the_reactor_free() {
    let opts = ControllerOptions { admin_timeout: Duration::from_millis(1500), ..Default::default() };
    let s = setup("Mute", 1, 5, false, opts);
    let log_pages = || s.fake.counters(|c| c.admin_opcodes.get(&pollux_nvme_spec::cmd::admin::GET_LOG_PAGE).copied().unwrap_or(0));
    let before = log_pages();
    s.fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::GET_LOG_PAGE));
    let t0 = Instant::now();
    let calls: Vec<_> = (0..5).map(|_| ask_health(&s, "Mute")).collect();
    assert!(t0.elapsed() < Duration::from_secs(1), "the reactor waited {:?}", t0.elapsed());
    for rx in &calls {
        let e = recv_stepping(&s.h, rx).unwrap_err();
        assert_eq!(e.code, -libc::ETIMEDOUT, "{e:?}");
    }
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    assert_eq!(log_pages() - before, 1, "one read for the five calls");
    // The next call reads again.
    s.fake.with(|st| st.hold_admin = None);
    assert!(recv_stepping(&s.h, &ask_health(&s, "Mute")).is_ok());
    assert_eq!(log_pages() - before, 2);
}

/// While a detach waits for a namespace's users, `bdev_nvme_get_controllers`
/// lists only the namespaces' bdevs still there (it listed the deleted
/// ones too).
#[test]
fn a_controller_being_detached_lists_only_the_bdevs_left() {
    let s = setup("Half", 2, 5, false, ControllerOptions::default());
    let (d, ch) = open(&s, "Halfn1");
    s.h.on(0, move || crate::bdev::detach("Half", || {}).unwrap());
    s.h.run_until_idle(100);
    let listed = s.h.on(0, || crate::bdev::describe_controllers(Some("Half")));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["ctrlrs"][0]["namespaces"], json!(["Halfn1"]), "{listed:?}");
    s.h.on(0, move || drop((ch, d)));
    run_until(&s.h, Duration::from_secs(5), || s.h.on(0, crate::bdev::controllers).is_empty());
}

#[test]
fn detach_deletes_bdevs_and_shuts_the_controller_down() {
    let s = setup("Bye", 1, 5, false, ControllerOptions::default());
    let (d, ch) = open(&s, "Byen1");
    let out: Done = Rc::default();
    let o = out.clone();
    s.h.on(0, || d.write(&ch, [buf(512, 1)], 0, 1, record(&o, 1)));
    run_until_done(&s, &out, 1);
    let detached = Rc::new(RefCell::new(false));
    let det = detached.clone();
    s.h.on(0, move || crate::bdev::detach("Bye", move || *det.borrow_mut() = true).unwrap());
    s.h.run_until_idle(100);
    assert!(!*detached.borrow(), "waits for the open descriptor");
    s.h.on(0, move || drop((ch, d)));
    run_until(&s.h, Duration::from_secs(5), || *detached.borrow());
    assert_eq!(s.ctrl.state(), State::ShutDown);
    let csts = s.fake.read32(pollux_nvme_spec::registers::offset::CSTS as usize).unwrap();
    assert_eq!((csts >> 2) & 3, 2, "CSTS.SHST: shutdown complete");
    assert!(s.h.on(0, crate::bdev::controllers).is_empty());
}

/// A detach while a reset waits for the device: the reset does not bring
/// the controller back after the shutdown (or shut it down twice); the
/// detach ends with the controller shut down and unlisted, and the
/// controller stays listed until then.
#[test]
fn a_detach_during_a_reset_ends_shut_down() {
    let s = setup_with("Both", 1, 5, false, ControllerOptions::default(), |f| f.with(|st| st.cap_to = 60));
    s.fake.with(|st| st.hold_ready = true);
    let resets = s.fake.counters(|c| c.resets);
    let (tx, rx) = std::sync::mpsc::channel();
    let c = s.ctrl.clone();
    s.h.on(0, move || c.reset(move |r| tx.send(r).unwrap()));
    // The reset has the controller (disabled it, waits for it to be ready).
    run_until(&s.h, Duration::from_secs(10), || s.fake.counters(|c| c.resets) > resets);
    let detached = Rc::new(RefCell::new(false));
    let det = detached.clone();
    s.h.on(0, move || crate::bdev::detach("Both", move || *det.borrow_mut() = true).unwrap());
    for _ in 0..100 {
        s.h.step_all();
    }
    assert!(!*detached.borrow(), "detached while the reset held the controller");
    assert_eq!(s.h.on(0, crate::bdev::controllers).len(), 1, "listed until shut down");
    s.fake.with(|st| st.hold_ready = false);
    let mut res = None;
    run_until(&s.h, Duration::from_secs(20), || {
        res = res.take().or_else(|| rx.try_recv().ok());
        res.is_some() && *detached.borrow()
    });
    assert_eq!(s.ctrl.state(), State::ShutDown, "reset: {res:?}");
    let csts = s.fake.read32(pollux_nvme_spec::registers::offset::CSTS as usize).unwrap();
    assert_eq!((csts >> 2) & 3, 2, "CSTS.SHST: shutdown complete");
    assert_eq!(Cc(s.fake.read32(pollux_nvme_spec::registers::offset::CC as usize).unwrap()).shutdown_notification(), 1);
    assert!(s.h.on(0, crate::bdev::controllers).is_empty());
}

#[test]
fn each_reactor_gets_its_own_queue_pair() {
    let h = Harness::new(2);
    let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
    let regs: Arc<dyn Registers> = fake.clone();
    let ctrl = h.on(0, || Controller::start("Two", regs, None, ControllerOptions::default()).unwrap());
    let c = ctrl.clone();
    h.on(0, move || crate::bdev::add_controller(c, json!({})).unwrap());
    let d = h.on(0, || bdev::open("Twon1", true, |_| {}).unwrap());
    let out = Arc::new(AtomicUsize::new(0));
    for r in 0..2 {
        let (d, o) = (d.clone(), out.clone());
        h.on(r, move || {
            let ch: IoChannel<bdev::Bdev> = d.channel();
            d.write(&ch, [buf(512, r as u8 + 1)], r as u64, 1, move |io: BdevIo| {
                assert!(io.is_ok());
                o.fetch_add(1, Ordering::SeqCst);
            });
            // Keep the channel (and so the queue pair) alive on this reactor.
            reactor::set_local(Rc::new((ch, d)));
        });
    }
    run_until(&h, Duration::from_secs(5), || out.load(Ordering::SeqCst) == 2);
    let qids: Vec<Option<u16>> =
        (0..2).map(|r| h.on(r, || pollux_core::io_channel::try_get_io_channel(&ctrl).and_then(|q| q.qid()))).collect();
    assert_ne!(qids[0], qids[1], "one queue pair (queue id) per reactor: {qids:?}");
    assert_eq!(&fake.disk(0)[..1024], &[[1u8; 512], [2u8; 512]].concat()[..]);
    h.on(0, move || drop(d));
    for r in 0..2 {
        h.on(r, || drop(reactor::take_local::<(IoChannel<bdev::Bdev>, Descriptor)>()));
    }
}

/// What a faulty (or hostile) controller reports must not panic a
/// reactor, hang a request, or hand a buffer back while the device may
/// still write to it (found in review, 2026-12-06).
mod faulty_device {
    use super::*;
    use crate::regs::RegisterError;

    /// The fake's registers with another CAP.
    struct CapOverride {
        inner: Arc<FakeController>,
        cap: u64,
        window: Option<usize>,
    }

    impl Registers for CapOverride {
        fn read32(&self, o: usize) -> Result<u32, RegisterError> {
            self.inner.read32(o)
        }
        fn read64(&self, o: usize) -> Result<u64, RegisterError> {
            if o == 0 { Ok(self.cap) } else { self.inner.read64(o) }
        }
        fn write32(&self, o: usize, v: u32) -> Result<(), RegisterError> {
            self.inner.write32(o, v)
        }
        fn write64(&self, o: usize, v: u64) -> Result<(), RegisterError> {
            self.inner.write64(o, v)
        }
        fn window_len(&self) -> Option<usize> {
            self.window
        }
    }

    #[test]
    fn queues_of_one_entry_are_refused_not_a_panic() {
        let h = Harness::new(1);
        let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
        let cap = fake.read64(0).unwrap() & !0xffff; // CAP.MQES 0
        let regs: Arc<dyn Registers> = Arc::new(CapOverride { inner: fake, cap, window: None });
        let r = h.on(0, || Controller::start("Mq", regs, None, ControllerOptions::default()).map(|_| ()));
        assert!(r.as_ref().is_err_and(|e| e.to_string().contains("MQES")), "{r:?}");
    }

    /// A register window with room for the doorbells of the admin queue
    /// and two I/O queues (a small BAR, or a large CAP.DSTRD): queues past
    /// it were created and their doorbell writes failed, their commands
    /// never reaching the device.
    #[test]
    fn only_queues_whose_doorbells_fit_the_register_window_are_used() {
        let h = Harness::new(1);
        let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
        let cap = fake.read64(0).unwrap();
        let regs: Arc<dyn Registers> = Arc::new(CapOverride { inner: fake.clone(), cap, window: Some(0x1000 + 8 * 3) });
        let ctrl = h.on(0, || Controller::start("Db", regs, None, ControllerOptions::default())).expect("bring-up");
        assert_eq!(ctrl.io_queue_count(), 2);
        drop(ctrl);
        let regs: Arc<dyn Registers> = Arc::new(CapOverride { inner: fake, cap, window: Some(0x1000 + 8) });
        let r = h.on(0, || Controller::start("Db", regs, None, ControllerOptions::default()).map(|_| ()));
        assert!(r.as_ref().is_err_and(|e| e.to_string().contains("register window")), "{r:?}");
    }

    #[test]
    fn an_mdts_beyond_the_address_space_is_no_limit_not_zero() {
        // 4096 << 52 is 0 in 64 bits: every read and write failed.
        let s = setup("Md", 1, 52, false, ControllerOptions::default());
        assert_eq!(s.ctrl.max_transfer(), crate::controller::MAX_TRANSFER_CAP);
        let (d, ch) = open(&s, "Mdn1");
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(4096, 0)], 0, 8, record(&o, 1)));
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Success);
        s.h.on(0, move || drop((ch, d)));
    }

    #[test]
    fn requests_fail_when_the_controller_refuses_the_queue() {
        // They waited for ever, the queue retried every 100 ms.
        let s = setup_with("Cq", 1, 5, false, ControllerOptions::default(), |f| f.with(|st| st.refuse_create_sq = true));
        let (d, ch) = open(&s, "Cqn1");
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(4096, 0)], 0, 8, record(&o, 1)));
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Failed);
        s.h.on(0, move || drop((ch, d)));
    }

    #[test]
    fn a_stale_completion_does_not_complete_the_command_that_reused_its_id() {
        let s = setup("Dup", 1, 5, false, ControllerOptions::default());
        let (d, ch) = open(&s, "Dupn1");
        let out: Done = Rc::default();
        let (o, w) = (out.clone(), pattern(4096, 9));
        s.h.on(0, || d.write(&ch, [buf_from(&w)], 0, 8, record(&o, 1)));
        run_until_done(&s, &out, 1);
        // The device holds the next command, which reuses the tracker the
        // write freed; a second completion of the write's id arrives.
        s.fake.set_hold_io(true);
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(4096, 0xee)], 0, 8, record(&o, 2)));
        run_until(&s.h, Duration::from_secs(10), || s.fake.held() == 1);
        let read_cid = s.fake.with(|st| st.held_cid());
        let write_cid = read_cid.wrapping_sub(1 << 12);
        assert_eq!(read_cid & 0xfff, write_cid & 0xfff, "same tracker, another generation");
        s.fake.inject_cqe(1, write_cid);
        for _ in 0..20 {
            s.h.step_all();
        }
        assert_eq!(out.borrow().len(), 1, "the read completed by another command's completion");
        // Its own completion does.
        s.fake.inject_cqe(1, read_cid);
        run_until_done(&s, &out, 2);
        s.h.on(0, move || drop((ch, d)));
    }

    #[test]
    fn an_unanswered_abort_leads_to_a_reset_not_one_wait_per_command() {
        let opts = ControllerOptions {
            io_timeout: Some(Duration::from_millis(50)),
            timeout_action: TimeoutAction::Abort,
            admin_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let s = setup("Ab", 1, 5, false, opts);
        let (d, ch) = open(&s, "Abn1");
        s.fake.set_hold_io(true);
        s.fake.with(|st| st.silent_abort = true);
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || {
            for i in 0..8u64 {
                d.read(&ch, [buf(512, 0)], i, 1, record(&o, i));
            }
        });
        run_until(&s.h, Duration::from_secs(10), || s.fake.held() == 8);
        let resets = s.fake.counters(|c| c.resets);
        // Every command times out; the first abort goes unanswered (an
        // admin timeout), and the reset takes care of the other seven:
        // by the reset, one abort was sent (eight, each waited for, before).
        run_until(&s.h, Duration::from_secs(30), || s.fake.counters(|c| c.resets) > resets);
        assert_eq!(s.fake.counters(|c| c.aborts), 1, "one abort waited for, not eight");
        // Let the device run: the requests resubmitted after the reset end.
        s.fake.set_hold_io(false);
        s.fake.with(|st| st.silent_abort = false);
        run_until_done(&s, &out, 8);
        s.h.on(0, move || drop((ch, d)));
    }

    /// The Abort of a timed-out command waits for its answer (up to the
    /// admin timeout) off the reactor: the reactor goes on meanwhile (it
    /// stalled for the whole admin timeout).
    #[test]
    fn an_abort_waiting_for_its_answer_leaves_the_reactor_free() {
        let opts = ControllerOptions {
            io_timeout: Some(Duration::from_millis(50)),
            timeout_action: TimeoutAction::Abort,
            admin_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let s = setup("AbFree", 1, 5, false, opts);
        let (d, ch) = open(&s, "AbFreen1");
        s.fake.set_hold_io(true);
        s.fake.with(|st| st.silent_abort = true);
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(512, 0)], 0, 1, record(&o, 0)));
        let resets = s.fake.counters(|c| c.resets);
        run_until(&s.h, Duration::from_secs(10), || s.fake.counters(|c| c.aborts) == 1);
        for _ in 0..10 {
            s.h.step_all();
        }
        assert_eq!(s.fake.counters(|c| c.resets), resets, "the reactor waited out the abort's admin timeout");
        assert!(out.borrow().is_empty());
        // Unanswered, the abort gives way to a reset, which resubmits the read.
        s.fake.set_hold_io(false);
        run_until(&s.h, Duration::from_secs(20), || s.fake.counters(|c| c.resets) > resets);
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Success);
        s.h.on(0, move || drop((ch, d)));
    }

    /// While an Abort waits for its answer off the reactor, the command it
    /// names finishes and the reactor goes on issuing: the command's id is
    /// not used again until the Abort is over (it came back after 16
    /// reuses of its slot, and the late Abort would have hit that newer
    /// command).
    #[test]
    fn a_late_abort_cannot_name_a_newer_command() {
        let opts = ControllerOptions {
            io_timeout: Some(Duration::from_millis(50)),
            timeout_action: TimeoutAction::Abort,
            admin_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let s = setup("Late2", 1, 5, false, opts);
        let (d, ch) = open(&s, "Late2n1");
        let resets = s.fake.counters(|c| c.resets);
        s.fake.set_hold_io(true);
        s.fake.with(|st| st.silent_abort = true);
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(512, 0)], 0, 1, record(&o, 0)));
        run_until(&s.h, Duration::from_secs(10), || s.fake.counters(|c| c.aborts) == 1);
        // The device finishes the command after all; the Abort stays
        // unanswered.
        let timed_out = s.fake.with(|st| st.held_cid());
        s.fake.set_hold_io(false);
        s.fake.inject_cqe(1, timed_out);
        run_until_done(&s, &out, 1);
        let first = s.fake.with(|st| st.io_cids.len());
        // One command at a time, each in the slot the last one freed.
        for i in 1..=40u64 {
            let o = out.clone();
            s.h.on(0, || d.read(&ch, [buf(512, 0)], i, 1, record(&o, i)));
            run_until_done(&s, &out, i as usize + 1);
        }
        assert_eq!(s.fake.counters(|c| c.resets), resets, "the Abort is still waiting");
        let later = s.fake.with(|st| st.io_cids[first..].to_vec());
        assert_eq!(later.len(), 40);
        assert!(!later.contains(&timed_out), "command id {timed_out:#x} of the command being aborted used again: {later:x?}");
        // The Abort goes unanswered: the device may still hold it (and
        // carry it out on a later command of that id), so the controller
        // is reset, although the command it named is done.
        let under_way = || {
            let c = s.ctrl.clone();
            s.h.on(0, move || pollux_core::io_channel::try_get_io_channel(&c).map(|qp| qp.aborts_under_way()))
        };
        assert_eq!(under_way(), Some(true));
        run_until(&s.h, Duration::from_secs(20), || s.ctrl.reset_count() == 1);
        assert_eq!(under_way(), Some(false));
        // And I/O goes on after it.
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(512, 0)], 0, 1, record(&o, 99)));
        run_until_done(&s, &out, 42);
        assert!(out.borrow().iter().all(|x| x.1 == IoStatus::Success));
        s.h.on(0, move || drop((ch, d)));
    }

    #[test]
    fn a_namespace_with_an_absurd_geometry_gets_no_bdev_and_the_rest_attach() {
        for (what, blocks, block, nsze) in
            [("2^60 blocks of 512 bytes", 4096, 512, Some((2, 1u64 << 60))), ("4 MiB blocks", 2, 4 << 20, None)]
        {
            let h = Harness::new(1);
            let fake = Arc::new(FakeController::new(2, blocks, block, 5, false));
            fake.with(|st| st.nsze_override = nsze);
            let regs: Arc<dyn Registers> = fake.clone();
            let ctrl = h.on(0, || Controller::start("Geo", regs, None, ControllerOptions::default()).expect("bring-up"));
            let c = ctrl.clone();
            let names = h.on(0, move || crate::bdev::add_controller(c, json!({"name": "Geo"})).expect("attach"));
            let expect: &[&str] = if nsze.is_some() { &["Geon1"] } else { &[] };
            assert_eq!(names, expect, "{what}");
            assert!(h.on(0, || crate::bdev::controller("Geo").is_some()), "{what}: the controller is attached (detachable)");
            h.on(0, || crate::bdev::detach("Geo", || {})).expect("detach");
            run_until(&h, Duration::from_secs(10), || h.on(0, || bdev::list().is_empty()));
            drop(ctrl);
        }
    }

    /// An admin command that timed out, its data landing late (the device
    /// got to it after all) while the next admin command's data sat in the
    /// same buffer: the next command read the late data as its own.
    #[test]
    fn a_timed_out_admin_commands_late_data_does_not_land_in_the_next_ones() {
        let h = Harness::new(1);
        let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
        let regs: Arc<dyn Registers> = fake.clone();
        let ctrl = h.on(0, || Controller::start("Late", regs, None, ControllerOptions::default()).expect("bring-up"));
        fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::GET_LOG_PAGE));
        let c = ctrl.clone();
        let r = h.on(0, move || {
            let mut log = [0u8; 512];
            c.admin_command(
                crate::admin::get_log_page(2, u32::MAX, 512),
                crate::controller::DataDirection::FromDevice,
                &mut log,
                Some(Duration::from_millis(20)),
            )
        });
        assert!(matches!(r, Err(crate::NvmeError::Timeout { .. })), "{r:?}");
        fake.with(|st| {
            st.hold_admin = None;
            st.late_admin_dma = true;
        });
        let c = ctrl.clone();
        let ns = h.on(0, move || c.identify_namespace(1)).expect("identify");
        assert_eq!(ns.nsze.get(), 4096, "the namespace's own size, not the late log page's bytes");
        // A reset lets the buffers set aside go; commands go on working.
        reset_and_wait(&h, &ctrl).expect("reset");
        let c = ctrl.clone();
        assert_eq!(h.on(0, move || c.identify_namespace(1)).expect("identify").nsze.get(), 4096);
        drop(ctrl);
    }

    /// A queue pair let go while the device does not answer its Delete I/O
    /// Submission Queue: the reactor goes on at once; the read still in the
    /// queue fails once the deletion has given up (the admin timeout), off
    /// the reactor. (The drop waited for the answer on the reactor, up to
    /// the admin timeout for each of the two commands.)
    #[test]
    fn an_unanswered_queue_deletion_leaves_the_reactor_free() {
        let opts = ControllerOptions { admin_timeout: Duration::from_secs(3), ..Default::default() };
        let s = setup("DelFree", 1, 5, false, opts);
        let (d, ch) = open(&s, "DelFreen1");
        s.fake.set_hold_io(true);
        let out: Done = Rc::default();
        let o = out.clone();
        s.h.on(0, || d.read(&ch, [buf(512, 0)], 0, 1, record(&o, 0)));
        run_until(&s.h, Duration::from_secs(10), || s.fake.held() == 1);
        s.fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::DELETE_IO_SQ));
        let t0 = Instant::now();
        s.h.on(0, move || drop((ch, d)));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(2), "the queue pair's drop waited {took:?} for the device");
        let c = s.ctrl.clone();
        assert!(s.h.on(0, move || pollux_core::io_channel::try_get_io_channel(&c).is_none()), "the queue pair went");
        // The read is not failed while the device may still write into its
        // buffer; then it is.
        assert!(out.borrow().is_empty());
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Aborted);
        assert!(t0.elapsed() >= Duration::from_secs(3), "failed before the deletion gave up");
    }

    /// A device that takes Create I/O Submission Queue and answers late:
    /// the reactor goes on at once (opening a channel created its queues
    /// there and then, up to the admin timeout for each command); the read
    /// waits for its queue and runs once it is there.
    #[test]
    fn a_slow_queue_creation_leaves_the_reactor_free() {
        let opts = ControllerOptions { admin_timeout: Duration::from_secs(3), ..Default::default() };
        let s = setup("CreSlow", 1, 5, false, opts);
        s.fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::CREATE_IO_SQ));
        let t0 = Instant::now();
        let (d, ch) = open(&s, "CreSlown1");
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(2), "opening a channel waited {took:?} for the device");
        // The reactor runs; the read waits while the device holds the queue.
        step_for(&s.h, Duration::from_millis(300));
        assert!(out.borrow().is_empty(), "the read ended before its queue was there");
        s.fake.with(|st| st.answer_held_admin());
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Success);
        assert_eq!(s.fake.with(|st| st.io_queue_ids()), vec![1]);
        s.h.on(0, move || drop((ch, d)));
        // Its queues go with the channel.
        run_until(&s.h, Duration::from_secs(5), || s.fake.with(|st| st.io_queue_ids()).is_empty());
    }

    /// Queues asked for before a reset are not created after it (the
    /// thread that creates them may start late): the queue pair is told,
    /// and asks again for the new controller.
    #[test]
    fn queues_asked_for_before_a_reset_are_not_created_after_it() {
        let s = setup("CreGen", 1, 5, false, ControllerOptions::default());
        let before = s.ctrl.generation();
        reset_and_wait(&s.h, &s.ctrl).expect("reset");
        let creates = || s.fake.counters(|c| c.admin_opcodes.get(&pollux_nvme_spec::cmd::admin::CREATE_IO_CQ).copied().unwrap_or(0));
        let n = creates();
        let spec = crate::controller::QueueSpec { qid: 1, entries: 16, cq_iova: 0x1000, sq_iova: 0x2000 };
        let c = s.ctrl.clone();
        let r = s.h.on(0, move || c.create_io_queues(before, spec));
        assert!(matches!(r, Err(crate::NvmeError::State(_))), "{r:?}");
        assert_eq!(creates(), n, "a queue was created for the controller before the reset");
        // The queue pair made now works.
        let (d, ch) = open(&s, "CreGenn1");
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Success);
        s.h.on(0, move || drop((ch, d)));
    }

    /// A device that never answers Create I/O Completion Queue: the read
    /// fails once the creation gives up (the admin timeout), off the
    /// reactor; once the device answers again, the next read creates the
    /// queues and succeeds.
    #[test]
    fn an_unanswered_queue_creation_fails_its_requests_and_is_tried_again() {
        let opts = ControllerOptions { admin_timeout: Duration::from_millis(1500), ..Default::default() };
        let s = setup("CreNone", 1, 5, false, opts);
        s.fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::CREATE_IO_CQ));
        let t0 = Instant::now();
        let (d, ch) = open(&s, "CreNonen1");
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        assert!(t0.elapsed() < Duration::from_secs(1), "the reactor waited {:?}", t0.elapsed());
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Failed);
        assert!(t0.elapsed() >= Duration::from_millis(1500), "failed before the creation gave up");
        s.fake.with(|st| st.hold_admin = None);
        read_block0(&s, &d, &ch, &out, 1);
        run_until_done(&s, &out, 2);
        assert_eq!(out.borrow()[1].1, IoStatus::Success);
        s.h.on(0, move || drop((ch, d)));
    }

    /// A channel let go while its queues are still being created: the drop
    /// returns at once; the read it held fails only once the device is
    /// done with the queues, which are deleted after their late creation.
    #[test]
    fn a_channel_dropped_during_queue_creation_deletes_the_queues_once_created() {
        let opts = ControllerOptions { admin_timeout: Duration::from_secs(3), ..Default::default() };
        let s = setup("CreDrop", 1, 5, false, opts);
        s.fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::CREATE_IO_SQ));
        let (d, ch) = open(&s, "CreDropn1");
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        run_until(&s.h, Duration::from_secs(5), || s.fake.with(|st| st.held_admin.len()) == 1);
        let t0 = Instant::now();
        s.h.on(0, move || drop((ch, d)));
        assert!(t0.elapsed() < Duration::from_secs(1), "the drop waited {:?}", t0.elapsed());
        let c = s.ctrl.clone();
        assert!(s.h.on(0, move || pollux_core::io_channel::try_get_io_channel(&c).is_none()), "the queue pair went");
        step_for(&s.h, Duration::from_millis(200));
        assert!(out.borrow().is_empty(), "failed while its queue was being created");
        s.fake.with(|st| st.answer_held_admin());
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Aborted);
        assert!(s.fake.with(|st| st.io_queue_ids()).is_empty(), "the queues created late were not deleted");
        assert_eq!(s.fake.counters(|c| c.io_commands), 0, "the read went to the device");
    }

    /// A reactor and a controller at `addr` that does not become ready
    /// until the test lets it (`hold_ready`).
    fn slow_to_be_ready(addr: &str) -> (Harness, Arc<FakeController>, Arc<dyn Registers>, crate::pci::PciAddress) {
        let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
        fake.with(|st| {
            st.cap_to = 20;
            st.hold_ready = true;
        });
        let regs: Arc<dyn Registers> = fake.clone();
        (Harness::new(1), fake, regs, addr.parse().expect("address"))
    }

    /// A controller slow to become ready at attach: the bring-up runs off
    /// the reactor (it held the reactor up to CAP.TO), its name and address
    /// are taken meanwhile, and it is registered on the reactor once up.
    #[test]
    fn a_slow_bring_up_leaves_the_reactor_free_and_holds_its_name() {
        let (h, fake, regs, addr) = slow_to_be_ready("0000:7f:1f.7");
        let done = Arc::new(Mutex::new(None));
        let d2 = done.clone();
        let t0 = Instant::now();
        h.on(0, move || {
            crate::bdev::bring_up(
                "Slow".into(),
                addr,
                move || Controller::start("Slow", regs, None, ControllerOptions::default()),
                move |r| *d2.lock().unwrap() = Some(r.and_then(|c| crate::bdev::add_controller(c, json!({"name": "Slow"})))),
            )
        });
        assert!(t0.elapsed() < Duration::from_secs(2), "the reactor waited {:?} for the bring-up", t0.elapsed());
        step_for(&h, Duration::from_millis(300));
        assert!(done.lock().unwrap().is_none(), "up before the controller was ready");
        let taken = h.on(0, move || (crate::bdev::name_taken("Slow"), crate::bdev::address_taken(addr), crate::bdev::name_taken("Other")));
        assert_eq!(taken, (true, true, false), "name and address taken while the bring-up runs");
        fake.with(|st| st.hold_ready = false);
        run_until(&h, Duration::from_secs(10), || done.lock().unwrap().is_some());
        let names = done.lock().unwrap().take().unwrap().expect("attached");
        assert_eq!(names, vec!["Slown1".to_string()]);
        assert!(h.on(0, || crate::bdev::controller("Slow").is_some() && bdev::get("Slown1").is_some()));
        assert!(h.on(0, || crate::bdev::name_taken("Slow")), "taken by the controller now");
        assert!(!crate::bdev::unclaimed("Slow"), "still listed for the exit hook once registered");
    }

    /// A controller that comes up once the reactors have stopped (the
    /// daemon stopped during its bring-up) is shut down at exit: the
    /// process waits for the bring-up, and the exit hook shuts down what no
    /// reactor took (it stayed enabled, its answer in a reactor's queue
    /// that no one would read).
    #[test]
    fn a_controller_up_after_the_reactors_stopped_is_shut_down_at_exit() {
        let (h, fake, regs, addr) = slow_to_be_ready("0000:7f:1f.5");
        h.on(0, move || {
            crate::bdev::bring_up("Late".into(), addr, move || Controller::start("Late", regs, None, ControllerOptions::default()), |_| {})
        });
        // The reactor is not stepped again: it has stopped.
        assert!(reactor::wait_before_exit(Duration::from_millis(200)) > 0, "the exit waits for the bring-up");
        fake.with(|st| st.hold_ready = false);
        let shst = || (fake.read32(pollux_nvme_spec::registers::offset::CSTS as usize).unwrap() >> 2) & 3;
        let t0 = Instant::now();
        while reactor::wait_before_exit(Duration::from_millis(100)) > 0 && t0.elapsed() < Duration::from_secs(10) {}
        assert_eq!(shst(), 0, "not shut down before the hook");
        assert!(crate::bdev::unclaimed("Late"), "listed for the exit hook");
        crate::bdev::shut_down_unclaimed_where(|c| c.name() == "Late");
        assert_eq!(shst(), 2, "CSTS.SHST: shutdown complete");
        drop(h);
    }

    /// A bring-up that fails gives its name back.
    #[test]
    fn a_failed_bring_up_frees_its_name() {
        let h = Harness::new(1);
        let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
        fake.remove();
        let regs: Arc<dyn Registers> = fake.clone();
        let addr: crate::pci::PciAddress = "0000:7f:1f.6".parse().expect("address");
        let done = Arc::new(Mutex::new(None));
        let d2 = done.clone();
        h.on(0, move || {
            crate::bdev::bring_up(
                "Gone2".into(),
                addr,
                move || Controller::start("Gone2", regs, None, ControllerOptions::default()),
                move |r| *d2.lock().unwrap() = Some(r.map(drop)),
            )
        });
        run_until(&h, Duration::from_secs(10), || done.lock().unwrap().is_some());
        assert!(done.lock().unwrap().take().unwrap().is_err());
        assert_eq!(h.on(0, move || (crate::bdev::name_taken("Gone2"), crate::bdev::address_taken(addr))), (false, false));
    }

    /// A channel let go while a controller reset is under way: until the
    /// reset has disabled the controller, the device may still complete
    /// into the queue pair's rings and move the data of what they held, so
    /// the read it held is failed (and its buffer handed back) only once
    /// the reset is over. (The drop failed it at once.)
    #[test]
    fn a_channel_dropped_during_a_reset_keeps_its_requests_until_the_reset_ends() {
        let s = setup_with("RstDrop", 1, 5, false, ControllerOptions::default(), |f| f.with(|st| st.cap_to = 20));
        let (d, ch) = open(&s, "RstDropn1");
        s.fake.set_hold_io(true);
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        run_until(&s.h, Duration::from_secs(10), || s.fake.held() == 1);
        // A reset that stays under way: the controller is slow to be ready.
        s.fake.with(|st| st.hold_ready = true);
        let c = s.ctrl.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        s.h.on(0, move || c.reset(move |r| tx.send(r).unwrap()));
        run_until(&s.h, Duration::from_secs(5), || s.ctrl.state() == State::Resetting);
        s.h.on(0, move || drop((ch, d)));
        step_for(&s.h, Duration::from_millis(300));
        assert!(out.borrow().is_empty(), "the read ended while the reset was under way");
        s.fake.with(|st| st.hold_ready = false);
        recv_stepping(&s.h, &rx).expect("reset");
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Aborted);
        // Its queue id is free again: a new channel gets queues and works.
        let (d, ch) = open(&s, "RstDropn1");
        s.fake.set_hold_io(false);
        read_block0(&s, &d, &ch, &out, 1);
        run_until_done(&s, &out, 2);
        assert_eq!(out.borrow()[1].1, IoStatus::Success);
        s.h.on(0, move || drop((ch, d)));
    }

    /// A queue pair let go while the controller is enabled, whose queue
    /// deletion a reset then refuses (the reset began while the deletion
    /// waited for the device): the queues are still at the device until
    /// the reset disables it, so what they held waits for the reset's end.
    /// (It was failed as soon as the deletion gave up.)
    #[test]
    fn a_queue_deletion_cut_short_by_a_reset_waits_for_the_reset() {
        let opts = ControllerOptions { admin_timeout: Duration::from_secs(1), ..Default::default() };
        let s = setup_with("DelRst", 1, 5, false, opts, |f| f.with(|st| st.cap_to = 20));
        let (d, ch) = open(&s, "DelRstn1");
        s.fake.set_hold_io(true);
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        run_until(&s.h, Duration::from_secs(10), || s.fake.held() == 1);
        s.fake.with(|st| st.hold_admin = Some(pollux_nvme_spec::cmd::admin::DELETE_IO_SQ));
        s.h.on(0, move || drop((ch, d)));
        run_until(&s.h, Duration::from_secs(5), || s.fake.with(|st| st.held_admin.len()) == 1);
        // A reset, slow to end (the controller slow to be ready), begins
        // while the deletion waits; it disables the controller once the
        // deletion has given up.
        s.fake.with(|st| st.hold_ready = true);
        let c = s.ctrl.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        s.h.on(0, move || c.reset(move |r| tx.send(r).unwrap()));
        let cc = || s.fake.read32(pollux_nvme_spec::registers::offset::CC as usize).unwrap();
        run_until(&s.h, Duration::from_secs(5), || cc() & 1 == 1 && s.ctrl.state() == State::Resetting && s.fake.with(|st| st.ready_held));
        step_for(&s.h, Duration::from_millis(300));
        assert!(out.borrow().is_empty(), "the read ended before the reset had disabled the controller");
        s.fake.with(|st| st.hold_ready = false);
        recv_stepping(&s.h, &rx).expect("reset");
        run_until_done(&s, &out, 1);
        assert_eq!(out.borrow()[0].1, IoStatus::Aborted);
    }

    /// A reset ends while another admin command holds the admin queue, so
    /// the queue pair cannot re-create its queues yet: its requests wait,
    /// and nothing goes to the queues the reset took. (The queue pair kept
    /// the old generation as connected: on every poll it requeued its
    /// requests and issued them into those rings again, ringing a doorbell
    /// the controller takes as an invalid write, until the ring was full
    /// (a debug assertion; in a release build the ring wrapped), and warned
    /// and counted a reconnect each time.)
    #[test]
    fn a_busy_admin_queue_after_a_reset_keeps_requests_off_the_queues_the_reset_took() {
        let s = setup("BusyRst", 1, 5, false, ControllerOptions::default());
        let (d, ch) = open(&s, "BusyRstn1");
        let out: Done = Rc::default();
        read_block0(&s, &d, &ch, &out, 0);
        run_until_done(&s, &out, 1);
        let features = || s.fake.counters(|c| c.admin_opcodes.get(&pollux_nvme_spec::cmd::admin::SET_FEATURES).copied().unwrap_or(0));
        let before = features();
        let c = s.ctrl.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        s.h.on(0, move || c.reset(move |r| tx.send(r).unwrap()));
        // The reset's thread re-enables the controller (the reactor not
        // stepped: its end is not seen yet); then another command takes the
        // admin queue.
        let t0 = Instant::now();
        while features() == before {
            assert!(t0.elapsed() < Duration::from_secs(10), "the reset did not re-enable the controller");
            std::thread::yield_now();
        }
        let held = s.ctrl.hold_admin_queue();
        read_block0(&s, &d, &ch, &out, 1);
        step_for(&s.h, Duration::from_millis(200));
        assert_eq!(s.ctrl.state(), State::Enabled, "the reset's end was seen");
        assert_eq!(s.fake.counters(|c| c.unknown_doorbells), 0, "commands went to the queues the reset took");
        assert_eq!(out.borrow().len(), 1, "the read ended without its queue");
        drop(held);
        recv_stepping(&s.h, &rx).expect("reset");
        run_until_done(&s, &out, 2);
        assert_eq!(out.borrow()[1].1, IoStatus::Success);
        let c = s.ctrl.clone();
        let reconnects = s.h.on(0, move || pollux_core::io_channel::try_get_io_channel(&c).map(|qp| qp.stats().reconnects));
        assert_eq!(reconnects, Some(1), "one reset, one reconnect");
        s.h.on(0, move || drop((ch, d)));
    }

    #[test]
    fn an_endless_active_namespace_list_is_refused() {
        let h = Harness::new(1);
        let fake = Arc::new(FakeController::new(1, 4096, 512, 5, false));
        fake.with(|st| st.endless_ns_list = true);
        let regs: Arc<dyn Registers> = fake.clone();
        let r = h.on(0, || Controller::start("Ns", regs, None, ControllerOptions::default()).map(|_| ()));
        assert!(r.as_ref().is_err_and(|e| e.to_string().contains("active namespace list")), "{r:?}");
    }
}
