//! Real iSCSI clients against Pollux: libiscsi's tools, QEMU's iSCSI block
//! driver, CHAP refused and accepted, SPDK's RPC client on the iscsi_*
//! methods; and a raw initiator that misbehaves while a well-behaved
//! session's data stays intact.

use std::process::Command;
use std::time::Duration;

use pollux_tests::iscsi_host::{self, RawConn, keys, target_iqn};
use pollux_tests::{TempDir, ok_stdout, spdk_rpc, tool};
use serde_json::{Value, json};

fn libiscsi(name: &str) -> std::path::PathBuf {
    tool(name, "libiscsi's tools: apt-get install libiscsi-bin")
}

fn two_targets(port: u16) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 16384, "block_size": 512}}
        ]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.0/8"]}},
            {"method": "iscsi_create_auth_group", "params": {"tag": 7, "secrets": [{"user": "alice", "secret": "alice-secret-1", "muser": "pollux", "msecret": "pollux-secret-2"}]}},
            {"method": "iscsi_create_target_node", "params": {"name": "open", "alias_name": "Open", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
                "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "queue_depth": 32}},
            {"method": "iscsi_create_target_node", "params": {"name": "secure", "alias_name": "Secure", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
                "luns": [{"bdev_name": "Malloc1", "lun_id": 0}], "queue_depth": 32, "require_chap": true, "chap_group": 7}}
        ]}
    ]})
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

