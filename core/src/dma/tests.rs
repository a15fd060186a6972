use super::*;
use crate::reactor::{self, Harness};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Mutex as StdMutex;

/// The allocator is process-wide; tests that count regions run one at a time.
static SERIAL: StdMutex<()> = StdMutex::new(());

struct Recorder(StdMutex<Vec<(bool, u64, usize)>>);
impl DmaMapper for Recorder {
    fn map(&self, vaddr: *mut u8, iova: Iova, len: usize) -> std::io::Result<()> {
        assert_eq!(vaddr as u64, iova.0, "IOVA = virtual address");
        self.0.lock().unwrap().push((true, iova.0, len));
        Ok(())
    }
    fn unmap(&self, iova: Iova, len: usize) -> std::io::Result<()> {
        self.0.lock().unwrap().push((false, iova.0, len));
        Ok(())
    }
}

#[test]
fn mappers_see_existing_and_later_regions_and_releases() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = DmaBuf::alloc(10_000).unwrap();
    let rec = Arc::new(Recorder(StdMutex::new(Vec::new())));
    let id = register_mapper(rec.clone()).unwrap();
    assert!(rec.0.lock().unwrap().iter().any(|&(m, iova, _)| m && iova == before.iova().0), "existing region mapped");
    let after = DmaBuf::alloc(5000).unwrap();
    assert!(rec.0.lock().unwrap().iter().any(|&(m, iova, _)| m && iova == after.iova().0), "new region mapped");
    let iova = after.iova().0;
    drop(after);
    assert!(rec.0.lock().unwrap().iter().any(|&(m, i, _)| !m && i == iova), "released region unmapped");
    unregister_mapper(id);
    drop(before);
}

#[test]
fn buffers_are_zeroed_writable_and_report_their_iova() {
    let mut b = DmaBuf::alloc(8192).unwrap();
    assert_eq!(b.len(), 8192);
    assert!(b.iter().all(|&x| x == 0));
    b[100] = 7;
    assert_eq!(b.iova().0, b.addr() as u64);
    assert_eq!(b.as_ptr() as usize % 4096, 0, "page aligned");
    assert!(region_of(b.as_ptr(), 8192).is_some());
}

#[test]
fn limit_refuses_allocations_beyond_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let used = stats().total_bytes;
    set_limit(Some(used + (1 << 20)));
    let err = DmaBuf::alloc(4 << 20).unwrap_err();
    assert!(matches!(err, DmaError::Limit { .. }), "{err}");
    assert!(err.to_string().contains("--mem-size"));
    let ok = DmaBuf::alloc(4096);
    set_limit(None);
    assert!(ok.is_ok());
}

#[test]
fn pool_buffers_return_on_drop_and_waiters_get_the_next_one() {
    let h = Harness::new(1);
    let got = Rc::new(Cell::new(0usize));
    let g = got.clone();
    let held = h.on(0, move || {
        let pool = Rc::new(BufPool::new((4096, 2), (65536, 1)).unwrap());
        reactor::set_local(pool.clone());
        let a = pool.get(100).unwrap();
        assert_eq!((a.len(), a.capacity()), (100, 4096));
        let b = pool.get(4096).unwrap();
        assert!(pool.get(10).is_none(), "small class exhausted");
        let big = pool.get(5000).unwrap();
        assert_eq!(big.capacity(), 65536);
        assert!(pool.get(70_000).is_none(), "beyond the large size");
        assert!(!pool.get_or_wait(300, move |buf| g.set(buf.len())));
        drop(a);
        (b, big)
    });
    assert_eq!(got.get(), 0, "served in a later iteration");
    h.step(0);
    h.step(0);
    assert_eq!(got.get(), 300);
    let st = h.on(0, || reactor::local::<BufPool>().unwrap().stats());
    assert_eq!(st.small_free, 1, "the waiter's buffer went back after its callback");
    assert_eq!(st.small_misses, 2);
    drop(held);
}

