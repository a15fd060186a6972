//! The NVMe-oF host (`drivers/nvmf-host`) against Pollux's own NVMe/TCP
//! target on loopback: a remote malloc namespace attached with SPDK's own
//! client and verified by pollux-perf at several depths and sizes, digests
//! off and on; a refused host NQN reported as such; and controllers that
//! misbehave (malformed, unexpected or missing answers) failing the attach
//! with a clear error while the host daemon goes on.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pollux_tests::iscsi_host::free_port;
use pollux_tests::nvmf_proxy::Proxy;
use pollux_tests::{Daemon, DaemonOpts, TempDir, clean_perf_run, ok_stdout, perf_command, pollux_rpc, spdk_rpc};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:host-test";

/// A target serving a 256 MiB malloc namespace on `port`; `hosts`: the host
/// NQNs allowed (None: any).
fn target(port: u16, hosts: Option<&[&str]>) -> Daemon {
    let mut cfg = vec![
        json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}),
        json!({"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": hosts.is_none(), "serial_number": "HOST0001"}}),
        json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}}),
        json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}),
    ];
    for h in hosts.unwrap_or_default() {
        cfg.push(json!({"method": "nvmf_subsystem_add_host", "params": {"nqn": NQN, "host": h}}));
    }
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 524288, "block_size": 512}}]},
            {"subsystem": "nvmf", "config": cfg},
        ]})),
        ..DaemonOpts::default()
    })
}

fn attach_params(port: u16, digests: bool) -> Value {
    json!({"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string(),
        "subnqn": NQN, "hdgst": digests, "ddgst": digests})
}

fn perf(dir: &TempDir, config: &Value, args: &[&str]) -> Output {
    perf_command(dir, config, args).output().expect("run pollux-perf")
}

#[test]
fn a_remote_malloc_namespace_attached_with_spdk_rpc_is_a_bdev_and_verifies_clean() {
    let port = free_port();
    let tgt = target(port, None);
    let host = Daemon::start(DaemonOpts::default());
    let p = port.to_string();
    let out = spdk_rpc(
        &host.socket,
        &["bdev_nvme_attach_controller", "-b", "Nvme0", "-t", "tcp", "-a", "127.0.0.1", "-f", "ipv4", "-s", &p, "-n", NQN],
    );
    let names = ok_stdout("spdk-rpc bdev_nvme_attach_controller -t tcp", &out);
    assert!(names.contains("Nvme0n1"), "{names}");
    let b = host.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).unwrap();
    assert_eq!(b[0]["num_blocks"], 524288, "{b}");
    assert_eq!(b[0]["block_size"], 512, "{b}");
    assert_eq!(b[0]["product_name"], "NVMe disk", "{b}");
    let c = host.call("bdev_nvme_get_controllers", Some(json!({"name": "Nvme0"}))).unwrap();
    let ctrlr = &c[0]["ctrlrs"][0];
    assert_eq!(ctrlr["trid"]["trtype"], "TCP", "{c}");
    assert_eq!(ctrlr["trid"]["subnqn"], NQN, "{c}");
    assert_eq!(ctrlr["state"], "enabled", "{c}");
    // SPDK's client reads the remote controller's health log (Pollux's
    // target reports 25 C, a full spare).
    let out = spdk_rpc(&host.socket, &["bdev_nvme_get_controller_health_info", "-c", "Nvme0"]);
    let health: Value = serde_json::from_str(&ok_stdout("spdk-rpc bdev_nvme_get_controller_health_info", &out)).expect("JSON");
    assert_eq!(health["temperature_celsius"], 25, "{health}");
    assert_eq!(health["available_spare_percentage"], 100, "{health}");
    assert_eq!(health["traddr"], "127.0.0.1", "{health}");
    assert_eq!(health["model_number"], ctrlr["model_number"], "{health}");
    let ours = pollux_rpc(&host.socket, &["bdev_nvme_get_controller_health_info", "-c", "Nvme0"]);
    let ours: Value = serde_json::from_str(&ok_stdout("pollux-rpc bdev_nvme_get_controller_health_info", &ours)).expect("JSON");
    assert_eq!(ours["temperature_celsius"], 25, "{ours}");
    let e = host.call("bdev_nvme_get_controller_health_info", Some(json!({"name": "Nvme9"}))).unwrap_err().to_string();
    assert!(e.contains("Device not found"), "{e}");
    // The target sees the host's controller; save_config writes the attach.
    let t = tgt.call("nvmf_get_subsystems", None).unwrap();
    assert!(t.to_string().contains(NQN), "{t}");
    let saved = host.call("framework_get_config", Some(json!({"name": "bdev"}))).unwrap();
    let s = saved.to_string();
    assert!(s.contains("bdev_nvme_attach_controller") && s.contains("\"trtype\":\"TCP\"") && s.contains(NQN), "{s}");
    // Detached: the bdev and the controller are gone.
    let out = spdk_rpc(&host.socket, &["bdev_nvme_detach_controller", "Nvme0"]);
    ok_stdout("spdk-rpc bdev_nvme_detach_controller", &out);
    assert!(host.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).is_err(), "the bdev is gone");
    assert_eq!(host.call("bdev_nvme_get_controllers", None).unwrap(), json!([]));
    drop(host);
    drop(tgt);
}

#[test]
fn pollux_perf_verify_is_clean_on_a_remote_namespace_for_depths_1_32_128_up_to_4x_mdts_with_and_without_digests() {
    let port = free_port();
    let tgt = target(port, None);
    let dir = TempDir::new("nvmf-host-perf");
    // The target's largest transfer (MDTS) is its max_io_size.
    let t = tgt.call("nvmf_get_transports", None).unwrap();
    let mdts = t[0]["max_io_size"].as_u64().unwrap();
    let sizes = [512, 4096, mdts, 4 * mdts];
    for digests in [false, true] {
        let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_attach_controller", "params": attach_params(port, digests)}]}]});
        for qd in [1u64, 32, 128] {
            for size in sizes {
                let out = perf(
                    &dir,
                    &cfg,
                    &["-b", "Nvme0n1", "-q", &qd.to_string(), "-o", &size.to_string(), "-w", "verify", "-t", "1", "-m", "0x1", "--json"],
                );
                let what = format!("digests {digests}, QD {qd}, {size} bytes");
                let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                    panic!(
                        "{what}: no JSON report ({e}):\n{}\n{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
                assert!(out.status.success(), "{what}: {r}\n{}", String::from_utf8_lossy(&out.stderr));
                assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{what}: {r}");
                assert_eq!(r["total"]["errors"], 0, "{what}: {r}");
                assert_eq!(r["verify_mismatches"], json!([]), "{what}: {r}");
            }
        }
    }
    drop(tgt);
}

#[test]
fn a_host_nqn_the_target_refuses_is_reported_as_such() {
    let port = free_port();
    let allowed = "nqn.2016-06.io.spdk:allowed-host";
    let tgt = target(port, Some(&[allowed]));
    let host = Daemon::start(DaemonOpts::default());
    let mut p = attach_params(port, false);
    p["hostnqn"] = json!("nqn.2016-06.io.spdk:stranger");
    let e = host.call("bdev_nvme_attach_controller", Some(p.clone())).unwrap_err().to_string();
    assert!(e.contains("refused") && e.contains("stranger") && e.to_lowercase().contains("host"), "{e}");
    assert_eq!(host.call("bdev_nvme_get_controllers", None).unwrap(), json!([]));
    // The allowed one gets in, under the same name.
    p["hostnqn"] = json!(allowed);
    let names = host.call("bdev_nvme_attach_controller", Some(p)).unwrap();
    assert_eq!(names, json!(["Nvme0n1"]));
    drop(host);
    drop(tgt);
}

/// A fake controller: accepts one connection and runs `script` on it.
fn fake_controller(script: impl FnOnce(&mut std::net::TcpStream) + Send + 'static) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        script(&mut s);
    });
    (port, h)
}

