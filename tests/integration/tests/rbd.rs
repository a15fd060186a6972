//! Ceph RBD images as bdevs, against a real single-node cluster the tests
//! start themselves: SPDK's client registers the cluster and attaches an
//! image; `pollux-perf -w verify` is clean at QD 1 and 32; bdev_get_bdevs,
//! bdev_rbd_get_clusters_info and save_config say what SPDK's do; refusals
//! name their cause; a cluster that goes away fails I/O (per the configured
//! timeout) without taking the application down, and the bdev can still
//! be deleted.

use std::time::{Duration, Instant};

use pollux_tests::ceph::Ceph;
use pollux_tests::{Daemon, DaemonOpts, TempDir, ok_stdout, perf_command, pollux_rpc, spdk_rpc, verify_run};
use serde_json::{Value, json};

fn json_out(what: &str, out: &std::process::Output) -> Value {
    let t = ok_stdout(what, out);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {t}"))
}

fn rpc_err(d: &Daemon, method: &str, params: Value) -> String {
    d.call(method, Some(params)).expect_err(method).to_string()
}

#[test]
fn spdk_client_attaches_an_rbd_image_and_verify_is_clean() {
    let ceph = Ceph::start();
    ceph.create_image("img0", 128);
    let d = Daemon::start(DaemonOpts::default());
    let (conf, key) = (ceph.conf.to_str().unwrap(), ceph.keyring.to_str().unwrap());
    let out = spdk_rpc(&d.socket, &["bdev_rbd_register_cluster", "c1", "--config-file", conf, "--key-file", key]);
    assert_eq!(ok_stdout("bdev_rbd_register_cluster", &out).trim(), "c1");
    let out = spdk_rpc(&d.socket, &["bdev_rbd_create", "rbd", "img0", "4096", "-b", "Rbd0", "-c", "c1"]);
    assert_eq!(ok_stdout("bdev_rbd_create", &out).trim(), "Rbd0");

    let b = json_out("bdev_get_bdevs", &spdk_rpc(&d.socket, &["bdev_get_bdevs", "-b", "Rbd0"]));
    assert_eq!(b[0]["num_blocks"], 32768, "{b}");
    assert_eq!(b[0]["block_size"], 4096);
    assert_eq!(b[0]["product_name"], "Ceph Rbd Disk");
    let rbd = &b[0]["driver_specific"]["rbd"];
    assert_eq!(
        (rbd["pool_name"].clone(), rbd["rbd_name"].clone(), rbd["config_file"].clone()),
        (json!("rbd"), json!("img0"), json!(conf)),
        "{b}"
    );
    let info = json_out("bdev_rbd_get_clusters_info", &spdk_rpc(&d.socket, &["bdev_rbd_get_clusters_info"]));
    assert_eq!(info, json!([{"cluster_name": "c1", "config_file": conf, "key_file": key}]));
    let one = json_out("bdev_rbd_get_clusters_info -b c1", &spdk_rpc(&d.socket, &["bdev_rbd_get_clusters_info", "-b", "c1"]));
    assert_eq!(one["cluster_name"], "c1");

    // save_config: the cluster is registered before the bdev that uses it.
    let saved = json_out("save_config", &spdk_rpc(&d.socket, &["save_config"]));
    let bdev_cfg = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone();
    let calls: Vec<&Value> = bdev_cfg.as_array().unwrap().iter().collect();
    let at = |m: &str| calls.iter().position(|c| c["method"] == m).unwrap_or_else(|| panic!("{m} missing: {bdev_cfg}"));
    assert!(at("bdev_rbd_register_cluster") < at("bdev_rbd_create"), "{bdev_cfg}");
    let create = &calls[at("bdev_rbd_create")]["params"];
    assert_eq!((create["cluster_name"].clone(), create["block_size"].clone()), (json!("c1"), json!(4096)), "{create}");

    // Refusals name what is wrong.
    let e = rpc_err(&d, "bdev_rbd_unregister_cluster", json!({"name": "c1"}));
    assert!(e.contains("in use"), "{e}");
    let e = rpc_err(
        &d,
        "bdev_rbd_create",
        json!({"name": "X", "cluster_name": "c1", "pool_name": "nopool", "rbd_name": "img0", "block_size": 512}),
    );
    assert!(e.contains("nopool") && e.contains("No such file"), "{e}");
    let e = rpc_err(
        &d,
        "bdev_rbd_create",
        json!({"name": "X", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "nope", "block_size": 512}),
    );
    assert!(e.contains("image nope") && e.contains("No such file"), "{e}");
    let e = rpc_err(&d, "bdev_rbd_create", json!({"cluster_name": "c9", "pool_name": "rbd", "rbd_name": "img0", "block_size": 512}));
    assert!(e.contains("c9") && e.contains("not registered"), "{e}");
    let e = rpc_err(&d, "bdev_rbd_create", json!({"cluster_name": "c1", "pool_name": "rbd", "rbd_name": "img0", "block_size": 1000}));
    assert!(e.contains("block_size"), "{e}");
    let e = rpc_err(&d, "bdev_rbd_register_cluster", json!({"name": "c1", "config_file": conf}));
    assert!(e.contains("already registered"), "{e}");
    let e = rpc_err(&d, "bdev_rbd_register_cluster", json!({"name": "c2", "config_param": "mon_host=1.2.3.4"}));
    assert!(e.contains("config_param"), "{e}");

    // A connection of the bdev's own (no registered cluster): `config`.
    let mon_host =
        std::fs::read_to_string(&ceph.conf).unwrap().lines().find_map(|l| l.strip_prefix("mon_host = ").map(str::to_string)).unwrap();
    let (mon, keyring) = (format!("mon_host={mon_host}"), format!("keyring={key}"));
    let args = ["bdev_rbd_create", "rbd", "img0", "512", "-b", "Own", "--config", &mon, "--config", &keyring, "-r"];
    assert_eq!(ok_stdout("pollux-rpc bdev_rbd_create", &pollux_rpc(&d.socket, &args)).trim(), "Own");
    let b = d.call("bdev_get_bdevs", Some(json!({"name": "Own"}))).unwrap();
    assert_eq!(b[0]["num_blocks"], 262144);
    assert_eq!(b[0]["driver_specific"]["rbd"]["config"]["mon_host"], json!(mon_host));
    assert!(!b[0]["supported_io_types"]["write"].as_bool().unwrap_or(true), "read_only: {b}");

    ok_stdout("bdev_rbd_delete", &spdk_rpc(&d.socket, &["bdev_rbd_delete", "Own"]));
    ok_stdout("bdev_rbd_delete", &spdk_rpc(&d.socket, &["bdev_rbd_delete", "Rbd0"]));
    ok_stdout("bdev_rbd_unregister_cluster", &spdk_rpc(&d.socket, &["bdev_rbd_unregister_cluster", "c1"]));
    let e = rpc_err(&d, "bdev_rbd_get_clusters_info", json!({}));
    assert!(e.contains("no cluster"), "{e}");
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));

    // pollux-perf verifies on the image at QD 1 and 32, 4 KiB and 64 KiB.
    let dir = TempDir::new("rbd-perf");
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_rbd_register_cluster", "params": ceph.cluster_params("c1")},
        {"method": "bdev_rbd_create", "params": {"name": "Rbd0", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "img0", "block_size": 512}},
    ]}]});
    for (qd, size) in [(1, 4096), (32, 4096), (32, 65536)] {
        let r = verify_run(&dir, &cfg, "Rbd0", qd, size, 2, &format!("rbd verify QD {qd}, {size} bytes"));
        assert!(r["total"]["ios"].as_u64().unwrap() > 50, "{r}");
    }
}

