//! librdmacm's types (`<rdma/rdma_cma.h>`, rdma-core 44.0): the connection
//! manager that NVMe-oF uses to listen, connect and accept over IP
//! addresses, with private data in both directions.

use std::ffi::{c_int, c_uint, c_void};

use super::verbs::{ibv_comp_channel, ibv_context, ibv_cq, ibv_gid, ibv_pd, ibv_qp, ibv_qp_type, ibv_srq, zeroed_default};

/// `enum rdma_cm_event_type`: what an `rdma_cm_event` reports.
pub type rdma_cm_event_type = c_uint;
pub const RDMA_CM_EVENT_ADDR_RESOLVED: rdma_cm_event_type = 0;
pub const RDMA_CM_EVENT_ADDR_ERROR: rdma_cm_event_type = 1;
pub const RDMA_CM_EVENT_ROUTE_RESOLVED: rdma_cm_event_type = 2;
pub const RDMA_CM_EVENT_ROUTE_ERROR: rdma_cm_event_type = 3;
pub const RDMA_CM_EVENT_CONNECT_REQUEST: rdma_cm_event_type = 4;
pub const RDMA_CM_EVENT_CONNECT_RESPONSE: rdma_cm_event_type = 5;
pub const RDMA_CM_EVENT_CONNECT_ERROR: rdma_cm_event_type = 6;
pub const RDMA_CM_EVENT_UNREACHABLE: rdma_cm_event_type = 7;
pub const RDMA_CM_EVENT_REJECTED: rdma_cm_event_type = 8;
pub const RDMA_CM_EVENT_ESTABLISHED: rdma_cm_event_type = 9;
pub const RDMA_CM_EVENT_DISCONNECTED: rdma_cm_event_type = 10;
pub const RDMA_CM_EVENT_DEVICE_REMOVAL: rdma_cm_event_type = 11;
pub const RDMA_CM_EVENT_MULTICAST_JOIN: rdma_cm_event_type = 12;
pub const RDMA_CM_EVENT_MULTICAST_ERROR: rdma_cm_event_type = 13;
pub const RDMA_CM_EVENT_ADDR_CHANGE: rdma_cm_event_type = 14;
pub const RDMA_CM_EVENT_TIMEWAIT_EXIT: rdma_cm_event_type = 15;

/// `enum rdma_port_space`. NVMe-oF uses `RDMA_PS_TCP` (reliable connected).
pub type rdma_port_space = c_uint;
pub const RDMA_PS_IPOIB: rdma_port_space = 0x0002;
pub const RDMA_PS_TCP: rdma_port_space = 0x0106;
pub const RDMA_PS_UDP: rdma_port_space = 0x0111;
pub const RDMA_PS_IB: rdma_port_space = 0x013f;

/// Largest `responder_resources` in `rdma_conn_param`.
pub const RDMA_MAX_RESP_RES: u8 = 0xff;
/// Largest `initiator_depth` in `rdma_conn_param`.
pub const RDMA_MAX_INIT_DEPTH: u8 = 0xff;

/// `struct rdma_event_channel`: the fd CM events arrive on (poll it, then
/// `rdma_get_cm_event`).
#[repr(C)]
#[derive(Debug)]
pub struct rdma_event_channel {
    pub fd: c_int,
}

/// `struct rdma_ib_addr`, the `addr` member of `rdma_addr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rdma_ib_addr {
    pub sgid: ibv_gid,
    pub dgid: ibv_gid,
    /// Big-endian.
    pub pkey: u16,
}

/// `struct rdma_addr`: the two ends of a connection. C's anonymous unions
/// of `sockaddr`, `sockaddr_in`, `sockaddr_in6` and `sockaddr_storage` are
/// each one `sockaddr_storage` here (the largest and most aligned member);
/// [`super::rdma_get_local_addr`] and [`super::rdma_get_peer_addr`] return
/// them as `*mut sockaddr`, as the C inline functions do.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rdma_addr {
    /// C: `src_addr` / `src_sin` / `src_sin6` / `src_storage`.
    pub src: libc::sockaddr_storage,
    /// C: `dst_addr` / `dst_sin` / `dst_sin6` / `dst_storage`.
    pub dst: libc::sockaddr_storage,
    /// C: `union { struct rdma_ib_addr ibaddr; } addr`.
    pub addr: rdma_ib_addr,
}

/// `struct rdma_route`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rdma_route {
    pub addr: rdma_addr,
    /// `struct ibv_sa_path_rec *` (IB path records; unused here).
    pub path_rec: *mut c_void,
    pub num_paths: c_int,
}

/// `struct rdma_cm_id`: a CM identifier, like a socket: listening, or one
/// end of a connection with its QP.
#[repr(C)]
pub struct rdma_cm_id {
    /// The device the id is bound to (after bind, resolve or a connect
    /// request), else null.
    pub verbs: *mut ibv_context,
    pub channel: *mut rdma_event_channel,
    /// The `context` given to `rdma_create_id`; free for the user.
    pub context: *mut c_void,
    /// Set by `rdma_create_qp`.
    pub qp: *mut ibv_qp,
    pub route: rdma_route,
    pub ps: rdma_port_space,
    pub port_num: u8,
    pub event: *mut rdma_cm_event,
    pub send_cq_channel: *mut ibv_comp_channel,
    pub send_cq: *mut ibv_cq,
    pub recv_cq_channel: *mut ibv_comp_channel,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub pd: *mut ibv_pd,
    pub qp_type: ibv_qp_type,
}

/// `struct rdma_conn_param`: what `rdma_connect` and `rdma_accept` send,
/// and what a CONNECT_REQUEST or ESTABLISHED event carries (`private_data`
/// then points into the event, valid until `rdma_ack_cm_event`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rdma_conn_param {
    pub private_data: *const c_void,
    pub private_data_len: u8,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub flow_control: u8,
    /// Ignored when accepting.
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    /// Ignored if a QP is created on the id.
    pub srq: u8,
    /// Ignored if a QP is created on the id.
    pub qp_num: u32,
}

/// The `param` union of `rdma_cm_event`. Its `ud` member (`struct
/// rdma_ud_param`, UD and multicast only) is padding of its C size.
#[repr(C)]
#[derive(Clone, Copy)]
pub union rdma_cm_event_param {
    pub conn: rdma_conn_param,
    pub ud: [u64; 7],
}

/// `struct rdma_cm_event`, from `rdma_get_cm_event`; owned by the library
/// until `rdma_ack_cm_event`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rdma_cm_event {
    pub id: *mut rdma_cm_id,
    /// The listening id of a CONNECT_REQUEST (whose `id` is the new one).
    pub listen_id: *mut rdma_cm_id,
    pub event: rdma_cm_event_type,
    /// 0, or a negative errno, or (REJECTED) the peer's reject reason.
    pub status: c_int,
    pub param: rdma_cm_event_param,
}

zeroed_default!(rdma_conn_param, rdma_cm_event_param, rdma_cm_event);