fn read_pdu(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).unwrap();
    let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; plen - 8];
    s.read_exact(&mut rest).unwrap();
    [ch.to_vec(), rest].concat()
}

fn ic_resp() -> Vec<u8> {
    let mut r = vec![0u8; 128];
    r[0] = 0x01;
    r[2] = 128;
    r[4..8].copy_from_slice(&128u32.to_le_bytes());
    r[12..16].copy_from_slice(&131072u32.to_le_bytes());
    r
}

fn capsule_resp(cid: u16, status: u16) -> Vec<u8> {
    let mut r = vec![0u8; 24];
    r[0] = 0x05;
    r[2] = 24;
    r[4..8].copy_from_slice(&24u32.to_le_bytes());
    r[8 + 12..8 + 14].copy_from_slice(&cid.to_le_bytes());
    r[8 + 14..8 + 16].copy_from_slice(&(status << 1).to_le_bytes());
    r
}

#[test]
fn a_controller_that_misbehaves_fails_the_attach_clearly_and_the_host_goes_on() {
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_nvme_set_options", Some(json!({"keep_alive_timeout_ms": 1000}))).unwrap();
    type Script = Box<dyn FnOnce(&mut std::net::TcpStream) + Send>;
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "an ICResp with a wrong header length",
            Box::new(|s| {
                read_pdu(s);
                let mut r = ic_resp();
                r[2] = 64;
                s.write_all(&r).unwrap();
                let _ = s.read(&mut [0u8; 256]);
            }),
            "HLEN",
        ),
        (
            "a completion for a command never sent",
            Box::new(|s| {
                read_pdu(s);
                s.write_all(&ic_resp()).unwrap();
                read_pdu(s);
                s.write_all(&capsule_resp(77, 0)).unwrap();
                let _ = s.read(&mut [0u8; 256]);
            }),
            "not outstanding",
        ),
        (
            "C2H data larger than the command's transfer",
            Box::new(|s| {
                read_pdu(s);
                s.write_all(&ic_resp()).unwrap();
                let connect = read_pdu(s);
                let cid = u16::from_le_bytes(connect[10..12].try_into().unwrap());
                let mut d = vec![0u8; 24 + 8192];
                d[0] = 0x07;
                d[1] = 0x04;
                d[2] = 24;
                d[3] = 24;
                d[4..8].copy_from_slice(&((24 + 8192) as u32).to_le_bytes());
                d[8..10].copy_from_slice(&cid.to_le_bytes());
                d[16..20].copy_from_slice(&8192u32.to_le_bytes());
                s.write_all(&d).unwrap();
                let _ = s.read(&mut [0u8; 256]);
            }),
            "reads nothing",
        ),
        (
            "a C2HTermReq",
            Box::new(|s| {
                read_pdu(s);
                s.write_all(&ic_resp()).unwrap();
                read_pdu(s);
                let mut t = vec![0u8; 24];
                t[0] = 0x03;
                t[2] = 24;
                t[4..8].copy_from_slice(&24u32.to_le_bytes());
                t[8..10].copy_from_slice(&1u16.to_le_bytes());
                s.write_all(&t).unwrap();
                let _ = s.read(&mut [0u8; 256]);
            }),
            "C2HTermReq",
        ),
        (
            "no answer to the Connect",
            Box::new(|s| {
                read_pdu(s);
                s.write_all(&ic_resp()).unwrap();
                read_pdu(s);
                let _ = s.read(&mut [0u8; 256]);
            }),
            "timed out",
        ),
    ];
    for (what, script, expect) in cases {
        let (port, h) = fake_controller(script);
        let e = host.call("bdev_nvme_attach_controller", Some(attach_params(port, false))).unwrap_err().to_string();
        assert!(e.contains(expect), "{what}: {e}");
        h.join().unwrap();
        // The host still answers, and nothing is left attached.
        assert_eq!(host.call("bdev_nvme_get_controllers", None).unwrap(), json!([]), "{what}");
    }
    // A port nobody listens on: refused, at once.
    let e = host.call("bdev_nvme_attach_controller", Some(attach_params(free_port(), false))).unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");
}

/// A controller whose Identify Namespace gives a geometry no disk has:
/// blocks of 2 GiB (LBADS 31), or 2^62 blocks of 4 KiB (more bytes than
/// 64 bits count), or blocks larger than the controller moves in one
/// command. The host made a bdev of each (found by review, 2026-12-06);
/// now the controller is attached without a bdev for that namespace, with
/// the reason in the log, as for a namespace with metadata.
#[test]
fn a_namespace_with_an_absurd_geometry_gets_no_bdev() {
    let port = free_port();
    let _tgt = target(port, None);
    for (what, nsze, lbads, mdts, why) in [
        ("2 GiB blocks", 8u64, 31u8, None, "2147483648-byte blocks"),
        ("2^62 blocks of 4 KiB", 1u64 << 62, 12, None, "do not fit in 64 bits"),
        // 64 KiB blocks, but at most 8 KiB a command (MDTS 1, CAP.MPSMIN 0):
        // the host cut each block into 1-byte commands.
        ("blocks larger than the largest transfer", 8, 16, Some(1u8), "more than the controller's largest transfer (8192 bytes)"),
    ] {
        // The real target's Identify Namespace (CNS 0), and its Identify
        // Controller's MDTS (CNS 1, byte 77), rewritten.
        let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), move |sqe, datao, data| {
            if sqe[0] == 0x06 && sqe[40] == 0 && datao == 0 && data.len() > 130 {
                data[0..8].copy_from_slice(&nsze.to_le_bytes());
                data[8..16].copy_from_slice(&nsze.to_le_bytes());
                data[26] = 0;
                data[130] = lbads;
            }
            if let (Some(m), true) = (mdts, sqe[0] == 0x06 && sqe[40] == 1 && datao == 0 && data.len() > 77) {
                data[77] = m;
            }
        });
        let host = Daemon::start(DaemonOpts::default());
        let names = host
            .call("bdev_nvme_attach_controller", Some(attach_params(proxy.addr().port(), false)))
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", host.log()));
        assert_eq!(names, json!([]), "{what}");
        assert_eq!(host.call("bdev_get_bdevs", None).unwrap(), json!([]), "{what}");
        assert_eq!(host.call("bdev_nvme_get_controllers", None).unwrap().as_array().map(Vec::len), Some(1), "{what}");
        let log = host.log();
        assert!(log.contains(why), "{what}: {log}");
        host.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).expect(what);
    }
    // Two paths to a namespace of 64 KiB blocks; the second moves at most
    // 8 KiB a command (MDTS 1), so it could not carry a block: refused.
    let path = |mdts: u8| {
        Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), move |sqe, datao, data| {
            if sqe[0] == 0x06 && datao == 0 && data.len() > 130 {
                match sqe[40] {
                    0 => data[130] = 16,
                    1 => data[77] = mdts,
                    _ => {}
                }
            }
        })
    };
    let (a, b) = (path(0), path(1));
    let host = Daemon::start(DaemonOpts::default());
    let names = host.call("bdev_nvme_attach_controller", Some(another_path(a.addr().port()))).unwrap();
    assert_eq!(names, json!(["Nvme0n1"]));
    let e = host.call("bdev_nvme_attach_controller", Some(another_path(b.addr().port()))).unwrap_err().to_string();
    assert!(e.contains("65536-byte blocks; the controller at") && e.contains("transfers at most 8192 bytes"), "{e}");
    let c = host.call("bdev_nvme_get_controllers", None).unwrap();
    assert_eq!(c[0]["ctrlrs"].as_array().map(Vec::len), Some(1), "{c}");
}

