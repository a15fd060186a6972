//! The initiator's side of the login phase (RFC 7143 6.3, 13): a state
//! machine without I/O that builds each Login Request and reads each Login
//! Response, through the security stage (CHAP with SHA-256 or MD5, one-way
//! or mutual) and the operational stage (every operational key, offered
//! and answered as the RFC's rules combine them), to the full feature
//! phase, a redirection, or an error that names the target's
//! Status-Class and Status-Detail.

use pollux_iscsi_spec::chap::{self, Algorithm};
use pollux_iscsi_spec::pdu::{Bhs, op};
use pollux_iscsi_spec::text;
use zerocopy::IntoBytes as _;

use crate::IscsiError;

/// Login responses accepted before the login is abandoned (a target that
/// never lets it end).
pub const MAX_ROUNDS: usize = 16;
/// Most text one response sequence may carry (continued PDUs included).
pub const MAX_TEXT: usize = 64 * 1024;

/// CHAP credentials: ours, and the target's for mutual CHAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    /// The name and secret the target must answer with (mutual CHAP).
    pub mutual: Option<(String, String)>,
    /// Digests offered (CHAP_A), in order of preference. MD5 alone by
    /// default, as libiscsi and open-iscsi offer: tgtd takes CHAP_A=7 for
    /// SHA-1 (an old numbering), so offering SHA-256 to it fails the login.
    pub algorithms: Vec<Algorithm>,
}

impl Default for Chap {
    fn default() -> Chap {
        Chap { user: String::new(), secret: String::new(), mutual: None, algorithms: vec![Algorithm::Md5] }
    }
}

/// What the initiator asks for.
#[derive(Clone, Debug)]
pub struct LoginParams {
    pub initiator_name: String,
    /// None: a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub auth: Option<Chap>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment we take (declared).
    pub max_recv_data_segment: u32,
    pub first_burst: u32,
    pub max_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
}

impl LoginParams {
    pub fn new(initiator_name: &str, target_name: Option<&str>, isid: [u8; 6]) -> LoginParams {
        LoginParams {
            initiator_name: initiator_name.to_string(),
            target_name: target_name.map(str::to_string),
            isid,
            tsih: 0,
            cid: 0,
            auth: None,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment: 256 * 1024,
            first_burst: 256 * 1024,
            max_burst: 1024 * 1024,
            immediate_data: true,
            initial_r2t: false,
        }
    }
}

/// The session's parameters once logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub tsih: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment we may send (the target's declaration).
    pub max_send_data_segment: u32,
    pub max_recv_data_segment: u32,
    pub first_burst: u32,
    pub max_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub target_alias: Option<String>,
    pub target_portal_group_tag: Option<u16>,
    /// StatSN of the last login response, ExpCmdSN and MaxCmdSN.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl Negotiated {
    /// RFC 7143's defaults, before any key is exchanged.
    pub fn defaults(p: &LoginParams) -> Negotiated {
        Negotiated {
            tsih: 0,
            header_digest: false,
            data_digest: false,
            max_send_data_segment: 8192,
            max_recv_data_segment: p.max_recv_data_segment,
            first_burst: 65536,
            max_burst: 262144,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            target_alias: None,
            target_portal_group_tag: None,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        }
    }
}

