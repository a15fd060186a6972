//! `iscsi_pdu`: an iSCSI connection's receive path (PDU framing, digests,
//! AHS, data segments, login, then full feature phase: SCSI commands with
//! immediate and unsolicited data, Data-Out and R2Ts, NOP, Text, task
//! management, Logout) against two malloc LUs, through a socket.
//!
//! Input: two mode bytes, then the stream.
//!
//! Mode byte 0, the scripted login: bit 0 HeaderDigest, bit 1 DataDigest,
//! bit 2 ImmediateData=No, bit 3 InitialR2T=No, bit 5 a discovery session,
//! bit 7 small segments and bursts (4 KiB, many R2Ts); bit 4 the stream is
//! raw bytes (else PDU records, see below); bit 6 no scripted login: the
//! stream starts at the connection's first byte.
//!
//! Mode byte 1: bits 0-1 how raw bytes are cut into writes (all at once,
//! 48, 7 or 1000 bytes); bit 2 records get CmdSN and ExpStatSN from the
//! harness (the session's window, the last StatSN seen); bit 3 Data-Out
//! records get the Target Transfer Tag of the last R2T for their task.
//!
//! A record is a 48-byte BHS, its AHS (`TotalAHSLength` words), and its data
//! segment (`DataSegmentLength`, cut at the end of the input); the harness
//! frames it (padding, the negotiated digests). Each record is written,
//! then the reactor runs until idle.
//!
//! Invariants: the target's output is well framed (its opcodes, no AHS,
//! digests right, data segments within the initiator's
//! MaxRecvDataSegmentLength); the scripted login succeeds; once we close our
//! end, the connection and its session go away.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pollux_core::reactor::Harness;
use pollux_iscsi::login::Endpoint;
use pollux_iscsi::pdu::{Bhs, RESERVED_TAG, op};
use pollux_iscsi::{fuzzing, session, text};
use pollux_scsi::Device;

use crate::common::{self, Blank, Input, Peer};
use crate::iscsi_wire::{self, LoginOpts, OutFraming, TargetPdu};

/// LU 0: 512-byte blocks; LU 1: 4 KiB blocks. Small, so a read of a whole
/// LU stays cheap.
const LUS: [(&str, u32, u64); 2] = [("FuzzMalloc0", 512, 512), ("FuzzMalloc1", 4096, 128)];

struct Rig {
    h: Harness,
    bdevs: Vec<Blank>,
    /// When the last execution ended.
    last: Cell<Instant>,
}

/// Longer than the connection group's answer-coalescing window (50 us):
/// while one is open the group reads nothing, so the next execution's
/// login waits for the window an earlier input may have opened.
const AFTER_WINDOW: Duration = Duration::from_micros(80);

impl Rig {
    fn new() -> Rig {
        common::init_process();
        iscsi_wire::ensure_config();
        let h = Harness::new(1);
        let bdevs = common::malloc_blanks(&h, &LUS);
        Rig { h, bdevs, last: Cell::new(Instant::now()) }
    }