/// A target serving the file `img` (uring bdev) on `port`: its data
/// outlives the process, so a restarted target serves the same blocks, as
/// the same namespace (its NGUID pinned: one derived from a bdev UUID made
/// at start would be another namespace to a host, Linux's or Pollux's).
fn file_target(port: u16, img: &std::path::Path) -> Daemon {
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": img.to_str().unwrap(), "block_size": 512}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "HOST0002"}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Uring0", "nguid": "0D6C4F3E2B1A49588776655443322110"}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
            ]},
        ]})),
        ..DaemonOpts::default()
    })
}

fn writes(tgt: &Daemon) -> u64 {
    let s = tgt.call("bdev_get_iostat", Some(json!({"name": "Uring0"}))).unwrap();
    s["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
}

/// Wait until the target has written more than `before` writes through its
/// bdev (the host's verify is under way).
fn wait_for_writes(tgt: &Daemon, before: u64) {
    let t0 = std::time::Instant::now();
    loop {
        let s = writes(tgt);
        if s > before {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no write reached the target: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_perf(dir: &TempDir, config: &Value, args: &[&str]) -> std::process::Child {
    perf_command(dir, config, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pollux-perf")
}

#[test]
fn a_verify_survives_the_target_killed_and_restarted_and_a_controller_lost_for_good_is_deleted() {
    let dir = TempDir::new("nvmf-host-reconnect");
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let port = free_port();
    let mut p = attach_params(port, false);
    p["ctrlr_loss_timeout_sec"] = json!(30);
    p["reconnect_delay_sec"] = json!(1);
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_nvme_attach_controller", "params": p}]}]});

    // Killed mid-verify and started again: every request waits, is sent
    // again on the new association, and the verify ends clean.
    let tgt = file_target(port, &img);
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n1", "-q", "16", "-o", "65536", "-w", "verify", "-t", "6", "-m", "0x1", "--json"]);
    wait_for_writes(&tgt, 0);
    tgt.signal(libc::SIGKILL);
    drop(tgt);
    let tgt = file_target(port, &img);
    let (_, err) = clean_perf_run(perf);
    assert!(err.contains("controller Nvme0 lost") && err.contains("controller Nvme0 reconnected"), "{err}");
    assert!(tgt.call("nvmf_get_subsystems", None).is_ok(), "{}", tgt.log());

    // Lost for good: ctrlr_loss_timeout_sec passes, the waiting requests
    // fail and the controller is deleted; the run ends instead of hanging.
    let mut p = attach_params(port, false);
    p["ctrlr_loss_timeout_sec"] = json!(2);
    p["reconnect_delay_sec"] = json!(1);
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_nvme_attach_controller", "params": p}]}]});
    let before = writes(&tgt);
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n1", "-q", "16", "-o", "65536", "-w", "verify", "-t", "8", "-m", "0x1", "--json"]);
    wait_for_writes(&tgt, before);
    tgt.signal(libc::SIGKILL);
    drop(tgt);
    let out = perf.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("cannot attach"), "{err}");
    assert!(err.contains("lost for good") && err.contains("deleting it"), "{err}");

    // The RPC checks SPDK's rules for the three timeouts.
    let host = Daemon::start(DaemonOpts::default());
    for (loss, delay, fast) in [(0, 1, 0), (5, 0, 0), (5, 10, 0), (5, 2, 1), (-2, 1, 0)] {
        let mut p = attach_params(port, false);
        p["ctrlr_loss_timeout_sec"] = json!(loss);
        p["reconnect_delay_sec"] = json!(delay);
        p["fast_io_fail_timeout_sec"] = json!(fast);
        let e = host.call("bdev_nvme_attach_controller", Some(p)).unwrap_err().to_string();
        assert!(e.contains("_sec"), "{loss} {delay} {fast}: {e}");
    }
}

fn listener(port: u16) -> Value {
    json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()})
}

/// Path `port` of Nvme0 as a second (or later) path.
fn another_path(port: u16) -> Value {
    let mut p = attach_params(port, false);
    p["multipath"] = json!("multipath");
    p["ctrlr_loss_timeout_sec"] = json!(-1);
    p["reconnect_delay_sec"] = json!(1);
    p
}

/// The state of each path of Nvme0 (by port) as the host reports it.
fn path_states(host: &Daemon) -> Vec<(String, String)> {
    let c = host.call("bdev_nvme_get_controllers", Some(json!({"name": "Nvme0"}))).unwrap();
    c[0]["ctrlrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["trid"]["trsvcid"].as_str().unwrap().to_string(), p["state"].as_str().unwrap().to_string()))
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_paths_make_one_bdev_a_removed_listener_fails_over_without_errors_and_the_path_returns() {
    let (a, b) = (free_port(), free_port());
    let tgt = target(a, None);
    tgt.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": listener(b)}))).unwrap();

    // In a daemon, through SPDK's client: the second path adds no bdev,
    // both paths are reported, the policy is set and saved.
    let host = Daemon::start(DaemonOpts::default());
    let mut first = attach_params(a, false);
    first["ctrlr_loss_timeout_sec"] = json!(-1);
    first["reconnect_delay_sec"] = json!(1);
    let names = host.call("bdev_nvme_attach_controller", Some(first.clone())).unwrap();
    assert_eq!(names, json!(["Nvme0n1"]));
    let names = host.call("bdev_nvme_attach_controller", Some(another_path(b))).unwrap();
    assert_eq!(names, json!(["Nvme0n1"]));
    let e = host.call("bdev_nvme_attach_controller", Some(another_path(b))).unwrap_err().to_string();
    assert!(e.contains("already exists with the specified network path"), "{e}");
    let mut disabled = attach_params(b, false);
    disabled["multipath"] = json!("disable");
    let e = host.call("bdev_nvme_attach_controller", Some(disabled)).unwrap_err().to_string();
    assert!(e.contains("multipath is disabled"), "{e}");
    let mut other = another_path(free_port());
    other["subnqn"] = json!("nqn.2016-06.io.spdk:elsewhere");
    let e = host.call("bdev_nvme_attach_controller", Some(other)).unwrap_err().to_string();
    assert!(e.contains("one subsystem"), "{e}");
    assert_eq!(host.call("bdev_get_bdevs", None).unwrap().as_array().unwrap().len(), 1);
    assert_eq!(path_states(&host), vec![(a.to_string(), "enabled".into()), (b.to_string(), "enabled".into())]);
    let sock = host.socket.clone();
    // (SPDK's PyPI client has no bdev_nvme_set_multipath_policy any more.)
    host.call(
        "bdev_nvme_set_multipath_policy",
        Some(json!({"name": "Nvme0n1", "policy": "active_active", "selector": "round_robin", "rr_min_io": 2})),
    )
    .unwrap();
    let paths: Value =
        serde_json::from_str(&ok_stdout("get_io_paths", &spdk_rpc(&sock, &["bdev_nvme_get_io_paths", "-n", "Nvme0n1"]))).unwrap();
    assert!(paths["poll_groups"].is_array(), "{paths}");
    let e = host
        .call("bdev_nvme_set_multipath_policy", Some(json!({"name": "Nvme0n1", "policy": "active_passive", "selector": "queue_depth"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("active_active"), "{e}");
    let saved = host.call("framework_get_config", Some(json!({"name": "bdev"}))).unwrap().to_string();
    assert!(saved.contains(&format!("\"trsvcid\":\"{b}\"")) && saved.contains("\"multipath\":\"multipath\""), "{saved}");
    assert!(saved.contains("\"rr_min_io\":2"), "{saved}");
    host.call("bdev_nvme_set_multipath_policy", Some(json!({"name": "Nvme0n1", "policy": "active_passive"}))).unwrap();
    // A reset reconnects every path (a new association each) and answers
    // once they are back; one path by its controller id.
    let cntlids = |h: &Daemon| -> Vec<u64> {
        let c = h.call("bdev_nvme_get_controllers", Some(json!({"name": "Nvme0"}))).unwrap();
        c[0]["ctrlrs"].as_array().unwrap().iter().map(|p| p["cntlid"].as_u64().unwrap()).collect()
    };
    let before = cntlids(&host);
    ok_stdout("reset_controller", &spdk_rpc(&sock, &["bdev_nvme_reset_controller", "Nvme0"]));
    let after = cntlids(&host);
    assert!(before.iter().zip(&after).all(|(b, a)| b != a), "{before:?} -> {after:?}");
    assert_eq!(path_states(&host), vec![(a.to_string(), "enabled".into()), (b.to_string(), "enabled".into())]);
    host.call("bdev_nvme_reset_controller", Some(json!({"name": "Nvme0", "cntlid": after[1]}))).unwrap();
    let again = cntlids(&host);
    assert!(again[0] == after[0] && again[1] != after[1], "{after:?} -> {again:?}");
    let e = host.call("bdev_nvme_reset_controller", Some(json!({"name": "Nvme0", "cntlid": 60000}))).unwrap_err().to_string();
    assert!(e.contains("no controller id"), "{e}");

    // The first listener removed: the host reports that path down, and
    // the second one carries on; the listener back, the path is reused.
    tgt.call("nvmf_subsystem_remove_listener", Some(json!({"nqn": NQN, "listen_address": listener(a)}))).unwrap();
    wait_for("the first path reported down", || path_states(&host)[0].1 == "resetting");
    assert_eq!(path_states(&host)[1].1, "enabled");
    tgt.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": listener(a)}))).unwrap();
    wait_for("the first path back", || path_states(&host)[0].1 == "enabled");
    // One path detached (only the fields given have to match, SPDK's
    // rule: the port names it): the bdev stays, on the other.
    let e = host
        .call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0", "trsvcid": free_port().to_string()})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no path matching"), "{e}");
    host.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0", "trtype": "TCP", "trsvcid": a.to_string()}))).unwrap();
    assert_eq!(path_states(&host), vec![(b.to_string(), "enabled".into())]);
    assert!(host.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).is_ok());
    host.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).unwrap();
    assert!(host.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).is_err());

    // A verify over both paths (active-active) while the first listener
    // goes away and comes back: no request fails.
    let dir = TempDir::new("nvmf-host-failover");
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": first},
        {"method": "bdev_nvme_attach_controller", "params": another_path(b)},
        {"method": "bdev_nvme_set_multipath_policy", "params": {"name": "Nvme0n1", "policy": "active_active"}},
    ]}]});
    let iostat = |t: &Daemon| {
        t.call("bdev_get_iostat", Some(json!({"name": "Malloc0"}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
    };
    let before = iostat(&tgt);
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n1", "-q", "32", "-o", "16384", "-w", "verify", "-t", "8", "-m", "0x1", "--json"]);
    wait_for("writes through the host", || iostat(&tgt) > before);
    tgt.call("nvmf_subsystem_remove_listener", Some(json!({"nqn": NQN, "listen_address": listener(a)}))).unwrap();
    let mid = iostat(&tgt);
    wait_for("writes over the second path", || iostat(&tgt) > mid + 1000);
    tgt.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": listener(a)}))).unwrap();
    let (_, err) = clean_perf_run(perf);
    assert!(err.contains("controller Nvme0 lost"), "{err}");

    // One path detached (through pollux-perf's own RPC socket) while a
    // verify runs over both: its requests, in flight included, move to the
    // other path; none fails.
    let dir = TempDir::new("nvmf-host-detach-path");
    let before = iostat(&tgt);
    // Two reactors: the second one's channel sees the path go from the
    // path set before the main reactor's message to its queue arrives.
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n1", "-q", "32", "-o", "16384", "-w", "verify", "-t", "6", "-m", "0x3", "--json"]);
    wait_for("writes through the host", || iostat(&tgt) > before + 1000);
    let rpc = || pollux_core::rpc::Client::connect(&dir.join("perf.sock")).expect("pollux-perf's RPC socket");
    rpc().call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0", "traddr": "127.0.0.1", "trsvcid": a.to_string()}))).unwrap();
    let paths = rpc().call("bdev_nvme_get_controllers", Some(json!({"name": "Nvme0"}))).unwrap();
    assert_eq!(paths[0]["ctrlrs"].as_array().unwrap().len(), 1, "{paths}");
    assert_eq!(paths[0]["ctrlrs"][0]["trid"]["trsvcid"], b.to_string(), "{paths}");
    let mid = iostat(&tgt);
    wait_for("writes over the remaining path", || iostat(&tgt) > mid + 1000);
    clean_perf_run(perf);
}

/// A target serving `img` on `port` with a fixed namespace identity, so
/// two such targets are two paths to one namespace.
fn shared_file_target(port: u16, img: &std::path::Path) -> Daemon {
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": img.to_str().unwrap(), "block_size": 512}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "HOST0003"}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Uring0", "nguid": "6A5C6B8D1F2E4A3B9C8D7E6F50413223"}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": listener(port)}},
            ]},
        ]})),
        ..DaemonOpts::default()
    })
}

