//! Login negotiation against hand-written requests.

use super::*;
use crate::chap::Algorithm;
use crate::pdu::op;

fn ep() -> Endpoint {
    Endpoint { local: "127.0.0.1:3260".parse().unwrap(), peer: "127.0.0.1:5000".parse().unwrap(), portal_group: 1 }
}

fn req(flags: u8, text: &str) -> (Bhs, Vec<u8>) {
    let mut h = Bhs::new(op::LOGIN | 0x40, flags);
    h.lun[..6].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
    let data: Vec<u8> = text.split(';').flat_map(|kv| kv.bytes().chain([0])).collect();
    (h, data)
}

fn pairs(r: &Reply) -> Vec<(String, String)> {
    text::parse(&r.text).unwrap()
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

#[test]
fn discovery_login_negotiates_operational_keys() {
    let mut l = Login::new(ep());
    // Straight to operational, then full feature (no security needed).
    let (h, d) = req(
        0x80 | (OPERATIONAL << 2) | FULL_FEATURE,
        "InitiatorName=iqn.i;SessionType=Discovery;HeaderDigest=CRC32C,None;DataDigest=None;MaxRecvDataSegmentLength=65536;ErrorRecoveryLevel=2;X-foo=1;DefaultTime2Wait=5",
    );
    let r = l.step(&h, &d);
    assert!(!r.failed(), "{:?}", r.status);
    assert!(r.complete);
    let p = pairs(&r);
    assert_eq!(get(&p, "HeaderDigest"), Some("CRC32C"));
    assert_eq!(get(&p, "DataDigest"), Some("None"));
    assert_eq!(get(&p, "ErrorRecoveryLevel"), Some("0"));
    assert_eq!(get(&p, "X-foo"), Some("NotUnderstood"));
    assert_eq!(get(&p, "DefaultTime2Wait"), Some("5"));
    assert!(get(&p, "MaxRecvDataSegmentLength").is_some());
    assert_eq!(l.params.max_send_seg, 65536);
    assert!(l.params.header_digest);
}

#[test]
fn bad_requests_fail_with_the_right_status() {
    // No InitiatorName.
    let mut l = Login::new(ep());
    let (h, d) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "SessionType=Discovery");
    assert_eq!(l.step(&h, &d).status, status::MISSING_PARAMETER);
    // Unknown target.
    let mut l = Login::new(ep());
    let (h, d) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "InitiatorName=iqn.i;TargetName=iqn.none:x");
    assert_eq!(l.step(&h, &d).status, status::NOT_FOUND);
    // Bad stage transition (operational to security).
    let mut l = Login::new(ep());
    let (h, d) = req(0x80 | (OPERATIONAL << 2) | SECURITY, "InitiatorName=iqn.i;SessionType=Discovery");
    assert_eq!(l.step(&h, &d).status, status::INITIATOR_ERROR);
    // Version above 0.
    let mut l = Login::new(ep());
    let (mut h, d) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "InitiatorName=iqn.i;SessionType=Discovery");
    h.b2 = 1;
    h.b3 = 1;
    assert_eq!(l.step(&h, &d).status, status::UNSUPPORTED_VERSION);
    // Malformed text.
    let mut l = Login::new(ep());
    let (h, _) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "");
    assert_eq!(l.step(&h, b"garbage\0").status, status::INITIATOR_ERROR);
    // A key twice in one negotiation.
    let mut l = Login::new(ep());
    let (h, d) = req(OPERATIONAL << 2, "InitiatorName=iqn.i;SessionType=Discovery;MaxBurstLength=4096");
    assert!(!l.step(&h, &d).failed());
    let (h, d) = req(OPERATIONAL << 2, "MaxBurstLength=8192");
    assert_eq!(l.step(&h, &d).status, status::INITIATOR_ERROR);
}

#[test]
fn bad_values_get_reject_and_continuation_waits() {
    let mut l = Login::new(ep());
    let (h, d) = req(0x40 | (OPERATIONAL << 2), "InitiatorName=iqn.i;Sess");
    let r = l.step(&h, &d[..d.len() - 1]);
    assert!(!r.failed() && r.text.is_empty() && !r.complete);
    let (h, _) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "");
    let r = l.step(&h, b"ionType=Discovery\0MaxBurstLength=12\0ImmediateData=Maybe\0");
    assert!(!r.failed(), "{:?}", r.status);
    let p = pairs(&r);
    assert_eq!(get(&p, "MaxBurstLength"), Some("Reject"));
    assert_eq!(get(&p, "ImmediateData"), Some("Reject"));
}

