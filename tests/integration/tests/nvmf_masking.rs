//! Namespace masking on the NVMe-oF target (SPDK's `no_auto_visible`,
//! `nvmf_ns_add_host`, `nvmf_ns_remove_host`), over real sockets with two
//! hosts: a namespace only the hosts on its list see (Identify, the active
//! list, descriptors, the ANA log, I/O and reservations), the namespace
//! attribute notice to the host whose view changed and to no other, SPDK's
//! client and ours, `nvmf_get_subsystems`, `save_config` loaded into a fresh
//! target, and a removal that answers only once the host's commands at the
//! bdev are done.

use std::time::Duration;

use pollux_tests::nvmf_client::*;
use pollux_tests::{Daemon, DaemonOpts, ok_stdout, pollux_rpc, spdk_rpc};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:masked";
const BS: usize = 512;
const HOST_A: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-4000-8000-00000000000a";
const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-4000-8000-00000000000b";
/// How long the delay bdev under namespace 2 holds each command.
const DELAY_US: u64 = 2_000_000;

fn config(port: u16) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 4096, "block_size": BS}},
            {"method": "bdev_malloc_create", "params": {"name": "M2", "num_blocks": 8192, "block_size": BS}},
            {"method": "bdev_delay_create", "params": {"name": "Slow2", "base_bdev_name": "M2", "avg_read_latency": 0, "p99_read_latency": 0,
                "avg_write_latency": 0, "p99_write_latency": 0}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "ana_reporting": true, "max_namespaces": 4}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M1", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Slow2", "nsid": 2, "no_auto_visible": true}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
        ]},
    ]})
}

/// A host: its admin queue (namespace and ANA notices on, one AER posted) and one
/// I/O queue.
struct Host {
    admin: Client,
    io: Client,
    aer: u16,
}

impl Host {
    fn connect(port: u16, hostnqn: &str, hostid: u8) -> Host {
        let mut admin = Client::connect(port);
        admin.ic(false, false);
        let r = admin.fabrics_connect_as(0, 31, 0xffff, NQN, hostnqn, [hostid; 16], 0, 0);
        assert!(r.ok(), "{r:?}");
        let cntlid = r.dw0 as u16;
        assert!(admin.property_set(0x14, 0x0046_0001).ok());
        let cid = admin.cid();
        let notices = 1 << 8 | 1 << 11;
        assert!(admin.command(Sqe::new(0x09, cid).dw(10, 0x0b).dw(11, notices), &[], false).0.ok(), "namespace and ANA notices on");
        let mut io = Client::connect(port);
        io.ic(false, false);
        assert!(io.fabrics_connect_as(1, 63, cntlid, NQN, hostnqn, [hostid; 16], 0, 0).ok());
        let mut h = Host { admin, io, aer: 0 };
        h.post_aer();
        h
    }

    fn post_aer(&mut self) {
        self.aer = self.admin.cid();
        self.admin.send_capsule(&Sqe::new(0x0c, self.aer), &[]);
    }

    /// The namespace notice arrived; the changed list names `nsid`; a new
    /// AER is posted. `ana`: an ANA change notice follows (the host's
    /// view changed: its ANA log lists other namespaces); the log is read.
    fn expect_notice(&mut self, nsid: u32, ana: bool, what: &str) {
        let ev = self.admin.recv().unwrap_or_else(|| panic!("{what}: no event")).cqe();
        assert_eq!((ev.cid, ev.dw0), (self.aer, 0x0004_0002), "{what}: notice, namespace attribute changed, log page 04h");
        let cid = self.admin.cid();
        let (r, log) = self.admin.command(Sqe::new(0x02, cid).dw(10, 0x04 | (1023 << 16)).sgl_transport(4096), &[], false);
        assert!(r.ok(), "{what}: {r:?}");
        assert_eq!(u32::from_le_bytes(log[0..4].try_into().unwrap()), nsid, "{what}: changed namespace list");
        assert_eq!(u32::from_le_bytes(log[4..8].try_into().unwrap()), 0, "{what}: one entry");
        self.post_aer();
        if ana {
            let ev = self.admin.recv().unwrap_or_else(|| panic!("{what}: no ANA event")).cqe();
            assert_eq!((ev.cid, ev.dw0), (self.aer, 0x000c_0302), "{what}: notice, ANA change, log page 0Ch");
            self.ana_nsids();
            self.post_aer();
        }
    }

