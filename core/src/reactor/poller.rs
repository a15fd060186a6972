//! Pollers: functions a reactor calls every iteration (active pollers) or on a
//! period (timed pollers). Each reports whether it found work.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};

use super::Inner;
use crate::sys::Interest;

/// What a poller found on this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// Nothing to do.
    Idle,
    /// Did some work (and may have more).
    Busy,
}

impl From<bool> for PollStatus {
    fn from(busy: bool) -> Self {
        if busy { PollStatus::Busy } else { PollStatus::Idle }
    }
}

impl From<usize> for PollStatus {
    /// A count of work items done: zero is idle.
    fn from(n: usize) -> Self {
        (n > 0).into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Waiting,
    Paused,
    Unregistered,
}

type PollFn = Box<dyn FnMut() -> PollStatus>;

pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) name: String,
    /// Period in ticks; 0 for an active poller.
    pub(crate) period: u64,
    pub(crate) state: Cell<State>,
    pub(crate) next_due: Cell<u64>,
    pub(crate) kicked: Cell<bool>,
    /// In interrupt mode: runs only when its wake descriptors fire.
    fd_driven: Cell<bool>,
    pub(crate) run_count: Cell<u64>,
    pub(crate) busy_count: Cell<u64>,
    f: RefCell<PollFn>,
    /// Interrupt mode: run before the reactor sleeps (see
    /// [`Poller::set_before_sleep`]).
    before_sleep: RefCell<Option<Box<dyn FnMut() -> bool>>>,
    /// Descriptors that wake this poller in interrupt mode.
    fds: RefCell<Vec<RawFd>>,
    reactor: Weak<Inner>,
}

impl Entry {
    #[inline]
    fn call(&self) -> PollStatus {
        let st = (self.f.borrow_mut())();
        self.run_count.set(self.run_count.get() + 1);
        if st == PollStatus::Busy {
            self.busy_count.set(self.busy_count.get() + 1);
        }
        st
    }
}

/// A registered poller. Dropping the handle unregisters it (also from inside
/// the poller itself); the reactor forgets it at the end of its iteration.
/// Pollers belong to one reactor and cannot leave it: `Poller` is `!Send`.
pub struct Poller {
    entry: Rc<Entry>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").field("id", &self.entry.id).field("name", &self.entry.name).finish()
    }
}

impl Poller {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Stop calling the poller until [`Poller::resume`]. A paused timed
    /// poller no longer counts for the reactor's next wake-up.
    pub fn pause(&self) {
        if self.entry.state.get() == State::Waiting {
            self.entry.state.set(State::Paused);
            self.deadlines_changed();
        }
    }

    /// Call the poller again; a timed poller's next run is one period from
    /// now, or at once if it has wake descriptors: one that became ready
    /// while it was paused may have said so only once (edge-triggered).
    pub fn resume(&self) {
        if self.entry.state.get() == State::Paused {
            self.entry.state.set(State::Waiting);
            if self.entry.period > 0 {
                self.entry.next_due.set(crate::clock::ticks() + self.entry.period);
                if self.entry.fd_driven.get() {
                    self.kick();
                }
            }
            self.deadlines_changed();
        }
    }

    /// The reactor recomputes its deadlines before it next sleeps.
    fn deadlines_changed(&self) {
        if let Some(r) = self.entry.reactor.upgrade() {
            r.pollers.dirty.set(true);
        }
    }

    /// Make the reactor run this poller in its next iteration even if its
    /// period has not elapsed.
    pub fn kick(&self) {
        if let Some(r) = self.entry.reactor.upgrade() {
            self.entry.kicked.set(true);
            r.pollers.kicked.set(true);
        }
    }

    /// In interrupt mode, wake the reactor and run this poller when `fd`
    /// becomes ready. From then on the poller's period no longer wakes a
    /// sleeping reactor (its descriptors do), but while the reactor is awake
    /// and busy it still runs on its period, which is what notices ready
    /// descriptors then. In polling mode this does nothing. A doorbell the
    /// poller need not read (it looks at its own queue every pass) is best
    /// watched with [`Interest::edge`]: it then wakes the reactor once per
    /// ring and costs nothing on the passes in between.
    pub fn add_wake_fd(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        let Some(r) = self.entry.reactor.upgrade() else { return Ok(()) };
        if let Some(irq) = &r.irq {
            irq.epoll.add(fd, interest, self.entry.id)?;
            self.entry.fds.borrow_mut().push(fd);
            self.entry.fd_driven.set(true);
            // Recompute the sleep deadline without this poller's period.
            r.pollers.dirty.set(true);
            r.pollers.by_id.borrow_mut().insert(self.entry.id, Rc::downgrade(&self.entry));
        }
        Ok(())
    }

