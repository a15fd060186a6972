//! What the `pollux-tgt` daemon contains, as a library so that the fuzz
//! targets and tests build the same method table as the daemon.

#![forbid(unsafe_code)]

use pollux_core::app::App;

/// Register everything `pollux-tgt` serves: SPDK's framework-level
/// subsystems (so its saved configs load), the bdev layer and its modules,
/// then the targets that export bdevs.
pub fn register(app: &mut App) {
    pollux_core::sock::register(app);
    pollux_core::scheduler::register(app);
    pollux_core::bdev::rpc::register(app);
    pollux_bdev::register_all(app);
    pollux_rbd::register(app);
    pollux_lvol::register(app);
    pollux_raid::register(app);
    pollux_crypto::register(app);
    pollux_nvme_driver::register(app);
    pollux_iscsi_host::register(app);
    pollux_iscsi::register(app);
    pollux_nvmf::register(app);
}
