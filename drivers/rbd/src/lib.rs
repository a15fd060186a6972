//! # pollux-rbd: Ceph RBD images as bdevs (SPDK's `bdev_rbd`)
//!
//! Pollux as a gateway in front of Ceph: `bdev_rbd_register_cluster`
//! connects to a cluster once, `bdev_rbd_create` opens an image (through a
//! registered cluster or a connection of its own) and registers it as a
//! bdev that NVMe-oF and iSCSI export like any other.
//!
//! - [`sys`]: librados and librbd, opened at run time (`dlopen`): Pollux
//!   builds and runs without Ceph's libraries, and the RBD RPCs then answer
//!   that they are missing.
//! - [`rados`]: safe handles (cluster, pool, image); the blocking calls
//!   (connect, open, close) run on threads of their own, never on a reactor.
//! - [`bdev`]: the backend; each reactor submits with librbd's asynchronous
//!   calls and takes completions from a lock-free queue that librbd's
//!   callback fills (and, in interrupt mode, an eventfd that wakes it).
//! - `rpc`: the methods and their save_config part.

pub mod bdev;
pub mod rados;
mod rpc;
pub mod sys;

use pollux_core::app::App;

/// Register the RBD methods with the app.
pub fn register(app: &mut App) {
    rpc::register(app);
}

/// Close the registered clusters and wait for them and for images still
/// closing (call at exit, after the app has stopped): closes release
/// exclusive locks on the cluster, and librados' threads must be gone
/// before the process's static destructors run.
pub fn wait_closes() {
    rpc::close_clusters();
    rados::wait_closes();
}
