//! Regression tests for faults found by hostile testing of the iSCSI
//! target (docs/reliability.md): each sends the same bytes over a real socket to a
//! running daemon, then checks that the daemon still serves a fresh client
//! with the right data.

use pollux_tests::iscsi_host::{self, RawConn, RawPdu, keys, sense_of, target_iqn};
use pollux_tests::{Daemon, rss_bytes};
use proptest::prelude::*;
use serde_json::{Value, json};

const OPEN: &str = "open";
const CHAP: &str = "chap";
const CHAP_USER: &str = "hostile-user";
const CHAP_SECRET: &str = "hostile-secret-1";
const LUN_MIB: u64 = 32;

/// Two targets on two reactors: `open` (no CHAP configured) and `chap`
/// (CHAP required), each with its own 32 MiB malloc LUN.
fn start() -> (Daemon, u16) {
    let port = iscsi_host::free_port();
    let target = |name: &str, bdev: &str, chap: bool| {
        let mut t = json!({"name": name, "alias_name": name, "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
            "luns": [{"bdev_name": bdev, "lun_id": 0}], "queue_depth": 64});
        if chap {
            t["chap_group"] = json!(1);
            t["require_chap"] = json!(true);
        }
        json!({"method": "iscsi_create_target_node", "params": t})
    };
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Open0", "num_blocks": LUN_MIB * 2048, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "Chap0", "num_blocks": 2048, "block_size": 512}}
        ]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/8"]}},
            {"method": "iscsi_create_auth_group", "params": {"tag": 1, "secrets": [{"user": CHAP_USER, "secret": CHAP_SECRET}]}},
            target(OPEN, "Open0", false),
            target(CHAP, "Chap0", true)
        ]}
    ]});
    (iscsi_host::start("0x3", cfg), port)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 512) as u8).wrapping_mul(7).wrapping_add((i as u8).wrapping_mul(31)).wrapping_add(seed)).collect()
}

/// A Login Request with these flags (T, C, CSG, NSG) and keys.
fn login_pdu(c: &mut RawConn, flags: u8, kv: &[(&str, &str)]) -> RawPdu {
    let mut h = [0u8; 48];
    h[0] = 0x40 | 0x03;
    h[1] = flags;
    h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x42]);
    h[16..20].copy_from_slice(&1u32.to_be_bytes());
    h[24..28].copy_from_slice(&1u32.to_be_bytes());
    c.send(h, &keys(kv)).expect("send login");
    c.recv().expect("login response")
}

