//! The discovery log page: every listener of every subsystem the host may
//! use, then the referrals.

use zerocopy::{FromZeros, IntoBytes};

use crate::target::Target;
use crate::transport::{Endpoint, TransportKind};
use crate::wire::discovery::{LogEntry, LogHeader, adrfam, rdma_tsas, subtype, treq, trtype};
use crate::wire::fabrics::{CNTLID_DYNAMIC, DISCOVERY_NQN};
use crate::wire::{set_nul_field, set_space_field};

use super::Controller;

fn entry(ep: &Endpoint, kind: u8, subnqn: &str, portid: u16, asqsz: u16) -> LogEntry {
    let mut e = LogEntry::new_zeroed();
    e.trtype = match ep.kind {
        TransportKind::Tcp => trtype::TCP,
        TransportKind::Rdma => {
            // Reliable connected, any provider, connected through the RDMA
            // CM (as Linux's nvmet and SPDK report it).
            e.tsas[..3].copy_from_slice(&[rdma_tsas::QPTYPE_CONNECTED, rdma_tsas::PRTYPE_NOT_SPECIFIED, rdma_tsas::CMS_RDMA_CM]);
            trtype::RDMA
        }
    };
    e.adrfam = if ep.addr.is_ipv4() { adrfam::IPV4 } else { adrfam::IPV6 };
    e.subtype = kind;
    e.treq = treq::SECURE_CHANNEL_NOT_REQUIRED;
    e.portid.set(portid);
    e.cntlid.set(CNTLID_DYNAMIC);
    e.asqsz.set(asqsz);
    set_space_field(&mut e.trsvcid, &ep.addr.port().to_string());
    set_nul_field(&mut e.subnqn, subnqn);
    set_nul_field(&mut e.traddr, &ep.addr.ip().to_string());
    // TSAS for TCP: security type 0 (no security), all zero.
    e
}

/// The whole discovery log as `c`'s host sees it.
pub fn discovery_log(target: &Target, c: &Controller) -> Vec<u8> {
    let asqsz = c.opts.max_aq_depth.min(u32::from(u16::MAX)) as u16;
    let mut entries = Vec::new();
    // Port ids: the position of each distinct listen address.
    let mut ports: Vec<Endpoint> = Vec::new();
    let mut port_of = |ep: &Endpoint| -> u16 {
        if let Some(i) = ports.iter().position(|p| p == ep) {
            return i as u16;
        }
        ports.push(*ep);
        (ports.len() - 1) as u16
    };
    let config = target.config.borrow();
    for s in target.subsystems.borrow().iter().filter(|s| !s.is_discovery()) {
        if !s.host_allowed(&c.hostnqn) {
            continue;
        }
        for ep in s.listeners.borrow().iter().map(|l| &l.ep).filter(|ep| config.shows(ep, &c.endpoint)) {
            entries.push(entry(ep, subtype::NVME, s.nqn(), port_of(ep), asqsz));
        }
    }
    for r in target.referrals.borrow().iter() {
        let (kind, nqn) = match &r.subnqn {
            Some(n) if n != DISCOVERY_NQN => (subtype::NVME, n.as_str()),
            _ => (subtype::DISCOVERY_REFERRAL, DISCOVERY_NQN),
        };
        entries.push(entry(&r.ep, kind, nqn, port_of(&r.ep), asqsz));
    }
    let mut hdr = LogHeader::new_zeroed();
    hdr.genctr.set(target.genctr());
    hdr.numrec.set(entries.len() as u64);
    let mut out = Vec::with_capacity(1024 * (entries.len() + 1));
    out.extend_from_slice(hdr.as_bytes());
    for e in &entries {
        out.extend_from_slice(e.as_bytes());
    }
    out
}
