//! The connection on a malloc bdev, with the test playing the kernel.

use pollux_core::bdev::{self, IoStatus, IoType};
use pollux_core::reactor::Harness;

use crate::conn::{MAX_HELD, MAX_IO};
use crate::fuzzing::{Rig, hold};
use crate::proto::{CMD_FLAG_FUA, Request, cmd, errno};

const BS: u32 = 512;
const BLOCKS: u64 = 8192;

fn rig() -> Rig {
    let h = Harness::new(1);
    h.on(0, || pollux_bdev::malloc::create("m0", BS, BLOCKS, None, 0).unwrap());
    Rig::new(h, "m0")
}

fn req(c: u16, n: u64, from: u64, len: u32) -> Request {
    Request { cmd: c, flags: 0, handle: n.to_be_bytes(), from, len }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn writes_read_back_small_and_large_and_in_pieces() {
    let mut r = rig();
    for (i, len) in [512usize, 4096, 300 << 10, 1 << 20].into_iter().enumerate() {
        let data = pattern(i as u8, len);
        let from = (i as u64) * (1 << 20);
        r.request(&req(cmd::WRITE, 10 + i as u64, from, len as u32), &data);
        let got = r.replies(1, 10_000);
        assert_eq!(got.len(), 1, "write {len}");
        assert_eq!((got[0].error, got[0].handle), (0, (10 + i as u64).to_be_bytes()));
        r.request(&req(cmd::READ, 20 + i as u64, from, len as u32), &[]);
        let got = r.replies(1, 10_000);
        assert_eq!(got.len(), 1, "read {len}");
        assert_eq!(got[0].error, 0);
        assert!(got[0].data == data, "read {len} differs");
    }
    // Two requests cut into single bytes, sent a byte per pass.
    let data = pattern(9, 1024);
    let mut bytes = req(cmd::WRITE, 1, 0, 1024).encode().to_vec();
    bytes.extend_from_slice(&data);
    bytes.extend_from_slice(&req(cmd::READ, 2, 0, 1024).encode());
    let mut got = Vec::new();
    for (k, b) in bytes.iter().enumerate() {
        r.raw(&[*b], if k == 0 { vec![(2u64.to_be_bytes(), 1024)] } else { vec![] });
        r.pump();
        got.extend(r.take_replies());
    }
    got.extend(r.replies(2 - got.len(), 1000));
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].data, data);
}

#[test]
fn bad_requests_get_an_errno_and_the_stream_stays_in_step() {
    let mut r = rig();
    let end = BLOCKS * BS as u64;
    // Beyond the end, with data that must be read and dropped.
    r.request(&req(cmd::WRITE, 1, end - 512, 1024), &pattern(1, 1024));
    // Misaligned, zero length, too long, unknown, and one whose data
    // would overflow the offset.
    r.request(&req(cmd::READ, 2, 100, 512), &[]);
    r.request(&req(cmd::READ, 3, 0, 0), &[]);
    r.request(&req(cmd::WRITE, 4, 0, MAX_IO + 512), &vec![7u8; (MAX_IO + 512) as usize]);
    r.request(&req(77, 5, 0, 512), &[]);
    r.request(&req(cmd::READ, 6, u64::MAX - 511, 512), &[]);
    // Then good ones: the dropped data did not shift the stream.
    r.request(&req(cmd::WRITE, 7, 0, 512), &pattern(2, 512));
    r.request(&req(cmd::FLUSH, 8, 0, 0), &[]);
    let mut fua = req(cmd::WRITE, 9, 512, 512);
    fua.flags = CMD_FLAG_FUA;
    r.request(&fua, &pattern(3, 512));
    r.request(&req(cmd::TRIM, 10, 4096, 4096), &[]);
    r.request(&req(cmd::READ, 11, 0, 1024), &[]);
    let mut got = r.replies(11, 100_000);
    got.sort_by_key(|x| u64::from_be_bytes(x.handle));
    let errs: Vec<(u64, u32)> = got.iter().map(|x| (u64::from_be_bytes(x.handle), x.error)).collect();
    assert_eq!(
        errs,
        vec![
            (1, errno::ENOSPC),
            (2, errno::EINVAL),
            (3, errno::EINVAL),
            (4, errno::EINVAL),
            (5, errno::ENOTSUP),
            (6, errno::ENOSPC),
            (7, 0),
            (8, 0),
            (9, 0),
            (10, 0),
            (11, 0)
        ]
    );
    let mut want = pattern(2, 512);
    want.extend(pattern(3, 512));
    assert!(got[10].data == want);
    assert!(r.bad_reply().is_none());
    let s = r.conn.stats();
    assert_eq!((s.requests, s.refused, s.failed), (11, 6, 0));
}

#[test]
fn a_wrong_magic_closes_the_connection_and_lets_the_bdev_go() {
    let mut r = rig();
    r.request(&req(cmd::WRITE, 1, 0, 512), &pattern(1, 512));
    let mut bad = req(cmd::READ, 2, 0, 512).encode();
    bad[3] ^= 0xff;
    r.raw(&bad, []);
    r.request(&req(cmd::READ, 3, 0, 512), &[]);
    let got = r.settle(10_000);
    assert!(got.iter().all(|x| x.handle != 3u64.to_be_bytes()), "{got:?}");
    assert!(r.saw_eof(), "the socket was not closed");
    assert!(r.is_closed());
    let b = r.h.on(0, || bdev::get("m0").unwrap());
    assert_eq!(r.h.on(0, || bdev::open_count(&b)), 0, "the bdev is still open");
}

