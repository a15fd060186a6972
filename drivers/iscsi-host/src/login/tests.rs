//! The login state machine against a scripted target: Login Responses
//! written field by field, the Login Requests read back from their bytes.

use super::*;
use pollux_iscsi_spec::pdu::{BHS_LEN, pad};

const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a];
const ITT: u32 = 0x0001_0007;
const CMD_SN: u32 = 0x10;
const CID: u16 = 3;
const INITIATOR: &str = "iqn.2026-12.io.pollux:host1";
const TARGET: &str = "iqn.2026-12.io.pollux:disk1";

/// Login flags: T, C, CSG (bits 3-2), NSG (bits 1-0).
const T: u8 = 0x80;
const C: u8 = 0x40;
/// Security, no transit.
const SEC: u8 = 0x00;
/// Security to operational.
const SEC_TO_OP: u8 = T | CSG_OPERATIONAL;
/// Operational, no transit.
const OP: u8 = CSG_OPERATIONAL << 2;
/// Operational to full feature phase.
const OP_TO_FULL: u8 = T | (CSG_OPERATIONAL << 2) | FULL_FEATURE;

const USER: &str = "alice";
const SECRET: &str = "alice-secret-12";
const TARGET_USER: &str = "disk1-chap";
const TARGET_SECRET: &str = "disk1-secret-34";

fn params() -> LoginParams {
    let mut p = LoginParams::new(INITIATOR, Some(TARGET), ISID);
    p.cid = CID;
    p
}

fn with_chap(mutual: bool) -> LoginParams {
    let mut p = params();
    p.auth = Some(Chap {
        user: USER.into(),
        secret: SECRET.into(),
        mutual: mutual.then(|| (TARGET_USER.to_string(), TARGET_SECRET.to_string())),
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
    });
    p
}

