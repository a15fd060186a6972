//! A socket-level fuzzer: valid iSCSI and NVMe/TCP exchanges, mutated, sent
//! to a running daemon with two reactors. After each batch a fresh client
//! must still log in (or connect) to a target the fuzzed clients cannot
//! reach and read back exactly what it wrote there, every earlier write
//! included: bad input closes or rejects only what it came on, and never
//! touches another session's data.
//!
//! Deterministic: a seed (POLLUX_SOCKET_FUZZ_SEED, default fixed) drives
//! every choice; POLLUX_SOCKET_FUZZ_CASES sets the number of cases. On a
//! failure the batch's inputs are written under the target directory.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{RawConn, keys, pdu_bytes};
use pollux_tests::nvmf_client::{self, Client, Sqe};
use pollux_tests::{Daemon, DaemonOpts};
use serde_json::json;

const FUZZ_IQN: &str = "iqn.2016-06.io.spdk:fuzz";
const CHECK_IQN: &str = "iqn.2016-06.io.spdk:guarded";
const CHAP_IQN: &str = "iqn.2016-06.io.spdk:fuzzchap";
const CHECKER: &str = "iqn.2025-01.io.pollux:socket-fuzz-checker-0001";
const FUZZ_NQN: &str = "nqn.2016-06.io.pollux:fuzz";
const CHECK_NQN: &str = "nqn.2016-06.io.pollux:guarded";
const CHECK_HOST: &str = "nqn.2014-08.org.example:socket-fuzz-checker-host-0001";
const BATCH: usize = 40;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const INTERESTING_U8: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
/// Text that key=value parsers trip on: multi-byte characters, separators,
/// binary prefixes.
const INTERESTING_TEXT: [&str; 9] = ["\u{e9}", "\u{20ac}", "\u{1f600}", "=", "\0", ",", "0x", "0b", "Reject"];
const INTERESTING_U32: [u32; 9] = [0, 1, 0x7f, 0xff, 0xffff, 0x00ff_ffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];

/// Mutate a byte stream in one to four places.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            let n = 1 + rng.below(64);
            b.extend(rng.bytes(n));
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(10) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = INTERESTING_U8[rng.below(INTERESTING_U8.len())],
            2 | 3 => {
                let v = if rng.chance(3) { rng.next() as u32 } else { INTERESTING_U32[rng.below(INTERESTING_U32.len())] };
                let v = if rng.chance(2) { v.to_be_bytes() } else { v.to_le_bytes() };
                let at = at & !3;
                for (i, x) in v.iter().enumerate() {
                    if let Some(p) = b.get_mut(at + i) {
                        *p = *x;
                    }
                }
            }
            4 => b.truncate(at),
            5 => {
                let end = (at + 1 + rng.below(256)).min(b.len());
                let piece = b[at..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, piece);
            }
            6 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at..end);
            }
            7 => {
                let n = 1 + rng.below(64);
                let r = rng.bytes(n);
                b.splice(at..at, r);
            }
            8 => {
                let t = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].as_bytes().to_vec();
                b.splice(at..at, t);
            }
            _ => b[at] = rng.next() as u8,
        }
    }
}

/// Read and drop what the target answers until it pauses or closes.
fn drain(s: &mut TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(5)));
    let mut buf = vec![0u8; 256 * 1024];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(200) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => return,
            Err(_) => return,
        }
    }
}

fn send_all(s: &mut TcpStream, b: &[u8]) {
    // The target may close first: that is an answer, not a failure.
    let _ = s.write_all(b);
}

// ---- iSCSI ----