/// What to do after a response.
#[derive(Debug)]
pub enum Step {
    /// Send this Login Request (whole PDU, no digests: the login has none).
    Send(Vec<u8>),
    /// Logged in.
    Done(Negotiated),
    /// The target sent us to another address (`host:port`).
    Redirect(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Security: AuthMethod offered.
    AuthOffered,
    /// CHAP_A sent.
    ChapAlgorithm,
    /// CHAP_N/CHAP_R sent (and our challenge, mutual).
    ChapResponse,
    /// Operational keys sent.
    Operational,
}

const CSG_SECURITY: u8 = 0;
const CSG_OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;

pub struct Login {
    p: LoginParams,
    stage: Stage,
    csg: u8,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    rounds: usize,
    /// Text of a response continued over several PDUs.
    partial: Vec<u8>,
    neg: Negotiated,
    /// Keys we offered and have not seen answered.
    offered: Vec<&'static str>,
    /// Every key we offered (a key is negotiated once: RFC 7143 6.2).
    offered_all: Vec<&'static str>,
    /// Our challenge to the target (mutual CHAP): algorithm, id, bytes.
    our_challenge: Option<(Algorithm, u8, Vec<u8>)>,
    algorithm: Option<Algorithm>,
}

/// Status-Class 2 and 3 details (RFC 7143 11.13.5).
pub fn status_name(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, 1) => "target moved temporarily",
        (1, 2) => "target moved permanently",
        (2, 0) => "initiator error",
        (2, 1) => "authentication failure",
        (2, 2) => "authorization failure",
        (2, 3) => "target not found",
        (2, 4) => "target removed",
        (2, 5) => "unsupported version",
        (2, 6) => "too many connections",
        (2, 7) => "missing parameter",
        (2, 8) => "cannot include in session",
        (2, 9) => "session type not supported",
        (2, 10) => "session does not exist",
        (2, 11) => "invalid request during login",
        (3, 0) => "target error",
        (3, 1) => "service unavailable",
        (3, 2) => "out of resources",
        _ => "unknown status",
    }
}

impl Login {
    pub fn new(p: LoginParams, itt: u32, cmd_sn: u32) -> Login {
        let neg = Negotiated::defaults(&p);
        Login {
            p,
            stage: Stage::AuthOffered,
            csg: CSG_SECURITY,
            itt,
            cmd_sn,
            exp_stat_sn: 0,
            rounds: 0,
            partial: Vec::new(),
            neg,
            offered: Vec::new(),
            offered_all: Vec::new(),
            our_challenge: None,
            algorithm: None,
        }
    }

    /// The first Login Request.
    pub fn start(&mut self) -> Vec<u8> {
        let mut t = Vec::new();
        text::push(&mut t, "InitiatorName", &self.p.initiator_name);
        match &self.p.target_name {
            Some(n) => {
                text::push(&mut t, "SessionType", "Normal");
                text::push(&mut t, "TargetName", n);
            }
            None => text::push(&mut t, "SessionType", "Discovery"),
        }
        if self.p.auth.is_some() {
            text::push(&mut t, "AuthMethod", "CHAP,None");
            self.stage = Stage::AuthOffered;
            self.request(CSG_SECURITY, None, &t)
        } else {
            text::push(&mut t, "AuthMethod", "None");
            self.stage = Stage::AuthOffered;
            self.request(CSG_SECURITY, Some(CSG_OPERATIONAL), &t)
        }
    }

