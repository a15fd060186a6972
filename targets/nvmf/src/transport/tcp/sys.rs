//! The one socket option std does not offer: SO_PRIORITY.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Set the socket priority (`sock_priority` of the transport).
pub fn set_priority(s: &TcpStream, prio: u32) -> io::Result<()> {
    let v = prio as libc::c_int;
    // SAFETY: the descriptor is a live socket owned by `s`; we pass a
    // pointer to a c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