fn cdb_rw(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A few full-feature-phase PDUs a real initiator sends, as bytes.
fn iscsi_stream(rng: &mut Rng, c: &mut RawConn) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let lba = rng.below(4096) as u32;
        let blocks = 1 + rng.below(16) as u16;
        let pdu = match rng.below(12) {
            0 | 1 => {
                let data = rng.bytes(blocks as usize * 512);
                let h = c.scsi_header(&cdb_rw(0x2a, lba, blocks), data.len() as u32, false, true);
                pdu_bytes(h, &data)
            }
            2 | 3 => {
                let h = c.scsi_header(&cdb_rw(0x28, lba, blocks), blocks as u32 * 512, true, false);
                pdu_bytes(h, &[])
            }
            4 => {
                // A write that needs R2T and Data-Out the initiator sends unasked.
                let h = c.scsi_header(&cdb_rw(0x2a, lba, 64), 64 * 512, false, true);
                let mut b = pdu_bytes(h, &rng.bytes(8192));
                let mut d = [0u8; 48];
                d[0] = 0x05;
                d[1] = 0x80;
                d[16..20].copy_from_slice(&(c.itt - 1).to_be_bytes());
                d[20..24].copy_from_slice(&(rng.below(4) as u32).to_be_bytes());
                d[40..44].copy_from_slice(&8192u32.to_be_bytes());
                b.extend(pdu_bytes(d, &rng.bytes(4096)));
                b
            }
            5 => {
                let cdb: &[u8] = match rng.below(6) {
                    0 => &[0x12, 0, 0, 0, 0xff, 0],
                    1 => &[0x12, 1, 0x83, 0, 0xff, 0],
                    2 => &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
                    3 => &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                    4 => &[0x1a, 0, 0x3f, 0, 0xff, 0],
                    _ => &[0, 0, 0, 0, 0, 0],
                };
                let h = c.scsi_header(cdb, 255, true, false);
                pdu_bytes(h, &[])
            }
            6 => {
                // UNMAP with its parameter list.
                let mut list = vec![0u8; 24];
                list[1] = 22;
                list[3] = 16;
                list[8..16].copy_from_slice(&(lba as u64).to_be_bytes());
                list[16..20].copy_from_slice(&(blocks as u32).to_be_bytes());
                let h = c.scsi_header(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], 24, false, true);
                pdu_bytes(h, &list)
            }
            7 => {
                // COMPARE AND WRITE of one block.
                let mut cdb = vec![0u8; 16];
                cdb[0] = 0x89;
                cdb[2..10].copy_from_slice(&(lba as u64).to_be_bytes());
                cdb[13] = 1;
                let h = c.scsi_header(&cdb, 1024, false, true);
                pdu_bytes(h, &rng.bytes(1024))
            }
            8 => {
                let mut h = [0u8; 48];
                h[0] = 0x40;
                h[1] = 0x80;
                h[16..20].copy_from_slice(&c.itt.to_be_bytes());
                h[20..24].fill(0xff);
                h[24..28].copy_from_slice(&c.cmd_sn.to_be_bytes());
                c.itt += 1;
                let n = rng.below(64);
                pdu_bytes(h, &rng.bytes(n))
            }
            9 => {
                let mut h = [0u8; 48];
                h[0] = 0x04;
                h[1] = 0x80;
                h[16..20].copy_from_slice(&c.itt.to_be_bytes());
                h[20..24].fill(0xff);
                h[24..28].copy_from_slice(&c.cmd_sn.to_be_bytes());
                c.itt += 1;
                c.cmd_sn += 1;
                pdu_bytes(h, &keys(&[("SendTargets", "All")]))
            }
            10 => {
                // ABORT TASK or LOGICAL UNIT RESET.
                let mut h = [0u8; 48];
                h[0] = 0x40 | 0x02;
                h[1] = 0x80 | if rng.chance(2) { 1 } else { 5 };
                h[16..20].copy_from_slice(&c.itt.to_be_bytes());
                h[20..24].copy_from_slice(&(c.itt.wrapping_sub(1)).to_be_bytes());
                h[24..28].copy_from_slice(&c.cmd_sn.to_be_bytes());
                c.itt += 1;
                pdu_bytes(h, &[])
            }
            _ => {
                let mut h = [0u8; 48];
                h[0] = 0x06;
                h[1] = 0x80;
                h[16..20].copy_from_slice(&c.itt.to_be_bytes());
                h[24..28].copy_from_slice(&c.cmd_sn.to_be_bytes());
                c.itt += 1;
                c.cmd_sn += 1;
                pdu_bytes(h, &[])
            }
        };
        out.extend(pdu);
    }
    out
}

