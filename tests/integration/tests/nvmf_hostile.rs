//! Regression tests for faults found by hostile testing of the NVMe-oF
//! target (docs/reliability.md), over real sockets to a running daemon: FUA and Flush
//! reaching the bdev, block sizes no NVMe host can describe, what real
//! hosts send at Connect (a fresh host identifier per connection, no host
//! NQN), refusals logged with their reason, and ANAGRPID without ANA.

use pollux_tests::nvmf_client::*;
use pollux_tests::{Daemon, DaemonOpts, TempDir};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:hostile";
const OPEN_NQN: &str = "nqn.2016-06.io.pollux:open";
const BS: usize = 512;
const FILE_MIB: u64 = 16;

/// How long connections may take to connect here (Pollux's default is 30 s).
const CONNECT_TIMEOUT_SEC: u32 = 5;

fn free_port() -> u16 {
    pollux_tests::free_port()
}

/// Two reactors; subsystem NQN (for HOST_NQN only) with a uring bdev on a
/// file as NSID 1, and OPEN_NQN (any host) with a malloc namespace.
fn start(port: u16, dir: &TempDir) -> Daemon {
    let file = dir.join("ns.img");
    std::fs::File::create(&file).unwrap().set_len(FILE_MIB << 20).unwrap();
    let listener = |nqn: &str| json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}});
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_uring_create", "params": {"name": "File0", "filename": file.to_str().unwrap(), "block_size": BS}},
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 8192, "block_size": BS}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "in_capsule_data_size": 8192, "connect_timeout_sec": CONNECT_TIMEOUT_SEC}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "serial_number": "HOSTILE01", "max_namespaces": 4}},
            {"method": "nvmf_subsystem_add_host", "params": {"nqn": NQN, "host": HOST_NQN}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "File0", "nsid": 1}}},
            listener(NQN),
            {"method": "nvmf_create_subsystem", "params": {"nqn": OPEN_NQN, "allow_any_host": true, "serial_number": "HOSTILE02"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": OPEN_NQN, "namespace": {"bdev_name": "M0", "nsid": 1}}},
            listener(OPEN_NQN),
        ]},
    ]});
    Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(config), ..Default::default() })
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

fn iostat(d: &Daemon, bdev: &str) -> Value {
    let v = d.call("bdev_get_iostat", Some(json!({"name": bdev}))).expect("bdev_get_iostat");
    v["bdevs"][0].clone()
}

fn flushes(d: &Daemon) -> u64 {
    iostat(d, "File0")["num_flush_ops"].as_u64().expect("num_flush_ops")
}

fn writes(d: &Daemon) -> u64 {
    iostat(d, "File0")["num_write_ops"].as_u64().expect("num_write_ops")
}

/// Finding 5: a Write with FUA completed without making the data durable
/// while Identify reported a volatile write cache. FUA now reaches the bdev
/// as a write and a flush of its blocks; Flush reaches the bdev from any
/// queue.
#[test]
fn fua_writes_and_flushes_reach_the_bdev() {
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    let (mut admin, cntlid) = Client::admin(port, NQN, 0, false, false);
    let (r, id) = admin.identify(1, 0);
    assert!(r.ok());
    assert_eq!(id[525] & 1, 1, "a volatile write cache is reported");
    let mut q1 = Client::io(port, NQN, cntlid, 1, false, false);
    let mut q2 = Client::io(port, NQN, cntlid, 2, false, false);
    let (f0, w0) = (flushes(&d), writes(&d));
    // A plain write: no flush.
    assert!(q1.write(1, 8, &pattern(1, 4096), BS, true).ok());
    assert_eq!((flushes(&d), writes(&d)), (f0, w0 + 1), "a write without FUA");
    // A write with FUA: the write, then a flush before the completion.
    let data = pattern(2, 4096);
    let cid = q1.cid();
    let sqe = Sqe::new(0x01, cid).nsid(1).dw(10, 16).dw(12, (1 << 30) | 7).sgl_in_capsule(4096);
    let (c, _) = q1.command(sqe, &data, true);
    assert!(c.ok(), "{c:?}");
    assert_eq!((flushes(&d), writes(&d)), (f0 + 1, w0 + 2), "a FUA write is flushed before it completes");
    // Flush on another queue than the writes.
    let cid = q2.cid();
    let (c, _) = q2.command(Sqe::new(0x00, cid).nsid(1), &[], false);
    assert!(c.ok(), "{c:?}");
    assert_eq!(flushes(&d), f0 + 2, "Flush reaches the bdev");
    let (c, back) = q2.read(1, 16, 8, BS);
    assert!(c.ok() && back == data);
    // The data is in the file, as written through the bdev.
    let raw = std::fs::read(dir.join("ns.img")).unwrap();
    assert!(raw[16 * BS..16 * BS + 4096] == data[..], "the FUA write is in the file");
    d.stop();
}

