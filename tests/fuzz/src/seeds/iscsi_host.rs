//! Seeds of `iscsi_host_pdu` and `iscsi_host_scsi`: what a target sends to
//! the initiator, written field by field (not with the initiator's code
//! under test). Each seed stays within the 512 bytes `scripts/fuzz` gives
//! the inputs of these targets.

use pollux_iscsi::pdu::{Bhs, RESERVED_TAG, op};

use super::pairs;
use crate::iscsi_wire::frame;

/// Byte 0 of an `iscsi_host_pdu` input: the session's flags.
const LOGIN: u8 = 0x01;
const HEADER_DIGEST: u8 = 0x02;
const DATA_DIGEST: u8 = 0x04;
const IMMEDIATE_DATA_OFF: u8 = 0x08;
const INITIAL_R2T: u8 = 0x10;
/// Input in 61-byte pieces; Data-In of 32 bytes or more read straight into
/// the command's buffer.
const DIRECT: u8 = 0x20;

/// The ISID of the session `session::fuzzing::feed` makes.
const ISID: [u8; 6] = [0x80, 1, 2, 3, 0, 0];
const TSIH: u16 = 0x0101;
const STATUS_GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;

/// The start of an input: the flags, and the commands outstanding (write,
/// bytes). A logged-in session gives them task tags 0, 1, ... and CmdSN
/// 1, 2, ...; a session logging in does so once the login is done.
fn head(flags: u8, cmds: &[(bool, u32)]) -> Vec<u8> {
    let mut v = vec![flags, cmds.len() as u8];
    for &(write, len) in cmds {
        v.push(u8::from(write));
        v.extend_from_slice(&len.to_le_bytes());
    }
    v
}

/// How the target frames what it sends, and its sequence numbers.
struct Target {
    out: Vec<u8>,
    hd: bool,
    dd: bool,
    /// The next StatSN.
    stat_sn: u32,
    exp_cmd_sn: u32,
}

impl Target {
    fn new(flags: u8) -> Target {
        Target { out: head(flags, &[]), hd: flags & HEADER_DIGEST != 0, dd: flags & DATA_DIGEST != 0, stat_sn: 0x40, exp_cmd_sn: 1 }
    }

    fn with(flags: u8, cmds: &[(bool, u32)]) -> Target {
        Target { out: head(flags, cmds), ..Target::new(flags) }
    }

    fn push(&mut self, h: &Bhs, data: &[u8]) {
        frame(&mut self.out, h, &[], data, self.hd, self.dd);
    }

    /// StatSN (taken if `advance`), ExpCmdSN and MaxCmdSN: a window of 64.
    fn numbers(&mut self, h: &mut Bhs, advance: bool) {
        h.w24.set(self.stat_sn);
        if advance {
            self.stat_sn += 1;
        }
        h.w28.set(self.exp_cmd_sn);
        h.w32.set(self.exp_cmd_sn + 63);
    }

    /// A Login Response (no digests during the login): T, C, CSG, NSG in
    /// `flags`, success, the TSIH on the last one.
    fn login(&mut self, flags: u8, tsih: u16, text: &[u8]) {
        let mut h = Bhs::new(op::LOGIN_RESP, flags);
        h.lun[..6].copy_from_slice(&ISID);
        h.lun[6..8].copy_from_slice(&tsih.to_be_bytes());
        h.itt.set(0);
        self.numbers(&mut h, true);
        // Version-max and version-active 0.
        frame(&mut self.out, &h, &[], text, false, false);
    }

    /// A Data-In PDU for `itt` at `offset`: the last of its sequence (F
    /// bit) if `last`, with the command's status (S bit) if `status`.
    fn data_in(&mut self, itt: u32, data_sn: u32, offset: u32, data: &[u8], last: bool, status: Option<u8>) {
        let flags = match status {
            Some(_) => 0x80 | 0x01,
            None if last => 0x80,
            None => 0,
        };
        let mut h = Bhs::new(op::DATA_IN, flags);
        h.itt.set(itt);
        h.w20.set(RESERVED_TAG);
        self.numbers(&mut h, status.is_some());
        if status.is_none() {
            h.w24.set(0);
        }
        h.b3 = status.unwrap_or(0);
        h.w36.set(data_sn);
        h.w40.set(offset);
        self.push(&h, data);
    }

