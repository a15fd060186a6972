//! DMA memory on real hugepages, in the test guest (the host may have none
//! reserved; the fallback path runs in every other test).

use pollux_core::dma::{self, Backing, DmaBuf};
use pollux_testvm::{VmConfig, in_guest};

#[test]
fn dma_regions_and_the_daemon_use_hugepages_when_reserved() {
    in_guest(&VmConfig::new().controllers(1).hugepages(256), || {
        let b = DmaBuf::alloc(1 << 20).unwrap();
        let region = dma::region_of(b.as_ptr(), b.len()).expect("region");
        assert_eq!(region.backing(), Backing::Hugepages { page_size: 2 << 20 });
        assert_eq!(region.len() % (2 << 20), 0);
        // The whole stack on hugepages: pollux-perf verify, two reactors.
        let dir = pollux_tests::TempDir::new("huge");
        let cfg = dir.join("c.json");
        std::fs::write(
            &cfg,
            r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M","num_blocks":65536,"block_size":512}}]}]}"#,
        )
        .unwrap();
        let out = std::process::Command::new(pollux_tests::bin("pollux-perf"))
            .arg("-c")
            .arg(&cfg)
            .args(["-m", "0x3", "--no-pin", "-w", "verify", "-q", "16", "-o", "65536", "-t", "2", "--json", "-r"])
            .arg(dir.join("s.sock"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("no free hugepages"), "pools fell back to ordinary pages:\n{stderr}");
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(meminfo.contains("HugePages_Total:     256"), "{meminfo}");
    });
}
