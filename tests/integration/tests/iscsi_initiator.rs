//! Pollux's iSCSI initiator (`bdev_iscsi_create`) against Pollux's own
//! iSCSI target: `pollux-perf -w verify` on the remote LUN at QD 1, 32 and
//! 128 from 512 B to 1 MiB, with digests off and on, with CHAP one-way and
//! mutual; refused logins named; SPDK's client creating, showing, saving
//! and deleting the bdev; a target restarted mid-verify (the sessions
//! reconnect and the verify ends clean) and a target that stays away (the
//! I/O fails after the timeout and the bdev can be deleted); the CLI
//! against libiscsi's `iscsi-ls`.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{config, free_port, target_iqn};
use pollux_tests::{Daemon, DaemonOpts, TempDir, bin, clean_perf_run, ok_stdout, perf_command, spdk_rpc, tool, verify_run};
use serde_json::{Value, json};

const INITIATOR: &str = "iqn.2016-06.io.pollux:initiator-test";

/// CHAP secrets a target requires: the initiator's user and secret, and
/// the target's own (mutual CHAP) when given.
type Secrets<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);

/// A target on `port` exporting a `mib` MiB malloc LUN as `name`, with
/// CHAP `chap` required.
fn target(port: u16, name: &str, mib: u64, chap: Option<Secrets<'_>>) -> Daemon {
    let mut cfg = config(port, name, mib, None);
    if let Some((u, s, m)) = chap {
        let mut secret = json!({"user": u, "secret": s});
        if let Some((mu, ms)) = m {
            secret["muser"] = json!(mu);
            secret["msecret"] = json!(ms);
        }
        let calls = cfg["subsystems"][1]["config"].as_array_mut().unwrap();
        calls.insert(2, json!({"method": "iscsi_create_auth_group", "params": {"tag": 1, "secrets": [secret]}}));
        let node = &mut calls.last_mut().unwrap()["params"];
        node["chap_group"] = json!(1);
        node["require_chap"] = json!(true);
        node["mutual_chap"] = json!(m.is_some());
    }
    Daemon::start(DaemonOpts { cpumask: "0x1".into(), config: Some(cfg), ..Default::default() })
}

fn lun_url(port: u16, name: &str, cred: &str, args: &str) -> String {
    format!("iscsi://{cred}127.0.0.1:{port}/{}/0{args}", target_iqn(name))
}

fn bdev_config(url: &str, timeout: Option<u64>) -> Value {
    let mut calls = vec![json!({"method": "bdev_iscsi_create", "params": {"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}})];
    if let Some(t) = timeout {
        calls.insert(0, json!({"method": "bdev_iscsi_set_options", "params": {"timeout_sec": t}}));
    }
    json!({"subsystems": [{"subsystem": "bdev", "config": calls}]})
}

/// One clean verify run of a second on the remote LUN.
fn verify(dir: &TempDir, cfg: &Value, qd: u32, size: u32, what: &str) {
    verify_run(dir, cfg, "iSCSI0", qd, size, 1, what);
}

#[test]
fn verify_is_clean_on_a_pollux_lun_at_depths_1_32_128_from_512_bytes_to_1_mib_with_digests_off_and_on() {
    let port = free_port();
    // 128 x 1 MiB in flight: the LUN holds every request's blocks.
    let tgt = target(port, "verify", 256, None);
    let dir = TempDir::new("iscsi-initiator-verify");
    for args in ["", "?header_digest=crc32c&data_digest=crc32c"] {
        let cfg = bdev_config(&lun_url(port, "verify", "", args), None);
        for qd in [1, 32, 128] {
            for size in [512, 4096, 131072, 1 << 20] {
                verify(&dir, &cfg, qd, size, &format!("digests {args:?}, QD {qd}, {size} bytes"));
            }
        }
    }
    // The target saw the digests asked for, and a new session per run.
    let conns = tgt.call("iscsi_get_connections", None).unwrap();
    assert_eq!(conns, json!([]), "every session logged out: {conns}");
    drop(tgt);
}

#[test]
fn chap_one_way_and_mutual_log_in_and_wrong_secrets_are_refused_by_name() {
    let dir = TempDir::new("iscsi-initiator-chap");
    let port = free_port();
    let tgt = target(port, "chap", 64, Some(("alice", "alice-secret-1", None)));
    let cfg = bdev_config(&lun_url(port, "chap", "alice%alice-secret-1@", ""), None);
    for (qd, size) in [(32, 4096), (8, 1 << 20)] {
        verify(&dir, &cfg, qd, size, &format!("CHAP, QD {qd}, {size} bytes"));
    }
    // A wrong secret, and no credentials at all: the bdev is not created
    // and the error says why.
    let host = Daemon::start(DaemonOpts::default());
    let create = |url: &str| {
        host.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}))).map_err(|e| e.to_string())
    };
    let e = create(&lun_url(port, "chap", "alice%wrong-secret-1@", "")).unwrap_err();
    assert!(e.contains("authentication failure"), "{e}");
    // Without credentials the initiator offers AuthMethod=None, which a
    // target requiring CHAP refuses.
    let e = create(&lun_url(port, "chap", "", "")).unwrap_err();
    assert!(e.contains("authentication failure") && e.contains("CHAP"), "{e}");
    assert_eq!(host.call("bdev_get_bdevs", None).unwrap(), json!([]));
    drop(tgt);

    // Mutual: the target proves itself with its own secret.
    let port = free_port();
    let _tgt = target(port, "mutual", 64, Some(("alice", "alice-secret-1", Some(("pollux", "pollux-secret-2")))));
    let good = lun_url(port, "mutual", "alice%alice-secret-1@", "?target_user=pollux&target_password=pollux-secret-2");
    verify(&dir, &bdev_config(&good, None), 32, 65536, "mutual CHAP");
    // An initiator expecting another target secret refuses the target.
    let bad = lun_url(port, "mutual", "alice%alice-secret-1@", "?target_user=pollux&target_password=not-the-secret");
    let e = create(&bad).unwrap_err();
    assert!(e.contains("mutual CHAP"), "{e}");
    // SHA-256 CHAP, both ways, when asked for.
    verify(&dir, &bdev_config(&format!("{good}&chap_digest=sha256"), None), 8, 4096, "mutual CHAP with SHA-256");
    // Digests with mutual CHAP.
    let dig = format!("{good}&header_digest=crc32c&data_digest=crc32c");
    verify(&dir, &bdev_config(&dig, None), 16, 131072, "mutual CHAP with digests");
}

