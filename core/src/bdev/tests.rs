//! The bdev layer against a small in-memory backend, on the step harness.

use super::*;
use crate::dma::{self, DmaBuf};
use crate::reactor::{self, Harness};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A RAM backend that completes at once (inside submit), with options to
/// require aligned buffers and to hold requests until released.
struct Ram {
    data: std::sync::Mutex<Vec<u8>>,
    align: usize,
    hold: bool,
    destroyed: AtomicUsize,
    /// Backend channels dropped.
    channels_dropped: AtomicUsize,
}

thread_local! {
    static HELD: RefCell<Vec<BdevIo>> = const { RefCell::new(Vec::new()) };
}

struct RamChannel(Arc<Ram>);

impl Drop for RamChannel {
    fn drop(&mut self) {
        self.0.channels_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Backend for Arc<Ram> {
    fn module_name(&self) -> &'static str {
        "test_ram"
    }
    fn product_name(&self) -> &'static str {
        "Test RAM disk"
    }
    fn supports(&self, kind: IoType) -> bool {
        kind != IoType::Compare
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(RamChannel(self.clone()))
    }
    fn buffer_alignment(&self) -> usize {
        self.align
    }
    fn destroy(&self) {
        self.destroyed.fetch_add(1, Ordering::SeqCst);
    }
}

impl BackendChannel for RamChannel {
    fn submit(&self, mut io: BdevIo) {
        let ram = &self.0;
        for b in io.buffers() {
            assert_eq!(b.addr() % ram.align, 0, "backend got a misaligned buffer");
        }
        let off = io.offset_bytes() as usize;
        let len = io.len_bytes() as usize;
        match io.kind() {
            IoType::Read => {
                let data = ram.data.lock().unwrap()[off..off + len].to_vec();
                io.copy_in(0, &data);
            }
            IoType::Write => {
                let mut tmp = vec![0u8; len];
                io.copy_out(0, &mut tmp);
                ram.data.lock().unwrap()[off..off + len].copy_from_slice(&tmp);
            }
            IoType::Unmap | IoType::WriteZeroes => ram.data.lock().unwrap()[off..off + len].fill(0),
            _ => {}
        }
        if ram.hold {
            HELD.with(|h| h.borrow_mut().push(io));
        } else {
            io.complete(IoStatus::Success);
        }
    }
}

fn ram(blocks: u64, align: usize, hold: bool) -> Arc<Ram> {
    Arc::new(Ram {
        data: std::sync::Mutex::new(vec![0; blocks as usize * 512]),
        align,
        hold,
        destroyed: AtomicUsize::new(0),
        channels_dropped: AtomicUsize::new(0),
    })
}

fn make(h: &Harness, name: &str, r: &Arc<Ram>, blocks: u64) -> Arc<Bdev> {
    let backend: Arc<dyn Backend> = Arc::new(r.clone());
    h.on(0, || register(BdevSpec { name: name.into(), block_size: 512, num_blocks: blocks, uuid: None, backend }).unwrap())
}

fn buf(len: usize, fill: u8) -> DmaBuf {
    let mut b = dma::pool().unwrap().get(len).unwrap();
    b.fill(fill);
    b
}

type Out = Rc<RefCell<Vec<(IoStatus, Vec<u8>)>>>;

fn collect(out: &Out) -> impl FnOnce(BdevIo) + 'static {
    let out = out.clone();
    move |mut io: BdevIo| {
        let data: Vec<u8> = io.take_buffers().iter().flat_map(|b| b.to_vec()).collect();
        out.borrow_mut().push((io.status(), data));
    }
}

