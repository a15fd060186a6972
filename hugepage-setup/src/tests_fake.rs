//! Scenario tests of status/config/reset/cleanup on the fake machine.

use std::os::unix::fs::symlink;

use super::Fake;
use crate::{Amount, Bdf, ConfigRequest, Error, Selection, Usage, cleanup, config, reset, status};

fn ext4_disk() -> Vec<u8> {
    let mut disk = vec![0u8; 4096];
    disk[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
    disk
}

fn request() -> ConfigRequest {
    ConfigRequest {
        hugepages: Some(Amount::MiB(64)),
        page_size_kb: 2048,
        node: None,
        devices: Selection::default(),
        user: None,
        dry_run: false,
        force: false,
        shrink: false,
    }
}

fn bdf(s: &str) -> Bdf {
    Bdf::parse(s).unwrap()
}

#[test]
fn status_lists_controllers_and_what_uses_them() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    fake.controller(1, &[]);
    fake.add_mount("40 22 259:0 / /data rw - ext4 /dev/nvme0n1 rw");
    let st = status(&fake.sys).unwrap();
    assert_eq!(st.nvme.len(), 2);
    let c = &st.nvme[0];
    assert_eq!(c.bdf.as_str(), a);
    assert_eq!(c.model.as_deref(), Some("QEMU NVMe Ctrl"));
    assert_eq!(c.driver.as_deref(), Some("nvme"));
    assert_eq!(c.iommu_group, Some(3));
    assert_eq!(c.namespaces, ["nvme0n1"]);
    assert_eq!(c.usage, [Usage::Mounted { device: "nvme0n1".into(), mount_point: "/data".into() }]);
    assert!(st.nvme[1].usage.is_empty());
    assert!(st.iommu && !st.vfio_pci_loaded);
    assert_eq!(st.hugepages.len(), 4, "2 sizes, global and node 0: {:?}", st.hugepages);
    let text = st.render();
    assert!(text.contains("0000:00:03.0") && text.contains("mounted on /data"), "{text}");
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["nvme"][0]["usage"][0]["kind"], "mounted");
}

#[test]
fn config_reserves_mounts_binds_and_refuses_a_mounted_controller() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    let b = fake.controller(1, &[]);
    fake.add_mount("40 22 259:0 / /data rw - ext4 /dev/nvme0n1 rw");
    let req = ConfigRequest { user: Some("alice".into()), ..request() };
    let report = config(&fake.sys, &req).unwrap();

    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].0.as_str(), a);
    assert!(matches!(report.refused[0].1[0], Usage::Mounted { .. }));
    assert_eq!(fake.driver(&a).as_deref(), Some("nvme"), "the mounted one stays");
    assert_eq!(fake.driver(&b).as_deref(), Some("vfio-pci"));
    assert!(fake.root().join("dev/vfio/4").exists());
    let nr = std::fs::read_to_string(fake.root().join("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"));
    assert_eq!(nr.unwrap(), "32");
    let log = fake.sys.os.log.borrow().join("\n");
    assert!(log.contains("mount hugetlbfs /dev/hugepages 2048"), "{log}");
    assert!(log.contains("modprobe vfio-pci"), "{log}");
    assert!(log.contains("chown dev/vfio/4 1000:1001"), "{log}");
    assert!(log.contains("chown dev/hugepages 1000:1001"), "{log}");
    assert!(!log.contains(&format!("\"{a}\"")), "nothing was written about {a}: {log}");

    // Running it again finds everything in place.
    let again = config(&fake.sys, &request()).unwrap();
    assert!(again.actions.iter().any(|a| a.contains("already mounted")), "{:?}", again.actions);
    assert!(again.actions.iter().any(|x| x.contains(&format!("{b} already bound"))), "{:?}", again.actions);
}

