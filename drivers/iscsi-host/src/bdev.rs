//! Remote LUNs as bdevs: SPDK's `bdev_iscsi` (`bdev_iscsi_create`,
//! `bdev_iscsi_delete`, `bdev_iscsi_set_options`, in `save_config`).
//!
//! Creating one logs in once from the main reactor to learn the LUN
//! (INQUIRY with its VPD pages, READ CAPACITY), then logs out and
//! registers the bdev with the target's block size and capacity, and
//! unmap and write zeroes where the target offers them (logical block
//! provisioning, WRITE SAME). Each reactor that uses the bdev then has its
//! own session to the target (its own ISID, so several reactors are
//! several sessions of one initiator), made when the reactor's channel is
//! and logged out when it goes; requests never leave their reactor.
//! `timeout_sec` is each command's timeout (then abort, LUN reset,
//! reconnection: see [`crate::session`]) and how long requests wait for a
//! lost connection; 0 waits for ever.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pollux_core::app::{App, ConfigWriter};
use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevIo, BdevSpec, IoType};
use pollux_core::reactor;
use pollux_core::rpc::{Responder, RpcError, States};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::IscsiError;
use crate::login::LoginParams;
use crate::scsi::{self, BlockLimits, Capacity, Provisioning};
use crate::session::{Session, SessionConfig};
use crate::url::{IscsiUrl, redact};

/// `bdev_iscsi_set_options`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default = "default_timeout")]
    pub timeout_sec: u64,
}

fn default_timeout() -> u64 {
    30
}

/// Set by `bdev_iscsi_set_options` (None: never called; the default holds).
static OPTIONS: Mutex<Option<Options>> = Mutex::new(None);

fn options() -> Options {
    OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(Options { timeout_sec: default_timeout() })
}

/// What the target told us about the LUN.
#[derive(Clone, Debug, Default)]
pub struct LunInfo {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: Option<String>,
    pub designators: Vec<String>,
    pub capacity: Option<Capacity>,
    pub limits: BlockLimits,
    pub provisioning: Provisioning,
    /// VPD pages the target has.
    pub pages: Vec<u8>,
    pub target_alias: Option<String>,
}

impl LunInfo {
    pub fn block_size(&self) -> u32 {
        self.capacity.map_or(512, |c| c.block_size)
    }
    pub fn num_blocks(&self) -> u64 {
        self.capacity.map_or(0, |c| c.num_blocks)
    }
    /// UNMAP, if the LUN is thin provisioned and says it takes it.
    pub fn unmap(&self) -> bool {
        self.capacity.is_some_and(|c| c.lbpme)
            && (self.provisioning.lbpu || !self.pages.contains(&0xb2))
            && self.limits.max_unmap_blocks > 0
    }
    /// WRITE SAME(16) for write zeroes.
    pub fn write_same(&self) -> bool {
        self.limits.max_write_same_blocks > 0 || self.provisioning.lbpws
    }
    /// Largest transfer of one command in bytes.
    pub fn max_command(&self) -> u32 {
        let bs = u64::from(self.block_size());
        let limit = match self.limits.max_transfer_blocks {
            0 => 1 << 20,
            n => (u64::from(n) * bs).min(1 << 24),
        };
        limit.max(bs) as u32
    }
}

type ProbeDone = Box<dyn FnOnce(Result<LunInfo, IscsiError>)>;

/// The LUN being learnt, one command at a time.
struct Probe {
    s: Rc<Session>,
    lun: u16,
    stage: Cell<u8>,
    info: RefCell<LunInfo>,
    done: RefCell<Option<ProbeDone>>,
}

/// Learn the LUN behind a logged-in session: INQUIRY (standard, then the
/// VPD pages it lists among 0x80, 0x83, 0xB0, 0xB2), READ CAPACITY(16),
/// or (10) where (16) fails.
pub fn probe(s: &Rc<Session>, lun: u16, done: impl FnOnce(Result<LunInfo, IscsiError>) + 'static) {
    let p = Rc::new(Probe { s: s.clone(), lun, stage: Cell::new(0), info: RefCell::default(), done: RefCell::new(Some(Box::new(done))) });
    Probe::next(p);
}

