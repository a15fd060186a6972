//! The socket layer's limits, set with the options that carry them
//! (`iscsi_set_options`, `nvmf_create_transport`, `sock_impl_set_options`),
//! shown by the `get` calls, written by `save_config` when changed, and
//! enforced over real sockets: a portal or listener serves at most its
//! connections, and connections that never log in or connect are closed
//! after the configured time.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{self, RawConn, target_iqn};
use pollux_tests::nvmf_client::Client;
use pollux_tests::{Daemon, DaemonOpts};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:limits";

/// Whether the target ends a silent connection within `limit` (its read
/// sees the end of the stream or a reset).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// The parameters of `method` in what `save_config` writes for `subsystem`
/// (SPDK's client builds it from `framework_get_config`).
fn saved(d: &Daemon, subsystem: &str, method: &str) -> Value {
    let calls = d.call("framework_get_config", Some(json!({"name": subsystem}))).unwrap();
    calls.as_array().unwrap().iter().find(|c| c["method"] == method).unwrap_or_else(|| panic!("no {method} in {calls}"))["params"].clone()
}

/// Everything `save_config` writes.
fn save_config(d: &Daemon) -> String {
    ["sock", "iobuf", "bdev", "iscsi", "nvmf"]
        .iter()
        .map(|n| d.call("framework_get_config", Some(json!({"name": n}))).unwrap().to_string())
        .collect()
}

#[test]
fn an_iscsi_portal_serves_at_most_its_connections_and_times_out_logins() {
    let port = iscsi_host::free_port();
    let cfg = iscsi_host::config_with_options(port, "limits", 8, json!({"max_connections_per_portal": 3, "login_timeout": 2}));
    let d = iscsi_host::start("0x3", cfg);

    let o = d.call("iscsi_get_options", None).unwrap();
    assert_eq!((o["max_connections_per_portal"].as_u64(), o["login_timeout"].as_u64()), (Some(3), Some(2)), "{o}");
    let s = saved(&d, "iscsi", "iscsi_set_options");
    assert_eq!((s["max_connections_per_portal"].as_u64(), s["login_timeout"].as_u64()), (Some(3), Some(2)), "{s}");

    // Three connections (two logged in, one silent) fill the portal.
    let mut a = RawConn::connect(port);
    a.login("iqn.2025-01.io.pollux:limits-a", Some(&target_iqn("limits")), 1);
    let mut b = RawConn::connect(port);
    b.login("iqn.2025-01.io.pollux:limits-b", Some(&target_iqn("limits")), 2);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t0 = Instant::now();
    // A fourth is closed as soon as it is accepted.
    let mut over = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(20)), "a connection over the portal's limit was kept");
    // The silent one is closed after its login timeout, not before.
    assert!(closed_within(&mut silent, Duration::from_secs(30)), "a connection that never logged in was kept");
    assert!(t0.elapsed() >= Duration::from_secs(2), "closed after {:?}, before the 2 s login timeout", t0.elapsed());
    // Its place is free again: a new initiator logs in and is served.
    let mut c = RawConn::connect(port);
    let r = c.login("iqn.2025-01.io.pollux:limits-c", Some(&target_iqn("limits")), 3);
    assert_eq!(r.bhs[36], 0, "login after a place freed up: status class {}", r.bhs[36]);
    assert!(c.test_unit_ready().is_some_and(|s| s.0 == 0), "the new session is served");
    // Those logged in were not disturbed.
    assert!(a.test_unit_ready().is_some_and(|s| s.0 == 0) && b.test_unit_ready().is_some_and(|s| s.0 == 0));
    let log = d.log();
    assert!(log.contains("refused: 3 connections open") && log.contains("login timed out"), "log:\n{log}");
    d.stop();
}