    /// A Login Request: `next` Some(stage) sets the T bit.
    fn request(&mut self, csg: u8, next: Option<u8>, data: &[u8]) -> Vec<u8> {
        self.csg = csg;
        let flags = match next {
            Some(n) => 0x80 | (csg << 2) | n,
            None => csg << 2,
        };
        let mut h = Bhs::new(0x40 | op::LOGIN, flags);
        h.lun[..6].copy_from_slice(&self.p.isid);
        h.lun[6..8].copy_from_slice(&self.p.tsih.to_be_bytes());
        h.itt.set(self.itt);
        h.w20.set(u32::from(self.p.cid) << 16);
        h.w24.set(self.cmd_sn);
        h.w28.set(self.exp_stat_sn);
        h.set_data_len(data.len());
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len() + pollux_iscsi_spec::pdu::pad(data.len()), 0);
        out
    }

    fn operational_keys(&mut self) -> Vec<u8> {
        let p = &self.p;
        let mut t = Vec::new();
        let mut offered = Vec::new();
        let mut offer = |t: &mut Vec<u8>, k: &'static str, v: &str| {
            text::push(t, k, v);
            offered.push(k);
        };
        offer(&mut t, "HeaderDigest", if p.header_digest { "CRC32C" } else { "None" });
        offer(&mut t, "DataDigest", if p.data_digest { "CRC32C" } else { "None" });
        text::push(&mut t, "MaxRecvDataSegmentLength", &p.max_recv_data_segment.to_string());
        if p.target_name.is_some() {
            offer(&mut t, "InitialR2T", if p.initial_r2t { "Yes" } else { "No" });
            offer(&mut t, "ImmediateData", if p.immediate_data { "Yes" } else { "No" });
            offer(&mut t, "MaxBurstLength", &p.max_burst.to_string());
            offer(&mut t, "FirstBurstLength", &p.first_burst.to_string());
            offer(&mut t, "MaxConnections", "1");
            offer(&mut t, "MaxOutstandingR2T", "1");
            offer(&mut t, "DataPDUInOrder", "Yes");
            offer(&mut t, "DataSequenceInOrder", "Yes");
            offer(&mut t, "ErrorRecoveryLevel", "0");
            offer(&mut t, "DefaultTime2Wait", "2");
            offer(&mut t, "DefaultTime2Retain", "0");
        }
        self.offered_all = offered.clone();
        self.offered = offered;
        t
    }

    /// Read a Login Response (its header and data, digests already gone).
    pub fn on_response(&mut self, h: &Bhs, data: &[u8]) -> Result<Step, IscsiError> {
        let bad = |why: String| IscsiError::Login(why);
        if h.opcode() != op::LOGIN_RESP {
            return Err(bad(format!("opcode {:#04x} during login", h.opcode())));
        }
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(bad(format!("the target did not end the login in {MAX_ROUNDS} exchanges")));
        }
        if h.itt() != self.itt {
            return Err(bad(format!("login response for task tag {:#x}, not {:#x}", h.itt(), self.itt)));
        }
        let (class, detail) = ((h.w36.get() >> 24) as u8, (h.w36.get() >> 16) as u8);
        let stat_sn = h.w24.get();
        self.exp_stat_sn = stat_sn.wrapping_add(1);
        self.neg.stat_sn = stat_sn;
        self.neg.exp_cmd_sn = h.w28.get();
        self.neg.max_cmd_sn = h.w32.get();
        if self.partial.len() + data.len() > MAX_TEXT {
            return Err(bad(format!("login text over {MAX_TEXT} bytes")));
        }
        self.partial.extend_from_slice(data);
        let cont = h.flags & 0x40 != 0;
        let transit = h.flags & 0x80 != 0;
        if cont {
            if transit {
                return Err(bad("a login response with both T and C set".into()));
            }
            // More text to come: an empty request asks for it.
            let csg = self.csg;
            return Ok(Step::Send(self.request(csg, None, &[])));
        }
        let all = std::mem::take(&mut self.partial);
        let keys = text::parse(&all).map_err(|e| bad(format!("login text: {e}")))?;
        match class {
            0 => {}
            1 => {
                let to = find(&keys, "TargetAddress")
                    .ok_or_else(|| bad(format!("redirected ({}) without a TargetAddress", status_name(class, detail))))?;
                // host:port[,tpgt]
                return Ok(Step::Redirect(to.split(',').next().unwrap_or(to).to_string()));
            }
            2 if detail == 1 && self.p.auth.is_none() => {
                return Err(IscsiError::Login(format!(
                    "refused by the target: {} (Status-Class 2, Status-Detail 0x01) to a login without CHAP credentials: \
                     the target may require CHAP",
                    status_name(class, detail)
                )));
            }
            _ => {
                return Err(IscsiError::LoginRefused { class, detail, name: status_name(class, detail) });
            }
        }
        let csg = (h.flags >> 2) & 3;
        let nsg = h.flags & 3;
        if csg != self.csg {
            return Err(bad(format!("the target answered stage {csg} to a request in stage {}", self.csg)));
        }
        let tsih = h.tsih();
        if transit && nsg == FULL_FEATURE {
            if tsih == 0 {
                return Err(bad("the target ended the login without a TSIH".into()));
            }
            self.neg.tsih = tsih;
        }
        match self.stage {
            Stage::AuthOffered => {
                let method = find(&keys, "AuthMethod");
                match (method, &self.p.auth) {
                    (Some("CHAP"), Some(_)) => {
                        if transit {
                            return Err(bad("the target chose CHAP and ended the security stage".into()));
                        }
                        let mut t = Vec::new();
                        let offer: Vec<String> =
                            self.p.auth.as_ref().map_or(Vec::new(), |a| a.algorithms.iter().map(|x| x.code().to_string()).collect());
                        text::push(&mut t, "CHAP_A", &offer.join(","));
                        self.stage = Stage::ChapAlgorithm;
                        Ok(Step::Send(self.request(CSG_SECURITY, None, &t)))
                    }
                    (Some("CHAP"), None) => Err(bad("the target requires CHAP and no credentials were given".into())),
                    (Some("None") | None, _) => {
                        if self.p.auth.as_ref().is_some_and(|a| a.mutual.is_some()) {
                            return Err(bad("the target would not authenticate itself (mutual CHAP asked for)".into()));
                        }
                        if transit && nsg == CSG_OPERATIONAL {
                            self.enter_operational(&keys)
                        } else if transit {
                            Err(bad(format!("the target went from security to stage {nsg}")))
                        } else {
                            // It wants another round without authentication.
                            Ok(Step::Send(self.request(CSG_SECURITY, Some(CSG_OPERATIONAL), &[])))
                        }
                    }
                    (Some(m), _) => Err(bad(format!("the target answered AuthMethod={m}"))),
                }
            }
            Stage::ChapAlgorithm => {
                let a = find(&keys, "CHAP_A").and_then(|v| text::number(v, 0, 255)).and_then(Algorithm::from_code);
                let a = a
                    .filter(|a| self.p.auth.as_ref().is_some_and(|x| x.algorithms.contains(a)))
                    .ok_or_else(|| bad("the target chose no CHAP algorithm we offered".into()))?;
                let id = find(&keys, "CHAP_I").and_then(|v| text::number(v, 0, 255)).ok_or_else(|| bad("CHAP_I missing".into()))?;
                let c = find(&keys, "CHAP_C").and_then(text::binary).ok_or_else(|| bad("CHAP_C missing or malformed".into()))?;
                let auth = self.p.auth.clone().expect("CHAP stage only with credentials");
                let mut t = Vec::new();
                text::push(&mut t, "CHAP_N", &auth.user);
                text::push(&mut t, "CHAP_R", &text::hex(&a.response(id as u8, auth.secret.as_bytes(), &c)));
                self.algorithm = Some(a);
                self.stage = Stage::ChapResponse;
                if auth.mutual.is_some() {
                    let r = chap::random(1 + a.digest_len()).map_err(|e| bad(format!("no random bytes for a challenge: {e}")))?;
                    let (our_id, challenge) = (r[0], r[1..].to_vec());
                    if challenge == c {
                        return Err(bad("the target's challenge equals ours (reflection)".into()));
                    }
                    text::push(&mut t, "CHAP_I", &our_id.to_string());
                    text::push(&mut t, "CHAP_C", &text::hex(&challenge));
                    self.our_challenge = Some((a, our_id, challenge));
                }
                Ok(Step::Send(self.request(CSG_SECURITY, Some(CSG_OPERATIONAL), &t)))
            }
            Stage::ChapResponse => {
                if let Some((a, id, challenge)) = self.our_challenge.take() {
                    let (user, secret) = self.p.auth.as_ref().and_then(|x| x.mutual.clone()).expect("mutual");
                    let n = find(&keys, "CHAP_N").ok_or_else(|| bad("the target sent no CHAP_N (mutual CHAP)".into()))?;
                    let r = find(&keys, "CHAP_R").and_then(text::binary).ok_or_else(|| bad("the target sent no valid CHAP_R".into()))?;
                    if n != user || !chap::same(&r, &a.response(id, secret.as_bytes(), &challenge)) {
                        return Err(IscsiError::Login(format!("the target failed mutual CHAP (name {n:?})")));
                    }
                }
                if !transit {
                    return Ok(Step::Send(self.request(CSG_SECURITY, Some(CSG_OPERATIONAL), &[])));
                }
                if nsg != CSG_OPERATIONAL {
                    return Err(bad(format!("the target went from security to stage {nsg}")));
                }
                self.enter_operational(&keys)
            }
            Stage::Operational => {
                self.apply(&keys)?;
                if transit && nsg == FULL_FEATURE {
                    if !self.offered.is_empty() {
                        // Unanswered keys keep their defaults (RFC 7143 6.2).
                        self.offered.clear();
                    }
                    return Ok(Step::Done(self.neg.clone()));
                }
                // The target wants another round: answer what it asked.
                let answers = self.answers(&keys);
                Ok(Step::Send(self.request(CSG_OPERATIONAL, Some(FULL_FEATURE), &answers)))
            }
        }
    }

    fn enter_operational(&mut self, keys: &[(String, String)]) -> Result<Step, IscsiError> {
        self.stage = Stage::Operational;
        self.apply(keys)?;
        let t = self.operational_keys();
        Ok(Step::Send(self.request(CSG_OPERATIONAL, Some(FULL_FEATURE), &t)))
    }

    /// Take the target's answers and declarations into the result.
    fn apply(&mut self, keys: &[(String, String)]) -> Result<(), IscsiError> {
        let bad = |k: &str, v: &str| IscsiError::Login(format!("the target answered {k}={v}"));
        let n = &mut self.neg;
        let p = &self.p;
        for (k, v) in keys {
            let (k, v) = (k.as_str(), v.as_str());
            self.offered.retain(|o| *o != k);
            if matches!(v, "Reject" | "Irrelevant" | "NotUnderstood") {
                continue;
            }
            let num = |min: u64, max: u64| text::number(v, min, max).ok_or_else(|| bad(k, v));
            let yes = || text::boolean(v).ok_or_else(|| bad(k, v));
            match k {
                "HeaderDigest" | "DataDigest" => {
                    let on = match v {
                        "CRC32C" => true,
                        "None" => false,
                        _ => return Err(bad(k, v)),
                    };
                    let want = if k == "HeaderDigest" { p.header_digest } else { p.data_digest };
                    if on != want {
                        return Err(IscsiError::Login(format!(
                            "the target answered {k}={v} to our {}",
                            if want { "CRC32C" } else { "None" }
                        )));
                    }
                    if k == "HeaderDigest" {
                        n.header_digest = on;
                    } else {
                        n.data_digest = on;
                    }
                }
                "MaxRecvDataSegmentLength" => n.max_send_data_segment = num(512, (1 << 24) - 1)? as u32,
                "MaxBurstLength" => n.max_burst = (num(512, (1 << 24) - 1)? as u32).min(p.max_burst),
                "FirstBurstLength" => n.first_burst = (num(512, (1 << 24) - 1)? as u32).min(p.first_burst),
                "InitialR2T" => n.initial_r2t = yes()? || p.initial_r2t,
                "ImmediateData" => n.immediate_data = yes()? && p.immediate_data,
                "MaxOutstandingR2T" => n.max_outstanding_r2t = (num(1, 65535)? as u32).min(1),
                "DataPDUInOrder" => n.data_pdu_in_order = yes()?,
                "DataSequenceInOrder" => n.data_sequence_in_order = yes()?,
                "ErrorRecoveryLevel" => {
                    // We offered 0; the result is the lower of the two.
                    num(0, 2)?;
                    n.error_recovery_level = 0;
                }
                "DefaultTime2Wait" => n.default_time2wait = num(0, 3600)? as u32,
                "DefaultTime2Retain" => n.default_time2retain = num(0, 3600)? as u32,
                "MaxConnections" => {
                    num(1, 65535)?;
                }
                "TargetAlias" => n.target_alias = Some(v.to_string()),
                "TargetPortalGroupTag" => n.target_portal_group_tag = Some(num(0, 65535)? as u16),
                _ => {}
            }
        }
        if !n.data_pdu_in_order || !n.data_sequence_in_order {
            return Err(IscsiError::Login("the target wants data out of order, which this initiator does not do".into()));
        }
        if n.first_burst > n.max_burst {
            n.first_burst = n.max_burst;
        }
        Ok(())
    }

    /// Answers to keys the target offered on its own (RFC 7143 6.2): our
    /// value by the key's rule, or NotUnderstood.
    fn answers(&self, keys: &[(String, String)]) -> Vec<u8> {
        let mut t = Vec::new();
        let n = &self.neg;
        for (k, _) in keys {
            if self.offered_all.iter().any(|o| o == k) {
                // An answer to our offer, not an offer of the target's.
                continue;
            }
            let v = match k.as_str() {
                "HeaderDigest" => (if n.header_digest { "CRC32C" } else { "None" }).to_string(),
                "DataDigest" => (if n.data_digest { "CRC32C" } else { "None" }).to_string(),
                "MaxBurstLength" => n.max_burst.to_string(),
                "FirstBurstLength" => n.first_burst.to_string(),
                "InitialR2T" => yes_no(n.initial_r2t),
                "ImmediateData" => yes_no(n.immediate_data),
                "MaxOutstandingR2T" => n.max_outstanding_r2t.to_string(),
                "DataPDUInOrder" | "DataSequenceInOrder" => "Yes".to_string(),
                "ErrorRecoveryLevel" => "0".to_string(),
                "DefaultTime2Wait" => n.default_time2wait.to_string(),
                "DefaultTime2Retain" => n.default_time2retain.to_string(),
                "MaxConnections" => "1".to_string(),
                // Declarations need no answer.
                "MaxRecvDataSegmentLength" | "TargetAlias" | "TargetPortalGroupTag" | "TargetAddress" => continue,
                _ => "NotUnderstood".to_string(),
            };
            text::push(&mut t, k, &v);
        }
        t
    }
}

