//! Traffic on both targets of a running pollux-tgt, then every client gone:
//! what `scripts/bench/idle-cpu` runs before it measures the idle CPU left
//! after traffic.
//!
//! Usage: client-traffic ISCSI_PORT TARGET_NAME NVME_PORT SUBNQN [ROUNDS]
//! Each round: an NVMe/TCP controller with two I/O queues (on both reactors
//! of `-m 0x3`) writing and reading 1,000 blocks each, and an iSCSI session
//! reading 1,000 blocks; then all of them disconnect.

use pollux_tests::iscsi_host::{RawConn, target_iqn};
use pollux_tests::nvmf_client::Client;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: client-traffic ISCSI_PORT TARGET_NAME NVME_PORT SUBNQN [ROUNDS]");
        std::process::exit(2);
    }
    let iscsi: u16 = args[0].parse().expect("iSCSI port");
    let nvme: u16 = args[2].parse().expect("NVMe/TCP port");
    let nqn = &args[3];
    let rounds: u32 = args.get(4).map_or(1, |r| r.parse().expect("rounds"));
    for round in 0..rounds {
        let (mut a, cntlid) = Client::admin(nvme, nqn, 0, false, false);
        assert!(a.identify(1, 0).0.ok());
        let mut queues = [Client::io(nvme, nqn, cntlid, 1, false, false), Client::io(nvme, nqn, cntlid, 2, false, false)];
        for (i, q) in queues.iter_mut().enumerate() {
            for lba in 0..1000u64 {
                assert!(q.write(1, lba + 1000 * i as u64, &[round as u8; 512], 512, true).ok());
                assert!(q.read(1, lba + 1000 * i as u64, 1, 512).0.ok());
            }
        }
        let mut c = RawConn::connect(iscsi);
        let r = c.login("iqn.2025-01.io.pollux:client-traffic", Some(&target_iqn(&args[1])), 1);
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "iSCSI login refused");
        for lba in 0..1000 {
            assert_eq!(c.read10(lba, 1).map(|(st, _)| st), Some(0));
        }
    }
    println!("{rounds} round(s) of NVMe/TCP and iSCSI traffic done; clients disconnected");
}