#[test]
fn libiscsi_tools_qemu_chap_and_spdk_rpc_work() {
    let port = iscsi_host::free_port();
    let d = iscsi_host::start("0x3", two_targets(port));
    let open = iscsi_host::url(port, "open", None);

    // Discovery (SendTargets) lists both targets.
    let ls = ok_stdout("iscsi-ls", &run(Command::new(libiscsi("iscsi-ls")).arg(format!("iscsi://127.0.0.1:{port}"))));
    assert!(ls.contains(&format!("Target:{} Portal:127.0.0.1:{port},1", target_iqn("open"))) && ls.contains(&target_iqn("secure")), "{ls}");

    let inq = ok_stdout("iscsi-inq", &run(Command::new(libiscsi("iscsi-inq")).arg(&open)));
    assert!(inq.contains("Vendor:POLLUX") && inq.contains("Peripheral Device Type:DIRECT_ACCESS"), "{inq}");
    let vpd = ok_stdout("iscsi-inq VPD 0x83", &run(Command::new(libiscsi("iscsi-inq")).args(["-e", "1", "-c", "131"]).arg(&open)));
    assert!(
        vpd.contains("Designator Type:(3) NAA")
            && vpd.contains("T10_VENDORT_ID")
            && vpd.contains(&format!("[{},t,0x0001]", target_iqn("open"))),
        "{vpd}"
    );
    let cap = ok_stdout("iscsi-readcapacity16", &run(Command::new(libiscsi("iscsi-readcapacity16")).arg(&open)));
    assert!(cap.contains("Total size:67108864") && cap.contains("LBPME:1"), "{cap}");

    // QEMU's iSCSI block driver: info, write an image in, read it back.
    let qemu = tool("qemu-img", "QEMU's image tool with the iSCSI driver: apt-get install qemu-utils qemu-block-extra");
    let info = ok_stdout("qemu-img info", &run(Command::new(&qemu).args(["info", &open])));
    assert!(info.contains("virtual size: 64 MiB"), "{info}");
    let dir = TempDir::new("iscsi-qemu");
    let src = dir.join("in.raw");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    ok_stdout("qemu-img convert in", &run(Command::new(&qemu).args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&src).arg(&open)));
    let back = dir.join("out.raw");
    ok_stdout("qemu-img convert out", &run(Command::new(&qemu).args(["convert", "-f", "raw", "-O", "raw", &open]).arg(&back)));
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), 64 << 20);
    assert!(got[..data.len()] == data[..], "data read back through QEMU differs");

    // CHAP: the secure target refuses no or wrong credentials, takes the right ones.
    let inq = |auth: Option<(&str, &str)>| run(Command::new(libiscsi("iscsi-inq")).arg(iscsi_host::url(port, "secure", auth)));
    assert!(!inq(None).status.success(), "login without CHAP must fail");
    assert!(!inq(Some(("alice", "wrong-secret-1"))).status.success(), "a wrong CHAP secret must fail");
    assert!(!inq(Some(("mallory", "alice-secret-1"))).status.success(), "an unknown CHAP user must fail");
    let ok = ok_stdout("iscsi-inq with CHAP", &inq(Some(("alice", "alice-secret-1"))));
    assert!(ok.contains("Vendor:POLLUX"), "{ok}");

    // SPDK's client on the iscsi_* methods.
    let j = |args: &[&str]| -> Value { serde_json::from_str(&ok_stdout(&args.join(" "), &spdk_rpc(&d.socket, args))).unwrap() };
    let nodes = j(&["iscsi_get_target_nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");
    assert_eq!(nodes[1]["chap_group"], 7);
    assert_eq!(j(&["iscsi_get_portal_groups"])[0]["portals"][0]["port"], port.to_string());
    assert_eq!(j(&["iscsi_get_initiator_groups"])[0]["netmasks"][0], "127.0.0.0/8");
    assert_eq!(j(&["iscsi_get_auth_groups"])[0]["secrets"][0]["user"], "alice");
    assert_eq!(j(&["iscsi_get_options"])["node_base"], "iqn.2016-06.io.spdk");
    ok_stdout("create ig", &spdk_rpc(&d.socket, &["iscsi_create_initiator_group", "2", "iqn.x iqn.y", "10.0.0.0/8"]));
    ok_stdout("add lun", &spdk_rpc(&d.socket, &["bdev_malloc_create", "-b", "Malloc2", "8", "512"]));
    ok_stdout("add lun", &spdk_rpc(&d.socket, &["iscsi_target_node_add_lun", &target_iqn("open"), "Malloc2", "-i", "3"]));
    ok_stdout("set auth", &spdk_rpc(&d.socket, &["iscsi_target_node_set_auth", &target_iqn("open"), "-g", "7"]));
    ok_stdout("discovery auth", &spdk_rpc(&d.socket, &["iscsi_set_discovery_auth", "-g", "7"]));
    let bad = spdk_rpc(&d.socket, &["iscsi_create_portal_group", "1", "127.0.0.1:1"]);
    assert!(!bad.status.success(), "a duplicate portal group tag must be refused");
    let bad = spdk_rpc(&d.socket, &["iscsi_create_target_node", "x", "x", "Nope:0", "1:1", "8"]);
    assert!(!bad.status.success(), "a LUN on a missing bdev must be refused");
    let lun3 = format!("iscsi://127.0.0.1:{port}/{}/3", target_iqn("open"));
    let cap3 = ok_stdout("LUN 3", &run(Command::new(libiscsi("iscsi-readcapacity16")).arg(&lun3)));
    assert!(cap3.contains("Total size:8388608"), "{cap3}");
    let cfg = j(&["save_config"]);
    let iscsi = cfg["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "iscsi").unwrap();
    let methods: Vec<&str> = iscsi["config"].as_array().unwrap().iter().map(|c| c["method"].as_str().unwrap()).collect();
    for m in [
        "iscsi_set_options",
        "iscsi_set_discovery_auth",
        "iscsi_create_auth_group",
        "iscsi_create_portal_group",
        "iscsi_create_initiator_group",
        "iscsi_create_target_node",
    ] {
        assert!(methods.contains(&m), "{m} missing from save_config: {methods:?}");
    }
    // pollux-rpc takes rpc.py's forms too: a header-digest target on its own
    // portal group, reached with digests, and absent from the first group's
    // discovery.
    let port2 = iscsi_host::free_port();
    let prpc = |args: &[&str]| ok_stdout(&args.join(" "), &pollux_tests::pollux_rpc(&d.socket, args));
    prpc(&["iscsi_create_portal_group", "9", &format!("127.0.0.1:{port2}")]);
    prpc(&["iscsi_create_initiator_group", "9", "ANY", "127.0.0.1/32"]);
    prpc(&["bdev_malloc_create", "-b", "Malloc9", "8", "512"]);
    prpc(&["iscsi_create_target_node", "digest", "Digests", "Malloc9:0", "9:9", "16", "-H"]);
    prpc(&["bdev_malloc_create", "-b", "Malloc10", "8", "512"]);
    prpc(&["iscsi_create_target_node", "datadigest", "DataDigests", "Malloc10:0", "9:9", "16", "-D"]);
    prpc(&["iscsi_create_auth_group", "3", "-c", "user:u1 secret:s1 muser:m1 msecret:ms1,user:u2 secret:s2"]);
    assert!(prpc(&["iscsi_get_auth_groups"]).contains("\"msecret\": \"ms1\""));
    let ls9 = ok_stdout("discovery on pg 9", &run(Command::new(libiscsi("iscsi-ls")).arg(format!("iscsi://127.0.0.1:{port2}"))));
    assert!(ls9.contains(&target_iqn("digest")) && !ls9.contains(&target_iqn("open")), "{ls9}");
    let inq9 = ok_stdout("digests", &run(Command::new(libiscsi("iscsi-inq")).arg(iscsi_host::url(port2, "digest", None))));
    assert!(inq9.contains("Vendor:POLLUX"));
    // libiscsi offers no data digest: a target that requires one refuses it.
    let dd = run(Command::new(libiscsi("iscsi-inq")).arg(iscsi_host::url(port2, "datadigest", None)));
    assert!(!dd.status.success() && String::from_utf8_lossy(&dd.stderr).contains("Initiator error"), "{dd:?}");
    prpc(&["iscsi_delete_target_node", &target_iqn("digest")]);
    prpc(&["iscsi_delete_target_node", &target_iqn("datadigest")]);
    prpc(&["iscsi_delete_portal_group", "9"]);

    let conns = j(&["iscsi_get_connections"]);
    assert!(conns.as_array().unwrap().is_empty(), "{conns}");

    // The saved config rebuilds the same state in a fresh daemon.
    let saved = dir.join("saved.json");
    std::fs::write(&saved, serde_json::to_vec(&cfg).unwrap()).unwrap();
    drop(d);
    let d2 = iscsi_host::start("0x1", cfg);
    let nodes2: Value = serde_json::from_str(&ok_stdout("nodes", &spdk_rpc(&d2.socket, &["iscsi_get_target_nodes"]))).unwrap();
    assert_eq!(nodes2, nodes_with_lun3(&nodes));
    let inq2 = ok_stdout(
        "iscsi-inq after reload",
        &run(Command::new(libiscsi("iscsi-inq")).arg(iscsi_host::url(port, "open", Some(("alice", "alice-secret-1"))))),
    );
    assert!(inq2.contains("Vendor:POLLUX"));
}

/// `nodes` after the LUN, auth and discovery changes made above.
fn nodes_with_lun3(nodes: &Value) -> Value {
    let mut n = nodes.clone();
    n[0]["luns"].as_array_mut().unwrap().push(json!({"bdev_name": "Malloc2", "lun_id": 3}));
    n[0]["chap_group"] = json!(7);
    n
}

/// A raw login that expects success and returns the connection.
fn session(port: u16, initiator: &str, isid: u8) -> RawConn {
    let mut c = RawConn::connect(port);
    let r = c.login(initiator, Some(&target_iqn("robust")), isid);
    assert_eq!(r.opcode(), 0x23, "login response");
    assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "login status");
    c
}

