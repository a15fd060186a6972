//! Pollux core: the poll-mode framework every other Pollux crate builds on.
//!
//! - [`reactor`]: one pinned thread per core, each draining a lock-free
//!   message inbox and running its pollers; objects have one owner reactor and
//!   others reach them with messages.
//! - [`io_channel`]: devices shared by all reactors and the per-reactor
//!   channels through which each reactor uses them without locks.
//! - [`rpc`]: the JSON-RPC 2.0 control socket, with SPDK's method names.
//! - [`app`]: start-up, subsystems, configuration files and shutdown.
//!
//! Nothing here knows about NVMe, SCSI or any target protocol.

pub mod accel;
pub mod alloc;
pub mod app;
pub mod bdev;
pub mod clock;
pub mod cpuset;
pub mod dma;
pub mod inline_fn;
pub mod io_channel;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod reactor;
pub mod rpc;
pub mod scheduler;
pub mod sock;
pub mod sys;

/// The Pollux version, as reported by `spdk_get_version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