    /// Change what a wake descriptor waits for (for example add WRITABLE while
    /// output is queued).
    pub fn modify_wake_fd(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        let Some(r) = self.entry.reactor.upgrade() else { return Ok(()) };
        match &r.irq {
            Some(irq) => irq.epoll.modify(fd, interest, self.entry.id),
            None => Ok(()),
        }
    }

    /// Interrupt mode: call `f` each time the reactor is about to sleep;
    /// `f` returns whether it found work (the reactor then does not sleep
    /// but runs another iteration). For a source whose wake-ups must be
    /// asked for each time (an RDMA completion queue is armed for one
    /// event): ask in `f`, then look once more, instead of on every pass.
    pub fn set_before_sleep(&self, f: impl FnMut() -> bool + 'static) {
        *self.entry.before_sleep.borrow_mut() = Some(Box::new(f));
    }

    /// Stop waking on `fd`. Call before closing the descriptor.
    pub fn remove_wake_fd(&self, fd: RawFd) {
        let Some(r) = self.entry.reactor.upgrade() else { return };
        if let Some(irq) = &r.irq {
            let mut fds = self.entry.fds.borrow_mut();
            if let Some(pos) = fds.iter().position(|&f| f == fd) {
                fds.swap_remove(pos);
                let _ = irq.epoll.delete(fd);
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let e = &self.entry;
        e.state.set(State::Unregistered);
        if let Some(r) = e.reactor.upgrade() {
            r.pollers.dirty.set(true);
            if let Some(irq) = &r.irq {
                for fd in e.fds.borrow_mut().drain(..) {
                    let _ = irq.epoll.delete(fd);
                }
                if let Ok(mut m) = r.pollers.by_id.try_borrow_mut() {
                    m.remove(&e.id);
                }
            }
        }
    }
}

/// A snapshot of one poller for statistics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PollerInfo {
    pub name: String,
    pub id: u64,
    pub state: &'static str,
    pub run_count: u64,
    pub busy_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ticks: Option<u64>,
}

/// The pollers of one reactor.
#[derive(Default)]
pub(crate) struct PollerSet {
    active: RefCell<Vec<Rc<Entry>>>,
    timed: RefCell<Vec<Rc<Entry>>>,
    pending: RefCell<Vec<Rc<Entry>>>,
    pub(crate) by_id: RefCell<std::collections::HashMap<u64, Weak<Entry>>>,
    pub(crate) dirty: Cell<bool>,
    pub(crate) kicked: Cell<bool>,
    next_due: Cell<u64>,
    next_wake: Cell<u64>,
    next_id: Cell<u64>,
}

impl PollerSet {
    pub(crate) fn new() -> Self {
        PollerSet { next_due: Cell::new(u64::MAX), next_wake: Cell::new(u64::MAX), next_id: Cell::new(1), ..Default::default() }
    }

    pub(crate) fn register(&self, reactor: Weak<Inner>, name: &str, period: u64, now: u64, f: PollFn) -> Poller {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let entry = Rc::new(Entry {
            id,
            name: name.to_string(),
            period,
            state: Cell::new(State::Waiting),
            next_due: Cell::new(now.saturating_add(period)),
            kicked: Cell::new(false),
            fd_driven: Cell::new(false),
            run_count: Cell::new(0),
            busy_count: Cell::new(0),
            f: RefCell::new(f),
            before_sleep: RefCell::new(None),
            fds: RefCell::new(Vec::new()),
            reactor,
        });
        self.pending.borrow_mut().push(entry.clone());
        self.dirty.set(true);
        Poller { entry }
    }

