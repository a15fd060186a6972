//! `pollux-setup` against a real kernel: each test boots a test VM with QEMU's
//! emulated NVMe controllers behind an emulated IOMMU and runs the binary in it.
//! Set the VM up once with `cargo run --release -p pollux-testvm -- setup`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pollux_testvm::{VmConfig, in_guest};
use serde_json::Value;

const FIRST: &str = "0000:00:03.0";
const SECOND: &str = "0000:00:04.0";

fn two_controllers() -> VmConfig {
    VmConfig::new().controllers(2).namespace_size(64 << 20)
}

/// Runs pollux-setup with `args`, echoing its output into the test's output.
fn setup(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pollux-setup")).args(args).output().expect("run pollux-setup");
    println!(
        "$ pollux-setup {} -> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(script: &str) {
    let status = Command::new("/bin/sh").args(["-ec", script]).status().expect("run sh");
    assert!(status.success(), "`{script}` failed: {status}");
}

fn driver(bdf: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

fn iommu_group(bdf: &str) -> String {
    let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group")).expect("iommu_group");
    link.file_name().expect("group name").to_string_lossy().into_owned()
}

fn nr_hugepages() -> String {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").expect("nr_hugepages")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_lists_the_emulated_controllers() {
    in_guest(&two_controllers(), || {
        let out = setup(&["status", "--json"]);
        assert!(out.status.success());
        let status: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        assert_eq!(status["iommu"], true);
        let nvme = status["nvme"].as_array().expect("nvme array");
        assert_eq!(nvme.len(), 2, "{nvme:?}");
        for (c, (bdf, ns)) in nvme.iter().zip([(FIRST, "nvme0n1"), (SECOND, "nvme1n1")]) {
            assert_eq!(c["bdf"], bdf);
            assert_eq!(c["vendor"], "0x1b36");
            assert_eq!(c["device"], "0x0010");
            assert_eq!(c["model"], "QEMU NVMe Ctrl");
            assert_eq!(c["driver"], "nvme");
            assert_eq!(c["iommu_group"].to_string(), iommu_group(bdf));
            assert_eq!(c["namespaces"], serde_json::json!([ns]));
            assert_eq!(c["usage"], serde_json::json!([]));
        }
        let text = setup(&["status"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(FIRST) && text.contains(SECOND) && text.contains("QEMU NVMe Ctrl"), "{text}");
    });
}

#[test]
fn config_binds_to_vfio_and_reset_gives_them_back() {
    in_guest(&two_controllers(), || {
        let out = setup(&["config", "--hugemem", "64", "--user", "nobody"]);
        assert!(out.status.success());
        assert_eq!(nr_hugepages().trim(), "32");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(mounts.lines().any(|l| l.contains(" /dev/hugepages ") && l.contains("hugetlbfs")), "{mounts}");
        for bdf in [FIRST, SECOND] {
            assert_eq!(driver(bdf).as_deref(), Some("vfio-pci"), "{bdf}");
            let node = format!("/dev/vfio/{}", iommu_group(bdf));
            assert!(Path::new(&node).exists(), "{node} appeared");
            let meta = std::fs::metadata(&node).expect("group device");
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534, "{node} given to nobody");
        }
        assert!(!Path::new("/sys/block/nvme0n1").exists());

        let out = setup(&["reset"]);
        assert!(out.status.success());
        for (bdf, ns) in [(FIRST, "nvme0n1"), (SECOND, "nvme1n1")] {
            assert_eq!(driver(bdf).as_deref(), Some("nvme"), "{bdf}");
            wait_for(&format!("/dev/{ns}"), || Path::new(&format!("/dev/{ns}")).exists());
        }
        // The block device works again.
        sh("dd if=/dev/nvme1n1 of=/dev/null bs=4096 count=16 2>/dev/null");
    });
}

#[test]
fn a_controller_with_a_mounted_filesystem_is_refused() {
    in_guest(&two_controllers(), || {
        sh("modprobe crc32c_generic; modprobe ext4; mkfs.ext4 -q /dev/nvme0n1; mkdir -p /tmp/m; \
            mount /dev/nvme0n1 /tmp/m; echo kept > /tmp/m/file");
        for extra in [&[][..], &["--force"][..]] {
            let args: Vec<&str> = ["config", "--hugemem", "16"].iter().copied().chain(extra.iter().copied()).collect();
            let out = setup(&args);
            assert!(!out.status.success(), "config {extra:?} must fail while a controller is mounted");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&format!("refused: {FIRST} is in use")), "{stderr}");
            assert!(stderr.contains("/dev/nvme0n1 is mounted on /tmp/m"), "{stderr}");
            assert_eq!(driver(FIRST).as_deref(), Some("nvme"));
            assert_eq!(driver(SECOND).as_deref(), Some("vfio-pci"), "the unused one is bound");
        }
        assert_eq!(std::fs::read_to_string("/tmp/m/file").expect("fs still there"), "kept\n");

        // Unmounted, the file system still holds data: only --force binds it.
        sh("umount /tmp/m");
        let out = setup(&["config", "--hugemem", "16", "--allow", FIRST]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("ext2/3/4 file system"));
        let out = setup(&["config", "--hugemem", "16", "--allow", FIRST, "--force"]);
        assert!(out.status.success());
        assert_eq!(driver(FIRST).as_deref(), Some("vfio-pci"));
    });
}