    /// A SCSI Response: status, and sense data (with its SenseLength).
    fn response(&mut self, itt: u32, status: u8, exp_data_sn: u32, sense: &[u8]) {
        let mut h = Bhs::new(op::SCSI_RESP, 0x80);
        h.b3 = status;
        h.itt.set(itt);
        self.numbers(&mut h, true);
        h.w36.set(exp_data_sn);
        let mut data = Vec::new();
        if !sense.is_empty() {
            data.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            data.extend_from_slice(sense);
        }
        self.push(&h, &data);
    }

    /// An R2T: `len` bytes at `offset`, under transfer tag `ttt`.
    fn r2t(&mut self, itt: u32, ttt: u32, r2t_sn: u32, offset: u32, len: u32) {
        let mut h = Bhs::new(op::R2T, 0x80);
        h.itt.set(itt);
        h.w20.set(ttt);
        self.numbers(&mut h, false);
        h.w36.set(r2t_sn);
        h.w40.set(offset);
        h.w44.set(len);
        self.push(&h, &[]);
    }

    /// The target's NOP-In ping (it wants an answer: a transfer tag).
    fn ping(&mut self, ttt: u32, data: &[u8]) {
        let mut h = Bhs::new(op::NOP_IN, 0x80);
        h.itt.set(RESERVED_TAG);
        h.w20.set(ttt);
        self.numbers(&mut h, false);
        self.push(&h, data);
    }

    /// An Async Message: event, vendor code, parameters 1-3, data.
    fn async_message(&mut self, event: u8, params: [u16; 3], data: &[u8]) {
        let mut h = Bhs::new(op::ASYNC, 0x80);
        h.itt.set(RESERVED_TAG);
        self.numbers(&mut h, true);
        h.w36.set((u32::from(event) << 24) | u32::from(params[0]));
        h.w40.set((u32::from(params[1]) << 16) | u32::from(params[2]));
        self.push(&h, data);
    }

    /// A Reject of the PDU whose header is `rejected`.
    fn reject(&mut self, reason: u8, rejected: &Bhs) {
        let mut h = Bhs::new(op::REJECT, 0x80);
        h.b2 = reason;
        h.itt.set(RESERVED_TAG);
        self.numbers(&mut h, true);
        let mut data = Vec::new();
        frame(&mut data, rejected, &[], &[], false, false);
        self.push(&h, &data);
    }

    fn done(self) -> Vec<u8> {
        self.out
    }
}

/// T=1, CSG, NSG.
fn transit(csg: u8, nsg: u8) -> u8 {
    0x80 | (csg << 2) | nsg
}

/// The answers of a target to the initiator's operational offer.
const OPERATIONAL_ANSWERS: &[(&str, &str)] = &[
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "65536"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("TargetAlias", "fuzz-disk"),
];

/// Fixed-format sense data: VALID, key, ASC, ASCQ, information.
fn fixed_sense(key: u8, asc: u8, ascq: u8, information: Option<u32>) -> Vec<u8> {
    let mut s = vec![0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0];
    if let Some(i) = information {
        s[0] |= 0x80;
        s[3..7].copy_from_slice(&i.to_be_bytes());
    }
    s
}

