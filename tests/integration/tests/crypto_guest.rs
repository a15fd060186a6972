//! `bdev_crypto` against the Linux kernel's dm-crypt, in the test guest: a
//! volume written through Pollux's crypto bdev (exported over NVMe/TCP to
//! the kernel's host) reads back as the plaintext through `cryptsetup open
//! --type plain --cipher aes-xts-plain64` on the raw device with the same
//! key; what dm-crypt writes reads back as the plaintext through Pollux.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use pollux_tests::{Daemon, DaemonOpts, ok_stdout, tool};
use pollux_testvm::{VmConfig, in_guest};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:crypto";
const SERIAL: &str = "POLLUXCRYPT0001";
const KEY1: &str = "8c6d5f1e2a3b4c5d6e7f8091a2b3c4d5";
const KEY2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const MIB: usize = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    ok_stdout(&format!("{cmd} {}", args.join(" ")), &out)
}

fn start(base: &str) -> Daemon {
    Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "accel", "config": [
                {"method": "accel_crypto_key_create", "params": {"name": "k", "cipher": "AES_XTS", "key": KEY1, "key2": KEY2}},
            ]},
            {"subsystem": "bdev", "config": [
                {"method": "bdev_aio_create", "params": {"name": "A0", "filename": base, "block_size": 512}},
                {"method": "bdev_crypto_create", "params": {"base_bdev_name": "A0", "name": "C0", "key_name": "k"}},
            ]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "serial_number": SERIAL}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "C0", "nsid": 1}}},
            ]},
        ]})),
        cpumask: "0x3".into(),
        ..Default::default()
    })
}

/// The kernel's block device for the exported crypto bdev.
fn connect() -> String {
    run("nvme", &["connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "-n", NQN]);
    let t0 = Instant::now();
    let mut last = Value::Null;
    while t0.elapsed() < Duration::from_secs(60) {
        let list: Value = serde_json::from_str(&run("nvme", &["list", "-o", "json"])).unwrap_or(json!({}));
        if let Some(d) = list["Devices"].as_array().into_iter().flatten().find(|d| d["SerialNumber"] == SERIAL) {
            return d["DevicePath"].as_str().expect("DevicePath").to_string();
        }
        last = list;
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the namespace never appeared:\n{last}");
}

fn write_at(dev: &str, at: usize, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(dev).unwrap();
    // O_DIRECT wants an aligned buffer: copy into one.
    let mut buf = AlignedBuf::new(data.len());
    buf.as_mut().copy_from_slice(data);
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(buf.as_mut()).unwrap();
    f.sync_all().unwrap();
}

fn read_at(dev: &str, at: usize, len: usize) -> Vec<u8> {
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(dev).unwrap();
    let mut buf = AlignedBuf::new(len);
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.read_exact(buf.as_mut()).unwrap();
    buf.as_mut().to_vec()
}

/// A page-aligned buffer for O_DIRECT.
struct AlignedBuf(Vec<u8>, usize);

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + 4096];
        let off = (4096 - v.as_ptr() as usize % 4096) % 4096;
        AlignedBuf(v, off)
    }
    fn as_mut(&mut self) -> &mut [u8] {
        let n = self.0.len() - 4096;
        &mut self.0[self.1..self.1 + n]
    }
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect()
}

#[test]
fn crypto_bdev_and_dm_crypt_read_each_others_volumes() {
    let vm = VmConfig::new().controllers(1).namespaces(1).namespace_size(64 << 20).memory_mib(1024).timeout(Duration::from_secs(600));
    in_guest(&vm, || {
        tool("nvme", "nvme-cli, the kernel host's tool");
        tool("cryptsetup", "cryptsetup, dm-crypt's tool");
        for m in ["nvme", "nvme-tcp", "nvme-fabrics", "dm-crypt", "xts"] {
            run("modprobe", &[m]);
        }
        // QEMU's namespace, under the kernel's driver: the raw device.
        let t0 = Instant::now();
        while !std::path::Path::new("/dev/nvme0n1").exists() {
            assert!(t0.elapsed() < Duration::from_secs(30), "no /dev/nvme0n1");
            std::thread::sleep(Duration::from_millis(100));
        }
        let raw = "/dev/nvme0n1";
        let keyfile = "/tmp/crypto.key";
        let key: Vec<u8> =
            [KEY1, KEY2].concat().as_bytes().chunks(2).map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap()).collect();
        std::fs::write(keyfile, &key).unwrap();

        // Pollux encrypts, dm-crypt decrypts.
        let ours = pattern(1, 4 * MIB);
        let d = start(raw);
        let dev = connect();
        write_at(&dev, MIB, &ours);
        run("nvme", &["disconnect", "-n", NQN]);
        assert!(d.stop().success());
        assert!(read_at(raw, MIB, ours.len()) != ours, "plaintext on the raw device");
        let open = ["open", "--type", "plain", "--cipher", "aes-xts-plain64", "--key-size", "256", "--key-file", keyfile, raw, "pc"];
        run("cryptsetup", &open);
        assert!(read_at("/dev/mapper/pc", MIB, ours.len()) == ours, "dm-crypt does not read what bdev_crypto wrote");

        // dm-crypt encrypts, Pollux decrypts.
        let theirs = pattern(2, 3 * MIB);
        write_at("/dev/mapper/pc", 8 * MIB, &theirs);
        run("cryptsetup", &["close", "pc"]);
        let d = start(raw);
        let dev = connect();
        assert!(read_at(&dev, 8 * MIB, theirs.len()) == theirs, "bdev_crypto does not read what dm-crypt wrote");
        assert!(read_at(&dev, MIB, ours.len()) == ours, "bdev_crypto's own data after a restart");
        run("nvme", &["disconnect", "-n", NQN]);
        assert!(d.stop().success());
    });
}
