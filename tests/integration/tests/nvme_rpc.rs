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
    let (code, msg) = err(&d, "bdev_nvme_attach_controller", with("trtype", json!("tcp")));
    assert_eq!(code, -libc::EINVAL);
    assert!(msg.contains("trtype tcp is not supported"), "{msg}");
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