fn text_keys(p: &RawPdu) -> Vec<(String, String)> {
    p.data
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn key(p: &RawPdu, k: &str) -> Option<String> {
    text_keys(p).into_iter().find(|(x, _)| x == k).map(|(_, v)| v)
}

/// Status class and detail of a Login Response.
fn login_status(p: &RawPdu) -> (u8, u8) {
    assert_eq!(p.opcode(), 0x23, "a Login Response");
    (p.bhs[36], p.bhs[37])
}

/// The daemon answers RPC, and a fresh initiator logs in to the open
/// target and reads back what it writes.
fn still_serves(d: &Daemon, port: u16, seed: u8) {
    d.call("iscsi_get_connections", None).unwrap_or_else(|e| panic!("the daemon stopped answering: {e}; log:\n{}", d.log()));
    let mut c = RawConn::connect(port);
    let r = c.login(&format!("iqn.2025-01.io.pollux:checker-{seed}"), Some(&target_iqn(OPEN)), seed);
    assert_eq!(login_status(&r), (0, 0), "a fresh login after the hostile client; log:\n{}", d.log());
    let data = pattern(seed, 8192);
    assert_eq!(c.write10(1000 + u32::from(seed) * 16, &data), Some(0));
    let (st, back) = c.read10(1000 + u32::from(seed) * 16, 16).expect("read back");
    assert_eq!(st, 0);
    assert!(back == data, "data read back differs");
}

/// Security negotiation up to the CHAP challenge on target `chap`.
fn chap_challenge(c: &mut RawConn) -> (u8, Vec<u8>) {
    let r = login_pdu(
        c,
        0,
        &[
            ("InitiatorName", "iqn.2025-01.io.pollux:hostile"),
            ("SessionType", "Normal"),
            ("TargetName", &target_iqn(CHAP)),
            ("AuthMethod", "CHAP"),
        ],
    );
    assert_eq!((login_status(&r), key(&r, "AuthMethod").as_deref()), ((0, 0), Some("CHAP")));
    let r = login_pdu(c, 0, &[("CHAP_A", "5")]);
    assert_eq!(login_status(&r), (0, 0));
    let id: u8 = key(&r, "CHAP_I").expect("CHAP_I").parse().expect("CHAP_I number");
    let ch = key(&r, "CHAP_C").expect("CHAP_C");
    let ch = (2..ch.len()).step_by(2).map(|i| u8::from_str_radix(&ch[i..i + 2], 16).unwrap()).collect();
    (id, ch)
}

/// Finding 1: a CHAP_R of `0x` and a multi-byte UTF-8 character made the
/// target slice a string inside a character, before any authentication:
/// the reactor panicked and the process aborted.
#[test]
fn a_chap_response_with_multibyte_characters_fails_the_login_not_the_daemon() {
    let (d, port) = start();
    for bad in ["0x\u{e9}0", "0x\u{20ac}", "0x0\u{e9}", "0b\u{20ac}AAA", "0x"] {
        let mut c = RawConn::connect(port);
        chap_challenge(&mut c);
        let r = login_pdu(&mut c, 0x80 | 1, &[("CHAP_N", CHAP_USER), ("CHAP_R", bad)]);
        assert_eq!(login_status(&r), (2, 1), "authentication failure for CHAP_R={bad:?}");
        assert!(c.recv().is_none(), "the connection closes after a failed login");
    }
    assert!(d.log().contains("is not a hex or base64 value"), "the refusal is logged with its reason; log:\n{}", d.log());
    // The right answer still logs in.
    let mut c = RawConn::connect(port);
    let (id, ch) = chap_challenge(&mut c);
    let mut h = md5_response(id, CHAP_SECRET.as_bytes(), &ch);
    h.insert_str(0, "0x");
    let r = login_pdu(&mut c, 0x80 | 1, &[("CHAP_N", CHAP_USER), ("CHAP_R", &h)]);
    assert_eq!(login_status(&r), (0, 0), "the right CHAP response; log:\n{}", d.log());
    still_serves(&d, port, 1);
    d.stop();
}

/// MD5(id || secret || challenge) as lower-case hex.
fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> String {
    use md5::{Digest, Md5};
    let mut m = Md5::new();
    m.update([id]);
    m.update(secret);
    m.update(challenge);
    m.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Finding 1, second part: CHAP was chosen whenever offered, even by a
/// target with no CHAP configured; and a target that requires CHAP must
/// refuse an initiator that offers only None.
#[test]
fn auth_method_follows_the_target_configuration() {
    let (d, port) = start();
    let first = |target: &str, offer: &str| {
        let mut c = RawConn::connect(port);
        let r = login_pdu(
            &mut c,
            0,
            &[
                ("InitiatorName", "iqn.2025-01.io.pollux:auth"),
                ("SessionType", "Normal"),
                ("TargetName", &target_iqn(target)),
                ("AuthMethod", offer),
            ],
        );
        (login_status(&r), key(&r, "AuthMethod"))
    };
    assert_eq!(first(OPEN, "CHAP,None"), ((0, 0), Some("None".into())), "no CHAP configured: None");
    assert_eq!(first(OPEN, "CHAP").0, (2, 1), "an initiator insisting on CHAP cannot have it here");
    assert_eq!(first(CHAP, "None,CHAP"), ((0, 0), Some("CHAP".into())), "CHAP required");
    assert_eq!(first(CHAP, "None").0, (2, 1), "CHAP required and not offered");
    let log = d.log();
    assert!(log.contains("the target requires CHAP") && log.contains("no CHAP secrets"), "reasons logged; log:\n{log}");
    d.stop();
}

/// Log in to the open target with these negotiated keys.
fn logged_in(port: u16, isid: u8, extra: &[(&str, &str)]) -> RawConn {
    let mut c = RawConn::connect(port);
    let r = c.login_with(&format!("iqn.2025-01.io.pollux:hostile-{isid}"), Some(&target_iqn(OPEN)), isid, 0, 0, extra);
    assert_eq!(login_status(&r), (0, 0), "login");
    c
}

fn read10_cdb(lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn reads_done(d: &Daemon) -> u64 {
    let v = d.call("bdev_get_iostat", Some(json!({"name": "Open0"}))).expect("bdev_get_iostat");
    v["bdevs"][0]["num_read_ops"].as_u64().expect("num_read_ops")
}

/// 200 immediate 128 KiB READs the initiator never reads the answers of;
/// returns once the LU has completed as many as the target takes (its
/// queue depth of 64: immediate commands beyond it are rejected), so that
/// their 8 MiB of answers (more than the sockets' buffers hold) wait in
/// the connection's output.
fn flood_unread_reads(d: &Daemon, c: &mut RawConn) {
    let before = reads_done(d);
    for i in 0..200u32 {
        let mut h = c.scsi_header(&read10_cdb(i * 256 % (LUN_MIB as u32 * 2048 - 256), 256), 128 * 1024, true, false);
        h[0] |= 0x40; // immediate
        c.send(h, &[]).expect("send READ");
    }
    let t0 = std::time::Instant::now();
    while reads_done(d) < before + 64 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the READs did not complete; log:\n{}", d.log());
        std::thread::yield_now();
    }
}

/// An initiator that stops reading must not hold the reactor's data
/// buffers: they stay queued while it reads, and go once it has read
/// nothing for a period of the group's 1 s timer (`sock::TxQueue::tick`);
/// the pool is far from short here (48 of 512 large buffers), so only the
/// tick can give them back. Then the initiator reads every answer whole.
#[test]
fn an_initiator_that_stops_reading_holds_no_data_buffers() {
    let port = iscsi_host::free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "iobuf", "config": [{"method": "iobuf_set_options", "params": {"large_pool_count": 512}}]},
        // A null bdev reads into pool buffers (it lends nothing).
        {"subsystem": "bdev", "config": [{"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 131072, "block_size": 512}}]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/8"]}},
            {"method": "iscsi_create_target_node", "params": {"name": OPEN, "alias_name": OPEN, "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
                "luns": [{"bdev_name": "Null0", "lun_id": 0}], "queue_depth": 64}},
        ]}
    ]});
    let d = iscsi_host::start("0x1", cfg);
    let stat = |k: &str| -> u64 {
        let v = d.call("bdev_get_iostat", Some(json!({"name": "Null0"}))).expect("bdev_get_iostat");
        v["bdevs"][0][k].as_u64().expect("iostat")
    };
    let mut c = logged_in(port, 90, &[]);
    // A small receive buffer, so that the answers cannot all fit in the
    // kernel's buffers whatever the machine's TCP limits.
    pollux_core::sock::set_int_option(&c.s, libc::SOL_SOCKET, libc::SO_RCVBUF, 64 << 10).unwrap();
    let before = stat("num_read_ops");
    // 48 READs of 128 KiB (6 MiB of answers, under the 8 MiB backlog
    // limit, far more than the sockets hold), never read for now.
    const N: u32 = 48;
    let mut itts = Vec::new();
    for i in 0..N {
        let h = c.scsi_header(&read10_cdb(i * 256, 256), 128 * 1024, true, false);
        itts.push(u32::from_be_bytes(h[16..20].try_into().unwrap()));
        c.send(h, &[]).expect("send READ");
    }
    let secs = std::time::Duration::from_secs;
    pollux_tests::wait_until("the READs", secs(30), || stat("num_read_ops") - before >= u64::from(N));
    pollux_tests::wait_until("every large buffer back while the initiator does not read", secs(15), || {
        let (free, total) = d.large_buffers();
        free == total
    });
    // It reads again: every READ's 128 KiB of zeroes and its status, in order.
    let (mut done, mut data) = (Vec::new(), 0usize);
    while done.len() < N as usize {
        let p = c.recv().expect("an answer");
        match p.opcode() {
            0x25 => {
                assert!(p.data.iter().all(|&b| b == 0), "a null bdev's read is zeroes");
                data += p.data.len();
                if p.bhs[1] & 0x01 != 0 {
                    assert_eq!(p.bhs[3], 0, "status");
                    done.push(p.u32_at(16));
                }
            }
            0x21 => {
                assert_eq!(p.bhs[3], 0, "status");
                done.push(p.u32_at(16));
            }
            0x20 => {} // a NOP-In ping meanwhile
            op => panic!("unexpected PDU, opcode {op:#x}"),
        }
    }
    assert_eq!(done, itts, "answers in the order of the READs");
    assert_eq!(data, N as usize * 128 * 1024);
    d.stop();
}

