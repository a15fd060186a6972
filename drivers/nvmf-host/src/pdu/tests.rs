//! Every PDU type a controller sends, well formed and malformed, through the
//! host's parser; and the PDUs the host builds, read back field by field.

use super::*;
use proptest::prelude::*;

/// The host's largest C2HData payload in these tests.
const MAX_C2H: u32 = 65536;

/// Header digest, data digest: every combination.
const DIGESTS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

fn connected(hd: bool, dd: bool) -> HostFraming {
    HostFraming { connected: true, hdgst: hd, ddgst: dd, cpda: 0, maxh2cdata: 131072, max_c2h_data: MAX_C2H }
}

fn hd_len(f: &HostFraming) -> usize {
    if f.hdgst { DIGEST_LEN } else { 0 }
}

fn dd_len(f: &HostFraming) -> usize {
    if f.ddgst { DIGEST_LEN } else { 0 }
}

/// Close a header: HDGSTF and the header digest when `f` has them.
fn seal(mut v: Vec<u8>, f: &HostFraming) -> Vec<u8> {
    if f.hdgst {
        v[1] |= flags::HDGSTF;
        let d = crc32c::crc32c(&v);
        v.extend_from_slice(&d.to_le_bytes());
    }
    v
}

/// Recompute the header digest of `b` (a header of `hlen` and its digest)
/// after a field of the header was changed.
fn redigest(b: &mut [u8], hlen: usize) {
    let d = crc32c::crc32c(&b[..hlen]);
    b[hlen..hlen + DIGEST_LEN].copy_from_slice(&d.to_le_bytes());
}

fn bit(on: bool, b: u8) -> u8 {
    if on { b } else { 0 }
}

fn set_plen(b: &mut [u8], plen: u32) {
    b[4..8].copy_from_slice(&plen.to_le_bytes());
}

fn ic_resp(pfv: u16, cpda: u8, dgst: u8, maxh2cdata: u32) -> Vec<u8> {
    let mut r = IcResp::new_zeroed();
    r.ch = CommonHeader { pdu_type: kind::IC_RESP, flags: 0, hlen: 128, pdo: 0, plen: U32::new(128) };
    r.pfv.set(pfv);
    r.cpda = cpda;
    r.dgst = dgst;
    r.maxh2cdata.set(maxh2cdata);
    r.as_bytes().to_vec()
}

fn capsule_resp(f: &HostFraming, cid: u16, status: u16) -> Vec<u8> {
    let mut r = CapsuleResp::new_zeroed();
    r.ch = CommonHeader { pdu_type: kind::CAPSULE_RESP, flags: 0, hlen: 24, pdo: 0, plen: U32::new((24 + hd_len(f)) as u32) };
    r.cqe.result.set(0xdead_beef);
    r.cqe.sq_head.set(5);
    r.cqe.sq_id.set(1);
    r.cqe.cid.set(cid);
    r.cqe.status.set(status);
    seal(r.as_bytes().to_vec(), f)
}

fn r2t(f: &HostFraming, cccid: u16, ttag: u16, offset: u32, len: u32) -> Vec<u8> {
    let mut r = R2t::new_zeroed();
    r.ch = CommonHeader { pdu_type: kind::R2T, flags: 0, hlen: 24, pdo: 0, plen: U32::new((24 + hd_len(f)) as u32) };
    r.cccid.set(cccid);
    r.ttag.set(ttag);
    r.r2to.set(offset);
    r.r2tl.set(len);
    seal(r.as_bytes().to_vec(), f)
}

/// A C2HData PDU framed as `f` says, its data `pad` bytes after the header
/// (and its digest), with the flags `fl` (LAST_PDU, SUCCESS).
fn c2h_data(f: &HostFraming, cccid: u16, datao: u32, data: &[u8], pad: usize, fl: u8) -> Vec<u8> {
    let pdo = 24 + hd_len(f) + pad;
    let mut h = DataHeader::new_zeroed();
    h.ch = CommonHeader {
        pdu_type: kind::C2H_DATA,
        flags: fl | if f.ddgst { flags::DDGSTF } else { 0 },
        hlen: 24,
        pdo: pdo as u8,
        plen: U32::new((pdo + data.len() + dd_len(f)) as u32),
    };
    h.cccid.set(cccid);
    h.datao.set(datao);
    h.datal.set(data.len() as u32);
    let mut v = seal(h.as_bytes().to_vec(), f);
    v.resize(pdo, 0);
    v.extend_from_slice(data);
    if f.ddgst {
        v.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
    v
}

fn c2h_term_req(fes: Fes, fei: u32, echo: &[u8]) -> Vec<u8> {
    let mut t = TermReq::new_zeroed();
    t.ch = CommonHeader { pdu_type: kind::C2H_TERM_REQ, flags: 0, hlen: 24, pdo: 0, plen: U32::new((24 + echo.len()) as u32) };
    t.fes.set(fes as u16);
    t.fei.set(fei);
    let mut v = t.as_bytes().to_vec();
    v.extend_from_slice(echo);
    v
}

/// The whole of `buf` parsed as one PDU.
fn pdu_of<'a>(buf: &'a [u8], f: &HostFraming) -> CtrlPdu<'a> {
    match parse(buf, f) {
        Ok(Parsed::Pdu(p, n)) => {
            assert_eq!(n, buf.len(), "{p:?} cut at {n} of {} bytes", buf.len());
            p
        }
        other => panic!("expected a PDU of {} bytes, got {other:?}", buf.len()),
    }
}

