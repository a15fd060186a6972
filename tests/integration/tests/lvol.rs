//! Logical volumes on SPDK's on-disk format, against the stores SPDK 24.01
//! wrote (tests/integration/fixtures/lvol, see its README): each opens with
//! the lvol store, lvols, relations and contents SPDK reported; Pollux's
//! writes, snapshots and deletions leave a store that reloads and that an
//! independent checker of SPDK's format (tools/lvs-check) finds consistent;
//! a store made by Pollux (through SPDK's own client) the same; and a
//! `kill -9` in the middle of writes loses nothing that was acknowledged.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pollux_core::rpc::ClientError;
use pollux_tests::nvmf_client::Client;
use pollux_tests::{Daemon, DaemonOpts, TempDir, free_port, ok_stdout, spdk_rpc, wait_until};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const NQN: &str = "nqn.2016-06.io.pollux:lvol";
const MIB: usize = 1 << 20;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lvol")
}

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/lvs-check")
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

/// The fixture image for `bs`-byte blocks, decompressed into `dir`.
fn fixture_image(dir: &TempDir, bs: usize) -> PathBuf {
    let out = dir.join(&format!("lvs-bs{bs}.img"));
    let xz = Command::new("xz").arg("-dc").arg(fixtures().join(format!("lvs-bs{bs}.img.xz"))).output().expect("run xz (xz-utils)");
    assert!(xz.status.success(), "xz: {}", String::from_utf8_lossy(&xz.stderr));
    std::fs::write(&out, xz.stdout).unwrap();
    out
}

fn config(image: &Path, bs: usize, port: u16) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_aio_create", "params": {"name": "aio0", "filename": image, "block_size": bs}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]})
}

fn start(image: &Path, bs: usize, port: u16) -> Daemon {
    let d = Daemon::start(DaemonOpts { config: Some(config(image, bs, port)), ..Default::default() });
    d.call("bdev_wait_for_examine", None).unwrap();
    d
}

