//! Outgoing connections for initiators and hosts: a nonblocking `connect`
//! that never blocks a reactor. [`connect_start`] returns at once with the
//! socket connecting; the caller watches it for writability in its
//! [`ReadyGroup`](super::ReadyGroup) and then asks [`connect_result`] how
//! it ended.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;

/// Start connecting to `to`, from `from` when given (the host address an
/// operator picked, SPDK's `hostaddr`). The socket is nonblocking, with
/// TCP_NODELAY and the posix options of `sock_impl_set_options`; the
/// connection is usually still in progress when this returns.
pub fn connect_start(to: SocketAddr, from: Option<IpAddr>) -> io::Result<TcpStream> {
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream
    // made from it right after the check, which closes it on every path.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(ip) = from {
        if ip.is_ipv4() != to.is_ipv4() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("host address {ip} is not of the family of {to}")));
        }
        let (addr, len) = sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: `addr` holds a sockaddr of `len` bytes for the call.
        if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    stream.set_nodelay(true)?;
    super::configure_accepted(&stream)?;
    let (addr, len) = sockaddr(to);
    // SAFETY: as for bind.
    if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_storage).cast(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// How a connection started by [`connect_start`] ended, once its socket
/// became writable (or reported an error): `Ok` when it is connected.
pub fn connect_result(stream: &TcpStream) -> io::Result<()> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    // Writable with no error pending: connected, unless the peer is not
    // there at all (then getpeername fails with ENOTCONN).
    stream.peer_addr().map(|_| ())
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all zeroes is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    fn wait_writable(s: &TcpStream) {
        let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        // SAFETY: one pollfd for the call.
        let n = unsafe { libc::poll(&mut p, 1, 10_000) };
        assert_eq!(n, 1, "the connection ended within 10 s");
    }

    #[test]
    fn connects_without_blocking_and_reports_a_refused_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = connect_start(l.local_addr().unwrap(), Some("127.0.0.1".parse().unwrap())).unwrap();
        wait_writable(&s);
        connect_result(&s).unwrap();
        let (peer, _) = l.accept().unwrap();
        assert_eq!(peer.peer_addr().unwrap(), s.local_addr().unwrap());
        // A port nobody listens on: refused, reported by connect_result.
        let closed = l.local_addr().unwrap();
        drop(peer);
        drop(l);
        let s = connect_start(closed, None).unwrap();
        wait_writable(&s);
        let e = connect_result(&s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(connect_start(closed, Some("::1".parse().unwrap())).is_err(), "mixed families refused");
    }
}
