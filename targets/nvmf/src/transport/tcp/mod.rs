//! The NVMe/TCP transport: listeners on nonblocking sockets polled by the
//! main reactor, and connections (queue pairs) polled by each reactor's
//! [`group::TcpGroup`].
//!
//! A connection starts on the main reactor, where the ICReq and the
//! Connect are handled (the admin queue stays there, with its controller);
//! an I/O queue is then moved, socket and all, to a reactor chosen round
//! robin, so the I/O queues of one controller spread over the cores.

mod conn;
mod group;
pub mod pdu;

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use pollux_core::reactor::ReactorId;
use pollux_core::sock::{Accepted, RoundRobin};
use serde_json::{Value, json};

use super::{Endpoint, Transport, TransportKind, TransportOpts};
use crate::NvmfError;

pub use group::{GroupStats, close_all, group_stats};

/// Largest H2CData payload we accept (ICResp MAXH2CDATA).
pub const MAX_H2C_DATA: u32 = 128 * 1024;

struct Listener {
    ep: Endpoint,
    uses: Cell<u32>,
    _socket: pollux_core::sock::Listener,
}

/// What listeners and connections share: options and the reactor choice.
pub(crate) struct TcpShared {
    pub(crate) opts: TransportOpts,
    /// I/O queue pairs go to every reactor in turn, starting after the
    /// main one (which has the admin queues).
    placement: RoundRobin,
}

impl TcpShared {
    fn new(opts: TransportOpts) -> Rc<TcpShared> {
        Rc::new(TcpShared { opts, placement: RoundRobin::starting_at(1) })
    }

    /// The reactor for the next I/O queue pair.
    pub(crate) fn pick_reactor(&self) -> ReactorId {
        self.placement.next()
    }
}

/// The TCP transport (main reactor).
pub struct TcpTransport {
    shared: Rc<TcpShared>,
    listeners: RefCell<Vec<Rc<Listener>>>,
}

impl TcpTransport {
    pub fn new(opts: TransportOpts) -> TcpTransport {
        TcpTransport { shared: TcpShared::new(opts), listeners: RefCell::new(Vec::new()) }
    }
}

/// For the fuzz targets (`tests/fuzz`), not part of the API: serve a
/// connected stream (a socket pair, which takes no TCP options) on the
/// main reactor as if a listener on `ep` had accepted it from `peer`. Each
/// call has its own reactor choice, so its I/O queue pairs go to reactor 1
/// (or 0 alone) every time.
#[doc(hidden)]
pub fn serve_for_fuzzing(stream: std::net::TcpStream, peer: std::net::SocketAddr, ep: Endpoint, opts: TransportOpts) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    group::adopt(stream, peer, ep, TcpShared::new(opts), pollux_core::sock::ConnSlot::uncounted())
}

impl Transport for TcpTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn opts(&self) -> &TransportOpts {
        &self.shared.opts
    }

    fn listen(&self, ep: &Endpoint) -> Result<(), NvmfError> {
        if let Some(l) = self.listeners.borrow().iter().find(|l| l.ep == *ep) {
            l.uses.set(l.uses.get() + 1);
            return Ok(());
        }
        let period = Duration::from_micros(u64::from(self.shared.opts.acceptor_poll_rate.max(100)));
        let shared = self.shared.clone();
        let endpoint = *ep;
        let accepted = move |a: Accepted| {
            if let Err(e) = group::adopt(a.stream, a.peer, endpoint, shared.clone(), a.slot) {
                tracing::warn!("nvmf: cannot serve the connection from {}: {e}", a.peer);
            }
        };
        let max = self.shared.opts.max_connections_per_listener as usize;
        let socket = pollux_core::sock::Listener::bind(ep.addr, "nvmf_tcp_accept", &format!("nvmf {ep}"), period, max, accepted)
            .map_err(|e| NvmfError::Listen(ep.to_string(), e))?;
        let l = Rc::new(Listener { ep: *ep, uses: Cell::new(1), _socket: socket });
        self.listeners.borrow_mut().push(l);
        tracing::info!("nvmf: listening on {ep}");
        Ok(())
    }

    fn stop_listen(&self, ep: &Endpoint) {
        let mut ls = self.listeners.borrow_mut();
        if let Some(pos) = ls.iter().position(|l| l.ep == *ep) {
            let l = &ls[pos];
            l.uses.set(l.uses.get().saturating_sub(1));
            if l.uses.get() == 0 {
                ls.remove(pos);
                tracing::info!("nvmf: stopped listening on {ep}");
            }
        }
    }

    fn describe(&self) -> Value {
        let o = &self.shared.opts;
        json!({
            "trtype": "TCP",
            "max_queue_depth": o.max_queue_depth,
            "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
            "in_capsule_data_size": o.in_capsule_data_size,
            "max_io_size": o.max_io_size,
            "io_unit_size": o.io_unit_size,
            "max_aq_depth": o.max_aq_depth,
            "num_shared_buffers": 0,
            "buf_cache_size": 0,
            "dif_insert_or_strip": false,
            "zcopy": false,
            "c2h_success": o.c2h_success,
            "sock_priority": o.sock_priority,
            "abort_timeout_sec": o.abort_timeout_sec,
            "ack_timeout": 0,
            "data_wr_pool_size": 0,
            "acceptor_poll_rate": o.acceptor_poll_rate,
            "kas": o.kas,
            "min_kato": o.min_kato,
            "connect_timeout_sec": o.connect_timeout_sec,
            "max_connections_per_listener": o.max_connections_per_listener,
        })
    }
}
