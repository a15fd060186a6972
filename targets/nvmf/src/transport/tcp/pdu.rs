//! NVMe/TCP PDUs (NVMe over Fabrics TCP transport binding, section 3.6):
//! wire structures, the parser for what a host sends, and builders for what
//! the controller sends.
//!
//! [`parse`] looks at the front of a connection's receive buffer and returns
//! a complete PDU, a request for more bytes, or a [`Fatal`] error carrying
//! the fatal error status (FES) and field offset (FEI) for the C2HTermReq
//! that the spec asks for. It never trusts a length field: every header is
//! checked against the PDU type and the negotiated limits before its data is
//! awaited, so a peer cannot make the receive buffer grow.

use nvme_spec::cmd::Command;
use pollux_nvme_spec as nvme_spec;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, IntoBytes};

pub use nvme_spec::tcp::*;

/// CRC32C, the digest of headers and data.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// What the connection negotiated; limits the parser enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    /// ICReq/ICResp exchanged.
    pub connected: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest in-capsule data accepted.
    pub max_in_capsule: u32,
    /// Largest H2CData payload accepted.
    pub max_h2c_data: u32,
}

impl Framing {
    /// Before ICReq: only an ICReq is valid.
    pub fn initial(max_in_capsule: u32, max_h2c_data: u32) -> Framing {
        Framing { connected: false, header_digest: false, data_digest: false, max_in_capsule, max_h2c_data }
    }

    fn hdgst_len(&self) -> usize {
        if self.header_digest { DIGEST_LEN } else { 0 }
    }

    /// Bytes of the longest PDU this framing accepts (receive buffer size).
    pub fn max_pdu_len(&self) -> usize {
        let data = self.max_in_capsule.max(self.max_h2c_data) as usize;
        size_of::<CapsuleCmd>() + DIGEST_LEN + 256 + data + DIGEST_LEN
    }
}

/// A fatal framing error: the connection is terminated with a C2HTermReq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub fes: Fes,
    /// Byte offset of the offending field (for header field errors).
    pub fei: u32,
    /// How many bytes of the received header to echo back.
    pub echo: usize,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fatal NVMe/TCP error {:?} at byte {}", self.fes, self.fei)
    }
}

