//! Ceph RBD images as bdevs, against a real single-node cluster the tests
//! start themselves: SPDK's client registers the cluster and attaches an
//! image; `pollux-perf -w verify` is clean at QD 1 and 32; bdev_get_bdevs,
//! bdev_rbd_get_clusters_info and save_config say what SPDK's do; refusals
//! name their cause; a cluster that goes away fails I/O (per the configured
//! timeout) without taking the application down, and the bdev can still
//! be deleted.

use std::time::{Duration, Instant};

use pollux_tests::ceph::Ceph;
use pollux_tests::{
    Daemon, DaemonOpts, TempDir, bdev_ops, ok_stdout, perf_command, pollux_rpc, set_listener_ana, spdk_rpc, verify_run, wait_until,
};
use serde_json::{Value, json};

fn json_out(what: &str, out: &std::process::Output) -> Value {
    let t = ok_stdout(what, out);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {t}"))
}

/// (thread name, scheduling policy) of each thread of a process
/// (`/proc/PID/task/*/stat`, field 41).
fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(t.unwrap().path().join("stat")) else { continue };
        let (head, tail) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_string();
        // Fields from the state (3rd) on: policy is the 41st.
        let policy = tail.split_whitespace().nth(41 - 3).unwrap().parse().unwrap();
        v.push((name, policy));
    }
    v
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

    // Interrupt mode: librados' threads do not preempt the reactor when
    // woken (SCHED_BATCH), the reactor keeps SCHED_OTHER.
    let policies = thread_policies(d.pid());
    let of = |prefix: &str| policies.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, p)| *p).collect::<Vec<_>>();
    assert!(!of("msgr-worker").is_empty() && !of("io_context_pool").is_empty(), "{policies:?}");
    assert!(of("msgr-worker").iter().chain(&of("io_context_pool")).all(|&p| p == libc::SCHED_BATCH), "{policies:?}");
    assert_eq!(of("pollux-tgt"), [libc::SCHED_OTHER], "{policies:?}");

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

    // Busy polling: librados' threads keep SCHED_OTHER (a reactor that
    // never sleeps must be preempted by them at once, not at the tick).
    let d = Daemon::start(DaemonOpts { interrupt_mode: false, ..DaemonOpts::default() });
    d.call("bdev_rbd_register_cluster", Some(ceph.cluster_params("c1"))).unwrap();
    let policies = thread_policies(d.pid());
    assert!(policies.iter().any(|(n, _)| n.starts_with("msgr-worker")), "{policies:?}");
    assert!(policies.iter().all(|(_, p)| *p == libc::SCHED_OTHER), "{policies:?}");
    // The registered cluster is shut down before the process ends (it was
    // left to the process's exit, with librados' threads running, and this
    // daemon once died of a signal on SIGTERM).
    let (st, log) = d.stop_with_log();
    assert_eq!(st.code(), Some(0));
    assert!(log.contains("rbd: cluster c1 shut down at exit"), "{log}");

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
    // librbd dispatching on the reactor (rbd_non_blocking_aio false, where
    // Pollux lifts the Objecter's throttle): the same data, verified.
    let mut params = ceph.cluster_params("c1");
    params["config_param"] = json!({"rbd_non_blocking_aio": "false"});
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_rbd_register_cluster", "params": params},
        {"method": "bdev_rbd_create", "params": {"name": "Rbd0", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "img0", "block_size": 512}},
    ]}]});
    for size in [4096, 65536] {
        let r = verify_run(&dir, &cfg, "Rbd0", 32, size, 2, &format!("rbd verify, librbd dispatching on the reactor, QD 32, {size} bytes"));
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
    wait_until("the bdev to follow the image", Duration::from_secs(60), || blocks(&d) == 49152);
    let e = rpc_err(&d, "bdev_rbd_resize", json!({"name": "Rbd2", "new_size": 64}));
    assert!(e.contains("only grow"), "{e}");
    assert_eq!(blocks(&d), 49152);
    drop(a);
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}

