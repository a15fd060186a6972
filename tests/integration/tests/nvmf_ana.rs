//! Asymmetric Namespace Access on the NVMe-oF target, over real sockets:
//! the Identify fields, the ANA log page (with and without RGO) through
//! each listener, the ANA change event, I/O through an inaccessible path
//! answered with the path status, I/O queues tied to their admin queue's
//! listener, the RPCs (SPDK's client among them) and save_config; then
//! Pollux's own host with two paths follows the states while a verify runs.

use std::time::Duration;

use pollux_tests::nvmf_client::*;
use pollux_tests::{
    Daemon, DaemonOpts, TempDir, clean_perf_run, ok_stdout, perf_command, pollux_rpc, set_listener_ana, spdk_rpc, wait_until,
};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:ana";
const PLAIN: &str = "nqn.2016-06.io.pollux:plain";
const BS: usize = 512;
const MAX_NS: u32 = 8;

fn listen(nqn: &str, port: u16) -> Value {
    json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})
}

/// Subsystem NQN with ANA reporting: namespace 1 in group 1, namespace 2
/// in group 5; listener `p1` optimized, `p2` non-optimized from the start.
/// PLAIN: the same without ANA.
fn start(p1: u16, p2: u16) -> Daemon {
    let mut second = listen(NQN, p2);
    second["ana_state"] = json!("non_optimized");
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 16384, "block_size": BS}},
            {"method": "bdev_malloc_create", "params": {"name": "M2", "num_blocks": 8192, "block_size": BS}},
            {"method": "bdev_malloc_create", "params": {"name": "M3", "num_blocks": 8192, "block_size": BS}},
        ]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true, "ana_reporting": true, "max_namespaces": MAX_NS, "serial_number": "ANA0001"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M1", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M2", "nsid": 2, "anagrpid": 5}}},
            {"method": "nvmf_subsystem_add_listener", "params": listen(NQN, p1)},
            {"method": "nvmf_subsystem_add_listener", "params": second},
            {"method": "nvmf_create_subsystem", "params": {"nqn": PLAIN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": PLAIN, "namespace": {"bdev_name": "M3", "nsid": 1}}},
            {"method": "nvmf_subsystem_add_listener", "params": listen(PLAIN, p1)},
        ]},
    ]});
    Daemon::start(DaemonOpts { cpumask: "0x3".into(), config: Some(config), ..Default::default() })
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Get Log Page 0Ch (`rgo`: Return Groups Only) of `len` bytes.
fn ana_log(c: &mut Client, rgo: bool, len: u32) -> (Cqe, Vec<u8>) {
    let cid = c.cid();
    let numd = len / 4 - 1;
    let cdw10 = 0x0c | (u32::from(rgo) << 8) | ((numd & 0xffff) << 16);
    c.command(Sqe::new(0x02, cid).dw(10, cdw10).dw(11, numd >> 16).sgl_transport(len), &[], false)
}

/// (change count, [(group, state, nsids)]) of an ANA log page.
fn parse(log: &[u8]) -> (u64, Vec<(u32, u8, Vec<u32>)>) {
    let groups = pollux_nvme_spec::ana::parse_log(log).expect("a well-formed ANA log");
    (u64::from_le_bytes(log[0..8].try_into().unwrap()), groups)
}

fn states(c: &mut Client) -> Vec<(u32, u8)> {
    let (r, log) = ana_log(c, true, 4096);
    assert!(r.ok(), "{r:?}");
    parse(&log).1.into_iter().map(|(g, s, _)| (g, s)).collect()
}

fn set_ana(d: &Daemon, port: u16, state: &str, grp: Option<u32>) -> Result<Value, String> {
    set_listener_ana(d, NQN, port, state, grp).map_err(|e| e.to_string())
}