impl Probe {
    fn finish(&self, r: Result<LunInfo, IscsiError>) {
        if let Some(d) = self.done.borrow_mut().take() {
            d(r);
        }
    }

    fn next(p: Rc<Probe>) {
        loop {
            let stage = p.stage.get();
            p.stage.set(stage + 1);
            let has = |page: u8| p.info.borrow().pages.contains(&page);
            let (cdb, len, required) = match stage {
                0 => (scsi::inquiry(None, 96), 96, true),
                1 => (scsi::inquiry(Some(0), 255), 255, false),
                2 if has(0x80) => (scsi::inquiry(Some(0x80), 255), 255, false),
                3 if has(0x83) => (scsi::inquiry(Some(0x83), 1024), 1024, false),
                4 if has(0xb0) => (scsi::inquiry(Some(0xb0), 64), 64, false),
                5 if has(0xb2) => (scsi::inquiry(Some(0xb2), 64), 64, false),
                6 => (scsi::read_capacity16(32), 32, false),
                7 if p.info.borrow().capacity.is_none() => (scsi::read_capacity10(), 8, true),
                2..=7 => continue,
                _ => {
                    let info = p.info.borrow().clone();
                    return p.finish(Ok(info));
                }
            };
            let p2 = p.clone();
            let lun = p.lun;
            p.s.command_lun(
                lun,
                cdb,
                Vec::new(),
                len,
                Box::new(move |r| {
                    // A command the LUN refuses (READ CAPACITY(16) with
                    // ILLEGAL REQUEST, say) is skipped unless required; a
                    // capacity it answers but that cannot be taken (a
                    // geometry no export could describe) ends the probe,
                    // rather than falling back to what (10) says.
                    let (r, answered) = match r.and_then(|r| r.ok()) {
                        Ok(r) => (p2.take(stage, &r.data), true),
                        Err(e) => (Err(e), false),
                    };
                    match r {
                        Err(e) if required || answered && stage == 6 => p2.finish(Err(e)),
                        _ => Probe::next(p2),
                    }
                }),
            );
            return;
        }
    }

    /// Read the answer of `stage` into the info.
    fn take(&self, stage: u8, d: &[u8]) -> Result<(), IscsiError> {
        let e = |e: scsi::ParseError| IscsiError::Scsi(e.to_string());
        let mut i = self.info.borrow_mut();
        match stage {
            0 => {
                let q = scsi::parse_inquiry(d).map_err(e)?;
                if q.qualifier != 0 {
                    return Err(IscsiError::Scsi(format!("no logical unit at LUN {} (peripheral qualifier {})", self.lun, q.qualifier)));
                }
                if q.device_type != 0 {
                    return Err(IscsiError::Scsi(format!(
                        "LUN {} is a device of type {:#04x}, not a block device",
                        self.lun, q.device_type
                    )));
                }
                (i.vendor, i.product, i.revision) = (q.vendor, q.product, q.revision);
            }
            1 => i.pages = scsi::parse_supported_vpd(d).map_err(e)?,
            2 => i.serial = Some(scsi::parse_unit_serial(d).map_err(e)?),
            3 => i.designators = scsi::parse_device_id(d).map_err(e)?.iter().map(|d| d.display()).collect(),
            4 => i.limits = scsi::parse_block_limits(d).map_err(e)?,
            5 => i.provisioning = scsi::parse_provisioning(d).map_err(e)?,
            6 => i.capacity = Some(scsi::parse_read_capacity16(d).map_err(e)?),
            _ => i.capacity = Some(scsi::parse_read_capacity10(d).map_err(e)?),
        }
        Ok(())
    }
}

/// A bdev's iSCSI LUN.
struct IscsiLun {
    url: String,
    initiator_iqn: String,
    cfg: SessionConfig,
    info: LunInfo,
    next_qualifier: AtomicU16,
}