pub(super) fn iscsi_host_pdu() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let data: Vec<u8> = (0..128u32).map(|i| (i * 29 + 3) as u8).collect();

    // The login (no authentication), a read waiting for it, the target's
    // ping right after the last response.
    let mut t = Target::with(LOGIN, &[(false, 4096)]);
    t.login(transit(0, 1), 0, &pairs(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")]));
    t.login(transit(1, 3), TSIH, &pairs(OPERATIONAL_ANSWERS));
    t.ping(0x10, &[]);
    seeds.push(("login".to_string(), t.done()));
    // Digests negotiated: the ping after the login carries both.
    let mut t = Target::new(LOGIN | HEADER_DIGEST | DATA_DIGEST);
    t.login(transit(0, 1), 0, &pairs(&[("AuthMethod", "None")]));
    t.login(transit(1, 3), TSIH, &pairs(&[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C"), ("MaxRecvDataSegmentLength", "8192")]));
    t.ping(0x11, b"keep-alive");
    seeds.push(("login-digests".to_string(), t.done()));
    // The operational answers continued over two responses (C bit).
    let mut t = Target::new(LOGIN);
    t.login(transit(0, 1), 0, &pairs(&[("AuthMethod", "None")]));
    let answers = pairs(OPERATIONAL_ANSWERS);
    let (first, rest) = answers.split_at(60);
    t.login(0x40 | (1 << 2), 0, first);
    t.login(transit(1, 3), TSIH, rest);
    seeds.push(("login-continued".to_string(), t.done()));
    // The target moves the initiator elsewhere (Status-Class 1).
    let mut t = Target::new(LOGIN);
    let mut h = Bhs::new(op::LOGIN_RESP, 0);
    h.lun[..6].copy_from_slice(&ISID);
    h.w24.set(7);
    h.w36.set(0x0101 << 16);
    frame(&mut t.out, &h, &[], &pairs(&[("TargetAddress", "10.0.0.2:3261,1")]), false, false);
    seeds.push(("login-redirect".to_string(), t.done()));

    // Reads: Data-In in two PDUs with the status in the last; Data-In
    // then a SCSI Response.
    let mut t = Target::with(0, &[(false, 128), (false, 64)]);
    t.data_in(0, 0, 0, &data[..64], false, None);
    t.data_in(0, 1, 64, &data[64..], true, Some(STATUS_GOOD));
    t.data_in(1, 0, 0, &data[..64], true, None);
    t.response(1, STATUS_GOOD, 1, &[]);
    seeds.push(("read-data-in".to_string(), t.done()));
    let mut t = Target::with(HEADER_DIGEST | DATA_DIGEST, &[(false, 128)]);
    t.data_in(0, 0, 0, &data[..64], false, None);
    t.data_in(0, 1, 64, &data[64..], true, Some(STATUS_GOOD));
    seeds.push(("read-data-in-digests".to_string(), t.done()));
    // The same, with the data segments read straight into the buffers
    // (the pieces split headers, data, padding and digests), a digest
    // error in such a segment.
    let mut t = Target::with(DIRECT, &[(false, 128), (false, 64)]);
    t.data_in(0, 0, 0, &data[..64], false, None);
    t.data_in(0, 1, 64, &data[64..], true, Some(STATUS_GOOD));
    t.data_in(1, 0, 0, &data[..64], true, None);
    t.response(1, STATUS_GOOD, 1, &[]);
    seeds.push(("read-direct".to_string(), t.done()));
    let mut t = Target::with(DIRECT | HEADER_DIGEST | DATA_DIGEST, &[(false, 128), (false, 100)]);
    t.data_in(0, 0, 0, &data[..64], false, None);
    t.data_in(0, 1, 64, &data[64..], true, Some(STATUS_GOOD));
    t.data_in(1, 0, 0, &data[..50], false, None);
    t.data_in(1, 1, 50, &data[50..100], true, Some(STATUS_GOOD));
    seeds.push(("read-direct-digests".to_string(), t.done()));
    let mut t = Target::with(DIRECT | DATA_DIGEST, &[(false, 128)]);
    t.data_in(0, 0, 0, &data[..64], false, None);
    t.data_in(0, 1, 64, &data[64..], true, Some(STATUS_GOOD));
    let mut bad = t.done();
    let n = bad.len();
    bad[n - 10] ^= 0x01;
    seeds.push(("read-direct-digest-error".to_string(), bad));
    // CHECK CONDITION: an invalid field (fails), a unit attention (sent again).
    let mut t = Target::with(0, &[(false, 512), (false, 512)]);
    t.response(0, CHECK_CONDITION, 0, &fixed_sense(0x5, 0x24, 0x00, None));
    t.response(1, CHECK_CONDITION, 0, &fixed_sense(0x6, 0x29, 0x07, None));
    seeds.push(("read-check-condition".to_string(), t.done()));

    // Writes: solicited by two R2Ts (ImmediateData=No, InitialR2T=Yes),
    // then the status.
    let mut t = Target::with(IMMEDIATE_DATA_OFF | INITIAL_R2T, &[(true, 16384)]);
    t.r2t(0, 0x100, 0, 0, 8192);
    t.r2t(0, 0x101, 1, 8192, 8192);
    t.response(0, STATUS_GOOD, 0, &[]);
    seeds.push(("write-r2t".to_string(), t.done()));
    // Immediate and unsolicited data up to FirstBurstLength, an R2T for
    // the rest; a medium error with its LBA for a second write.
    let mut t = Target::with(0, &[(true, 131072), (true, 4096)]);
    t.r2t(0, 0x200, 0, 65536, 65536);
    t.response(0, STATUS_GOOD, 0, &[]);
    t.response(1, CHECK_CONDITION, 0, &fixed_sense(0x3, 0x0c, 0x00, Some(0x1000)));
    seeds.push(("write-unsolicited-r2t".to_string(), t.done()));

    // The target's pings, with and without data.
    let mut t = Target::new(0);
    t.ping(0x1234, b"ping-data-16byte");
    t.ping(0x1235, &[]);
    seeds.push(("nop-in-ping".to_string(), t.done()));
    // A Reject of a read the initiator sent (READ(10) of 1 block).
    let mut t = Target::with(0, &[(false, 512)]);
    let mut cmd = Bhs::new(op::SCSI_CMD, 0xc1);
    cmd.w20.set(512);
    cmd.w24.set(1);
    cmd.set_cdb_area(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    t.reject(0x04, &cmd);
    seeds.push(("reject".to_string(), t.done()));
    // Async Messages: a SCSI event (REPORTED LUNS DATA HAS CHANGED), a
    // vendor event; then a request to log out.
    let mut t = Target::with(0, &[(false, 512)]);
    let mut event = vec![0, 18];
    event.extend(fixed_sense(0x6, 0x3f, 0x0e, None));
    t.async_message(0, [0, 0, 0], &event);
    t.async_message(255, [0, 0, 0], &[]);
    seeds.push(("async-scsi-event".to_string(), t.done()));
    let mut t = Target::with(0, &[(false, 512)]);
    t.async_message(1, [0, 2, 20], &[]);
    seeds.push(("async-logout-request".to_string(), t.done()));
    seeds
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|x| u8::from_str_radix(x, 16).expect("hex")).collect()
}

/// Byte 0 of an `iscsi_host_scsi` input: the parser.
mod pick {
    pub const SENSE: u8 = 0;
    pub const INQUIRY: u8 = 1;
    pub const SUPPORTED_VPD: u8 = 2;
    pub const UNIT_SERIAL: u8 = 3;
    pub const DEVICE_ID: u8 = 4;
    pub const BLOCK_LIMITS: u8 = 5;
    pub const PROVISIONING: u8 = 6;
    pub const READ_CAPACITY16: u8 = 7;
    pub const READ_CAPACITY10: u8 = 8;
    pub const REPORT_LUNS: u8 = 9;
    pub const SEND_TARGETS: u8 = 10;
    pub const ALL: u8 = 11;
}

/// A page of `page` code with its PAGE LENGTH.
fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0, page];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// What LIO (targetcli) answers, and a few other targets.
pub(super) fn iscsi_host_scsi() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, u8, Vec<u8>)> = Vec::new();
    // Sense: fixed, LBA out of range at 0x1000 (VALID); descriptor, a
    // medium error with an information descriptor.
    seeds.push(("sense-fixed".into(), pick::SENSE, fixed_sense(0x5, 0x21, 0x00, Some(0x1000))));
    let descriptor = hex("72 03 11 00 00 00 00 14 02 06 00 00 80 00 10 00 00 0a 80 00 00 00 00 00 12 34 56 78");
    seeds.push(("sense-descriptor".into(), pick::SENSE, descriptor));
    // Standard INQUIRY: LIO's 96 bytes, SPC-4, a disk.
    let mut inquiry = hex("00 00 06 12 5b 00 10 02");
    inquiry.extend_from_slice(b"LIO-ORG disk0           4.0 ");
    inquiry.resize(96, 0);
    seeds.push(("inquiry-lio".into(), pick::INQUIRY, inquiry.clone()));
    seeds.push(("supported-vpd".into(), pick::SUPPORTED_VPD, vpd(0x00, &hex("00 80 83 86 b0 b1 b2"))));
    seeds.push(("unit-serial".into(), pick::UNIT_SERIAL, vpd(0x80, b"b1c9f6f2-0c5f-4dbb-9a1e-8f1f3d5e2a10\0")));
    // Device Identification: NAA, T10 vendor ID, relative port, port group,
    // the target port's SCSI name string.
    let mut ids = hex("01 03 00 10 60 01 40 5b 1c 9f 6f 20 c5 f4 db b9 a1 e8 f1 f3");
    ids.extend(hex("02 01 00 2d"));
    ids.extend_from_slice(b"LIO-ORG b1c9f6f2-0c5f-4dbb-9a1e-8f1f3d5e2a10\0");
    ids.extend(hex("51 94 00 04 00 00 00 01 51 95 00 04 00 00 00 00"));
    let name = b"iqn.2003-01.org.linux-iscsi.h1:sn.0a1b,t,0x0001\0";
    ids.extend([0x53, 0x98, 0x00, name.len() as u8]);
    ids.extend_from_slice(name);
    seeds.push(("device-id-lio".into(), pick::DEVICE_ID, vpd(0x83, &ids)));
    // Block Limits: WSNZ, COMPARE AND WRITE 1, transfers of 0x400 blocks,
    // UNMAP of any size in one descriptor, granularity 8, WRITE SAME 0xffff.
    let mut limits = hex("01 01 00 01 00 00 04 00 00 00 04 00 00 00 00 00");
    limits.extend(hex("ff ff ff ff 00 00 00 01 00 00 00 08 80 00 00 00 00 00 00 00 00 00 ff ff"));
    limits.resize(60, 0);
    seeds.push(("block-limits-lio".into(), pick::BLOCK_LIMITS, vpd(0xb0, &limits)));
    seeds.push(("provisioning-thin".into(), pick::PROVISIONING, vpd(0xb2, &hex("00 e4 02 00"))));
    // READ CAPACITY: 1 GiB of 512-byte blocks, thin; 8 GiB of 4 KiB blocks.
    let mut capacity16 = hex("00 00 00 00 00 1f ff ff 00 00 02 00 00 03 c0 00");
    capacity16.resize(32, 0);
    seeds.push(("read-capacity16".into(), pick::READ_CAPACITY16, capacity16));
    seeds.push(("read-capacity10".into(), pick::READ_CAPACITY10, hex("00 1f ff ff 00 00 10 00")));
    // REPORT LUNS: 0, 1, 256 (flat space), 16384 (extended flat space).
    let luns = hex("00 00 00 20 00 00 00 00 \
         00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 \
         41 00 00 00 00 00 00 00 d2 00 40 00 00 00 00 00");
    seeds.push(("report-luns".into(), pick::REPORT_LUNS, luns));
    // SendTargets=All: two targets, three portals.
    let targets = pairs(&[
        ("TargetName", "iqn.2003-01.org.linux-iscsi.h1:sn.0a1b"),
        ("TargetAddress", "192.168.10.5:3260,1"),
        ("TargetAddress", "[fd00:10::5]:3260,1"),
        ("TargetName", "iqn.2026-12.io.pollux:disk2"),
        ("TargetAddress", "192.168.10.6:3260,2"),
    ]);
    seeds.push(("send-targets".into(), pick::SEND_TARGETS, targets));
    // Every parser on the same bytes.
    seeds.push(("all-parsers".into(), pick::ALL, inquiry));
    seeds
        .into_iter()
        .map(|(name, pick, data)| {
            let mut d = vec![pick];
            d.extend(data);
            (name, d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use pollux_iscsi_host::login::parse_send_targets;
    use pollux_iscsi_host::scsi;

    use super::pick;

    /// Seeds that end in the fault they were written for.
    const FAULTS: &[(&str, &str)] = &[
        ("login-redirect", "redirected"),
        ("reject", "rejected"),
        ("async-logout-request", "log out"),
        ("read-direct-digest-error", "data digest error"),
    ];

    /// Data-In lands where it belongs, through the receive buffer or
    /// straight from the input; a digest error delivers no data.
    #[test]
    fn reads_deliver_their_data_either_way() {
        let data: Vec<u8> = (0..128u32).map(|i| (i * 29 + 3) as u8).collect();
        let seeds = super::iscsi_host_pdu();
        let seed = |name: &str| &seeds.iter().find(|(n, _)| n == name).expect("seed").1;
        for name in ["read-data-in", "read-direct"] {
            let fed = crate::iscsi_host_pdu::run(seed(name));
            assert_eq!(fed.read, [data.clone(), data[..64].to_vec()], "seed {name}");
        }
        let fed = crate::iscsi_host_pdu::run(seed("read-direct-digests"));
        assert_eq!(fed.read, [data.clone(), data[..100].to_vec()]);
        let fed = crate::iscsi_host_pdu::run(seed("read-direct-digest-error"));
        assert!(fed.read.is_empty(), "{fed:?}");
    }

    /// Each seed is an exchange the initiator takes to its end: logged in
    /// when it logs in, no fault but the one it was written for.
    #[test]
    fn every_pdu_seed_runs_as_written() {
        for (name, data) in super::iscsi_host_pdu() {
            assert!(data.len() <= 512, "seed {name}: {} bytes", data.len());
            let fed = crate::iscsi_host_pdu::run(&data);
            match FAULTS.iter().find(|(n, _)| *n == name) {
                Some((_, why)) => assert!(fed.fault.as_deref().is_some_and(|f| f.contains(why)), "seed {name}: {fed:?}"),
                None => assert!(fed.fault.is_none(), "seed {name}: {fed:?}"),
            }
            if name.starts_with("login") && name != "login-redirect" {
                assert!(fed.logged_in, "seed {name}: {fed:?}");
            }
        }
    }

    /// The seeds pick the parsers the target runs under those numbers.
    #[test]
    fn picks_name_the_target_parsers() {
        let parsers = crate::iscsi_host_scsi::PARSERS.map(|(name, _)| name);
        let picks = [
            (pick::SENSE, "sense"),
            (pick::INQUIRY, "inquiry"),
            (pick::SUPPORTED_VPD, "supported-vpd"),
            (pick::UNIT_SERIAL, "unit-serial"),
            (pick::DEVICE_ID, "device-id"),
            (pick::BLOCK_LIMITS, "block-limits"),
            (pick::PROVISIONING, "provisioning"),
            (pick::READ_CAPACITY16, "read-capacity16"),
            (pick::READ_CAPACITY10, "read-capacity10"),
            (pick::REPORT_LUNS, "report-luns"),
            (pick::SEND_TARGETS, "send-targets"),
        ];
        for (p, name) in picks {
            assert_eq!(parsers[usize::from(p)], name, "pick {p}");
        }
        assert_eq!(usize::from(pick::ALL), parsers.len(), "one past the parsers: all of them");
    }

    /// Each seed is data its parser takes.
    #[test]
    fn every_scsi_seed_parses() {
        for (name, data) in super::iscsi_host_scsi() {
            assert!(data.len() <= 512, "seed {name}: {} bytes", data.len());
            let b = &data[1..];
            let ok = match data[0] {
                pick::SENSE => scsi::Sense::parse(b).is_some(),
                pick::INQUIRY | pick::ALL => scsi::parse_inquiry(b).is_ok(),
                pick::SUPPORTED_VPD => scsi::parse_supported_vpd(b).is_ok_and(|p| p.len() == 7),
                pick::UNIT_SERIAL => scsi::parse_unit_serial(b).is_ok_and(|s| s.len() == 36),
                pick::DEVICE_ID => scsi::parse_device_id(b).is_ok_and(|d| d.len() == 5),
                pick::BLOCK_LIMITS => scsi::parse_block_limits(b).is_ok_and(|l| l.max_transfer_blocks == 0x400),
                pick::PROVISIONING => scsi::parse_provisioning(b).is_ok_and(|p| p.lbpu && p.provisioning_type == 2),
                pick::READ_CAPACITY16 => scsi::parse_read_capacity16(b).is_ok_and(|c| c.num_blocks == 0x20_0000 && c.block_size == 512),
                pick::READ_CAPACITY10 => scsi::parse_read_capacity10(b).is_ok_and(|c| c.block_size == 4096),
                pick::REPORT_LUNS => scsi::parse_report_luns(b)
                    .is_ok_and(|l| l.iter().map(scsi::decode_lun).collect::<Vec<_>>() == [Some(0), Some(1), Some(256), Some(16384)]),
                pick::SEND_TARGETS => parse_send_targets(b).is_ok_and(|t| t.len() == 2 && t[0].addresses.len() == 2),
                other => panic!("seed {name}: no parser {other}"),
            };
            assert!(ok, "seed {name} does not parse as written");
        }
    }
}
