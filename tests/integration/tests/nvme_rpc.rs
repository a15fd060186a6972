//! The bdev_nvme RPC methods on the host (no VFIO here): every malformed or
//! unsupported attach is refused with a clear error naming the problem, and
//! nothing is left behind. (Attaching real controllers is tested in the
//! guest: apps/nvme/tests/vfio_guest.rs.)

use pollux_core::rpc::ClientError;
use pollux_tests::{Daemon, DaemonOpts, spdk_rpc};
use serde_json::{Value, json};

fn err(d: &Daemon, method: &str, params: Value) -> (i32, String) {
    match d.call(method, Some(params.clone())) {
        Err(ClientError::Rpc(e)) => (e.code, e.message),
        other => panic!("{method} {params} should fail, got {other:?}"),
    }
}

#[test]
fn attach_refuses_bad_and_unsupported_requests_clearly() {
    let d = Daemon::start(DaemonOpts::default());
    let base = json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "0000:00:04.0"});
    let with = |k: &str, v: Value| {
        let mut p = base.clone();
        p[k] = v;
        p
    };
    // Malformed parameters: JSON-RPC invalid params, naming the parameter.
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", with("bogus", json!(1)));
    assert_eq!(code, -32602);
    assert!(msg.contains("bogus"), "{msg}");
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", json!({"name": "Nvme0", "trtype": "PCIe"}));
    assert_eq!(code, -32602);
    assert!(msg.contains("traddr"), "{msg}");
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", with("num_io_queues", json!("many")));
    assert_eq!(code, -32602, "{msg}");
    // Not a PCI address, or no such device.
    for bad in ["", "banana", "0000:00:04", "0000:00:20.0", "../../../etc:00.0"] {
        let (code, msg) = err(&d, "bdev_nvme_attach_controller", with("traddr", json!(bad)));
        assert_eq!(code, -libc::EINVAL, "{bad}: {msg}");
        assert!(msg.contains("not a PCI address"), "{msg}");
    }
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", with("traddr", json!("0000:7f:1f.7")));
    assert_eq!(code, -libc::ENODEV, "{msg}");
    assert!(msg.contains("no PCI function 0000:7f:1f.7"), "{msg}");
    // NVMe-oF transports and options Pollux does not implement.
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", with("trtype", json!("fc")));
    assert_eq!(code, -libc::EINVAL);
    assert!(msg.contains("trtype fc is not supported"), "{msg}");
    // RDMA needs rdma-core and an RDMA device (the test guest has
    // Soft-RoCE: drivers/nvmf-host/tests/rdma.rs); where there is none the
    // attach fails with the reason.
    let rdma = json!({"name": "Nvme0", "trtype": "RDMA", "traddr": "127.0.0.1", "trsvcid": "4420", "subnqn": "nqn.x"});
    if !std::path::Path::new("/dev/infiniband/rdma_cm").exists() {
        let (_, msg) = err(&d, "bdev_nvme_attach_controller", rdma.clone());
        assert!(msg.contains("RDMA is not available on this machine"), "{msg}");
    }
    let mut digests = rdma;
    digests["hdgst"] = json!(true);
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", digests);
    assert_eq!(code, -32602, "{msg}");
    assert!(msg.contains("trtype RDMA has none"), "{msg}");
    // TCP (the NVMe-oF host, tests/nvmf_host.rs): what it needs and refuses.
    let tcp = json!({"name": "Nvme0", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420", "subnqn": "nqn.x"});
    let tcp_with = |k: &str, v: Value| {
        let mut p = tcp.clone();
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v;
        }
        p
    };
    for (k, v, want) in [
        ("subnqn", Value::Null, "subnqn is required"),
        ("traddr", json!("0000:00:04.0"), "not an IP address"),
        ("trsvcid", json!("http"), "not a port"),
        ("adrfam", json!("ib"), "adrfam ib"),
        ("hostaddr", json!("nowhere"), "not an IP address"),
        ("multipath", json!("sideways"), "multipath must be"),
    ] {
        let (code, msg) = err(&d, "bdev_nvme_attach_controller", tcp_with(k, v));
        assert_eq!(code, -32602, "{k}: {msg}");
        assert!(msg.contains(want), "{k}: {msg}");
    }
    for (k, v) in [
        ("psk", json!("key")),
        ("multipath_opts", json!({"policy": "active_active"})),
        ("prchk_reftag", json!(true)),
        ("dhchap_key", json!("k")),
    ] {
        let (code, msg) = err(&d, "bdev_nvme_attach_controller", tcp_with(k, v));
        assert_eq!(code, -libc::EOPNOTSUPP, "{k}: {msg}");
        assert!(msg.contains(&format!("'{k}'")), "{msg}");
    }
    for (k, v) in [
        ("hdgst", json!(true)),
        ("subnqn", json!("nqn.x")),
        ("prchk_guard", json!(true)),
        ("multipath", json!("multipath")),
        ("ctrlr_loss_timeout_sec", json!(5)),
    ] {
        let (code, msg) = err(&d, "bdev_nvme_attach_controller", with(k, v));
        assert_eq!(code, -libc::EOPNOTSUPP, "{k}: {msg}");
        assert!(msg.contains(&format!("'{k}'")), "{msg}");
    }
    let (code, _) = err(&d, "bdev_nvme_attach_controller", with("multipath", json!("sideways")));
    assert_eq!(code, -32602);
    // Defaults SPDK's client sends are accepted (and fail later only for the
    // missing device).
    let (code, msg) = err(
        &d,
        "bdev_nvme_attach_controller",
        json!({"name": "N", "trtype": "pcie", "traddr": "7f:1f.7", "hdgst": false, "ddgst": false, "prchk_reftag": false, "prchk_guard": false, "allow_unrecognized_csi": false, "disable_sq_flow_control": false, "multipath": "failover"}),
    );
    assert_eq!(code, -libc::ENODEV, "{msg}");
    // Other methods: unknown controllers.
    let (code, _) = err(&d, "bdev_nvme_detach_controller", json!({"name": "Nope"}));
    assert_eq!(code, -libc::ENODEV);
    let (code, _) = err(&d, "bdev_nvme_reset_controller", json!({"name": "Nope"}));
    assert_eq!(code, -libc::ENODEV);
    let (code, _) = err(&d, "bdev_nvme_set_multipath_policy", json!({"name": "Nope", "policy": "active_active"}));
    assert_eq!(code, -libc::ENODEV);
    let (code, _) = err(&d, "bdev_nvme_get_io_paths", json!({"name": "Nope"}));
    assert_eq!(code, -libc::ENODEV);
    assert_eq!(d.call("bdev_nvme_get_io_paths", None).unwrap(), json!({"poll_groups": []}));
    let (code, _) = err(&d, "bdev_nvme_get_controllers", json!({"name": "Nope"}));
    assert_eq!(code, -libc::ENODEV);
    assert_eq!(d.call("bdev_nvme_get_controllers", None).unwrap(), json!([]));
    // SPDK's own client reaches the same methods.
    let out = spdk_rpc(&d.socket, &["bdev_nvme_attach_controller", "-b", "Nvme0", "-t", "PCIe", "-a", "0000:7f:1f.7"]);
    assert!(!out.status.success());
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("no PCI function"), "{said}");
    let out = spdk_rpc(&d.socket, &["bdev_nvme_get_controllers"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(d.call("bdev_get_bdevs", None).unwrap(), json!([]), "nothing left behind");
    d.stop();
}

/// The `bdev` subsystem's entries of a `framework_get_config`/save_config.
fn bdev_config(d: &Daemon) -> Vec<Value> {
    d.call("framework_get_config", Some(json!({"name": "bdev"}))).unwrap().as_array().unwrap().clone()
}

fn entry<'a>(cfg: &'a [Value], method: &str) -> (usize, &'a Value) {
    cfg.iter().enumerate().find(|(_, e)| e["method"] == method).unwrap_or_else(|| panic!("no {method} in {cfg:?}"))
}