#[test]
fn bad_initiators_lose_only_their_own_connection() {
    let port = iscsi_host::free_port();
    let d = iscsi_host::start("0x3", iscsi_host::config(port, "robust", 16, None));
    let mut good = session(port, "iqn.2025-01.io.pollux:good", 1);
    let pattern: Vec<u8> = (0..64 * 512).map(|i| (i % 251) as u8).collect();
    assert_eq!(good.write10(100, &pattern), Some(0));

    // 1. A non-login PDU before login: Login Reject-style refusal, then closed.
    let mut c = RawConn::connect(port);
    let mut h = [0u8; 48];
    h[0] = 0x01;
    c.send(h, &[]).unwrap();
    let r = c.recv().expect("an answer before the close");
    assert_eq!(r.opcode(), 0x23);
    assert_eq!(r.bhs[36], 2, "initiator error class");
    assert!(c.recv().is_none(), "connection closed");

    // 2. Garbage text in a login: refused.
    let mut c = RawConn::connect(port);
    let mut h = [0u8; 48];
    h[0] = 0x43;
    h[1] = 0x87;
    c.send(h, b"no-equals-sign\0\xff\xfe").unwrap();
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.bhs[36]), (0x23, 2));

    // 3. An unknown opcode in full feature phase: Reject, connection lives on.
    let mut c = session(port, "iqn.2025-01.io.pollux:odd", 2);
    let mut h = [0u8; 48];
    h[0] = 0x1c;
    h[16..20].copy_from_slice(&77u32.to_be_bytes());
    c.send(h, &[]).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.opcode(), 0x3f, "Reject");
    assert_eq!(r.bhs[2], 0x05, "command not supported");
    assert_eq!(&r.data[..48], &h[..], "the Reject carries the bad header");
    let (st, _) = c.read10(0, 1).expect("still usable");
    assert_eq!(st, 0);

    // 4. A CmdSN beyond the window is ignored; the next good one is answered.
    c.cmd_sn += 1000;
    let mut cdb = [0u8; 6];
    cdb[0] = 0x00;
    let hdr = c.scsi_header(&cdb, 0, false, false);
    c.send(hdr, &[]).unwrap();
    c.cmd_sn -= 1001;
    c.s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(c.recv().is_none(), "a command outside the window gets no answer");
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = session(port, "iqn.2025-01.io.pollux:odd2", 3);
    assert_eq!(c.read10(0, 1).unwrap().0, 0);

    // 5. A data segment above MaxRecvDataSegmentLength: Reject and close.
    let mut h = c.scsi_header(&[0x2a, 0, 0, 0, 0, 0, 0, 0x04, 0, 0], 1 << 20, false, true);
    let n = (1u32 << 20).to_be_bytes();
    h[5..8].copy_from_slice(&n[1..]);
    use std::io::Write;
    c.s.write_all(&h).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.opcode(), 0x3f);
    assert!(c.recv().is_none(), "connection closed after the Reject");

    // 6. A Data-Out out of sequence fails its command, not the connection.
    let mut c = session(port, "iqn.2025-01.io.pollux:seq", 4);
    let h = c.scsi_header(&[0x2a, 0, 0, 0, 0, 200, 0, 0, 2, 0], 1024, false, true);
    c.send(h, &[]).unwrap();
    let r2t = c.recv().unwrap();
    assert_eq!(r2t.opcode(), 0x31);
    let mut dout = [0u8; 48];
    dout[0] = 0x05;
    dout[1] = 0x80;
    dout[16..24].copy_from_slice(&r2t.bhs[16..24]);
    dout[36..40].copy_from_slice(&5u32.to_be_bytes()); // DataSN 5, not 0
    c.send(dout, &[0u8; 1024]).unwrap();
    let mut saw_reject = false;
    let status = loop {
        let p = c.recv().unwrap();
        match p.opcode() {
            0x3f => saw_reject = true,
            0x21 => break p.bhs[3],
            _ => {}
        }
    };
    assert!(saw_reject && status == 2, "Reject, then CHECK CONDITION");
    assert_eq!(c.read10(0, 1).unwrap().0, 0, "the connection goes on");

    // 7. A login flood and half-open connections: idle sockets and half a
    // header each, while the good session keeps working.
    let mut idle = Vec::new();
    for i in 0..60 {
        let mut s = RawConn::connect(port);
        if i % 2 == 0 {
            s.s.write_all(&[0x43, 0x87, 0, 0, 0, 0]).unwrap();
        }
        idle.push(s);
    }
    let (st, data) = good.read10(100, 64).unwrap();
    assert_eq!(st, 0);
    assert!(data == pattern, "data intact during the flood");

    // 8. An initiator that vanishes in the middle of a write.
    let mut v = session(port, "iqn.2025-01.io.pollux:vanish", 5);
    let h = v.scsi_header(&[0x2a, 0, 0, 0, 0, 100, 0, 0, 64, 0], 64 * 512, false, true);
    v.send(h, &[0xee; 8192]).unwrap();
    let r2t = v.recv().unwrap();
    assert_eq!(r2t.opcode(), 0x31);
    drop(v);
    drop(idle);
    // Until the target has noticed and closed the vanished connection.
    let t0 = std::time::Instant::now();
    while d
        .call("iscsi_get_connections", None)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["initiator_name"] == "iqn.2025-01.io.pollux:vanish")
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "the vanished initiator's connection was never closed");
        std::thread::yield_now();
    }
    // The aborted write never reached the medium; the good data is there.
    let (st, data) = good.read10(100, 64).unwrap();
    assert_eq!(st, 0);
    assert!(data == pattern, "the vanished initiator's partial write must not land");
    // New logins still work and the daemon is healthy.
    let mut again = session(port, "iqn.2025-01.io.pollux:later", 6);
    assert_eq!(again.read10(100, 1).unwrap().1, pattern[..512].to_vec());
    assert!(d.call("spdk_get_version", None).is_ok(), "the daemon is healthy");
    let _ = keys(&[]);
}