/// The checker's verdict on an image (the daemon that used it stopped).
fn check(image: &Path, bs: usize) -> Value {
    let out = Command::new("python3")
        .arg(checker())
        .arg(image)
        .args(["--block-size", &bs.to_string(), "--json"])
        .output()
        .expect("run lvs-check");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lvs-check printed no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success() && report["errors"].as_array().is_none_or(|e| e.is_empty()),
        "lvs-check found errors:\n{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// An NVMe/TCP host on the test subsystem, one I/O queue.
struct Host {
    _admin: Client,
    io: Client,
}

impl Host {
    fn connect(port: u16) -> Host {
        let (admin, cntlid) = Client::admin(port, NQN, 0, false, false);
        Host { _admin: admin, io: Client::io(port, NQN, cntlid, 1, false, false) }
    }

    fn read(&mut self, nsid: u32, at: usize, len: usize, bs: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let step = 64 * 1024;
        let mut pos = at;
        while pos < at + len {
            let n = step.min(at + len - pos);
            let (c, data) = self.io.read(nsid, (pos / bs) as u64, (n / bs) as u32, bs);
            assert!(c.ok(), "read of {n} bytes at {pos} of namespace {nsid}: {c:?}");
            out.extend_from_slice(&data);
            pos += n;
        }
        out
    }

    fn write(&mut self, nsid: u32, at: usize, data: &[u8], bs: usize) {
        for (i, chunk) in data.chunks(64 * 1024).enumerate() {
            let pos = at + i * 64 * 1024;
            let c = self.io.write(nsid, (pos / bs) as u64, chunk, bs, false);
            assert!(c.ok(), "write of {} bytes at {pos} of namespace {nsid}: {c:?}", chunk.len());
        }
    }
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Export lvol `name` as namespace `nsid`.
fn export(d: &Daemon, name: &str, nsid: u32) {
    d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": name, "nsid": nsid}})))
        .unwrap_or_else(|e| panic!("export {name}: {e}"));
}

fn unexport(d: &Daemon, nsid: u32) {
    d.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": nsid}))).unwrap();
}

/// `(lvs/lvol, sha256, size)` from a fixture's `.sha256`.
fn fixture_hashes(bs: usize) -> Vec<(String, String, usize)> {
    std::fs::read_to_string(fixtures().join(format!("lvs-bs{bs}.sha256")))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[0].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

fn by_name(v: &Value, key: &str) -> BTreeMap<String, Value> {
    v.as_array().unwrap().iter().map(|e| (e[key].as_str().unwrap().to_string(), e.clone())).collect()
}

/// What Pollux says of a fixture is what SPDK said: the store, each lvol,
/// each lvol bdev (every field SPDK gave).
fn assert_answers_match(d: &Daemon, bs: usize) {
    let want = fixture_json(&format!("lvs-bs{bs}.lvstores.json"));
    let mut got = d.call("bdev_lvol_get_lvstores", None).unwrap();
    // Every field SPDK 24.01 gave, and `max_growable_size`, which later
    // SPDKs give (for bdev_lvol_grow_lvstore).
    for s in got.as_array_mut().unwrap() {
        assert!(s.as_object_mut().unwrap().remove("max_growable_size").is_some_and(|v| v.as_u64().is_some()), "{s}");
    }
    assert_eq!(got, want, "bdev_lvol_get_lvstores");
    let want = by_name(&fixture_json(&format!("lvs-bs{bs}.lvols.json")), "name");
    let got = by_name(&d.call("bdev_lvol_get_lvols", None).unwrap(), "name");
    assert_eq!(got, want, "bdev_lvol_get_lvols");
    for b in fixture_json(&format!("lvs-bs{bs}.bdevs.json")).as_array().unwrap() {
        let alias = b["aliases"][0].as_str().unwrap();
        let got = &d.call("bdev_get_bdevs", Some(json!({"name": alias}))).unwrap()[0];
        for k in ["name", "aliases", "block_size", "num_blocks", "uuid"] {
            assert_eq!(got[k], b[k], "{alias}: {k}");
        }
        let (want, got) = (&b["driver_specific"]["lvol"], &got["driver_specific"]["lvol"]);
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&got[k], v, "{alias}: driver_specific.lvol.{k}");
        }
    }
}

fn fixture_opens_with_spdks_answers_and_data(bs: usize) {
    let dir = TempDir::new("lvol-fixture");
    let image = fixture_image(&dir, bs);
    let port = free_port();
    let d = start(&image, bs, port);
    assert_answers_match(&d, bs);
    // The store's base is claimed: not exported for writing elsewhere.
    let claimed = d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "aio0", "nsid": 20}})));
    assert!(claimed.as_ref().is_err_and(|e| e.to_string().contains("claimed")), "{claimed:?}");
    assert_eq!(d.call("bdev_get_bdevs", Some(json!({"name": "aio0"}))).unwrap()[0]["claimed"], true);
    // Every lvol's content, read over NVMe/TCP, hashes as SPDK's did.
    let hashes = fixture_hashes(bs);
    for (i, (name, _, _)) in hashes.iter().enumerate() {
        export(&d, name, i as u32 + 1);
    }
    let mut host = Host::connect(port);
    let mut content: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, (name, hash, size)) in hashes.iter().enumerate() {
        let data = host.read(i as u32 + 1, 0, *size, bs);
        assert_eq!(&sha(&data), hash, "{name} reads differently from SPDK");
        content.insert(name.clone(), data);
    }
    // Writes: into the clone over its own and its snapshot's clusters
    // (copy on write), into the thin volume where nothing was (allocation).
    let nsid = |n: &str| hashes.iter().position(|(x, _, _)| x == n).unwrap() as u32 + 1;
    for (name, at, len, seed) in [
        ("lvs0/clone", 2 * MIB + 512 * 1024, 256 * 1024, 0x11), // its own cluster
        ("lvs0/clone", 6 * MIB + 4096, 8192, 0x22),             // the snapshot's: copied first
        ("lvs0/thin", 0, 64 * 1024, 0x33),                      // nothing there: allocated, zeroed
        ("lvs0/thin", 16 * MIB - 4096, 4096, 0x44),             // the last block
        ("lvs0/thin", MIB - 4096, 8192, 0x55),                  // across two clusters
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i / bs) as u8 ^ seed).collect();
        host.write(nsid(name), at, &data, bs);
        content.get_mut(name).unwrap()[at..at + len].copy_from_slice(&data);
    }
    for (name, data) in &content {
        assert_eq!(sha(&host.read(nsid(name), 0, data.len(), bs)), sha(data), "{name} after the writes");
    }
    // A snapshot of the clone (the clone becomes its clone), a write to the
    // clone after it (the snapshot keeps the old data), and the deletion of
    // snap's other clone, `thick`.
    let snap2 = d.call("bdev_lvol_snapshot", Some(json!({"lvol_name": "lvs0/clone", "snapshot_name": "snap2"}))).unwrap();
    assert!(snap2.as_str().is_some_and(|s| s.len() == 36), "{snap2}");
    content.insert("lvs0/snap2".into(), content["lvs0/clone"].clone());
    export(&d, "lvs0/snap2", 9);
    let data: Vec<u8> = (0..12288).map(|i| (i / bs) as u8 ^ 0x66).collect();
    host.write(nsid("lvs0/clone"), 3 * MIB - 4096, &data, bs);
    content.get_mut("lvs0/clone").unwrap()[3 * MIB - 4096..3 * MIB + 8192].copy_from_slice(&data);
    assert_eq!(sha(&host.read(9, 0, 8 * MIB, bs)), sha(&content["lvs0/snap2"]), "snap2 changed after a write to its origin");
    assert_eq!(sha(&host.read(nsid("lvs0/clone"), 0, 8 * MIB, bs)), sha(&content["lvs0/clone"]), "clone after its snapshot");
    let ro = host.io.write(9, 0, &vec![0u8; bs], bs, false);
    assert!(!ro.ok(), "a write to a snapshot succeeded");
    let refused = d.call("bdev_lvol_delete", Some(json!({"name": "lvs0/snap"})));
    assert!(refused.is_err(), "a snapshot with two clones was deleted");
    unexport(&d, nsid("lvs0/thick"));
    d.call("bdev_lvol_delete", Some(json!({"name": "lvs0/thick"}))).unwrap();
    content.remove("lvs0/thick");
    let lvols = by_name(&d.call("bdev_lvol_get_lvols", None).unwrap(), "name");
    assert_eq!(lvols["clone"]["is_clone"], true);
    assert_eq!(lvols["snap2"]["is_snapshot"], true);
    let b = &d.call("bdev_get_bdevs", Some(json!({"name": "lvs0/snap"}))).unwrap()[0];
    assert_eq!(b["driver_specific"]["lvol"]["clones"], json!(["snap2"]), "{b}");
    let b = &d.call("bdev_get_bdevs", Some(json!({"name": "lvs0/clone"}))).unwrap()[0];
    assert_eq!(b["driver_specific"]["lvol"]["base_snapshot"], "snap2", "{b}");
    drop(host);
    let stopped = d.stop();
    assert!(stopped.success(), "pollux-tgt exit: {stopped}");
    let report = check(&image, bs);
    assert_eq!(report["lvstore"]["clean"], true, "{report:#}");
    // SPDK's checker view agrees with the data: the clone gained one
    // cluster, the thin volume three.
    let lvols = by_name(&report["lvols"], "name");
    // snap2 took the clone's 3 clusters; the clone's write after it
    // allocated 2 (copied from snap2); the thin volume has 6.
    assert_eq!(lvols["snap2"]["allocated_clusters"], 3, "{report:#}");
    assert_eq!(lvols["clone"]["allocated_clusters"], 2, "{report:#}");
    assert_eq!(lvols["clone"]["parent"], "snap2", "{report:#}");
    assert_eq!(lvols["snap2"]["parent"], "snap", "{report:#}");
    assert_eq!(lvols["thin"]["allocated_clusters"], 6, "{report:#}");
    assert!(!lvols.contains_key("thick"), "{report:#}");
    // Reloaded: the same answers as before, the data as written.
    let d = start(&image, bs, port);
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    assert_eq!(lvs["free_clusters"], 44, "{lvs}");
    let names: Vec<String> = content.keys().cloned().collect();
    for (i, name) in names.iter().enumerate() {
        export(&d, name, i as u32 + 1);
    }
    let mut host = Host::connect(port);
    for (i, name) in names.iter().enumerate() {
        let data = &content[name];
        assert_eq!(sha(&host.read(i as u32 + 1, 0, data.len(), bs)), sha(data), "{name} after a restart");
    }
    // Deleting `snap`, which has one clone now (`snap2`), merges it into
    // that clone: what every volume reads stays the same.
    let snap_ns = names.iter().position(|n| n == "lvs0/snap").unwrap() as u32 + 1;
    unexport(&d, snap_ns);
    d.call("bdev_lvol_delete", Some(json!({"name": "lvs0/snap"}))).unwrap();
    for (i, name) in names.iter().enumerate().filter(|(_, n)| *n != "lvs0/snap") {
        let data = &content[name];
        assert_eq!(sha(&host.read(i as u32 + 1, 0, data.len(), bs)), sha(data), "{name} after its snapshot's deletion");
    }
    let b = &d.call("bdev_get_bdevs", Some(json!({"name": "lvs0/snap2"}))).unwrap()[0];
    assert_eq!(b["driver_specific"]["lvol"]["clone"], false, "{b}");
    drop(host);
    for i in (0..names.len() as u32).filter(|i| i + 1 != snap_ns) {
        unexport(&d, i + 1);
    }
    assert!(d.stop().success());
    let report = check(&image, bs);
    let lvols = by_name(&report["lvols"], "name");
    assert!(!lvols.contains_key("snap"), "{report:#}");
    // snap2 took snap's 8 clusters where it had none (3 of its own).
    assert_eq!(lvols["snap2"]["allocated_clusters"], 8, "{report:#}");
    assert_eq!(report["lvstore"]["free_clusters"], 44 + 3, "{report:#}");
}

