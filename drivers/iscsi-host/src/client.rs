//! A plain, blocking API for programs that want iSCSI without Pollux's
//! daemon, in the shape of go-iscsi's: discover the targets behind a
//! portal, log in, use the LUN.
//!
//! ```no_run
//! use pollux_iscsi_host::client::Initiator;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let init = Initiator::start("iqn.2026-12.com.example:host1")?;
//! for t in init.discover("iscsi://192.0.2.10")? {
//!     println!("{} at {:?}", t.name, t.addresses);
//! }
//! let lun = init.login("iscsi://192.0.2.10/iqn.2016-06.io.spdk:disk1/0")?;
//! let info = lun.info();
//! println!("{} {}: {} blocks of {} bytes", info.vendor, info.product, info.num_blocks(), info.block_size());
//! let data = vec![0x5a; 8 * info.block_size() as usize];
//! lun.write(0, &data)?;
//! assert_eq!(lun.read(0, 8)?, data);
//! println!("LUNs of the target: {:?}", lun.report_luns()?);
//! lun.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! Underneath it is the initiator the daemon uses ([`crate::session`]),
//! on a one-reactor Pollux application on a thread of its own
//! ([`Background`]); each call is a message to that reactor. One
//! [`Initiator`] per process at a time: the reactor runtime is the
//! process's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use pollux_core::app::{Background, Reply};
use pollux_core::reactor;

use crate::IscsiError;
use crate::bdev::{LunInfo, probe, session_config};
use crate::login::{DiscoveredTarget, parse_send_targets};
use crate::scsi;
use crate::session::{ScsiResult, Session, SessionConfig};
use crate::url::IscsiUrl;

/// The reactor's side: open sessions by number.
#[derive(Default)]
struct Local {
    sessions: RefCell<HashMap<u64, Rc<Session>>>,
    next: std::cell::Cell<u64>,
}

fn local() -> Rc<Local> {
    match reactor::local::<Local>() {
        Some(l) => l,
        None => {
            let l = Rc::new(Local::default());
            reactor::set_local(l.clone());
            l
        }
    }
}

/// An initiator: its name, and the reactor its sessions run on.
pub struct Initiator {
    rt: Background,
    name: String,
    timeout: Duration,
}

/// A logged-in LUN.
pub struct Lun<'a> {
    init: &'a Initiator,
    id: u64,
    lun: u16,
    info: LunInfo,
}

impl Initiator {
    /// Start an initiator named `iqn`.
    pub fn start(iqn: &str) -> Result<Initiator, IscsiError> {
        if iqn.is_empty() || iqn.len() > 223 {
            return Err(IscsiError::Invalid("an initiator name has 1 to 223 bytes".into()));
        }
        let rt = Background::start("pollux-iscsi-client", |_| {}).map_err(IscsiError::Transport)?;
        Ok(Initiator { rt, name: iqn.to_string(), timeout: Duration::from_secs(30) })
    }

    /// Each command's timeout, and how long logins may take (30 s unless set).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(Reply<Result<T, IscsiError>>) + Send + 'static) -> Result<T, IscsiError> {
        self.rt.call(f).unwrap_or(Err(IscsiError::Transport("the initiator's reactor has ended".into())))
    }

    fn config(&self, url: &IscsiUrl) -> Result<SessionConfig, IscsiError> {
        let mut cfg = session_config(url, &self.name, self.timeout)?;
        cfg.reconnect = false;
        Ok(cfg)
    }

    /// The targets behind a portal (`iscsi://[user[%password]@]host[:port]`):
    /// a discovery session's SendTargets=All, then logout.
    pub fn discover(&self, portal: &str) -> Result<Vec<DiscoveredTarget>, IscsiError> {
        let mut url = IscsiUrl::parse_any(portal)?;
        url.target = None;
        let cfg = self.config(&url)?;
        self.call(move |reply| {
            let slot: Rc<RefCell<Option<Rc<Session>>>> = Rc::default();
            let s2 = slot.clone();
            let reply = Rc::new(RefCell::new(Some(reply)));
            let r2 = reply.clone();
            let answer = move |r: Result<Vec<DiscoveredTarget>, IscsiError>| {
                if let Some(f) = r2.borrow_mut().take() {
                    f(r)
                }
            };
            let answer = Rc::new(answer);
            let a2 = answer.clone();
            let started = Session::start(cfg, move |r| {
                let Some(s) = s2.borrow_mut().take() else { return };
                if let Err(e) = r {
                    return a2(Err(e));
                }
                let mut keys = Vec::new();
                pollux_iscsi_spec::text::push(&mut keys, "SendTargets", "All");
                let s3 = s.clone();
                s.text(
                    keys,
                    Box::new(move |r| {
                        let r = r.and_then(|t| parse_send_targets(&t));
                        let s4 = s3.clone();
                        s3.close(move || drop(s4));
                        a2(r)
                    }),
                );
            });
            match started {
                Ok(s) => *slot.borrow_mut() = Some(s),
                Err(e) => answer(Err(e)),
            }
        })
    }

    /// Log in to a LUN (`iscsi://[user[%password]@]host[:port]/IQN/LUN`)
    /// and learn what it is.
    pub fn login(&self, url: &str) -> Result<Lun<'_>, IscsiError> {
        let url = IscsiUrl::parse(url)?;
        let cfg = self.config(&url)?;
        let lun = cfg.lun;
        let (id, info) = self.call(move |reply| {
            let l = local();
            let id = l.next.get() + 1;
            l.next.set(id);
            let reply = Rc::new(RefCell::new(Some(reply)));
            let r2 = reply.clone();
            let answer = Rc::new(move |r: Result<(u64, LunInfo), IscsiError>| {
                if let Some(f) = r2.borrow_mut().take() {
                    f(r)
                }
            });
            let a2 = answer.clone();
            let started = Session::start(cfg, move |r| {
                let l = local();
                let Some(s) = l.sessions.borrow().get(&id).cloned() else { return };
                match r {
                    Err(e) => {
                        l.sessions.borrow_mut().remove(&id);
                        a2(Err(e))
                    }
                    Ok(_) => probe(&s, lun, move |r| {
                        if r.is_err() {
                            if let Some(s) = local().sessions.borrow_mut().remove(&id) {
                                let s2 = s.clone();
                                s.close(move || drop(s2));
                            }
                        }
                        a2(r.map(|info| (id, info)))
                    }),
                }
            });
            match started {
                Ok(s) => {
                    l.sessions.borrow_mut().insert(id, s);
                }
                Err(e) => answer(Err(e)),
            }
        })?;
        Ok(Lun { init: self, id, lun, info })
    }

    /// Stop the initiator's reactor (sessions still open are closed first).
    pub fn stop(mut self) {
        let _ = self.call(|reply: Reply<Result<(), IscsiError>>| {
            let all: Vec<Rc<Session>> = local().sessions.borrow_mut().drain().map(|(_, s)| s).collect();
            close_all(all, reply);
        });
        self.rt.stop();
    }
}