#[test]
fn write_then_read_back_with_deferred_completion() {
    let h = Harness::new(1);
    let r = ram(64, 1, false);
    make(&h, "ram0", &r, 64);
    let out: Out = Rc::default();
    let o = out.clone();
    h.on(0, move || {
        let d = open("ram0", true, |_| {}).unwrap();
        let ch = d.channel();
        d.write(&ch, [buf(1024, 0xab)], 4, 2, collect(&o));
        d.read(&ch, [buf(512, 0), buf(512, 0)], 4, 2, collect(&o));
        // Completions made inside submit run in a later iteration.
        assert!(o.borrow().is_empty());
        reactor::set_local(Rc::new((d, ch)));
    });
    h.run_until_idle(10);
    let out = out.borrow();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, IoStatus::Success);
    assert_eq!(out[1], (IoStatus::Success, vec![0xab; 1024]));
    assert_eq!(&r.data.lock().unwrap()[4 * 512..6 * 512], &[0xab; 1024][..]);
}

#[test]
fn bad_requests_complete_with_errors() {
    let h = Harness::new(1);
    let r = ram(16, 1, false);
    make(&h, "ram1", &r, 16);
    let out: Out = Rc::default();
    let o = out.clone();
    h.on(0, move || {
        let ro = open("ram1", false, |_| {}).unwrap();
        let rw = open("ram1", true, |_| {}).unwrap();
        let ch = rw.channel();
        rw.read(&ch, [buf(512, 0)], 16, 1, collect(&o)); // beyond the end
        rw.read(&ch, [buf(512, 0)], u64::MAX, 1, collect(&o)); // overflowing range
        rw.read(&ch, [buf(100, 0)], 0, 1, collect(&o)); // buffer shorter than a block
        rw.compare(&ch, [buf(512, 0)], 0, 1, collect(&o)); // unsupported type
        ro.write(&ch, [buf(512, 0)], 0, 1, collect(&o)); // read-only descriptor
        rw.read(&ch, [buf(0, 0)], 0, 0, collect(&o)); // zero blocks
        reactor::set_local(Rc::new((ro, rw, ch)));
    });
    h.run_until_idle(10);
    let st: Vec<IoStatus> = out.borrow().iter().map(|x| x.0).collect();
    assert_eq!(
        st,
        vec![
            IoStatus::OutOfRange,
            IoStatus::OutOfRange,
            IoStatus::InvalidBuffer,
            IoStatus::Unsupported,
            IoStatus::ReadOnly,
            IoStatus::OutOfRange
        ]
    );
    assert!(r.data.lock().unwrap().iter().all(|&b| b == 0), "nothing was written");
}

#[test]
fn misaligned_buffers_are_bounced_for_backends_that_need_alignment() {
    let h = Harness::new(1);
    let r = ram(64, 4096, false);
    make(&h, "aligned", &r, 64);
    let out: Out = Rc::default();
    let o = out.clone();
    h.on(0, move || {
        let d = open("aligned", true, |_| {}).unwrap();
        let ch = d.channel();
        // Two 512-byte buffers: lengths not multiples of 4096.
        d.write(&ch, [buf(512, 1), buf(512, 2)], 8, 2, collect(&o));
        d.read(&ch, [buf(512, 0), buf(512, 0)], 8, 2, collect(&o));
        reactor::set_local(Rc::new((d, ch)));
    });
    h.run_until_idle(10);
    let out = out.borrow();
    assert_eq!(out[0].0, IoStatus::Success);
    let mut want = vec![1u8; 512];
    want.extend([2u8; 512]);
    assert_eq!(out[1], (IoStatus::Success, want), "caller's buffers came back filled");
}

