//! The NVMe-oF target configured live by SPDK's own client (`spdk-rpc`,
//! which sends the newest optional parameters) and by `pollux-rpc`; its
//! state, its refusals, and `save_config` round trips through `load_config`
//! and `-c`.

use std::net::TcpListener;

use pollux_core::rpc::ClientError;
use pollux_tests::{Daemon, DaemonOpts, TempDir, ok_stdout, pollux_rpc, spdk_rpc};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const NQN2: &str = "nqn.2016-06.io.spdk:cnode2";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

fn free_port() -> String {
    pollux_tests::free_port().to_string()
}

fn json_out(what: &str, out: &std::process::Output) -> Value {
    let text = ok_stdout(what, out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} printed non-JSON ({e}):\n{text}"))
}

/// Run spdk-rpc and expect a JSON-RPC error whose text contains `needle`.
fn refused(d: &Daemon, args: &[&str], needle: &str) {
    let out = spdk_rpc(&d.socket, args);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded:\n{text}");
    assert!(text.contains(needle), "{args:?}: expected {needle:?} in:\n{text}");
}

fn nvmf_config(saved: &Value) -> Value {
    saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").expect("nvmf in save_config")["config"].clone()
}

#[test]
fn spdk_client_configures_the_target_and_save_config_round_trips() {
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), ..Default::default() });
    let s = |args: &[&str]| ok_stdout(&args.join(" "), &spdk_rpc(&d.socket, args));
    let (p1, p2) = (free_port(), free_port());
    s(&["bdev_malloc_create", "-b", "Malloc0", "32", "512"]);
    s(&["bdev_malloc_create", "-b", "Malloc1", "16", "4096"]);
    // Subsystems need a transport for listeners.
    s(&["nvmf_create_subsystem", NQN, "-s", "SPDK00000000000001", "-d", "Pollux Controller", "-m", "16", "-i", "10", "-I", "20"]);
    refused(&d, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &p1], "nvmf_create_transport");
    s(&["nvmf_create_transport", "-t", "TCP", "-q", "64", "-c", "8192", "-i", "262144", "--kas", "20", "--min-kato", "2000"]);
    refused(&d, &["nvmf_create_transport", "-t", "TCP"], "exists");
    refused(&d, &["nvmf_create_transport", "-t", "FC"], "not supported");
    // RDMA needs rdma-core and an RDMA device (the test guest has
    // Soft-RoCE: targets/nvmf/tests/kernel_host_rdma.rs); where there is
    // none the transport is refused with the reason, and nothing changes.
    if std::path::Path::new("/dev/infiniband/rdma_cm").exists() {
        s(&["nvmf_create_transport", "-t", "RDMA"]);
    } else {
        refused(&d, &["nvmf_create_transport", "-t", "RDMA"], "RDMA is not available on this machine");
        let tr: Value = serde_json::from_str(&s(&["nvmf_get_transports"])).unwrap();
        assert_eq!(tr.as_array().map(|a| a.iter().map(|t| t["trtype"].clone()).collect::<Vec<_>>()), Some(vec![json!("TCP")]));
    }
    s(&["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &p1, "-f", "ipv4"]);
    s(&["nvmf_subsystem_add_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1", "-s", &p2]);
    s(&["nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "3", "-u", "11111111-2222-4333-8444-555555555555", "-e", "0011223344556677"]);
    s(&["nvmf_subsystem_add_ns", NQN, "Malloc1"]);
    s(&["nvmf_subsystem_add_host", NQN, HOST]);
    s(&["nvmf_create_subsystem", NQN2, "-a"]);
    s(&["nvmf_discovery_add_referral", "-t", "tcp", "-a", "10.1.1.1", "-s", "4420"]);
    s(&["nvmf_discovery_add_referral", "-t", "tcp", "-a", "10.1.1.2", "-s", "4420", "-n", NQN2]);

    // Refusals, each with a message naming the problem.
    refused(&d, &["nvmf_create_subsystem", NQN], "exists");
    refused(&d, &["nvmf_create_subsystem", "iqn.2016-06.io.spdk:x"], "invalid NQN");
    refused(
        &d,
        &["nvmf_subsystem_listener_set_ana_state", NQN, "-n", "inaccessible", "-t", "tcp", "-a", "127.0.0.1", "-s", &p1],
        "ana_reporting",
    );
    refused(&d, &["nvmf_subsystem_set_ns_ana_group", NQN, "3", "0"], "anagrpid");
    refused(&d, &["nvmf_create_subsystem", "nqn.2016-06.io.spdk:sn", "-s", "this serial is far too long"], "serial_number");
    refused(&d, &["nvmf_subsystem_add_ns", NQN, "NoSuchBdev"], "NoSuchBdev");
    refused(&d, &["nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "3"], "exists");
    refused(&d, &["nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "17"], "max_namespaces");
    refused(&d, &["nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "4", "-g", "1234"], "nguid");
    // A ptpl_file that is not SPDK's reservation format is refused, naming it.
    let bad_ptpl = std::env::temp_dir().join(format!("pollux-bad-ptpl-{}.json", std::process::id()));
    std::fs::write(&bad_ptpl, "{\"ptpl\": true}").unwrap();
    refused(&d, &["nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "4", "-p", bad_ptpl.to_str().unwrap()], "pollux-bad-ptpl");
    let _ = std::fs::remove_file(&bad_ptpl);
    refused(&d, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &p1], "exists");
    refused(&d, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &free_port(), "-k"], "secure");
    refused(&d, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "not-an-ip", "-s", "4420"], "IP address");
    refused(&d, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1"], "trsvcid");
    refused(&d, &["nvmf_subsystem_add_host", NQN, HOST], "exists");
    refused(&d, &["nvmf_subsystem_add_host", NQN, "nqn.2016-06.io.spdk:h2", "--psk", "key0"], "psk");
    refused(&d, &["nvmf_delete_subsystem", "nqn.2016-06.io.spdk:nope"], "not found");
    refused(&d, &["nvmf_get_subsystems", "-t", "other_tgt"], "other_tgt");
    match d.call("nvmf_create_subsystem", Some(json!({"nqn": "nqn.2016-06.io.spdk:x", "bogus": 1}))) {
        Err(ClientError::Rpc(e)) => assert!(e.code == -32602 && e.message.contains("bogus"), "{e:?}"),
        other => panic!("an unknown parameter was not refused: {other:?}"),
    }

    // The state, as SPDK reports it.
    let subs = json_out("nvmf_get_subsystems", &spdk_rpc(&d.socket, &["nvmf_get_subsystems"]));
    let list = subs.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["subtype"], "Discovery");
    assert_eq!(list[0]["listen_addresses"][0]["trsvcid"], p2.as_str());
    let s1 = &list[1];
    assert_eq!(
        (s1["nqn"].as_str(), s1["serial_number"].as_str(), s1["model_number"].as_str()),
        (Some(NQN), Some("SPDK00000000000001"), Some("Pollux Controller"))
    );
    assert_eq!(
        (s1["allow_any_host"].as_bool(), s1["max_namespaces"].as_u64(), s1["min_cntlid"].as_u64(), s1["max_cntlid"].as_u64()),
        (Some(false), Some(16), Some(10), Some(20))
    );
    assert_eq!(s1["hosts"], json!([{"nqn": HOST}]));
    assert_eq!(s1["listen_addresses"], json!([{"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": p1}]));
    let ns = s1["namespaces"].as_array().unwrap();
    assert_eq!(ns.len(), 2);
    assert_eq!((ns[0]["nsid"].as_u64(), ns[0]["bdev_name"].as_str()), (Some(1), Some("Malloc1")));
    assert_eq!(
        (ns[1]["nsid"].as_u64(), ns[1]["uuid"].as_str(), ns[1]["eui64"].as_str()),
        (Some(3), Some("11111111-2222-4333-8444-555555555555"), Some("0011223344556677"))
    );
    assert_eq!(ns[1]["nguid"], "11111111222243338444555555555555");
    let one = json_out("get one", &spdk_rpc(&d.socket, &["nvmf_get_subsystems", NQN2]));
    assert_eq!(one.as_array().unwrap().len(), 1);
    let tr = json_out("nvmf_get_transports", &spdk_rpc(&d.socket, &["nvmf_get_transports"]));
    assert_eq!(tr[0]["trtype"], "TCP");
    assert_eq!(
        (tr[0]["max_queue_depth"].as_u64(), tr[0]["in_capsule_data_size"].as_u64(), tr[0]["max_io_size"].as_u64()),
        (Some(64), Some(8192), Some(262144))
    );
    assert_eq!((tr[0]["io_unit_size"].as_u64(), tr[0]["kas"].as_u64(), tr[0]["min_kato"].as_u64()), (Some(131072), Some(20), Some(2000)));
    let refs = json_out("referrals", &spdk_rpc(&d.socket, &["nvmf_discovery_get_referrals"]));
    assert_eq!(refs.as_array().unwrap().len(), 2);
    let stats = json_out("nvmf_get_stats", &spdk_rpc(&d.socket, &["nvmf_get_stats"]));
    assert_eq!(stats["poll_groups"].as_array().unwrap().len(), 2);
    // Our client reads the same state.
    assert_eq!(json_out("pollux-rpc", &pollux_rpc(&d.socket, &["nvmf_get_subsystems"])), subs);

    // save_config holds every call; a fresh target loads it to the same state.
    let saved = json_out("save_config", &spdk_rpc(&d.socket, &["save_config"]));
    let nvmf = nvmf_config(&saved);
    let calls: Vec<&str> = nvmf.as_array().unwrap().iter().map(|c| c["method"].as_str().unwrap()).collect();
    for m in [
        "nvmf_create_transport",
        "nvmf_create_subsystem",
        "nvmf_subsystem_add_listener",
        "nvmf_subsystem_add_ns",
        "nvmf_subsystem_add_host",
        "nvmf_discovery_add_referral",
    ] {
        assert!(calls.contains(&m), "{m} missing from {calls:?}");
    }
    assert_eq!(json_out("pollux-rpc save_config", &pollux_rpc(&d.socket, &["save_config"])), saved);
    d.stop();
    let dir = TempDir::new("nvmf-roundtrip");
    let file = dir.join("saved.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let fresh = Daemon::start(DaemonOpts { cpumask: "0x3".into(), wait_for_rpc: true, ..Default::default() });
    ok_stdout("load_config", &spdk_rpc(&fresh.socket, &["load_config", "-j", file.to_str().unwrap()]));
    ok_stdout("framework_wait_init", &spdk_rpc(&fresh.socket, &["framework_wait_init"]));
    assert_eq!(json_out("save_config", &spdk_rpc(&fresh.socket, &["save_config"])), saved);
    assert_eq!(json_out("nvmf_get_subsystems", &spdk_rpc(&fresh.socket, &["nvmf_get_subsystems"])), subs);
    fresh.stop();
    let from_file = Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(saved.clone()), ..Default::default() });
    assert_eq!(json_out("save_config", &spdk_rpc(&from_file.socket, &["save_config"])), saved);

    // Taking things away.
    let s = |args: &[&str]| ok_stdout(&args.join(" "), &spdk_rpc(&from_file.socket, args));
    s(&["nvmf_subsystem_remove_ns", NQN, "3"]);
    s(&["nvmf_subsystem_remove_host", NQN, HOST]);
    s(&["nvmf_subsystem_allow_any_host", NQN, "--allow-any-host"]);
    s(&["nvmf_subsystem_remove_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &p1]);
    s(&["nvmf_discovery_remove_referral", "-t", "tcp", "-a", "10.1.1.1", "-s", "4420"]);
    s(&["nvmf_delete_subsystem", NQN2]);
    let subs = json_out("nvmf_get_subsystems", &spdk_rpc(&from_file.socket, &["nvmf_get_subsystems"]));
    let s1 = &subs[1];
    assert_eq!((subs.as_array().unwrap().len(), s1["allow_any_host"].as_bool()), (2, Some(true)));
    assert_eq!(
        (s1["hosts"].clone(), s1["listen_addresses"].clone(), s1["namespaces"].as_array().unwrap().len()),
        (json!([]), json!([]), 1)
    );
    // The port is free again.
    TcpListener::bind(format!("127.0.0.1:{p1}")).expect("listener closed");
    // Deleting the bdev of a namespace takes the namespace away.
    s(&["bdev_malloc_delete", "Malloc1"]);
    let subs = json_out("nvmf_get_subsystems", &spdk_rpc(&from_file.socket, &["nvmf_get_subsystems", NQN]));
    assert_eq!(subs[0]["namespaces"], json!([]));
    assert_eq!(from_file.stop().code(), Some(0));
}
