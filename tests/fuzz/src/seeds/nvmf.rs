//! Seeds of `nvmf_tcp_pdu` and `nvmf_capsule`.

use crate::nvmf_wire as nw;

fn sqe(opcode: u8, cid: u16, nsid: u32, dw: &[(usize, u32)]) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0] = opcode;
    b[2..4].copy_from_slice(&cid.to_le_bytes());
    b[4..8].copy_from_slice(&nsid.to_le_bytes());
    for (n, v) in dw {
        b[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn with_sgl(mut s: [u8; 64], id: u8, len: u32) -> [u8; 64] {
    nw::set_sgl(&mut s, id, len);
    s
}

pub(super) fn nvmf_tcp_pdu() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let identify = with_sgl(sqe(0x06, 1, 0, &[(10, 1)]), nw::SGL_TRANSPORT, 4096);
    let get_log = with_sgl(sqe(0x02, 2, 0xffff_ffff, &[(10, 0x007f_0002)]), nw::SGL_TRANSPORT, 512);
    let cap = {
        let mut s = sqe(0x7f, 3, 0, &[]);
        s[4] = 0x04;
        s[40] = 1;
        s
    };
    // Admin queue, scripted start; digests variants.
    for (name, mode) in [("admin", 0u8), ("admin-digests", 0x03), ("admin-cut-1", 0x40), ("admin-cut-8", 0x80), ("admin-disabled", 0x10)] {
        let (hd, dd) = (mode & 1 != 0, mode & 2 != 0);
        let mut d = vec![mode];
        d.extend(nw::capsule(&identify, &[], hd, dd));
        d.extend(nw::capsule(&get_log, &[], hd, dd));
        d.extend(nw::capsule(&cap, &[], hd, dd));
        seeds.push((name.to_string(), d));
    }
    // From the first byte: ICReq, Connect, CC.EN, Identify.
    let mut d = vec![0x04];
    d.extend(nw::ic_req(false, false, 0));
    let (c, data) = nw::connect(1, 0, 31, 0, 0xffff, nw::SUBNQN);
    d.extend(nw::capsule(&c, &data, false, false));
    d.extend(nw::capsule(&nw::property_set_cc(2, nw::CC_ENABLE), &[], false, false));
    d.extend(nw::capsule(&identify, &[], false, false));
    seeds.push(("from-icreq".into(), d));
    let mut d = vec![0x04];
    d.extend(nw::ic_req(true, true, 3));
    seeds.push(("icreq-digests-hpda".into(), d));
    // I/O queue: writes in the capsule and by R2T, a read, a bad H2CData,
    // and the host's termination.
    for (name, mode) in [("io", 0x08u8), ("io-digests", 0x0b)] {
        let (hd, dd) = (mode & 1 != 0, mode & 2 != 0);
        let mut d = vec![mode];
        let w = with_sgl(sqe(0x01, 1, 1, &[(10, 0), (12, 0)]), nw::SGL_IN_CAPSULE, 512);
        d.extend(nw::capsule(&w, &[0x5a; 512], hd, dd));
        let r = with_sgl(sqe(0x02, 2, 1, &[(10, 0), (12, 0)]), nw::SGL_TRANSPORT, 512);
        d.extend(nw::capsule(&r, &[], hd, dd));
        let w2 = with_sgl(sqe(0x01, 3, 1, &[(10, 1), (12, 1)]), nw::SGL_TRANSPORT, 1024);
        d.extend(nw::capsule(&w2, &[], hd, dd));
        d.extend(nw::h2c_data(3, 0, 0, &[1; 512], false, hd, dd));
        d.extend(nw::h2c_data(3, 0, 512, &[2; 512], true, hd, dd));
        d.extend(nw::h2c_data(9, 5, 0, &[3; 16], true, hd, dd));
        seeds.push((name.to_string(), d));
    }
    let mut d = vec![0x08];
    let mut term = vec![nw::H2C_TERM_REQ, 0, 24, 0];
    term.extend_from_slice(&32u32.to_le_bytes());
    term.extend_from_slice(&[1, 0, 0, 0, 0, 0]);
    term.resize(32, 0);
    d.extend(term);
    seeds.push(("host-terminates".into(), d));
    let mut d = vec![0x20];
    d.extend(nw::capsule(&with_sgl(sqe(0x02, 1, 0, &[(10, 0x00ff_0070)]), nw::SGL_TRANSPORT, 1024), &[], false, false));
    seeds.push(("discovery-log".into(), d));
    seeds
}

/// A record of `nvmf_capsule`.
fn cap_rec(out: &mut Vec<u8>, q: u8, sqe: &[u8; 64], len: u16, data: &[u8]) {
    out.push(q);
    out.extend_from_slice(sqe);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(data);
}

pub(super) fn nvmf_capsule() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut admin = vec![0u8];
    for (cid, cns, nsid) in [(1u16, 1u32, 0u32), (2, 0, 1), (3, 2, 0), (4, 3, 1), (5, 0, 9)] {
        cap_rec(&mut admin, 0, &sqe(0x06, cid, nsid, &[(10, cns)]), 4096, &[]);
    }
    for (cid, lid, numd) in [(6u16, 1u32, 15u32), (7, 2, 127), (8, 3, 127), (9, 4, 1023), (10, 0x0c, 15)] {
        cap_rec(&mut admin, 0, &sqe(0x02, cid, 0xffff_ffff, &[(10, (numd << 16) | lid)]), ((numd + 1) * 4) as u16, &[]);
    }
    for (cid, fid, val) in
        [(11u16, 0x07u32, 0x0003_0003u32), (12, 0x0b, 0x100), (13, 0x0f, 5000), (14, 0x06, 1), (15, 0x04, 300), (16, 0x08, 0)]
    {
        cap_rec(&mut admin, 0, &sqe(0x09, cid, 0, &[(10, fid), (11, val)]), 0, &[]);
        cap_rec(&mut admin, 0, &sqe(0x0a, cid + 100, 0, &[(10, fid)]), 0, &[]);
    }
    cap_rec(&mut admin, 0, &sqe(0x18, 20, 0, &[]), 0, &[]);
    cap_rec(&mut admin, 0, &sqe(0x0c, 21, 0, &[]), 0, &[]);
    cap_rec(&mut admin, 0, &sqe(0x08, 22, 0, &[(10, 21 << 16)]), 0, &[]);
    for (cid, ofst, size8) in [(23u16, 0x00u32, 1u8), (24, 0x08, 0), (25, 0x14, 0), (26, 0x1c, 0)] {
        let mut s = sqe(0x7f, cid, 0, &[(11, ofst)]);
        s[4] = 0x04;
        s[40] = size8;
        cap_rec(&mut admin, 0, &s, 0, &[]);
    }
    cap_rec(&mut admin, 0, &sqe(0xc1, 27, 0, &[]), 0, &[]);
    seeds.push(("admin".into(), admin));
    let mut io = vec![0x10u8];
    let data512: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    cap_rec(&mut io, 1, &sqe(0x01, 1, 1, &[(10, 0), (12, 0)]), 512, &data512);
    cap_rec(&mut io, 1, &sqe(0x02, 2, 1, &[(10, 0), (12, 0)]), 512, &[]);
    cap_rec(&mut io, 1, &sqe(0x05, 3, 1, &[(10, 0), (12, 0)]), 512, &data512);
    cap_rec(&mut io, 1 | 0x02, &sqe(0x01, 4, 2, &[(10, 1), (12, 0)]), 4096, &[7; 4096]);
    cap_rec(&mut io, 1 | 0x02 | 0x08, &sqe(0x01, 5, 1, &[(10, 8), (12, 1)]), 1024, &[8; 1024]);
    cap_rec(&mut io, 1, &sqe(0x02, 6, 2, &[(10, 0), (12, 3)]), 16384, &[]);
    cap_rec(&mut io, 1, &sqe(0x00, 7, 1, &[]), 0, &[]);
    cap_rec(&mut io, 1, &sqe(0x08, 8, 1, &[(10, 100), (12, 15)]), 0, &[]);
    let mut ranges = Vec::new();
    for (lba, n) in [(0u64, 8u32), (64, 16)] {
        ranges.extend_from_slice(&0u32.to_le_bytes());
        ranges.extend_from_slice(&n.to_le_bytes());
        ranges.extend_from_slice(&lba.to_le_bytes());
    }
    cap_rec(&mut io, 1, &sqe(0x09, 9, 1, &[(10, 1), (11, 4)]), ranges.len() as u16, &ranges);
    cap_rec(&mut io, 1, &sqe(0x0c, 10, 1, &[(10, 0), (12, 0)]), 0, &[]);
    cap_rec(&mut io, 1, &sqe(0x02, 11, 7, &[(10, 0), (12, 0)]), 512, &[]);
    let mut disc = sqe(0x7f, 12, 0, &[]);
    disc[4] = 0x08;
    cap_rec(&mut io, 1, &disc, 0, &[]);
    seeds.push(("io".into(), io.clone()));
    io[0] = 0x03 | 0x40;
    seeds.push(("io-digests-hpda".into(), io));
    let mut d = vec![0x04u8];
    cap_rec(&mut d, 0, &sqe(0x06, 1, 0, &[(10, 1)]), 4096, &[]);
    cap_rec(&mut d, 0, &sqe(0x02, 2, 0, &[(10, (255 << 16) | 0x70)]), 1024, &[]);
    cap_rec(&mut d, 0, &sqe(0x09, 3, 0, &[(10, 0x0b), (11, 1 << 31)]), 0, &[]);
    cap_rec(&mut d, 0, &sqe(0x0c, 4, 0, &[]), 0, &[]);
    cap_rec(&mut d, 1, &sqe(0x02, 5, 1, &[]), 512, &[]);
    seeds.push(("discovery".into(), d));
    // Reservations: register (PTPL off), acquire write exclusive, a write
    // and a read, report (extended and not), preempt, release, clear; log
    // page 80h and features 82h/83h on the admin queue.
    let mut r = vec![0x10u8];
    let keys = |a: u64, b: u64| [a.to_le_bytes(), b.to_le_bytes()].concat();
    cap_rec(&mut r, 1, &sqe(0x0d, 1, 1, &[(10, 0)]), 16, &keys(0, 0xa));
    cap_rec(&mut r, 1, &sqe(0x11, 2, 1, &[(10, 1 << 8)]), 16, &keys(0xa, 0));
    cap_rec(&mut r, 1, &sqe(0x01, 3, 1, &[(10, 0), (12, 0)]), 512, &data512);
    cap_rec(&mut r, 1, &sqe(0x02, 4, 1, &[(10, 0), (12, 0)]), 512, &[]);
    cap_rec(&mut r, 1, &sqe(0x0e, 5, 1, &[(10, 127), (11, 1)]), 512, &[]);
    cap_rec(&mut r, 1, &sqe(0x0e, 6, 1, &[(10, 127)]), 512, &[]);
    cap_rec(&mut r, 1, &sqe(0x11, 7, 1, &[(10, 1 | 2 << 8)]), 16, &keys(0xa, 0xa));
    cap_rec(&mut r, 1, &sqe(0x15, 8, 1, &[(10, 2 << 8)]), 8, &0xau64.to_le_bytes());
    cap_rec(&mut r, 1, &sqe(0x15, 9, 1, &[(10, 1)]), 8, &0xau64.to_le_bytes());
    cap_rec(&mut r, 0, &sqe(0x02, 10, 0xffff_ffff, &[(10, (15 << 16) | 0x80)]), 64, &[]);
    cap_rec(&mut r, 0, &sqe(0x09, 11, 1, &[(10, 0x82), (11, 0x2)]), 0, &[]);
    cap_rec(&mut r, 0, &sqe(0x0a, 12, 1, &[(10, 0x83)]), 0, &[]);
    seeds.push(("reservations".into(), r));
    // Reset and shutdown through CC, Connect on a bound queue.
    let mut d = vec![0u8];
    cap_rec(&mut d, 1, &sqe(0x00, 1, 1, &[]), 0, &[]);
    cap_rec(&mut d, 0, &nw::property_set_cc(2, 0x0046_0000), 0, &[]);
    cap_rec(&mut d, 0, &nw::property_set_cc(3, nw::CC_ENABLE), 0, &[]);
    cap_rec(&mut d, 0, &nw::property_set_cc(4, nw::CC_ENABLE | 0x4000), 0, &[]);
    let (c, data) = nw::connect(5, 0, 31, 0, 0xffff, nw::SUBNQN);
    cap_rec(&mut d, 0, &c, 1024, &data);
    seeds.push(("reset-shutdown".into(), d));
    seeds
}

