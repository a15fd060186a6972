//! Seeds of `nvmf_host_pdu`: what a controller sends, written byte by byte
//! (not with the structures the parser under test uses).

use crate::nvmf_host_pdu::FRAMING_LEN;
use crate::nvmf_wire::{C2H_DATA, C2H_TERM_REQ, CAPSULE_RESP, IC_RESP, LAST_PDU, R2T, SUCCESS};

const HDGSTF: u8 = 0x01;
const DDGSTF: u8 = 0x02;

/// The framing bytes that open an input: connection up, digests, CPDA, the
/// host's largest C2H data (4 KiB or more).
fn framing(connected: bool, hd: bool, dd: bool, cpda: u8, max_c2h: u32) -> Vec<u8> {
    let mut v = vec![u8::from(connected) | (u8::from(hd) << 1) | (u8::from(dd) << 2), cpda];
    v.extend_from_slice(&(max_c2h - 4096).to_le_bytes()[..3]);
    assert_eq!(v.len(), FRAMING_LEN);
    v
}

/// A common header: type, flags, HLEN, PDO, PLEN.
fn common(kind: u8, flags: u8, hlen: u8, pdo: u8, plen: usize) -> Vec<u8> {
    let mut b = vec![kind, flags, hlen, pdo];
    b.extend_from_slice(&(plen as u32).to_le_bytes());
    b
}

/// Close the header in `b`: HDGSTF and the header digest when `hd`.
fn seal(mut b: Vec<u8>, hd: bool) -> Vec<u8> {
    if hd {
        b[1] |= HDGSTF;
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
    }
    b
}

fn ic_resp(cpda: u8, dgst: u8, maxh2cdata: u32) -> Vec<u8> {
    let mut b = common(IC_RESP, 0, 128, 0, 128);
    b.resize(128, 0);
    b[10] = cpda;
    b[11] = dgst;
    b[12..16].copy_from_slice(&maxh2cdata.to_le_bytes());
    b
}

/// A CapsuleResp: command id, status field (phase bit 0).
fn capsule_resp(cid: u16, status: u16, hd: bool) -> Vec<u8> {
    let mut b = common(CAPSULE_RESP, 0, 24, 0, 24 + if hd { 4 } else { 0 });
    b.extend_from_slice(&[0; 8]); // DW0, DW1
    b.extend_from_slice(&1u16.to_le_bytes()); // SQ head
    b.extend_from_slice(&1u16.to_le_bytes()); // SQ id
    b.extend_from_slice(&cid.to_le_bytes());
    b.extend_from_slice(&status.to_le_bytes());
    seal(b, hd)
}

