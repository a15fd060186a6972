//! A TCP proxy between an iSCSI initiator and a real target, for
//! hostile-target tests: what the initiator sends passes untouched; what
//! the target sends is cut into PDUs, and a test's `mutate` decides for
//! each one whether it is forwarded (possibly changed), dropped, replaced
//! by other bytes, or whether the connection is closed or goes silent.
//!
//! PDUs are cut assuming header and data digests are off (the proxy does
//! not read the login negotiation). Each accepted connection gets two
//! threads; dropping the [`Proxy`] shuts every socket down and joins them.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// One PDU the target sent, as given to `mutate`.
#[derive(Clone, Debug)]
pub struct Pdu {
    /// Index of the accepted connection, from 0.
    pub conn: usize,
    /// Number of the PDU on that connection, from 0.
    pub index: usize,
    /// Basic header segment.
    pub bhs: [u8; 48],
    /// Additional header segments (TotalAHSLength * 4 bytes).
    pub ahs: Vec<u8>,
    /// Data segment, without padding.
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32_at(16, itt);
    }

    /// The DataSegmentLength field of the header (as received, until the
    /// PDU is sent: forwarding sets it to `data.len()`).
    pub fn data_len(&self) -> usize {
        u32::from_be_bytes([0, self.bhs[5], self.bhs[6], self.bhs[7]]) as usize
    }

    /// The big-endian word at byte `at` of the header.
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bhs[at..at + 4].try_into().expect("4 bytes"))
    }

    pub fn set_u32_at(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// The PDU's bytes with consistent lengths: TotalAHSLength from
    /// `ahs` (zero-padded to words), DataSegmentLength from `data`, and
    /// the data padded. To send inconsistent lengths, change these bytes
    /// and return them in [`Action::Replace`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bhs = self.bhs;
        let ahs_words = self.ahs.len().div_ceil(4);
        bhs[4] = u8::try_from(ahs_words).expect("at most 255 words of AHS");
        let dlen = u32::try_from(self.data.len()).ok().filter(|&n| n < 1 << 24).expect("a data segment under 16 MiB");
        bhs[5..8].copy_from_slice(&dlen.to_be_bytes()[1..]);
        let mut out = Vec::with_capacity(48 + ahs_words * 4 + self.data.len() + 3);
        out.extend_from_slice(&bhs);
        out.extend_from_slice(&self.ahs);
        out.resize(48 + ahs_words * 4, 0);
        out.extend_from_slice(&self.data);
        out.resize(out.len() + pad(self.data.len()), 0);
        out
    }
}

/// What to do with a PDU from the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send it on (as [`Pdu::to_bytes`] gives it).
    Forward,
    /// Do not send it.
    Drop,
    /// Send these bytes instead, as they are.
    Replace(Vec<u8>),
    /// Close the connection to both sides.
    Close,
    /// Send nothing more to the initiator on this connection, ever, but
    /// keep its socket open (the target's bytes are read and discarded;
    /// the initiator's are still forwarded).
    Stall,
}

type Mutate = Box<dyn FnMut(&mut Pdu) -> Action + Send>;

