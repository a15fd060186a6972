//! Pollux's NVMe-oF host against the Linux kernel's nvmet-tcp target, both
//! in one test guest over its loopback: a memory-backed null_blk namespace
//! attached through `bdev_nvme_attach_controller` and verified by
//! pollux-perf at several depths and sizes (past the host's largest command,
//! so requests split) with digests off and on; a host NQN the kernel
//! target does not allow, reported as such; discovery of the five
//! subsystems the kernel lists (a log longer than one page); and ANA: two
//! ports as two paths, one made inaccessible and optimized again, followed
//! by the host's reported states and by a verify that sees no error; and
//! a transition that never ends, bounded by the ANA transition time; and
//! a namespace the kernel adds, disables and enables again after the
//! attach, followed by the host's bdevs.

use std::process::Command;
use std::time::Duration;

use pollux_tests::{Daemon, DaemonOpts, TempDir, bin, clean_perf_run, perf_command, sh};
use pollux_testvm::{VmConfig, in_guest};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.kernel:pollux-host";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:5a0c0c2e-1111-4222-8333-444455556666";
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:deadbeef-0000-4000-8000-00000000dead";
const PORT: &str = "4420";
const PORT2: &str = "4421";
/// Prefix of the extra subsystems (1 to 4) that lengthen the discovery log.
const EXTRA: &str = "nqn.2016-06.io.kernel:extra";

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
# A second port to the same subsystem: two paths, each its own ANA group 1.
mkdir $C/ports/2
echo tcp > $C/ports/2/addr_trtype; echo ipv4 > $C/ports/2/addr_adrfam
echo 127.0.0.1 > $C/ports/2/addr_traddr; echo {PORT2} > $C/ports/2/addr_trsvcid
ln -s $C/subsystems/{NQN} $C/ports/2/subsystems/{NQN}
# More subsystems on the same port, open to any host: with them the
# discovery log is longer than one 4 KiB page.
for i in 1 2 3 4; do
  N=/sys/kernel/config/nullb/nullb$i
  mkdir $N; echo 16 > $N/size; echo 512 > $N/blocksize; echo 1 > $N/memory_backed; echo 2 > $N/queue_mode; echo 0 > $N/irqmode; echo 1 > $N/power
  S=$C/subsystems/{EXTRA}$i
  mkdir $S; echo 1 > $S/attr_allow_any_host
  mkdir $S/namespaces/1; echo /dev/nullb$i > $S/namespaces/1/device_path; echo 1 > $S/namespaces/1/enable
  ln -s $S $C/ports/1/subsystems/{EXTRA}$i
done
"#
    ));
}

/// Set the ANA state of group 1 on nvmet port `port`.
fn set_ana(port: u32, state: &str) {
    sh(&format!("echo {state} > /sys/kernel/config/nvmet/ports/{port}/ana_groups/1/ana_state"));
}

/// Writes completed by the null_blk device behind the main subsystem.
fn nullb0_writes() -> u64 {
    nullb0_stat(4)
}

/// Reads completed by the same device.
fn nullb0_reads() -> u64 {
    nullb0_stat(0)
}

