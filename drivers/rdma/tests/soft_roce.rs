//! The verbs layer on real verbs: Soft-RoCE (`rdma_rxe`) on a dummy
//! device in a test guest (the host has no RDMA device). Both ends run in
//! the guest, in one thread, driven by their channels' nonblocking fds as
//! a reactor drives them: connection manager exchange with private data
//! both ways, a SEND, an RDMA READ and an RDMA WRITE of data checked byte
//! for byte, completions seen through an armed completion channel, a
//! rejected connection with the reason the listener gave, disconnection,
//! and memory registered for local use only out of the peer's reach.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pollux_rdma::sys::{IBV_WC_RDMA_READ, IBV_WC_RECV, IBV_WC_SEND, IBV_WC_SUCCESS, ibv_wc};
use pollux_rdma::{
    CmEventKind, CmId, CompletionChannel, CompletionQueue, ConnParam, EventChannel, MemoryRegion, ProtectionDomain, QpCaps, SendOp,
};
use pollux_testvm::{VmConfig, in_guest, soft_roce};

const ADDR: &str = "192.0.2.1";

fn wait_readable(fds: &[i32], deadline: Instant) {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(!left.is_zero(), "timed out waiting for RDMA events");
    // SAFETY: `p` is a valid array of pollfds for the call.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, left.as_millis().min(1000) as i32) };
}

/// The next CM event on `ch` of the kind wanted (others fail the test),
/// with its private data.
fn expect(ch: &Rc<EventChannel>, want: CmEventKind) -> (i32, Vec<u8>, u64) {
    eprintln!("waiting for {want:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(ev) = ch.next().expect("rdma_get_cm_event") {
            assert_eq!(ev.kind(), want, "CM event {} (status {})", ev.name(), ev.status());
            return (ev.status(), ev.private_data().to_vec(), ev.context());
        }
        wait_readable(&[ch.fd()], deadline);
    }
}

