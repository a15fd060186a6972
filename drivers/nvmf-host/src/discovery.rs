//! Discovery: the discovery log page of a discovery controller, read page
//! by page and checked against its generation counter, and the discovery
//! service of `bdev_nvme_start_discovery` (SPDK's names): attach every NVM
//! subsystem the log lists (a subsystem listed at several addresses
//! becomes one controller with several paths), follow referrals to other
//! discovery controllers, and keep following the log through the
//! discovery log change event: subsystems that appear are attached, those
//! that go are detached.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};
use pollux_nvme_spec::discovery::{LogEntry, LogHeader, adrfam, subtype, trtype};
use pollux_nvme_spec::fabrics::DISCOVERY_NQN;
use pollux_nvme_spec::log::lid;
use serde_json::{Value, json};
use std::time::Duration;
use zerocopy::FromBytes;

use crate::HostError;
use crate::ctrlr::{self, ConnectOptions, Controller};
use crate::qpair::{Fabric, Qpair};

/// Most entries read from one discovery log (1 MiB of log): a controller
/// cannot make the host allocate without bound.
pub const MAX_RECORDS: u64 = 1023;
/// Bytes read per Get Log Page.
const PAGE: usize = 4096;
/// Times the log is read again when it changed while being read.
const RETRIES: u32 = 8;

/// One entry of a discovery log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

impl Entry {
    fn from_raw(e: &LogEntry) -> Entry {
        Entry {
            trtype: e.trtype,
            adrfam: e.adrfam,
            subtype: e.subtype,
            treq: e.treq,
            portid: e.portid.get(),
            cntlid: e.cntlid.get(),
            asqsz: e.asqsz.get(),
            trsvcid: text(&e.trsvcid),
            subnqn: text(&e.subnqn),
            traddr: text(&e.traddr),
        }
    }

    /// The TCP address of the entry, if it is a TCP one with a valid one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.addr_on(Fabric::Tcp)
    }

    /// The address of the entry if it is on `fabric` (TCP or RDMA over
    /// IP) with a valid one.
    pub fn addr_on(&self, fabric: Fabric) -> Option<SocketAddr> {
        let t = match fabric {
            Fabric::Tcp => trtype::TCP,
            Fabric::Rdma => trtype::RDMA,
        };
        if self.trtype != t || !matches!(self.adrfam, adrfam::IPV4 | adrfam::IPV6) {
            return None;
        }
        let ip: IpAddr = self.traddr.parse().ok()?;
        Some(SocketAddr::new(ip, self.trsvcid.parse().ok()?))
    }

    pub fn subtype_name(&self) -> &'static str {
        match self.subtype {
            subtype::DISCOVERY_REFERRAL => "discovery subsystem referral",
            subtype::NVME => "nvme subsystem",
            3 => "current discovery subsystem",
            _ => "unrecognized",
        }
    }

    pub fn trtype_name(&self) -> &'static str {
        match self.trtype {
            trtype::RDMA => "rdma",
            trtype::FC => "fc",
            trtype::TCP => "tcp",
            254 => "loop",
            _ => "unrecognized",
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "trtype": self.trtype_name(),
            "adrfam": match self.adrfam { adrfam::IPV4 => "ipv4", adrfam::IPV6 => "ipv6", 3 => "ib", 4 => "fc", _ => "unrecognized" },
            "subtype": self.subtype_name(),
            "treq": match self.treq & 3 { 1 => "required", 2 => "not required", _ => "not specified" },
            "portid": self.portid,
            "trsvcid": self.trsvcid,
            "subnqn": self.subnqn,
            "traddr": self.traddr,
            "cntlid": self.cntlid,
            "asqsz": self.asqsz,
        })
    }
}

/// A discovery log as read.
#[derive(Clone, Debug)]
pub struct Log {
    pub genctr: u64,
    pub entries: Vec<Entry>,
}

/// A whole discovery log as read (header, then the entries it counts):
/// `None` if it counts more than [`MAX_RECORDS`] or more than it holds.
pub fn parse_log(bytes: &[u8]) -> Option<Log> {
    let (h, rest) = LogHeader::read_from_prefix(bytes).ok()?;
    let n = h.numrec.get();
    if n > MAX_RECORDS {
        return None;
    }
    let body = rest.get(..1024 * n as usize)?;
    let entries = body.chunks_exact(1024).map(|c| Entry::from_raw(&LogEntry::read_from_bytes(c).expect("1024 bytes"))).collect();
    Some(Log { genctr: h.genctr.get(), entries })
}