fn login_bytes(rng: &mut Rng) -> Vec<u8> {
    let mut h = [0u8; 48];
    h[0] = 0x43;
    h[1] = if rng.chance(2) { 0x87 } else { 0x81 };
    h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, rng.next() as u8]);
    h[16..20].copy_from_slice(&1u32.to_be_bytes());
    h[24..28].copy_from_slice(&1u32.to_be_bytes());
    let mut k: Vec<(&str, &str)> =
        vec![("InitiatorName", "iqn.2025-01.io.pollux:fuzz"), ("SessionType", "Normal"), ("TargetName", FUZZ_IQN)];
    let extra: [(&str, &str); 8] = [
        ("AuthMethod", "CHAP,None"),
        ("HeaderDigest", "CRC32C,None"),
        ("MaxRecvDataSegmentLength", "16777215"),
        ("MaxBurstLength", "512"),
        ("FirstBurstLength", "16777215"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
        ("MaxConnections", "4"),
    ];
    for e in extra {
        if rng.chance(2) {
            k.push(e);
        }
    }
    pdu_bytes(h, &keys(&k))
}

/// A Login Request in the security stage (T to operational if `transit`).
fn security_pdu(kv: &[(&str, &str)], transit: bool) -> Vec<u8> {
    let mut h = [0u8; 48];
    h[0] = 0x43;
    h[1] = if transit { 0x81 } else { 0 };
    h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x77]);
    h[16..20].copy_from_slice(&1u32.to_be_bytes());
    h[24..28].copy_from_slice(&1u32.to_be_bytes());
    pdu_bytes(h, &keys(kv))
}

/// CHAP on a target that requires it, the answer mutated.
fn chap_case(rng: &mut Rng, c: &mut RawConn) -> Vec<u8> {
    send_all(
        &mut c.s,
        &security_pdu(
            &[("InitiatorName", "iqn.2025-01.io.pollux:fuzz"), ("SessionType", "Normal"), ("TargetName", CHAP_IQN), ("AuthMethod", "CHAP")],
            false,
        ),
    );
    if c.recv().is_none() {
        return Vec::new();
    }
    send_all(&mut c.s, &security_pdu(&[("CHAP_A", if rng.chance(2) { "5" } else { "7,5" })], false));
    if c.recv().is_none() {
        return Vec::new();
    }
    let r = format!("0x{}", "0123456789abcdef".repeat(2));
    let mut kv = vec![("CHAP_N", "fuzz-user"), ("CHAP_R", r.as_str())];
    if rng.chance(2) {
        kv.extend([("CHAP_I", "7"), ("CHAP_C", "0bAAECAwQFBgcICQoLDA0ODw==")]);
    }
    let mut b = security_pdu(&kv, true);
    mutate(rng, &mut b);
    send_all(&mut c.s, &b);
    drain(&mut c.s);
    b
}

/// One iSCSI case: a mutated login, a mutated CHAP answer, or a valid
/// login then a mutated stream.
fn iscsi_case(rng: &mut Rng, port: u16) -> Vec<u8> {
    let mut c = RawConn::connect(port);
    if rng.chance(6) {
        return chap_case(rng, &mut c);
    }
    if rng.chance(4) {
        let mut b = login_bytes(rng);
        mutate(rng, &mut b);
        send_all(&mut c.s, &b);
        drain(&mut c.s);
        return b;
    }
    let r = c.login_with("iqn.2025-01.io.pollux:fuzz", Some(FUZZ_IQN), rng.next() as u8, 0, 0, &[("InitialR2T", "No")]);
    assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "the fuzzing initiator's own login");
    let mut b = iscsi_stream(rng, &mut c);
    mutate(rng, &mut b);
    send_all(&mut c.s, &b);
    drain(&mut c.s);
    b
}

// ---- NVMe/TCP ----

