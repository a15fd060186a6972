//! Pollux's iSCSI initiator against the Linux kernel's LIO target, both in
//! one test guest over its loopback: a 256 MiB RAM-disk LUN (rd_mcp)
//! configured through configfs, verified by pollux-perf at QD 1, 32 and
//! 128 and from 512 B to 1 MiB with digests off and on, then behind CHAP
//! (an ACL with one-way, then mutual secrets): right secrets log in and
//! verify, wrong ones are refused by name; the CLI lists the LUN with its
//! size.

use std::process::Command;
use std::time::Duration;

use pollux_tests::{Daemon, DaemonOpts, TempDir, bin, sh};
use pollux_testvm::{VmConfig, in_guest};
use serde_json::{Value, json};

const IQN: &str = "iqn.2003-01.org.linux-iscsi.pollux:lio";
const INITIATOR: &str = "iqn.2016-06.io.pollux:lio-test";
const T: &str = "/sys/kernel/config/target";

/// LIO on 127.0.0.1:3260: target IQN, TPG 1, LUN 0 a 256 MiB RAM disk,
/// open to any initiator (demo mode, no authentication).
fn lio() {
    sh(&format!(
        r#"
modprobe target_core_mod; modprobe iscsi_target_mod
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mkdir -p {T}/core/rd_mcp_0/ram0
echo rd_pages=65536 > {T}/core/rd_mcp_0/ram0/control
echo 1 > {T}/core/rd_mcp_0/ram0/enable
G={T}/iscsi/{IQN}/tpgt_1
mkdir -p $G/lun/lun_0
ln -s {T}/core/rd_mcp_0/ram0 $G/lun/lun_0/ram0
mkdir $G/np/127.0.0.1:3260
echo 0 > $G/attrib/authentication
echo 1 > $G/attrib/generate_node_acls
echo 0 > $G/attrib/demo_mode_write_protect
echo 1 > $G/enable
"#
    ));
}

/// Require CHAP from INITIATOR through an ACL with these secrets (written
/// without a newline: LIO keeps it as part of the name).
fn lio_chap() {
    sh(&format!(
        r#"
G={T}/iscsi/{IQN}/tpgt_1
echo 0 > $G/attrib/generate_node_acls
echo 1 > $G/attrib/authentication
A=$G/acls/{INITIATOR}
mkdir -p $A/lun_0
ln -s $G/lun/lun_0 $A/lun_0/lun_0
printf %s alice > $A/auth/userid
printf %s alice-secret-1 > $A/auth/password
"#
    ));
}

/// Have LIO authenticate itself too (then it requires mutual CHAP).
fn lio_mutual() {
    sh(&format!(
        r#"
A={T}/iscsi/{IQN}/tpgt_1/acls/{INITIATOR}
printf %s lio > $A/auth/userid_mutual
printf %s lio-secret-22 > $A/auth/password_mutual
"#
    ));
}

fn verify(dir: &TempDir, url: &str, qd: u32, size: u32) {
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_iscsi_create", "params": {"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}}]}]});
    let path = dir.join("perf.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = Command::new(bin("pollux-perf"))
        .arg("-c")
        .arg(&path)
        .args(["--no-pin", "-m", "0x1", "-r"])
        .arg(dir.join("perf.sock"))
        .args(["-b", "iSCSI0", "-q", &qd.to_string(), "-o", &size.to_string(), "-w", "verify", "-t", "1", "--json"])
        .output()
        .expect("run pollux-perf");
    let dmesg = Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().rev().take(15).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    let what = format!("{url}, QD {qd}, {size} bytes (kernel log, last lines first:\n{dmesg})");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{what}: no report ({e}):\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success(), "{what}: {r}");
    assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{what}: {r}");
    assert_eq!(r["total"]["errors"], 0, "{what}: {r}");
    assert_eq!(r["verify_mismatches"], json!([]), "{what}: {r}");
}

#[test]
fn pollux_initiator_verifies_a_lio_lun_with_digests_and_chap() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1536).timeout(Duration::from_secs(900)), || {
        lio();
        let dir = TempDir::new("lio");
        let url = format!("iscsi://127.0.0.1/{IQN}/0");
        // Under TCG every byte is slow: each depth and each size, not
        // every pair (the full matrix runs against Pollux's target and tgtd).
        for args in ["", "?header_digest=crc32c&data_digest=crc32c"] {
            for (qd, size) in [(1, 512), (32, 4096), (128, 4096), (8, 131072), (2, 1 << 20)] {
                verify(&dir, &format!("{url}{args}"), qd, size);
            }
        }
        // What the initiator learnt: LIO's identity, the RAM disk's size.
        let d = Daemon::start(DaemonOpts::default());
        d.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}))).unwrap();
        let b = d.call("bdev_get_bdevs", Some(json!({"name": "iSCSI0"}))).unwrap();
        assert_eq!((b[0]["block_size"].as_u64(), b[0]["num_blocks"].as_u64()), (Some(512), Some(256 * 2048)), "{b}");
        assert_eq!(b[0]["driver_specific"]["iscsi"]["vendor"], "LIO-ORG", "{b}");
        d.call("bdev_iscsi_delete", Some(json!({"name": "iSCSI0"}))).unwrap();
        let ls = Command::new(bin("pollux-iscsi")).args(["ls", "-s", "iscsi://127.0.0.1"]).output().unwrap();
        let ls = String::from_utf8_lossy(&ls.stdout);
        assert!(
            ls.contains(&format!("Target:{IQN} Portal:127.0.0.1:3260,1")) && ls.contains("Lun:0    Type:DIRECT_ACCESS (Size:256M)"),
            "{ls}"
        );

        // CHAP, one-way then mutual (MD5, then SHA-256 which LIO also has).
        lio_chap();
        let one_way = format!("iscsi://alice%alice-secret-1@127.0.0.1/{IQN}/0");
        verify(&dir, &one_way, 32, 65536);
        lio_mutual();
        let mutual = format!("{one_way}?target_user=lio&target_password=lio-secret-22");
        verify(&dir, &mutual, 32, 4096);
        verify(&dir, &format!("{mutual}&chap_digest=sha256&header_digest=crc32c"), 8, 65536);
        for (u, why) in [
            (format!("iscsi://alice%wrong-secret-1@127.0.0.1/{IQN}/0"), "authentication failure"),
            (format!("{one_way}?target_user=lio&target_password=not-the-secret"), "mutual CHAP"),
            // LIO closes the connection on a login without CHAP.
            (url.clone(), "closed the connection"),
        ] {
            let e =
                d.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": u}))).unwrap_err().to_string();
            assert!(e.contains(why), "{u}: {e}");
        }
    });
}
