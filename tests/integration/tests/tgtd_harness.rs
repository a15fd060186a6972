//! The peer-target harness itself: tgtd started plain and behind mutual
//! CHAP, its data kept across a restart, and the PDU proxy in front of it
//! (forwarding, closing, and going silent until dropped).

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{RawConn, RawPdu};
use pollux_tests::iscsi_proxy::{Action, Proxy};
use pollux_tests::tgtd::{Tgtd, TgtdOpts};
use pollux_tests::{ok_stdout, tool};

const INITIATOR: &str = "iqn.2016-06.io.pollux:tgtd-harness";

fn libiscsi(name: &str) -> std::path::PathBuf {
    tool(name, "libiscsi's tools: apt-get install libiscsi-bin")
}

/// Run a libiscsi tool, killing it (and failing) if it takes over 30 s.
fn run(name: &str, args: &[&str]) -> Output {
    let child = Command::new(libiscsi(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    wait_limited(child, Duration::from_secs(30)).unwrap_or_else(|| panic!("{name} {args:?} hung"))
}

/// Wait for a child, killing it after `limit` (then `None`).
fn wait_limited(child: std::process::Child, limit: Duration) -> Option<Output> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("wait")),
        Err(_) => {
            // SAFETY: kill with the pid of our child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            None
        }
    }
}

/// How iscsi-ls prints the size of a disk: last LBA times block size,
/// divided by 1024 while over 1024.
fn ls_size(mib: u64, block_size: u64) -> String {
    let mut size = ((mib << 20) / block_size - 1) * block_size;
    let mut unit = 0;
    while unit < 4 && size > 1024 {
        size /= 1024;
        unit += 1;
    }
    format!("{size}{}", [' ', 'k', 'M', 'G', 'T'][unit])
}

/// A raw session to `t` through 127.0.0.1:`port` (its own or a proxy's),
/// logged in and past the first unit attention.
fn session(t: &Tgtd, port: u16) -> RawConn {
    let mut c = RawConn::connect(port);
    let r = c.login(INITIATOR, Some(t.iqn()), 1);
    assert_eq!((r.opcode(), r.bhs[36], r.bhs[37]), (0x23, 0, 0), "login refused; tgtd's log:\n{}", t.log());
    assert_eq!(r.bhs[1] & 0x83, 0x83, "login did not reach full feature phase");
    for _ in 0..5 {
        if scsi(&mut c, &[0u8; 6], 0, false, &[]).0 == 0 {
            return c;
        }
    }
    panic!("TEST UNIT READY of LUN 1 never succeeded; tgtd's log:\n{}", t.log());
}

/// A command to LUN 1 (write data all immediate): its status and data-in.
fn scsi(c: &mut RawConn, cdb: &[u8], edtl: u32, read: bool, data: &[u8]) -> (u8, Vec<u8>) {
    let itt = c.itt;
    let mut h = c.scsi_header(cdb, edtl, read, !data.is_empty());
    h[9] = 1;
    c.send(h, data).expect("send a command");
    let mut data_in = Vec::new();
    loop {
        let p: RawPdu = c.recv().expect("the command's response");
        match p.opcode() {
            0x25 if p.u32_at(16) == itt => {
                data_in.extend_from_slice(&p.data);
                if p.bhs[1] & 0x01 != 0 {
                    return (p.bhs[3], data_in);
                }
            }
            0x21 if p.u32_at(16) == itt => return (p.bhs[3], data_in),
            _ => {}
        }
    }
}

fn rw10(op: u8, lba: u32) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = op;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[8] = 1;
    cdb
}

#[test]
fn plain_tgtd_lists_its_lun_and_keeps_data_across_restart() {
    let t0 = Instant::now();
    let mut t = Tgtd::start(TgtdOpts::default());
    let portal = format!("iscsi://127.0.0.1:{}", t.port());
    let listed = |t: &Tgtd| {
        let ls = ok_stdout("iscsi-ls", &run("iscsi-ls", &["-s", &portal]));
        assert!(ls.contains(&format!("Target:{} Portal:127.0.0.1:{},1", t.iqn(), t.port())), "{ls}\ntgtd's log:\n{}", t.log());
        assert!(ls.contains(&format!("Lun:1    Type:DIRECT_ACCESS (Size:{})", ls_size(64, 512))), "{ls}");
    };
    listed(&t);
    let cap = ok_stdout("iscsi-readcapacity16", &run("iscsi-readcapacity16", &[&t.url(1)]));
    assert!(cap.contains("LOGICAL BLOCK LENGTH IN BYTES:512") && cap.contains("Total size:67108864"), "{cap}");

    // A block written through iSCSI lands in the backing file...
    let block: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut c = session(&t, t.port());
    assert_eq!(scsi(&mut c, &rw10(0x2a, 7), 512, false, &block).0, 0, "WRITE(10); tgtd's log:\n{}", t.log());
    let file = std::fs::read(t.backing_file()).expect("read the backing file");
    assert_eq!(&file[7 * 512..8 * 512], &block[..]);

    // ... and is read back after a restart, which dropped the session.
    t.restart();
    let mut after = 0;
    while c.recv().is_some() {
        after += 1;
        assert!(after < 8, "the old session survived a restart");
    }
    listed(&t);
    let mut c = session(&t, t.port());
    let (status, data) = scsi(&mut c, &rw10(0x28, 7), 512, true, &[]);
    assert_eq!((status, data), (0, block), "READ(10) after restart");
    t.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", t.port())).is_err(), "tgtd still listens after stop");
    eprintln!("plain tgtd: {:?}", t0.elapsed());
}