/// State shared by the proxy's threads.
struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    mutate: Mutex<Mutate>,
    /// Both sockets of each live connection, to shut down on drop.
    sockets: Mutex<HashMap<usize, [TcpStream; 2]>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running proxy; stopped, with every connection closed, on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward each connection to
    /// `target`, passing the target's PDUs through `mutate` (called from
    /// the connections' threads, one call at a time).
    pub fn start(target: SocketAddr, mutate: impl FnMut(&mut Pdu) -> Action + Send + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            mutate: Mutex::new(Box::new(mutate)),
            sockets: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("iscsi-proxy-accept".into())
            .spawn(move || accept_loop(&listener, target, &s))
            .expect("spawn the proxy's acceptor");
        Proxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// Where initiators should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor; it sees `stop` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for [a, b] in lock(&self.shared.sockets).values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in `mutate` (a failed assertion) must not wedge the others.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((initiator, _)) = accepted else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let conn = shared.accepted.fetch_add(1, Ordering::SeqCst);
        // The target may be down (restarting): the initiator then sees
        // its connection closed, as it would without the proxy.
        let Ok(tgt) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else { continue };
        let clones = || -> io::Result<_> { Ok([initiator.try_clone()?, tgt.try_clone()?]) };
        let (Ok(registered), Ok([ini_w, tgt_r]), Ok([ini_r, tgt_w])) = (clones(), clones(), clones()) else { continue };
        let _ = initiator.set_nodelay(true);
        let _ = tgt.set_nodelay(true);
        lock(&shared.sockets).insert(conn, registered);
        let live = Arc::new(AtomicUsize::new(2));
        let stalled = Arc::new(AtomicBool::new(false));
        let up = {
            let (shared, live, stalled) = (shared.clone(), live.clone(), stalled.clone());
            move || {
                initiator_to_target(ini_r, tgt_w, &stalled);
                finish(&shared, conn, &live);
            }
        };
        let down = {
            let shared = shared.clone();
            move || {
                target_to_initiator(conn, tgt_r, ini_w, &shared, &stalled);
                finish(&shared, conn, &live);
            }
        };
        let mut threads = lock(&shared.threads);
        for (name, f) in [("up", Box::new(up) as Box<dyn FnOnce() + Send>), ("down", Box::new(down))] {
            let t = std::thread::Builder::new().name(format!("iscsi-proxy-{conn}-{name}")).spawn(f).expect("spawn a proxy thread");
            threads.push(t);
        }
    }
}

/// The last thread of a connection closes its sockets.
fn finish(shared: &Shared, conn: usize, live: &AtomicUsize) {
    if live.fetch_sub(1, Ordering::SeqCst) == 1 {
        lock(&shared.sockets).remove(&conn);
    }
}

/// Copy the initiator's bytes to the target, untouched.
fn initiator_to_target(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut target_gone = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        };
        if target_gone {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            if stalled.load(Ordering::SeqCst) {
                // The initiator must not notice: swallow its bytes.
                target_gone = true;
                continue;
            }
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Read until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Cut the target's bytes into PDUs and act on each as `mutate` says.
fn target_to_initiator(conn: usize, mut from: TcpStream, mut to: TcpStream, shared: &Shared, stalled: &AtomicBool) {
    for index in 0.. {
        let mut bhs = [0u8; 48];
        let n = match read_full(&mut from, &mut bhs) {
            Ok(n) => n,
            Err(_) => break,
        };
        if n < 48 {
            // The target closed (mid-header, possibly): pass on what came.
            let _ = to.write_all(&bhs[..n]);
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        let ahs_len = bhs[4] as usize * 4;
        let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut rest = vec![0u8; ahs_len + dlen + pad(dlen)];
        let m = match read_full(&mut from, &mut rest) {
            Ok(m) => m,
            Err(_) => break,
        };
        if m < rest.len() {
            let _ = to.write_all(&bhs);
            let _ = to.write_all(&rest[..m]);
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        let data = rest[ahs_len..ahs_len + dlen].to_vec();
        rest.truncate(ahs_len);
        let mut pdu = Pdu { conn, index, bhs, ahs: rest, data };
        let action = (lock(&shared.mutate))(&mut pdu);
        let sent = match action {
            Action::Forward => to.write_all(&pdu.to_bytes()),
            Action::Drop => Ok(()),
            Action::Replace(bytes) => to.write_all(&bytes),
            Action::Close => {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            Action::Stall => {
                stalled.store(true, Ordering::SeqCst);
                let _ = io::copy(&mut from, &mut io::sink());
                return;
            }
        };
        if sent.is_err() {
            // The initiator is gone.
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
    // The target reset the connection.
    let _ = to.shutdown(Shutdown::Both);
}
