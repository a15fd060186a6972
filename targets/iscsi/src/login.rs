//! The login phase (RFC 7143 6.3, 13): stages, security negotiation with
//! CHAP, and the negotiation of every operational key. Pure state: the
//! connection feeds it Login Request PDUs and sends what it answers.

use std::net::SocketAddr;

use crate::chap::{self, Algorithm};
use crate::config::{self, ChapPolicy};
use crate::pdu::Bhs;
use crate::text;

/// Stages (CSG/NSG values).
pub const SECURITY: u8 = 0;
pub const OPERATIONAL: u8 = 1;
pub const FULL_FEATURE: u8 = 3;

/// Login status classes and details (RFC 7143 11.13.5).
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILURE: (u8, u8) = (2, 1);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
    pub const TARGET_ERROR: (u8, u8) = (3, 0);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
}

/// Our largest data segment (what initiators may send us).
pub const OUR_MAX_RECV_DATA_SEGMENT: u32 = 256 * 1024;

/// Negotiated parameters of a connection and its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we accept (our declaration).
    pub max_recv_seg: u32,
    /// Largest data segment we may send (the initiator's declaration).
    pub max_send_seg: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
}

impl Params {
    /// RFC 7143 defaults, bounded by our options.
    pub fn defaults() -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            max_recv_seg: OUR_MAX_RECV_DATA_SEGMENT,
            max_send_seg: 8192,
            max_burst: 262144,
            first_burst: 65536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// What the connection knows of where it is.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub portal_group: i32,
}

/// The result of a login exchange.
#[derive(Clone, Debug)]
pub struct Identity {
    pub initiator_name: String,
    pub initiator_alias: String,
    pub target_name: Option<String>,
    pub session_type: SessionType,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
}

