//! Pollux's NVMe-oF host over RDMA (Soft-RoCE in one test guest): against
//! the Linux kernel's nvmet-rdma target (a memory-backed null_blk
//! namespace) and against Pollux's own target (a subsystem with an RDMA and
//! a TCP listener).
//!
//! - pollux-perf verifies the kernel's namespace at several depths and
//!   sizes (1 MiB requests split over the host's 128 KiB RDMA commands);
//!   a host NQN the kernel does not allow is refused with a clear error.
//! - pollux-perf verifies Pollux's namespace through one bdev with two
//!   paths, RDMA and TCP, active-active: both carry I/O.
//! - Discovery over RDMA: the service attaches the RDMA entries that
//!   Pollux's discovery controller lists, the controller reports trtype
//!   RDMA, and stopping the service detaches them; `pollux-nvme discover
//!   -t rdma` reads the same log (both listeners) without the daemon.

use std::time::Duration;

use pollux_tests::{Daemon, DaemonOpts, TempDir, bin, sh, verify_run};
use pollux_testvm::{VmConfig, in_guest, soft_roce};
use serde_json::{Value, json};

const KNQN: &str = "nqn.2016-06.io.kernel:rdma";
const PNQN: &str = "nqn.2016-06.io.pollux:rdma-host";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:7d1e5a40-2b3c-4d5e-8f60-718293a4b5c6";
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:deadbeef-0000-4000-8000-0000000bad00";
const ADDR: &str = "192.0.2.1";
/// The kernel's port; Pollux's target listens on POLLUX (RDMA and TCP)
/// and serves discovery on DISC.
const KERNEL: &str = "4420";
const POLLUX: &str = "4430";
const DISC: &str = "8009";

fn soft_roce_and_kernel_target() {
    soft_roce(ADDR, &["nvmet", "nvmet-rdma"]);
    sh(&format!(
        r#"
modprobe null_blk nr_devices=0
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
N=/sys/kernel/config/nullb/nullb0
mkdir $N; echo 128 > $N/size; echo 512 > $N/blocksize; echo 1 > $N/memory_backed; echo 2 > $N/queue_mode; echo 0 > $N/irqmode; echo 1 > $N/power
C=/sys/kernel/config/nvmet
mkdir $C/subsystems/{KNQN}
echo 0 > $C/subsystems/{KNQN}/attr_allow_any_host
echo KERNELRDMA01 > $C/subsystems/{KNQN}/attr_serial
mkdir $C/hosts/{HOST}
ln -s $C/hosts/{HOST} $C/subsystems/{KNQN}/allowed_hosts/{HOST}
mkdir $C/subsystems/{KNQN}/namespaces/1
echo /dev/nullb0 > $C/subsystems/{KNQN}/namespaces/1/device_path
echo 1 > $C/subsystems/{KNQN}/namespaces/1/enable
mkdir $C/ports/1
echo rdma > $C/ports/1/addr_trtype; echo ipv4 > $C/ports/1/addr_adrfam
echo {ADDR} > $C/ports/1/addr_traddr; echo {KERNEL} > $C/ports/1/addr_trsvcid
ln -s $C/subsystems/{KNQN} $C/ports/1/subsystems/{KNQN}
"#
    ));
}

fn nullb0_stat(field: usize) -> u64 {
    let s = std::fs::read_to_string("/sys/block/nullb0/stat").unwrap();
    s.split_whitespace().nth(field).unwrap().parse().unwrap()
}

fn attach(name: &str, trtype: &str, port: &str, nqn: &str, hostnqn: &str) -> Value {
    json!({"name": name, "trtype": trtype, "adrfam": "IPv4", "traddr": ADDR, "trsvcid": port, "subnqn": nqn, "hostnqn": hostnqn})
}

/// RDMA requests the target's poll groups took, and I/O they completed.
fn target_counts(d: &Daemon) -> (u64, u64) {
    let stats = d.call("nvmf_get_stats", None).expect("nvmf_get_stats");
    let groups = stats["poll_groups"].as_array().expect("poll_groups");
    let rdma: u64 = groups
        .iter()
        .filter_map(|g| g["transports"].as_array()?.iter().find(|t| t["trtype"] == "RDMA").cloned())
        .flat_map(|t| t["devices"].as_array().cloned().unwrap_or_default())
        .map(|dev| dev["requests"].as_u64().unwrap_or(0))
        .sum();
    let io: u64 = groups.iter().map(|g| g["completed_nvme_io"].as_u64().unwrap_or(0)).sum();
    (rdma, io)
}