#[test]
fn spdk_store_with_512_byte_blocks_opens_with_its_lvols_and_data() {
    fixture_opens_with_spdks_answers_and_data(512);
}

#[test]
fn spdk_store_with_4096_byte_blocks_opens_with_its_lvols_and_data() {
    fixture_opens_with_spdks_answers_and_data(4096);
}

/// A store made through SPDK's own client, used, restarted and checked.
#[test]
fn store_made_by_spdks_client_reloads_and_passes_the_checker() {
    let dir = TempDir::new("lvol-new");
    let image = dir.join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(96 << 20).unwrap();
    let port = free_port();
    let d = start(&image, 512, port);
    let s = d.socket.clone();
    let uuid = ok_stdout("create_lvstore", &spdk_rpc(&s, &["bdev_lvol_create_lvstore", "aio0", "lvs1", "-c", "1048576"]));
    assert_eq!(uuid.trim().trim_matches('"').len(), 36, "{uuid}");
    ok_stdout("create thick", &spdk_rpc(&s, &["bdev_lvol_create", "-l", "lvs1", "thick", "8"]));
    ok_stdout("create thin", &spdk_rpc(&s, &["bdev_lvol_create", "-l", "lvs1", "thin", "32", "-t"]));
    ok_stdout("create gone", &spdk_rpc(&s, &["bdev_lvol_create", "-l", "lvs1", "gone", "4"]));
    ok_stdout("delete gone", &spdk_rpc(&s, &["bdev_lvol_delete", "lvs1/gone"]));
    ok_stdout("rename", &spdk_rpc(&s, &["bdev_lvol_rename", "lvs1/thick", "fat"]));
    ok_stdout("resize", &spdk_rpc(&s, &["bdev_lvol_resize", "lvs1/thin", "40"]));
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    // 96 clusters, one for metadata, 8 for the thick volume.
    assert_eq!((lvs["total_data_clusters"].as_u64(), lvs["free_clusters"].as_u64()), (Some(95), Some(87)), "{lvs}");
    let b = &d.call("bdev_get_bdevs", Some(json!({"name": "lvs1/thin"}))).unwrap()[0];
    assert_eq!(b["num_blocks"], 40 * 2048, "{b}");
    assert_eq!(b["driver_specific"]["lvol"]["thin_provision"], true, "{b}");
    // Refusals with SPDK's errors.
    let dup = spdk_rpc(&s, &["bdev_lvol_create", "-l", "lvs1", "thin", "4"]);
    assert!(!dup.status.success(), "a second lvol named thin was made");
    let nospace = d.call("bdev_lvol_create", Some(json!({"lvs_name": "lvs1", "lvol_name": "huge", "size_in_mib": 200})));
    assert!(nospace.is_err(), "a thick lvol larger than the store was made");
    export(&d, "lvs1/fat", 1);
    export(&d, "lvs1/thin", 2);
    let mut host = Host::connect(port);
    let a: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    host.write(1, 0, &a, 512);
    let b_data: Vec<u8> = (0..3 * MIB).map(|i| (i % 241) as u8).collect();
    host.write(2, 20 * MIB, &b_data, 512);
    drop(host);
    unexport(&d, 1);
    unexport(&d, 2);
    assert!(d.stop().success());
    let report = check(&image, 512);
    assert_eq!(report["lvstore"]["name"], "lvs1", "{report:#}");
    let lvols = by_name(&report["lvols"], "name");
    assert_eq!(lvols.keys().collect::<Vec<_>>(), ["fat", "thin"], "{report:#}");
    assert_eq!(lvols["thin"]["allocated_clusters"], 3, "{report:#}");
    let d = start(&image, 512, port);
    export(&d, "lvs1/fat", 1);
    export(&d, "lvs1/thin", 2);
    let mut host = Host::connect(port);
    assert_eq!(sha(&host.read(1, 0, 8 * MIB, 512)), sha(&a), "fat after a restart");
    assert_eq!(sha(&host.read(2, 20 * MIB, 3 * MIB, 512)), sha(&b_data), "thin after a restart");
    assert!(host.read(2, 0, MIB, 512).iter().all(|b| *b == 0), "thin reads zeroes where never written");
    // A new thin lvol given a parent, inflated; the parent then deleted
    // into its remaining clone.
    let s = &d.socket;
    ok_stdout("snapshot", &spdk_rpc(s, &["bdev_lvol_snapshot", "lvs1/fat", "fatsnap"]));
    ok_stdout("create t", &spdk_rpc(s, &["bdev_lvol_create", "-l", "lvs1", "t", "8", "-t"]));
    ok_stdout("set_parent", &spdk_rpc(s, &["bdev_lvol_set_parent", "lvs1/t", "lvs1/fatsnap"]));
    export(&d, "lvs1/t", 3);
    assert_eq!(sha(&host.read(3, 0, 8 * MIB, 512)), sha(&a), "t through its new parent");
    ok_stdout("inflate", &spdk_rpc(s, &["bdev_lvol_inflate", "lvs1/t"]));
    ok_stdout("delete fatsnap", &spdk_rpc(s, &["bdev_lvol_delete", "lvs1/fatsnap"]));
    assert_eq!(sha(&host.read(3, 0, 8 * MIB, 512)), sha(&a), "t after inflate");
    assert_eq!(sha(&host.read(1, 0, 8 * MIB, 512)), sha(&a), "fat after its snapshot merged into it");
    let lvols = by_name(&d.call("bdev_lvol_get_lvols", None).unwrap(), "name");
    assert_eq!((&lvols["t"]["is_clone"], &lvols["t"]["is_thin_provisioned"]), (&json!(false), &json!(false)), "{lvols:?}");
    assert!(!lvols.contains_key("fatsnap"));
    unexport(&d, 3);
    drop(host);
    // Deleting the store wipes it: nothing loads from the image any more.
    unexport(&d, 1);
    unexport(&d, 2);
    ok_stdout("delete_lvstore", &spdk_rpc(&d.socket, &["bdev_lvol_delete_lvstore", "-l", "lvs1"]));
    assert_eq!(d.call("bdev_lvol_get_lvstores", None).unwrap(), json!([]));
    assert!(d.stop().success());
    let d = start(&image, 512, port);
    assert_eq!(d.call("bdev_lvol_get_lvstores", None).unwrap(), json!([]));
    drop(d);
}