#[test]
fn mutual_chap_with_sha256_and_md5() {
    // A target that requires mutual CHAP, with its auth group.
    {
        let mut cfg = config::lock();
        cfg.auth_groups.insert(
            901,
            config::AuthGroup {
                tag: 901,
                secrets: vec![config::Secret {
                    user: "u".into(),
                    secret: "initiator-secret".into(),
                    muser: Some("tgt".into()),
                    msecret: Some("target-secret".into()),
                }],
            },
        );
        cfg.initiator_groups.insert(901, config::InitiatorGroup { tag: 901, initiators: vec!["ANY".into()], netmasks: vec!["ANY".into()] });
        let dev = pollux_scsi::Device::new("iqn.2025-01.io.pollux:chaptest");
        cfg.targets.push(config::TargetNode {
            name: "iqn.2025-01.io.pollux:chaptest".into(),
            alias: String::new(),
            pg_ig_maps: vec![(1, 901)],
            luns: Vec::new(),
            queue_depth: 8,
            chap: config::ChapPolicy { disable_chap: false, require_chap: true, mutual_chap: true, chap_group: 901 },
            header_digest: false,
            data_digest: false,
            device: dev,
        });
    }
    for (alg, code) in [(Algorithm::Sha256, "7"), (Algorithm::Md5, "5")] {
        let mut l = Login::new(ep());
        let (h, d) = req(SECURITY << 2, "InitiatorName=iqn.i;TargetName=iqn.2025-01.io.pollux:chaptest;AuthMethod=None,CHAP");
        let r = l.step(&h, &d);
        assert_eq!(get(&pairs(&r), "AuthMethod"), Some("CHAP"));
        let (h, d) = req(SECURITY << 2, &format!("CHAP_A={code},5"));
        let r = l.step(&h, &d);
        let p = pairs(&r);
        assert_eq!(get(&p, "CHAP_A"), Some(code));
        let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
        let c = text::binary(get(&p, "CHAP_C").unwrap()).unwrap();
        // Skipping ahead before answering the challenge fails.
        let mut early = Login::new(ep());
        let (h2, d2) =
            req(0x80 | (SECURITY << 2) | OPERATIONAL, "InitiatorName=iqn.i;TargetName=iqn.2025-01.io.pollux:chaptest;AuthMethod=None");
        assert_eq!(early.step(&h2, &d2).status, status::AUTH_FAILURE);
        // The right response with a mutual challenge.
        let resp = text::hex(&alg.response(id, b"initiator-secret", &c));
        let (h, d) = req(0x80 | (SECURITY << 2) | OPERATIONAL, &format!("CHAP_N=u;CHAP_R={resp};CHAP_I=9;CHAP_C=0x0102030405060708"));
        let r = l.step(&h, &d);
        assert!(!r.failed(), "{:?}", r.status);
        let p = pairs(&r);
        assert_eq!(get(&p, "CHAP_N"), Some("tgt"));
        assert_eq!(get(&p, "CHAP_R").map(String::from), Some(text::hex(&alg.response(9, b"target-secret", &[1, 2, 3, 4, 5, 6, 7, 8]))));
        assert_eq!(r.flags & 0x83, 0x81, "transit to operational");
    }
    // A wrong response, and a response without the required mutual part, fail.
    for extra in ["", ";CHAP_I=9;CHAP_C=0x0102"] {
        let mut l = Login::new(ep());
        let (h, d) = req(SECURITY << 2, "InitiatorName=iqn.i;TargetName=iqn.2025-01.io.pollux:chaptest;AuthMethod=CHAP");
        l.step(&h, &d);
        let (h, d) = req(SECURITY << 2, "CHAP_A=5");
        let r = l.step(&h, &d);
        let p = pairs(&r);
        let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
        let c = text::binary(get(&p, "CHAP_C").unwrap()).unwrap();
        let resp = if extra.is_empty() {
            text::hex(&Algorithm::Md5.response(id, b"initiator-secret", &c))
        } else {
            text::hex(&Algorithm::Md5.response(id, b"wrong", &c))
        };
        let (h, d) = req(0x80 | (SECURITY << 2) | OPERATIONAL, &format!("CHAP_N=u;CHAP_R={resp}{extra}"));
        assert_eq!(l.step(&h, &d).status, status::AUTH_FAILURE, "extra {extra:?}");
    }
}

/// A target node named `iqn.2025-01.io.pollux:<name>` with this CHAP policy,
/// open to every initiator through portal group 1.
fn chap_target(name: &str, chap: config::ChapPolicy, secrets: Option<(i32, &str, &str)>) -> String {
    let iqn = format!("iqn.2025-01.io.pollux:{name}");
    let mut cfg = config::lock();
    if let Some((tag, user, secret)) = secrets {
        let secrets = vec![config::Secret { user: user.into(), secret: secret.into(), muser: None, msecret: None }];
        cfg.auth_groups.insert(tag, config::AuthGroup { tag, secrets });
    }
    cfg.initiator_groups.insert(902, config::InitiatorGroup { tag: 902, initiators: vec!["ANY".into()], netmasks: vec!["ANY".into()] });
    cfg.targets.push(config::TargetNode {
        name: iqn.clone(),
        alias: String::new(),
        pg_ig_maps: vec![(1, 902)],
        luns: Vec::new(),
        queue_depth: 8,
        chap,
        header_digest: false,
        data_digest: false,
        device: pollux_scsi::Device::new(&iqn),
    });
    iqn
}

