//! Login negotiation against hand-written requests.

use super::*;
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
    let (h, d) = req(0x80 | (OPERATIONAL << 2) | FULL_FEATURE, "InitiatorName=iqn.i;SessionType=Discovery;HeaderDigest=CRC32C,None;DataDigest=None;MaxRecvDataSegmentLength=65536;ErrorRecoveryLevel=2;X-foo=1;DefaultTime2Wait=5");
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
