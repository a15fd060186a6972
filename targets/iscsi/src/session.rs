//! Sessions: the I_T nexus of an initiator and a target node, its command
//! window (CmdSN/ExpCmdSN/MaxCmdSN) and its connections.
//!
//! A session lives on one reactor, with all its connections (a connection
//! that joins a session logged in elsewhere is handed over to the session's
//! reactor before its login is answered). The process-wide registry below
//! only maps TSIHs to reactors and identities, for logins, reinstatement
//! and RPCs; it is touched at login and logout, never per command.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

use pollux_core::reactor::ReactorId;
use pollux_scsi::{Device, LunPort, Nexus};

use crate::conn::Conn;
use crate::login::{Params, SessionType};

/// Registry entry of a session.
#[derive(Clone, Debug)]
pub struct Entry {
    pub reactor: ReactorId,
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: Option<String>,
    pub kind: SessionType,
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<u16, Entry>,
    next: u16,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// Reserve a TSIH for a new session; `None` when `max` sessions exist.
pub fn register(e: Entry, max: u32) -> Option<u16> {
    with_registry(|r| {
        if r.sessions.len() >= max as usize {
            return None;
        }
        loop {
            r.next = r.next.wrapping_add(1);
            if r.next != 0 && !r.sessions.contains_key(&r.next) {
                break;
            }
        }
        r.sessions.insert(r.next, e);
        Some(r.next)
    })
}

pub fn unregister(tsih: u16) {
    with_registry(|r| r.sessions.remove(&tsih));
}

pub fn lookup(tsih: u16) -> Option<Entry> {
    with_registry(|r| r.sessions.get(&tsih).cloned())
}

/// Sessions of the same initiator port to the same target (to reinstate).
pub fn find_same(initiator: &str, isid: &[u8; 6], target: Option<&str>) -> Vec<(u16, Entry)> {
    with_registry(|r| {
        r.sessions
            .iter()
            .filter(|(_, e)| e.initiator.eq_ignore_ascii_case(initiator) && &e.isid == isid && e.target.as_deref() == target)
            .map(|(t, e)| (*t, e.clone()))
            .collect()
    })
}

/// All sessions of a target.
pub fn of_target(target: &str) -> Vec<(u16, Entry)> {
    with_registry(|r| r.sessions.iter().filter(|(_, e)| e.target.as_deref() == Some(target)).map(|(t, e)| (*t, e.clone())).collect())
}

/// One session, on its reactor.
pub struct Session {
    pub tsih: u16,
    pub kind: SessionType,
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: Option<String>,
    pub device: Option<Arc<Device>>,
    pub nexus: Option<Arc<Nexus>>,
    pub params: Params,
    pub queue_depth: u32,
    pub exp_cmd_sn: Cell<u32>,
    pub max_cmd_sn: Cell<u32>,
    /// CmdSNs taken ahead of ExpCmdSN: with several connections a later
    /// command can arrive before an earlier one sent on another
    /// connection; ExpCmdSN waits for the gap (room for the window,
    /// reserved at login).
    pub ahead: RefCell<Vec<u32>>,
    /// Commands received and not yet answered.
    pub outstanding: Cell<u32>,
    pub conns: RefCell<Vec<Weak<Conn>>>,
    ports: RefCell<Vec<(u64, Rc<LunPort>)>>,
    ports_generation: Cell<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("tsih", &self.tsih).field("initiator", &self.initiator).finish()
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tsih: u16,
        kind: SessionType,
        initiator: String,
        isid: [u8; 6],
        target: Option<String>,
        device: Option<Arc<Device>>,
        portal_group: i32,
        params: Params,
        queue_depth: u32,
        cmd_sn: u32,
    ) -> Rc<Session> {
        let nexus = target.as_ref().map(|t| {
            let isid_hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
            let port = format!("{initiator},i,0x{isid_hex}");
            let tport = format!("{t},t,0x{:04x}", portal_group as u16);
            Nexus::new(&initiator, &port, &tport, portal_group as u16)
        });
        Rc::new(Session {
            tsih,
            kind,
            initiator,
            isid,
            target,
            device,
            nexus,
            params,
            queue_depth: queue_depth.max(1),
            exp_cmd_sn: Cell::new(cmd_sn),
            max_cmd_sn: Cell::new(cmd_sn.wrapping_add(queue_depth.max(1) - 1)),
            ahead: RefCell::new(Vec::with_capacity(queue_depth.max(1) as usize)),
            outstanding: Cell::new(0),
            conns: RefCell::new(Vec::new()),
            ports: RefCell::new(Vec::new()),
            ports_generation: Cell::new(u64::MAX),
        })
    }

