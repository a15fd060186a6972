//! The host's half of the NVMe/TCP PDU layer (NVMe/TCP Transport
//! Specification 1.0, section 3.6): [`parse`] reads what a controller sends
//! (ICResp, CapsuleResp, C2HData, R2T, C2HTermReq) from the front of the
//! receive buffer; the builders write what a host sends (ICReq, CapsuleCmd,
//! H2CData, H2CTermReq).
//!
//! The parser trusts no length: every header is checked against its type,
//! the negotiated digests and the host's limit on a PDU's size before its
//! body is awaited, so a controller cannot make the receive buffer grow
//! beyond [`HostFraming::max_pdu_len`]. Every fault is a [`Fatal`] with the
//! fatal error status and field offset an H2CTermReq reports.

use pollux_nvme_spec::cmd::{Command, Completion};
use pollux_nvme_spec::tcp::{
    CapsuleCmd, CapsuleResp, CommonHeader, DGST_DATA, DGST_HEADER, DIGEST_LEN, DataHeader, Fes, IcReq, IcResp, R2t, TERM_REQ_MAX_ECHO,
    TermReq, flags, kind,
};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// What the connection negotiated, and the host's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFraming {
    /// ICResp received: from then on only the other PDUs are valid.
    pub connected: bool,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Controller PDU data alignment (zero based, dwords): where data
    /// starts in the PDUs the host sends.
    pub cpda: u8,
    /// Largest H2CData payload the controller takes.
    pub maxh2cdata: u32,
    /// Largest C2HData payload the host accepts (its largest transfer).
    pub max_c2h_data: u32,
}

impl HostFraming {
    pub fn initial(max_c2h_data: u32) -> HostFraming {
        HostFraming { connected: false, hdgst: false, ddgst: false, cpda: 0, maxh2cdata: 0, max_c2h_data }
    }

    /// The longest PDU the parser waits for.
    pub fn max_pdu_len(&self) -> usize {
        (size_of::<IcResp>() + TERM_REQ_MAX_ECHO).max(size_of::<DataHeader>() + 2 * DIGEST_LEN + 255 + self.max_c2h_data as usize)
    }

    /// Header digest length of a PDU of this type.
    fn hd(&self, pdu_type: u8) -> usize {
        if self.hdgst && !matches!(pdu_type, kind::IC_REQ | kind::IC_RESP | kind::H2C_TERM_REQ | kind::C2H_TERM_REQ) {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// Where data starts in a PDU the host sends with a header of `hlen`.
    pub fn data_offset(&self, hlen: usize) -> usize {
        let start = hlen + if self.hdgst { DIGEST_LEN } else { 0 };
        let align = (usize::from(self.cpda) + 1) * 4;
        start.div_ceil(align) * align
    }
}

/// A fatal transport error: the H2CTermReq status and the offset of the
/// offending field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub fes: Fes,
    pub fei: u32,
    pub why: String,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}, field offset {})", self.why, self.fes, self.fei)
    }
}

fn fatal(fes: Fes, fei: u32, why: impl Into<String>) -> Fatal {
    Fatal { fes, fei, why: why.into() }
}

/// One PDU from the controller.
#[derive(Debug, PartialEq, Eq)]
pub enum CtrlPdu<'a> {
    IcResp {
        cpda: u8,
        dgst: u8,
        maxh2cdata: u32,
    },
    Resp(Completion),
    /// `digest_ok` false: the data digest did not match (the command
    /// fails; the connection goes on, as Linux's host does).
    C2hData {
        cccid: u16,
        datao: u32,
        data: &'a [u8],
        last: bool,
        success: bool,
        digest_ok: bool,
    },
    R2t {
        cccid: u16,
        ttag: u16,
        offset: u32,
        len: u32,
    },
    TermReq {
        fes: u16,
        fei: u32,
    },
}

/// What [`parse`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole PDU and its length on the wire.
    Pdu(CtrlPdu<'a>, usize),
    /// The buffer must hold at least this many bytes first.
    Need(usize),
}

