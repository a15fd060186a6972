//! The two libraries, opened at run time, and the functions Pollux calls in
//! them.
//!
//! Every function is resolved by `dlsym` without a version, which returns
//! the symbol's default version (the `@@` one in `nm -D`): the one a C
//! program compiled against the 44.0 headers links to. For the verbs that
//! libibverbs 1.1 re-versioned (`ibv_alloc_pd`, `ibv_reg_mr`,
//! `ibv_create_cq`, ...) that is `IBVERBS_1.1`; the `IBVERBS_1.0` ones
//! beside them take the pre-1.1 structures and must not be called.
//!
//! `ibv_reg_mr` in `verbs.h` is a macro over the inline `__ibv_reg_mr`,
//! which calls the exported function `ibv_reg_mr` when the access flags
//! are a compile-time constant without any `IBV_ACCESS_OPTIONAL_RANGE`
//! bit, and `ibv_reg_mr_iova2(pd, addr, length, addr, access)` otherwise.
//! Pollux registers with constant `LOCAL_WRITE | REMOTE_READ |
//! REMOTE_WRITE`, so this loads the exported `ibv_reg_mr`
//! (`ibv_reg_mr@@IBVERBS_1.1`), the function that macro ends in; it must
//! not be given optional-range flags (`IBV_ACCESS_RELAXED_ORDERING`), for
//! which C code would reach `ibv_reg_mr_iova2`.
//!
//! `rdma_get_local_addr` and `rdma_get_peer_addr` are not exported (they
//! are inline in `rdma_cma.h`): see [`super::rdma_get_local_addr`].

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

use libc::sockaddr;
use libloading::Library;
use libloading::os::unix::{RTLD_LOCAL, RTLD_NOW};

use super::cm::*;
use super::verbs::*;
use crate::Error;

/// libibverbs' SONAME (Debian's `libibverbs1`).
pub const IBVERBS: &str = "libibverbs.so.1";
/// librdmacm's SONAME (Debian's `librdmacm1`).
pub const RDMACM: &str = "librdmacm.so.1";

