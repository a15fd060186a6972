//! pollux-nvme over NVMe/TCP against Pollux's own target on loopback: the
//! discovery log (JSON and nvme-cli's text), Identify Controller and
//! Namespace, the SMART log, the error log, Get Features, and the errors of
//! a wrong subsystem NQN, a port nothing listens on and a mixed-up command
//! line.
//!
//! The target comes from the test's own target dir: `cargo build
//! --workspace --bins` first.

use std::process::{Command, Output};

use pollux_tests::iscsi_host::free_port;
use pollux_tests::{Daemon, DaemonOpts};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:nvme-cli";
const OTHER_NQN: &str = "nqn.2016-06.io.spdk:nvme-cli-2";
const SERIAL: &str = "NVMECLI0001";
/// The first subsystem's malloc bdev: 64 MiB of 512-byte blocks.
const NUM_BLOCKS: u64 = 131_072;

/// A target with two subsystems, a malloc namespace each, both listening
/// on `port`; its discovery service answers on that port too.
fn target(port: u16) -> Daemon {
    let listener = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()});
    let mut nvmf = vec![json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}})];
    for (i, (nqn, serial)) in [(NQN, SERIAL), (OTHER_NQN, "NVMECLI0002")].into_iter().enumerate() {
        nvmf.push(json!({"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true, "serial_number": serial}}));
        nvmf.push(json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": {"bdev_name": format!("Malloc{i}")}}}));
        nvmf.push(json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": listener}}));
    }
    let bdevs = vec![
        json!({"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": NUM_BLOCKS, "block_size": 512}}),
        json!({"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 8192, "block_size": 512}}),
    ];
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [{"subsystem": "bdev", "config": bdevs}, {"subsystem": "nvmf", "config": nvmf}]})),
        ..DaemonOpts::default()
    })
}