#[test]
fn force_binds_data_but_never_a_mount_swap_or_holder() {
    let fake = Fake::new();
    let with_fs = fake.controller(0, &ext4_disk());
    let swapped = fake.controller(1, &[]);
    let held = fake.controller(2, &[]);
    let mounted = fake.controller(3, &[]);
    std::fs::write(fake.root().join("proc/swaps"), "Filename Type Size Used Priority\n/dev/nvme1n1 partition 1 0 -2\n").unwrap();
    std::fs::create_dir_all(fake.root().join("sys/block/dm-0/dm")).unwrap();
    std::fs::write(fake.root().join("sys/block/dm-0/dm/name"), "vg-lv\n").unwrap();
    std::fs::create_dir_all(fake.root().join("sys/block/nvme2n1/holders/dm-0")).unwrap();
    fake.add_mount("40 22 259:3 / /data rw - ext4 /dev/nvme3n1 rw");

    let report = config(&fake.sys, &request()).unwrap();
    assert_eq!(report.refused.len(), 4, "{:?}", report.refused);
    let data = &report.refused[0].1[0];
    assert!(data.to_string().contains("ext2/3/4"), "{data}");

    let forced = config(&fake.sys, &ConfigRequest { force: true, ..request() }).unwrap();
    let refused: Vec<&str> = forced.refused.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(refused, [swapped.as_str(), held.as_str(), mounted.as_str()]);
    assert!(forced.refused[1].1[0].to_string().contains("dm-0 (vg-lv)"));
    assert_eq!(fake.driver(&with_fs).as_deref(), Some("vfio-pci"));
    assert!(forced.warnings.iter().any(|w| w.contains("binding despite")), "{:?}", forced.warnings);
    for b in [&swapped, &held, &mounted] {
        assert_eq!(fake.driver(b).as_deref(), Some("nvme"));
    }
}

#[test]
fn dry_run_changes_nothing() {
    let fake = Fake::new();
    fake.controller(0, &[]);
    fake.controller(1, &[]);
    fake.sys.os.root_user.set(false);
    let before = fake.snapshot();
    let req = ConfigRequest { dry_run: true, user: Some("alice".into()), ..request() };
    let report = config(&fake.sys, &req).unwrap();
    assert!(report.actions.iter().any(|a| a.starts_with("reserve 32 2M hugepages")), "{:?}", report.actions);
    assert!(report.actions.iter().any(|a| a.starts_with("bind 0000:00:04.0 (nvme) to vfio-pci")), "{:?}", report.actions);
    reset(&fake.sys, &Selection::default(), true).unwrap();
    cleanup(&fake.sys, true).unwrap();
    assert_eq!(fake.snapshot(), before);
    // Probing whether a device is claimed (an O_EXCL open, closed at once)
    // is all it did.
    let log = fake.sys.os.log.borrow();
    assert!(log.iter().all(|l| l.starts_with("claim dev/nvme") || l.starts_with("release dev/nvme")), "{log:?}");
}

#[test]
fn reset_returns_controllers_to_nvme() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    let b = fake.controller(1, &[]);
    config(&fake.sys, &request()).unwrap();
    assert_eq!(fake.driver(&a).as_deref(), Some("vfio-pci"));
    let only_a = Selection { allow: vec![bdf(&a)], block: vec![] };
    let report = reset(&fake.sys, &only_a, false).unwrap();
    assert_eq!(report.actions, [format!("returned {a} (vfio-pci) to nvme")]);
    assert_eq!(fake.driver(&a).as_deref(), Some("nvme"));
    assert_eq!(fake.driver(&b).as_deref(), Some("vfio-pci"), "not selected");
    let over = std::fs::read_to_string(fake.root().join(format!("sys/bus/pci/devices/{a}/driver_override")));
    assert_eq!(over.unwrap().trim(), "", "override cleared");
}

#[test]
fn clear_errors_for_root_iommu_vfio_and_bad_input() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    fake.sys.os.root_user.set(false);
    assert!(matches!(config(&fake.sys, &request()), Err(Error::NotRoot { .. })));
    assert!(matches!(reset(&fake.sys, &Selection::default(), false), Err(Error::NotRoot { .. })));
    fake.sys.os.root_user.set(true);

    fake.sys.os.vfio_available.set(false);
    let err = config(&fake.sys, &request()).unwrap_err();
    assert!(matches!(err, Error::NoVfioPci { .. }), "{err}");
    assert!(err.to_string().contains("Module vfio-pci not found"), "{err}");
    fake.sys.os.vfio_available.set(true);

    let bad = Selection { allow: vec![bdf("0000:00:1f.0")], block: vec![] };
    let err = config(&fake.sys, &ConfigRequest { devices: bad, ..request() }).unwrap_err();
    assert!(matches!(err, Error::NotNvme(_)), "{err}");
    let err = config(&fake.sys, &ConfigRequest { page_size_kb: 4096, ..request() }).unwrap_err();
    assert!(matches!(err, Error::UnsupportedPageSize(_)), "{err}");
    let err = config(&fake.sys, &ConfigRequest { node: Some(7), ..request() }).unwrap_err();
    assert!(matches!(err, Error::NoSuchNode(7)), "{err}");
    let err = config(&fake.sys, &ConfigRequest { user: Some("bob".into()), ..request() }).unwrap_err();
    assert!(matches!(err, Error::UnknownUser(_)), "{err}");

    std::fs::remove_file(fake.root().join(format!("sys/bus/pci/devices/{a}/iommu_group"))).unwrap();
    std::fs::remove_dir_all(fake.root().join("sys/kernel/iommu_groups")).unwrap();
    let err = config(&fake.sys, &request()).unwrap_err();
    assert!(matches!(err, Error::NoIommu { .. }), "{err}");
    assert!(err.to_string().contains("intel_iommu=on"), "{err}");
    assert_eq!(fake.driver(&a).as_deref(), Some("nvme"));
}