/// Finding 2: a connection closing while its output is still queued lost
/// its receive buffer, and the next bytes indexed an empty one.
#[test]
fn a_closing_connection_with_queued_output_survives_more_bytes() {
    let (d, port) = start();
    // Closed by a Login PDU in full feature phase, then by a data segment
    // above MaxRecvDataSegmentLength.
    for (round, closer) in ["login", "16 MiB segment"].into_iter().enumerate() {
        let mut c = logged_in(port, 10 + round as u8, &[]);
        flood_unread_reads(&d, &mut c);
        let mut h = [0u8; 48];
        if closer == "login" {
            h[0] = 0x03;
            c.send(h, &keys(&[("InitiatorName", "iqn.x")])).expect("send");
        } else {
            h[0] = 0x01;
            h[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
            use std::io::Write;
            c.s.write_all(&h).expect("send");
        }
        // Then any byte, and some more.
        use std::io::Write;
        for _ in 0..3 {
            let _ = c.s.write_all(&[0x5a; 100]);
        }
        still_serves(&d, port, 20 + round as u8);
        drop(c);
    }
    still_serves(&d, port, 30);
    d.stop();
}

/// Finding 3: a WRITE(10) with both R and W and immediate data was
/// treated as a read after its buffers went to the bdev. Bidirectional
/// commands end with CHECK CONDITION and move no data either way.
#[test]
fn a_bidirectional_write_is_refused_and_writes_nothing() {
    let (d, port) = start();
    let mut c = logged_in(port, 40, &[]);
    let before = pattern(1, 4096);
    assert_eq!(c.write10(64, &before), Some(0));
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&64u32.to_be_bytes());
    cdb[7..9].copy_from_slice(&8u16.to_be_bytes());
    let itt = c.command(&cdb, 4096, true, true, &pattern(2, 4096));
    let p = c.wait_for(itt).expect("an answer");
    assert_eq!(p.opcode(), 0x21, "a SCSI Response, no Data-In");
    assert!(p.data.len() < 64, "sense data only");
    assert_eq!(p.bhs[3], 0x02, "CHECK CONDITION");
    assert_eq!(sense_of(&p), Some((0x05, 0x24, 0x00)), "ILLEGAL REQUEST, INVALID FIELD IN CDB");
    let (st, after) = c.read10(64, 8).expect("read");
    assert_eq!(st, 0);
    assert!(after == before, "the refused write changed the medium");
    // The same with R and W on a READ, many times: each is answered, and
    // the log gets a few lines, not one per command.
    for _ in 0..40 {
        let itt = c.command(&read10_cdb(64, 8), 4096, true, true, &[]);
        let p = c.wait_for(itt).expect("an answer");
        assert_eq!((p.opcode(), p.bhs[3]), (0x21, 0x02));
    }
    let log = d.log();
    let noted = log.lines().filter(|l| l.contains("bidirectional command")).count();
    assert!((1..=8).contains(&noted), "{noted} log lines for 41 refused commands of one connection");
    assert!(log.contains("further faults of this client are logged at debug level"), "log:\n{log}");
    still_serves(&d, port, 41);
    d.stop();
}

