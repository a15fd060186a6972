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