fn nvme_stream(rng: &mut Rng, c: &mut Client, io: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let cid = c.cid();
        let lba = rng.below(4096) as u32;
        let nlb = rng.below(8) as u32;
        let pdu = if io {
            match rng.below(8) {
                0 | 1 => {
                    let data = rng.bytes((nlb as usize + 1) * 512);
                    let sqe = Sqe::new(0x01, cid).nsid(1).dw(10, lba).dw(12, nlb | if rng.chance(4) { 1 << 30 } else { 0 });
                    c.capsule_bytes(&sqe.sgl_in_capsule(data.len() as u32), &data)
                }
                2 | 3 => c.capsule_bytes(&Sqe::new(0x02, cid).nsid(1).dw(10, lba).dw(12, nlb).sgl_transport((nlb + 1) * 512), &[]),
                4 => {
                    // A write over R2T, with its data sent unasked.
                    let data = rng.bytes(8192);
                    let mut b = c.capsule_bytes(&Sqe::new(0x01, cid).nsid(1).dw(10, lba).dw(12, 15).sgl_transport(8192), &[]);
                    b.extend(c.h2c_bytes(cid, rng.below(4) as u16, 0, &data, true));
                    b
                }
                5 => c.capsule_bytes(&Sqe::new(0x08, cid).nsid(1).dw(10, lba).dw(12, nlb), &[]),
                6 => {
                    let mut range = vec![0u8; 16];
                    range[4..8].copy_from_slice(&(nlb + 1).to_le_bytes());
                    range[8..16].copy_from_slice(&u64::from(lba).to_le_bytes());
                    c.capsule_bytes(&Sqe::new(0x09, cid).nsid(1).dw(11, 4).sgl_in_capsule(16), &range)
                }
                _ => c.capsule_bytes(&Sqe::new(0x00, cid).nsid(1), &[]),
            }
        } else {
            match rng.below(6) {
                0 => c.capsule_bytes(&Sqe::new(0x06, cid).dw(10, 1).sgl_transport(4096), &[]),
                1 => c.capsule_bytes(&Sqe::new(0x06, cid).nsid(1).dw(10, rng.below(4) as u32).sgl_transport(4096), &[]),
                2 => c.capsule_bytes(&Sqe::new(0x02, cid).nsid(0xffff_ffff).dw(10, 0x02 | (127 << 16)).sgl_transport(512), &[]),
                3 => c.capsule_bytes(&Sqe::new(0x09, cid).dw(10, 0x07).dw(11, 0x0003_0003), &[]),
                4 => c.capsule_bytes(&Sqe::new(0x0a, cid).dw(10, rng.below(16) as u32), &[]),
                _ => c.capsule_bytes(&Sqe::new(0x18, cid), &[]),
            }
        };
        out.extend(pdu);
    }
    out
}

/// The bytes of ICReq and an admin Connect, for mutation from scratch.
fn connect_bytes(c: &Client, rng: &mut Rng) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[0] = nvmf_client::IC_REQ;
    b[2] = 128;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    let mut data = vec![0u8; 1024];
    data[..16].copy_from_slice(&nvmf_client::HOST_ID);
    data[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
    data[256..256 + FUZZ_NQN.len()].copy_from_slice(FUZZ_NQN.as_bytes());
    data[512..512 + nvmf_client::HOST_NQN.len()].copy_from_slice(nvmf_client::HOST_NQN.as_bytes());
    let mut sqe = Sqe::new(0x7f, 1).byte(4, 0x01).sgl_in_capsule(1024);
    sqe.0[42..44].copy_from_slice(&(rng.below(3) as u16).to_le_bytes());
    sqe.0[44..46].copy_from_slice(&31u16.to_le_bytes());
    b.extend(c.capsule_bytes(&sqe, &data));
    b
}