/// `kill -9` while a host writes to thin volumes: after a restart the
/// store loads (replaying its metadata), every acknowledged write reads
/// back, and the checker finds the store consistent.
#[test]
fn kill_9_during_first_writes_loses_no_acknowledged_write() {
    let dir = TempDir::new("lvol-kill");
    let image = dir.join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(128 << 20).unwrap();
    let port = free_port();
    let d = start(&image, 512, port);
    d.call("bdev_lvol_create_lvstore", Some(json!({"bdev_name": "aio0", "lvs_name": "lvs", "cluster_sz": 1 << 20}))).unwrap();
    for n in ["a", "b"] {
        d.call("bdev_lvol_create", Some(json!({"lvs_name": "lvs", "lvol_name": n, "size_in_mib": 48, "thin_provision": true}))).unwrap();
    }
    export(&d, "lvs/a", 1);
    export(&d, "lvs/b", 2);
    // A writer thread: 16 KiB records, each at a new cluster's middle
    // (every write allocates), alternating volumes, counting acknowledged.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut host = Host::connect(port);
            for i in 0..96usize {
                let rec: Vec<u8> = (0..16384).map(|j| (i * 7 + j / 512) as u8).collect();
                let (nsid, cluster) = (1 + (i % 2) as u32, i / 2);
                let c = host.io.write(nsid, ((cluster * MIB + MIB / 2) / 512) as u64, &rec, 512, false);
                if !c.ok() {
                    break;
                }
                acked.store(i + 1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    wait_until("20 acknowledged writes", Duration::from_secs(60), || acked.load(std::sync::atomic::Ordering::SeqCst) >= 20);
    let mut d = d;
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).expect("pollux-tgt did not die");
    let _ = writer.join();
    let done = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(done >= 20);
    // Dirty: the checker reads it as SPDK would (replaying) and finds no
    // cluster owned twice nor outside the store.
    let dirty = check(&image, 512);
    assert_eq!(dirty["lvstore"]["clean"], false, "{dirty:#}");
    let d = start(&image, 512, port);
    assert!(d.log().contains("not shut down cleanly"), "{}", d.log());
    export(&d, "lvs/a", 1);
    export(&d, "lvs/b", 2);
    let mut host = Host::connect(port);
    for i in 0..done {
        let rec: Vec<u8> = (0..16384).map(|j| (i * 7 + j / 512) as u8).collect();
        let (nsid, cluster) = (1 + (i % 2) as u32, i / 2);
        assert_eq!(host.read(nsid, cluster * MIB + MIB / 2, 16384, 512), rec, "acknowledged write {i} of {done} lost");
    }
    drop(host);
    unexport(&d, 1);
    unexport(&d, 2);
    assert!(d.stop().success());
    let clean = check(&image, 512);
    assert_eq!(clean["lvstore"]["clean"], true, "{clean:#}");
    let lvols = by_name(&clean["lvols"], "name");
    let allocated = lvols["a"]["allocated_clusters"].as_u64().unwrap() + lvols["b"]["allocated_clusters"].as_u64().unwrap();
    assert!(allocated as usize >= done, "{done} writes acknowledged, {allocated} clusters allocated");
}

/// A thin lvol exported over iSCSI, used by Pollux's initiator with a
/// verifying workload while it is snapshotted three times: the snapshots
/// hold the volume's writes still for a moment and the verify ends clean;
/// libiscsi's `iscsi-readcapacity16` sees the volume's size.
#[test]
fn lvol_over_iscsi_stays_consistent_while_snapshotted_under_a_verify() {
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 262144, "block_size": 512}},
        ]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/8"]}},
        ]},
    ]});
    let d = Daemon::start(DaemonOpts { config: Some(cfg), cpumask: "0x3".into(), ..Default::default() });
    d.call("bdev_lvol_create_lvstore", Some(json!({"bdev_name": "M0", "lvs_name": "lvs", "cluster_sz": 1 << 20}))).unwrap();
    d.call("bdev_lvol_create", Some(json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 48, "thin_provision": true}))).unwrap();
    d.call(
        "iscsi_create_target_node",
        Some(json!({"name": "lv", "alias_name": "lvol", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "luns": [{"bdev_name": "lvs/vol", "lun_id": 0}], "queue_depth": 64})),
    )
    .unwrap();
    let url = pollux_tests::iscsi_host::url(port, "lv", None);
    let cap = Command::new(pollux_tests::tool("iscsi-readcapacity16", "libiscsi-bin")).arg(&url).output().unwrap();
    let cap = ok_stdout("iscsi-readcapacity16", &cap);
    assert!(cap.contains(&format!("{}", 48 * 2048 - 1)) || cap.contains(&format!("{}", 48 << 20)), "{cap}");
    let dir = TempDir::new("lvol-iscsi");
    let perf_cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_iscsi_create", "params": {"name": "iSCSI0", "initiator_iqn": "iqn.2016-06.io.pollux:lvol-test", "url": url}}
    ]}]});
    let child = pollux_tests::perf_command(
        &dir,
        &perf_cfg,
        &["-b", "iSCSI0", "-q", "16", "-o", "65536", "-w", "verify", "-t", "5", "-m", "0x1", "--json"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("run pollux-perf");
    for i in 1..=3u64 {
        wait_until("writes before the snapshot", Duration::from_secs(60), || pollux_tests::bdev_ops(&d, "lvs/vol") > i * 200);
        d.call("bdev_lvol_snapshot", Some(json!({"lvol_name": "lvs/vol", "snapshot_name": format!("s{i}")}))).unwrap();
    }
    let (r, err) = pollux_tests::clean_perf_run(child);
    assert!(r["total"]["ios"].as_u64().unwrap() > 600, "{r}\n{err}");
    let lvols = by_name(&d.call("bdev_lvol_get_lvols", None).unwrap(), "name");
    assert_eq!(lvols["vol"]["is_clone"], true);
    assert_eq!(lvols["s3"]["is_clone"], true, "s3 is a snapshot of s2's clone");
    drop(d);
}

/// With `bdev_auto_examine` off no store loads by itself; `bdev_examine`
/// loads it.
#[test]
fn bdev_examine_loads_a_store_when_auto_examine_is_off() {
    let dir = TempDir::new("lvol-examine");
    let image = fixture_image(&dir, 512);
    let mut cfg = config(&image, 512, free_port());
    cfg["subsystems"][0]["config"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"method": "bdev_set_options", "params": {"bdev_auto_examine": false}}));
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    d.call("bdev_wait_for_examine", None).unwrap();
    assert_eq!(d.call("bdev_lvol_get_lvstores", None).unwrap(), json!([]));
    d.call("bdev_examine", Some(json!({"name": "aio0"}))).unwrap();
    d.call("bdev_wait_for_examine", None).unwrap();
    assert_answers_match(&d, 512);
}