    /// The port to LUN `lun`, created on first use; `None` if no LU.
    pub fn port(&self, lun: u64) -> Option<Rc<LunPort>> {
        let dev = self.device.as_ref()?;
        let generation = dev.generation();
        if generation != self.ports_generation.get() {
            // The LU set changed: drop ports of removed LUs.
            self.ports.borrow_mut().retain(|(_, p)| !p.lun().is_removed());
            self.ports_generation.set(generation);
        }
        if let Some((_, p)) = self.ports.borrow().iter().find(|(id, _)| *id == lun) {
            return Some(p.clone());
        }
        let l = dev.lun(lun)?;
        let p = LunPort::new(l, self.nexus.clone()?);
        self.ports.borrow_mut().push((lun, p.clone()));
        Some(p)
    }

    /// All ports opened so far (for resets).
    pub fn ports(&self) -> Vec<Rc<LunPort>> {
        self.ports.borrow().iter().map(|(_, p)| p.clone()).collect()
    }

    /// Release the LUs (session end).
    pub fn close_ports(&self) {
        self.ports.borrow_mut().clear();
    }

    /// Serial-number comparison (RFC 1982, 32 bits): a < b.
    pub fn sn_lt(a: u32, b: u32) -> bool {
        a != b && b.wrapping_sub(a) < (1 << 31)
    }

    /// Recompute MaxCmdSN from the free queue slots; it never goes back.
    /// Open the command window as far as the queue depth allows: MaxCmdSN
    /// is ExpCmdSN plus the free slots, minus one (so with none free it is
    /// ExpCmdSN - 1, a closed window, as RFC 7143 4.2.2.1 allows). It never
    /// moves back.
    pub fn update_window(&self) {
        let free = self.queue_depth.saturating_sub(self.outstanding.get());
        let want = self.exp_cmd_sn.get().wrapping_add(free).wrapping_sub(1);
        if Session::sn_lt(self.max_cmd_sn.get(), want) {
            self.max_cmd_sn.set(want);
        }
    }

    pub fn live_conns(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().iter().filter_map(Weak::upgrade).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_wrap() {
        assert!(Session::sn_lt(1, 2));
        assert!(Session::sn_lt(u32::MAX, 0));
        assert!(!Session::sn_lt(2, 1));
        assert!(!Session::sn_lt(5, 5));
    }

    #[test]
    fn the_command_window_closes_at_the_queue_depth() {
        let s = Session::new(1, SessionType::Discovery, "iqn.i".into(), [0; 6], None, None, 1, crate::login::Params::defaults(), 2, 10);
        assert_eq!((s.exp_cmd_sn.get(), s.max_cmd_sn.get()), (10, 11), "two slots");
        // Two commands in progress: ExpCmdSN moves on, MaxCmdSN does not.
        s.exp_cmd_sn.set(12);
        s.outstanding.set(2);
        s.update_window();
        assert_eq!(s.max_cmd_sn.get(), 11, "closed: MaxCmdSN is ExpCmdSN - 1");
        // One finishes: one slot again.
        s.outstanding.set(1);
        s.update_window();
        assert_eq!(s.max_cmd_sn.get(), 12);
    }

    #[test]
    fn registry_hands_out_unique_tsihs_up_to_the_limit() {
        let e = Entry {
            reactor: ReactorId(0),
            initiator: "iqn.t".into(),
            isid: [1; 6],
            target: Some("iqn.x".into()),
            kind: SessionType::Normal,
        };
        let a = register(e.clone(), 1 << 20).unwrap();
        let b = register(e.clone(), 1 << 20).unwrap();
        assert_ne!(a, b);
        assert_eq!(find_same("IQN.T", &[1; 6], Some("iqn.x")).len(), 2);
        unregister(a);
        unregister(b);
        assert!(lookup(a).is_none());
    }
}