fn nvme_case(rng: &mut Rng, port: u16) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let mut c = Client::connect(port);
            let mut b = connect_bytes(&c, rng);
            mutate(rng, &mut b);
            send_all(&mut c.s, &b);
            drain(&mut c.s);
            b
        }
        1 => {
            let (mut a, _) = Client::admin(port, FUZZ_NQN, 0, rng.chance(2), rng.chance(2));
            let mut b = nvme_stream(rng, &mut a, false);
            mutate(rng, &mut b);
            send_all(&mut a.s, &b);
            drain(&mut a.s);
            b
        }
        _ => {
            let (hd, dd) = (rng.chance(2), rng.chance(2));
            let (_a, cntlid) = Client::admin(port, FUZZ_NQN, 0, hd, dd);
            let mut q = Client::io(port, FUZZ_NQN, cntlid, 1, hd, dd);
            let mut b = nvme_stream(rng, &mut q, true);
            mutate(rng, &mut b);
            send_all(&mut q.s, &b);
            drain(&mut q.s);
            b
        }
    }
}

// ---- the checkers ----

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    r.bytes(len)
}

/// Each check writes a new region of the guarded LUN and namespace, then
/// reads every region written so far.
struct Checker {
    rounds: u64,
}

impl Checker {
    fn check(&mut self, d: &Daemon, iscsi: u16, nvme: u16) -> Result<(), String> {
        self.rounds += 1;
        let mut rpc = pollux_core::rpc::Client::connect(&d.socket).map_err(|e| format!("the daemon is gone: {e}"))?;
        rpc.set_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        rpc.call("bdev_get_bdevs", None).map_err(|e| format!("RPC: {e}"))?;
        // iSCSI: a fresh session to the guarded target.
        let mut c = RawConn::connect(iscsi);
        let r = c.login_with(CHECKER, Some(CHECK_IQN), 1, 0, 0, &[]);
        if (r.bhs[36], r.bhs[37]) != (0, 0) {
            return Err(format!("iSCSI login refused: {:02x}{:02x}", r.bhs[36], r.bhs[37]));
        }
        let data = pattern(self.rounds, 4096);
        if c.write10((self.rounds * 8) as u32, &data) != Some(0) {
            return Err("iSCSI write failed".into());
        }
        for round in 1..=self.rounds {
            match c.read10((round * 8) as u32, 8) {
                Some((0, back)) if back == pattern(round, 4096) => {}
                other => return Err(format!("iSCSI region {round} reads back wrong: {:?}", other.map(|(s, b)| (s, b.len())))),
            }
        }
        // NVMe/TCP: a fresh controller on the guarded subsystem.
        let mut a = Client::connect(nvme);
        a.ic(false, false);
        let r = a.fabrics_connect(0, 31, 0xffff, CHECK_NQN, CHECK_HOST, 0);
        if !r.ok() {
            return Err(format!("NVMe admin connect refused: {r:?}"));
        }
        let cntlid = r.dw0 as u16;
        if !a.property_set(0x14, 0x0046_0001).ok() {
            return Err("CC.EN refused".into());
        }
        let mut q = Client::connect(nvme);
        q.ic(true, true);
        if !q.fabrics_connect(1, 31, cntlid, CHECK_NQN, CHECK_HOST, 0).ok() {
            return Err("NVMe I/O connect refused".into());
        }
        let data = pattern(self.rounds << 32, 4096);
        if !q.write(1, self.rounds * 8, &data, 512, self.rounds % 2 == 0).ok() {
            return Err("NVMe write failed".into());
        }
        for round in 1..=self.rounds {
            let (c, back) = q.read(1, round * 8, 8, 512);
            if !c.ok() || back != pattern(round << 32, 4096) {
                return Err(format!("NVMe region {round} reads back wrong ({c:?})"));
            }
        }
        Ok(())
    }
}

