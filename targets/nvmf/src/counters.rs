//! Commands, errors and queue pairs per subsystem and listener
//! (`nvmf_get_listener_stats`, the metrics endpoint's
//! `pollux_nvmf_listener_*` families).
//!
//! Each reactor keeps its own table; a queue pair takes its row once, at
//! Connect, and counts into it with plain cell increments (no lock, no
//! lookup, no atomic on the I/O path). Rows outlive their queue pairs, so
//! the counts only grow; a report sums every reactor's rows.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use pollux_core::reactor;

use crate::io::DataDir;
use crate::transport::Endpoint;

/// Counts of one (subsystem, listener) on one reactor, or of one queue
/// pair.
#[derive(Debug, Default)]
struct Cells {
    commands: Cell<u64>,
    errors: Cell<u64>,
    read_bytes: Cell<u64>,
    written_bytes: Cell<u64>,
    qpairs: Cell<u64>,
}

impl Cells {
    #[inline]
    fn add(&self, ok: bool, read: u64, written: u64) {
        self.commands.set(self.commands.get() + 1);
        self.errors.set(self.errors.get() + u64::from(!ok));
        self.read_bytes.set(self.read_bytes.get() + read);
        self.written_bytes.set(self.written_bytes.get() + written);
    }

    fn get(&self) -> Counts {
        Counts {
            commands: self.commands.get(),
            errors: self.errors.get(),
            read_bytes: self.read_bytes.get(),
            written_bytes: self.written_bytes.get(),
            qpairs: self.qpairs.get(),
        }
    }
}

/// What identifies a queue pair in `nvmf_subsystem_get_qpairs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpairId {
    pub subsystem_id: u32,
    pub cntlid: u16,
    pub qid: u16,
    pub ep: Endpoint,
    pub peer: Option<SocketAddr>,
}

struct Qpair {
    id: QpairId,
    cells: Cells,
}

/// A queue pair's place in the counters: counts its commands into its
/// own cells and its (subsystem, listener) row, is listed by
/// [`qpairs`], and is one of the row's queue pairs until dropped.
pub struct Counted {
    row: Rc<Cells>,
    own: Rc<Qpair>,
    key: u64,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("qpair", &self.own.id).finish()
    }
}

impl Counted {
    /// Count a queue pair connected through `id.ep`, on this reactor.
    pub fn new(id: QpairId) -> Counted {
        let t = table();
        let row = t.rows.borrow_mut().entry((id.subsystem_id, id.ep)).or_default().clone();
        row.qpairs.set(row.qpairs.get() + 1);
        let key = t.next.get();
        t.next.set(key + 1);
        let own = Rc::new(Qpair { id, cells: Cells::default() });
        t.qpairs.borrow_mut().insert(key, own.clone());
        Counted { row, own, key }
    }

    /// A command completed (`ok`: with a successful status), having moved
    /// `read` bytes to the host and `written` from it.
    #[inline]
    pub fn complete(&self, ok: bool, read: u64, written: u64) {
        self.row.add(ok, read, written);
        self.own.cells.add(ok, read, written);
    }

    /// A command with a transfer of `len` bytes in direction `dir`
    /// completed: read data count once sent (success), written data as
    /// received.
    #[inline]
    pub fn command(&self, ok: bool, dir: DataDir, len: u32) {
        let len = u64::from(len);
        match dir {
            DataDir::ControllerToHost if ok => self.complete(ok, len, 0),
            DataDir::HostToController => self.complete(ok, 0, len),
            _ => self.complete(ok, 0, 0),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.row.qpairs.set(self.row.qpairs.get().saturating_sub(1));
        table().qpairs.borrow_mut().remove(&self.key);
    }
}

#[derive(Default)]
struct Table {
    rows: RefCell<HashMap<(u32, Endpoint), Rc<Cells>>>,
    qpairs: RefCell<HashMap<u64, Rc<Qpair>>>,
    next: Cell<u64>,
}

fn table() -> Rc<Table> {
    reactor::local::<Table>().unwrap_or_else(|| {
        let t = Rc::new(Table::default());
        reactor::set_local(t.clone());
        t
    })
}

/// Counts as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub commands: u64,
    pub errors: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Queue pairs now (rows; 1 for a queue pair).
    pub qpairs: u64,
}

impl Counts {
    fn add(&mut self, c: &Counts) {
        self.commands += c.commands;
        self.errors += c.errors;
        self.read_bytes += c.read_bytes;
        self.written_bytes += c.written_bytes;
        self.qpairs += c.qpairs;
    }
}

/// This reactor's rows.
pub fn snapshot() -> Vec<((u32, Endpoint), Counts)> {
    table().rows.borrow().iter().map(|(k, r)| (*k, r.get())).collect()
}

/// Rows of every reactor, summed per (subsystem, listener).
pub fn sum(per_reactor: Vec<Vec<((u32, Endpoint), Counts)>>) -> HashMap<(u32, Endpoint), Counts> {
    let mut all: HashMap<(u32, Endpoint), Counts> = HashMap::new();
    for (k, c) in per_reactor.into_iter().flatten() {
        all.entry(k).or_default().add(&c);
    }
    all
}

/// Drop this reactor's rows of a deleted subsystem (its queue pairs are
/// closed with it): the table stays as large as the subsystems there are.
pub fn forget(subsystem_id: u32) {
    table().rows.borrow_mut().retain(|(id, _), _| *id != subsystem_id);
}

/// This reactor's queue pairs of subsystem `subsystem_id`, with their
/// counts.
pub fn qpairs(subsystem_id: u32) -> Vec<(QpairId, Counts)> {
    let t = table();
    let q = t.qpairs.borrow();
    let mut v: Vec<(u64, QpairId, Counts)> =
        q.iter().filter(|(_, q)| q.id.subsystem_id == subsystem_id).map(|(k, q)| (*k, q.id, q.cells.get())).collect();
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|(_, id, c)| (id, Counts { qpairs: 1, ..c })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportKind;

    #[test]
    fn rows_count_and_outlive_their_queue_pairs() {
        let h = pollux_core::reactor::Harness::new(1);
        h.on(0, check);
    }

    fn check() {
        let ep = Endpoint { kind: TransportKind::Tcp, addr: "127.0.0.1:4420".parse().unwrap() };
        let id = |qid| QpairId { subsystem_id: 7, cntlid: 1, qid, ep, peer: None };
        let a = Counted::new(id(0));
        let b = Counted::new(id(1));
        a.complete(true, 0, 0);
        b.complete(false, 0, 0);
        b.complete(true, 4096, 0);
        let row = |s: Vec<((u32, Endpoint), Counts)>| s.into_iter().find(|(k, _)| *k == (7, ep)).map(|(_, c)| c);
        let c = |commands, errors, read_bytes, qpairs| Counts { commands, errors, read_bytes, written_bytes: 0, qpairs };
        assert_eq!(row(snapshot()), Some(c(3, 1, 4096, 2)));
        assert_eq!(qpairs(7), vec![(id(0), c(1, 0, 0, 1)), (id(1), c(2, 1, 4096, 1))]);
        assert!(qpairs(8).is_empty());
        drop(a);
        drop(b);
        assert_eq!(row(snapshot()), Some(c(3, 1, 4096, 0)), "rows outlive their queue pairs");
        assert!(qpairs(7).is_empty());
        let summed = sum(vec![snapshot(), snapshot()]);
        assert_eq!(summed[&(7, ep)], c(6, 2, 8192, 0));
        forget(7);
        assert_eq!(row(snapshot()), None, "but not their subsystem");
    }
}
