//! Data services between disks and exports (issue 19): passthru, split and
//! error injection bdevs, driven through SPDK's own client and checked with
//! an NVMe/TCP host's reads and writes.

use pollux_core::rpc::{ClientError, RpcError};
use pollux_tests::nvmf_client::Client;
use pollux_tests::{Daemon, DaemonOpts, free_port, ok_stdout, pollux_rpc, spdk_rpc, wait_until};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:ds";
const BS: usize = 512;

fn config(port: u16, bdevs: Value) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": bdevs},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]})
}

fn malloc(name: &str, mib: u64) -> Value {
    json!({"method": "bdev_malloc_create", "params": {"name": name, "num_blocks": mib * 2048, "block_size": BS}})
}

fn export(d: &Daemon, name: &str, nsid: u32) {
    d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": name, "nsid": nsid}})))
        .unwrap_or_else(|e| panic!("export {name}: {e}"));
}

fn unexport(d: &Daemon, nsid: u32) {
    d.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": nsid}))).unwrap();
}

fn bdev(d: &Daemon, name: &str) -> Value {
    d.call("bdev_get_bdevs", Some(json!({"name": name}))).unwrap_or_else(|e| panic!("{name}: {e}"))[0].clone()
}

fn code(e: ClientError) -> i32 {
    match e {
        ClientError::Rpc(RpcError { code, .. }) => code,
        other => panic!("not an RPC error: {other}"),
    }
}

struct Host {
    _admin: Client,
    io: Client,
}

