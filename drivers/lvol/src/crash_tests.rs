//! Crash consistency: a disk that stops persisting writes after the Nth
//! one, for every N over a run that creates a store and volumes, writes to
//! thin volumes for the first time, snapshots, clones, resizes and
//! deletes. What the disk kept must load (or hold no store at all, before
//! the first super block), with no cluster owned twice, and pass the
//! independent checker of SPDK's format (tests/integration/tools/lvs-check).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pollux_core::bdev::{self, Backend, BackendChannel, BdevIo, BdevSpec, IoStatus, IoType};
use pollux_core::dma;
use pollux_core::reactor::{Harness, task};
use serde_json::{Value, json};

use crate::lvs;
use crate::rpc::call;

const BS: u64 = 512;
const SIZE: usize = 24 << 20;

/// What the system sees, and what survives the crash: writes up to
/// `limit` reach both, later ones only the first.
struct Disk {
    live: Mutex<Vec<u8>>,
    kept: Mutex<Vec<u8>>,
    writes: AtomicUsize,
    limit: usize,
}

struct DiskBackend(Arc<Disk>);

impl Backend for DiskBackend {
    fn module_name(&self) -> &'static str {
        "crash_disk"
    }
    fn product_name(&self) -> &'static str {
        "Crash disk"
    }
    fn supports(&self, kind: IoType) -> bool {
        !matches!(kind, IoType::Compare)
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(DiskChannel(self.0.clone()))
    }
}

struct DiskChannel(Arc<Disk>);

impl BackendChannel for DiskChannel {
    fn submit(&self, mut io: BdevIo) {
        let d = &self.0;
        let (off, len) = (io.offset_bytes() as usize, io.len_bytes() as usize);
        let mut change: Option<Vec<u8>> = None;
        match io.kind() {
            IoType::Read => {
                let data = d.live.lock().unwrap()[off..off + len].to_vec();
                io.copy_in(0, &data);
            }
            IoType::Write => {
                let mut tmp = vec![0u8; len];
                io.copy_out(0, &mut tmp);
                change = Some(tmp);
            }
            IoType::WriteZeroes | IoType::Unmap => change = Some(vec![0u8; len]),
            _ => {}
        }
        if let Some(bytes) = change {
            d.live.lock().unwrap()[off..off + len].copy_from_slice(&bytes);
            if d.writes.fetch_add(1, Ordering::SeqCst) < d.limit {
                d.kept.lock().unwrap()[off..off + len].copy_from_slice(&bytes);
            }
        }
        io.complete(IoStatus::Success);
    }
}

fn register(h: &Harness, name: &str, disk: &Arc<Disk>) {
    let backend: Arc<dyn Backend> = Arc::new(DiskBackend(disk.clone()));
    let name = name.to_string();
    h.on(0, move || bdev::register(BdevSpec { name, block_size: BS as u32, num_blocks: SIZE as u64 / BS, uuid: None, backend }).unwrap());
}

/// Run `f` as a task on reactor 0 of `h` until it finishes.
fn run<T: 'static>(h: &Harness, f: impl std::future::Future<Output = T> + 'static) -> T {
    let out: Rc<RefCell<Option<T>>> = Rc::default();
    let o = out.clone();
    h.on(0, move || task::spawn_local(async move { *o.borrow_mut() = Some(f.await) }));
    for _ in 0..1_000_000 {
        if out.borrow().is_some() {
            break;
        }
        h.step_all();
    }
    let v = out.borrow_mut().take();
    v.expect("the task did not finish")
}

/// Write `len` bytes of `fill` at byte `at` of bdev `name` through the bdev layer.
async fn write(name: &str, at: u64, len: usize, fill: u8) -> IoStatus {
    let d = bdev::open(name, true, |_| {}).unwrap();
    let ch = d.channel();
    let mut b = dma::pool().unwrap().get(len).unwrap();
    b.fill(fill);
    let s = task::Slot::new();
    let s2 = s.clone();
    d.write(&ch, [b], at / BS, len as u64 / BS, move |io| s2.set(io.status()));
    let st = s.await;
    // The descriptor closes by a message to this reactor: let it run
    // (a resize down refuses a bdev still open). The task's wake-up is a
    // message too, queued after it.
    drop((ch, d));
    YieldOnce(false).await;
    st
}