fn r2t(cccid: u16, ttag: u16, offset: u32, len: u32, hd: bool) -> Vec<u8> {
    let mut b = common(R2T, 0, 24, 0, 24 + if hd { 4 } else { 0 });
    b.extend_from_slice(&cccid.to_le_bytes());
    b.extend_from_slice(&ttag.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    seal(b, hd)
}

/// A C2HData PDU, its data `pad` bytes after the header (and its digest).
fn c2h_data(cccid: u16, datao: u32, data: &[u8], pad: usize, flags: u8, hd: bool, dd: bool) -> Vec<u8> {
    let pdo = 24 + if hd { 4 } else { 0 } + pad;
    let flags = flags | if dd { DDGSTF } else { 0 };
    let mut b = common(C2H_DATA, flags, 24, pdo as u8, pdo + data.len() + if dd { 4 } else { 0 });
    b.extend_from_slice(&cccid.to_le_bytes());
    b.extend_from_slice(&[0; 2]); // TTAG, reserved in C2HData
    b.extend_from_slice(&datao.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    let mut b = seal(b, hd);
    b.resize(pdo, 0);
    b.extend_from_slice(data);
    if dd {
        b.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
    b
}

fn c2h_term_req(fes: u16, fei: u32, echo: &[u8]) -> Vec<u8> {
    let mut b = common(C2H_TERM_REQ, 0, 24, 0, 24 + echo.len());
    b.extend_from_slice(&fes.to_le_bytes());
    b.extend_from_slice(&fei.to_le_bytes());
    b.extend_from_slice(&[0; 10]);
    b.extend_from_slice(echo);
    b
}

/// Each seed stays within the 512 bytes `scripts/fuzz` gives the inputs of
/// this target.
pub(super) fn nvmf_host_pdu() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let data: Vec<u8> = (0..128u32).map(|i| (i * 13) as u8).collect();
    // Before the connection is up: the ICResp, then a whole exchange with
    // the digests it grants (CPDA 3, 16-byte aligned data).
    let mut d = framing(false, false, false, 0, 65536);
    d.extend(ic_resp(0, 0, 131072));
    seeds.push(("icresp".to_string(), d));
    let mut d = framing(false, false, false, 0, 65536);
    d.extend(ic_resp(3, 0x3, 8192));
    d.extend(r2t(1, 1, 0, 4096, true));
    d.extend(c2h_data(2, 0, &data[..64], 4, 0, true, true));
    d.extend(c2h_data(2, 64, &data[64..], 4, LAST_PDU | SUCCESS, true, true));
    d.extend(capsule_resp(1, 0, true));
    d.extend(capsule_resp(3, 0x0004, true));
    seeds.push(("icresp-digests-exchange".to_string(), d));
    // A connection already up.
    let mut d = framing(true, false, false, 0, 4096);
    d.extend(capsule_resp(1, 0, false));
    d.extend(capsule_resp(2, 0x0004, false));
    seeds.push(("capsule-resp".to_string(), d));
    let mut d = framing(true, true, true, 0, 65536);
    d.extend(c2h_data(1, 0, &data[..64], 0, 0, true, true));
    d.extend(c2h_data(1, 64, &data[64..], 0, LAST_PDU, true, true));
    d.extend(capsule_resp(1, 0, true));
    seeds.push(("c2h-data-digests".to_string(), d));
    let mut d = framing(true, false, false, 7, 4096);
    d.extend(c2h_data(5, 0, &data[..64], 40, LAST_PDU | SUCCESS, false, false));
    seeds.push(("c2h-data-padded".to_string(), d));
    let mut d = framing(true, false, true, 0, 1 << 20);
    d.extend(r2t(4, 0x10, 0, 8192, false));
    d.extend(r2t(4, 0x11, 8192, 8192, false));
    seeds.push(("r2t".to_string(), d));
    // The controller refuses the ICReq (its first 24 bytes echoed).
    let mut ic_req = vec![0u8; 24];
    ic_req[2] = 128;
    ic_req[4] = 128;
    let mut d = framing(false, false, false, 0, 65536);
    d.extend(c2h_term_req(0x06, 8, &ic_req));
    seeds.push(("c2h-term-req".to_string(), d));
    seeds
}

/// Seeds of `nvmf_host_logs`: an ANA log of two groups, and a discovery log
/// of two entries (header and entries written field by field).
pub fn nvmf_host_logs() -> Vec<(String, Vec<u8>)> {
    let mut ana = vec![0u8];
    ana.extend_from_slice(&7u64.to_le_bytes());
    ana.extend_from_slice(&2u16.to_le_bytes());
    ana.extend_from_slice(&[0; 6]);
    for (grp, state, nsids) in [(1u32, 1u8, &[1u32, 2][..]), (2, 3, &[3][..])] {
        let mut d = vec![0u8; 32];
        d[0..4].copy_from_slice(&grp.to_le_bytes());
        d[4..8].copy_from_slice(&(nsids.len() as u32).to_le_bytes());
        d[16] = state;
        ana.extend_from_slice(&d);
        for n in nsids {
            ana.extend_from_slice(&n.to_le_bytes());
        }
    }
    let mut disc = vec![1u8];
    let mut header = vec![0u8; 1024];
    header[0..8].copy_from_slice(&3u64.to_le_bytes());
    header[8..16].copy_from_slice(&2u64.to_le_bytes());
    disc.extend_from_slice(&header);
    for (i, nqn) in ["nqn.2016-06.io.spdk:cnode1", "nqn.2014-08.org.nvmexpress.discovery"].iter().enumerate() {
        let mut e = vec![0u8; 1024];
        e[0] = 3; // TCP
        e[1] = 1; // IPv4
        e[2] = if i == 0 { 2 } else { 1 }; // NVM subsystem, referral
        e[6..8].copy_from_slice(&0xffffu16.to_le_bytes());
        e[32..36].copy_from_slice(b"4420");
        e[256..256 + nqn.len()].copy_from_slice(nqn.as_bytes());
        e[512..521].copy_from_slice(b"127.0.0.1");
        disc.extend_from_slice(&e);
    }
    vec![("ana-two-groups".into(), ana), ("discovery-two-entries".into(), disc)]
}

#[cfg(test)]
mod tests {
    /// Each seed is a stream of valid PDUs, taken to its last byte.
    #[test]
    fn every_seed_is_parsed_to_its_end() {
        for (name, data) in super::nvmf_host_pdu() {
            let r = crate::nvmf_host_pdu::run(&data);
            assert!(r.pdus > 0 && r.left == 0 && r.fault.is_none(), "seed {name}: {r:?}");
            assert!(data.len() <= 512, "seed {name}: {} bytes", data.len());
        }
    }
}