/// A block read or write that left a residual (GOOD status, some bytes
/// not moved) did not do what it was asked.
fn short(residual: u32, len: usize, what: &str) -> Result<(), IscsiError> {
    if residual == 0 {
        return Ok(());
    }
    Err(IscsiError::Scsi(format!("short {what}: {residual} of {len} bytes not transferred")))
}

/// Log out of every session, then reply.
fn close_all(mut all: Vec<Rc<Session>>, reply: Reply<Result<(), IscsiError>>) {
    match all.pop() {
        None => reply(Ok(())),
        Some(s) => {
            let s2 = s.clone();
            s.close(move || {
                drop(s2);
                close_all(all, reply)
            })
        }
    }
}

impl Lun<'_> {
    /// What the LUN is (INQUIRY and READ CAPACITY at login).
    pub fn info(&self) -> &LunInfo {
        &self.info
    }

    /// Run a SCSI command on this LUN (or `lun` of the same target):
    /// `data_out` sent, or `read_len` bytes read. The status is the target's.
    pub fn command(&self, lun: u16, cdb: scsi::Cdb, data_out: Vec<u8>, read_len: u32) -> Result<ScsiResult, IscsiError> {
        let id = self.id;
        self.init.call(move |reply| match local().sessions.borrow().get(&id) {
            Some(s) => s.command_lun(lun, cdb, data_out, read_len, reply),
            None => reply(Err(IscsiError::Closed)),
        })
    }

    fn check(&self, lba: u64, blocks: u64) -> Result<usize, IscsiError> {
        let bs = self.info.block_size() as usize;
        let n = self.info.num_blocks();
        if blocks == 0 || blocks > (1 << 24) / bs as u64 || lba.checked_add(blocks).is_none_or(|e| e > n) {
            return Err(IscsiError::Invalid(format!("{blocks} blocks at {lba}: 1 block to 16 MiB within the LUN's {n} blocks")));
        }
        Ok(bs * blocks as usize)
    }

    /// Read `blocks` blocks from block `lba`.
    pub fn read(&self, lba: u64, blocks: u64) -> Result<Vec<u8>, IscsiError> {
        let len = self.check(lba, blocks)?;
        let r = self.command(self.lun, scsi::read(lba, blocks as u32), Vec::new(), len as u32)?.ok()?;
        short(r.residual, len, "read")?;
        Ok(r.data)
    }

    /// Write `data` (whole blocks) from block `lba`.
    pub fn write(&self, lba: u64, data: &[u8]) -> Result<(), IscsiError> {
        let bs = self.info.block_size() as usize;
        if data.is_empty() || data.len() % bs != 0 {
            return Err(IscsiError::Invalid(format!("{} bytes are not whole {bs}-byte blocks", data.len())));
        }
        let blocks = (data.len() / bs) as u64;
        self.check(lba, blocks)?;
        let r = self.command(self.lun, scsi::write(lba, blocks as u32, false), data.to_vec(), 0)?.ok()?;
        short(r.residual, data.len(), "write")
    }

    /// SYNCHRONIZE CACHE of the whole LUN.
    pub fn flush(&self) -> Result<(), IscsiError> {
        self.command(self.lun, scsi::synchronize_cache(0, 0), Vec::new(), 0)?.ok().map(|_| ())
    }

    /// The target's LUNs (REPORT LUNS), by number.
    pub fn report_luns(&self) -> Result<Vec<u16>, IscsiError> {
        let r = self.command(self.lun, scsi::report_luns(16 + 8 * 1024), Vec::new(), 16 + 8 * 1024)?.ok()?;
        let luns = scsi::parse_report_luns(&r.data).map_err(|e| IscsiError::Scsi(e.to_string()))?;
        Ok(luns.iter().filter_map(scsi::decode_lun).collect())
    }

    /// What LUN `lun` of the same target is.
    pub fn probe_lun(&self, lun: u16) -> Result<LunInfo, IscsiError> {
        let id = self.id;
        self.init.call(move |reply| match local().sessions.borrow().get(&id).cloned() {
            Some(s) => probe(&s, lun, reply),
            None => reply(Err(IscsiError::Closed)),
        })
    }

    /// Log out.
    pub fn close(self) -> Result<(), IscsiError> {
        let id = self.id;
        self.init.call(move |reply| match local().sessions.borrow_mut().remove(&id) {
            Some(s) => {
                let s2 = s.clone();
                s.close(move || {
                    drop(s2);
                    reply(Ok(()))
                })
            }
            None => reply(Ok(())),
        })
    }
}
