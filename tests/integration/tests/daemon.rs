//! The daemon's life cycle: start-up options, config files, signals, idle CPU.

use std::time::Duration;

use pollux_core::rpc::{ClientError, RpcError};
use pollux_tests::{Daemon, DaemonOpts, bin, cpu_seconds};
use serde_json::json;

#[test]
fn sigterm_and_sigint_exit_zero_within_a_second() {
    for (sig, busy) in [(libc::SIGTERM, false), (libc::SIGINT, true)] {
        let mut d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), interrupt_mode: !busy, ..Default::default() });
        d.signal(sig);
        let st = d.wait_exit(Duration::from_secs(1)).unwrap_or_else(|| panic!("no exit within 1 s after signal {sig}"));
        assert_eq!(st.code(), Some(0), "log:\n{}", d.log());
        assert!(d.log().contains("shutting down"));
    }
}

#[test]
fn a_core_outside_the_affinity_is_a_clear_start_up_error() {
    let mut d = Daemon::spawn(&DaemonOpts { cpumask: "[0,63]".into(), ..Default::default() });
    let st = d.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_ne!(st.code(), Some(0));
    assert!(d.log().contains("core 63 is not available to this process"), "{}", d.log());
    let mut d = Daemon::spawn(&DaemonOpts { cpumask: "0xzz".into(), ..Default::default() });
    assert_ne!(d.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(0));
    assert!(d.log().contains("0xzz"), "{}", d.log());
}

#[test]
fn a_bad_config_entry_stops_start_up_naming_the_entry() {
    let cfg = json!({"subsystems": [{"subsystem": "log", "config": [
        {"method": "log_set_level", "params": {"level": "DEBUG"}},
        {"method": "log_set_level", "params": {"levle": "DEBUG"}}
    ]}]});
    let mut d = Daemon::spawn(&DaemonOpts { config: Some(cfg), ..Default::default() });
    let st = d.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(st.code(), Some(1));
    let log = d.log();
    assert!(log.contains("config[1]") && log.contains("log_set_level") && log.contains("'levle'"), "{log}");

    let cfg = json!({"subsystems": [{"subsystem": "x", "config": [{"method": "bdev_frobnicate"}]}]});
    let mut d = Daemon::spawn(&DaemonOpts { config: Some(cfg), ..Default::default() });
    assert_eq!(d.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(1));
    assert!(d.log().contains("unknown method 'bdev_frobnicate'"), "{}", d.log());

    let mut d = Daemon::spawn(&DaemonOpts { config: Some(json!({"subsystems": 3})), ..Default::default() });
    assert_ne!(d.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(0));
    assert!(d.log().contains("must be an array"), "{}", d.log());
}

#[test]
fn config_file_calls_are_replayed() {
    let cfg = json!({"subsystems": [{"subsystem": "log", "config": [
        {"method": "log_set_print_level", "params": {"level": "WARNING"}}
    ]}]});
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    assert_eq!(d.call("log_get_print_level", None).unwrap(), json!("WARNING"));
}

#[test]
fn wait_for_rpc_holds_start_up() {
    let d = Daemon::start(DaemonOpts { wait_for_rpc: true, ..Default::default() });
    let mut c = d.client();
    let current = c.call("rpc_get_methods", Some(json!({"current": true}))).unwrap();
    assert!(current.as_array().unwrap().contains(&json!("framework_start_init")));
    assert_eq!(c.call("framework_start_init", None).unwrap(), json!(true));
    assert_eq!(c.call("framework_wait_init", None).unwrap(), json!(true));
    let e = c.call("framework_start_init", None).unwrap_err();
    assert!(matches!(e, ClientError::Rpc(ref e) if e.code == RpcError::INVALID_STATE), "{e}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start(DaemonOpts::default());
    let out = std::process::Command::new(bin("pollux-tgt")).args(["--interrupt-mode", "--no-pin", "-r"]).arg(&d.socket).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    // The first one is unharmed.
    assert!(d.call("spdk_get_version", None).is_ok());
}

#[test]
fn idle_cpu_in_interrupt_mode_is_under_two_percent() {
    // Start-up has finished when start() returns: from then on the daemon
    // is idle. The window is a measurement, not a wait.
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), interrupt_mode: true, ..Default::default() });
    let c0 = cpu_seconds(d.pid());
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let used = cpu_seconds(d.pid()) - c0;
    // Two reactors; under 2 % of one core in total.
    assert!(used / window.as_secs_f64() < 0.02, "idle daemon used {used:.3} s of CPU in {window:?}");
    let st = d.call("framework_get_reactors", None).unwrap();
    assert!(st["reactors"].as_array().unwrap().iter().all(|r| r["in_interrupt"] == true));
}