/// Read `blocks` at LBA 0 and check every Data-In against the negotiated
/// sizes: contiguous offsets, DataSN in order, segments within
/// MaxRecvDataSegmentLength, bursts within MaxBurstLength, the whole
/// length, GOOD, and no residual.
fn checked_read(c: &mut RawConn, blocks: u32, mrdsl: usize, burst: usize, expect: &[u8]) {
    let len = blocks as usize * 512;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
    let itt = c.command(&cdb, len as u32, true, false, &[]);
    let mut got = Vec::with_capacity(len);
    let mut data_sn = 0;
    let mut in_burst = 0;
    loop {
        let p = c.recv().expect("Data-In");
        if p.opcode() == 0x20 {
            continue;
        }
        assert_eq!(p.u32_at(16), itt);
        if p.opcode() == 0x21 {
            panic!("SCSI Response instead of Data-In: status {:#x}, got {} of {len} bytes", p.bhs[3], got.len());
        }
        assert_eq!(p.opcode(), 0x25, "Data-In");
        assert_eq!(p.u32_at(36), data_sn, "DataSN");
        assert_eq!(p.u32_at(40) as usize, got.len(), "buffer offset");
        assert!(p.data.len() <= mrdsl, "a segment of {} bytes above MaxRecvDataSegmentLength {mrdsl}", p.data.len());
        in_burst += p.data.len();
        assert!(in_burst <= burst, "a sequence of {in_burst} bytes above MaxBurstLength {burst}");
        if p.bhs[1] & 0x80 != 0 {
            in_burst = 0;
        }
        data_sn += 1;
        got.extend_from_slice(&p.data);
        if p.bhs[1] & 0x01 != 0 {
            assert_eq!(p.bhs[3], 0, "GOOD");
            assert_eq!(p.bhs[1] & 0x06, 0, "no residual flags");
            assert_eq!(p.u32_at(44), 0, "residual count");
            break;
        }
    }
    assert_eq!(got.len(), len, "the whole transfer length");
    assert!(got == expect[..len], "data differs");
}