#[test]
fn nop_in_pings_find_dead_initiators_and_spare_live_ones() {
    let port = iscsi_host::free_port();
    let cfg = iscsi_host::config_with_options(port, "robust", 8, json!({"nop_in_interval": 1, "nop_timeout": 2}));
    let _d = iscsi_host::start("0x1", cfg);
    let mut dead = session(port, "iqn.2025-01.io.pollux:dead", 1);
    let mut live = session(port, "iqn.2025-01.io.pollux:live", 2);
    // The live initiator answers every NOP-In for a while.
    let t0 = std::time::Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        live.s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        if let Some(p) = live.recv() {
            if p.opcode() == 0x20 {
                assert_eq!(p.u32_at(16), 0xffff_ffff, "a target ping has no ITT");
                pings += 1;
                let mut h = [0u8; 48];
                h[0] = 0x40;
                h[1] = 0x80;
                h[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                h[20..24].copy_from_slice(&p.bhs[20..24]);
                h[24..28].copy_from_slice(&live.cmd_sn.to_be_bytes());
                live.send(h, &[]).unwrap();
            }
        }
    }
    assert!(pings >= 2, "pings seen: {pings}");
    live.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(live.read10(0, 1).unwrap().0, 0, "the answering initiator keeps its session");
    // The silent one got a ping and then lost its connection.
    dead.s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut got_ping = false;
    let closed = loop {
        match dead.recv() {
            Some(p) if p.opcode() == 0x20 => got_ping = true,
            Some(_) => {}
            None => break true,
        }
    };
    assert!(got_ping && closed, "ping then silence");
    // The target closes the socket (a read sees end of stream, not a timeout).
    use std::io::Read;
    dead.s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut b = [0u8; 64];
    let n = loop {
        match dead.s.read(&mut b) {
            Ok(n) if n > 0 => continue,
            other => break other,
        }
    };
    assert!(matches!(n, Ok(0)), "the silent initiator's connection is closed: {n:?}");
}