enum Auth {
    /// No authentication needed or none chosen yet.
    Pending,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    WaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    WaitResponse {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

/// Why a login is refused: the status class and detail to answer with,
/// and the reason, for the target's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: (u8, u8),
    pub why: String,
}

fn refuse(status: (u8, u8), why: impl Into<String>) -> Refusal {
    Refusal { status, why: why.into() }
}

/// What to answer a Login Request with.
#[derive(Debug)]
pub struct Reply {
    /// T, C, CSG and NSG bits of the response.
    pub flags: u8,
    pub status: (u8, u8),
    /// Why the login was refused (empty on success).
    pub why: String,
    pub text: Vec<u8>,
    /// The login completed: go to full feature phase.
    pub complete: bool,
}

impl Reply {
    fn fail(r: Refusal) -> Reply {
        Reply { flags: 0, status: r.status, why: r.why, text: Vec::new(), complete: false }
    }
    pub fn failed(&self) -> bool {
        self.status.0 != 0
    }
}

/// One connection's login.
pub struct Login {
    ep: Endpoint,
    our_first_burst: u32,
    our_immediate: bool,
    stage: u8,
    first: bool,
    pub params: Params,
    pub ident: Option<Identity>,
    /// The configured target the first request named, once found (even if
    /// the login is then refused): counters label refusals with it. A name
    /// that is not configured is not kept, so initiators cannot grow the
    /// counters' tables with made-up names.
    pub known_target: Option<String>,
    pub queue_depth: u32,
    chap: ChapPolicy,
    /// The CHAP auth group in effect has secrets (CHAP can be checked).
    chap_configured: bool,
    require_header_digest: bool,
    require_data_digest: bool,
    auth: Auth,
    auth_method_agreed: bool,
    declared_mrdsl: bool,
    /// Text of a request sent in several PDUs (C bit).
    partial: Vec<u8>,
    /// Keys seen in this login (each may be negotiated once); a set, so a
    /// login with many keys costs linear time.
    seen: std::collections::HashSet<String>,
    /// CHAP_N, CHAP_R, CHAP_I, CHAP_C of the current request.
    chap_pairs: Vec<(String, String)>,
}

/// Whether a text segment already has `key=`.
fn text_has_key(text: &[u8], key: &str) -> bool {
    text.split(|&b| b == 0).any(|kv| kv.len() > key.len() && kv.starts_with(key.as_bytes()) && kv[key.len()] == b'=')
}

fn bool_str(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

impl Login {
    pub fn new(ep: Endpoint) -> Login {
        let o = config::lock().options.clone();
        let mut params = Params::defaults();
        // Unless negotiated, RFC 7143's defaults hold (FirstBurstLength
        // 65536, ImmediateData Yes); our options bound what we agree to.
        let our_first_burst = o.first_burst_length;
        let our_immediate = o.immediate_data;
        params.max_connections = o.max_connections_per_session;
        params.default_time2wait = o.default_time2wait;
        params.default_time2retain = o.default_time2retain;
        Login {
            ep,
            our_first_burst,
            our_immediate,
            stage: SECURITY,
            first: true,
            params,
            ident: None,
            known_target: None,
            queue_depth: o.max_queue_depth,
            chap: ChapPolicy::default(),
            chap_configured: false,
            require_header_digest: false,
            require_data_digest: false,
            auth: Auth::Pending,
            auth_method_agreed: false,
            declared_mrdsl: false,
            partial: Vec::new(),
            seen: std::collections::HashSet::new(),
            chap_pairs: Vec::new(),
        }
    }

    /// Handle one Login Request.
    pub fn step(&mut self, h: &Bhs, data: &[u8]) -> Reply {
        let transit = h.flags & 0x80 != 0;
        let cont = h.flags & 0x40 != 0;
        let csg = (h.flags >> 2) & 0x03;
        let nsg = h.flags & 0x03;
        if h.b3 > 0 || h.b2 < h.b3 {
            // Only version 0 exists.
            return Reply::fail(refuse(status::UNSUPPORTED_VERSION, format!("version-max {} version-min {}: only 0 exists", h.b2, h.b3)));
        }
        if transit && cont {
            return Reply::fail(refuse(status::INITIATOR_ERROR, "T and C bits both set"));
        }
        if csg == 2 || csg == FULL_FEATURE || (transit && (nsg == 2 || nsg <= csg)) {
            return Reply::fail(refuse(status::INITIATOR_ERROR, format!("invalid stage transition CSG {csg} NSG {nsg}")));
        }
        if csg != self.stage {
            if self.first && csg == OPERATIONAL {
                self.stage = OPERATIONAL;
            } else if csg == OPERATIONAL && self.stage == SECURITY && !self.first {
                return Reply::fail(refuse(status::INITIATOR_ERROR, "operational stage before security negotiation finished"));
            } else {
                return Reply::fail(refuse(status::INITIATOR_ERROR, format!("CSG {csg} while in stage {}", self.stage)));
            }
        }
        if self.partial.len() + data.len() > 64 * 1024 {
            return Reply::fail(refuse(status::INITIATOR_ERROR, "login text over 64 KiB"));
        }
        self.partial.extend_from_slice(data);
        if cont {
            // More text follows: answer with an empty response.
            return Reply { flags: (csg << 2), status: status::SUCCESS, why: String::new(), text: Vec::new(), complete: false };
        }
        let raw = std::mem::take(&mut self.partial);
        let pairs = match text::parse(&raw) {
            Ok(p) => p,
            Err(e) => return Reply::fail(refuse(status::INITIATOR_ERROR, format!("malformed text: {e}"))),
        };
        let mut out = Vec::new();
        if self.first {
            if let Err(st) = self.first_request(h, &pairs, &mut out) {
                return Reply::fail(st);
            }
            self.first = false;
        }
        for (k, v) in &pairs {
            if matches!(k.as_str(), "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias") {
                continue;
            }
            if self.seen.contains(k) && !k.starts_with("CHAP_") && k != "AuthMethod" {
                return Reply::fail(refuse(status::INITIATOR_ERROR, format!("key {k} negotiated twice")));
            }
            self.seen.insert(k.clone());
            if let Err(st) = self.key(k, v, &mut out) {
                return Reply::fail(st);
            }
        }
        if !self.chap_pairs.is_empty() {
            if let Err(st) = self.chap_response(&mut out) {
                return Reply::fail(st);
            }
        }
        // Transition checks.
        let mut flags = csg << 2;
        let mut complete = false;
        if transit {
            if self.stage == SECURITY && !self.security_done() {
                if matches!(self.auth, Auth::WaitAlgorithm | Auth::WaitResponse { .. }) {
                    // Still exchanging CHAP: stay.
                } else {
                    return Reply::fail(refuse(status::AUTH_FAILURE, "leaving the security stage without the CHAP the target requires"));
                }
            } else {
                flags |= 0x80 | nsg;
                if nsg == FULL_FEATURE {
                    if self.require_header_digest && !self.params.header_digest || self.require_data_digest && !self.params.data_digest {
                        return Reply::fail(refuse(status::INITIATOR_ERROR, "the target requires CRC32C digests, not negotiated"));
                    }
                    if !self.declared_mrdsl && !text_has_key(&out, "MaxRecvDataSegmentLength") {
                        text::push(&mut out, "MaxRecvDataSegmentLength", &self.params.max_recv_seg.to_string());
                        self.declared_mrdsl = true;
                    }
                    complete = true;
                }
                self.stage = nsg;
            }
        }
        // Our declaration, unless this answer already holds the key (a
        // Reject of the initiator's value): a key appears once in a text.
        // It then goes in the next answer; if the login ends with this one,
        // the initiator keeps to the default 8192 bytes, which we accept.
        if self.stage == OPERATIONAL && !self.declared_mrdsl && !text_has_key(&out, "MaxRecvDataSegmentLength") {
            text::push(&mut out, "MaxRecvDataSegmentLength", &self.params.max_recv_seg.to_string());
            self.declared_mrdsl = true;
        }
        Reply { flags, status: status::SUCCESS, why: String::new(), text: out, complete }
    }

    /// Which AuthMethods the target's configuration allows: (CHAP, None).
    /// CHAP required: CHAP only. CHAP disabled: None only. Otherwise None,
    /// and CHAP too if the auth group in effect has secrets to check it.
    fn auth_methods(&self) -> (bool, bool) {
        if self.chap.disable_chap {
            (false, true)
        } else if self.chap.required() {
            (true, false)
        } else {
            (self.chap_configured, true)
        }
    }

    fn security_done(&self) -> bool {
        match self.auth {
            Auth::Done => true,
            Auth::Pending => !self.chap.required(),
            _ => false,
        }
    }

    /// The first request names the initiator, the session type and target.
    fn first_request(&mut self, h: &Bhs, pairs: &[(String, String)], out: &mut Vec<u8>) -> Result<(), Refusal> {
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        let initiator = get("InitiatorName").unwrap_or_default();
        if initiator.is_empty() {
            return Err(refuse(status::MISSING_PARAMETER, "no InitiatorName in the first request"));
        }
        let session_type = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(t) => return Err(refuse(status::SESSION_TYPE_NOT_SUPPORTED, format!("SessionType {t:?}"))),
        };
        let cfg = config::lock();
        let target_name = match session_type {
            SessionType::Normal => {
                let name = get("TargetName").ok_or_else(|| refuse(status::MISSING_PARAMETER, "normal session without TargetName"))?;
                let t = cfg.target(&name).ok_or_else(|| refuse(status::NOT_FOUND, format!("no target {name}")))?;
                self.known_target = Some(t.name.clone());
                if !cfg.allowed(t, self.ep.portal_group, &initiator, &self.ep.peer.ip()) {
                    return Err(refuse(
                        status::AUTHORIZATION_FAILURE,
                        format!(
                            "{initiator} at {} is not allowed to reach {name} through portal group {}",
                            self.ep.peer.ip(),
                            self.ep.portal_group
                        ),
                    ));
                }
                self.chap = t.chap;
                if self.chap.chap_group == 0 {
                    self.chap.chap_group = cfg.options.chap_group;
                }
                self.require_header_digest = t.header_digest;
                self.require_data_digest = t.data_digest;
                self.queue_depth = t.queue_depth.clamp(1, cfg.options.max_queue_depth.max(1));
                text::push(out, "TargetAlias", &t.alias);
                text::push(out, "TargetPortalGroupTag", &self.ep.portal_group.to_string());
                Some(t.name.clone())
            }
            SessionType::Discovery => {
                self.chap = cfg.portal_groups.get(&self.ep.portal_group).and_then(|pg| pg.discovery).unwrap_or(cfg.discovery);
                None
            }
        };
        self.chap_configured = cfg.auth_groups.get(&self.chap.chap_group).is_some_and(|g| !g.secrets.is_empty());
        self.ident = Some(Identity {
            initiator_name: initiator,
            initiator_alias: get("InitiatorAlias").unwrap_or_default(),
            target_name,
            session_type,
            isid: h.isid(),
            tsih: h.tsih(),
            cid: h.cid(),
        });
        if self.stage == OPERATIONAL && self.chap.required() {
            return Err(refuse(status::AUTH_FAILURE, "straight to operational negotiation, but the target requires CHAP"));
        }
        Ok(())
    }

    fn key(&mut self, k: &str, v: &str, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let security = self.stage == SECURITY;
        match k {
            "AuthMethod" => {
                if !security {
                    return Err(refuse(status::INITIATOR_ERROR, "AuthMethod outside the security stage"));
                }
                let (chap_ok, none_ok) = self.auth_methods();
                // The initiator's first choice that the target's
                // configuration allows (RFC 7143 6.2.1).
                let choice = v.split(',').find(|m| match *m {
                    "CHAP" => chap_ok,
                    "None" => none_ok,
                    _ => false,
                });
                match choice {
                    Some("CHAP") => {
                        text::push(out, "AuthMethod", "CHAP");
                        self.auth = Auth::WaitAlgorithm;
                    }
                    Some(_) => {
                        text::push(out, "AuthMethod", "None");
                        self.auth = Auth::Done;
                    }
                    None => {
                        text::push(out, "AuthMethod", "Reject");
                        let wanted = match (chap_ok, none_ok) {
                            (true, false) => "the target requires CHAP",
                            (false, true) if self.chap.disable_chap => "CHAP is disabled for this target",
                            (false, true) => "the target has no CHAP secrets configured",
                            _ => "the target allows None or CHAP",
                        };
                        return Err(refuse(status::AUTH_FAILURE, format!("AuthMethod={v}: {wanted}")));
                    }
                }
                self.auth_method_agreed = true;
            }
            "CHAP_A" => {
                if !matches!(self.auth, Auth::WaitAlgorithm) {
                    return Err(refuse(status::INITIATOR_ERROR, "CHAP_A without AuthMethod=CHAP agreed"));
                }
                let alg = v.split(',').filter_map(|a| text::number(a, 0, 255)).find_map(Algorithm::from_code);
                let Some(alg) = alg else {
                    text::push(out, "CHAP_A", "Reject");
                    return Err(refuse(status::AUTH_FAILURE, format!("CHAP_A={v}: none of MD5 (5) or SHA-256 (7)")));
                };
                let random =
                    |n| chap::random(n).map_err(|e| refuse(status::TARGET_ERROR, format!("no random bytes for a CHAP challenge: {e}")));
                let id = random(1)?[0];
                let challenge = random(alg.digest_len().max(16))?;
                text::push(out, "CHAP_A", &alg.code().to_string());
                text::push(out, "CHAP_I", &id.to_string());
                text::push(out, "CHAP_C", &text::hex(&challenge));
                self.auth = Auth::WaitResponse { alg, id, challenge };
            }
            "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                // Checked together after the whole request (`chap_response`).
                if !matches!(self.auth, Auth::WaitResponse { .. }) {
                    return Err(refuse(status::INITIATOR_ERROR, format!("{k} before a CHAP challenge")));
                }
                self.seen.remove(k);
                self.chap_pairs.retain(|(x, _)| x != k);
                self.chap_pairs.push((k.to_string(), v.to_string()));
            }
            _ if security && k.starts_with("CHAP_") => return Err(refuse(status::INITIATOR_ERROR, format!("unknown CHAP key {k}"))),
            _ => self.operational(k, v, out)?,
        }
        Ok(())
    }

