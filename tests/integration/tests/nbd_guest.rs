//! Bdevs as the Linux kernel's NBD block devices, in the test guest
//! (SPDK's `nbd_start_disk`, `nbd_stop_disk`, `nbd_get_disks`): a device
//! named and one picked, the kernel's view of their size and block size as
//! soon as the start answers, data written and read back with `O_DIRECT`,
//! a discard, fio's verified random writes at queue depth 32, an ext4 file
//! system kept by the bdev across a stop and a start, refusals (a device
//! in use, a bad path, an unknown bdev), `save_config`, a bdev deleted
//! under its device, one resized under it, and a daemon that exits with a
//! device running (the device is released).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pollux_tests::{Daemon, DaemonOpts, fio_verify, ok_stdout, pollux_rpc, tool, wait_until};
use pollux_testvm::{VmConfig, in_guest};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    ok_stdout(&format!("{cmd} {}", args.join(" ")), &out)
}

fn config() -> Value {
    json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}},
        {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 8192, "block_size": 4096}},
    ]}]})
}

fn start(d: &Daemon, bdev: &str, dev: Option<&str>) -> Result<Value, pollux_core::rpc::ClientError> {
    let mut p = json!({"bdev_name": bdev});
    if let Some(dev) = dev {
        p["nbd_device"] = json!(dev);
    }
    d.call("nbd_start_disk", Some(p))
}