#[test]
fn a_verify_fails_over_to_a_second_target_when_the_first_is_killed_and_uses_it_again_when_it_returns() {
    let dir = TempDir::new("nvmf-host-two-targets");
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let (a, b) = (free_port(), free_port());
    let ta = shared_file_target(a, &img);
    let tb = shared_file_target(b, &img);
    let mut first = attach_params(a, false);
    first["ctrlr_loss_timeout_sec"] = json!(-1);
    first["reconnect_delay_sec"] = json!(1);
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": first},
        {"method": "bdev_nvme_attach_controller", "params": another_path(b)},
    ]}]});
    // Active-passive: everything goes to the first target until it dies.
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n1", "-q", "16", "-o", "65536", "-w", "verify", "-t", "8", "-m", "0x1", "--json"]);
    wait_for_writes(&ta, 0);
    assert_eq!(writes(&tb), 0, "active-passive sends nothing to the second path");
    ta.signal(libc::SIGKILL);
    drop(ta);
    wait_for_writes(&tb, 0);
    // Back: the first path is reconnected and preferred again.
    let ta = shared_file_target(a, &img);
    wait_for_writes(&ta, 0);
    let (_, err) = clean_perf_run(perf);
    assert!(err.contains("controller Nvme0 lost") && err.contains("controller Nvme0 reconnected"), "{err}");
    drop(tb);
}

