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
use std::sync::atomic::{AtomicU64, Ordering};

use pollux_core::bdev::{Bdev, Descriptor};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor;

use crate::resv::ResvState;
use crate::subsystem::HostSet;

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
    pub resv: Latest<Option<Arc<ResvState>>>,
    /// The hosts that see the namespace (`None`: every host).
    pub hosts: Latest<Option<Arc<HostSet>>>,
    /// Commands of this namespace at the bdev from this reactor, by the
    /// parity of the epoch they entered in (see [`NsView::fence`]).
    inflight: [Cell<u32>; 2],
    epoch: Cell<u8>,
    /// Fences waiting, the first one running (its epoch draining).
    fences: RefCell<std::collections::VecDeque<Box<dyn FnOnce()>>>,
}

/// Where published namespace states stand in order: every publication
/// takes the next number (on the main reactor, where they are made).
static GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// A namespace state that publications may deliver out of order: a fenced
/// one waits on each reactor before it moves to the next, so a later
/// publication can reach a reactor first. Each value carries the
/// generation it was made in; an older one never replaces a newer.
pub struct Latest<T> {
    generation: Cell<u64>,
    value: RefCell<T>,
}

impl<T> Latest<T> {
    fn new(generation: u64, value: T) -> Latest<T> {
        Latest { generation: Cell::new(generation), value: RefCell::new(value) }
    }

    #[inline]
    pub fn borrow(&self) -> std::cell::Ref<'_, T> {
        self.value.borrow()
    }

    /// Take `value` unless what is here is newer.
    fn set(&self, generation: u64, value: T) {
        if generation > self.generation.get() {
            self.generation.set(generation);
            *self.value.borrow_mut() = value;
        }
    }
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

/// What a reactor needs of a namespace.
#[derive(Clone)]
pub struct NsPublish {
    pub desc: Descriptor,
    pub anagrpid: u32,
    pub resv: Option<Arc<ResvState>>,
    /// The hosts that see it (`None`: every host).
    pub hosts: Option<Arc<HostSet>>,
    generation: u64,
}

