//! The NVMe driver against QEMU's emulated controllers, bound to vfio-pci in
//! the test guest: pollux-nvme (identify, logs, features, format),
//! pollux-perf verify at queue depths 1, 32 and 128 with I/O sizes from
//! 512 B to twice MDTS on two controllers with two namespaces each, a
//! controller reset during verify I/O, deallocate and write zeroes read back
//! as zeroes, SPDK's client, hot removal, and the daemon shutting
//! controllers down cleanly (CC.SHN).
//!
//! Binaries come from the test's own target dir: `cargo build --release
//! --workspace --bins` first (scripts/test does).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_core::bdev::{self, BdevIo, IoStatus};
use pollux_core::dma;
use pollux_core::reactor::Harness;
use pollux_nvme_driver::{Controller, ControllerOptions, PciAddress};
use pollux_testvm::{NvmeDriver, VmConfig, in_guest};
use serde_json::Value;

/// QEMU's first two NVMe controllers on q35 (serials pollux0, pollux1).
const CTRL0: &str = "0000:00:03.0";
const CTRL1: &str = "0000:00:04.0";

fn vm() -> VmConfig {
    VmConfig::new().controllers(2).namespaces(2).namespace_size(128 << 20).memory_mib(2048).hugepages(512).nvme_driver(NvmeDriver::Vfio)
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release --workspace --bins` first", p.display());
    p
}

fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// SPDK's client (PyPI `spdk`), from PATH or pyenv's versions.
fn spdk_rpc() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(rd) = std::fs::read_dir("/root/.pyenv/versions") {
        dirs.extend(rd.flatten().map(|e| e.path().join("bin")));
    }
    dirs.into_iter()
        .map(|d| d.join("spdk-rpc"))
        .find(|p| p.is_file())
        .expect("spdk-rpc is not installed (pip install spdk; scripts/test installs it)")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn nvme(args: &[&str]) -> Value {
    json_of(&run(&format!("pollux-nvme {args:?}"), Command::new(bin("pollux-nvme")).args(args).arg("--json")))
}

/// A config attaching both controllers.
fn config(dir: &std::path::Path) -> PathBuf {
    let attach = |name: &str, addr: &str| serde_json::json!({"method": "bdev_nvme_attach_controller", "params": {"name": name, "trtype": "PCIe", "traddr": addr}});
    let cfg = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": [attach("Nvme0", CTRL0), attach("Nvme1", CTRL1)]}]});
    let p = dir.join("nvme.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    p
}

fn perf(cfg: &std::path::Path, qd: u32, size: u64, workload: &str, secs: u32, only: Option<&str>, extra: &[&str]) -> (Value, String) {
    let mut cmd = Command::new(bin("pollux-perf"));
    if let Some(b) = only {
        cmd.args(["-b", b]);
    }
    cmd.args(extra);
    let out = cmd
        .arg("-c")
        .arg(cfg)
        .args(["-q", &qd.to_string(), "-o", &size.to_string(), "-w", workload, "-t", &secs.to_string(), "--json", "--log-level", "INFO"])
        .output()
        .expect("run pollux-perf");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pollux-perf -q {qd} -o {size} -w {workload} failed ({}):\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    (json_of(&out), stderr)
}

#[test]
fn nvme_tool_zeroes_and_clean_daemon_stop() {
    in_guest(&vm(), || {
        // pollux-nvme: list, identify, namespaces, logs, features.
        let list = nvme(&["list"]);
        let devs = list["Devices"].as_array().expect("devices");
        assert_eq!(devs.len(), 2, "{list}");
        for (i, d) in devs.iter().enumerate() {
            assert_eq!(d["Driver"], "vfio-pci");
            assert_eq!(d["ModelNumber"], "QEMU NVMe Ctrl");
            assert_eq!(d["SerialNumber"], format!("pollux{i}"));
            assert_eq!(d["Namespaces"].as_array().map(Vec::len), Some(2), "{d}");
        }
        let id = nvme(&["identify", CTRL1]);
        assert_eq!(id["mn"], "QEMU NVMe Ctrl");
        assert_eq!(id["sn"], "pollux1");
        assert_eq!(id["vid"], 0x1b36);
        assert_eq!(id["mdts"], 7);
        let ns = nvme(&["identify", "--ns", "2", CTRL0]);
        assert_eq!(ns["nsze"], (128u64 << 20) / 512, "{ns}");
        let text = run("identify text", Command::new(bin("pollux-nvme")).args(["identify", CTRL0]));
        assert!(String::from_utf8_lossy(&text.stdout).contains("sn        : pollux0"));
        let missing = Command::new(bin("pollux-nvme")).args(["identify", "--ns", "9", CTRL0]).output().unwrap();
        assert!(!missing.status.success(), "an inactive namespace is an error");
        let smart = nvme(&["smart-log", CTRL0]);
        assert!(smart["temperature"].as_u64().unwrap() > 200, "{smart}");
        let errors = nvme(&["error-log", CTRL0]);
        assert!(errors["errors"].as_array().is_some_and(|e| !e.is_empty()));
        let vwc = nvme(&["get-feature", "-f", "0x06", CTRL0]);
        assert_eq!(vwc["name"], "Volatile Write Cache");
        nvme(&["set-feature", "-f", "6", "-v", "0", CTRL0]);
        assert_eq!(nvme(&["get-feature", "-f", "6", CTRL0])["value"], 0, "volatile write cache turned off");
        nvme(&["set-feature", "-f", "6", "-v", "1", CTRL0]);
        assert_eq!(nvme(&["get-feature", "-f", "6", CTRL0])["value"], 1);
        let nq = nvme(&["get-feature", "-f", "7", CTRL0]);
        assert!(nq["value"].as_u64().unwrap() > 0, "number of queues: {nq}");
        let bad = Command::new(bin("pollux-nvme")).args(["get-feature", "-f", "0x55", CTRL0]).output().unwrap();
        assert!(
            !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("INVALID FIELD"),
            "a decoded NVMe error: {}",
            String::from_utf8_lossy(&bad.stderr)
        );
        let fmt = nvme(&["format", "--ns", "2", CTRL1]);
        assert_eq!(fmt["result"], "success");

        // Write zeroes and deallocate read back as zeroes, through the bdev API.
        zeroes_read_back_as_zeroes();

        // The daemon attaches both controllers from its config and, on
        // SIGTERM, deletes the bdevs and shuts each controller down.
        let dir = std::env::temp_dir().join("pollux-nvme-daemon");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = config(&dir);
        let sock = dir.join("rpc.sock");
        let log = std::fs::File::create(dir.join("tgt.log")).unwrap();
        let mut tgt = Command::new(bin("pollux-tgt"))
            .arg("-c")
            .arg(&cfg)
            .arg("-r")
            .arg(&sock)
            .args(["--log-level", "INFO"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pollux-tgt");
        let t0 = Instant::now();
        let bdevs = loop {
            let out = Command::new(bin("pollux-rpc")).arg("-s").arg(&sock).arg("bdev_get_bdevs").output().unwrap();
            if out.status.success() {
                break json_of(&out);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "pollux-tgt did not come up: {}",
                std::fs::read_to_string(dir.join("tgt.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let names: Vec<&str> = bdevs.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Nvme0n1", "Nvme0n2", "Nvme1n1", "Nvme1n2"]);
        assert_eq!(bdevs[0]["product_name"], "NVMe disk");
        let ctrls = json_of(&run(
            "get_controllers",
            Command::new(bin("pollux-rpc")).arg("-s").arg(&sock).arg("call").arg("bdev_nvme_get_controllers"),
        ));
        assert_eq!(ctrls.as_array().map(Vec::len), Some(2));
        // SPDK's own client: detach and re-attach Nvme1, reset it, list it.
        let spdk = |args: &[&str]| run(&format!("spdk-rpc {args:?}"), Command::new(spdk_rpc()).arg("-s").arg(&sock).args(args));
        spdk(&["bdev_nvme_detach_controller", "Nvme1"]);
        let attached = spdk(&["bdev_nvme_attach_controller", "-b", "Nvme1", "-t", "PCIe", "-a", CTRL1]);
        assert_eq!(String::from_utf8_lossy(&attached.stdout).split_whitespace().collect::<Vec<_>>(), ["Nvme1n1", "Nvme1n2"]);
        spdk(&["bdev_nvme_reset_controller", "Nvme1"]);
        // And reads a controller's health (SMART) log, off the reactor.
        let health = json_of(&spdk(&["bdev_nvme_get_controller_health_info", "-c", "Nvme0"]));
        assert_eq!(health["serial_number"], "pollux0", "{health}");
        assert_eq!(health["traddr"], CTRL0, "{health}");
        let kelvin = smart["temperature"].as_i64();
        assert_eq!(health["temperature_celsius"].as_i64(), kelvin.map(|k| k - 273), "{health} against the tool's {smart}");
        assert!(health["power_on_hours"].is_u64() && health["media_errors"].is_u64(), "{health}");
        let one = json_of(&spdk(&["bdev_nvme_get_controllers", "-n", "Nvme1"]));
        assert_eq!(one[0]["ctrlrs"][0]["trid"]["traddr"], CTRL1, "{one}");
        let refused = Command::new(spdk_rpc())
            .arg("-s")
            .arg(&sock)
            .args(["bdev_nvme_attach_controller", "-b", "Nvme9", "-t", "fc", "-a", "127.0.0.1", "-s", "4420"])
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
        assert!(!refused.status.success() && said.contains("trtype fc is not supported"), "NVMe-oF FC attach refused clearly: {said}");
        let saved = run("save_config", Command::new(bin("pollux-rpc")).arg("-s").arg(&sock).arg("save_config"));
        let saved = String::from_utf8_lossy(&saved.stdout);
        assert_eq!(saved.matches("bdev_nvme_attach_controller").count(), 2, "one attach call per controller:\n{saved}");
        // Hot removal: the kernel removes controller 1 and asks Pollux for it
        // back (VFIO release request); its bdevs go away and the removal
        // completes, while controller 0 keeps working.
        let mut remove = Command::new("sh").arg("-c").arg(format!("echo 1 > /sys/bus/pci/devices/{CTRL1}/remove")).spawn().unwrap();
        let t0 = Instant::now();
        loop {
            let out = Command::new(bin("pollux-rpc")).arg("-s").arg(&sock).arg("bdev_get_bdevs").output().unwrap();
            assert!(
                out.status.success(),
                "bdev_get_bdevs during hot removal failed ({}): {}\npollux-tgt ({:?}) log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                tgt.try_wait(),
                std::fs::read_to_string(dir.join("tgt.log")).unwrap_or_default()
            );
            let v = json_of(&out);
            let names: Vec<&str> = v.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
            if names == ["Nvme0n1", "Nvme0n2"] {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "removed controller's bdevs still there: {names:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(remove.wait().unwrap().success(), "the kernel finished removing the device");
        assert!(!std::path::Path::new(&format!("/sys/bus/pci/devices/{CTRL1}")).exists());
        // SAFETY: a pid we spawned and have not reaped.
        unsafe { libc::kill(tgt.id() as i32, libc::SIGTERM) };
        let status = tgt.wait().unwrap();
        let text = std::fs::read_to_string(dir.join("tgt.log")).unwrap();
        assert!(status.success(), "pollux-tgt exit {status}:\n{text}");
        assert!(text.contains("NVMe controller Nvme0: shutdown complete"), "Nvme0 shut down (CC.SHN):\n{text}");
        assert!(text.contains("NVMe controller Nvme1: the kernel asks for the device back"), "{text}");
        // And the controllers come back up afterwards.
        assert_eq!(nvme(&["identify", CTRL0])["sn"], "pollux0");
    });
}

/// Hot removal repeated under RPC load (`hot-remove.sh`): once, the
/// daemon aborted when the kernel finished a removal before vfio-ioctls
/// looked the device's sysfs directory up again while dropping it.
#[test]
fn hot_removal_repeated_while_clients_poll() {
    in_guest(&vm(), || {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hot-remove.sh");
        let dir = bin("pollux-tgt").parent().unwrap().to_path_buf();
        let out = run("hot-remove.sh", Command::new("sh").arg(script).arg(dir).arg("15"));
        let said = String::from_utf8_lossy(&out.stdout);
        print!("{said}");
        assert!(said.contains("hot removal: 15 rounds passed"), "{said}");
    });
}

/// Completed requests: status and the data read.
type Done = Rc<std::cell::RefCell<Vec<(IoStatus, Vec<u8>)>>>;

/// Write a pattern, write zeroes over part and deallocate another part,
/// read back: zeroes where asked, the pattern elsewhere.
fn zeroes_read_back_as_zeroes() {
    let h = Harness::new(1);
    let addr: PciAddress = CTRL0.parse().unwrap();
    let ctrl = h.on(0, || Controller::attach_pci("Zero", addr, ControllerOptions::default()).expect("attach"));
    let ns = ctrl.namespace(1).expect("namespace 1");
    assert!(ns.data.deallocated_reads_zeroes() || ns.data.dlfeat & 7 == 0, "DLFEAT {:#x}", ns.data.dlfeat);
    let c = ctrl.clone();
    h.on(0, move || pollux_nvme_driver::bdev::add_controller(c, serde_json::json!({})).expect("bdevs"));
    let desc = h.on(0, || bdev::open("Zeron1", true, |_| {}).expect("open"));
    let done: Done = Rc::default();
    let step = |f: &dyn Fn(&Done), n: usize| {
        let d = done.clone();
        h.on(0, || f(&d));
        let t0 = Instant::now();
        while done.borrow().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(30), "I/O did not complete");
            h.step_all();
        }
    };
    let cb = |d: &Done| {
        let d = d.clone();
        move |mut io: BdevIo| {
            let data: Vec<u8> = io.take_buffers().iter().flat_map(|b| b.to_vec()).collect();
            d.borrow_mut().push((io.status(), data));
        }
    };
    let buf = |fill: u8| {
        let mut b = dma::pool().unwrap().get(128 << 10).unwrap();
        b.set_len(128 << 10);
        b.fill(fill);
        b
    };
    let ch = h.on(0, || desc.channel());
    // 256 blocks of 0x5a, then zeroes over 64..128 and deallocate 160..224.
    step(&|d| desc.write(&ch, [buf(0x5a)], 0, 256, cb(d)), 1);
    step(
        &|d| {
            desc.write_zeroes(&ch, 64, 64, cb(d));
            desc.unmap(&ch, 160, 64, cb(d));
        },
        3,
    );
    step(&|d| desc.read(&ch, [buf(0xff)], 0, 256, cb(d)), 4);
    let d = done.borrow();
    assert!(d.iter().all(|x| x.0 == IoStatus::Success), "{:?}", d.iter().map(|x| x.0).collect::<Vec<_>>());
    let data = &d[3].1;
    for (blk, chunk) in data.chunks(512).enumerate() {
        let zero = (64..128).contains(&blk) || (160..224).contains(&blk);
        let want = if zero { 0 } else { 0x5a };
        assert!(chunk.iter().all(|&b| b == want), "block {blk}: expected {want:#x}");
    }
    drop(d);
    h.on(0, move || drop((ch, desc)));
    let detached = Rc::new(std::cell::Cell::new(false));
    let det = detached.clone();
    h.on(0, move || pollux_nvme_driver::bdev::detach("Zero", move || det.set(true)).unwrap());
    let t0 = Instant::now();
    while !detached.get() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        h.step_all();
    }
    drop(ctrl);
}

#[test]
fn nvme_verify_at_every_depth_and_size_and_through_resets() {
    in_guest(&vm(), || {
        let dir = std::env::temp_dir().join("pollux-nvme-perf");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = config(&dir);
        // MDTS is 7 (512 KiB): 1 MiB requests are split into two commands.
        // (pollux-perf gives buffers above 128 KiB a hugepage each, so the
        // deepest 1 MiB run uses one namespace.)
        for qd in [1u32, 32, 128] {
            for size in [512u64, 4096, 131072, 1 << 20] {
                let one = qd == 128 && size == 1 << 20;
                let (r, _) = perf(&cfg, qd, size, "verify", 1, one.then_some("Nvme1n2"), &[]);
                let jobs = r["jobs"].as_array().expect("jobs");
                assert_eq!(jobs.len(), if one { 1 } else { 4 }, "one job per namespace of both controllers: {r}");
                for j in jobs {
                    assert!(j["ios"].as_u64().unwrap() > 0, "q{qd} o{size}: {j}");
                    assert_eq!(j["errors"], 0, "q{qd} o{size}: {j}");
                }
                assert_eq!(r["verify_mismatches"].as_array().map(Vec::len), Some(0), "q{qd} o{size}: {r}");
                pollux_tests::assert_few_allocations(&r, &format!("NVMe over VFIO, q{qd} o{size}"));
            }
        }
        // Two reactors: each has its own queue pair on each controller.
        let (r, _) = perf(&cfg, 32, 4096, "verify", 1, None, &["-m", "0x3"]);
        assert_eq!(r["jobs"].as_array().map(Vec::len), Some(8), "a job per namespace per reactor: {r}");
        assert_eq!(r["total"]["errors"], 0, "{r}");
        // The module's options from the config (SPDK's bdev_nvme_set_options
        // before the attach calls): queue pairs polled on a 200 us period,
        // timeouts reset the controller.
        let mut with_opts: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        let set = serde_json::json!({"method": "bdev_nvme_set_options", "params": {"nvme_ioq_poll_period_us": 200, "action_on_timeout": "reset", "timeout_us": 5_000_000}});
        with_opts["subsystems"][0]["config"].as_array_mut().unwrap().insert(0, set);
        let cfg_opts = dir.join("nvme-opts.json");
        std::fs::write(&cfg_opts, serde_json::to_vec(&with_opts).unwrap()).unwrap();
        let (r, _) = perf(&cfg_opts, 32, 4096, "verify", 1, None, &[]);
        assert_eq!(r["total"]["errors"], 0, "{r}");
        assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["verify_mismatches"].as_array().map(Vec::len), Some(0), "{r}");
        // Controller resets (a bdev reset every second) during verify I/O:
        // in-flight commands are resubmitted, nothing lost or doubled.
        for mode in [&[][..], &["--interrupt-mode"][..]] {
            let (r, log) = perf(&cfg, 32, 4096, "reset", 3, None, mode);
            assert_eq!(r["total"]["errors"], 0, "{mode:?} {r}");
            assert_eq!(r["verify_mismatches"].as_array().map(Vec::len), Some(0), "{mode:?} {r}");
            assert!(r["resets"].as_u64().unwrap() >= 2, "{mode:?} {r}");
            assert!(log.contains("reset done") && log.contains("resubmitting"), "the driver reset the controller under I/O:\n{log}");
        }
        // Interrupt mode: the I/O queues signal MSI-X vectors and reactors
        // sleep until they fire.
        let (r, log) = perf(&cfg, 1, 4096, "verify", 2, None, &["--interrupt-mode"]);
        assert!(log.contains("MSI-X vectors for interrupt mode"), "{log}");
        assert_eq!(r["total"]["errors"], 0, "{r}");
        assert!(r["total"]["ios"].as_u64().unwrap() > 100, "completions arrive through MSI-X: {r}");
    });
}