    /// Fresh LUs (no reservations, mode changes or unit attentions left by
    /// an earlier input) on zeroed bdevs.
    fn reset_lus(&self) {
        self.h.on(0, || {
            for b in &self.bdevs {
                b.zero();
            }
            let dev = Device::new(iscsi_wire::TARGET_PDU);
            for (i, (name, ..)) in LUS.iter().enumerate() {
                dev.add_lun(i as u64, name).expect("LU");
            }
            iscsi_wire::set_pdu_device(dev);
        });
        common::settle(&self.h);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let bdevs = std::mem::take(&mut self.bdevs);
        common::close_blanks(&self.h, bdevs, || iscsi_wire::set_pdu_device(Device::new(iscsi_wire::TARGET_PDU)));
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

pub fn iscsi_pdu(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let mode2 = inp.u8();
    let stream = inp.rest();
    common::with_rig(&RIG, Rig::new, |rig| run(rig, mode, mode2, stream));
}

fn run(rig: &Rig, mode: u8, mode2: u8, stream: &[u8]) {
    let h = &rig.h;
    while rig.last.get().elapsed() < AFTER_WINDOW {
        std::hint::spin_loop();
    }
    common::settle(h);
    rig.reset_lus();
    let opts = LoginOpts::from_mode(mode);
    let (theirs, ours) = common::socket_pair();
    let ep =
        Endpoint { local: "127.0.0.1:3260".parse().expect("address"), peer: "127.0.0.1:40000".parse().expect("address"), portal_group: 1 };
    h.on(0, move || fuzzing::serve(theirs, ep));
    let mut peer = Peer::new(ours);
    let mut t = Tracker::new(&opts);
    if mode & 0x40 == 0 {
        peer.send(h, &iscsi_wire::login_request(&opts));
        peer.pump(h);
        let pdus = t.take(&mut peer);
        let ok = pdus
            .iter()
            .any(|p| p.bhs.opcode() == op::LOGIN_RESP && iscsi_wire::login_status(&p.bhs) == (0, 0) && p.bhs.flags & 0x83 == 0x83);
        assert!(ok, "the scripted login failed: {pdus:?}");
        t.cmd_sn = 1;
    } else {
        t.framing.max_data = (1 << 24) - 1;
    }
    if mode & 0x10 != 0 {
        let chunk = [usize::MAX, 48, 7, 1000][(mode2 & 0x03) as usize];
        for piece in stream.chunks(chunk.min(stream.len().max(1))) {
            if !peer.send(h, piece) {
                break;
            }
            peer.pump(h);
            t.take(&mut peer);
        }
    } else {
        let mut inp = Input::new(stream);
        while !inp.is_empty() && !peer.eof {
            let mut bhs = Bhs::parse(&inp.array::<48>()).expect("48 bytes");
            let ahs = inp.bytes(bhs.ahs_len());
            let data = inp.bytes(bhs.data_len());
            if mode2 & 0x04 != 0 {
                t.number(&mut bhs);
            }
            if mode2 & 0x08 != 0 && bhs.opcode() == op::DATA_OUT {
                bhs.w20.set(t.ttt_for(bhs.itt(), bhs.w40.get()));
            }
            let mut pdu = Vec::new();
            iscsi_wire::frame(&mut pdu, &bhs, ahs, data, t.framing.hd && t.ffp, t.framing.dd && t.ffp);
            if !peer.send(h, &pdu) {
                break;
            }
            peer.pump(h);
            t.take(&mut peer);
        }
    }
    close(h, &mut peer);
    rig.last.set(Instant::now());
}

/// Close our end and wait for the target to let go of the connection and
/// its session.
fn close(h: &Harness, peer: &mut Peer) {
    peer.close();
    let start = Instant::now();
    loop {
        common::settle(h);
        if h.on(0, fuzzing::connections) == 0 {
            break;
        }
        // An answer-coalescing window (50 us) holds the socket back.
        assert!(start.elapsed() < Duration::from_secs(2), "the target kept a connection whose initiator closed it");
        std::thread::sleep(Duration::from_micros(20));
    }
    assert!(session::of_target(iscsi_wire::TARGET_PDU).is_empty(), "a session outlived its last connection");
    assert!(session::find_same(iscsi_wire::INITIATOR, &iscsi_wire::ISID, None).is_empty(), "a discovery session outlived its connection");
}

/// What the initiator side knows from the target's output.
struct Tracker {
    framing: OutFraming,
    ffp: bool,
    cmd_sn: u32,
    exp_stat_sn: u32,
    /// The R2Ts of each task: (TTT, buffer offset, length).
    r2t: HashMap<u32, Vec<(u32, u32, u32)>>,
    /// Digests a raw login is negotiating.
    pending: (bool, bool),
}

impl Tracker {
    fn new(o: &LoginOpts) -> Tracker {
        Tracker {
            framing: OutFraming { hd: o.header_digest, dd: o.data_digest, max_data: o.max_recv() },
            ffp: false,
            cmd_sn: 0,
            exp_stat_sn: 0,
            r2t: HashMap::new(),
            pending: (false, false),
        }
    }

    /// Take the target's complete PDUs (checking them) and learn from them,
    /// one at a time: the login's last answer switches digests on.
    fn take(&mut self, peer: &mut Peer) -> Vec<TargetPdu> {
        let mut out = Vec::new();
        loop {
            let mut framing = self.framing;
            if !self.ffp {
                framing.hd = false;
                framing.dd = false;
            }
            let Some(p) = iscsi_wire::take_pdu(&mut peer.rx, &framing) else { break };
            self.learn(&p);
            out.push(p);
        }
        out
    }

    fn learn(&mut self, p: &TargetPdu) {
        let h = &p.bhs;
        if common::trace() {
            eprintln!(
                "iscsi <- opcode {:#04x} flags {:#04x} b2 {:#04x} b3 {:#04x} itt {:#x} w20 {:#x} sn {} data {} {:?}",
                h.opcode(),
                h.flags,
                h.b2,
                h.b3,
                h.itt(),
                h.w20.get(),
                h.w24.get(),
                p.data.len(),
                String::from_utf8_lossy(&p.data[..p.data.len().min(48)])
            );
        }
        match h.opcode() {
            op::LOGIN_RESP => {
                if let Ok(pairs) = text::parse(&p.data) {
                    for (k, v) in pairs {
                        match k.as_str() {
                            "HeaderDigest" => self.pending.0 = v == "CRC32C",
                            "DataDigest" => self.pending.1 = v == "CRC32C",
                            _ => {}
                        }
                    }
                }
                if iscsi_wire::login_status(h) == (0, 0) && h.flags & 0x83 == 0x83 {
                    self.ffp = true;
                    if self.framing.max_data == (1 << 24) - 1 {
                        // A login of the fuzzer's own: its digests.
                        self.framing.hd = self.pending.0;
                        self.framing.dd = self.pending.1;
                    }
                }
                self.exp_stat_sn = h.w24.get().wrapping_add(1);
            }
            op::R2T => {
                let list = self.r2t.entry(h.itt()).or_default();
                list.push((h.w20.get(), h.w40.get(), h.w44.get()));
                if list.len() > 64 {
                    list.remove(0);
                }
            }
            op::DATA_IN if h.flags & 0x01 == 0 => {}
            _ => self.exp_stat_sn = h.w24.get().wrapping_add(1),
        }
    }

    /// The TTT a Data-Out at `offset` of task `itt` answers: the R2T whose
    /// range holds it, else the task's last R2T, else none (unsolicited).
    fn ttt_for(&self, itt: u32, offset: u32) -> u32 {
        let Some(list) = self.r2t.get(&itt) else { return RESERVED_TAG };
        let hit = list.iter().rev().find(|(_, off, len)| offset >= *off && offset - off < (*len).max(1));
        hit.or(list.last()).map_or(RESERVED_TAG, |(t, ..)| *t)
    }

    /// CmdSN and ExpStatSN as an initiator keeps them.
    fn number(&mut self, h: &mut Bhs) {
        match h.opcode() {
            op::NOP_OUT | op::SCSI_CMD | op::TASK_MGMT | op::TEXT | op::LOGOUT => {
                h.w24.set(self.cmd_sn);
                if !h.immediate() {
                    self.cmd_sn = self.cmd_sn.wrapping_add(1);
                }
                h.w28.set(self.exp_stat_sn);
            }
            op::DATA_OUT | op::SNACK => h.w28.set(self.exp_stat_sn),
            _ => {}
        }
    }
}