/// A target with a malloc namespace in each of `nqns`, all listening on `port`.
fn many_subsystems(port: u16, nqns: &[String]) -> Daemon {
    let mut bdevs = Vec::new();
    let mut cfg = vec![json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}})];
    for (i, n) in nqns.iter().enumerate() {
        bdevs
            .push(json!({"method": "bdev_malloc_create", "params": {"name": format!("Malloc{i}"), "num_blocks": 8192, "block_size": 512}}));
        cfg.push(json!({"method": "nvmf_create_subsystem", "params": {"nqn": n, "allow_any_host": true, "serial_number": format!("DISC{i:04}")}}));
        cfg.push(json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": n, "namespace": {"bdev_name": format!("Malloc{i}")}}}));
        cfg.push(json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": n, "listen_address": listener(port)}}));
    }
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [{"subsystem": "bdev", "config": bdevs}, {"subsystem": "nvmf", "config": cfg}]})),
        ..DaemonOpts::default()
    })
}

fn bdev_names(host: &Daemon) -> Vec<String> {
    let mut v: Vec<String> =
        host.call("bdev_get_bdevs", None).unwrap().as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

#[test]
fn discovery_attaches_what_two_pages_and_a_referral_list_and_follows_the_log_as_it_changes() {
    let (a, b) = (free_port(), free_port());
    let nqns: Vec<String> = (0..4).map(|i| format!("nqn.2016-06.io.spdk:disc{i}")).collect();
    let t1 = many_subsystems(a, &nqns);
    let t2 = many_subsystems(b, &["nqn.2016-06.io.spdk:referred".to_string()]);
    // The first target refers hosts to the second one's discovery service.
    t1.call("nvmf_discovery_add_referral", Some(json!({"address": listener(b)}))).unwrap();
    // The first subsystem at a second address too: one controller, two paths.
    let c2 = free_port();
    t1.call("nvmf_subsystem_add_listener", Some(json!({"nqn": nqns[0], "listen_address": listener(c2)}))).unwrap();

    let host = Daemon::start(DaemonOpts::default());
    let out =
        spdk_rpc(&host.socket, &["bdev_nvme_start_discovery", "-b", "nvme", "-t", "tcp", "-a", "127.0.0.1", "-s", &a.to_string(), "-w"]);
    ok_stdout("start_discovery", &out);
    // Four entries (two log pages) from the first target, one through the
    // referral: five controllers, a bdev each.
    wait_for("the referred subsystem attached", || bdev_names(&host).len() == 5);
    assert_eq!(bdev_names(&host), vec!["nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1", "nvme4n1"]);
    let c = host.call("bdev_nvme_get_controllers", None).unwrap();
    let subs: Vec<&str> = c.as_array().unwrap().iter().map(|c| c["ctrlrs"][0]["trid"]["subnqn"].as_str().unwrap()).collect();
    assert!(subs.contains(&"nqn.2016-06.io.spdk:referred") && subs.contains(&"nqn.2016-06.io.spdk:disc3"), "{c}");
    let two = c.as_array().unwrap().iter().find(|c| c["ctrlrs"][0]["trid"]["subnqn"] == nqns[0].as_str()).unwrap();
    let ports: Vec<&str> = two["ctrlrs"].as_array().unwrap().iter().map(|p| p["trid"]["trsvcid"].as_str().unwrap()).collect();
    assert_eq!(ports.len(), 2, "{two}");
    assert!(ports.contains(&a.to_string().as_str()) && ports.contains(&c2.to_string().as_str()), "{two}");
    let info = host.call("bdev_nvme_get_discovery_info", None).unwrap();
    assert_eq!(info[0]["name"], "nvme", "{info}");
    assert_eq!(info[0]["trid"]["trsvcid"], a.to_string(), "{info}");
    assert_eq!(info[0]["referrals"][0]["trid"]["trsvcid"], b.to_string(), "{info}");
    let saved = host.call("framework_get_config", Some(json!({"name": "bdev"}))).unwrap().to_string();
    assert!(saved.contains("bdev_nvme_start_discovery") && !saved.contains("bdev_nvme_attach_controller"), "{saved}");
    let e = host
        .call("bdev_nvme_start_discovery", Some(json!({"name": "nvme", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": a.to_string()})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");

    // The log changes: a new subsystem is attached, one whose listener
    // went is detached (the discovery log change event).
    let n = "nqn.2016-06.io.spdk:later";
    t1.call("bdev_malloc_create", Some(json!({"name": "Later", "num_blocks": 8192, "block_size": 512}))).unwrap();
    t1.call("nvmf_create_subsystem", Some(json!({"nqn": n, "allow_any_host": true}))).unwrap();
    t1.call("nvmf_subsystem_add_ns", Some(json!({"nqn": n, "namespace": {"bdev_name": "Later"}}))).unwrap();
    t1.call("nvmf_subsystem_add_listener", Some(json!({"nqn": n, "listen_address": listener(a)}))).unwrap();
    wait_for("the new subsystem attached", || bdev_names(&host).len() == 6);
    t1.call("nvmf_subsystem_remove_listener", Some(json!({"nqn": nqns[1], "listen_address": listener(a)}))).unwrap();
    wait_for("the unlisted subsystem detached", || bdev_names(&host).len() == 5);
    let c = host.call("bdev_nvme_get_controllers", None).unwrap().to_string();
    assert!(!c.contains(&nqns[1]) && c.contains(n), "{c}");

    // Stopped: everything it attached goes.
    ok_stdout("stop_discovery", &spdk_rpc(&host.socket, &["bdev_nvme_stop_discovery", "-b", "nvme"]));
    assert!(bdev_names(&host).is_empty());
    assert_eq!(host.call("bdev_nvme_get_discovery_info", None).unwrap(), json!([]));
    let e = host.call("bdev_nvme_stop_discovery", Some(json!({"name": "nvme"}))).unwrap_err().to_string();
    assert!(e.contains("no discovery service"), "{e}");
    assert!(!host.log().contains("panicked"), "{}", host.log());
    drop(t2);
}

#[test]
fn an_io_command_the_target_sits_on_is_aborted_then_its_queue_reset_and_no_request_fails() {
    // A target whose namespace answers after 2 s: every command passes
    // the host's 300 ms timeout.
    let port = free_port();
    let slow = 2_000_000;
    let tgt = Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}},
                {"method": "bdev_delay_create", "params": {"name": "Slow0", "base_bdev_name": "Malloc0",
                    "avg_read_latency": slow, "p99_read_latency": slow, "avg_write_latency": slow, "p99_write_latency": slow}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Slow0"}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": listener(port)}}]},
        ]})),
        ..DaemonOpts::default()
    });
    let cntlids = |t: &Daemon| -> Vec<u64> {
        let c = t.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": NQN}))).unwrap();
        c.as_array().unwrap().iter().map(|c| c["cntlid"].as_u64().unwrap()).collect()
    };
    let mut p = attach_params(port, false);
    p["ctrlr_loss_timeout_sec"] = json!(-1);
    p["reconnect_delay_sec"] = json!(1);
    let cfg_retrying = |count: i32| {
        json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_set_options", "params": {"timeout_us": 300_000, "action_on_timeout": "abort", "bdev_retry_count": count}},
            {"method": "bdev_nvme_attach_controller", "params": p}]}]})
    };
    let dir = TempDir::new("nvmf-host-timeout");
    // bdev_retry_count 1: a request that times out a second time fails
    // (the run ends with errors) instead of going round for ever.
    let out = perf_command(
        &dir,
        &cfg_retrying(1),
        &["-b", "Nvme0n1", "-q", "1", "-o", "4096", "-w", "randread", "-t", "3", "-m", "0x1", "--json"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more times than bdev_retry_count allows"), "{err}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(!out.status.success() || r["total"]["errors"].as_u64().unwrap_or(0) > 0, "{r}\n{err}");
    // Without a limit (-1), each time out resends it, until the target
    // answers.
    let cfg = cfg_retrying(-1);
    wait_for("the first run's controllers gone", || cntlids(&tgt).is_empty());
    // Reads: a write the old association left in the target could land
    // after its resend and a later write, which is the target's business,
    // not what this test is about.
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n1", "-q", "4", "-o", "4096", "-w", "randread", "-t", "6", "-m", "0x1", "--json"]);
    // The host connects, its commands time out, are aborted (Pollux's
    // target cannot abort a command its bdev holds), and the queue is
    // reset: a new association, a new controller id.
    wait_for("the host's first association", || !cntlids(&tgt).is_empty());
    let first = cntlids(&tgt)[0];
    wait_for("a new association after the reset", || cntlids(&tgt).iter().any(|&c| c != first));
    // The namespace answers promptly again: everything sent again completes.
    for t in ["avg_read", "p99_read", "avg_write", "p99_write"] {
        tgt.call("bdev_delay_update_latency", Some(json!({"delay_bdev_name": "Slow0", "latency_type": t, "latency_us": 10}))).unwrap();
    }
    let (_, err) = clean_perf_run(perf);
    assert!(err.contains("timed out; aborting it") && err.contains("not aborted"), "{err}");
    assert!(err.contains("controller Nvme0 reconnected"), "{err}");
}

#[test]
fn discovery_reconnects_to_a_restarted_discovery_controller_and_follows_it_again() {
    let a = free_port();
    let nqns = vec!["nqn.2016-06.io.spdk:again0".to_string()];
    let t1 = many_subsystems(a, &nqns);
    let host = Daemon::start(DaemonOpts::default());
    host.call(
        "bdev_nvme_start_discovery",
        Some(json!({"name": "nvme", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": a.to_string(),
            "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1, "wait_for_attach": true})),
    )
    .unwrap();
    assert_eq!(bdev_names(&host), vec!["nvme0n1"]);
    // The target goes away and comes back with one more subsystem: only a
    // reconnected discovery controller (its first log read, or the change
    // event after it) can make the host attach it.
    t1.signal(libc::SIGKILL);
    drop(t1);
    let t1 = many_subsystems(a, &nqns);
    let n = "nqn.2016-06.io.spdk:after-restart";
    t1.call("bdev_malloc_create", Some(json!({"name": "After", "num_blocks": 8192, "block_size": 512}))).unwrap();
    t1.call("nvmf_create_subsystem", Some(json!({"nqn": n, "allow_any_host": true}))).unwrap();
    t1.call("nvmf_subsystem_add_ns", Some(json!({"nqn": n, "namespace": {"bdev_name": "After"}}))).unwrap();
    t1.call("nvmf_subsystem_add_listener", Some(json!({"nqn": n, "listen_address": listener(a)}))).unwrap();
    wait_for("the subsystem added after the restart", || bdev_names(&host).len() == 2);
    assert!(!host.log().contains("panicked"), "{}", host.log());
}

/// The number of blocks of host bdev `name`, if it exists.
fn bdev_blocks(host: &Daemon, name: &str) -> Option<u64> {
    let b = host.call("bdev_get_bdevs", None).unwrap();
    b.as_array().unwrap().iter().find(|b| b["name"] == name).map(|b| b["num_blocks"].as_u64().unwrap())
}

#[test]
fn the_host_follows_namespaces_the_target_adds_resizes_removes_masks_and_brings_back() {
    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    let (a, b) = (free_port(), free_port());
    let tgt = target(a, None);
    tgt.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": listener(b)}))).unwrap();
    tgt.call("bdev_malloc_create", Some(json!({"name": "Malloc1", "num_blocks": 32768, "block_size": 512}))).unwrap();
    tgt.call("bdev_null_create", Some(json!({"name": "Null2", "num_blocks": 8192, "block_size": 4096}))).unwrap();
    let host = Daemon::start(DaemonOpts::default());
    let mut params = attach_params(a, false);
    params["hostnqn"] = json!(HOSTNQN);
    assert_eq!(host.call("bdev_nvme_attach_controller", Some(params.clone())).unwrap(), json!(["Nvme0n1"]));

    // Added: a bdev appears, and data written through it is the
    // namespace's (an lvstore made on it).
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}}))).unwrap();
    wait_for("Nvme0n2", || bdev_blocks(&host, "Nvme0n2") == Some(32768));
    host.call("bdev_lvol_create_lvstore", Some(json!({"bdev_name": "Nvme0n2", "lvs_name": "lvs", "cluster_sz": 1 << 20}))).unwrap();
    let c = host.call("bdev_nvme_get_controllers", Some(json!({"name": "Nvme0"}))).unwrap();
    assert_eq!(c[0]["ctrlrs"][0]["namespaces"], json!(["Nvme0n1", "Nvme0n2"]), "{c}");

    // Resized: the bdev follows.
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Null2", "nsid": 3}}))).unwrap();
    wait_for("Nvme0n3", || bdev_blocks(&host, "Nvme0n3") == Some(8192));
    tgt.call("bdev_null_resize", Some(json!({"name": "Null2", "new_size": 64}))).unwrap();
    wait_for("Nvme0n3 resized", || bdev_blocks(&host, "Nvme0n3") == Some(16384));

    // Removed: the bdev goes, with its users (the lvstore); added again, it
    // comes back with the data, which the lvstore examine finds.
    tgt.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 2}))).unwrap();
    wait_for("Nvme0n2 gone", || bdev_blocks(&host, "Nvme0n2").is_none());
    assert_eq!(host.call("bdev_lvol_get_lvstores", None).unwrap(), json!([]));
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}}))).unwrap();
    wait_for("the lvstore on Nvme0n2 again", || {
        let l = host.call("bdev_lvol_get_lvstores", None).unwrap();
        l.as_array().unwrap().iter().any(|s| s["name"] == "lvs" && s["base_bdev"] == "Nvme0n2")
    });

    // Masked: a namespace not visible to this host gets no bdev until it
    // is shown to it, and goes when it is hidden again.
    tgt.call("bdev_null_create", Some(json!({"name": "Null4", "num_blocks": 4096, "block_size": 512}))).unwrap();
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Null4", "nsid": 4, "no_auto_visible": true}})))
        .unwrap();
    // A second path that joins now finds the same namespaces.
    let mut second = params.clone();
    second["trsvcid"] = json!(b.to_string());
    second["multipath"] = json!("multipath");
    host.call("bdev_nvme_attach_controller", Some(second)).unwrap();
    assert_eq!(bdev_blocks(&host, "Nvme0n4"), None, "hidden from this host");
    tgt.call("nvmf_ns_add_host", Some(json!({"nqn": NQN, "nsid": 4, "host": HOSTNQN}))).unwrap();
    wait_for("Nvme0n4", || bdev_blocks(&host, "Nvme0n4") == Some(4096));
    // Both paths know it: it stays while one path is taken away.
    let paths = |host: &Daemon| -> usize {
        let b = host.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n4"}))).unwrap();
        b[0]["driver_specific"]["nvme"].as_array().map_or(0, |p| p.iter().filter(|p| p["ns_data"]["ana_state"] == "optimized").count())
    };
    wait_for("Nvme0n4 through both paths", || paths(&host) == 2);
    host.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0", "trsvcid": a.to_string()}))).unwrap();
    assert_eq!(bdev_blocks(&host, "Nvme0n4"), Some(4096));
    tgt.call("nvmf_ns_remove_host", Some(json!({"nqn": NQN, "nsid": 4, "host": HOSTNQN}))).unwrap();
    wait_for("Nvme0n4 gone", || bdev_blocks(&host, "Nvme0n4").is_none());
    assert_eq!(bdev_names(&host), ["Nvme0n1", "Nvme0n2", "Nvme0n3"]);

    host.call("bdev_nvme_detach_controller", Some(json!({"name": "Nvme0"}))).unwrap();
    assert_eq!(bdev_names(&host), Vec::<String>::new());
    assert!(!host.log().contains("panicked"));
    assert!(!tgt.log().contains("panicked"));
}

