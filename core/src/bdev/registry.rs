//! The bdev registry (on the main reactor): registration, open descriptors,
//! hot removal and deletion that waits for users to close.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::reactor::{self, Handle, ReactorId};

use super::{Bdev, BdevError, BdevSpec, IoStats, Uuid};

/// What happens to an open bdev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev is being deleted or its device is gone: close the descriptor;
    /// the deletion completes when every descriptor is closed.
    Remove,
    /// The bdev's size changed ([`Bdev::num_blocks`] has the new one).
    Resize,
}

type EventFn = Arc<dyn Fn(BdevEvent) + Send + Sync>;

struct Open {
    bdev: Arc<Bdev>,
    reactor: ReactorId,
    on_event: EventFn,
}

type DeleteDone = Box<dyn FnOnce(Result<(), BdevError>)>;

#[derive(Default)]
struct Registry {
    /// In registration order (save_config replays in this order).
    bdevs: RefCell<Vec<Arc<Bdev>>>,
    opens: RefCell<HashMap<u64, Open>>,
    next_open: Cell<u64>,
    deleting: RefCell<HashMap<String, Vec<DeleteDone>>>,
    /// Modules that look at every new bdev (an lvol store on it?).
    examiners: RefCell<Vec<(&'static str, Rc<ExamineFn>)>>,
    /// Examinations not finished, and who waits for none to be left.
    examining: Cell<usize>,
    examine_waiters: RefCell<Vec<Box<dyn FnOnce()>>>,
}

type ExamineFn = dyn Fn(&Arc<Bdev>, Examination);

impl Registry {
    /// A bdev by name or alias.
    fn find(&self, name: &str) -> Option<Arc<Bdev>> {
        self.bdevs.borrow().iter().find(|b| b.answers_to(name)).cloned()
    }
}

fn registry() -> Result<Rc<Registry>, BdevError> {
    if reactor::current() != ReactorId(0) {
        return Err(BdevError::WrongReactor);
    }
    Ok(match reactor::local::<Registry>() {
        Some(r) => r,
        None => {
            let r = Rc::new(Registry { next_open: Cell::new(1), ..Default::default() });
            reactor::set_local(r.clone());
            r
        }
    })
}

/// Register a bdev (main reactor).
pub fn register(spec: BdevSpec) -> Result<Arc<Bdev>, BdevError> {
    let reg = registry()?;
    if spec.name.is_empty() {
        return Err(BdevError::Invalid("the name is empty".into()));
    }
    if spec.block_size == 0 || spec.block_size % 512 != 0 {
        return Err(BdevError::Invalid(format!("block size {} is not a multiple of 512", spec.block_size)));
    }
    if spec.num_blocks == 0 {
        return Err(BdevError::Invalid("the bdev has no blocks".into()));
    }
    // Sizes in bytes are u64 everywhere (a remote namespace or LUN reports
    // its geometry; nothing else bounds it).
    if spec.num_blocks.checked_mul(u64::from(spec.block_size)).is_none() {
        return Err(BdevError::Invalid(format!("{} blocks of {} bytes do not fit in 64 bits", spec.num_blocks, spec.block_size)));
    }
    if reg.find(&spec.name).is_some() {
        return Err(BdevError::Exists(spec.name));
    }
    let supported = super::IoType::ALL.iter().filter(|t| spec.backend.supports(**t)).fold(0, |m, t| m | t.bit());
    let bdev = Arc::new(Bdev {
        name: spec.name,
        block_size: spec.block_size,
        num_blocks: std::sync::atomic::AtomicU64::new(spec.num_blocks),
        uuid: spec.uuid.unwrap_or_else(Uuid::new_v4),
        supported,
        align: spec.backend.buffer_alignment().max(1),
        contiguous: spec.backend.needs_contiguous(),
        backend: spec.backend,
        removing: AtomicBool::new(false),
        histogram: AtomicBool::new(false),
        retired: std::sync::Mutex::new(IoStats::default()),
        aliases: std::sync::Mutex::new(Vec::new()),
        claimed: std::sync::Mutex::new(None),
        qos: Default::default(),
        examining: Default::default(),
        announced: AtomicBool::new(false),
    });
    reg.bdevs.borrow_mut().push(bdev.clone());
    examine(&reg, &bdev);
    if bdev.examining.load(Ordering::SeqCst) == 0 {
        announce(&bdev);
    }
    tracing::info!(
        "bdev {} registered ({} blocks of {} bytes, {})",
        bdev.name(),
        bdev.num_blocks(),
        bdev.block_size(),
        bdev.backend.module_name()
    );
    Ok(bdev)
}

/// A registered bdev by name (main reactor).
pub fn get(name: &str) -> Option<Arc<Bdev>> {
    registry().ok()?.find(name)
}

/// Give bdev `name` another name it answers to (SPDK's
/// `spdk_bdev_alias_add`): `lvs0/vol1` beside the lvol's UUID (main reactor).
pub fn add_alias(name: &str, alias: &str) -> Result<(), BdevError> {
    let reg = registry()?;
    if alias.is_empty() {
        return Err(BdevError::Invalid("the alias is empty".into()));
    }
    if reg.find(alias).is_some() {
        return Err(BdevError::Exists(alias.to_string()));
    }
    let bdev = reg.find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    bdev.aliases.lock().unwrap_or_else(|e| e.into_inner()).push(alias.to_string());
    Ok(())
}

/// Take an alias away (main reactor).
pub fn remove_alias(name: &str, alias: &str) -> Result<(), BdevError> {
    let reg = registry()?;
    let bdev = reg.find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let mut a = bdev.aliases.lock().unwrap_or_else(|e| e.into_inner());
    let before = a.len();
    a.retain(|x| x != alias);
    if a.len() == before {
        return Err(BdevError::NotFound(alias.to_string()));
    }
    Ok(())
}

/// A module's look at every bdev registered from now on and at those
/// already there (SPDK's `examine_config`/`examine_disk`), on the main
/// reactor, each in its own later iteration. The [`Examination`] it is
/// handed is dropped when the module is done (it may keep it across
/// asynchronous reads); `bdev_wait_for_examine` answers once none is left.
pub fn register_examiner(module: &'static str, f: impl Fn(&Arc<Bdev>, Examination) + 'static) -> Result<(), BdevError> {
    let reg = registry()?;
    if reg.examiners.borrow().iter().any(|(m, _)| *m == module) {
        return Ok(());
    }
    reg.examiners.borrow_mut().push((module, Rc::new(f)));
    if super::rpc::auto_examine() {
        for b in reg.bdevs.borrow().iter() {
            start_examination(&reg, b, module);
        }
    }
    Ok(())
}

fn examine(reg: &Rc<Registry>, bdev: &Arc<Bdev>) {
    if super::rpc::auto_examine() {
        examine_now(reg, bdev);
    }
}

/// Have every module look at bdev `name` (SPDK's `bdev_examine`, for
/// when `bdev_auto_examine` is off).
pub fn examine_bdev(name: &str) -> Result<(), BdevError> {
    let reg = registry()?;
    let bdev = reg.find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    examine_now(&reg, &bdev);
    Ok(())
}

fn examine_now(reg: &Rc<Registry>, bdev: &Arc<Bdev>) {
    let modules: Vec<&'static str> = reg.examiners.borrow().iter().map(|(m, _)| *m).collect();
    for m in modules {
        start_examination(reg, bdev, m);
    }
}

fn start_examination(reg: &Rc<Registry>, bdev: &Arc<Bdev>, module: &'static str) {
    reg.examining.set(reg.examining.get() + 1);
    bdev.examining.fetch_add(1, Ordering::SeqCst);
    let token = Examination { bdev: bdev.clone() };
    let b = bdev.clone();
    reactor::send_msg(ReactorId(0), move || {
        let Ok(reg) = registry() else { return };
        let f = reg.examiners.borrow().iter().find(|(m, _)| *m == module).map(|(_, f)| f.clone());
        if let Some(f) = f {
            if !b.is_removing() {
                f(&b, token)
            }
        }
    });
}

/// One module's examination of one bdev; dropping it says the module is
/// done with that bdev.
pub struct Examination {
    bdev: Arc<Bdev>,
}

/// SPDK's `bdev_register` notification, once the modules have examined
/// the bdev (as SPDK sends it, so that a client that sees it finds the
/// bdev's claims settled).
fn announce(bdev: &Arc<Bdev>) {
    if !bdev.is_removing() && !bdev.announced.swap(true, Ordering::SeqCst) {
        crate::notify::send(crate::notify::BDEV_REGISTER, bdev.name());
    }
}

impl Drop for Examination {
    fn drop(&mut self) {
        let bdev = self.bdev.clone();
        // The counts are the main reactor's: a module done elsewhere says
        // so there.
        if reactor::try_current() == Some(ReactorId(0)) {
            examination_done(&bdev);
        } else if reactor::try_current().is_some() {
            reactor::send_msg(ReactorId(0), move || examination_done(&bdev));
        }
    }
}

fn examination_done(bdev: &Arc<Bdev>) {
    if bdev.examining.fetch_sub(1, Ordering::SeqCst) == 1 {
        announce(bdev);
    }
    let Ok(reg) = registry() else { return };
    let left = reg.examining.get().saturating_sub(1);
    reg.examining.set(left);
    if left == 0 {
        let waiters = std::mem::take(&mut *reg.examine_waiters.borrow_mut());
        for w in waiters {
            w();
        }
    }
}

/// Run `f` once no examination is left (main reactor): at once if none is.
pub fn wait_for_examine(f: impl FnOnce() + 'static) {
    match registry() {
        Ok(reg) if reg.examining.get() > 0 => reg.examine_waiters.borrow_mut().push(Box::new(f)),
        _ => f(),
    }
}

/// All registered bdevs, in registration order (main reactor).
pub fn list() -> Vec<Arc<Bdev>> {
    registry().map(|r| r.bdevs.borrow().clone()).unwrap_or_default()
}

/// Delete a bdev: users are told to close it ([`BdevEvent::Remove`]) and
/// `done` runs once the last descriptor is closed and the backend destroyed.
/// New I/O fails with `NoDevice` meanwhile.
pub fn unregister(name: &str, done: impl FnOnce(Result<(), BdevError>) + 'static) {
    let reg = match registry() {
        Ok(r) => r,
        Err(e) => return done(Err(e)),
    };
    let Some(bdev) = reg.find(name) else {
        return done(Err(BdevError::NotFound(name.to_string())));
    };
    let name = bdev.name().to_string();
    let name = name.as_str();
    let mut deleting = reg.deleting.borrow_mut();
    if let Some(waiters) = deleting.get_mut(name) {
        // Already being deleted: finish together.
        waiters.push(Box::new(done));
        return;
    }
    deleting.insert(name.to_string(), vec![Box::new(done)]);
    drop(deleting);
    bdev.removing.store(true, Ordering::SeqCst);
    let users: Vec<(ReactorId, EventFn)> =
        reg.opens.borrow().values().filter(|o| Arc::ptr_eq(&o.bdev, &bdev)).map(|o| (o.reactor, o.on_event.clone())).collect();
    tracing::info!("deleting bdev {name}: {} open descriptor(s) to close", users.len());
    for (r, f) in users {
        reactor::send_msg(r, move || f(BdevEvent::Remove));
    }
    finish_if_closed(&reg, &bdev);
}

/// The device behind bdev `name` now has `num_blocks` blocks (SPDK's
/// `spdk_bdev_notify_blockcnt_change`): users are told
/// ([`BdevEvent::Resize`]). As in SPDK, a bdev that is open may grow but
/// not shrink (its users may hold blocks past the new end).
pub fn notify_blockcnt_change(name: &str, num_blocks: u64) -> Result<(), BdevError> {
    let reg = registry()?;
    let bdev = reg.find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let name = bdev.name();
    let old = bdev.num_blocks();
    if num_blocks == old {
        return Ok(());
    }
    if num_blocks.checked_mul(u64::from(bdev.block_size())).is_none() {
        return Err(BdevError::Invalid(format!("{num_blocks} blocks of {} bytes do not fit in 64 bits", bdev.block_size())));
    }
    let users: Vec<(ReactorId, EventFn)> =
        reg.opens.borrow().values().filter(|o| Arc::ptr_eq(&o.bdev, &bdev)).map(|o| (o.reactor, o.on_event.clone())).collect();
    if num_blocks < old && !users.is_empty() {
        return Err(BdevError::Busy(format!("bdev {name} is open: it may grow, not shrink ({old} to {num_blocks} blocks)")));
    }
    bdev.num_blocks.store(num_blocks, Ordering::Relaxed);
    tracing::info!("bdev {name}: {old} -> {num_blocks} blocks");
    crate::notify::send(crate::notify::BDEV_RESIZE, name);
    for (r, f) in users {
        reactor::send_msg(r, move || f(BdevEvent::Resize));
    }
    Ok(())
}

fn finish_if_closed(reg: &Registry, bdev: &Arc<Bdev>) {
    if !bdev.is_removing() || reg.opens.borrow().values().any(|o| Arc::ptr_eq(&o.bdev, bdev)) {
        return;
    }
    reg.bdevs.borrow_mut().retain(|b| !Arc::ptr_eq(b, bdev));
    bdev.backend.destroy();
    tracing::info!("bdev {} deleted", bdev.name());
    // Every unregister notice follows its register notice (a bdev deleted
    // while being examined gets it now), as SPDK, which holds a bdev open
    // through its examination, always sends them.
    if !bdev.announced.swap(true, Ordering::SeqCst) {
        crate::notify::send(crate::notify::BDEV_REGISTER, bdev.name());
    }
    crate::notify::send(crate::notify::BDEV_UNREGISTER, bdev.name());
    let waiters = reg.deleting.borrow_mut().remove(bdev.name()).unwrap_or_default();
    for w in waiters {
        w(Ok(()));
    }
}

struct DescInner {
    id: u64,
    bdev: Arc<Bdev>,
    writable: bool,
    home: Handle,
}

impl Drop for DescInner {
    fn drop(&mut self) {
        let id = self.id;
        self.home.send(ReactorId(0), move || {
            if let Ok(reg) = registry() {
                let closed = reg.opens.borrow_mut().remove(&id);
                if let Some(o) = closed {
                    finish_if_closed(&reg, &o.bdev);
                }
            }
        });
    }
}

/// An open bdev. Cloning shares the same open; the bdev is closed when the
/// last clone is dropped (on any reactor). `Send + Sync`: targets open on the
/// main reactor and submit from every reactor through their own channel.
#[derive(Clone)]
pub struct Descriptor {
    inner: Arc<DescInner>,
}

impl std::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Descriptor").field("bdev", &self.inner.bdev.name()).field("writable", &self.inner.writable).finish()
    }
}