fn code(r: Result<Value, pollux_core::rpc::ClientError>) -> i64 {
    match r {
        Err(pollux_core::rpc::ClientError::Rpc(e)) => e.code as i64,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

fn attached(n: u32) -> bool {
    Path::new(&format!("/sys/block/nbd{n}/pid")).exists()
}

fn disks(d: &Daemon) -> Vec<(String, String)> {
    let v = d.call("nbd_get_disks", None).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| (x["nbd_device"].as_str().unwrap().to_string(), x["bdev_name"].as_str().unwrap().to_string()))
        .collect()
}

/// Bytes that differ at every offset (a seeded generator).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn bdevs_as_kernel_block_devices() {
    let vm = VmConfig::new().controllers(0).memory_mib(1024).timeout(Duration::from_secs(600));
    in_guest(&vm, || {
        tool("mkfs.ext4", "e2fsprogs, to put a file system on the device");
        tool("blkdiscard", "util-linux, to discard through the device");
        tool("fio", "fio, a verified workload with many requests at once");
        for m in ["crc32c_generic", "ext4"] {
            run("modprobe", &[m]);
        }
        run("modprobe", &["nbd", "nbds_max=4"]);
        let d = Daemon::start(DaemonOpts { config: Some(config()), ..Default::default() });

        // A device named, and one picked: the kernel shows them at once.
        assert_eq!(start(&d, "Malloc0", Some("/dev/nbd0")).unwrap(), json!("/dev/nbd0"));
        assert_eq!(run("blockdev", &["--getsize64", "/dev/nbd0"]).trim(), (64 * MIB).to_string());
        assert_eq!(run("blockdev", &["--getss", "/dev/nbd0"]).trim(), "512");
        // The command-line client prints the device it got, as rpc.py does
        // (SPDK's own client is tested against these methods on the host:
        // spdk_client.rs).
        let out = ok_stdout("pollux-rpc nbd_start_disk", &pollux_rpc(&d.socket, &["nbd_start_disk", "Malloc1"]));
        assert_eq!(out.trim(), "/dev/nbd1");
        assert_eq!(run("blockdev", &["--getsize64", "/dev/nbd1"]).trim(), (32 * MIB).to_string());
        assert_eq!(run("blockdev", &["--getss", "/dev/nbd1"]).trim(), "4096");
        assert!(attached(0) && attached(1));

        // Refusals.
        assert_eq!(code(start(&d, "Malloc1", Some("/dev/nbd0"))), -(libc::EBUSY as i64));
        assert_eq!(code(start(&d, "Malloc1", Some("/dev/sda"))), -(libc::ENODEV as i64));
        assert_eq!(code(start(&d, "Malloc1", Some("/dev/nbd01"))), -(libc::ENODEV as i64));
        assert!(start(&d, "NoSuchBdev", Some("/dev/nbd2")).is_err());
        assert!(!attached(2), "a refused start left /dev/nbd2 attached");
        assert_eq!(disks(&d), vec![("/dev/nbd0".into(), "Malloc0".into()), ("/dev/nbd1".into(), "Malloc1".into())]);
        let one: Value =
            serde_json::from_str(&ok_stdout("pollux-rpc", &pollux_rpc(&d.socket, &["nbd_get_disks", "-n", "/dev/nbd1"]))).unwrap();
        assert_eq!(one, json!([{"nbd_device": "/dev/nbd1", "bdev_name": "Malloc1"}]));
        assert_eq!(code(d.call("nbd_get_disks", Some(json!({"nbd_device": "/dev/nbd3"})))), -(libc::ENODEV as i64));

        // Data through the kernel, past its page cache.
        let dir = std::env::temp_dir().join("nbd-guest");
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let data = pattern(6 * MIB, 7);
        std::fs::write(&src, &data).unwrap();
        let s = src.to_str().unwrap();
        run("dd", &[&format!("if={s}"), "of=/dev/nbd1", "bs=1M", "oflag=direct", "status=none"]);
        let back = dir.join("back");
        let b = back.to_str().unwrap();
        run("dd", &["if=/dev/nbd1", &format!("of={b}"), "bs=1M", "count=6", "iflag=direct", "status=none"]);
        assert!(std::fs::read(&back).unwrap() == data, "data read back through /dev/nbd1 differs");
        // A discard of the second MiB reads back as zeroes (malloc's unmap).
        run("blkdiscard", &["-o", &MIB.to_string(), "-l", &MIB.to_string(), "/dev/nbd1"]);
        run("dd", &["if=/dev/nbd1", &format!("of={b}"), "bs=1M", "count=3", "iflag=direct", "status=none"]);
        let got = std::fs::read(&back).unwrap();
        assert!(got[..MIB] == data[..MIB] && got[MIB..2 * MIB].iter().all(|&x| x == 0) && got[2 * MIB..] == data[2 * MIB..3 * MIB]);

        // Many requests at once, answered out of order, verified.
        fio_verify("nbd", "/dev/nbd1", &["--rw=randwrite", "--bsrange=4k-128k", "--iodepth=32", "--size=16M"], 16 << 20);

        // A file system; the bdev keeps it across a stop and a start.
        run("mkfs.ext4", &["-q", "-F", "/dev/nbd0"]);
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let m = mnt.to_str().unwrap();
        run("mount", &["/dev/nbd0", m]);
        let file = pattern(3 * MIB + 123, 9);
        std::fs::write(mnt.join("f"), &file).unwrap();
        run("umount", &[m]);

        // What SPDK's `save_config` asks of the nbd subsystem.
        let nbd = d.call("framework_get_config", Some(json!({"name": "nbd"}))).unwrap();
        assert_eq!(
            nbd,
            json!([
                {"method": "nbd_start_disk", "params": {"nbd_device": "/dev/nbd0", "bdev_name": "Malloc0"}},
                {"method": "nbd_start_disk", "params": {"nbd_device": "/dev/nbd1", "bdev_name": "Malloc1"}},
            ])
        );

        let stopped = pollux_rpc(&d.socket, &["nbd_stop_disk", "/dev/nbd0"]);
        assert!(stopped.status.success(), "pollux-rpc nbd_stop_disk: {stopped:?}; log:\n{}", d.log());
        assert!(!attached(0), "/dev/nbd0 still attached after the stop answered");
        assert_eq!(run("blockdev", &["--getsize64", "/dev/nbd0"]).trim(), "0");
        assert_eq!(disks(&d), vec![("/dev/nbd1".into(), "Malloc1".into())]);
        assert_eq!(code(d.call("nbd_stop_disk", Some(json!({"nbd_device": "/dev/nbd0"})))), -(libc::ENODEV as i64));
        let out = ok_stdout("pollux-rpc nbd_start_disk", &pollux_rpc(&d.socket, &["nbd_start_disk", "Malloc0", "/dev/nbd0"]));
        assert_eq!(out.trim(), "/dev/nbd0");
        run("mount", &["/dev/nbd0", m]);
        assert!(std::fs::read(mnt.join("f")).unwrap() == file, "the file differs after a stop and a start");
        run("umount", &[m]);

        // The bdev deleted under its device: the device ends, the
        // deletion completes.
        d.call("bdev_malloc_delete", Some(json!({"name": "Malloc1"}))).unwrap();
        wait_until("/dev/nbd1 to leave the list", Duration::from_secs(30), || disks(&d).len() == 1);
        wait_until("/dev/nbd1 to be released", Duration::from_secs(30), || !attached(1));
        assert_eq!(disks(&d), vec![("/dev/nbd0".into(), "Malloc0".into())]);

        // A bdev that grows grows its device.
        d.call("bdev_null_create", Some(json!({"name": "Null0", "num_blocks": 32768, "block_size": 512}))).unwrap();
        assert_eq!(start(&d, "Null0", Some("/dev/nbd2")).unwrap(), json!("/dev/nbd2"));
        assert_eq!(run("blockdev", &["--getsize64", "/dev/nbd2"]).trim(), (16 * MIB).to_string());
        d.call("bdev_null_resize", Some(json!({"name": "Null0", "new_size": 48}))).unwrap();
        wait_until("/dev/nbd2 to grow", Duration::from_secs(30), || {
            run("blockdev", &["--getsize64", "/dev/nbd2"]).trim() == (48 * MIB).to_string()
        });
        run("dd", &["if=/dev/nbd2", "of=/dev/null", "bs=1M", "skip=47", "count=1", "iflag=direct", "status=none"]);
        assert_eq!(d.call("nbd_stop_disk", Some(json!({"nbd_device": "/dev/nbd2"}))).unwrap(), json!(true));

        // The daemon exits with /dev/nbd0 running, and lets it go.
        let (st, log) = d.stop_with_log();
        assert!(st.success(), "pollux-tgt ended with {st}:\n{log}");
        assert!(!attached(0), "/dev/nbd0 still attached after the daemon exited");
    });
}