type LogCb = Box<dyn FnOnce(Result<Log, HostError>)>;

struct Reading {
    qp: Rc<Qpair>,
    genctr: u64,
    numrec: u64,
    bytes: Vec<u8>,
    tries: u32,
    done: Option<LogCb>,
}

/// Read the whole discovery log from a connected discovery controller: the
/// first page (header and the first entries), the rest a page at a time,
/// then the header again; read again from the start when the generation
/// counter moved meanwhile.
pub fn read_log(qp: &Rc<Qpair>, done: impl FnOnce(Result<Log, HostError>) + 'static) {
    let r =
        Rc::new(RefCell::new(Reading { qp: qp.clone(), genctr: 0, numrec: 0, bytes: Vec::new(), tries: 0, done: Some(Box::new(done)) }));
    first_page(r);
}

fn end(r: &Rc<RefCell<Reading>>, res: Result<Log, HostError>) {
    let done = r.borrow_mut().done.take();
    if let Some(d) = done {
        d(res);
    }
}

fn header(b: &[u8]) -> (u64, u64) {
    let h = LogHeader::read_from_prefix(b).map(|(h, _)| h).expect("a page holds the header");
    (h.genctr.get(), h.numrec.get())
}

fn first_page(r: Rc<RefCell<Reading>>) {
    let qp = r.borrow().qp.clone();
    ctrlr::get_log_page(&qp, lid::DISCOVERY, 0, PAGE, move |res| match res {
        Err(e) => end(&r, Err(e)),
        Ok(page) => {
            let (genctr, numrec) = header(&page);
            if numrec > MAX_RECORDS {
                return end(
                    &r,
                    Err(HostError::Transport(format!("the discovery log has {numrec} entries; the host reads {MAX_RECORDS} at most"))),
                );
            }
            {
                let mut s = r.borrow_mut();
                s.genctr = genctr;
                s.numrec = numrec;
                s.bytes = page;
            }
            next_page(r);
        }
    });
}

fn next_page(r: Rc<RefCell<Reading>>) {
    let (qp, have, want) = {
        let s = r.borrow();
        (s.qp.clone(), s.bytes.len(), 1024 * (1 + s.numrec as usize))
    };
    if have >= want {
        return check_again(r);
    }
    let len = PAGE.min(want - have).next_multiple_of(4);
    ctrlr::get_log_page(&qp, lid::DISCOVERY, have as u64, len, move |res| match res {
        // A page shorter than asked: the log shrank while read; again.
        Err(HostError::Transport(_)) if r.borrow().tries < RETRIES => {
            r.borrow_mut().tries += 1;
            first_page(r)
        }
        Err(e) => end(&r, Err(e)),
        Ok(page) => {
            r.borrow_mut().bytes.extend_from_slice(&page);
            next_page(r);
        }
    });
}

fn check_again(r: Rc<RefCell<Reading>>) {
    let qp = r.borrow().qp.clone();
    ctrlr::get_log_page(&qp, lid::DISCOVERY, 0, 1024, move |res| match res {
        Err(e) => end(&r, Err(e)),
        Ok(h) => {
            let (genctr, _) = header(&h);
            let (same, tries) = {
                let mut s = r.borrow_mut();
                s.tries += 1;
                (genctr == s.genctr, s.tries)
            };
            if !same {
                if tries > RETRIES {
                    return end(&r, Err(HostError::Transport(format!("the discovery log kept changing while read ({RETRIES} tries)"))));
                }
                return first_page(r);
            }
            let log = parse_log(&r.borrow().bytes).ok_or_else(|| HostError::Transport("a malformed discovery log".into()));
            end(&r, log);
        }
    });
}

/// Connect to the discovery controller at `addr` as `hostnqn`, read its
/// log, and disconnect: what `pollux-nvme discover` prints.
pub fn discover(name: &str, mut opts: ConnectOptions, done: impl FnOnce(Result<Log, HostError>) + 'static) {
    opts.subnqn = DISCOVERY_NQN.to_string();
    opts.kato_ms = 0;
    ctrlr::connect(name, opts, 1, move |r| match r {
        Err(e) => done(Err(e)),
        Ok((_, qp)) => {
            let q = qp.clone();
            read_log(&qp, move |log| {
                q.close();
                done(log)
            });
        }
    });
}

