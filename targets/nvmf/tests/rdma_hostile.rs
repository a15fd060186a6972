//! A hostile NVMe/RDMA host against the Pollux target, over Soft-RoCE in a
//! test guest, written on `pollux-rdma` (the kernel's host never sends
//! any of this): connection requests with a wrong record format or queue
//! sizes are rejected with the NVMe/RDMA status; capsules with an unknown
//! SGL type or a keyed SGL longer than the largest transfer are answered
//! with the NVMe status; a keyed SGL with a key the host never gave makes
//! the target's RDMA READ fail, which ends that queue pair only: a second
//! host connected at the same time still connects and gets its answers.
//! A listener serves at most `max_connections_per_listener` queue pairs
//! (one more is rejected with "no resources"), and a queue pair that sends
//! no Fabrics Connect within `connect_timeout_sec` is disconnected; a host
//! that goes away in the middle of a command leaves nothing held.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_rdma::sys::{IBV_WC_RECV, IBV_WC_SUCCESS, ibv_wc};
use pollux_rdma::{
    CmEventKind, CmId, CompletionChannel, CompletionQueue, ConnParam, EventChannel, MemoryRegion, ProtectionDomain, QpCaps, SendOp,
};
use pollux_tests::{Daemon, DaemonOpts};
use pollux_testvm::{VmConfig, in_guest, soft_roce};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.pollux:rdma-hostile";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555";
const ADDR: &str = "192.0.2.1";

fn wait_readable(fd: i32, deadline: Instant) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    assert!(Instant::now() < deadline, "timed out waiting for RDMA events");
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 200) };
}

/// A minimal NVMe/RDMA host queue: a QP with 8 receives for responses and
/// one 64 KiB registered buffer (capsules at 0, data at 4096).
struct Queue {
    ch: Rc<EventChannel>,
    id: CmId,
    cq: Rc<CompletionQueue>,
    _cch: Rc<CompletionChannel>,
    mr: MemoryRegion,
    buf: Box<[u8]>,
    next_recv: u64,
}

enum Connected {
    Yes(Queue),
    /// REJECTED: the NVMe/RDMA status in the private data.
    Rejected(u16),
}

fn expect_event(ch: &Rc<EventChannel>, want: CmEventKind) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(ev) = ch.next().expect("CM event") {
            assert_eq!(ev.kind(), want, "{} (status {})", ev.name(), ev.status());
            return ev.private_data().to_vec();
        }
        wait_readable(ch.fd(), deadline);
    }
}

/// Connect with this NVMe/RDMA private data (recfmt, qid, hrqsize, hsqsize).
fn connect(addr: SocketAddr, private: [u16; 4]) -> Connected {
    let ch = EventChannel::new().expect("event channel");
    let mut id = CmId::new(&ch, 1).expect("CM id");
    id.resolve_addr(addr, 2000).expect("resolve addr");
    expect_event(&ch, CmEventKind::AddrResolved);
    id.resolve_route(2000).expect("resolve route");
    expect_event(&ch, CmEventKind::RouteResolved);
    let dev = id.device().expect("device");
    let pd = ProtectionDomain::new(dev).expect("PD");
    let cch = CompletionChannel::new(dev).expect("channel");
    let cq = CompletionQueue::new(dev, 64, Some(cch.clone())).expect("CQ");
    id.create_qp(&pd, &cq, &cq, QpCaps { max_send_wr: 16, max_recv_wr: 16, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 })
        .expect("QP");
    let mut buf = vec![0u8; 64 * 1024].into_boxed_slice();
    // SAFETY: the Box lives in the Queue with the region, never moved.
    let mr = unsafe { pd.register(buf.as_mut_ptr(), buf.len()) }.expect("register");
    let mut q = Queue { ch: ch.clone(), id, cq, _cch: cch, mr, buf, next_recv: 0 };
    for _ in 0..8 {
        q.post_recv();
    }
    let mut pd_bytes = [0u8; 32];
    for (i, v) in private.iter().enumerate() {
        pd_bytes[i * 2..i * 2 + 2].copy_from_slice(&v.to_le_bytes());
    }
    q.id.connect(&ConnParam { private_data: &pd_bytes, responder_resources: 16, initiator_depth: 0, retry_count: 7, rnr_retry_count: 7 })
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(ev) = ch.next().expect("CM event") {
            match ev.kind() {
                CmEventKind::Established => {
                    let d = ev.private_data();
                    assert!(d.len() >= 4 && u16::from_le_bytes([d[0], d[1]]) == 0, "accept private data {d:?}");
                    drop(ev);
                    return Connected::Yes(q);
                }
                CmEventKind::Rejected => {
                    let d = ev.private_data();
                    assert!(d.len() >= 4, "reject private data {d:?}");
                    return Connected::Rejected(u16::from_le_bytes([d[2], d[3]]));
                }
                _ => panic!("CM event {}", ev.name()),
            }
        }
        wait_readable(ch.fd(), deadline);
    }
}