/// Finding 6: a bdev with 1536-byte blocks was exported over NVMe-oF with
/// LBADS 9 (the host saw the wrong size). The bdev layer takes multiples of
/// 512 as SPDK's does; exports refuse what their protocol cannot describe.
#[test]
fn a_block_size_that_is_not_a_power_of_two_is_refused_by_exports() {
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    d.call("bdev_malloc_create", Some(json!({"name": "Odd", "num_blocks": 1024, "block_size": 1536}))).expect("a 1536-byte-block bdev");
    d.call("bdev_malloc_create", Some(json!({"name": "Huge", "num_blocks": 64, "block_size": 131072}))).expect("a 128 KiB-block bdev");
    let iscsi_port = free_port().to_string();
    d.call("iscsi_create_portal_group", Some(json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": iscsi_port}]}))).unwrap();
    d.call("iscsi_create_initiator_group", Some(json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"]}))).unwrap();
    for bdev in ["Odd", "Huge"] {
        let e = d
            .call("nvmf_subsystem_add_ns", Some(json!({"nqn": OPEN_NQN, "namespace": {"bdev_name": bdev}})))
            .expect_err("refused as a namespace");
        let msg = e.to_string();
        assert!(msg.contains("needs a power of two from 512 to 65536"), "{msg}");
        let e = d
            .call(
                "iscsi_create_target_node",
                Some(json!({"name": format!("odd-{bdev}"), "alias_name": "odd", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "luns": [{"bdev_name": bdev, "lun_id": 0}], "queue_depth": 8})),
            )
            .expect_err("refused as a LUN");
        assert!(e.to_string().contains("needs a power of two"), "{e}");
    }
    // Namespace 1 of the open subsystem is still the only one, with its LBADS.
    let (mut admin, _) = Client::admin(port, OPEN_NQN, 0, false, false);
    let (r, ns) = admin.identify(0, 1);
    assert!(r.ok());
    assert_eq!(ns[128 + 2], 9, "LBADS of the 512-byte namespace");
    let (r, _) = admin.identify(0, 2);
    assert!(r.ok(), "an inactive NSID answers zeroes");
    d.stop();
}

/// Interoperability: hosts (Linux's, SPDK's) may send a fresh host
/// identifier on each connection; the I/O queue is accepted, keyed on host
/// NQN and controller ID, and logged at INFO.
#[test]
fn an_io_queue_with_another_host_identifier_is_accepted() {
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    let (_admin, cntlid) = Client::admin(port, NQN, 0, false, false);
    let mut q = Client::connect(port);
    q.ic(false, false);
    let r = q.fabrics_connect_as(1, 63, cntlid, NQN, HOST_NQN, [0x22; 16], 0, 0);
    assert!(r.ok(), "{r:?}; log:\n{}", d.log());
    assert!(q.write(1, 0, &pattern(3, 512), BS, true).ok());
    assert!(d.log().contains("with host identifier 2222"), "logged; log:\n{}", d.log());
    // Another host NQN on the controller's I/O queue is still refused.
    let mut q = Client::connect(port);
    q.ic(false, false);
    assert!(!q.fabrics_connect_as(2, 63, cntlid, NQN, "nqn.2014-08.org.example:intruder", HOST_ID, 0, 0).ok());
    d.stop();
}

/// Interoperability: SPDK's host (spdk_nvme_perf without `hostnqn` in its
/// `-r` string) sends an empty host NQN; Linux's and SPDK's targets accept
/// it where any host is allowed. A subsystem with a host list still
/// refuses it.
#[test]
fn a_host_without_a_host_nqn_connects_where_any_host_is_allowed() {
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    let mut a = Client::connect(port);
    a.ic(false, false);
    let r = a.fabrics_connect_as(0, 31, 0xffff, OPEN_NQN, "", [0x33; 16], 10000, 0);
    assert!(r.ok(), "{r:?}; log:\n{}", d.log());
    let cntlid = r.dw0 as u16;
    assert!(a.property_set(0x14, 0x0046_0001).ok());
    let mut q = Client::connect(port);
    q.ic(false, false);
    assert!(q.fabrics_connect_as(1, 127, cntlid, OPEN_NQN, "", [0x33; 16], 10000, 0).ok());
    let data = pattern(4, 4096);
    assert!(q.write(1, 100, &data, BS, true).ok());
    let (c, back) = q.read(1, 100, 8, BS);
    assert!(c.ok() && back == data);
    let mut other = Client::connect(port);
    other.ic(false, false);
    assert_eq!(other.fabrics_connect_as(0, 31, 0xffff, NQN, "", [0x33; 16], 0, 0).sct_sc(), (1, 0x84));
    assert!(d.log().contains("a host with no host NQN"), "log:\n{}", d.log());
    d.stop();
}

/// Every refused Connect is logged with its reason at the default level.
#[test]
fn refused_connects_are_logged_with_their_reason() {
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    let attempt = |qid: u16, sqsize: u16, cntlid: u16, subnqn: &str, hostnqn: &str| {
        let mut c = Client::connect(port);
        c.ic(false, false);
        let r = c.fabrics_connect(qid, sqsize, cntlid, subnqn, hostnqn, 0);
        assert!(!r.ok(), "connect {qid}/{sqsize}/{cntlid}/{subnqn}/{hostnqn} should be refused");
    };
    attempt(0, 31, 0xffff, "nqn.2016-06.io.pollux:nothing-here", HOST_NQN);
    attempt(0, 31, 0xffff, NQN, "nqn.2014-08.org.example:stranger");
    attempt(0, 0, 0xffff, NQN, HOST_NQN);
    attempt(1, 31, 999, NQN, HOST_NQN);
    attempt(0, 31, 0xffff, "", HOST_NQN);
    let long = format!("nqn.2014-08.org.example:{}", "x".repeat(220));
    attempt(0, 31, 0xffff, NQN, &long);
    let log = d.log();
    for why in [
        "no subsystem nqn.2016-06.io.pollux:nothing-here",
        "the host is not allowed to use",
        "SQSIZE 0 outside",
        "controller 999",
        "empty subsystem NQN",
        "host NQN of 244 bytes",
    ] {
        assert!(log.lines().any(|l| l.contains("refused") && l.contains(why)), "no log line for {why:?}; log:\n{log}");
    }
    d.stop();
}

/// Identify Namespace reported ANAGRPID 1 while ANA is not reported
/// (CMIC bit 3 clear): it must be 0.
#[test]
fn anagrpid_is_zero_without_ana_reporting() {
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    let (mut a, _) = Client::admin(port, NQN, 0, false, false);
    let (r, ctrl) = a.identify(1, 0);
    assert!(r.ok());
    assert_eq!(ctrl[76] & (1 << 3), 0, "CMIC: no ANA reporting");
    let (r, ns) = a.identify(0, 1);
    assert!(r.ok());
    assert_eq!(u32::from_le_bytes(ns[92..96].try_into().unwrap()), 0, "ANAGRPID");
    d.stop();
}

/// CPU seconds the daemon used over a 3 s window.
fn cpu_over_window(d: &Daemon) -> f64 {
    let c0 = pollux_tests::cpu_seconds(d.pid());
    std::thread::sleep(std::time::Duration::from_secs(3));
    pollux_tests::cpu_seconds(d.pid()) - c0
}

/// A host that does not read while more than 8 MiB
/// of output is queued, and sends more, made its reactor spin: reading was
/// paused but the socket stayed level-triggered readable. Now the socket
/// is not watched for reading until the connection can read again (the
/// same when the receive buffer is full of commands waiting for slots).
#[test]
fn a_host_that_stops_reading_does_not_spin_its_reactor() {
    let port = free_port();
    let nqn = "nqn.2016-06.io.pollux:spin";
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Fast", "num_blocks": 65536, "block_size": BS}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": {"bdev_name": "Fast", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]});
    let d = Daemon::start(DaemonOpts { cpumask: "0x1".into(), interrupt_mode: true, config: Some(config), ..Default::default() });
    let reads = |bdev: &str| iostat(&d, bdev)["num_read_ops"].as_u64().unwrap();

    // 200 reads of 128 KiB (25 MiB of answers) never read by the host
    // (counted from what the bdev had read before: modules examining it).
    d.call("bdev_wait_for_examine", None).unwrap();
    let before = reads("Fast");
    let reads = |bdev: &str| reads(bdev) - before;
    let (_a, cntlid) = Client::admin(port, nqn, 0, false, false);
    let mut q = Client::io(port, nqn, cntlid, 1, false, false);
    // In one write, so that the target has them all before its output
    // passes the backlog limit and it stops reading (sent one by one, a
    // loaded machine could leave the last in the socket: "stalled at 199").
    let mut all = Vec::new();
    for i in 0..200u32 {
        let cid = q.cid();
        all.extend(q.capsule_bytes(&Sqe::new(0x02, cid).nsid(1).dw(10, i * 256 % 65280).dw(12, 255).sgl_transport(128 * 1024), &[]));
    }
    q.send_raw(&all);
    // Until all are answered: 25 MiB wait in the connection's output,
    // far above its 8 MiB backlog limit. Then more commands arrive, which
    // the target must leave unread until the host reads.
    let t0 = std::time::Instant::now();
    while reads("Fast") < 200 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "reads stalled at {}", reads("Fast"));
        std::thread::yield_now();
    }
    for _ in 0..50 {
        let cid = q.cid();
        q.send_capsule(&Sqe::new(0x02, cid).nsid(1).dw(12, 7).sgl_transport(4096), &[]);
    }
    let used = cpu_over_window(&d);
    assert!(used < 0.3, "the reactor used {used:.2} s of CPU in 3 s waiting for a host that does not read");
    assert_eq!(reads("Fast"), 200, "commands read while the host was not reading its answers");
    // A well-behaved host is served meanwhile.
    let (_a2, c2) = Client::admin(port, nqn, 0, false, false);
    let mut ok = Client::io(port, nqn, c2, 1, false, false);
    assert!(ok.write(1, 60000, &pattern(9, 4096), BS, true).ok());
    drop(q);
    d.stop();
}