/// The status and field offset `buf` is refused with.
fn refused(buf: &[u8], f: &HostFraming) -> (Fes, u32) {
    match parse(buf, f) {
        Err(e) => (e.fes, e.fei),
        Ok(p) => panic!("expected a fatal error, got {p:?}"),
    }
}

/// Every prefix of the valid PDU `b` asks for more (the common header
/// first, then the whole PDU), never for more than the host allows; the
/// PDU followed by the start of another is cut where it ends.
fn check_framing(b: &[u8], f: &HostFraming) {
    for cut in 0..b.len() {
        match parse(&b[..cut], f) {
            Ok(Parsed::Need(n)) => {
                let want = if cut < size_of::<CommonHeader>() { size_of::<CommonHeader>() } else { b.len() };
                assert_eq!(n, want, "prefix of {cut} of {} bytes", b.len());
                assert!(n > cut && n <= f.max_pdu_len());
            }
            other => panic!("prefix of {cut} of {} bytes: {other:?}", b.len()),
        }
    }
    let mut more = b.to_vec();
    more.extend_from_slice(&[kind::CAPSULE_RESP, 0, 24, 0]);
    assert!(matches!(parse(&more, f), Ok(Parsed::Pdu(_, n)) if n == b.len()));
}

#[test]
fn ic_resp_is_taken_before_the_connection_is_up_and_refused_after() {
    let f = HostFraming::initial(MAX_C2H);
    let b = ic_resp(0, 3, DGST_HEADER | DGST_DATA, 131072);
    assert_eq!(pdu_of(&b, &f), CtrlPdu::IcResp { cpda: 3, dgst: DGST_HEADER | DGST_DATA, maxh2cdata: 131072 });
    check_framing(&b, &f);
    // An ICResp never carries a header digest, whatever is negotiated.
    let digests = HostFraming { hdgst: true, ddgst: true, ..f };
    assert!(matches!(pdu_of(&b, &digests), CtrlPdu::IcResp { .. }));
    // A second one is out of sequence, from its first 8 bytes.
    for c in [connected(false, false), connected(true, true)] {
        assert_eq!(refused(&b, &c), (Fes::PduSequenceError, 0));
        assert_eq!(refused(&b[..8], &c), (Fes::PduSequenceError, 0));
    }
}

