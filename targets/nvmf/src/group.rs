//! Per-reactor views of the subsystems' namespaces (SPDK's poll group
//! subsystem state): each reactor that runs I/O queue pairs keeps, per
//! subsystem, the open descriptor and its own bdev channel for every
//! namespace. The main reactor publishes changes to every reactor with
//! messages, in order, so a queue pair moved to a reactor after a change
//! sees it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::bdev::{Bdev, Descriptor};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor;

use crate::resv::ResvState;

/// A namespace as an I/O queue pair uses it on its reactor.
pub struct NsView {
    pub desc: Descriptor,
    pub ch: IoChannel<Bdev>,
    pub block_size: u32,
    /// The bdev's size as this reactor knows it (see [`update_namespace`]).
    pub num_blocks: Cell<u64>,
    /// ANA group, for subsystems that report ANA.
    pub anagrpid: Cell<u32>,
    /// The namespace's reservation state (`None`: no registrant).
    pub resv: RefCell<Option<Arc<ResvState>>>,
    /// Commands of this namespace at the bdev from this reactor, by the
    /// parity of the epoch they entered in (see [`NsView::fence`]).
    inflight: [Cell<u32>; 2],
    epoch: Cell<u8>,
    /// Fences waiting, the first one running (its epoch draining).
    fences: RefCell<std::collections::VecDeque<Box<dyn FnOnce()>>>,
}

/// A command of a namespace at its bdev: it counts in its epoch until
/// dropped (when the command completes).
pub struct InFlight {
    ns: Rc<NsView>,
    epoch: u8,
}

impl InFlight {
    pub fn ns(&self) -> &Rc<NsView> {
        &self.ns
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ns.leave(self.epoch);
    }
}

impl NsView {
    /// Count a command going to the bdev; it leaves when the returned
    /// guard drops.
    #[inline]
    pub fn enter(self: &Rc<Self>) -> InFlight {
        let epoch = self.epoch.get();
        let n = &self.inflight[usize::from(epoch)];
        n.set(n.get() + 1);
        InFlight { ns: self.clone(), epoch }
    }

    #[inline]
    fn leave(&self, epoch: u8) {
        let n = &self.inflight[usize::from(epoch)];
        n.set(n.get() - 1);
        if n.get() == 0 && epoch != self.epoch.get() && !self.fences.borrow().is_empty() {
            self.fence_done();
        }
    }

    /// Run `then` once every command this reactor sent to the bdev for
    /// this namespace before now has completed (commands sent after are
    /// not waited for: a new epoch starts). What a Reservation Acquire
    /// that preempts and aborts waits for, once the new state is in force,
    /// so that no write of a preempted host lands after it completes.
    /// Fences run one after the other.
    pub fn fence(&self, then: Box<dyn FnOnce()>) {
        let mut f = self.fences.borrow_mut();
        f.push_back(then);
        if f.len() == 1 {
            drop(f);
            self.fence_start();
        }
    }

    fn fence_start(&self) {
        let old = self.epoch.get();
        self.epoch.set(old ^ 1);
        if self.inflight[usize::from(old)].get() == 0 {
            self.fence_done();
        }
    }

    fn fence_done(&self) {
        let then = self.fences.borrow_mut().pop_front();
        if let Some(then) = then {
            then();
        }
        if !self.fences.borrow().is_empty() {
            self.fence_start();
        }
    }
}

/// What a reactor needs of a namespace: its descriptor, ANA group and
/// reservation state.
pub type NsPublish = (Descriptor, u32, Option<Arc<ResvState>>);

/// One subsystem's namespaces on one reactor, indexed by NSID - 1.
#[derive(Default)]
pub struct SubsystemView {
    namespaces: RefCell<Vec<Option<Rc<NsView>>>>,
}

impl SubsystemView {
    /// The namespace with this NSID, if active.
    #[inline]
    pub fn namespace(&self, nsid: u32) -> Option<Rc<NsView>> {
        let i = (nsid as usize).checked_sub(1)?;
        self.namespaces.borrow().get(i).cloned().flatten()
    }

