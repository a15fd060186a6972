//! RAID bdevs (issue 19): pollux-perf's verify on raid0, raid1 and concat
//! over malloc and uring members; a raid1 that loses a member to an
//! injected error and rebuilds a new one while the verify runs, both
//! members identical after; arrays with SPDK's superblock reassembling
//! after a restart whatever order their members come in.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pollux_core::rpc::Client;
use pollux_tests::nvmf_client::Client as NvmfClient;
use pollux_tests::{
    Daemon, DaemonOpts, TempDir, app_client, clean_perf_run, free_port, ok_stdout, perf_command, pollux_rpc, spdk_rpc, wait_until,
};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn malloc(name: &str, mib: u64) -> Value {
    json!({"method": "bdev_malloc_create", "params": {"name": name, "num_blocks": mib * 2048, "block_size": 512}})
}

fn aio(name: &str, file: &std::path::Path, uuid: &str) -> Value {
    json!({"method": "bdev_aio_create", "params": {"name": name, "filename": file, "block_size": 512, "uuid": uuid}})
}

fn raid(name: &str, level: &str, strip_kb: u64, members: &[&str]) -> Value {
    json!({"method": "bdev_raid_create", "params": {"name": name, "raid_level": level, "strip_size_kb": strip_kb, "base_bdevs": members}})
}

fn file(dir: &TempDir, name: &str, mib: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(mib * MIB).unwrap();
    p
}

#[test]
fn verify_is_clean_on_raid0_raid1_and_concat_over_malloc_and_uring() {
    let dir = TempDir::new("raid-verify");
    let (f0, f1) = (file(&dir, "u0.img", 24), file(&dir, "u1.img", 40));
    let (f2, f3) = (file(&dir, "u2.img", 16), file(&dir, "u3.img", 16));
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        malloc("M0", 32), malloc("M1", 32), malloc("M2", 32), malloc("M3", 24),
        aio("U0", &f0, "8a3c1c9e-0a11-4a34-9a5e-2d3c7d1f0001"), aio("U1", &f1, "8a3c1c9e-0a11-4a34-9a5e-2d3c7d1f0002"),
        raid("R0", "raid0", 64, &["M0", "M1"]),
        raid("R1", "raid1", 0, &["M2", "M3"]),
        raid("C0", "concat", 64, &["U0", "U1"]),
        malloc("M4", 16), malloc("M5", 24),
        aio("U2", &f2, "8a3c1c9e-0a11-4a34-9a5e-2d3c7d1f0003"), aio("U3", &f3, "8a3c1c9e-0a11-4a34-9a5e-2d3c7d1f0004"),
        raid("C1", "concat", 64, &["M4", "M5"]),
        raid("R2", "raid0", 32, &["U2", "U3"]),
    ]}]});
    // Sizes that stay in a strip and sizes that cross strips and members.
    for (bdev, size) in [
        ("R0", "4096"),
        ("R0", "131072"),
        ("R1", "4096"),
        ("R1", "65536"),
        ("C0", "4096"),
        ("C0", "131072"),
        ("C1", "65536"),
        ("R2", "131072"),
    ] {
        let perf = perf_command(&dir, &cfg, &["-b", bdev, "-q", "16", "-o", size, "-w", "verify", "-t", "1", "-m", "0x3", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (r, _) = clean_perf_run(perf);
        assert!(r["total"]["ios"].as_u64().unwrap() > 10, "{bdev} {size}: {r}");
    }
}

/// `bdev_raid_get_bdevs` and friends through SPDK's client.
#[test]
fn raid_methods_answer_as_spdks() {
    let d = Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [{"subsystem": "bdev", "config": [malloc("M0", 8), malloc("M1", 8), malloc("M2", 16)]}]})),
        ..Default::default()
    });
    let s = d.socket.clone();
    ok_stdout("create", &spdk_rpc(&s, &["bdev_raid_create", "-n", "R0", "-z", "64", "-r", "raid0", "-b", "M0 M1"]));
    let list: Value = serde_json::from_str(&ok_stdout("get", &spdk_rpc(&s, &["bdev_raid_get_bdevs", "all"]))).unwrap();
    let again: Value = serde_json::from_str(&ok_stdout("pollux-rpc get", &pollux_rpc(&s, &["bdev_raid_get_bdevs", "online"]))).unwrap();
    assert_eq!(list, again);
    let r = &list[0];
    assert_eq!((r["name"].as_str(), r["state"].as_str(), r["raid_level"].as_str()), (Some("R0"), Some("online"), Some("raid0")), "{r}");
    assert_eq!(
        (r["strip_size_kb"].as_u64(), r["num_base_bdevs"].as_u64(), r["num_base_bdevs_operational"].as_u64()),
        (Some(64), Some(2), Some(2))
    );
    assert_eq!(r["base_bdevs_list"][1]["name"], "M1");
    assert_eq!(r["base_bdevs_list"][1]["data_size"], 16384);
    let b = &d.call("bdev_get_bdevs", Some(json!({"name": "R0"}))).unwrap()[0];
    assert_eq!((b["num_blocks"].as_u64(), b["product_name"].as_str()), (Some(32768), Some("Raid Volume")), "{b}");
    assert_eq!(b["driver_specific"]["raid"]["raid_level"], "raid0");
    assert_eq!(d.call("bdev_get_bdevs", Some(json!({"name": "M0"}))).unwrap()[0]["claimed"], true);
    // Refusals: a strip for raid1, a strip that is not a power of two, a member in use.
    assert!(!spdk_rpc(&s, &["bdev_raid_create", "-n", "X", "-z", "64", "-r", "raid1", "-b", "M2 M2"]).status.success());
    assert!(!spdk_rpc(&s, &["bdev_raid_create", "-n", "X", "-z", "48", "-r", "raid0", "-b", "M2"]).status.success());
    assert!(!spdk_rpc(&s, &["bdev_raid_create", "-n", "X", "-z", "64", "-r", "raid0", "-b", "M0 M2"]).status.success());
    assert!(d.call("bdev_get_bdevs", Some(json!({"name": "X"}))).is_err());
    assert_eq!(d.call("bdev_get_bdevs", Some(json!({"name": "M2"}))).unwrap()[0]["claimed"], false, "a refused create let go");
    // save_config writes the array back; delete lets its members go.
    let saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&s, &["save_config"]))).unwrap();
    assert!(saved.to_string().contains("\"bdev_raid_create\""), "{saved}");
    ok_stdout("delete", &spdk_rpc(&s, &["bdev_raid_delete", "R0"]));
    assert_eq!(d.call("bdev_get_bdevs", Some(json!({"name": "M0"}))).unwrap()[0]["claimed"], false);
    assert_eq!(d.call("bdev_raid_get_bdevs", Some(json!({"category": "all"}))).unwrap(), json!([]));
}

