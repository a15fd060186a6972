//! The NVMe-oF/TCP targets, on a subsystem with two malloc namespaces and
//! two reactors (I/O queue pairs move to reactor 1, as in the daemon):
//!
//! - `nvmf_tcp_pdu`: raw bytes on a connection: the PDU parser
//!   (`transport/tcp/pdu.rs`: every PDU type, digests, lengths) and the
//!   connection's state machine (ICReq, then capsules and H2CData).
//! - `nvmf_capsule`: commands executed against a controller: Fabrics
//!   (Connect, Property Get/Set, Disconnect), admin and I/O commands
//!   (reservations among them), with
//!   their data in the capsule or solicited by R2T, framed by the harness.
//!
//! Invariants: the controller's output is well framed (`nvmf_wire`); every
//! command but an Asynchronous Event Request is answered, with no more data
//! than its buffer holds; once the host closes its connections, no
//! controller and no queue pair is left.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use pollux_core::reactor::Harness;
use pollux_core::rpc::Methods;
use pollux_nvmf::transport::{Endpoint, TransportKind, TransportOpts};
use serde_json::json;

use crate::common::{self, Blank, Input, Peer};
use crate::nvmf_wire::{self as wire, C2h, Link};

const NAMESPACES: [(&str, u32, u64); 2] = [("NvmfMalloc0", 512, 2048), ("NvmfMalloc1", 4096, 256)];
/// The transport's in-capsule data size.
const IN_CAPSULE: u32 = 8192;

struct Rig {
    h: Harness,
    bdevs: Vec<Blank>,
    ep: Endpoint,
    opts: TransportOpts,
    _methods: Rc<Methods>,
}

