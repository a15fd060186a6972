//! `iscsi_text`: the key=value text layer (`text::parse`, `number`,
//! `boolean`, `binary`) and the login negotiation (`login::Login::step`)
//! driven with a sequence of Login Requests.
//!
//! Input: a mode byte, then records `[flags][version][len: u16 LE][text]`,
//! one Login Request each (`flags` are the request's T, C, CSG and NSG bits;
//! `version` is VersionMin << 4 | VersionMax). Every value of the whole
//! input also goes through the text functions.
//!
//! Mode bits 0-2 choose what the harness puts in front of the first
//! request's text: 0 nothing (the fuzz text alone), 1-5 InitiatorName and
//! TargetName of a node (open, CHAP required, mutual CHAP, digests
//! required, initiator denied), 6 a discovery session, 7 the denied
//! initiator. Bit 3 logs in through portal group 2 (discovery needs CHAP
//! there), bit 4 from an address outside initiator group 2's netmask.
//!
//! CHAP: the target's challenge is random, so a `CHAP_R=@` pair is replaced
//! by the right answer for the `CHAP_N` of the same request (a secret of
//! auth group 1) to the last challenge; mutual CHAP's answer from the target
//! is checked. Invariants: the target's text parses, fits a login PDU
//! (8192 bytes), and its stage bits follow the request.

use pollux_iscsi::chap::Algorithm;
use pollux_iscsi::login::{Endpoint, Login, Reply};
use pollux_iscsi::pdu::{Bhs, op};
use pollux_iscsi::text::{self, TextError};

use crate::common::Input;
use crate::iscsi_wire::{self, DENIED_INITIATOR, INITIATOR, SECRETS};

/// Login Requests one input may send.
const MAX_REQUESTS: usize = 32;
/// The largest data segment of a login PDU.
const LOGIN_MAX_DATA: usize = 8192;

pub fn iscsi_text(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    text_layer(inp.rest());

    let mut inp = Input::new(data);
    inp.u8();
    let mut requests = Vec::new();
    while !inp.is_empty() && requests.len() < MAX_REQUESTS {
        let flags = inp.u8();
        let version = inp.u8();
        let len = inp.u16() as usize;
        requests.push((flags, version, inp.bytes(len).to_vec()));
    }
    if let Some(first) = requests.first_mut() {
        let mut start = first_pairs(mode & 0x07);
        start.extend_from_slice(&first.2);
        first.2 = start;
    }
    iscsi_wire::ensure_config();
    let peer_ip = if mode & 0x10 != 0 { "10.0.0.1" } else { "127.0.0.1" };
    let ep = Endpoint {
        local: "127.0.0.1:3260".parse().expect("address"),
        peer: format!("{peer_ip}:40000").parse().expect("address"),
        portal_group: if mode & 0x08 != 0 { 2 } else { 1 },
    };
    let mut login = Login::new(ep);
    let mut chap = Challenge::default();
    for (flags, version, raw) in requests {
        let (req, mutual) = chap.fill_in(&raw);
        let mut h = Bhs::new(op::LOGIN | 0x40, flags);
        h.b2 = version & 0x0f;
        h.b3 = version >> 4;
        h.lun[..6].copy_from_slice(&iscsi_wire::ISID);
        h.itt.set(1);
        h.w20.set(1 << 16);
        let reply = login.step(&h, &req);
        check_reply(&h, &reply, mutual);
        if reply.failed() || reply.complete {
            break;
        }
        chap.learn(&reply.text);
    }
}

/// The text functions on every piece of the input.
fn text_layer(data: &[u8]) {
    if let Ok(pairs) = text::parse(data) {
        // What we parse we write back the same way.
        let mut out = Vec::new();
        for (k, v) in &pairs {
            text::push(&mut out, k, v);
        }
        assert_eq!(text::parse(&out).as_ref(), Ok(&pairs), "text does not survive a round trip");
    }
    let s = String::from_utf8_lossy(data);
    for piece in s.split(['\0', '=', ',']) {
        values(piece);
    }
}

fn values(v: &str) {
    if let Some(n) = text::number(v, 0, u64::MAX) {
        assert_eq!(text::number(&n.to_string(), 0, u64::MAX), Some(n));
        assert_eq!(text::number(v, n, n), Some(n), "{v:?} is {n} but not within [{n}, {n}]");
        if n > 0 {
            assert_eq!(text::number(v, 0, n - 1), None, "{v:?} is {n} yet within [0, {}]", n - 1);
        }
    }
    let _ = text::boolean(v);
    if let Some(b) = text::binary(v) {
        if !b.is_empty() {
            assert_eq!(text::binary(&text::hex(&b)).as_deref(), Some(&b[..]), "{v:?} does not survive a hex round trip");
        }
    }
}