    fn set(&self, nsid: u32, desc: Option<NsPublish>) {
        let i = nsid as usize - 1;
        let mut v = self.namespaces.borrow_mut();
        if v.len() <= i {
            v.resize(i + 1, None);
        }
        v[i] = desc.map(|(desc, anagrpid, resv)| {
            let bdev = desc.bdev().clone();
            Rc::new(NsView {
                ch: desc.channel(),
                block_size: bdev.block_size(),
                num_blocks: Cell::new(bdev.num_blocks()),
                desc,
                anagrpid: Cell::new(anagrpid),
                resv: RefCell::new(resv),
                inflight: [Cell::new(0), Cell::new(0)],
                epoch: Cell::new(0),
                fences: RefCell::default(),
            })
        });
    }
}

#[derive(Default)]
struct Views {
    subsystems: RefCell<HashMap<u32, Rc<SubsystemView>>>,
}

fn views() -> Rc<Views> {
    reactor::local::<Views>().unwrap_or_else(|| {
        let v = Rc::new(Views::default());
        reactor::set_local(v.clone());
        v
    })
}

/// This reactor's view of a subsystem (created empty if new).
pub fn subsystem(id: u32) -> Rc<SubsystemView> {
    views().subsystems.borrow_mut().entry(id).or_default().clone()
}

/// Publish a namespace change (its descriptor and ANA group, or `None`
/// when removed) to every reactor; `then` runs on the caller's reactor
/// once all have applied it.
pub fn publish_namespace(subsystem_id: u32, nsid: u32, desc: Option<NsPublish>, then: impl FnOnce() + Send + 'static) {
    reactor::for_each_reactor(move || subsystem(subsystem_id).set(nsid, desc.clone()), then);
}

/// Change a namespace's view on every reactor (its size, ANA group or
/// reservation state); `then` runs on the caller's reactor once all have.
pub fn update_namespace(subsystem_id: u32, nsid: u32, f: impl Fn(&NsView) + Send + Sync + 'static, then: impl FnOnce() + Send + 'static) {
    reactor::for_each_reactor(
        move || {
            if let Some(ns) = subsystem(subsystem_id).namespace(nsid) {
                f(&ns);
            }
        },
        then,
    );
}

/// Publish a namespace's reservation state to every reactor.
pub fn publish_resv(subsystem_id: u32, nsid: u32, resv: Option<Arc<ResvState>>, then: impl FnOnce() + Send + 'static) {
    update_namespace(subsystem_id, nsid, move |ns| *ns.resv.borrow_mut() = resv.clone(), then);
}

/// Publish a reservation state to every reactor in turn, each one waiting
/// until the commands it sent to the bdev for the namespace before the
/// state took effect there have completed ([`NsView::fence`]); `then` runs
/// on the caller's reactor after the last. For a Reservation Acquire that
/// preempts and aborts: the preempted hosts' commands already at the bdev
/// finish before the command does (SPDK waits for them too); new ones meet
/// the new state.
pub fn publish_resv_fenced(subsystem_id: u32, nsid: u32, resv: Option<Arc<ResvState>>, then: impl FnOnce() + Send + 'static) {
    reactor::for_each_reactor_in_turn(
        move |next| match subsystem(subsystem_id).namespace(nsid) {
            Some(ns) => {
                *ns.resv.borrow_mut() = resv.clone();
                ns.fence(next);
            }
            None => next(),
        },
        then,
    );
}

/// Forget a deleted subsystem on every reactor.
pub fn publish_subsystem_removed(subsystem_id: u32, then: impl FnOnce() + Send + 'static) {
    reactor::for_each_reactor(
        move || {
            views().subsystems.borrow_mut().remove(&subsystem_id);
            crate::counters::forget(subsystem_id);
        },
        then,
    );
}

/// Drop this reactor's views (target shutdown).
pub fn clear() {
    reactor::take_local::<Views>();
}
