//! Logical volumes on the VFIO NVMe driver, used by the Linux kernel's
//! NVMe/TCP host, in the test guest: an lvol store on QEMU's emulated NVMe
//! namespace, a thin volume with an ext4 filesystem whose files survive a
//! snapshot, a clone of it mounted beside it (each keeps its own changes),
//! a clean target restart, and a `kill -9` of the target in the middle of
//! writes to another thin volume (the store then loads after replaying its
//! metadata, and what the filesystem synced is there).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pollux_tests::{Daemon, DaemonOpts, bdev_ops, ok_stdout, tool, wait_until};
use pollux_testvm::{NvmeDriver, VmConfig, in_guest};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:lvol";
const SERIAL: &str = "POLLUXLVOL0001";
const CTRL: &str = "0000:00:03.0";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    ok_stdout(&format!("{cmd} {}", args.join(" ")), &out)
}

fn config() -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_attach_controller", "params": {"name": "Nvme0", "trtype": "PCIe", "traddr": CTRL}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": SERIAL}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}},
        ]},
    ]})
}

fn start() -> Daemon {
    let d = Daemon::start(DaemonOpts { config: Some(config()), cpumask: "0x3".into(), ..Default::default() });
    d.call("bdev_wait_for_examine", None).unwrap();
    d
}

fn export(d: &Daemon, name: &str, nsid: u32) {
    d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": name, "nsid": nsid}})))
        .unwrap_or_else(|e| panic!("export {name}: {e}"));
}

/// The block device of namespace `nsid`, once the kernel made it.
fn device(nsid: u32) -> String {
    let mut last = Value::Null;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let list: Value = serde_json::from_str(&run("nvme", &["list", "-o", "json"])).unwrap_or(json!({}));
        if let Some(d) = list["Devices"].as_array().into_iter().flatten().find(|d| d["SerialNumber"] == SERIAL && d["NameSpace"] == nsid) {
            return d["DevicePath"].as_str().expect("DevicePath").to_string();
        }
        last = list;
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("namespace {nsid} never appeared:\n{last}");
}