#[test]
fn zero_skips_buffers_known_to_be_zero_and_any_write_forgets_it() {
    let mut b = DmaBuf::alloc(4096).unwrap();
    b.zero();
    b[7] = 1;
    b.zero();
    assert!(b.iter().all(|&x| x == 0), "a write through deref_mut is noticed");
    let p = b.as_ptr();
    // SAFETY: p points at the buffer's first byte, which we own.
    unsafe { *p = 9 };
    b.zero();
    assert_eq!(b[0], 0, "a write through as_ptr is noticed");
}

#[test]
fn a_pool_buffer_known_to_be_zero_stays_known_through_the_pool() {
    let h = Harness::new(1);
    h.on(0, || {
        let pool = BufPool::new((0, 0), (65536, 1)).unwrap();
        let mut b = pool.get(65536).unwrap();
        b[3] = 7;
        b.zero();
        let read_only: u8 = b.iter().copied().max().unwrap();
        assert_eq!(read_only, 0);
        drop(b);
        let b = pool.get(65536).unwrap();
        assert!(b.is_known_zero(), "zeroed and only read: it comes back zeroed");
        // Handed to a device (which may write it): no longer known to be zero.
        let _ = b.iova();
        drop(b);
        let mut b = pool.get(65536).unwrap();
        assert!(!b.is_known_zero(), "a buffer a device could have written is zeroed again");
        b.zero();
        assert!(b.iter().all(|&x| x == 0));
    });
}

#[test]
fn buffers_carved_from_one_region_release_it_with_the_last_one() {
    // Other tests of this crate allocate DMA memory on their own threads,
    // so the region is followed by identity, not by the global count.
    let mut bufs = DmaBuf::alloc_many(200_000, 4).unwrap();
    let region = region_of(bufs[0].as_ptr(), 1).expect("a registered region");
    for b in &bufs {
        let r = region_of(b.as_ptr(), b.len()).expect("a registered region");
        assert!(Arc::ptr_eq(&r, &region), "one region for all four");
    }
    assert!(bufs.iter().all(|b| b.len() == 200_000 && b.addr() % 4096 == 0));
    assert!(bufs[1].addr() - bufs[0].addr() >= 200_000);
    bufs[3][199_999] = 1;
    let registered = |r: &Arc<Region>| state().regions.iter().any(|x| Arc::ptr_eq(x, r));
    bufs.truncate(1);
    assert!(registered(&region), "still in use");
    drop(bufs);
    assert!(!registered(&region), "released with the last buffer");
}

#[test]
fn carved_views_write_through_and_the_buffers_come_back_whole() {
    let mut a = DmaBuf::alloc(4096).unwrap();
    a.set_len(3000);
    let b = DmaBuf::alloc(4096).unwrap();
    let (pa, pb) = (a.addr(), b.addr());
    let mut bufs = vec![a, b];
    let cap = bufs.capacity();
    let mut carver = Carver::default();
    assert!(carver.load(&mut bufs));
    assert!(bufs.is_empty() && bufs.capacity() == cap, "the list keeps its capacity");
    assert_eq!(carver.len(), 7096);
    // Pieces across the two buffers (3000 + 4096 bytes), disjoint.
    // SAFETY: disjoint ranges.
    let mut views: Vec<Vec<DmaBuf>> =
        [(0, 1000), (2500, 1000), (5000, 2096)].iter().map(|&(o, l)| unsafe { carver.views(o, l) }.unwrap().collect()).collect();
    assert_eq!(views[1].iter().map(|v| v.len()).collect::<Vec<_>>(), [500, 500], "a piece across two buffers is two views");
    for (i, piece) in views.iter_mut().enumerate() {
        for v in piece.iter_mut() {
            v.fill(i as u8 + 1);
        }
    }
    // Not back while a view lives, and nothing else loads meanwhile.
    assert!(!carver.unload(&mut bufs) && bufs.is_empty());
    let mut other = vec![DmaBuf::alloc(512).unwrap()];
    assert!(!carver.load(&mut other) && other.len() == 1);
    drop(views);
    assert!(carver.unload(&mut bufs), "views are gone");
    assert!(carver.is_empty());
    let back = &bufs;
    assert_eq!((back[0].addr(), back[1].addr(), back[0].len()), (pa, pb, 3000));
    assert!(back[0][..1000].iter().all(|&x| x == 1) && back[0][1000..2500].iter().all(|&x| x == 0));
    assert!(back[0][2500..].iter().all(|&x| x == 2) && back[1][..500].iter().all(|&x| x == 2));
    assert!(back[1][2000..].iter().all(|&x| x == 3) && back[1][500..2000].iter().all(|&x| x == 0));
    // Reused: the same data for two readers (a mirror), then back again.
    assert!(carver.load(&mut bufs));
    // SAFETY: the views are only read.
    let (x, y): (Vec<DmaBuf>, Vec<DmaBuf>) =
        unsafe { (carver.views(0, 7096).unwrap().collect(), carver.views(0, 7096).unwrap().collect()) };
    assert_eq!(x[0].addr(), y[0].addr());
    assert_eq!(x.iter().map(|v| v.len()).sum::<usize>(), 7096);
    drop((x, y));
    assert!(carver.unload(&mut bufs) && bufs.len() == 2);
}