#[test]
fn chap_tgtd_wants_the_initiator_and_proves_itself() {
    let opts = TgtdOpts {
        chap: Some(("pollux".into(), "pollux-secret-1".into())),
        mutual: Some(("tgtd".into(), "tgtd-secret-22".into())),
        block_size: 4096,
        mib: 16,
        ..Default::default()
    };
    let t = Tgtd::start(opts);
    let with =
        |user: &str, target: &str| format!("iscsi://{user}@127.0.0.1:{}/{}/1?target_user=tgtd&target_password={target}", t.port(), t.iqn());

    let ls = ok_stdout("iscsi-ls", &run("iscsi-ls", &[&format!("iscsi://127.0.0.1:{}", t.port())]));
    assert!(ls.contains(&format!("Target:{} Portal:127.0.0.1:{},1", t.iqn(), t.port())), "{ls}");

    let refused = |url: &str, why: &str| {
        let out = run("iscsi-readcapacity16", &[url]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && text.contains(why), "{url}: expected a failure saying {why:?}, got:\n{text}");
    };
    refused(&t.url(1), "Authentication failure");
    refused(&with("pollux%not-the-secret", "tgtd-secret-22"), "Authentication failure");
    refused(&with("pollux%pollux-secret-1", "not-the-secret"), "Invalid CHAP_R response from the target");

    let cap = ok_stdout("iscsi-readcapacity16", &run("iscsi-readcapacity16", &[&with("pollux%pollux-secret-1", "tgtd-secret-22")]));
    assert!(cap.contains("LOGICAL BLOCK LENGTH IN BYTES:4096") && cap.contains(&format!("Total size:{}", 16 << 20)), "{cap}");
}

#[test]
fn restart_waits_for_its_port_to_be_free() {
    let mut t = Tgtd::start(TgtdOpts { mib: 1, ..Default::default() });
    t.stop();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", t.port())).expect("take tgtd's port");
    let leaves = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(squatter);
    });
    t.restart();
    leaves.join().unwrap();
    assert!(t.log().contains("failed to create/bind to portal"), "the port was not taken:\n{}", t.log());
    let ls = ok_stdout("iscsi-ls", &run("iscsi-ls", &[&format!("iscsi://127.0.0.1:{}", t.port())]));
    assert!(ls.contains(t.iqn()), "{ls}");
}

fn target_addr(t: &Tgtd) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], t.port()))
}

fn proxied_url(p: &Proxy, t: &Tgtd) -> String {
    format!("iscsi://{}/{}/1", p.addr(), t.iqn())
}

#[test]
fn proxy_forwards_sessions_across_a_restart() {
    let mut t = Tgtd::start(TgtdOpts::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let p = Proxy::start(target_addr(&t), move |pdu| {
        log.lock().unwrap().push((pdu.conn, pdu.index, pdu.opcode(), pdu.data_len() == pdu.data.len()));
        Action::Forward
    });
    let inq = ok_stdout("iscsi-inq through the proxy", &run("iscsi-inq", &[&proxied_url(&p, &t)]));
    assert!(inq.contains("Peripheral Device Type:DIRECT_ACCESS") && inq.contains("Vendor:IET"), "{inq}");
    assert_eq!(p.connections(), 1);

    // The target's restart reaches the initiator as a close; its next
    // connection is a new one.
    let mut c = session(&t, p.addr().port());
    t.restart();
    while c.recv().is_some() {}
    let mut c = session(&t, p.addr().port());
    assert_eq!(scsi(&mut c, &rw10(0x28, 0), 512, true, &[]), (0, vec![0u8; 512]), "READ(10) through the proxy");
    assert_eq!(p.connections(), 3);
    drop(p);

    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|&(_, _, op, _)| op == 0x23), "no login response seen: {seen:?}");
    assert!(seen.iter().any(|&(_, _, op, _)| op == 0x25 || op == 0x21), "no command answer seen: {seen:?}");
    assert!(seen.iter().all(|&(conn, _, _, consistent)| conn < 3 && consistent), "{seen:?}");
    for conn in 0..3 {
        let indexes: Vec<usize> = seen.iter().filter(|s| s.0 == conn).map(|s| s.1).collect();
        assert!(!indexes.is_empty() && indexes == (0..indexes.len()).collect::<Vec<_>>(), "PDUs of connection {conn}: {seen:?}");
    }
}

#[test]
fn proxy_closes_and_stalls_on_demand() {
    let t = Tgtd::start(TgtdOpts::default());

    // Closing at the login response fails the login; connections are
    // counted whether they go through or not.
    let p = Proxy::start(target_addr(&t), |pdu| if pdu.opcode() == 0x23 { Action::Close } else { Action::Forward });
    let out = run("iscsi-inq", &[&proxied_url(&p, &t)]);
    assert!(!out.status.success(), "iscsi-inq passed a closed login: {}", String::from_utf8_lossy(&out.stdout));
    assert!(p.connections() >= 1);
    drop(p);

    // A stalled login leaves the initiator waiting until the proxy goes.
    let (tx, rx) = mpsc::channel();
    let p = Proxy::start(target_addr(&t), move |pdu| {
        let _ = tx.send(pdu.opcode());
        Action::Stall
    });
    let inq = Command::new(libiscsi("iscsi-inq"))
        .arg(proxied_url(&p, &t))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iscsi-inq");
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(0x23), "the login response did not reach the proxy");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "a PDU after the stall reached mutate");
    let t0 = Instant::now();
    drop(p);
    let dropped = t0.elapsed();
    let out = wait_limited(inq, Duration::from_secs(10)).expect("iscsi-inq still waits after the proxy was dropped");
    assert!(!out.status.success(), "iscsi-inq passed a stalled login");
    assert!(dropped < Duration::from_secs(2), "dropping the proxy took {dropped:?}");
}
