//! NVMe/TCP on the wire, as a host writes it and as the fuzz targets check
//! what the controller writes: PDUs byte by byte, the scripted ICReq,
//! Connect and CC.EN, and the framing invariants of the controller's output.

pub const SUBNQN: &str = "nqn.2025-01.io.pollux:fuzz";
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0f0f0f-1111-2222-3333-444444444444";
pub const HOSTID: [u8; 16] = [0x0f; 16];

/// PDU types.
pub const IC_REQ: u8 = 0x00;
pub const IC_RESP: u8 = 0x01;
pub const H2C_TERM_REQ: u8 = 0x02;
pub const C2H_TERM_REQ: u8 = 0x03;
pub const CAPSULE_CMD: u8 = 0x04;
pub const CAPSULE_RESP: u8 = 0x05;
pub const H2C_DATA: u8 = 0x06;
pub const C2H_DATA: u8 = 0x07;
pub const R2T: u8 = 0x09;

const HDGSTF: u8 = 0x01;
const DDGSTF: u8 = 0x02;
pub const LAST_PDU: u8 = 0x04;
pub const SUCCESS: u8 = 0x08;

/// SGL descriptor identifiers: in-capsule data and transport data block.
pub const SGL_IN_CAPSULE: u8 = 0x01;
pub const SGL_TRANSPORT: u8 = 0x5a;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// An ICReq: digests asked for, host PDU data alignment.
pub fn ic_req(hd: bool, dd: bool, hpda: u8) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[0] = IC_REQ;
    b[2] = 128;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    b[10] = hpda;
    b[11] = u8::from(hd) | (u8::from(dd) << 1);
    b
}

/// A CapsuleCmd carrying `sqe` and `data` in the capsule.
pub fn capsule(sqe: &[u8; 64], data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut b = vec![CAPSULE_CMD, 0, 72, 0, 0, 0, 0, 0];
    b.extend_from_slice(sqe);
    frame(&mut b, data, hd, dd);
    b
}

