//! `nvmf_host_pdu`: the NVMe/TCP host's PDU parser
//! (`pollux_nvmf_host::pdu::parse`): every PDU type a controller sends
//! (ICResp, CapsuleResp, C2HData, R2T, C2HTermReq), digests, lengths, data
//! offsets and the host's limit on C2H data, PDU after PDU of a stream.
//!
//! Input: 5 bytes of framing, then what the controller sends. Byte 0: bit 0
//! the connection is up (ICResp received), bit 1 header digests, bit 2 data
//! digests; byte 1: CPDA (modulo 32); bytes 2-4 (u24 LE): the largest
//! C2HData payload the host takes, 4 KiB to 1 MiB (modulo). PDUs are parsed
//! one after the other until one is incomplete or refused; an ICResp sets
//! the framing as the host's queue pair does (connected, its digests, CPDA
//! and MAXH2CDATA).
//!
//! Invariants: the parser asks for more bytes than it has, and for no more
//! than `HostFraming::max_pdu_len`; a PDU it takes is within the input and
//! that limit, as long as its PLEN says, and every prefix of it asks for
//! more; C2H data lies between the header (and its digest) and the data
//! digest, within the host's limit, SUCCESS only with LAST_PDU; an ICResp
//! only before the connection is up, with a CPDA and MAXH2CDATA the spec
//! allows; a fault names a field of a header, and the H2CTermReq the host
//! answers it with echoes at most 152 bytes.

use pollux_nvmf_host::pdu::{self, CtrlPdu, HostFraming, Parsed};

use crate::common;

/// Bytes of framing at the start of an input.
pub(crate) const FRAMING_LEN: usize = 5;
const MIN_C2H: u32 = 4096;
const MAX_C2H: u32 = 1 << 20;
const DIGEST_LEN: usize = 4;
/// Header of a termination request, and the most of the offending PDU it
/// echoes.
const TERM_REQ_LEN: usize = 24;
const TERM_REQ_MAX_ECHO: usize = 152;

pub fn nvmf_host_pdu(data: &[u8]) {
    let r = run(data);
    if common::trace() {
        eprintln!("nvmf host: {} PDUs, {} bytes left, {}", r.pdus, r.left, r.fault.as_deref().unwrap_or("no fault"));
    }
}

/// How a run over an input ended.
#[derive(Debug)]
pub(crate) struct Run {
    /// PDUs taken.
    pub pdus: usize,
    /// Bytes left after the last PDU taken.
    pub left: usize,
    /// The fault the parser found, if it found one.
    pub fault: Option<String>,
}

/// The host's framing from the first bytes of the input.
fn framing(head: &[u8; FRAMING_LEN]) -> HostFraming {
    let raw = u32::from_le_bytes([head[2], head[3], head[4], 0]);
    HostFraming {
        connected: head[0] & 1 != 0,
        hdgst: head[0] & 2 != 0,
        ddgst: head[0] & 4 != 0,
        cpda: head[1] % 32,
        maxh2cdata: 0,
        max_c2h_data: MIN_C2H + raw % (MAX_C2H - MIN_C2H + 1),
    }
}

pub(crate) fn run(data: &[u8]) -> Run {
    let Some((head, mut rest)) = data.split_first_chunk::<FRAMING_LEN>() else {
        return Run { pdus: 0, left: data.len(), fault: None };
    };
    let mut f = framing(head);
    let mut pdus = 0;
    loop {
        let max = f.max_pdu_len();
        match pdu::parse(rest, &f) {
            Ok(Parsed::Need(n)) => {
                assert!(n > rest.len(), "Need({n}) with {} bytes in", rest.len());
                assert!(n <= max, "Need({n}) beyond the host's limit of {max}");
                return Run { pdus, left: rest.len(), fault: None };
            }
            Ok(Parsed::Pdu(p, n)) => {
                if common::trace() {
                    match p {
                        CtrlPdu::C2hData { cccid, datao, data, last, success, digest_ok } => eprintln!(
                            "nvmf host <- C2HData cccid {cccid:#x} at {datao}, {} bytes of data, last {last}, success {success}, digest ok {digest_ok}; {n} bytes",
                            data.len()
                        ),
                        ref p => eprintln!("nvmf host <- {p:?}; {n} bytes"),
                    }
                }
                assert!(n <= rest.len() && n <= max, "{p:?} of {n} bytes, {} in, limit {max}", rest.len());
                let plen = u32::from_le_bytes(rest[4..8].try_into().expect("a common header")) as usize;
                assert_eq!(n, plen, "{p:?} taken as {n} bytes, its PLEN {plen}");
                for cut in 0..n {
                    match pdu::parse(&rest[..cut], &f) {
                        Ok(Parsed::Need(m)) if m > cut && m <= n => {}
                        other => panic!("{cut} bytes of a PDU of {n} ({p:?}): {other:?}"),
                    }
                }
                check(&p, n, rest, &mut f);
                rest = &rest[n..];
                pdus += 1;
            }
            Err(e) => {
                assert!((e.fei as usize) < 128, "field offset {} outside any header: {e}", e.fei);
                let mut out = Vec::new();
                pdu::h2c_term_req(&mut out, e.fes, e.fei, rest);
                let len = TERM_REQ_LEN + rest.len().min(TERM_REQ_MAX_ECHO);
                assert_eq!(out.len(), len, "H2CTermReq for {e}");
                assert_eq!(u32::from_le_bytes(out[4..8].try_into().expect("a header")) as usize, len);
                return Run { pdus, left: rest.len(), fault: Some(e.to_string()) };
            }
        }
    }
}

/// What one PDU `p` of `n` bytes at the front of `rest` must be; an ICResp
/// brings the connection up.
fn check(p: &CtrlPdu<'_>, n: usize, rest: &[u8], f: &mut HostFraming) {
    let hd = if f.hdgst { DIGEST_LEN } else { 0 };
    match *p {
        CtrlPdu::IcResp { cpda, dgst, maxh2cdata } => {
            assert!(!f.connected, "an ICResp taken on a connection already up");
            assert_eq!(n, 128);
            assert!(cpda < 32 && maxh2cdata >= 4096 && maxh2cdata % 4 == 0, "{p:?}");
            f.connected = true;
            f.hdgst = dgst & 0x1 != 0;
            f.ddgst = dgst & 0x2 != 0;
            f.cpda = cpda;
            f.maxh2cdata = maxh2cdata;
        }
        CtrlPdu::Resp(_) | CtrlPdu::R2t { .. } => {
            assert!(f.connected, "{p:?} before the ICResp");
            assert_eq!(n, 24 + hd, "{p:?}");
        }
        CtrlPdu::C2hData { data, last, success, .. } => {
            assert!(f.connected, "{p:?} before the ICResp");
            assert!(data.len() <= f.max_c2h_data as usize, "{} bytes of C2H data, limit {}", data.len(), f.max_c2h_data);
            assert!(last || !success, "SUCCESS without LAST_PDU taken");
            // The data is in the PDU, after the header and its digest, and
            // only the data digest follows it.
            let at = (data.as_ptr() as usize).wrapping_sub(rest.as_ptr() as usize);
            let dd = if f.ddgst { DIGEST_LEN } else { 0 };
            assert!(at >= 24 + hd && at + data.len() + dd == n, "C2H data at {at}, {} bytes, in a PDU of {n}", data.len());
        }
        CtrlPdu::TermReq { .. } => {
            assert!((TERM_REQ_LEN..=TERM_REQ_LEN + TERM_REQ_MAX_ECHO).contains(&n), "a C2HTermReq of {n} bytes");
        }
    }
}