#[test]
fn ana_states_reach_identify_log_events_and_io() {
    let (p1, p2) = (pollux_tests::free_port(), pollux_tests::free_port());
    let d = start(p1, p2);
    let (mut a, cntlid) = Client::admin(p1, NQN, 0, false, false);

    // Identify Controller: CMIC bit 3, OAES bit 11, ANATT, ANACAP
    // (optimized, non-optimized, inaccessible, group fixed while attached),
    // ANAGRPMAX = NANAGRPID = max_namespaces.
    let (r, id) = a.identify(1, 0);
    assert!(r.ok());
    assert_eq!(id[76] & (1 << 3), 1 << 3, "CMIC ANA reporting");
    assert_ne!(le32(&id, 92) & (1 << 11), 0, "OAES ANA change notices");
    assert_eq!(id[342], 10, "ANATT");
    assert_eq!(id[343], 0b0100_0111, "ANACAP");
    assert_eq!((le32(&id, 344), le32(&id, 348)), (MAX_NS, MAX_NS), "ANAGRPMAX, NANAGRPID");
    let (_, ns2) = a.identify(0, 2);
    assert_eq!(le32(&ns2, 92), 5, "ANAGRPID of namespace 2");

    // The log through each listener: the two groups in use, their states.
    let (r, log) = ana_log(&mut a, false, 4096);
    assert!(r.ok());
    let (count, groups) = parse(&log);
    assert_eq!(count, 0);
    assert_eq!(groups, vec![(1, 1, vec![1]), (5, 1, vec![2])]);
    let (r, short) = ana_log(&mut a, false, 16);
    assert!(r.ok());
    assert_eq!(u16::from_le_bytes(short[8..10].try_into().unwrap()), 2, "header alone: two descriptors");
    let (b, _) = Client::admin(p2, NQN, 0, false, false);
    let mut b = b;
    assert_eq!(states(&mut b), vec![(1, 2), (5, 2)], "the second listener is non-optimized");

    // An I/O queue of the controller from p1 may not come through p2.
    let mut stray = Client::connect(p2);
    stray.ic(false, false);
    let r = stray.fabrics_connect(1, 31, cntlid, NQN, HOST_NQN, 0);
    assert_eq!(r.sct_sc(), (1, 0x82), "I/O queue on another listener: {r:?}");

    // Asynchronous event, then group 5 of p1 inaccessible (SPDK's client).
    let mut io = Client::io(p1, NQN, cntlid, 1, false, false);
    let aer = a.cid();
    a.send_capsule(&Sqe::new(0x0c, aer), &[]);
    let out = spdk_rpc(
        &d.socket,
        &[
            "nvmf_subsystem_listener_set_ana_state",
            NQN,
            "-n",
            "inaccessible",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &p1.to_string(),
            "-f",
            "ipv4",
            "-g",
            "5",
        ],
    );
    ok_stdout("spdk-rpc nvmf_subsystem_listener_set_ana_state", &out);
    let ev = a.recv().expect("the ANA change event").cqe();
    assert_eq!((ev.cid, ev.dw0), (aer, 0x000c_0302), "notice, ANA change, log page 0Ch: {ev:?}");
    let (r, log) = ana_log(&mut a, false, 4096);
    assert!(r.ok());
    assert_eq!(parse(&log), (1, vec![(1, 1, vec![1]), (5, 3, vec![2])]));
    assert_eq!(states(&mut b), vec![(1, 2), (5, 2)], "p2 keeps its states");

    // I/O to namespace 2 through p1 now fails with ASYMMETRIC ACCESS
    // INACCESSIBLE (path status, no DNR); namespace 1 works; Identify
    // reports no capacity in use through this path.
    let data = vec![0x5au8; 4096];
    let r = io.write(2, 0, &data, BS, false);
    assert_eq!((r.sct_sc(), r.status & (1 << 14)), ((3, 0x02), 0), "{r:?}");
    let (r, _) = io.read(2, 0, 8, BS);
    assert_eq!(r.sct_sc(), (3, 0x02), "{r:?}");
    assert!(io.write(1, 0, &data, BS, false).ok());
    let (_, ns2) = a.identify(0, 2);
    assert_eq!(u64::from_le_bytes(ns2[16..24].try_into().unwrap()), 0, "NUSE through an inaccessible path");
    assert_eq!(u64::from_le_bytes(ns2[0..8].try_into().unwrap()), 8192, "NSZE stays");

    // Back to optimized for all groups: I/O works again, the event comes
    // again (the log was read, which unmasked it).
    let aer = a.cid();
    a.send_capsule(&Sqe::new(0x0c, aer), &[]);
    set_ana(&d, p1, "optimized", None).unwrap();
    let ev = a.recv().expect("the second ANA change event").cqe();
    assert_eq!(ev.dw0, 0x000c_0302);
    assert!(io.write(2, 0, &data, BS, false).ok());
    let (r, back) = io.read(2, 0, 8, BS);
    assert!(r.ok() && back == data);
    assert_eq!(states(&mut a), vec![(1, 1), (5, 1)]);
    // Setting what is already set changes nothing (no count, no event).
    set_ana(&d, p1, "optimized", Some(1)).unwrap();
    let (_, log) = ana_log(&mut a, false, 4096);
    assert_eq!(parse(&log).0, 2);

    // Namespace 2 moves to group 1: one group left in the log.
    ok_stdout("pollux-rpc nvmf_subsystem_set_ns_ana_group", &pollux_rpc(&d.socket, &["nvmf_subsystem_set_ns_ana_group", NQN, "2", "1"]));
    let (_, log) = ana_log(&mut a, false, 4096);
    assert_eq!(parse(&log).1, vec![(1, 1, vec![1, 2])]);
    let (_, ns2) = a.identify(0, 2);
    assert_eq!(le32(&ns2, 92), 1);
    let port = p1.to_string();
    let args = ["nvmf_subsystem_listener_set_ana_state", NQN, "-n", "inaccessible", "-t", "tcp", "-a", "127.0.0.1", "-s", &port, "-g", "1"];
    ok_stdout("pollux-rpc nvmf_subsystem_listener_set_ana_state", &pollux_rpc(&d.socket, &args));
    let (r, _) = io.read(2, 0, 8, BS);
    assert_eq!(r.sct_sc(), (3, 0x02), "the namespace follows its new group: {r:?}");
    set_ana(&d, p1, "optimized", Some(1)).unwrap();

    // RPC refusals, each naming the problem.
    for (state, grp, why) in
        [("change", None, "must be optimized"), ("optimized", Some(MAX_NS + 1), "anagrpid"), ("sideways", None, "must be optimized")]
    {
        let e = set_ana(&d, p1, state, grp).unwrap_err();
        assert!(e.contains(why), "{state} {grp:?}: {e}");
    }
    let e = set_ana(&d, pollux_tests::free_port(), "optimized", None).unwrap_err();
    assert!(e.contains("not found") || e.contains("listener"), "{e}");
    let mut plain = listen(PLAIN, p1);
    plain["ana_state"] = json!("inaccessible");
    let e = d.call("nvmf_subsystem_listener_set_ana_state", Some(plain)).unwrap_err().to_string();
    assert!(e.contains("ana_reporting"), "{e}");
    let e = d
        .call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "M3", "anagrpid": MAX_NS + 1}})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("anagrpid"), "{e}");
    let e = d.call("nvmf_subsystem_set_ns_ana_group", Some(json!({"nqn": NQN, "nsid": 2, "anagrpid": 0}))).unwrap_err().to_string();
    assert!(e.contains("anagrpid"), "{e}");

    // Without ANA reporting: no CMIC bit, ANAGRPID 0, no ANA log page.
    let (mut c, _) = Client::admin(p1, PLAIN, 0, false, false);
    let (_, id) = c.identify(1, 0);
    assert_eq!(id[76] & (1 << 3), 0);
    let (r, _) = ana_log(&mut c, false, 4096);
    assert_eq!(r.sct_sc(), (1, 0x09), "invalid log page: {r:?}");

    // The listeners show their states; save_config keeps them.
    set_ana(&d, p1, "inaccessible", Some(5)).unwrap();
    let l = d.call("nvmf_subsystem_get_listeners", Some(json!({"nqn": NQN}))).unwrap();
    let of = |port: u16| {
        let svc = json!(port.to_string());
        l.as_array().unwrap().iter().find(|x| x["address"]["trsvcid"] == svc).unwrap().clone()
    };
    assert_eq!(of(p1)["ana_states"].as_array().unwrap().len(), MAX_NS as usize);
    assert_eq!(of(p1)["ana_states"][4], json!({"ana_group": 5, "ana_state": "inaccessible"}));
    assert_eq!(of(p2)["ana_states"][0], json!({"ana_group": 1, "ana_state": "non_optimized"}));
    let saved: Value = serde_json::from_str(&ok_stdout("spdk-rpc save_config", &spdk_rpc(&d.socket, &["save_config"]))).unwrap();
    let nvmf = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap()["config"].clone();
    let calls: Vec<&Value> = nvmf.as_array().unwrap().iter().collect();
    let create = calls.iter().find(|c| c["method"] == "nvmf_create_subsystem" && c["params"]["nqn"] == NQN).unwrap();
    assert_eq!(create["params"]["ana_reporting"], true);
    let add2 = calls
        .iter()
        .find(|c| c["method"] == "nvmf_subsystem_add_listener" && c["params"]["listen_address"]["trsvcid"] == json!(p2.to_string()))
        .unwrap();
    assert_eq!(add2["params"]["ana_state"], "non_optimized");
    let set5: Vec<_> = calls.iter().filter(|c| c["method"] == "nvmf_subsystem_listener_set_ana_state").collect();
    assert_eq!(set5.len(), 1, "{nvmf}");
    assert_eq!((set5[0]["params"]["anagrpid"].clone(), set5[0]["params"]["ana_state"].clone()), (json!(5), json!("inaccessible")));

    // A new daemon from that config has the same states.
    drop((a, b, io, c, stray));
    assert_eq!(d.stop().code(), Some(0));
    let d2 = Daemon::start(DaemonOpts { cpumask: "0x1".into(), config: Some(saved), ..Default::default() });
    let l2 = d2.call("nvmf_subsystem_get_listeners", Some(json!({"nqn": NQN}))).unwrap();
    assert_eq!(l2, l, "the listeners and states after a restart from save_config");
    assert_eq!(d2.stop().code(), Some(0));
}