#[test]
fn default_config_starts_and_exports_its_malloc_bdev() {
    let d = Daemon::start(DaemonOpts { extra: vec!["--default-config".into()], ..Default::default() });
    let bdevs = d.call("bdev_get_bdevs", None).unwrap();
    assert_eq!(bdevs[0]["name"], "Malloc0");
    // A real iSCSI client sees the LUN on 127.0.0.1:3260.
    let ls = pollux_tests::tool("iscsi-ls", "libiscsi-bin");
    let out = std::process::Command::new(ls).args(["-s", "iscsi://127.0.0.1:3260"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("disk1") && text.contains("Lun:0"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // And an NVMe/TCP host sees its controller on 127.0.0.1:4420.
    let (mut admin, _cntlid) = pollux_tests::nvmf_client::Client::admin(4420, "nqn.2016-06.io.pollux:cnode1", 10_000, false, false);
    let (cqe, data) = admin.identify(1, 0);
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(&data[4..24], b"POLLUX00000000000001");
    drop(admin);
    assert_eq!(d.stop().code(), Some(0));
}

/// Without --wait-for-rpc, calls made while start-up runs (the config is
/// still being replayed) used to fail ("not allowed in the startup state")
/// or see half the config. The socket now answers only once start-up has
/// finished, as SPDK's does: a client that connects at once waits, and its
/// first answer already sees the whole config.
#[test]
fn calls_during_start_up_are_answered_once_it_has_finished() {
    // Enough calls that start-up lasts a while after the socket appears.
    const BDEVS: usize = 2000;
    let bdevs: Vec<_> = (0..BDEVS)
        .map(|i| json!({"method": "bdev_malloc_create", "params": {"name": format!("Early{i}"), "num_blocks": 2048, "block_size": 512}}))
        .collect();
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": bdevs}]});
    let d = Daemon::spawn(&DaemonOpts { config: Some(cfg), ..Default::default() });
    // Connect as soon as the socket exists (a poll for the file, not a wait
    // for the daemon to be ready).
    let t0 = std::time::Instant::now();
    let mut c = loop {
        if let Ok(c) = pollux_core::rpc::Client::connect(&d.socket) {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no RPC socket; log:\n{}", d.log());
        std::thread::yield_now();
    };
    c.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let got = c.call("bdev_get_bdevs", None).unwrap_or_else(|e| panic!("the first call failed: {e}; log:\n{}", d.log()));
    assert_eq!(got.as_array().map(Vec::len), Some(BDEVS), "the first answer sees the whole config");
    assert!(d.log().contains("calls are answered once start-up has finished"), "log:\n{}", d.log());
}

/// A config with one malloc bdev exported by iSCSI (target node `name`,
/// portal on `iscsi`) and by NVMe/TCP (subsystem `nqn`, listener on
/// `nvme`), any initiator and host allowed.
fn both_targets_config(name: &str, iscsi: u16, nvme: u16, nqn: &str) -> serde_json::Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": 512}}]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": iscsi.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"]}},
            {"method": "iscsi_create_target_node", "params": {"name": name, "alias_name": name, "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
                "luns": [{"bdev_name": "M0", "lun_id": 0}], "queue_depth": 8}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": {"bdev_name": "M0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nvme.to_string()}}}
        ]}
    ]})
}

/// Interrupt mode after NVMe/TCP and iSCSI traffic: once the last
/// connection of a reactor closed, its NVMe/TCP timeout poller was paused
/// but its stale deadline kept the reactor from ever sleeping again (100%
/// of each core). Idle is idle again after clients come and go.
#[test]
fn idle_cpu_in_interrupt_mode_after_nvmf_and_iscsi_clients_left() {
    use pollux_tests::iscsi_host::{RawConn, free_port, target_iqn};
    use pollux_tests::nvmf_client::Client;
    let (iscsi, nvme) = (free_port(), free_port());
    let nqn = "nqn.2016-06.io.pollux:idle";
    let cfg = both_targets_config("idle", iscsi, nvme, nqn);
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), interrupt_mode: true, config: Some(cfg), ..Default::default() });
    {
        // I/O queues land on both reactors.
        let (mut a, cntlid) = Client::admin(nvme, nqn, 0, false, false);
        let mut q1 = Client::io(nvme, nqn, cntlid, 1, false, false);
        let mut q2 = Client::io(nvme, nqn, cntlid, 2, false, false);
        assert!(q1.write(1, 0, &[7u8; 512], 512, true).ok() && q2.read(1, 0, 1, 512).0.ok());
        assert!(a.identify(1, 0).0.ok());
        let mut c = RawConn::connect(iscsi);
        let r = c.login("iqn.2025-01.io.pollux:idle", Some(&target_iqn("idle")), 1);
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0));
        assert_eq!(c.read10(0, 1).map(|(st, _)| st), Some(0));
    }
    // Until the target has seen every client go.
    let t0 = std::time::Instant::now();
    loop {
        let ctrls = d.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": nqn}))).unwrap();
        let conns = d.call("iscsi_get_connections", None).unwrap();
        if ctrls.as_array().is_some_and(Vec::is_empty) && conns.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "clients still connected: {ctrls} {conns}");
        std::thread::yield_now();
    }
    let c0 = cpu_seconds(d.pid());
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let used = cpu_seconds(d.pid()) - c0;
    assert!(used / window.as_secs_f64() < 0.02, "idle daemon used {used:.3} s of CPU in {window:?} after its clients left");
}