impl Backend for IscsiLun {
    fn module_name(&self) -> &'static str {
        "iscsi"
    }
    fn product_name(&self) -> &'static str {
        "iSCSI LUN"
    }
    fn supports(&self, kind: IoType) -> bool {
        match kind {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => true,
            IoType::Unmap => self.info.unmap(),
            IoType::WriteZeroes => self.info.write_same(),
            IoType::Compare => false,
        }
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        let mut cfg = self.cfg.clone();
        // Each session of this initiator has its own ISID qualifier.
        let q = self.next_qualifier.fetch_add(1, Ordering::Relaxed);
        cfg.login.isid[4..6].copy_from_slice(&q.to_be_bytes());
        cfg.persistent = true;
        let max = self.info.max_command();
        let session = Session::start(cfg, |_| {}).inspect(|s| s.set_max_command(max));
        if let Err(e) = &session {
            tracing::error!("iscsi initiator: {}: {e}", redact(&self.url));
        }
        Box::new(IscsiChannel { session: session.ok() })
    }
    fn driver_specific(&self) -> Value {
        json!({
            "initiator_name": self.initiator_iqn,
            "url": redact(&self.url),
            "vendor": self.info.vendor,
            "product": self.info.product,
            "revision": self.info.revision,
            "serial": self.info.serial,
            "designators": self.info.designators,
            "thin_provisioning": self.info.unmap(),
        })
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        Some(("bdev_iscsi_create", json!({"name": b.name(), "initiator_iqn": self.initiator_iqn, "url": self.url})))
    }
}

struct IscsiChannel {
    session: Option<Rc<Session>>,
}

impl BackendChannel for IscsiChannel {
    fn submit(&self, io: BdevIo) {
        match &self.session {
            Some(s) => s.submit(io),
            None => io.complete(pollux_core::bdev::IoStatus::NoDevice),
        }
    }
}

impl Drop for IscsiChannel {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.close(|| {});
        }
    }
}

/// A random ISID of the "random" format (type 10b), qualifier left 0.
fn new_isid() -> [u8; 6] {
    let r = pollux_iscsi_spec::chap::random(3).unwrap_or_else(|_| vec![0x5a, 0x5a, 0x5a]);
    [0x80, r[0], r[1], r[2], 0, 0]
}

/// The session settings for a URL.
pub fn session_config(url: &IscsiUrl, initiator_iqn: &str, timeout: Duration) -> Result<SessionConfig, IscsiError> {
    let addr: SocketAddr = url
        .portal
        .to_socket_addrs()
        .map_err(|e| IscsiError::Connect(url.portal.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| IscsiError::Connect(url.portal.clone(), "no address".into()))?;
    let mut login = LoginParams::new(initiator_iqn, url.target.as_deref(), new_isid());
    login.auth = url.auth.clone();
    login.header_digest = url.header_digest;
    login.data_digest = url.data_digest;
    let mut cfg = SessionConfig::new(addr, login, url.lun.unwrap_or(0));
    cfg.cmd_timeout = (!timeout.is_zero()).then_some(timeout);
    if !timeout.is_zero() {
        cfg.connect_timeout = timeout.min(Duration::from_secs(30));
    }
    Ok(cfg)
}

/// `bdev_iscsi_create` parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    initiator_iqn: String,
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    name: String,
}

fn rpc_err(e: IscsiError) -> RpcError {
    RpcError::errno(e.errno(), e)
}

type CreateDone = Box<dyn FnOnce(Result<String, IscsiError>)>;