impl Host {
    fn connect(port: u16) -> Host {
        let (admin, cntlid) = Client::admin(port, NQN, 0, false, false);
        Host { _admin: admin, io: Client::io(port, NQN, cntlid, 1, false, false) }
    }
    fn write(&mut self, nsid: u32, lba: u64, data: &[u8]) -> (u8, u8) {
        self.io.write(nsid, lba, data, BS, false).sct_sc()
    }
    fn read(&mut self, nsid: u32, lba: u64, blocks: u32) -> ((u8, u8), Vec<u8>) {
        let (c, data) = self.io.read(nsid, lba, blocks, BS);
        (c.sct_sc(), data)
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Split and passthru through `spdk-rpc`: the slices' sizes, offsets and
/// names as SPDK gives them, the base claimed, data landing at the slice's
/// offset of the base, `save_config` making the same bdevs again (even
/// with the split before its base in the file), and deletes.
#[test]
fn split_and_passthru_map_blocks_and_round_trip_their_config() {
    let port = free_port();
    let d = Daemon::start(DaemonOpts { config: Some(config(port, json!([malloc("M0", 8), malloc("M1", 4)]))), ..Default::default() });
    let s = d.socket.clone();
    let out = ok_stdout("split", &spdk_rpc(&s, &["bdev_split_create", "M0", "4"]));
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["M0p0", "M0p1", "M0p2", "M0p3"]);
    let p1 = bdev(&d, "M0p1");
    assert_eq!(p1["num_blocks"], 4096, "{p1}");
    assert_eq!(p1["product_name"], "Split Disk", "{p1}");
    assert_eq!(p1["driver_specific"]["split"], json!({"base_bdev": "M0", "offset_blocks": 4096}), "{p1}");
    assert_eq!(bdev(&d, "M0")["claimed"], true);
    // A claimed base cannot be exported for writing, nor split twice.
    assert!(d.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}}))).is_err());
    assert_eq!(code(d.call("bdev_split_create", Some(json!({"base_bdev": "M0", "split_count": 2}))).unwrap_err()), -libc::EEXIST);
    // split_size_mb: 3 slices of 1 MiB from M1 (4 MiB); more than fit is clamped.
    // (pollux-rpc, in rpc.py's form.)
    let out = ok_stdout("split size", &pollux_rpc(&s, &["bdev_split_create", "M1", "6", "-s", "1"]));
    assert_eq!(out.split_whitespace().count(), 4, "{out}");
    assert_eq!(bdev(&d, "M1p3")["num_blocks"], 2048);
    ok_stdout("passthru", &spdk_rpc(&s, &["bdev_passthru_create", "-b", "M1p3", "-p", "PT0"]));
    let pt = bdev(&d, "PT0");
    assert_eq!(pt["driver_specific"]["passthru"], json!({"name": "PT0", "base_bdev_name": "M1p3"}), "{pt}");
    assert_eq!(bdev(&d, "M1p3")["claimed"], true);

    // Data: through slice 1 and the passthru, then seen in the bases.
    export(&d, "M0p1", 1);
    export(&d, "PT0", 2);
    let mut host = Host::connect(port);
    let a = pattern(7, 64 * 1024);
    let b = pattern(99, 8192);
    assert_eq!(host.write(1, 10, &a), (0, 0));
    assert_eq!(host.write(2, 5, &b), (0, 0));
    // Past a slice's end: refused, the next slice untouched.
    let (st, _) = host.read(1, 4096, 1);
    assert_ne!(st, (0, 0), "a read past the slice's end succeeded");
    drop(host);

    // save_config, with the split and the passthru moved before their bases.
    let mut saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&s, &["save_config"]))).unwrap();
    assert!(saved.to_string().contains("bdev_split_create"), "{saved}");
    let bdev_sub = saved["subsystems"].as_array_mut().unwrap().iter_mut().find(|s| s["subsystem"] == "bdev").unwrap();
    let calls = bdev_sub["config"].as_array_mut().unwrap();
    let virt: Vec<Value> =
        calls.iter().filter(|c| c["method"] == "bdev_split_create" || c["method"] == "bdev_passthru_create").cloned().collect();
    assert_eq!(virt.len(), 3, "{calls:?}");
    calls.retain(|c| c["method"] != "bdev_split_create" && c["method"] != "bdev_passthru_create");
    for (i, v) in virt.into_iter().rev().enumerate() {
        calls.insert(i, v);
    }
    unexport(&d, 1);
    unexport(&d, 2);
    // The malloc data do not survive a restart: read them now through the bases.
    ok_stdout("delete passthru", &spdk_rpc(&s, &["bdev_passthru_delete", "PT0"]));
    ok_stdout("delete split M1", &spdk_rpc(&s, &["bdev_split_delete", "M1"]));
    ok_stdout("delete split M0", &spdk_rpc(&s, &["bdev_split_delete", "M0"]));
    assert_eq!(bdev(&d, "M0")["claimed"], false);
    assert!(d.call("bdev_get_bdevs", Some(json!({"name": "M0p1"}))).is_err());
    export(&d, "M0", 1);
    export(&d, "M1", 2);
    let mut host = Host::connect(port);
    let (st, got) = host.read(1, 4096 + 10, (a.len() / BS) as u32);
    assert_eq!((st, got == a), ((0, 0), true), "slice 1's data at its offset of the base");
    let (st, got) = host.read(2, 3 * 2048 + 5, (b.len() / BS) as u32);
    assert_eq!((st, got == b), ((0, 0), true), "the passthru's data at slice 3 of M1");
    drop(host);
    drop(d);

    let d = Daemon::start(DaemonOpts { config: Some(saved), ..Default::default() });
    for n in ["M0p0", "M0p3", "M1p0", "M1p3", "PT0"] {
        assert!(d.call("bdev_get_bdevs", Some(json!({"name": n}))).is_ok(), "{n} not made again from the saved config");
    }
    assert_eq!(bdev(&d, "M1p2")["num_blocks"], 2048);
}

