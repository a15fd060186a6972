//! Replay `rpc_params`'s corpus and regression inputs (see `replay.rs`).

mod replay_common;

#[test]
fn rpc_params() {
    replay_common::replay("rpc_params");
}