fn connect() {
    // A lost target is given up after 2 s (the kill -9 below), not 10 min.
    run("nvme", &["connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "-n", NQN, "--reconnect-delay=1", "--ctrl-loss-tmo=2"]);
}

fn disconnect() {
    run("nvme", &["disconnect", "-n", NQN]);
}

/// Files of known content, written to a filesystem.
fn files(seed: u32) -> Vec<(String, Vec<u8>)> {
    (0..6u32)
        .map(|i| {
            (
                format!("file{seed}-{i}"),
                (0..(200_000 + i * 33_333)).map(|j| (j.wrapping_mul(2_654_435_761 + seed) >> (i % 5)) as u8).collect(),
            )
        })
        .collect()
}

fn write_files(mnt: &str, fs: &[(String, Vec<u8>)]) {
    for (n, data) in fs {
        std::fs::write(format!("{mnt}/{n}"), data).unwrap();
    }
    run("sync", &[]);
}

fn check_files(mnt: &str, fs: &[(String, Vec<u8>)], what: &str) {
    for (n, data) in fs {
        let got = std::fs::read(format!("{mnt}/{n}")).unwrap_or_else(|e| panic!("{what}: {n}: {e}"));
        assert!(got == *data, "{what}: {n} changed");
    }
}

fn mount(dev: &str, mnt: &str) {
    std::fs::create_dir_all(mnt).unwrap();
    run("mount", &[dev, mnt]);
}

struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ext4_on_thin_lvols_over_nvme_tcp_survives_snapshots_clones_restarts_and_kill_9() {
    let vm = VmConfig::new()
        .controllers(1)
        .namespaces(1)
        .namespace_size(512 << 20)
        .memory_mib(2048)
        .hugepages(512)
        .nvme_driver(NvmeDriver::Vfio)
        .timeout(Duration::from_secs(900));
    in_guest(&vm, || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        for m in ["nvme-tcp", "nvme-fabrics", "crc32c_generic", "ext4"] {
            run("modprobe", &[m]);
        }
        let d = start();
        d.call("bdev_lvol_create_lvstore", Some(json!({"bdev_name": "Nvme0n1", "lvs_name": "lvs", "cluster_sz": 1 << 20}))).unwrap();
        for (n, mib) in [("fs", 192), ("raw", 128)] {
            d.call("bdev_lvol_create", Some(json!({"lvs_name": "lvs", "lvol_name": n, "size_in_mib": mib, "thin_provision": true})))
                .unwrap();
        }
        export(&d, "lvs/fs", 1);
        connect();
        let fs = device(1);
        run("mkfs.ext4", &["-q", "-F", &fs]);
        let (m1, m2) = ("/tmp/lvol-fs", "/tmp/lvol-clone");
        mount(&fs, m1);
        let first = files(1);
        write_files(m1, &first);
        run("umount", &[m1]);
        // Snapshot and clone; the clone mounted beside the volume.
        d.call("bdev_lvol_snapshot", Some(json!({"lvol_name": "lvs/fs", "snapshot_name": "snap"}))).unwrap();
        d.call("bdev_lvol_clone", Some(json!({"snapshot_name": "lvs/snap", "clone_name": "clone"}))).unwrap();
        export(&d, "lvs/clone", 2);
        let clone = device(2);
        mount(&fs, m1);
        mount(&clone, m2);
        check_files(m2, &first, "the clone");
        let on_clone = files(2);
        let on_fs = files(3);
        write_files(m2, &on_clone);
        write_files(m1, &on_fs);
        run("umount", &[m1]);
        run("umount", &[m2]);
        run("sh", &["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
        mount(&fs, m1);
        mount(&clone, m2);
        check_files(m1, &first, "the volume");
        check_files(m1, &on_fs, "the volume");
        check_files(m2, &on_clone, "the clone");
        assert!(!std::path::Path::new(&format!("{m2}/{}", on_fs[0].0)).exists(), "the volume's new file shows in the clone");
        assert!(!std::path::Path::new(&format!("{m1}/{}", on_clone[0].0)).exists(), "the clone's new file shows in the volume");
        run("umount", &[m1]);
        run("umount", &[m2]);
        disconnect();
        // A clean restart: the store comes back from the NVMe namespace.
        assert!(d.stop().success());
        let d = start();
        let lvols: Vec<String> = d
            .call("bdev_lvol_get_lvols", None)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(lvols.len(), 4, "{lvols:?}");
        export(&d, "lvs/fs", 1);
        export(&d, "lvs/clone", 2);
        export(&d, "lvs/raw", 3);
        connect();
        let (fs, clone, raw) = (device(1), device(2), device(3));
        mount(&fs, m1);
        mount(&clone, m2);
        check_files(m1, &on_fs, "the volume after a restart");
        check_files(m2, &on_clone, "the clone after a restart");
        run("umount", &[m2]);
        let last = files(4);
        write_files(m1, &last);
        // kill -9 while a writer fills the raw thin volume (every 1 MiB a
        // new cluster is allocated).
        let writer = Writer(
            Command::new("dd")
                .args(["if=/dev/urandom", &format!("of={raw}"), "bs=256k", "count=400", "oflag=direct"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dd"),
        );
        wait_until("writes to the raw volume", Duration::from_secs(120), || bdev_ops(&d, "lvs/raw") >= 40);
        let mut d = d;
        d.signal(libc::SIGKILL);
        d.wait_exit(Duration::from_secs(10)).expect("pollux-tgt did not die");
        drop(writer);
        // The host gives the controller up (ctrl-loss-tmo), then the
        // filesystem can go.
        wait_until("the host to drop the dead controller", Duration::from_secs(60), || {
            !std::fs::read_dir("/sys/class/nvme")
                .map(|r| r.flatten().any(|e| std::fs::read_to_string(e.path().join("subsysnqn")).is_ok_and(|s| s.trim() == NQN)))
                .unwrap_or(false)
        });
        let _ = Command::new("umount").args(["-l", m1]).output();
        let d = start();
        assert!(d.log().contains("not shut down cleanly"), "{}", d.log());
        let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
        assert!(lvs["free_clusters"].as_u64().unwrap() < lvs["total_data_clusters"].as_u64().unwrap(), "{lvs}");
        export(&d, "lvs/fs", 1);
        connect();
        let fs = device(1);
        mount(&fs, m1);
        check_files(m1, &last, "the volume after kill -9");
        run("umount", &[m1]);
        disconnect();
        assert!(d.stop().success());
        // The namespace back with the kernel's driver: SPDK's format as the
        // independent checker reads it, clean and consistent.
        run("modprobe", &["nvme"]);
        run(pollux_tests::bin("pollux-setup").to_str().unwrap(), &["reset"]);
        let ns = format!("/sys/bus/pci/devices/{CTRL}/nvme");
        let mut dev = String::new();
        wait_until("the kernel's NVMe namespace", Duration::from_secs(60), || {
            let found = std::fs::read_dir(&ns).into_iter().flatten().flatten().find_map(|c| {
                let name = c.file_name().to_string_lossy().into_owned();
                let blk = format!("/dev/{name}n1");
                std::path::Path::new(&blk).exists().then_some(blk)
            });
            found.map(|b| dev = b).is_some()
        });
        let checker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/lvs-check");
        let out = Command::new("python3").arg(checker).arg(&dev).args(["--block-size", "512", "--json"]).output().expect("python3");
        let report: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("lvs-check: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success() && report["errors"].as_array().is_none_or(|e| e.is_empty()), "{report:#}");
        assert_eq!(report["lvstore"]["clean"], true, "{report:#}");
        assert_eq!(report["lvols"].as_array().map(Vec::len), Some(4), "{report:#}");
    });
}
