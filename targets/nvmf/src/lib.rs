//! # pollux-nvmf: an NVMe over Fabrics target on the reactors
//!
//! Hosts (such as the Linux kernel's `nvme-tcp`) connect over NVMe/TCP and
//! use the namespaces of NVM subsystems as local disks; each namespace is a
//! bdev. Configuration uses SPDK's `nvmf_*` RPC methods.
//!
//! - [`transport`]: the [`transport::Transport`] trait and the TCP
//!   transport (listeners, connections, PDUs).
//! - [`target`], [`subsystem`]: the configured state, on the main reactor.
//! - [`ctrlr`]: controllers (Connect, properties, keep alive, asynchronous
//!   events) and the admin command set; [`io`]: the NVM command set.
//! - [`group`]: each reactor's view of the namespaces its queue pairs use.
//! - [`wire`], [`status`]: Fabrics structures and status codes.
//!
//! Threading: subsystems, controllers and admin queues live on the main
//! reactor; each I/O queue pair lives on one reactor (spread round robin)
//! and reaches bdevs through that reactor's channels, without locks.

// Unsafe code only where RDMA work requests are posted
// (transport::rdma::qpair), each with its reason.
#![deny(unsafe_code)]

pub mod counters;
pub mod ctrlr;
mod error;
pub mod group;
pub mod io;
pub mod resv;
mod rpc;
pub mod status;
pub mod subsystem;
pub mod target;
pub mod transport;
pub mod wire;

use pollux_core::app::App;

pub use error::NvmfError;

/// Register the `nvmf` subsystem and its RPC methods with the app.
pub fn register(app: &mut App) {
    rpc::register(app);
}

#[cfg(test)]
mod tests {
    use static_assertions::assert_not_impl_any;

    // Reactor-owned state cannot leave its reactor.
    assert_not_impl_any!(crate::ctrlr::Controller: Send, Sync);
    assert_not_impl_any!(crate::subsystem::Subsystem: Send, Sync);
    assert_not_impl_any!(crate::target::Target: Send, Sync);
    assert_not_impl_any!(crate::group::SubsystemView: Send, Sync);
    assert_not_impl_any!(crate::transport::tcp::TcpTransport: Send, Sync);
}
