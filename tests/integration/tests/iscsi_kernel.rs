//! The Linux kernel's iSCSI initiator (open-iscsi + iscsi_tcp) against
//! Pollux, in the test guest: discovery, login, mkfs.ext4, mount, files
//! written, unmount, logout, login again, files read back and checked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pollux_tests::{TempDir, iscsi_host, tool};
use pollux_testvm::{VmConfig, in_guest};

fn sh(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// The block device of the Pollux LUN (`/dev/sdX`), once the kernel made it.
fn pollux_disk() -> String {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if let Ok(rd) = std::fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let vendor = std::fs::read_to_string(e.path().join("device/vendor")).unwrap_or_default();
                if name.starts_with("sd") && vendor.trim() == "POLLUX" {
                    let dev = format!("/dev/{name}");
                    if std::path::Path::new(&dev).exists() {
                        return dev;
                    }
                    // No udev in the guest: make the node from sysfs.
                    let mm = std::fs::read_to_string(e.path().join("dev")).unwrap();
                    let (ma, mi) = mm.trim().split_once(':').unwrap();
                    sh("mknod", Command::new("mknod").args([&dev, "b", ma, mi]));
                    return dev;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let devices = std::fs::read_dir("/sys/class/scsi_device")
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    let dmesg = Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let tail: Vec<&str> = dmesg.lines().rev().take(30).collect();
    panic!(
        "no POLLUX disk appeared in /sys/block; SCSI devices {devices:?}; dmesg:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

struct Iscsid(Child);

impl Drop for Iscsid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn linux_initiator_keeps_an_ext4_filesystem_across_logins() {
    in_guest(&VmConfig::new().memory_mib(1536).timeout(Duration::from_secs(420)), || {
        for m in ["crc32c_generic", "iscsi_tcp", "sd_mod", "ext4"] {
            sh(m, Command::new("modprobe").arg(m));
        }
        let port = 3260;
        let d = iscsi_host::start("0x3", iscsi_host::config(port, "kernel", 128, None));
        let iqn = iscsi_host::target_iqn("kernel");
        std::fs::create_dir_all("/run/lock/iscsi").unwrap();
        let iscsid = tool("iscsid", "open-iscsi: apt-get install open-iscsi");
        let _daemon = Iscsid(Command::new(iscsid).arg("-f").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start iscsid"));
        let adm = tool("iscsiadm", "open-iscsi: apt-get install open-iscsi");
        let portal = format!("127.0.0.1:{port}");
        // iscsiadm needs iscsid's control socket (abstract, so listed in
        // /proc/net/unix): wait for it to be listening (flag __SO_ACCEPTCON,
        // 00010000, in the fourth column).
        let listening = || {
            std::fs::read_to_string("/proc/net/unix").unwrap_or_default().lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 8 && f[3] == "00010000" && f[7].starts_with("@ISCSIADM_ABSTRACT_NAMESPACE")
            })
        };
        let t0 = Instant::now();
        while !listening() {
            assert!(t0.elapsed() < Duration::from_secs(60), "iscsid never listened");
            std::thread::yield_now();
        }
        let disc = sh("discovery", Command::new(&adm).args(["-m", "discovery", "-t", "st", "-p", &portal]));
        assert!(disc.contains(&iqn), "{disc}");
        let login = || sh("login", Command::new(&adm).args(["-m", "node", "-T", &iqn, "-p", &portal, "-l"]));
        let logout = || sh("logout", Command::new(&adm).args(["-m", "node", "-T", &iqn, "-p", &portal, "-u"]));

        login();
        let dev = pollux_disk();
        sh("mkfs.ext4", Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
        let mnt = TempDir::new("iscsi-mnt");
        let mp = mnt.path().to_str().unwrap().to_string();
        sh("mount", Command::new("mount").args([&dev, &mp]));
        let mut expect = Vec::new();
        for (i, size) in [(0u32, 4096usize), (1, 1 << 20), (2, 7 << 20)] {
            let data: Vec<u8> = (0..size).map(|j| ((j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8).collect();
            let p = format!("{mp}/file{i}");
            std::fs::write(&p, &data).unwrap();
            expect.push(sh("sha256sum", Command::new("sha256sum").arg(&p)));
        }
        sh("sync", &mut Command::new("sync"));
        sh("umount", Command::new("umount").arg(&mp));
        logout();

        // Log in again: a new session, the same files.
        login();
        let dev = pollux_disk();
        sh("fsck", Command::new("e2fsck").args(["-f", "-n", &dev]));
        sh("mount again", Command::new("mount").args([&dev, &mp]));
        for (i, want) in expect.iter().enumerate() {
            let got = sh("sha256sum", Command::new("sha256sum").arg(format!("{mp}/file{i}")));
            assert_eq!(&got, want, "file{i} changed across logout/login");
        }
        sh("umount", Command::new("umount").arg(&mp));
        logout();
        let log = d.log();
        assert!(!log.contains("panicked"), "{log}");
    });
}