/// A thin volume larger than its store: the write that finds no cluster
/// left fails with NVMe's Capacity Exceeded (not a retryable error), the
/// writes before it read back, and the volume goes on serving clusters it
/// has.
#[test]
fn a_full_store_answers_capacity_exceeded() {
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 16384, "block_size": 512}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]});
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    d.call("bdev_lvol_create_lvstore", Some(json!({"bdev_name": "M0", "lvs_name": "small", "cluster_sz": 1 << 20}))).unwrap();
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    let free = lvs["free_clusters"].as_u64().unwrap() as usize;
    d.call("bdev_lvol_create", Some(json!({"lvs_name": "small", "lvol_name": "big", "size_in_mib": 64, "thin_provision": true}))).unwrap();
    export(&d, "small/big", 1);
    let mut host = Host::connect(port);
    for c in 0..free {
        let c_ok = host.io.write(1, (c * MIB / 512) as u64, &[c as u8; 4096], 512, false);
        assert!(c_ok.ok(), "write to cluster {c} of {free}: {c_ok:?}");
    }
    let full = host.io.write(1, (free * MIB / 512) as u64, &[0xee; 4096], 512, false);
    assert_eq!(full.sct_sc(), (0, 0x81), "{full:?}");
    for c in 0..free {
        assert_eq!(host.read(1, c * MIB, 4096, 512), vec![c as u8; 4096], "cluster {c}");
    }
    let again = host.io.write(1, 4096 / 512, &[0x77; 4096], 512, false);
    assert!(again.ok(), "a write to a cluster the volume has: {again:?}");
}

