//! The Linux kernel's NVMe/TCP host (nvme-tcp + nvme-cli) against the
//! Pollux target, both in one test guest, over its loopback: discovery,
//! connect, identify, data-verifying workloads with digests off and on, a
//! namespace added live, a masked one shown to and hidden from the host
//! (also where the subsystem reports ANA), disconnect, and a host that is
//! not allowed.

use std::process::Command;
use std::time::{Duration, Instant};

use pollux_tests::{Daemon, DaemonOpts, bdev_ops, ok_stdout, set_listener_ana, tool, wait_until};
use pollux_testvm::{VmConfig, in_guest};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:kernel";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c3b1a2e-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
const INTRUDER: &str = "nqn.2014-08.org.nvmexpress:uuid:deadbeef-0000-4000-8000-000000000bad";
const SERIAL: &str = "POLLUXKERNEL01";
const MODEL: &str = "Pollux kernel-host test";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    ok_stdout(&format!("{cmd} {}", args.join(" ")), &out)
}

fn try_run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// The block device of namespace `nsid` of our subsystem, once it exists.
fn wait_device(nsid: u32) -> String {
    let t0 = Instant::now();
    loop {
        let list: Value = serde_json::from_str(&run("nvme", &["list", "-o", "json"])).unwrap_or(json!({}));
        let found = list["Devices"].as_array().into_iter().flatten().find(|d| d["SerialNumber"] == SERIAL && d["NameSpace"] == nsid);
        if let Some(d) = found {
            return d["DevicePath"].as_str().expect("DevicePath").to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "namespace {nsid} never appeared:\n{list}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The controller device (`/dev/nvmeN`) connected to our subsystem.
fn controller() -> String {
    for e in std::fs::read_dir("/sys/class/nvme").expect("/sys/class/nvme") {
        let p = e.unwrap().path();
        if std::fs::read_to_string(p.join("subsysnqn")).is_ok_and(|s| s.trim() == NQN) {
            return format!("/dev/{}", p.file_name().unwrap().to_string_lossy());
        }
    }
    panic!("no controller of {NQN}");
}

fn wait_gone(dev: &str) {
    let t0 = Instant::now();
    while std::path::Path::new(dev).exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{dev} is still there after disconnect");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(digests: bool, host: &str) -> std::process::Output {
    let mut args = vec!["connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "-n", NQN, "--hostnqn", host];
    if digests {
        // Digests, and SQ flow control off so reads end with C2H SUCCESS.
        args.extend(["--hdr-digest", "--data-digest", "--disable-sqflow"]);
    }
    try_run("nvme", &args)
}

fn fio_verify(dev: &str, rw: &str, bs: &str) {
    let out = run(
        "fio",
        &[
            "--name=verify",
            &format!("--filename={dev}"),
            "--direct=1",
            "--ioengine=libaio",
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            "--iodepth=16",
            "--size=24M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ],
    );
    let v: Value = serde_json::from_str(&out[out.find('{').expect("fio JSON")..]).expect("fio JSON");
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{out}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 24 << 20, "{out}");
    assert!(job["read"]["io_bytes"].as_u64().unwrap() >= 24 << 20, "verify reads: {out}");
}

fn files_survive_a_filesystem(dev: &str) {
    let mnt = "/tmp/pollux-nvmf-mnt";
    std::fs::create_dir_all(mnt).unwrap();
    run("mkfs.ext4", &["-q", "-F", dev]);
    run("mount", &[dev, mnt]);
    let mut sums = Vec::new();
    for i in 0..8u32 {
        let data: Vec<u8> = (0..(300_000 + i * 77_777)).map(|j| (j.wrapping_mul(2_654_435_761) >> (i % 7)) as u8).collect();
        let p = format!("{mnt}/file{i}");
        std::fs::write(&p, &data).unwrap();
        sums.push((p, data));
    }
    run("umount", &[mnt]);
    run("sh", &["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
    run("mount", &[dev, mnt]);
    for (p, data) in &sums {
        assert!(std::fs::read(p).unwrap() == *data, "{p} changed on the way");
    }
    run("umount", &[mnt]);
}

/// A namespace added with `no_auto_visible` becomes a block device once
/// the host is on its list (the kernel rescans on the namespace notice),
/// keeps its data, and goes away when the host is taken off. `ana`: the
/// ANA state the host must show for its path (the subsystem reports ANA:
/// the host finds the new namespace's group in the ANA log).
fn masked_namespace_comes_and_goes(d: &Daemon, ana: Option<&str>) {
    let add = json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 3, "no_auto_visible": true}});
    d.call("nvmf_subsystem_add_ns", Some(add)).expect("add_ns");
    let grant = json!({"nqn": NQN, "nsid": 3, "host": HOST});
    d.call("nvmf_ns_add_host", Some(grant.clone())).expect("nvmf_ns_add_host");
    let dev = wait_device(3);
    if let Some(want) = ana {
        wait_until("the masked namespace's ANA state", Duration::from_secs(30), || path_ana_state(&dev).as_deref() == Some(want));
    }
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write("/tmp/mask-pattern", &pattern).unwrap();
    run("dd", &["if=/tmp/mask-pattern", &format!("of={dev}"), "bs=64k", "oflag=direct", "status=none"]);
    d.call("nvmf_ns_remove_host", Some(grant.clone())).expect("nvmf_ns_remove_host");
    wait_gone(&dev);
    assert!(std::path::Path::new(&wait_device(1)).exists(), "namespace 1 stays");
    d.call("nvmf_ns_add_host", Some(grant)).expect("nvmf_ns_add_host");
    let dev = wait_device(3);
    run("dd", &[&format!("if={dev}"), "of=/tmp/mask-back", "bs=64k", "count=16", "iflag=direct", "status=none"]);
    assert!(std::fs::read("/tmp/mask-back").unwrap() == pattern, "the masked namespace gave back other data");
    d.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 3}))).expect("remove_ns");
    wait_gone(&dev);
}

