//! A small, blocking NVMe/TCP host for protocol tests of the NVMe-oF
//! target: it builds PDUs byte by byte (with its own CRC32C), so tests can
//! send well-formed traffic and every kind of malformed PDU, and see exactly
//! what comes back. It shares no code with the target.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
pub const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
pub const HOST_ID: [u8; 16] = [0x11; 16];

/// PDU types.
pub const IC_REQ: u8 = 0;
pub const IC_RESP: u8 = 1;
pub const H2C_TERM_REQ: u8 = 2;
pub const C2H_TERM_REQ: u8 = 3;
pub const CAPSULE_CMD: u8 = 4;
pub const CAPSULE_RESP: u8 = 5;
pub const H2C_DATA: u8 = 6;
pub const C2H_DATA: u8 = 7;
pub const R2T: u8 = 9;

/// CRC32C (Castagnoli), bit by bit: slow and obviously right.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A PDU from the target, digests checked and stripped.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub kind: u8,
    pub flags: u8,
    /// The header (common header included), without digest.
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

impl Pdu {
    /// A CapsuleResp's completion: (dw0, dw1, sqhd, sqid, cid, status field without phase).
    pub fn cqe(&self) -> Cqe {
        assert_eq!(self.kind, CAPSULE_RESP, "expected a CapsuleResp, got {self:?}");
        let h = &self.header[8..24];
        Cqe { dw0: le32(h, 0), dw1: le32(h, 4), sqhd: le16(h, 8), sqid: le16(h, 10), cid: le16(h, 12), status: le16(h, 14) >> 1 }
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// SC in bits 7:0, SCT in 10:8, DNR in 14.
    pub status: u16,
}

impl Cqe {
    pub fn sct_sc(&self) -> (u8, u8) {
        (((self.status >> 8) & 0x7) as u8, self.status as u8)
    }
    pub fn ok(&self) -> bool {
        self.sct_sc() == (0, 0)
    }
}

/// A 64-byte command.
#[derive(Clone, Copy)]
pub struct Sqe(pub [u8; 64]);

impl Sqe {
    pub fn new(opcode: u8, cid: u16) -> Sqe {
        let mut b = [0u8; 64];
        b[0] = opcode;
        b[1] = 0x40; // PSDT: SGL
        b[2..4].copy_from_slice(&cid.to_le_bytes());
        Sqe(b)
    }
    pub fn nsid(mut self, v: u32) -> Sqe {
        self.0[4..8].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn dw(mut self, n: usize, v: u32) -> Sqe {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn byte(mut self, at: usize, v: u8) -> Sqe {
        self.0[at] = v;
        self
    }
    /// SGL descriptor: in-capsule data (offset 0) of `len` bytes.
    pub fn sgl_in_capsule(mut self, len: u32) -> Sqe {
        self.0[24..32].fill(0);
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[36..39].fill(0);
        self.0[39] = 0x01;
        self
    }
    /// SGL descriptor: transport data block of `len` bytes (R2T / C2H).
    pub fn sgl_transport(mut self, len: u32) -> Sqe {
        self.0[24..32].fill(0);
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[36..39].fill(0);
        self.0[39] = 0x5a;
        self
    }
}

pub struct Client {
    pub s: TcpStream,
    pub hd: bool,
    pub dd: bool,
    pub maxh2cdata: u32,
    next_cid: u16,
}

impl Client {
    /// A TCP connection, before ICReq.
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, hd: false, dd: false, maxh2cdata: 0, next_cid: 1 }
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    /// ICReq with the given digests; returns the ICResp header.
    pub fn ic(&mut self, hd: bool, dd: bool) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b[0] = IC_REQ;
        b[2] = 128;
        b[4..8].copy_from_slice(&128u32.to_le_bytes());
        b[11] = u8::from(hd) | (u8::from(dd) << 1);
        self.send_raw(&b);
        let r = self.recv().expect("ICResp");
        assert_eq!(r.kind, IC_RESP, "{r:?}");
        self.hd = r.header[11] & 1 != 0;
        self.dd = r.header[11] & 2 != 0;
        self.maxh2cdata = le32(&r.header, 12);
        r.header
    }

    /// Read one PDU; `None` when the target closed the connection.
    pub fn recv(&mut self) -> Option<Pdu> {
        let mut ch = [0u8; 8];
        if let Err(e) = self.s.read_exact(&mut ch) {
            assert!(matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset), "receive failed: {e}");
            return None;
        }
        let plen = le32(&ch, 4) as usize;
        assert!((8..1 << 24).contains(&plen), "implausible plen {plen}");
        let mut rest = vec![0u8; plen - 8];
        self.s.read_exact(&mut rest).expect("PDU body");
        let mut pdu = ch.to_vec();
        pdu.extend_from_slice(&rest);
        let (kind, flags, hlen, pdo) = (ch[0], ch[1], ch[2] as usize, ch[3] as usize);
        let header = pdu[..hlen].to_vec();
        let mut data = Vec::new();
        if flags & 1 != 0 {
            assert_eq!(le32(&pdu, hlen), crc32c(&pdu[..hlen]), "header digest of {kind:#x}");
        }
        if pdo > 0 && pdo < plen {
            let end = if flags & 2 != 0 { plen - 4 } else { plen };
            data = pdu[pdo..end].to_vec();
            if flags & 2 != 0 {
                assert_eq!(le32(&pdu, end), crc32c(&data), "data digest of {kind:#x}");
            }
        } else if kind == C2H_TERM_REQ {
            data = pdu[hlen..].to_vec();
        }
        Some(Pdu { kind, flags, header, data })
    }