/// The error bdev fails, corrupts, holds and lets through what it is told
/// to, counting down `num`, and `clear` disarms it.
#[test]
fn error_bdev_injects_what_it_is_told() {
    let port = free_port();
    let d = Daemon::start(DaemonOpts { config: Some(config(port, json!([malloc("M0", 4)]))), ..Default::default() });
    let s = d.socket.clone();
    let name = ok_stdout("create", &spdk_rpc(&s, &["bdev_error_create", "M0"]));
    assert_eq!(name.trim(), "EE_M0");
    assert_eq!(bdev(&d, "EE_M0")["driver_specific"]["error_disk"]["base_bdev"], "M0");
    assert_eq!(bdev(&d, "M0")["claimed"], true);
    export(&d, "EE_M0", 1);
    let mut host = Host::connect(port);
    let a = pattern(3, 4096);
    assert_eq!(host.write(1, 0, &a), (0, 0));

    // Two writes fail, the third succeeds.
    ok_stdout("inject write", &spdk_rpc(&s, &["bdev_error_inject_error", "EE_M0", "write", "failure", "-n", "2"]));
    let b = pattern(50, 4096);
    assert_ne!(host.write(1, 0, &b), (0, 0));
    assert_ne!(host.write(1, 0, &b), (0, 0));
    let (st, got) = host.read(1, 0, 8);
    assert_eq!((st, got == a), ((0, 0), true), "a failed write changed nothing");
    assert_eq!(host.write(1, 0, &b), (0, 0));

    // An NVMe status passed through as it is.
    ok_stdout(
        "inject nvme",
        &spdk_rpc(&s, &["bdev_error_inject_error", "EE_M0", "read", "nvme_failure", "--nvme-sct", "2", "--nvme-sc", "129"]),
    );
    assert_eq!(host.read(1, 0, 8).0, (2, 0x81));
    assert_eq!(host.read(1, 0, 8).0, (0, 0));

    // Corrupt reads: byte 100 XOR 0xff, the data on the disk unchanged.
    ok_stdout(
        "inject corrupt read",
        &spdk_rpc(&s, &["bdev_error_inject_error", "EE_M0", "read", "corrupt_data", "-o", "100", "-v", "255"]),
    );
    let (st, got) = host.read(1, 0, 8);
    assert_eq!(st, (0, 0));
    let mut want = b.clone();
    want[100] ^= 0xff;
    assert!(got == want, "a corrupted read differs only at byte 100");
    assert!(host.read(1, 0, 8).1 == b, "the next read is clean");
    // Corrupt writes: what lands differs at byte 7 of the request.
    ok_stdout(
        "inject corrupt write",
        &spdk_rpc(&s, &["bdev_error_inject_error", "EE_M0", "write", "corrupt_data", "--corrupt-offset", "7", "--corrupt-value", "1"]),
    );
    assert_eq!(host.write(1, 8, &a), (0, 0));
    let mut want = a.clone();
    want[7] ^= 1;
    assert!(host.read(1, 8, 8).1 == want, "the written data were corrupted at byte 7");

    // `all` arms every type; `clear` disarms them before they fire.
    // (pollux-rpc, in rpc.py's form.)
    ok_stdout("inject all", &pollux_rpc(&s, &["bdev_error_inject_error", "EE_M0", "all", "failure", "-n", "5"]));
    ok_stdout("clear", &pollux_rpc(&s, &["bdev_error_inject_error", "EE_M0", "clear", "failure"]));
    assert_eq!(host.read(1, 0, 8).0, (0, 0));

    // Refusals as SPDK's.
    assert!(d.call("bdev_error_inject_error", Some(json!({"name": "EE_M0", "io_type": "read", "error_type": "corrupt_data"}))).is_err());
    assert!(d.call("bdev_error_inject_error", Some(json!({"name": "EE_M0", "io_type": "read", "error_type": "nvme_failure"}))).is_err());
    assert!(d.call("bdev_error_inject_error", Some(json!({"name": "M0", "io_type": "read", "error_type": "failure"}))).is_err());
    assert_eq!(code(d.call("bdev_error_create", Some(json!({"base_name": "M0"}))).unwrap_err()), -libc::EEXIST);

    // Pending: the read is held until resumed, then answers with the data.
    // The rule counts down when it takes the read: then the read is held.
    ok_stdout("inject pending", &spdk_rpc(&s, &["bdev_error_inject_error", "EE_M0", "read", "pending"]));
    let reader = std::thread::spawn(move || host.read(1, 0, 8));
    wait_until("the read is held", std::time::Duration::from_secs(30), || {
        bdev(&d, "EE_M0")["driver_specific"]["error_disk"]["rules"]["read"]["num"] == 0
    });
    assert!(!reader.is_finished(), "a held read answered");
    ok_stdout("resume", &spdk_rpc(&s, &["bdev_error_resume_pending", "EE_M0"]));
    let (st, data) = reader.join().unwrap();
    assert!(st == (0, 0) && data == b, "the held read, resumed: {st:?}");
    unexport(&d, 1);
    ok_stdout("delete", &spdk_rpc(&s, &["bdev_error_delete", "EE_M0"]));
    assert_eq!(bdev(&d, "M0")["claimed"], false);
}