/// Parse the PDU at the front of `buf`.
pub fn parse<'a>(buf: &'a [u8], f: &HostFraming) -> Result<Parsed<'a>, Fatal> {
    let Ok((ch, _)) = CommonHeader::read_from_prefix(buf) else {
        return Ok(Parsed::Need(size_of::<CommonHeader>()));
    };
    let t = ch.pdu_type;
    let want_hlen = match t {
        kind::IC_RESP => size_of::<IcResp>(),
        kind::C2H_TERM_REQ => size_of::<TermReq>(),
        kind::CAPSULE_RESP => size_of::<CapsuleResp>(),
        kind::C2H_DATA => size_of::<DataHeader>(),
        kind::R2T => size_of::<R2t>(),
        _ => return Err(fatal(Fes::InvalidHeaderField, 0, format!("PDU type {t:#04x} is not one a controller sends"))),
    };
    if (t == kind::IC_RESP) == f.connected && t != kind::C2H_TERM_REQ {
        let why = if f.connected { "a second ICResp" } else { "a PDU before the ICResp" };
        return Err(fatal(Fes::PduSequenceError, 0, why));
    }
    if usize::from(ch.hlen) != want_hlen {
        return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_HLEN, format!("HLEN {} for PDU type {t:#04x}", ch.hlen)));
    }
    let hd = f.hd(t);
    if (ch.flags & flags::HDGSTF != 0) != (hd != 0) {
        return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, "header digest flag against what was negotiated"));
    }
    let plen = ch.plen.get() as usize;
    let hend = want_hlen + hd;
    let (data_start, data_len, dd) = if t == kind::C2H_DATA {
        let dd = if f.ddgst { DIGEST_LEN } else { 0 };
        if (ch.flags & flags::DDGSTF != 0) != f.ddgst {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, "data digest flag against what was negotiated"));
        }
        let pdo = usize::from(ch.pdo);
        if pdo < hend || pdo > plen {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_PDO, format!("PDO {pdo}")));
        }
        if plen < pdo + dd {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN, format!("PLEN {plen}")));
        }
        (pdo, plen - pdo - dd, dd)
    } else if t == kind::C2H_TERM_REQ {
        if plen < want_hlen || plen > want_hlen + TERM_REQ_MAX_ECHO {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN, format!("PLEN {plen}")));
        }
        (plen, 0, 0)
    } else {
        if plen != hend {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN, format!("PLEN {plen} for PDU type {t:#04x}")));
        }
        (plen, 0, 0)
    };
    if data_len > f.max_c2h_data as usize {
        return Err(fatal(Fes::DataOutOfRange, CommonHeader::OFFSET_PLEN, format!("{data_len} bytes of C2H data")));
    }
    // The header digest as soon as it is in: a corrupted PLEN must not
    // make the host wait for bytes that are not coming.
    if hd != 0 && buf.len() >= hend {
        let want = u32::from_le_bytes(buf[want_hlen..hend].try_into().expect("4 bytes"));
        if crc32c::crc32c(&buf[..want_hlen]) != want {
            return Err(fatal(Fes::HeaderDigestError, 0, "header digest mismatch"));
        }
    }
    if buf.len() < plen {
        return Ok(Parsed::Need(plen));
    }
    let pdu = &buf[..plen];
    let out = match t {
        kind::IC_RESP => {
            let r = IcResp::read_from_bytes(&pdu[..want_hlen]).expect("length checked");
            if r.pfv.get() != 0 {
                return Err(fatal(Fes::UnsupportedParameter, IcReq::OFFSET_PFV, format!("PDU format version {}", r.pfv.get())));
            }
            if r.cpda > 31 {
                return Err(fatal(Fes::InvalidHeaderField, 10, format!("CPDA {}", r.cpda)));
            }
            let m = r.maxh2cdata.get();
            if m < 4096 || m % 4 != 0 {
                return Err(fatal(Fes::InvalidHeaderField, 12, format!("MAXH2CDATA {m}")));
            }
            CtrlPdu::IcResp { cpda: r.cpda, dgst: r.dgst, maxh2cdata: m }
        }
        kind::C2H_TERM_REQ => {
            let r = TermReq::read_from_bytes(&pdu[..want_hlen]).expect("length checked");
            CtrlPdu::TermReq { fes: r.fes.get(), fei: r.fei.get() }
        }
        kind::CAPSULE_RESP => CtrlPdu::Resp(CapsuleResp::read_from_bytes(&pdu[..want_hlen]).expect("length checked").cqe),
        kind::R2T => {
            let r = R2t::read_from_bytes(&pdu[..want_hlen]).expect("length checked");
            CtrlPdu::R2t { cccid: r.cccid.get(), ttag: r.ttag.get(), offset: r.r2to.get(), len: r.r2tl.get() }
        }
        _ => {
            let h = DataHeader::read_from_bytes(&pdu[..want_hlen]).expect("length checked");
            if h.datal.get() as usize != data_len {
                return Err(fatal(
                    Fes::InvalidHeaderField,
                    DataHeader::OFFSET_DATAL,
                    format!("DATAL {} in a PDU of {data_len}", h.datal.get()),
                ));
            }
            let data = &pdu[data_start..data_start + data_len];
            let digest_ok = dd == 0 || {
                let want = u32::from_le_bytes(pdu[plen - DIGEST_LEN..].try_into().expect("4 bytes"));
                crc32c::crc32c(data) == want
            };
            let last = ch.flags & flags::LAST_PDU != 0;
            let success = ch.flags & flags::SUCCESS != 0;
            if success && !last {
                return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, "SUCCESS without LAST_PDU"));
            }
            CtrlPdu::C2hData { cccid: h.cccid.get(), datao: h.datao.get(), data, last, success, digest_ok }
        }
    };
    Ok(Parsed::Pdu(out, plen))
}

