//! Controllers: what a host creates with a Connect on an admin queue. A
//! controller belongs to a subsystem and lives on the main reactor with its
//! admin queue; its I/O queue pairs live on any reactor and are known here
//! by reference so they can be closed with it.
//!
//! - [`connect`]: Fabrics Connect for admin and I/O queues (dynamic and
//!   static controller ids, host NQN, host id and listener checks).
//! - properties (CAP, VS, CC, CSTS), keep alive and asynchronous events here;
//! - [`admin`]: the admin command set (Identify, Get Log Page, features...).

pub mod admin;
pub mod connect;
mod discovery;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use pollux_nvme_spec::cmd::Completion;
use pollux_nvme_spec::registers::{Cc, Csts};

use crate::status::{self, Status};
use crate::subsystem::{AnaStates, HostSet, Subsystem};
use crate::transport::{Endpoint, TransportOpts};
use crate::wire::fabrics::{PropertyCommand, property};
use crate::wire::identify::aen;

pub use discovery::discovery_log;

/// NVMe version reported in VS and Identify (1.3: namespace descriptors).
pub const VERSION: u32 = 0x0001_0300;
/// Asynchronous event requests a controller keeps (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Entries of the changed namespace list log page.
const CHANGED_NS_MAX: usize = 1024;

/// The answer to a command: status and the two result dwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
}

impl Response {
    pub fn ok() -> Response {
        Response { status: status::SUCCESS, dw0: 0, dw1: 0 }
    }
    pub fn ok_dw0(dw0: u32) -> Response {
        Response { status: status::SUCCESS, dw0, dw1: 0 }
    }
    pub fn err(status: Status) -> Response {
        Response { status, dw0: 0, dw1: 0 }
    }

    /// The completion queue entry that carries this response for command
    /// `cid` of submission queue `sq_id`, whose head is now `sq_head`.
    pub fn cqe(&self, cid: u16, sq_id: u16, sq_head: u16) -> Completion {
        let mut cqe = Completion::default();
        cqe.result.set(self.dw0);
        cqe.dw1.set(self.dw1);
        cqe.sq_head.set(sq_head);
        cqe.sq_id.set(sq_id);
        cqe.cid.set(cid);
        cqe.set_status(self.status);
        cqe
    }
}

impl From<Status> for Response {
    fn from(s: Status) -> Self {
        Response::err(s)
    }
}

/// What a controller needs from its admin queue (a transport's queue pair
/// on the main reactor).
pub trait AdminQueue {
    /// Send a completion for an earlier command (asynchronous events).
    fn complete(&self, cid: u16, resp: Response);
    /// Close the queue (keep alive expired, controller deleted).
    fn close(&self, reason: &str);
}

/// A queue pair of the controller on some reactor.
#[derive(Clone, Copy, Debug)]
pub struct IoQpairRef {
    pub reactor: ReactorId,
    pub id: u64,
    /// Closes the queue pair with this id; runs on its reactor.
    pub close: fn(u64),
}

