//! Replay the corpus kept in the repository, and the regression inputs of
//! crashes found and fixed, through every target on stable Rust (no
//! libFuzzer): a test that fails names the file. `rpc_params` resets the
//! process-wide iSCSI configuration the iSCSI targets use, so it runs in
//! its own test binary (`replay_rpc.rs`).

mod replay_common;

#[test]
fn iscsi_text() {
    replay_common::replay("iscsi_text");
}

#[test]
fn iscsi_pdu() {
    replay_common::replay("iscsi_pdu");
}

#[test]
fn scsi_cdb() {
    replay_common::replay("scsi_cdb");
}

#[test]
fn nvmf_tcp_pdu() {
    replay_common::replay("nvmf_tcp_pdu");
}

#[test]
fn nvmf_capsule() {
    replay_common::replay("nvmf_capsule");
}

#[test]
fn nvmf_host_pdu() {
    replay_common::replay("nvmf_host_pdu");
}

#[test]
fn nvmf_host_logs() {
    replay_common::replay("nvmf_host_logs");
}

#[test]
fn resv_ptpl() {
    replay_common::replay("resv_ptpl");
}

#[test]
fn lvol_md() {
    replay_common::replay("lvol_md");
}

#[test]
fn raid_sb() {
    replay_common::replay("raid_sb");
}

#[test]
fn metrics_http() {
    replay_common::replay("metrics_http");
}

#[test]
fn nbd_wire() {
    replay_common::replay("nbd_wire");
}

#[test]
fn setup_text() {
    replay_common::replay("setup_text");
}

#[test]
fn nvmf_rdma_capsule() {
    replay_common::replay("nvmf_rdma_capsule");
}

#[test]
fn iscsi_host_pdu() {
    replay_common::replay("iscsi_host_pdu");
}

#[test]
fn iscsi_host_scsi() {
    replay_common::replay("iscsi_host_scsi");
}

#[test]
fn jsonrpc_framing() {
    replay_common::replay("jsonrpc_framing");
}

/// Every target has a corpus directory, and every directory a target.
#[test]
fn corpus_directories_match_the_targets() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, _) in pollux_fuzz::TARGETS {
        assert!(root.join(name).is_dir(), "no corpus for target {name}");
    }
    for e in std::fs::read_dir(&root).expect("corpus") {
        let name = e.expect("entry").file_name().into_string().expect("UTF-8 name");
        assert!(pollux_fuzz::target(&name).is_some(), "corpus directory {name} has no target");
    }
}