/// Everything `config`/`reset`/`cleanup` could change.
fn snapshot() -> String {
    let mut s = String::new();
    for bdf in [FIRST, SECOND] {
        let over = std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/driver_override")).expect("override");
        s += &format!("{bdf} driver={:?} override={}", driver(bdf), over.trim());
    }
    s += &format!(" nr_hugepages={}", nr_hugepages().trim());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    s += &format!(" hugetlbfs_mounts={}", mounts.lines().filter(|l| l.contains("hugetlbfs")).count());
    s += &format!(" vfio_pci_loaded={}", Path::new("/sys/module/vfio_pci").exists());
    s += &format!(" dev_vfio={:?}", std::fs::read_dir("/dev/vfio").map(|d| d.count()).ok());
    s += &format!(" hugepages_dir={}", Path::new("/dev/hugepages").exists());
    s
}

#[test]
fn dry_run_changes_nothing_and_non_root_is_refused() {
    in_guest(&two_controllers(), || {
        let before = snapshot();
        let out = setup(&["config", "--hugemem", "64", "--user", "nobody", "--dry-run"]);
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("would: bind {FIRST} (nvme) to vfio-pci")), "{stdout}");
        assert!(stdout.contains("would: reserve 32 2M hugepages"), "{stdout}");
        assert!(stdout.contains("would: mount hugetlbfs (pagesize=2M) on /dev/hugepages"), "{stdout}");
        assert!(setup(&["reset", "--dry-run"]).status.success());
        assert!(setup(&["cleanup", "--dry-run"]).status.success());
        assert_eq!(snapshot(), before);

        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_pollux-setup"))
            .args(["config", "--hugemem", "64"])
            .output()
            .expect("setpriv");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"), "{out:?}");
        assert_eq!(snapshot(), before);
    });
}

/// What the mount table cannot show (found in review, 2026-12-06): a
/// namespace mounted in another mount namespace, one a process has open,
/// and a controller a program drives through VFIO when `reset` comes.
#[test]
fn claimed_open_and_vfio_driven_controllers_are_left_alone() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    in_guest(&two_controllers(), || {
        sh("modprobe crc32c_generic; modprobe ext4; mkfs.ext4 -q /dev/nvme0n1; mkdir -p /tmp/elsewhere");
        // Mounted in a private mount namespace: invisible here.
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", "mount /dev/nvme0n1 /tmp/elsewhere && echo ready && exec sleep 3600"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains("/tmp/elsewhere"), "{mounts}");
        let open = std::fs::File::open("/dev/nvme1n1").expect("open nvme1n1");

        let out = setup(&["config", "--hugemem", "16", "--force"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("refused: {FIRST} is in use")), "{stderr}");
        assert!(stderr.contains("/dev/nvme0n1 is claimed exclusively"), "{stderr}");
        assert!(stderr.contains(&format!("refused: {SECOND} is in use")), "{stderr}");
        assert!(stderr.contains(&format!("/dev/nvme1n1 is open in process {}", std::process::id())), "{stderr}");
        assert_eq!(driver(FIRST).as_deref(), Some("nvme"));
        assert_eq!(driver(SECOND).as_deref(), Some("nvme"));

        holder.kill().expect("kill");
        holder.wait().expect("wait");
        drop(open);
        let out = setup(&["config", "--hugemem", "16", "--force"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(driver(FIRST).as_deref(), Some("vfio-pci"));
        assert_eq!(driver(SECOND).as_deref(), Some("vfio-pci"));

        // A program holding the first one's VFIO group.
        let group = std::fs::File::open(format!("/dev/vfio/{}", iommu_group(FIRST))).expect("open the group");
        let out = setup(&["reset"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("refused: {FIRST} is in use, not returning it")), "{stderr}");
        assert_eq!(driver(FIRST).as_deref(), Some("vfio-pci"));
        assert_eq!(driver(SECOND).as_deref(), Some("nvme"));
        drop(group);
        assert!(setup(&["reset"]).status.success());
        assert_eq!(driver(FIRST).as_deref(), Some("nvme"));

        // A partitioned namespace binds with --force (claiming its
        // partitions beside the whole disk refused it every time).
        // Its namespace's name is whatever the kernel gives it on return.
        let mut ns = String::new();
        wait_for("the first controller's namespace", || {
            let ctrl = format!("/sys/bus/pci/devices/{FIRST}/nvme");
            let found = std::fs::read_dir(&ctrl).into_iter().flatten().flatten().find_map(|c| {
                let name = format!("{}n1", c.file_name().to_string_lossy());
                Path::new(&format!("/dev/{name}")).exists().then_some(name)
            });
            found.map(|n| ns = n).is_some()
        });
        // An MBR with one Linux partition from sector 2048 (no sfdisk in
        // the guest), then the kernel told to read it.
        let mut mbr = [0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&8192u32.to_le_bytes());
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        {
            use std::io::Write;
            let mut disk = std::fs::OpenOptions::new().write(true).open(format!("/dev/{ns}")).expect("open the namespace");
            disk.write_all(&mbr).expect("write the MBR");
            disk.sync_all().expect("sync");
        }
        sh(&format!("blockdev --rereadpt /dev/{ns}"));
        wait_for("the partition", || Path::new(&format!("/sys/block/{ns}/{ns}p1")).exists());
        let out = setup(&["config", "--hugemem", "16", "--allow", FIRST]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("1 partition(s)"), "{out:?}");
        let out = setup(&["config", "--hugemem", "16", "--allow", FIRST, "--force"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(driver(FIRST).as_deref(), Some("vfio-pci"));
    });
}