/// A proxy in front of `port` that, while `hold` is set, holds each answer
/// to the admin commands `which` picks (by opcode and CDW10's low byte:
/// the CNS or the log page) until `hold` is cleared (or a minute passed: a
/// failing test ends); `held` counts them.
fn holding_proxy(port: u16, which: (u8, u8), hold: Arc<AtomicBool>, held: Arc<AtomicUsize>) -> Proxy {
    Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), move |sqe, offset, _data| {
        if (sqe[0], sqe[40]) == which && offset == 0 && hold.load(Ordering::SeqCst) {
            held.fetch_add(1, Ordering::SeqCst);
            let t0 = std::time::Instant::now();
            while hold.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

/// `bdev_nvme_reset_controller` of Nvme0 while the proxy holds a read
/// (`held`), which it then lets go (`hold`): the host stays up and the
/// reset answers.
fn reset_while_a_read_is_held(host: &Daemon, hold: &AtomicBool, held: &AtomicUsize) {
    wait_for("the read held at the proxy", || held.load(Ordering::SeqCst) > 0);
    let reset = {
        let sock = host.socket.clone();
        std::thread::spawn(move || pollux_rpc(&sock, &["bdev_nvme_reset_controller", "Nvme0"]))
    };
    wait_for("the reset under way", || host.log().contains("reset requested") || host.log().contains("panicked"));
    hold.store(false, Ordering::SeqCst);
    assert!(!host.log().contains("panicked"), "{}", host.log());
    ok_stdout("pollux-rpc bdev_nvme_reset_controller", &reset.join().unwrap());
}

/// Clears a flag when dropped (a test that fails holds nothing up).
struct Clear(Arc<AtomicBool>);

impl Drop for Clear {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A reset while the namespaces are being read again after a notice: the
/// reset closed the admin queue while the registry was borrowed, and the
/// read's failed command, called back from inside the close, borrowed it
/// again: the host daemon panicked (found by review, 2026-12-07). Now the
/// controller reconnects and finds the new namespace.
#[test]
fn a_reset_during_a_namespace_read_reconnects_and_finds_the_namespace() {
    let port = free_port();
    let tgt = target(port, None);
    let (hold, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    // Identify (06h), the active namespace list (CNS 02h).
    let proxy = holding_proxy(port, (0x06, 2), hold.clone(), held.clone());
    let _clear = Clear(hold.clone());
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_nvme_attach_controller", Some(attach_params(proxy.addr().port(), false))).unwrap();
    tgt.call("bdev_malloc_create", Some(json!({"name": "Malloc1", "num_blocks": 8192, "block_size": 512}))).unwrap();
    hold.store(true, Ordering::SeqCst);
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}}))).unwrap();
    reset_while_a_read_is_held(&host, &hold, &held);
    wait_for("Nvme0n2", || bdev_blocks(&host, "Nvme0n2") == Some(8192));
    assert_eq!(path_states(&host), [(proxy.addr().port().to_string(), "enabled".to_string())]);
    assert!(!host.log().contains("panicked"), "{}", host.log());
}