/// Out of file descriptors, the listeners neither spin nor lose the
/// connections waiting in their backlogs: they try again every 100 ms,
/// say so in the log (once, not per attempt), and serve the connections
/// once descriptors are free. Before, a listener whose accept failed with
/// EMFILE was woken again at once by its still-readable socket: 100% of a
/// core in interrupt mode.
#[test]
fn out_of_descriptors_the_listeners_back_off_and_serve_later() {
    use pollux_tests::iscsi_host::{RawConn, free_port, target_iqn};
    use pollux_tests::nvmf_client::Client;
    let (iscsi, nvme) = (free_port(), free_port());
    let nqn = "nqn.2016-06.io.pollux:fds";
    let cfg = both_targets_config("fds", iscsi, nvme, nqn);
    let d = Daemon::start(DaemonOpts { cpumask: "0x1".into(), interrupt_mode: true, config: Some(cfg), ..Default::default() });
    // Clients before: the connection groups exist.
    let (mut a, _) = Client::admin(nvme, nqn, 0, false, false);
    assert!(a.identify(1, 0).0.ok());
    let mut c = RawConn::connect(iscsi);
    let r = c.login("iqn.2025-01.io.pollux:fds", Some(&target_iqn("fds")), 1);
    assert_eq!((r.bhs[36], r.bhs[37]), (0, 0));
    // No descriptor left for the daemon: its limit is its lowest free
    // descriptor number (a new descriptor must be below the limit).
    let open: std::collections::HashSet<u64> =
        std::fs::read_dir(format!("/proc/{}/fd", d.pid())).unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let mut was = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit on the daemon's pid reading its limit into `was`.
    let rc = unsafe { libc::prlimit(d.pid() as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut was) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let set_limit = |n: u64| {
        let lim = libc::rlimit { rlim_cur: n.min(was.rlim_max), rlim_max: was.rlim_max };
        // SAFETY: prlimit on the daemon's pid with a valid rlimit and no old-value pointer.
        let rc = unsafe { libc::prlimit(d.pid() as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    set_limit(lowest_free);
    let waiting_iscsi: Vec<_> = (0..16).map(|_| std::net::TcpStream::connect(("127.0.0.1", iscsi)).unwrap()).collect();
    let waiting_nvme: Vec<_> = (0..16).map(|_| std::net::TcpStream::connect(("127.0.0.1", nvme)).unwrap()).collect();
    // Until both listeners have met the limit.
    let t0 = std::time::Instant::now();
    while d.log().matches("Too many open files").count() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no accept failure logged:\n{}", d.log());
        std::thread::yield_now();
    }
    let c0 = cpu_seconds(d.pid());
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let used = cpu_seconds(d.pid()) - c0;
    assert!(used / window.as_secs_f64() < 0.2, "out of descriptors, the daemon used {used:.3} s of CPU in {window:?}");
    let log = d.log();
    assert!(log.contains(&format!("127.0.0.1:{nvme}: cannot accept")) && log.contains("iscsi portal group 1: cannot accept"), "{log}");
    let lines = log.matches("Too many open files").count();
    assert!(lines <= 4, "{lines} lines for the accept failures:\n{log}");
    // Descriptors again: the waiting connections and new ones are served.
    set_limit(was.rlim_cur);
    drop(waiting_iscsi);
    drop(waiting_nvme);
    drop((a, c));
    let (mut a, _) = Client::admin(nvme, nqn, 0, false, false);
    assert!(a.identify(1, 0).0.ok());
    let mut c = RawConn::connect(iscsi);
    let r = c.login("iqn.2025-01.io.pollux:fds", Some(&target_iqn("fds")), 1);
    assert_eq!((r.bhs[36], r.bhs[37]), (0, 0));
    assert_eq!(c.read10(0, 1).map(|(st, _)| st), Some(0));
}