impl Queue {
    fn post_recv(&mut self) {
        // Responses land at 32 KiB + 16 * n (8 slots, reused in turn).
        let slot = self.next_recv % 8;
        let sge = self.mr.sge(self.mr.addr() + 32768 + slot * 16, 16);
        // SAFETY: the buffer lives as long as the queue.
        unsafe { self.id.post_recv(slot, &[sge]) }.expect("post recv");
        self.next_recv += 1;
    }

    /// Send a 64-byte capsule; the response's (status code type, code)
    /// and DW0, or None if the queue pair ended instead.
    fn command(&mut self, capsule: &[u8; 64]) -> Option<((u8, u8), u32)> {
        self.buf[..64].copy_from_slice(capsule);
        let sge = self.mr.sge(self.mr.addr(), 64);
        // SAFETY: as above.
        unsafe { self.id.post_send(1000, SendOp::Send, &[sge], true) }.expect("send");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut wc = [ibv_wc::default(); 8];
        loop {
            let n = self.cq.poll(&mut wc).expect("poll");
            for w in &wc[..n] {
                if w.status != IBV_WC_SUCCESS {
                    // Flushed: the target ended the queue pair.
                    return None;
                }
                if w.opcode == IBV_WC_RECV {
                    let at = 32768 + w.wr_id as usize * 16;
                    let cqe = &self.buf[at..at + 16];
                    let status = u16::from_le_bytes([cqe[14], cqe[15]]);
                    let dw0 = u32::from_le_bytes(cqe[..4].try_into().unwrap());
                    self.post_recv();
                    return Some(((((status >> 9) & 7) as u8, ((status >> 1) & 0xff) as u8), dw0));
                }
            }
            if n == 0 {
                if let Ok(Some(ev)) = self.ch.next() {
                    if matches!(ev.kind(), CmEventKind::Disconnected) {
                        return None;
                    }
                }
                assert!(Instant::now() < deadline, "no response");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Send a capsule and go on without waiting for its answer.
    fn send_only(&mut self, capsule: &[u8; 64]) {
        self.buf[..64].copy_from_slice(capsule);
        let sge = self.mr.sge(self.mr.addr(), 64);
        // SAFETY: the buffer lives as long as the queue.
        unsafe { self.id.post_send(1001, SendOp::Send, &[sge], false) }.expect("send");
    }

    /// A Fabrics Connect of the admin queue for HOST, its data (at 4096 of
    /// the buffer) named by a keyed SGL with `rkey`.
    fn connect_capsule(&mut self, rkey: u32) -> [u8; 64] {
        let data = &mut self.buf[4096..4096 + 1024];
        data.fill(0);
        data[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
        data[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
        data[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
        let mut c = [0u8; 64];
        c[0] = 0x7f;
        c[2..4].copy_from_slice(&7u16.to_le_bytes());
        c[4] = 0x01;
        keyed(&mut c, self.mr.addr() + 4096, 1024, rkey);
        c[44..46].copy_from_slice(&31u16.to_le_bytes());
        c[48..52].copy_from_slice(&30_000u32.to_le_bytes());
        c
    }
}

/// A keyed data block SGL (type 4, subtype 0) in a capsule.
fn keyed(c: &mut [u8; 64], addr: u64, len: u32, key: u32) {
    c[24..32].copy_from_slice(&addr.to_le_bytes());
    c[32..35].copy_from_slice(&len.to_le_bytes()[..3]);
    c[35..39].copy_from_slice(&key.to_le_bytes());
    c[39] = 0x40;
}

#[test]
fn malformed_requests_and_capsules_end_only_their_queue_pair() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1024).timeout(Duration::from_secs(600)), || {
        soft_roce(ADDR, &[]);
        let config = json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512}},
            ]},
            {"subsystem": "nvmf", "config": [
                // A small shared receive queue: a capsule buffer the bad
                // host's queue pair kept would soon leave none.
                {"method": "nvmf_create_transport", "params": {"trtype": "RDMA", "max_aq_depth": 32, "max_srq_depth": 8}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": ADDR, "trsvcid": "4420"}}},
            ]},
        ]});
        // Busy polling (the kernel-host test runs in interrupt mode).
        let d = Daemon::start(DaemonOpts { cpumask: "0x1".into(), interrupt_mode: false, config: Some(config), ..Default::default() });
        let addr: SocketAddr = format!("{ADDR}:4420").parse().unwrap();

        // Connection requests the spec says to reject, with its status.
        assert!(matches!(connect(addr, [1, 0, 32, 31]), Connected::Rejected(2)), "record format 1");
        assert!(matches!(connect(addr, [0, 0, 32, 0]), Connected::Rejected(4)), "HSQSIZE 0");
        assert!(matches!(connect(addr, [0, 0, 32, 500]), Connected::Rejected(4)), "HSQSIZE over max_aq_depth");
        assert!(matches!(connect(addr, [0, 0, 0, 31]), Connected::Rejected(5)), "HRQSIZE 0");

        // Two hosts; the first misbehaves.
        let Connected::Yes(mut bad) = connect(addr, [0, 0, 32, 31]) else { panic!("a good request was rejected") };
        let Connected::Yes(mut good) = connect(addr, [0, 0, 32, 31]) else { panic!("a good request was rejected") };

        // An SGL of a type no transport uses here (bit bucket, 0x1).
        let mut c = bad.connect_capsule(bad.mr.rkey());
        c[39] = 0x10;
        assert_eq!(bad.command(&c).map(|r| r.0), Some((0, 0x11)), "SGL descriptor type invalid");
        // A keyed SGL longer than the largest transfer (16 MiB).
        let mut c = bad.connect_capsule(bad.mr.rkey());
        keyed(&mut c, bad.mr.addr() + 4096, 0xff_ffff, bad.mr.rkey());
        assert_eq!(bad.command(&c).map(|r| r.0), Some((0, 0x0f)), "data SGL length invalid");
        // A key the host never gave: the RDMA READ fails and the queue
        // pair ends (no response).
        let c = bad.connect_capsule(bad.mr.rkey() ^ 0x5a5a_0000);
        assert_eq!(bad.command(&c), None, "a bad key must end the queue pair");

        // The other host is untouched: it connects and gets answers.
        let c = good.connect_capsule(good.mr.rkey());
        let (status, cntlid) = good.command(&c).expect("connect answered");
        assert_eq!(status, (0, 0), "connect status");
        assert!(cntlid & 0xffff > 0 && cntlid & 0xffff < 0xfff0, "cntlid {cntlid:#x}");
        // Property Get of CAP (offset 0, 8 bytes): MQES+1 = max_aq_depth? no,
        // max_queue_depth; any success will do, with a non-zero value.
        let mut pg = [0u8; 64];
        pg[0] = 0x7f;
        pg[2..4].copy_from_slice(&8u16.to_le_bytes());
        pg[4] = 0x04;
        pg[40] = 1;
        let (status, cap) = good.command(&pg).expect("property get answered");
        assert_eq!(status, (0, 0));
        assert!(cap & 0xffff > 0, "CAP.MQES {cap:#x}");
        // Many more commands than the shared receive queue holds: every
        // buffer came back (the bad host's too).
        for _ in 0..40 {
            assert_eq!(good.command(&pg).map(|r| r.0), Some((0, 0)), "a command went unanswered");
        }

        let log = d.log();
        assert!(log.contains("refused") && log.contains("record format 1"), "{log}");
        assert!(log.contains("work completion error"), "the failed RDMA READ is logged: {log}");
        assert!(!log.contains("panicked"), "{log}");
        drop(good);
        drop(bad);
        assert_eq!(d.stop().code(), Some(0));
    });
}

