//! Several paths to one namespace: the paths of a bdev controller (one
//! controller per path, SPDK's `nvme_bdev_ctrlr`), the multipath policy of
//! each namespace bdev, and the choice of a path for each request on a
//! reactor.
//!
//! A namespace bdev's channel on a reactor keeps its own list of paths
//! (the I/O queue of each controller on that reactor, and the namespace's
//! state through it), rebuilt when the path set's generation changes (a
//! path added or taken away, or the namespaces of one changed: a lock
//! then, never on the I/O path). Each request goes to the best path that is
//! connected: active-passive takes the first in attach order,
//! active-active spreads requests over all of them (round robin, or the
//! least busy queue). A path that fails gives its requests back to the
//! channel, which sends them on another path, or keeps them until a path
//! returns; they fail only once no path is left that may come back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pollux_core::bdev::{BackendChannel, BdevIo, IoStatus};
use pollux_core::io_channel::{IoChannel, get_io_channel};

use crate::ctrlr::{Controller, Ident, IoQueue, NsState, PathUser, ana};
use crate::qpair::Route;

/// Each channel's own user number in its routes.
static NEXT_USER: AtomicU32 = AtomicU32::new(1);

/// The paths (controllers) of one bdev controller, shared by the reactors.
pub struct PathSet {
    epoch: AtomicU64,
    paths: Mutex<Vec<Arc<Controller>>>,
}

impl PathSet {
    pub(crate) fn new(first: Arc<Controller>) -> Arc<PathSet> {
        Arc::new(PathSet { epoch: AtomicU64::new(1), paths: Mutex::new(vec![first]) })
    }

    /// The paths, in attach order.
    pub fn paths(&self) -> Vec<Arc<Controller>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn add(&self, c: Arc<Controller>) {
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn remove(&self, c: &Arc<Controller>) {
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| !Arc::ptr_eq(p, c));
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// The namespaces of a path changed: channels look their paths up
    /// again.
    pub(crate) fn touch(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn epoch_now(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// A namespace bdev's multipath policy (`bdev_nvme_set_multipath_policy`).
#[derive(Debug)]
pub struct Policy {
    active_active: AtomicBool,
    queue_depth: AtomicBool,
    rr_min_io: AtomicU32,
    /// Set by the RPC (save_config writes it back).
    set: AtomicBool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            active_active: AtomicBool::new(false),
            queue_depth: AtomicBool::new(false),
            rr_min_io: AtomicU32::new(1),
            set: AtomicBool::new(false),
        }
    }
}

impl Policy {
    pub fn apply(&self, active_active: bool, queue_depth: bool, rr_min_io: u32) {
        self.active_active.store(active_active, Ordering::Relaxed);
        self.queue_depth.store(queue_depth, Ordering::Relaxed);
        self.rr_min_io.store(rr_min_io.max(1), Ordering::Relaxed);
        self.set.store(true, Ordering::Relaxed);
    }

    pub fn is_active_active(&self) -> bool {
        self.active_active.load(Ordering::Relaxed)
    }

    pub fn is_queue_depth(&self) -> bool {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn rr_min_io(&self) -> u32 {
        self.rr_min_io.load(Ordering::Relaxed)
    }

    pub fn was_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }
}

/// Where a path stands, for one namespace on one reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathState {
    /// Connected, ANA optimized: requests go out now.
    Ready,
    /// Connected, ANA non-optimized: used when no optimized path is.
    NonOptimized,
    /// The controller is up, this reactor's queue is connecting: requests
    /// wait on the queue.
    Connecting,
    /// The controller is being reconnected: it may come back.
    Down,
    /// ANA change (a transition): it may come back.
    Changing,
    /// ANA inaccessible or persistent loss: not used.
    Inaccessible,
    /// Given up on, or taken away.
    Failed,
}

/// The state of `ctrl` as a path to a namespace (`ns`: its state there;
/// None where the namespace is not active through `ctrl`), with `q` its
/// queue on this reactor.
pub fn path_state(ctrl: &Controller, q: Option<&IoQueue>, ns: Option<&NsState>) -> PathState {
    if ctrl.is_failing() || ctrl.is_removed() {
        return PathState::Failed;
    }
    if !ctrl.is_up() {
        return PathState::Down;
    }
    let Some(ns) = ns.filter(|ns| !ns.is_gone()) else { return PathState::Failed };
    match ns.ana_state() {
        ana::INACCESSIBLE | ana::PERSISTENT_LOSS => PathState::Inaccessible,
        ana::CHANGE => PathState::Changing,
        _ if !q.is_some_and(|q| q.is_live()) => PathState::Connecting,
        ana::NON_OPTIMIZED => PathState::NonOptimized,
        _ => PathState::Ready,
    }
}

/// What to do with a request, given the states of the paths (in attach
/// order), the policy, and how far round robin has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    Path(usize),
    Wait,
    Fail,
}