/// bdev_nvme_set_options and bdev_nvme_set_hotplug: SPDK's client sets
/// them, save_config writes them before any bdev, a config SPDK saved (all
/// its defaults) loads, and what Pollux cannot honour is refused by name.
#[test]
fn nvme_module_options_round_trip_and_refuse_what_pollux_lacks() {
    let d = Daemon::start(DaemonOpts::default());
    // Pollux's defaults: I/O times out after 30 s and is aborted.
    let cfg = bdev_config(&d);
    let (opts_at, opts) = entry(&cfg, "bdev_nvme_set_options");
    assert_eq!(opts["params"]["timeout_us"], 30_000_000);
    assert_eq!(opts["params"]["action_on_timeout"], "abort");
    assert_eq!(entry(&cfg, "bdev_nvme_set_hotplug").1["params"], json!({"enable": false, "period_us": 100000}));
    assert!(opts_at > entry(&cfg, "bdev_set_options").0, "after bdev_set_options");
    // SPDK's client, with its option names.
    let out = spdk_rpc(
        &d.socket,
        &[
            "bdev_nvme_set_options",
            "-a",
            "reset",
            "-t",
            "5000000",
            "--timeout-admin-us",
            "2000000",
            "-i",
            "100",
            "--generate-uuids",
            "-r",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = spdk_rpc(&d.socket, &["bdev_nvme_set_hotplug", "--hotplug", "-r", "250000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = bdev_config(&d);
    let p = &entry(&cfg, "bdev_nvme_set_options").1["params"];
    assert_eq!(
        (
            &p["action_on_timeout"],
            &p["timeout_us"],
            &p["timeout_admin_us"],
            &p["nvme_ioq_poll_period_us"],
            &p["generate_uuids"],
            &p["bdev_retry_count"]
        ),
        (&json!("reset"), &json!(5_000_000), &json!(2_000_000), &json!(100), &json!(true), &json!(5))
    );
    assert_eq!(entry(&cfg, "bdev_nvme_set_hotplug").1["params"], json!({"enable": true, "period_us": 250000}));
    // The hotplug poller runs on the main reactor.
    let pollers = d.call("thread_get_pollers", None).unwrap().to_string();
    assert!(pollers.contains("nvme_hotplug"), "{pollers}");
    d.call("bdev_nvme_set_hotplug", Some(json!({"enable": false}))).unwrap();
    let pollers = d.call("thread_get_pollers", None).unwrap().to_string();
    assert!(!pollers.contains("nvme_hotplug"), "stopped: {pollers}");
    // Refusals name the parameter.
    let (code, msg) = err(&d, "bdev_nvme_set_options", json!({"bogus": 1}));
    assert_eq!(code, -32602);
    assert!(msg.contains("bogus"), "{msg}");
    let (code, msg) = err(&d, "bdev_nvme_set_options", json!({"action_on_timeout": "explode"}));
    assert_eq!(code, -32602);
    assert!(msg.contains("action_on_timeout"), "{msg}");
    let (code, msg) = err(&d, "bdev_nvme_set_options", json!({"arbitration_burst": 3}));
    assert_eq!(code, -libc::EOPNOTSUPP);
    assert!(msg.contains("arbitration_burst"), "{msg}");
    let (code, msg) = err(&d, "bdev_nvme_set_options", json!({"io_path_stat": true}));
    assert_eq!(code, -libc::EOPNOTSUPP);
    assert!(msg.contains("io_path_stat"), "{msg}");
    let (code, msg) = err(&d, "bdev_nvme_set_hotplug", json!({"period_us": 5}));
    assert_eq!(code, -32602);
    assert!(msg.contains("enable"), "{msg}");
    // A refused call changed nothing.
    assert_eq!(entry(&bdev_config(&d), "bdev_nvme_set_options").1["params"]["action_on_timeout"], "reset");
    d.stop();

    // What SPDK 24.x's save_config writes for the nvme module (its
    // defaults), in a config file: it loads and is kept.
    let spdk_defaults = json!({
        "action_on_timeout": "none", "timeout_us": 0, "timeout_admin_us": 0, "keep_alive_timeout_ms": 10000,
        "arbitration_burst": 0, "low_priority_weight": 0, "medium_priority_weight": 0, "high_priority_weight": 0,
        "nvme_adminq_poll_period_us": 10000, "nvme_ioq_poll_period_us": 0, "io_queue_requests": 0,
        "delay_cmd_submit": true, "transport_retry_count": 4, "bdev_retry_count": 3, "transport_ack_timeout": 0,
        "ctrlr_loss_timeout_sec": 0, "reconnect_delay_sec": 0, "fast_io_fail_timeout_sec": 0,
        "disable_auto_failback": false, "generate_uuids": false, "transport_tos": 0, "nvme_error_stat": false,
        "rdma_srq_size": 0, "io_path_stat": false, "allow_accel_sequence": false, "rdma_max_cq_size": 0,
        "rdma_cm_event_timeout_ms": 0, "dhchap_digests": ["sha256", "sha384", "sha512"],
        "dhchap_dhgroups": ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"],
        "rdma_umr_per_io": false, "tcp_connect_timeout_ms": 0, "enable_flush": false
    });
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_set_options", "params": spdk_defaults},
        {"method": "bdev_nvme_set_hotplug", "params": {"period_us": 100000, "enable": false}},
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 2048, "block_size": 512}}
    ]}]});
    let d = Daemon::start(DaemonOpts { config: Some(config), ..DaemonOpts::default() });
    let cfg = bdev_config(&d);
    let (opts_at, opts) = entry(&cfg, "bdev_nvme_set_options");
    assert_eq!(opts["params"], spdk_defaults, "kept as loaded");
    assert!(opts_at < entry(&cfg, "bdev_malloc_create").0, "module options come before the bdevs");
    d.stop();
}