/// Pollux's host attaches the subsystem through both listeners as two
/// paths; the target flips their states by RPC while a verify runs, and
/// no request fails.
#[test]
fn pollux_host_follows_the_target_ana_states_without_errors() {
    let (p1, p2) = (pollux_tests::free_port(), pollux_tests::free_port());
    let d = start(p1, p2);
    set_ana(&d, p2, "optimized", None).unwrap();
    let attach = |port: u16, multipath: bool| {
        let mut p = json!({"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": port.to_string(), "subnqn": NQN});
        if multipath {
            p["multipath"] = json!("multipath");
        }
        p
    };
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_nvme_attach_controller", Some(attach(p1, false))).unwrap();
    host.call("bdev_nvme_attach_controller", Some(attach(p2, true))).unwrap();
    let paths = |h: &Daemon| -> Vec<(String, String)> {
        let b = h.call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"}))).unwrap();
        let mut v: Vec<(String, String)> = b[0]["driver_specific"]["nvme"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["trid"]["trsvcid"].as_str().unwrap().to_string(), p["ns_data"]["ana_state"].as_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    let want = |a: &str, b: &str| {
        let mut v = vec![(p1.to_string(), a.to_string()), (p2.to_string(), b.to_string())];
        v.sort();
        v
    };
    wait_until("both paths optimized", Duration::from_secs(60), || paths(&host) == want("optimized", "optimized"));
    set_ana(&d, p1, "inaccessible", None).unwrap();
    wait_until("the host sees p1 inaccessible", Duration::from_secs(60), || paths(&host) == want("inaccessible", "optimized"));
    set_ana(&d, p1, "optimized", None).unwrap();
    wait_until("the host sees p1 optimized", Duration::from_secs(60), || paths(&host) == want("optimized", "optimized"));
    assert_eq!(host.stop().code(), Some(0));

    // A verify across the two paths while each in turn becomes
    // inaccessible and comes back.
    let dir = TempDir::new("nvmf-ana");
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": attach(p1, false)},
        {"method": "bdev_nvme_attach_controller", "params": attach(p2, true)}]}]});
    let perf = perf_command(&dir, &cfg, &["-b", "Nvme0n1", "-q", "16", "-o", "4096", "-w", "verify", "-t", "6", "-m", "0x1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pollux-perf");
    let writes = || d.call("bdev_get_iostat", Some(json!({"name": "M1"}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap();
    for port in [p1, p2, p1] {
        let w0 = writes();
        wait_until("writes from the verify", Duration::from_secs(60), || writes() > w0 + 200);
        set_ana(&d, port, "inaccessible", None).unwrap();
        let w1 = writes();
        wait_until("writes through the other path", Duration::from_secs(60), || writes() > w1 + 500);
        set_ana(&d, port, "optimized", None).unwrap();
    }
    let (r, _) = clean_perf_run(perf);
    assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{r}");
    assert!(!d.log().contains("panicked"));
    assert_eq!(d.stop().code(), Some(0));
}
