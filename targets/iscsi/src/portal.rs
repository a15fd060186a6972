//! Portals: listening sockets of the portal groups, on the main reactor.
//! Accepted connections go to the reactors in turn (round robin) and live
//! there; the listener poller is fd-driven in interrupt mode.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use pollux_core::reactor::{self, Poller, ReactorId};
use pollux_core::sys::Interest;

use crate::config::Portal;
use crate::login::Endpoint;

/// Listeners by portal group tag (main reactor).
#[derive(Default)]
struct Listeners {
    groups: RefCell<HashMap<i32, Vec<(TcpListener, Poller)>>>,
    next: Cell<usize>,
}

fn listeners() -> Rc<Listeners> {
    reactor::local::<Listeners>().unwrap_or_else(|| {
        let l = Rc::new(Listeners::default());
        reactor::set_local(l.clone());
        l
    })
}

/// The socket address of a portal (`host` may be `[v6]`).
pub fn resolve(p: &Portal) -> io::Result<std::net::SocketAddr> {
    let host = p.host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = p.port.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad port {:?}", p.port)))?;
    (host, port).to_socket_addrs()?.next().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("cannot resolve {host}")))
}

/// Start listening on a portal group's portals (main reactor).
pub fn start(tag: i32, portals: &[Portal]) -> io::Result<()> {
    let l = listeners();
    if l.groups.borrow().contains_key(&tag) {
        return Ok(());
    }
    let mut socks = Vec::new();
    for p in portals {
        let addr = resolve(p)?;
        let sock = TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        sock.set_nonblocking(true)?;
        socks.push(sock);
    }
    let mut entries = Vec::new();
    for sock in socks {
        let fd = sock.as_raw_fd();
        let poller =
            reactor::register_timed_poller(&format!("iscsi_portal_{tag}"), Duration::from_millis(1), move || accept(tag, fd).into());
        poller.add_wake_fd(fd, Interest::READABLE)?;
        entries.push((sock, poller));
    }
    tracing::info!(
        "iscsi: portal group {tag} listening on {}",
        portals.iter().map(|p| format!("{}:{}", p.host, p.port)).collect::<Vec<_>>().join(" ")
    );
    l.groups.borrow_mut().insert(tag, entries);
    Ok(())
}

/// Stop listening (main reactor).
pub fn stop(tag: i32) {
    if let Some(l) = reactor::local::<Listeners>() {
        l.groups.borrow_mut().remove(&tag);
    }
}

pub fn is_listening(tag: i32) -> bool {
    reactor::local::<Listeners>().is_some_and(|l| l.groups.borrow().contains_key(&tag))
}

/// Accept what is waiting on one listener. Returns connections accepted.
fn accept(tag: i32, fd: i32) -> usize {
    let Some(l) = reactor::local::<Listeners>() else { return 0 };
    let mut n = 0;
    loop {
        let res = {
            let groups = l.groups.borrow();
            let Some(sock) = groups.get(&tag).and_then(|v| v.iter().find(|(s, _)| s.as_raw_fd() == fd)).map(|(s, _)| s) else { return n };
            sock.accept()
        };
        match res {
            Ok((stream, peer)) => {
                n += 1;
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                let pg = crate::config::lock().portal_group_of(&local).unwrap_or(tag);
                let count = reactor::count();
                let i = l.next.get();
                l.next.set(i.wrapping_add(1));
                let to = ReactorId(i % count);
                let ep = Endpoint { local, peer, portal_group: pg };
                reactor::send_msg(to, move || crate::conn::start(stream, ep, Vec::new()));
                if n >= 64 {
                    return n;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: try again later.
                tracing::warn!("iscsi: accept on portal group {tag}: {e}");
                return n;
            }
        }
    }
}