#[test]
fn pollux_host_over_rdma_verifies_kernel_and_pollux_targets() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(2048).timeout(Duration::from_secs(900)), || {
        soft_roce_and_kernel_target();
        let dir = TempDir::new("rdma-host");

        // The kernel's nvmet-rdma: each depth and size verified; 1 MiB
        // requests are eight 128 KiB commands.
        let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_attach_controller", "params": attach("Nvme0", "RDMA", KERNEL, KNQN, HOST)}]}]});
        let (reads, writes) = (nullb0_stat(0), nullb0_stat(4));
        for (qd, size) in [(1, 512), (32, 4096), (32, 131072), (4, 1 << 20)] {
            verify_run(&dir, &cfg, "Nvme0n1", qd, size, 2, &format!("kernel target, QD {qd}, {size} bytes"));
        }
        assert!(nullb0_stat(0) > reads && nullb0_stat(4) > writes, "the kernel's namespace saw no I/O");

        // A host the kernel does not allow: refused, clearly.
        let host = Daemon::start(DaemonOpts::default());
        let e = host.call("bdev_nvme_attach_controller", Some(attach("Nvme0", "RDMA", KERNEL, KNQN, STRANGER))).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains(STRANGER), "{e}");
        let names = host.call("bdev_nvme_attach_controller", Some(attach("Nvme0", "rdma", KERNEL, KNQN, HOST))).unwrap();
        assert_eq!(names, json!(["Nvme0n1"]));
        let c = host.call("bdev_nvme_get_controllers", Some(json!({"name": "Nvme0"}))).unwrap();
        assert_eq!(c[0]["ctrlrs"][0]["trid"]["trtype"], "RDMA", "{c}");
        assert!(c[0]["ctrlrs"][0]["serial_number"].as_str().unwrap().starts_with("KERNELRDMA01"), "{c}");
        host.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).unwrap();

        // Pollux's target: one subsystem, an RDMA and a TCP listener.
        let target = Daemon::start(DaemonOpts {
            cpumask: "0x2".into(),
            config: Some(json!({"subsystems": [
                {"subsystem": "bdev", "config": [
                    {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}},
                ]},
                {"subsystem": "nvmf", "config": [
                    {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                    {"method": "nvmf_create_transport", "params": {"trtype": "RDMA"}},
                    {"method": "nvmf_create_subsystem", "params": {"nqn": PNQN, "serial_number": "POLLUXRDMAHOST", "allow_any_host": true}},
                    {"method": "nvmf_subsystem_add_ns", "params": {"nqn": PNQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
                    {"method": "nvmf_subsystem_add_listener", "params": {"nqn": PNQN, "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": ADDR, "trsvcid": POLLUX}}},
                    {"method": "nvmf_subsystem_add_listener", "params": {"nqn": PNQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": ADDR, "trsvcid": POLLUX}}},
                    {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "nqn.2014-08.org.nvmexpress.discovery", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": ADDR, "trsvcid": DISC}}},
                ]},
            ]})),
            ..Default::default()
        });

        // One bdev, two paths (RDMA and TCP), I/O on both.
        let mut tcp_path = attach("Nvme1", "TCP", POLLUX, PNQN, HOST);
        tcp_path["multipath"] = json!("multipath");
        let mut rdma_path = attach("Nvme1", "RDMA", POLLUX, PNQN, HOST);
        rdma_path["multipath"] = json!("multipath");
        let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_attach_controller", "params": rdma_path},
            {"method": "bdev_nvme_attach_controller", "params": tcp_path},
            {"method": "bdev_nvme_set_multipath_policy", "params": {"name": "Nvme1n1", "policy": "active_active", "selector": "round_robin"}},
        ]}]});
        let (rdma0, io0) = target_counts(&target);
        for (qd, size) in [(32, 4096), (8, 65536)] {
            verify_run(&dir, &cfg, "Nvme1n1", qd, size, 3, &format!("Pollux target over RDMA and TCP, QD {qd}, {size} bytes"));
        }
        let (rdma1, io1) = target_counts(&target);
        let (rdma_reqs, ios) = (rdma1 - rdma0, io1 - io0);
        assert!(rdma_reqs > 200, "few RDMA requests: {rdma_reqs} of {ios} I/Os");
        assert!(ios > rdma_reqs + 200, "few I/Os over TCP: {ios} I/Os, {rdma_reqs} RDMA requests");

        // Discovery over RDMA: Pollux's discovery log lists the RDMA and
        // the TCP listener; the service attaches the RDMA one.
        host.call(
            "bdev_nvme_start_discovery",
            Some(json!({"name": "disc", "trtype": "rdma", "traddr": ADDR, "trsvcid": DISC, "hostnqn": HOST, "wait_for_attach": true})),
        )
        .unwrap();
        let c = host.call("bdev_nvme_get_controllers", None).unwrap();
        let ctrls = c.as_array().unwrap();
        assert_eq!(ctrls.len(), 1, "{c}");
        let trid = &ctrls[0]["ctrlrs"][0]["trid"];
        assert_eq!(
            (trid["trtype"].as_str(), trid["subnqn"].as_str(), trid["trsvcid"].as_str()),
            (Some("RDMA"), Some(PNQN), Some(POLLUX)),
            "{c}"
        );
        let info = host.call("bdev_nvme_get_discovery_info", None).unwrap();
        assert_eq!(info[0]["trid"]["trtype"], "RDMA", "{info}");
        let b = host.call("bdev_get_bdevs", None).unwrap();
        assert_eq!(b.as_array().map(Vec::len), Some(1), "{b}");
        assert_eq!(b[0]["num_blocks"], 65536, "{b}");
        // pollux-nvme reads the same log over RDMA without the daemon.
        let out = std::process::Command::new(bin("pollux-nvme"))
            .args(["discover", "-t", "rdma", "-a", ADDR, "-s", DISC, "-q", HOST, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let log: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ours: Vec<&Value> = log["records"].as_array().unwrap().iter().filter(|r| r["subnqn"] == PNQN).collect();
        let mut kinds: Vec<&str> = ours.iter().map(|r| r["trtype"].as_str().unwrap()).collect();
        kinds.sort();
        assert_eq!(kinds, ["rdma", "tcp"], "{log}");
        host.call("bdev_nvme_stop_discovery", Some(json!({"name": "disc"}))).unwrap();
        let t0 = std::time::Instant::now();
        while host.call("bdev_get_bdevs", None).unwrap() != json!([]) {
            assert!(t0.elapsed() < Duration::from_secs(30), "the discovered bdev stayed after stop_discovery");
            std::thread::sleep(Duration::from_millis(100));
        }
        for d in [&host, &target] {
            assert!(!d.log().contains("panicked"), "{}", d.log());
        }
        assert_eq!(host.stop().code(), Some(0));
        assert_eq!(target.stop().code(), Some(0));
    });
}
