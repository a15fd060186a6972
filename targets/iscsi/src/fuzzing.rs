//! Entry points for the fuzz targets (`tests/fuzz`), not part of the API:
//! serve a stream that was not accepted by a portal (a socket pair), and
//! see how many connections this reactor still has.

use std::net::TcpStream;

use crate::login::Endpoint;

/// Serve `stream` on the current reactor as if a portal of portal group
/// `ep.portal_group` had accepted it: made nonblocking as the listener
/// does (the TCP options do not apply to a socket pair).
pub fn serve(stream: TcpStream, ep: Endpoint) {
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::warn!("iscsi: stream from {} not served: cannot make it nonblocking: {e}", ep.peer);
        return;
    }
    crate::conn::start(stream, ep, Vec::new(), pollux_core::sock::ConnSlot::uncounted());
}

/// Connections open on the current reactor.
pub fn connections() -> usize {
    crate::conn::Group::try_get().map_or(0, |g| g.conns.borrow().len())
}
