//! The error injection bdev (SPDK's `bdev_error_*`): `EE_<base>`, all of
//! a base bdev, failing, holding or corrupting the next `num` reads,
//! writes, unmaps or flushes on command (`bdev_error_inject_error`), to
//! test what sits above a failing disk (RAID, multipath, hosts).
//!
//! As SPDK's: a rule per request type (`all` sets the four, `clear`
//! disarms them); `queue_depth` makes a rule fire only while at least that
//! many requests of the channel are at the base; `failure` completes with
//! an I/O error, `nvme_failure` with the given NVMe status, `nomem` with
//! "no resources" (the caller retries), `pending` keeps the request until
//! a reset (aborted) or `bdev_error_resume_pending` (sent on); and
//! `corrupt_data` XORs the byte at `corrupt_offset` of the data with
//! `corrupt_value`: after the read, or in a copy that is written instead
//! of the caller's data. Resets are not sent to the base: they abort the
//! held requests, on every reactor.
//!
//! The rules are atomics read with one load per request while disarmed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use pollux_core::app::App;
use pollux_core::bdev::{self, BackendChannel, Bdev, BdevIo, Examination, IoStatus, IoType, Uuid};
use pollux_core::dma::{self, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor;
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::Delete;
use crate::part::{self, Base, PartInner, PartKind};

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    Failure = 1,
    NvmeFailure = 2,
    Pending = 3,
    CorruptData = 4,
    NoMem = 5,
}

impl Fault {
    fn from_u8(v: u8) -> Option<Fault> {
        Some(match v {
            1 => Fault::Failure,
            2 => Fault::NvmeFailure,
            3 => Fault::Pending,
            4 => Fault::CorruptData,
            5 => Fault::NoMem,
            _ => return None,
        })
    }
}

/// One request type's rule: armed while `num` > 0.
#[derive(Default)]
struct Rule {
    fault: AtomicU8,
    num: AtomicU32,
    queue_depth: AtomicU64,
    sct: AtomicU8,
    sc: AtomicU8,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
}

/// The request types rules exist for, in SPDK's order.
const TYPES: [IoType; 4] = [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush];

fn rule_index(kind: IoType) -> Option<usize> {
    TYPES.iter().position(|t| *t == kind)
}

/// The rules of one error bdev, shared by its channels.
#[derive(Default)]
pub(crate) struct Rules {
    rules: [Rule; 4],
}

impl Rules {
    /// The fault for the next request of `kind` with `inflight` of the
    /// channel's requests at the base, if a rule fires (and counts down).
    #[inline]
    fn pick(&self, kind: IoType, inflight: u64) -> Option<(Fault, &Rule)> {
        let r = &self.rules[rule_index(kind)?];
        if r.num.load(Ordering::Relaxed) == 0 || inflight < r.queue_depth.load(Ordering::Acquire) {
            return None;
        }
        r.num.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).ok()?;
        Some((Fault::from_u8(r.fault.load(Ordering::Acquire))?, r))
    }

    fn json(&self) -> Value {
        let mut v = serde_json::Map::new();
        for (t, r) in TYPES.iter().zip(&self.rules) {
            let fault = Fault::from_u8(r.fault.load(Ordering::Acquire));
            v.insert(
                t.name().to_string(),
                json!({
                    "error_type": fault.map(fault_name),
                    "num": r.num.load(Ordering::Acquire),
                    "queue_depth": r.queue_depth.load(Ordering::Acquire),
                }),
            );
        }
        Value::Object(v)
    }
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::Failure => "failure",
        Fault::NvmeFailure => "nvme_failure",
        Fault::Pending => "pending",
        Fault::CorruptData => "corrupt_data",
        Fault::NoMem => "nomem",
    }
}

struct ErrorDisk {
    rules: Arc<Rules>,
    uuid_given: bool,
}