/// Text data of these pairs, in order.
fn kv(list: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (k, v) in list {
        text::push(&mut t, k, v);
    }
    t
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A Login Request read back from its bytes.
struct Request {
    h: Bhs,
    keys: Vec<(String, String)>,
}

impl Request {
    fn get(&self, k: &str) -> Option<&str> {
        find(&self.keys, k)
    }
}

/// Read a Login Request and check what every request of a login carries:
/// the opcode with the I bit, the ISID, TSIH, ITT, CID and CmdSN of the
/// login, no AHS, reserved flag bits clear, the data padded with zeroes.
fn read_request(pdu: &[u8], tsih: u16) -> Request {
    let h = Bhs::parse(pdu).expect("a whole header");
    assert_eq!(h.opcode(), op::LOGIN);
    assert!(h.immediate(), "a Login Request is immediate");
    assert_eq!(h.flags & 0x30, 0, "reserved flag bits");
    assert_eq!((h.b2, h.b3), (0, 0), "version-max and version-min");
    assert_eq!(h.ahs_words, 0);
    assert_eq!(h.isid(), ISID);
    assert_eq!(h.tsih(), tsih);
    assert_eq!(h.itt(), ITT, "the ITT stays the login's");
    assert_eq!(h.cid(), CID);
    assert_eq!(h.w24.get(), CMD_SN, "the CmdSN stays the login's");
    let n = h.data_len();
    assert_eq!(pdu.len(), BHS_LEN + n + pad(n), "a header and padded data");
    assert!(pdu[BHS_LEN + n..].iter().all(|&b| b == 0), "padding is zeroes");
    let keys = text::parse(&pdu[BHS_LEN..BHS_LEN + n]).expect("the request's text parses");
    Request { h, keys }
}

/// A scripted target: it numbers its responses (StatSN) and gives the TSIH
/// set here.
struct Target {
    stat_sn: u32,
    tsih: u16,
    itt: u32,
}

impl Target {
    fn new() -> Target {
        Target { stat_sn: 0x5000, tsih: 0, itt: ITT }
    }

    /// A Login Response with these flags, Status-Class and Status-Detail.
    fn pdu(&mut self, flags: u8, class: u8, detail: u8, data: &[u8]) -> (Bhs, Vec<u8>) {
        let mut h = Bhs::new(op::LOGIN_RESP, flags);
        h.lun[..6].copy_from_slice(&ISID);
        h.lun[6..8].copy_from_slice(&self.tsih.to_be_bytes());
        h.itt.set(self.itt);
        h.w24.set(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        h.w28.set(CMD_SN);
        h.w32.set(CMD_SN + 31);
        h.w36.set((u32::from(class) << 24) | (u32::from(detail) << 16));
        h.set_data_len(data.len());
        (h, data.to_vec())
    }

    /// Answer with success and `raw` text.
    fn answer_raw(&mut self, l: &mut Login, flags: u8, raw: &[u8]) -> Result<Step, IscsiError> {
        let (h, d) = self.pdu(flags, 0, 0, raw);
        l.on_response(&h, &d)
    }

    fn answer(&mut self, l: &mut Login, flags: u8, keys: &[(&str, &str)]) -> Result<Step, IscsiError> {
        self.answer_raw(l, flags, &kv(keys))
    }

    /// Answer, and read the request that must follow; its ExpStatSN
    /// acknowledges this response.
    fn send(&mut self, l: &mut Login, flags: u8, keys: &[(&str, &str)]) -> Request {
        let s = self.answer(l, flags, keys);
        self.request(s)
    }

    fn request(&self, s: Result<Step, IscsiError>) -> Request {
        match s {
            Ok(Step::Send(pdu)) => {
                let r = read_request(&pdu, 0);
                assert_eq!(r.h.w28.get(), self.stat_sn, "ExpStatSN is the last StatSN + 1");
                r
            }
            other => panic!("expected a Login Request, got {other:?}"),
        }
    }
}

fn done(s: Result<Step, IscsiError>) -> Negotiated {
    match s {
        Ok(Step::Done(n)) => n,
        other => panic!("expected the end of the login, got {other:?}"),
    }
}

fn failed(s: Result<Step, IscsiError>) -> IscsiError {
    match s {
        Err(e) => e,
        Ok(s) => panic!("expected an error, got {s:?}"),
    }
}

/// A login error whose message holds every one of `words`.
fn login_error(s: Result<Step, IscsiError>, words: &[&str]) {
    let e = failed(s);
    match &e {
        IscsiError::Login(m) if words.iter().all(|w| m.contains(w)) => assert_eq!(e.errno(), libc::EACCES),
        _ => panic!("expected a login error naming {words:?}, got {e:?}"),
    }
}

/// The operational keys a normal session offers with `params()`.
fn offer() -> Vec<(String, String)> {
    owned(&[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "1048576"),
        ("FirstBurstLength", "262144"),
        ("MaxConnections", "1"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
    ])
}

/// A login without authentication up to the operational offer.
fn to_operational(p: LoginParams) -> (Login, Target, Request) {
    let mut l = Login::new(p, ITT, CMD_SN);
    read_request(&l.start(), 0);
    let mut t = Target::new();
    let ops = t.send(&mut l, SEC_TO_OP, &[("AuthMethod", "None")]);
    assert_eq!(ops.h.flags, OP_TO_FULL);
    (l, t, ops)
}

/// A login without authentication whose target answers the operational
/// offer with `answer` and ends the login (TSIH 1).
fn negotiate(p: LoginParams, answer: &[(&str, &str)]) -> Result<Step, IscsiError> {
    let (mut l, mut t, _) = to_operational(p);
    t.tsih = 1;
    t.answer(&mut l, OP_TO_FULL, answer)
}

#[test]
fn no_auth_login_negotiates_operational_keys() {
    let mut l = Login::new(params(), ITT, CMD_SN);
    let first = read_request(&l.start(), 0);
    assert_eq!(first.h.flags, SEC_TO_OP);
    assert_eq!(first.h.w28.get(), 0, "nothing to acknowledge yet");
    assert_eq!(
        first.keys,
        owned(&[("InitiatorName", INITIATOR), ("SessionType", "Normal"), ("TargetName", TARGET), ("AuthMethod", "None")])
    );

    let mut t = Target::new();
    let ops = t.send(&mut l, SEC_TO_OP, &[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")]);
    assert_eq!(ops.h.flags, OP_TO_FULL);
    assert_eq!(ops.keys, offer());

    t.tsih = 0x0a01;
    let n = done(t.answer(
        &mut l,
        OP_TO_FULL,
        &[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "524288"),
            ("FirstBurstLength", "65536"),
            ("MaxConnections", "1"),
            ("MaxOutstandingR2T", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("TargetAlias", "disk one"),
        ],
    ));
    assert_eq!(
        n,
        Negotiated {
            tsih: 0x0a01,
            header_digest: false,
            data_digest: false,
            max_send_data_segment: 65536,
            max_recv_data_segment: 262144,
            first_burst: 65536,
            max_burst: 524288,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 0,
            target_alias: Some("disk one".into()),
            target_portal_group_tag: Some(1),
            stat_sn: t.stat_sn - 1,
            exp_cmd_sn: CMD_SN,
            max_cmd_sn: CMD_SN + 31,
        }
    );
}

#[test]
fn requests_carry_the_tsih_and_acknowledge_stat_sn_across_its_wrap() {
    let mut p = params();
    p.tsih = 0x0077;
    let mut l = Login::new(p, ITT, CMD_SN);
    read_request(&l.start(), 0x0077);
    let mut t = Target { stat_sn: u32::MAX, tsih: 0x0077, itt: ITT };
    let (h, d) = t.pdu(SEC_TO_OP, 0, 0, &kv(&[("AuthMethod", "None")]));
    let Ok(Step::Send(pdu)) = l.on_response(&h, &d) else { panic!("no operational request") };
    let r = read_request(&pdu, 0x0077);
    assert_eq!(r.h.w28.get(), 0, "ExpStatSN after StatSN 0xffffffff");
    let n = done(t.answer(&mut l, OP_TO_FULL, &[]));
    assert_eq!((n.tsih, n.stat_sn), (0x0077, 0));
}

#[test]
fn unanswered_keys_keep_their_defaults() {
    let n = done(negotiate(params(), &[]));
    let defaults = Negotiated::defaults(&params());
    assert_eq!(n, Negotiated { tsih: 1, stat_sn: 0x5001, exp_cmd_sn: CMD_SN, max_cmd_sn: CMD_SN + 31, ..defaults });
    assert_eq!(n.max_send_data_segment, 8192, "RFC 7143's MaxRecvDataSegmentLength default");
}

#[test]
fn burst_and_r2t_keys_combine_by_their_rules() {
    // InitialR2T: OR; ImmediateData: AND.
    for (ours, theirs, want) in [(false, "Yes", true), (false, "No", false), (true, "No", true), (true, "Yes", true)] {
        let mut p = params();
        p.initial_r2t = ours;
        let n = done(negotiate(p, &[("InitialR2T", theirs)]));
        assert_eq!(n.initial_r2t, want, "InitialR2T {ours} and {theirs}");
    }
    for (ours, theirs, want) in [(true, "No", false), (true, "Yes", true), (false, "Yes", false), (false, "No", false)] {
        let mut p = params();
        p.immediate_data = ours;
        let n = done(negotiate(p, &[("ImmediateData", theirs)]));
        assert_eq!(n.immediate_data, want, "ImmediateData {ours} and {theirs}");
    }
    // Bursts: the smaller value; FirstBurstLength never above MaxBurstLength.
    for (first, max, want) in [
        ("65536", "262144", (65536, 262144)),
        ("1048576", "16777215", (262144, 1048576)),
        ("131072", "65536", (65536, 65536)),
        ("512", "512", (512, 512)),
    ] {
        let n = done(negotiate(params(), &[("FirstBurstLength", first), ("MaxBurstLength", max)]));
        assert_eq!((n.first_burst, n.max_burst), want, "FirstBurstLength {first}, MaxBurstLength {max}");
    }
    // The target's values that exceed what this initiator does.
    let n = done(negotiate(params(), &[("MaxOutstandingR2T", "16"), ("ErrorRecoveryLevel", "2"), ("DefaultTime2Retain", "20")]));
    assert_eq!((n.max_outstanding_r2t, n.error_recovery_level, n.default_time2retain), (1, 0, 20));
}

/// One-way CHAP with algorithm `a` and the target's `challenge`.
fn one_way_chap(a: Algorithm, challenge: &[u8]) {
    let mut l = Login::new(with_chap(false), ITT, CMD_SN);
    let first = read_request(&l.start(), 0);
    assert_eq!(first.h.flags, SEC, "CHAP offered: no transit before it is done");
    assert_eq!(first.get("AuthMethod"), Some("CHAP,None"));
    let mut t = Target::new();
    let r = t.send(&mut l, SEC, &[("AuthMethod", "CHAP")]);
    assert_eq!(r.h.flags, SEC);
    assert_eq!(r.keys, owned(&[("CHAP_A", "7,5")]));
    let code = a.code().to_string();
    let r = t.send(&mut l, SEC, &[("CHAP_A", &code), ("CHAP_I", "42"), ("CHAP_C", &text::hex(challenge))]);
    assert_eq!(r.h.flags, SEC_TO_OP);
    assert_eq!(r.keys.len(), 2, "CHAP_N and CHAP_R, no challenge of ours: {:?}", r.keys);
    assert_eq!(r.get("CHAP_N"), Some(USER));
    let resp = text::binary(r.get("CHAP_R").expect("CHAP_R")).expect("CHAP_R is binary");
    assert_eq!(resp, a.response(42, SECRET.as_bytes(), challenge));
    assert_eq!(resp.len(), a.digest_len());
    let ops = t.send(&mut l, SEC_TO_OP, &[]);
    assert_eq!(ops.h.flags, OP_TO_FULL);
    assert_eq!(ops.keys, offer());
    t.tsih = 9;
    let n = done(t.answer(&mut l, OP_TO_FULL, &[("MaxRecvDataSegmentLength", "8192")]));
    assert_eq!(n.tsih, 9);
}

#[test]
fn one_way_chap_md5() {
    let challenge: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    one_way_chap(Algorithm::Md5, &challenge);
}

#[test]
fn one_way_chap_sha256() {
    let challenge: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(101) ^ 0xc3).collect();
    one_way_chap(Algorithm::Sha256, &challenge);
}

#[test]
fn chap_refusals_and_malformed_challenges_fail() {
    let challenge = text::hex(&[7; 16]);
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("CHAP_A", "6"), ("CHAP_I", "1"), ("CHAP_C", &challenge)], "no CHAP algorithm"),
        (&[("CHAP_A", "5,7"), ("CHAP_I", "1"), ("CHAP_C", &challenge)], "no CHAP algorithm"),
        (&[("CHAP_A", "5"), ("CHAP_C", &challenge)], "CHAP_I missing"),
        (&[("CHAP_A", "5"), ("CHAP_I", "256"), ("CHAP_C", &challenge)], "CHAP_I missing"),
        (&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xzz")], "CHAP_C missing or malformed"),
    ];
    for (keys, why) in cases {
        let mut l = Login::new(with_chap(false), ITT, CMD_SN);
        l.start();
        let mut t = Target::new();
        t.send(&mut l, SEC, &[("AuthMethod", "CHAP")]);
        login_error(t.answer(&mut l, SEC, keys), &[why]);
    }
    // CHAP chosen, but the target would leave the security stage at once.
    let mut l = Login::new(with_chap(false), ITT, CMD_SN);
    l.start();
    login_error(Target::new().answer(&mut l, SEC_TO_OP, &[("AuthMethod", "CHAP")]), &["chose CHAP and ended"]);
    // The target refuses our response.
    let mut l = Login::new(with_chap(false), ITT, CMD_SN);
    l.start();
    let mut t = Target::new();
    t.send(&mut l, SEC, &[("AuthMethod", "CHAP")]);
    t.send(&mut l, SEC, &[("CHAP_A", "5"), ("CHAP_I", "3"), ("CHAP_C", &challenge)]);
    let (h, d) = t.pdu(0, 2, 1, &[]);
    let e = failed(l.on_response(&h, &d));
    assert!(matches!(e, IscsiError::LoginRefused { class: 2, detail: 1, name: "authentication failure" }), "{e:?}");
}

/// A mutual CHAP login up to the initiator's response and challenge: the
/// login, the target, and the initiator's CHAP_I and CHAP_C.
fn mutual_until_our_challenge(a: Algorithm) -> (Login, Target, u8, Vec<u8>) {
    let mut l = Login::new(with_chap(true), ITT, CMD_SN);
    let first = read_request(&l.start(), 0);
    assert_eq!(first.get("AuthMethod"), Some("CHAP,None"));
    let mut t = Target::new();
    t.send(&mut l, SEC, &[("AuthMethod", "CHAP")]);
    let theirs = vec![0x11; a.digest_len()];
    let code = a.code().to_string();
    let r = t.send(&mut l, SEC, &[("CHAP_A", &code), ("CHAP_I", "200"), ("CHAP_C", &text::hex(&theirs))]);
    assert_eq!(r.h.flags, SEC_TO_OP);
    assert_eq!(r.get("CHAP_N"), Some(USER));
    let resp = text::binary(r.get("CHAP_R").expect("CHAP_R")).expect("binary");
    assert_eq!(resp, a.response(200, SECRET.as_bytes(), &theirs));
    let id = text::number(r.get("CHAP_I").expect("our CHAP_I"), 0, 255).expect("an identifier") as u8;
    let ours = text::binary(r.get("CHAP_C").expect("our CHAP_C")).expect("binary");
    assert_eq!(ours.len(), a.digest_len());
    assert_ne!(ours, theirs);
    (l, t, id, ours)
}

#[test]
fn mutual_chap_target_that_answers_right_logs_in() {
    for a in [Algorithm::Md5, Algorithm::Sha256] {
        let (mut l, mut t, id, ours) = mutual_until_our_challenge(a);
        let r = text::hex(&a.response(id, TARGET_SECRET.as_bytes(), &ours));
        let ops = t.send(&mut l, SEC_TO_OP, &[("CHAP_N", TARGET_USER), ("CHAP_R", &r)]);
        assert_eq!(ops.h.flags, OP_TO_FULL);
        assert_eq!(ops.keys, offer());
        t.tsih = 5;
        assert_eq!(done(t.answer(&mut l, OP_TO_FULL, &[])).tsih, 5);
    }
    // Its answer in a response of its own (T=0), then the transit.
    let a = Algorithm::Sha256;
    let (mut l, mut t, id, ours) = mutual_until_our_challenge(a);
    let r = text::hex(&a.response(id, TARGET_SECRET.as_bytes(), &ours));
    let again = t.send(&mut l, SEC, &[("CHAP_N", TARGET_USER), ("CHAP_R", &r)]);
    assert_eq!((again.h.flags, again.keys.len()), (SEC_TO_OP, 0));
    let ops = t.send(&mut l, SEC_TO_OP, &[]);
    assert_eq!(ops.keys, offer());
}

#[test]
fn mutual_chap_challenges_differ_between_logins() {
    let (_, _, _, one) = mutual_until_our_challenge(Algorithm::Md5);
    let (_, _, _, two) = mutual_until_our_challenge(Algorithm::Md5);
    assert_ne!(one, two, "challenges come from the system's generator");
}

#[test]
fn mutual_chap_target_that_answers_wrong_fails() {
    let a = Algorithm::Md5;
    type Answer = fn(u8, &[u8]) -> Vec<(String, String)>;
    let right = |id: u8, c: &[u8]| text::hex(&Algorithm::Md5.response(id, TARGET_SECRET.as_bytes(), c));
    let cases: [(Answer, &str); 6] = [
        // A response of the wrong secret.
        (
            |id, c| owned(&[("CHAP_N", TARGET_USER), ("CHAP_R", &text::hex(&Algorithm::Md5.response(id, SECRET.as_bytes(), c)))]),
            "failed mutual CHAP",
        ),
        // The right secret for another identifier.
        (
            |id, c| {
                owned(&[
                    ("CHAP_N", TARGET_USER),
                    ("CHAP_R", &text::hex(&Algorithm::Md5.response(id.wrapping_add(1), TARGET_SECRET.as_bytes(), c))),
                ])
            },
            "failed mutual CHAP",
        ),
        // The right response under another name.
        (
            |id, c| owned(&[("CHAP_N", "someone-else"), ("CHAP_R", &text::hex(&Algorithm::Md5.response(id, TARGET_SECRET.as_bytes(), c)))]),
            "failed mutual CHAP",
        ),
        (|_, _| owned(&[("CHAP_N", TARGET_USER)]), "no valid CHAP_R"),
        (|_, _| owned(&[("CHAP_N", TARGET_USER), ("CHAP_R", "0xnothex")]), "no valid CHAP_R"),
        (|id, c| owned(&[("CHAP_R", &text::hex(&Algorithm::Md5.response(id, TARGET_SECRET.as_bytes(), c)))]), "no CHAP_N"),
    ];
    for (answer, why) in cases {
        let (mut l, mut t, id, ours) = mutual_until_our_challenge(a);
        let keys = answer(id, &ours);
        let refs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        login_error(t.answer(&mut l, SEC_TO_OP, &refs), &[why]);
    }
    // A truncated response (a prefix of the right one).
    let (mut l, mut t, id, ours) = mutual_until_our_challenge(a);
    let r = right(id, &ours);
    login_error(t.answer(&mut l, SEC_TO_OP, &[("CHAP_N", TARGET_USER), ("CHAP_R", &r[..r.len() - 2])]), &["failed mutual CHAP"]);
}

#[test]
fn chap_required_without_credentials_is_a_clear_error() {
    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    login_error(Target::new().answer(&mut l, SEC, &[("AuthMethod", "CHAP")]), &["requires CHAP", "no credentials"]);
}

#[test]
fn mutual_chap_asked_and_the_target_will_not_authenticate() {
    for flags in [SEC_TO_OP, SEC] {
        let mut l = Login::new(with_chap(true), ITT, CMD_SN);
        l.start();
        login_error(Target::new().answer(&mut l, flags, &[("AuthMethod", "None")]), &["would not authenticate itself"]);
    }
    // One-way CHAP offered as CHAP,None: None is an answer it takes.
    let mut l = Login::new(with_chap(false), ITT, CMD_SN);
    l.start();
    let mut t = Target::new();
    let ops = t.send(&mut l, SEC_TO_OP, &[("AuthMethod", "None")]);
    assert_eq!(ops.keys, offer());
    // An answer that is neither.
    let mut l = Login::new(with_chap(false), ITT, CMD_SN);
    l.start();
    login_error(Target::new().answer(&mut l, SEC, &[("AuthMethod", "Reject")]), &["AuthMethod=Reject"]);
}

#[test]
fn refusals_name_the_status() {
    for (class, detail, name) in [
        (2, 1, "authentication failure"),
        (3, 1, "service unavailable"),
        (2, 3, "target not found"),
        (2, 0x0b, "invalid request during login"),
        (2, 0x42, "unknown status"),
    ] {
        let mut l = Login::new(with_chap(false), ITT, CMD_SN);
        l.start();
        let (h, d) = Target::new().pdu(0, class, detail, &[]);
        let e = failed(l.on_response(&h, &d));
        match e {
            IscsiError::LoginRefused { class: c, detail: d, name: n } => assert_eq!((c, d, n), (class, detail, name)),
            ref other => panic!("{class}/{detail}: {other:?}"),
        }
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(e.errno(), libc::EACCES);
    }
    // An authentication failure without credentials says CHAP may be
    // what the target wants.
    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    let (h, d) = Target::new().pdu(0, 2, 1, &[]);
    login_error(l.on_response(&h, &d), &["authentication failure", "may require CHAP"]);
    // Refused in the operational stage.
    let (mut l, mut t, _) = to_operational(params());
    let (h, d) = t.pdu(0, 3, 2, &[]);
    assert!(matches!(l.on_response(&h, &d), Err(IscsiError::LoginRefused { class: 3, detail: 2, name: "out of resources" })));
}

#[test]
fn redirection_gives_the_address_without_the_tag() {
    for (detail, to, want) in
        [(1, "10.0.0.2:3261,1", "10.0.0.2:3261"), (2, "[fd00::2]:3260,2", "[fd00::2]:3260"), (1, "10.0.0.3:3260", "10.0.0.3:3260")]
    {
        let mut l = Login::new(params(), ITT, CMD_SN);
        l.start();
        let (h, d) = Target::new().pdu(0, 1, detail, &kv(&[("TargetAddress", to)]));
        match l.on_response(&h, &d) {
            Ok(Step::Redirect(a)) => assert_eq!(a, want),
            other => panic!("{to}: {other:?}"),
        }
    }
    // In the operational stage too.
    let (mut l, mut t, _) = to_operational(params());
    let (h, d) = t.pdu(0, 1, 1, &kv(&[("TargetAddress", "10.0.0.2:3261,1")]));
    assert!(matches!(l.on_response(&h, &d), Ok(Step::Redirect(a)) if a == "10.0.0.2:3261"));
    // A redirection without an address.
    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    let (h, d) = Target::new().pdu(0, 1, 1, &[]);
    login_error(l.on_response(&h, &d), &["without a TargetAddress", "target moved temporarily"]);
}

#[test]
fn continued_response_is_gathered_before_it_is_read() {
    let (mut l, mut t, _) = to_operational(params());
    let whole = kv(&[("MaxRecvDataSegmentLength", "65536"), ("TargetAlias", "continued"), ("MaxBurstLength", "262144")]);
    // Cut in the middle of a key.
    let (a, b) = whole.split_at(10);
    let (h, d) = t.pdu(C | OP, 0, 0, a);
    let more = t.request(l.on_response(&h, &d));
    assert_eq!(more.h.flags, OP, "an empty request, no transit, in the same stage");
    assert_eq!(more.h.data_len(), 0);
    t.tsih = 3;
    let n = done(t.answer_raw(&mut l, OP_TO_FULL, b));
    assert_eq!((n.max_send_data_segment, n.max_burst), (65536, 262144));
    assert_eq!(n.target_alias.as_deref(), Some("continued"));

    // In the security stage: a long CHAP challenge over three PDUs.
    let mut l = Login::new(with_chap(false), ITT, CMD_SN);
    l.start();
    let mut t = Target::new();
    t.send(&mut l, SEC, &[("AuthMethod", "CHAP")]);
    let challenge: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 1) as u8).collect();
    let whole = kv(&[("CHAP_A", "5"), ("CHAP_I", "9"), ("CHAP_C", &text::hex(&challenge))]);
    let (a, rest) = whole.split_at(700);
    let (b, c) = rest.split_at(700);
    for part in [a, b] {
        let (h, d) = t.pdu(C | SEC, 0, 0, part);
        let more = t.request(l.on_response(&h, &d));
        assert_eq!((more.h.flags, more.h.data_len()), (SEC, 0));
    }
    let s = t.answer_raw(&mut l, SEC, c);
    let r = t.request(s);
    assert_eq!(text::binary(r.get("CHAP_R").expect("CHAP_R")).expect("binary"), Algorithm::Md5.response(9, SECRET.as_bytes(), &challenge));
}