#[test]
fn auth_method_follows_the_target_configuration() {
    let policy = |disable_chap, require_chap, chap_group| config::ChapPolicy { disable_chap, require_chap, mutual_chap: false, chap_group };
    let open = chap_target("auth-open", policy(false, false, 0), None);
    let disabled = chap_target("auth-disabled", policy(true, false, 903), Some((903, "u", "s")));
    let required = chap_target("auth-required", policy(false, true, 903), None);
    let optional = chap_target("auth-optional", policy(false, false, 903), None);
    let answer = |target: &str, offer: &str| {
        let mut l = Login::new(ep());
        let (h, d) = req(SECURITY << 2, &format!("InitiatorName=iqn.i;TargetName={target};AuthMethod={offer}"));
        let r = l.step(&h, &d);
        (get(&pairs(&r), "AuthMethod").map(String::from), r.status, r.why)
    };
    // No CHAP configured: None, even if the initiator prefers CHAP.
    assert_eq!(answer(&open, "CHAP,None").0.as_deref(), Some("None"));
    // (A refused login's answer is its status; it carries no text.)
    let (_, st, why) = answer(&open, "CHAP");
    assert_eq!(st, status::AUTH_FAILURE);
    assert!(why.contains("no CHAP secrets"), "{why}");
    // CHAP disabled: None, whatever the auth group holds.
    assert_eq!(answer(&disabled, "CHAP,None").0.as_deref(), Some("None"));
    assert_eq!(answer(&disabled, "CHAP").1, status::AUTH_FAILURE);
    // CHAP required: CHAP, and refused where not offered.
    assert_eq!(answer(&required, "None,CHAP").0.as_deref(), Some("CHAP"));
    let (_, st, why) = answer(&required, "None");
    assert_eq!(st, status::AUTH_FAILURE);
    assert!(why.contains("requires CHAP"), "{why}");
    // Optional with secrets: the initiator's first choice.
    assert_eq!(answer(&optional, "CHAP,None").0.as_deref(), Some("CHAP"));
    assert_eq!(answer(&optional, "None,CHAP").0.as_deref(), Some("None"));
}

#[test]
fn a_chap_response_that_is_not_hex_or_base64_fails_the_login() {
    let target = chap_target(
        "auth-bytes",
        config::ChapPolicy { disable_chap: false, require_chap: true, mutual_chap: false, chap_group: 904 },
        Some((904, "u", "secret")),
    );
    for bad in ["0x\u{e9}0", "0x\u{20ac}", "0b\u{20ac}", "0x", "\u{e9}"] {
        let mut l = Login::new(ep());
        let (h, d) = req(SECURITY << 2, &format!("InitiatorName=iqn.i;TargetName={target};AuthMethod=CHAP"));
        assert!(!l.step(&h, &d).failed());
        let (h, d) = req(SECURITY << 2, "CHAP_A=5");
        assert!(!l.step(&h, &d).failed());
        let (h, d) = req(0x80 | (SECURITY << 2) | OPERATIONAL, &format!("CHAP_N=u;CHAP_R={bad}"));
        let r = l.step(&h, &d);
        assert_eq!(r.status, status::AUTH_FAILURE, "{bad:?}");
        assert!(r.why.contains("not a hex or base64"), "{}", r.why);
    }
}

#[test]
fn a_rejected_max_recv_data_segment_length_is_not_declared_twice() {
    let mut l = Login::new(ep());
    let (h, d) = req(OPERATIONAL << 2, "InitiatorName=iqn.i;SessionType=Discovery;MaxRecvDataSegmentLength=12");
    let r = l.step(&h, &d);
    assert!(!r.failed(), "{:?}", r.status);
    // The answer parses (no key twice) and holds the Reject.
    let p = pairs(&r);
    assert_eq!(get(&p, "MaxRecvDataSegmentLength"), Some("Reject"));
    // Our declaration comes in the next answer.
    let (h, d) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "");
    let r = l.step(&h, &d);
    assert!(r.complete);
    let p = pairs(&r);
    assert_eq!(get(&p, "MaxRecvDataSegmentLength"), Some(OUR_MAX_RECV_DATA_SEGMENT.to_string().as_str()));
    // Rejected in the last answer: not declared at all, and the text parses.
    let mut l = Login::new(ep());
    let (h, d) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "InitiatorName=iqn.i;SessionType=Discovery;MaxRecvDataSegmentLength=x");
    let r = l.step(&h, &d);
    assert!(r.complete);
    assert_eq!(get(&pairs(&r), "MaxRecvDataSegmentLength"), Some("Reject"));
}
