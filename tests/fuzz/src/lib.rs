//! Fuzz targets for every parser of Pollux that reads network or RPC input.
//!
//! Each target is one function, `pub fn <target>(data: &[u8])`, that runs
//! the real Pollux code on the input and panics only on a real fault: a
//! panic inside Pollux, or a failed invariant of ours (a response that
//! breaks the protocol, a command that never completes, a queue pair left
//! behind). An `Err` returned for bad input is not a fault.
//!
//! The same functions run under libFuzzer (`tests/fuzz/cargo-fuzz`, driven
//! by `scripts/fuzz`) and, on stable Rust, in this crate's replay tests,
//! which run every file of the corpus kept in the repository
//! (`tests/fuzz/corpus/<target>/`) and of `tests/fuzz/regressions/<target>/`.
//!
//! Set-up that is costly (a step [`Harness`](pollux_core::reactor::Harness)
//! reactor, malloc bdevs, the iSCSI configuration, an NVMe-oF subsystem) is
//! made once per thread and reused; each execution leaves it as it found it
//! (connections closed, sessions and controllers gone), so an input does the
//! same thing whatever ran before it.
//!
//! Targets that are structure-aware start from a valid exchange made by the
//! harness (a login, a Connect and CC.EN) and take the fuzz bytes as what
//! follows; the input's first byte chooses the variant of that prefix.
//! Input formats are described on each target.

mod common;
mod iscsi_host_pdu;
mod iscsi_host_scsi;
mod iscsi_pdu;
mod iscsi_text;
mod iscsi_wire;
mod jsonrpc;
pub mod known_bugs;
mod lvol_md;
mod metrics_http;
mod nbd_wire;
mod nvmf;
mod nvmf_host_logs;
mod nvmf_host_pdu;
mod nvmf_rdma_capsule;
mod nvmf_wire;
mod raid_sb;
mod resv_ptpl;
mod rpc_params;
mod scsi_cdb;
pub mod seeds;
mod setup_text;

pub use iscsi_host_pdu::iscsi_host_pdu;
pub use iscsi_host_scsi::iscsi_host_scsi;
pub use iscsi_pdu::iscsi_pdu;
pub use iscsi_text::iscsi_text;
pub use jsonrpc::jsonrpc_framing;
pub use lvol_md::lvol_md;
pub use metrics_http::metrics_http;
pub use nbd_wire::nbd_wire;
pub use nvmf::{nvmf_capsule, nvmf_tcp_pdu};
pub use nvmf_host_logs::nvmf_host_logs;
pub use nvmf_host_pdu::nvmf_host_pdu;
pub use nvmf_rdma_capsule::nvmf_rdma_capsule;
pub use raid_sb::raid_sb;
pub use resv_ptpl::resv_ptpl;
pub use rpc_params::{EXCLUDED_METHODS, rpc_method_names, rpc_params};
pub use scsi_cdb::scsi_cdb;
pub use setup_text::setup_text;

/// A fuzz target: runs Pollux on one input.
pub type Target = fn(&[u8]);

/// Every target, by name, as the corpus directories and `scripts/fuzz` name
/// them.
pub const TARGETS: &[(&str, Target)] = &[
    ("iscsi_text", iscsi_text),
    ("iscsi_pdu", iscsi_pdu),
    ("scsi_cdb", scsi_cdb),
    ("nvmf_tcp_pdu", nvmf_tcp_pdu),
    ("nvmf_capsule", nvmf_capsule),
    ("nvmf_host_pdu", nvmf_host_pdu),
    ("nvmf_host_logs", nvmf_host_logs),
    ("nvmf_rdma_capsule", nvmf_rdma_capsule),
    ("resv_ptpl", resv_ptpl),
    ("lvol_md", lvol_md),
    ("raid_sb", raid_sb),
    ("nbd_wire", nbd_wire),
    ("metrics_http", metrics_http),
    ("setup_text", setup_text),
    ("iscsi_host_pdu", iscsi_host_pdu),
    ("iscsi_host_scsi", iscsi_host_scsi),
    ("jsonrpc_framing", jsonrpc_framing),
    ("rpc_params", rpc_params),
];

/// The target function of a name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