/// Writes waiting for a lost path while the target puts another namespace
/// under their NSID fail; they do not land on the new namespace (found by
/// review, 2026-12-07: the queue depth's writes reached the new one). The
/// old bdev goes, a new one comes for the new namespace.
#[test]
fn writes_for_a_namespace_replaced_while_the_path_was_down_do_not_reach_its_successor() {
    let port = free_port();
    let tgt = target(port, None);
    for m in ["Malloc1", "Malloc2"] {
        tgt.call("bdev_malloc_create", Some(json!({"name": m, "num_blocks": 16384, "block_size": 512}))).unwrap();
    }
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}}))).unwrap();
    let dir = TempDir::new("nvmf-host-swap");
    let mut p = attach_params(port, false);
    p["ctrlr_loss_timeout_sec"] = json!(-1);
    p["reconnect_delay_sec"] = json!(1);
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_nvme_attach_controller", "params": p}]}]});
    let writes =
        |name: &str| tgt.call("bdev_get_iostat", Some(json!({"name": name}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap();
    let perf = spawn_perf(&dir, &cfg, &["-b", "Nvme0n2", "-q", "32", "-o", "4096", "-w", "randwrite", "-t", "30", "-m", "0x1", "--json"]);
    wait_for("writes at Malloc1", || writes("Malloc1") > 1000);
    let mut c = pollux_tests::app_client(&dir.join("perf.sock"), Duration::from_secs(20), Duration::from_secs(20));
    tgt.call("nvmf_subsystem_remove_listener", Some(json!({"nqn": NQN, "listen_address": listener(port)}))).unwrap();
    wait_for("the host's path down", || {
        let ctrls = c.call("bdev_nvme_get_controllers", None).unwrap();
        ctrls[0]["ctrlrs"][0]["state"] != "enabled"
    });
    tgt.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 2}))).unwrap();
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc2", "nsid": 2}}))).unwrap();
    tgt.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": listener(port)}))).unwrap();
    // The old bdev goes (its workload with it: pollux-perf ends), a new
    // Nvme0n2 is the new namespace.
    let out = perf.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is another namespace now"), "{err}");
    assert_eq!(writes("Malloc2"), 0, "writes meant for the old namespace 2 reached the new one:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The same with the ANA log's read after an ANA change notice: that read's
/// callback looks at the registry too (older than namespace following:
/// the same panic, found by the same review).
#[test]
fn a_reset_during_an_ana_log_read_reconnects_and_reads_it_again() {
    let port = free_port();
    let tgt = Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "ana_reporting": true}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": listener(port)}},
            ]},
        ]})),
        ..DaemonOpts::default()
    });
    let (hold, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    // Get Log Page (02h), the ANA log (0Ch).
    let proxy = holding_proxy(port, (0x02, 0x0c), hold.clone(), held.clone());
    let _clear = Clear(hold.clone());
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_nvme_attach_controller", Some(attach_params(proxy.addr().port(), false))).unwrap();
    let ana = |host: &Daemon| {
        let b = host.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).unwrap();
        b[0]["driver_specific"]["nvme"][0]["ns_data"]["ana_state"].as_str().unwrap().to_string()
    };
    wait_for("optimized", || ana(&host) == "optimized");
    hold.store(true, Ordering::SeqCst);
    pollux_tests::set_listener_ana(&tgt, NQN, port, "non_optimized", None).unwrap();
    reset_while_a_read_is_held(&host, &hold, &held);
    wait_for("non-optimized after the reconnect", || ana(&host) == "non_optimized");
    assert!(!host.log().contains("panicked"), "{}", host.log());
}

