//! A configuration saved by SPDK loads into Pollux: `spdk-saved-config.json`
//! is modelled on what SPDK 24.x's save_config writes for a target with a
//! malloc bdev exported over NVMe/TCP (every subsystem and method SPDK
//! writes, with its parameters; test values for the port, CRDT and socket
//! buffers). Pollux takes it with `-c` and through SPDK's `load_config`,
//! saves it back the same way twice, and applies what it maps to: socket
//! buffer sizes on accepted connections, CRDT in Identify Controller, the
//! discovery filter. What it cannot honour is refused by name.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use pollux_core::rpc::ClientError;
use pollux_tests::nvmf_client::*;
use pollux_tests::{Daemon, DaemonOpts, TempDir, ok_stdout, spdk_rpc};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

fn free_port() -> u16 {
    pollux_tests::free_port()
}

fn spdk_config(port: u16) -> Value {
    let text = include_str!("spdk-saved-config.json").replace("@NVMF_PORT@", &port.to_string());
    serde_json::from_str(&text).unwrap()
}

fn methods(config: &Value, subsystem: &str) -> Vec<Value> {
    config["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == subsystem)
        .unwrap_or_else(|| panic!("no {subsystem} in {config}"))["config"]
        .as_array()
        .unwrap()
        .clone()
}

fn params<'a>(calls: &'a [Value], method: &str, pick: impl Fn(&Value) -> bool) -> &'a Value {
    &calls.iter().find(|c| c["method"] == method && pick(&c["params"])).unwrap_or_else(|| panic!("no {method} in {calls:?}"))["params"]
}