// ---- Failover between two gateways in front of one RBD image ----

/// Ports on the host, below the range `free_port` hands out; the guest
/// reaches the host's 127.0.0.1 as 10.0.2.2.
const GW_A: u16 = 14430;
const GW_B: u16 = 14431;
/// The host listens here once it has done every step; the guest's I/O
/// runs until then.
const DONE_PORT: u16 = 14432;
const GW_NQN: &str = "nqn.2016-06.io.pollux:rbd-gateway";
const GW_SERIAL: &str = "POLLUXRBDGW01";
const GW_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c2a-9b7d-4c3e-8f6a-1d2c3b4a5f60";

fn rbd_gateway(ceph: &Ceph, port: u16, state: &str, cntlids: (u16, u16)) -> Daemon {
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_rbd_register_cluster", "params": ceph.cluster_params("c1")},
            {"method": "bdev_rbd_create", "params": {"name": "Shared", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "shared", "block_size": 512}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": GW_NQN, "serial_number": GW_SERIAL, "allow_any_host": true,
                "ana_reporting": true, "min_cntlid": cntlids.0, "max_cntlid": cntlids.1}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": GW_NQN, "namespace": {"bdev_name": "Shared", "nsid": 1, "uuid": "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a9f"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": GW_NQN, "ana_state": state,
                "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]});
    Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() })
}

fn guest_path(port: u16) -> Option<(String, String)> {
    pollux_tests::kernel_nvme_path(GW_NQN, port)
}