#[test]
fn continued_and_transit_together_fail() {
    let (mut l, mut t, _) = to_operational(params());
    login_error(t.answer(&mut l, C | OP_TO_FULL, &[("MaxRecvDataSegmentLength", "8192")]), &["both T and C"]);
}

#[test]
fn a_target_that_never_ends_the_login_is_abandoned() {
    let (mut l, mut t, _) = to_operational(params());
    // The security response was round 1.
    for round in 2..=MAX_ROUNDS {
        let r = t.send(&mut l, OP, &[]);
        assert_eq!((r.h.flags, r.keys.len()), (OP_TO_FULL, 0), "round {round}");
    }
    login_error(t.answer(&mut l, OP, &[]), &["did not end the login"]);
}

#[test]
fn a_response_of_another_task_opcode_or_stage_fails() {
    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    let mut t = Target { itt: ITT + 1, ..Target::new() };
    login_error(t.answer(&mut l, SEC_TO_OP, &[("AuthMethod", "None")]), &["task tag"]);

    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    let (mut h, d) = Target::new().pdu(SEC_TO_OP, 0, 0, &kv(&[("AuthMethod", "None")]));
    h.opcode = op::TEXT_RESP;
    login_error(l.on_response(&h, &d), &["opcode 0x24"]);

    // An answer in the operational stage to a request in the security stage.
    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    login_error(Target::new().answer(&mut l, OP_TO_FULL, &[]), &["stage 1", "stage 0"]);

    // Security straight to full feature phase, which was not asked.
    let mut l = Login::new(params(), ITT, CMD_SN);
    l.start();
    let mut t = Target { tsih: 1, ..Target::new() };
    login_error(t.answer(&mut l, T | FULL_FEATURE, &[("AuthMethod", "None")]), &["security to stage 3"]);
}