#[test]
fn spdk_rpc_creates_shows_saves_and_deletes_an_iscsi_bdev_and_bad_urls_are_refused() {
    let port = free_port();
    let _tgt = target(port, "rpc", 32, None);
    let host = Daemon::start(DaemonOpts::default());
    let sock = host.socket.clone();
    let url = lun_url(port, "rpc", "", "");
    let out = spdk_rpc(&sock, &["bdev_iscsi_set_options", "--timeout-sec", "7"]);
    ok_stdout("bdev_iscsi_set_options", &out);
    let out = spdk_rpc(&sock, &["bdev_iscsi_create", "-b", "iSCSI9", "-i", INITIATOR, "--url", &url]);
    assert!(ok_stdout("bdev_iscsi_create", &out).contains("iSCSI9"));
    let b = host.call("bdev_get_bdevs", Some(json!({"name": "iSCSI9"}))).unwrap();
    assert_eq!(b[0]["block_size"], 512, "{b}");
    assert_eq!(b[0]["num_blocks"], 32 * 2048, "{b}");
    assert_eq!(b[0]["product_name"], "iSCSI LUN");
    assert_eq!(b[0]["supported_io_types"]["unmap"], true, "a thin Pollux LUN takes UNMAP: {b}");
    assert_eq!(b[0]["driver_specific"]["iscsi"]["initiator_name"], INITIATOR);
    assert_eq!(b[0]["driver_specific"]["iscsi"]["url"], url);
    let cfg = host.call("framework_get_config", Some(json!({"name": "bdev"}))).unwrap();
    let calls: Vec<&Value> = cfg.as_array().unwrap().iter().collect();
    let opts = calls.iter().find(|c| c["method"] == "bdev_iscsi_set_options").expect("options saved");
    assert_eq!(opts["params"]["timeout_sec"], 7);
    let create = calls.iter().find(|c| c["method"] == "bdev_iscsi_create").expect("bdev saved");
    assert_eq!(create["params"], json!({"name": "iSCSI9", "initiator_iqn": INITIATOR, "url": url}));
    // Refused: a bad URL, a target that is not there, a name taken.
    for (name, u, why) in [
        ("iSCSI8", "http://127.0.0.1/iqn/0", "invalid iSCSI URL"),
        ("iSCSI8", &lun_url(port, "nosuch", "", "")[..], "target not found"),
        ("iSCSI8", &format!("iscsi://127.0.0.1:{}/iqn.x:y/0", free_port())[..], "cannot connect"),
        ("iSCSI9", &url[..], "already exists"),
    ] {
        let out = spdk_rpc(&sock, &["bdev_iscsi_create", "-b", name, "-i", INITIATOR, "--url", u]);
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && text.contains(why), "{u}: {text}");
    }
    ok_stdout("bdev_iscsi_delete", &spdk_rpc(&sock, &["bdev_iscsi_delete", "iSCSI9"]));
    assert_eq!(host.call("bdev_get_bdevs", None).unwrap(), json!([]));
}