/// The target in the guest: NQN for HOST, on 127.0.0.1:4420, with
/// namespace 1 on Malloc0 (`blocks` of 512 bytes) and Malloc1 (64 MiB of
/// 4 KiB blocks) left to add. `ana`: the subsystem reports ANA, the
/// listener in that state.
fn target(blocks: u64, ana: Option<&str>) -> Daemon {
    let mut listener = json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}});
    if let Some(state) = ana {
        listener["ana_state"] = json!(state);
    }
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": blocks, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 16384, "block_size": 4096}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "serial_number": SERIAL, "model_number": MODEL, "ana_reporting": ana.is_some()}},
            {"method": "nvmf_subsystem_add_host", "params": {"nqn": NQN, "host": HOST}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_listener", "params": listener},
        ]},
    ]});
    Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(config), ..Default::default() })
}

/// The ANA state of our controller's path to block device `dev`
/// (`/dev/nvme<s>n<h>`, the native multipath head), as the kernel shows
/// it: the path is `nvme<s>c<c>n<h>` under the controller (`<h>` numbers
/// heads, not NSIDs).
fn path_ana_state(dev: &str) -> Option<String> {
    let head = dev.trim_start_matches("/dev/");
    let (subsys, h) = head.rsplit_once('n')?;
    let dir = format!("/sys/class/nvme/{}", controller().trim_start_matches("/dev/"));
    let path = std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with(&format!("{subsys}c")) && n.ends_with(&format!("n{h}"))
        })
    })?;
    std::fs::read_to_string(path.join("ana_state")).ok().map(|s| s.trim().to_string())
}

/// The same with a subsystem that reports ANA, its listener non-optimized:
/// the host shows the masked namespace's path with the state of its group,
/// which its ANA log lacked before the host was listed. (This guest's
/// kernel reads the log again for a namespace whose group it does not
/// know, so it passes without the ANA change notice the target also sends;
/// that notice is for hosts that do not.)
#[test]
fn linux_host_with_ana_finds_a_masked_namespace_in_its_group() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1024).timeout(Duration::from_secs(600)), || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        for m in ["nvme-tcp", "nvme-fabrics", "crc32c_generic"] {
            run("modprobe", &[m]);
        }
        let d = target(16384, Some("non_optimized"));
        let out = connect(false, HOST);
        assert!(out.status.success(), "connect: {}", String::from_utf8_lossy(&out.stderr));
        let dev = wait_device(1);
        wait_until("namespace 1's ANA state", Duration::from_secs(30), || path_ana_state(&dev).as_deref() == Some("non-optimized"));
        masked_namespace_comes_and_goes(&d, Some("non-optimized"));
        let out = run("nvme", &["disconnect", "-n", NQN]);
        assert!(out.contains("disconnected 1 controller"), "{out}");
        wait_gone(&dev);
        assert!(!d.log().contains("panicked"));
        assert_eq!(d.stop().code(), Some(0));
    });
}