#[test]
fn node_shortfall_and_memlock_are_reported() {
    let fake = Fake::new();
    fake.sys.os.max_pages.set(10);
    fake.sys.os.memlock.set(Some(8 << 20));
    let req = ConfigRequest { node: Some(0), hugepages: Some(Amount::Pages(16)), ..request() };
    let report = config(&fake.sys, &req).unwrap();
    let node_nr = fake.root().join("sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages");
    assert_eq!(std::fs::read_to_string(node_nr).unwrap(), "10");
    let warnings = report.warnings.join("\n");
    assert!(warnings.contains("only 10 of 16 2M hugepages could be reserved on node 0"), "{warnings}");
    assert!(warnings.contains("memlock limit (8192 KiB) is below the reserved hugepage memory (20480 KiB)"), "{warnings}");
}

#[test]
fn blocked_controllers_are_left_alone() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    let b = fake.controller(1, &[]);
    let sel = Selection { allow: vec![], block: vec![bdf(&a)] };
    config(&fake.sys, &ConfigRequest { devices: sel, ..request() }).unwrap();
    assert_eq!(fake.driver(&a).as_deref(), Some("nvme"));
    assert_eq!(fake.driver(&b).as_deref(), Some("vfio-pci"));
}

#[test]
fn cleanup_removes_only_stale_files() {
    let fake = Fake::new();
    fake.add_mount("41 22 0:41 / /dev/hugepages rw - hugetlbfs nodev rw,pagesize=2M");
    let mnt = fake.root().join("dev/hugepages");
    std::fs::create_dir_all(&mnt).unwrap();
    for f in ["spdk_pid100map_0", "pollux_pid200_0", "rtemap_0", "rtemap_1", "postgres_shared"] {
        std::fs::write(mnt.join(f), "").unwrap();
    }
    // pid 200 is alive; pid 300 maps rtemap_0 and has rtemap_1 open.
    std::fs::create_dir_all(fake.root().join("proc/200")).unwrap();
    std::fs::create_dir_all(fake.root().join("proc/300/fd")).unwrap();
    std::fs::write(fake.root().join("proc/300/maps"), "7f0000000000-7f0000200000 rw-s 00000000 00:29 17 /dev/hugepages/rtemap_0\n")
        .unwrap();
    symlink("/dev/hugepages/rtemap_1", fake.root().join("proc/300/fd/5")).unwrap();

    // A containerised SPDK (pid 555 of its own namespace, unknown here)
    // maps one under its own path, and another is open in it: the same
    // files by device and inode.
    use std::os::unix::fs::MetadataExt;
    for f in ["spdk_pid555map_0", "spdk_pid555map_1"] {
        std::fs::write(mnt.join(f), "").unwrap();
    }
    let m = std::fs::metadata(mnt.join("spdk_pid555map_0")).unwrap();
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    std::fs::create_dir_all(fake.root().join("proc/301/fd")).unwrap();
    std::fs::write(
        fake.root().join("proc/301/maps"),
        format!("7f00-7f20 rw-s 00000000 {major:02x}:{minor:02x} {} /dev/hugepages/spdk_pid1map_0\n", m.ino()),
    )
    .unwrap();
    symlink(mnt.join("spdk_pid555map_1"), fake.root().join("proc/301/fd/9")).unwrap();
    let report = cleanup(&fake.sys, false).unwrap();
    assert_eq!(report.actions, ["removed stale /dev/hugepages/spdk_pid100map_0"]);
    assert!(mnt.join("spdk_pid555map_0").exists() && mnt.join("spdk_pid555map_1").exists(), "a container's files");
    for f in ["spdk_pid555map_0", "spdk_pid555map_1"] {
        std::fs::remove_file(mnt.join(f)).unwrap();
    }
    // Not a DPDK, SPDK or Pollux name: someone else's (it was removed).
    assert!(report.warnings.iter().any(|w| w.contains("left /dev/hugepages/postgres_shared")), "{:?}", report.warnings);
    let mut left: Vec<String> = std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    left.sort();
    assert_eq!(left, ["pollux_pid200_0", "postgres_shared", "rtemap_0", "rtemap_1"]);
}