/// A target serving the file `img` (uring bdev) on `port` as `name`: its
/// data outlives the process.
fn file_target(port: u16, name: &str, img: &std::path::Path) -> Daemon {
    let mut cfg = config(port, name, 1, None);
    cfg["subsystems"][0]["config"] =
        json!([{"method": "bdev_uring_create", "params": {"name": "Malloc0", "filename": img.to_str().unwrap(), "block_size": 512}}]);
    Daemon::start(DaemonOpts { cpumask: "0x1".into(), config: Some(cfg), ..Default::default() })
}

fn writes(tgt: &Daemon) -> u64 {
    let s = tgt.call("bdev_get_iostat", Some(json!({"name": "Malloc0"}))).unwrap();
    s["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
}

fn wait_for_writes(tgt: &Daemon, before: u64) {
    let t0 = Instant::now();
    while writes(tgt) <= before {
        assert!(t0.elapsed() < Duration::from_secs(60), "no write reached the target");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_perf(dir: &TempDir, cfg: &Value, secs: u32) -> Child {
    perf_command(dir, cfg, &["-b", "iSCSI0", "-q", "16", "-o", "65536", "-w", "verify", "-t", &secs.to_string(), "-m", "0x1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pollux-perf")
}

#[test]
fn a_verify_survives_the_target_restarted_and_a_target_that_stays_away_fails_the_io_after_the_timeout() {
    let dir = TempDir::new("iscsi-initiator-reconnect");
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let port = free_port();
    let url = lun_url(port, "restart", "", "");

    // Killed mid-verify and started again: the session reconnects and
    // every request outstanding is sent again; the verify ends clean.
    let tgt = file_target(port, "restart", &img);
    let perf = spawn_perf(&dir, &bdev_config(&url, Some(30)), 6);
    wait_for_writes(&tgt, 0);
    tgt.signal(libc::SIGKILL);
    drop(tgt);
    let tgt = file_target(port, "restart", &img);
    let (_, err) = clean_perf_run(perf);
    assert!(err.contains("reconnecting to") && err.matches("logged in to").count() >= 3, "{err}");

    // Gone for good: with timeout_sec 2 the waiting requests fail; the run
    // ends with errors instead of hanging.
    let before = writes(&tgt);
    let perf = spawn_perf(&dir, &bdev_config(&url, Some(2)), 8);
    wait_for_writes(&tgt, before);
    tgt.signal(libc::SIGKILL);
    drop(tgt);
    let t0 = Instant::now();
    let out = perf.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(!out.status.success() || r["total"]["errors"].as_u64().unwrap_or(0) > 0, "{r}\n{err}");
    assert!(err.contains("no connection to"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "the run hung");

    // A daemon whose LUN went away deletes the bdev at once.
    let tgt = file_target(port, "restart", &img);
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_iscsi_set_options", Some(json!({"timeout_sec": 2}))).unwrap();
    host.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}))).unwrap();
    tgt.signal(libc::SIGKILL);
    drop(tgt);
    assert_eq!(host.call("bdev_iscsi_delete", Some(json!({"name": "iSCSI0"}))).unwrap(), json!(true));
    assert_eq!(host.call("bdev_get_bdevs", None).unwrap(), json!([]));
}

#[test]
fn the_cli_lists_what_iscsi_ls_lists() {
    let port = free_port();
    let _tgt = target(port, "cli", 48, None);
    let portal = format!("iscsi://127.0.0.1:{port}");
    let ours =
        ok_stdout("pollux-iscsi ls -s", &std::process::Command::new(bin("pollux-iscsi")).args(["ls", "-s", &portal]).output().unwrap());
    let theirs = ok_stdout(
        "iscsi-ls -s",
        &std::process::Command::new(tool("iscsi-ls", "apt install libiscsi-bin")).args(["-s", &portal]).output().unwrap(),
    );
    let target_line = format!("Target:{} Portal:127.0.0.1:{port},1", target_iqn("cli"));
    assert!(ours.contains(&target_line) && theirs.contains(&target_line), "ours:\n{ours}\ntheirs:\n{theirs}");
    assert!(ours.contains("Lun:0    Type:DIRECT_ACCESS (Size:48M)"), "{ours}");
    // iscsi-ls multiplies the last LBA, not the block count, by the block
    // size, and rounds down: one block short of 48 MiB is 47M there.
    assert!(theirs.contains("Lun:0    Type:DIRECT_ACCESS (Size:47M)"), "{theirs}");
    let j: Value = serde_json::from_str(&ok_stdout(
        "pollux-iscsi login",
        &std::process::Command::new(bin("pollux-iscsi")).args(["--json", "login", &lun_url(port, "cli", "", "")]).output().unwrap(),
    ))
    .unwrap();
    assert_eq!(j["size_bytes"], 48 << 20, "{j}");
    assert_eq!(j["thin_provisioning"], true, "{j}");
    // A portal with nothing behind it: a clear error, exit status 1.
    let out = std::process::Command::new(bin("pollux-iscsi"))
        .args(["--timeout", "2", "ls", &format!("iscsi://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot connect"), "{out:?}");
}