/// The guest's part: Linux's multipath host connects to both gateways and
/// runs data-verifying fio jobs until the host says it is done.
fn failover_guest() {
    pollux_tests::tool("nvme", "nvme-cli");
    pollux_tests::tool("fio", "fio");
    for m in ["nvme-tcp", "nvme-fabrics", "crc32c_generic"] {
        pollux_tests::sh(&format!("modprobe {m}"));
    }
    for port in [GW_A, GW_B] {
        let out = std::process::Command::new("nvme")
            .args([
                "connect",
                "-t",
                "tcp",
                "-a",
                "10.0.2.2",
                "-s",
                &port.to_string(),
                "-n",
                GW_NQN,
                "--hostnqn",
                GW_HOST,
                "-c",
                "1",
                "-l",
                "120",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "connect to {port}: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_until("both paths live", Duration::from_secs(60), || {
        guest_path(GW_A) == Some(("live".into(), "optimized".into())) && guest_path(GW_B) == Some(("live".into(), "non-optimized".into()))
    });
    let list: Value =
        serde_json::from_str(&ok_stdout("nvme list", &std::process::Command::new("nvme").args(["list", "-o", "json"]).output().unwrap()))
            .unwrap();
    let devs: Vec<&Value> = list["Devices"].as_array().unwrap().iter().filter(|d| d["SerialNumber"] == GW_SERIAL).collect();
    assert_eq!(devs.len(), 1, "one multipath device over both gateways: {list}");
    let dev = devs[0]["DevicePath"].as_str().unwrap().to_string();
    let done = || std::net::TcpStream::connect(("10.0.2.2", DONE_PORT)).is_ok();
    let mut jobs = 0;
    loop {
        // 32 MiB written and read back, verified, rate-limited so that the
        // host's steps fall inside a job.
        let offset = format!("--offset={}M", (jobs % 4) * 32);
        let args = ["--rw=write", "--bs=64k", "--iodepth=8", "--size=32M", &offset, "--rate=4m"];
        pollux_tests::fio_verify(&format!("failover-{jobs}"), &dev, &args, 32 << 20);
        jobs += 1;
        if done() {
            break;
        }
        assert!(jobs < 40, "the host never said it was done");
    }
    // A's path is back, live and optimized.
    wait_until("A's path back", Duration::from_secs(60), || guest_path(GW_A) == Some(("live".into(), "optimized".into())));
    let out = ok_stdout("nvme disconnect", &std::process::Command::new("nvme").args(["disconnect", "-n", GW_NQN]).output().unwrap());
    assert!(out.contains("disconnected 2 controller"), "{out}");
    println!("failover guest: {jobs} verified fio jobs of 32 MiB, no error");
}

/// Two `pollux-tgt` gateways on the host serve one RBD image of a Ceph
/// cluster in one subsystem (A optimized, B non-optimized, disjoint
/// controller IDs); Linux's native multipath host in the test guest
/// connects to both and runs verifying fio jobs. Meanwhile the ANA states
/// are flipped by RPC (I/O moves to B and back), gateway A is killed with
/// SIGKILL (I/O moves to B), and A is restarted (its path returns and takes
/// the I/O again). Every fio job ends with no error and verifies clean.
#[test]
fn linux_multipath_host_fails_over_between_two_rbd_gateways() {
    let cfg = pollux_testvm::VmConfig::new().controllers(0).memory_mib(1024).network(true).timeout(Duration::from_secs(900));
    if pollux_testvm::is_guest() {
        return pollux_testvm::in_guest(&cfg, failover_guest);
    }
    let ceph = Ceph::start();
    ceph.create_shared_image("shared", 128);
    let mut a = rbd_gateway(&ceph, GW_A, "optimized", (1, 99));
    let b = rbd_gateway(&ceph, GW_B, "non_optimized", (100, 199));
    let name = std::thread::current().name().expect("test thread name").to_string();
    let guest = std::thread::Builder::new().name(name).spawn(move || pollux_testvm::in_guest(&cfg, failover_guest)).unwrap();

    let moved = |d: &Daemon, what: &str| {
        let o = bdev_ops(d, "Shared");
        wait_until(what, Duration::from_secs(120), || bdev_ops(d, "Shared") > o + 20)
    };
    wait_until("the guest's I/O through A", Duration::from_secs(600), || guest.is_finished() || bdev_ops(&a, "Shared") > 50);
    assert!(!guest.is_finished(), "the guest ended before any I/O reached gateway A: {:?}", guest.join().err());
    // Flip: A inaccessible, B optimized; the I/O goes to B.
    set_listener_ana(&a, GW_NQN, GW_A, "inaccessible", None).expect("set ANA state");
    set_listener_ana(&b, GW_NQN, GW_B, "optimized", None).expect("set ANA state");
    moved(&b, "I/O through B after the flip");
    let a0 = bdev_ops(&a, "Shared");
    moved(&b, "more I/O through B");
    assert!(bdev_ops(&a, "Shared") <= a0 + 8, "I/O still went through the inaccessible gateway");
    set_listener_ana(&b, GW_NQN, GW_B, "non_optimized", None).expect("set ANA state");
    set_listener_ana(&a, GW_NQN, GW_A, "optimized", None).expect("set ANA state");
    moved(&a, "I/O through A again");
    // A dies; B takes the I/O.
    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "gateway A did not die");
    let failover = moved(&b, "I/O through B after A was killed");
    // A comes back; its path returns and takes the I/O.
    let t0 = Instant::now();
    let a2 = rbd_gateway(&ceph, GW_A, "optimized", (1, 99));
    moved(&a2, "I/O through the restarted A");
    eprintln!(
        "rbd failover: I/O through B {:.1} s after SIGKILL of A; through the restarted A {:.1} s after its start",
        failover.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    // Tell the guest, then wait for its verdict.
    let done = std::net::TcpListener::bind(("127.0.0.1", DONE_PORT)).expect("bind the done port");
    let r = guest.join();
    drop(done);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
    for d in [&a2, &b] {
        assert!(!d.log().contains("panicked"), "{}", d.log());
    }
    assert_eq!(a2.stop().code(), Some(0));
    assert_eq!(b.stop().code(), Some(0));
}

/// Cluster connections run off the reactors, at most 16 at a time: with
/// 17 registrations waiting on a monitor that never answers, the 17th is
/// refused at once, the daemon answers other calls meanwhile, and the rest
/// fail with the mount timeout.
#[test]
fn connections_to_an_unreachable_cluster_are_bounded_and_block_no_reactor() {
    let d = Daemon::start(DaemonOpts::default());
    let mon = format!("127.0.0.1:{}", pollux_tests::free_port());
    let threads: Vec<_> = (0..17)
        .map(|i| {
            let (socket, mon) = (d.socket.clone(), mon.clone());
            std::thread::spawn(move || {
                let mut c = pollux_core::rpc::Client::connect(&socket).expect("connect");
                c.set_timeout(Some(Duration::from_secs(60))).unwrap();
                let p = json!({"name": format!("gone{i}"), "config_param": {"mon_host": mon, "client_mount_timeout": "5"}});
                c.call("bdev_rbd_register_cluster", Some(p)).map_err(|e| e.to_string())
            })
        })
        .collect();
    // Meanwhile the reactor answers at once.
    let t0 = Instant::now();
    d.call("spdk_get_version", None).expect("spdk_get_version");
    assert!(t0.elapsed() < Duration::from_secs(3), "the daemon waited {:?} to answer", t0.elapsed());
    let results: Vec<Result<Value, String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let refused = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.contains("too many Ceph operations"))).count();
    let timed_out = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.contains("rados_connect"))).count();
    assert_eq!((refused, timed_out), (1, 16), "{results:?}");
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}

