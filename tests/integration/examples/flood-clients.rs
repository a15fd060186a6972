//! A well-behaved client's throughput on a running pollux-tgt alone and
//! while non-reading clients flood each protocol and the RPC server, and
//! the daemon's memory meanwhile: what `scripts/bench/flood` runs.
//!
//! Usage: flood-clients PID ISCSI_PORT TARGET_NAME NVME_PORT SUBNQN RPC_SOCKET SECONDS
//! The well-behaved clients read 4 KiB at queue depth 1 (an NVMe/TCP I/O
//! queue, an iSCSI session), each for SECONDS alone and then for SECONDS
//! while three flooders run: an iSCSI session sending 128 KiB READs, an
//! NVMe/TCP I/O queue sending 128 KiB Reads, and an RPC client sending
//! `bdev_get_bdevs`, none of them reading a byte of what comes back.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{RawConn, pdu_bytes, target_iqn};
use pollux_tests::nvmf_client::{Client, Sqe};

fn rss_mib(pid: u32) -> u64 {
    pollux_tests::rss_bytes(pid) >> 20
}

/// Operations per second of `op` over `secs`.
fn rate(secs: u64, mut op: impl FnMut(u64)) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        op(n);
        n += 1;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Write `bytes` made by `next` to a nonblocking socket for as long as
/// `run` holds, never reading. A full socket is tried again every 50 ms:
/// polling it every millisecond, the three flooders' own wake-ups took
/// enough of the 2-core machine to slow the measuring client by 10-20 %,
/// which is not what is measured here (the daemon's share is).
fn flood(run: &AtomicBool, w: &mut impl Write, mut next: impl FnMut() -> Vec<u8>) -> u64 {
    let mut sent = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0;
    while run.load(Ordering::Relaxed) {
        if at == pending.len() {
            pending = next();
            at = 0;
            sent += 1;
        }
        match w.write(&pending[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    sent
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        eprintln!("usage: flood-clients PID ISCSI_PORT TARGET_NAME NVME_PORT SUBNQN RPC_SOCKET SECONDS");
        std::process::exit(2);
    }
    let pid: u32 = a[0].parse().expect("pid");
    let iscsi: u16 = a[1].parse().expect("iSCSI port");
    let target = target_iqn(&a[2]);
    let nvme: u16 = a[3].parse().expect("NVMe/TCP port");
    let nqn = a[4].clone();
    let rpc = a[5].clone();
    let secs: u64 = a[6].parse().expect("seconds");

    let (_admin, cntlid) = Client::admin(nvme, &nqn, 0, false, false);
    let mut nq = Client::io(nvme, &nqn, cntlid, 1, false, false);
    let mut ic = RawConn::connect(iscsi);
    assert_eq!(ic.login("iqn.2025-01.io.pollux:well-behaved", Some(&target), 1).bhs[36], 0);
    let mut nvme_read = |n: u64| assert!(nq.read(1, (n * 8) % 100_000, 8, 512).0.ok());
    let mut iscsi_read = |n: u64| assert_eq!(ic.read10(((n * 8) % 100_000) as u32, 8).map(|(st, _)| st), Some(0));

    let rss_before = rss_mib(pid);
    let nvme_alone = rate(secs, &mut nvme_read);
    let iscsi_alone = rate(secs, &mut iscsi_read);

    let run = Arc::new(AtomicBool::new(true));
    let mut floods = Vec::new();
    {
        let run = run.clone();
        let target = target.clone();
        floods.push(std::thread::spawn(move || {
            let mut c = RawConn::connect(iscsi);
            assert_eq!(c.login("iqn.2025-01.io.pollux:flooder", Some(&target), 2).bhs[36], 0);
            c.s.set_nonblocking(true).unwrap();
            let mut s = c.s.try_clone().unwrap();
            flood(&run, &mut s, || {
                let mut cdb = [0u8; 10];
                cdb[0] = 0x28;
                cdb[7..9].copy_from_slice(&256u16.to_be_bytes());
                let mut h = c.scsi_header(&cdb, 256 * 512, true, false);
                h[0] |= 0x40; // immediate: not held back by the command window
                pdu_bytes(h, &[])
            })
        }));
    }
    {
        let run = run.clone();
        let nqn = nqn.clone();
        floods.push(std::thread::spawn(move || {
            let (_a, cntlid) = Client::admin(nvme, &nqn, 0, false, false);
            let mut q = Client::io(nvme, &nqn, cntlid, 2, false, false);
            q.s.set_nonblocking(true).unwrap();
            let mut s = q.s.try_clone().unwrap();
            flood(&run, &mut s, || {
                let cid = q.cid();
                let sqe = Sqe::new(0x02, cid).nsid(1).dw(12, 255).sgl_transport(256 * 512);
                q.capsule_bytes(&sqe, &[])
            })
        }));
    }
    {
        let run = run.clone();
        floods.push(std::thread::spawn(move || {
            let mut s = UnixStream::connect(&rpc).unwrap();
            s.set_nonblocking(true).unwrap();
            flood(&run, &mut s, || br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#.to_vec())
        }));
    }
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (run, peak) = (run.clone(), peak.clone());
        std::thread::spawn(move || {
            while run.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Let the floods fill what they can before measuring.
    std::thread::sleep(Duration::from_secs(2));
    // A client starved past its 10 s receive timeout panics in the client
    // library: that is a result too (rate 0).
    let measure = |f: &mut dyn FnMut(u64)| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rate(secs, &mut *f))).unwrap_or_else(|_| {
            eprintln!("the well-behaved client got no answer within its 10 s timeout");
            0.0
        })
    };
    let nvme_flooded = measure(&mut nvme_read);
    let iscsi_flooded = measure(&mut iscsi_read);
    run.store(false, Ordering::Relaxed);
    let sent: Vec<u64> = floods.into_iter().map(|t| t.join().unwrap_or(0)).collect();
    sampler.join().unwrap();
    println!("RSS: {rss_before} MiB before the floods, at most {} MiB during them", peak.load(Ordering::Relaxed));
    println!(
        "flooders sent (unread answers): iSCSI {} READs of 128 KiB, NVMe/TCP {} Reads of 128 KiB, RPC {} requests",
        sent[0], sent[1], sent[2]
    );
    println!("NVMe/TCP 4 KiB QD1 reads: {nvme_alone:.0}/s alone, {nvme_flooded:.0}/s flooded ({:.2}x)", nvme_flooded / nvme_alone);
    println!("iSCSI 4 KiB QD1 reads: {iscsi_alone:.0}/s alone, {iscsi_flooded:.0}/s flooded ({:.2}x)", iscsi_flooded / iscsi_alone);
}