pub struct Controller {
    pub cntlid: u16,
    pub subsystem: Rc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// The address the host connected to.
    pub endpoint: Endpoint,
    pub opts: TransportOpts,
    /// The ANA states of the listener the host came through (`None`: the
    /// subsystem does not report ANA).
    pub ana: Option<Arc<AnaStates>>,
    cc: Cell<u32>,
    csts: Cell<u32>,
    /// Keep alive timeout in ms (0: none).
    kato: Cell<u32>,
    last_keep_alive: Cell<Instant>,
    /// Async event configuration (Set Features 0Bh).
    aec: Cell<u32>,
    /// I/O queues granted by Set Features Number of Queues (count).
    io_queues: Cell<u16>,
    io_queues_set: Cell<bool>,
    admin: RefCell<Option<Weak<dyn AdminQueue>>>,
    pub(crate) io_qpairs: RefCell<BTreeMap<u16, IoQpairRef>>,
    aers: RefCell<Vec<u16>>,
    events: RefCell<VecDeque<u32>>,
    changed_ns: RefCell<Vec<u32>>,
    /// Namespace notices are masked until the host reads log page 04h.
    ns_notice_masked: Cell<bool>,
    discovery_notice_masked: Cell<bool>,
    /// ANA change notices are masked until the host reads log page 0Ch.
    ana_notice_masked: Cell<bool>,
    /// Reservation notifications not yet read (log page 80h): (count,
    /// type, NSID), oldest first; the count of the last one queued.
    resv_log: RefCell<VecDeque<(u64, u8, u32)>>,
    resv_count: Cell<u64>,
    resv_notice_masked: Cell<bool>,
    /// Reservation Notification Mask (Set Features 82h): bits 1-3.
    resv_mask: Cell<u32>,
    keep_alive_poller: RefCell<Option<Poller>>,
    destroyed: Cell<bool>,
    /// CC.EN went from 1 to 0 and CSTS.RDY stays 1 until every I/O queue
    /// pair has closed and its commands have finished.
    reset_pending: Cell<bool>,
    /// When a pending reset stops waiting (a command that never completes
    /// must not keep the host from resetting).
    reset_deadline: Cell<Option<Instant>>,
}

/// How long a controller reset waits for its queue pairs' commands: half
/// of CAP.TO, the time the host allows for CSTS.RDY to clear.
const RESET_DRAIN_LIMIT: Duration = Duration::from_millis(3750);

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subsystem", &self.subsystem.nqn())
            .field("host", &self.hostnqn)
            .finish()
    }
}

impl Controller {
    pub fn new(
        cntlid: u16,
        subsystem: Rc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        endpoint: Endpoint,
        opts: TransportOpts,
        kato: u32,
    ) -> Rc<Controller> {
        let kato = if kato == 0 { 0 } else { kato.max(opts.min_kato) };
        let ana = subsystem.listener_ana(&endpoint);
        // As SPDK: ANA change notices are on from the start where reported.
        let aec = if ana.is_some() { pollux_nvme_spec::ana::OAES_ANA_CHANGE } else { 0 };
        Rc::new(Controller {
            cntlid,
            subsystem,
            hostnqn,
            hostid,
            endpoint,
            opts,
            ana,
            cc: Cell::new(0),
            csts: Cell::new(0),
            kato: Cell::new(kato),
            last_keep_alive: Cell::new(Instant::now()),
            aec: Cell::new(aec),
            io_queues: Cell::new(0),
            io_queues_set: Cell::new(false),
            admin: RefCell::new(None),
            io_qpairs: RefCell::new(BTreeMap::new()),
            aers: RefCell::new(Vec::with_capacity(MAX_AERS)),
            events: RefCell::new(VecDeque::new()),
            changed_ns: RefCell::new(Vec::new()),
            ns_notice_masked: Cell::new(false),
            discovery_notice_masked: Cell::new(false),
            ana_notice_masked: Cell::new(false),
            resv_log: RefCell::new(VecDeque::new()),
            resv_count: Cell::new(0),
            resv_notice_masked: Cell::new(false),
            resv_mask: Cell::new(0),
            keep_alive_poller: RefCell::new(None),
            destroyed: Cell::new(false),
            reset_pending: Cell::new(false),
            reset_deadline: Cell::new(None),
        })
    }

    pub fn is_discovery(&self) -> bool {
        self.subsystem.is_discovery()
    }

    /// Namespace `nsid` if this controller's host sees it.
    pub fn namespace(&self, nsid: u32) -> Option<Rc<crate::subsystem::Namespace>> {
        self.subsystem.namespaces.borrow().get(&nsid).filter(|ns| ns.visible_to(&self.hostnqn)).cloned()
    }

    /// The NSIDs of the namespaces this controller's host sees, in order.
    pub fn visible_nsids(&self) -> Vec<u32> {
        self.subsystem.namespaces.borrow().values().filter(|ns| ns.visible_to(&self.hostnqn)).map(|ns| ns.nsid).collect()
    }