#[test]
fn the_end_of_the_login_needs_a_tsih() {
    let (mut l, mut t, _) = to_operational(params());
    login_error(t.answer(&mut l, OP_TO_FULL, &[]), &["without a TSIH"]);
}

#[test]
fn malformed_values_fail() {
    for (k, v) in [
        ("MaxRecvDataSegmentLength", "abc"),
        ("MaxRecvDataSegmentLength", "100"),
        ("MaxRecvDataSegmentLength", "16777216"),
        ("MaxBurstLength", "-1"),
        ("FirstBurstLength", "0x"),
        ("InitialR2T", "Maybe"),
        ("ImmediateData", "yes"),
        ("MaxOutstandingR2T", "0"),
        ("ErrorRecoveryLevel", "3"),
        ("DefaultTime2Wait", "3601"),
        ("TargetPortalGroupTag", "65536"),
        ("MaxConnections", "0"),
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "CRC32C"),
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "MD5"),
    ] {
        login_error(negotiate(params(), &[(k, v)]), &[k, v]);
    }
    login_error(negotiate(params(), &[("DataPDUInOrder", "No")]), &["out of order"]);
    login_error(negotiate(params(), &[("DataSequenceInOrder", "No")]), &["out of order"]);
    // Text that does not parse.
    let (mut l, mut t, _) = to_operational(params());
    login_error(t.answer_raw(&mut l, OP_TO_FULL, b"MaxBurstLength\0"), &["login text"]);
    let (mut l, mut t, _) = to_operational(params());
    login_error(t.answer_raw(&mut l, OP_TO_FULL, b"MaxBurstLength=512\0MaxBurstLength=1024\0"), &["login text", "twice"]);
    let (mut l, mut t, _) = to_operational(params());
    login_error(t.answer_raw(&mut l, OP_TO_FULL, b"TargetAlias=\xff\0"), &["UTF-8"]);
    // Values the initiator passes over.
    let n = done(negotiate(params(), &[("MaxBurstLength", "Reject"), ("InitialR2T", "Irrelevant"), ("X-com.example.Bar", "7")]));
    assert_eq!((n.max_burst, n.initial_r2t), (262144, true));
}