#[test]
fn delete_while_open_notifies_and_completes_after_close() {
    let h = Harness::new(2);
    let r = ram(16, 1, false);
    make(&h, "victim", &r, 16);
    let events = Arc::new(AtomicUsize::new(0));
    let deleted = Rc::new(Cell::new(false));
    let ev = events.clone();
    // Opened on reactor 0, used from reactor 1.
    let desc = h.on(0, move || {
        open("victim", true, move |e| {
            assert_eq!(e, BdevEvent::Remove);
            ev.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
    });
    let d1 = desc.clone();
    h.on(1, move || reactor::set_local(Rc::new(d1)));
    let del = deleted.clone();
    h.on(0, move || {
        unregister("victim", move |res| {
            assert!(res.is_ok());
            del.set(true);
        })
    });
    h.run_until_idle(10);
    assert_eq!(events.load(Ordering::SeqCst), 1, "user told to close");
    assert!(!deleted.get(), "still open");
    // I/O on a bdev being deleted fails.
    let out: Out = Rc::default();
    let o = out.clone();
    let d2 = desc.clone();
    h.on(1, move || {
        let ch = d2.channel();
        d2.read(&ch, [buf(512, 0)], 0, 1, collect(&o));
        reactor::set_local(Rc::new(ch));
    });
    h.run_until_idle(10);
    assert_eq!(out.borrow()[0].0, IoStatus::NoDevice);
    assert!(h.on(0, || open("victim", false, |_| {})).is_err(), "cannot open a bdev being deleted");
    // Close everywhere.
    drop(desc);
    h.on(1, || {
        reactor::take_local::<Descriptor>();
        reactor::take_local::<crate::io_channel::IoChannel<Bdev>>();
    });
    h.run_until_idle(10);
    assert!(deleted.get(), "deleted after the last close");
    assert_eq!(r.destroyed.load(Ordering::SeqCst), 1);
    assert!(h.on(0, || get("victim")).is_none());
}

#[test]
fn names_must_be_unique_and_bdevs_well_formed() {
    let h = Harness::new(1);
    let r = ram(8, 1, false);
    make(&h, "dup", &r, 8);
    let backend: Arc<dyn Backend> = Arc::new(r.clone());
    let b2 = backend.clone();
    let e = h.on(0, move || register(BdevSpec { name: "dup".into(), block_size: 512, num_blocks: 8, uuid: None, backend }).unwrap_err());
    assert_eq!(e, BdevError::Exists("dup".into()));
    assert_eq!(e.errno(), libc::EEXIST);
    let b3 = b2.clone();
    let e =
        h.on(0, move || register(BdevSpec { name: "odd".into(), block_size: 520, num_blocks: 8, uuid: None, backend: b2 }).unwrap_err());
    assert!(matches!(e, BdevError::Invalid(_)));
    // A size in bytes beyond 64 bits (a remote namespace's NSZE is the
    // remote's to choose): refused, and one block fewer is taken.
    let b4 = b3.clone();
    let e = h.on(0, move || {
        register(BdevSpec { name: "vast".into(), block_size: 4096, num_blocks: 1 << 52, uuid: None, backend: b3 }).unwrap_err()
    });
    assert!(matches!(&e, BdevError::Invalid(m) if m.contains("do not fit in 64 bits")), "{e:?}");
    let size = h.on(0, move || {
        register(BdevSpec { name: "vast".into(), block_size: 4096, num_blocks: (1 << 52) - 1, uuid: None, backend: b4 })
            .unwrap()
            .size_bytes()
    });
    assert_eq!(size, u64::MAX - 4095);
    assert_eq!(h.on(0, || open("nope", false, |_| {}).unwrap_err()), BdevError::NotFound("nope".into()));
}

#[test]
fn statistics_count_per_channel_and_a_dropped_request_still_calls_back() {
    let h = Harness::new(1);
    let r = ram(16, 1, true);
    make(&h, "held", &r, 16);
    let out: Out = Rc::default();
    let o = out.clone();
    h.on(0, move || {
        let d = open("held", true, |_| {}).unwrap();
        let ch = d.channel();
        d.write(&ch, [buf(512, 3)], 0, 1, collect(&o));
        d.write(&ch, [buf(512, 4)], 1, 1, collect(&o));
        assert_eq!(ch.outstanding(), 2);
        reactor::set_local(Rc::new((d, ch)));
    });
    // Complete one, drop the other without completing.
    h.on(0, || {
        let mut held = HELD.with(|x| std::mem::take(&mut *x.borrow_mut()));
        let second = held.pop().unwrap();
        held.pop().unwrap().complete(IoStatus::Success);
        drop(second);
    });
    h.run_until_idle(10);
    let st: Vec<IoStatus> = out.borrow().iter().map(|x| x.0).collect();
    assert_eq!(st, vec![IoStatus::Success, IoStatus::Aborted]);
    let (writes, errors, outstanding) = h.on(0, || {
        let (_, ch) = &*reactor::local::<(Descriptor, crate::io_channel::IoChannel<Bdev>)>().unwrap();
        let s = ch.stats();
        (s.write.ops, s.errors, ch.outstanding())
    });
    assert_eq!((writes, errors, outstanding), (1, 0, 0));
}

/// Fixed memory a test backend lends.
struct Shelf(Box<[u8]>);

// SAFETY: a boxed slice that never changes, alive while the value lives.
unsafe impl crate::dma::LendSource for Shelf {
    fn base(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn size(&self) -> usize {
        self.0.len()
    }
    fn copy_out(&self, off: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.0[off..off + dst.len()]);
    }
}

struct Lender(Arc<Shelf>);
struct LenderChannel(Arc<Shelf>);

impl Backend for Lender {
    fn module_name(&self) -> &'static str {
        "test_lender"
    }
    fn product_name(&self) -> &'static str {
        "Test lending disk"
    }
    fn supports(&self, kind: IoType) -> bool {
        kind == IoType::Read
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(LenderChannel(self.0.clone()))
    }
    fn lends_reads(&self) -> bool {
        true
    }
}

