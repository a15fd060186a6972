//! Pollux's NVMe-oF host against the Linux kernel's nvmet-tcp target, both
//! in one test guest over its loopback: a memory-backed null_blk namespace
//! attached through `bdev_nvme_attach_controller` and verified by
//! pollux-perf at several depths and sizes (past the host's largest command,
//! so requests split) with digests off and on; and a host NQN the kernel
//! target does not allow, reported as such.

use std::process::Command;
use std::time::Duration;

use pollux_tests::{Daemon, DaemonOpts, TempDir, bin};
use pollux_testvm::{VmConfig, in_guest};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.kernel:pollux-host";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:5a0c0c2e-1111-4222-8333-444455556666";
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:deadbeef-0000-4000-8000-00000000dead";
const PORT: &str = "4420";

fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().expect("run sh");
    assert!(out.status.success(), "{script}\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// nvmet-tcp on 127.0.0.1:4420 serving a 256 MiB memory-backed null_blk
/// device to HOST only.
fn kernel_target() {
    sh(&format!(
        r#"
for m in nvmet nvmet-tcp crc32c_generic; do modprobe $m; done
modprobe null_blk nr_devices=0
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
N=/sys/kernel/config/nullb/nullb0
mkdir $N; echo 256 > $N/size; echo 512 > $N/blocksize; echo 1 > $N/memory_backed; echo 2 > $N/queue_mode; echo 0 > $N/irqmode; echo 1 > $N/power
C=/sys/kernel/config/nvmet
mkdir $C/subsystems/{NQN}
echo 0 > $C/subsystems/{NQN}/attr_allow_any_host
echo KERNELHOST0001 > $C/subsystems/{NQN}/attr_serial
mkdir $C/hosts/{HOST}
ln -s $C/hosts/{HOST} $C/subsystems/{NQN}/allowed_hosts/{HOST}
mkdir $C/subsystems/{NQN}/namespaces/1
echo /dev/nullb0 > $C/subsystems/{NQN}/namespaces/1/device_path
echo 1 > $C/subsystems/{NQN}/namespaces/1/enable
mkdir $C/ports/1
echo tcp > $C/ports/1/addr_trtype; echo ipv4 > $C/ports/1/addr_adrfam
echo 127.0.0.1 > $C/ports/1/addr_traddr; echo {PORT} > $C/ports/1/addr_trsvcid
ln -s $C/subsystems/{NQN} $C/ports/1/subsystems/{NQN}
"#
    ));
}

fn attach_params(hostnqn: &str, digests: bool) -> Value {
    json!({"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": PORT,
        "subnqn": NQN, "hostnqn": hostnqn, "hdgst": digests, "ddgst": digests})
}

#[test]
fn pollux_host_verifies_a_kernel_nvmet_namespace_and_reports_a_refused_host() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1536).timeout(Duration::from_secs(900)), || {
        kernel_target();
        let dir = TempDir::new("kernel-target");
        // The host's largest command is 1 MiB (nvmet-tcp sets no MDTS):
        // 4 MiB requests split into four.
        for digests in [false, true] {
            let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
                {"method": "bdev_nvme_attach_controller", "params": attach_params(HOST, digests)}]}]});
            let path = dir.join("perf.json");
            std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
            for (qd, size) in [(1, 512), (32, 4096), (32, 131072), (4, 4 << 20)] {
                let out = Command::new(bin("pollux-perf"))
                    .arg("-c")
                    .arg(&path)
                    .args(["--no-pin", "-m", "0x1", "-r"])
                    .arg(dir.join("perf.sock"))
                    .args(["-b", "Nvme0n1", "-q", &qd.to_string(), "-o", &size.to_string(), "-w", "verify", "-t", "2", "--json"])
                    .output()
                    .expect("run pollux-perf");
                let what = format!("digests {digests}, QD {qd}, {size} bytes");
                let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                    panic!("{what}: no report ({e}):\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
                });
                assert!(out.status.success(), "{what}: {r}");
                assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{what}: {r}");
                assert_eq!(r["total"]["errors"], 0, "{what}: {r}");
                assert_eq!(r["verify_mismatches"], json!([]), "{what}: {r}");
            }
        }
        // The daemon: a host NQN the kernel does not allow is refused with
        // a clear error, and the allowed one attaches after it.
        let d = Daemon::start(DaemonOpts::default());
        let e = d.call("bdev_nvme_attach_controller", Some(attach_params(STRANGER, false))).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains(STRANGER) && e.to_lowercase().contains("host"), "{e}");
        let names = d.call("bdev_nvme_attach_controller", Some(attach_params(HOST, true))).unwrap();
        assert_eq!(names, json!(["Nvme0n1"]));
        let b = d.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).unwrap();
        assert_eq!(b[0]["num_blocks"], 524288, "{b}");
        let c = d.call("bdev_nvme_get_controllers", None).unwrap();
        assert!(c[0]["ctrlrs"][0]["serial_number"].as_str().unwrap().starts_with("KERNELHOST0001"), "{c}");
        d.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).unwrap();
        assert!(!d.log().contains("panicked"));
        assert_eq!(d.stop().code(), Some(0));
    });
}