/// The file under a store grows: `bdev_aio_rescan` tells the bdev layer,
/// `bdev_lvol_grow_lvstore` (both through SPDK's client) makes the new
/// clusters the store's, and the grown store survives a restart with its
/// data and passes the checker. A store cannot shrink, nor grow past what
/// its used-cluster mask can track (`max_growable_size`).
#[test]
fn a_store_grows_with_its_bdev() {
    let dir = TempDir::new("lvol-grow");
    let image = dir.join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let port = free_port();
    let d = start(&image, 512, port);
    let s = d.socket.clone();
    ok_stdout("create_lvstore", &spdk_rpc(&s, &["bdev_lvol_create_lvstore", "aio0", "lvs1", "-c", "1048576"]));
    ok_stdout("create a", &spdk_rpc(&s, &["bdev_lvol_create", "-l", "lvs1", "a", "40"]));
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    assert_eq!((lvs["total_data_clusters"].as_u64(), lvs["free_clusters"].as_u64()), (Some(63), Some(23)), "{lvs}");
    let max = lvs["max_growable_size"].as_u64().expect("max_growable_size");
    assert!(max >= 128 << 20, "{lvs}");
    assert!(d.call("bdev_lvol_create", Some(json!({"lvs_name": "lvs1", "lvol_name": "b", "size_in_mib": 80}))).is_err());
    export(&d, "lvs1/a", 1);
    let mut host = Host::connect(port);
    let a: Vec<u8> = (0..4 * MIB).map(|i| (i % 239) as u8).collect();
    host.write(1, 36 * MIB, &a, 512);
    // Nothing to grow yet: a no-op.
    ok_stdout("grow (same size)", &spdk_rpc(&s, &["bdev_lvol_grow_lvstore", "-l", "lvs1"]));
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(128 << 20).unwrap();
    ok_stdout("rescan", &spdk_rpc(&s, &["bdev_aio_rescan", "aio0"]));
    let aio = &d.call("bdev_get_bdevs", Some(json!({"name": "aio0"}))).unwrap()[0];
    assert_eq!(aio["num_blocks"], (128 << 20) / 512, "{aio}");
    ok_stdout("grow", &spdk_rpc(&s, &["bdev_lvol_grow_lvstore", "-l", "lvs1"]));
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    assert_eq!((lvs["total_data_clusters"].as_u64(), lvs["free_clusters"].as_u64()), (Some(127), Some(87)), "{lvs}");
    ok_stdout("create b", &spdk_rpc(&s, &["bdev_lvol_create", "-l", "lvs1", "b", "80"]));
    export(&d, "lvs1/b", 2);
    let b: Vec<u8> = (0..4 * MIB).map(|i| (i % 233) as u8).collect();
    host.write(2, 76 * MIB, &b, 512);
    drop(host);
    unexport(&d, 1);
    unexport(&d, 2);
    assert!(d.stop().success());
    let report = check(&image, 512);
    let lvols = by_name(&report["lvols"], "name");
    assert_eq!(lvols.keys().collect::<Vec<_>>(), ["a", "b"], "{report:#}");
    let d = start(&image, 512, port);
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    assert_eq!((lvs["total_data_clusters"].as_u64(), lvs["free_clusters"].as_u64()), (Some(127), Some(7)), "{lvs}");
    export(&d, "lvs1/a", 1);
    export(&d, "lvs1/b", 2);
    let mut host = Host::connect(port);
    assert_eq!(sha(&host.read(1, 36 * MIB, 4 * MIB, 512)), sha(&a), "a after the grow and a restart");
    assert_eq!(sha(&host.read(2, 76 * MIB, 4 * MIB, 512)), sha(&b), "b, past the old end, after a restart");
    drop(host);
    unexport(&d, 1);
    unexport(&d, 2);
    // Past what the mask can track: refused with ENOSPC, the store unchanged.
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(max + (64 << 20)).unwrap();
    ok_stdout("rescan (huge)", &spdk_rpc(&d.socket, &["bdev_aio_rescan", "aio0"]));
    let e = d.call("bdev_lvol_grow_lvstore", Some(json!({"lvs_name": "lvs1"}))).unwrap_err();
    assert!(matches!(e, ClientError::Rpc(ref r) if r.code == -libc::ENOSPC), "{e:?}");
    let lvs = &d.call("bdev_lvol_get_lvstores", None).unwrap()[0];
    assert_eq!(lvs["total_data_clusters"].as_u64(), Some(127), "{lvs}");
    // The aio bdev is open by the store: it may grow, not shrink.
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(32 << 20).unwrap();
    assert!(!spdk_rpc(&d.socket, &["bdev_aio_rescan", "aio0"]).status.success(), "an open bdev shrank");
    drop(d);
}

