//! The C side of RDMA, and all of this crate's `unsafe`: rdma-core's ABI
//! (x86_64, rdma-core 44.0 as in Debian 12), libibverbs and librdmacm
//! opened at run time, and the data-path verbs that `verbs.h` defines
//! inline.
//!
//! - `verbs`, `cm`: `#[repr(C)]` definitions of what an NVMe-oF target and
//!   host use, with the headers' names (re-exported here).
//! - `lib`: [`Lib`], the opened libraries and their function pointers.
//! - `layout`: compile-time checks of every struct's size and alignment
//!   and of the offsets of its fields. The numbers come from compiling
//!   `drivers/rdma/layout/check.c` against rdma-core's own headers (its
//!   first line says how to run it): `layout.rs` is that program's output,
//!   so rerunning it and diffing shows whether the definitions still match.
//!
//! The data path does not go through the exported functions:
//! `ibv_poll_cq`, `ibv_req_notify_cq`, `ibv_post_send`, `ibv_post_recv`
//! and `ibv_post_srq_recv` are `static inline` in `verbs.h`, calling the
//! provider's function table in `ibv_context::ops` of the object's
//! context. [`poll_cq`], [`req_notify_cq`], [`post_send`], [`post_recv`]
//! and [`post_srq_recv`] do the same (in 44.0 none of the five checks for
//! an extended op first). So do [`rdma_get_local_addr`] and
//! [`rdma_get_peer_addr`], inline in `rdma_cma.h`.

#![allow(non_camel_case_types, non_upper_case_globals)]

use std::ffi::c_int;

mod cm;
mod layout;
mod lib;
mod verbs;

pub use cm::*;
pub use lib::{IBVERBS, Lib, RDMACM};
pub use verbs::*;

/// `ibv_poll_cq`: moves up to `num_entries` completions of `cq` into
/// `wc`. Returns how many (fewer than `num_entries`: the CQ is now
/// empty), or a negative value on error (a provider's own code, not an
/// errno; `-EOPNOTSUPP` if the provider has no `poll_cq`).
///
/// # Safety
///
/// `cq` is a live CQ (from `ibv_create_cq`, not destroyed) of a live
/// device context, and `wc` is valid for writes of `num_entries` entries.
/// The CQ is not polled concurrently from another thread.
#[inline]
pub unsafe fn poll_cq(cq: *mut ibv_cq, num_entries: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: the caller guarantees `cq` and its `context` are live; the
    // ops table is written once when the context is opened. No reference
    // is made (raw place reads only).
    let op = unsafe { (*(*cq).context).ops.poll_cq };
    match op {
        // SAFETY: the provider's poll_cq for this context, called as
        // `ibv_poll_cq` calls it, with arguments the caller vouches for.
        Some(op) => unsafe { op(cq, num_entries, wc) },
        None => -libc::EOPNOTSUPP,
    }
}

