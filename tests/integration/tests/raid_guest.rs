//! RAID over the VFIO NVMe driver, in the test guest: pollux-perf's verify
//! on raid0, raid1 and concat whose members are namespaces of QEMU's two
//! emulated controllers (bound to vfio-pci), and a raid1 whose member on
//! one controller is failed by an error bdev during the run and a new one
//! rebuilt from the other, the workload seeing no error.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pollux_core::rpc::Client;
use pollux_tests::{TempDir, app_client, clean_perf_run, perf_command};
use pollux_testvm::{NvmeDriver, VmConfig, in_guest};
use serde_json::{Value, json};

const CTRL0: &str = "0000:00:03.0";
const CTRL1: &str = "0000:00:04.0";

fn attach(name: &str, addr: &str) -> Value {
    json!({"method": "bdev_nvme_attach_controller", "params": {"name": name, "trtype": "PCIe", "traddr": addr}})
}

fn raid(name: &str, level: &str, strip_kb: u64, members: &[&str]) -> Value {
    json!({"method": "bdev_raid_create", "params": {"name": name, "raid_level": level, "strip_size_kb": strip_kb, "base_bdevs": members}})
}

#[test]
fn raid_over_vfio_nvme_verifies_and_rebuilds() {
    let vm = VmConfig::new()
        .controllers(2)
        .namespaces(2)
        .namespace_size(64 << 20)
        .memory_mib(2048)
        .hugepages(512)
        .nvme_driver(NvmeDriver::Vfio)
        .timeout(Duration::from_secs(600));
    in_guest(&vm, || {
        let dir = TempDir::new("raid-vfio");
        let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
            attach("Nvme0", CTRL0), attach("Nvme1", CTRL1),
            raid("R0", "raid0", 64, &["Nvme0n1", "Nvme1n1"]),
            raid("C0", "concat", 64, &["Nvme0n2", "Nvme1n2"]),
        ]}]});
        for (b, size) in [("R0", "4096"), ("R0", "131072"), ("C0", "65536")] {
            let p = perf_command(&dir, &cfg, &["-b", b, "-q", "32", "-o", size, "-w", "verify", "-t", "2", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (r, _) = clean_perf_run(p);
            assert!(r["total"]["ios"].as_u64().unwrap() > 100, "{b} {size}: {r}");
        }
        // raid1 across the controllers; the first member behind an error bdev.
        let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
            attach("Nvme0", CTRL0), attach("Nvme1", CTRL1),
            {"method": "bdev_error_create", "params": {"base_name": "Nvme0n1"}},
            raid("R1", "raid1", 0, &["EE_Nvme0n1", "Nvme1n1"]),
        ]}]});
        let perf = perf_command(&dir, &cfg, &["-b", "R1", "-q", "32", "-o", "4096", "-w", "verify", "-t", "20", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let sock = dir.join("perf.sock");
        let t0 = Instant::now();
        let mut c = app_client(&sock, Duration::from_secs(60), Duration::from_secs(30));
        let writes = |c: &mut Client| {
            c.call("bdev_get_iostat", Some(json!({"name": "R1"}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
        };
        let raid1 = |c: &mut Client| c.call("bdev_raid_get_bdevs", Some(json!({"category": "all"}))).unwrap()[0].clone();
        while writes(&mut c) < 2000 {
            assert!(t0.elapsed() < Duration::from_secs(60), "no writes");
        }
        c.call("bdev_error_inject_error", Some(json!({"name": "EE_Nvme0n1", "io_type": "write", "error_type": "failure"}))).unwrap();
        while raid1(&mut c)["num_base_bdevs_operational"] != 1 {
            assert!(t0.elapsed() < Duration::from_secs(60), "the member did not fail");
        }
        // The second namespace of the first controller takes its place.
        c.call("bdev_raid_add_base_bdev", Some(json!({"raid_bdev": "R1", "base_bdev": "Nvme0n2"}))).unwrap();
        loop {
            let r = raid1(&mut c);
            if r["num_base_bdevs_operational"] == 2 && r.get("process").is_none() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "the rebuild did not finish: {r}");
        }
        drop(c);
        let (r, _) = clean_perf_run(perf);
        assert!(r["total"]["ios"].as_u64().unwrap() > 2000, "{r}");
    });
}
