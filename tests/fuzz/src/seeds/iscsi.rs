//! Seeds of `iscsi_text` and `iscsi_pdu`.

use pollux_iscsi::pdu::{Bhs, RESERVED_TAG, op};
use zerocopy::IntoBytes;

use super::pairs;
use crate::iscsi_wire::{self, LoginOpts};

fn login_record(out: &mut Vec<u8>, flags: u8, list: &[(&str, &str)]) {
    let t = pairs(list);
    out.push(flags);
    out.push(0);
    out.extend_from_slice(&(t.len() as u16).to_le_bytes());
    out.extend_from_slice(&t);
}

/// T=1, CSG, NSG.
fn transit(csg: u8, nsg: u8) -> u8 {
    0x80 | (csg << 2) | nsg
}

const OPERATIONAL_KEYS: &[(&str, &str)] = &[
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxBurstLength", "1048576"),
    ("FirstBurstLength", "65536"),
    ("ImmediateData", "Yes"),
    ("InitialR2T", "No"),
    ("MaxOutstandingR2T", "1"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("ErrorRecoveryLevel", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
];

pub(super) fn iscsi_text() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut s = |name: &str, mode: u8, recs: &[(u8, &[(&str, &str)])]| {
        let mut d = vec![mode];
        for (flags, list) in recs {
            login_record(&mut d, *flags, list);
        }
        seeds.push((name.to_string(), d));
    };
    s("discovery", 6, &[(transit(1, 3), OPERATIONAL_KEYS)]);
    s("open-security-then-operational", 1, &[(transit(0, 1), &[("AuthMethod", "None")]), (transit(1, 3), OPERATIONAL_KEYS)]);
    s("open-straight-to-ffp", 1, &[(transit(0, 3), &[("AuthMethod", "None")])]);
    let chap = |alg: &'static str| -> Vec<(u8, Vec<(&'static str, &'static str)>)> {
        vec![
            (0x00, vec![("AuthMethod", "CHAP,None")]),
            (0x00, vec![("CHAP_A", alg)]),
            (transit(0, 1), vec![("CHAP_N", "user1"), ("CHAP_R", "@")]),
            (transit(1, 3), OPERATIONAL_KEYS.to_vec()),
        ]
    };
    for (name, mode, alg) in [("chap-md5", 2, "5"), ("chap-sha256", 2, "7,5"), ("chap-pg2-discovery", 6 | 0x08, "5")] {
        let recs = chap(alg);
        let borrowed: Vec<(u8, &[(&str, &str)])> = recs.iter().map(|(f, l)| (*f, &l[..])).collect();
        s(name, mode, &borrowed);
    }
    s(
        "chap-mutual",
        3,
        &[
            (0x00, &[("AuthMethod", "CHAP")]),
            (0x00, &[("CHAP_A", "5")]),
            (transit(0, 1), &[("CHAP_N", "user1"), ("CHAP_R", "@"), ("CHAP_I", "77"), ("CHAP_C", "0x0123456789abcdef0123456789abcdef")]),
            (transit(1, 3), &[("MaxRecvDataSegmentLength", "8192")]),
        ],
    );
    s(
        "chap-wrong-secret",
        2,
        &[
            (0x00, &[("AuthMethod", "CHAP")]),
            (0x00, &[("CHAP_A", "5")]),
            (transit(0, 1), &[("CHAP_N", "user2"), ("CHAP_R", "0x00112233445566778899aabbccddeeff")]),
        ],
    );
    s(
        "chap-base64",
        2,
        &[
            (0x00, &[("AuthMethod", "CHAP")]),
            (0x00, &[("CHAP_A", "7")]),
            (transit(0, 1), &[("CHAP_N", "user1"), ("CHAP_R", "0bAAECAwQFBgc=")]),
        ],
    );
    s(
        "digests-required",
        4,
        &[(transit(0, 1), &[("AuthMethod", "None")]), (transit(1, 3), &[("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")])],
    );
    s("digests-refused", 4, &[(transit(1, 3), &[("HeaderDigest", "None"), ("DataDigest", "None")])]);
    s("denied-by-target", 5, &[(transit(1, 3), OPERATIONAL_KEYS)]);
    s("denied-initiator", 7, &[(transit(1, 3), OPERATIONAL_KEYS)]);
    s("outside-netmask", 5 | 0x10, &[(transit(1, 3), OPERATIONAL_KEYS)]);
    s(
        "raw-first-request",
        0,
        &[(
            transit(1, 3),
            &[
                ("InitiatorName", iscsi_wire::INITIATOR),
                ("InitiatorAlias", "fuzz"),
                ("TargetName", iscsi_wire::TARGET_OPEN),
                ("SessionType", "Normal"),
            ],
        )],
    );
    s(
        "odd-values",
        1,
        &[(
            transit(1, 3),
            &[
                ("HeaderDigest", "MD5"),
                ("MaxBurstLength", "0x100"),
                ("FirstBurstLength", "12"),
                ("ImmediateData", "Maybe"),
                ("MaxOutstandingR2T", "0"),
                ("ErrorRecoveryLevel", "2"),
                ("OFMarkInt", "1~65535"),
                ("X-com.example.key", "1"),
                ("TargetAlias", "x"),
            ],
        )],
    );
    // A request in two PDUs (C bit).
    let mut d = vec![1u8];
    let t = pairs(OPERATIONAL_KEYS);
    let (a, b) = t.split_at(t.len() / 2);
    for (flags, part) in [((1 << 2) | 0x40, a), (transit(1, 3), b)] {
        d.push(flags);
        d.push(0);
        d.extend_from_slice(&(part.len() as u16).to_le_bytes());
        d.extend_from_slice(part);
    }
    seeds.push(("continued-request".into(), d));
    seeds
}