    pub fn set_admin_queue(self: &Rc<Self>, q: Weak<dyn AdminQueue>) {
        *self.admin.borrow_mut() = Some(q);
        self.arm_keep_alive();
    }

    pub fn kato_ms(&self) -> u32 {
        self.kato.get()
    }

    pub fn enabled(&self) -> bool {
        Csts(self.csts.get()).ready()
    }

    /// I/O queues the host may connect (qid 1..=n).
    pub fn io_queue_limit(&self) -> u16 {
        if self.io_queues_set.get() { self.io_queues.get() } else { self.opts.max_io_qpairs_per_ctrlr }
    }

    // ---- Properties ----

    fn cap(&self) -> u64 {
        let mqes = u64::from(self.opts.max_queue_depth.saturating_sub(1));
        // MQES, CQR, TO = 15 (7.5 s), CSS = NVM command set, MPSMIN = MPSMAX = 4 KiB.
        mqes | (1 << 16) | (15 << 24) | (1 << 37)
    }

    /// Property Get. Returns the value, or an error status.
    pub fn property_get(&self, cmd: &PropertyCommand) -> Response {
        let eight = cmd.attrib & 0x7 == 1;
        let v = match (cmd.ofst.get(), eight) {
            (property::CAP, true) => self.cap(),
            (property::VS, false) => u64::from(VERSION),
            (property::CC, false) => u64::from(self.cc.get()),
            (property::CSTS, false) => {
                self.check_reset_deadline();
                u64::from(self.csts.get())
            }
            _ => return Response::err(status::INVALID_FIELD),
        };
        Response { status: status::SUCCESS, dw0: v as u32, dw1: (v >> 32) as u32 }
    }

    /// Property Set: only CC is writable.
    pub fn property_set(&self, cmd: &PropertyCommand) -> Response {
        if cmd.ofst.get() != property::CC || cmd.attrib & 0x7 != 0 {
            return Response::err(status::INVALID_FIELD);
        }
        let new = cmd.value.get() as u32;
        let old = self.cc.get();
        self.cc.set(new);
        let mut csts = self.csts.get();
        if Cc(new).enabled() && !Cc(old).enabled() {
            self.reset_pending.set(false);
            csts |= Csts::RDY;
        } else if !Cc(new).enabled() && Cc(old).enabled() {
            // Controller reset: close the I/O queue pairs; CSTS.RDY clears
            // once all of them are gone and no command of theirs is still
            // running on a bdev (a write may not land after the host saw
            // the reset complete). The host reconnects afterwards.
            csts &= !Csts::SHST_MASK;
            self.reset_pending.set(true);
            self.reset_deadline.set(Some(Instant::now() + RESET_DRAIN_LIMIT));
            self.close_io_qpairs();
            if self.io_qpairs.borrow().is_empty() {
                self.reset_pending.set(false);
                csts &= !Csts::RDY;
            }
        }
        if new & Cc::SHN_MASK != 0 {
            csts = (csts & !Csts::SHST_MASK) | Csts::SHST_COMPLETE;
        } else if old & Cc::SHN_MASK != 0 {
            csts &= !Csts::SHST_MASK;
        }
        self.csts.set(csts);
        Response::ok()
    }

    // ---- Keep alive ----

    pub fn keep_alive(&self) {
        self.last_keep_alive.set(Instant::now());
    }

    /// Set Features Keep Alive Timer.
    pub fn set_kato(self: &Rc<Self>, ms: u32) {
        let ms = if ms == 0 { 0 } else { ms.max(self.opts.min_kato) };
        self.kato.set(ms);
        self.keep_alive();
        self.arm_keep_alive();
    }