impl Rig {
    fn new() -> Rig {
        common::init_process();
        let h = Harness::new(2);
        let m = common::tgt_app().methods().clone();
        for (name, bs, n) in NAMESPACES {
            common::setup_call(&h, &m, "bdev_malloc_create", json!({"name": name, "block_size": bs, "num_blocks": n}));
        }
        common::setup_call(&h, &m, "nvmf_create_transport", json!({"trtype": "TCP", "in_capsule_data_size": IN_CAPSULE}));
        common::setup_call(
            &h,
            &m,
            "nvmf_create_subsystem",
            json!({"nqn": wire::SUBNQN, "allow_any_host": true, "serial_number": "FUZZ0001", "model_number": "Pollux fuzz", "max_namespaces": 4}),
        );
        for (name, ..) in NAMESPACES {
            common::setup_call(&h, &m, "nvmf_subsystem_add_ns", json!({"nqn": wire::SUBNQN, "namespace": {"bdev_name": name}}));
        }
        // Port 0: the listener binds a port of the kernel's choice and is
        // never connected to; connections come in over socket pairs.
        common::setup_call(
            &h,
            &m,
            "nvmf_subsystem_add_listener",
            json!({"nqn": wire::SUBNQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"}}),
        );
        let ep = Endpoint { kind: TransportKind::Tcp, addr: "127.0.0.1:0".parse().expect("address") };
        let (opts, bdevs) = h.on(0, || {
            let t = pollux_nvmf::target::target().expect("target");
            let opts = t.transport(pollux_nvmf::transport::TransportKind::Tcp).expect("transport").opts().clone();
            let bdevs = NAMESPACES.iter().map(|(name, ..)| Blank::open(name)).collect::<Vec<_>>();
            (opts, bdevs)
        });
        Rig { h, bdevs, ep, opts, _methods: m }
    }

    /// Zero the namespaces and drop their reservations (results do not
    /// depend on earlier inputs).
    fn reset(&self) {
        self.h.on(0, || {
            for b in &self.bdevs {
                b.zero();
            }
            let t = pollux_nvmf::target::target().expect("target");
            for s in t.subsystems.borrow().iter() {
                for ns in s.namespaces.borrow().values() {
                    if std::mem::take(&mut *ns.resv.borrow_mut()) != Default::default() {
                        pollux_nvmf::group::publish_resv(s.id, ns.nsid, None, false, || {});
                    }
                }
            }
        });
        common::settle(&self.h);
    }

    /// A new connection, as accepted by the listener.
    fn connect(&self) -> Conn {
        let (theirs, ours) = common::socket_pair();
        let (ep, opts) = (self.ep, self.opts.clone());
        let peer: SocketAddr = "127.0.0.1:50000".parse().expect("address");
        self.h.on(0, move || pollux_nvmf::transport::tcp::serve_for_fuzzing(theirs, peer, ep, opts).expect("serve"));
        Conn { peer: Peer::new(ours), link: Link::default(), pdus: Vec::new() }
    }

    /// After the host closed every connection: nothing may be left.
    fn check_clean(&self) {
        common::settle(&self.h);
        let (ctrlrs, qpairs) = self.h.on(0, || {
            let t = pollux_nvmf::target::target().expect("target");
            let ctrlrs: usize = t.subsystems.borrow().iter().map(|s| s.controllers.borrow().len()).sum();
            let (tx, rx) = std::sync::mpsc::channel();
            pollux_nvmf::transport::tcp::group_stats(move |all| {
                let open: u64 = all.iter().map(|s| s.current_admin_qpairs + s.current_io_qpairs).sum();
                let _ = tx.send(open);
            });
            (ctrlrs, rx)
        });
        common::settle(&self.h);
        let qpairs = qpairs.try_recv().expect("queue pair counts");
        assert_eq!(ctrlrs, 0, "controllers outlived their host's connections");
        assert_eq!(qpairs, 0, "queue pairs outlived their host's connections");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let bdevs = std::mem::take(&mut self.bdevs);
        common::close_blanks(&self.h, bdevs, || {});
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn with_rig(f: impl FnOnce(&Rig)) {
    common::with_rig(&RIG, Rig::new, f);
}

/// The host's end of one queue pair.
struct Conn {
    peer: Peer,
    link: Link,
    pdus: Vec<C2h>,
}

impl Conn {
    fn send(&mut self, h: &Harness, bytes: &[u8]) -> bool {
        let ok = self.peer.send(h, bytes);
        self.pump(h);
        ok
    }

    fn pump(&mut self, h: &Harness) {
        self.peer.pump(h);
        while let Some(p) = wire::take_pdu(&mut self.peer.rx, &mut self.link) {
            if common::trace() {
                match p.kind {
                    wire::CAPSULE_RESP => eprintln!("nvmf <- CapsuleResp (dw0, cid, (sct, sc)) {:x?}", p.cqe()),
                    wire::R2T => eprintln!("nvmf <- R2T (cccid, ttag, offset, length) {:?}", p.r2t()),
                    wire::C2H_DATA => eprintln!("nvmf <- C2HData cccid {:#x} flags {:#04x}, {} bytes", p.cccid(), p.flags, p.data.len()),
                    k => eprintln!("nvmf <- PDU type {k:#04x} flags {:#04x} {:02x?}", p.flags, &p.header[..p.header.len().min(24)]),
                }
            }
            self.pdus.push(p);
        }
    }

    /// The completion of `cid`, taken from what arrived.
    fn completion(&mut self, cid: u16) -> Option<(u32, (u8, u8))> {
        let i = self.pdus.iter().position(|p| p.kind == wire::CAPSULE_RESP && p.cqe().1 == cid)?;
        let (dw0, _, st) = self.pdus.remove(i).cqe();
        Some((dw0, st))
    }

    /// ICReq and the ICResp.
    fn init(&mut self, h: &Harness, hd: bool, dd: bool, hpda: u8) {
        self.link.asked = Some((hd, dd, hpda));
        self.send(h, &wire::ic_req(hd, dd, hpda));
        assert!(self.link.ic.is_some(), "no ICResp to the scripted ICReq");
        self.pdus.clear();
    }

    /// A command that must succeed; returns dword 0.
    fn must(&mut self, h: &Harness, sqe: &[u8; 64], data: &[u8], what: &str) -> u32 {
        let (hd, dd, _) = self.link.ic.expect("ICResp");
        let cid = u16::from_le_bytes([sqe[2], sqe[3]]);
        self.send(h, &wire::capsule(sqe, data, hd, dd));
        match self.completion(cid) {
            Some((dw0, (0, 0))) => dw0,
            other => panic!("scripted {what} failed: {other:?} {:?}", self.pdus),
        }
    }

    fn close(&mut self) {
        self.peer.close();
    }
}

/// The scripted start of an admin queue: ICReq, Connect, CC.EN. Returns
/// the controller id.
fn admin_queue(rig: &Rig, c: &mut Conn, hd: bool, dd: bool, hpda: u8, discovery: bool, enable: bool) -> u16 {
    let h = &rig.h;
    c.init(h, hd, dd, hpda);
    let nqn = if discovery { wire::DISCOVERY_NQN } else { wire::SUBNQN };
    c.link.sq_entries = 32;
    let (sqe, data) = wire::connect(0xa000, 0, 31, 0, 0xffff, nqn);
    let cntlid = c.must(h, &sqe, &data, "admin Connect") as u16;
    if enable {
        c.must(h, &wire::property_set_cc(0xa001, wire::CC_ENABLE), &[], "Property Set CC.EN");
    }
    cntlid
}

/// The scripted start of I/O queue 1 of controller `cntlid`: whether its
/// Connect succeeded.
fn io_queue(rig: &Rig, c: &mut Conn, hd: bool, dd: bool, hpda: u8, cntlid: u16, cattr: u8) -> bool {
    let h = &rig.h;
    c.init(h, hd, dd, hpda);
    c.link.sq_flow_off = cattr & 0x04 != 0;
    c.link.sq_entries = 64;
    let (sqe, data) = wire::connect(0xa002, 1, 63, cattr, cntlid, wire::SUBNQN);
    let (hd, dd, _) = c.link.ic.expect("ICResp");
    c.send(h, &wire::capsule(&sqe, &data, hd, dd));
    matches!(c.completion(0xa002), Some((_, (0, 0))))
}

/// `nvmf_tcp_pdu`. Input: a mode byte, then raw bytes for one connection.
/// Mode: bit 0 header digest, bit 1 data digest; bit 2 no scripted start
/// (the bytes begin with the ICReq); bit 3 the bytes go to a scripted I/O
/// queue (else the admin queue); bit 4 no CC.EN; bit 5 the discovery
/// subsystem; bits 6-7 how the bytes are cut into writes (all at once, 1, 8
/// or 100 bytes).
pub fn nvmf_tcp_pdu(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let bytes = inp.rest();
    with_rig(|rig| {
        let h = &rig.h;
        rig.reset();
        let (hd, dd) = (mode & 1 != 0, mode & 2 != 0);
        let mut admin = rig.connect();
        let mut io = None;
        if mode & 0x04 == 0 {
            let cntlid = admin_queue(rig, &mut admin, hd, dd, 0, mode & 0x20 != 0, mode & 0x10 == 0);
            if mode & 0x08 != 0 {
                let mut c = rig.connect();
                io_queue(rig, &mut c, hd, dd, 0, cntlid, 0);
                io = Some(c);
            }
        }
        let target = io.as_mut().unwrap_or(&mut admin);
        let chunk = [usize::MAX, 1, 8, 100][(mode >> 6) as usize];
        for piece in bytes.chunks(chunk.min(bytes.len().max(1))) {
            if !target.send(h, piece) || target.peer.eof {
                break;
            }
            target.pdus.clear();
        }
        if let Some(c) = &mut io {
            c.close();
        }
        admin.close();
        rig.check_clean();
    });
}

/// `nvmf_capsule`. Input: a mode byte, then records
/// `[queue][command: 64][transfer length: u16 LE][data]`.
///
/// Mode: bit 0 header digest, bit 1 data digest; bit 2 connect to the
/// discovery subsystem; bit 3 no CC.EN; bit 4 the I/O queue disables SQ
/// flow control (C2HData may carry SUCCESS); bits 6-7 the host's PDU data
/// alignment (HPDA).
///
/// Queue byte: bit 0 the I/O queue (opened by the harness at its first
/// use, with the controller id the admin Connect returned), else the admin
/// queue; bit 1 send host-to-controller data by R2T and H2CData even if it
/// fits in the capsule; bit 2 leave the command's SGL as the fuzzer wrote
/// it; bit 3 H2CData in 512-byte pieces; bit 4 the H2CData bytes written
/// 700 at a time, the target running in between (headers and data split
/// across reads: data read straight into the command's buffers).
///
/// The data direction comes from the opcode (for Fabrics, the command
/// type), as a host knows it: host-to-controller commands take `transfer
/// length` bytes of data from the input; controller-to-host commands get a
/// transport SGL of that length.
pub fn nvmf_capsule(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    with_rig(|rig| {
        let h = &rig.h;
        rig.reset();
        let (hd, dd, hpda) = (mode & 1 != 0, mode & 2 != 0, mode >> 6);
        let mut admin = rig.connect();
        let cntlid = admin_queue(rig, &mut admin, hd, dd, hpda, mode & 0x04 != 0, mode & 0x08 == 0);
        let mut io: Option<Conn> = None;
        let mut records = 0;
        while !inp.is_empty() && records < 64 {
            records += 1;
            let q = inp.u8();
            let mut sqe = inp.array::<64>();
            let len = inp.u16() as u32;
            let opcode = if sqe[0] == 0x7f { sqe[4] } else { sqe[0] };
            let to_ctrlr = opcode & 0x3 == 1;
            let payload = if to_ctrlr { inp.bytes(len as usize).to_vec() } else { Vec::new() };
            let len = if to_ctrlr { payload.len() as u32 } else { len };
            let c = if q & 1 != 0 {
                io.get_or_insert_with(|| {
                    let mut c = rig.connect();
                    io_queue(rig, &mut c, hd, dd, hpda, cntlid, if mode & 0x10 != 0 { 0x04 } else { 0 });
                    c
                })
            } else {
                &mut admin
            };
            if c.peer.eof || c.link.terminated {
                continue;
            }
            let (chd, cdd, maxh2c) = c.link.ic.expect("ICResp");
            let in_capsule = to_ctrlr && q & 0x02 == 0 && len <= IN_CAPSULE;
            if q & 0x04 == 0 {
                match (len, in_capsule) {
                    (0, _) => wire::set_sgl(&mut sqe, wire::SGL_IN_CAPSULE, 0),
                    (_, true) => wire::set_sgl(&mut sqe, wire::SGL_IN_CAPSULE, len),
                    (_, false) => wire::set_sgl(&mut sqe, wire::SGL_TRANSPORT, len),
                }
            }
            let cid = u16::from_le_bytes([sqe[2], sqe[3]]);
            let capsule_data = if in_capsule { &payload[..] } else { &[][..] };
            c.send(h, &wire::capsule(&sqe, capsule_data, chd, cdd));
            // Whatever the SGL (the fuzzer's own, with queue bit 2), a host
            // answers the R2Ts it gets.
            let piece = if q & 0x08 != 0 { 512 } else { maxh2c as usize };
            let dribble = if q & 0x10 != 0 { 700 } else { usize::MAX };
            solicited(h, c, cid, if in_capsule { &[] } else { &payload }, piece.max(1), dribble, chd, cdd);
            let answered = c.pdus.iter().any(|p| match p.kind {
                wire::CAPSULE_RESP => p.cqe().1 == cid,
                wire::C2H_DATA => p.cccid() == cid && p.flags & wire::SUCCESS != 0,
                _ => false,
            });
            let sent: usize = c.pdus.iter().filter(|p| p.kind == wire::C2H_DATA && p.cccid() == cid).map(|p| p.data.len()).sum();
            // The host's buffer is what the command's SGL says.
            let buffer = u32::from_le_bytes([sqe[32], sqe[33], sqe[34], sqe[35]]) as usize;
            assert!(sent <= buffer, "command {:02x?} (cid {cid:#x}): {sent} bytes of data for a {buffer}-byte buffer", &sqe[..16]);
            let aer = q & 1 == 0 && sqe[0] == 0x0c;
            let dropped = c.peer.eof || c.link.terminated;
            assert!(answered || aer || dropped, "command {:02x?} (cid {cid:#x}) was not answered: {:?}", &sqe[..16], c.pdus);
            c.pdus.clear();
        }
        if let Some(c) = &mut io {
            c.close();
        }
        admin.close();
        rig.check_clean();
    });
}

/// Answer the R2Ts for command `cid` with H2CData PDUs of at most `piece`
/// bytes from `data`: all the data each R2T asks for, zeroes past the end
/// of `data` (a host sends what it is asked for), written `dribble` bytes
/// at a time.
#[allow(clippy::too_many_arguments)]
fn solicited(h: &Harness, c: &mut Conn, cid: u16, data: &[u8], piece: usize, dribble: usize, hd: bool, dd: bool) {
    for _ in 0..64 {
        let Some(i) = c.pdus.iter().position(|p| p.kind == wire::R2T && p.r2t().0 == cid) else { return };
        let (_, ttag, off, len) = c.pdus.remove(i).r2t();
        let (off, end) = (off as usize, off as usize + len as usize);
        let mut window = data.get(off..end.min(data.len())).unwrap_or(&[]).to_vec();
        window.resize(len as usize, 0);
        let mut out = Vec::new();
        let mut at = 0;
        while at < window.len() {
            let n = piece.min(window.len() - at);
            let last = at + n == window.len();
            out.extend_from_slice(&wire::h2c_data(cid, ttag, (off + at) as u32, &window[at..at + n], last, hd, dd));
            at += n;
        }
        if out.is_empty() || !out.chunks(dribble).all(|bytes| c.send(h, bytes)) {
            return;
        }
    }
}