#[test]
fn carving_refuses_ranges_outside_the_buffers() {
    let mut bufs = vec![DmaBuf::alloc(4096).unwrap()];
    let mut carver = Carver::default();
    assert!(carver.load(&mut bufs));
    // SAFETY: nothing is written.
    unsafe {
        assert!(carver.views(4000, 200).is_none());
        assert!(carver.views(usize::MAX, 2).is_none());
        assert_eq!(carver.views(4000, 96).unwrap().count(), 1);
    }
    assert!(carver.unload(&mut bufs) && bufs.len() == 1);
}

#[test]
fn a_pool_buffer_is_wanted_back_when_its_pool_runs_short() {
    let h = Harness::new(1);
    h.on(0, || {
        let pool = Rc::new(BufPool::new((4096, 8), (0, 0)).unwrap());
        let mut held: Vec<DmaBuf> = (0..6).map(|_| pool.get(4096).unwrap()).collect();
        assert!(!held[0].wanted_back(), "2 of 8 free: not short");
        held.push(pool.get(4096).unwrap());
        assert!(held[0].wanted_back(), "1 of 8 free: short");
        held.truncate(4);
        assert!(!held[0].wanted_back(), "4 of 8 free again");
        held.extend((0..4).map(|_| pool.get(4096).unwrap()));
        assert!(!pool.get_or_wait(4096, |_| {}), "none free: the request waits");
        held.truncate(2);
        assert!(held[0].wanted_back(), "6 of 8 free, but a request waits (until the pool's poller serves it)");
        let own = DmaBuf::alloc(4096).unwrap();
        assert!(own.wanted_back(), "a buffer of its own region: always");
    });
}

#[test]
fn a_send_queue_may_hold_half_of_a_buffers_pool() {
    use crate::sock::{OutBuf, TxBuf};
    let h = Harness::new(1);
    h.on(0, || {
        let pool = Rc::new(BufPool::new((4096, 8), (65536, 6)).unwrap());
        let small = pool.get(4096).unwrap();
        let large = pool.get(65536).unwrap();
        assert_eq!((small.pool_size(), large.pool_size()), (8 * 4096, 6 * 65536));
        assert_eq!(OutBuf::Dma(small).hold_cap(), 4 * 4096);
        assert_eq!(OutBuf::Dma(large).hold_cap(), 3 * 65536);
        let own = DmaBuf::alloc(4096).unwrap();
        assert_eq!(own.pool_size(), 0);
        assert_eq!(OutBuf::Dma(own).hold_cap(), 0, "not from a pool: copied at a full socket");
    });
}