#[test]
fn linux_nvme_tcp_host_uses_pollux_like_a_local_disk() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1536).timeout(Duration::from_secs(600)), || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        tool("fio", "fio");
        for m in ["nvme-tcp", "nvme-fabrics", "crc32c_generic", "ext4"] {
            run("modprobe", &[m]);
        }
        let d = target(131072, None);

        // Discovery lists the subsystem for the allowed host.
        let disc = run("nvme", &["discover", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "--hostnqn", HOST]);
        assert!(disc.contains(NQN) && disc.contains("trsvcid: 4420") && disc.contains("traddr:  127.0.0.1"), "{disc}");
        // ... and not for another one.
        let disc = run("nvme", &["discover", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "--hostnqn", INTRUDER]);
        assert!(!disc.contains(NQN), "{disc}");

        for digests in [false, true] {
            let out = connect(digests, HOST);
            assert!(out.status.success(), "connect (digests {digests}): {}", String::from_utf8_lossy(&out.stderr));
            let dev = wait_device(1);
            let ctrl = controller();
            let id = run("nvme", &["id-ctrl", &ctrl, "-o", "json"]);
            let id: Value = serde_json::from_str(&id).unwrap();
            assert_eq!(id["sn"].as_str().unwrap().trim(), SERIAL);
            assert_eq!(id["mn"].as_str().unwrap().trim(), MODEL);
            assert_eq!(id["subnqn"], NQN);
            let ns: Value = serde_json::from_str(&run("nvme", &["id-ns", &dev, "-o", "json"])).unwrap();
            assert_eq!(ns["nsze"], 131072);
            let size: u64 = run("blockdev", &["--getsize64", &dev]).trim().parse().unwrap();
            assert_eq!(size, 64 << 20);
            if digests {
                fio_verify(&dev, "randwrite", "4k");
                fio_verify(&dev, "write", "128k");
            } else {
                fio_verify(&dev, "randwrite", "4k");
                files_survive_a_filesystem(&dev);
                // A namespace added while connected appears (namespace
                // attribute notice, changed namespace list, rescan).
                d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}})))
                    .expect("add_ns");
                let dev2 = wait_device(2);
                let size: u64 = run("blockdev", &["--getsize64", &dev2]).trim().parse().unwrap();
                assert_eq!(size, 64 << 20);
                fio_verify(&dev2, "randwrite", "4k");
                d.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 2}))).expect("remove_ns");
                wait_gone(&dev2);
                masked_namespace_comes_and_goes(&d, None);
            }
            let out = run("nvme", &["disconnect", "-n", NQN]);
            assert!(out.contains("disconnected 1 controller"), "{out}");
            wait_gone(&dev);
        }

        // A host that is not on the list is refused.
        let out = connect(false, INTRUDER);
        assert!(!out.status.success(), "an unlisted host connected");
        assert!(
            d.log().lines().any(|l| l.contains(&format!("({INTRUDER})")) && l.contains("refused: the host is not allowed to use")),
            "{}",
            d.log()
        );
        let ctrls = d.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": NQN}))).expect("get_controllers");
        assert_eq!(ctrls, json!([]));
        assert!(!d.log().contains("panicked"));
        assert_eq!(d.stop().code(), Some(0));
    });
}

// ---- Two gateways, one subsystem: ANA and failover ----

const HA_NQN: &str = "nqn.2016-06.io.pollux:gateway";
const HA_SERIAL: &str = "POLLUXGATEWAY01";
const HA_UUID: &str = "6f0c1d2e-3b4a-4c5d-8e9f-a0b1c2d3e4f5";
const HA_FILE: &str = "/dev/shm/pollux-gateway.img";

/// A gateway: the shared image as namespace 1 of HA_NQN, listening on
/// `port` in `state`, its controller IDs from `cntlids` (hosts reject two
/// controllers of one subsystem with the same ID).
fn gateway(port: u16, state: &str, cntlids: (u16, u16)) -> Daemon {
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_uring_create", "params": {"name": "Shared", "filename": HA_FILE, "block_size": 512}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": HA_NQN, "serial_number": HA_SERIAL, "allow_any_host": true,
                "ana_reporting": true, "min_cntlid": cntlids.0, "max_cntlid": cntlids.1}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": HA_NQN, "namespace": {"bdev_name": "Shared", "nsid": 1, "uuid": HA_UUID}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": HA_NQN, "ana_state": state,
                "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]});
    Daemon::start(DaemonOpts { config: Some(config), ..Default::default() })
}

