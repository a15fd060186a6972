//! Block-device modules: each implements the bdev layer's `Backend` for one
//! kind of device and registers its RPC methods (SPDK's names) with the app.
//!
//! - [`malloc`]: a RAM disk (`bdev_malloc_create`), thin: untouched or
//!   unmapped blocks take no memory.
//! - [`null`]: discards writes and reads zeroes (`bdev_null_create`), to
//!   measure the framework's own cost per I/O.
//! - [`uring`]: a file or block device through a per-reactor `io_uring`
//!   polled by the reactor (`bdev_uring_create`, and `bdev_aio_create`).
//! - [`delay`]: completes requests to another bdev a set time late
//!   (`bdev_delay_create`), to test how hosts cope with slow storage.
//! - [`passthru`], [`split`], [`error`]: all of another bdev under a new
//!   name, equal slices of it, and all of it with faults injected on
//!   command (SPDK's `bdev_passthru_*`, `bdev_split_*`, `bdev_error_*`).

mod common;
/// What every module's `bdev_*_delete` method shares (modules of other
/// crates too: the RBD bdev's).
pub use common::{Delete, delete_or_forgotten, delete_rpc};
pub mod delay;
pub mod error;
pub mod malloc;
pub mod null;
mod part;
pub mod passthru;
pub mod split;
pub mod uring;

use pollux_core::app::App;

/// Register every module of this crate.
pub fn register_all(app: &mut App) {
    malloc::register(app);
    null::register(app);
    uring::register(app);
    delay::register(app);
    passthru::register(app);
    split::register(app);
    error::register(app);
}
