//! Transports: how queue pairs reach the target. A transport owns listeners
//! and the connections they accept; it turns bytes (or, later, RDMA work
//! requests) into commands for the controller layer and sends back data and
//! completions. TCP is the one implemented; RDMA would be a second
//! implementation of [`Transport`] beside it (see docs/nvmf.md).

pub mod rdma;
pub mod tcp;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::NvmfError;
use crate::ctrlr::Controller;
use crate::subsystem::AnaStates;

/// What an I/O queue pair belongs to once connected: its controller, by
/// ids (controllers live on the main reactor), and the ANA states of its
/// listener (`None` where the subsystem does not report ANA).
#[derive(Clone, Debug)]
pub struct IoOwner {
    pub subsystem_id: u32,
    pub cntlid: u16,
    pub ana: Option<std::sync::Arc<AnaStates>>,
    /// The controller's host identifier (from the admin queue's Connect):
    /// who the queue's commands come from, for reservations.
    pub hostid: [u8; 16],
    /// The controller's host NQN: which namespaces it sees.
    pub hostnqn: std::sync::Arc<str>,
}

impl IoOwner {
    pub fn of(c: &Controller) -> IoOwner {
        IoOwner { subsystem_id: c.subsystem.id, cntlid: c.cntlid, ana: c.ana.clone(), hostid: c.hostid, hostnqn: c.hostnqn.as_str().into() }
    }
}

/// Options of a transport, with SPDK's names and TCP defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransportOpts {
    pub max_queue_depth: u16,
    pub max_io_qpairs_per_ctrlr: u16,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    pub c2h_success: bool,
    pub sock_priority: u32,
    pub abort_timeout_sec: u32,
    pub acceptor_poll_rate: u32,
    /// Keep alive granularity, in 100 ms units (Identify KAS).
    pub kas: u16,
    /// Smallest keep alive timeout a host may ask for, in ms.
    pub min_kato: u32,
    /// ONCS bits hidden from hosts.
    pub masked_oncs: u16,
    /// Seconds a connection may take to send ICReq and Connect, or to
    /// finish a PDU it began (Pollux's own, like iSCSI's login timeout).
    pub connect_timeout_sec: u32,
    /// Connections one listener serves at once (Pollux's own); one more is
    /// closed as it is accepted.
    pub max_connections_per_listener: u32,
    /// RDMA: SPDK's shared receive queue depth (kept and reported; each
    /// queue pair has its own receive queue).
    pub max_srq_depth: u32,
    /// RDMA: SPDK's switch for shared receive queues (always in effect).
    pub no_srq: bool,
    /// RDMA: the listen backlog of the connection manager.
    pub acceptor_backlog: i32,
}

impl Default for TransportOpts {
    fn default() -> Self {
        TransportOpts {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            acceptor_poll_rate: 10000,
            kas: 10,
            min_kato: 1000,
            masked_oncs: 0,
            connect_timeout_sec: 30,
            max_connections_per_listener: 4096,
            max_srq_depth: 4096,
            no_srq: false,
            acceptor_backlog: 100,
        }
    }
}

impl TransportOpts {
    /// Check the options against what the target can do.
    pub fn validate(&self) -> Result<(), NvmfError> {
        let bad = |m: String| Err(NvmfError::InvalidParam(m));
        if self.max_queue_depth < 2 {
            return bad(format!("max_queue_depth {} is below 2", self.max_queue_depth));
        }
        if self.max_aq_depth < 2 || self.max_aq_depth > 4096 {
            return bad(format!("max_aq_depth {} is outside 2..=4096", self.max_aq_depth));
        }
        if self.max_io_qpairs_per_ctrlr == 0 {
            return bad("max_io_qpairs_per_ctrlr must be at least 1".into());
        }
        if self.max_io_size < 4096 || !self.max_io_size.is_power_of_two() || self.max_io_size > 8 << 20 {
            return bad(format!("max_io_size {} must be a power of two from 4096 to 8 MiB", self.max_io_size));
        }
        if self.io_unit_size < 4096 || self.io_unit_size > self.max_io_size {
            return bad(format!("io_unit_size {} must be from 4096 to max_io_size", self.io_unit_size));
        }
        if self.in_capsule_data_size % 16 != 0 || self.in_capsule_data_size > 128 * 1024 {
            return bad(format!("in_capsule_data_size {} must be a multiple of 16 up to 131072", self.in_capsule_data_size));
        }
        if !(1..=3600).contains(&self.connect_timeout_sec) {
            return bad(format!("connect_timeout_sec {} is outside 1..=3600", self.connect_timeout_sec));
        }
        if !(1..=1_000_000).contains(&self.max_connections_per_listener) {
            return bad(format!("max_connections_per_listener {} is outside 1..=1000000", self.max_connections_per_listener));
        }
        if self.kas == 0 {
            return bad("kas must be at least 1 (100 ms)".into());
        }
        Ok(())
    }
}