fn kernel_path(port: u16) -> Option<(String, String)> {
    pollux_tests::kernel_nvme_path(HA_NQN, port)
}

/// The Linux host with native NVMe multipath sees two Pollux gateways
/// (one image, one subsystem NQN, disjoint controller IDs) as two paths of
/// one namespace. While a data-verifying fio job runs: the ANA states are
/// flipped by RPC and I/O follows; gateway A is killed with SIGKILL and
/// I/O moves to B; A is restarted and its path comes back. The job ends
/// with no I/O error and verifies clean.
#[test]
fn linux_multipath_host_fails_over_between_two_pollux_gateways() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1536).timeout(Duration::from_secs(900)), || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        tool("fio", "fio");
        for m in ["nvme-tcp", "nvme-fabrics", "crc32c_generic"] {
            run("modprobe", &[m]);
        }
        let multipath = std::fs::read_to_string("/sys/module/nvme_core/parameters/multipath").unwrap_or_default();
        assert_eq!(multipath.trim(), "Y", "the guest kernel's nvme_core must have native multipath on");
        std::fs::File::create(HA_FILE).unwrap().set_len(96 << 20).unwrap();
        let (pa, pb) = (4430u16, 4431u16);
        let mut a = gateway(pa, "optimized", (1, 99));
        let b = gateway(pb, "non_optimized", (100, 199));
        for port in [pa, pb] {
            let p = port.to_string();
            // Reconnect every second, give up after a minute.
            let out = try_run(
                "nvme",
                &["connect", "-t", "tcp", "-a", "127.0.0.1", "-s", &p, "-n", HA_NQN, "--hostnqn", HOST, "-c", "1", "-l", "60"],
            );
            assert!(out.status.success(), "connect to {port}: {}", String::from_utf8_lossy(&out.stderr));
        }
        wait_until("both paths live", Duration::from_secs(30), || {
            kernel_path(pa) == Some(("live".into(), "optimized".into())) && kernel_path(pb) == Some(("live".into(), "non-optimized".into()))
        });
        // One namespace head over both paths.
        let list: Value = serde_json::from_str(&run("nvme", &["list", "-o", "json"])).unwrap();
        let devs: Vec<&Value> = list["Devices"].as_array().unwrap().iter().filter(|d| d["SerialNumber"] == HA_SERIAL).collect();
        assert_eq!(devs.len(), 1, "one multipath device: {list}");
        let dev = devs[0]["DevicePath"].as_str().unwrap().to_string();

        // Sequential 64 KiB writes of the whole image, then a read-back
        // verify; rate-limited so that it is still running at each step.
        let fio = Command::new("fio")
            .args([
                "--name=failover",
                &format!("--filename={dev}"),
                "--direct=1",
                "--ioengine=libaio",
                "--rw=write",
                "--bs=64k",
                "--iodepth=8",
                "--size=96M",
                "--rate=2m",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--output-format=json",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fio");
        let step = Duration::from_secs(60);
        let moved = |d: &Daemon, what: &str| {
            let o = bdev_ops(d, "Shared");
            wait_until(what, step, || bdev_ops(d, "Shared") > o + 20);
        };
        moved(&a, "I/O through A (optimized)");
        // Flip by RPC: A inaccessible, B optimized; I/O moves to B.
        set_listener_ana(&a, HA_NQN, pa, "inaccessible", None).expect("set ANA state");
        set_listener_ana(&b, HA_NQN, pb, "optimized", None).expect("set ANA state");
        wait_until("the host sees the flip", step, || kernel_path(pa).is_some_and(|p| p.1 == "inaccessible"));
        let a0 = bdev_ops(&a, "Shared");
        moved(&b, "I/O through B after the flip");
        assert!(bdev_ops(&a, "Shared") <= a0 + 8, "I/O still went through the inaccessible path");
        // And back.
        set_listener_ana(&b, HA_NQN, pb, "non_optimized", None).expect("set ANA state");
        set_listener_ana(&a, HA_NQN, pa, "optimized", None).expect("set ANA state");
        wait_until("the host sees A optimized", step, || kernel_path(pa).is_some_and(|p| p.1 == "optimized"));
        moved(&a, "I/O through A again");

        // A dies: I/O moves to B.
        let killed = Instant::now();
        a.signal(libc::SIGKILL);
        assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "gateway A did not die");
        moved(&b, "I/O through B after A was killed");
        let failover = killed.elapsed();
        wait_until("the host sees A down", step, || kernel_path(pa).is_some_and(|p| p.0 != "live"));
        // A comes back on the same address: the host reconnects, A's path
        // is optimized again and takes the I/O.
        let restarted = Instant::now();
        let a2 = gateway(pa, "optimized", (1, 99));
        wait_until("A's path back", Duration::from_secs(90), || kernel_path(pa) == Some(("live".into(), "optimized".into())));
        moved(&a2, "I/O through the restarted A");
        // For docs/nvmf.md: how long I/O took to move (the poll interval of
        // 100 ms included, under TCG).
        eprintln!(
            "failover: I/O through B {:.1} s after SIGKILL of A; A's path back and in use {:.1} s after its restart (reconnect delay 1 s)",
            failover.as_secs_f64(),
            restarted.elapsed().as_secs_f64()
        );

        let out = fio.wait_with_output().expect("fio");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "fio failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_str(&text[text.find('{').expect("fio JSON")..]).expect("fio JSON");
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "{text}");
        assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 96 << 20, "{text}");
        assert!(job["read"]["io_bytes"].as_u64().unwrap() >= 96 << 20, "verify reads: {text}");

        let out = run("nvme", &["disconnect", "-n", HA_NQN]);
        assert!(out.contains("disconnected 2 controller"), "{out}");
        for d in [&a2, &b] {
            assert!(!d.log().contains("panicked"), "{}", d.log());
        }
        assert_eq!(a2.stop().code(), Some(0));
        assert_eq!(b.stop().code(), Some(0));
        let _ = std::fs::remove_file(HA_FILE);
    });
}

