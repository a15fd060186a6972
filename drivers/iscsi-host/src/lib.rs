//! The iSCSI initiator of Pollux (RFC 7143): remote LUNs as bdevs (SPDK's
//! `bdev_iscsi`), driven by the reactors, and a plain blocking API for
//! programs without the daemon.
//!
//! - [`login`]: the login phase as a state machine without I/O (CHAP,
//!   operational keys, redirection), and SendTargets answers.
//! - [`session`]: one session of one connection on a reactor: login, SCSI
//!   commands with immediate, unsolicited and R2T-solicited data, Data-In,
//!   the CmdSN window, NOP keep-alives, task management, Async Messages,
//!   logout, and recovery (abort, LUN reset, session reinstatement,
//!   reconnection on a back-off).
//! - [`scsi`]: the CDBs the initiator sends, the data it parses, the sense
//!   it decodes.
//! - [`url`] reads iSCSI URLs, `iscsi://user%password@host:port/IQN/LUN`.
//! - [`bdev`]: `bdev_iscsi_create`/`_delete`/`_set_options`: a LUN as a
//!   bdev, one session per reactor that uses it.
//! - [`client`]: discovery, and a LUN read and written from a program.

#![forbid(unsafe_code)]

pub mod bdev;
pub mod client;
pub mod login;
pub mod scsi;
pub mod session;
pub mod url;

/// Why an initiator operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IscsiError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("login failed: {0}")]
    Login(String),
    #[error("login refused by the target: {name} (Status-Class {class}, Status-Detail {detail:#04x})")]
    LoginRefused { class: u8, detail: u8, name: &'static str },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Transport(String),
    #[error("SCSI {0}")]
    Scsi(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the session is closed")]
    Closed,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
}

impl IscsiError {
    /// The negative errno SPDK's RPCs would report.
    pub fn errno(&self) -> i32 {
        match self {
            IscsiError::Connect(..) => libc::ECONNREFUSED,
            IscsiError::Login(_) | IscsiError::LoginRefused { .. } => libc::EACCES,
            IscsiError::Protocol(_) | IscsiError::Transport(_) | IscsiError::Scsi(_) => libc::EIO,
            IscsiError::Timeout(_) => libc::ETIMEDOUT,
            IscsiError::Closed => libc::ENOTCONN,
            IscsiError::Invalid(_) => libc::EINVAL,
            IscsiError::Exists(_) => libc::EEXIST,
        }
    }
}

/// Register the `bdev_iscsi_*` methods.
pub fn register(app: &mut pollux_core::app::App) {
    bdev::register_rpcs(app);
}
