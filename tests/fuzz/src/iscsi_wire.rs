//! iSCSI on the wire, as an initiator writes it and as the fuzz targets
//! check what the target writes: PDU framing with digests, the scripted
//! login, and the framing invariants of the target's output.

use pollux_iscsi::pdu::{BHS_LEN, Bhs, op, pad};
use pollux_iscsi::text;
use zerocopy::IntoBytes;

pub const INITIATOR: &str = "iqn.2025-01.io.pollux:fuzz-initiator";
/// The target node `iscsi_pdu` logs in to (two LUs).
pub const TARGET_PDU: &str = "iqn.2025-01.io.pollux:fuzz-pdu";
pub const ISID: [u8; 6] = [0x80, 0x00, 0x00, 0x00, 0x12, 0x34];
/// Our MaxRecvDataSegmentLength: the largest data segment the target may send.
pub const OUR_MAX_RECV: usize = 65536;
pub const OUR_MAX_RECV_SMALL: usize = 4096;

/// Append one PDU: header (BHS and AHS) and its digest, data, padding and
/// its digest. The BHS's data length is set to `data.len()`.
pub fn frame(out: &mut Vec<u8>, bhs: &Bhs, ahs: &[u8], data: &[u8], hd: bool, dd: bool) {
    let mut h = *bhs;
    h.set_data_len(data.len());
    h.ahs_words = (ahs.len() / 4) as u8;
    let start = out.len();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&ahs[..ahs.len() / 4 * 4]);
    if hd {
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    if !data.is_empty() {
        let dstart = out.len();
        out.extend_from_slice(data);
        out.extend_from_slice(&[0u8; 3][..pad(data.len())]);
        if dd {
            let crc = crc32c::crc32c(&out[dstart..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
}

/// How the scripted login negotiates.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoginOpts {
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data_off: bool,
    pub initial_r2t_off: bool,
    pub discovery: bool,
    /// Small segments and bursts (many R2Ts and Data-In PDUs).
    pub small: bool,
}

impl LoginOpts {
    /// Mode bits 0..5 of `iscsi_pdu` (see there).
    pub fn from_mode(mode: u8) -> LoginOpts {
        LoginOpts {
            header_digest: mode & 0x01 != 0,
            data_digest: mode & 0x02 != 0,
            immediate_data_off: mode & 0x04 != 0,
            initial_r2t_off: mode & 0x08 != 0,
            discovery: mode & 0x20 != 0,
            small: mode & 0x80 != 0,
        }
    }

    pub fn max_recv(&self) -> usize {
        if self.small { OUR_MAX_RECV_SMALL } else { OUR_MAX_RECV }
    }
}

/// The one Login Request of the scripted login: operational stage straight
/// to full feature phase, every key the options set.
pub fn login_request(o: &LoginOpts) -> Vec<u8> {
    let yes_no = |b: bool| if b { "Yes" } else { "No" };
    let digest = |b: bool| if b { "CRC32C" } else { "None" };
    let mut t = Vec::new();
    text::push(&mut t, "InitiatorName", INITIATOR);
    if o.discovery {
        text::push(&mut t, "SessionType", "Discovery");
    } else {
        text::push(&mut t, "SessionType", "Normal");
        text::push(&mut t, "TargetName", TARGET_PDU);
    }
    text::push(&mut t, "HeaderDigest", digest(o.header_digest));
    text::push(&mut t, "DataDigest", digest(o.data_digest));
    text::push(&mut t, "MaxRecvDataSegmentLength", &o.max_recv().to_string());
    text::push(&mut t, "DefaultTime2Wait", "0");
    text::push(&mut t, "DefaultTime2Retain", "0");
    text::push(&mut t, "ErrorRecoveryLevel", "0");
    if !o.discovery {
        text::push(&mut t, "ImmediateData", yes_no(!o.immediate_data_off));
        text::push(&mut t, "InitialR2T", yes_no(!o.initial_r2t_off));
        text::push(&mut t, "MaxBurstLength", if o.small { "8192" } else { "262144" });
        text::push(&mut t, "FirstBurstLength", if o.small { "4096" } else { "65536" });
        text::push(&mut t, "MaxOutstandingR2T", if o.small { "4" } else { "1" });
        text::push(&mut t, "MaxConnections", "2");
    }
    let mut h = Bhs::new(op::LOGIN | 0x40, 0x80 | (1 << 2) | 3);
    h.lun[..6].copy_from_slice(&ISID);
    h.itt.set(0x1000);
    h.w20.set(1 << 16); // CID 1
    h.w24.set(1); // CmdSN
    let mut out = Vec::new();
    frame(&mut out, &h, &[], &t, false, false);
    out
}

/// The opcodes a target may send.
pub fn is_target_opcode(op: u8) -> bool {
    matches!(
        op,
        op::NOP_IN
            | op::SCSI_RESP
            | op::TASK_MGMT_RESP
            | op::LOGIN_RESP
            | op::TEXT_RESP
            | op::DATA_IN
            | op::LOGOUT_RESP
            | op::R2T
            | op::ASYNC
            | op::REJECT
    )
}

/// A PDU the target sent.
#[derive(Clone, Debug)]
pub struct TargetPdu {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}

/// How the target frames its output on a connection.
#[derive(Clone, Copy, Debug)]
pub struct OutFraming {
    pub hd: bool,
    pub dd: bool,
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_data: usize,
}

/// Cut the complete PDU at the front of `rx`, if there is one, checking
/// every framing rule a target must keep.
pub fn take_pdu(rx: &mut Vec<u8>, f: &OutFraming) -> Option<TargetPdu> {
    let h = Bhs::parse(rx)?;
    let login = h.opcode() == op::LOGIN_RESP;
    // Digests start with full feature phase (the Login Response that ends
    // the login has none either).
    let (hd, dd) = if login { (false, false) } else { (f.hd, f.dd) };
    assert!(is_target_opcode(h.opcode()), "the target sent opcode {:#04x}: {h:?}", h.opcode());
    assert_eq!(h.ahs_len(), 0, "the target sent an AHS: {h:?}");
    let dlen = h.data_len();
    let max = if login { 8192 } else { f.max_data };
    assert!(dlen <= max, "the target sent a data segment of {dlen} bytes, above the initiator's MaxRecvDataSegmentLength {max}: {h:?}");
    let hdr = BHS_LEN + if hd { 4 } else { 0 };
    let total = hdr + dlen + pad(dlen) + if dd && dlen > 0 { 4 } else { 0 };
    if rx.len() < total {
        return None;
    }
    if hd {
        let got = u32::from_le_bytes(rx[BHS_LEN..BHS_LEN + 4].try_into().expect("4 bytes"));
        assert_eq!(got, crc32c::crc32c(&rx[..BHS_LEN]), "wrong header digest from the target: {h:?}");
    }
    if dd && dlen > 0 {
        let end = hdr + dlen + pad(dlen);
        let got = u32::from_le_bytes(rx[end..end + 4].try_into().expect("4 bytes"));
        assert_eq!(got, crc32c::crc32c(&rx[hdr..end]), "wrong data digest from the target: {h:?}");
    }
    let p = TargetPdu { bhs: h, data: rx[hdr..hdr + dlen].to_vec() };
    rx.drain(..total);
    Some(p)
}

/// Status class and detail of a Login Response.
pub fn login_status(h: &Bhs) -> (u8, u8) {
    let b = h.w36.get().to_be_bytes();
    (b[0], b[1])
}

/// Target nodes of the `iscsi_text` target (no LUs: logins only).
pub const TARGET_OPEN: &str = "iqn.2025-01.io.pollux:fuzz-open";
pub const TARGET_CHAP: &str = "iqn.2025-01.io.pollux:fuzz-chap";
pub const TARGET_MUTUAL: &str = "iqn.2025-01.io.pollux:fuzz-mutual";
pub const TARGET_DIGEST: &str = "iqn.2025-01.io.pollux:fuzz-digest";
pub const TARGET_DENY: &str = "iqn.2025-01.io.pollux:fuzz-deny";
/// An initiator name initiator group 2 denies.
pub const DENIED_INITIATOR: &str = "iqn.2025-01.io.pollux:denied";

/// A CHAP secret: user, secret, and for mutual CHAP the target's user and
/// secret.
pub type Secret = (&'static str, &'static str, Option<(&'static str, &'static str)>);

/// CHAP secrets of auth group 1.
pub const SECRETS: &[Secret] = &[("user1", "secret-one-0123", Some(("target1", "msecret-one-012"))), ("user2", "secret-two-0123", None)];

/// The process-wide iSCSI configuration both iSCSI targets use: portal
/// groups 1 (public) and 2 (private, CHAP for discovery), initiator groups
/// 1 (anyone) and 2 (one name denied), auth group 1, and the target nodes
/// above. Portal groups are never started: connections are handed to the
/// target directly. Made once; `iscsi_pdu` replaces its node's device
/// (fresh LUs) before each execution.
pub fn ensure_config() {
    use pollux_iscsi::config::{self, AuthGroup, ChapPolicy, InitiatorGroup, Portal, PortalGroup, Secret, TargetNode};
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut cfg = config::lock();
        let secrets = SECRETS
            .iter()
            .map(|(u, s, m)| Secret {
                user: u.to_string(),
                secret: s.to_string(),
                muser: m.map(|(u, _)| u.to_string()),
                msecret: m.map(|(_, s)| s.to_string()),
            })
            .collect();
        cfg.auth_groups.insert(1, AuthGroup { tag: 1, secrets });
        let portal = |port: &str| vec![Portal { host: "127.0.0.1".into(), port: port.into() }];
        cfg.portal_groups.insert(1, PortalGroup { tag: 1, portals: portal("3260"), private: false, wait: true, discovery: None });
        let chap_discovery = ChapPolicy { require_chap: true, chap_group: 1, ..Default::default() };
        cfg.portal_groups
            .insert(2, PortalGroup { tag: 2, portals: portal("3261"), private: true, wait: true, discovery: Some(chap_discovery) });
        cfg.initiator_groups.insert(1, InitiatorGroup { tag: 1, initiators: vec!["ANY".into()], netmasks: vec!["ANY".into()] });
        cfg.initiator_groups.insert(
            2,
            InitiatorGroup {
                tag: 2,
                initiators: vec![format!("!{DENIED_INITIATOR}"), "ANY".into()],
                netmasks: vec!["127.0.0.1/32".into()],
            },
        );
        let node = |name: &str, maps: Vec<(i32, i32)>, chap: ChapPolicy, digests: bool| TargetNode {
            name: name.to_string(),
            alias: format!("alias of {name}"),
            pg_ig_maps: maps,
            luns: Vec::new(),
            queue_depth: 32,
            chap,
            header_digest: digests,
            data_digest: digests,
            device: pollux_scsi::Device::new(name),
        };
        let none = ChapPolicy::default();
        let require = ChapPolicy { require_chap: true, chap_group: 1, ..Default::default() };
        let mutual = ChapPolicy { require_chap: true, mutual_chap: true, chap_group: 1, ..Default::default() };
        let offered = ChapPolicy { chap_group: 1, ..Default::default() };
        let mut pdu = node(TARGET_PDU, vec![(1, 1), (2, 2)], none, false);
        pdu.luns = vec![(0, "FuzzMalloc0".into()), (1, "FuzzMalloc1".into())];
        pdu.queue_depth = 64;
        let nodes = [
            pdu,
            node(TARGET_OPEN, vec![(1, 1), (2, 1)], none, false),
            node(TARGET_CHAP, vec![(1, 1)], require, false),
            node(TARGET_MUTUAL, vec![(1, 1), (2, 1)], mutual, false),
            node(TARGET_DIGEST, vec![(1, 1)], offered, true),
            node(TARGET_DENY, vec![(1, 2)], none, false),
        ];
        for n in nodes {
            n.sync_ports();
            cfg.targets.retain(|t| t.name != n.name);
            cfg.targets.push(n);
        }
    });
}

/// Give `iscsi_pdu`'s target node a new device.
pub fn set_pdu_device(dev: std::sync::Arc<pollux_scsi::Device>) {
    let mut cfg = pollux_iscsi::config::lock();
    if let Some(t) = cfg.targets.iter_mut().find(|t| t.name == TARGET_PDU) {
        t.device = dev;
        t.sync_ports();
    }
}