#[test]
fn ic_resp_fields_are_checked() {
    let f = HostFraming::initial(MAX_C2H);
    assert_eq!(refused(&ic_resp(1, 0, 0, 4096), &f), (Fes::UnsupportedParameter, IcReq::OFFSET_PFV));
    assert_eq!(refused(&ic_resp(0x100, 0, 0, 4096), &f), (Fes::UnsupportedParameter, IcReq::OFFSET_PFV));
    assert_eq!(refused(&ic_resp(0, 32, 0, 4096), &f), (Fes::InvalidHeaderField, 10));
    assert_eq!(refused(&ic_resp(0, 0xff, 0, 4096), &f), (Fes::InvalidHeaderField, 10));
    assert!(matches!(pdu_of(&ic_resp(0, 31, 0, 4096), &f), CtrlPdu::IcResp { cpda: 31, .. }));
    for m in [0, 4, 4092, 4095, 4097, 4098, 8190, u32::MAX] {
        assert_eq!(refused(&ic_resp(0, 0, 0, m), &f), (Fes::InvalidHeaderField, 12), "MAXH2CDATA {m}");
    }
    for m in [4096, 4100, 131072, u32::MAX - 3] {
        assert_eq!(pdu_of(&ic_resp(0, 0, 0, m), &f), CtrlPdu::IcResp { cpda: 0, dgst: 0, maxh2cdata: m });
    }
    // Lengths and flags.
    let mut b = ic_resp(0, 0, 0, 4096);
    b[2] = 127;
    assert_eq!(refused(&b, &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_HLEN));
    for plen in [0, 127, 129, u32::MAX] {
        let mut b = ic_resp(0, 0, 0, 4096);
        set_plen(&mut b, plen);
        assert_eq!(refused(&b[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN), "PLEN {plen}");
    }
    let mut b = ic_resp(0, 0, 0, 4096);
    b[1] = flags::HDGSTF;
    assert_eq!(refused(&b, &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS));
}

#[test]
fn only_an_ic_resp_or_a_term_req_comes_first() {
    let f = HostFraming::initial(MAX_C2H);
    let c = connected(false, false);
    for b in [capsule_resp(&c, 1, 0), r2t(&c, 1, 2, 0, 4096), c2h_data(&c, 1, 0, &[1; 64], 0, flags::LAST_PDU)] {
        assert_eq!(refused(&b, &f), (Fes::PduSequenceError, 0), "type {:#04x}", b[0]);
        assert_eq!(refused(&b[..8], &f), (Fes::PduSequenceError, 0), "type {:#04x}", b[0]);
    }
    let t = c2h_term_req(Fes::InvalidHeaderField, 2, &[0; 8]);
    assert_eq!(pdu_of(&t, &f), CtrlPdu::TermReq { fes: 1, fei: 2 });
}

#[test]
fn pdus_no_controller_sends_are_refused_from_their_type() {
    let host = [kind::IC_REQ, kind::H2C_TERM_REQ, kind::CAPSULE_CMD, kind::H2C_DATA];
    for t in host.into_iter().chain([0x08, 0x0a, 0x0b, 0x7f, 0x80, 0xff]) {
        for f in [HostFraming::initial(MAX_C2H), connected(false, false), connected(true, true)] {
            let b = [t, 0, 24, 0, 24, 0, 0, 0];
            assert_eq!(refused(&b, &f), (Fes::InvalidHeaderField, 0), "type {t:#04x}");
            let mut whole = b.to_vec();
            whole.resize(24, 0);
            assert_eq!(refused(&whole, &f), (Fes::InvalidHeaderField, 0), "type {t:#04x}");
        }
    }
}

#[test]
fn capsule_resp_with_and_without_header_digest() {
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        let b = capsule_resp(&f, 0x1234, 0x0004);
        assert_eq!(b.len(), 24 + hd_len(&f));
        match pdu_of(&b, &f) {
            CtrlPdu::Resp(cqe) => {
                assert_eq!((cqe.result.get(), cqe.sq_head.get(), cqe.sq_id.get()), (0xdead_beef, 5, 1));
                assert_eq!((cqe.cid.get(), cqe.status.get()), (0x1234, 0x0004));
            }
            other => panic!("{other:?}"),
        }
        check_framing(&b, &f);
    }
}

#[test]
fn r2t_with_and_without_header_digest() {
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        let b = r2t(&f, 7, 0xabcd, 8192, 65536);
        assert_eq!(pdu_of(&b, &f), CtrlPdu::R2t { cccid: 7, ttag: 0xabcd, offset: 8192, len: 65536 });
        check_framing(&b, &f);
    }
}

#[test]
fn c2h_data_with_digests_and_padding() {
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        // Data right after the header, after some padding, at the furthest
        // dword-aligned offset PDO can name.
        for pad in [0, 4, 36, 252 - 24 - hd_len(&f)] {
            for len in [0, 1, 512, 4096] {
                let b = c2h_data(&f, 9, 4096, &data[..len], pad, 0);
                assert_eq!(b.len(), 24 + hd_len(&f) + pad + len + dd_len(&f));
                let want = CtrlPdu::C2hData { cccid: 9, datao: 4096, data: &data[..len], last: false, success: false, digest_ok: true };
                assert_eq!(pdu_of(&b, &f), want, "digests {hd} {dd}, padding {pad}, {len} bytes");
                if len != 4096 {
                    check_framing(&b, &f);
                }
            }
        }
    }
}

#[test]
fn c2h_data_flags() {
    let f = connected(false, false);
    let b = c2h_data(&f, 1, 0, &[3; 16], 0, flags::LAST_PDU);
    assert!(matches!(pdu_of(&b, &f), CtrlPdu::C2hData { last: true, success: false, .. }));
    let b = c2h_data(&f, 1, 0, &[3; 16], 0, flags::LAST_PDU | flags::SUCCESS);
    assert!(matches!(pdu_of(&b, &f), CtrlPdu::C2hData { last: true, success: true, .. }));
    let b = c2h_data(&f, 1, 0, &[3; 16], 0, flags::SUCCESS);
    assert_eq!(refused(&b, &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS));
    // With a header digest (over the flags) and a data digest too.
    let f = connected(true, true);
    let b = c2h_data(&f, 1, 0, &[3; 16], 0, flags::SUCCESS);
    assert_eq!(refused(&b, &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS));
    let b = c2h_data(&f, 1, 0, &[3; 16], 0, flags::LAST_PDU | flags::SUCCESS);
    assert!(matches!(pdu_of(&b, &f), CtrlPdu::C2hData { last: true, success: true, .. }));
}