    /// Check the initiator's CHAP response and answer a mutual challenge.
    fn chap_response(&mut self, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let pairs = std::mem::take(&mut self.chap_pairs);
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let Auth::WaitResponse { alg, id, challenge } = std::mem::replace(&mut self.auth, Auth::Pending) else {
            return Err(refuse(status::INITIATOR_ERROR, "CHAP response without a challenge"));
        };
        let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) else {
            return Err(refuse(status::AUTH_FAILURE, "CHAP answer without CHAP_N and CHAP_R"));
        };
        let resp =
            text::binary(resp).ok_or_else(|| refuse(status::AUTH_FAILURE, format!("CHAP_R of {name:?} is not a hex or base64 value")))?;
        let secret = config::lock()
            .secret(self.chap.chap_group, name)
            .ok_or_else(|| refuse(status::AUTH_FAILURE, format!("CHAP user {name:?} unknown in auth group {}", self.chap.chap_group)))?;
        let want = alg.response(id, secret.secret.as_bytes(), &challenge);
        if !chap::same(&want, &resp) {
            return Err(refuse(status::AUTH_FAILURE, format!("CHAP response of {name:?} does not match")));
        }
        match (get("CHAP_I"), get("CHAP_C")) {
            (Some(i), Some(c)) => {
                let bad = |what: &str| refuse(status::AUTH_FAILURE, format!("mutual CHAP from {name:?}: {what}"));
                let i = text::number(i, 0, 255).ok_or_else(|| bad("CHAP_I is not a number from 0 to 255"))? as u8;
                let c = text::binary(c).ok_or_else(|| bad("CHAP_C is not a hex or base64 value"))?;
                if c == challenge || c.is_empty() || c.len() > 1024 {
                    return Err(bad("CHAP_C reflects our challenge, or is empty or over 1024 bytes"));
                }
                let (Some(muser), Some(msecret)) = (secret.muser.as_deref(), secret.msecret.as_deref()) else {
                    return Err(bad("no mutual secret configured for this user"));
                };
                text::push(out, "CHAP_N", muser);
                text::push(out, "CHAP_R", &text::hex(&alg.response(i, msecret.as_bytes(), &c)));
            }
            (None, None) if self.chap.mutual_chap => {
                return Err(refuse(status::AUTH_FAILURE, format!("the target requires mutual CHAP; {name:?} sent no CHAP_I/CHAP_C")));
            }
            (None, None) => {}
            _ => return Err(refuse(status::AUTH_FAILURE, format!("mutual CHAP from {name:?}: CHAP_I and CHAP_C must come together"))),
        }
        self.auth = Auth::Done;
        Ok(())
    }

    /// Operational keys (RFC 7143 13).
    fn operational(&mut self, k: &str, v: &str, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let p = &mut self.params;
        let discovery = self.ident.as_ref().is_some_and(|i| i.session_type == SessionType::Discovery);
        let reply: String = match k {
            "HeaderDigest" | "DataDigest" => {
                let required = if k == "HeaderDigest" { self.require_header_digest } else { self.require_data_digest };
                let pick = v.split(',').find(|d| *d == "CRC32C" || (*d == "None" && !required));
                match pick {
                    Some(d) => {
                        let on = d == "CRC32C";
                        if k == "HeaderDigest" {
                            p.header_digest = on;
                        } else {
                            p.data_digest = on;
                        }
                        d.to_string()
                    }
                    None if v.split(',').all(|d| d == "None" || d == "CRC32C") => {
                        return Err(refuse(status::INITIATOR_ERROR, format!("{k}={v}: the target requires CRC32C")));
                    }
                    None => "Reject".into(),
                }
            }
            "MaxRecvDataSegmentLength" => {
                // Declarative: what we may send.
                match text::number(v, 512, (1 << 24) - 1) {
                    Some(n) => {
                        p.max_send_seg = n as u32;
                        return Ok(());
                    }
                    None => "Reject".into(),
                }
            }
            "MaxBurstLength" | "FirstBurstLength" => match text::number(v, 512, (1 << 24) - 1) {
                Some(n) if !discovery => {
                    let ours = if k == "MaxBurstLength" { 1 << 20 } else { self.our_first_burst.max(512) as u64 };
                    let r = n.min(ours) as u32;
                    if k == "MaxBurstLength" {
                        p.max_burst = r;
                    } else {
                        p.first_burst = r;
                    }
                    r.to_string()
                }
                Some(_) => "Irrelevant".into(),
                None => "Reject".into(),
            },
            "ImmediateData" | "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => match text::boolean(v) {
                Some(b) if !discovery => {
                    let r = match k {
                        "ImmediateData" => {
                            p.immediate_data = b && self.our_immediate;
                            p.immediate_data
                        }
                        // OR with our No: unsolicited data is welcome.
                        "InitialR2T" => {
                            p.initial_r2t = b;
                            b
                        }
                        // OR with our Yes: data arrives in order.
                        "DataPDUInOrder" => {
                            p.data_pdu_in_order = true;
                            true
                        }
                        _ => {
                            p.data_sequence_in_order = true;
                            true
                        }
                    };
                    bool_str(r).into()
                }
                Some(_) => "Irrelevant".into(),
                None => "Reject".into(),
            },
            "MaxOutstandingR2T" => match text::number(v, 1, 65535) {
                Some(n) if !discovery => {
                    p.max_outstanding_r2t = (n as u32).min(config::lock().options.max_r2t_per_connection.max(1));
                    p.max_outstanding_r2t.to_string()
                }
                Some(_) => "Irrelevant".into(),
                None => "Reject".into(),
            },
            "MaxConnections" => match text::number(v, 1, 65535) {
                Some(n) if !discovery => {
                    p.max_connections = p.max_connections.min(n as u32).max(1);
                    p.max_connections.to_string()
                }
                Some(_) => "Irrelevant".into(),
                None => "Reject".into(),
            },
            "DefaultTime2Wait" => match text::number(v, 0, 3600) {
                Some(n) => {
                    p.default_time2wait = p.default_time2wait.max(n as u32);
                    p.default_time2wait.to_string()
                }
                None => "Reject".into(),
            },
            "DefaultTime2Retain" => match text::number(v, 0, 3600) {
                Some(n) => {
                    p.default_time2retain = p.default_time2retain.min(n as u32);
                    p.default_time2retain.to_string()
                }
                None => "Reject".into(),
            },
            "ErrorRecoveryLevel" => match text::number(v, 0, 2) {
                Some(_) => {
                    p.error_recovery_level = 0;
                    "0".into()
                }
                None => "Reject".into(),
            },
            "OFMarker" | "IFMarker" => match text::boolean(v) {
                Some(_) => "No".into(),
                None => "Reject".into(),
            },
            "OFMarkInt" | "IFMarkInt" => "Irrelevant".into(),
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                return Err(refuse(status::INITIATOR_ERROR, format!("{k} is a key only a target may send")));
            }
            "SendTargets" => return Err(refuse(status::INITIATOR_ERROR, "SendTargets during login")),
            _ => "NotUnderstood".into(),
        };
        text::push(out, k, &reply);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