/// `ibv_req_notify_cq`: asks for an event on the CQ's completion channel
/// at the next completion (`solicited_only` non-zero: the next solicited
/// one). Returns 0 or an errno.
///
/// # Safety
///
/// `cq` is a live CQ of a live device context.
#[inline]
pub unsafe fn req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int {
    // SAFETY: as in `poll_cq`: `cq` and its context are live.
    let op = unsafe { (*(*cq).context).ops.req_notify_cq };
    match op {
        // SAFETY: the provider's req_notify_cq, called as the inline
        // `ibv_req_notify_cq` calls it.
        Some(op) => unsafe { op(cq, solicited_only) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_send`: posts the chain of work requests `wr` (linked by
/// `next`) to the send queue of `qp`. Returns 0, or an errno with `*bad`
/// set to the first request not posted.
///
/// # Safety
///
/// `qp` is a live QP of a live device context; `wr` is a valid chain whose
/// `sg_list`s are valid for `num_sge` entries with lkeys of live MRs (the
/// SGEs are read during the call, the buffers they name until the
/// requests complete, and must stay registered and unmoved until then);
/// RDMA READ/WRITE requests carry the peer's address and rkey; `bad` is
/// valid for a write.
#[inline]
pub unsafe fn post_send(qp: *mut ibv_qp, wr: *mut ibv_send_wr, bad: *mut *mut ibv_send_wr) -> c_int {
    // SAFETY: the caller guarantees `qp` and its context are live.
    let op = unsafe { (*(*qp).context).ops.post_send };
    match op {
        // SAFETY: the provider's post_send, called as the inline
        // `ibv_post_send` calls it, with arguments the caller vouches for.
        Some(op) => unsafe { op(qp, wr, bad) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_recv`: posts the chain of receive requests `wr` to the
/// receive queue of `qp`. Returns 0, or an errno with `*bad` set.
///
/// # Safety
///
/// `qp` is a live QP of a live device context (without an SRQ); `wr` is a
/// valid chain whose SGEs name registered buffers that stay registered,
/// unmoved and otherwise unused until the requests complete; `bad` is
/// valid for a write.
#[inline]
pub unsafe fn post_recv(qp: *mut ibv_qp, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> c_int {
    // SAFETY: the caller guarantees `qp` and its context are live.
    let op = unsafe { (*(*qp).context).ops.post_recv };
    match op {
        // SAFETY: the provider's post_recv, called as the inline
        // `ibv_post_recv` calls it, with arguments the caller vouches for.
        Some(op) => unsafe { op(qp, wr, bad) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_srq_recv`: posts the chain of receive requests `wr` to the
/// shared receive queue `srq`. Returns 0, or an errno with `*bad` set.
///
/// # Safety
///
/// `srq` is a live SRQ of a live device context; `wr` and `bad` as for
/// [`post_recv`].
#[inline]
pub unsafe fn post_srq_recv(srq: *mut ibv_srq, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> c_int {
    // SAFETY: the caller guarantees `srq` and its context are live.
    let op = unsafe { (*(*srq).context).ops.post_srq_recv };
    match op {
        // SAFETY: the provider's post_srq_recv, called as the inline
        // `ibv_post_srq_recv` calls it, with arguments the caller vouches
        // for.
        Some(op) => unsafe { op(srq, wr, bad) },
        None => libc::EOPNOTSUPP,
    }
}

/// Receives posted per call (one doorbell) by [`post_recv_list`].
pub const RECV_CHAIN: usize = 32;

/// Post receives (`wr_id`, one SGE each) in chains of up to
/// [`RECV_CHAIN`], each chain with one call of `post` (`post_recv` on a QP,
/// `post_srq_recv` on a shared receive queue). Returns 0, or the first
/// errno `post` gave.
///
/// # Safety
///
/// `post` posts to a live queue; the SGEs name registered memory that stays
/// registered, allocated and unused until each receive completes.
pub unsafe fn post_recv_list(list: &[(u64, ibv_sge)], mut post: impl FnMut(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int) -> c_int {
    for part in list.chunks(RECV_CHAIN) {
        let mut raw = [ibv_recv_wr::default(); RECV_CHAIN];
        for (i, (wr_id, sge)) in part.iter().enumerate() {
            raw[i].wr_id = *wr_id;
            raw[i].sg_list = (sge as *const ibv_sge).cast_mut();
            raw[i].num_sge = 1;
        }
        let base = raw.as_mut_ptr();
        for i in 1..part.len() {
            // SAFETY: i - 1 and i are within the array.
            unsafe { (*base.add(i - 1)).next = base.add(i) };
        }
        let mut bad = std::ptr::null_mut();
        let rc = post(base, &mut bad);
        if rc != 0 {
            return rc;
        }
    }
    0
}

/// `rdma_get_local_addr`: the id's local address (`route.addr.src_addr`),
/// a `sockaddr_in` or `sockaddr_in6` after bind, resolve or connect
/// request.
///
/// # Safety
///
/// `id` points to a live `rdma_cm_id`. The result is valid as long as the
/// id is.
#[inline]
pub unsafe fn rdma_get_local_addr(id: *mut rdma_cm_id) -> *mut libc::sockaddr {
    // SAFETY: the caller guarantees `id` points to a live rdma_cm_id, so
    // the field's address is in bounds; no reference is made.
    unsafe { (&raw mut (*id).route.addr.src).cast() }
}

/// `rdma_get_peer_addr`: the id's peer address (`route.addr.dst_addr`).
///
/// # Safety
///
/// As for [`rdma_get_local_addr`].
#[inline]
pub unsafe fn rdma_get_peer_addr(id: *mut rdma_cm_id) -> *mut libc::sockaddr {
    // SAFETY: as in `rdma_get_local_addr`.
    unsafe { (&raw mut (*id).route.addr.dst).cast() }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::ffi::c_void;
    use std::mem::offset_of;
    use std::ptr;

    use super::*;

    thread_local! {
        /// What the fake provider op last saw: (op, object, n, list).
        static CALLED: Cell<(&'static str, usize, c_int, usize)> = const { Cell::new(("", 0, 0, 0)) };
    }

    fn saw(op: &'static str, obj: *mut c_void, n: c_int, list: *mut c_void) -> c_int {
        CALLED.with(|c| c.set((op, obj as usize, n, list as usize)));
        7
    }

    unsafe extern "C" fn fake_poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
        saw("poll_cq", cq.cast(), n, wc.cast())
    }
    unsafe extern "C" fn fake_req_notify_cq(cq: *mut ibv_cq, solicited: c_int) -> c_int {
        saw("req_notify_cq", cq.cast(), solicited, ptr::null_mut())
    }
    unsafe extern "C" fn fake_post_send(qp: *mut ibv_qp, wr: *mut ibv_send_wr, _: *mut *mut ibv_send_wr) -> c_int {
        saw("post_send", qp.cast(), 0, wr.cast())
    }
    unsafe extern "C" fn fake_post_recv(qp: *mut ibv_qp, wr: *mut ibv_recv_wr, _: *mut *mut ibv_recv_wr) -> c_int {
        saw("post_recv", qp.cast(), 0, wr.cast())
    }
    unsafe extern "C" fn fake_post_srq_recv(srq: *mut ibv_srq, wr: *mut ibv_recv_wr, _: *mut *mut ibv_recv_wr) -> c_int {
        saw("post_srq_recv", srq.cast(), 0, wr.cast())
    }

    /// A zeroed C object on the heap, as a provider would allocate it
    /// (`calloc`), reached only through the returned pointer until
    /// [`free`].
    ///
    /// # Safety
    ///
    /// All-zero bytes are a valid `T`.
    unsafe fn alloc<T>() -> *mut T {
        // SAFETY: the caller guarantees all-zero is a valid T.
        Box::into_raw(Box::new(unsafe { std::mem::zeroed() }))
    }

    /// Frees what [`alloc`] returned.
    ///
    /// # Safety
    ///
    /// `p` came from `alloc::<T>` and is not used afterwards.
    unsafe fn free<T>(p: *mut T) {
        // SAFETY: the caller guarantees `p` is alloc's Box, used no more.
        drop(unsafe { Box::from_raw(p) });
    }

    /// The inline verbs call the slot of the object's context, with the
    /// caller's arguments, and return what it returns; an empty slot is
    /// EOPNOTSUPP, not a call through null.
    #[test]
    fn inline_verbs_call_the_context_ops() {
        // SAFETY: these types are integers, raw pointers, nullable function
        // pointers and pthread objects, for which all-zero is valid (a
        // zeroed pthread mutex or cond is the static initializer on glibc).
        let (ctx, cq, qp, srq) = unsafe { (alloc::<ibv_context>(), alloc::<ibv_cq>(), alloc::<ibv_qp>(), alloc::<ibv_srq>()) };
        let mut wc = [ibv_wc::default(); 4];
        let mut swr = ibv_send_wr::default();
        let mut rwr = ibv_recv_wr::default();
        let (mut bad_s, mut bad_r) = (ptr::null_mut(), ptr::null_mut());
        let last = || CALLED.with(Cell::get);

        // SAFETY: (here and in the two blocks below) the objects are live
        // allocations whose context points to `ctx`, whose ops are empty or
        // the fakes above, which only record their arguments; all is freed
        // once, at the end.
        unsafe {
            (*cq).context = ctx;
            (*qp).context = ctx;
            (*srq).context = ctx;
            assert_eq!(poll_cq(cq, 4, wc.as_mut_ptr()), -libc::EOPNOTSUPP);
            assert_eq!(req_notify_cq(cq, 0), libc::EOPNOTSUPP);
            assert_eq!(post_send(qp, &mut swr, &mut bad_s), libc::EOPNOTSUPP);
            assert_eq!(post_recv(qp, &mut rwr, &mut bad_r), libc::EOPNOTSUPP);
            assert_eq!(post_srq_recv(srq, &mut rwr, &mut bad_r), libc::EOPNOTSUPP);

            (*ctx).ops.poll_cq = Some(fake_poll_cq);
            (*ctx).ops.req_notify_cq = Some(fake_req_notify_cq);
            (*ctx).ops.post_send = Some(fake_post_send);
            (*ctx).ops.post_recv = Some(fake_post_recv);
            (*ctx).ops.post_srq_recv = Some(fake_post_srq_recv);
        }
        // SAFETY: as above.
        unsafe {
            assert_eq!(poll_cq(cq, 4, wc.as_mut_ptr()), 7);
            assert_eq!(last(), ("poll_cq", cq as usize, 4, wc.as_ptr() as usize));
            assert_eq!(req_notify_cq(cq, 1), 7);
            assert_eq!(last(), ("req_notify_cq", cq as usize, 1, 0));
            assert_eq!(post_send(qp, &mut swr, &mut bad_s), 7);
            assert_eq!(last(), ("post_send", qp as usize, 0, &raw const swr as usize));
            assert_eq!(post_recv(qp, &mut rwr, &mut bad_r), 7);
            assert_eq!(last(), ("post_recv", qp as usize, 0, &raw const rwr as usize));
            assert_eq!(post_srq_recv(srq, &mut rwr, &mut bad_r), 7);
            assert_eq!(last(), ("post_srq_recv", srq as usize, 0, &raw const rwr as usize));
        }
        // SAFETY: as above.
        unsafe {
            free(srq);
            free(qp);
            free(cq);
            free(ctx);
        }
    }

    #[test]
    fn cm_id_addresses_are_in_its_route() {
        // SAFETY: an rdma_cm_id is raw pointers, integers and socket
        // addresses (unions of integer arrays), for which all-zero is valid.
        let base = unsafe { alloc::<rdma_cm_id>() };
        // SAFETY: `base` points to a live rdma_cm_id, freed once after.
        let (local, peer) = unsafe { (rdma_get_local_addr(base), rdma_get_peer_addr(base)) };
        // SAFETY: as above.
        unsafe { free(base) };
        assert_eq!(local as usize - base as usize, offset_of!(rdma_cm_id, route.addr.src));
        assert_eq!(peer as usize - base as usize, offset_of!(rdma_cm_id, route.addr.dst));
        assert_eq!(local as usize - base as usize, 32);
        assert_eq!(peer as usize - base as usize, 160);
    }

    #[test]
    fn work_requests_default_to_zero() {
        let wr = ibv_send_wr::default();
        assert!(wr.next.is_null() && wr.sg_list.is_null());
        assert_eq!((wr.wr_id, wr.num_sge, wr.opcode, wr.send_flags), (0, 0, IBV_WR_RDMA_WRITE, 0));
        // SAFETY: the union was zeroed whole, so its `rdma` member is.
        assert_eq!(unsafe { wr.wr.rdma }, ibv_rdma_wr::default());
        let event = rdma_cm_event::default();
        // SAFETY: as above, for `param`.
        let conn = unsafe { event.param.conn };
        assert!(conn.private_data.is_null());
        assert_eq!(conn.private_data_len, 0);
    }
}
