//! The `sock` subsystem: SPDK's socket-layer RPCs (`sock_impl_set_options`,
//! `sock_impl_get_options`, `sock_set_default_impl`,
//! `sock_get_default_impl`) over the one implementation Pollux has, plain
//! nonblocking kernel sockets (SPDK's `posix`).
//!
//! [`Listener`] is the one accept path of every target: it binds, accepts
//! on its reactor, backs off when accepting fails for lack of resources,
//! and calls [`configure_accepted`] on every connection:
//! `recv_buf_size`/`send_buf_size` set SO_RCVBUF/SO_SNDBUF (0, Pollux's
//! default, leaves the kernel's autotuning alone) and `enable_quickack`
//! sets TCP_QUICKACK. The other options (receive pipe, placement id,
//! zero-copy send, TLS) describe machinery of SPDK's that Pollux does not
//! have: they are kept and reported so SPDK's saved configs load, and
//! change nothing. The `ssl` implementation's options are kept likewise;
//! Pollux refuses TLS listeners.
//!
//! [`connect_start`] and [`connect_result`] are the outgoing side, for hosts
//! and initiators: a connect that never blocks the reactor; [`ClientGroup`]
//! polls a reactor's outgoing connections of one kind.
//!
//! `max_output_backlog` is Pollux's own: the bytes of answers queued for one
//! connection (iSCSI or NVMe/TCP) beyond which its further requests wait
//! unread, so a client that does not read cannot grow the daemon. It is
//! shown by `sock_impl_get_options` and written by `save_config` only when
//! changed (SPDK refuses keys it does not know).

mod clients;
mod connect;
mod listen;
mod ready;
mod sweep;
mod tx;

pub use clients::{Client, ClientGroup};
pub use connect::{connect_result, connect_start};
pub use listen::{ACCEPT_BACKOFF, Accepted, ConnLimit, ConnSlot, Listener, RoundRobin};
pub use ready::{Ready, ReadyGroup};
pub use sweep::Sweep;
pub use tx::{Flushed, OutBuf, TxBuf, TxQueue, Writev};

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::app::{App, ConfigWriter, Subsystem};
use crate::rpc::{NoParams, Responder, RpcError, States};

/// One implementation's options (SPDK's `sock_impl_set_options` fields).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImplOptions {
    pub recv_buf_size: u32,
    pub send_buf_size: u32,
    pub enable_recv_pipe: bool,
    pub enable_quickack: bool,
    pub enable_placement_id: u32,
    pub enable_zerocopy_send_server: bool,
    pub enable_zerocopy_send_client: bool,
    pub zerocopy_threshold: u32,
    pub tls_version: u32,
    pub enable_ktls: bool,
    /// Bytes queued for a connection beyond which it is not read (Pollux's).
    pub max_output_backlog: u32,
}

/// The default of `max_output_backlog`: 8 MiB.
pub const DEFAULT_OUTPUT_BACKLOG: u32 = 8 << 20;

const DEFAULTS: ImplOptions = ImplOptions {
    recv_buf_size: 0,
    send_buf_size: 0,
    enable_recv_pipe: true,
    enable_quickack: false,
    enable_placement_id: 0,
    enable_zerocopy_send_server: false,
    enable_zerocopy_send_client: false,
    zerocopy_threshold: 0,
    tls_version: 0,
    enable_ktls: false,
    max_output_backlog: DEFAULT_OUTPUT_BACKLOG,
};

/// The implementations SPDK's configs name that Pollux accepts options for.
const IMPLS: [&str; 2] = ["posix", "ssl"];

static OPTIONS: Mutex<[ImplOptions; 2]> = Mutex::new([DEFAULTS, DEFAULTS]);

fn slot(name: &str) -> Result<usize, RpcError> {
    IMPLS.iter().position(|i| *i == name).ok_or_else(|| {
        RpcError::errno(libc::EINVAL, format!("socket implementation '{name}' does not exist (Pollux has posix; ssl options are kept)"))
    })
}

fn lock() -> std::sync::MutexGuard<'static, [ImplOptions; 2]> {
    OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The options of the implementation Pollux's sockets use.
pub fn posix_options() -> ImplOptions {
    lock()[0].clone()
}