fn yes_no(b: bool) -> String {
    (if b { "Yes" } else { "No" }).to_string()
}

fn find<'a>(keys: &'a [(String, String)], k: &str) -> Option<&'a str> {
    keys.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

/// One target of a SendTargets answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// `host:port,tpgt` as the target wrote them (none: the discovery portal).
    pub addresses: Vec<String>,
}

/// Read a SendTargets answer: TargetName starts a target, TargetAddress
/// lines that follow belong to it. Keys may repeat, so this is not
/// `text::parse`.
pub fn parse_send_targets(data: &[u8]) -> Result<Vec<DiscoveredTarget>, IscsiError> {
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| IscsiError::Protocol("SendTargets text is not UTF-8".into()))?;
        let (k, v) = s.split_once('=').ok_or_else(|| IscsiError::Protocol(format!("SendTargets text without '=': {s:.64}")))?;
        match k {
            "TargetName" => {
                if out.len() == 4096 {
                    return Err(IscsiError::Protocol("more than 4096 targets in a SendTargets answer".into()));
                }
                out.push(DiscoveredTarget { name: v.to_string(), addresses: Vec::new() });
            }
            "TargetAddress" => match out.last_mut() {
                Some(t) if t.addresses.len() < 256 => t.addresses.push(v.to_string()),
                Some(_) => {}
                None => return Err(IscsiError::Protocol("TargetAddress before any TargetName".into())),
            },
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