/// A target with `max_namespaces` `max_ns` (its NN), namespace 1 (a pinned
/// NGUID: the same namespace across restarts) and `extra` (bdev, NSID);
/// null bdevs Null2 and Null5 are there to add.
fn numbered_target(port: u16, max_ns: u32, extra: &[(&str, u32)]) -> Daemon {
    let mut cfg = vec![
        json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}),
        json!({"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "HOST0001", "max_namespaces": max_ns}}),
        json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1, "nguid": "0D6C4F3E2B1A49588776655443322110"}}}),
    ];
    for (b, n) in extra {
        cfg.push(json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": b, "nsid": n}}}));
    }
    cfg.push(json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": listener(port)}}));
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 32768, "block_size": 512}},
                {"method": "bdev_null_create", "params": {"name": "Null2", "num_blocks": 4096, "block_size": 512}},
                {"method": "bdev_null_create", "params": {"name": "Null5", "num_blocks": 4096, "block_size": 512}},
            ]},
            {"subsystem": "nvmf", "config": cfg},
        ]})),
        ..DaemonOpts::default()
    })
}

/// A target restarted with more namespaces (NN 2, then 8): the reads after
/// later notices used the first association's NN and took NSID 5 for gone
/// (found by a second review, 2026-12-07).
#[test]
fn namespaces_past_the_first_associations_count_stay_after_a_reconnect() {
    let port = free_port();
    let tgt = numbered_target(port, 2, &[]);
    let host = Daemon::start(DaemonOpts::default());
    let mut p = attach_params(port, false);
    p["ctrlr_loss_timeout_sec"] = json!(-1);
    p["reconnect_delay_sec"] = json!(1);
    host.call("bdev_nvme_attach_controller", Some(p)).unwrap();
    drop(tgt);
    let tgt = numbered_target(port, 8, &[("Null5", 5)]);
    wait_for("Nvme0n5 after the reconnect", || bdev_blocks(&host, "Nvme0n5").is_some());
    tgt.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Null2", "nsid": 2}}))).unwrap();
    // The read that gives Nvme0n2 is the one that would have taken Nvme0n5.
    wait_for("Nvme0n2", || bdev_blocks(&host, "Nvme0n2").is_some());
    assert!(bdev_blocks(&host, "Nvme0n5").is_some(), "Nvme0n5 deleted by the notice's read; log:\n{}", host.log());
}

/// A second path attached while the first is down, after the namespace
/// grew: its view counts (the first's is stale), so it is taken and the
/// bdev grows; it was refused as "not the same namespace" (found by a
/// second review, 2026-12-07).
#[test]
fn a_second_path_while_the_first_is_down_is_taken_and_its_newer_size_followed() {
    let (a, b) = (free_port(), free_port());
    let tgt = numbered_target(a, 8, &[("Null2", 2)]);
    tgt.call("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": listener(b)}))).unwrap();
    let host = Daemon::start(DaemonOpts::default());
    let mut p = attach_params(a, false);
    p["ctrlr_loss_timeout_sec"] = json!(-1);
    p["reconnect_delay_sec"] = json!(1);
    host.call("bdev_nvme_attach_controller", Some(p)).unwrap();
    tgt.call("nvmf_subsystem_remove_listener", Some(json!({"nqn": NQN, "listen_address": listener(a)}))).unwrap();
    wait_for("path a down", || path_states(&host)[0].1 != "enabled");
    tgt.call("bdev_null_resize", Some(json!({"name": "Null2", "new_size": 4}))).unwrap();
    host.call("bdev_nvme_attach_controller", Some(another_path(b))).unwrap();
    wait_for("Nvme0n2 grown", || bdev_blocks(&host, "Nvme0n2") == Some(8192));
}