/// A raid1 under pollux-perf's verify loses a member to an injected write
/// error, runs degraded, takes a new member and rebuilds it, all while the
/// verify runs: the workload sees no error, and after it both members hold
/// the same data.
#[test]
fn raid1_loses_a_member_and_rebuilds_another_under_verify() {
    let dir = TempDir::new("raid-rebuild");
    let files: Vec<_> = (0..3).map(|i| file(&dir, &format!("m{i}.img"), 32)).collect();
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        aio("U0", &files[0], "6b0d2c41-5d7e-4bd6-8c1e-000000000001"),
        aio("U1", &files[1], "6b0d2c41-5d7e-4bd6-8c1e-000000000002"),
        aio("U2", &files[2], "6b0d2c41-5d7e-4bd6-8c1e-000000000003"),
        {"method": "bdev_error_create", "params": {"base_name": "U0"}},
        {"method": "bdev_raid_set_options", "params": {"process_window_size_kb": 256}},
        raid("R1", "raid1", 0, &["EE_U0", "U1"]),
    ]}]});
    let mut perf = perf_command(&dir, &cfg, &["-b", "R1", "-q", "16", "-o", "4096", "-w", "verify", "-t", "12", "-m", "0x3", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.join("perf.sock");
    let mut c = app_client(&sock, Duration::from_secs(30), Duration::from_secs(20));
    // A call that fails means perf died: show why.
    let died = |perf: &mut std::process::Child, e: &dyn std::fmt::Display| -> ! {
        let _ = perf.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(perf.stderr.as_mut().unwrap(), &mut err);
        panic!(
            "perf stopped answering ({e}):\n{}",
            err.lines().filter(|l| !l.trim_start().starts_with("at ")).collect::<Vec<_>>().join("\n")
        )
    };
    let mut call = |c: &mut Client, m: &str, p: Value| -> Value { c.call(m, Some(p)).unwrap_or_else(|e| died(&mut perf, &e)) };
    let iostat = |call: &mut dyn FnMut(&mut Client, &str, Value) -> Value, c: &mut Client, name: &str| {
        call(c, "bdev_get_iostat", json!({"name": name}))["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
    };
    let t = Instant::now();
    while iostat(&mut call, &mut c, "R1") < 1000 {
        assert!(t.elapsed() < Duration::from_secs(20), "no writes reached R1");
    }
    let raid1 = |call: &mut dyn FnMut(&mut Client, &str, Value) -> Value, c: &mut Client| {
        call(c, "bdev_raid_get_bdevs", json!({"category": "all"}))[0].clone()
    };
    // The next write to the first member fails: it leaves the array.
    call(&mut c, "bdev_error_inject_error", json!({"name": "EE_U0", "io_type": "write", "error_type": "failure"}));
    let t = Instant::now();
    while raid1(&mut call, &mut c)["num_base_bdevs_operational"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(20), "the failed member stayed");
    }
    let r = raid1(&mut call, &mut c);
    assert_eq!(r["state"], "online", "degraded, still serving: {r}");
    // Writes go on, degraded.
    let before = iostat(&mut call, &mut c, "R1");
    let t = Instant::now();
    while iostat(&mut call, &mut c, "R1") < before + 1000 {
        assert!(t.elapsed() < Duration::from_secs(20), "no writes while degraded");
    }
    // A new member, rebuilt while the verify runs.
    call(&mut c, "bdev_raid_add_base_bdev", json!({"raid_bdev": "R1", "base_bdev": "U2"}));
    let t = Instant::now();
    let mut saw_progress = false;
    loop {
        let r = raid1(&mut call, &mut c);
        saw_progress |= r.get("process").is_some();
        if r["num_base_bdevs_operational"] == 2 && r.get("process").is_none() && r["base_bdevs_list"][0]["name"] == "U2" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the rebuild did not finish: {r}");
    }
    let _ = saw_progress;
    drop(c);
    assert!(perf.try_wait().unwrap().is_none(), "the verify ended before the rebuild did: lengthen it");
    let (r, _) = clean_perf_run(perf);
    assert!(r["total"]["ios"].as_u64().unwrap() > 1000, "{r}");
    // Both members hold the same data (no superblock: the data start at 0).
    let a = std::fs::read(&files[1]).unwrap();
    let b = std::fs::read(&files[2]).unwrap();
    assert!(a.iter().any(|x| *x != 0), "the verify wrote to the members");
    assert!(a == b, "the rebuilt member differs from the one that stayed");
}

const NQN: &str = "nqn.2016-06.io.pollux:raid";

fn nvmf(port: u16) -> Value {
    json!({"subsystem": "nvmf", "config": [
        {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
        {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
        {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
    ]})
}

fn host(port: u16) -> (NvmfClient, NvmfClient) {
    let (admin, cntlid) = NvmfClient::admin(port, NQN, 0, false, false);
    (admin, NvmfClient::io(port, NQN, cntlid, 1, false, false))
}

/// An array made with `superblock` reassembles by itself after a restart
/// with its members attached in another order, its data there; a member
/// removed from it is not trusted again without a rebuild.
#[test]
fn a_raid_with_a_superblock_reassembles_in_any_order() {
    let dir = TempDir::new("raid-sb");
    let files: Vec<_> = (0..2).map(|i| file(&dir, &format!("m{i}.img"), 16)).collect();
    let u = ["3f1e6a70-9b1d-4c3e-8f2a-00000000000a", "3f1e6a70-9b1d-4c3e-8f2a-00000000000b"];
    let port = free_port();
    let start = |order: [usize; 2]| {
        let bdevs: Vec<Value> = order.iter().map(|&i| aio(&format!("U{i}"), &files[i], u[i])).collect();
        let d = Daemon::start(DaemonOpts {
            config: Some(json!({"subsystems": [{"subsystem": "bdev", "config": bdevs}, nvmf(port)]})),
            ..Default::default()
        });
        d.call("bdev_wait_for_examine", None).unwrap();
        d
    };
    let d = start([0, 1]);
    ok_stdout("create", &spdk_rpc(&d.socket, &["bdev_raid_create", "-n", "R1", "-r", "raid1", "-b", "U0 U1", "-s"]));
    let r = &d.call("bdev_raid_get_bdevs", Some(json!({"category": "online"}))).unwrap()[0];
    assert_eq!((r["superblock"].as_bool(), r["base_bdevs_list"][0]["data_offset"].as_u64()), (Some(true), Some(2048)), "{r}");
    // The superblock, as SPDK lays it out, on both members.
    for f in &files {
        let img = std::fs::read(f).unwrap();
        assert_eq!(&img[0..8], b"SPDKRAID");
        assert_eq!(&img[40..42], b"R1");
        assert_eq!(u32::from_le_bytes(img[116..120].try_into().unwrap()), 1, "level raid1");
    }
    d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "R1", "nsid": 1}}))).unwrap();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
    {
        let (_a, mut io) = host(port);
        assert!(io.write(1, 100, &data, 512, false).ok());
    }
    drop(d);
    // Members the other way round, and no bdev_raid_create.
    let d = start([1, 0]);
    let r = &d.call("bdev_raid_get_bdevs", Some(json!({"category": "online"}))).unwrap();
    assert_eq!(r.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r[0]["num_base_bdevs_operational"], 2, "{r}");
    d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "R1", "nsid": 1}}))).unwrap();
    {
        let (_a, mut io) = host(port);
        let (c, got) = io.read(1, 100, (data.len() / 512) as u32, 512);
        assert!(c.ok() && got == data, "the data after reassembly");
    }
    // U1 leaves; the superblock on U0 says so (a newer one).
    d.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 1}))).unwrap();
    ok_stdout("remove", &spdk_rpc(&d.socket, &["bdev_raid_remove_base_bdev", "U1"]));
    wait_until("U1 out", Duration::from_secs(20), || {
        d.call("bdev_raid_get_bdevs", Some(json!({"category": "all"}))).unwrap()[0]["num_base_bdevs_operational"] == 1
    });
    wait_until("the superblock written", Duration::from_secs(20), || {
        let a = std::fs::read(&files[0]).unwrap();
        let b = std::fs::read(&files[1]).unwrap();
        u64::from_le_bytes(a[128..136].try_into().unwrap()) > u64::from_le_bytes(b[128..136].try_into().unwrap())
    });
    drop(d);
    // Either order: U1 is not taken back as it was; if it is taken, it is rebuilt.
    for order in [[1, 0], [0, 1]] {
        let d = start(order);
        let r = d.call("bdev_raid_get_bdevs", Some(json!({"category": "all"}))).unwrap()[0].clone();
        assert_eq!(r["state"], "online", "{order:?}: {r}");
        let m1 = r["base_bdevs_list"].as_array().unwrap().iter().find(|m| m["name"] == "U1").cloned();
        if let Some(m1) = m1 {
            // Taken back only as a rebuild target, then online once rebuilt.
            wait_until("U1 rebuilt", Duration::from_secs(30), || {
                let r = d.call("bdev_raid_get_bdevs", Some(json!({"category": "all"}))).unwrap()[0].clone();
                r.get("process").is_none() && r["num_base_bdevs_operational"] == 2
            });
            let _ = m1;
        } else {
            assert_eq!(r["num_base_bdevs_operational"], 1, "{order:?}: {r}");
        }
        drop(d);
    }
}