/// Set an integer socket option std does not offer (SO_PRIORITY, SO_RCVBUF...).
pub fn set_int_option(stream: &TcpStream, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the descriptor is a live socket owned by `stream`, borrowed
    // for the call; we pass a pointer to a c_int and its exact size.
    let rc =
        unsafe { libc::setsockopt(stream.as_raw_fd(), level, name, (&value as *const i32).cast(), size_of::<i32>() as libc::socklen_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Bytes a socket holds that the peer has not acknowledged yet
/// (`TIOCOUTQ`): whether a peer behind its full socket is reading at all.
pub fn unsent_bytes(stream: &TcpStream) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: the descriptor is a live socket owned by `stream`; TIOCOUTQ
    // writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0 && n >= 0).then_some(n as usize)
}

/// Apply the posix options to a connection a target accepted.
pub fn configure_accepted(stream: &TcpStream) -> io::Result<()> {
    let o = posix_options();
    if o.recv_buf_size != 0 {
        set_int_option(stream, libc::SOL_SOCKET, libc::SO_RCVBUF, o.recv_buf_size.min(i32::MAX as u32) as i32)?;
    }
    if o.send_buf_size != 0 {
        set_int_option(stream, libc::SOL_SOCKET, libc::SO_SNDBUF, o.send_buf_size.min(i32::MAX as u32) as i32)?;
    }
    if o.enable_quickack {
        set_int_option(stream, libc::IPPROTO_TCP, libc::TCP_QUICKACK, 1)?;
    }
    Ok(())
}

/// `sock_impl_set_options`: the implementation's name, then any fields to
/// change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    impl_name: String,
    recv_buf_size: Option<u32>,
    send_buf_size: Option<u32>,
    enable_recv_pipe: Option<bool>,
    enable_quickack: Option<bool>,
    enable_placement_id: Option<u32>,
    enable_zerocopy_send_server: Option<bool>,
    enable_zerocopy_send_client: Option<bool>,
    zerocopy_threshold: Option<u32>,
    tls_version: Option<u32>,
    enable_ktls: Option<bool>,
    max_output_backlog: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImplName {
    impl_name: String,
}

fn set_options(p: SetOptions, r: Responder) {
    let i = match slot(&p.impl_name) {
        Ok(i) => i,
        Err(e) => return r.err(e),
    };
    if p.tls_version.is_some_and(|v| v != 0 && v != 12 && v != 13) {
        return r.err(RpcError::invalid_params("tls_version must be 0, 12 or 13"));
    }
    if p.max_output_backlog.is_some_and(|v| v < 64 * 1024) {
        return r.err(RpcError::invalid_params("max_output_backlog must be at least 65536 bytes"));
    }
    if p.enable_placement_id.is_some_and(|v| v > 2) {
        return r.err(RpcError::invalid_params("enable_placement_id must be 0, 1 or 2"));
    }
    let mut all = lock();
    let o = &mut all[i];
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = p.$f { o.$f = v; })* };
    }
    set!(
        recv_buf_size,
        send_buf_size,
        enable_recv_pipe,
        enable_quickack,
        enable_placement_id,
        enable_zerocopy_send_server,
        enable_zerocopy_send_client,
        zerocopy_threshold,
        tls_version,
        enable_ktls,
        max_output_backlog
    );
    r.ok(true)
}

struct SockSubsystem;

impl Subsystem for SockSubsystem {
    fn name(&self) -> &'static str {
        "sock"
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        out.call("sock_set_default_impl", serde_json::json!({"impl_name": "posix"}));
        let all = lock().clone();
        for (name, o) in IMPLS.iter().zip(all) {
            let mut v = serde_json::to_value(o).expect("options serialise");
            let defaults = serde_json::to_value(DEFAULTS).expect("options serialise");
            crate::app::omit_own_defaults(&mut v, &defaults, &["max_output_backlog"]);
            v["impl_name"] = (*name).into();
            out.call("sock_impl_set_options", v);
        }
    }
}

/// Register the `sock` subsystem and its methods.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(SockSubsystem));
    let m = app.methods();
    m.register("sock_impl_set_options", States::ANY, set_options);
    m.register("sock_impl_get_options", States::ANY, |p: ImplName, r: Responder| match slot(&p.impl_name) {
        Ok(i) => r.ok(lock()[i].clone()),
        Err(e) => r.err(e),
    });
    m.register("sock_set_default_impl", States::ANY, |p: ImplName, r: Responder| {
        if p.impl_name == "posix" {
            r.ok(true)
        } else {
            r.err(RpcError::errno(
                libc::EOPNOTSUPP,
                format!("socket implementation '{}' is not available: Pollux uses posix sockets", p.impl_name),
            ))
        }
    });
    m.register("sock_get_default_impl", States::ANY, |_: NoParams, r: Responder| r.ok(serde_json::json!({"impl_name": "posix"})));
}