/// One PDU from a host, borrowing the receive buffer.
#[derive(Debug)]
pub enum Pdu<'a> {
    IcReq(&'a IcReq),
    /// The host terminates the connection.
    H2cTermReq(&'a TermReq),
    CapsuleCmd {
        cmd: &'a Command,
        data: &'a [u8],
        /// False when a data digest was present and did not match: the
        /// command must fail with a transient transport error.
        data_ok: bool,
    },
    H2cData {
        hdr: &'a DataHeader,
        data: &'a [u8],
        data_ok: bool,
    },
}

/// Outcome of looking at the front of the receive buffer.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A complete PDU of `len` bytes.
    Pdu(Pdu<'a>, usize),
    /// The buffer holds only part of a PDU; at least this many bytes in all
    /// are needed.
    Incomplete(usize),
    /// The header of an H2CData PDU (checked, digest included) and part of
    /// its data: the data starts at byte `data_start` of the PDU and is
    /// `hdr.datal` bytes long, followed by a data digest when one was
    /// negotiated. The caller may take the data straight from the socket.
    DataHead { hdr: &'a DataHeader, data_start: usize },
}

fn fatal(fes: Fes, fei: u32, echo: usize) -> Fatal {
    Fatal { fes, fei, echo }
}

/// Parse the PDU at the front of `buf`.
pub fn parse<'a>(buf: &'a [u8], f: &Framing) -> Result<Parsed<'a>, Fatal> {
    let Ok((ch, _)) = CommonHeader::read_from_prefix(buf) else {
        return Ok(Parsed::Incomplete(size_of::<CommonHeader>()));
    };
    let echo = (ch.hlen as usize).clamp(size_of::<CommonHeader>(), TERM_REQ_MAX_ECHO).min(buf.len());
    let plen = ch.plen.get() as usize;
    let (hlen, allowed_flags) = match ch.pdu_type {
        kind::IC_REQ => (size_of::<IcReq>(), 0),
        kind::H2C_TERM_REQ => (size_of::<TermReq>(), 0),
        kind::CAPSULE_CMD => (size_of::<CapsuleCmd>(), flags::HDGSTF | flags::DDGSTF),
        kind::H2C_DATA => (size_of::<DataHeader>(), flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU),
        _ => return Err(fatal(Fes::InvalidHeaderField, 0, echo)),
    };
    // Sequence: ICReq first and once; a host may terminate at any time.
    match (f.connected, ch.pdu_type) {
        (false, kind::IC_REQ) | (true, kind::CAPSULE_CMD | kind::H2C_DATA) | (_, kind::H2C_TERM_REQ) => {}
        _ => return Err(fatal(Fes::PduSequenceError, 0, echo)),
    }
    if ch.hlen as usize != hlen {
        return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_HLEN, echo));
    }
    if ch.flags & !allowed_flags != 0 {
        return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, echo));
    }
    let digested = matches!(ch.pdu_type, kind::CAPSULE_CMD | kind::H2C_DATA);
    let hd = if digested { f.hdgst_len() } else { 0 };
    if digested && (ch.flags & flags::HDGSTF != 0) != f.header_digest {
        return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, echo));
    }
    // Length bounds, before waiting for the rest.
    let (min, max) = match ch.pdu_type {
        kind::IC_REQ => (hlen, hlen),
        kind::H2C_TERM_REQ => (hlen, hlen + TERM_REQ_MAX_ECHO),
        kind::CAPSULE_CMD => (hlen + hd, hlen + hd + 256 + f.max_in_capsule as usize + DIGEST_LEN),
        _ => (hlen + hd + 1, hlen + hd + 256 + f.max_h2c_data as usize + DIGEST_LEN),
    };
    if plen < min || plen > max {
        let fes = if ch.pdu_type == kind::H2C_DATA && plen > max { Fes::LimitExceeded } else { Fes::InvalidHeaderField };
        return Err(fatal(fes, CommonHeader::OFFSET_PLEN, echo));
    }
    let has_data = digested && plen > hlen + hd;
    let (data_start, dd) = if has_data {
        let pdo = ch.pdo as usize;
        if pdo < hlen + hd || pdo >= plen || pdo % 4 != 0 {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_PDO, echo));
        }
        let dd = if f.data_digest { DIGEST_LEN } else { 0 };
        if (ch.flags & flags::DDGSTF != 0) != f.data_digest || plen < pdo + dd + 1 {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, echo));
        }
        (pdo, dd)
    } else {
        if digested && ch.flags & flags::DDGSTF != 0 {
            return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS, echo));
        }
        (plen, 0)
    };
    // H2CData whose header is in but not all of its data: the header now.
    let data_head = ch.pdu_type == kind::H2C_DATA && buf.len() >= data_start && buf.len() < plen - dd;
    if buf.len() < plen && !data_head {
        return Ok(Parsed::Incomplete(plen));
    }
    if hd > 0 {
        let want = u32::from_le_bytes(buf[hlen..hlen + 4].try_into().expect("4 bytes"));
        if crc32c(&buf[..hlen]) != want {
            return Err(fatal(Fes::HeaderDigestError, 0, echo));
        }
    }
    if data_head {
        let h = DataHeader::ref_from_prefix(buf).map_err(|_| fatal(Fes::InvalidHeaderField, 0, echo))?.0;
        check_datal(h, plen - dd - data_start, f, echo)?;
        return Ok(Parsed::DataHead { hdr: h, data_start });
    }
    let pdu = &buf[..plen];
    let data = &pdu[data_start..plen - dd];
    let data_ok = dd == 0 || {
        let want = u32::from_le_bytes(pdu[plen - dd..plen].try_into().expect("4 bytes"));
        crc32c(data) == want
    };
    let parsed = match ch.pdu_type {
        kind::IC_REQ => {
            let ic = IcReq::ref_from_bytes(&pdu[..hlen]).map_err(|_| fatal(Fes::InvalidHeaderField, 0, echo))?;
            if ic.pfv.get() != 0 {
                return Err(fatal(Fes::UnsupportedParameter, IcReq::OFFSET_PFV, echo));
            }
            if ic.hpda > 31 {
                return Err(fatal(Fes::InvalidHeaderField, IcReq::OFFSET_HPDA, echo));
            }
            if ic.dgst & !(DGST_HEADER | DGST_DATA) != 0 {
                return Err(fatal(Fes::InvalidHeaderField, IcReq::OFFSET_DGST, echo));
            }
            Pdu::IcReq(ic)
        }
        kind::H2C_TERM_REQ => Pdu::H2cTermReq(TermReq::ref_from_prefix(pdu).map_err(|_| fatal(Fes::InvalidHeaderField, 0, echo))?.0),
        kind::CAPSULE_CMD => {
            let c = CapsuleCmd::ref_from_prefix(pdu).map_err(|_| fatal(Fes::InvalidHeaderField, 0, echo))?.0;
            if data.len() > f.max_in_capsule as usize {
                return Err(fatal(Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN, echo));
            }
            Pdu::CapsuleCmd { cmd: &c.sqe, data: if has_data { data } else { &[] }, data_ok }
        }
        _ => {
            let h = DataHeader::ref_from_prefix(pdu).map_err(|_| fatal(Fes::InvalidHeaderField, 0, echo))?.0;
            check_datal(h, data.len(), f, echo)?;
            Pdu::H2cData { hdr: h, data, data_ok }
        }
    };
    Ok(Parsed::Pdu(parsed, plen))
}