fn read_config(mrdsl: usize, burst: usize) -> Vec<(String, String)> {
    vec![("MaxRecvDataSegmentLength".into(), mrdsl.to_string()), ("MaxBurstLength".into(), burst.to_string())]
}

/// Finding 4: with MaxRecvDataSegmentLength above 1 MiB a 4 MiB READ
/// returned one 1 MiB Data-In with GOOD status and no residual. Every
/// READ (up to the LU's 4 MiB maximum transfer) returns exactly its
/// length, for many negotiated combinations.
#[test]
fn reads_return_their_whole_length_for_any_negotiated_sizes() {
    let (d, port) = start();
    let data = pattern(9, 4 << 20);
    let mut w = logged_in(port, 50, &[]);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        assert_eq!(w.write10((i * 2048) as u32, chunk), Some(0));
    }
    // The case first, then the limits, then random ones.
    let fixed =
        [(4 << 20, 1 << 20, 8192), (16_777_215, 16_777_215, 8192), (512, 512, 2), (8192, 262144, 8192), ((1 << 20) + 512, 1 << 20, 4097)];
    let isid = std::cell::Cell::new(60u8);
    let one = |mrdsl: usize, burst: usize, blocks: u32| {
        let isid = isid.replace(isid.get().wrapping_add(1).max(60));
        let kv = read_config(mrdsl, burst);
        let kv: Vec<(&str, &str)> = kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut c = logged_in(port, isid, &kv);
        // What the target agreed to: our MaxRecvDataSegmentLength is
        // declarative, MaxBurstLength the smaller of the two.
        checked_read(&mut c, blocks, mrdsl, burst.min(1 << 20), &data);
    };
    for (mrdsl, burst, blocks) in fixed {
        one(mrdsl, burst, blocks);
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
    runner
        .run(&(512usize..=16_777_215, 512usize..=16_777_215, 1u32..=8192), |(mrdsl, burst, blocks)| {
            one(mrdsl, burst, blocks);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", d.log()));
    still_serves(&d, port, 70);
    let conns: Value = d.call("iscsi_get_connections", None).unwrap();
    assert!(conns.is_array());
    d.stop();
}

/// An initiator that sends READs and never reads the
/// answers grew the daemon by gigabytes (immediate commands bypassed the
/// command window, and output was unbounded). Immediate commands beyond the
/// queue depth are rejected (reason 0x06), the window closes at the queue
/// depth, and PDUs wait unread while 8 MiB of answers are queued.
#[test]
fn an_initiator_that_never_reads_its_answers_is_held_back() {
    let (d, port) = start();
    let before = rss_bytes(d.pid());
    let mut c = logged_in(port, 80, &[]);
    c.s.set_nonblocking(true).unwrap();
    // Immediate and windowed READs of 128 KiB, as fast as the socket takes
    // them, for up to 10 s: 100,000 of them would be 12 GiB of answers.
    let mut sent = 0u32;
    let t0 = std::time::Instant::now();
    let mut pending: Vec<u8> = Vec::new();
    while sent < 100_000 && t0.elapsed() < std::time::Duration::from_secs(10) {
        if pending.is_empty() {
            let mut h = c.scsi_header(&read10_cdb(sent * 256 % (LUN_MIB as u32 * 2048 - 256), 256), 128 * 1024, true, false);
            if sent % 2 == 0 {
                h[0] |= 0x40;
            }
            pending = pollux_tests::iscsi_host::pdu_bytes(h, &[]);
            sent += 1;
        }
        use std::io::Write;
        match c.s.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("the target closed the connection: {e}"),
        }
    }
    d.call("iscsi_get_connections", None).expect("the daemon answers");
    let grown = rss_bytes(d.pid()).saturating_sub(before);
    assert!(grown < 256 << 20, "the daemon grew by {} MiB for one initiator that does not read ({sent} READs sent)", grown >> 20);
    still_serves(&d, port, 81);
    d.stop();
}

/// Each WRITE took buffers for its whole transfer (up
/// to 16 MiB) when it arrived, so 200 WRITEs that never send their data
/// took gigabytes. Buffers are now taken as data is solicited, within a
/// per-connection budget, and the window closes at the queue depth. The
/// writes still complete once their data comes.
#[test]
fn writes_that_never_send_their_data_take_no_memory() {
    let (d, port) = start();
    let before = rss_bytes(d.pid());
    let mut c = logged_in(port, 90, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    let mut itts = Vec::new();
    for i in 0..200u32 {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&(i % 2 * 32768).to_be_bytes());
        cdb[7..9].copy_from_slice(&32768u16.to_be_bytes());
        let mut h = c.scsi_header(&cdb, 16 << 20, false, true);
        if i % 2 == 0 {
            h[0] |= 0x40; // immediate
        }
        c.send(h, &[]).expect("send WRITE");
        itts.push(c.itt - 1);
    }
    d.call("iscsi_get_connections", None).expect("the daemon answers");
    let grown = rss_bytes(d.pid()).saturating_sub(before);
    assert!(grown < 128 << 20, "the daemon grew by {} MiB for 200 WRITEs of 16 MiB whose data never came", grown >> 20);
    still_serves(&d, port, 91);
    d.stop();
}

/// Found by Pollux's own initiator (QD 128 of 1 MiB writes): with room
/// left in the write budget but too little for any waiting write, a
/// completed write resumed the waiting ones in a loop that never ended
/// (each went back to the tail and the next was tried), and the reactor
/// hung. Seven writes of 4 MiB (the largest transfer) and two of 1 MiB
/// take 30 of the 32 MiB; two more of 4 MiB wait; one of the 1 MiB writes
/// gets its data and completes (29 MiB in use, 3 free, 4 needed): the
/// daemon must answer it and go on.
#[test]
fn waiting_writes_that_do_not_fit_the_budget_left_do_not_hang_the_reactor() {
    let (d, port) = start();
    let mut c = logged_in(port, 96, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    let mut itts = Vec::new();
    for blocks in [8192u16, 8192, 8192, 8192, 8192, 8192, 8192, 2048, 2048, 8192, 8192] {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let h = c.scsi_header(&cdb, u32::from(blocks) * 512, false, true);
        c.send(h, &[]).expect("send WRITE");
        itts.push(c.itt - 1);
    }
    let third = itts[7];
    let zeros = vec![0u8; 64 * 1024];
    loop {
        let p = c.recv().expect("R2Ts, then the 1 MiB write's response");
        match p.opcode() {
            // Only one 1 MiB write gets its data.
            0x31 if p.u32_at(16) == third => {
                let (ttt, off, len) = (p.u32_at(20), p.u32_at(40) as usize, p.u32_at(44) as usize);
                let (mut at, mut sn) = (off, 0);
                while at < off + len {
                    let n = (off + len - at).min(zeros.len());
                    c.data_out(third, ttt, sn, at as u32, &zeros[..n], at + n == off + len).expect("Data-Out");
                    at += n;
                    sn += 1;
                }
            }
            0x21 if p.u32_at(16) == third => {
                assert_eq!(p.bhs[3], 0, "the 1 MiB write completed GOOD: {:?}", pollux_tests::iscsi_host::sense_of(&p));
                break;
            }
            _ => {}
        }
    }
    d.call("iscsi_get_connections", None).expect("the daemon answers");
    still_serves(&d, port, 97);
    d.stop();
}

/// More writes in flight than the per-connection write budget (16 of
/// 4 MiB against 32 MiB): those over it wait for their R2Ts, and all
/// complete with their data in place.
#[test]
fn writes_over_the_write_budget_wait_their_turn_and_complete() {
    let (d, port) = start();
    let mut c = logged_in(port, 95, &[("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "1048576")]);
    const BLOCKS: u32 = 8192;
    let data: Vec<Vec<u8>> = (0..16u8).map(|i| pattern(100 + i, BLOCKS as usize * 512)).collect();
    let mut itt_of = std::collections::HashMap::new();
    for (i, _) in data.iter().enumerate() {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&(i as u32 * BLOCKS % (LUN_MIB as u32 * 2048)).to_be_bytes());
        cdb[7..9].copy_from_slice(&(BLOCKS as u16).to_be_bytes());
        let h = c.scsi_header(&cdb, BLOCKS * 512, false, true);
        itt_of.insert(c.itt - 1, i);
        c.send(h, &[]).expect("send WRITE");
    }
    let mut done = 0;
    while done < data.len() {
        let p = c.recv().expect("an R2T or a response");
        let i = itt_of[&p.u32_at(16)];
        match p.opcode() {
            0x31 => {
                let (ttt, off, len) = (p.u32_at(20), p.u32_at(40) as usize, p.u32_at(44) as usize);
                let mut at = off;
                let mut sn = 0;
                while at < off + len {
                    let n = (off + len - at).min(64 * 1024);
                    c.data_out(p.u32_at(16), ttt, sn, at as u32, &data[i][at..at + n], at + n == off + len).expect("Data-Out");
                    at += n;
                    sn += 1;
                }
            }
            0x21 => {
                assert_eq!(p.bhs[3], 0, "write {i} completed GOOD");
                done += 1;
            }
            op => panic!("unexpected opcode {op:#x}"),
        }
    }
    // Later writes to the same blocks win: check the last 4 of the 16
    // (LUN of 32 MiB holds 8 writes of 4 MiB, each place written twice).
    for (i, want) in data.iter().enumerate().skip(8) {
        let lba = i as u32 * BLOCKS % (LUN_MIB as u32 * 2048);
        let mut got = Vec::new();
        for part in 0..4u32 {
            let (st, d) = c.read10(lba + part * 2048, 2048).expect("read back");
            assert_eq!(st, 0);
            got.extend(d);
        }
        assert!(got == *want, "write {i} reads back wrong");
    }
    still_serves(&d, port, 96);
    d.stop();
}