/// Encryption on a mirror: pollux-perf's verify through `bdev_crypto` over
/// a raid1 of a malloc and a uring member is clean, at 4 KiB and 64 KiB.
#[test]
fn verify_is_clean_through_crypto_over_raid1() {
    let dir = TempDir::new("raid-crypto");
    let f = file(&dir, "m1.img", 32);
    let cfg = json!({"subsystems": [
        {"subsystem": "accel", "config": [
            {"method": "accel_crypto_key_create", "params": {"name": "k0", "cipher": "AES_XTS", "key": "00112233445566778899aabbccddeeff", "key2": "ffeeddccbbaa99887766554433221100"}},
        ]},
        {"subsystem": "bdev", "config": [
            malloc("M0", 32), aio("U1", &f, "1b2c3d4e-0000-4000-8000-0000000000c1"),
            raid("R1", "raid1", 0, &["M0", "U1"]),
            {"method": "bdev_crypto_create", "params": {"base_bdev_name": "R1", "name": "C0", "key_name": "k0"}},
        ]},
    ]});
    for size in ["4096", "65536"] {
        let perf = perf_command(&dir, &cfg, &["-b", "C0", "-q", "16", "-o", size, "-w", "verify", "-t", "1", "-m", "0x3", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (r, _) = clean_perf_run(perf);
        assert!(r["total"]["ios"].as_u64().unwrap() > 10, "{size}: {r}");
    }
    // The mirror holds ciphertext: the uring member's first written blocks are not the pattern.
    let raw = std::fs::read(&f).unwrap();
    assert!(raw.iter().any(|b| *b != 0), "the verify wrote to the member");
}

/// A raid1 read that fails on one member is served by the other; the
/// member stays (a read error is not a reason to fail it) and nothing is
/// written back to it (a write to those blocks meanwhile would be undone).
#[test]
fn a_failed_raid1_read_is_served_by_the_other_member() {
    let port = free_port();
    let d = Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [malloc("M0", 8), malloc("M1", 8),
                {"method": "bdev_error_create", "params": {"base_name": "M0"}},
                raid("R1", "raid1", 0, &["EE_M0", "M1"])]},
            nvmf(port),
        ]})),
        ..Default::default()
    });
    d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "R1", "nsid": 1}}))).unwrap();
    let (_a, mut io) = host(port);
    let data: Vec<u8> = (0..8192).map(|i| (i % 247) as u8).collect();
    assert!(io.write(1, 40, &data, 512, false).ok());
    let writes = || d.call("bdev_get_iostat", Some(json!({"name": "EE_M0"}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap();
    let before = writes();
    // Every read of EE_M0 fails once; reads alternate between members.
    d.call("bdev_error_inject_error", Some(json!({"name": "EE_M0", "io_type": "read", "error_type": "failure", "num": 1}))).unwrap();
    for _ in 0..4 {
        let (c, got) = io.read(1, 40, 16, 512);
        assert!(c.ok() && got == data, "{c:?}");
    }
    let r = &d.call("bdev_raid_get_bdevs", Some(json!({"category": "all"}))).unwrap()[0];
    assert_eq!(r["num_base_bdevs_operational"], 2, "a read error does not fail the member: {r}");
    assert_eq!(writes(), before, "nothing written back to the member that failed the read");
    assert_eq!(
        d.call("bdev_error_inject_error", Some(json!({"name": "EE_M0", "io_type": "clear", "error_type": "failure"}))).unwrap(),
        json!(true)
    );
}

/// A superblock whose CRC is right but whose geometry its members cannot
/// hold: an array larger than its members' data (raid_size), a member's
/// data beyond the end of its bdev (data_size), or data over the
/// superblock itself (data_offset 0). Each is refused: no raid bdev, the
/// reason in the log, the members left as they were (unclaimed, their
/// superblocks unchanged).
#[test]
fn a_superblock_whose_geometry_its_members_cannot_hold_is_refused() {
    use pollux_raid::sb::Superblock;
    type Tamper = fn(&mut Superblock);
    let cases: [(&str, Tamper, &str); 3] = [
        ("raid_size 10x", |sb| sb.raid_size *= 10, "array of"),
        ("data_size beyond the member", |sb| sb.entries.iter_mut().for_each(|e| e.data_size *= 2), "beyond the end"),
        ("data_offset 0", |sb| sb.entries.iter_mut().for_each(|e| e.data_offset = 0), "over the superblock"),
    ];
    for (what, tamper, why) in cases {
        let dir = TempDir::new("raid-sb-geometry");
        let files: Vec<_> = (0..2).map(|i| file(&dir, &format!("m{i}.img"), 16)).collect();
        let u = ["3f1e6a70-9b1d-4c3e-8f2a-00000000001a", "3f1e6a70-9b1d-4c3e-8f2a-00000000001b"];
        let start = || {
            let bdevs: Vec<Value> = (0..2).map(|i| aio(&format!("U{i}"), &files[i], u[i])).collect();
            let d = Daemon::start(DaemonOpts {
                config: Some(json!({"subsystems": [{"subsystem": "bdev", "config": bdevs}]})),
                ..Default::default()
            });
            d.call("bdev_wait_for_examine", None).unwrap();
            d
        };
        let d = start();
        ok_stdout("create", &spdk_rpc(&d.socket, &["bdev_raid_create", "-n", "R1", "-r", "raid1", "-b", "U0 U1", "-s"]));
        drop(d);
        let mut tampered = Vec::new();
        for f in &files {
            let mut img = std::fs::read(f).unwrap();
            let len = u32::from_le_bytes(img[12..16].try_into().unwrap()) as usize;
            let mut sb = Superblock::parse(&img[..4096]).unwrap();
            tamper(&mut sb);
            let b = sb.render();
            assert_eq!(b.len(), len);
            img[..len].copy_from_slice(&b);
            std::fs::write(f, &img).unwrap();
            tampered.push(img[..4096].to_vec());
        }
        let d = start();
        let r = d.call("bdev_raid_get_bdevs", Some(json!({"category": "online"}))).unwrap();
        assert_eq!(r, json!([]), "{what}: {r}");
        let bdevs = d.call("bdev_get_bdevs", None).unwrap();
        for b in bdevs.as_array().unwrap() {
            assert_ne!(b["name"], "R1", "{what}");
            assert_eq!(b["claimed"], false, "{what}: {b}");
        }
        let log = d.log();
        assert!(log.contains(why), "{what}: {log}");
        drop(d);
        for (f, before) in files.iter().zip(&tampered) {
            assert_eq!(&std::fs::read(f).unwrap()[..4096], &before[..], "{what}: the superblock was left as it was");
        }
    }
}