/// Choose a path among the connected optimized ones, else the connected
/// non-optimized ones: the first (active-passive), the next after `cursor`
/// (active-active round robin), or the one with the fewest requests
/// (`depth`, active-active queue depth). Else a path still connecting;
/// else wait while one may come back (reconnecting, ANA transition); else
/// fail.
pub(crate) fn choose(states: &[PathState], policy: &Policy, cursor: usize, depth: impl Fn(usize) -> usize) -> Choice {
    let n = states.len();
    for want in [PathState::Ready, PathState::NonOptimized] {
        let ok = |i: &usize| states[*i] == want;
        let pick = if !policy.is_active_active() {
            (0..n).find(ok)
        } else if policy.is_queue_depth() {
            (0..n).filter(ok).min_by_key(|&i| depth(i))
        } else {
            (0..n).map(|k| (cursor + k) % n).find(ok)
        };
        if let Some(i) = pick {
            return Choice::Path(i);
        }
    }
    if let Some(i) = states.iter().position(|s| *s == PathState::Connecting) {
        return Choice::Path(i);
    }
    if states.iter().any(|s| matches!(s, PathState::Down | PathState::Changing)) { Choice::Wait } else { Choice::Fail }
}

struct Path {
    ctrl: Arc<Controller>,
    q: IoChannel<Controller>,
    /// The namespace through this path, as of the set's epoch.
    ns: Option<Arc<NsState>>,
}

/// A namespace bdev's channel on one reactor: its paths there and the
/// requests waiting for one.
pub(crate) struct NsPaths {
    me: Weak<NsPaths>,
    set: Arc<PathSet>,
    nsid: u32,
    /// Its requests' route: the queues give them back to this channel only.
    route: Route,
    /// The namespace this bdev is: under its NSID a path may have another.
    ident: Ident,
    policy: Arc<Policy>,
    epoch: Cell<u64>,
    paths: RefCell<Vec<Path>>,
    /// Round robin: the path in use and requests left on it.
    cursor: Cell<usize>,
    left: Cell<u32>,
    waiting: RefCell<VecDeque<BdevIo>>,
    /// Requeued while choosing (a path gave requests back from inside a
    /// submit): sent when the outer submit is done.
    busy: Cell<bool>,
    states: RefCell<Vec<PathState>>,
}

impl NsPaths {
    pub(crate) fn new(set: Arc<PathSet>, nsid: u32, ident: Ident, policy: Arc<Policy>) -> Rc<NsPaths> {
        let p = Rc::new_cyclic(|me| NsPaths {
            me: me.clone(),
            set,
            nsid,
            route: Route { nsid, user: NEXT_USER.fetch_add(1, Ordering::Relaxed) },
            ident,
            policy,
            epoch: Cell::new(0),
            paths: RefCell::new(Vec::new()),
            cursor: Cell::new(0),
            left: Cell::new(0),
            waiting: RefCell::new(VecDeque::new()),
            busy: Cell::new(false),
            states: RefCell::new(Vec::new()),
        });
        p.refresh();
        p
    }

    /// Follow the path set (a path added or taken away).
    fn refresh(&self) {
        let g = self.set.epoch_now();
        if g == self.epoch.get() {
            return;
        }
        self.epoch.set(g);
        let now = self.set.paths();
        // Paths taken away: their queues give back what they hold (to the
        // channels, which choose again) before this channel lets go of
        // them, and with no borrow held, as giving back sends again.
        let gone: Vec<Path> = {
            let mut paths = self.paths.borrow_mut();
            let (keep, gone) = std::mem::take(&mut *paths).into_iter().partition(|p| now.iter().any(|c| Arc::ptr_eq(c, &p.ctrl)));
            *paths = keep;
            gone
        };
        for p in &gone {
            p.q.disconnect();
        }
        drop(gone);
        let mut paths = self.paths.borrow_mut();
        for p in paths.iter_mut() {
            p.ns = self.ns_of(&p.ctrl);
        }
        for c in now.iter() {
            if !paths.iter().any(|p| Arc::ptr_eq(&p.ctrl, c)) {
                let q = get_io_channel(c);
                let me: Weak<dyn PathUser> = self.me.clone();
                q.add_user(self.route, me);
                let ns = self.ns_of(c);
                paths.push(Path { ctrl: c.clone(), q, ns });
            }
        }
        // Attach order, as active-passive prefers.
        paths.sort_by_key(|p| now.iter().position(|c| Arc::ptr_eq(c, &p.ctrl)));
        self.states.borrow_mut().resize(paths.len(), PathState::Failed);
    }

    /// This bdev's namespace through path `c`, if it has it.
    fn ns_of(&self, c: &Controller) -> Option<Arc<NsState>> {
        c.ns_state(self.nsid).filter(|s| s.is(&self.ident))
    }