fn nvme(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pollux-nvme")).args(args).output().expect("run pollux-nvme")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run pollux-nvme, which must succeed quietly (nothing on stderr): its
/// standard output.
fn ok(args: &[&str]) -> String {
    let out = nvme(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "pollux-nvme {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stderr.is_empty(), "pollux-nvme {args:?} logged:\n{stderr}");
    stdout
}

fn ok_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pollux-nvme {args:?}: not JSON ({e}):\n{out}"))
}

/// Run pollux-nvme, which must fail: its standard error.
fn fails(args: &[&str]) -> String {
    let out = nvme(args);
    assert!(!out.status.success(), "pollux-nvme {args:?} succeeded:\n{}", text(&out.stdout));
    text(&out.stderr)
}

#[test]
fn discover_lists_both_subsystems_in_json_and_in_nvme_cli_text() {
    let port = free_port();
    let tgt = target(port);
    let p = port.to_string();
    let log = ok_json(&["discover", "-t", "tcp", "-a", "127.0.0.1", "-s", &p]);
    assert!(log["genctr"].is_u64(), "{log}");
    let records = log["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{log}");
    for nqn in [NQN, OTHER_NQN] {
        let r = records.iter().find(|r| r["subnqn"] == nqn).unwrap_or_else(|| panic!("{nqn} is not listed: {log}"));
        assert_eq!(r["trtype"], "tcp", "{r}");
        assert_eq!(r["adrfam"], "ipv4", "{r}");
        assert_eq!(r["subtype"], "nvme subsystem", "{r}");
        assert_eq!(r["traddr"], "127.0.0.1", "{r}");
        assert_eq!(r["trsvcid"], p, "{r}");
    }

    let out = ok(&["discover", "--transport", "TCP", "--traddr", "127.0.0.1", "--trsvcid", &p, "--hostnqn", "nqn.2014-08.org.example:cli"]);
    assert!(out.starts_with("Discovery Log Number of Records 2, Generation counter "), "{out}");
    assert!(out.contains("=====Discovery Log Entry 1======"), "{out}");
    assert!(out.contains(&format!("subnqn:  {NQN}\n")) && out.contains(&format!("trsvcid: {p}\n")), "{out}");
    assert!(out.contains("traddr:  127.0.0.1\n") && out.contains("subtype: nvme subsystem\n"), "{out}");
    drop(tgt);
}

#[test]
fn identify_logs_and_features_of_a_remote_subsystem() {
    let port = free_port();
    let tgt = target(port);
    let p = port.to_string();
    let remote = ["-t", "tcp", "-a", "127.0.0.1", "-s", &p, "--nqn", NQN];
    let with = |cmd: &[&'static str]| [cmd, &remote[..]].concat();

    let id = ok_json(&with(&["identify"]));
    assert_eq!(id["sn"], SERIAL, "{id}");
    assert_eq!(id["subnqn"], NQN, "{id}");
    let id_text = ok(&with(&["identify"]));
    assert!(id_text.contains(&format!("sn        : {SERIAL}")), "{id_text}");

    let ns = ok_json(&with(&["identify", "-n", "1"]));
    assert_eq!(ns["nsid"], 1, "{ns}");
    assert_eq!(ns["nsze"], NUM_BLOCKS, "{ns}");
    let e = fails(&with(&["identify", "-n", "9"]));
    assert!(e.contains(&format!("namespace 9 of {NQN} at 127.0.0.1:{p} is not active")), "{e}");

    let smart = ok_json(&with(&["smart-log"]));
    assert!(smart["temperature"].as_u64().is_some_and(|k| k > 200), "{smart}");
    let smart_text = ok(&with(&["smart-log"]));
    assert!(smart_text.starts_with(&format!("Smart Log for NVME device:{NQN} at 127.0.0.1:{p} ")), "{smart_text}");

    let errors = ok_json(&with(&["error-log"]));
    assert!(errors["errors"].is_array(), "{errors}");

    // Number of Queues: -s is --sel in get-feature, the port is --trsvcid.
    let queues = ok_json(&["get-feature", "-f", "7", "-t", "tcp", "-a", "127.0.0.1", "--trsvcid", &p, "--nqn", NQN]);
    assert_eq!(queues["name"], "Number of Queues", "{queues}");
    assert_eq!(queues["sel"], 0, "{queues}");
    drop(tgt);
}

#[test]
fn a_wrong_nqn_a_closed_port_and_a_mixed_command_line_fail_clearly() {
    let port = free_port();
    let tgt = target(port);
    let p = port.to_string();
    let wrong = "nqn.2016-06.io.spdk:no-such-subsystem";
    let e = fails(&["identify", "-t", "tcp", "-a", "127.0.0.1", "-s", &p, "--nqn", wrong]);
    assert!(e.contains(wrong) && e.contains("refused"), "{e}");

    let closed = free_port().to_string();
    let e = fails(&["smart-log", "-t", "tcp", "-a", "127.0.0.1", "-s", &closed, "--nqn", NQN]);
    assert!(e.contains(&format!("cannot connect to 127.0.0.1:{closed}")), "{e}");
    let e = fails(&["discover", "-t", "tcp", "-a", "127.0.0.1", "-s", &closed]);
    assert!(e.contains(&format!("127.0.0.1:{closed}")), "{e}");

    let e = fails(&["identify", "-t", "tcp", "-a", "127.0.0.1", "--nqn", NQN, "0000:00:04.0"]);
    assert!(e.contains("not both"), "{e}");
    let e = fails(&["identify", "-t", "tcp", "-a", "127.0.0.1"]);
    assert!(e.contains("--nqn"), "{e}");
    let e = fails(&["smart-log"]);
    assert!(e.contains("no controller given"), "{e}");
    let e = fails(&["error-log", "--nqn", NQN, "0000:00:04.0"]);
    assert!(e.contains("-t tcp"), "{e}");
    // RDMA needs rdma-core and an RDMA device (the test guest has
    // Soft-RoCE: drivers/nvmf-host/tests/rdma.rs); here it says so.
    if !std::path::Path::new("/dev/infiniband/rdma_cm").exists() {
        let e = fails(&["identify", "-t", "rdma", "-a", "127.0.0.1", "--nqn", NQN]);
        assert!(e.contains("RDMA is not available on this machine"), "{e}");
    }
    let e = fails(&["identify", "-t", "fc", "-a", "127.0.0.1", "--nqn", NQN]);
    assert!(e.contains("fc"), "{e}");
    // The target took no harm.
    assert!(!tgt.log().contains("panicked"), "{}", tgt.log());
}