/// Append an ICReq asking for the given digests (HPDA 0, one R2T at a time).
pub fn ic_req(out: &mut Vec<u8>, hdgst: bool, ddgst: bool) {
    let mut r = IcReq::new_zeroed();
    r.ch = CommonHeader { pdu_type: kind::IC_REQ, flags: 0, hlen: 128, pdo: 0, plen: U32::new(128) };
    r.dgst = if hdgst { DGST_HEADER } else { 0 } | if ddgst { DGST_DATA } else { 0 };
    out.extend_from_slice(r.as_bytes());
}

fn push_header(out: &mut Vec<u8>, header: &[u8], f: &HostFraming) {
    let start = out.len();
    out.extend_from_slice(header);
    if f.hdgst {
        let d = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Append a CapsuleCmd's header for `sqe` with `data_len` bytes of
/// in-capsule data to follow (with padding up to the data offset); the
/// caller appends the data and then [`data_digest`] when digests are on.
pub fn capsule_cmd(out: &mut Vec<u8>, sqe: &Command, data_len: usize, f: &HostFraming) {
    let hlen = size_of::<CapsuleCmd>();
    let (pdo, plen) = if data_len > 0 {
        let pdo = f.data_offset(hlen);
        (pdo, pdo + data_len + if f.ddgst { DIGEST_LEN } else { 0 })
    } else {
        (0, hlen + if f.hdgst { DIGEST_LEN } else { 0 })
    };
    let mut fl = if f.hdgst { flags::HDGSTF } else { 0 };
    if data_len > 0 && f.ddgst {
        fl |= flags::DDGSTF;
    }
    let c = CapsuleCmd {
        ch: CommonHeader { pdu_type: kind::CAPSULE_CMD, flags: fl, hlen: hlen as u8, pdo: pdo as u8, plen: U32::new(plen as u32) },
        sqe: *sqe,
    };
    let start = out.len();
    push_header(out, c.as_bytes(), f);
    out.resize(start + pdo.max(out.len() - start), 0);
}

/// Append an H2CData header for `datal` bytes at `datao` of command `cccid`
/// (transfer tag `ttag`), with padding up to its data offset; the caller
/// appends the data and then [`data_digest`] when digests are on.
pub fn h2c_data(out: &mut Vec<u8>, cccid: u16, ttag: u16, datao: u32, datal: u32, last: bool, f: &HostFraming) {
    let hlen = size_of::<DataHeader>();
    let pdo = f.data_offset(hlen);
    let plen = pdo + datal as usize + if f.ddgst { DIGEST_LEN } else { 0 };
    let mut fl = if f.hdgst { flags::HDGSTF } else { 0 };
    if f.ddgst {
        fl |= flags::DDGSTF;
    }
    if last {
        fl |= flags::LAST_PDU;
    }
    let h = DataHeader {
        ch: CommonHeader { pdu_type: kind::H2C_DATA, flags: fl, hlen: hlen as u8, pdo: pdo as u8, plen: U32::new(plen as u32) },
        cccid: U16::new(cccid),
        ttag: U16::new(ttag),
        datao: U32::new(datao),
        datal: U32::new(datal),
        rsvd: [0; 4],
    };
    let start = out.len();
    push_header(out, h.as_bytes(), f);
    out.resize(start + pdo, 0);
}

/// Append the data digest of `out[start..]` (the data just appended).
pub fn data_digest(out: &mut Vec<u8>, start: usize) {
    let d = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&d.to_le_bytes());
}

/// Append an H2CTermReq: the host ends the connection over a fault in what
/// the controller sent (`offending`: the start of the bad PDU).
pub fn h2c_term_req(out: &mut Vec<u8>, fes: Fes, fei: u32, offending: &[u8]) {
    let echo = &offending[..offending.len().min(TERM_REQ_MAX_ECHO)];
    let hlen = size_of::<TermReq>();
    let t = TermReq {
        ch: CommonHeader { pdu_type: kind::H2C_TERM_REQ, flags: 0, hlen: hlen as u8, pdo: 0, plen: U32::new((hlen + echo.len()) as u32) },
        fes: U16::new(fes as u16),
        fei: U32::new(fei),
        rsvd: [0; 10],
    };
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(echo);
}

#[cfg(test)]
mod tests;
