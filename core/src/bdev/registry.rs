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
    if reg.bdevs.borrow().iter().any(|b| b.name() == spec.name) {
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
    });
    reg.bdevs.borrow_mut().push(bdev.clone());
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
    registry().ok()?.bdevs.borrow().iter().find(|b| b.name() == name).cloned()
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
    let Some(bdev) = reg.bdevs.borrow().iter().find(|b| b.name() == name).cloned() else {
        return done(Err(BdevError::NotFound(name.to_string())));
    };
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
    let bdev = reg.bdevs.borrow().iter().find(|b| b.name() == name).cloned().ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let old = bdev.num_blocks();
    if num_blocks == old {
        return Ok(());
    }
    let users: Vec<(ReactorId, EventFn)> =
        reg.opens.borrow().values().filter(|o| Arc::ptr_eq(&o.bdev, &bdev)).map(|o| (o.reactor, o.on_event.clone())).collect();
    if num_blocks < old && !users.is_empty() {
        return Err(BdevError::Busy(format!("bdev {name} is open: it may grow, not shrink ({old} to {num_blocks} blocks)")));
    }
    bdev.num_blocks.store(num_blocks, Ordering::Relaxed);
    tracing::info!("bdev {name}: {old} -> {num_blocks} blocks");
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
    let bdev = reg.bdevs.borrow().iter().find(|b| b.name() == name).cloned().ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if bdev.is_removing() {
        return Err(BdevError::Removing(name.to_string()));
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