    fn arm_keep_alive(self: &Rc<Self>) {
        let kato = self.kato.get();
        if kato == 0 {
            self.keep_alive_poller.borrow_mut().take();
            return;
        }
        let me = Rc::downgrade(self);
        let period = Duration::from_millis(u64::from(kato / 4).clamp(50, 1000));
        let p = reactor::register_timed_poller("nvmf_keep_alive", period, move || {
            let Some(c) = me.upgrade() else {
                return PollStatus::Idle;
            };
            let limit = Duration::from_millis(u64::from(c.kato.get()));
            if c.last_keep_alive.get().elapsed() > limit {
                tracing::warn!(
                    "nvmf: controller {} of {} ({}): keep alive timeout of {} ms expired",
                    c.cntlid,
                    c.subsystem.nqn(),
                    connect::host_name(&c.hostnqn),
                    c.kato.get()
                );
                c.destroy("keep alive timeout expired");
                return PollStatus::Busy;
            }
            PollStatus::Idle
        });
        *self.keep_alive_poller.borrow_mut() = Some(p);
    }

    // ---- Queues ----

    pub fn set_io_queues(&self, requested: u16) -> u16 {
        let n = requested.min(self.opts.max_io_qpairs_per_ctrlr);
        self.io_queues.set(n);
        self.io_queues_set.set(true);
        n
    }

    pub fn add_io_qpair(&self, qid: u16, q: IoQpairRef) {
        self.io_qpairs.borrow_mut().insert(qid, q);
    }

