//! Every PDU type a host sends, well formed and malformed, through the
//! parser; and the PDUs the controller builds.

use super::*;
use proptest::prelude::*;
use zerocopy::FromZeros;

const ICD: u32 = 8192;

fn connected(hd: bool, dd: bool) -> Framing {
    Framing { connected: true, header_digest: hd, data_digest: dd, max_in_capsule: ICD, max_h2c_data: 65536 }
}

fn ic_req(pfv: u16, hpda: u8, dgst: u8) -> Vec<u8> {
    let mut r = IcReq::new_zeroed();
    r.ch = CommonHeader { pdu_type: kind::IC_REQ, flags: 0, hlen: 128, pdo: 0, plen: U32::new(128) };
    r.pfv.set(pfv);
    r.hpda = hpda;
    r.dgst = dgst;
    r.as_bytes().to_vec()
}

/// A CapsuleCmd with optional in-capsule data, framed as `f` says.
fn capsule(f: &Framing, data: &[u8]) -> Vec<u8> {
    let mut c = CapsuleCmd::new_zeroed();
    c.sqe.opcode = 0x01;
    c.sqe.cid.set(7);
    let hd = if f.header_digest { 4 } else { 0 };
    let dd = if f.data_digest && !data.is_empty() { 4 } else { 0 };
    c.ch = CommonHeader { pdu_type: kind::CAPSULE_CMD, flags: 0, hlen: 72, pdo: 0, plen: U32::new((72 + hd + data.len() + dd) as u32) };
    if f.header_digest {
        c.ch.flags |= flags::HDGSTF;
    }
    if !data.is_empty() {
        c.ch.pdo = (72 + hd) as u8;
        if dd > 0 {
            c.ch.flags |= flags::DDGSTF;
        }
    }
    let mut v = c.as_bytes().to_vec();
    if f.header_digest {
        let d = crc32c(&v);
        v.extend_from_slice(&d.to_le_bytes());
    }
    v.extend_from_slice(data);
    if dd > 0 {
        v.extend_from_slice(&crc32c(data).to_le_bytes());
    }
    v
}

fn h2c_data(f: &Framing, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
    let mut h = DataHeader::new_zeroed();
    let hd = if f.header_digest { 4 } else { 0 };
    let dd = if f.data_digest { 4 } else { 0 };
    h.ch = CommonHeader {
        pdu_type: kind::H2C_DATA,
        flags: 0,
        hlen: 24,
        pdo: (24 + hd) as u8,
        plen: U32::new((24 + hd + data.len() + dd) as u32),
    };
    if f.header_digest {
        h.ch.flags |= flags::HDGSTF;
    }
    if f.data_digest {
        h.ch.flags |= flags::DDGSTF;
    }
    if last {
        h.ch.flags |= flags::LAST_PDU;
    }
    h.cccid.set(7);
    h.ttag.set(ttag);
    h.datao.set(datao);
    h.datal.set(data.len() as u32);
    let mut v = h.as_bytes().to_vec();
    if f.header_digest {
        let d = crc32c(&v);
        v.extend_from_slice(&d.to_le_bytes());
    }
    v.extend_from_slice(data);
    if f.data_digest {
        v.extend_from_slice(&crc32c(data).to_le_bytes());
    }
    v
}

fn fatal_of(buf: &[u8], f: &Framing) -> Fatal {
    match parse(buf, f) {
        Err(e) => e,
        Ok(p) => panic!("expected a fatal error, got {p:?}"),
    }
}

#[test]
fn ic_req_is_parsed_and_its_fields_checked() {
    let f = Framing::initial(ICD, 65536);
    let b = ic_req(0, 0, DGST_HEADER | DGST_DATA);
    match parse(&b, &f).unwrap() {
        Parsed::Pdu(Pdu::IcReq(ic), 128) => assert_eq!(ic.dgst, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(fatal_of(&ic_req(1, 0, 0), &f), Fatal { fes: Fes::UnsupportedParameter, fei: 8, echo: 128 });
    assert_eq!(fatal_of(&ic_req(0, 32, 0), &f).fei, IcReq::OFFSET_HPDA);
    assert_eq!(fatal_of(&ic_req(0, 0, 0x4), &f).fei, IcReq::OFFSET_DGST);
    // Wrong lengths.
    let mut b = ic_req(0, 0, 0);
    b[4] = 129;
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_PLEN);
    let mut b = ic_req(0, 0, 0);
    b[2] = 127;
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_HLEN);
    // A second ICReq is out of sequence.
    assert_eq!(fatal_of(&ic_req(0, 0, 0), &connected(false, false)).fes, Fes::PduSequenceError);
}

