//! A hostile target against Pollux's iSCSI initiator: a proxy in front of
//! Pollux's target changes what the target sends (a Data-In for a task
//! that is not outstanding, a Data-In beyond the transfer, a malformed
//! header, a target that stops answering), and fake targets that never end
//! a login or never answer at all. Each is a clean connection error and a
//! recovery (or a clear failure of the bdev's creation), never a crash or
//! a hung reactor.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{config, free_port, target_iqn};
use pollux_tests::iscsi_proxy::{Action, Pdu, Proxy};
use pollux_tests::{Daemon, DaemonOpts, TempDir, perf_command};
use serde_json::{Value, json};

const INITIATOR: &str = "iqn.2016-06.io.pollux:initiator-hostile";
const DATA_IN: u8 = 0x25;
const SCSI_RESP: u8 = 0x21;
const R2T: u8 = 0x31;

fn target(port: u16) -> Daemon {
    Daemon::start(DaemonOpts { cpumask: "0x1".into(), config: Some(config(port, "hostile", 64, None)), ..Default::default() })
}

fn bdev_config(addr: SocketAddr, timeout: u64) -> Value {
    let url = format!("iscsi://{addr}/{}/0", target_iqn("hostile"));
    json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_iscsi_set_options", "params": {"timeout_sec": timeout}},
        {"method": "bdev_iscsi_create", "params": {"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}}]}]})
}

/// A verify run through `addr`; its report and log.
fn run(dir: &TempDir, cfg: &Value, secs: u32) -> (Value, String, bool) {
    let out = perf_command(
        dir,
        cfg,
        &["-b", "iSCSI0", "-q", "16", "-o", "16384", "-w", "verify", "-t", &secs.to_string(), "-m", "0x1", "--json"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .output()
    .expect("run pollux-perf");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no report ({e}):\n{err}"));
    (r, err, out.status.success())
}

/// Apply `change` once, to the first PDU of the reactor's session (the
/// second connection: the first is the bdev's probe) that `pick` likes,
/// after the verify is under way.
fn once(
    pick: impl Fn(&Pdu) -> bool + Send + 'static,
    change: impl Fn(&mut Pdu) -> Action + Send + 'static,
) -> impl FnMut(&mut Pdu) -> Action + Send + 'static {
    let done = Arc::new(AtomicBool::new(false));
    move |p: &mut Pdu| {
        // The first connection to carry traffic: the job's (others, such
        // as the lvol module's examination of the new bdev, carry a few
        // PDUs and end).
        if p.index > 50 && pick(p) && !done.swap(true, Ordering::SeqCst) {
            return change(p);
        }
        Action::Forward
    }
}

/// A 3 s verify through a proxy applying `change` to what Pollux's target
/// sends: the run's report, log and success, and the proxy.
fn through(change: impl FnMut(&mut Pdu) -> Action + Send + 'static) -> (Value, String, bool, Proxy) {
    let port = free_port();
    let _tgt = target(port);
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), change);
    let dir = TempDir::new("iscsi-initiator-hostile");
    let (r, err, ok) = run(&dir, &bdev_config(proxy.addr(), 10), 3);
    (r, err, ok, proxy)
}

/// The verify ends clean although the target misbehaved once: the
/// connection was dropped with `why` logged, and the session came back.
fn recovers(change: impl FnMut(&mut Pdu) -> Action + Send + 'static, why: &str) {
    let (r, err, ok, proxy) = through(change);
    assert!(ok, "{r}\n{err}");
    assert_eq!(r["total"]["errors"], 0, "{r}\n{err}");
    assert_eq!(r["verify_mismatches"], json!([]), "{r}");
    assert!(err.contains(why), "expected {why:?} in the log:\n{err}");
    assert!(err.contains("reconnecting to"), "{err}");
    assert!(proxy.connections() >= 3, "the session came back on a new connection");
}

#[test]
fn a_data_in_for_a_task_that_is_not_outstanding_drops_the_connection_and_the_session_recovers() {
    recovers(
        once(
            |p| p.opcode() == DATA_IN,
            |p| {
                p.set_itt(p.itt() ^ 0x00ff_0000);
                Action::Forward
            },
        ),
        "which is not outstanding",
    );
}

#[test]
fn a_data_in_beyond_the_transfer_drops_the_connection_and_the_session_recovers() {
    recovers(
        once(
            |p| p.opcode() == DATA_IN,
            |p| {
                p.data.extend_from_slice(&[0xee; 4096]);
                Action::Forward
            },
        ),
        "Data-In of",
    );
}

#[test]
fn a_malformed_header_drops_the_connection_and_the_session_recovers() {
    // A SCSI Response whose data segment claims 16 MiB: over what the
    // initiator declared it takes.
    recovers(
        once(
            |p| p.opcode() == SCSI_RESP,
            |p| {
                let mut b = p.to_bytes();
                b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
                Action::Replace(b)
            },
        ),
        "over our MaxRecvDataSegmentLength",
    );
}

// The 16 KiB writes go 8 KiB as immediate data (FirstBurstLength 8192)
// and 8 KiB asked for by one R2T, R2TSN 0.

#[test]
fn an_r2t_out_of_sequence_drops_the_connection_and_the_session_recovers() {
    recovers(
        once(
            |p| p.opcode() == R2T,
            |p| {
                p.set_u32_at(36, p.u32_at(36) + 1);
                Action::Forward
            },
        ),
        "R2TSN 0 expected",
    );
}

#[test]
fn an_r2t_for_bytes_already_sent_drops_the_connection_and_the_session_recovers() {
    recovers(
        once(
            |p| p.opcode() == R2T,
            |p| {
                // Buffer offset 0: the immediate data again.
                p.set_u32_at(40, 0);
                Action::Forward
            },
        ),
        "bytes at 0 of a 16384-byte transfer (8192 bytes sent",
    );
}

/// GOOD with the underflow bit and a residual: the command moved less than
/// asked, and the bdev request fails (it completed as a success, the
/// missing bytes never written or read).
fn short_transfer_fails(write: bool) {
    let writes = std::sync::Mutex::new(std::collections::HashSet::new());
    let (r, err, _, _) = through(once(
        move |p| {
            // Writes are the tasks the target sent R2Ts for.
            if p.opcode() == R2T {
                writes.lock().unwrap().insert(p.itt());
            }
            if write {
                p.opcode() == SCSI_RESP && p.bhs[3] == 0 && writes.lock().unwrap().contains(&p.itt())
            } else {
                // The last Data-In of a read, with the status (S bit).
                p.opcode() == DATA_IN && p.bhs[1] & 0x01 != 0
            }
        },
        |p| {
            p.bhs[1] |= 0x02; // U: underflow
            p.set_u32_at(44, 512);
            Action::Forward
        },
    ));
    let what = if write { "write" } else { "read" };
    assert!(err.contains(&format!("a {what} completed with 16384 of 16384 bytes moved, residual 512")), "{err}");
    assert_eq!(r["total"]["errors"], 1, "{r}\n{err}");
}

#[test]
fn a_write_answered_with_a_residual_fails() {
    short_transfer_fails(true);
}

#[test]
fn a_read_answered_with_a_residual_fails() {
    short_transfer_fails(false);
}

#[test]
fn a_target_that_stops_answering_is_aborted_reset_and_reconnected() {
    let port = free_port();
    let _tgt = target(port);
    // The reactor's session stalls after some traffic; later connections
    // are served.
    let victim = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), move |p: &mut Pdu| {
        // The first connection past 50 PDUs (the job's) stalls for good.
        if p.index > 50 {
            let _ = victim.compare_exchange(usize::MAX, p.conn, Ordering::SeqCst, Ordering::SeqCst);
        }
        if victim.load(Ordering::SeqCst) == p.conn { Action::Stall } else { Action::Forward }
    });
    let dir = TempDir::new("iscsi-initiator-stall");
    let t0 = Instant::now();
    let (r, err, ok) = run(&dir, &bdev_config(proxy.addr(), 1), 8);
    // The timed-out commands were aborted (unanswered), the LUN reset
    // (unanswered), the connection dropped; on the new one they went
    // again and the verify ended clean.
    assert!(err.contains("aborting it") && err.contains("resetting the LUN") && err.contains("LOGICAL UNIT RESET unanswered"), "{err}");
    assert!(err.contains("sending it again") && err.contains("reconnecting to"), "{err}");
    assert!(ok, "{r}\n{err}");
    assert_eq!(r["total"]["errors"], 0, "{r}\n{err}");
    assert_eq!(r["verify_mismatches"], json!([]), "{r}");
    assert!(proxy.connections() >= 3, "the session came back on a new connection");
    assert!(t0.elapsed() < Duration::from_secs(40), "the run hung");
}