/// An H2CData PDU.
pub fn h2c_data(cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool, hd: bool, dd: bool) -> Vec<u8> {
    let mut b = vec![H2C_DATA, if last { LAST_PDU } else { 0 }, 24, 0, 0, 0, 0, 0];
    b.extend_from_slice(&cccid.to_le_bytes());
    b.extend_from_slice(&ttag.to_le_bytes());
    b.extend_from_slice(&datao.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    frame(&mut b, data, hd, dd);
    b
}

/// Finish a PDU whose header is in `b`: digest flags, header digest, data
/// (4-byte aligned) and data digest, PDO and PLEN.
fn frame(b: &mut Vec<u8>, data: &[u8], hd: bool, dd: bool) {
    let hlen = b.len();
    if hd {
        b[1] |= HDGSTF;
    }
    let dd = dd && !data.is_empty();
    if dd {
        b[1] |= DDGSTF;
    }
    let pdo = if data.is_empty() { 0 } else { hlen + if hd { 4 } else { 0 } };
    let plen = hlen + if hd { 4 } else { 0 } + data.len() + if dd { 4 } else { 0 };
    b[3] = pdo as u8;
    b[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    if hd {
        let crc = crc32c::crc32c(&b[..hlen]);
        b.extend_from_slice(&crc.to_le_bytes());
    }
    b.extend_from_slice(data);
    if dd {
        b.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
}

/// Set a command's data pointer to one SGL descriptor.
pub fn set_sgl(sqe: &mut [u8; 64], id: u8, len: u32) {
    sqe[1] = (sqe[1] & !0xc0) | 0x40;
    sqe[24..40].fill(0);
    sqe[32..36].copy_from_slice(&len.to_le_bytes());
    sqe[39] = id;
}

/// A Fabrics Connect and its 1024 bytes of data.
pub fn connect(cid: u16, qid: u16, sqsize: u16, cattr: u8, cntlid: u16, subnqn: &str) -> ([u8; 64], Vec<u8>) {
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[2..4].copy_from_slice(&cid.to_le_bytes());
    sqe[4] = 0x01;
    set_sgl(&mut sqe, SGL_IN_CAPSULE, 1024);
    sqe[42..44].copy_from_slice(&qid.to_le_bytes());
    sqe[44..46].copy_from_slice(&sqsize.to_le_bytes());
    sqe[46] = cattr;
    let mut data = vec![0u8; 1024];
    data[..16].copy_from_slice(&HOSTID);
    data[16..18].copy_from_slice(&cntlid.to_le_bytes());
    data[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    data[512..512 + HOSTNQN.len()].copy_from_slice(HOSTNQN.as_bytes());
    (sqe, data)
}

/// Property Set of CC (4 bytes).
pub fn property_set_cc(cid: u16, value: u32) -> [u8; 64] {
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[2..4].copy_from_slice(&cid.to_le_bytes());
    sqe[4] = 0x00;
    sqe[44..48].copy_from_slice(&0x14u32.to_le_bytes());
    sqe[48..52].copy_from_slice(&value.to_le_bytes());
    sqe
}

/// CC with EN, IOSQES 6 and IOCQES 4.
pub const CC_ENABLE: u32 = 0x0046_0001;

/// A PDU from the controller, digests checked and stripped.
#[derive(Clone, Debug)]
pub struct C2h {
    pub kind: u8,
    pub flags: u8,
    /// The header without digest.
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

impl C2h {
    /// A CapsuleResp's (dw0, cid, status code type and code).
    pub fn cqe(&self) -> (u32, u16, (u8, u8)) {
        let h = &self.header[8..24];
        let st = le16(h, 14) >> 1;
        (le32(h, 0), le16(h, 12), (((st >> 8) & 0x7) as u8, st as u8))
    }

    /// An R2T's (cccid, ttag, offset, length).
    pub fn r2t(&self) -> (u16, u16, u32, u32) {
        let h = &self.header;
        (le16(h, 8), le16(h, 10), le32(h, 12), le32(h, 16))
    }

    /// A C2HData's cccid.
    pub fn cccid(&self) -> u16 {
        le16(&self.header, 8)
    }
}

/// What a host knows of its connection, to check the controller's output.
#[derive(Clone, Debug, Default)]
pub struct Link {
    /// Digests and alignment asked for in the ICReq (if we sent it).
    pub asked: Option<(bool, bool, u8)>,
    /// The ICResp came: (header digest, data digest, MAXH2CDATA).
    pub ic: Option<(bool, bool, u32)>,
    /// The host disabled SQ flow control in its Connect.
    pub sq_flow_off: bool,
    /// Entries of the submission queue the Connect asked for (0: not
    /// known, the input sent its own Connect).
    pub sq_entries: u16,
    /// Reads answered with C2HData SUCCESS since the last CapsuleResp.
    pub success_run: u16,
    /// A C2HTermReq came: nothing may follow it.
    pub terminated: bool,
}

/// Cut the complete PDU at the front of `rx`, if there is one, checking
/// every framing rule of a controller's output.
pub fn take_pdu(rx: &mut Vec<u8>, link: &mut Link) -> Option<C2h> {
    if rx.len() < 8 {
        return None;
    }
    let (kind, flags, hlen, pdo, plen) = (rx[0], rx[1], rx[2] as usize, rx[3] as usize, le32(rx, 4) as usize);
    let what = format!("PDU type {kind:#04x} flags {flags:#04x} hlen {hlen} pdo {pdo} plen {plen}");
    assert!(!link.terminated, "the controller sent a {what} after its C2HTermReq");
    let want_hlen = match kind {
        IC_RESP => 128,
        C2H_TERM_REQ | CAPSULE_RESP | C2H_DATA | R2T => 24,
        _ => panic!("the controller sent a {what}: not a controller-to-host PDU"),
    };
    assert_eq!(hlen, want_hlen, "{what}: wrong header length");
    let (hd, dd, _) = match (kind, link.ic) {
        (IC_RESP, None) | (C2H_TERM_REQ, _) => (false, false, 0),
        (IC_RESP, Some(_)) => panic!("a second ICResp: {what}"),
        (_, None) => panic!("{what} before the ICResp"),
        (_, Some(ic)) => ic,
    };
    match kind {
        IC_RESP => assert_eq!(plen, 128, "{what}"),
        C2H_TERM_REQ => assert!((24..=24 + 152).contains(&plen), "{what}"),
        CAPSULE_RESP | R2T => {
            assert_eq!(flags & HDGSTF != 0, hd, "{what}: header digest flag against the ICResp");
            assert_eq!(flags & DDGSTF, 0, "{what}: a data digest flag without data");
            assert_eq!(plen, 24 + if hd { 4 } else { 0 }, "{what}");
        }
        _ => {
            assert_eq!(flags & HDGSTF != 0, hd, "{what}: header digest flag against the ICResp");
            assert_eq!(flags & DDGSTF != 0, dd, "{what}: data digest flag against the ICResp");
            let align = link.asked.map_or(4, |(_, _, hpda)| (usize::from(hpda) + 1) * 4);
            assert!(pdo >= 24 + if hd { 4 } else { 0 } && pdo % align == 0, "{what}: data offset against HPDA alignment {align}");
            if flags & SUCCESS != 0 {
                assert!(flags & LAST_PDU != 0, "{what}: SUCCESS without LAST_PDU");
            }
        }
    }
    if rx.len() < plen {
        return None;
    }
    let p = &rx[..plen];
    let hdr_end = hlen + if hd { 4 } else { 0 };
    if hd {
        assert_eq!(le32(p, hlen), crc32c::crc32c(&p[..hlen]), "{what}: wrong header digest");
    }
    let data = if kind == C2H_DATA {
        let datal = le32(p, 16) as usize;
        let dlen = plen - pdo - if dd { 4 } else { 0 };
        assert_eq!(datal, dlen, "{what}: DATAL against PLEN");
        assert!(datal > 0, "{what}: no data");
        let d = &p[pdo..pdo + datal];
        if dd {
            assert_eq!(le32(p, pdo + datal), crc32c::crc32c(d), "{what}: wrong data digest");
        }
        d.to_vec()
    } else {
        p[hdr_end..].to_vec()
    };
    let c = C2h { kind, flags, header: p[..hlen].to_vec(), data };
    match kind {
        IC_RESP => {
            assert_eq!(le16(p, 8), 0, "ICResp PFV");
            let dgst = p[11];
            let (ahd, add, _) = link.asked.unwrap_or((true, true, 0));
            assert!(dgst & !(u8::from(ahd) | u8::from(add) << 1) == 0, "ICResp turns on a digest the host did not ask for: {dgst:#x}");
            let maxh2c = le32(p, 12);
            assert!(maxh2c >= 4096, "ICResp MAXH2CDATA {maxh2c} is below 4096");
            link.ic = Some((dgst & 1 != 0, dgst & 2 != 0, maxh2c));
        }
        C2H_TERM_REQ => link.terminated = true,
        CAPSULE_RESP => link.success_run = 0,
        C2H_DATA if flags & SUCCESS != 0 && !link.sq_flow_off && link.sq_entries > 0 => {
            // With SQ flow control on, the host must learn the SQ head (a
            // CapsuleResp) at least once per quarter of its queue.
            link.success_run += 1;
            let quarter = (link.sq_entries / 4).max(1);
            assert!(
                link.success_run < quarter,
                "{} reads ended with SUCCESS in a row under SQ flow control ({} entries)",
                link.success_run,
                link.sq_entries
            );
        }
        _ => {}
    }
    rx.drain(..plen);
    Some(c)
}