#[test]
fn text_beyond_the_limit_fails() {
    let (mut l, mut t, _) = to_operational(params());
    let chunk = vec![b'a'; 8192];
    for _ in 0..MAX_TEXT / chunk.len() {
        let (h, d) = t.pdu(C | OP, 0, 0, &chunk);
        t.request(l.on_response(&h, &d));
    }
    let (h, d) = t.pdu(C | OP, 0, 0, b"x");
    login_error(l.on_response(&h, &d), &["over 65536 bytes"]);
}

#[test]
fn keys_the_target_offers_are_answered() {
    let (mut l, mut t, _) = to_operational(params());
    let r = t.send(&mut l, OP, &[("X-com.example.Foo", "1"), ("DefaultTime2Wait", "5")]);
    assert_eq!(r.h.flags, OP_TO_FULL);
    assert_eq!(r.get("X-com.example.Foo"), Some("NotUnderstood"));
    t.tsih = 4;
    let n = done(t.answer(&mut l, OP_TO_FULL, &[("MaxRecvDataSegmentLength", "16384")]));
    assert_eq!((n.default_time2wait, n.max_send_data_segment), (5, 16384));

    // A discovery session offers none of these: the target's offers get
    // the initiator's value by each key's rule.
    let (mut l, mut t, _) = to_operational(LoginParams { cid: CID, ..LoginParams::new(INITIATOR, None, ISID) });
    let r = t.send(
        &mut l,
        OP,
        &[
            ("X-com.example.Foo", "1"),
            ("DefaultTime2Wait", "5"),
            ("ErrorRecoveryLevel", "2"),
            ("MaxConnections", "4"),
            ("TargetAlias", "portal"),
            ("MaxRecvDataSegmentLength", "32768"),
        ],
    );
    assert_eq!(
        r.keys,
        owned(&[("X-com.example.Foo", "NotUnderstood"), ("DefaultTime2Wait", "5"), ("ErrorRecoveryLevel", "0"), ("MaxConnections", "1")]),
        "declarations are not answered"
    );
    t.tsih = 4;
    let n = done(t.answer(&mut l, OP_TO_FULL, &[]));
    assert_eq!((n.default_time2wait, n.error_recovery_level, n.max_send_data_segment), (5, 0, 32768));
}