/// Declares [`Lib`]: one function-pointer field per C function, with the
/// prototype from the header, and per library a field that keeps it open
/// (named `_ibverbs` and `_rdmacm`: held, never read).
macro_rules! lib {
    ($(
        $lib:ident = $soname:ident {$(
            $(#[$m:meta])*
            fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;
        )*}
    )*) => {
        /// libibverbs and librdmacm, opened, with the functions Pollux
        /// calls in them.
        ///
        /// The function pointers are valid while this value lives: it
        /// holds both libraries open, and a copy of a pointer must not be
        /// called after it is dropped. Each field is the C function of the
        /// same name, with the header's prototype; calling one has that
        /// function's contract, which the caller must meet (hence
        /// `unsafe`).
        #[derive(Debug)]
        pub struct Lib {
            $($(
                $(#[$m])*
                pub $name: unsafe extern "C" fn($($arg: $ty),*) $(-> $ret)?,
            )*)*
            $($lib: Library,)*
        }

        impl Lib {
            /// Opens libibverbs and librdmacm and resolves every function.
            ///
            /// Fails with [`Error::NotAvailable`] if a library cannot be
            /// opened (not installed), [`Error::MissingSymbol`] if one
            /// lacks a function. Needs no RDMA device.
            pub fn load() -> Result<Lib, Error> {
                $(let $lib = open($soname)?;)*
                Ok(Lib {
                    $($(
                        // SAFETY: the field's type is the prototype that
                        // the rdma-core 44.0 header declares for the
                        // function of this name, and the library stays
                        // open in the same `Lib` as the pointer.
                        $name: unsafe { sym(&$lib, $soname, concat!(stringify!($name), "\0"))? },
                    )*)*
                    $($lib,)*
                })
            }
        }
    };
}

lib! {
    _ibverbs = IBVERBS {
        /// Reads the device's limits into `device_attr`; 0 or an errno.
        fn ibv_query_device(context: *mut ibv_context, device_attr: *mut ibv_device_attr) -> c_int;
        /// A protection domain, or null with `errno` set.
        fn ibv_alloc_pd(context: *mut ibv_context) -> *mut ibv_pd;
        /// 0 or an errno.
        fn ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int;
        /// A memory region, or null with `errno` set. `access` must not
        /// contain `IBV_ACCESS_OPTIONAL_RANGE` bits (see the module doc).
        fn ibv_reg_mr(pd: *mut ibv_pd, addr: *mut c_void, length: usize, access: c_int) -> *mut ibv_mr;
        /// 0 or an errno.
        fn ibv_dereg_mr(mr: *mut ibv_mr) -> c_int;
        /// A completion channel, or null with `errno` set.
        fn ibv_create_comp_channel(context: *mut ibv_context) -> *mut ibv_comp_channel;
        /// 0 or an errno.
        fn ibv_destroy_comp_channel(channel: *mut ibv_comp_channel) -> c_int;
        /// A CQ of at least `cqe` entries, or null with `errno` set.
        fn ibv_create_cq(
            context: *mut ibv_context,
            cqe: c_int,
            cq_context: *mut c_void,
            channel: *mut ibv_comp_channel,
            comp_vector: c_int,
        ) -> *mut ibv_cq;
        /// 0 or an errno. Waits for every event of the CQ to be acked.
        fn ibv_destroy_cq(cq: *mut ibv_cq) -> c_int;
        /// 0, or -1 with `errno` set (`EAGAIN` on a non-blocking fd).
        fn ibv_get_cq_event(channel: *mut ibv_comp_channel, cq: *mut *mut ibv_cq, cq_context: *mut *mut c_void) -> c_int;
        fn ibv_ack_cq_events(cq: *mut ibv_cq, nevents: c_uint);
        /// An SRQ, or null with `errno` set; granted sizes are written
        /// back into `srq_init_attr.attr`.
        fn ibv_create_srq(pd: *mut ibv_pd, srq_init_attr: *mut ibv_srq_init_attr) -> *mut ibv_srq;
        /// 0 or an errno.
        fn ibv_destroy_srq(srq: *mut ibv_srq) -> c_int;
        /// A static string ("unknown" for values it does not know).
        fn ibv_wc_status_str(status: ibv_wc_status) -> *const c_char;
    }
    _rdmacm = RDMACM {
        /// An event channel, or null with `errno` set.
        fn rdma_create_event_channel() -> *mut rdma_event_channel;
        fn rdma_destroy_event_channel(channel: *mut rdma_event_channel);
        /// 0, or -1 with `errno` set (as every `int` function below).
        fn rdma_create_id(
            channel: *mut rdma_event_channel,
            id: *mut *mut rdma_cm_id,
            context: *mut c_void,
            ps: rdma_port_space,
        ) -> c_int;
        fn rdma_destroy_id(id: *mut rdma_cm_id) -> c_int;
        fn rdma_bind_addr(id: *mut rdma_cm_id, addr: *mut sockaddr) -> c_int;
        fn rdma_listen(id: *mut rdma_cm_id, backlog: c_int) -> c_int;
        fn rdma_get_cm_event(channel: *mut rdma_event_channel, event: *mut *mut rdma_cm_event) -> c_int;
        fn rdma_ack_cm_event(event: *mut rdma_cm_event) -> c_int;
        fn rdma_accept(id: *mut rdma_cm_id, conn_param: *mut rdma_conn_param) -> c_int;
        fn rdma_reject(id: *mut rdma_cm_id, private_data: *const c_void, private_data_len: u8) -> c_int;
        fn rdma_connect(id: *mut rdma_cm_id, conn_param: *mut rdma_conn_param) -> c_int;
        fn rdma_disconnect(id: *mut rdma_cm_id) -> c_int;
        fn rdma_resolve_addr(id: *mut rdma_cm_id, src_addr: *mut sockaddr, dst_addr: *mut sockaddr, timeout_ms: c_int) -> c_int;
        fn rdma_resolve_route(id: *mut rdma_cm_id, timeout_ms: c_int) -> c_int;
        /// Creates the id's QP on `pd` and sets `id.qp`; `qp_init_attr.cap`
        /// gets the granted sizes.
        fn rdma_create_qp(id: *mut rdma_cm_id, pd: *mut ibv_pd, qp_init_attr: *mut ibv_qp_init_attr) -> c_int;
        fn rdma_destroy_qp(id: *mut rdma_cm_id);
        /// Moves the id's future events to `channel`; 0, or -1 with
        /// `errno` set.
        fn rdma_migrate_id(id: *mut rdma_cm_id, channel: *mut rdma_event_channel) -> c_int;
        /// A static string ("UNKNOWN EVENT" for values it does not know).
        fn rdma_event_str(event: rdma_cm_event_type) -> *const c_char;
    }
}

impl Lib {
    /// `ibv_wc_status_str`: the name of a completion status, e.g.
    /// "success", "Work Request Flushed Error".
    pub fn wc_status_str(&self, status: ibv_wc_status) -> &str {
        // SAFETY: ibv_wc_status_str accepts any value (unknown ones give
        // "unknown") and needs no device.
        let s = unsafe { (self.ibv_wc_status_str)(status) };
        // SAFETY: it returns a NUL-terminated string constant of
        // libibverbs, which stays mapped while `self` holds it open.
        unsafe { c_str(s) }
    }

    /// `rdma_event_str`: the name of a CM event type, e.g.
    /// "RDMA_CM_EVENT_ESTABLISHED".
    pub fn event_str(&self, event: rdma_cm_event_type) -> &str {
        // SAFETY: rdma_event_str accepts any value (unknown ones give
        // "UNKNOWN EVENT") and needs no device.
        let s = unsafe { (self.rdma_event_str)(event) };
        // SAFETY: it returns a NUL-terminated string constant of
        // librdmacm, which stays mapped while `self` holds it open.
        unsafe { c_str(s) }
    }
}

/// A string constant of a loaded library, as `&str` ("?" if null or not
/// UTF-8).
///
/// # Safety
///
/// `s` is null or a NUL-terminated string that is neither freed nor
/// changed during `'a`.
unsafe fn c_str<'a>(s: *const c_char) -> &'a str {
    if s.is_null() {
        return "?";
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string
    // that lives and stays unchanged for 'a.
    unsafe { CStr::from_ptr(s) }.to_str().unwrap_or("?")
}

/// Opens a library by SONAME, resolving all of its own undefined symbols
/// now (`RTLD_NOW`) so that a broken install fails here rather than in a
/// later call, and keeping its symbols out of the global namespace
/// (`RTLD_LOCAL`).
fn open(soname: &'static str) -> Result<Library, Error> {
    // SAFETY: opening runs initializers: libibverbs' and librdmacm's only
    // entry is the compiler's `frame_dummy`, and libnl-3/libnl-route-3's
    // (which they need) register libnl's own cache types. None starts a
    // thread or touches the caller's state. (libibverbs reads sysfs and
    // opens its providers only when first asked for devices, rdma_cm on
    // its first call.)
    let lib = unsafe { libloading::os::unix::Library::open(Some(soname), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| Error::NotAvailable { lib: soname, why: e.to_string() })?;
    Ok(lib.into())
}

/// Looks up `name` (NUL-terminated) in `lib`, as a `T`.
///
/// # Safety
///
/// `T` is the function-pointer type of the C prototype of `name`, and the
/// returned value is not called after `lib` is closed.
unsafe fn sym<T: Copy>(lib: &Library, soname: &'static str, name: &'static str) -> Result<T, Error> {
    // SAFETY: the caller guarantees that `T` is the symbol's type.
    let s = unsafe { lib.get::<T>(name.as_bytes()) }.map_err(|source| Error::MissingSymbol {
        lib: soname,
        symbol: name.trim_end_matches('\0'),
        source,
    })?;
    Ok(*s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On any machine: loading either works or says which library is
    /// missing.
    #[test]
    fn load_works_or_is_not_available() {
        match Lib::load() {
            Ok(_) => {}
            Err(Error::NotAvailable { lib, why }) => {
                assert!(lib == IBVERBS || lib == RDMACM, "{lib}");
                assert!(!why.is_empty());
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// rdma-core 44.0 is installed on Pollux's test machines (`qemu-system-x86`,
    /// `fio`, `tgt` and `libiscsi7` depend on libibverbs1 and librdmacm1):
    /// every symbol resolves, and the calls that need no device work.
    #[test]
    fn load_succeeds_here() {
        let lib = Lib::load().expect("libibverbs.so.1 and librdmacm.so.1 are installed here");
        assert_eq!(lib.wc_status_str(IBV_WC_SUCCESS), "success");
        assert_eq!(lib.wc_status_str(IBV_WC_WR_FLUSH_ERR), "Work Request Flushed Error");
        assert_eq!(lib.wc_status_str(1000), "unknown");
        assert_eq!(lib.event_str(RDMA_CM_EVENT_ESTABLISHED), "RDMA_CM_EVENT_ESTABLISHED");
        assert_eq!(lib.event_str(RDMA_CM_EVENT_TIMEWAIT_EXIT), "RDMA_CM_EVENT_TIMEWAIT_EXIT");
        // The raw pointer, as the task's reader would call it.
        // SAFETY: any status value is accepted; the result is a string
        // constant of the library, which `lib` holds open.
        let s = unsafe { CStr::from_ptr((lib.ibv_wc_status_str)(0)) };
        assert_eq!(s.to_str(), Ok("success"));
    }

    #[test]
    fn a_missing_library_is_not_available() {
        let err = open("libpollux-no-such-library.so.1").unwrap_err();
        let Error::NotAvailable { lib, why } = &err else { panic!("{err}") };
        assert_eq!(*lib, "libpollux-no-such-library.so.1");
        assert!(why.contains("libpollux-no-such-library.so.1"), "{why}");
        assert!(err.to_string().contains("cannot be loaded"), "{err}");
    }

    #[test]
    fn a_missing_symbol_names_library_and_symbol() {
        let Ok(lib) = open(IBVERBS) else { return };
        // SAFETY: the symbol does not exist, so nothing is ever called.
        let err = unsafe { sym::<unsafe extern "C" fn()>(&lib, IBVERBS, "ibv_pollux_no_such_verb\0") }.unwrap_err();
        let Error::MissingSymbol { lib, symbol, .. } = &err else { panic!("{err}") };
        assert_eq!((*lib, *symbol), (IBVERBS, "ibv_pollux_no_such_verb"));
        assert!(err.to_string().contains("libibverbs.so.1 has no symbol ibv_pollux_no_such_verb"), "{err}");
    }
}