/// A fake target on a free port answering each connection with `serve`.
fn fake_target(serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

/// Read one PDU (no digests); None at the end.
fn read_pdu(s: &mut std::net::TcpStream) -> Option<([u8; 48], Vec<u8>)> {
    let mut h = [0u8; 48];
    s.read_exact(&mut h).ok()?;
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    let mut d = vec![0u8; len + (4 - len % 4) % 4];
    s.read_exact(&mut d).ok()?;
    d.truncate(len);
    Some((h, d))
}

fn create_error(addr: SocketAddr) -> String {
    let host = Daemon::start(DaemonOpts::default());
    host.call("bdev_iscsi_set_options", Some(json!({"timeout_sec": 3}))).unwrap();
    let t0 = Instant::now();
    let url = format!("iscsi://{addr}/iqn.2016-06.io.fake:t/0");
    let e =
        host.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url}))).unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(20), "the create hung: {e}");
    // The daemon still answers.
    assert_eq!(host.call("bdev_get_bdevs", None).unwrap(), json!([]));
    e
}

#[test]
fn a_login_that_never_ends_and_a_target_that_never_answers_fail_the_create_clearly() {
    // Every Login Request answered with "more to negotiate", for ever.
    let endless = fake_target(|mut s| {
        let mut stat_sn = 1u32;
        while let Some((h, _)) = read_pdu(&mut s) {
            let mut r = [0u8; 48];
            r[0] = 0x23;
            r[1] = h[1] & 0x0c; // same stage, no transit
            r[8..16].copy_from_slice(&h[8..16]);
            r[16..20].copy_from_slice(&h[16..20]);
            r[24..28].copy_from_slice(&stat_sn.to_be_bytes());
            r[28..32].copy_from_slice(&h[24..28]);
            r[32..36].copy_from_slice(&h[24..28]);
            stat_sn += 1;
            if s.write_all(&r).is_err() {
                return;
            }
        }
    });
    let e = create_error(endless);
    assert!(e.contains("did not end the login"), "{e}");
    // Connected, never a word back: the login times out.
    let silent = fake_target(|mut s| {
        let mut b = [0u8; 4096];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let e = create_error(silent);
    assert!(e.contains("logging in to") && e.contains("took over"), "{e}");
}

/// RSS of process `pid` in MiB.
fn rss_mib(pid: u32) -> u64 {
    pollux_tests::rss_bytes(pid) >> 20
}

/// A READ CAPACITY(16) answer with a geometry no disk has: blocks of 2 GiB
/// (a multiple of 512, which the bdev layer took), or a size in bytes
/// beyond 64 bits. The LUN is refused with the reason, the daemon does not
/// allocate a block's worth of memory for the examiners' first read, and
/// still answers.
#[test]
fn a_lun_with_an_absurd_geometry_is_refused_clearly() {
    let port = free_port();
    let _tgt = target(port);
    for (what, last_lba, block_len, expect) in [
        ("2^62 blocks of 4 KiB", (1u64 << 62) - 1, 4096, "bytes do not fit in 64 bits"),
        ("2 GiB blocks", 7u64, 0x8000_0000u32, "2147483648-byte blocks"),
    ] {
        // The Data-In of READ CAPACITY(16) (32 bytes, the LUN's 512-byte
        // block length at bytes 8..12), rewritten.
        let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), move |p: &mut Pdu| {
            if p.opcode() == DATA_IN && p.data.len() == 32 && p.data[8..12] == 512u32.to_be_bytes() {
                p.data[0..8].copy_from_slice(&last_lba.to_be_bytes());
                p.data[8..12].copy_from_slice(&block_len.to_be_bytes());
            }
            Action::Forward
        });
        let host = Daemon::start(DaemonOpts::default());
        host.call("bdev_iscsi_set_options", Some(json!({"timeout_sec": 5}))).unwrap();
        let before = rss_mib(host.pid());
        let url = format!("iscsi://{}/{}/0", proxy.addr(), target_iqn("hostile"));
        let r = host.call("bdev_iscsi_create", Some(json!({"name": "iSCSI0", "initiator_iqn": INITIATOR, "url": url})));
        let e = r.expect_err(what).to_string();
        assert!(e.contains(expect), "{what}: {e}");
        assert_eq!(host.call("bdev_get_bdevs", None).unwrap(), json!([]), "{what}");
        let after = rss_mib(host.pid());
        assert!(after < before + 256, "{what}: RSS {before} -> {after} MiB");
    }
}