    /// No event is waiting: the next completion on the admin queue is a
    /// Keep Alive's (events are queued before the RPC that raised them
    /// answers).
    fn expect_no_notice(&mut self, what: &str) {
        let cid = self.admin.cid();
        self.admin.send_capsule(&Sqe::new(0x18, cid), &[]);
        let c = self.admin.recv().expect("keep alive").cqe();
        assert_eq!(c.cid, cid, "{what}: an event came first: {c:?}");
    }

    fn active(&mut self) -> Vec<u32> {
        let (r, list) = self.admin.identify(2, 0);
        assert!(r.ok(), "{r:?}");
        list.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).take_while(|&n| n != 0).collect()
    }

    /// NSZE of Identify Namespace (0: inactive).
    fn nsze(&mut self, nsid: u32) -> u64 {
        let (r, id) = self.admin.identify(0, nsid);
        assert!(r.ok(), "{r:?}");
        u64::from_le_bytes(id[0..8].try_into().unwrap())
    }

    /// The NSIDs of the ANA log page's descriptors.
    fn ana_nsids(&mut self) -> Vec<u32> {
        let cid = self.admin.cid();
        let (r, log) = self.admin.command(Sqe::new(0x02, cid).dw(10, 0x0c | (1023 << 16)).sgl_transport(4096), &[], false);
        assert!(r.ok(), "{r:?}");
        pollux_nvme_spec::ana::parse_log(&log).expect("ANA log").into_iter().flat_map(|(_, _, n)| n).collect()
    }

    fn write(&mut self, nsid: u32, fill: u8) -> (u8, u8) {
        self.io.write(nsid, 0, &[fill; BS], BS, true).sct_sc()
    }

    fn read(&mut self, nsid: u32) -> ((u8, u8), Vec<u8>) {
        let (r, data) = self.io.read(nsid, 0, 1, BS);
        (r.sct_sc(), data)
    }

    /// Get Features Reservation Persistence (83h) of namespace `nsid`.
    fn ptpl(&mut self, nsid: u32) -> ((u8, u8), u32) {
        let cid = self.admin.cid();
        let (r, _) = self.admin.command(Sqe::new(0x0a, cid).nsid(nsid).dw(10, 0x83), &[], false);
        (r.sct_sc(), r.dw0)
    }

    /// Reservation Register with a new key.
    fn register(&mut self, nsid: u32) -> (u8, u8) {
        let cid = self.io.cid();
        let data: Vec<u8> = [0u64, 0x77].iter().flat_map(|k| k.to_le_bytes()).collect();
        self.io.command(Sqe::new(0x0d, cid).nsid(nsid).sgl_in_capsule(16), &data, true).0.sct_sc()
    }
}

const OK: (u8, u8) = (0, 0);
const INVALID_NS: (u8, u8) = (0, 0x0b);

/// Every write to namespace 2 takes `us` (p99 first when it goes up: it
/// may not be below the average).
fn set_write_delay(d: &Daemon, us: u64) {
    let order = if us > 0 { ["p99_write", "avg_write"] } else { ["avg_write", "p99_write"] };
    for kind in order {
        d.call("bdev_delay_update_latency", Some(json!({"delay_bdev_name": "Slow2", "latency_type": kind, "latency_us": us}))).unwrap();
    }
}

fn rpc_err(d: &Daemon, method: &str, params: Value) -> String {
    d.call(method, Some(params)).expect_err("refused").to_string()
}