/// The kinds of transport SPDK knows; TCP and RDMA are implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Tcp,
    Rdma,
}

impl TransportKind {
    pub fn parse(s: &str) -> Result<TransportKind, NvmfError> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(TransportKind::Tcp),
            "RDMA" => Ok(TransportKind::Rdma),
            "FC" | "VFIOUSER" | "PCIE" => Err(NvmfError::Unsupported(format!("transport {s} is not supported (TCP and RDMA are)"))),
            _ => Err(NvmfError::InvalidParam(format!("unknown transport type {s}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "TCP",
            TransportKind::Rdma => "RDMA",
        }
    }
}

/// A listen address with SPDK's field names (`listen_address` objects).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    pub trtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adrfam: Option<String>,
    pub traddr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trsvcid: Option<String>,
}

/// A checked listen address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub kind: TransportKind,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Check a listen address: a TCP or RDMA transport, an IP address of
    /// the stated family and a port.
    pub fn parse(a: &ListenAddress) -> Result<Endpoint, NvmfError> {
        let kind = TransportKind::parse(&a.trtype)?;
        let ip: IpAddr = a.traddr.parse().map_err(|_| NvmfError::InvalidParam(format!("traddr {} is not an IP address", a.traddr)))?;
        match a.adrfam.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => {}
            Some("ipv4") if ip.is_ipv4() => {}
            Some("ipv6") if ip.is_ipv6() => {}
            Some(f @ ("ipv4" | "ipv6")) => {
                return Err(NvmfError::InvalidParam(format!("traddr {} is not an {f} address", a.traddr)));
            }
            Some(f) => {
                return Err(NvmfError::InvalidParam(format!("adrfam {f} is not supported by {} (ipv4 or ipv6)", kind.name())));
            }
        }
        let svc =
            a.trsvcid.as_deref().ok_or_else(|| NvmfError::InvalidParam(format!("trsvcid (the port) is required for {}", kind.name())))?;
        let port: u16 = svc.parse().map_err(|_| NvmfError::InvalidParam(format!("trsvcid {svc} is not a port number")))?;
        Ok(Endpoint { kind, addr: SocketAddr::new(ip, port) })
    }

    pub fn adrfam(&self) -> &'static str {
        if self.addr.is_ipv4() { "IPv4" } else { "IPv6" }
    }

    /// The address as SPDK reports it.
    pub fn to_listen_address(&self) -> ListenAddress {
        ListenAddress {
            trtype: self.kind.name().into(),
            adrfam: Some(self.adrfam().into()),
            traddr: self.addr.ip().to_string(),
            trsvcid: Some(self.addr.port().to_string()),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.addr)
    }
}

/// A transport: listeners and the queue pairs they accept. Lives on the
/// main reactor; its queue pairs live on every reactor.
pub trait Transport {
    fn kind(&self) -> TransportKind;
    fn opts(&self) -> &TransportOpts;
    /// Start accepting connections on `ep` (shared by every subsystem that
    /// listens there; counted).
    fn listen(&self, ep: &Endpoint) -> Result<(), NvmfError>;
    /// Drop one use of `ep`; the socket closes with the last one.
    fn stop_listen(&self, ep: &Endpoint);
    /// The `nvmf_get_transports` entry.
    fn describe(&self) -> Value;
}