fn json_out(what: &str, out: &std::process::Output) -> Value {
    serde_json::from_str(&ok_stdout(what, out)).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// The receive and send buffer sizes (`ss`'s rb and tb) of the target's
/// end of an established connection on `port`.
fn server_socket_buffers(port: u16) -> (u64, u64) {
    let out =
        Command::new("ss").args(["-tmnH", "state", "established", &format!("( sport = :{port} )")]).output().expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> u64 {
        let at = text.find(&format!(",{name}")).unwrap_or_else(|| panic!("no {name} in ss output: {text}")) + name.len() + 1;
        text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
    };
    (field("rb"), field("tb"))
}

#[test]
fn a_config_saved_by_spdk_loads_applies_and_saves_back() {
    let port = free_port();
    let config = spdk_config(port);
    let d = Daemon::start(DaemonOpts { config: Some(config.clone()), ..Default::default() });
    let saved = json_out("save_config", &spdk_rpc(&d.socket, &["save_config"]));
    // What SPDK wrote comes back.
    let sock = methods(&saved, "sock");
    assert_eq!(params(&sock, "sock_set_default_impl", |_| true)["impl_name"], "posix");
    let posix = params(&sock, "sock_impl_set_options", |p| p["impl_name"] == "posix");
    assert_eq!((&posix["recv_buf_size"], &posix["send_buf_size"]), (&json!(32768), &json!(32768)));
    assert_eq!(params(&sock, "sock_impl_set_options", |p| p["impl_name"] == "ssl")["recv_buf_size"], 4096);
    assert_eq!(params(&methods(&saved, "accel"), "accel_set_options", |_| true)["task_count"], 2048);
    assert_eq!(params(&methods(&saved, "scheduler"), "framework_set_scheduler", |_| true)["name"], "static");
    let bdev = methods(&saved, "bdev");
    assert_eq!(params(&bdev, "bdev_raid_set_options", |_| true)["process_window_size_kb"], 1024);
    assert_eq!(params(&bdev, "bdev_iscsi_set_options", |_| true)["timeout_sec"], 30);
    assert_eq!(params(&bdev, "bdev_nvme_set_options", |_| true)["action_on_timeout"], "none");
    let nvmf = methods(&saved, "nvmf");
    assert_eq!(params(&nvmf, "nvmf_set_crdt", |_| true), &json!({"crdt1": 5, "crdt2": 10, "crdt3": 0}));
    assert_eq!(params(&nvmf, "nvmf_set_config", |_| true)["discovery_filter"], "match_any");
    assert_eq!(params(&nvmf, "nvmf_set_max_subsystems", |_| true)["max_subsystems"], 1024);
    assert_eq!(params(&nvmf, "nvmf_subsystem_add_ns", |_| true)["namespace"]["uuid"], "8c6f2c2a-5a0e-4a49-9a4b-6d7c6f1e2a11");

    // Applied: CRDT in Identify Controller (bytes 128..134), the posix
    // socket buffers on the connection the target accepted (the kernel
    // reports twice what was set).
    let (mut c, _) = Client::admin(port, NQN, 0, false, false);
    let (r, id) = c.identify(1, 0);
    assert!(r.ok(), "{r:?}");
    let crdt: Vec<u16> = id[128..134].chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    assert_eq!(crdt, [5, 10, 0]);
    assert_eq!(server_socket_buffers(port), (65536, 65536), "SO_RCVBUF/SO_SNDBUF from sock_impl_set_options");
    drop(c);

    // Through SPDK's own load_config into a daemon waiting for RPCs, and
    // back out: the same document.
    let dir = TempDir::new("spdk-config");
    let file = dir.join("saved.json");
    let port2 = free_port();
    let moved = serde_json::to_string(&saved).unwrap().replace(&format!("\"trsvcid\":\"{port}\""), &format!("\"trsvcid\":\"{port2}\""));
    std::fs::write(&file, &moved).unwrap();
    d.stop();
    let fresh = Daemon::start(DaemonOpts { wait_for_rpc: true, ..Default::default() });
    ok_stdout("load_config", &spdk_rpc(&fresh.socket, &["load_config", "-j", file.to_str().unwrap()]));
    ok_stdout("framework_wait_init", &spdk_rpc(&fresh.socket, &["framework_wait_init"]));
    let again = json_out("save_config", &spdk_rpc(&fresh.socket, &["save_config"]));
    assert_eq!(again, serde_json::from_str::<Value>(&moved).unwrap());
    // Without sock_impl_set_options the kernel's own sizes stay.
    fresh.stop();
    let mut plain = spdk_config(port);
    for s in plain["subsystems"].as_array_mut().unwrap() {
        if s["subsystem"] == "sock" {
            s["config"] = json!([]);
        }
    }
    let d = Daemon::start(DaemonOpts { config: Some(plain), ..Default::default() });
    let _c = Client::admin(port, NQN, 0, false, false);
    assert_ne!(server_socket_buffers(port).0, 65536, "autotuned receive buffer");
    d.stop();
}

fn err(d: &Daemon, method: &str, params: Value) -> (i32, String) {
    match d.call(method, Some(params.clone())) {
        Err(ClientError::Rpc(e)) => (e.code, e.message),
        other => panic!("{method} {params} should fail, got {other:?}"),
    }
}

/// Fetch the discovery log through a discovery connection on `port`:
/// the service ids listed.
fn discovery_ports(port: u16) -> Vec<String> {
    let mut disc = Client::connect(port);
    disc.ic(false, false);
    assert!(disc.fabrics_connect(0, 31, 0xffff, "nqn.2014-08.org.nvmexpress.discovery", "nqn.2014-08.org.example:h", 0).ok());
    assert!(disc.property_set(0x14, 1).ok());
    let cid = disc.cid();
    let (r, log) = disc.command(Sqe::new(0x02, cid).dw(10, 0x70 | (((4096 / 4) - 1) << 16)).sgl_transport(4096), &[], false);
    assert!(r.ok(), "{r:?}");
    let n = u64::from_le_bytes(log[8..16].try_into().unwrap()) as usize;
    (0..n).map(|i| std::str::from_utf8(&log[1024 * (i + 1) + 32..1024 * (i + 1) + 64]).unwrap().trim().to_string()).collect()
}

/// One malloc namespace in subsystem NQN, listening on `ports`.
fn serve_on_ports(d: &Daemon, ports: &[u16]) {
    d.call("bdev_malloc_create", Some(json!({"name": "M0", "num_blocks": 2048, "block_size": 512}))).unwrap();
    d.call("nvmf_create_transport", Some(json!({"trtype": "TCP"}))).unwrap();
    d.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true}))).unwrap();
    for p in ports {
        let la = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": p.to_string()});
        d.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": la}))).unwrap();
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(5), "listener on {p} up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn discovery_filter_scheduler_and_sock_refusals() {
    let d = Daemon::start(DaemonOpts { wait_for_rpc: true, ..Default::default() });
    // Refused by name, changing nothing.
    for (p, code, word) in [
        (json!({"poll_groups_mask": "0x1"}), -libc::ENOTSUP, "poll_groups_mask"),
        (json!({"admin_cmd_passthru": {"identify_ctrlr": true}}), -libc::ENOTSUP, "identify_ctrlr"),
        (json!({"dup_host_policy": "restrict_per_listener"}), -libc::ENOTSUP, "dup_host_policy"),
        (json!({"discovery_filter": "nearby"}), -libc::EINVAL, "nearby"),
        (json!({"discovery_filter": "svcid", "discovery_filters": ["svcid"]}), -libc::EINVAL, "exclusive"),
        (json!({"bogus": 1}), -32602, "bogus"),
    ] {
        let (c, m) = err(&d, "nvmf_set_config", p.clone());
        assert_eq!(c, code, "{p}: {m}");
        assert!(m.contains(word), "{p}: {m}");
    }
    let (c, m) = err(&d, "framework_set_scheduler", json!({"name": "dynamic"}));
    assert_eq!(c, -libc::EOPNOTSUPP, "{m}");
    let (c, m) = err(&d, "sock_set_default_impl", json!({"impl_name": "uring"}));
    assert_eq!(c, -libc::EOPNOTSUPP, "{m}");
    let (c, m) = err(&d, "sock_impl_set_options", json!({"impl_name": "tcp", "recv_buf_size": 1}));
    assert_eq!(c, -libc::EINVAL, "{m}");
    // SPDK's client forms.
    ok_stdout("scheduler", &spdk_rpc(&d.socket, &["framework_set_scheduler", "static", "-p", "500000"]));
    assert_eq!(json_out("get", &spdk_rpc(&d.socket, &["framework_get_scheduler"]))["scheduler_period"], 500000);
    ok_stdout("sock", &spdk_rpc(&d.socket, &["sock_impl_set_options", "-i", "posix", "--quickack", "-r", "65536"]));
    let posix = json_out("get", &spdk_rpc(&d.socket, &["sock_impl_get_options", "-i", "posix"]));
    assert_eq!((&posix["enable_quickack"], &posix["recv_buf_size"]), (&json!(true), &json!(65536)));
    ok_stdout("filter", &spdk_rpc(&d.socket, &["nvmf_set_config", "--discovery-filters", "address,svcid"]));
    ok_stdout("start", &spdk_rpc(&d.socket, &["framework_start_init"]));
    ok_stdout("wait", &spdk_rpc(&d.socket, &["framework_wait_init"]));
    // One subsystem on two ports: a host discovering through one port is
    // shown that port only.
    let (a, b) = (free_port(), free_port());
    serve_on_ports(&d, &[a, b]);
    assert_eq!(discovery_ports(a), [a.to_string()]);
    assert_eq!(discovery_ports(b), [b.to_string()]);
    let cfg = d.call("framework_get_config", Some(json!({"name": "nvmf"}))).unwrap();
    assert_eq!(cfg[0]["params"]["discovery_filter"], "address,svcid", "{cfg}");
    d.stop();
    // Without a filter (SPDK's match_any) both ports are listed everywhere.
    let d = Daemon::start(DaemonOpts::default());
    serve_on_ports(&d, &[a, b]);
    let mut listed = discovery_ports(a);
    listed.sort();
    let mut both = vec![a.to_string(), b.to_string()];
    both.sort();
    assert_eq!(listed, both);
    d.stop();
}