/// A pool already larger than asked for is kept unless `--shrink`: the
/// default 2048 MiB shrank a larger pool, releasing pages others had set
/// aside (found in review, 2026-12-06; SPDK's setup.sh keeps it too).
#[test]
fn a_larger_pool_is_kept_unless_shrinking_is_asked_for() {
    let fake = Fake::new();
    let nr = fake.root().join("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    config(&fake.sys, &ConfigRequest { hugepages: Some(Amount::Pages(100)), ..request() }).unwrap();
    assert_eq!(std::fs::read_to_string(&nr).unwrap(), "100");
    let report = config(&fake.sys, &request()).unwrap();
    assert_eq!(std::fs::read_to_string(&nr).unwrap(), "100", "64 MiB asked for, 200 MiB kept");
    assert!(report.actions.iter().any(|a| a.contains("kept; --shrink")), "{:?}", report.actions);
    config(&fake.sys, &ConfigRequest { shrink: true, ..request() }).unwrap();
    assert_eq!(std::fs::read_to_string(&nr).unwrap(), "32");
}

/// What the mount table, swaps and holders cannot see (found in review,
/// 2026-12-06): a device claimed exclusively (mounted in another mount
/// namespace, a btrfs/ZFS/md member) and one a process has open; neither
/// yields to --force.
#[test]
fn claimed_and_open_devices_are_refused_even_with_force() {
    let fake = Fake::new();
    let claimed = fake.controller(0, &[]);
    let open = fake.controller(1, &[]);
    let ctrl_open = fake.controller(2, &[]);
    let generic_open = fake.controller(3, &[]);
    let free = fake.controller(4, &[]);
    fake.sys.os.claimed.borrow_mut().push("dev/nvme0n1".into());
    fake.open_in(4242, "qemu-system-x86", "nvme1n1");
    fake.open_in(4243, "smartd", "nvme2");
    fake.open_in(4244, "fio", "ng3n1");
    let report = config(&fake.sys, &ConfigRequest { force: true, ..request() }).unwrap();
    let refused: Vec<&str> = report.refused.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(refused, [claimed.as_str(), open.as_str(), ctrl_open.as_str(), generic_open.as_str()]);
    assert_eq!(report.refused[0].1, [Usage::Claimed { device: "nvme0n1".into() }]);
    assert_eq!(report.refused[1].1, [Usage::Open { device: "nvme1n1".into(), pid: 4242, command: "qemu-system-x86".into() }]);
    assert!(report.refused[2].1[0].to_string().contains("/dev/nvme2 is open in process 4243 (smartd"), "{:?}", report.refused[2]);
    assert!(report.refused[3].1[0].to_string().contains("/dev/ng3n1"), "{:?}", report.refused[3]);
    for b in &refused {
        assert_eq!(fake.driver(b).as_deref(), Some("nvme"));
    }
    assert_eq!(fake.driver(&free).as_deref(), Some("vfio-pci"));
    // A mounted device is claimed too: said once, as a mount.
    let fake = Fake::new();
    fake.controller(0, &[]);
    fake.sys.os.claimed.borrow_mut().push("dev/nvme0n1".into());
    fake.add_mount("40 22 259:0 / /data rw - ext4 /dev/nvme0n1 rw");
    let report = config(&fake.sys, &ConfigRequest { dry_run: true, ..request() }).unwrap();
    assert!(matches!(report.refused[0].1[..], [Usage::Mounted { .. }]), "{:?}", report.refused);
    // status does not probe (for that instant a probe is a claim).
    fake.sys.os.log.borrow_mut().clear();
    assert!(status(&fake.sys).unwrap().nvme[0].usage.iter().all(|u| !matches!(u, Usage::Claimed { .. })));
    assert!(fake.sys.os.log.borrow().is_empty(), "{:?}", fake.sys.os.log.borrow());
}

/// Something mounting a namespace between the checks and the unbind:
/// the device is claimed from the bind's start, so the race is lost by
/// the mount or seen by us.
#[test]
fn a_device_taken_after_the_checks_is_refused_and_claims_are_held_over_the_unbind() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    fake.sys.os.claims_before_race.set(1); // the listing's probe
    let report = config(&fake.sys, &request()).unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].1, [Usage::Claimed { device: "nvme0n1".into() }]);
    assert_eq!(fake.driver(&a).as_deref(), Some("nvme"));

    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    config(&fake.sys, &request()).unwrap();
    assert_eq!(fake.driver(&a).as_deref(), Some("vfio-pci"));
    let log = fake.sys.os.log.borrow();
    let claims: Vec<usize> = log.iter().enumerate().filter(|(_, l)| *l == "claim dev/nvme0n1").map(|(i, _)| i).collect();
    let unbind = log.iter().position(|l| l.contains("driver/unbind")).expect("unbind");
    let probe = log.iter().filter(|l| *l == "claim dev/nvme0n1").count();
    assert_eq!(claims.len(), 2, "probed, then claimed for the bind: {log:?} ({probe})");
    assert!(claims[1] < unbind, "{log:?}");
    let released = log.iter().rposition(|l| l == "release dev/nvme0n1").expect("released");
    assert!(released > unbind, "the claim is held over the unbind: {log:?}");
}

