//! Commands, bytes, digest errors and login failures per target node and
//! portal (`iscsi_get_target_stats`, the metrics endpoint's
//! `pollux_iscsi_*` families, pollux-top's per-connection rates).
//!
//! Each connection counts into its own cells (plain increments, nothing
//! shared on the I/O path); when it closes its counts are folded into its
//! reactor's totals for its (target, portal), so what is reported only
//! grows. A report sums every reactor's totals and live connections.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;

use pollux_core::reactor;
use serde_json::{Value, json};

/// A connection's own counts.
#[derive(Debug, Default)]
pub struct ConnCounts {
    commands: Cell<u64>,
    errors: Cell<u64>,
    read_bytes: Cell<u64>,
    written_bytes: Cell<u64>,
    digest_errors: Cell<u64>,
}

impl ConnCounts {
    /// A SCSI command answered (`good`: GOOD status), having sent `read`
    /// bytes of Data-In and received `written` bytes of data.
    #[inline]
    pub fn command(&self, good: bool, read: u64, written: u64) {
        self.commands.set(self.commands.get() + 1);
        self.errors.set(self.errors.get() + u64::from(!good));
        self.read_bytes.set(self.read_bytes.get() + read);
        self.written_bytes.set(self.written_bytes.get() + written);
    }

    /// A header or data digest did not match.
    pub fn digest_error(&self) {
        self.digest_errors.set(self.digest_errors.get() + 1);
    }

    pub fn get(&self) -> Counts {
        Counts {
            commands: self.commands.get(),
            errors: self.errors.get(),
            read_bytes: self.read_bytes.get(),
            written_bytes: self.written_bytes.get(),
            digest_errors: self.digest_errors.get(),
        }
    }
}

/// Counts as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub commands: u64,
    pub errors: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub digest_errors: u64,
}

impl Counts {
    pub fn add(&mut self, c: &Counts) {
        self.commands += c.commands;
        self.errors += c.errors;
        self.read_bytes += c.read_bytes;
        self.written_bytes += c.written_bytes;
        self.digest_errors += c.digest_errors;
    }
}

/// Where a connection came in: its target node ("" for discovery
/// sessions and logins that named none), the portal group and the local
/// address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub target: String,
    pub portal_group: i32,
    pub portal: SocketAddr,
}

/// Why a login failed, from its status (RFC 7143 11.13.5), or a timeout.
pub fn login_failure_reason(status: (u8, u8)) -> &'static str {
    match status {
        (2, 1) => "authentication_failed",
        (2, 2) => "not_authorized",
        (2, 3) => "target_not_found",
        (2, 4) => "target_removed",
        (2, 5) => "unsupported_version",
        (2, 6) => "too_many_connections",
        (2, 7) => "missing_parameter",
        (2, 8) => "cannot_include_in_session",
        (2, 9) => "session_type_not_supported",
        (2, 10) => "session_does_not_exist",
        (2, 11) => "invalid_during_login",
        (2, _) => "initiator_error",
        (3, 1) => "service_unavailable",
        (3, 2) => "out_of_resources",
        (1, _) => "redirected",
        _ => "target_error",
    }
}

/// One reactor's view: totals of closed connections, login failures, and
/// (filled in by the snapshot) live connections.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub totals: BTreeMap<Place, Counts>,
    /// Live connections per place.
    pub connections: BTreeMap<Place, u64>,
    /// Live sessions per target: (initiator name, ISID, TSIH) each.
    pub sessions: BTreeMap<String, BTreeSet<(String, [u8; 6], u16)>>,
    pub login_failures: BTreeMap<(Place, &'static str), u64>,
}