    /// Run the pollers' before-sleep hooks; whether any found work.
    pub(crate) fn before_sleep(&self) -> bool {
        let mut work = false;
        // Hooks may register pollers (they wait in `pending`) or drop
        // them (marked, forgotten at the end of the iteration): the lists
        // themselves do not change under this loop.
        for list in [&self.active, &self.timed] {
            for e in list.borrow().iter() {
                if e.state.get() != State::Waiting {
                    continue;
                }
                if let Ok(mut f) = e.before_sleep.try_borrow_mut() {
                    if let Some(f) = f.as_mut() {
                        work |= f();
                    }
                }
            }
        }
        work
    }

    /// Run every active poller once. Returns whether any was busy.
    #[inline]
    pub(crate) fn run_active(&self) -> bool {
        let mut busy = false;
        let active = self.active.borrow();
        for e in active.iter() {
            if e.state.get() == State::Waiting {
                busy |= e.call() == PollStatus::Busy;
            }
        }
        busy
    }

    /// Run the timed pollers that are due (or were kicked).
    #[inline]
    pub(crate) fn run_timed(&self, now: u64) -> bool {
        if now < self.next_due.get() && !self.kicked.get() {
            return false;
        }
        self.kicked.set(false);
        let mut busy = false;
        let mut next = u64::MAX;
        let mut wake = u64::MAX;
        let timed = self.timed.borrow();
        for e in timed.iter() {
            let due = e.next_due.get();
            if e.state.get() == State::Waiting && (due <= now || e.kicked.get()) {
                e.kicked.set(false);
                busy |= e.call() == PollStatus::Busy;
                if due <= now {
                    // Keep the grid: next deadline is one period after the last,
                    // skipping (not bursting) periods missed under load.
                    let mut n = due + e.period;
                    if n <= now {
                        n += ((now - n) / e.period + 1) * e.period;
                    }
                    e.next_due.set(n);
                }
            }
            if e.state.get() != State::Waiting {
                // Paused: its deadline is stale and must not wake the reactor.
                continue;
            }
            next = next.min(e.next_due.get());
            if !e.fd_driven.get() {
                wake = wake.min(e.next_due.get());
            }
        }
        // Pollers registered during this run are picked up by `compact`.
        self.next_due.set(next);
        self.next_wake.set(wake);
        busy
    }

    /// Apply registrations and unregistrations made during the iteration.
    /// Returns whether anything changed (new pollers want an iteration).
    pub(crate) fn compact(&self) -> bool {
        if !self.dirty.replace(false) {
            return false;
        }
        let mut removed = Vec::new();
        for list in [&self.active, &self.timed] {
            let mut l = list.borrow_mut();
            l.retain(|e| {
                let keep = e.state.get() != State::Unregistered;
                if !keep {
                    removed.push(e.clone());
                }
                keep
            });
        }
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for e in pending {
            if e.state.get() == State::Unregistered {
                removed.push(e);
            } else if e.period == 0 {
                self.active.borrow_mut().push(e);
            } else {
                self.timed.borrow_mut().push(e);
            }
        }
        let timed = self.timed.borrow();
        let waiting = || timed.iter().filter(|e| e.state.get() == State::Waiting);
        self.next_due.set(waiting().map(|e| e.next_due.get()).min().unwrap_or(u64::MAX));
        self.next_wake.set(waiting().filter(|e| !e.fd_driven.get()).map(|e| e.next_due.get()).min().unwrap_or(u64::MAX));
        drop(timed);
        if !removed.is_empty() {
            let mut m = self.by_id.borrow_mut();
            for e in &removed {
                m.remove(&e.id);
            }
        }
        // Closures are dropped here, outside every borrow: they may own other
        // pollers whose Drop sets `dirty` again, handled next iteration.
        drop(removed);
        true
    }

    /// Earliest deadline of a timed poller, in ticks.
    /// When a sleeping reactor must wake for a timed poller (fd-driven
    /// pollers wake it through their descriptors instead).
    pub(crate) fn next_deadline(&self) -> u64 {
        if self.kicked.get() { 0 } else { self.next_wake.get() }
    }

    /// Mark the poller with this id to run on the next iteration.
    pub(crate) fn kick_id(&self, id: u64) {
        let e = self.by_id.borrow().get(&id).and_then(Weak::upgrade);
        if let Some(e) = e {
            e.kicked.set(true);
            self.kicked.set(true);
            if e.period == 0 {
                // Active pollers run every iteration anyway.
                e.kicked.set(false);
            }
        }
    }