/// A host that stops reading its answers must not hold the reactor's
/// data buffers: the queue keeps them while the host reads (no copy for a
/// reader that is only behind), and lets them go once it has read nothing
/// for a period of the group's timer (`sock::TxQueue::tick`). Here the
/// pool stays far from short (48 of 512 large buffers), so only the tick
/// can give them back; without it they stay out as long as the host does
/// not read. Then the host reads: every answer whole, in order.
#[test]
fn a_host_that_stops_reading_holds_no_data_buffers() {
    let port = free_port();
    let nqn = "nqn.2016-06.io.pollux:stalled";
    let config = json!({"subsystems": [
        {"subsystem": "iobuf", "config": [{"method": "iobuf_set_options", "params": {"large_pool_count": 512}}]},
        {"subsystem": "bdev", "config": [
            // A null bdev reads into pool buffers (it lends nothing).
            {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 131072, "block_size": BS}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": {"bdev_name": "Null0", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]});
    let d = Daemon::start(DaemonOpts { cpumask: "0x1".into(), config: Some(config), ..Default::default() });
    d.call("bdev_wait_for_examine", None).unwrap();
    let before = iostat(&d, "Null0")["num_read_ops"].as_u64().unwrap();
    let (_a, cntlid) = Client::admin(port, nqn, 0, false, false);
    let mut q = Client::io(port, nqn, cntlid, 1, false, false);
    // A small receive buffer, so that the answers cannot all fit in the
    // kernel's buffers whatever the machine's TCP limits.
    pollux_core::sock::set_int_option(&q.s, libc::SOL_SOCKET, libc::SO_RCVBUF, 64 << 10).unwrap();
    // 48 reads of 128 KiB (6 MiB of answers, under the 8 MiB backlog
    // limit, far more than the sockets hold), sent at once, never read.
    const N: u32 = 48;
    let mut all = Vec::new();
    let mut cids = Vec::new();
    for i in 0..N {
        let cid = q.cid();
        cids.push(cid);
        all.extend(q.capsule_bytes(&Sqe::new(0x02, cid).nsid(1).dw(10, i * 256).dw(12, 255).sgl_transport(128 * 1024), &[]));
    }
    q.send_raw(&all);
    let secs = std::time::Duration::from_secs;
    pollux_tests::wait_until("the reads", secs(30), || iostat(&d, "Null0")["num_read_ops"].as_u64().unwrap() - before >= u64::from(N));
    // Every buffer back in the pool while the answers wait unread.
    pollux_tests::wait_until("every large buffer back while the host does not read", secs(10), || {
        let (free, total) = d.large_buffers();
        free == total
    });
    // The host reads again: each read's 128 KiB and its completion.
    let mut done = Vec::new();
    let mut data = 0usize;
    while done.len() < N as usize {
        let p = q.recv().expect("an answer");
        match p.kind {
            C2H_DATA => {
                assert!(p.data.iter().all(|&b| b == 0), "a null bdev's read is zeroes");
                data += p.data.len();
                if p.flags & 0x08 != 0 {
                    done.push(u16::from_le_bytes([p.header[8], p.header[9]]));
                }
            }
            CAPSULE_RESP => {
                let c = p.cqe();
                assert!(c.ok(), "{c:?}");
                done.push(c.cid);
            }
            _ => panic!("unexpected PDU {p:?}"),
        }
    }
    assert_eq!(done, cids, "completions in the order of the reads");
    assert_eq!(data, N as usize * 128 * 1024);
    drop(q);
    d.stop();
}

/// Connections that never send ICReq or Connect, or
/// stop in the middle of a PDU, were kept forever (1,000 of them: +137 MiB).
/// They are closed after `connect_timeout_sec` (30 s unless set; 5 s
/// here), as iSCSI's logins are; a connected host is not.
#[test]
fn connections_that_never_connect_are_closed() {
    use std::io::{Read, Write};
    let port = free_port();
    let dir = TempDir::new("nvmf-hostile");
    let d = start(port, &dir);
    let mut idle: Vec<std::net::TcpStream> = Vec::new();
    for i in 0..30 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        match i % 3 {
            0 => {}
            1 => s.write_all(&[0u8, 0, 128, 0, 128, 0, 0, 0, 0, 0]).unwrap(), // part of an ICReq
            _ => {
                // A whole ICReq, then nothing.
                let mut b = vec![0u8; 128];
                b[2] = 128;
                b[4] = 128;
                s.write_all(&b).unwrap();
            }
        }
        idle.push(s);
    }
    // A connected controller (no keep alive) that stops in the middle of
    // a command capsule.
    let (mut stuck, _) = Client::admin(port, OPEN_NQN, 0, false, false);
    let cid = stuck.cid();
    let half = stuck.capsule_bytes(&Sqe::new(0x06, cid).dw(10, 1).sgl_transport(4096), &[]);
    stuck.send_raw(&half[..40]);
    idle.push(stuck.s);
    let (mut host, _) = Client::admin(port, OPEN_NQN, 0, false, false);
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(120))).unwrap();
        let mut b = [0u8; 256];
        // ICResp for those that sent ICReq, then the end of the stream.
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => panic!("connection {i} still open after 120 s: {e}"),
            }
        }
    }
    // The connected host, silent as long, is still served (no keep alive).
    let (r, _) = host.identify(1, 0);
    assert!(r.ok(), "{r:?}");
    let log = d.log();
    assert!(log.contains("no Connect within 5s") && log.contains("a PDU left unfinished within 5s"), "log:\n{log}");
    d.stop();
}