#[test]
fn digest_flags_must_match_what_was_negotiated() {
    for (hd, dd) in DIGESTS {
        let built = connected(hd, dd);
        let pdus = [capsule_resp(&built, 1, 0), r2t(&built, 1, 2, 0, 4096), c2h_data(&built, 1, 0, &[1; 64], 0, 0)];
        // The other header digest setting: HDGSTF is wrong.
        let other = connected(!hd, dd);
        for b in &pdus {
            assert_eq!(refused(b, &other), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS), "type {:#04x}", b[0]);
            assert_eq!(refused(&b[..8], &other), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS));
        }
        // The other data digest setting: only C2HData has DDGSTF to get wrong.
        let other = connected(hd, !dd);
        assert!(matches!(pdu_of(&pdus[0], &other), CtrlPdu::Resp(_)));
        assert!(matches!(pdu_of(&pdus[1], &other), CtrlPdu::R2t { .. }));
        assert_eq!(refused(&pdus[2][..8], &other), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS));
    }
    // A termination request carries no digest even when they are on.
    let f = connected(true, true);
    let mut t = c2h_term_req(Fes::HeaderDigestError, 0, &[]);
    assert_eq!(pdu_of(&t, &f), CtrlPdu::TermReq { fes: 3, fei: 0 });
    t[1] = flags::HDGSTF;
    assert_eq!(refused(&t, &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_FLAGS));
}

#[test]
fn header_digest_mismatch_is_fatal() {
    let f = connected(true, true);
    for b in [capsule_resp(&f, 1, 0), r2t(&f, 1, 2, 0, 4096), c2h_data(&f, 1, 0, &[1; 64], 8, flags::LAST_PDU)] {
        // A bit of the header (the command id), then of the digest itself.
        for at in [8, 24] {
            let mut bad = b.clone();
            bad[at] ^= 0x10;
            assert_eq!(refused(&bad, &f), (Fes::HeaderDigestError, 0), "type {:#04x}, byte {at}", b[0]);
        }
    }
}

#[test]
fn data_digest_mismatch_fails_the_command_not_the_connection() {
    for hd in [false, true] {
        let f = connected(hd, true);
        let b = c2h_data(&f, 1, 0, &[1; 64], 4, flags::LAST_PDU);
        assert!(matches!(pdu_of(&b, &f), CtrlPdu::C2hData { digest_ok: true, .. }));
        // A bit of the data, then of the digest: the PDU parses, marked bad.
        for at in [b.len() - 5 - 63, b.len() - 5, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 0x01;
            assert!(matches!(pdu_of(&bad, &f), CtrlPdu::C2hData { digest_ok: false, .. }), "byte {at}");
        }
        // The padding is not covered by the data digest.
        let mut b = b;
        b[24 + hd_len(&f)] = 0xff;
        assert!(matches!(pdu_of(&b, &f), CtrlPdu::C2hData { .. }));
    }
}