impl PartKind for ErrorDisk {
    fn module_name(&self) -> &'static str {
        "error"
    }
    fn product_name(&self) -> &'static str {
        "Error Injection Disk"
    }
    fn driver_specific_key(&self) -> &'static str {
        "error_disk"
    }
    fn driver_specific(&self, part: &PartInner) -> Value {
        json!({"base_bdev": part.base.bdev().name(), "rules": self.rules.json()})
    }
    fn config_call(&self, b: &Bdev, base: &Bdev) -> Option<(&'static str, Value)> {
        let mut p = json!({"base_name": base.name()});
        if self.uuid_given {
            p["uuid"] = b.uuid().to_string().into();
        }
        Some(("bdev_error_create", p))
    }
    fn create_channel(&self, part: &Arc<PartInner>) -> Option<Box<dyn BackendChannel>> {
        let st = Rc::new(ErrChan {
            ch: part.base.desc.channel(),
            part: part.clone(),
            rules: self.rules.clone(),
            inflight: Rc::new(Cell::new(0)),
            held: RefCell::new(Vec::new()),
        });
        let key = Arc::as_ptr(&self.rules) as usize;
        CHANNELS.with(|m| {
            let mut m = m.borrow_mut();
            let v = m.entry(key).or_default();
            v.retain(|w| w.strong_count() > 0);
            v.push(Rc::downgrade(&st));
        });
        Some(Box::new(ErrChannel(st)))
    }
}

