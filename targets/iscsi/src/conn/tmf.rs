//! Task management (RFC 7143 11.5, SAM-5 7): ABORT TASK, ABORT TASK SET,
//! CLEAR TASK SET, LOGICAL UNIT RESET, TARGET WARM RESET (TARGET COLD
//! RESET is refused).
//!
//! A task still waiting for Data-Out is dropped at once. A task the SCSI
//! layer is executing cannot be taken back from the bdev: it is marked
//! with its [`Fate`], and the TMF response waits (a [`Drain`]) until every
//! task it affected has finished, so nothing an aborted command does
//! lands after the response. Tasks of the issuing session end silently
//! (the response speaks for them). A LUN or target reset reaches every
//! other session of the target too, on whatever reactor it lives: there
//! the affected tasks end with TASK ABORTED status (the control mode page
//! has TAS set), and every nexus gets the reset unit attention.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use pollux_core::reactor::{self, ReactorId};
use pollux_scsi::sense::status;

use super::ffp::Window;
use super::{Close, Conn, Group, IscsiCmd};
use crate::pdu::{Bhs, op};
use crate::session::{self, Session};
use pollux_core::reactor::task::SendSlot;

/// TMF functions and responses (RFC 7143 11.5, 11.6).
mod function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LUN_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

mod response {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const REASSIGN_UNSUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// What becomes of a command handed to the SCSI layer when it finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Answer it as the SCSI layer says.
    Answer,
    /// Aborted by its own session (or its connection is gone): no answer.
    Silent,
    /// Aborted by another session's reset: answer TASK ABORTED.
    TaskAborted,
}

/// A command the SCSI layer is executing.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub lun: u64,
    pub fate: Fate,
    /// TMFs waiting for this command to finish (empty, unallocated, unless
    /// one aborted it).
    pub drains: Vec<Arc<Drain>>,
}

impl Inflight {
    pub(crate) fn new(lun: u64) -> Inflight {
        Inflight { lun, fate: Fate::Answer, drains: Vec::new() }
    }
}

/// A TMF response (or a PREEMPT AND ABORT's SCSI response) waiting for
/// the tasks the function aborted to finish. Counted: one for the function
/// itself, one per affected task, one per other reactor asked to abort
/// tasks; the response goes out (on the issuing connection's reactor) when
/// the count reaches zero.
pub(crate) struct Drain {
    left: AtomicUsize,
    reactor: ReactorId,
    then: Then,
    response: AtomicU8,
}

/// What a drained [`Drain`] does.
enum Then {
    /// Send the TMF response of `itt` on connection `conn`.
    Tmf { conn: u64, itt: u32 },
    /// Wake the command waiting on the slot.
    Wake(SendSlot<()>),
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain").field("left", &self.left).field("reactor", &self.reactor).finish()
    }
}

impl Drain {
    fn new(conn: u64, itt: u32) -> Arc<Drain> {
        Drain::with(Then::Tmf { conn, itt })
    }

    fn with(then: Then) -> Arc<Drain> {
        Arc::new(Drain { left: AtomicUsize::new(1), reactor: reactor::current(), then, response: AtomicU8::new(response::COMPLETE) })
    }

    fn hold(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn release(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            match &self.then {
                Then::Tmf { conn, itt } => {
                    let (conn, itt, response) = (*conn, *itt, self.response.load(Ordering::Acquire));
                    reactor::send_msg(self.reactor, move || answer(conn, itt, response));
                }
                Then::Wake(slot) => {
                    let slot = slot.clone();
                    reactor::send_msg(self.reactor, move || slot.set(()));
                }
            }
        }
    }

    /// The function itself is done: answer once its tasks are.
    fn finish(&self, response: u8) {
        self.response.store(response, Ordering::Release);
        self.release();
    }
}

/// Send a TMF response on connection `token` of this reactor, if it is
/// still there.
fn answer(token: u64, itt: u32, response: u8) {
    let Some(g) = Group::try_get() else { return };
    let c = g.conns.borrow().get(&token).cloned();
    if let Some(c) = c {
        c.tmf_response(itt, response);
    }
}

/// Abort the tasks of session `s` (all its connections) matching
/// `pred(itt, lun)`. Returns how many there were.
fn abort_in_session(s: &Session, pred: impl Fn(u32, u64) -> bool, fate: Fate, drain: &Arc<Drain>) -> usize {
    s.live_conns().iter().map(|c| c.abort_where(&pred, fate, drain)).sum()
}

/// A reset from session `from`: abort the tasks of the target's other
/// sessions on `lun` (every LUN if `None`), wherever they live.
fn abort_other_sessions(from: &Session, lun: Option<u64>, drain: &Arc<Drain>) {
    let me = from.tsih;
    abort_in_target(from, lun, move |s| s.tsih != me, drain);
}

/// Abort, with TASK ABORTED, the tasks on `lun` (every LUN if `None`) of
/// the sessions of `from`'s target that `which` picks, each on its own
/// reactor; `drain` holds until they have finished.
fn abort_in_target(from: &Session, lun: Option<u64>, which: impl Fn(&Session) -> bool + Clone + Send + 'static, drain: &Arc<Drain>) {
    let Some(target) = &from.target else { return };
    for (tsih, e) in session::of_target(target) {
        drain.hold();
        let (d, which) = (drain.clone(), which.clone());
        reactor::send_msg(e.reactor, move || {
            let s = Group::try_get().and_then(|g| g.sessions.borrow().get(&tsih).cloned());
            if let Some(s) = s.filter(|s| which(s)) {
                abort_in_session(&s, |_, l| lun.is_none_or(|x| x == l), Fate::TaskAborted, &d);
            }
            d.release();
        });
    }
}