impl BackendChannel for LenderChannel {
    fn submit(&self, mut io: BdevIo) {
        let (off, len) = (io.offset_bytes() as usize, io.len_bytes() as usize);
        if io.wants_lend() {
            io.lend(crate::dma::Lent::new(self.0.clone(), off, len));
        } else {
            io.copy_in(0, &self.0.0[off..off + len]);
        }
        io.complete(IoStatus::Success);
    }
}

/// A read that brings no buffers is lent the memory of a backend that
/// lends (and the same read with buffers gets a copy); a bdev that does
/// not lend refuses such a read instead of answering without data.
#[test]
fn a_read_without_buffers_is_lent_memory_only_by_a_lending_backend() {
    let h = Harness::new(1);
    let shelf: Box<[u8]> = (0..64 * 512).map(|i| (i % 253) as u8).collect();
    let backend: Arc<dyn Backend> = Arc::new(Lender(Arc::new(Shelf(shelf.clone()))));
    h.on(0, || register(BdevSpec { name: "lender".into(), block_size: 512, num_blocks: 64, uuid: None, backend }).unwrap());
    make(&h, "ram1", &ram(64, 1, false), 64);
    type Got = Rc<RefCell<Vec<(IoStatus, Option<Vec<u8>>, Vec<u8>)>>>;
    let got: Got = Rc::default();
    let g = got.clone();
    h.on(0, move || {
        let cb = |g: &Got| {
            let g = g.clone();
            move |mut io: BdevIo| {
                let lent = io.take_lent().map(|l| {
                    let mut v = Vec::new();
                    l.append_to(0, l.len(), &mut v);
                    v
                });
                let bufs = io.take_buffers().iter().flat_map(|b| b.to_vec()).collect();
                g.borrow_mut().push((io.status(), lent, bufs));
            }
        };
        let d = open("lender", false, |_| {}).unwrap();
        assert!(d.bdev().lends_reads());
        let ch = d.channel();
        d.read_lend(&ch, 3, 2, cb(&g));
        d.read(&ch, [buf(1024, 0)], 3, 2, cb(&g));
        let r = open("ram1", false, |_| {}).unwrap();
        assert!(!r.bdev().lends_reads());
        let rch = r.channel();
        r.read_lend(&rch, 0, 1, cb(&g));
        reactor::set_local(Rc::new((d, ch, r, rch)));
    });
    h.run_until_idle(10);
    let got = got.borrow();
    let want = shelf[3 * 512..5 * 512].to_vec();
    assert_eq!(got[0], (IoStatus::Success, Some(want.clone()), vec![]));
    assert_eq!(got[1], (IoStatus::Success, None, want));
    assert_eq!(got[2], (IoStatus::InvalidBuffer, None, vec![]));
}