    /// Drop every poller (reactor exit). Closures are dropped outside borrows.
    pub(crate) fn clear(&self) {
        loop {
            let a = std::mem::take(&mut *self.active.borrow_mut());
            let t = std::mem::take(&mut *self.timed.borrow_mut());
            let p = std::mem::take(&mut *self.pending.borrow_mut());
            if a.is_empty() && t.is_empty() && p.is_empty() {
                break;
            }
            for e in a.iter().chain(&t).chain(&p) {
                e.state.set(State::Unregistered);
            }
            drop((a, t, p));
        }
        self.by_id.borrow_mut().clear();
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let count = |l: &RefCell<Vec<Rc<Entry>>>, s: State| l.borrow().iter().filter(|e| e.state.get() == s).count();
        let paused = count(&self.active, State::Paused) + count(&self.timed, State::Paused);
        (count(&self.active, State::Waiting), count(&self.timed, State::Waiting), paused)
    }

    /// Snapshots as (active, timed, paused) lists.
    pub(crate) fn infos(&self) -> (Vec<PollerInfo>, Vec<PollerInfo>, Vec<PollerInfo>) {
        let info = |e: &Entry| PollerInfo {
            name: e.name.clone(),
            id: e.id,
            state: match e.state.get() {
                State::Waiting => "waiting",
                State::Paused => "paused",
                State::Unregistered => "unregistered",
            },
            run_count: e.run_count.get(),
            busy_count: e.busy_count.get(),
            period_ticks: (e.period > 0).then_some(e.period),
        };
        let (mut active, mut timed, mut paused) = (Vec::new(), Vec::new(), Vec::new());
        for e in self.active.borrow().iter().chain(self.timed.borrow().iter()) {
            match (e.state.get(), e.period) {
                (State::Paused, _) => paused.push(info(e)),
                (State::Waiting, 0) => active.push(info(e)),
                (State::Waiting, _) => timed.push(info(e)),
                _ => {}
            }
        }
        (active, timed, paused)
    }
}

/// What a dropped object left in flight, reaped on its reactor until done
/// (see [`drain_in_background`]).
struct Drain {
    /// The reaping poller and the warning's.
    pollers: Option<(Poller, Option<Poller>)>,
    finish: Option<Box<dyn FnOnce()>>,
}

/// Ends a drain once: its pollers go first (a wake descriptor leaves the
/// reactor's epoll before `finish` may close it), then `finish` runs.
fn end_drain(holder: &Rc<RefCell<Option<Drain>>>) {
    // Taken out of the cell first: `finish` and the pollers' drops run
    // with the cell let go.
    let Some(mut d) = holder.borrow_mut().take() else { return };
    drop(d.pollers.take());
    if let Some(f) = d.finish.take() {
        f();
    }
}

/// Keep reaping, on the current reactor, what a dropped object left in
/// flight (a channel whose requests are still with the kernel or a
/// library), instead of waiting for it in the drop with the reactor
/// stalled. `what` names the object in the log. `step` returns how many
/// requests it finished and how many are left; it runs once at once (with
/// none left, `finish` runs and nothing is registered), then as a poller
/// named `name` (in interrupt mode woken by `wake`, and whenever the
/// reactor is awake); once none are left, the poller goes and `finish`
/// runs. Requests still outstanding `warn_after` the
/// drop are logged (an error: a hung device or an unreachable cluster),
/// and the drain goes on: their memory cannot be freed while others may
/// still write into it, and it is freed as soon as they end. If the
/// reactor exits first, neither happens: what `step` and `finish` hold is
/// leaked with the poller (no consumer callback runs for those requests),
/// which is safe for the same reason.
pub fn drain_in_background(
    name: &str,
    what: String,
    warn_after: std::time::Duration,
    wake: Option<(RawFd, Interest)>,
    mut step: impl FnMut() -> (usize, usize) + 'static,
    finish: impl FnOnce() + 'static,
) {
    if step().1 == 0 {
        return finish();
    }
    let holder: Rc<RefCell<Option<Drain>>> = Rc::default();
    let step = Rc::new(RefCell::new(step));
    let step_again = step.clone();
    // Set once the warning is out: the end is logged too.
    let warned = Rc::new(Cell::new(false));
    let (h, s, w, who) = (holder.clone(), step.clone(), warned.clone(), what.clone());
    let poller = super::register_poller(name, move || {
        let (n, left) = (s.borrow_mut())();
        if left == 0 {
            if w.get() {
                tracing::info!("{who}: the requests outstanding at its channel's drop have all ended");
            }
            // Drops this poller from inside its own run.
            end_drain(&h);
        }
        if n > 0 { PollStatus::Busy } else { PollStatus::Idle }
    });
    if let Some((fd, interest)) = wake {
        if let Err(e) = poller.add_wake_fd(fd, interest) {
            // The poller still runs whenever the reactor is awake.
            tracing::warn!("{name}: cannot wait for its wake descriptor ({e})");
        }
    }
    let h = holder.clone();
    let warn = super::register_timed_poller(&format!("{name}_warn"), warn_after, move || {
        // One last look first: what ended since the drain's last pass is
        // not reported.
        let (_, left) = (step.borrow_mut())();
        if left == 0 {
            end_drain(&h);
        } else {
            warned.set(true);
            tracing::error!(
                "{what}: {left} request(s) still outstanding {warn_after:?} after their channel was dropped; \
                 their memory is kept until they end"
            );
            // Once: this poller goes, from inside its own run (dropped
            // with the cell let go).
            let me = h.borrow_mut().as_mut().and_then(|d| d.pollers.as_mut()).and_then(|(_, w)| w.take());
            drop(me);
        }
        PollStatus::Busy
    });
    *holder.borrow_mut() = Some(Drain { pollers: Some((poller, Some(warn))), finish: Some(Box::new(finish)) });
    // One more look with the wake descriptor in place: what ended while it
    // moved from the object's own poller to this one.
    if (step_again.borrow_mut())().1 == 0 {
        end_drain(&holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(period: u64, log: Rc<RefCell<Vec<u64>>>, now: Rc<Cell<u64>>) -> (PollerSet, Poller) {
        let set = PollerSet::new();
        let p = set.register(
            Weak::new(),
            "t",
            period,
            0,
            Box::new(move || {
                log.borrow_mut().push(now.get());
                PollStatus::Busy
            }),
        );
        set.compact();
        (set, p)
    }

    #[test]
    fn timed_pollers_stay_on_their_grid_when_iterations_are_slow() {
        // Period 10, iterations every 3 ticks: runs at the first iteration at
        // or after 10, 20, 30...; drifting would give 12, 24, 36...
        let log = Rc::new(RefCell::new(Vec::new()));
        let now = Rc::new(Cell::new(0));
        let (set, _p) = set_with(10, log.clone(), now.clone());
        for t in (0..=100).step_by(3) {
            now.set(t);
            set.run_timed(t);
        }
        assert_eq!(*log.borrow(), vec![12, 21, 30, 42, 51, 60, 72, 81, 90]);
    }

    #[test]
    fn missed_periods_are_skipped_not_replayed() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let now = Rc::new(Cell::new(0));
        let (set, _p) = set_with(10, log.clone(), now.clone());
        for t in [10, 55, 56, 60, 61, 70] {
            now.set(t);
            set.run_timed(t);
        }
        // After a stall from 10 to 55 it runs once, then resumes at 60 and 70.
        assert_eq!(*log.borrow(), vec![10, 55, 60, 70]);
        assert_eq!(set.next_deadline(), 80);
    }

    #[test]
    fn unregistered_and_paused_timed_pollers_do_not_run() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let now = Rc::new(Cell::new(0));
        let (set, p) = set_with(10, log.clone(), now.clone());
        p.pause();
        set.run_timed(10);
        assert!(log.borrow().is_empty(), "a paused poller does not run");
        assert_eq!(set.next_deadline(), u64::MAX, "nor does it set a deadline");
        // Resumed, it runs one period later. (Without a reactor behind it,
        // the set learns of changes by hand.)
        p.resume();
        set.dirty.set(true);
        set.compact();
        let t = crate::clock::ticks() + 10;
        now.set(t);
        set.run_timed(t);
        assert_eq!(*log.borrow(), vec![t]);
        drop(p);
        set.dirty.set(true);
        set.compact();
        set.run_timed(t + 10);
        assert_eq!(*log.borrow(), vec![t], "an unregistered poller does not run");
        assert_eq!(set.next_deadline(), u64::MAX);
    }
}
