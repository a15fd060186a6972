//! SPDK's own JSON-RPC client (`spdk-rpc` from PyPI `spdk`) drives the daemon.

use pollux_tests::{Daemon, DaemonOpts, TempDir, ok_stdout, pollux_rpc, spdk_rpc};
use serde_json::{Value, json};

fn json_out(what: &str, out: &std::process::Output) -> Value {
    let text = ok_stdout(what, out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} printed non-JSON ({e}):\n{text}"))
}

#[test]
fn spdk_client_lists_methods_version_and_reactors() {
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), ..Default::default() });
    let methods = json_out("rpc_get_methods", &spdk_rpc(&d.socket, &["rpc_get_methods"]));
    let names: Vec<&str> = methods.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for m in [
        "rpc_get_methods",
        "spdk_get_version",
        "framework_get_subsystems",
        "framework_get_config",
        "framework_get_reactors",
        "thread_get_stats",
        "thread_get_pollers",
        "framework_wait_init",
        "framework_start_init",
        "spdk_kill_instance",
        "log_set_level",
        "log_get_level",
    ] {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }
    // -c: only what is callable now (framework_start_init is a start-up method).
    let current = json_out("rpc_get_methods -c", &spdk_rpc(&d.socket, &["rpc_get_methods", "-c"]));
    assert!(!current.as_array().unwrap().contains(&json!("framework_start_init")));

    let version = json_out("spdk_get_version", &spdk_rpc(&d.socket, &["spdk_get_version"]));
    assert!(version["version"].as_str().unwrap().starts_with("Pollux v"), "{version}");

    let reactors = json_out("framework_get_reactors", &spdk_rpc(&d.socket, &["framework_get_reactors"]));
    let list = reactors["reactors"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{reactors}");
    assert_eq!(list[0]["lcore"], 0);
    assert_eq!(list[1]["lcore"], 1);
    assert!(reactors["tick_rate"].as_u64().unwrap() > 0);

    let stats = json_out("thread_get_stats", &spdk_rpc(&d.socket, &["thread_get_stats"]));
    assert_eq!(stats["threads"].as_array().unwrap().len(), 2);
    let pollers = json_out("thread_get_pollers", &spdk_rpc(&d.socket, &["thread_get_pollers"]));
    assert!(pollers["threads"][0]["timed_pollers"].as_array().unwrap().iter().any(|p| p["name"] == "rpc_server"));
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn spdk_client_save_config_and_load_config_round_trip() {
    let d = Daemon::start(DaemonOpts::default());
    let saved = json_out("save_config", &spdk_rpc(&d.socket, &["save_config"]));
    assert!(saved["subsystems"].is_array(), "{saved}");
    // Every subsystem the target lists appears in the saved config, in order.
    let subs = json_out("framework_get_subsystems", &spdk_rpc(&d.socket, &["framework_get_subsystems"]));
    let listed: Vec<&Value> = subs.as_array().unwrap().iter().map(|s| &s["subsystem"]).collect();
    let in_config: Vec<&Value> = saved["subsystems"].as_array().unwrap().iter().map(|s| &s["subsystem"]).collect();
    assert_eq!(listed, in_config);

    // Our client's save_config prints the same document.
    let ours = json_out("pollux-rpc save_config", &pollux_rpc(&d.socket, &["save_config"]));
    assert_eq!(ours, saved);

    // A saved config loads into a fresh target waiting for RPC, which then
    // reaches the same state.
    let dir = TempDir::new("roundtrip");
    let file = dir.join("saved.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let fresh = Daemon::start(DaemonOpts { wait_for_rpc: true, ..Default::default() });
    ok_stdout("load_config", &spdk_rpc(&fresh.socket, &["load_config", "-j", file.to_str().unwrap()]));
    ok_stdout("framework_wait_init", &spdk_rpc(&fresh.socket, &["framework_wait_init"]));
    let again = json_out("save_config", &spdk_rpc(&fresh.socket, &["save_config"]));
    assert_eq!(again, saved);
    // And with -c at start-up.
    let from_file = Daemon::start(DaemonOpts { config: Some(saved.clone()), ..Default::default() });
    assert_eq!(json_out("save_config", &spdk_rpc(&from_file.socket, &["save_config"])), saved);
    d.stop();
}

#[test]
fn spdk_client_sends_newer_optional_parameters() {
    let d = Daemon::start(DaemonOpts::default());
    // spdk-rpc 26.x sends with_batches on framework_get_config.
    let subs = json_out("framework_get_subsystems", &spdk_rpc(&d.socket, &["framework_get_subsystems"]));
    for s in subs.as_array().unwrap() {
        let name = s["subsystem"].as_str().unwrap();
        json_out("framework_get_config", &spdk_rpc(&d.socket, &["framework_get_config", name, "--with-batches"]));
    }
    // Log levels by SPDK's names.
    ok_stdout("log_set_level", &spdk_rpc(&d.socket, &["log_set_level", "DEBUG"]));
    let lvl = ok_stdout("log_get_level", &spdk_rpc(&d.socket, &["log_get_level"]));
    assert!(lvl.contains("DEBUG"), "{lvl}");
    // Errors come back as JSON-RPC errors that spdk-rpc reports.
    let out = spdk_rpc(&d.socket, &["framework_get_config", "no_such_subsystem"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-32602") && err.contains("no_such_subsystem"), "{err}");
    d.stop();
}

/// SPDK's log flags: `-L` at start, `log_set_flag` / `log_clear_flag`
/// (one flag or `all`) and `log_get_flags` from SPDK's client; a flag lets
/// its component's debug events through at the default level.
#[test]
fn log_flags_turn_on_a_components_debug_events() {
    // SPDK's forms: a pattern, in any case.
    let d = Daemon::start(DaemonOpts { extra: vec!["-L".into(), "NVMF*".into()], ..Default::default() });
    let flags = json_out("log_get_flags", &spdk_rpc(&d.socket, &["log_get_flags"]));
    let some = |f: &Value| [f["nvmf"].clone(), f["nvmf_tcp"].clone(), f["rpc"].clone(), f["bdev"].clone()];
    assert_eq!(some(&flags), [json!(true), json!(true), json!(false), json!(false)], "{flags}");
    // The RPC server logs each request at debug level (SPDK's INFO).
    ok_stdout("spdk_get_version", &spdk_rpc(&d.socket, &["spdk_get_version"]));
    assert!(!d.log().contains("method=spdk_get_version"), "logged without the flag:\n{}", d.log());
    ok_stdout("log_set_flag", &spdk_rpc(&d.socket, &["log_set_flag", "rpc"]));
    ok_stdout("bdev_get_bdevs", &spdk_rpc(&d.socket, &["bdev_get_bdevs"]));
    assert!(d.log().contains("method=bdev_get_bdevs"), "not logged with the flag:\n{}", d.log());
    ok_stdout("pollux-rpc log_clear_flag", &pollux_rpc(&d.socket, &["log_clear_flag", "rpc"]));
    let ours: Value = serde_json::from_str(&ok_stdout("pollux-rpc log_get_flags", &pollux_rpc(&d.socket, &["log_get_flags"]))).unwrap();
    assert_eq!((ours["rpc"].clone(), ours["nvmf"].clone()), (json!(false), json!(true)), "{ours}");
    ok_stdout("bdev_get_iostat", &spdk_rpc(&d.socket, &["bdev_get_iostat"]));
    assert!(!d.log().contains("method=bdev_get_iostat"), "logged after the flag was cleared:\n{}", d.log());
    ok_stdout("log_set_flag all", &spdk_rpc(&d.socket, &["log_set_flag", "all"]));
    let flags = json_out("log_get_flags", &spdk_rpc(&d.socket, &["log_get_flags"]));
    assert!(flags.as_object().unwrap().values().all(|v| *v == json!(true)), "{flags}");
    ok_stdout("log_clear_flag all", &spdk_rpc(&d.socket, &["log_clear_flag", "all"]));
    let flags = json_out("log_get_flags", &spdk_rpc(&d.socket, &["log_get_flags"]));
    assert!(flags.as_object().unwrap().values().all(|v| *v == json!(false)), "{flags}");
    let out = spdk_rpc(&d.socket, &["log_set_flag", "no_such_flag"]);
    let err = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown log flag"), "{err}");
    d.stop();
    // An unknown flag on the command line stops the start.
    let out = std::process::Command::new(pollux_tests::bin("pollux-tgt"))
        .args(["-L", "nope", "-r", "/tmp/pollux-no-such.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown log flag `nope`"), "{out:?}");
}

#[test]
fn spdk_client_kill_instance_stops_the_daemon_cleanly() {
    let mut d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), ..Default::default() });
    ok_stdout("spdk_kill_instance", &spdk_rpc(&d.socket, &["spdk_kill_instance", "SIGTERM"]));
    let st = d.wait_exit(std::time::Duration::from_secs(1)).expect("exited within a second");
    assert_eq!(st.code(), Some(0), "log:\n{}", d.log());
    assert!(!d.socket.exists(), "socket file removed at exit");
}

/// SPDK's notifications: `notify_get_types`, and `notify_get_notifications`
/// with its `-i`/`-n` forms, from both clients: a bdev registered (after
/// the modules examined it), resized and deleted; the ring keeps the last
/// 1024 events.
#[test]
fn notifications_follow_bdevs_registered_resized_and_deleted() {
    let d = Daemon::start(DaemonOpts::default());
    let types = json_out("notify_get_types", &spdk_rpc(&d.socket, &["notify_get_types"]));
    assert_eq!(types, json!(["bdev_register", "bdev_unregister", "bdev_resize"]));
    let all = |d: &Daemon| json_out("notify_get_notifications", &spdk_rpc(&d.socket, &["notify_get_notifications"]));
    let next = all(&d).as_array().unwrap().last().map_or(0, |e| e["id"].as_u64().unwrap() + 1);
    d.call("bdev_null_create", Some(json!({"name": "Null0", "num_blocks": 1024, "block_size": 512}))).unwrap();
    // The register notice goes once the modules have examined it.
    d.call("bdev_wait_for_examine", None).unwrap();
    d.call("bdev_null_resize", Some(json!({"name": "Null0", "new_size": 1}))).unwrap();
    d.call("bdev_null_delete", Some(json!({"name": "Null0"}))).unwrap();
    let since = |d: &Daemon| {
        let v = json_out("notify_get_notifications -i", &spdk_rpc(&d.socket, &["notify_get_notifications", "-i", &next.to_string()]));
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["type"].as_str().unwrap().to_string(), e["ctx"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    let want: Vec<(String, String)> =
        ["bdev_register", "bdev_resize", "bdev_unregister"].iter().map(|t| (t.to_string(), "Null0".to_string())).collect();
    assert_eq!(since(&d), want);
    let one: Value = serde_json::from_str(&ok_stdout(
        "pollux-rpc notify_get_notifications",
        &pollux_rpc(&d.socket, &["notify_get_notifications", "--id", &(next + 1).to_string(), "--max", "1"]),
    ))
    .unwrap();
    assert_eq!(one, json!([{"type": "bdev_resize", "ctx": "Null0", "id": next + 1}]));
    // 600 bdevs made and deleted: 1200 more events (a bdev deleted while
    // being examined gets its register notice before its unregister one);
    // the first ones are gone, the last 1024 kept.
    for i in 0..600 {
        let name = format!("N{i}");
        d.call("bdev_null_create", Some(json!({"name": name, "num_blocks": 8, "block_size": 512}))).unwrap();
        d.call("bdev_null_delete", Some(json!({"name": name}))).unwrap();
    }
    d.call("bdev_wait_for_examine", None).unwrap();
    let v = all(&d);
    let ids: Vec<u64> = v.as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 1024);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(ids[1023], next + 3 + 1199);
    assert_eq!((v[1022]["type"].clone(), v[1022]["ctx"].clone()), (json!("bdev_register"), json!("N599")));
    assert_eq!((v[1023]["type"].clone(), v[1023]["ctx"].clone()), (json!("bdev_unregister"), json!("N599")));
    d.stop();
}

#[test]
fn spdk_client_drives_the_nbd_methods() {
    // The host has no NBD devices (the guest test, nbd_guest.rs, has the
    // kernel's): what can be checked here is that SPDK's client sends what
    // Pollux reads, and gets SPDK's errors back.
    let d = Daemon::start(DaemonOpts::default());
    ok_stdout("bdev_malloc_create", &spdk_rpc(&d.socket, &["bdev_malloc_create", "-b", "Malloc0", "8", "512"]));
    assert_eq!(json_out("nbd_get_disks", &spdk_rpc(&d.socket, &["nbd_get_disks"])), json!([]));
    let fails = |args: &[&str], code: i32, text: &str| {
        let out = spdk_rpc(&d.socket, args);
        // rpc.py prints the error response on stdout.
        let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(&format!("\"code\": {code}")) && err.contains(text), "{args:?}: {err}");
    };
    fails(&["nbd_start_disk", "Malloc0", "/dev/sda"], -libc::ENODEV, "illegal nbd device /dev/sda");
    fails(&["nbd_start_disk", "Malloc0", "/dev/nbd9999"], -libc::ENOENT, "/dev/nbd9999");
    fails(&["nbd_start_disk", "NoSuchBdev", "/dev/nbd9999"], -libc::ENODEV, "NoSuchBdev");
    fails(&["nbd_stop_disk", "/dev/nbd0"], -libc::ENODEV, "/dev/nbd0");
    fails(&["nbd_get_disks", "-n", "/dev/nbd0"], -libc::ENODEV, "/dev/nbd0");
    assert_eq!(json_out("nbd_get_disks", &spdk_rpc(&d.socket, &["nbd_get_disks"])), json!([]));
    assert_eq!(d.stop().code(), Some(0));
}
