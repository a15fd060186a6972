//! A TCP proxy between an NVMe/TCP host and a real target, for
//! hostile-target tests: every byte passes, but the data of each C2HData
//! PDU the target sends goes through a test's `mutate` first, with the
//! submission queue entry of the command it answers (the proxy reads the
//! host's command capsules to know them). So a test can make a real target
//! report what no controller would (an Identify Namespace with 2 GiB
//! blocks, say) while the rest of the exchange stays valid.
//!
//! PDUs are cut assuming header and data digests are off (an ICReq asking
//! for them fails the test). The sockets and threads are
//! [`crate::relay`]'s.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use crate::relay::{Connection, Direction, Relay, lock};

/// `mutate(sqe, data_offset, data)`: the command's 64-byte submission
/// queue entry, where this PDU's data starts in the command's transfer,
/// and the data, to change in place.
type Mutate = Box<dyn FnMut(&[u8; 64], u32, &mut [u8]) + Send>;

/// A running proxy; stopped, with every connection closed, on drop.
pub struct Proxy {
    relay: Relay,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward each connection to
    /// `target`, passing the data of the target's C2HData PDUs through
    /// `mutate` (one call at a time).
    pub fn start(target: SocketAddr, mutate: impl FnMut(&[u8; 64], u32, &mut [u8]) + Send + 'static) -> Proxy {
        let mutate: Arc<Mutex<Mutate>> = Arc::new(Mutex::new(Box::new(mutate)));
        let relay = Relay::start("nvmf-proxy", target, move |c: Connection| {
            // The commands the host sent on this connection, by command id.
            let commands = Arc::new(Mutex::new(HashMap::<u16, [u8; 64]>::new()));
            let (host_r, tgt_w) = c.up;
            let (tgt_r, host_w) = c.down;
            let cmds = commands.clone();
            let up: Direction = Box::new(move || host_to_target(host_r, tgt_w, &cmds));
            let mutate = mutate.clone();
            let down: Direction = Box::new(move || target_to_host(tgt_r, host_w, &commands, &mutate));
            (up, down)
        });
        Proxy { relay }
    }

    /// Where hosts should connect.
    pub fn addr(&self) -> SocketAddr {
        self.relay.addr()
    }
}

/// One PDU (common header, then the rest by PLEN), or None at the end.
fn read_pdu(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).ok()?;
    let plen = u32::from_le_bytes(ch[4..8].try_into().expect("4 bytes")) as usize;
    if !(8..=16 << 20).contains(&plen) {
        return None;
    }
    let mut pdu = vec![0u8; plen];
    pdu[..8].copy_from_slice(&ch);
    s.read_exact(&mut pdu[8..]).ok()?;
    Some(pdu)
}

fn host_to_target(mut from: TcpStream, mut to: TcpStream, commands: &Mutex<HashMap<u16, [u8; 64]>>) {
    while let Some(pdu) = read_pdu(&mut from) {
        match pdu[0] {
            // ICReq: digests (DGST, byte 11) would change the framing.
            0x00 => assert_eq!(pdu.get(11).copied().unwrap_or(0) & 3, 0, "the NVMe/TCP proxy works without digests"),
            // Command capsule: remember its SQE by command id.
            0x04 if pdu.len() >= 72 => {
                let sqe: [u8; 64] = pdu[8..72].try_into().expect("64 bytes");
                lock(commands).insert(u16::from_le_bytes([sqe[2], sqe[3]]), sqe);
            }
            _ => {}
        }
        if to.write_all(&pdu).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn target_to_host(mut from: TcpStream, mut to: TcpStream, commands: &Mutex<HashMap<u16, [u8; 64]>>, mutate: &Mutex<Mutate>) {
    while let Some(mut pdu) = read_pdu(&mut from) {
        // C2HData: CCCID at 8, DATAO at 12, DATAL at 16, data from PDO.
        if pdu[0] == 0x07 && pdu.len() >= 24 {
            let cid = u16::from_le_bytes([pdu[8], pdu[9]]);
            let datao = u32::from_le_bytes(pdu[12..16].try_into().expect("4 bytes"));
            let datal = u32::from_le_bytes(pdu[16..20].try_into().expect("4 bytes")) as usize;
            let pdo = usize::from(pdu[3]);
            let sqe = lock(commands).get(&cid).copied();
            if let (Some(sqe), Some(data)) = (sqe, pdu.get_mut(pdo..pdo + datal)) {
                (lock(mutate))(&sqe, datao, data);
            }
        }
        if to.write_all(&pdu).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