/// Create the bdev (main reactor): log in, learn the LUN, register.
pub fn create(name: String, initiator_iqn: String, url: String, done: impl FnOnce(Result<String, IscsiError>) + 'static) {
    if bdev::get(&name).is_some() {
        return done(Err(IscsiError::Exists(format!("bdev {name} already exists"))));
    }
    let parsed = match IscsiUrl::parse(&url) {
        Ok(u) => u,
        Err(e) => return done(Err(e)),
    };
    if initiator_iqn.is_empty() || initiator_iqn.len() > 223 {
        return done(Err(IscsiError::Invalid("initiator_iqn must have 1 to 223 bytes".into())));
    }
    let timeout = Duration::from_secs(options().timeout_sec);
    let mut cfg = match session_config(&parsed, &initiator_iqn, timeout) {
        Ok(c) => c,
        Err(e) => return done(Err(e)),
    };
    let template = cfg.clone();
    cfg.reconnect = false;
    cfg.login.isid[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
    let lun = cfg.lun;
    let slot: Rc<RefCell<Option<Rc<Session>>>> = Rc::default();
    let slot2 = slot.clone();
    let done: Rc<RefCell<Option<CreateDone>>> = Rc::new(RefCell::new(Some(Box::new(done))));
    let finish = move |r: Result<String, IscsiError>| {
        if let Some(d) = done.borrow_mut().take() {
            d(r)
        }
    };
    let finish = Rc::new(finish);
    let f2 = finish.clone();
    let started = Session::start(cfg, move |r| {
        let s = slot2.borrow_mut().take();
        match (r, s) {
            (Err(e), _) => f2(Err(e)),
            (Ok(neg), Some(s)) => {
                let s2 = s.clone();
                probe(&s, lun, move |r| {
                    let s3 = s2.clone();
                    s2.close(move || drop(s3));
                    let r = r.and_then(|mut info| {
                        info.target_alias = neg.target_alias.clone();
                        register(&name, url, initiator_iqn, template, info)
                    });
                    f2(r)
                });
            }
            (Ok(_), None) => f2(Err(IscsiError::Closed)),
        }
    });
    match started {
        Ok(s) => *slot.borrow_mut() = Some(s),
        Err(e) => finish(Err(e)),
    }
}

fn register(name: &str, url: String, initiator_iqn: String, cfg: SessionConfig, info: LunInfo) -> Result<String, IscsiError> {
    let (bs, n) = (info.block_size(), info.num_blocks());
    if n == 0 || bs == 0 || bs % 512 != 0 {
        return Err(IscsiError::Scsi(format!("the LUN reports {n} blocks of {bs} bytes")));
    }
    tracing::info!(
        "iscsi initiator: bdev {name}: {} {} {} blocks of {bs} bytes at {}{}",
        info.vendor,
        info.product,
        n,
        redact(&url),
        if info.unmap() { ", thin provisioned" } else { "" }
    );
    let backend = Arc::new(IscsiLun { url, initiator_iqn, cfg, info, next_qualifier: AtomicU16::new(0) });
    bdev::register(BdevSpec { name: name.to_string(), block_size: bs, num_blocks: n, uuid: None, backend })
        .map(|b| b.name().to_string())
        .map_err(|e| IscsiError::Exists(e.to_string()))
}

fn write_config(out: &mut ConfigWriter) {
    if let Some(o) = *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) {
        out.call("bdev_iscsi_set_options", o);
    }
}

/// Register the `bdev_iscsi_*` methods.
pub fn register_rpcs(app: &mut App) {
    pollux_core::bdev::rpc::register_module_config("iscsi", write_config);
    let m = app.methods();
    m.register("bdev_iscsi_set_options", States::ANY, |p: Options, r: Responder| {
        *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        r.ok(true)
    });
    m.register("bdev_iscsi_create", States::RUNTIME, |p: Create, r: Responder| {
        debug_assert!(reactor::try_current().is_some());
        create(p.name, p.initiator_iqn, p.url, move |res| r.result(res.map_err(rpc_err)));
    });
    m.register("bdev_iscsi_delete", States::RUNTIME, |p: Delete, r: Responder| match bdev::get(&p.name) {
        None => r.err(RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.name))),
        Some(b) if b.backend().module_name() != "iscsi" => {
            r.err(RpcError::errno(libc::ENODEV, format!("bdev {} is not an iSCSI bdev", p.name)))
        }
        Some(_) => bdev::unregister(&p.name, move |res| r.result(res.map(|()| true))),
    });
}
