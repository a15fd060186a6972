//! The NVMe-oF host of Pollux, over TCP: remote controllers whose
//! namespaces become bdevs (SPDK's `bdev_nvme` with `trtype` TCP), driven
//! by the reactors like the PCIe driver: an admin queue on the reactor that
//! attached, one I/O queue per reactor that uses the controller, every
//! connection a nonblocking socket in its reactor's readiness group.
//!
//! - [`pdu`]: the host's side of the NVMe/TCP PDUs (parser of what a
//!   controller sends, builders of what a host sends).
//! - [`qpair`]: one queue pair: connect, ICReq/ICResp, commands, C2HData
//!   into the request's buffers, H2CData on R2T, in-capsule writes,
//!   requests larger than a command split.
//! - [`ctrlr`]: bring-up (Connect, Property Get/Set, Identify, Set Features
//!   Number of Queues, namespaces), I/O queues per reactor, keep alive,
//!   shutdown.
//! - [`bdev`]: namespaces as bdevs (`Nvme0n1`), the attached controllers
//!   and their paths, `bdev_nvme_attach_controller` with `trtype` TCP.
//! - [`client`]: a blocking API for programs without the daemon (open,
//!   identify, read, write, close).
//! - [`discovery`]: the discovery log page, and the discovery service of
//!   `bdev_nvme_start_discovery`.
//! - [`multipath`]: the paths of a bdev controller and the choice of one
//!   for each request (active-passive, active-active).

pub mod bdev;
pub mod client;
pub mod ctrlr;
pub mod discovery;
pub mod multipath;
pub mod pdu;
pub mod qpair;

use pollux_nvme_spec::status::Status;

/// Why a host operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("transport error {0}")]
    Transport(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0} failed: {1}")]
    Status(String, Status),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the queue pair is closed")]
    Closed,
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
}

impl HostError {
    /// The negative errno SPDK's RPCs would report.
    pub fn errno(&self) -> i32 {
        match self {
            HostError::Connect(..) => libc::ECONNREFUSED,
            HostError::Transport(_) => libc::EIO,
            HostError::Refused(_) => libc::EPERM,
            HostError::Status(..) => libc::EIO,
            HostError::Timeout(_) => libc::ETIMEDOUT,
            HostError::Closed => libc::ENOTCONN,
            HostError::Exists(_) => libc::EEXIST,
            HostError::Invalid(_) => libc::EINVAL,
            HostError::Busy(_) => libc::EBUSY,
        }
    }
}