fn scsi_cmd(itt: u32, lun: u8, flags: u8, edtl: u32, cdb: &[u8]) -> Bhs {
    let mut h = Bhs::new(op::SCSI_CMD, flags);
    h.lun[1] = lun;
    h.itt.set(itt);
    h.w20.set(edtl);
    let mut c = [0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    h.set_cdb_area(&c);
    h
}

/// F and R, or F and W.
const READ: u8 = 0x80 | 0x40 | 0x01;
const WRITE: u8 = 0x80 | 0x20 | 0x01;
const NO_DATA: u8 = 0x80 | 0x01;

pub(super) fn rw10(opcode: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

pub(super) fn rw16(opcode: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, last: bool) -> Bhs {
    let mut h = Bhs::new(op::DATA_OUT, if last { 0x80 } else { 0 });
    h.itt.set(itt);
    h.w20.set(ttt);
    h.w36.set(data_sn);
    h.w40.set(offset);
    h
}

/// A record of `iscsi_pdu`: BHS (with its lengths), AHS, data.
fn rec(out: &mut Vec<u8>, h: &Bhs, ahs: &[u8], data: &[u8]) {
    let mut h = *h;
    h.set_data_len(data.len());
    h.ahs_words = (ahs.len() / 4) as u8;
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(ahs);
    out.extend_from_slice(data);
}

/// Auto CmdSN/ExpStatSN and auto TTT.
const AUTO: u8 = 0x04 | 0x08;

pub(super) fn iscsi_pdu() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let inquiry = |itt| scsi_cmd(itt, 0, READ, 255, &[0x12, 0, 0, 0, 255, 0]);
    let basic = |mode: u8| {
        let mut d = vec![mode, AUTO];
        rec(&mut d, &inquiry(1), &[], &[]);
        rec(&mut d, &scsi_cmd(2, 0, NO_DATA, 0, &[0x00; 6]), &[], &[]);
        rec(&mut d, &scsi_cmd(3, 0, READ, 8, &[0x25; 10]), &[], &[]);
        rec(&mut d, &scsi_cmd(4, 1, READ, 32, &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]), &[], &[]);
        rec(&mut d, &scsi_cmd(5, 0, READ, 64, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]), &[], &[]);
        rec(&mut d, &scsi_cmd(6, 0, READ, 4096, &rw10(0x28, 0, 8)), &[], &[]);
        d
    };
    seeds.push(("inquiry-capacity-read".into(), basic(0)));
    seeds.push(("digests".into(), basic(0x03)));
    seeds.push(("small-segments".into(), basic(0x80)));
    // Writes with immediate data, then read back.
    let mut d = vec![0, AUTO];
    rec(&mut d, &scsi_cmd(1, 0, WRITE, 4096, &rw10(0x2a, 16, 8)), &[], &[0x5a; 4096]);
    rec(&mut d, &scsi_cmd(2, 1, WRITE, 4096, &rw16(0x8a, 3, 1)), &[], &[0xa5; 4096]);
    rec(&mut d, &scsi_cmd(3, 0, READ, 4096, &rw10(0x28, 16, 8)), &[], &[]);
    rec(&mut d, &scsi_cmd(4, 0, NO_DATA, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), &[], &[]);
    seeds.push(("write-immediate".into(), d));
    // Solicited data: R2Ts and Data-Out (ImmediateData=No, small bursts).
    // 10 KiB: an R2T for a burst of 8 KiB, then one for the rest.
    let mut d = vec![0x04 | 0x80, AUTO];
    rec(&mut d, &scsi_cmd(1, 0, WRITE, 10240, &rw10(0x2a, 0, 20)), &[], &[]);
    for (i, (off, len, last)) in [(0u32, 4096usize, false), (4096, 4096, true), (8192, 2048, true)].into_iter().enumerate() {
        rec(&mut d, &data_out(1, 0, (i % 2) as u32, off, last), &[], &vec![i as u8; len]);
    }
    rec(&mut d, &scsi_cmd(2, 0, READ, 10240, &rw10(0x28, 0, 20)), &[], &[]);
    seeds.push(("write-r2t-data-out".into(), d));
    // Unsolicited Data-Out (InitialR2T=No), then R2T for the rest.
    let mut d = vec![0x08, AUTO];
    rec(&mut d, &scsi_cmd(1, 0, 0x20 | 0x01, 10240, &rw10(0x2a, 64, 20)), &[], &[1; 2048]);
    rec(&mut d, &data_out(1, RESERVED_TAG, 0, 2048, true), &[], &[2; 6144]);
    rec(&mut d, &data_out(1, 0, 0, 8192, true), &[], &[3; 2048]);
    seeds.push(("write-unsolicited".into(), d));
    // NOP, Text, Logout.
    let mut d = vec![0, AUTO];
    let mut nop = Bhs::new(op::NOP_OUT | 0x40, 0x80);
    nop.itt.set(9);
    nop.w20.set(RESERVED_TAG);
    rec(&mut d, &nop, &[], b"ping data");
    let mut t = Bhs::new(op::TEXT, 0x80);
    t.itt.set(10);
    t.w20.set(RESERVED_TAG);
    rec(&mut d, &t, &[], &pairs(&[("SendTargets", "")]));
    let mut t = Bhs::new(op::TEXT, 0x80);
    t.itt.set(11);
    t.w20.set(RESERVED_TAG);
    rec(&mut d, &t, &[], &pairs(&[("SendTargets", iscsi_wire::TARGET_PDU), ("X-unknown", "1")]));
    let mut lo = Bhs::new(op::LOGOUT, 0x80);
    lo.itt.set(12);
    lo.w20.set(1 << 16);
    rec(&mut d, &lo, &[], &[]);
    seeds.push(("nop-text-logout".into(), d));
    // Task management.
    let mut d = vec![0x04, AUTO];
    rec(&mut d, &scsi_cmd(1, 0, WRITE, 8192, &rw10(0x2a, 0, 16)), &[], &[]);
    for (itt, function, referenced) in [(2u32, 1u8, 1u32), (3, 2, 0), (4, 4, 0), (5, 5, 0), (6, 6, 0), (7, 3, 0), (8, 8, 0)] {
        let mut h = Bhs::new(op::TASK_MGMT | 0x40, 0x80 | function);
        h.itt.set(itt);
        h.w20.set(referenced);
        rec(&mut d, &h, &[], &[]);
    }
    seeds.push(("task-management".into(), d));
    // Discovery session.
    let mut d = vec![0x20, AUTO];
    let mut t = Bhs::new(op::TEXT, 0x80);
    t.itt.set(1);
    t.w20.set(RESERVED_TAG);
    rec(&mut d, &t, &[], &pairs(&[("SendTargets", "All")]));
    rec(&mut d, &inquiry(2), &[], &[]);
    seeds.push(("discovery".into(), d));
    // Odd PDUs: SNACK, unknown opcode, a login, Data-Out of no task, an AHS.
    let mut d = vec![0, AUTO];
    let mut sn = Bhs::new(op::SNACK, 0x80);
    sn.itt.set(RESERVED_TAG);
    rec(&mut d, &sn, &[], &[]);
    rec(&mut d, &Bhs::new(0x1c, 0x80), &[], &[]);
    rec(&mut d, &data_out(77, RESERVED_TAG, 0, 0, true), &[], &[0; 512]);
    let mut with_ahs = inquiry(3);
    with_ahs.flags |= 0x04;
    rec(&mut d, &with_ahs, &[0, 8, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8], &[]);
    let mut login = Bhs::new(op::LOGIN | 0x40, 0x87);
    login.itt.set(4);
    rec(&mut d, &login, &[], &pairs(&[("InitiatorName", "x")]));
    seeds.push(("odd-pdus".into(), d));
    // A whole LU in small Data-In PDUs.
    let mut d = vec![0x80, AUTO];
    rec(&mut d, &scsi_cmd(1, 1, READ, 128 * 4096, &rw16(0x88, 0, 128)), &[], &[]);
    seeds.push(("read-whole-lu".into(), d));
    // Raw streams: the login itself, and bytes cut small.
    let o = LoginOpts::default();
    let mut ffp = Vec::new();
    iscsi_wire::frame(
        &mut ffp,
        &{
            let mut h = inquiry(1);
            h.w24.set(1);
            h
        },
        &[],
        &[],
        false,
        false,
    );
    let mut d = vec![0x40 | 0x10, 0];
    d.extend_from_slice(&iscsi_wire::login_request(&o));
    d.extend_from_slice(&ffp);
    seeds.push(("raw-login".into(), d));
    let mut d = vec![0x10, 1];
    d.extend_from_slice(&ffp);
    seeds.push(("raw-cut-48".into(), d));
    let mut d = vec![0x10, 2];
    d.extend_from_slice(&ffp);
    seeds.push(("raw-cut-7".into(), d));
    seeds
}