    fn send(&self, io: BdevIo) {
        self.refresh();
        let choice = {
            let paths = self.paths.borrow();
            let mut states = self.states.borrow_mut();
            for (s, p) in states.iter_mut().zip(paths.iter()) {
                *s = path_state(&p.ctrl, Some(&p.q), p.ns.as_deref());
            }
            let rr = self.policy.is_active_active() && !self.policy.is_queue_depth();
            if rr && self.left.get() == 0 {
                self.cursor.set(self.cursor.get().wrapping_add(1));
                self.left.set(self.policy.rr_min_io());
            }
            let c = choose(&states, &self.policy, self.cursor.get() % paths.len().max(1), |i| paths[i].q.outstanding());
            match c {
                Choice::Path(i) => {
                    if rr {
                        self.cursor.set(i);
                        self.left.set(self.left.get().saturating_sub(1));
                    }
                    Ok(Rc::clone(&*paths[i].q))
                }
                Choice::Wait => Err(None),
                Choice::Fail => Err(Some(IoStatus::Failed)),
            }
        };
        match choice {
            Ok(q) => q.submit(self.route, io),
            Err(None) => self.waiting.borrow_mut().push_back(io),
            Err(Some(st)) => io.complete(st),
        }
    }

    /// Send what waits, now that a path changed.
    fn retry_waiting(&self) {
        if self.busy.replace(true) {
            return;
        }
        let ios = std::mem::take(&mut *self.waiting.borrow_mut());
        for io in ios {
            self.send(io);
        }
        self.busy.set(false);
    }
}

impl PathUser for NsPaths {
    fn requeue(&self, io: BdevIo) {
        // Another path now, or it waits until a path changes.
        self.send(io);
    }

    fn path_changed(&self) {
        self.retry_waiting();
    }
}

impl Drop for NsPaths {
    fn drop(&mut self) {
        for io in self.waiting.get_mut().drain(..) {
            io.complete(IoStatus::NoDevice);
        }
    }
}

/// The bdev's backend channel.
pub(crate) struct NamespaceChannel(pub(crate) Rc<NsPaths>);

impl BackendChannel for NamespaceChannel {
    fn submit(&self, io: BdevIo) {
        self.0.send(io);
    }
}

/// The paths to namespace `nsid` as this reactor sees them.
pub(crate) fn local_view(set: &Arc<PathSet>, nsid: u32) -> Vec<(Arc<Controller>, PathState)> {
    set.paths()
        .into_iter()
        .map(|c| {
            let q = pollux_core::io_channel::try_get_io_channel(&c);
            let st = path_state(&c, q.as_deref().map(|q| &**q), c.ns_state(nsid).as_deref());
            (c, st)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathState::*;

    fn ap() -> Policy {
        Policy::default()
    }

    fn aa(qd: bool) -> Policy {
        let p = Policy::default();
        p.apply(true, qd, 1);
        p
    }

    #[test]
    fn active_passive_takes_the_first_ready_path() {
        assert_eq!(choose(&[Ready, Ready], &ap(), 1, |_| 0), Choice::Path(0));
        assert_eq!(choose(&[Down, Ready], &ap(), 0, |_| 0), Choice::Path(1));
        assert_eq!(choose(&[Failed, Connecting], &ap(), 0, |_| 0), Choice::Path(1));
        assert_eq!(choose(&[Connecting, Ready], &ap(), 0, |_| 0), Choice::Path(1), "a ready path beats one still connecting");
    }

    #[test]
    fn optimized_paths_first_then_non_optimized_and_never_inaccessible() {
        assert_eq!(choose(&[NonOptimized, Ready], &ap(), 0, |_| 0), Choice::Path(1));
        assert_eq!(choose(&[Inaccessible, NonOptimized], &ap(), 0, |_| 0), Choice::Path(1));
        assert_eq!(choose(&[NonOptimized, Ready, Ready], &aa(false), 0, |_| 0), Choice::Path(1));
        assert_eq!(choose(&[Inaccessible, Changing], &ap(), 0, |_| 0), Choice::Wait, "a transition may end");
        assert_eq!(choose(&[Inaccessible, Failed], &ap(), 0, |_| 0), Choice::Fail);
    }

    #[test]
    fn waits_while_a_path_may_return_and_fails_after() {
        assert_eq!(choose(&[Down, Failed], &ap(), 0, |_| 0), Choice::Wait);
        assert_eq!(choose(&[Failed, Failed], &ap(), 0, |_| 0), Choice::Fail);
        assert_eq!(choose(&[], &ap(), 0, |_| 0), Choice::Fail);
    }

    #[test]
    fn active_active_rotates_or_takes_the_least_busy() {
        let p = aa(false);
        assert_eq!(choose(&[Ready, Ready, Ready], &p, 1, |_| 0), Choice::Path(1));
        assert_eq!(choose(&[Ready, Down, Ready], &p, 1, |_| 0), Choice::Path(2));
        assert_eq!(choose(&[Ready, Down, Down], &p, 2, |_| 0), Choice::Path(0));
        let q = aa(true);
        assert_eq!(choose(&[Ready, Ready, Ready], &q, 0, |i| [5, 2, 9][i]), Choice::Path(1));
        assert_eq!(choose(&[Ready, Failed, Ready], &q, 0, |i| [5, 0, 9][i]), Choice::Path(0));
    }
}
