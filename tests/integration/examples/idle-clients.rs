//! Many idle clients on both targets of a running pollux-tgt: what
//! `scripts/bench/idle-conns` measures the daemon's CPU and memory with.
//!
//! Usage: idle-clients ISCSI_PORT TARGET_NAME NVME_PORT SUBNQN COUNT
//! Logs in COUNT iSCSI sessions (one connection each, initiator names
//! numbered) and connects COUNT NVMe/TCP controllers (an enabled admin
//! queue each, no keep-alive), prints "ready", answers the target's NOP-In
//! pings, and holds them until stdin closes.

use std::io::{Read, Write};
use std::time::Duration;

use pollux_tests::iscsi_host::{RawConn, target_iqn};
use pollux_tests::nvmf_client::Client;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: idle-clients ISCSI_PORT TARGET_NAME NVME_PORT SUBNQN COUNT");
        std::process::exit(2);
    }
    let iscsi: u16 = args[0].parse().expect("iSCSI port");
    let nvme: u16 = args[2].parse().expect("NVMe/TCP port");
    let nqn = &args[3];
    let count: usize = args[4].parse().expect("count");
    let target = target_iqn(&args[1]);
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = RawConn::connect(iscsi);
        let r = c.login(&format!("iqn.2025-01.io.pollux:idle-{i}"), Some(&target), 1);
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "iSCSI login {i} refused");
        sessions.push(c);
    }
    let mut controllers = Vec::with_capacity(count);
    for _ in 0..count {
        controllers.push(Client::admin(nvme, nqn, 0, false, false).0);
    }
    println!("ready: {count} iSCSI sessions and {count} NVMe/TCP controllers");
    std::io::stdout().flush().unwrap();
    // Hold them until stdin closes; meanwhile answer NOP-Ins so the target
    // keeps the sessions.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        for s in &mut sessions {
            answer_nop_ins(s);
        }
    }
    drop(controllers);
}

/// Answer the NOP-Ins that arrived (those asking for an answer) with
/// NOP-Outs, without waiting for more.
fn answer_nop_ins(c: &mut RawConn) {
    loop {
        let mut bhs = [0u8; 48];
        c.s.set_nonblocking(true).unwrap();
        let avail = c.s.peek(&mut bhs);
        c.s.set_nonblocking(false).unwrap();
        if !matches!(avail, Ok(48)) {
            return;
        }
        let Some(p) = c.recv() else { return };
        if p.opcode() != 0x20 || p.u32_at(20) == 0xffff_ffff {
            continue;
        }
        let mut h = [0u8; 48];
        h[0] = 0x40; // NOP-Out, immediate
        h[1] = 0x80;
        h[8..16].copy_from_slice(&p.bhs[8..16]);
        h[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        h[20..24].copy_from_slice(&p.bhs[20..24]);
        h[24..28].copy_from_slice(&c.cmd_sn.to_be_bytes());
        h[28..32].copy_from_slice(&c.exp_stat_sn.to_be_bytes());
        if c.send(h, &[]).is_err() {
            return;
        }
    }
}