#[test]
fn a_resize_is_told_to_users_and_an_open_bdev_does_not_shrink() {
    let h = Harness::new(2);
    let r = ram(16, 1, false);
    make(&h, "grows", &r, 16);
    let events = Arc::new(AtomicUsize::new(0));
    let ev = events.clone();
    let desc = h.on(0, move || {
        open("grows", true, move |e| {
            assert_eq!(e, BdevEvent::Resize);
            ev.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
    });
    let res = h.on(0, || notify_blockcnt_change("grows", 32));
    assert!(res.is_ok(), "{res:?}");
    h.run_until_idle(10);
    assert_eq!(events.load(Ordering::SeqCst), 1);
    assert_eq!(desc.bdev().num_blocks(), 32);
    let res = h.on(0, || notify_blockcnt_change("grows", 8));
    assert!(matches!(res, Err(BdevError::Busy(_))), "{res:?}");
    assert_eq!(desc.bdev().num_blocks(), 32);
    let res = h.on(0, || notify_blockcnt_change("nope", 8));
    assert!(matches!(res, Err(BdevError::NotFound(_))), "{res:?}");
    // Growing past 2^64 bytes (512-byte blocks: 2^55 of them) is refused.
    let res = h.on(0, || notify_blockcnt_change("grows", 1 << 55));
    assert!(matches!(&res, Err(BdevError::Invalid(m)) if m.contains("do not fit in 64 bits")), "{res:?}");
    assert_eq!(desc.bdev().num_blocks(), 32);
}

#[test]
fn aliases_claims_and_examiners() {
    let h = Harness::new(1);
    let r = ram(64, 1, false);
    make(&h, "ram0", &r, 64);
    h.on(0, || {
        add_alias("ram0", "store/vol").unwrap();
        assert_eq!(get("store/vol").unwrap().name(), "ram0");
        assert!(matches!(add_alias("ram0", "ram0"), Err(BdevError::Exists(_))));
        let b = get("ram0").unwrap();
        b.claim("lvol").unwrap();
        assert!(b.claim("other").is_err());
        // Claimed: readers only.
        assert!(matches!(open("store/vol", true, |_| {}), Err(BdevError::Busy(_))));
        assert!(open("store/vol", false, |_| {}).is_ok());
        b.release_claim();
        assert!(open("store/vol", true, |_| {}).is_ok());
        remove_alias("ram0", "store/vol").unwrap();
        assert!(get("store/vol").is_none());
    });
    // An examiner sees the bdevs there and those that come; waiting for
    // examination ends when every token is dropped.
    let seen: Rc<RefCell<Vec<String>>> = Rc::default();
    let kept: Rc<RefCell<Vec<Examination>>> = Rc::default();
    let (s, k) = (seen.clone(), kept.clone());
    h.on(0, move || {
        register_examiner("test", move |b, token| {
            s.borrow_mut().push(b.name().to_string());
            k.borrow_mut().push(token);
        })
        .unwrap()
    });
    make(&h, "ram1", &ram(64, 1, false), 64);
    h.run_until_idle(10);
    assert_eq!(*seen.borrow(), ["ram0", "ram1"]);
    let waited = Rc::new(Cell::new(false));
    let w = waited.clone();
    h.on(0, move || wait_for_examine(move || w.set(true)));
    assert!(!waited.get(), "examinations are still held");
    h.on(0, || kept.borrow_mut().clear());
    assert!(waited.get());
}

/// A remapped bdev for [`remap`]: its backend's own submit only counts and
/// refuses, so what reaches the base went by the bdev layer's fast path.
struct Mapped {
    shared: Arc<remap::RemapShared>,
    base: Descriptor,
    slow: Arc<AtomicUsize>,
}

thread_local! {
    static MAPPED_WRITES: Rc<Cell<u64>> = Rc::new(Cell::new(0));
}

struct MappedChannel {
    shared: Arc<remap::RemapShared>,
    ch: crate::io_channel::IoChannel<Bdev>,
    slow: Arc<AtomicUsize>,
}

impl Backend for Mapped {
    fn module_name(&self) -> &'static str {
        "test_mapped"
    }
    fn product_name(&self) -> &'static str {
        "Test remapped disk"
    }
    fn supports(&self, kind: IoType) -> bool {
        matches!(kind, IoType::Read | IoType::Write | IoType::Flush)
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(MappedChannel { shared: self.shared.clone(), ch: self.base.channel(), slow: self.slow.clone() })
    }
}