    /// Frame and send a CapsuleCmd with optional in-capsule data.
    pub fn send_capsule(&mut self, sqe: &Sqe, data: &[u8]) {
        let b = self.capsule_bytes(sqe, data);
        self.send_raw(&b);
    }

    /// The bytes of a CapsuleCmd with optional in-capsule data, framed
    /// with this connection's digests.
    pub fn capsule_bytes(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let hd = if self.hd { 4 } else { 0 };
        let dd = if self.dd && !data.is_empty() { 4 } else { 0 };
        let mut b = vec![0u8; 8];
        b[0] = CAPSULE_CMD;
        b[1] = if self.hd { 1 } else { 0 } | if dd > 0 { 2 } else { 0 };
        b[2] = 72;
        b[3] = if data.is_empty() { 0 } else { (72 + hd) as u8 };
        b[4..8].copy_from_slice(&((72 + hd + data.len() + dd) as u32).to_le_bytes());
        b.extend_from_slice(&sqe.0);
        if self.hd {
            let d = crc32c(&b);
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(data);
        if dd > 0 {
            b.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        b
    }

    /// Frame and send one H2CData PDU.
    pub fn send_h2c(&mut self, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) {
        let b = self.h2c_bytes(cccid, ttag, datao, data, last);
        self.send_raw(&b);
    }

    /// The bytes of one H2CData PDU.
    pub fn h2c_bytes(&self, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
        let hd = if self.hd { 4 } else { 0 };
        let dd = if self.dd { 4 } else { 0 };
        let mut b = vec![0u8; 24];
        b[0] = H2C_DATA;
        b[1] = if self.hd { 1 } else { 0 } | if self.dd { 2 } else { 0 } | if last { 4 } else { 0 };
        b[2] = 24;
        b[3] = (24 + hd) as u8;
        b[4..8].copy_from_slice(&((24 + hd + data.len() + dd) as u32).to_le_bytes());
        b[8..10].copy_from_slice(&cccid.to_le_bytes());
        b[10..12].copy_from_slice(&ttag.to_le_bytes());
        b[12..16].copy_from_slice(&datao.to_le_bytes());
        b[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        if self.hd {
            let d = crc32c(&b);
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(data);
        if self.dd {
            b.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        b
    }

    /// Send a command and collect its data (C2HData) and completion.
    /// Host-to-controller data goes in the capsule when `in_capsule`,
    /// otherwise after the target's R2T.
    pub fn command(&mut self, sqe: Sqe, out: &[u8], in_capsule: bool) -> (Cqe, Vec<u8>) {
        let cid = le16(&sqe.0, 2);
        if out.is_empty() || in_capsule {
            self.send_capsule(&sqe, out);
        } else {
            self.send_capsule(&sqe, &[]);
            let r2t = self.recv().expect("R2T");
            assert_eq!(r2t.kind, R2T, "expected an R2T, got {r2t:?}");
            let (cccid, ttag, off, len) =
                (le16(&r2t.header, 8), le16(&r2t.header, 10), le32(&r2t.header, 12) as usize, le32(&r2t.header, 16) as usize);
            assert_eq!(cccid, cid);
            let mut pos = off;
            while pos < off + len {
                let n = (off + len - pos).min(self.maxh2cdata as usize);
                self.send_h2c(cid, ttag, pos as u32, &out[pos..pos + n], pos + n == off + len);
                pos += n;
            }
        }
        let mut data = Vec::new();
        loop {
            let p = self.recv().expect("a response");
            match p.kind {
                C2H_DATA => {
                    assert_eq!(le16(&p.header, 8), cid);
                    assert_eq!(le32(&p.header, 12) as usize, data.len(), "C2H data offset");
                    data.extend_from_slice(&p.data);
                    if p.flags & 0x08 != 0 {
                        return (Cqe { dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid, status: 0 }, data);
                    }
                }
                CAPSULE_RESP => {
                    let c = p.cqe();
                    if c.cid == cid {
                        return (c, data);
                    }
                    panic!("completion for cid {} while waiting for {cid}", c.cid);
                }
                _ => panic!("unexpected PDU {p:?}"),
            }
        }
    }

    /// Fabrics Connect; returns the completion.
    pub fn fabrics_connect(&mut self, qid: u16, sqsize: u16, cntlid: u16, subnqn: &str, hostnqn: &str, kato: u32) -> Cqe {
        self.fabrics_connect_with(qid, sqsize, cntlid, subnqn, hostnqn, kato, 0)
    }

    /// Fabrics Connect with connect attributes (bit 2: disable SQ flow control).
    #[allow(clippy::too_many_arguments)]
    pub fn fabrics_connect_with(&mut self, qid: u16, sqsize: u16, cntlid: u16, subnqn: &str, hostnqn: &str, kato: u32, cattr: u8) -> Cqe {
        self.fabrics_connect_as(qid, sqsize, cntlid, subnqn, hostnqn, HOST_ID, kato, cattr)
    }

    /// Fabrics Connect with this host identifier.
    #[allow(clippy::too_many_arguments)]
    pub fn fabrics_connect_as(
        &mut self,
        qid: u16,
        sqsize: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        kato: u32,
        cattr: u8,
    ) -> Cqe {
        let cid = self.cid();
        let mut sqe = Sqe::new(0x7f, cid).byte(4, 0x01).byte(46, cattr).sgl_in_capsule(1024);
        sqe.0[42..44].copy_from_slice(&qid.to_le_bytes());
        sqe.0[44..46].copy_from_slice(&sqsize.to_le_bytes());
        sqe.0[48..52].copy_from_slice(&kato.to_le_bytes());
        let mut data = vec![0u8; 1024];
        data[..16].copy_from_slice(&hostid);
        data[16..18].copy_from_slice(&cntlid.to_le_bytes());
        data[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        data[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        self.command(sqe, &data, true).0
    }

    pub fn property_get(&mut self, offset: u32, eight: bool) -> (Cqe, u64) {
        let cid = self.cid();
        let sqe = Sqe::new(0x7f, cid).byte(4, 0x04).byte(40, u8::from(eight)).dw(11, offset);
        let (c, _) = self.command(sqe, &[], false);
        (c, u64::from(c.dw0) | (u64::from(c.dw1) << 32))
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> Cqe {
        let cid = self.cid();
        let sqe = Sqe::new(0x7f, cid).byte(4, 0x00).dw(11, offset).dw(12, value);
        self.command(sqe, &[], false).0
    }

    /// ICReq, Connect an admin queue and enable the controller; returns cntlid.
    pub fn admin(port: u16, subnqn: &str, kato: u32, hd: bool, dd: bool) -> (Client, u16) {
        let mut c = Client::connect(port);
        c.ic(hd, dd);
        let r = c.fabrics_connect(0, 31, 0xffff, subnqn, HOST_NQN, kato);
        assert!(r.ok(), "admin connect failed: {r:?}");
        let cntlid = r.dw0 as u16;
        assert!(c.property_set(0x14, 0x0046_0001).ok());
        let (r, csts) = c.property_get(0x1c, false);
        assert!(r.ok() && csts & 1 == 1, "controller not ready: {r:?} {csts:#x}");
        (c, cntlid)
    }

    /// ICReq and Connect an I/O queue of controller `cntlid`.
    pub fn io(port: u16, subnqn: &str, cntlid: u16, qid: u16, hd: bool, dd: bool) -> Client {
        let mut c = Client::connect(port);
        c.ic(hd, dd);
        let r = c.fabrics_connect(qid, 63, cntlid, subnqn, HOST_NQN, 0);
        assert!(r.ok(), "I/O connect failed: {r:?}");
        c
    }

    /// Identify (CNS `cns`, NSID `nsid`): 4096 bytes.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> (Cqe, Vec<u8>) {
        let cid = self.cid();
        self.command(Sqe::new(0x06, cid).nsid(nsid).dw(10, u32::from(cns)).sgl_transport(4096), &[], false)
    }

    pub fn write(&mut self, nsid: u32, lba: u64, data: &[u8], block: usize, in_capsule: bool) -> Cqe {
        let cid = self.cid();
        let nlb = (data.len() / block) as u32;
        let sqe = Sqe::new(0x01, cid).nsid(nsid).dw(10, lba as u32).dw(11, (lba >> 32) as u32).dw(12, nlb - 1);
        let sqe = if in_capsule { sqe.sgl_in_capsule(data.len() as u32) } else { sqe.sgl_transport(data.len() as u32) };
        self.command(sqe, data, in_capsule).0
    }

    pub fn read(&mut self, nsid: u32, lba: u64, blocks: u32, block: usize) -> (Cqe, Vec<u8>) {
        let cid = self.cid();
        let sqe = Sqe::new(0x02, cid)
            .nsid(nsid)
            .dw(10, lba as u32)
            .dw(11, (lba >> 32) as u32)
            .dw(12, blocks - 1)
            .sgl_transport(blocks * block as u32);
        self.command(sqe, &[], false)
    }

    /// Whether the target closed the connection (reads until EOF, skipping
    /// a termination request, which it returns).
    pub fn expect_close(&mut self) -> Option<Pdu> {
        let mut term = None;
        while let Some(p) = self.recv() {
            assert_eq!(p.kind, C2H_TERM_REQ, "expected termination, got {p:?}");
            term = Some(p);
        }
        term
    }
}

/// A termination request's fatal error status and field offset.
pub fn term_fes_fei(p: &Pdu) -> (u16, u32) {
    assert_eq!(p.kind, C2H_TERM_REQ);
    (le16(&p.header, 8), le32(&p.header, 10))
}
