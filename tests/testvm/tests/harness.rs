//! The harness itself, end to end: exit statuses and output come back, a hung
//! guest is an infrastructure failure, networking reaches the host, and
//! `in_guest` sees the requested controllers and namespaces.

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use pollux_testvm::{Error, GuestCommand, InfraFailure, TestVm, VmConfig, in_guest, is_guest};

fn vm(config: VmConfig) -> TestVm {
    TestVm::new(config).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn command_status_and_output_come_back() {
    let out = vm(VmConfig::new().controllers(0))
        .run(&GuestCommand::new("/bin/sh").args(["-c", "echo out; echo err >&2; pwd; exit 7"]).current_dir("/usr"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 7);
    assert_eq!(out.stdout_lossy(), "out\n/usr\n");
    assert_eq!(out.stderr_lossy(), "err\n");
    assert!(out.timing.boot > Duration::ZERO && out.timing.total >= out.timing.boot);
}

#[test]
fn hung_guest_is_an_infrastructure_failure() {
    let err = vm(VmConfig::new().controllers(0).timeout(Duration::from_secs(4)))
        .run(&GuestCommand::new("sleep").arg("600"))
        .expect_err("the guest cannot finish a 600 s sleep in 4 s");
    assert!(err.is_infrastructure(), "{err}");
    assert!(err.to_string().contains("INFRASTRUCTURE FAILURE"));
    let Error::Infrastructure(infra) = err else { unreachable!("checked above") };
    assert!(matches!(infra.kind, InfraFailure::Timeout(_)), "{infra}");
    // Kept for post-mortems of real failures; this one was expected.
    std::fs::remove_dir_all(&infra.work_dir).expect("remove the kept work folder");
}

/// A kernel crash in the guest (here its report, written to the kernel's
/// log) ends the run soon after, as an infrastructure failure that shows
/// the crash, instead of at the timeout with only what came after.
#[test]
fn a_guest_kernel_crash_stops_the_run() {
    let start = std::time::Instant::now();
    let err = vm(VmConfig::new().controllers(0).timeout(Duration::from_secs(300)))
        .run(&GuestCommand::new("sh").arg("-c").arg("echo '<2>kernel BUG at testvm/harness.rs:1!' > /dev/kmsg && sleep 600"))
        .expect_err("the run ends at the crash");
    let Error::Infrastructure(infra) = err else { panic!("not an infrastructure failure: {err}") };
    assert!(matches!(&infra.kind, InfraFailure::GuestKernelCrash(l) if l.contains("kernel BUG at testvm/harness.rs:1!")), "{infra}");
    assert!(infra.console.contains("(from the kernel crash"), "{infra}");
    assert!(start.elapsed() < Duration::from_secs(250), "stopped at {:?}, not soon after the crash", start.elapsed());
    std::fs::remove_dir_all(&infra.work_dir).expect("remove the kept work folder");
}

#[test]
fn guest_network_reaches_host_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        text
    });
    let script = format!("echo hello-from-guest > /dev/tcp/10.0.2.2/{port}");
    let out = vm(VmConfig::new().controllers(0).network(true))
        .run(&GuestCommand::new("bash").args(["-c", &script]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 0, "{}", out.stderr_lossy());
    assert_eq!(server.join().expect("server thread"), "hello-from-guest\n");
}

#[test]
fn in_guest_sees_controllers_namespaces_and_hugepages() {
    let config = VmConfig::new().controllers(2).namespaces(2).namespace_size(64 << 20).hugepages(32);
    in_guest(&config, || {
        assert!(is_guest());
        let mut disks: Vec<String> = std::fs::read_dir("/sys/block")
            .expect("/sys/block")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("nvme"))
            .collect();
        disks.sort();
        assert_eq!(disks, ["nvme0n1", "nvme0n2", "nvme1n1", "nvme1n2"]);
        let sectors = std::fs::read_to_string("/sys/block/nvme1n2/size").expect("size");
        assert_eq!(sectors.trim(), (64u64 << 20 >> 9).to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        assert!(meminfo.lines().any(|l| l.split_whitespace().eq(["HugePages_Total:", "32"])), "{meminfo}");
    });
}
