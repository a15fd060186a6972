//! Pollux's iSCSI initiator against tgtd (Debian's `tgt`, the reference
//! userspace target): `pollux-perf -w verify` at QD 1, 32 and 128 from
//! 512 B to 1 MiB with digests off and on, CHAP one-way and mutual, 4 KiB
//! blocks, and tgtd restarted during a verify.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pollux_tests::tgtd::{Tgtd, TgtdOpts};
use pollux_tests::{Daemon, DaemonOpts, TempDir, clean_perf_run, perf_command, pollux_rpc, verify_run};
use serde_json::{Value, json};

const INITIATOR: &str = "iqn.2016-06.io.pollux:initiator-peers";

fn bdev_config(url: &str, timeout: u64) -> Value {
    json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_iscsi_set_options", "params": {"timeout_sec": timeout}},
        {"method": "bdev_iscsi_create", "params": {"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}}]}]})
}

/// `iscsi://[cred]127.0.0.1:port/IQN/1[args]`: tgtd's LUN 0 is its
/// controller, the disk is LUN 1.
fn url(t: &Tgtd, cred: &str, args: &str) -> String {
    format!("iscsi://{cred}127.0.0.1:{}/{}/1{args}", t.port(), t.iqn())
}

fn verify(dir: &TempDir, cfg: &Value, qd: u32, size: u32, secs: u32, what: &str) -> Value {
    verify_run(dir, cfg, "iSCSI0", qd, size, secs, what)
}

#[test]
fn verify_is_clean_on_a_tgtd_lun_at_depths_1_32_128_from_512_bytes_to_1_mib_with_digests_off_and_on() {
    let t = Tgtd::start(TgtdOpts { mib: 256, ..Default::default() });
    t.set_param("HeaderDigest", "CRC32C,None");
    t.set_param("DataDigest", "CRC32C,None");
    let dir = TempDir::new("iscsi-initiator-tgtd");
    for args in ["", "?header_digest=crc32c&data_digest=crc32c"] {
        let cfg = bdev_config(&url(&t, "", args), 30);
        for qd in [1, 32, 128] {
            for size in [512, 4096, 131072, 1 << 20] {
                verify(&dir, &cfg, qd, size, 1, &format!("tgtd, digests {args:?}, QD {qd}, {size} bytes"));
            }
        }
    }
    // What the initiator learnt from tgtd: its size, and no thin provisioning.
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url(&t, "", "")}))).unwrap();
    let b = host.call("bdev_get_bdevs", Some(json!({"name": "iSCSI0"}))).unwrap();
    assert_eq!((b[0]["block_size"].as_u64(), b[0]["num_blocks"].as_u64()), (Some(512), Some(256 * 2048)), "{b}");
    assert_eq!(b[0]["driver_specific"]["iscsi"]["vendor"], "IET", "{b}");
}

#[test]
fn chap_one_way_and_mutual_and_4k_blocks_against_tgtd() {
    let dir = TempDir::new("iscsi-initiator-tgtd-chap");
    let t = Tgtd::start(TgtdOpts {
        chap: Some(("alice".into(), "alice-secret-1".into())),
        mutual: Some(("tgt".into(), "tgt-secret-22".into())),
        block_size: 4096,
        ..Default::default()
    });
    t.set_param("HeaderDigest", "CRC32C,None");
    let one_way = bdev_config(&url(&t, "alice%alice-secret-1@", ""), 30);
    let r = verify(&dir, &one_way, 32, 65536, 1, "tgtd, one-way CHAP, 4 KiB blocks");
    assert!(r["total"]["ios"].as_u64().unwrap() > 10, "{r}");
    let mutual = bdev_config(&url(&t, "alice%alice-secret-1@", "?target_user=tgt&target_password=tgt-secret-22&header_digest=crc32c"), 30);
    verify(&dir, &mutual, 16, 1 << 20, 1, "tgtd, mutual CHAP, 4 KiB blocks");
    // Wrong secrets, ours or the target's: refused by name.
    let host = Daemon::start(DaemonOpts::default());
    let create = |u: String| {
        host.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": u}))).map_err(|e| e.to_string())
    };
    let e = create(url(&t, "alice%not-the-secret@", "")).unwrap_err();
    assert!(e.contains("authentication failure"), "{e}");
    let e = create(url(&t, "alice%alice-secret-1@", "?target_user=tgt&target_password=wrong")).unwrap_err();
    assert!(e.contains("mutual CHAP"), "{e}");
    // 4 KiB blocks are what the bdev has.
    create(url(&t, "alice%alice-secret-1@", "")).unwrap();
    let b = host.call("bdev_get_bdevs", Some(json!({"name": "iSCSI0"}))).unwrap();
    assert_eq!(b[0]["block_size"], 4096, "{b}");
}

/// Writes completed by the running pollux-perf's bdev (0 until it answers).
fn writes(dir: &TempDir) -> u64 {
    let out = pollux_rpc(&dir.join("perf.sock"), &["bdev_get_iostat", "--names", "iSCSI0"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
}

#[test]
fn a_verify_survives_tgtd_restarted_under_it() {
    let dir = TempDir::new("iscsi-initiator-tgtd-restart");
    let mut t = Tgtd::start(TgtdOpts::default());
    let cfg = bdev_config(&url(&t, "", ""), 30);
    let perf = perf_command(&dir, &cfg, &["-b", "iSCSI0", "-q", "16", "-o", "65536", "-w", "verify", "-t", "6", "-m", "0x1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pollux-perf");
    // Let the run get going: writes complete through the bdev.
    let t0 = Instant::now();
    while writes(&dir) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no I/O reached tgtd");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.restart();
    let (_, err) = clean_perf_run(perf);
    assert!(err.contains("reconnecting to"), "{err}");
}