/// QoS: pollux-perf (through its NVMe/TCP host) and another NVMe/TCP host
/// read from one bdev at once; with 5,000 I/Os per second allowed, the
/// two together get that within 5% over 10 s; with 20 MiB/s, the same in
/// bytes; removing the limit gives the speed back. The limits are shown in
/// `assigned_rate_limits` and written by `save_config`.
#[test]
fn qos_limits_hold_across_every_user_of_a_bdev() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    let port = free_port();
    let d =
        Daemon::start(DaemonOpts { config: Some(config(port, json!([malloc("M0", 64)]))), cpumask: "0x3".into(), ..Default::default() });
    export(&d, "M0", 1);
    let s = d.socket.clone();
    // pollux-perf, reading through its own NVMe/TCP host.
    let dir = pollux_tests::TempDir::new("qos");
    let perf_cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": {"name": "N0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string(), "subnqn": NQN}},
    ]}]});
    let mut perf = pollux_tests::perf_command(
        &dir,
        &perf_cfg,
        &["-b", "N0n1", "-q", "16", "-o", "4096", "-w", "randread", "-t", "120", "-m", "0x1", "--json"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // The other host: one read at a time, counted.
    let stop = Arc::new(AtomicBool::new(false));
    let ours = Arc::new(AtomicU64::new(0));
    let (stop2, ours2) = (stop.clone(), ours.clone());
    let reader = std::thread::spawn(move || {
        let mut host = Host::connect(port);
        let mut lba = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let (st, _) = host.read(1, lba % 100_000, 8);
            assert_eq!(st, (0, 0));
            ours2.fetch_add(1, Ordering::Relaxed);
            lba += 8;
        }
    });
    let stats = || {
        let v = d.call("bdev_get_iostat", Some(json!({"name": "M0"}))).unwrap();
        (v["bdevs"][0]["num_read_ops"].as_u64().unwrap(), v["bdevs"][0]["bytes_read"].as_u64().unwrap())
    };
    wait_until("perf reading", Duration::from_secs(30), || stats().0 > 10_000 + ours.load(Ordering::Relaxed));
    // A rate over `secs` seconds: (reads, bytes, our reads) per second.
    let measure = |secs: f64| {
        let (o0, (r0, b0), t0) = (ours.load(Ordering::Relaxed), stats(), Instant::now());
        while t0.elapsed() < Duration::from_secs_f64(secs) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let ((r1, b1), o1, dt) = (stats(), ours.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
        ((r1 - r0) as f64 / dt, (b1 - b0) as f64 / dt, (o1 - o0) as f64 / dt)
    };
    let (free_iops, _, _) = measure(2.0);
    ok_stdout("limit iops", &spdk_rpc(&s, &["bdev_set_qos_limit", "M0", "--rw-ios-per-sec", "5000"]));
    assert_eq!(bdev(&d, "M0")["assigned_rate_limits"]["rw_ios_per_sec"], 5000);
    measure(0.5); // the queues settle
    let (iops, _, our) = measure(10.0);
    assert!((iops - 5000.0).abs() <= 250.0, "{iops:.0} I/Os per second with 5000 allowed (unlimited: {free_iops:.0})");
    assert!(our > 10.0 && our < iops - 10.0, "both hosts got I/O: ours {our:.0}/s of {iops:.0}/s");
    // 20 MiB/s of 4 KiB reads, no I/O limit.
    ok_stdout("limit bytes", &spdk_rpc(&s, &["bdev_set_qos_limit", "M0", "--rw-ios-per-sec", "0", "--rw-mbytes-per-sec", "20"]));
    let saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&s, &["save_config"]))).unwrap();
    let call = saved["subsystems"].as_array().unwrap().iter().find(|x| x["subsystem"] == "bdev").unwrap()["config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_set_qos_limit")
        .cloned()
        .expect("bdev_set_qos_limit in save_config");
    assert_eq!(
        call["params"],
        json!({"name": "M0", "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 20, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0})
    );
    measure(0.5);
    let (_, bps, _) = measure(10.0);
    let want = 20.0 * 1048576.0;
    assert!((bps - want).abs() <= want * 0.05, "{:.2} MiB/s with 20 allowed", bps / 1048576.0);
    // Removed: full speed again.
    ok_stdout("unlimit", &spdk_rpc(&s, &["bdev_set_qos_limit", "M0", "--rw-mbytes-per-sec", "0"]));
    assert_eq!(
        bdev(&d, "M0")["assigned_rate_limits"],
        json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0})
    );
    measure(0.3);
    let (again, _, _) = measure(2.0);
    assert!(again > 3.0 * 5120.0, "{again:.0} I/Os per second without a limit (before: {free_iops:.0})");
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let _ = perf.kill();
    let _ = perf.wait();
}