#[derive(Default)]
struct Table {
    totals: RefCell<BTreeMap<Place, Counts>>,
    login_failures: RefCell<BTreeMap<(Place, &'static str), u64>>,
}

fn table() -> Rc<Table> {
    reactor::local::<Table>().unwrap_or_else(|| {
        let t = Rc::new(Table::default());
        reactor::set_local(t.clone());
        t
    })
}

/// A closed connection's counts join its place's totals.
pub fn fold(place: Place, c: &ConnCounts) {
    let c = c.get();
    if c != Counts::default() {
        table().totals.borrow_mut().entry(place).or_default().add(&c);
    }
}

/// A login was refused or timed out.
pub fn login_failed(place: Place, reason: &'static str) {
    *table().login_failures.borrow_mut().entry((place, reason)).or_default() += 1;
}

/// This reactor's totals and login failures (the live connections are
/// the connection group's to add).
pub fn base_snapshot() -> Snapshot {
    let t = table();
    Snapshot { totals: t.totals.borrow().clone(), login_failures: t.login_failures.borrow().clone(), ..Snapshot::default() }
}

/// Every reactor's snapshot summed, as `iscsi_get_target_stats` answers.
pub fn report(all: Vec<Snapshot>) -> Value {
    let mut totals: BTreeMap<Place, Counts> = BTreeMap::new();
    let mut conns: BTreeMap<Place, u64> = BTreeMap::new();
    let mut sessions: BTreeMap<String, BTreeSet<(String, [u8; 6], u16)>> = BTreeMap::new();
    let mut failures: BTreeMap<(Place, &'static str), u64> = BTreeMap::new();
    for s in all {
        for (p, c) in s.totals {
            totals.entry(p).or_default().add(&c);
        }
        for (p, n) in s.connections {
            totals.entry(p.clone()).or_default();
            *conns.entry(p).or_default() += n;
        }
        for (t, set) in s.sessions {
            sessions.entry(t).or_default().extend(set);
        }
        for (k, n) in s.login_failures {
            *failures.entry(k).or_default() += n;
        }
    }
    let portals: Vec<Value> = totals
        .iter()
        .map(|(p, c)| {
            json!({
                "target_node_name": p.target,
                "portal_group": p.portal_group,
                "portal": p.portal.to_string(),
                "connections": conns.get(p).copied().unwrap_or(0),
                "completed_commands": c.commands,
                "failed_commands": c.errors,
                "bytes_read": c.read_bytes,
                "bytes_written": c.written_bytes,
                "digest_errors": c.digest_errors,
            })
        })
        .collect();
    let sessions: Vec<Value> = sessions.into_iter().map(|(t, s)| json!({"target_node_name": t, "sessions": s.len()})).collect();
    let failures: Vec<Value> = failures
        .into_iter()
        .map(|((p, reason), n)| {
            json!({
                "target_node_name": p.target,
                "portal_group": p.portal_group,
                "portal": p.portal.to_string(),
                "reason": reason,
                "count": n,
            })
        })
        .collect();
    json!({"portals": portals, "sessions": sessions, "login_failures": failures})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_fold_closed_connections_and_reports_sum_reactors() {
        let h = reactor::Harness::new(1);
        h.on(0, || {
            let place = Place { target: "iqn.t".into(), portal_group: 1, portal: "127.0.0.1:3260".parse().unwrap() };
            let c = ConnCounts::default();
            c.command(true, 4096, 0);
            c.command(false, 0, 512);
            c.digest_error();
            fold(place.clone(), &c);
            login_failed(place.clone(), login_failure_reason((2, 1)));
            let mut live = base_snapshot();
            live.connections.insert(place.clone(), 2);
            live.sessions.entry("iqn.t".into()).or_default().insert(("iqn.i".into(), [0; 6], 1));
            let r = report(vec![live.clone(), live]);
            let p = &r["portals"][0];
            assert_eq!(p["connections"], 4);
            assert_eq!(p["completed_commands"], 4);
            assert_eq!(p["failed_commands"], 2);
            assert_eq!(p["bytes_read"], 8192);
            assert_eq!(p["bytes_written"], 1024);
            assert_eq!(p["digest_errors"], 2);
            assert_eq!(r["sessions"][0]["sessions"], 1, "one session seen twice");
            assert_eq!(r["login_failures"][0]["reason"], "authentication_failed");
            assert_eq!(r["login_failures"][0]["count"], 2);
        });
    }

    #[test]
    fn every_status_class_has_a_reason() {
        assert_eq!(login_failure_reason((2, 2)), "not_authorized");
        assert_eq!(login_failure_reason((2, 0x42)), "initiator_error");
        assert_eq!(login_failure_reason((3, 0)), "target_error");
        assert_eq!(login_failure_reason((3, 2)), "out_of_resources");
    }
}
