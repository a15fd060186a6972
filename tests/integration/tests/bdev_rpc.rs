//! The bdev layer's RPCs, driven by SPDK's own client where it can be.

use pollux_core::rpc::{ClientError, RpcError};
use pollux_tests::{Daemon, DaemonOpts, TempDir, ok_stdout, pollux_rpc, spdk_rpc};
use serde_json::{Value, json};

fn rpc_code(e: ClientError) -> i32 {
    match e {
        ClientError::Rpc(RpcError { code, .. }) => code,
        other => panic!("not an RPC error: {other}"),
    }
}

#[test]
fn create_list_delete_with_spdk_rpc() {
    let d = Daemon::start(DaemonOpts::default());
    let dir = TempDir::new("bdev");
    let file = dir.join("disk.img");
    std::fs::write(&file, vec![0u8; 8 << 20]).unwrap();
    let name = ok_stdout("malloc", &spdk_rpc(&d.socket, &["bdev_malloc_create", "-b", "Malloc7", "16", "512"]));
    assert_eq!(name.trim(), "Malloc7");
    ok_stdout("null", &spdk_rpc(&d.socket, &["bdev_null_create", "Null0", "32", "4096"]));
    ok_stdout("uring", &spdk_rpc(&d.socket, &["bdev_uring_create", file.to_str().unwrap(), "Uring0", "512"]));
    ok_stdout("aio", &spdk_rpc(&d.socket, &["bdev_aio_create", file.to_str().unwrap(), "Aio0", "4096", "--readonly"]));
    let list: Value = serde_json::from_str(&ok_stdout("get_bdevs", &spdk_rpc(&d.socket, &["bdev_get_bdevs"]))).unwrap();
    let by_name =
        |n: &str| list.as_array().unwrap().iter().find(|b| b["name"] == n).unwrap_or_else(|| panic!("{n} missing: {list}")).clone();
    assert_eq!(by_name("Malloc7")["num_blocks"], 32768);
    assert_eq!(by_name("Malloc7")["product_name"], "Malloc disk");
    assert_eq!(by_name("Null0")["block_size"], 4096);
    assert_eq!(by_name("Uring0")["num_blocks"], 16384);
    assert_eq!(by_name("Aio0")["supported_io_types"]["write"], false, "read-only aio bdev");
    assert!(by_name("Uring0")["uuid"].as_str().unwrap().len() == 36);
    // One bdev, with -b; and waiting for one that never comes.
    let one: Value = serde_json::from_str(&ok_stdout("get one", &spdk_rpc(&d.socket, &["bdev_get_bdevs", "-b", "Null0"]))).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    let t0 = std::time::Instant::now();
    assert_eq!(rpc_code(d.call("bdev_get_bdevs", Some(json!({"name": "Later", "timeout": 200}))).unwrap_err()), -libc::ENODEV);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(200));
    let stats: Value =
        serde_json::from_str(&ok_stdout("iostat", &spdk_rpc(&d.socket, &["bdev_get_iostat", "--names", "Null0,Malloc7"]))).unwrap();
    assert_eq!(stats["bdevs"].as_array().unwrap().len(), 2);
    assert!(stats["tick_rate"].as_u64().unwrap() > 0);
    // Resizes: a null bdev grows (never shrinks); a uring bdev follows its file.
    ok_stdout("null resize", &spdk_rpc(&d.socket, &["bdev_null_resize", "Null0", "64"]));
    assert_eq!(d.call("bdev_get_bdevs", Some(json!({"name": "Null0"}))).unwrap()[0]["num_blocks"], 64 * 256);
    assert!(!spdk_rpc(&d.socket, &["bdev_null_resize", "Null0", "16"]).status.success(), "a null bdev shrank");
    assert!(!spdk_rpc(&d.socket, &["bdev_null_resize", "Malloc7", "64"]).status.success(), "a malloc bdev resized as null");
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(12 << 20).unwrap();
    ok_stdout("uring rescan", &spdk_rpc(&d.socket, &["bdev_uring_rescan", "Uring0"]));
    assert_eq!(d.call("bdev_get_bdevs", Some(json!({"name": "Uring0"}))).unwrap()[0]["num_blocks"], 24576);
    assert_eq!(rpc_code(d.call("bdev_aio_rescan", Some(json!({"name": "Uring0"}))).unwrap_err()), -libc::ENODEV);
    // Deletes.
    for (m, n) in
        [("bdev_malloc_delete", "Malloc7"), ("bdev_null_delete", "Null0"), ("bdev_uring_delete", "Uring0"), ("bdev_aio_delete", "Aio0")]
    {
        ok_stdout(m, &spdk_rpc(&d.socket, &[m, n]));
    }
    assert_eq!(d.call("bdev_get_bdevs", None).unwrap(), json!([]));
}