/// A controller without an IOMMU group among others: the error came after
/// hugepages were reserved and earlier controllers bound.
#[test]
fn iommu_problems_are_found_before_anything_changes() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    let b = fake.controller(1, &[]);
    std::fs::remove_file(fake.root().join(format!("sys/bus/pci/devices/{b}/iommu_group"))).unwrap();
    let before = fake.snapshot();
    let err = config(&fake.sys, &request()).unwrap_err();
    assert!(matches!(err, Error::NoIommu { .. }), "{err}");
    assert_eq!(fake.driver(&a).as_deref(), Some("nvme"));
    assert_eq!(fake.snapshot(), before, "nothing changed");
}

/// A program driving a controller through VFIO (pollux-tgt, a VM): reset
/// unbound it from under the program (the unbind waits for the group to
/// be closed), and config handed its group to another user.
#[test]
fn a_controller_driven_through_vfio_is_left_to_its_program() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    let b = fake.controller(1, &[]);
    config(&fake.sys, &request()).unwrap();
    fake.open_in(777, "pollux-tgt", "vfio/3");
    fake.sys.os.log.borrow_mut().clear();
    let again = config(&fake.sys, &ConfigRequest { user: Some("alice".into()), ..request() }).unwrap();
    assert!(again.refused.is_empty(), "{again:?}");
    assert!(again.actions.iter().any(|x| x.contains(&format!("{a} already bound")) && x.contains("pollux-tgt")), "{:?}", again.actions);
    let log = fake.sys.os.log.borrow().join("\n");
    assert!(!log.contains("chown dev/vfio/3 "), "{log}");
    assert!(log.contains("chown dev/vfio/4 "), "{log}");

    let report = reset(&fake.sys, &Selection::default(), false).unwrap();
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].0.as_str(), a);
    assert!(report.refused[0].1[0].to_string().contains("/dev/vfio/3 is open in process 777 (pollux-tgt"), "{:?}", report.refused);
    assert_eq!(fake.driver(&a).as_deref(), Some("vfio-pci"));
    assert_eq!(fake.driver(&b).as_deref(), Some("nvme"));
}

/// Mountinfo escapes only blanks and backslashes: a mount point that is
/// not UTF-8 made it unreadable as text, and every command failed; a
/// process mapping such a path had its hugepage mappings go uncounted.
#[test]
fn paths_that_are_not_utf8_fail_nothing() {
    let fake = Fake::new();
    let a = fake.controller(0, &[]);
    fake.add_mount("41 22 0:41 / /dev/hugepages rw - hugetlbfs nodev rw,pagesize=2M");
    let info = fake.root().join("proc/self/mountinfo");
    let mut bytes = std::fs::read(&info).unwrap();
    bytes.extend_from_slice(b"50 22 0:50 / /mnt/caf\xe9 rw - tmpfs tmpfs rw\n");
    std::fs::write(&info, bytes).unwrap();
    let mnt = fake.root().join("dev/hugepages");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(mnt.join("rtemap_0"), "").unwrap();
    std::fs::create_dir_all(fake.root().join("proc/400")).unwrap();
    let mut maps = b"7f00-7f20 rw-p 00000000 00:29 9 /opt/caf\xe9.so\n".to_vec();
    maps.extend_from_slice(b"7f20-7f40 rw-s 00000000 00:29 17 /dev/hugepages/rtemap_0\n");
    std::fs::write(fake.root().join("proc/400/maps"), maps).unwrap();
    assert_eq!(status(&fake.sys).unwrap().nvme.len(), 1);
    let report = cleanup(&fake.sys, false).unwrap();
    assert_eq!(report.actions, ["no stale hugepage files"], "rtemap_0 is mapped");
    assert!(mnt.join("rtemap_0").exists());
    config(&fake.sys, &request()).unwrap();
    assert_eq!(fake.driver(&a).as_deref(), Some("vfio-pci"));
}
