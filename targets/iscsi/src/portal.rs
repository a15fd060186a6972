//! Portals: listening sockets of the portal groups, on the main reactor.
//! Accepted connections go to the reactors in turn (round robin) and live
//! there; the listener poller is fd-driven in interrupt mode.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::ToSocketAddrs;
use std::rc::Rc;
use std::time::Duration;

use pollux_core::reactor;
use pollux_core::sock::{Accepted, Listener, RoundRobin};

use crate::config::Portal;
use crate::login::Endpoint;

/// Listeners by portal group tag (main reactor).
struct Listeners {
    groups: RefCell<HashMap<i32, Vec<Listener>>>,
    /// Where the next connection goes: every reactor in turn.
    placement: Rc<RoundRobin>,
}

fn listeners() -> Rc<Listeners> {
    reactor::local::<Listeners>().unwrap_or_else(|| {
        let l = Rc::new(Listeners { groups: RefCell::new(HashMap::new()), placement: Rc::new(RoundRobin::starting_at(0)) });
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
    let max = crate::config::lock().options.max_connections_per_portal as usize;
    let mut entries = Vec::new();
    for p in portals {
        let addr = resolve(p)?;
        let placement = l.placement.clone();
        let accepted = move |a: Accepted| {
            // A portal on 0.0.0.0 serves the group whose portal is the
            // address the connection came to, if one has it.
            let pg = crate::config::lock().portal_group_of(&a.local).unwrap_or(tag);
            let ep = Endpoint { local: a.local, peer: a.peer, portal_group: pg };
            let (stream, slot) = (a.stream, a.slot);
            reactor::send_msg(placement.next(), move || crate::conn::start(stream, ep, Vec::new(), slot));
        };
        entries.push(Listener::bind(
            addr,
            "iscsi_portal_accept",
            &format!("iscsi portal group {tag}"),
            Duration::from_millis(1),
            max,
            accepted,
        )?);
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
