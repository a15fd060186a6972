//! The blocking API (`pollux_iscsi_host::client`) against Pollux's own
//! iSCSI target on loopback, as a program without the daemon uses it: the
//! module documentation's example, run. It is alone in its test binary:
//! an initiator runs the process's reactor runtime.

use pollux_iscsi_host::client::Initiator;
use pollux_tests::iscsi_host::{config, free_port, target_iqn};
use pollux_tests::{Daemon, DaemonOpts};

#[test]
fn a_program_discovers_logs_in_writes_reads_back_and_logs_out() {
    let port = free_port();
    let _tgt = Daemon::start(DaemonOpts { config: Some(config(port, "client-api", 16, None)), ..DaemonOpts::default() });
    let init = Initiator::start("iqn.2026-12.com.example:host1").expect("start");

    let targets = init.discover(&format!("iscsi://127.0.0.1:{port}")).expect("discover");
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].name, target_iqn("client-api"));
    assert_eq!(targets[0].addresses, vec![format!("127.0.0.1:{port},1")]);

    // A target that is not there: a clear error, and the initiator goes on.
    let e = init.login(&format!("iscsi://127.0.0.1:{port}/iqn.2016-06.io.spdk:nosuch/0")).err().expect("refused").to_string();
    assert!(e.contains("target not found"), "{e}");

    let lun = init.login(&format!("iscsi://127.0.0.1:{port}/{}/0", target_iqn("client-api"))).expect("login");
    let info = lun.info().clone();
    assert_eq!((info.block_size(), info.num_blocks()), (512, 16 * 2048));
    assert_eq!(info.vendor, "POLLUX");
    let data: Vec<u8> = (0..8 * 512).map(|i| (i * 7 % 251) as u8).collect();
    lun.write(100, &data).expect("write");
    assert_eq!(lun.read(100, 8).expect("read"), data);
    lun.flush().expect("flush");
    assert_eq!(lun.report_luns().expect("report luns"), vec![0]);
    // Bad requests are refused with the reason, and the session goes on.
    assert!(lun.write(0, &[0; 100]).unwrap_err().to_string().contains("whole"));
    assert!(lun.read(16 * 2048, 1).is_err(), "beyond the end");
    // A LUN the target does not have: the target's sense, decoded.
    let e = lun.probe_lun(5).unwrap_err().to_string();
    assert!(e.contains("LOGICAL UNIT NOT SUPPORTED") || e.contains("no logical unit"), "{e}");
    assert_eq!(lun.read(100, 8).expect("read"), data);
    lun.close().expect("close");
    init.stop();
}