#[test]
fn bad_bdev_requests_get_spdk_error_codes() {
    let d = Daemon::start(DaemonOpts::default());
    let mk = |p: Value| d.call("bdev_malloc_create", Some(p));
    mk(json!({"name": "M0", "num_blocks": 64, "block_size": 512})).unwrap();
    assert_eq!(rpc_code(mk(json!({"name": "M0", "num_blocks": 64, "block_size": 512})).unwrap_err()), -libc::EEXIST);
    assert_eq!(rpc_code(mk(json!({"name": "M1", "num_blocks": 64, "block_size": 520})).unwrap_err()), -libc::EINVAL);
    assert_eq!(rpc_code(mk(json!({"name": "M2", "num_blocks": 0, "block_size": 512})).unwrap_err()), RpcError::INVALID_PARAMS);
    assert_eq!(rpc_code(mk(json!({"name": "M3", "num_blocks": 64})).unwrap_err()), RpcError::INVALID_PARAMS);
    assert_eq!(rpc_code(mk(json!({"name": "M4", "num_blocks": 64, "block_size": 512, "md_size": 8})).unwrap_err()), -libc::EOPNOTSUPP);
    assert_eq!(
        rpc_code(mk(json!({"name": "M5", "num_blocks": 64, "block_size": 512, "frobnicate": 1})).unwrap_err()),
        RpcError::INVALID_PARAMS
    );
    assert_eq!(rpc_code(d.call("bdev_malloc_delete", Some(json!({"name": "nope"}))).unwrap_err()), -libc::ENODEV);
    // Deleting a malloc bdev through another module's delete is refused.
    assert_eq!(rpc_code(d.call("bdev_null_delete", Some(json!({"name": "M0"}))).unwrap_err()), -libc::ENODEV);
    assert_eq!(
        rpc_code(d.call("bdev_uring_create", Some(json!({"name": "U", "filename": "/nonexistent/file"}))).unwrap_err()),
        -libc::ENOENT
    );
    // The daemon still serves.
    assert_eq!(d.call("bdev_get_bdevs", None).unwrap().as_array().unwrap().len(), 1);
}

#[test]
fn bdevs_survive_save_config_and_load_config() {
    let d = Daemon::start(DaemonOpts::default());
    let dir = TempDir::new("bdevcfg");
    let file = dir.join("u.img");
    std::fs::write(&file, vec![0u8; 4 << 20]).unwrap();
    d.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 2048, "block_size": 4096}))).unwrap();
    d.call("bdev_null_create", Some(json!({"name": "Null1", "num_blocks": 100, "block_size": 512}))).unwrap();
    d.call("bdev_uring_create", Some(json!({"name": "Uring2", "filename": file.to_str().unwrap()}))).unwrap();
    d.call("iobuf_get_stats", None).unwrap();
    let saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&d.socket, &["save_config"]))).unwrap();
    let cfg_file = dir.join("saved.json");
    std::fs::write(&cfg_file, serde_json::to_vec(&saved).unwrap()).unwrap();
    // Into a fresh target with load_config (SPDK's client) ...
    let fresh = Daemon::start(DaemonOpts { wait_for_rpc: true, ..Default::default() });
    ok_stdout("load_config", &spdk_rpc(&fresh.socket, &["load_config", "-j", cfg_file.to_str().unwrap()]));
    let again: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&fresh.socket, &["save_config"]))).unwrap();
    assert_eq!(again, saved, "same state, same UUIDs");
    // ... and with -c at start-up.
    let third = Daemon::start(DaemonOpts { config: Some(saved.clone()), ..Default::default() });
    let b = third.call("bdev_get_bdevs", None).unwrap();
    assert_eq!(b.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect::<Vec<_>>(), ["Malloc0", "Null1", "Uring2"]);
}

#[test]
fn a_memory_limit_too_small_stops_start_up_clearly() {
    // 1 MiB cannot hold the default buffer pools.
    let mut d = Daemon::spawn(&DaemonOpts { extra: vec!["-s".into(), "1".into()], ..Default::default() });
    let st = d.wait_exit(std::time::Duration::from_secs(10)).expect("exits");
    assert_eq!(st.code(), Some(1), "{}", d.log());
    assert!(d.log().contains("--mem-size"), "{}", d.log());
}