/// `nvmf_rdma_capsule`: capsules as the kernel's nvme-rdma host sends them
/// (written byte by byte, not with the target's code).
pub(super) fn nvmf_rdma_capsule() -> Vec<(String, Vec<u8>)> {
    // 64 bytes of command: opcode, cid, nsid, SGL (address, then 3 length
    // bytes and a 4-byte key, or a 4-byte length; the identifier last).
    let cmd = |opcode: u8, sgl_id: u8, addr: u64, len: u32, key: Option<u32>, icd: usize| {
        let mut c = vec![0u8; 64 + icd];
        c[0] = opcode;
        c[2..4].copy_from_slice(&9u16.to_le_bytes());
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        c[24..32].copy_from_slice(&addr.to_le_bytes());
        match key {
            Some(k) => {
                c[32..35].copy_from_slice(&len.to_le_bytes()[..3]);
                c[35..39].copy_from_slice(&k.to_le_bytes());
            }
            None => c[32..36].copy_from_slice(&len.to_le_bytes()),
        }
        c[39] = sgl_id;
        for (i, b) in c[64..].iter_mut().enumerate() {
            *b = i as u8;
        }
        c
    };
    let mut connect = cmd(0x7f, 0x40, 0x7f00_1000, 1024, Some(0x1234), 0);
    connect[4] = 0x01;
    connect[44..46].copy_from_slice(&31u16.to_le_bytes());
    vec![
        ("keyed-write".to_string(), cmd(0x01, 0x40, 0x7f00_0000, 8192, Some(0xabcd), 0)),
        ("keyed-read-invalidate".to_string(), cmd(0x02, 0x4f, 0x7f00_0000, 4096, Some(0xabce), 0)),
        ("in-capsule-write".to_string(), cmd(0x01, 0x01, 0, 256, None, 256)),
        ("flush".to_string(), cmd(0x00, 0x00, 0, 0, None, 0)),
        ("connect".to_string(), connect),
        // CM private data as the kernel's host and nvmet-rdma send it:
        // a request (recfmt 0, qid 1, hrqsize 128, hsqsize 127, padded to
        // 56 bytes as delivered), an accept (crqsize 128), a reject (6).
        ("cm-request".to_string(), [&[0u8, 0, 1, 0, 128, 0, 127, 0][..], &[0u8; 48][..]].concat()),
        ("cm-accept".to_string(), [&[0u8, 0, 128, 0][..], &[0u8; 28][..]].concat()),
        ("cm-reject".to_string(), vec![0, 0, 6, 0]),
    ]
}

/// `resv_ptpl`: a file as SPDK writes it (a write-exclusive reservation of
/// one of two registrants), one with PTPL off, and an empty one.
pub(super) fn resv_ptpl() -> Vec<(String, Vec<u8>)> {
    let held = r#"{
  "ptpl": true,
  "rtype": 1,
  "crkey": 10,
  "bdev_uuid": "5d8a6a54-0c1b-4e2f-9a3b-4c5d6e7f8091",
  "holder_uuid": "0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a",
  "registrants": [
    {"rkey": 10, "host_uuid": "0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a"},
    {"rkey": 11, "host_uuid": "0b0b0b0b-0b0b-0b0b-0b0b-0b0b0b0b0b0b"}
  ]
}"#;
    let off = r#"{"ptpl": false, "bdev_uuid": "5d8a6a54-0c1b-4e2f-9a3b-4c5d6e7f8091", "registrants": []}"#;
    vec![("held".into(), held.into()), ("ptpl-off".into(), off.into()), ("empty".into(), Vec::new())]
}