/// Peak RSS of process `pid` in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    pollux_tests::peak_rss_bytes(pid) >> 20
}

/// A super block (valid crc, clean) whose used-cluster mask is said to
/// run over the whole of a 4 GiB device: the examiner read all of it into
/// memory (4 GiB for a mask whose bits take a few pages; found by review,
/// 2026-12-06). Whatever is on a bdev's first page is examined at start-up,
/// including a tenant's data. A mask is now read only as far as the
/// store's clusters (or metadata pages) need.
#[test]
fn a_mask_said_to_span_the_device_is_not_read_whole() {
    let dir = TempDir::new("lvol-mask");
    let image = fixture_image(&dir, 4096);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&image).unwrap();
    f.set_len(4 << 30).unwrap();
    let mut sb = [0u8; 4096];
    f.read_exact_at(&mut sb, 0).unwrap();
    let mask_start = u32::from_le_bytes(sb[40..44].try_into().unwrap());
    // The store the whole device, its cluster mask from its start to the end.
    sb[80..88].copy_from_slice(&(4u64 << 30).to_le_bytes());
    sb[44..48].copy_from_slice(&((1u32 << 20) - mask_start).to_le_bytes());
    pollux_lvol::format::fix_crc(&mut sb);
    f.write_all_at(&sb, 0).unwrap();
    drop(f);
    let port = free_port();
    let d = start(&image, 4096, port);
    let rss = peak_rss_mib(d.pid());
    assert!(rss < 512, "peak RSS {rss} MiB examining the store");
    // The mask's bits no longer cover the (now larger) store: refused.
    assert_eq!(d.call("bdev_lvol_get_lvstores", None).unwrap(), json!([]));
    let log = d.log();
    assert!(log.contains("a mask's length does not match the store"), "{log}");
}