#[test]
fn partial_pdus_ask_for_more_and_never_trust_plen_first() {
    let f = Framing::initial(ICD, 65536);
    let b = ic_req(0, 0, 0);
    assert!(matches!(parse(&b[..5], &f), Ok(Parsed::Incomplete(8))));
    assert!(matches!(parse(&b[..100], &f), Ok(Parsed::Incomplete(128))));
    // A huge plen is refused before any data is awaited.
    let f = connected(false, false);
    let mut c = capsule(&f, &[]);
    c[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(fatal_of(&c[..8], &f).fei, CommonHeader::OFFSET_PLEN);
}

#[test]
fn commands_before_ic_req_and_controller_pdus_from_a_host_are_fatal() {
    let f = Framing::initial(ICD, 65536);
    assert_eq!(fatal_of(&capsule(&connected(false, false), &[]), &f).fes, Fes::PduSequenceError);
    for t in [kind::IC_RESP, kind::C2H_TERM_REQ, kind::CAPSULE_RESP, kind::C2H_DATA, kind::R2T, 0x0a, 0xff] {
        let mut b = vec![0u8; 24];
        b[0] = t;
        b[2] = 24;
        b[4] = 24;
        assert_eq!(fatal_of(&b, &connected(false, false)), Fatal { fes: Fes::InvalidHeaderField, fei: 0, echo: 24 }, "type {t:#x}");
    }
}

#[test]
fn capsules_with_and_without_digests() {
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let f = connected(hd, dd);
        for data in [&[][..], &[0xab; 1024][..]] {
            let b = capsule(&f, data);
            match parse(&b, &f).unwrap() {
                Parsed::Pdu(Pdu::CapsuleCmd { cmd, data: d, data_ok }, n) => {
                    assert_eq!((cmd.cid.get(), d, data_ok, n), (7, data, true, b.len()));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn digest_errors_are_reported_as_the_spec_says() {
    let f = connected(true, true);
    let mut b = capsule(&f, &[1; 64]);
    b[10] ^= 1; // inside the command: header digest no longer matches
    assert_eq!(fatal_of(&b, &f).fes, Fes::HeaderDigestError);
    let mut b = capsule(&f, &[1; 64]);
    let n = b.len();
    b[n - 10] ^= 1; // inside the data: the command fails, the connection lives
    match parse(&b, &f).unwrap() {
        Parsed::Pdu(Pdu::CapsuleCmd { data_ok, .. }, _) => assert!(!data_ok),
        other => panic!("{other:?}"),
    }
    // Digest flags must match what was negotiated.
    let b = capsule(&connected(false, false), &[]);
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_FLAGS);
    let b = capsule(&f, &[]);
    assert_eq!(fatal_of(&b, &connected(false, false)).fei, CommonHeader::OFFSET_FLAGS);
}

#[test]
fn capsule_layout_errors() {
    let f = connected(false, false);
    // Data offset inside the header.
    let mut b = capsule(&f, &[1; 16]);
    b[3] = 40;
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_PDO);
    // Unaligned data offset.
    let mut b = capsule(&f, &[1; 16]);
    b[3] = 73;
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_PDO);
    // More in-capsule data than allowed.
    let b = capsule(&f, &vec![0; ICD as usize + 16]);
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_PLEN);
    // Flags that a capsule cannot carry.
    let mut b = capsule(&f, &[]);
    b[1] = flags::LAST_PDU;
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_FLAGS);
}

#[test]
fn h2c_data_is_parsed_and_checked() {
    for (hd, dd) in [(false, false), (true, true)] {
        let f = connected(hd, dd);
        let b = h2c_data(&f, 3, 4096, &[5; 512], true);
        match parse(&b, &f).unwrap() {
            Parsed::Pdu(Pdu::H2cData { hdr, data, data_ok }, _) => {
                assert_eq!((hdr.ttag.get(), hdr.datao.get(), data.len(), data_ok), (3, 4096, 512, true));
                assert_ne!(hdr.ch.flags & flags::LAST_PDU, 0);
            }
            other => panic!("{other:?}"),
        }
    }
    let f = connected(false, false);
    let mut b = h2c_data(&f, 3, 0, &[5; 512], false);
    b[16..20].copy_from_slice(&100u32.to_le_bytes());
    assert_eq!(fatal_of(&b, &f).fei, DataHeader::OFFSET_DATAL);
    let big = h2c_data(&f, 3, 0, &vec![0; 65536 + 4], false);
    assert_eq!(fatal_of(&big, &f).fes, Fes::LimitExceeded);
    // Without data at all.
    let mut b = h2c_data(&f, 3, 0, &[], false);
    b[3] = 0;
    assert_eq!(fatal_of(&b, &f).fei, CommonHeader::OFFSET_PLEN);
    // Bad data digest: accepted, flagged.
    let f = connected(false, true);
    let mut b = h2c_data(&f, 1, 0, &[9; 64], true);
    let n = b.len();
    b[n - 1] ^= 0xff;
    assert!(matches!(parse(&b, &f).unwrap(), Parsed::Pdu(Pdu::H2cData { data_ok: false, .. }, _)));
}

