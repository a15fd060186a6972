//! The Linux kernel's NVMe/TCP host (nvme-tcp + nvme-cli) against the
//! Pollux target, both in one test guest, over its loopback: discovery,
//! connect, identify, data-verifying workloads with digests off and on, a
//! namespace added live, disconnect, and a host that is not allowed.

use std::process::Command;
use std::time::{Duration, Instant};

use pollux_tests::{Daemon, DaemonOpts, ok_stdout, tool};
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

#[test]
fn linux_nvme_tcp_host_uses_pollux_like_a_local_disk() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1536).timeout(Duration::from_secs(600)), || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        tool("fio", "fio");
        for m in ["nvme-tcp", "nvme-fabrics", "crc32c_generic", "ext4"] {
            run("modprobe", &[m]);
        }
        let config = json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}},
                {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 16384, "block_size": 4096}},
            ]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "serial_number": SERIAL, "model_number": MODEL}},
                {"method": "nvmf_subsystem_add_host", "params": {"nqn": NQN, "host": HOST}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}},
            ]},
        ]});
        let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(config), ..Default::default() });

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
