//! RDMA for Pollux: the verbs (libibverbs) and the connection manager
//! (librdmacm) that an NVMe-oF RDMA target and host are built on.
//!
//! The two libraries are opened with `dlopen` when an RDMA transport is
//! created, never linked: a machine without rdma-core builds and runs
//! everything else, and only asking for RDMA reports that the libraries are
//! missing ([`Error::NotAvailable`]).
//!
//! - [`sys`]: the C ABI (`#[repr(C)]` types checked against rdma-core's
//!   headers at compile time), the loaded libraries ([`sys::Lib`]) and the
//!   data-path verbs that the headers define inline (`poll_cq`,
//!   `post_send`, ...). All of the crate's `unsafe` is there.

use std::io;
use std::sync::OnceLock;

pub mod cm;
pub mod sys;
pub mod verbs;

pub use cm::{CmEvent, CmEventKind, CmId, ConnParam, ConnectRequest, EventChannel, MovingCmId, QpCaps, SendOp, SendWr};
pub use verbs::{CompletionChannel, CompletionQueue, Device, DeviceLimits, MemoryRegion, ProtectionDomain, SharedReceiveQueue};

/// The libraries, opened once per process on first use and kept (as
/// SPDK does; unloading them under live objects is never safe).
static LIB: OnceLock<Result<sys::Lib, String>> = OnceLock::new();

/// libibverbs and librdmacm, opened on the first call.
pub fn lib() -> Result<&'static sys::Lib, Error> {
    match LIB.get_or_init(|| sys::Lib::load().map_err(|e| e.to_string())) {
        Ok(l) => Ok(l),
        Err(why) => Err(Error::NotAvailable { lib: "libibverbs/librdmacm", why: why.clone() }),
    }
}

/// An RDMA operation failed. Variants that carry an [`io::Error`] hold the
/// errno that the C function reported (through `errno` or its return
/// value, as each function does).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{lib} cannot be loaded (is rdma-core's libibverbs1/librdmacm1 installed?): {why}")]
    NotAvailable { lib: &'static str, why: String },
    #[error("{lib} has no symbol {symbol} (rdma-core older than the 44.0 this was written for?): {source}")]
    MissingSymbol { lib: &'static str, symbol: &'static str, source: libloading::Error },
    #[error("rdma_create_event_channel: {0}")]
    CreateEventChannel(#[source] io::Error),
    #[error("rdma_create_id: {0}")]
    CreateId(#[source] io::Error),
    #[error("rdma_destroy_id: {0}")]
    DestroyId(#[source] io::Error),
    #[error("rdma_bind_addr: {0}")]
    BindAddr(#[source] io::Error),
    #[error("rdma_listen: {0}")]
    Listen(#[source] io::Error),
    #[error("rdma_get_cm_event: {0}")]
    GetCmEvent(#[source] io::Error),
    #[error("rdma_ack_cm_event: {0}")]
    AckCmEvent(#[source] io::Error),
    #[error("rdma_accept: {0}")]
    Accept(#[source] io::Error),
    #[error("rdma_reject: {0}")]
    Reject(#[source] io::Error),
    #[error("rdma_connect: {0}")]
    Connect(#[source] io::Error),
    #[error("rdma_disconnect: {0}")]
    Disconnect(#[source] io::Error),
    #[error("rdma_resolve_addr: {0}")]
    ResolveAddr(#[source] io::Error),
    #[error("rdma_migrate_id: {0}")]
    MigrateId(#[source] io::Error),
    #[error("rdma_resolve_route: {0}")]
    ResolveRoute(#[source] io::Error),
    #[error("rdma_create_qp: {0}")]
    CreateQp(#[source] io::Error),
    #[error("ibv_query_device: {0}")]
    QueryDevice(#[source] io::Error),
    #[error("ibv_alloc_pd: {0}")]
    AllocPd(#[source] io::Error),
    #[error("ibv_dealloc_pd: {0}")]
    DeallocPd(#[source] io::Error),
    #[error("ibv_reg_mr: {0}")]
    RegMr(#[source] io::Error),
    #[error("ibv_dereg_mr: {0}")]
    DeregMr(#[source] io::Error),
    #[error("ibv_create_comp_channel: {0}")]
    CreateCompChannel(#[source] io::Error),
    #[error("ibv_destroy_comp_channel: {0}")]
    DestroyCompChannel(#[source] io::Error),
    #[error("ibv_create_cq: {0}")]
    CreateCq(#[source] io::Error),
    #[error("ibv_destroy_cq: {0}")]
    DestroyCq(#[source] io::Error),
    #[error("ibv_get_cq_event: {0}")]
    GetCqEvent(#[source] io::Error),
    #[error("ibv_req_notify_cq: {0}")]
    ReqNotifyCq(#[source] io::Error),
    #[error("ibv_create_srq: {0}")]
    CreateSrq(#[source] io::Error),
    #[error("ibv_destroy_srq: {0}")]
    DestroySrq(#[source] io::Error),
    /// `ibv_poll_cq` returned a negative value: providers return -1 or
    /// their own negative codes, not an errno.
    #[error("ibv_poll_cq returned {0}")]
    PollCq(i32),
    #[error("ibv_post_send: {0}")]
    PostSend(#[source] io::Error),
    #[error("ibv_post_recv: {0}")]
    PostRecv(#[source] io::Error),
    #[error("ibv_post_srq_recv: {0}")]
    PostSrqRecv(#[source] io::Error),
}