    /// A reset that waited too long for its queue pairs completes anyway.
    fn check_reset_deadline(&self) {
        if self.reset_pending.get() && self.reset_deadline.get().is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "nvmf: controller {} of {}: reset done with {} queue pair(s) still finishing commands",
                self.cntlid,
                self.subsystem.nqn(),
                self.io_qpairs.borrow().len()
            );
            self.reset_pending.set(false);
            self.csts.set(self.csts.get() & !Csts::RDY);
        }
    }

    /// An I/O queue pair closed and none of its commands is running any
    /// more (see [`report_io_qpair_closed`]).
    pub fn io_qpair_closed(&self, qid: u16, id: u64) {
        let mut q = self.io_qpairs.borrow_mut();
        if q.get(&qid).is_some_and(|r| r.id == id) {
            q.remove(&qid);
        }
        if q.is_empty() && self.reset_pending.replace(false) {
            self.csts.set(self.csts.get() & !Csts::RDY);
        }
    }

    /// Ask every I/O queue pair to close; each leaves `io_qpairs` when it
    /// reports itself closed and drained ([`Controller::io_qpair_closed`]).
    fn close_io_qpairs(&self) {
        for q in self.io_qpairs.borrow().values() {
            let (close, id) = (q.close, q.id);
            reactor::send_msg(q.reactor, move || close(id));
        }
    }

    /// Tear the controller down: close its queues and forget it. Idempotent.
    pub fn destroy(&self, reason: &str) {
        if self.destroyed.replace(true) {
            return;
        }
        self.keep_alive_poller.borrow_mut().take();
        self.close_io_qpairs();
        self.aers.borrow_mut().clear();
        let admin = self.admin.borrow_mut().take().and_then(|w| w.upgrade());
        if let Some(a) = admin {
            a.close(reason);
        }
        self.subsystem.controllers.borrow_mut().remove(&self.cntlid);
        tracing::info!(
            "nvmf: controller {} of {} ({}) destroyed: {reason}",
            self.cntlid,
            self.subsystem.nqn(),
            connect::host_name(&self.hostnqn)
        );
    }

    // ---- Asynchronous events ----

    /// Keep an Asynchronous Event Request until an event completes it.
    pub fn add_aer(&self, cid: u16) -> Result<(), Status> {
        if self.aers.borrow().len() >= MAX_AERS {
            return Err(status::ASYNC_EVENT_LIMIT_EXCEEDED);
        }
        self.aers.borrow_mut().push(cid);
        self.deliver_events();
        Ok(())
    }

    /// Abort an outstanding AER with this cid; whether there was one.
    pub fn abort_aer(&self, cid: u16) -> bool {
        let pos = self.aers.borrow().iter().position(|&c| c == cid);
        let Some(pos) = pos else { return false };
        self.aers.borrow_mut().remove(pos);
        if let Some(a) = self.admin.borrow().as_ref().and_then(Weak::upgrade) {
            a.complete(cid, Response::err(status::ABORT_REQUESTED));
        }
        true
    }

    pub fn aec(&self) -> u32 {
        self.aec.get()
    }

    pub fn set_aec(&self, v: u32) {
        self.aec.set(v);
    }

    fn deliver_events(&self) {
        loop {
            if self.aers.borrow().is_empty() || self.events.borrow().is_empty() {
                return;
            }
            let cid = self.aers.borrow_mut().remove(0);
            let dw0 = self.events.borrow_mut().pop_front().expect("event");
            match self.admin.borrow().as_ref().and_then(Weak::upgrade) {
                Some(a) => a.complete(cid, Response::ok_dw0(dw0)),
                None => return,
            }
        }
    }

    /// A namespace was added, removed or resized.
    pub fn notify_ns_changed(&self, nsid: u32) {
        {
            // Once more have changed than the page holds, it says so with
            // FFFFFFFFh alone (the rest zero) until the host reads it.
            let mut list = self.changed_ns.borrow_mut();
            if list.first() != Some(&u32::MAX) && !list.contains(&nsid) {
                if list.len() < CHANGED_NS_MAX {
                    list.push(nsid);
                } else {
                    list.clear();
                    list.push(u32::MAX);
                }
            }
        }
        if self.aec.get() & crate::wire::identify::ctrlr::OAES_NS_ATTRIBUTE == 0 || self.ns_notice_masked.replace(true) {
            return;
        }
        self.events.borrow_mut().push_back(aen::dw0(
            aen::TYPE_NOTICE,
            aen::INFO_NS_ATTRIBUTE_CHANGED,
            pollux_nvme_spec::log::lid::CHANGED_NAMESPACE_LIST,
        ));
        self.deliver_events();
    }

    /// The discovery log changed (discovery controllers only).
    pub fn notify_discovery_change(&self) {
        if self.aec.get() & crate::wire::identify::ctrlr::OAES_DISCOVERY_LOG_CHANGE == 0 || self.discovery_notice_masked.replace(true) {
            return;
        }
        self.events.borrow_mut().push_back(aen::dw0(aen::TYPE_NOTICE, aen::INFO_DISCOVERY_LOG_CHANGE, crate::wire::discovery::LOG_ID));
        self.deliver_events();
    }

    /// The ANA state of a group through this controller's listener changed.
    pub fn notify_ana_change(&self) {
        use pollux_nvme_spec::ana;
        if self.ana.is_none() || self.aec.get() & ana::OAES_ANA_CHANGE == 0 || self.ana_notice_masked.replace(true) {
            return;
        }
        self.events.borrow_mut().push_back(aen::dw0(
            aen::TYPE_NOTICE,
            ana::AEN_INFO_ANA_CHANGE,
            pollux_nvme_spec::log::lid::ASYMMETRIC_NAMESPACE_ACCESS,
        ));
        self.deliver_events();
    }

    /// A reservation change concerns this controller's host: queue a log
    /// page 80h entry and, unless masked, an event (I/O command specific,
    /// reservation log page available).
    pub fn notify_reservation(&self, nsid: u32, kind: u8) {
        if self.resv_mask.get() & (1 << kind) != 0 {
            return;
        }
        // The count runs 1.. and skips 0 when it wraps.
        let n = self.resv_count.get().checked_add(1).unwrap_or(1);
        self.resv_count.set(n);
        {
            let mut log = self.resv_log.borrow_mut();
            if log.len() >= 255 {
                log.pop_front();
            }
            log.push_back((n, kind, nsid));
        }
        if self.resv_notice_masked.replace(true) {
            return;
        }
        self.events.borrow_mut().push_back(aen::dw0(
            aen::TYPE_IO_COMMAND_SPECIFIC,
            0,
            pollux_nvme_spec::log::lid::RESERVATION_NOTIFICATION,
        ));
        self.deliver_events();
    }

    /// Log page 80h: the oldest notification (all zero when none), how
    /// many more wait; reading it without RAE takes it and unmasks events.
    pub fn take_reservation_notice(&self, retain: bool) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        let mut log = self.resv_log.borrow_mut();
        if let Some(&(n, kind, nsid)) = log.front() {
            p[0..8].copy_from_slice(&n.to_le_bytes());
            p[8] = kind;
            p[9] = (log.len() - 1).min(255) as u8;
            p[12..16].copy_from_slice(&nsid.to_le_bytes());
            if !retain {
                log.pop_front();
            }
        }
        if !retain {
            self.resv_notice_masked.set(false);
        }
        p
    }

    pub fn resv_mask(&self) -> u32 {
        self.resv_mask.get()
    }

    pub fn set_resv_mask(&self, m: u32) {
        self.resv_mask.set(m & 0b1110);
    }

    /// The host read the ANA log page (without Retain Asynchronous Event).
    pub fn unmask_ana_notice(&self) {
        self.ana_notice_masked.set(false);
    }

    /// The ANA state of namespace group `grp` as this controller reports it
    /// (optimized where ANA is not reported).
    pub fn ana_state(&self, grp: u32) -> u8 {
        self.ana.as_ref().map_or(pollux_nvme_spec::ana::OPTIMIZED, |a| a.get(grp))
    }

    /// Read (and, unless `retain`, clear) the changed namespace list.
    pub fn take_changed_ns(&self, retain: bool) -> Vec<u32> {
        let list = if retain { self.changed_ns.borrow().clone() } else { std::mem::take(&mut *self.changed_ns.borrow_mut()) };
        if !retain {
            self.ns_notice_masked.set(false);
        }
        list
    }

    pub fn unmask_discovery_notice(&self) {
        self.discovery_notice_masked.set(false);
    }
}

