//! Seed inputs: valid exchanges for every target, written into the corpus
//! by `cargo run -p pollux-fuzz --example seeds` (files named `seed-*`;
//! inputs fuzzing found are kept beside them under their hash).

mod iscsi;
mod iscsi_host;
mod lvol;
mod nvmf;
mod nvmf_host;
mod rpc;
mod scsi;

use pollux_iscsi::text;

/// One seed: its target, a name, the input.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub data: Vec<u8>,
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, list: Vec<(String, Vec<u8>)>| {
        out.extend(list.into_iter().map(|(name, data)| Seed { target, name, data }));
    };
    add("iscsi_text", iscsi::iscsi_text());
    add("iscsi_pdu", iscsi::iscsi_pdu());
    add("scsi_cdb", scsi::scsi_cdb());
    add("nvmf_tcp_pdu", nvmf::nvmf_tcp_pdu());
    add("nvmf_capsule", nvmf::nvmf_capsule());
    add("nvmf_host_pdu", nvmf_host::nvmf_host_pdu());
    add("nvmf_host_logs", nvmf_host::nvmf_host_logs());
    add("nvmf_rdma_capsule", nvmf::nvmf_rdma_capsule());
    add("resv_ptpl", nvmf::resv_ptpl());
    add("lvol_md", lvol::lvol_md());
    add("iscsi_host_pdu", iscsi_host::iscsi_host_pdu());
    add("iscsi_host_scsi", iscsi_host::iscsi_host_scsi());
    add("jsonrpc_framing", rpc::jsonrpc_framing());
    add("rpc_params", rpc::rpc_params());
    out
}

pub(super) fn pairs(list: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (k, v) in list {
        text::push(&mut t, k, v);
    }
    t
}