#[test]
fn a_cluster_that_goes_away_fails_io_and_the_bdev_can_still_be_deleted() {
    let mut ceph = Ceph::start();
    ceph.create_image("img1", 64);
    let dir = TempDir::new("rbd-gone");
    // Requests to an OSD that is gone fail after 3 s instead of waiting.
    let mut cluster = ceph.cluster_params("c1");
    cluster["config_param"] = json!({"rados_osd_op_timeout": "3"});
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_rbd_register_cluster", "params": cluster},
        {"method": "bdev_rbd_create", "params": {"name": "Rbd1", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "img1", "block_size": 512}},
    ]}]});
    let d = Daemon::start(DaemonOpts { config: Some(cfg.clone()), ..Default::default() });
    let perf = perf_command(&dir, &cfg, &["-b", "Rbd1", "-q", "8", "-o", "4096", "-w", "randwrite", "-t", "12", "-m", "0x1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pollux-perf");
    let perf_sock = dir.join("perf.sock");
    // Until pollux-perf serves RPC, and while it starts, this reads 0.
    let writes = || -> u64 {
        let Ok(mut c) = pollux_core::rpc::Client::connect(&perf_sock) else { return 0 };
        let v = c.call("bdev_get_iostat", Some(json!({"name": "Rbd1"}))).unwrap_or_default();
        v["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
    };
    let t0 = Instant::now();
    while writes() < 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "pollux-perf never got going");
        std::thread::sleep(Duration::from_millis(100));
    }
    ceph.stop_osd();
    let out = perf.wait_with_output().expect("pollux-perf");
    let err = String::from_utf8_lossy(&out.stderr);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no report ({e}): {err}"));
    assert!(r["total"]["errors"].as_u64().unwrap() > 0, "writes to a stopped OSD did not fail: {r}\n{err}");
    assert!(err.contains("Connection timed out") || err.contains("timed out"), "the errno is named in the log: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // The daemon is still up; its bdev can be deleted, the cluster
    // unregistered, and it stops cleanly.
    assert_eq!(d.call("bdev_rbd_delete", Some(json!({"name": "Rbd1"}))).unwrap(), json!(true));
    assert_eq!(d.call("bdev_rbd_unregister_cluster", Some(json!({"name": "c1"}))).unwrap(), json!(true));
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `bdev_rbd_resize`, and a resize by another Ceph client, grow the bdev;
/// an NVMe-oF host of it gets a namespace attribute notice and reads the
/// new size; shrinking is refused.
#[test]
fn rbd_bdev_grows_with_its_image_and_nvmf_hosts_see_it() {
    use pollux_tests::nvmf_client::{Client, Sqe};
    let ceph = Ceph::start();
    ceph.create_image("img2", 64);
    let port = pollux_tests::free_port();
    let nqn = "nqn.2016-06.io.pollux:rbd";
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_rbd_register_cluster", "params": ceph.cluster_params("c1")},
            {"method": "bdev_rbd_create", "params": {"name": "Rbd2", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "img2", "block_size": 4096}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": {"bdev_name": "Rbd2", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]});
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    let blocks = |d: &Daemon| d.call("bdev_get_bdevs", Some(json!({"name": "Rbd2"}))).unwrap()[0]["num_blocks"].as_u64().unwrap();
    assert_eq!(blocks(&d), 16384);
    let (mut a, _) = Client::admin(port, nqn, 0, false, false);
    let nsze = |a: &mut Client| u64::from_le_bytes(a.identify(0, 1).1[0..8].try_into().unwrap());
    assert_eq!(nsze(&mut a), 16384);
    // Namespace attribute notices on (AEC bit 8), and an AER waiting.
    let cid = a.cid();
    assert!(a.command(Sqe::new(0x09, cid).dw(10, 0x0b).dw(11, 1 << 8), &[], false).0.ok());
    let aer = a.cid();
    a.send_capsule(&Sqe::new(0x0c, aer), &[]);

    let out = spdk_rpc(&d.socket, &["bdev_rbd_resize", "Rbd2", "128"]);
    ok_stdout("bdev_rbd_resize", &out);
    assert_eq!(blocks(&d), 32768);
    let ev = a.recv().expect("a namespace attribute notice").cqe();
    assert_eq!((ev.cid, ev.dw0 & 0xff_ffff), (aer, 0x04_0002), "{ev:?}");
    assert_eq!(nsze(&mut a), 32768, "Identify reports the new size");

    // Another client grows the image: the bdev follows.
    ceph.rbd(&["resize", "--size", "192M", "rbd/img2"]);
    wait_for("the bdev to follow the image", || blocks(&d) == 49152);
    let e = rpc_err(&d, "bdev_rbd_resize", json!({"name": "Rbd2", "new_size": 64}));
    assert!(e.contains("only grow"), "{e}");
    assert_eq!(blocks(&d), 49152);
    drop(a);
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}