#[test]
fn header_and_pdu_lengths_are_checked() {
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        // HLEN: each type has its own.
        for b in [capsule_resp(&f, 1, 0), r2t(&f, 1, 2, 0, 4096), c2h_data(&f, 1, 0, &[1; 8], 0, 0)] {
            for hlen in [0, 8, 23, 25, 28, 128, 255] {
                let mut bad = b.clone();
                bad[2] = hlen;
                assert_eq!(refused(&bad[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_HLEN), "HLEN {hlen}");
            }
        }
        // PLEN of the PDUs without data: the header and its digest.
        let hend = (24 + hd_len(&f)) as u32;
        for b in [capsule_resp(&f, 1, 0), r2t(&f, 1, 2, 0, 4096)] {
            for plen in [0, 8, hend - 1, hend + 1, hend + 4, 4096, u32::MAX] {
                let mut bad = b.clone();
                set_plen(&mut bad, plen);
                assert_eq!(refused(&bad[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN), "PLEN {plen}");
            }
        }
    }
    // A termination request: the header and up to 152 bytes of echo.
    let f = connected(false, false);
    let t = c2h_term_req(Fes::InvalidHeaderField, 4, &[0xee; TERM_REQ_MAX_ECHO]);
    assert_eq!(pdu_of(&t, &f), CtrlPdu::TermReq { fes: 1, fei: 4 });
    check_framing(&t, &f);
    let mut hlen = t.clone();
    hlen[2] = 128;
    assert_eq!(refused(&hlen[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_HLEN));
    for plen in [0, 23, 24 + TERM_REQ_MAX_ECHO as u32 + 1, u32::MAX] {
        let mut bad = t.clone();
        set_plen(&mut bad, plen);
        assert_eq!(refused(&bad[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN), "PLEN {plen}");
    }
}

#[test]
fn c2h_data_offsets_and_lengths_are_checked() {
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        let hend = 24 + hd_len(&f);
        let b = c2h_data(&f, 1, 0, &[1; 64], 8, flags::LAST_PDU);
        let plen = b.len();
        // PDO inside the header or its digest, or past the PDU.
        for pdo in [0, 8, 23, hend - 1, plen + 1, 255] {
            let mut bad = b.clone();
            bad[3] = pdo as u8;
            assert_eq!(refused(&bad[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_PDO), "PDO {pdo}");
        }
        // PLEN shorter than PDO: the PDO is what is wrong.
        let mut bad = b.clone();
        set_plen(&mut bad, (hend + 8 - 1) as u32);
        assert_eq!(refused(&bad[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_PDO));
        // No room for the data digest after PDO.
        if dd {
            let mut bad = b.clone();
            set_plen(&mut bad, (hend + 8 + 2) as u32);
            assert_eq!(refused(&bad[..8], &f), (Fes::InvalidHeaderField, CommonHeader::OFFSET_PLEN));
        }
        // DATAL that does not match what PDO and PLEN leave for the data
        // (the header digest made right again, so DATAL is what fails).
        for datal in [0u32, 63, 65, 4096] {
            let mut bad = b.clone();
            bad[16..20].copy_from_slice(&datal.to_le_bytes());
            if hd {
                redigest(&mut bad, 24);
            }
            assert_eq!(refused(&bad, &f), (Fes::InvalidHeaderField, DataHeader::OFFSET_DATAL), "DATAL {datal}");
        }
    }
}

#[test]
fn c2h_data_beyond_the_host_limit_is_refused_from_its_header() {
    let full = vec![0x42; MAX_C2H as usize + 1];
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        let hend = 24 + hd_len(&f);
        // Exactly the limit, at the furthest data offset: awaited, taken.
        let pad = 252 - hend;
        let b = c2h_data(&f, 1, 0, &full[..MAX_C2H as usize], pad, flags::LAST_PDU);
        assert!(b.len() <= f.max_pdu_len());
        assert_eq!(parse(&b[..hend], &f), Ok(Parsed::Need(b.len())));
        assert!(matches!(pdu_of(&b, &f), CtrlPdu::C2hData { data, .. } if data.len() == MAX_C2H as usize));
        // One byte more: refused with only the header in.
        let b = c2h_data(&f, 1, 0, &full, 0, flags::LAST_PDU);
        assert_eq!(refused(&b[..8], &f), (Fes::DataOutOfRange, CommonHeader::OFFSET_PLEN));
        assert_eq!(refused(&b[..hend], &f), (Fes::DataOutOfRange, CommonHeader::OFFSET_PLEN));
        // A PLEN as large as can be.
        let mut b = b;
        set_plen(&mut b, u32::MAX);
        assert_eq!(refused(&b[..8], &f), (Fes::DataOutOfRange, CommonHeader::OFFSET_PLEN));
    }
    // A host that takes no C2H data at all.
    let f = HostFraming { max_c2h_data: 0, ..connected(false, false) };
    assert!(matches!(pdu_of(&c2h_data(&f, 1, 0, &[], 0, 0), &f), CtrlPdu::C2hData { .. }));
    assert_eq!(refused(&c2h_data(&f, 1, 0, &[1], 0, 0)[..8], &f), (Fes::DataOutOfRange, CommonHeader::OFFSET_PLEN));
}

#[test]
fn c2h_term_req_is_taken_at_any_time() {
    let echo: Vec<u8> = (0..40).collect();
    for f in [HostFraming::initial(MAX_C2H), connected(false, false), connected(true, true)] {
        for n in [0, 24, 40] {
            let t = c2h_term_req(Fes::LimitExceeded, 0x0102_0304, &echo[..n]);
            assert_eq!(pdu_of(&t, &f), CtrlPdu::TermReq { fes: Fes::LimitExceeded as u16, fei: 0x0102_0304 });
            check_framing(&t, &f);
        }
    }
}

#[test]
fn the_longest_pdu_the_host_waits_for() {
    // Room for an ICResp and a termination request with its echo, even
    // when the host takes no C2H data.
    assert!(HostFraming::initial(0).max_pdu_len() >= size_of::<TermReq>() + TERM_REQ_MAX_ECHO);
    assert!(HostFraming::initial(0).max_pdu_len() >= size_of::<IcResp>());
    // A C2HData header, digests, the furthest PDO and the data.
    assert_eq!(HostFraming::initial(0).max_pdu_len(), 24 + 8 + 255);
    assert_eq!(HostFraming::initial(4096).max_pdu_len(), 24 + 8 + 255 + 4096);
    assert_eq!(connected(true, true).max_pdu_len(), 24 + 8 + 255 + MAX_C2H as usize);
}

#[test]
fn a_stream_is_cut_pdu_by_pdu() {
    let mut f = HostFraming::initial(MAX_C2H);
    let on = connected(true, true);
    let mut stream = ic_resp(0, 1, DGST_HEADER | DGST_DATA, 8192);
    stream.extend(r2t(&on, 1, 1, 0, 8192));
    stream.extend(c2h_data(&on, 2, 0, &[0x77; 512], 4, 0));
    stream.extend(c2h_data(&on, 2, 512, &[0x78; 512], 0, flags::LAST_PDU | flags::SUCCESS));
    stream.extend(capsule_resp(&on, 1, 0));
    stream.extend(c2h_term_req(Fes::PduSequenceError, 0, &[0; 24]));
    let mut pos = 0;
    let mut seen = Vec::new();
    while pos < stream.len() {
        let Ok(Parsed::Pdu(p, n)) = parse(&stream[pos..], &f) else { panic!("at {pos}: {:?}", parse(&stream[pos..], &f)) };
        match p {
            CtrlPdu::IcResp { cpda, dgst, maxh2cdata } => {
                f = HostFraming { connected: true, hdgst: dgst & DGST_HEADER != 0, ddgst: dgst & DGST_DATA != 0, cpda, maxh2cdata, ..f };
                seen.push("ICResp");
            }
            CtrlPdu::R2t { .. } => seen.push("R2T"),
            CtrlPdu::C2hData { datao: 0, data, last: false, .. } if data == [0x77; 512] => seen.push("C2HData"),
            CtrlPdu::C2hData { datao: 512, data, last: true, success: true, .. } if data == [0x78; 512] => seen.push("C2HData last"),
            CtrlPdu::Resp(cqe) if cqe.cid.get() == 1 => seen.push("CapsuleResp"),
            CtrlPdu::TermReq { fes: 2, .. } => seen.push("C2HTermReq"),
            other => panic!("{other:?}"),
        }
        pos += n;
    }
    assert_eq!(seen, ["ICResp", "R2T", "C2HData", "C2HData last", "CapsuleResp", "C2HTermReq"]);
}

#[test]
fn ic_req_asks_for_the_digests() {
    for (hd, dd) in DIGESTS {
        let mut out = Vec::new();
        ic_req(&mut out, hd, dd);
        let r = IcReq::read_from_bytes(&out).expect("128 bytes");
        assert_eq!(r.ch, CommonHeader { pdu_type: kind::IC_REQ, flags: 0, hlen: 128, pdo: 0, plen: U32::new(128) });
        assert_eq!((r.pfv.get(), r.hpda, r.maxr2t.get()), (0, 0, 0));
        assert_eq!(r.dgst, bit(hd, DGST_HEADER) | bit(dd, DGST_DATA));
        assert_eq!(r.rsvd, [0; 112]);
    }
}

#[test]
fn data_offset_honours_header_digest_and_cpda() {
    let f = |hdgst: bool, cpda: u8| HostFraming { hdgst, cpda, ..connected(false, false) };
    // CapsuleCmd (72-byte header).
    assert_eq!(f(false, 0).data_offset(72), 72);
    assert_eq!(f(true, 0).data_offset(72), 76);
    assert_eq!(f(false, 1).data_offset(72), 72);
    assert_eq!(f(true, 1).data_offset(72), 80);
    assert_eq!(f(false, 3).data_offset(72), 80);
    assert_eq!(f(false, 7).data_offset(72), 96);
    assert_eq!(f(true, 31).data_offset(72), 128);
    // H2CData (24-byte header).
    assert_eq!(f(false, 0).data_offset(24), 24);
    assert_eq!(f(true, 0).data_offset(24), 28);
    assert_eq!(f(true, 7).data_offset(24), 32);
    assert_eq!(f(false, 31).data_offset(24), 128);
}

fn command() -> Command {
    let mut c = Command::new(0x01);
    c.cid.set(0x1234);
    c.nsid.set(1);
    c.cdw10.set(0xa5a5_a5a5);
    c
}

#[test]
fn capsule_cmd_without_data() {
    for (hd, dd) in DIGESTS {
        let f = connected(hd, dd);
        // After what is already queued to send.
        let mut out = vec![0xff; 3];
        capsule_cmd(&mut out, &command(), 0, &f);
        let p = &out[3..];
        assert_eq!(p.len(), 72 + hd_len(&f));
        let c = CapsuleCmd::read_from_prefix(p).expect("a capsule").0;
        assert_eq!(
            c.ch,
            CommonHeader { pdu_type: kind::CAPSULE_CMD, flags: bit(hd, flags::HDGSTF), hlen: 72, pdo: 0, plen: U32::new(p.len() as u32) }
        );
        assert_eq!(c.sqe, command());
        if hd {
            assert_eq!(p[72..], crc32c::crc32c(&p[..72]).to_le_bytes());
        }
    }
}

#[test]
fn capsule_cmd_with_data_aligns_it_to_cpda() {
    let data: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    for (hd, dd) in DIGESTS {
        for cpda in [0, 1, 3, 7, 31] {
            for len in [1, 4, 512] {
                let f = HostFraming { cpda, ..connected(hd, dd) };
                let mut out = vec![0xff; 5];
                capsule_cmd(&mut out, &command(), len, &f);
                let head = out.len() - 5;
                let pdo = f.data_offset(72);
                assert_eq!(head, pdo, "the header and padding up to PDO");
                assert_eq!(pdo % ((usize::from(cpda) + 1) * 4), 0);
                assert!(pdo >= 72 + hd_len(&f));
                let start = out.len();
                out.extend_from_slice(&data[..len]);
                if dd {
                    data_digest(&mut out, start);
                }
                let p = &out[5..];
                let c = CapsuleCmd::read_from_prefix(p).expect("a capsule").0;
                let fl = bit(hd, flags::HDGSTF) | bit(dd, flags::DDGSTF);
                assert_eq!(
                    c.ch,
                    CommonHeader { pdu_type: kind::CAPSULE_CMD, flags: fl, hlen: 72, pdo: pdo as u8, plen: U32::new(p.len() as u32) }
                );
                assert_eq!(c.sqe, command());
                if hd {
                    assert_eq!(p[72..76], crc32c::crc32c(&p[..72]).to_le_bytes());
                }
                assert!(p[72 + hd_len(&f)..pdo].iter().all(|&b| b == 0), "padding is zeros");
                assert_eq!(&p[pdo..pdo + len], &data[..len]);
                if dd {
                    assert_eq!(p[pdo + len..], crc32c::crc32c(&data[..len]).to_le_bytes());
                }
            }
        }
    }
}

#[test]
fn h2c_data_header_flags_and_offsets() {
    let data = [0x3c; 512];
    for (hd, dd) in DIGESTS {
        for cpda in [0, 7] {
            for last in [false, true] {
                let f = HostFraming { cpda, ..connected(hd, dd) };
                let mut out = Vec::new();
                h2c_data(&mut out, 3, 0x55, 4096, data.len() as u32, last, &f);
                let pdo = f.data_offset(24);
                assert_eq!(out.len(), pdo);
                out.extend_from_slice(&data);
                if dd {
                    data_digest(&mut out, pdo);
                }
                let h = DataHeader::read_from_prefix(&out).expect("a header").0;
                let fl = bit(hd, flags::HDGSTF) | bit(dd, flags::DDGSTF) | bit(last, flags::LAST_PDU);
                assert_eq!(
                    h.ch,
                    CommonHeader { pdu_type: kind::H2C_DATA, flags: fl, hlen: 24, pdo: pdo as u8, plen: U32::new(out.len() as u32) }
                );
                assert_eq!((h.cccid.get(), h.ttag.get(), h.datao.get(), h.datal.get()), (3, 0x55, 4096, 512));
                if hd {
                    assert_eq!(out[24..28], crc32c::crc32c(&out[..24]).to_le_bytes());
                }
                // The same bytes as a C2HData (the header digest made right
                // for the other type) read back through the host's parser.
                let mut c2h = out.clone();
                c2h[0] = kind::C2H_DATA;
                if hd {
                    redigest(&mut c2h, 24);
                }
                let want = CtrlPdu::C2hData { cccid: 3, datao: 4096, data: &data, last, success: false, digest_ok: true };
                assert_eq!(pdu_of(&c2h, &f), want);
            }
        }
    }
}

#[test]
fn data_digest_covers_what_was_appended() {
    let mut out = vec![1, 2, 3];
    out.extend_from_slice(b"payload");
    data_digest(&mut out, 3);
    assert_eq!(out[10..], crc32c::crc32c(b"payload").to_le_bytes());
}

#[test]
fn h2c_term_req_echoes_at_most_152_bytes() {
    let offending: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    for (n, echoed) in [(0, 0), (24, 24), (152, 152), (153, 152), (200, 152)] {
        let mut out = Vec::new();
        h2c_term_req(&mut out, Fes::DataOutOfRange, CommonHeader::OFFSET_PLEN, &offending[..n]);
        assert_eq!(out.len(), 24 + echoed);
        let t = TermReq::read_from_prefix(&out).expect("a header").0;
        assert_eq!(t.ch, CommonHeader { pdu_type: kind::H2C_TERM_REQ, flags: 0, hlen: 24, pdo: 0, plen: U32::new(out.len() as u32) });
        assert_eq!((t.fes.get(), t.fei.get(), t.rsvd), (Fes::DataOutOfRange as u16, CommonHeader::OFFSET_PLEN, [0; 10]));
        assert_eq!(&out[24..], &offending[..echoed]);
        // Read back as the controller's kind of termination request.
        out[0] = kind::C2H_TERM_REQ;
        assert_eq!(pdu_of(&out, &connected(true, true)), CtrlPdu::TermReq { fes: 4, fei: 4 });
    }
}

/// What `parse` may answer for `buf`, whatever its bytes.
fn check_answer(buf: &[u8], f: &HostFraming) -> Result<(), TestCaseError> {
    match parse(buf, f) {
        Ok(Parsed::Need(n)) => {
            prop_assert!(n > buf.len(), "Need({n}) with {} bytes in", buf.len());
            prop_assert!(n <= f.max_pdu_len(), "Need({n}) beyond {}", f.max_pdu_len());
        }
        Ok(Parsed::Pdu(p, n)) => {
            prop_assert!(n >= size_of::<CommonHeader>() && n <= buf.len() && n <= f.max_pdu_len(), "{p:?} of {n} bytes");
            if let CtrlPdu::C2hData { data, success, last, .. } = p {
                prop_assert!(data.len() <= f.max_c2h_data as usize && (last || !success));
            }
            // Every prefix of what was taken asks for more.
            for cut in 0..n {
                prop_assert!(matches!(parse(&buf[..cut], f), Ok(Parsed::Need(m)) if m > cut && m <= n), "prefix {cut} of {n}");
            }
        }
        Err(_) => {}
    }
    Ok(())
}

fn framing() -> impl Strategy<Value = HostFraming> {
    (any::<bool>(), any::<bool>(), any::<bool>(), 0u8..32, prop_oneof![0u32..1024, 4096u32..(1 << 20), any::<u32>()]).prop_map(
        |(connected, hdgst, ddgst, cpda, max_c2h_data)| HostFraming { connected, hdgst, ddgst, cpda, maxh2cdata: 4096, max_c2h_data },
    )
}

/// A common header that often gets past the first checks: a type a
/// controller sends, its HLEN, a small PLEN.
fn plausible_header() -> impl Strategy<Value = [u8; 8]> {
    let types = prop_oneof![
        Just(kind::IC_RESP),
        Just(kind::C2H_TERM_REQ),
        Just(kind::CAPSULE_RESP),
        Just(kind::C2H_DATA),
        Just(kind::R2T),
        any::<u8>()
    ];
    (types, 0u8..16, any::<bool>(), any::<u8>(), prop_oneof![0u32..400, any::<u32>()], any::<u8>()).prop_map(
        |(t, fl, right_hlen, pdo, plen, hlen)| {
            let hlen = match t {
                _ if !right_hlen => hlen,
                kind::IC_RESP => 128,
                _ => 24,
            };
            let mut h = [t, fl, hlen, pdo, 0, 0, 0, 0];
            h[4..].copy_from_slice(&plen.to_le_bytes());
            h
        },
    )
}

proptest! {
    /// Whatever the bytes and the framing, the parser answers without
    /// panicking, never asks for fewer bytes than it has nor more than the
    /// host allows, and never takes more than it was given.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), f in framing()) {
        check_answer(&bytes, &f)?;
    }

    /// The same with headers that reach the later checks and the digests.
    #[test]
    fn plausible_headers(head in plausible_header(), body in proptest::collection::vec(any::<u8>(), 0..400), f in framing()) {
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&body);
        check_answer(&bytes, &f)?;
        for cut in [0, 4, 8, 24, 28] {
            check_answer(&bytes[..cut.min(bytes.len())], &f)?;
        }
    }

    /// Any well-formed C2HData is read back as it was built, every prefix
    /// of it asks for more, and what follows it is left alone.
    #[test]
    fn c2h_data_round_trips(
        hd: bool,
        dd: bool,
        pad in 0usize..=(255 - 28),
        data in proptest::collection::vec(any::<u8>(), 0..700),
        cccid: u16,
        datao: u32,
        fl in prop_oneof![Just(0), Just(flags::LAST_PDU), Just(flags::LAST_PDU | flags::SUCCESS)],
    ) {
        let f = connected(hd, dd);
        let b = c2h_data(&f, cccid, datao, &data, pad, fl);
        let want = CtrlPdu::C2hData { cccid, datao, data: &data, last: fl != 0, success: fl & flags::SUCCESS != 0, digest_ok: true };
        prop_assert_eq!(parse(&b, &f), Ok(Parsed::Pdu(want, b.len())));
        check_answer(&b, &f)?;
        let mut more = b.clone();
        more.extend_from_slice(&r2t(&f, 1, 2, 3, 4));
        prop_assert!(matches!(parse(&more, &f), Ok(Parsed::Pdu(_, n)) if n == b.len()));
    }
}