fn nullb0_stat(field: usize) -> u64 {
    let s = std::fs::read_to_string("/sys/block/nullb0/stat").unwrap();
    s.split_whitespace().nth(field).unwrap().parse().unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `wait_for`, with the daemon's log in the failure.
fn wait_logged(d: &Daemon, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out waiting for {what}; the daemon's log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
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
        // Discovery: the kernel's log lists the five subsystems (more than
        // one page of entries); the service attaches each.
        d.call(
            "bdev_nvme_start_discovery",
            Some(
                json!({"name": "disc", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": PORT, "hostnqn": HOST, "wait_for_attach": true}),
            ),
        )
        .unwrap();
        let c = d.call("bdev_nvme_get_controllers", None).unwrap();
        let mut subs: Vec<String> =
            c.as_array().unwrap().iter().map(|c| c["ctrlrs"][0]["trid"]["subnqn"].as_str().unwrap().to_string()).collect();
        subs.sort();
        let mut want: Vec<String> = (1..=4).map(|i| format!("{EXTRA}{i}")).chain([NQN.to_string()]).collect();
        want.sort();
        assert_eq!(subs, want, "{c}");
        let bdevs = d.call("bdev_get_bdevs", None).unwrap();
        assert_eq!(bdevs.as_array().unwrap().len(), 5, "{bdevs}");
        d.call("bdev_nvme_stop_discovery", Some(json!({"name": "disc"}))).unwrap();
        // pollux-nvme reads the same log without the daemon.
        let out = Command::new(bin("pollux-nvme"))
            .args(["discover", "-t", "tcp", "-a", "127.0.0.1", "-s", PORT, "-q", HOST, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let log: Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed: Vec<&str> = log["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["subtype"] == "nvme subsystem")
            .map(|r| r["subnqn"].as_str().unwrap())
            .collect();
        assert_eq!(listed.len(), 5, "the five subsystems of port 1: {log}");
        assert_eq!(d.call("bdev_get_bdevs", None).unwrap(), json!([]));

        // ANA: the subsystem through both ports as two paths; the kernel
        // makes port 1 inaccessible and optimized again, and the host
        // follows (ANA change events, then the ANA log).
        let mut second = attach_params(HOST, false);
        second["trsvcid"] = json!(PORT2);
        second["multipath"] = json!("multipath");
        d.call("bdev_nvme_attach_controller", Some(attach_params(HOST, false))).unwrap();
        d.call("bdev_nvme_attach_controller", Some(second.clone())).unwrap();
        let states = |d: &Daemon| -> Vec<(String, String)> {
            let b = d.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).unwrap();
            b[0]["driver_specific"]["nvme"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["trid"]["trsvcid"].as_str().unwrap().to_string(), p["ns_data"]["ana_state"].as_str().unwrap().to_string()))
                .collect()
        };
        let both = |a: &str, b: &str| vec![(PORT.to_string(), a.to_string()), (PORT2.to_string(), b.to_string())];
        wait_for("both paths optimized", || states(&d) == both("optimized", "optimized"));
        set_ana(1, "inaccessible");
        wait_for("port 1 inaccessible", || states(&d) == both("inaccessible", "optimized"));
        set_ana(1, "optimized");
        wait_for("port 1 optimized again", || states(&d) == both("optimized", "optimized"));
        d.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).unwrap();

        // A verify over both paths (active-passive: port 1) while port 1
        // becomes inaccessible and comes back: no request fails.
        let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_attach_controller", "params": attach_params(HOST, false)},
            {"method": "bdev_nvme_attach_controller", "params": second}]}]});
        let spawn = |args: &[&str]| {
            perf_command(&dir, &cfg, args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run pollux-perf")
        };
        let perf = spawn(&["-b", "Nvme0n1", "-q", "16", "-o", "4096", "-w", "verify", "-t", "6", "-m", "0x1", "--json"]);
        let w0 = nullb0_writes();
        wait_for("writes from the verify", || nullb0_writes() > w0 + 100);
        set_ana(1, "inaccessible");
        let w1 = nullb0_writes();
        wait_for("writes through port 2", || nullb0_writes() > w1 + 1000);
        set_ana(1, "optimized");
        let (_, err) = clean_perf_run(perf);
        assert!(err.contains("ANA change"), "{err}");

        // A transition that does not end: port 2 inaccessible, port 1 in
        // ANA change. Requests wait for the change, at most the kernel's
        // ANA transition time (ANATT); then port 1 counts as inaccessible
        // and they fail, and the run ends instead of hanging.
        let perf = spawn(&["-b", "Nvme0n1", "-q", "4", "-o", "4096", "-w", "randread", "-t", "4", "-m", "0x1", "--json"]);
        let r0 = nullb0_reads();
        wait_for("reads from the run", || nullb0_reads() > r0 + 100);
        set_ana(2, "inaccessible");
        set_ana(1, "change");
        let out = perf.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("still in ANA change after the transition time"), "{err}");
        let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert!(!out.status.success() || r["total"]["errors"].as_u64().unwrap_or(0) > 0, "{r}\n{err}");
        set_ana(1, "optimized");
        set_ana(2, "optimized");

        // Namespaces the kernel adds and takes away after the attach: the
        // host follows its namespace attribute notices.
        d.call("bdev_nvme_attach_controller", Some(attach_params(HOST, false))).unwrap();
        let blocks = |d: &Daemon, name: &str| -> Option<u64> {
            let b = d.call("bdev_get_bdevs", None).unwrap();
            b.as_array().unwrap().iter().find(|b| b["name"] == name).map(|b| b["num_blocks"].as_u64().unwrap())
        };
        assert_eq!(blocks(&d, "Nvme0n2"), None);
        sh(&format!(
            r#"
N=/sys/kernel/config/nullb/nullb5
mkdir $N; echo 16 > $N/size; echo 4096 > $N/blocksize; echo 1 > $N/memory_backed; echo 2 > $N/queue_mode; echo 0 > $N/irqmode; echo 1 > $N/power
S=/sys/kernel/config/nvmet/subsystems/{NQN}/namespaces/2
mkdir $S; echo /dev/nullb5 > $S/device_path; echo 1 > $S/enable
"#
        ));
        wait_logged(&d, "Nvme0n2 from the kernel's new namespace", || blocks(&d, "Nvme0n2") == Some(4096));
        sh(&format!("echo 0 > /sys/kernel/config/nvmet/subsystems/{NQN}/namespaces/2/enable"));
        wait_logged(&d, "Nvme0n2 gone with the namespace", || blocks(&d, "Nvme0n2").is_none());
        assert_eq!(blocks(&d, "Nvme0n1"), Some(524288));
        sh(&format!("echo 1 > /sys/kernel/config/nvmet/subsystems/{NQN}/namespaces/2/enable"));
        wait_logged(&d, "Nvme0n2 back", || blocks(&d, "Nvme0n2") == Some(4096));
        d.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).unwrap();
        assert!(!d.log().contains("panicked"));
        assert_eq!(d.stop().code(), Some(0));
    });
}