// ---- Reservations from the kernel host ----

const RESV_NQN: &str = "nqn.2016-06.io.pollux:resv";
const RESV_HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:0c3b1a2e-5d6f-4a7b-8c9d-0e1f2a3b4c5e";

fn resv_gateway(ptpl: &str) -> Daemon {
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 32768, "block_size": 512, "uuid": "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": RESV_NQN, "allow_any_host": true, "serial_number": "POLLUXRESV01"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": RESV_NQN, "namespace": {"bdev_name": "M0", "nsid": 1, "ptpl_file": ptpl}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": RESV_NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4440"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": RESV_NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4441"}}},
        ]},
    ]});
    Daemon::start(DaemonOpts { config: Some(config), ..Default::default() })
}

/// The controller device (`/dev/nvmeN`) host `hostnqn` has to RESV_NQN,
/// and whether it is live. Commands go through it to namespace 1 (the
/// controller has one): with native multipath both hosts' controllers
/// share one namespace block device, whose I/O the kernel routes itself.
fn resv_device(hostnqn: &str) -> Option<(String, bool)> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    for e in std::fs::read_dir("/sys/class/nvme").ok()? {
        let c = e.ok()?.path();
        if read(c.join("subsysnqn")) == RESV_NQN && read(c.join("hostnqn")) == hostnqn {
            let name = c.file_name()?.to_string_lossy().to_string();
            return Some((format!("/dev/{name}"), read(c.join("state")) == "live"));
        }
    }
    None
}

/// One 512-byte write (or read) of block 0 of namespace 1 through
/// controller `dev` (an I/O command passed through); whether it worked.
fn dd(dev: &str, write: bool) -> bool {
    let blk = "/tmp/pollux-resv-block";
    std::fs::write(blk, [0x5a; 512]).unwrap();
    let (opcode, dir) = if write { ("--opcode=0x01", "--write") } else { ("--opcode=0x02", "--read") };
    let out = try_run(
        "nvme",
        &["io-passthru", dev, opcode, "--namespace-id=1", "--data-len=512", dir, "--input-file", blk, "--cdw10=0", "--cdw12=0"],
    );
    out.status.success()
}