/// DATAL of an H2CData PDU: the length of its data, at most MAXH2CDATA.
fn check_datal(h: &DataHeader, data_len: usize, f: &Framing, echo: usize) -> Result<(), Fatal> {
    if h.datal.get() as usize != data_len {
        return Err(fatal(Fes::InvalidHeaderField, DataHeader::OFFSET_DATAL, echo));
    }
    if h.datal.get() > f.max_h2c_data {
        return Err(fatal(Fes::LimitExceeded, DataHeader::OFFSET_DATAL, echo));
    }
    Ok(())
}

// ---- Builders for controller-to-host PDUs ----

fn header(pdu_type: u8, hlen: usize) -> CommonHeader {
    CommonHeader { pdu_type, flags: 0, hlen: hlen as u8, pdo: 0, plen: U32::new(hlen as u32) }
}

/// Append the ICResp.
pub fn ic_resp(out: &mut Vec<u8>, dgst: u8, maxh2cdata: u32) {
    let r = IcResp {
        ch: header(kind::IC_RESP, size_of::<IcResp>()),
        pfv: U16::new(0),
        cpda: 0,
        dgst,
        maxh2cdata: U32::new(maxh2cdata),
        rsvd: [0; 112],
    };
    out.extend_from_slice(r.as_bytes());
}

/// Append a C2HTermReq echoing (up to 152 bytes of) the offending header.
pub fn c2h_term_req(out: &mut Vec<u8>, fes: Fes, fei: u32, offending: &[u8]) {
    let echo = &offending[..offending.len().min(TERM_REQ_MAX_ECHO)];
    let mut t =
        TermReq { ch: header(kind::C2H_TERM_REQ, size_of::<TermReq>()), fes: U16::new(fes as u16), fei: U32::new(fei), rsvd: [0; 10] };
    t.ch.plen.set((size_of::<TermReq>() + echo.len()) as u32);
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(echo);
}

