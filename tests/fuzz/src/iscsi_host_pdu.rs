//! `iscsi_host_pdu`: the iSCSI initiator's receive path
//! (`pollux_iscsi_host::session`, driven without a socket by
//! `session::fuzzing::feed`): PDU framing with header and data digests,
//! the login responses, then the full feature phase (Data-In into the read
//! buffers, SCSI Responses with sense, R2Ts answered with Data-Out, NOP-In
//! pings, Async Messages, Rejects, Logout Responses), with commands
//! outstanding.
//!
//! Input: byte 0 the session's flags (bit 0 the login is under way, else
//! the session is logged in; bit 1 header digests; bit 2 data digests; bit
//! 3 ImmediateData=No; bit 4 InitialR2T=Yes; bit 5 pieces of 61 bytes and
//! Data-In read straight into the buffers; bit 6 time runs, 8 s a piece,
//! then a live but silent target); byte 1 N, the commands
//! outstanding at the start (N modulo 8); N records of 5 bytes (bit 0 of
//! the first a write, else a read; then its length, u32 LE, modulo 1 MiB);
//! then what the target sends, in pieces of at most 4 KiB as reads would
//! bring it. A login in progress has sent its first Login Request (no
//! authentication); its commands go out once it is done.
//!
//! Invariants: no panic; the receive buffer stays within bounds; every task
//! slot is free again once the connection ends (a fault drops it, as a
//! real session does, and what was outstanding is sent again or fails);
//! every command completes exactly once, whatever the target sent (those
//! still outstanding at the end fail); a session already logged in never
//! sees the end of a login; with time running, a target that stays alive
//! but stops answering commands never holds them an hour (timeouts,
//! aborts and a LUN reset end in a dropped connection first).

use pollux_iscsi_host::session::fuzzing::{self, Fed};

use crate::common::{self, Input};

/// Byte 1 is taken modulo this: up to 7 commands outstanding at the start.
const MAX_COMMANDS: u8 = 8;

pub fn iscsi_host_pdu(data: &[u8]) {
    run(data);
}

/// Feed one input to a session; what it did.
pub(crate) fn run(data: &[u8]) -> Fed {
    let mut input = Input::new(data);
    let flags = input.u8();
    let n = input.u8() % MAX_COMMANDS;
    let cmds: Vec<(bool, u32)> = (0..n).map(|_| (input.u8() & 1 != 0, u32::from_le_bytes(input.array()))).collect();
    let fed = fuzzing::feed(flags, &cmds, input.rest());
    if common::trace() {
        eprintln!("iscsi host: flags {flags:#04x}, commands {cmds:?}: {fed:?}");
    }
    assert!(flags & 1 != 0 || !fed.logged_in, "a session already logged in ended a login: {fed:?}");
    // Once the connection is gone, whatever was left fails: every command
    // has completed, once.
    assert_eq!(fed.completed, cmds.len(), "commands lost or completed twice: {fed:?}");
    fed
}