/// RFC 7143 6.2: neither side negotiates a key more than once in a login;
/// a target that sees it again refuses the login (Pollux's own target
/// answers "key ... negotiated twice", Status-Class 2).
#[test]
fn keys_the_target_answered_are_not_negotiated_again() {
    let (mut l, mut t, _) = to_operational(params());
    let r = t.send(
        &mut l,
        OP,
        &[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxConnections", "1"),
            ("MaxOutstandingR2T", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("X-com.example.Foo", "1"),
        ],
    );
    assert_eq!(r.keys, owned(&[("X-com.example.Foo", "NotUnderstood")]));
}

#[test]
fn digests_asked_are_offered_as_crc32c() {
    for (hd, dd) in [(true, true), (true, false), (false, true)] {
        let mut p = params();
        p.header_digest = hd;
        p.data_digest = dd;
        let name = |on: bool| if on { "CRC32C" } else { "None" };
        let (mut l, mut t, ops) = to_operational(p.clone());
        assert_eq!((ops.get("HeaderDigest"), ops.get("DataDigest")), (Some(name(hd)), Some(name(dd))));
        t.tsih = 1;
        let n = done(t.answer(&mut l, OP_TO_FULL, &[("HeaderDigest", name(hd)), ("DataDigest", name(dd))]));
        assert_eq!((n.header_digest, n.data_digest), (hd, dd));
        // A target that answers None to a digest asked for.
        let refused = if hd { "HeaderDigest" } else { "DataDigest" };
        login_error(negotiate(p, &[(refused, "None")]), &[refused, "to our CRC32C"]);
    }
}

#[test]
fn discovery_session_offers_no_session_wide_keys() {
    let p = LoginParams { cid: CID, ..LoginParams::new(INITIATOR, None, ISID) };
    let mut l = Login::new(p, ITT, CMD_SN);
    let first = read_request(&l.start(), 0);
    assert_eq!(first.keys, owned(&[("InitiatorName", INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "None")]));
    let mut t = Target::new();
    let ops = t.send(&mut l, SEC_TO_OP, &[("AuthMethod", "None")]);
    assert_eq!(ops.keys, owned(&[("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144")]));
    t.tsih = 0x20;
    let n = done(t.answer(&mut l, OP_TO_FULL, &[("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "8192")]));
    assert_eq!((n.tsih, n.max_send_data_segment), (0x20, 8192));
}

#[test]
fn send_targets_answer_lists_targets_and_addresses() {
    let answer = kv(&[
        ("TargetName", "iqn.2003-01.org.linux-iscsi.h1:sn.0a1b"),
        ("TargetAddress", "192.168.10.5:3260,1"),
        ("TargetAddress", "[fd00:10::5]:3260,1"),
        ("TargetName", "iqn.2026-12.io.pollux:disk2"),
        ("TargetAlias", "ignored"),
        ("TargetAddress", "192.168.10.6:3261,2"),
    ]);
    let found = parse_send_targets(&answer).expect("a valid answer");
    assert_eq!(
        found,
        [
            DiscoveredTarget {
                name: "iqn.2003-01.org.linux-iscsi.h1:sn.0a1b".into(),
                addresses: vec!["192.168.10.5:3260,1".into(), "[fd00:10::5]:3260,1".into()],
            },
            DiscoveredTarget { name: "iqn.2026-12.io.pollux:disk2".into(), addresses: vec!["192.168.10.6:3261,2".into()] },
        ]
    );
    // A target reached at the discovery portal lists no address.
    assert_eq!(parse_send_targets(b"TargetName=iqn.x:y\0").unwrap(), [DiscoveredTarget { name: "iqn.x:y".into(), addresses: vec![] }]);
    assert!(parse_send_targets(b"").unwrap().is_empty());
    // Padding NULs of a data segment are skipped.
    assert_eq!(parse_send_targets(b"TargetName=iqn.x:y\0\0\0\0").unwrap().len(), 1);
}

#[test]
fn send_targets_answer_refuses_malformed_text() {
    let e = parse_send_targets(&kv(&[("TargetAddress", "10.0.0.1:3260,1"), ("TargetName", "iqn.x:y")])).unwrap_err();
    assert!(matches!(&e, IscsiError::Protocol(m) if m.contains("TargetAddress before any TargetName")), "{e:?}");
    assert!(matches!(parse_send_targets(b"TargetName=iqn.x:y\0garbage\0"), Err(IscsiError::Protocol(m)) if m.contains("without '='")));
    assert!(matches!(parse_send_targets(b"TargetName=\xff\0"), Err(IscsiError::Protocol(m)) if m.contains("UTF-8")));
    // Limits: addresses per target, targets per answer.
    let mut many = kv(&[("TargetName", "iqn.x:y")]);
    for i in 0..300 {
        text::push(&mut many, "TargetAddress", &format!("10.0.{}.{}:3260,1", i / 256, i % 256));
    }
    assert_eq!(parse_send_targets(&many).unwrap()[0].addresses.len(), 256);
    let mut targets = Vec::new();
    for i in 0..4097 {
        text::push(&mut targets, "TargetName", &format!("iqn.x:{i}"));
    }
    assert!(matches!(parse_send_targets(&targets), Err(IscsiError::Protocol(m)) if m.contains("4096")));
}
