//! Entry points for the fuzz targets (`tests/fuzz`), not part of the API:
//! serve a stream that was not accepted by a portal (a socket pair), and
//! see how many connections this reactor still has.

use std::net::TcpStream;

use crate::login::Endpoint;

/// Serve `stream` on the current reactor as if a portal of portal group
/// `ep.portal_group` had accepted it. Socket options the stream does not
/// support (TCP_NODELAY on a socket pair) are skipped, as for any
/// connection.
pub fn serve(stream: TcpStream, ep: Endpoint) {
    crate::conn::start(stream, ep, Vec::new());
}

/// Connections open on the current reactor.
pub fn connections() -> usize {
    crate::conn::Group::try_get().map_or(0, |g| g.conns.borrow().len())
}