/// An iSCSI session that ends with reads still with librbd (its OSD gone)
/// lets go of its channel to the RBD bdev with requests in flight: the
/// channel waits for them off the reactor's back, which keeps serving (it
/// waited in the channel's drop, up to librados' op timeout, the daemon's
/// one reactor and its RPC server stalled meanwhile).
#[test]
fn a_session_ending_with_reads_stuck_in_librbd_stalls_no_reactor() {
    use pollux_tests::iscsi_host::{RawConn, config, free_port, target_iqn};
    let mut ceph = Ceph::start();
    ceph.create_image("img3", 64);
    let port = free_port();
    let mut cfg = config(port, "rbdlu", 1, None);
    let mut cluster = ceph.cluster_params("c1");
    cluster["config_param"] = json!({"rados_osd_op_timeout": "20"});
    cfg["subsystems"][0]["config"] = json!([
        {"method": "bdev_rbd_register_cluster", "params": cluster},
        {"method": "bdev_rbd_create", "params": {"name": "Rbd0", "cluster_name": "c1", "pool_name": "rbd", "rbd_name": "img3", "block_size": 512}},
    ]);
    cfg["subsystems"][1]["config"].as_array_mut().unwrap().last_mut().unwrap()["params"]["luns"][0]["bdev_name"] = json!("Rbd0");
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    let mut c = RawConn::connect(port);
    let r = c.login("iqn.2016-06.io.pollux:stuck", Some(&target_iqn("rbdlu")), 1);
    assert_eq!(r.bhs[36], 0, "login refused");
    assert_eq!(c.read10(0, 8).expect("a read before the OSD goes").0, 0);
    ceph.stop_osd();
    // Reads the OSD will never answer, then TEST UNIT READY: answered once
    // the reads before it have gone to librbd.
    for lba in 0..8u32 {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&(lba * 64).to_be_bytes());
        cdb[7..9].copy_from_slice(&8u16.to_be_bytes());
        c.command(&cdb, 4096, true, false, &[]);
    }
    assert!(c.test_unit_ready().is_some(), "no answer to TEST UNIT READY");
    drop(c);
    // The session ends, its channel goes with eight reads in flight; the
    // reactor still answers at once (it waited for them: until the op
    // timeout, 20 s).
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sessions = d.call("iscsi_get_connections", None).unwrap();
        if sessions.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "the connection never went: {sessions}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t1 = Instant::now();
    d.call("bdev_get_bdevs", Some(json!({"name": "Rbd0"}))).unwrap();
    assert!(t1.elapsed() < Duration::from_secs(5) && t0.elapsed() < Duration::from_secs(10), "the reactor stalled: {:?}", t0.elapsed());
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}