/// Tell the controllers of a subsystem that a namespace changed: those of
/// the hosts in `hosts`, or all of them (`None`): a host that does not see
/// a namespace hears nothing of it.
pub fn notify_namespace_change(subsystem: &Subsystem, nsid: u32, hosts: Option<&HostSet>) {
    let ctrlrs: Vec<Rc<Controller>> =
        subsystem.controllers.borrow().values().filter(|c| hosts.is_none_or(|h| h.contains(&c.hostnqn))).cloned().collect();
    for c in ctrlrs {
        c.notify_ns_changed(nsid);
    }
}

/// From any reactor, any transport: I/O queue pair `id` (queue `qid` of
/// controller `cntlid` in subsystem `subsystem_id`) closed and none of its
/// commands runs any more; its controller, on the main reactor, forgets it.
pub fn report_io_qpair_closed(subsystem_id: u32, cntlid: u16, qid: u16, id: u64) {
    reactor::send_msg(reactor::ReactorId(0), move || {
        let Ok(t) = crate::target::target() else { return };
        if let Some(s) = t.find_id(subsystem_id) {
            if let Some(c) = s.controllers.borrow().get(&cntlid) {
                c.io_qpair_closed(qid, id);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subsystem::SubsystemKind;
    use crate::transport::TransportKind;

    /// More changed namespaces than log page 04h holds: FFFFFFFFh alone
    /// until the host reads it (later changes were appended after it).
    #[test]
    fn an_overflowed_changed_namespace_list_says_so_alone() {
        let mut config = Subsystem::discovery().config;
        config.nqn = "nqn.2016-06.io.pollux:overflow".into();
        let s = Rc::new(Subsystem::new(1, SubsystemKind::Nvme, config));
        let ep = Endpoint { kind: TransportKind::Tcp, addr: "127.0.0.1:4420".parse().unwrap() };
        let c = Controller::new(1, s, "nqn.2016-06.io.pollux:h".into(), [0; 16], ep, TransportOpts::default(), 0);
        for nsid in 1..=CHANGED_NS_MAX as u32 + 5 {
            c.notify_ns_changed(nsid);
        }
        assert_eq!(c.take_changed_ns(false), vec![u32::MAX]);
        c.notify_ns_changed(7);
        assert_eq!(c.take_changed_ns(false), vec![7], "a fresh list after the read");
    }
}