/// Completions of `cq` until `n` have come, waiting on its armed channel.
fn completions(cq: &CompletionQueue, ch: &CompletionChannel, n: usize) -> Vec<ibv_wc> {
    eprintln!("waiting for {n} completion(s)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut wc = [ibv_wc::default(); 8];
    while out.len() < n {
        let got = cq.poll(&mut wc).expect("poll_cq");
        out.extend_from_slice(&wc[..got]);
        if got == 0 {
            cq.arm().expect("arm");
            // A completion between the poll and the arm raised no event.
            let got = cq.poll(&mut wc).expect("poll_cq");
            out.extend_from_slice(&wc[..got]);
            if got == 0 {
                wait_readable(&[ch.fd()], deadline);
                cq.take_events(true).expect("take events");
            }
        }
    }
    for w in &out {
        assert_eq!(w.status, IBV_WC_SUCCESS, "completion {} failed: {}", w.wr_id, pollux_rdma::lib().unwrap().wc_status_str(w.status));
    }
    out
}

/// One end of a connection: its id, PD, CQ (with channel) and a 64 KiB
/// registered buffer.
struct End {
    id: CmId,
    pd: Rc<ProtectionDomain>,
    cq: Rc<CompletionQueue>,
    ch: Rc<CompletionChannel>,
    mr: MemoryRegion,
    buf: Box<[u8]>,
}

impl End {
    fn new(mut id: CmId) -> End {
        let dev = id.device().expect("bound to a device");
        let limits = dev.limits().expect("query device");
        assert!(limits.max_qp_wr >= 64 && limits.max_sge >= 1, "{limits:?}");
        let pd = ProtectionDomain::new(dev).expect("PD");
        let ch = CompletionChannel::new(dev).expect("completion channel");
        let cq = CompletionQueue::new(dev, 64, Some(ch.clone())).expect("CQ");
        let caps = QpCaps { max_send_wr: 16, max_recv_wr: 16, max_send_sge: 2, max_recv_sge: 1, max_inline_data: 0 };
        let got = id.create_qp(&pd, &cq, &cq, caps).expect("QP");
        assert!(got.max_send_wr >= 16 && got.max_recv_wr >= 16, "{got:?}");
        let mut buf = vec![0u8; 64 * 1024].into_boxed_slice();
        // SAFETY: the buffer is a Box that lives in the same End as the
        // region and is not moved (the Box's heap memory stays put).
        let mr = unsafe { pd.register(buf.as_mut_ptr(), buf.len()) }.expect("register");
        End { id, pd, cq, ch, mr, buf }
    }

    fn at(&self, off: usize) -> u64 {
        self.mr.addr() + off as u64
    }
}

#[test]
fn cm_send_rdma_read_and_write_reject_and_disconnect_on_soft_roce() {
    in_guest(&VmConfig::new().memory_mib(1024), || {
        soft_roce(ADDR, &[]);
        let addr: SocketAddr = format!("{ADDR}:4420").parse().unwrap();

        let server_ch = EventChannel::new().expect("server event channel");
        let listener = CmId::new(&server_ch, 7).expect("listener id");
        listener.listen(addr, 16).expect("listen");
        assert_eq!(listener.local_addr(), Some(addr));

        // The client: resolve, route, QP, connect with private data.
        let client_ch = EventChannel::new().expect("client event channel");
        let cid = CmId::new(&client_ch, 9).expect("client id");
        cid.resolve_addr(addr, 2000).expect("resolve addr");
        assert_eq!(expect(&client_ch, CmEventKind::AddrResolved).2, 9);
        cid.resolve_route(2000).expect("resolve route");
        expect(&client_ch, CmEventKind::RouteResolved);
        let mut client = End::new(cid);
        let hello: Vec<u8> = (0..32u8).collect();
        // A receive for the server's answer.
        let sge = client.mr.sge(client.at(60 * 1024), 64);
        // SAFETY: the region's memory lives in `client` until the end.
        unsafe { client.id.post_recv(100, &[sge]) }.expect("client recv");
        client
            .id
            .connect(&ConnParam { private_data: &hello, responder_resources: 4, initiator_depth: 4, retry_count: 7, rnr_retry_count: 7 })
            .expect("connect");

        // The server takes the request: the private data came through.
        let req = loop {
            let deadline = Instant::now() + Duration::from_secs(30);
            match server_ch.next().expect("server event") {
                Some(ev) => {
                    assert_eq!(ev.kind(), CmEventKind::ConnectRequest, "{}", ev.name());
                    assert_eq!(ev.context(), 7, "the listener's context");
                    break ev.into_request(11).expect("a request");
                }
                None => wait_readable(&[server_ch.fd()], deadline),
            }
        };
        assert_eq!(&req.private_data[..32], &hello[..], "the request's private data");
        assert!(req.id.peer_addr().is_some_and(|a| a.ip() == addr.ip()));
        let mut server = End::new(req.id);
        let sge = server.mr.sge(server.at(0), 64);
        // SAFETY: as for the client.
        unsafe { server.id.post_recv(200, &[sge]) }.expect("server recv");
        let answer = [0xa5u8; 16];
        server
            .id
            .accept(&ConnParam { private_data: &answer, responder_resources: 4, initiator_depth: 4, ..Default::default() })
            .expect("accept");
        let (_, data, _) = expect(&client_ch, CmEventKind::Established);
        assert_eq!(&data[..16], &answer[..], "the accept's private data");
        let (_, _, ctx) = expect(&server_ch, CmEventKind::Established);
        assert_eq!(ctx, 11, "the new id's context");

        // Client: a "capsule" naming its buffer (address, key) in a SEND.
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 1) as u8).collect();
        client.buf[4096..4096 + 8192].copy_from_slice(&pattern);
        let mut capsule = [0u8; 64];
        capsule[..8].copy_from_slice(&client.at(4096).to_le_bytes());
        capsule[8..12].copy_from_slice(&client.mr.rkey().to_le_bytes());
        client.buf[..64].copy_from_slice(&capsule);
        let sge = client.mr.sge(client.at(0), 64);
        // SAFETY: as above.
        unsafe { client.id.post_send(101, SendOp::Send, &[sge], true) }.expect("client send");
        let wc = completions(&client.cq, &client.ch, 1);
        assert_eq!((wc[0].wr_id, wc[0].opcode), (101, IBV_WC_SEND));

        // Server: the capsule arrived; READ the client's data, then WRITE
        // other data back and SEND an answer.
        let wc = completions(&server.cq, &server.ch, 1);
        assert_eq!((wc[0].wr_id, wc[0].opcode, wc[0].byte_len), (200, IBV_WC_RECV, 64));
        let remote = u64::from_le_bytes(server.buf[..8].try_into().unwrap());
        let rkey = u32::from_le_bytes(server.buf[8..12].try_into().unwrap());
        assert_eq!((remote, rkey), (client.at(4096), client.mr.rkey()));
        let sge = server.mr.sge(server.at(8192), 8192);
        // SAFETY: as above; the address and key are the client's own.
        unsafe { server.id.post_send(201, SendOp::Read { remote_addr: remote, rkey }, &[sge], true) }.expect("RDMA READ");
        let wc = completions(&server.cq, &server.ch, 1);
        assert_eq!((wc[0].wr_id, wc[0].opcode), (201, IBV_WC_RDMA_READ));
        assert!(server.buf[8192..16384] == pattern[..], "RDMA READ brought the client's data");
        let back: Vec<u8> = pattern.iter().map(|b| !b).collect();
        server.buf[16384..16384 + 8192].copy_from_slice(&back);
        server.buf[32768..32768 + 16].copy_from_slice(b"pollux-response!");
        let data = server.mr.sge(server.at(16384), 8192);
        let resp = server.mr.sge(server.at(32768), 16);
        // SAFETY: as above. The WRITE is unsignaled: the SEND after it
        // completes after it (same send queue, in order).
        unsafe {
            server.id.post_send(202, SendOp::Write { remote_addr: remote, rkey }, &[data], false).expect("RDMA WRITE");
            server.id.post_send(203, SendOp::Send, &[resp], true).expect("server send");
        }
        let wc = completions(&server.cq, &server.ch, 1);
        assert_eq!((wc[0].wr_id, wc[0].opcode), (203, IBV_WC_SEND));

        // Client: the answer came after the data it was written.
        let wc = completions(&client.cq, &client.ch, 1);
        assert_eq!((wc[0].wr_id, wc[0].opcode, wc[0].byte_len), (100, IBV_WC_RECV, 16));
        assert_eq!(&client.buf[60 * 1024..60 * 1024 + 16], b"pollux-response!");
        assert!(client.buf[4096..4096 + 8192] == back[..], "RDMA WRITE put the server's data in the client's buffer");

        // Disconnect: the server hears of it and answers (the client's
        // DISCONNECTED comes with that answer).
        client.id.disconnect().expect("disconnect");
        expect(&server_ch, CmEventKind::Disconnected);
        server.id.disconnect().expect("the server's disconnect");
        expect(&client_ch, CmEventKind::Disconnected);
        drop(server);
        drop(client);

        // A request refused: the client gets REJECTED and the reason.
        let cid = CmId::new(&client_ch, 10).expect("client id");
        cid.resolve_addr(addr, 2000).expect("resolve addr");
        expect(&client_ch, CmEventKind::AddrResolved);
        cid.resolve_route(2000).expect("resolve route");
        expect(&client_ch, CmEventKind::RouteResolved);
        let client = End::new(cid);
        client.id.connect(&ConnParam { private_data: &hello, retry_count: 7, rnr_retry_count: 7, ..Default::default() }).expect("connect");
        let req = loop {
            let deadline = Instant::now() + Duration::from_secs(30);
            match server_ch.next().expect("server event") {
                Some(ev) => break ev.into_request(12).expect("a request"),
                None => wait_readable(&[server_ch.fd()], deadline),
            }
        };
        req.id.reject(&[0, 0, 6, 0]).expect("reject");
        let (status, data, _) = expect(&client_ch, CmEventKind::Rejected);
        assert_ne!(status, 0, "a rejection has a reason");
        assert_eq!(&data[..4], &[0, 0, 6, 0], "the reject's private data");
        drop(req);
        drop(client);

        // Memory registered for local use only: the peer's RDMA WRITE to
        // it, even with its key, fails and changes nothing.
        let cid = CmId::new(&client_ch, 20).expect("client id");
        cid.resolve_addr(addr, 2000).expect("resolve addr");
        expect(&client_ch, CmEventKind::AddrResolved);
        cid.resolve_route(2000).expect("resolve route");
        expect(&client_ch, CmEventKind::RouteResolved);
        let mut client = End::new(cid);
        client.id.connect(&ConnParam { retry_count: 7, rnr_retry_count: 7, ..Default::default() }).expect("connect");
        let req = loop {
            let deadline = Instant::now() + Duration::from_secs(30);
            match server_ch.next().expect("server event") {
                Some(ev) => break ev.into_request(21).expect("a request"),
                None => wait_readable(&[server_ch.fd()], deadline),
            }
        };
        let server = End::new(req.id);
        let mut private = vec![0x11u8; 4096].into_boxed_slice();
        // SAFETY: the Box outlives the region (dropped after it below) and
        // is not moved.
        let local = unsafe { server.pd.register_local(private.as_mut_ptr(), private.len()) }.expect("register_local");
        server.id.accept(&ConnParam { responder_resources: 4, initiator_depth: 4, ..Default::default() }).expect("accept");
        expect(&client_ch, CmEventKind::Established);
        expect(&server_ch, CmEventKind::Established);
        client.buf[..4096].fill(0xee);
        let sge = client.mr.sge(client.at(0), 4096);
        // SAFETY: the client's buffer lives in `client`; the remote address
        // and key are the server's local-only region, which must refuse.
        unsafe { client.id.post_send(300, SendOp::Write { remote_addr: local.addr(), rkey: local.rkey() }, &[sge], true) }
            .expect("post the WRITE");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut wc = [ibv_wc::default(); 4];
        let w = loop {
            let n = client.cq.poll(&mut wc).expect("poll");
            if n > 0 {
                break wc[0];
            }
            assert!(Instant::now() < deadline, "no completion for the WRITE");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(w.wr_id, 300);
        assert_ne!(w.status, IBV_WC_SUCCESS, "an RDMA WRITE into local-only memory succeeded");
        drop(local);
        assert!(private.iter().all(|&b| b == 0x11), "local-only memory was written by the peer");
        drop(server);
        drop(client);
        drop(listener);
    });
}