/// AES-XTS through `bdev_crypto`, checked by another implementation
/// (Python's `cryptography`, on OpenSSL): what Pollux writes decrypts there
/// to the plaintext with the LBA as tweak, and what it encrypts reads back
/// here as the plaintext. Keys through `spdk-rpc`; refusals as SPDK's.
#[test]
fn crypto_bdev_is_aes_xts_with_the_lba_as_tweak() {
    let dir = pollux_tests::TempDir::new("crypto");
    let img = dir.join("base.img");
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    let (k1, k2) = (
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "f0e0d0c0b0a090807060504030201000fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0",
    );
    // Before Pollux: a region encrypted by OpenSSL (blocks 8192.., 512 bytes each).
    let theirs: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8).collect();
    std::fs::write(dir.join("theirs.bin"), &theirs).unwrap();
    let py = |script: &str| {
        let out = std::process::Command::new("python3").arg("-c").arg(script).output().expect("python3");
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    };
    let xts = format!(
        "from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
         K=bytes.fromhex('{k1}')+bytes.fromhex('{k2}')\n\
         def unit(b, lba, enc):\n    c=Cipher(algorithms.AES(K), modes.XTS(lba.to_bytes(16,'little')))\n    o=c.encryptor() if enc else c.decryptor()\n    return o.update(b)+o.finalize()\n\
         def run(path, lba, data, enc):\n    return b''.join(unit(data[i:i+512], lba+i//512, enc) for i in range(0, len(data), 512))\n"
    );
    py(&format!(
        "{xts}t=open('{}','rb').read()\nf=open('{}','r+b'); f.seek(8192*512); f.write(run(None, 8192, t, True)); f.close()",
        dir.join("theirs.bin").display(),
        img.display()
    ));
    let port = free_port();
    let d = Daemon::start(DaemonOpts {
        config: Some(config(port, json!([{"method": "bdev_aio_create", "params": {"name": "A0", "filename": img, "block_size": 512}}]))),
        ..Default::default()
    });
    let s = d.socket.clone();
    // SPDK's refusals: identical keys, keys of different sizes, no key2.
    assert!(!spdk_rpc(&s, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", k1, "-e", k1, "-n", "bad"]).status.success());
    assert!(!spdk_rpc(&s, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", k1, "-e", &k2[..32], "-n", "bad"]).status.success());
    assert!(!spdk_rpc(&s, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", k1, "-n", "bad"]).status.success());
    // Keys that are not hex: a character of two bytes where a digit pair
    // starts (this panicked the main reactor: the text was sliced two
    // bytes at a time), and signs (`from_str_radix` took `+f`).
    let accented = format!("a\u{e9}{}", "0".repeat(29));
    for bad in [accented.as_str(), &"+f".repeat(16)] {
        assert_eq!(bad.len(), 32);
        let out = spdk_rpc(&s, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", bad, "-e", k2, "-n", "bad"]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stdout).contains("key is not hex"), "{out:?}");
    }
    ok_stdout("key", &spdk_rpc(&s, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", k1, "-e", k2, "-n", "key0"]));
    let keys: Value = serde_json::from_str(&ok_stdout("keys", &spdk_rpc(&s, &["accel_crypto_keys_get"]))).unwrap();
    assert_eq!(keys, json!([{"name": "key0", "cipher": "AES_XTS", "key": k1, "key2": k2}]));
    assert!(!d.log().contains(k1) && !d.log().contains(k2), "a key in the log");
    ok_stdout("crypto", &spdk_rpc(&s, &["bdev_crypto_create", "A0", "C0", "-n", "key0"]));
    let c0 = bdev(&d, "C0");
    assert_eq!(c0["driver_specific"]["crypto"], json!({"base_bdev_name": "A0", "name": "C0", "key_name": "key0"}), "{c0}");
    // SPDK's UUID: name-based (SHA-1) on the base's, in SPDK's namespace,
    // computed here by Python's uuid5. It was random, new at each start,
    // so a namespace's NGUID and its reservation file changed with it.
    let base_uuid = bdev(&d, "A0")["uuid"].as_str().unwrap().to_string();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import hashlib, uuid\nh = hashlib.sha1(uuid.UUID('078e3cf7-f4b4-4545-b2c3-d40045a64ae2').bytes + uuid.UUID('{base_uuid}').bytes)\n\
             print(uuid.UUID(bytes=h.digest()[:16], version=5))"
        ))
        .output()
        .expect("python3");
    assert_eq!(c0["uuid"].as_str().unwrap(), String::from_utf8_lossy(&out.stdout).trim(), "{c0}");
    assert!(!spdk_rpc(&s, &["accel_crypto_key_destroy", "-n", "key0"]).status.success(), "a key in use was destroyed");
    export(&d, "C0", 1);
    let mut host = Host::connect(port);
    // OpenSSL's ciphertext reads back here as the plaintext.
    let (st, got) = host.read(1, 8192, (theirs.len() / BS) as u32);
    assert!(st == (0, 0) && got == theirs, "OpenSSL's ciphertext decrypted by bdev_crypto");
    // Pollux's ciphertext, 64 KiB at block 100.
    let ours = pattern(11, 64 * 1024);
    assert_eq!(host.write(1, 100, &ours), (0, 0));
    let (_, back) = host.read(1, 100, 128);
    assert!(back == ours);
    drop(host);
    let saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&s, &["save_config"]))).unwrap();
    let text = saved.to_string();
    assert!(text.contains("accel_crypto_key_create") && text.contains("\"bdev_crypto_create\""), "{saved}");
    unexport(&d, 1);
    // The base hot-removed and back (SPDK keeps the crypto bdev's
    // parameters until bdev_crypto_delete): the crypto bdev comes back on
    // it, with its data. It was forgotten with the base.
    let there = |name: &str| d.call("bdev_get_bdevs", Some(json!({"name": name}))).is_ok();
    ok_stdout("base deleted", &spdk_rpc(&s, &["bdev_aio_delete", "A0"]));
    wait_until("C0 gone with its base", std::time::Duration::from_secs(30), || !there("C0"));
    // Waiting for its base, it is still in save_config (it was left out:
    // a config saved now lost it).
    let saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&s, &["save_config"]))).unwrap();
    let bdevs = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone();
    assert!(
        bdevs.as_array().unwrap().iter().any(
            |c| c["method"] == "bdev_crypto_create" && c["params"] == json!({"base_bdev_name": "A0", "name": "C0", "key_name": "key0"})
        ),
        "{bdevs}"
    );
    // Its key stays in use: destroyed (and made again under its name with
    // other material), C0 would come back unable to open, or wrongly keyed.
    assert!(!spdk_rpc(&s, &["accel_crypto_key_destroy", "-n", "key0"]).status.success(), "the waiting bdev's key was destroyed");
    ok_stdout("base back", &spdk_rpc(&s, &["bdev_aio_create", img.to_str().unwrap(), "A0", "512"]));
    wait_until("C0 back on its base", std::time::Duration::from_secs(30), || there("C0"));
    export(&d, "C0", 1);
    let mut host = Host::connect(port);
    let (st, back) = host.read(1, 100, 128);
    assert!(st == (0, 0) && back == ours, "the crypto bdev back on its base reads what it wrote");
    drop(host);
    unexport(&d, 1);
    ok_stdout("delete", &spdk_rpc(&s, &["bdev_crypto_delete", "C0"]));
    ok_stdout("destroy key", &spdk_rpc(&s, &["accel_crypto_key_destroy", "-n", "key0"]));
    drop(d);
    let raw = std::fs::read(&img).unwrap();
    assert!(raw[100 * 512..100 * 512 + ours.len()] != ours[..], "plaintext on the base");
    std::fs::write(dir.join("ours.bin"), &ours).unwrap();
    py(&format!(
        "{xts}f=open('{}','rb'); f.seek(100*512); c=f.read({}); f.close()\nassert run(None, 100, c, False) == open('{}','rb').read(), 'OpenSSL does not decrypt Pollux ciphertext to the plaintext'",
        img.display(),
        ours.len(),
        dir.join("ours.bin").display()
    ));
}

/// Every data service's bdevs, keys and limits written by `save_config`
/// (through SPDK's client) make the same again: a second daemon started
/// from the first one's config saves the same config.
#[test]
fn data_services_round_trip_through_save_config() {
    let port = free_port();
    let mut bdevs: Vec<Value> = (0..6).map(|i| malloc(&format!("M{i}"), 8)).collect();
    bdevs.extend([
        json!({"method": "bdev_split_create", "params": {"base_bdev": "M0", "split_count": 2}}),
        json!({"method": "bdev_passthru_create", "params": {"base_bdev_name": "M1", "name": "P1"}}),
        json!({"method": "bdev_error_create", "params": {"base_name": "M2"}}),
        json!({"method": "bdev_raid_create", "params": {"name": "R0", "raid_level": "raid0", "strip_size_kb": 64, "base_bdevs": ["M3", "M4"]}}),
        json!({"method": "bdev_crypto_create", "params": {"base_bdev_name": "M5", "name": "C0", "key_name": "k0"}}),
        json!({"method": "bdev_set_qos_limit", "params": {"name": "P1", "rw_ios_per_sec": 2000}}),
    ]);
    let mut cfg = config(port, json!(bdevs));
    cfg["subsystems"].as_array_mut().unwrap().insert(
        0,
        json!({"subsystem": "accel", "config": [
            {"method": "accel_crypto_key_create", "params": {"name": "k0", "cipher": "AES_XTS", "key": "0123456789abcdef0123456789abcdef", "key2": "fedcba9876543210fedcba9876543210"}},
        ]}),
    );
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    let save = |d: &Daemon| -> Value { serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&d.socket, &["save_config"]))).unwrap() };
    let first = save(&d);
    drop(d);
    let d = Daemon::start(DaemonOpts { config: Some(first.clone()), ..Default::default() });
    for n in ["M0p1", "P1", "EE_M2", "R0", "C0"] {
        assert!(d.call("bdev_get_bdevs", Some(json!({"name": n}))).is_ok(), "{n} not made from the saved config");
    }
    assert_eq!(bdev(&d, "P1")["assigned_rate_limits"]["rw_ios_per_sec"], 2000);
    let second = save(&d);
    let sub = |v: &Value, name: &str| v["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == name).cloned();
    for s in ["accel", "bdev"] {
        assert_eq!(sub(&second, s), sub(&first, s), "subsystem {s} after a round trip");
    }
}