fn push_header_digest(out: &mut Vec<u8>, start: usize, hd: bool) {
    if hd {
        let d = crc32c(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Append a CapsuleResp.
pub fn capsule_resp(out: &mut Vec<u8>, cqe: &nvme_spec::cmd::Completion, hd: bool) {
    let mut r = CapsuleResp { ch: header(kind::CAPSULE_RESP, size_of::<CapsuleResp>()), cqe: *cqe };
    if hd {
        r.ch.flags |= flags::HDGSTF;
        r.ch.plen.set((size_of::<CapsuleResp>() + DIGEST_LEN) as u32);
    }
    let start = out.len();
    out.extend_from_slice(r.as_bytes());
    push_header_digest(out, start, hd);
}

/// Append an R2T.
pub fn r2t(out: &mut Vec<u8>, cccid: u16, ttag: u16, offset: u32, len: u32, hd: bool) {
    let mut r = R2t {
        ch: header(kind::R2T, size_of::<R2t>()),
        cccid: U16::new(cccid),
        ttag: U16::new(ttag),
        r2to: U32::new(offset),
        r2tl: U32::new(len),
        rsvd: [0; 4],
    };
    if hd {
        r.ch.flags |= flags::HDGSTF;
        r.ch.plen.set((size_of::<R2t>() + DIGEST_LEN) as u32);
    }
    let start = out.len();
    out.extend_from_slice(r.as_bytes());
    push_header_digest(out, start, hd);
}

/// How C2HData PDUs are laid out on this connection.
#[derive(Clone, Copy, Debug)]
pub struct C2hFraming {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Host PDU data alignment in bytes ((HPDA + 1) * 4).
    pub data_alignment: usize,
}

/// Append one C2HData PDU carrying `chunks` (one transfer's pieces, in
/// order) at `offset`. `last` sets LAST_PDU, `success` also SUCCESS.
pub fn c2h_data<'a>(
    out: &mut Vec<u8>,
    f: &C2hFraming,
    cccid: u16,
    offset: u32,
    chunks: impl Iterator<Item = &'a [u8]> + Clone,
    last: bool,
    success: bool,
) {
    let datal: usize = chunks.clone().map(<[u8]>::len).sum();
    c2h_data_header(out, f, cccid, offset, datal, last, success);
    let mut crc = 0u32;
    for c in chunks {
        out.extend_from_slice(c);
        if f.data_digest {
            crc = crc32c::crc32c_append(crc, c);
        }
    }
    if f.data_digest {
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// Append the header of a C2HData PDU of `datal` bytes, up to where its
/// data begins (header digest and alignment padding included). The caller
/// sends the data next, then its CRC32C if the framing has data digests.
pub fn c2h_data_header(out: &mut Vec<u8>, f: &C2hFraming, cccid: u16, offset: u32, datal: usize, last: bool, success: bool) {
    let hlen = size_of::<DataHeader>();
    let hd = if f.header_digest { DIGEST_LEN } else { 0 };
    let pdo = (hlen + hd).next_multiple_of(f.data_alignment.max(1));
    let dd = if f.data_digest { DIGEST_LEN } else { 0 };
    let mut h = DataHeader {
        ch: header(kind::C2H_DATA, hlen),
        cccid: U16::new(cccid),
        ttag: U16::new(0),
        datao: U32::new(offset),
        datal: U32::new(datal as u32),
        rsvd: [0; 4],
    };
    h.ch.pdo = pdo as u8;
    h.ch.plen.set((pdo + datal + dd) as u32);
    if f.header_digest {
        h.ch.flags |= flags::HDGSTF;
    }
    if f.data_digest {
        h.ch.flags |= flags::DDGSTF;
    }
    if last {
        h.ch.flags |= flags::LAST_PDU;
        if success {
            h.ch.flags |= flags::SUCCESS;
        }
    }
    let start = out.len();
    out.extend_from_slice(h.as_bytes());
    push_header_digest(out, start, f.header_digest);
    out.resize(start + pdo, 0);
}

#[cfg(test)]
mod tests;
