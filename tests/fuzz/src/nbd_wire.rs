//! `nbd_wire`: the NBD server's connection (`pollux_nbd::conn`), with the
//! input as the kernel's side of the socket: request headers, write data,
//! disconnects, anything.
//!
//! Input: the first byte picks the bdev (even: 512-byte blocks, odd: 4 KiB)
//! and the size of the pieces the rest is sent in (1 to 128 bytes, then
//! the reactor runs); the rest is the byte stream. Handles of the headers
//! the connection will frame are made unique, as the kernel's are.
//!
//! Invariants: no panic; every reply has the reply magic, answers a
//! request that was sent, once, and a read's data is its length; when the
//! stream holds a disconnect (and no bad magic before it), every request
//! before it is answered; once the kernel's side is shut, the connection
//! closes and lets go of the bdev.

use std::collections::HashSet;

use pollux_core::bdev;
use pollux_core::reactor::Harness;
use pollux_nbd::fuzzing::{Rig, headers};
use pollux_nbd::proto::{REQUEST_MAGIC, cmd};

pub fn nbd_wire(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut stream = rest.to_vec();
    let hs = headers(&stream);
    let mut reads = Vec::new();
    let mut before_disc = HashSet::new();
    let mut disc = false;
    for (n, (at, r)) in hs.iter().enumerate() {
        let handle = (n as u64 + 1).to_be_bytes();
        stream[at + 8..at + 16].copy_from_slice(&handle);
        if r.cmd == cmd::READ {
            reads.push((handle, r.len));
        }
        if r.cmd == cmd::DISC {
            disc = true;
        }
        if !disc {
            before_disc.insert(handle);
        }
    }
    // A bad magic ends the stream where it is (no header past it is framed).
    let bad_magic = {
        let framed: usize = hs.last().map_or(0, |(at, r)| at + 28 + r.payload_len() as usize);
        stream.len() >= framed + 28 && stream[framed..framed + 4] != REQUEST_MAGIC.to_be_bytes()
    };
    let h = Harness::new(1);
    let (bs, blocks) = if mode % 2 == 0 { (512, 2048) } else { (4096, 256) };
    h.on(0, || pollux_bdev::malloc::create("nbd", bs, blocks, None, 0).expect("malloc"));
    let mut rig = Rig::new(h, "nbd");
    rig.raw(&[], reads);
    let piece = 1 + (mode >> 1) as usize;
    let n_sent = hs.len();
    let mut answered = HashSet::new();
    let check = |rig: &mut Rig, answered: &mut HashSet<[u8; 8]>| {
        for r in rig.take_replies() {
            assert!(answered.insert(r.handle), "request {:?} answered twice", r.handle);
            let n = u64::from_be_bytes(r.handle);
            assert!(n >= 1 && n as usize <= n_sent, "a reply to a handle never sent: {:?}", r.handle);
        }
        assert!(rig.bad_reply().is_none(), "{:?}", rig.bad_reply());
    };
    for chunk in stream.chunks(piece) {
        rig.raw(chunk, []);
        rig.pump();
        check(&mut rig, &mut answered);
    }
    rig.settle(100_000);
    check(&mut rig, &mut answered);
    if disc && !bad_magic {
        for h in &before_disc {
            assert!(answered.contains(h), "request {h:?} before the disconnect was not answered");
        }
    }
    rig.shutdown_write();
    for _ in 0..100_000 {
        if rig.is_closed() {
            break;
        }
        rig.pump();
    }
    check(&mut rig, &mut answered);
    assert!(rig.is_closed(), "the connection outlived the kernel's socket");
    // The descriptor's close is a message to its reactor.
    let b = rig.h.on(0, || bdev::get("nbd").expect("bdev"));
    let open = |rig: &Rig| rig.h.on(0, || bdev::open_count(&b));
    for _ in 0..1000 {
        if open(&rig) == 0 {
            break;
        }
        rig.pump();
    }
    assert_eq!(open(&rig), 0, "the connection kept the bdev open");
}