/// The registrants of a reservation report (`--eds`) and the reservation type.
fn resv_report(dev: &str) -> (u64, Vec<(u64, bool)>) {
    let out = run("nvme", &["resv-report", dev, "-n", "1", "--eds", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("resv-report: {e}: {out}"));
    let regs = v["regctlext"]
        .as_array()
        .map(|a| a.iter().map(|r| (r["rkey"].as_u64().unwrap_or(0), r["rcsts"].as_u64().unwrap_or(0) & 1 == 1)).collect())
        .unwrap_or_default();
    (v["rtype"].as_u64().unwrap_or(99), regs)
}

/// Linux's host, as two hosts (two host NQNs and identifiers), through
/// nvme-cli: host A registers and takes Write Exclusive, host B's writes
/// fail and its reads work, the report shows both; through a restart of
/// the target (`ptpl_file`) the reservation stays; released, B writes.
#[test]
fn linux_host_reservations_conflict_and_persist() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1536).timeout(Duration::from_secs(600)), || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        for m in ["nvme-tcp", "nvme-fabrics"] {
            run("modprobe", &[m]);
        }
        let ptpl = "/tmp/pollux-resv-ns1.json";
        let _ = std::fs::remove_file(ptpl);
        let d = resv_gateway(ptpl);
        // Each host through a listener of its own (nvme-cli refuses a second
        // connection to the same address and subsystem as a duplicate).
        for (host, id, port) in
            [(HOST, "0c3b1a2e-5d6f-4a7b-8c9d-0e1f2a3b4c5d", "4440"), (RESV_HOST_B, "0c3b1a2e-5d6f-4a7b-8c9d-0e1f2a3b4c5e", "4441")]
        {
            let out = try_run(
                "nvme",
                &[
                    "connect",
                    "-t",
                    "tcp",
                    "-a",
                    "127.0.0.1",
                    "-s",
                    port,
                    "-n",
                    RESV_NQN,
                    "--hostnqn",
                    host,
                    "--hostid",
                    id,
                    "-c",
                    "1",
                    "-l",
                    "60",
                ],
            );
            assert!(out.status.success(), "connect as {host}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut devs = Vec::new();
        for host in [HOST, RESV_HOST_B] {
            wait_until("the controller", Duration::from_secs(30), || {
                resv_device(host).is_some_and(|(d, live)| live && std::path::Path::new(&d).exists())
            });
            devs.push(resv_device(host).unwrap().0);
        }
        let (a, b) = (devs[0].clone(), devs[1].clone());
        assert_ne!(a, b);

        run("nvme", &["resv-register", &a, "-n", "1", "--nrkey=0xa", "--rrega=0", "--cptpl=3"]);
        run("nvme", &["resv-register", &b, "-n", "1", "--nrkey=0xb", "--rrega=0"]);
        run("nvme", &["resv-acquire", &a, "-n", "1", "--crkey=0xa", "--rtype=1", "--racqa=0"]);
        let (rtype, regs) = resv_report(&b);
        assert_eq!(rtype, 1, "write exclusive");
        let mut regs = regs;
        regs.sort();
        assert_eq!(regs, vec![(0xa, true), (0xb, false)], "A holds it, B is registered");
        assert!(dd(&a, true), "the holder writes");
        assert!(dd(&b, false), "B reads");
        assert!(!dd(&b, true), "B's write must fail: reservation conflict");
        assert!(!try_run("nvme", &["resv-acquire", &b, "-n", "1", "--crkey=0xb", "--rtype=1", "--racqa=0"]).status.success(), "held by A");

        // The target restarts (its state from the ptpl_file); the hosts
        // reconnect and the reservation is still A's.
        assert_eq!(d.stop().code(), Some(0));
        let d = resv_gateway(ptpl);
        for host in [HOST, RESV_HOST_B] {
            wait_until("the host to reconnect", Duration::from_secs(60), || resv_device(host).is_some_and(|(_, live)| live));
        }
        let (rtype, _) = resv_report(&a);
        assert_eq!(rtype, 1, "the reservation persisted");
        assert!(!dd(&b, true), "B's write still fails after the restart");

        run("nvme", &["resv-release", &a, "-n", "1", "--crkey=0xa", "--rtype=1", "--rrela=0"]);
        assert!(dd(&b, true), "released: B writes");
        run("nvme", &["resv-release", &a, "-n", "1", "--crkey=0xa", "--rrela=1"]);
        let (_, regs) = resv_report(&a);
        assert!(regs.is_empty(), "cleared: {regs:?}");
        let out = run("nvme", &["disconnect", "-n", RESV_NQN]);
        assert!(out.contains("disconnected 2 controller"), "{out}");
        assert!(!d.log().contains("panicked"));
        assert_eq!(d.stop().code(), Some(0));
    });
}