/// PERSISTENT RESERVE OUT PREEMPT AND ABORT from session `from`: abort
/// the tasks on `lun` of every session of the target whose nexus on it is
/// one of `nexuses` (they end with TASK ABORTED, wherever they live), then
/// answer `cmd` once they have finished. The answer used to go out at
/// once, while the preempted initiator's writes could still land.
pub(crate) fn complete_after_aborting(from: &Session, lun: u64, nexuses: Vec<Arc<pollux_scsi::lun::Nexus>>, cmd: Box<IscsiCmd>) {
    use pollux_core::reactor::task;
    use pollux_scsi::ScsiCommand;
    let slot = SendSlot::new();
    let drain = Drain::with(Then::Wake(slot.clone()));
    let nexuses = Arc::new(nexuses);
    let preempted = move |s: &Session| s.port(lun).is_some_and(|p| nexuses.iter().any(|n| n.same(p.nexus())));
    abort_in_target(from, Some(lun), preempted, &drain);
    drain.release();
    task::spawn_local(async move {
        slot.await;
        cmd.complete();
    });
}

impl Conn {
    pub(super) fn tmf_response(self: &Rc<Self>, itt: u32, response: u8) {
        let mut r = Bhs::new(op::TASK_MGMT_RESP, 0x80);
        r.b2 = response;
        r.itt.set(itt);
        r.w24.set(self.next_stat_sn());
        self.fill_window(&mut r);
        self.send(&mut r, &[]);
    }

    pub(super) fn on_tmf(self: &Rc<Self>, h: &Bhs) -> Result<bool, Close> {
        use function::*;
        use response::*;
        if let Window::Ignore = self.window(h) {
            return Ok(true);
        }
        let Some(s) = self.session() else { return Ok(true) };
        let f = h.flags & 0x7f;
        let lun = pollux_scsi::decode_lun(h.lun);
        let drain = Drain::new(self.token, h.itt());
        let result = match f {
            ABORT_TASK => {
                let rtt = h.w20.get();
                // A task already answered no longer exists: the initiator
                // has its response, so the abort did nothing.
                if abort_in_session(&s, |itt, _| itt == rtt, Fate::Silent, &drain) > 0 { COMPLETE } else { NO_TASK }
            }
            ABORT_TASK_SET | CLEAR_TASK_SET => match lun {
                Some(l) if s.port(l).is_some() => {
                    abort_in_session(&s, |_, cl| cl == l, Fate::Silent, &drain);
                    COMPLETE
                }
                _ => NO_LUN,
            },
            LUN_RESET => match lun.and_then(|l| s.port(l).map(|p| (l, p))) {
                Some((l, p)) => {
                    // SAM-5: every task of every initiator on the LU, and
                    // a unit attention for every I_T nexus, this one too.
                    abort_in_session(&s, |_, cl| cl == l, Fate::Silent, &drain);
                    abort_other_sessions(&s, Some(l), &drain);
                    p.lun().reset(None);
                    COMPLETE
                }
                None => NO_LUN,
            },
            TARGET_WARM_RESET => {
                abort_in_session(&s, |_, _| true, Fate::Silent, &drain);
                abort_other_sessions(&s, None, &drain);
                if let Some(dev) = &s.device {
                    for l in dev.luns() {
                        l.reset(None);
                    }
                }
                COMPLETE
            }
            TARGET_COLD_RESET => {
                // Refused, as LIO and SPDK refuse it (RFC 7143 11.6.1:
                // authorization failed). A power-on would end every
                // initiator's sessions and drop every reservation: any
                // initiator logged in to the target, one fenced off by a
                // PREEMPT included, could undo its fencing.
                pollux_core::log_fault!(self.faults, "iscsi: {}: TARGET COLD RESET refused", self.ep.peer);
                AUTHORIZATION_FAILED
            }
            CLEAR_ACA => NOT_SUPPORTED,
            TASK_REASSIGN => REASSIGN_UNSUPPORTED,
            _ => REJECTED,
        };
        drain.finish(result);
        Ok(true)
    }

    /// Abort this connection's tasks matching `pred(itt, lun)`: those
    /// waiting for Data-Out end now (silently, or with TASK ABORTED), those
    /// executing get `fate` and hold `drain` until they finish. Returns how
    /// many tasks were affected.
    pub(super) fn abort_where(self: &Rc<Self>, pred: &impl Fn(u32, u64) -> bool, fate: Fate, drain: &Arc<Drain>) -> usize {
        let mut n = 0;
        let waiting: Vec<Box<IscsiCmd>> = {
            let mut st = self.st.borrow_mut();
            for (itt, e) in st.inflight.iter_mut() {
                if e.fate == Fate::Answer && pred(*itt, e.lun) {
                    e.fate = fate;
                    drain.hold();
                    e.drains.push(drain.clone());
                    n += 1;
                }
            }
            let keys: Vec<u32> = st.writes.iter().filter(|(itt, c)| pred(**itt, c.lun)).map(|(i, _)| *i).collect();
            keys.into_iter().filter_map(|k| st.writes.remove(&k)).collect()
        };
        n += waiting.len();
        for c in waiting {
            match fate {
                Fate::TaskAborted => self.end_with_status(c, status::TASK_ABORTED),
                _ => {
                    if let Some(s) = self.session() {
                        s.outstanding.set(s.outstanding.get().saturating_sub(1));
                    }
                    self.recycle(c);
                }
            }
        }
        n
    }
}