fn start() -> (Daemon, u16, u16) {
    let iscsi = pollux_tests::iscsi_host::free_port();
    let nvme = pollux_tests::iscsi_host::free_port();
    let listener = |nqn: &str| json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nvme.to_string()}}});
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "FuzzLun", "num_blocks": 8192, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "GuardLun", "num_blocks": 8192, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "FuzzNs", "num_blocks": 8192, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "GuardNs", "num_blocks": 8192, "block_size": 512}}
        ]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": iscsi.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/8"]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 2, "initiators": [CHECKER], "netmasks": ["127.0.0.1/8"]}},
            {"method": "iscsi_create_target_node", "params": {"name": "fuzz", "alias_name": "fuzz", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
                "luns": [{"bdev_name": "FuzzLun", "lun_id": 0}], "queue_depth": 64}},
            {"method": "iscsi_create_auth_group", "params": {"tag": 1, "secrets": [{"user": "fuzz-user", "secret": "fuzz-secret-0001", "muser": "tgt", "msecret": "tgt-secret-00001"}]}},
            {"method": "iscsi_create_target_node", "params": {"name": "fuzzchap", "alias_name": "fuzzchap", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
                "luns": [{"bdev_name": "FuzzLun", "lun_id": 0}], "queue_depth": 64, "chap_group": 1, "require_chap": true}},
            {"method": "iscsi_create_target_node", "params": {"name": "guarded", "alias_name": "guarded", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "luns": [{"bdev_name": "GuardLun", "lun_id": 0}], "queue_depth": 64}}
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "in_capsule_data_size": 8192}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": FUZZ_NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": FUZZ_NQN, "namespace": {"bdev_name": "FuzzNs", "nsid": 1}}},
            listener(FUZZ_NQN),
            {"method": "nvmf_create_subsystem", "params": {"nqn": CHECK_NQN}},
            {"method": "nvmf_subsystem_add_host", "params": {"nqn": CHECK_NQN, "host": CHECK_HOST}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": CHECK_NQN, "namespace": {"bdev_name": "GuardNs", "nsid": 1}}},
            listener(CHECK_NQN)
        ]}
    ]});
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(cfg), ..Default::default() });
    (d, iscsi, nvme)
}

#[test]
fn mutated_exchanges_never_harm_other_clients() {
    let seed: u64 = std::env::var("POLLUX_SOCKET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0011);
    let cases: usize = std::env::var("POLLUX_SOCKET_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let (d, iscsi, nvme) = start();
    let mut rng = Rng(seed);
    let mut checker = Checker { rounds: 0 };
    checker.check(&d, iscsi, nvme).expect("the checker works before any fuzzing");
    let mut batch: Vec<(usize, &str, Vec<u8>)> = Vec::new();
    let fail = |batch: &[(usize, &str, Vec<u8>)], case: usize, e: String| -> ! {
        let dir = pollux_tests::bin_dir().join("socket-fuzz-failure");
        let _ = std::fs::create_dir_all(&dir);
        for (n, kind, b) in batch {
            let _ = std::fs::write(dir.join(format!("{n:05}-{kind}")), b);
        }
        let first = batch.first().map_or(case, |b| b.0);
        panic!("after cases {first}..={case} (seed {seed:#x}; inputs in {}): {e}; log:\n{}", dir.display(), d.log());
    };
    for case in 0..cases {
        let kind = if case % 2 == 0 { "iscsi" } else { "nvme" };
        // A fuzzing client asserts that its own valid prefix (login,
        // connect) works: a panic there is checked like a batch's end.
        let mut case_rng = Rng(rng.next());
        let input = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if kind == "iscsi" { iscsi_case(&mut case_rng, iscsi) } else { nvme_case(&mut case_rng, nvme) }
        }));
        let failed = input.is_err();
        batch.push((case, kind, input.unwrap_or_default()));
        if failed {
            let why = checker.check(&d, iscsi, nvme).err().unwrap_or_else(|| "a valid login or connect of a fuzzing client failed".into());
            fail(&batch, case, why);
        }
        if batch.len() == BATCH || case + 1 == cases {
            if let Err(e) = checker.check(&d, iscsi, nvme) {
                fail(&batch, case, e);
            }
            batch.clear();
        }
    }
    let log = d.log();
    assert!(!log.contains("panicked"), "a reactor panicked; log:\n{log}");
    eprintln!("socket fuzz: {cases} cases (seed {seed:#x}), {} checks passed", checker.rounds);
}