impl NsPublish {
    pub fn of(ns: &crate::subsystem::Namespace) -> NsPublish {
        NsPublish {
            desc: ns.desc.clone(),
            anagrpid: ns.anagrpid.get(),
            resv: ns.resv_snapshot(),
            hosts: ns.host_set(),
            generation: next_generation(),
        }
    }
}

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
        v[i] = desc.map(|NsPublish { desc, anagrpid, resv, hosts, generation }| {
            let bdev = desc.bdev().clone();
            Rc::new(NsView {
                ch: desc.channel(),
                block_size: bdev.block_size(),
                num_blocks: Cell::new(bdev.num_blocks()),
                desc,
                anagrpid: Cell::new(anagrpid),
                resv: Latest::new(generation, resv),
                hosts: Latest::new(generation, hosts),
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

/// A namespace's view on this reactor, if its subsystem's view exists (an
/// update that comes after the subsystem's deletion creates nothing).
fn existing_namespace(subsystem_id: u32, nsid: u32) -> Option<Rc<NsView>> {
    views().subsystems.borrow().get(&subsystem_id)?.namespace(nsid)
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
            if let Some(ns) = existing_namespace(subsystem_id, nsid) {
                f(&ns);
            }
        },
        then,
    );
}

/// Change a namespace's view on every reactor in turn, each one waiting
/// until the commands it sent to the bdev for the namespace before the
/// change have completed ([`NsView::fence`]); `then` runs on the caller's
/// reactor after the last.
fn update_namespace_fenced(
    subsystem_id: u32,
    nsid: u32,
    f: impl Fn(&NsView) + Send + Sync + 'static,
    then: impl FnOnce() + Send + 'static,
) {
    reactor::for_each_reactor_in_turn(
        move |next| match existing_namespace(subsystem_id, nsid) {
            Some(ns) => {
                f(&ns);
                ns.fence(next);
            }
            None => next(),
        },
        then,
    );
}

/// Set one of a namespace's [`Latest`] states on every reactor, in the
/// generation taken now: fenced ([`update_namespace_fenced`]) or at once.
fn publish_latest<T: Clone + Send + Sync + 'static>(
    subsystem_id: u32,
    nsid: u32,
    field: fn(&NsView) -> &Latest<T>,
    value: T,
    fenced: bool,
    then: impl FnOnce() + Send + 'static,
) {
    let generation = next_generation();
    let set = move |ns: &NsView| field(ns).set(generation, value.clone());
    if fenced {
        update_namespace_fenced(subsystem_id, nsid, set, then);
    } else {
        update_namespace(subsystem_id, nsid, set, then);
    }
}

/// Publish a namespace's reservation state to every reactor. `fenced`,
/// for a Reservation Acquire that preempts and aborts: the preempted
/// hosts' commands already at the bdev finish before the command does
/// (SPDK waits for them too); new ones meet the new state.
pub fn publish_resv(subsystem_id: u32, nsid: u32, resv: Option<Arc<ResvState>>, fenced: bool, then: impl FnOnce() + Send + 'static) {
    publish_latest(subsystem_id, nsid, |ns| &ns.resv, resv, fenced, then);
}

/// Publish who sees a namespace to every reactor. `fenced` (a host taken
/// off): once `then` runs, no command of a host that lost sight of the
/// namespace is still running there (SPDK pauses the subsystem for the
/// same); a fenced publication also runs after every fenced one before it
/// on each reactor. Unfenced (a host added): at once, so that a host that
/// sees the namespace in Identify can use it.
pub fn publish_hosts(subsystem_id: u32, nsid: u32, hosts: Option<Arc<HostSet>>, fenced: bool, then: impl FnOnce() + Send + 'static) {
    publish_latest(subsystem_id, nsid, |ns| &ns.hosts, hosts, fenced, then);
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

#[cfg(test)]
mod tests {
    use super::*;
    use pollux_core::bdev::{self, Backend, BackendChannel, BdevIo, BdevSpec, IoStatus, IoType};
    use pollux_core::reactor::Harness;

    /// A bdev that completes everything at once.
    struct Instant;

    impl Backend for Instant {
        fn module_name(&self) -> &'static str {
            "test_instant"
        }
        fn product_name(&self) -> &'static str {
            "Instant"
        }
        fn supports(&self, _: IoType) -> bool {
            true
        }
        fn create_channel(&self) -> Box<dyn BackendChannel> {
            Box::new(Instant)
        }
    }

    impl BackendChannel for Instant {
        fn submit(&self, io: BdevIo) {
            io.complete(IoStatus::Success);
        }
    }

    fn resv(generation: u32) -> Option<Arc<ResvState>> {
        Some(Arc::new(ResvState { generation, ..Default::default() }))
    }

    /// A fenced publication moves from reactor to reactor only after each
    /// has fenced; a later one sent to all at once reaches the second
    /// reactor first. The older state must not replace it there (it did:
    /// a preempt-and-abort followed by another host's registration left a
    /// reactor checking commands against the state before the
    /// registration).
    #[test]
    fn a_later_publication_is_not_undone_by_an_earlier_fenced_one() {
        let h = Harness::new(2);
        h.on(0, || {
            let backend: Arc<dyn Backend> = Arc::new(Instant);
            bdev::register(BdevSpec { name: "inst0".into(), block_size: 512, num_blocks: 64, uuid: None, backend }).unwrap();
            let desc = bdev::open("inst0", true, |_| {}).unwrap();
            let p = NsPublish { desc, anagrpid: 1, resv: None, hosts: None, generation: next_generation() };
            publish_namespace(9, 1, Some(p), || {});
        });
        h.run_until_idle(100);
        // A command of the namespace at the bdev on reactor 0 holds the
        // fenced publications there.
        let held = h.on(0, || {
            let held = subsystem(9).namespace(1).expect("namespace").enter();
            publish_resv(9, 1, resv(1), true, || {});
            publish_resv(9, 1, resv(2), false, || {});
            let a: Option<Arc<HostSet>> = Some(Arc::new(["nqn.2016-06.io.test:a"].into_iter().collect()));
            let b: Option<Arc<HostSet>> = Some(Arc::new(["nqn.2016-06.io.test:b"].into_iter().collect()));
            publish_hosts(9, 1, a, true, || {});
            publish_hosts(9, 1, b, false, || {});
            held
        });
        h.run_until_idle(100);
        h.on(0, move || drop(held));
        h.run_until_idle(100);
        for r in 0..2 {
            h.on(r, || {
                let ns = subsystem(9).namespace(1).expect("namespace on every reactor");
                assert_eq!(ns.resv.borrow().as_ref().map(|s| s.generation), Some(2), "reactor {r}: the last reservation state");
                let hosts = ns.hosts.borrow().clone().expect("a host list");
                assert!(hosts.contains("nqn.2016-06.io.test:b") && !hosts.contains("nqn.2016-06.io.test:a"), "reactor {r}: {hosts:?}");
            });
        }
        h.on(0, || {
            publish_namespace(9, 1, None, || {});
            clear();
        });
        h.run_until_idle(100);
        h.on(1, clear);
    }
}