#[test]
fn pollux_rpc_speaks_rpc_py_argument_forms_for_bdevs() {
    let d = Daemon::start(DaemonOpts::default());
    let run = |args: &[&str]| ok_stdout(&args.join(" "), &pollux_rpc(&d.socket, args));
    assert_eq!(run(&["bdev_malloc_create", "-b", "M9", "8", "4096"]).trim(), "M9");
    assert_eq!(run(&["bdev_null_create", "N9", "8", "512"]).trim(), "N9");
    let per: Value = serde_json::from_str(&run(&["bdev_get_iostat", "--per-channel", "--names", "M9", "--reset-mode", "maxmin"])).unwrap();
    assert_eq!(per["bdevs"][0]["name"], "M9");
    run(&["bdev_enable_histogram", "M9", "--histogram"]);
    let h: Value = serde_json::from_str(&run(&["bdev_get_histogram", "M9"])).unwrap();
    assert!(h["buckets"].is_array(), "{h}");
    run(&["bdev_enable_histogram", "M9", "--no-histogram"]);
    let methods: Value = serde_json::from_str(&run(&["rpc_get_methods", "--current", "--include-aliases"])).unwrap();
    assert!(methods.as_array().unwrap().contains(&json!("bdev_get_iostat")));
    run(&["bdev_malloc_delete", "M9"]);
    run(&["bdev_null_delete", "N9"]);
    let out = pollux_rpc(&d.socket, &["bdev_malloc_delete", "M9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Got JSON-RPC error response"));
}

/// The delay bdev: SPDK's client creates it on a malloc bdev, I/O through
/// it takes the latency asked for (pollux-perf), the latency changes live,
/// save_config writes it back, and deleting the base deletes it.
#[test]
fn delay_bdev_delays_updates_saves_and_follows_its_base() {
    let d = Daemon::start(DaemonOpts::default());
    ok_stdout("malloc", &spdk_rpc(&d.socket, &["bdev_malloc_create", "-b", "Base0", "8", "512"]));
    let out =
        spdk_rpc(&d.socket, &["bdev_delay_create", "-b", "Base0", "-d", "Slow0", "-r", "3000", "-t", "6000", "-w", "1000", "-n", "2000"]);
    assert_eq!(ok_stdout("delay", &out).trim(), "Slow0");
    let b = d.call("bdev_get_bdevs", Some(json!({"name": "Slow0"}))).unwrap();
    assert_eq!(b[0]["num_blocks"], 16384, "{b}");
    assert_eq!(b[0]["driver_specific"]["delay"]["base_bdev_name"], "Base0", "{b}");
    // A p99 below its average, an unknown type, a missing bdev.
    let bad = |p: Value| rpc_code(d.call("bdev_delay_update_latency", Some(p)).unwrap_err());
    assert_eq!(bad(json!({"delay_bdev_name": "Slow0", "latency_type": "p99_read", "latency_us": 10})), -32602);
    assert_eq!(bad(json!({"delay_bdev_name": "Slow0", "latency_type": "sideways", "latency_us": 10})), -32602);
    assert_eq!(bad(json!({"delay_bdev_name": "Nope", "latency_type": "avg_read", "latency_us": 10})), -libc::ENODEV);
    ok_stdout("update", &spdk_rpc(&d.socket, &["bdev_delay_update_latency", "Slow0", "avg_write", "1500"]));
    ok_stdout("update", &pollux_rpc(&d.socket, &["bdev_delay_update_latency", "Slow0", "p99_write", "2500"]));
    let cfg = d.call("framework_get_config", Some(json!({"name": "bdev"}))).unwrap();
    let call = cfg.as_array().unwrap().iter().find(|c| c["method"] == "bdev_delay_create").expect("in save_config").clone();
    assert_eq!(
        (
            &call["params"]["avg_read_latency"],
            &call["params"]["avg_write_latency"],
            &call["params"]["p99_write_latency"],
            &call["params"]["base_bdev_name"]
        ),
        (&json!(3000), &json!(1500), &json!(2500), &json!("Base0"))
    );
    // The base goes, the delay bdev with it.
    ok_stdout("delete base", &spdk_rpc(&d.socket, &["bdev_malloc_delete", "Base0"]));
    assert_eq!(d.call("bdev_get_bdevs", None).unwrap(), json!([]));
    d.stop();

    // Latency seen through pollux-perf: reads average about 3 ms.
    let dir = TempDir::new("delay");
    let cfg_file = dir.join("delay.json");
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Base0", "num_blocks": 16384, "block_size": 512}},
        call,
    ]}]});
    std::fs::write(&cfg_file, config.to_string()).unwrap();
    let out = std::process::Command::new(pollux_tests::bin("pollux-perf"))
        .arg("-c")
        .arg(&cfg_file)
        .args(["-b", "Slow0", "-q", "4", "-o", "4096", "-w", "randread", "-t", "1", "--json", "--interrupt-mode"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_str(&ok_stdout("pollux-perf", &out)).unwrap();
    let p50 = r["total"]["p50_latency_us"].as_f64().unwrap();
    assert!((3000.0..4500.0).contains(&p50), "median read latency {p50} us for 3000 us asked: {r}");
    assert_eq!(r["total"]["errors"], 0);
}