/// Pending once, waking itself: the task runs again after the messages
/// already queued on its reactor.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The run whose every write may be the last to persist.
fn scenario(h: &Harness) {
    run(h, async {
        let steps: Vec<(&str, Value)> = vec![
            ("bdev_lvol_create_lvstore", json!({"bdev_name": "d0", "lvs_name": "lvs", "cluster_sz": 1 << 20})),
            ("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "thick", "size_in_mib": 3})),
            ("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "thin", "size_in_mib": 6, "thin_provision": true})),
        ];
        for (m, p) in steps {
            call(m, p).await.unwrap_or_else(|e| panic!("{m}: {e:?}"));
        }
        assert_eq!(write("lvs/thin", 4096, 8192, 0x11).await, IoStatus::Success);
        assert_eq!(write("lvs/thin", (3 << 20) + 512, 4096, 0x22).await, IoStatus::Success);
        let steps: Vec<(&str, Value)> = vec![
            ("bdev_lvol_snapshot", json!({"lvol_name": "lvs/thin", "snapshot_name": "snap"})),
            ("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "clone"})),
        ];
        for (m, p) in steps {
            call(m, p).await.unwrap_or_else(|e| panic!("{m}: {e:?}"));
        }
        assert_eq!(write("lvs/clone", 8192, 4096, 0x33).await, IoStatus::Success);
        assert_eq!(write("lvs/thin", 4096, 4096, 0x44).await, IoStatus::Success);
        let steps: Vec<(&str, Value)> = vec![
            ("bdev_lvol_resize", json!({"name": "lvs/thick", "size_in_mib": 5})),
            ("bdev_lvol_resize", json!({"name": "lvs/clone", "size_in_mib": 4})),
            ("bdev_lvol_rename", json!({"old_name": "lvs/thick", "new_name": "fat"})),
            ("bdev_lvol_delete", json!({"name": "lvs/fat"})),
            // snap has two clones; with one left it merges into it.
            ("bdev_lvol_delete", json!({"name": "lvs/clone"})),
            ("bdev_lvol_delete", json!({"name": "lvs/snap"})),
            ("bdev_lvol_snapshot", json!({"lvol_name": "lvs/thin", "snapshot_name": "snap2"})),
            ("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap2", "clone_name": "c2"})),
        ];
        for (m, p) in steps {
            call(m, p).await.unwrap_or_else(|e| panic!("{m}: {e:?}"));
        }
        assert_eq!(write("lvs/c2", 4096, 4096, 0x55).await, IoStatus::Success);
        let steps: Vec<(&str, Value)> = vec![
            ("bdev_lvol_inflate", json!({"name": "lvs/c2"})),
            ("bdev_lvol_decouple_parent", json!({"name": "lvs/thin"})),
            ("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "t3", "size_in_mib": 6, "thin_provision": true})),
            ("bdev_lvol_set_parent", json!({"lvol_name": "lvs/t3", "parent_name": "lvs/snap2"})),
            ("bdev_lvol_delete", json!({"name": "lvs/t3"})),
            ("bdev_lvol_delete", json!({"name": "lvs/snap2"})),
        ];
        for (m, p) in steps {
            call(m, p).await.unwrap_or_else(|e| panic!("{m}: {e:?}"));
        }
    });
}

/// A volume of 600 clusters of 16 KiB: two extent pages, written in
/// both, shrunk into the first and grown again.
fn wide_scenario(h: &Harness) {
    run(h, async {
        call(
            "bdev_lvol_create_lvstore",
            json!({"bdev_name": "d0", "lvs_name": "lvs", "cluster_sz": 16384, "num_md_pages_per_cluster_ratio": 5}),
        )
        .await
        .unwrap();
        call(
            "bdev_lvol_create",
            json!({"lvs_name": "lvs", "lvol_name": "wide", "size_in_mib": 600 * 16384 / (1 << 20) + 1, "thin_provision": true}),
        )
        .await
        .unwrap();
        assert_eq!(write("lvs/wide", 10 * 16384, 4096, 0x61).await, IoStatus::Success);
        assert_eq!(write("lvs/wide", 550 * 16384, 4096, 0x62).await, IoStatus::Success);
        for (m, p) in [
            ("bdev_lvol_resize", json!({"name": "lvs/wide", "size_in_mib": 5})),
            ("bdev_lvol_resize", json!({"name": "lvs/wide", "size_in_mib": 10})),
        ] {
            call(m, p).await.unwrap_or_else(|e| panic!("{m}: {e:?}"));
        }
        assert_eq!(write("lvs/wide", 600 * 16384, 4096, 0x63).await, IoStatus::Success);
    });
}

/// A store made on the first half of the disk, grown to all of it
/// (`bdev_lvol_grow_lvstore` after the bdev grew), then filled past its
/// old size.
fn grow_scenario(h: &Harness) {
    h.on(0, || bdev::notify_blockcnt_change("d0", SIZE as u64 / 2 / BS).unwrap());
    run(h, async {
        call("bdev_lvol_create_lvstore", json!({"bdev_name": "d0", "lvs_name": "lvs", "cluster_sz": 1 << 20})).await.unwrap();
        call("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "a", "size_in_mib": 6})).await.unwrap();
        assert_eq!(write("lvs/a", 4096, 4096, 0x71).await, IoStatus::Success);
        let e = call("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "b", "size_in_mib": 10})).await.unwrap_err();
        assert_eq!(e.code, -libc::ENOSPC, "{e:?}");
        bdev::notify_blockcnt_change("d0", SIZE as u64 / BS).unwrap();
        assert_eq!(call("bdev_lvol_grow_lvstore", json!({"lvs_name": "lvs"})).await.unwrap(), json!(true));
        call("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "b", "size_in_mib": 10})).await.unwrap();
        assert_eq!(write("lvs/b", 9 << 20, 4096, 0x72).await, IoStatus::Success);
    });
}

fn crash_at(limit: usize) -> (Vec<u8>, usize) {
    crash_run(limit, scenario)
}

fn crash_run(limit: usize, scenario: fn(&Harness)) -> (Vec<u8>, usize) {
    let disk = Arc::new(Disk { live: Mutex::new(vec![0; SIZE]), kept: Mutex::new(vec![0; SIZE]), writes: AtomicUsize::new(0), limit });
    let h = Harness::new(1);
    register(&h, "d0", &disk);
    scenario(&h);
    lvs::forget_all();
    drop(h);
    let kept = disk.kept.lock().unwrap().clone();
    (kept, disk.writes.load(Ordering::SeqCst))
}

/// Load what a crash kept, and check it with Pollux's loader and SPDK's
/// format checker.
fn reload_and_check(image: Vec<u8>, n: usize, dir: &std::path::Path) {
    let disk =
        Arc::new(Disk { live: Mutex::new(image.clone()), kept: Mutex::new(image.clone()), writes: AtomicUsize::new(0), limit: usize::MAX });
    let h = Harness::new(1);
    register(&h, "r0", &disk);
    let loaded = run(&h, async { lvs::load("r0").await.map(|l| l.map(|l| (l.name.borrow().clone(), l.lvols.borrow().len()))) });
    let has_super = &image[0..8] == b"SPDKBLOB";
    match loaded {
        Ok(Some((name, _))) => assert_eq!(name, "lvs"),
        Ok(None) => assert!(!has_super, "crash after write {n}: a super block that does not load"),
        Err(e) => {
            // The store's super blob may not exist yet: a store not finished.
            let msg = e.to_string();
            assert!(msg.contains("no super blob") || msg.contains("has no name"), "crash after write {n}: the store does not load: {e}");
        }
    }
    lvs::forget_all();
    drop(h);
    if has_super {
        let path = dir.join(format!("crash-{n}.img"));
        std::fs::write(&path, &image).unwrap();
        let checker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/integration/tools/lvs-check");
        let out = std::process::Command::new("python3")
            .arg(checker)
            .arg(&path)
            .args(["--block-size", "512", "--json"])
            .output()
            .expect("python3");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("crash after write {n}: no report ({e})"));
        // Before the super blob exists the checker sees no lvol store; once it does,
        // nothing may be owned twice, lie outside the store, or be broken.
        let errors: Vec<&Value> = report["errors"]
            .as_array()
            .map(|a| a.iter().filter(|e| !e.as_str().unwrap_or("").contains("super blob")).collect())
            .unwrap_or_default();
        assert!(errors.is_empty(), "crash after write {n}: the checker finds {errors:#?}\n{report:#}");
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn every_crash_point_leaves_a_store_that_loads_and_checks() {
    let (_, total) = crash_at(usize::MAX);
    assert!(total > 30, "the run made only {total} writes");
    let dir = std::env::temp_dir().join(format!("pollux-lvol-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0..=total {
        let (image, _) = crash_at(n);
        reload_and_check(image, n, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_crash_point_of_resizes_across_extent_pages_leaves_a_store_that_loads() {
    let (_, total) = crash_run(usize::MAX, wide_scenario);
    assert!(total > 10, "the run made only {total} writes");
    let dir = std::env::temp_dir().join(format!("pollux-lvol-crash-wide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0..=total {
        let (image, _) = crash_run(n, wide_scenario);
        reload_and_check(image, n, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_crash_point_of_a_grow_leaves_a_store_that_loads() {
    let (image, total) = crash_run(usize::MAX, grow_scenario);
    assert!(total > 10, "the run made only {total} writes");
    // Everything kept: the store is the whole disk, both volumes in it.
    let disk = Arc::new(Disk { live: Mutex::new(image.clone()), kept: Mutex::new(image), writes: AtomicUsize::new(0), limit: usize::MAX });
    let h = Harness::new(1);
    register(&h, "r0", &disk);
    let info = run(&h, async {
        let l = lvs::load("r0").await.unwrap().expect("a store");
        (l.info(), l.lvols.borrow().len())
    });
    assert_eq!(info.1, 2);
    assert_eq!(info.0["total_data_clusters"], json!(23), "{:#}", info.0);
    assert_eq!(info.0["free_clusters"], json!(23 - 16), "{:#}", info.0);
    lvs::forget_all();
    drop(h);
    let dir = std::env::temp_dir().join(format!("pollux-lvol-crash-grow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0..=total {
        let (image, _) = crash_run(n, grow_scenario);
        reload_and_check(image, n, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A base being removed takes no new I/O from its volumes either. The
/// layer's fast path sends a volume's reads and writes straight to the
/// base without looking at the base's state per request, so the store
/// stops it when it hears of the removal; the volumes themselves go one
/// at a time, each once its users close it. Found in review: without the
/// stop, the volume still waiting its turn read from the base going away.
#[test]
fn a_base_being_removed_takes_no_new_io_from_its_volumes() {
    use pollux_core::bdev::{Bdev, Descriptor};
    use pollux_core::io_channel::IoChannel;
    use pollux_core::reactor;
    type Held = Vec<(Descriptor, IoChannel<Bdev>)>;
    let disk =
        Arc::new(Disk { live: Mutex::new(vec![0; SIZE]), kept: Mutex::new(vec![0; SIZE]), writes: AtomicUsize::new(0), limit: usize::MAX });
    let h = Harness::new(1);
    register(&h, "d0", &disk);
    run(&h, async {
        call("bdev_lvol_create_lvstore", json!({"bdev_name": "d0", "lvs_name": "lvs", "cluster_sz": 1 << 20})).await.unwrap();
        for v in ["a", "b"] {
            call("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": v, "size_in_mib": 4})).await.unwrap();
        }
    });
    // Both volumes held open, so that the first to go waits for us and
    // the other is still there.
    h.on(0, || {
        let held: Held = ["lvs/a", "lvs/b"]
            .iter()
            .map(|n| {
                let d = bdev::open(n, true, |_| {}).unwrap();
                let ch = d.channel();
                (d, ch)
            })
            .collect();
        reactor::set_local(Rc::new(held));
    });
    let reads = |h: &Harness| {
        run(h, async {
            let held = reactor::local::<Held>().unwrap();
            let mut out = Vec::new();
            for (d, ch) in held.iter() {
                let b = dma::pool().unwrap().get(4096).unwrap();
                let s = task::Slot::new();
                let s2 = s.clone();
                d.read(ch, [b], 8, 8, move |io| s2.set(io.status()));
                out.push(s.await);
            }
            out
        })
    };
    assert_eq!(reads(&h), [IoStatus::Success, IoStatus::Success]);
    h.on(0, || bdev::unregister("d0", |_| {}));
    for _ in 0..1000 {
        h.step_all();
    }
    let waiting = run(&h, async { ["lvs/a", "lvs/b"].iter().filter(|n| bdev::open(n, false, |_| {}).is_ok()).count() });
    assert_eq!(waiting, 1, "one volume is still there, waiting its turn");
    assert_eq!(reads(&h), [IoStatus::NoDevice, IoStatus::NoDevice], "reads of both volumes once their base is going");
    h.on(0, || drop(reactor::take_local::<Held>()));
    for _ in 0..1000 {
        h.step_all();
    }
    lvs::forget_all();
    drop(h);
}