impl Descriptor {
    pub fn bdev(&self) -> &Arc<Bdev> {
        &self.inner.bdev
    }
    pub fn writable(&self) -> bool {
        self.inner.writable
    }
}

/// Open a bdev by name (main reactor). `on_event` runs on the reactor that
/// opened it when the bdev goes away.
pub fn open(name: &str, writable: bool, on_event: impl Fn(BdevEvent) + Send + Sync + 'static) -> Result<Descriptor, BdevError> {
    let reg = registry()?;
    let bdev = reg.find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if bdev.is_removing() {
        return Err(BdevError::Removing(name.to_string()));
    }
    // A module's claim (SPDK's exclusive write claim): others may read.
    if let (true, Some(m)) = (writable, bdev.claimed_by()) {
        return Err(BdevError::Busy(format!("bdev {name} is claimed by module {m}: it cannot be opened for writing")));
    }
    let id = reg.next_open.get();
    reg.next_open.set(id + 1);
    reg.opens.borrow_mut().insert(id, Open { bdev: bdev.clone(), reactor: reactor::current(), on_event: Arc::new(on_event) });
    Ok(Descriptor { inner: Arc::new(DescInner { id, bdev, writable, home: reactor::handle() }) })
}

/// How many descriptors are open on a bdev (main reactor).
pub fn open_count(bdev: &Arc<Bdev>) -> usize {
    registry().map(|r| r.opens.borrow().values().filter(|o| Arc::ptr_eq(&o.bdev, bdev)).count()).unwrap_or(0)
}