/// Settings the discovery service attaches with.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// The discovery controller (its `subnqn` is the discovery NQN), and
    /// the host settings every controller it attaches uses.
    pub opts: ConnectOptions,
    /// What `save_config` writes back.
    pub params: Value,
}

/// A path the service attached: the log entry's subsystem at an address,
/// as controller `ctrl_name`.
#[derive(Clone, Debug)]
struct Attached {
    subnqn: String,
    addr: SocketAddr,
    ctrl_name: String,
}

struct Service {
    name: String,
    o: ServiceOptions,
    /// Discovery controllers in use: the first, then referrals.
    ctrls: Vec<(SocketAddr, Arc<Controller>, Rc<Qpair>)>,
    referrals: Vec<SocketAddr>,
    attached: Vec<Attached>,
    next_index: u32,
    stopping: bool,
    /// The log entries as last read from each discovery controller.
    logs: Vec<(SocketAddr, Vec<Entry>)>,
    /// Discovery controllers being reconnected, each with its next try.
    retries: Vec<(SocketAddr, Poller)>,
    /// Tells this service from a later one of the same name.
    id: u64,
}

#[derive(Default)]
struct Services {
    list: RefCell<Vec<Rc<RefCell<Service>>>>,
}

fn services() -> Rc<Services> {
    assert_eq!(reactor::current(), ReactorId(0), "the discovery services live on the main reactor");
    match reactor::local::<Services>() {
        Some(r) => r,
        None => {
            let r = Rc::new(Services::default());
            reactor::set_local(r.clone());
            r
        }
    }
}

fn find(name: &str) -> Option<Rc<RefCell<Service>>> {
    services().list.borrow().iter().find(|s| s.borrow().name == name).cloned()
}

