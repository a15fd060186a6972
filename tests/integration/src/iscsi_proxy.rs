//! A TCP proxy between an iSCSI initiator and a real target, for
//! hostile-target tests: what the initiator sends passes untouched; what
//! the target sends is cut into PDUs, and a test's `mutate` decides for
//! each one whether it is forwarded (possibly changed), dropped, replaced
//! by other bytes, or whether the connection is closed or goes silent.
//!
//! PDUs are cut assuming header and data digests are off (the proxy does
//! not read the login negotiation). The sockets and threads are
//! [`crate::relay`]'s.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::relay::{Connection, Direction, Relay, lock};

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

/// A running proxy; stopped, with every connection closed, on drop.
pub struct Proxy {
    relay: Relay,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward each connection to
    /// `target`, passing the target's PDUs through `mutate` (called from
    /// the connections' threads, one call at a time).
    pub fn start(target: SocketAddr, mutate: impl FnMut(&mut Pdu) -> Action + Send + 'static) -> Proxy {
        let mutate: Arc<Mutex<Mutate>> = Arc::new(Mutex::new(Box::new(mutate)));
        let relay = Relay::start("iscsi-proxy", target, move |c: Connection| {
            let stalled = Arc::new(AtomicBool::new(false));
            let (ini_r, tgt_w) = c.up;
            let (tgt_r, ini_w) = c.down;
            let s = stalled.clone();
            let up: Direction = Box::new(move || initiator_to_target(ini_r, tgt_w, &s));
            let mutate = mutate.clone();
            let down: Direction = Box::new(move || target_to_initiator(c.index, tgt_r, ini_w, &mutate, &stalled));
            (up, down)
        });
        Proxy { relay }
    }

    /// Where initiators should connect.
    pub fn addr(&self) -> SocketAddr {
        self.relay.addr()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.relay.connections()
    }
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
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
fn target_to_initiator(conn: usize, mut from: TcpStream, mut to: TcpStream, mutate: &Mutex<Mutate>, stalled: &AtomicBool) {
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
        let action = (lock(mutate))(&mut pdu);
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