impl BackendChannel for MappedChannel {
    fn submit(&self, io: BdevIo) {
        self.slow.fetch_add(1, Ordering::SeqCst);
        io.complete(IoStatus::Unsupported);
    }
    fn remap(&self) -> Option<remap::Remap> {
        Some(remap::Remap::new(self.shared.clone(), self.ch.clone(), true, MAPPED_WRITES.with(|w| w.clone())))
    }
}

#[test]
fn a_remapped_bdev_sends_requests_within_a_mapped_cluster_straight_to_its_base() {
    let h = Harness::new(1);
    let r = ram(64, 1, true);
    make(&h, "ram-base", &r, 64);
    // 8-block clusters: cluster 0 at base cluster 3, 1 not there, 2 at 5,
    // 3 at 100 (past the base's end: a corrupt map).
    let table = Arc::new(remap::ClusterTable::new(&[3, 0, 5, 100]));
    let shared = Arc::new(remap::RemapShared::new(8, table.clone(), false));
    let slow = Arc::new(AtomicUsize::new(0));
    let (sh, sl) = (shared.clone(), slow.clone());
    h.on(0, move || {
        let base = open("ram-base", true, |_| {}).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(Mapped { shared: sh, base, slow: sl });
        register(BdevSpec { name: "mapped".into(), block_size: 512, num_blocks: 32, uuid: None, backend }).unwrap();
    });
    let out: Out = Rc::default();
    let o = out.clone();
    let release = |h: &Harness| {
        h.on(0, || {
            for io in HELD.with(|x| std::mem::take(&mut *x.borrow_mut())) {
                io.complete(IoStatus::Success);
            }
        });
        h.run_until_idle(10);
    };
    h.on(0, move || {
        let d = open("mapped", true, |_| {}).unwrap();
        let ch = d.channel();
        d.write(&ch, [buf(1024, 0x5a)], 2, 2, collect(&o));
        reactor::set_local(Rc::new((d, ch)));
    });
    assert_eq!(h.on(0, || MAPPED_WRITES.with(|w| w.get())), 1, "the write is counted in flight");
    release(&h);
    assert_eq!(h.on(0, || MAPPED_WRITES.with(|w| w.get())), 0, "and no more once done");
    assert_eq!(out.borrow()[0].0, IoStatus::Success);
    assert_eq!(&r.data.lock().unwrap()[(3 * 8 + 2) * 512..(3 * 8 + 4) * 512], &[0x5a; 1024][..], "at base cluster 3");
    assert_eq!(slow.load(Ordering::SeqCst), 0);

    // Each of these goes to the backend instead: a cluster not there, a
    // request across clusters, the corrupt entry, a frozen bdev's write,
    // a flush.
    let submit = |h: &Harness, kind: IoType, off: u64, n: u64| {
        let o = out.clone();
        h.on(0, move || {
            let (d, ch) = &*reactor::local::<(Descriptor, crate::io_channel::IoChannel<Bdev>)>().unwrap();
            let bufs: Vec<DmaBuf> = if kind.has_data() { vec![buf(n as usize * 512, 0)] } else { Vec::new() };
            d.submit(ch, kind, bufs, off, n, collect(&o));
        });
        release(h);
        out.borrow().last().unwrap().0
    };
    assert_eq!(submit(&h, IoType::Read, 8, 1), IoStatus::Unsupported);
    assert_eq!(submit(&h, IoType::Read, 7, 2), IoStatus::Unsupported);
    assert_eq!(submit(&h, IoType::Read, 24, 1), IoStatus::Unsupported);
    shared.set_frozen(true);
    assert_eq!(submit(&h, IoType::Write, 0, 1), IoStatus::Unsupported);
    assert_eq!(submit(&h, IoType::Read, 0, 1), IoStatus::Success, "reads go on while frozen");
    shared.set_frozen(false);
    assert_eq!(submit(&h, IoType::Flush, 0, 32), IoStatus::Unsupported);
    assert_eq!(slow.load(Ordering::SeqCst), 5);

    // Read back what was written, the request's own offset kept.
    let o = out.clone();
    h.on(0, move || {
        let (d, ch) = &*reactor::local::<(Descriptor, crate::io_channel::IoChannel<Bdev>)>().unwrap();
        d.read(ch, [buf(1024, 0)], 2, 2, move |io: BdevIo| {
            assert_eq!(io.offset_blocks(), 2, "the consumer sees its own offset");
            collect(&o)(io)
        });
    });
    release(&h);
    assert_eq!(*out.borrow().last().unwrap(), (IoStatus::Success, vec![0x5a; 1024]));

    // A cluster allocated later, and a new table, are seen at once.
    r.data.lock().unwrap()[(6 * 8) * 512..(6 * 8 + 1) * 512].fill(0x66);
    shared.set_cluster(&table, 1, 6);
    assert_eq!(submit(&h, IoType::Read, 8, 1), IoStatus::Success);
    assert_eq!(out.borrow().last().unwrap().1, vec![0x66; 512]);
    shared.set_table(Arc::new(remap::ClusterTable::new(&[0, 0, 0, 0])));
    assert_eq!(submit(&h, IoType::Read, 0, 1), IoStatus::Unsupported, "the new table has no cluster 0");
    r.data.lock().unwrap()[8 * 8 * 512 - 512..8 * 8 * 512].fill(0x77);
    shared.set_table(Arc::new(remap::ClusterTable::new(&[7, 0, 0, 0])));
    assert_eq!(submit(&h, IoType::Read, 7, 1), IoStatus::Success);
    assert_eq!(out.borrow().last().unwrap().1, vec![0x77; 512], "the last block of base cluster 7");
    assert_eq!(slow.load(Ordering::SeqCst), 6);

    // A table in one run (base clusters 2 to 5): a request across
    // clusters goes to the base too, at the run's offset.
    r.data.lock().unwrap()[(2 * 8 + 6) * 512..(2 * 8 + 10) * 512].fill(0x88);
    let run = Arc::new(remap::ClusterTable::new(&[2, 3, 4, 5]));
    shared.set_table(run.clone());
    assert_eq!(submit(&h, IoType::Read, 6, 4), IoStatus::Success, "across clusters 0 and 1");
    assert_eq!(out.borrow().last().unwrap().1, vec![0x88; 4 * 512]);
    // A cluster of the run moved (cluster 1 to base cluster 6, which
    // holds 0x66): the channel, which maps a run by one offset it keeps,
    // reads the new place, and across clusters no longer by the run.
    shared.set_cluster(&run, 1, 6);
    assert_eq!(submit(&h, IoType::Read, 8, 1), IoStatus::Success);
    assert_eq!(out.borrow().last().unwrap().1, vec![0x66; 512], "base cluster 6, not 3");
    assert_eq!(submit(&h, IoType::Read, 6, 4), IoStatus::Unsupported, "across clusters: to the backend");
    let moved = slow.load(Ordering::SeqCst);
    shared.set_table(Arc::new(remap::ClusterTable::new(&[2, 3, 4, 5])));
    // The read-only switch stops writes, not reads; a read-only base
    // likewise (its channel's `no_writes`, see the 4k bdev below).
    shared.set_read_only(true);
    assert_eq!(submit(&h, IoType::Write, 0, 1), IoStatus::Unsupported);
    assert_eq!(submit(&h, IoType::Read, 0, 1), IoStatus::Success);
    shared.set_read_only(false);
    assert_eq!(submit(&h, IoType::Write, 0, 1), IoStatus::Success);
    assert_eq!(slow.load(Ordering::SeqCst), moved + 1);
    // A run that ends past the base (clusters 6 to 9 of an 8-cluster
    // base): what is on the base goes there, the rest to the backend.
    shared.set_table(Arc::new(remap::ClusterTable::new(&[6, 7, 8, 9])));
    assert_eq!(submit(&h, IoType::Read, 8, 1), IoStatus::Success, "base cluster 7");
    assert_eq!(submit(&h, IoType::Read, 15, 2), IoStatus::Unsupported, "into base cluster 8");
    assert_eq!(submit(&h, IoType::Read, 16, 1), IoStatus::Unsupported);
    assert_eq!(slow.load(Ordering::SeqCst), moved + 3);
    h.on(0, || drop(reactor::take_local::<(Descriptor, crate::io_channel::IoChannel<Bdev>)>()));

    // A remapped bdev whose blocks are not its base's size gets no fast
    // path (the layer checks once, when its channel is made): its read of
    // mapped cluster 0 goes to the backend.
    let (sh, sl) = (shared.clone(), slow.clone());
    h.on(0, move || {
        let base = open("ram-base", true, |_| {}).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(Mapped { shared: sh, base, slow: sl });
        register(BdevSpec { name: "mapped-4k".into(), block_size: 4096, num_blocks: 4, uuid: None, backend }).unwrap();
        let d = open("mapped-4k", false, |_| {}).unwrap();
        let ch = d.channel();
        reactor::set_local(Rc::new((d, ch)));
    });
    let o = out.clone();
    h.on(0, move || {
        let (d, ch) = &*reactor::local::<(Descriptor, crate::io_channel::IoChannel<Bdev>)>().unwrap();
        d.read(ch, [buf(4096, 0)], 0, 1, collect(&o));
    });
    release(&h);
    assert_eq!(out.borrow().last().unwrap().0, IoStatus::Unsupported);
    assert_eq!(slow.load(Ordering::SeqCst), moved + 4);
    h.on(0, || drop(reactor::take_local::<(Descriptor, crate::io_channel::IoChannel<Bdev>)>()));
}