#[test]
fn an_nvmf_listener_serves_at_most_its_connections_and_times_out_connects() {
    let port = iscsi_host::free_port();
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": 512}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "max_connections_per_listener": 3, "connect_timeout_sec": 2}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "LIMITS01"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}
        ]}
    ]});
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(config), ..Default::default() });

    let t = &d.call("nvmf_get_transports", None).unwrap()[0];
    assert_eq!((t["max_connections_per_listener"].as_u64(), t["connect_timeout_sec"].as_u64()), (Some(3), Some(2)), "{t}");
    let s = saved(&d, "nvmf", "nvmf_create_transport");
    assert_eq!((s["max_connections_per_listener"].as_u64(), s["connect_timeout_sec"].as_u64()), (Some(3), Some(2)), "{s}");

    // Two connected controllers and one silent connection fill the listener.
    let (mut h1, _) = Client::admin(port, NQN, 0, false, false);
    let (mut h2, _) = Client::admin(port, NQN, 0, false, false);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t0 = Instant::now();
    let mut over = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(20)), "a connection over the listener's limit was kept");
    assert!(closed_within(&mut silent, Duration::from_secs(30)), "a connection that never connected was kept");
    assert!(t0.elapsed() >= Duration::from_secs(2), "closed after {:?}, before the 2 s connect timeout", t0.elapsed());
    // Its place is free again.
    let (mut h3, _) = Client::admin(port, NQN, 0, false, false);
    for h in [&mut h1, &mut h2, &mut h3] {
        let (r, _) = h.identify(1, 0);
        assert!(r.ok(), "{r:?}");
    }
    let log = d.log();
    assert!(log.contains("refused: 3 connections open") && log.contains("no Connect within 2s"), "log:\n{log}");
    d.stop();
}

#[test]
fn pollux_only_limits_are_shown_and_saved_only_when_changed() {
    let mut cfg = iscsi_host::config(iscsi_host::free_port(), "limits", 8, None);
    cfg["subsystems"].as_array_mut().unwrap().push(json!({"subsystem": "nvmf", "config": [
        {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}
    ]}));
    let d = iscsi_host::start("0x1", cfg);
    let sock = d.call("sock_impl_get_options", Some(json!({"impl_name": "posix"}))).unwrap();
    assert_eq!(sock["max_output_backlog"].as_u64(), Some(8 << 20), "{sock}");
    let o = d.call("iscsi_get_options", None).unwrap();
    assert_eq!((o["max_connections_per_portal"].as_u64(), o["login_timeout"].as_u64()), (Some(1024), Some(30)), "{o}");
    let t = &d.call("nvmf_get_transports", None).unwrap()[0];
    assert_eq!((t["max_connections_per_listener"].as_u64(), t["connect_timeout_sec"].as_u64()), (Some(4096), Some(30)), "{t}");
    // A saved default configuration has none of them: SPDK loads it.
    let text = save_config(&d);
    for k in ["max_output_backlog", "max_connections_per_portal", "login_timeout", "max_connections_per_listener", "connect_timeout_sec"] {
        assert!(!text.contains(k), "{k} saved at its default: {text}");
    }
    d.call("sock_impl_set_options", Some(json!({"impl_name": "posix", "max_output_backlog": 1 << 20}))).unwrap();
    let posix = d.call("framework_get_config", Some(json!({"name": "sock"}))).unwrap();
    let posix = posix
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "sock_impl_set_options" && c["params"]["impl_name"] == "posix")
        .expect("posix options saved");
    assert_eq!(posix["params"]["max_output_backlog"].as_u64(), Some(1 << 20), "{posix}");
    let e = d.call("sock_impl_set_options", Some(json!({"impl_name": "posix", "max_output_backlog": 100}))).unwrap_err();
    assert!(e.to_string().contains("max_output_backlog"), "{e}");
    // Interrupt mode's idle-poll window: shown, changed, saved (SPDK's
    // framework_set_scheduler ignores keys its static scheduler lacks).
    let s = d.call("framework_get_scheduler", None).unwrap();
    assert_eq!(s["idle_poll_us"].as_u64(), Some(50), "{s}");
    d.call("framework_set_scheduler", Some(json!({"name": "static", "idle_poll_us": 20}))).unwrap();
    assert_eq!(d.call("framework_get_scheduler", None).unwrap()["idle_poll_us"].as_u64(), Some(20));
    assert_eq!(saved(&d, "scheduler", "framework_set_scheduler")["idle_poll_us"].as_u64(), Some(20));
    let e = d.call("framework_set_scheduler", Some(json!({"name": "static", "idle_poll_us": 2_000_000}))).unwrap_err();
    assert!(e.to_string().contains("idle_poll_us"), "{e}");
    d.stop();
}