/// The pairs the harness puts in front of the first request.
fn first_pairs(kind: u8) -> Vec<u8> {
    let mut t = Vec::new();
    let normal = |t: &mut Vec<u8>, initiator: &str, target: &str| {
        text::push(t, "InitiatorName", initiator);
        text::push(t, "SessionType", "Normal");
        text::push(t, "TargetName", target);
    };
    match kind {
        0 => {}
        1 => normal(&mut t, INITIATOR, iscsi_wire::TARGET_OPEN),
        2 => normal(&mut t, INITIATOR, iscsi_wire::TARGET_CHAP),
        3 => normal(&mut t, INITIATOR, iscsi_wire::TARGET_MUTUAL),
        4 => normal(&mut t, INITIATOR, iscsi_wire::TARGET_DIGEST),
        5 => normal(&mut t, INITIATOR, iscsi_wire::TARGET_DENY),
        6 => {
            text::push(&mut t, "InitiatorName", INITIATOR);
            text::push(&mut t, "SessionType", "Discovery");
        }
        _ => normal(&mut t, DENIED_INITIATOR, iscsi_wire::TARGET_DENY),
    }
    t
}

/// The target's last CHAP challenge, and what the initiator asked of it.
#[derive(Default)]
struct Challenge {
    alg: Option<Algorithm>,
    id: u8,
    challenge: Vec<u8>,
}

/// A mutual challenge the initiator sent: (user, CHAP_I, CHAP_C).
type Mutual = Option<(String, u8, Vec<u8>)>;

impl Challenge {
    /// Replace `CHAP_R=@` by the right response.
    fn fill_in(&self, raw: &[u8]) -> (Vec<u8>, Mutual) {
        let Ok(pairs) = text::parse(raw) else { return (raw.to_vec(), None) };
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let user = get("CHAP_N").unwrap_or("");
        let mutual = match (get("CHAP_I").and_then(|i| text::number(i, 0, 255)), get("CHAP_C").and_then(text::binary)) {
            (Some(i), Some(c)) => Some((user.to_string(), i as u8, c)),
            _ => None,
        };
        if get("CHAP_R") != Some("@") {
            return (raw.to_vec(), mutual);
        }
        let secret = SECRETS.iter().find(|(u, ..)| *u == user).map_or("not-a-secret", |(_, s, _)| *s);
        let answer = match self.alg {
            Some(alg) => text::hex(&alg.response(self.id, secret.as_bytes(), &self.challenge)),
            None => "0x00".to_string(),
        };
        let mut out = Vec::new();
        for (k, v) in &pairs {
            text::push(&mut out, k, if k == "CHAP_R" { &answer } else { v });
        }
        (out, mutual)
    }

    fn learn(&mut self, reply: &[u8]) {
        let Ok(pairs) = text::parse(reply) else { return };
        for (k, v) in pairs {
            match k.as_str() {
                "CHAP_A" => self.alg = text::number(&v, 0, 255).and_then(Algorithm::from_code),
                "CHAP_I" => self.id = text::number(&v, 0, 255).unwrap_or(0) as u8,
                "CHAP_C" => self.challenge = text::binary(&v).unwrap_or_default(),
                _ => {}
            }
        }
    }
}

fn check_reply(req: &Bhs, r: &Reply, mutual: Mutual) {
    assert!(
        r.text.len() <= LOGIN_MAX_DATA,
        "a Login Response of {} bytes of text, above the {LOGIN_MAX_DATA} a login PDU may carry",
        r.text.len()
    );
    let pairs = match text::parse(&r.text) {
        Ok(p) => p,
        // As many keys answered as the initiator sent, plus the target's own.
        Err(TextError::TooManyPairs) => return,
        Err(e) => panic!("the target's login text does not parse: {e}: {:?}", String::from_utf8_lossy(&r.text)),
    };
    if r.failed() {
        return;
    }
    let csg = (req.flags >> 2) & 0x03;
    // The first request may skip the security stage: the answer is then
    // in the operational stage.
    assert!((r.flags >> 2) & 0x03 == csg || csg == 0, "request CSG {csg}, answer flags {:#04x}", r.flags);
    if r.complete {
        assert_eq!(r.flags & 0x83, 0x83, "a completed login must answer T=1 and NSG=3: {:#04x}", r.flags);
        assert!(req.flags & 0x83 == 0x83, "the login completed without the initiator asking: request flags {:#04x}", req.flags);
    }
    if r.flags & 0x80 != 0 {
        assert!(req.flags & 0x80 != 0, "the target moved to the next stage without the initiator asking");
    }
    let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    if let (Some((user, id, challenge)), Some(n), Some(resp)) = (mutual, get("CHAP_N"), get("CHAP_R")) {
        let (_, _, m) = SECRETS.iter().find(|(u, ..)| *u == user).expect("mutual CHAP answered for a user with a mutual secret");
        let (muser, msecret) = m.expect("mutual CHAP answered for a user with a mutual secret");
        assert_eq!(n, muser, "mutual CHAP: wrong target user name");
        let resp = text::binary(resp).expect("the target's CHAP_R is binary");
        let ok = [Algorithm::Md5, Algorithm::Sha256].iter().any(|a| a.response(id, msecret.as_bytes(), &challenge) == resp);
        assert!(ok, "mutual CHAP: the target's response is wrong");
    }
}