#[test]
fn a_masked_namespace_is_seen_only_by_the_hosts_on_its_list() {
    let port = pollux_tests::free_port();
    let d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(config(port)), ..Default::default() });
    let mut a = Host::connect(port, HOST_A, 0xa);
    let mut b = Host::connect(port, HOST_B, 0xb);

    // Nobody sees namespace 2 yet.
    for (h, who) in [(&mut a, "A"), (&mut b, "B")] {
        assert_eq!(h.active(), vec![1], "{who}: active namespaces");
        assert_eq!(h.nsze(2), 0, "{who}: namespace 2 reads as inactive");
        assert_ne!(h.nsze(1), 0);
        let (r, _) = h.admin.identify(3, 2);
        assert_eq!(r.sct_sc(), INVALID_NS, "{who}: descriptors of a namespace it does not see");
        assert_eq!(h.ana_nsids(), vec![1], "{who}: the ANA log lists what it sees");
        assert_eq!(h.write(2, 1), INVALID_NS, "{who}: write");
        assert_eq!(h.read(2).0, INVALID_NS, "{who}: read");
        assert_eq!(h.register(2), INVALID_NS, "{who}: reservation");
        assert_eq!(h.ptpl(2).0, INVALID_NS, "{who}: Get Features Reservation Persistence");
        assert_eq!(h.write(1, 1), OK);
    }

    // Refusals name their reason.
    let e = rpc_err(&d, "nvmf_ns_add_host", json!({"nqn": NQN, "nsid": 1, "host": HOST_A}));
    assert!(e.contains("visible to every host"), "{e}");
    let e = rpc_err(&d, "nvmf_ns_add_host", json!({"nqn": NQN, "nsid": 3, "host": HOST_A}));
    assert!(e.contains("namespace 3"), "{e}");
    let e = rpc_err(&d, "nvmf_ns_add_host", json!({"nqn": NQN, "nsid": 2, "host": "not-an-nqn"}));
    assert!(e.contains("invalid NQN"), "{e}");
    let e = rpc_err(&d, "nvmf_ns_remove_host", json!({"nqn": "nqn.2016-06.io.pollux:none", "nsid": 2, "host": HOST_A}));
    assert!(e.contains("not found"), "{e}");

    // SPDK's client shows it to A: A hears of it and uses it, B neither.
    ok_stdout("spdk-rpc nvmf_ns_add_host", &spdk_rpc(&d.socket, &["nvmf_ns_add_host", NQN, "2", HOST_A]));
    a.expect_notice(2, true, "A, added");
    b.expect_no_notice("B, when A was added");
    assert_eq!(a.active(), vec![1, 2]);
    assert_eq!(a.nsze(2), 8192);
    assert_eq!(a.ana_nsids(), vec![1, 2]);
    let (r, _) = a.admin.identify(3, 2);
    assert!(r.ok(), "{r:?}");
    assert_eq!(a.write(2, 0x2a), OK);
    let (r, data) = a.read(2);
    assert_eq!((r, data[0]), (OK, 0x2a));
    assert_eq!(a.register(2), OK, "A registers");
    assert_eq!(a.ptpl(2), (OK, 0), "A: Get Features Reservation Persistence");
    assert_eq!(b.active(), vec![1]);
    assert_eq!(b.read(2).0, INVALID_NS);
    // Adding it again changes nothing, and tells nobody.
    ok_stdout("spdk-rpc nvmf_ns_add_host", &spdk_rpc(&d.socket, &["nvmf_ns_add_host", NQN, "2", HOST_A]));
    a.expect_no_notice("A, added twice");

    // A second controller of A sees it from the start.
    let mut a2 = Host::connect(port, HOST_A, 0xa);
    assert_eq!(a2.active(), vec![1, 2]);

    // The RPC listing and save_config carry the list.
    let subs = d.call("nvmf_get_subsystems", None).unwrap();
    let s = subs.as_array().unwrap().iter().find(|s| s["nqn"] == NQN).unwrap();
    let ns2 = s["namespaces"].as_array().unwrap().iter().find(|n| n["nsid"] == 2).unwrap().clone();
    assert_eq!((ns2["no_auto_visible"].clone(), ns2["hosts"].clone()), (json!(true), json!([{"nqn": HOST_A}])), "{ns2}");
    let ns1 = s["namespaces"].as_array().unwrap().iter().find(|n| n["nsid"] == 1).unwrap().clone();
    assert_eq!(ns1["no_auto_visible"], json!(false), "{ns1}");
    let saved: Value = serde_json::from_str(&ok_stdout("save_config", &spdk_rpc(&d.socket, &["save_config"]))).unwrap();
    let nvmf = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap()["config"].clone();
    let calls: Vec<&Value> = nvmf.as_array().unwrap().iter().collect();
    let add_ns = calls.iter().find(|c| c["method"] == "nvmf_subsystem_add_ns" && c["params"]["namespace"]["nsid"] == 2).expect("add_ns 2");
    assert_eq!(add_ns["params"]["namespace"]["no_auto_visible"], json!(true));
    let grants: Vec<&Value> = calls.iter().filter(|c| c["method"] == "nvmf_ns_add_host").map(|c| &c["params"]).collect();
    assert_eq!(grants, vec![&json!({"nqn": NQN, "nsid": 2, "host": HOST_A})]);
    {
        let port2 = pollux_tests::free_port();
        let mut cfg = saved.clone();
        for s in cfg["subsystems"].as_array_mut().unwrap() {
            if s["subsystem"] == "nvmf" {
                for c in s["config"].as_array_mut().unwrap() {
                    if c["method"] == "nvmf_subsystem_add_listener" {
                        c["params"]["listen_address"]["trsvcid"] = json!(port2.to_string());
                    }
                }
            }
        }
        let d2 = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
        assert_eq!(Host::connect(port2, HOST_A, 0xa).active(), vec![1, 2], "A, after load_config");
        assert_eq!(Host::connect(port2, HOST_B, 0xb).active(), vec![1], "B, after load_config");
        assert_eq!(d2.stop().code(), Some(0));
    }

    // Our client hides it from A again. The removal answers only once A's
    // write already at the (slow) bdev is done: with namespace 2 at 2 s
    // a command, the slow bdev has completed the write when the RPC
    // returns. A read of namespace 1 behind the write on the same queue
    // shows the write has reached the bdev. The same call again while the
    // first waits (a client that timed out and retried) changes nothing,
    // and answers no sooner.
    set_write_delay(&d, DELAY_US);
    let slow_writes = || d.call("bdev_get_iostat", Some(json!({"name": "Slow2"}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap();
    let w0 = slow_writes();
    let w = a.io.cid();
    let sqe = Sqe::new(0x01, w).nsid(2).dw(12, 0).sgl_in_capsule(BS as u32);
    a.io.send_capsule(&sqe, &[0x3c; BS]);
    let (r, _) = a.io.read(1, 0, 1, BS);
    assert!(r.ok(), "{r:?}");
    let remove = ["nvmf_ns_remove_host", NQN, "2", HOST_A];
    let sock = d.socket.clone();
    let first = std::thread::spawn(move || pollux_rpc(&sock, &remove));
    pollux_tests::wait_until("the first removal under way", Duration::from_secs(30), || d.log().contains("hidden from host"));
    ok_stdout("pollux-rpc nvmf_ns_remove_host, again", &pollux_rpc(&d.socket, &remove));
    // (Without the wait the write would end about 2 s after it began, long
    // after the RPC; with it, the slow bdev has completed it, and counted
    // it, before the RPC's answer. Its answer on A's socket may follow: A's
    // connection may be on the other reactor.)
    assert_eq!(slow_writes(), w0 + 1, "the write at the bdev had not completed when the removal answered");
    let done = a.io.recv().expect("the write's completion").cqe();
    assert_eq!((done.cid, done.sct_sc()), (w, OK), "{done:?}");
    ok_stdout("pollux-rpc nvmf_ns_remove_host", &first.join().unwrap());
    a.expect_notice(2, true, "A, removed");
    a2.expect_notice(2, true, "A's second controller, removed");
    b.expect_no_notice("B, when A was removed");
    assert_eq!(a.active(), vec![1]);
    assert_eq!(a.nsze(2), 0);
    assert_eq!(a.write(2, 1), INVALID_NS);
    assert_eq!(a2.read(2).0, INVALID_NS);
    assert_eq!(a.register(2), INVALID_NS, "reservations follow sight too");
    // Removing it again: nothing to do, nobody told.
    ok_stdout("pollux-rpc nvmf_ns_remove_host", &pollux_rpc(&d.socket, &["nvmf_ns_remove_host", NQN, "2", HOST_A]));
    a.expect_no_notice("A, removed twice");

    // B now: it sees the data A wrote.
    set_write_delay(&d, 0);
    d.call("nvmf_ns_add_host", Some(json!({"nqn": NQN, "nsid": 2, "host": HOST_B}))).unwrap();
    b.expect_notice(2, true, "B, added");
    a.expect_no_notice("A, when B was added");
    let (r, data) = b.read(2);
    assert_eq!((r, data[0]), (OK, 0x3c), "B reads what A wrote last");

    // The namespace removed: only B, who saw it, hears of it.
    ok_stdout("spdk-rpc nvmf_subsystem_remove_ns", &spdk_rpc(&d.socket, &["nvmf_subsystem_remove_ns", NQN, "2"]));
    b.expect_notice(2, false, "B, namespace removed");
    a.expect_no_notice("A, namespace removed");
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}