/// Nothing of a channel outlives it: its home and its free request slots
/// held each other, and leaked with every channel dropped (a command's
/// channel of the moment, a connection's); a request still in flight when
/// its channel goes frees its slot when it completes.
#[test]
fn a_dropped_channel_leaves_nothing_behind() {
    let h = Harness::new(1);
    let r = ram(16, 1, true);
    make(&h, "held", &r, 16);
    let held = || HELD.with(|x| std::mem::take(&mut *x.borrow_mut()));
    let out: Out = Rc::default();
    let o = out.clone();
    // One request done (its slot back in the free list), one in flight.
    let ch = h.on(0, move || {
        let d = open("held", true, |_| {}).unwrap();
        let ch = d.channel();
        d.write(&ch, [buf(512, 3)], 0, 1, collect(&o));
        held().pop().unwrap().complete(IoStatus::Success);
        d.write(&ch, [buf(512, 4)], 1, 1, collect(&o));
        reactor::set_local(Rc::new(d));
        ch
    });
    h.run_until_idle(10);
    let home = Rc::downgrade(&ch.home);
    h.on(0, || drop(ch));
    assert_eq!(r.channels_dropped.load(Ordering::SeqCst), 1);
    assert!(home.upgrade().is_some(), "the request in flight holds the home");
    h.on(0, || held().pop().unwrap().complete(IoStatus::Success));
    h.run_until_idle(10);
    let st: Vec<IoStatus> = out.borrow().iter().map(|x| x.0).collect();
    assert_eq!(st, [IoStatus::Success, IoStatus::Success]);
    assert!(home.upgrade().is_none(), "the channel's home (and its free slots) outlived it");
    // Both writes are in the bdev's statistics (bdev_get_iostat), the one
    // that ended after its channel closed too.
    let writes = h.on(0, || get("held").unwrap().retired.lock().unwrap().write.ops);
    assert_eq!(writes, 2, "a request that ended after its channel closed was not counted");
}