#[test]
fn a_disconnect_answers_what_is_under_way_then_closes() {
    let mut r = rig();
    r.request(&req(cmd::WRITE, 1, 0, 64 << 10), &pattern(1, 64 << 10));
    r.request(&req(cmd::READ, 2, 0, 64 << 10), &[]);
    r.request(&req(cmd::DISC, 3, 0, 0), &[]);
    // Nothing after the disconnect is taken.
    r.request(&req(cmd::READ, 4, 0, 512), &[]);
    let got = r.settle(100_000);
    let handles: Vec<u64> = got.iter().map(|x| u64::from_be_bytes(x.handle)).collect();
    assert_eq!(handles, vec![1, 2], "{got:?}");
    assert_eq!(got[1].data, pattern(1, 64 << 10));
    assert!(r.saw_eof() && r.is_closed());
}

#[test]
fn a_kernel_that_does_not_read_replies_cannot_grow_the_daemon() {
    let mut r = rig();
    // 512 reads of 256 KiB: 128 MiB of replies, none read by the kernel.
    for i in 0..512u64 {
        r.request(&req(cmd::READ, i, (i % 16) * (256 << 10), 256 << 10), &[]);
    }
    let mut peak = 0;
    for _ in 0..2000 {
        // Run the reactor without reading: write what the socket takes.
        r.pump_without_reading();
        peak = peak.max(r.conn.backlog().0);
    }
    assert!(peak <= MAX_HELD + (256 << 10), "backlog reached {peak}");
    let taken = r.conn.stats().requests;
    assert!(taken < 300, "{taken} requests were taken although no reply was read");
    let got = r.replies(512, 1_000_000);
    assert_eq!(got.len(), 512);
    assert!(got.iter().all(|x| x.error == 0 && x.data.len() == 256 << 10));
}

#[test]
fn the_kernel_closing_its_socket_closes_the_connection() {
    let mut r = rig();
    r.request(&req(cmd::WRITE, 1, 0, 4096), &pattern(1, 4096));
    assert_eq!(r.replies(1, 1000).len(), 1);
    r.shutdown_write();
    r.settle(1000);
    assert!(r.is_closed());
}

fn hold_rig() -> Rig {
    let h = Harness::new(1);
    h.on(0, || hold::create("hold0"));
    Rig::new(h, "hold0")
}

/// Pump until `n` requests are held at the bdev (a retry waits a
/// millisecond on the clock).
fn until_held(r: &mut Rig, n: usize) -> Vec<IoType> {
    let t0 = std::time::Instant::now();
    loop {
        r.pump();
        let v = r.h.on(0, hold::held);
        if v.len() >= n || t0.elapsed() > std::time::Duration::from_secs(10) {
            return v;
        }
    }
}

#[test]
fn no_memory_from_the_bdev_is_tried_again_not_an_error() {
    // (Found by review: "no memory" was answered EIO, which a file
    // system takes as fatal; SPDK's bdev layer retries.)
    let mut r = hold_rig();
    r.request(&req(cmd::READ, 1, 0, 4096), &[]);
    r.request(&req(cmd::WRITE, 2, 4096, 4096), &pattern(1, 4096));
    let mut fua = req(cmd::WRITE, 3, 8192, 512);
    fua.flags = CMD_FLAG_FUA;
    r.request(&fua, &pattern(2, 512));
    r.request(&req(cmd::TRIM, 4, 0, 4096), &[]);
    assert_eq!(until_held(&mut r, 4).len(), 4);
    for _ in 0..3 {
        r.h.on(0, || hold::release(IoStatus::NoMemory));
        assert!(r.take_replies().is_empty());
        assert_eq!(until_held(&mut r, 4).len(), 4, "not submitted again");
    }
    // The FUA write's flush short of memory writes the data again.
    r.h.on(0, || hold::release(IoStatus::Success));
    let v = until_held(&mut r, 1);
    assert_eq!(v, vec![IoType::Flush]);
    r.h.on(0, || hold::release(IoStatus::NoMemory));
    assert_eq!(until_held(&mut r, 1), vec![IoType::Write]);
    r.h.on(0, || hold::release(IoStatus::Success));
    assert_eq!(until_held(&mut r, 1), vec![IoType::Flush]);
    r.h.on(0, || hold::release(IoStatus::Success));
    let mut got = r.replies(4, 10_000);
    got.sort_by_key(|x| u64::from_be_bytes(x.handle));
    assert_eq!(got.iter().map(|x| (u64::from_be_bytes(x.handle), x.error)).collect::<Vec<_>>(), vec![(1, 0), (2, 0), (3, 0), (4, 0)]);
    assert_eq!(r.conn.backlog(), (0, 0));
    // A real error is still an error.
    r.request(&req(cmd::READ, 5, 0, 512), &[]);
    until_held(&mut r, 1);
    r.h.on(0, || hold::release(IoStatus::Failed));
    assert_eq!(r.replies(1, 1000)[0].error, errno::EIO);
}

#[test]
fn an_abort_with_requests_at_the_bdev_closes_once_they_finish() {
    let mut r = hold_rig();
    for i in 0..4 {
        r.request(&req(cmd::READ, i, 0, 4096), &[]);
    }
    assert_eq!(until_held(&mut r, 4).len(), 4);
    let c = r.conn.clone();
    r.h.on(0, || c.abort());
    for _ in 0..100 {
        r.pump();
    }
    assert!(!r.is_closed(), "closed with requests at the bdev");
    r.h.on(0, || hold::release(IoStatus::Success));
    for _ in 0..100 {
        r.pump();
    }
    assert!(r.is_closed());
    assert!(r.take_replies().is_empty(), "replies after an abort");
}