/// Whether a discovery service of this name runs.
pub fn exists(name: &str) -> bool {
    find(name).is_some()
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Referrals are followed this deep at most.
const MAX_DISCOVERY_CONTROLLERS: usize = 8;

/// Start discovery service `name` (main reactor): connect to the discovery
/// controller, attach what its log lists, and follow its changes. `done`
/// runs once the first log is read and every subsystem in it attached
/// (or failed to), with the names of the controllers attached.
pub fn start(name: &str, o: ServiceOptions, done: impl FnOnce(Result<Vec<String>, HostError>) + 'static) {
    if exists(name) {
        return done(Err(HostError::Exists(format!("a discovery service named {name} already exists"))));
    }
    let addr = o.opts.addr;
    if services().list.borrow().iter().any(|s| s.borrow().ctrls.iter().any(|(a, _, _)| *a == addr)) {
        return done(Err(HostError::Exists(format!("a discovery service already follows {addr}"))));
    }
    let svc = Rc::new(RefCell::new(Service {
        name: name.to_string(),
        o,
        ctrls: Vec::new(),
        referrals: Vec::new(),
        attached: Vec::new(),
        next_index: 0,
        stopping: false,
        logs: Vec::new(),
        retries: Vec::new(),
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    }));
    services().list.borrow_mut().push(svc.clone());
    let me = svc.clone();
    connect_discovery(
        &svc,
        addr,
        Box::new(move |r| {
            if r.is_err() {
                services().list.borrow_mut().retain(|s| !Rc::ptr_eq(s, &me));
            }
            done(r)
        }),
    );
}

type NamesCb = Box<dyn FnOnce(Result<Vec<String>, HostError>)>;

fn connect_discovery(svc: &Rc<RefCell<Service>>, addr: SocketAddr, done: NamesCb) {
    let (mut opts, cname) = {
        let s = svc.borrow();
        (s.o.opts.clone(), format!("{}_discovery{}", s.name, s.ctrls.len()))
    };
    opts.addr = addr;
    opts.subnqn = DISCOVERY_NQN.to_string();
    // No keep alive: the controller keeps it for as long as the connection
    // lasts (an Asynchronous Event Request stays outstanding on it).
    opts.kato_ms = 0;
    let svc = svc.clone();
    ctrlr::connect(&cname, opts, 1, move |r| match r {
        Err(e) => done(Err(e)),
        Ok((ctrl, qp)) => {
            if svc.borrow().stopping {
                qp.close();
                return done(Err(HostError::Closed));
            }
            svc.borrow_mut().ctrls.push((addr, ctrl, qp.clone()));
            // Hear of log changes: enable the notice, keep one AER out.
            let (s2, q2) = (svc.clone(), qp.clone());
            ctrlr::set_async_events(&qp, 1 << 31, move |r| {
                if let Err(e) = r {
                    tracing::warn!("nvmf discovery {addr}: log change notices not enabled ({e})");
                }
                arm_event(&s2, addr, &q2);
            });
            refresh(&svc, addr, done);
        }
    });
}

/// Keep one Asynchronous Event Request outstanding on the discovery
/// controller at `addr`; a discovery log change reads the log again.
fn arm_event(svc: &Rc<RefCell<Service>>, addr: SocketAddr, qp: &Rc<Qpair>) {
    let weak = Rc::downgrade(svc);
    let q = qp.clone();
    ctrlr::async_event(qp, move |r| {
        let Some(svc) = weak.upgrade() else { return };
        if svc.borrow().stopping {
            return;
        }
        match r {
            // The controller refused the request: the connection is fine,
            // changes will not be heard of.
            Err(e @ HostError::Status(..)) => tracing::warn!("nvmf discovery {addr}: no log change events ({e})"),
            Err(e) => discovery_lost(&svc, addr, &e),
            Ok(dw0) => {
                let (kind, info, log) = (dw0 & 7, (dw0 >> 8) & 0xff, (dw0 >> 16) & 0xff);
                tracing::info!("nvmf discovery {addr}: event type {kind} information {info:#x} log page {log:#x}");
                arm_event(&svc, addr, &q);
                // Notice / discovery log page change.
                if kind == 2 && info == 0xf0 || log == u32::from(lid::DISCOVERY) {
                    refresh(&svc, addr, Box::new(|_| {}));
                }
            }
        }
    });
}

/// The discovery controller at `addr` is gone (its connection ended):
/// forget it and connect again every `reconnect_delay_sec` (at least 1 s)
/// until it is back or the service stops. What it listed stays attached
/// meanwhile; its log is read again once it is back.
fn discovery_lost(svc: &Rc<RefCell<Service>>, addr: SocketAddr, why: &HostError) {
    let gone = {
        let mut s = svc.borrow_mut();
        let pos = s.ctrls.iter().position(|(a, _, _)| *a == addr);
        pos.map(|p| s.ctrls.remove(p))
    };
    if let Some((_, _, qp)) = gone {
        qp.close();
    }
    tracing::warn!("nvmf discovery {addr}: the discovery controller is gone ({why}); reconnecting");
    retry_discovery(svc, addr);
}

fn retry_discovery(svc: &Rc<RefCell<Service>>, addr: SocketAddr) {
    let delay = Duration::from_secs(u64::from(svc.borrow().o.opts.reconnect_delay_sec.max(1)));
    let id = svc.borrow().id;
    let poller = reactor::register_timed_poller("nvmf_discovery_reconnect", delay, move || {
        // Not from inside the poller: the attempt drops it.
        reactor::send_msg(ReactorId(0), move || {
            let found = services().list.borrow().iter().find(|s| s.borrow().id == id).cloned();
            let Some(svc) = found else { return };
            if svc.borrow().stopping {
                return;
            }
            svc.borrow_mut().retries.retain(|(a, _)| *a != addr);
            let s2 = svc.clone();
            connect_discovery(
                &svc,
                addr,
                Box::new(move |r| {
                    let up = s2.borrow().ctrls.iter().any(|(a, _, _)| *a == addr);
                    match r {
                        Ok(_) => tracing::info!("nvmf discovery {addr}: reconnected"),
                        Err(e) if !up && !s2.borrow().stopping => {
                            tracing::warn!("nvmf discovery {addr}: reconnect failed ({e})");
                            retry_discovery(&s2, addr);
                        }
                        Err(_) => {}
                    }
                }),
            );
        });
        PollStatus::Busy
    });
    let mut s = svc.borrow_mut();
    s.retries.retain(|(a, _)| *a != addr);
    s.retries.push((addr, poller));
}

/// Read the log of the discovery controller at `addr` and make the
/// attached paths match it.
fn refresh(svc: &Rc<RefCell<Service>>, addr: SocketAddr, done: NamesCb) {
    let qp = svc.borrow().ctrls.iter().find(|(a, _, _)| *a == addr).map(|(_, _, q)| q.clone());
    let Some(qp) = qp else { return done(Err(HostError::Closed)) };
    let svc = svc.clone();
    read_log(&qp, move |r| match r {
        Err(e) => {
            tracing::warn!("nvmf discovery {addr}: reading the log: {e}");
            done(Err(e))
        }
        Ok(log) => {
            tracing::info!("nvmf discovery {addr}: {} entries (generation {})", log.entries.len(), log.genctr);
            reconcile(&svc, addr, log.entries, done)
        }
    });
}

fn reconcile(svc: &Rc<RefCell<Service>>, from: SocketAddr, entries: Vec<Entry>, done: NamesCb) {
    if svc.borrow().stopping {
        return done(Err(HostError::Closed));
    }
    // The entries on the service's own fabric are followed and attached.
    let fabric = svc.borrow().o.opts.fabric;
    {
        let mut s = svc.borrow_mut();
        s.logs.retain(|(a, _)| *a != from);
        s.logs.push((from, entries.clone()));
    }
    // Referrals: other discovery controllers, followed too.
    for e in entries.iter().filter(|e| e.subtype == subtype::DISCOVERY_REFERRAL) {
        let Some(addr) = e.addr_on(fabric) else { continue };
        let follow = {
            let mut s = svc.borrow_mut();
            let known = s.referrals.contains(&addr) || s.ctrls.iter().any(|(a, _, _)| *a == addr) || s.o.opts.addr == addr;
            if !known {
                s.referrals.push(addr);
            }
            !known && s.ctrls.len() < MAX_DISCOVERY_CONTROLLERS
        };
        if follow {
            tracing::info!("nvmf discovery: following the referral to {addr}");
            connect_discovery(
                svc,
                addr,
                Box::new(move |r| {
                    if let Err(e) = r {
                        tracing::warn!("nvmf discovery: referral {addr}: {e}");
                    }
                }),
            );
        }
    }
    // Everything every discovery controller lists now.
    let wanted: Vec<(String, SocketAddr)> = svc
        .borrow()
        .logs
        .iter()
        .flat_map(|(_, l)| l.iter())
        .filter(|e| e.subtype == subtype::NVME)
        .filter_map(|e| e.addr_on(fabric).map(|a| (e.subnqn.clone(), a)))
        .collect();
    // Gone: detach those paths.
    let gone: Vec<Attached> =
        svc.borrow().attached.iter().filter(|a| !wanted.iter().any(|(n, ad)| *n == a.subnqn && *ad == a.addr)).cloned().collect();
    for a in gone {
        tracing::info!("nvmf discovery: {} at {} is no longer listed; detaching that path", a.subnqn, a.addr);
        svc.borrow_mut().attached.retain(|x| !(x.subnqn == a.subnqn && x.addr == a.addr));
        let _ = crate::bdev::detach_path(&a.ctrl_name, crate::bdev::PathMatch::at(fabric, a.addr), || {});
    }
    // New: attach (a known subsystem at a new address is another path).
    let mut new = Vec::new();
    for (subnqn, addr) in wanted {
        let mut s = svc.borrow_mut();
        if s.attached.iter().any(|a| a.subnqn == subnqn && a.addr == addr)
            || new.iter().any(|a: &Attached| a.subnqn == subnqn && a.addr == addr)
        {
            continue;
        }
        let ctrl_name = match s.attached.iter().chain(new.iter()).find(|a| a.subnqn == subnqn) {
            Some(a) => a.ctrl_name.clone(),
            None => {
                let mut n;
                loop {
                    n = format!("{}{}", s.name, s.next_index);
                    s.next_index += 1;
                    if !crate::bdev::exists(&n) {
                        break;
                    }
                }
                n
            }
        };
        new.push(Attached { subnqn, addr, ctrl_name });
    }
    let left: Left = Rc::new(RefCell::new((new.len(), Vec::new(), Some(done))));
    if new.is_empty() {
        let d = left.borrow_mut().2.take().expect("set");
        return d(Ok(Vec::new()));
    }
    // One chain per controller name: its first address makes the
    // controller, each further one (attached after it) adds a path.
    let mut chains: Vec<Vec<Attached>> = Vec::new();
    for a in new {
        svc.borrow_mut().attached.push(a.clone());
        match chains.iter_mut().find(|c| c[0].ctrl_name == a.ctrl_name) {
            Some(c) => c.push(a),
            None => chains.push(vec![a]),
        }
    }
    for mut chain in chains {
        chain.reverse();
        attach_next(svc.clone(), chain, left.clone());
    }
}

/// Entries still to attach, the controllers attached, and the caller.
type Left = Rc<RefCell<(usize, Vec<String>, Option<NamesCb>)>>;

/// Attach the last entry of `chain`, then the rest, one after the other.
fn attach_next(svc: Rc<RefCell<Service>>, mut chain: Vec<Attached>, left: Left) {
    let Some(a) = chain.pop() else { return };
    let mut opts = svc.borrow().o.opts.clone();
    let fabric = opts.fabric;
    opts.addr = a.addr;
    opts.subnqn = a.subnqn.clone();
    let name = a.ctrl_name.clone();
    crate::bdev::attach(&name, opts, Value::Null, true, move |r| {
        match r {
            Ok(_) if svc.borrow().stopping => {
                // Stopped meanwhile: what it attached goes with it.
                let _ = crate::bdev::detach_path(&a.ctrl_name, crate::bdev::PathMatch::at(fabric, a.addr), || {});
            }
            Ok(_) => left.borrow_mut().1.push(a.ctrl_name.clone()),
            Err(e) => {
                tracing::warn!("nvmf discovery: attaching {} at {} as {}: {e}", a.subnqn, a.addr, a.ctrl_name);
                // Tried again on the next log change.
                svc.borrow_mut().attached.retain(|x| !(x.subnqn == a.subnqn && x.addr == a.addr));
            }
        }
        let finished = {
            let mut l = left.borrow_mut();
            l.0 -= 1;
            if l.0 == 0 { l.2.take().map(|d| (d, std::mem::take(&mut l.1))) } else { None }
        };
        attach_next(svc, chain, left);
        if let Some((d, mut names)) = finished {
            names.sort();
            names.dedup();
            d(Ok(names));
        }
    });
}

/// Stop discovery service `name`: detach what it attached, close its
/// discovery controllers. `None` if there is no such service.
pub fn stop(name: &str, done: impl FnOnce() + 'static) -> Option<()> {
    let svc = find(name)?;
    services().list.borrow_mut().retain(|s| !Rc::ptr_eq(s, &svc));
    let (ctrls, names) = {
        let mut s = svc.borrow_mut();
        s.stopping = true;
        s.retries.clear();
        let mut names: Vec<String> = s.attached.iter().map(|a| a.ctrl_name.clone()).collect();
        names.sort();
        names.dedup();
        (std::mem::take(&mut s.ctrls), names)
    };
    for (_, _, qp) in ctrls {
        qp.close();
    }
    let left = Rc::new(RefCell::new((names.len(), Some(Box::new(done) as Box<dyn FnOnce()>))));
    if names.is_empty() {
        let d = left.borrow_mut().1.take().expect("set");
        d();
        return Some(());
    }
    for n in names {
        let l = left.clone();
        let fin = move || {
            let d = {
                let mut l = l.borrow_mut();
                l.0 -= 1;
                if l.0 == 0 { l.1.take() } else { None }
            };
            if let Some(d) = d {
                d();
            }
        };
        if crate::bdev::detach(&n, fin.clone()).is_none() {
            fin();
        }
    }
    Some(())
}

/// `bdev_nvme_get_discovery_info`.
pub fn describe() -> Value {
    let list: Vec<Value> = services()
        .list
        .borrow()
        .iter()
        .map(|s| {
            let s = s.borrow();
            let fabric = s.o.opts.fabric.name();
            let trid = |a: &SocketAddr| {
                json!({"trtype": fabric, "adrfam": if a.is_ipv4() { "IPv4" } else { "IPv6" }, "traddr": a.ip().to_string(),
                    "trsvcid": a.port().to_string(), "subnqn": DISCOVERY_NQN})
            };
            json!({
                "name": s.name,
                "trid": trid(&s.o.opts.addr),
                "referrals": s.referrals.iter().map(|a| json!({"trid": trid(a)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(list)
}

/// `bdev_nvme_start_discovery` calls for save_config.
pub fn config_calls() -> Vec<Value> {
    services().list.borrow().iter().map(|s| s.borrow().o.params.clone()).collect()
}

/// Whether controller `name` was attached by a discovery service.
pub fn discovered(name: &str) -> bool {
    services().list.borrow().iter().any(|s| s.borrow().attached.iter().any(|a| a.ctrl_name == name))
}