#[test]
fn h2c_data_header_comes_before_its_data() {
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let f = connected(hd, dd);
        let b = h2c_data(&f, 3, 4096, &[5; 512], true);
        let start = 24 + if hd { 4 } else { 0 };
        // Not even the header (and its digest): wait for the whole PDU.
        assert!(matches!(parse(&b[..start - 1], &f), Ok(Parsed::Incomplete(n)) if n == b.len()));
        // The header and up to all but the last byte of data: the header,
        // for the data to be read where it belongs.
        for cut in [start, start + 1, start + 511] {
            match parse(&b[..cut], &f).unwrap() {
                Parsed::DataHead { hdr, data_start } => {
                    assert_eq!((hdr.ttag.get(), hdr.datao.get(), hdr.datal.get(), data_start), (3, 4096, 512, start));
                }
                other => panic!("{other:?}"),
            }
        }
        // All the data but not all of the digest: the whole PDU next time.
        if dd {
            assert!(matches!(parse(&b[..b.len() - 2], &f), Ok(Parsed::Incomplete(n)) if n == b.len()));
        }
    }
    // The header is checked before any data is taken: digest, DATAL, limit.
    let f = connected(true, false);
    let mut b = h2c_data(&f, 3, 0, &[5; 512], true);
    b[26] ^= 1;
    assert_eq!(fatal_of(&b[..40], &f).fes, Fes::HeaderDigestError);
    let f = connected(false, false);
    let mut b = h2c_data(&f, 3, 0, &[5; 512], true);
    b[16..20].copy_from_slice(&100u32.to_le_bytes());
    assert_eq!(fatal_of(&b[..40], &f).fei, DataHeader::OFFSET_DATAL);
    let big = h2c_data(&f, 3, 0, &vec![0; 65536 + 4], false);
    assert_eq!(fatal_of(&big[..100], &f).fes, Fes::LimitExceeded);
}

#[test]
fn h2c_term_req_is_accepted_at_any_time() {
    let mut t = TermReq::new_zeroed();
    t.ch = CommonHeader { pdu_type: kind::H2C_TERM_REQ, flags: 0, hlen: 24, pdo: 0, plen: U32::new(24 + 8) };
    t.fes.set(Fes::InvalidHeaderField as u16);
    let mut b = t.as_bytes().to_vec();
    b.extend_from_slice(&[0; 8]);
    for f in [Framing::initial(ICD, 1024), connected(true, true)] {
        assert!(matches!(parse(&b, &f).unwrap(), Parsed::Pdu(Pdu::H2cTermReq(t), 32) if t.fes.get() == 1));
    }
    // Echoing more than 152 bytes of header is not allowed.
    let mut b2 = b.clone();
    b2[4..8].copy_from_slice(&(24u32 + 153).to_le_bytes());
    assert_eq!(fatal_of(&b2, &connected(false, false)).fei, CommonHeader::OFFSET_PLEN);
}

#[test]
fn controller_pdus_are_framed_correctly() {
    let mut out = Vec::new();
    ic_resp(&mut out, 3, 131072);
    assert_eq!(out.len(), 128);
    assert_eq!((out[0], out[2], out[11]), (kind::IC_RESP, 128, 3));
    assert_eq!(&out[12..16], &131072u32.to_le_bytes());

    out.clear();
    let mut cqe = nvme_spec::cmd::Completion::default();
    cqe.cid.set(9);
    capsule_resp(&mut out, &cqe, true);
    assert_eq!(out.len(), 28);
    assert_eq!(crc32c(&out[..24]).to_le_bytes(), out[24..28]);

    out.clear();
    r2t(&mut out, 9, 4, 0, 8192, false);
    let r = R2t::read_from_bytes(&out).unwrap();
    assert_eq!((r.ch.pdu_type, r.cccid.get(), r.ttag.get(), r.r2tl.get()), (kind::R2T, 9, 4, 8192));

    out.clear();
    let f = C2hFraming { header_digest: true, data_digest: true, data_alignment: 32 };
    let a = [1u8; 100];
    let b = [2u8; 28];
    c2h_data(&mut out, &f, 9, 0, [&a[..], &b[..]].into_iter(), true, true);
    let h = DataHeader::read_from_prefix(&out).unwrap().0;
    assert_eq!(h.ch.pdo, 32);
    assert_eq!(h.ch.plen.get() as usize, out.len());
    assert_eq!(h.ch.flags, flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU | flags::SUCCESS);
    assert_eq!(h.datal.get(), 128);
    assert_eq!(&out[32..132], &a[..]);
    let mut whole = a.to_vec();
    whole.extend_from_slice(&b);
    assert_eq!(crc32c(&whole).to_le_bytes(), out[160..164]);

    out.clear();
    c2h_term_req(&mut out, Fes::HeaderDigestError, 0, &[7u8; 200]);
    assert_eq!(out.len(), 24 + TERM_REQ_MAX_ECHO);
    assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()) as usize, out.len());
}

proptest! {
    /// Whatever the bytes, the parser answers without panicking and never
    /// claims more bytes than it was given.
    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), hd: bool, dd: bool, conn: bool) {
        let f = Framing { connected: conn, header_digest: hd, data_digest: dd, max_in_capsule: 256, max_h2c_data: 256 };
        match parse(&bytes, &f) {
            Ok(Parsed::Pdu(_, n)) => prop_assert!(n <= bytes.len()),
            Ok(Parsed::DataHead { hdr, data_start }) => {
                prop_assert!(data_start <= bytes.len() && bytes.len() < data_start + hdr.datal.get() as usize)
            }
            _ => {}
        }
    }
}
