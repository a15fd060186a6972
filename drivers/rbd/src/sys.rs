//! librados and librbd (Ceph's C API, `rados/librados.h` and
//! `rbd/librbd.h` of Ceph 16), opened at run time: a build needs neither
//! Ceph's headers nor its libraries, and a machine without them still runs
//! every other module (the RBD RPCs then say what is missing).
//!
//! Every handle type is an opaque pointer. All the functions below are
//! thread-safe on distinct handles, and the asynchronous I/O calls
//! (`rbd_aio_*`) also on one image from several threads, as librbd
//! documents; the completion callbacks run on librbd's own threads.

use std::ffi::{c_char, c_int, c_void};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

pub type RadosT = *mut c_void;
pub type RadosIoctxT = *mut c_void;
pub type RbdImageT = *mut c_void;
pub type RbdCompletionT = *mut c_void;
/// `void (*)(rbd_completion_t cb, void *arg)`.
pub type RbdCallbackT = unsafe extern "C" fn(cb: RbdCompletionT, arg: *mut c_void);
/// `void (*)(void *arg)`: an image's header changed (resize, ...).
pub type RbdUpdateCallbackT = unsafe extern "C" fn(arg: *mut c_void);

/// librados' SONAME (Debian's `librados2`).
pub const LIBRADOS: &str = "librados.so.2";
/// librbd's SONAME (Debian's `librbd1`).
pub const LIBRBD: &str = "librbd.so.1";

macro_rules! lib {
    ($(
        $lib:ident = $soname:ident {$(
            $(#[$m:meta])*
            fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;
        )*}
    )*) => {
        /// librados and librbd, opened, with the functions Pollux calls.
        ///
        /// The function pointers are valid while this value lives (it holds
        /// both libraries open; the process keeps it for good). Each field
        /// is the C function of the same name with the header's prototype;
        /// calling one has that function's contract (hence `unsafe`).
        #[derive(Debug)]
        pub struct Lib {
            $($(
                $(#[$m])*
                pub $name: unsafe extern "C" fn($($arg: $ty),*) $(-> $ret)?,
            )*)*
            $($lib: Library,)*
        }

        impl Lib {
            /// Opens both libraries and resolves every function; the error
            /// says which library or symbol is missing.
            pub fn load() -> Result<Lib, String> {
                $(let $lib = open($soname)?;)*
                Ok(Lib {
                    $($(
                        // SAFETY: the field's type is the prototype Ceph 16's
                        // header declares for the function of this name, and
                        // the library stays open in the same `Lib`.
                        $name: unsafe { sym(&$lib, $soname, concat!(stringify!($name), "\0"))? },
                    )*)*
                    $($lib,)*
                })
            }
        }
    };
}

lib! {
    _rados = LIBRADOS {
        /// 0 or a negative errno. `id` is the user without `client.`.
        fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
        /// Reads a config file (`path` null: the default search path).
        fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
        fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
        /// Blocks until connected or `client_mount_timeout` has passed.
        fn rados_connect(cluster: RadosT) -> c_int;
        fn rados_shutdown(cluster: RadosT);
        fn rados_ioctx_create(cluster: RadosT, pool_name: *const c_char, ioctx: *mut RadosIoctxT) -> c_int;
        fn rados_ioctx_destroy(io: RadosIoctxT);
    }
    _rbd = LIBRBD {
        /// Blocks (tens of ms): run off the reactors.
        fn rbd_open(io: RadosIoctxT, name: *const c_char, image: *mut RbdImageT, snap_name: *const c_char) -> c_int;
        fn rbd_open_read_only(io: RadosIoctxT, name: *const c_char, image: *mut RbdImageT, snap_name: *const c_char) -> c_int;
        /// Blocks: run off the reactors, after every request completed.
        fn rbd_close(image: RbdImageT) -> c_int;
        fn rbd_get_size(image: RbdImageT, size: *mut u64) -> c_int;
        /// Blocks.
        fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
        fn rbd_update_watch(image: RbdImageT, handle: *mut u64, watch_cb: RbdUpdateCallbackT, arg: *mut c_void) -> c_int;
        fn rbd_update_unwatch(image: RbdImageT, handle: u64) -> c_int;
        fn rbd_aio_create_completion(cb_arg: *mut c_void, complete_cb: RbdCallbackT, c: *mut RbdCompletionT) -> c_int;
        /// Bytes read for a read, 0 for other requests, or a negative errno.
        fn rbd_aio_get_return_value(c: RbdCompletionT) -> isize;
        fn rbd_aio_release(c: RbdCompletionT);
        fn rbd_aio_readv(image: RbdImageT, iov: *const libc::iovec, iovcnt: c_int, off: u64, c: RbdCompletionT) -> c_int;
        fn rbd_aio_writev(image: RbdImageT, iov: *const libc::iovec, iovcnt: c_int, off: u64, c: RbdCompletionT) -> c_int;
        fn rbd_aio_flush(image: RbdImageT, c: RbdCompletionT) -> c_int;
        fn rbd_aio_discard(image: RbdImageT, off: u64, len: u64, c: RbdCompletionT) -> c_int;
        fn rbd_aio_write_zeroes(
            image: RbdImageT,
            off: u64,
            len: usize,
            c: RbdCompletionT,
            zero_flags: c_int,
            op_flags: c_int,
        ) -> c_int;
    }
}

/// Opens a library by SONAME, resolving its symbols now and keeping them
/// out of the global namespace.
fn open(soname: &'static str) -> Result<Library, String> {
    // SAFETY: opening runs librados'/librbd's initializers (static
    // constructors of Ceph's C++ code); they start no thread and do not
    // touch the caller's state: threads start in rados_connect.
    unsafe { Library::open(Some(soname), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| format!("{soname} cannot be loaded (install librbd1 and librados2): {e}"))
}

/// Looks up `name` (NUL-terminated) in `lib`, as a `T`.
///
/// # Safety
///
/// `T` is the function-pointer type of the C prototype of `name`, and the
/// value is not called after `lib` is closed.
unsafe fn sym<T: Copy>(lib: &Library, soname: &'static str, name: &'static str) -> Result<T, String> {
    // SAFETY: the caller guarantees that `T` is the symbol's type.
    let s = unsafe { lib.get::<T>(name.as_bytes()) }
        .map_err(|e| format!("{soname} has no {} (older than Ceph 16?): {e}", name.trim_end_matches('\0')))?;
    Ok(*s)
}