#[test]
fn queue_pairs_are_capped_per_listener_and_silent_ones_closed() {
    in_guest(&VmConfig::new().controllers(0).memory_mib(1024).timeout(Duration::from_secs(600)), || {
        soft_roce(ADDR, &[]);
        let config = json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512}},
            ]},
            {"subsystem": "nvmf", "config": [
                // Each queue pair with its own receive queue (the other test
                // has the shared one).
                {"method": "nvmf_create_transport", "params": {"trtype": "RDMA", "max_aq_depth": 32, "no_srq": true,
                    "max_connections_per_listener": 2, "connect_timeout_sec": 2}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": ADDR, "trsvcid": "4420"}}},
            ]},
        ]});
        let d = Daemon::start(DaemonOpts { cpumask: "0x1".into(), config: Some(config), ..Default::default() });
        let tr = d.call("nvmf_get_transports", Some(json!({"trtype": "RDMA"}))).expect("nvmf_get_transports");
        assert_eq!((tr[0]["max_connections_per_listener"].as_u64(), tr[0]["connect_timeout_sec"].as_u64()), (Some(2), Some(2)), "{tr}");
        let addr: SocketAddr = format!("{ADDR}:4420").parse().unwrap();

        // Two queue pairs that never connect; a third is refused.
        let Connected::Yes(q1) = connect(addr, [0, 0, 32, 31]) else { panic!("the first request was rejected") };
        let t0 = Instant::now();
        let Connected::Yes(q2) = connect(addr, [0, 0, 32, 31]) else { panic!("the second request was rejected") };
        assert!(matches!(connect(addr, [0, 0, 32, 31]), Connected::Rejected(6)), "a third queue pair on a listener capped at 2");
        // Both are disconnected once the connect timeout passes.
        expect_event(&q1.ch, CmEventKind::Disconnected);
        expect_event(&q2.ch, CmEventKind::Disconnected);
        assert!(t0.elapsed() >= Duration::from_millis(1500), "disconnected before the 2 s connect timeout: {:?}", t0.elapsed());
        drop((q1, q2));

        // Their places are free again; one that connects stays.
        let t1 = Instant::now();
        let Connected::Yes(mut q) = connect(addr, [0, 0, 32, 31]) else { panic!("refused after the others were closed") };
        let c = q.connect_capsule(q.mr.rkey());
        assert_eq!(q.command(&c).map(|r| r.0), Some((0, 0)), "connect status");
        let mut pg = [0u8; 64];
        pg[0] = 0x7f;
        pg[2..4].copy_from_slice(&9u16.to_le_bytes());
        pg[4] = 0x04;
        pg[40] = 1;
        while t1.elapsed() < Duration::from_secs(3) {
            assert!(q.command(&pg).is_some_and(|r| r.0 == (0, 0)), "a connected queue pair was closed");
            std::thread::sleep(Duration::from_millis(250));
        }
        // The host goes away in the middle of a command (an Identify
        // whose data the target writes into its buffer): its queue pair
        // ends and gives back everything it held; the listener, capped at
        // two, admits two again.
        let mut id = [0u8; 64];
        id[0] = 0x06;
        id[2..4].copy_from_slice(&10u16.to_le_bytes());
        keyed(&mut id, q.mr.addr() + 4096, 4096, q.mr.rkey());
        id[40] = 1;
        q.send_only(&id);
        drop(q);
        let admin_qpairs = || -> u64 {
            let s = d.call("nvmf_get_stats", None).expect("nvmf_get_stats");
            s["poll_groups"].as_array().unwrap().iter().map(|g| g["current_admin_qpairs"].as_u64().unwrap()).sum()
        };
        let t2 = Instant::now();
        while admin_qpairs() != 0 {
            assert!(t2.elapsed() < Duration::from_secs(30), "the admin queue pair outlived its host");
            std::thread::sleep(Duration::from_millis(100));
        }
        let Connected::Yes(a) = connect(addr, [0, 0, 32, 31]) else { panic!("a place was not given back") };
        let Connected::Yes(b) = connect(addr, [0, 0, 32, 31]) else { panic!("a place was not given back") };
        drop((a, b));
        let log = d.log();
        assert!(log.contains("the most it serves") && log.contains("no Connect within"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(d.stop().code(), Some(0));
    });
}