thread_local! {
    /// Each reactor's channels of each error bdev (by its rules' address),
    /// for resets and resumes that reach every reactor.
    static CHANNELS: RefCell<HashMap<usize, Vec<Weak<ErrChan>>>> = RefCell::new(HashMap::new());
    /// Resets waiting for every reactor's held requests to be aborted.
    static RESETS: RefCell<HashMap<u64, BdevIo>> = RefCell::new(HashMap::new());
    static NEXT_RESET: Cell<u64> = const { Cell::new(0) };
    /// Error bdevs asked for (by base name), made now or when the base comes.
    static CONFIGS: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

/// An error bdev asked for: `EE_<base>` on `base` (as named), made now or
/// when the base appears.
struct Config {
    base: String,
    name: String,
    uuid: Option<Uuid>,
    rules: Arc<Rules>,
}

struct ErrChan {
    ch: IoChannel<Bdev>,
    part: Arc<PartInner>,
    rules: Arc<Rules>,
    /// This channel's requests at the base.
    inflight: Rc<Cell<u64>>,
    /// Requests held by a `pending` rule.
    held: RefCell<Vec<BdevIo>>,
}

struct ErrChannel(Rc<ErrChan>);

impl BackendChannel for ErrChannel {
    fn submit(&self, io: BdevIo) {
        if io.kind() == IoType::Reset {
            return reset(&self.0, io);
        }
        submit(&self.0, io)
    }
}

fn submit(st: &Rc<ErrChan>, io: BdevIo) {
    let kind = io.kind();
    let off = io.offset_blocks() + st.part.offset;
    let Some((fault, rule)) = st.rules.pick(kind, st.inflight.get()) else {
        return st.part.base.desc.forward(&st.ch, io, off, Some(st.inflight.clone()));
    };
    match fault {
        Fault::Failure => io.complete(IoStatus::Failed),
        Fault::NvmeFailure => io.complete(IoStatus::Nvme { sct: rule.sct.load(Ordering::Acquire), sc: rule.sc.load(Ordering::Acquire) }),
        Fault::NoMem => io.complete(IoStatus::NoMemory),
        Fault::Pending => st.held.borrow_mut().push(io),
        Fault::CorruptData if matches!(kind, IoType::Read | IoType::Write) => {
            let (at, value) = (rule.corrupt_offset.load(Ordering::Acquire), rule.corrupt_value.load(Ordering::Acquire));
            corrupt(st, io, off, at, value)
        }
        Fault::CorruptData => st.part.base.desc.forward(&st.ch, io, off, Some(st.inflight.clone())),
    }
}

/// XOR byte `at` of the request's data with `value`: a read's data after
/// the base read it; a write's in a copy written instead.
fn corrupt(st: &Rc<ErrChan>, io: BdevIo, off: u64, at: u64, value: u8) {
    let kind = io.kind();
    let n = io.num_blocks();
    let desc = &st.part.base.desc;
    let inflight = st.inflight.clone();
    inflight.set(inflight.get() + 1);
    if kind == IoType::Read {
        return desc.submit_child(&st.ch, kind, io, off, n, move |child, mut io| {
            inflight.set(inflight.get() - 1);
            if child.status().is_ok() {
                xor_at(io.buffers_mut(), at, value);
            }
            io.complete(child.status())
        });
    }
    let len = io.len_bytes() as usize;
    let copy = dma::pool().ok().and_then(|p| p.get(len)).map(Ok).unwrap_or_else(|| DmaBuf::alloc(len));
    let Ok(mut copy) = copy else {
        inflight.set(inflight.get() - 1);
        return io.complete(IoStatus::NoMemory);
    };
    copy.set_len(len);
    io.copy_out(0, &mut copy);
    xor_at(std::slice::from_mut(&mut copy), at, value);
    desc.submit(&st.ch, kind, [copy], off, n, move |child| {
        inflight.set(inflight.get() - 1);
        io.complete(child.status())
    });
}

fn xor_at(bufs: &mut [DmaBuf], mut at: u64, value: u8) {
    for b in bufs {
        if (b.len() as u64) > at {
            b[at as usize] ^= value;
            return;
        }
        at -= b.len() as u64;
    }
}

/// A reset: the requests held on every reactor are aborted, then the
/// reset completes (on this reactor).
fn reset(st: &Rc<ErrChan>, io: BdevIo) {
    let id = NEXT_RESET.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    RESETS.with(|r| r.borrow_mut().insert(id, io));
    let key = Arc::as_ptr(&st.rules) as usize;
    reactor::for_each_reactor(
        move || {
            for c in channels(key) {
                let held = std::mem::take(&mut *c.held.borrow_mut());
                for io in held {
                    io.complete(IoStatus::Aborted);
                }
            }
        },
        move || {
            if let Some(io) = RESETS.with(|r| r.borrow_mut().remove(&id)) {
                io.complete(IoStatus::Success);
            }
        },
    );
}

fn channels(key: usize) -> Vec<Rc<ErrChan>> {
    CHANNELS.with(|m| m.borrow().get(&key).map(|v| v.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    base_name: String,
    uuid: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inject {
    name: String,
    io_type: String,
    error_type: String,
    nvme_sct: Option<u32>,
    nvme_sc: Option<u32>,
    #[serde(default = "one")]
    num: u32,
    #[serde(default)]
    queue_depth: u64,
    #[serde(default)]
    corrupt_offset: u64,
    #[serde(default)]
    corrupt_value: u8,
}

fn one() -> u32 {
    1
}

fn make(c: &Config) -> Result<Option<Arc<Bdev>>, RpcError> {
    if bdev::get(&c.base).is_none() {
        return Ok(None);
    }
    if bdev::get(&c.name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {} exists", c.name)));
    }
    let n = c.name.clone();
    let base = Base::open(&c.base, "error", move || bdev::unregister(&n, |_| {}))?;
    let blocks = base.bdev().num_blocks();
    part::register(&c.name, &base, 0, blocks, c.uuid, ErrorDisk { rules: c.rules.clone(), uuid_given: c.uuid.is_some() }).map(Some)
}

fn create(p: Create) -> Result<String, RpcError> {
    let name = format!("EE_{}", p.base_name);
    if CONFIGS.with(|c| c.borrow().iter().any(|c| c.name == name)) || bdev::get(&name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {name} exists")));
    }
    let c = Config { base: p.base_name, name: name.clone(), uuid: p.uuid, rules: Arc::new(Rules::default()) };
    if make(&c)?.is_none() {
        tracing::info!("error bdev {name}: waiting for bdev {}", c.base);
    }
    bdev::register_examiner("error", examine).map_err(RpcError::from)?;
    CONFIGS.with(|cs| cs.borrow_mut().push(c));
    Ok(name)
}

fn examine(b: &Arc<Bdev>, _done: Examination) {
    CONFIGS.with(|cs| {
        for c in cs.borrow().iter().filter(|c| b.answers_to(&c.base) && bdev::get(&c.name).is_none()) {
            if let Err(e) = make(c) {
                tracing::error!("error bdev {}: {}", c.name, e.message);
            }
        }
    });
}

/// The rules of error bdev `name`.
fn rules_of(name: &str) -> Result<Arc<Rules>, RpcError> {
    let b = bdev::get(name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {name} not found")))?;
    CONFIGS
        .with(|c| c.borrow().iter().find(|c| c.name == b.name()).map(|c| c.rules.clone()))
        .filter(|_| b.backend().module_name() == "error")
        .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {name} is not an error injection bdev")))
}

fn inject(p: Inject) -> Result<bool, RpcError> {
    let rules = rules_of(&p.name)?;
    let fault = match p.error_type.as_str() {
        "failure" => Fault::Failure,
        "nvme_failure" => Fault::NvmeFailure,
        "pending" => Fault::Pending,
        "corrupt_data" => Fault::CorruptData,
        "nomem" => Fault::NoMem,
        other => {
            return Err(RpcError::invalid_params(format!("error_type {other}: failure, nvme_failure, pending, corrupt_data or nomem")));
        }
    };
    let nvme_status = p.nvme_sct.unwrap_or(0) != 0 || p.nvme_sc.unwrap_or(0) != 0;
    if (fault == Fault::NvmeFailure) != nvme_status {
        return Err(RpcError::invalid_params("nvme_sct or nvme_sc should be specified for NVMe error injection"));
    }
    if fault == Fault::CorruptData && p.corrupt_value == 0 {
        return Err(RpcError::invalid_params("corrupt_value should be non-zero"));
    }
    let byte = |v: Option<u32>, what: &str| -> Result<u8, RpcError> {
        u8::try_from(v.unwrap_or(0)).map_err(|_| RpcError::invalid_params(format!("{what} is a byte")))
    };
    let (sct, sc) = (byte(p.nvme_sct, "nvme_sct")?, byte(p.nvme_sc, "nvme_sc")?);
    let which: Vec<usize> = match p.io_type.as_str() {
        "all" => (0..TYPES.len()).collect(),
        "clear" => {
            rules.rules.iter().for_each(|r| r.num.store(0, Ordering::Release));
            return Ok(true);
        }
        "read" => vec![0],
        "write" => vec![1],
        "unmap" => vec![2],
        "flush" => vec![3],
        other => return Err(RpcError::invalid_params(format!("io_type {other}: clear, read, write, unmap, flush or all"))),
    };
    for i in which {
        let r = &rules.rules[i];
        // Disarmed while it changes, armed last.
        r.num.store(0, Ordering::Release);
        r.fault.store(fault as u8, Ordering::Release);
        r.queue_depth.store(p.queue_depth, Ordering::Release);
        r.sct.store(sct, Ordering::Release);
        r.sc.store(sc, Ordering::Release);
        r.corrupt_offset.store(p.corrupt_offset, Ordering::Release);
        r.corrupt_value.store(p.corrupt_value, Ordering::Release);
        r.num.store(p.num, Ordering::Release);
    }
    Ok(true)
}

/// `bdev_error_resume_pending`: disarm the `pending` rules and send the
/// held requests on.
fn resume(p: Delete) -> Result<bool, RpcError> {
    let rules = rules_of(&p.name)?;
    for r in &rules.rules {
        if Fault::from_u8(r.fault.load(Ordering::Acquire)) == Some(Fault::Pending) {
            r.num.store(0, Ordering::Release);
        }
    }
    let key = Arc::as_ptr(&rules) as usize;
    reactor::for_each_reactor(
        move || {
            for c in channels(key) {
                let held = std::mem::take(&mut *c.held.borrow_mut());
                for io in held {
                    submit(&c, io);
                }
            }
        },
        || {},
    );
    Ok(true)
}

fn delete(p: Delete, r: Responder) {
    let b = bdev::get(&p.name);
    if b.as_ref().is_some_and(|b| b.backend().module_name() != "error") {
        return r.err(RpcError::errno(libc::ENODEV, format!("bdev {} is not an error injection bdev", p.name)));
    }
    let name = b.as_ref().map(|b| b.name().to_string()).unwrap_or(p.name);
    let known = CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        let before = c.len();
        c.retain(|c| c.name != name);
        before != c.len()
    });
    match b {
        Some(_) => bdev::unregister(&name, move |res| r.result(res.map(|()| true))),
        None if known => r.result(Ok::<_, RpcError>(true)),
        None => r.err(RpcError::errno(libc::ENODEV, format!("bdev {name} not found"))),
    }
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_error_create", States::RUNTIME, |p: Create, r: Responder| r.result(create(p)));
    m.register("bdev_error_delete", States::RUNTIME, delete);
    m.register("bdev_error_inject_error", States::RUNTIME, |p: Inject, r: Responder| r.result(inject(p)));
    m.register("bdev_error_resume_pending", States::RUNTIME, |p: Delete, r: Responder| r.result(resume(p)));
}
