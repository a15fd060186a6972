//! NVMe reservations (NVMe Base 2.0, 8.19) on a namespace, as SPDK's
//! target keeps them: registrants by host identifier (the 128-bit one of
//! Connect), one holder (or every registrant, for the "all registrants"
//! types), a generation counter, Persist Through Power Loss in SPDK's
//! `ptpl_file` format, and the notifications each change owes other hosts.
//!
//! [`ResvState`] is the namespace's state on the main reactor; its
//! commands (Register, Acquire, Release) run there. Every reactor keeps an
//! `Arc` copy to check commands against ([`check`]) and to answer Report.

use std::path::Path;

use pollux_nvme_spec::cmd::io as op;
use serde::{Deserialize, Serialize};

use crate::status::{self, Status};

/// Reservation types (RTYPE).
pub mod rtype {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 2;
    pub const WRITE_EXCLUSIVE_REG_ONLY: u8 = 3;
    pub const EXCLUSIVE_ACCESS_REG_ONLY: u8 = 4;
    pub const WRITE_EXCLUSIVE_ALL_REGS: u8 = 5;
    pub const EXCLUSIVE_ACCESS_ALL_REGS: u8 = 6;
}

/// Reservation notification log page types.
pub mod notice {
    pub const REGISTRATION_PREEMPTED: u8 = 1;
    pub const RESERVATION_RELEASED: u8 = 2;
    pub const RESERVATION_PREEMPTED: u8 = 3;
}

/// Identify Namespace RESCAP: persist through power loss (bit 0, only
/// with a `ptpl_file`), the six types, and Ignore Existing Key (bit 7).
pub fn rescap(ptpl_capable: bool) -> u8 {
    0x7e | 0x80 | u8::from(ptpl_capable)
}

/// The most registrants a namespace keeps (as SPDK).
pub const MAX_REGISTRANTS: usize = 16;

/// Host Identifier Inconsistent Format: a Report without the extended data
/// structure, while host identifiers are 128 bits.
pub const HOSTID_INCONSISTENT_FORMAT: Status = Status::new(pollux_nvme_spec::status::StatusCodeType::Generic, 0x18);
pub const RESERVATION_CONFLICT: Status = Status::new(pollux_nvme_spec::status::StatusCodeType::Generic, 0x83);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registrant {
    pub hostid: [u8; 16],
    pub rkey: u64,
}

/// A namespace's reservation state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResvState {
    /// Reservation generation: counts Register and Preempt changes.
    pub generation: u32,
    /// 0: no reservation.
    pub rtype: u8,
    /// The holder's key (the reservation key).
    pub crkey: u64,
    /// The holder (for the "all registrants" types, the registrant that
    /// acquired it; every registrant holds it).
    pub holder: Option<[u8; 16]>,
    pub regs: Vec<Registrant>,
    /// Persist Through Power Loss is on.
    pub ptpl: bool,
}

/// Who must be told what after a command: (host, notification type).
pub type Notices = Vec<([u8; 16], u8)>;

/// What a command did: whether the state changed (to publish and persist)
/// and the notifications it owes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub changed: bool,
    pub notices: Notices,
}

fn all_regs(t: u8) -> bool {
    t == rtype::WRITE_EXCLUSIVE_ALL_REGS || t == rtype::EXCLUSIVE_ACCESS_ALL_REGS
}

impl ResvState {
    fn reg(&self, host: &[u8; 16]) -> Option<usize> {
        self.regs.iter().position(|r| r.hostid == *host)
    }

    pub fn is_registrant(&self, host: &[u8; 16]) -> bool {
        self.reg(host).is_some()
    }

    /// Whether `host` holds the reservation (any registrant does for the
    /// "all registrants" types).
    pub fn is_holder(&self, host: &[u8; 16]) -> bool {
        self.rtype != 0 && (self.holder.as_ref() == Some(host) || (all_regs(self.rtype) && self.is_registrant(host)))
    }

    fn others(&self, host: &[u8; 16]) -> Vec<[u8; 16]> {
        self.regs.iter().filter(|r| r.hostid != *host).map(|r| r.hostid).collect()
    }

    fn release_reservation(&mut self) {
        self.rtype = 0;
        self.crkey = 0;
        self.holder = None;
    }

    /// Remove a registrant; a holder that leaves releases the reservation
    /// (for the "all registrants" types only when it was the last one;
    /// another registrant then holds it).
    fn remove(&mut self, host: &[u8; 16]) {
        let Some(i) = self.reg(host) else { return };
        self.regs.remove(i);
        if self.holder.as_ref() == Some(host) {
            if all_regs(self.rtype) && !self.regs.is_empty() {
                self.holder = Some(self.regs[0].hostid);
            } else {
                self.release_reservation();
            }
        }
    }

    /// Reservation Register. `cptpl`: 0 no change, 2 clear PTPL, 3 set.
    pub fn register(
        &mut self,
        host: &[u8; 16],
        rrega: u8,
        iekey: bool,
        cptpl: u8,
        (crkey, nrkey): (u64, u64),
        ptpl_capable: bool,
    ) -> Result<Outcome, Status> {
        let mut out = Outcome::default();
        // Checked now, applied only once the action succeeds: a refused
        // Register changes nothing (it changed PTPL, unpersisted, unseen
        // by the other reactors).
        let ptpl = match cptpl {
            0 => None,
            2 => Some(false),
            3 if ptpl_capable => Some(true),
            _ => return Err(status::INVALID_FIELD),
        };
        let reg = self.reg(host);
        match rrega {
            // Register.
            0 => match reg {
                None => {
                    if nrkey == 0 {
                        return Err(status::INVALID_FIELD);
                    }
                    if self.regs.len() >= MAX_REGISTRANTS {
                        return Err(status::INTERNAL_ERROR);
                    }
                    self.regs.push(Registrant { hostid: *host, rkey: nrkey });
                    self.generation = self.generation.wrapping_add(1);
                    out.changed = true;
                }
                // Registering again with the same key is not an error.
                Some(i) if self.regs[i].rkey == nrkey => {}
                Some(_) => return Err(RESERVATION_CONFLICT),
            },
            // Unregister.
            1 => {
                let Some(i) = reg.filter(|&i| iekey || self.regs[i].rkey == crkey) else {
                    return Err(RESERVATION_CONFLICT);
                };
                let _ = i;
                let (t, others) = (self.rtype, self.others(host));
                self.remove(host);
                self.generation = self.generation.wrapping_add(1);
                out.changed = true;
                // A registrants-only reservation went with its holder.
                if self.rtype == 0 && (t == rtype::WRITE_EXCLUSIVE_REG_ONLY || t == rtype::EXCLUSIVE_ACCESS_REG_ONLY) {
                    out.notices = others.into_iter().map(|h| (h, notice::RESERVATION_RELEASED)).collect();
                }
            }
            // Replace.
            2 => {
                if nrkey == 0 {
                    return Err(status::INVALID_FIELD);
                }
                match reg {
                    Some(i) => {
                        if !iekey && self.regs[i].rkey != crkey {
                            return Err(RESERVATION_CONFLICT);
                        }
                        if self.regs[i].rkey != nrkey {
                            self.regs[i].rkey = nrkey;
                            if self.holder.as_ref() == Some(host) {
                                self.crkey = nrkey;
                            }
                            out.changed = true;
                        }
                    }
                    None if iekey => {
                        if self.regs.len() >= MAX_REGISTRANTS {
                            return Err(status::INTERNAL_ERROR);
                        }
                        self.regs.push(Registrant { hostid: *host, rkey: nrkey });
                        out.changed = true;
                    }
                    None => return Err(RESERVATION_CONFLICT),
                }
                if out.changed {
                    self.generation = self.generation.wrapping_add(1);
                }
            }
            _ => return Err(status::INVALID_FIELD),
        }
        if let Some(p) = ptpl {
            out.changed |= std::mem::replace(&mut self.ptpl, p) != p;
        }
        Ok(out)
    }

    /// Reservation Acquire: `racqa` 0 acquire, 1 preempt, 2 preempt and
    /// abort (its command completes once the commands already at the bdev
    /// have: see `group::publish_resv`).
    pub fn acquire(&mut self, host: &[u8; 16], racqa: u8, iekey: bool, t: u8, crkey: u64, prkey: u64) -> Result<Outcome, Status> {
        if iekey || !(1..=6).contains(&t) {
            return Err(status::INVALID_FIELD);
        }
        let Some(_) = self.reg(host).filter(|&i| self.regs[i].rkey == crkey) else {
            return Err(RESERVATION_CONFLICT);
        };
        let mut out = Outcome::default();
        match racqa {
            0 => {
                if self.rtype != 0 && self.is_holder(host) && self.rtype == t {
                    // Acquiring what one holds again is not an error.
                } else if self.rtype == 0 {
                    self.rtype = t;
                    self.crkey = crkey;
                    self.holder = Some(*host);
                    out.changed = true;
                } else {
                    return Err(RESERVATION_CONFLICT);
                }
            }
            1 | 2 => {
                let before = self.others(host);
                let mut released = false;
                if self.rtype == 0 {
                    // No reservation: preempt unregisters the key's holders.
                    self.remove_by_key(prkey, None);
                } else if !all_regs(self.rtype) {
                    if self.holder.as_ref() == Some(host) && self.crkey == prkey {
                        // Preempting oneself changes the type.
                        self.rtype = t;
                        released = true;
                    } else if self.crkey == prkey {
                        self.remove_by_key(prkey, Some(host));
                        self.rtype = t;
                        self.crkey = crkey;
                        self.holder = Some(*host);
                        released = true;
                    } else if prkey != 0 {
                        self.remove_by_key(prkey, None);
                    } else {
                        return Err(RESERVATION_CONFLICT);
                    }
                } else if prkey == 0 {
                    // All registrants: preempting with key 0 takes it over.
                    self.regs.retain(|r| r.hostid == *host);
                    self.rtype = t;
                    self.crkey = crkey;
                    self.holder = Some(*host);
                    released = true;
                } else if self.remove_by_key(prkey, None) == 0 {
                    return Err(RESERVATION_CONFLICT);
                }
                self.generation = self.generation.wrapping_add(1);
                out.changed = true;
                let after = self.others(host);
                out.notices = before.iter().filter(|h| !after.contains(h)).map(|h| (*h, notice::REGISTRATION_PREEMPTED)).collect();
                if released {
                    out.notices.extend(after.into_iter().map(|h| (h, notice::RESERVATION_RELEASED)));
                }
            }
            _ => return Err(status::INVALID_FIELD),
        }
        Ok(out)
    }

    /// Unregister every registrant with `key` (but `keep`); how many.
    fn remove_by_key(&mut self, key: u64, keep: Option<&[u8; 16]>) -> usize {
        let gone: Vec<[u8; 16]> = self.regs.iter().filter(|r| r.rkey == key && Some(&r.hostid) != keep).map(|r| r.hostid).collect();
        for h in &gone {
            self.remove(h);
        }
        gone.len()
    }

    /// Reservation Release: `rrela` 0 release, 1 clear.
    pub fn release(&mut self, host: &[u8; 16], rrela: u8, iekey: bool, t: u8, crkey: u64) -> Result<Outcome, Status> {
        if iekey {
            return Err(status::INVALID_FIELD);
        }
        let Some(_) = self.reg(host).filter(|&i| self.regs[i].rkey == crkey) else {
            return Err(RESERVATION_CONFLICT);
        };
        let others = self.others(host);
        let mut out = Outcome::default();
        match rrela {
            0 => {
                if self.rtype == 0 {
                    return Ok(out);
                }
                if self.rtype != t {
                    return Err(status::INVALID_FIELD);
                }
                if !self.is_holder(host) {
                    // Not the holder: not an error, nothing happens.
                    return Ok(out);
                }
                let was = self.rtype;
                self.release_reservation();
                out.changed = true;
                if was != rtype::WRITE_EXCLUSIVE && was != rtype::EXCLUSIVE_ACCESS {
                    out.notices = others.into_iter().map(|h| (h, notice::RESERVATION_RELEASED)).collect();
                }
            }
            1 => {
                self.release_reservation();
                self.regs.clear();
                self.generation = self.generation.wrapping_add(1);
                out.changed = true;
                out.notices = others.into_iter().map(|h| (h, notice::RESERVATION_PREEMPTED)).collect();
            }
            _ => return Err(status::INVALID_FIELD),
        }
        Ok(out)
    }

    /// Reservation Report data: the extended structure (24-byte header,
    /// 40 reserved, then 64 bytes per registrant with its 128-bit host
    /// identifier). Without `eds` the hosts' 128-bit identifiers cannot be
    /// reported: Host Identifier Inconsistent Format.
    pub fn report(&self, eds: bool) -> Result<Vec<u8>, Status> {
        if !eds {
            return Err(HOSTID_INCONSISTENT_FORMAT);
        }
        let mut d = vec![0u8; 64 + 64 * self.regs.len()];
        d[0..4].copy_from_slice(&self.generation.to_le_bytes());
        d[4] = self.rtype;
        d[5..7].copy_from_slice(&(self.regs.len() as u16).to_le_bytes());
        d[9] = u8::from(self.ptpl);
        for (i, r) in self.regs.iter().enumerate() {
            let e = &mut d[64 + 64 * i..128 + 64 * i];
            // Controller ID FFFFh: the registrant is a host, not one
            // controller (dynamic controllers, as SPDK reports).
            e[0..2].copy_from_slice(&0xffffu16.to_le_bytes());
            e[2] = u8::from(self.is_holder(&r.hostid));
            e[8..16].copy_from_slice(&r.rkey.to_le_bytes());
            e[16..32].copy_from_slice(&r.hostid);
        }
        Ok(d)
    }
}

/// Whether `host` may run command `opcode` (`cdw10` for Acquire) under the
/// namespace's reservation; `Some(conflict)` if not (as SPDK's check).
#[inline]
pub fn check(s: &ResvState, host: &[u8; 16], opcode: u8) -> Option<Status> {
    if s.rtype == 0 || s.is_holder(host) {
        return None;
    }
    let registrant = s.is_registrant(host);
    let conflict = match opcode {
        op::READ | op::COMPARE => {
            s.rtype == rtype::EXCLUSIVE_ACCESS
                || (!registrant && (s.rtype == rtype::EXCLUSIVE_ACCESS_REG_ONLY || s.rtype == rtype::EXCLUSIVE_ACCESS_ALL_REGS))
        }
        op::WRITE | op::WRITE_ZEROES | op::DATASET_MANAGEMENT | op::FLUSH | op::WRITE_UNCORRECTABLE => {
            s.rtype == rtype::WRITE_EXCLUSIVE || s.rtype == rtype::EXCLUSIVE_ACCESS || !registrant
        }
        _ => false,
    };
    conflict.then_some(RESERVATION_CONFLICT)
}

// ---- Persist Through Power Loss: SPDK's ptpl_file ----

#[derive(Serialize, Deserialize)]
struct PtplRegistrant {
    rkey: u64,
    host_uuid: String,
}

#[derive(Serialize, Deserialize)]
struct PtplFile {
    #[serde(default)]
    ptpl: bool,
    #[serde(default)]
    rtype: u32,
    #[serde(default)]
    crkey: u64,
    bdev_uuid: String,
    #[serde(default)]
    holder_uuid: Option<String>,
    registrants: Vec<PtplRegistrant>,
}

fn uuid_text(b: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*b).to_string()
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(s).ok().map(|u| *u.as_bytes())
}

/// Write the state to `path` as SPDK does (an empty file when PTPL is
/// off), through a temporary file, synced, then renamed, the directory
/// synced: a crash or a power loss leaves the old or the new state, and
/// a command is answered only once its state is on disk (what "persist
/// through power loss" promises). Blocks the calling (main) reactor for
/// the syncs; reservation changes are rare.
pub fn store(path: &Path, s: &ResvState, bdev_uuid: &uuid::Uuid) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("pollux-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(render(s, bdev_uuid).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// The `ptpl_file` text of a state (empty when PTPL is off), as SPDK
/// writes it.
pub fn render(s: &ResvState, bdev_uuid: &uuid::Uuid) -> String {
    if !s.ptpl {
        return String::new();
    }
    let f = PtplFile {
        ptpl: true,
        rtype: u32::from(s.rtype),
        crkey: s.crkey,
        bdev_uuid: bdev_uuid.to_string(),
        // As SPDK writes it: "" without a reservation and for the "all
        // registrants" types (its reader takes the first registrant then;
        // a null, which SPDK cannot read, made it refuse the whole file).
        holder_uuid: Some(s.holder.as_ref().filter(|_| s.rtype != 0 && !all_regs(s.rtype)).map(uuid_text).unwrap_or_default()),
        registrants: s.regs.iter().map(|r| PtplRegistrant { rkey: r.rkey, host_uuid: uuid_text(&r.hostid) }).collect(),
    };
    serde_json::to_string_pretty(&f).expect("a struct of strings and numbers serializes")
}

/// Read a `ptpl_file`: `Ok(None)` when absent, empty or with PTPL off; an
/// error names what is wrong (a file of another bdev, bad JSON).
pub fn load(path: &Path, bdev_uuid: &uuid::Uuid) -> Result<Option<ResvState>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, bdev_uuid).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The state a `ptpl_file`'s text holds for bdev `bdev_uuid` (see
/// [`load`]). A holder that is not among the registrants holds nothing;
/// a host registered twice is refused.
pub fn parse(text: &str, bdev_uuid: &uuid::Uuid) -> Result<Option<ResvState>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let f: PtplFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !f.ptpl {
        return Ok(None);
    }
    if uuid::Uuid::parse_str(&f.bdev_uuid).ok() != Some(*bdev_uuid) {
        return Err(format!("it is for bdev {}, not {bdev_uuid}", f.bdev_uuid));
    }
    if f.registrants.len() > MAX_REGISTRANTS || f.rtype > 6 {
        return Err(format!("{} registrants, type {}", f.registrants.len(), f.rtype));
    }
    let mut regs: Vec<Registrant> = Vec::new();
    for r in &f.registrants {
        let h = uuid_bytes(&r.host_uuid).ok_or_else(|| format!("host_uuid {} is not a UUID", r.host_uuid))?;
        if regs.iter().any(|x| x.hostid == h) {
            return Err(format!("host {} is registered twice", r.host_uuid));
        }
        regs.push(Registrant { hostid: h, rkey: r.rkey });
    }
    let holder = match f.holder_uuid.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => Some(uuid_bytes(h).ok_or_else(|| format!("holder_uuid {h} is not a UUID"))?),
        None => None,
    };
    if f.crkey != 0 && !regs.iter().any(|r| r.rkey == f.crkey) {
        // SPDK refuses such a file too.
        return Err(format!("crkey {:#x} is no registrant's key", f.crkey));
    }
    let rtype = f.rtype as u8;
    // SPDK writes no holder for the "all registrants" types: every
    // registrant holds those, and the first is named.
    let holder = match rtype {
        0 => None,
        t if all_regs(t) => regs.first().map(|r| r.hostid),
        _ => holder.filter(|h| regs.iter().any(|r| r.hostid == *h)),
    };
    let rtype = if holder.is_some() { rtype } else { 0 };
    Ok(Some(ResvState {
        generation: 0,
        rtype,
        crkey: if rtype != 0 { f.crkey } else { 0 },
        holder: if rtype != 0 { holder } else { None },
        regs,
        ptpl: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];
    const C: [u8; 16] = [3; 16];

    fn registered() -> ResvState {
        let mut s = ResvState::default();
        s.register(&A, 0, false, 0, (0, 0xa), false).unwrap();
        s.register(&B, 0, false, 0, (0, 0xb), false).unwrap();
        s
    }

    #[test]
    fn register_unregister_replace_follow_the_keys() {
        let mut s = registered();
        assert_eq!(s.generation, 2);
        assert_eq!(s.register(&A, 0, false, 0, (0, 0xa), false), Ok(Outcome::default()), "same key again");
        assert_eq!(s.register(&A, 0, false, 0, (0, 0xff), false), Err(RESERVATION_CONFLICT));
        assert_eq!(s.register(&C, 0, false, 0, (0, 0), false), Err(status::INVALID_FIELD), "key 0");
        assert_eq!(s.register(&A, 2, false, 0, (0x1, 0xaa), false), Err(RESERVATION_CONFLICT), "wrong current key");
        assert!(s.register(&A, 2, false, 0, (0xa, 0xaa), false).unwrap().changed);
        assert!(s.register(&A, 2, true, 0, (0, 0xab), false).unwrap().changed, "IEKEY");
        assert!(s.register(&C, 2, true, 0, (0, 0xc), false).unwrap().changed, "replace with IEKEY registers");
        assert_eq!(s.register(&B, 1, false, 0, (0x1, 0), false), Err(RESERVATION_CONFLICT));
        assert!(s.register(&B, 1, false, 0, (0xb, 0), false).unwrap().changed);
        assert!(!s.is_registrant(&B));
        assert_eq!(s.register(&B, 0, false, 3, (0, 0xb), false), Err(status::INVALID_FIELD), "PTPL without a file");
        assert!(s.register(&B, 0, false, 3, (0, 0xb), true).unwrap().changed);
        assert!(s.ptpl);
        // A refused Register changes no PTPL (it cleared it, unpersisted).
        let before = s.clone();
        assert_eq!(s.register(&C, 1, false, 2, (0x1, 0), true), Err(RESERVATION_CONFLICT), "C's key is not 1");
        assert_eq!(s, before);
    }

    #[test]
    fn each_type_lets_the_right_hosts_read_and_write() {
        use rtype::*;
        // (type, [holder, other registrant, non-registrant] x [read ok, write ok])
        let table = [
            (WRITE_EXCLUSIVE, [(true, true), (true, false), (true, false)]),
            (EXCLUSIVE_ACCESS, [(true, true), (false, false), (false, false)]),
            (WRITE_EXCLUSIVE_REG_ONLY, [(true, true), (true, true), (true, false)]),
            (EXCLUSIVE_ACCESS_REG_ONLY, [(true, true), (true, true), (false, false)]),
            (WRITE_EXCLUSIVE_ALL_REGS, [(true, true), (true, true), (true, false)]),
            (EXCLUSIVE_ACCESS_ALL_REGS, [(true, true), (true, true), (false, false)]),
        ];
        for (t, want) in table {
            let mut s = registered();
            s.acquire(&A, 0, false, t, 0xa, 0).unwrap();
            for (host, (r, w)) in [A, B, C].iter().zip(want) {
                assert_eq!(check(&s, host, op::READ).is_none(), r, "type {t} host {} read", host[0]);
                assert_eq!(check(&s, host, op::WRITE).is_none(), w, "type {t} host {} write", host[0]);
                assert_eq!(check(&s, host, op::FLUSH).is_none(), w, "type {t} host {} flush", host[0]);
            }
        }
    }

    #[test]
    fn acquire_preempt_release_and_clear_notify_the_others() {
        let mut s = registered();
        assert_eq!(s.acquire(&A, 0, false, rtype::WRITE_EXCLUSIVE, 0xbad, 0), Err(RESERVATION_CONFLICT), "wrong key");
        s.acquire(&A, 0, false, rtype::WRITE_EXCLUSIVE, 0xa, 0).unwrap();
        assert_eq!(s.acquire(&B, 0, false, rtype::WRITE_EXCLUSIVE, 0xb, 0), Err(RESERVATION_CONFLICT), "held");
        assert_eq!(s.acquire(&A, 0, false, rtype::WRITE_EXCLUSIVE, 0xa, 0), Ok(Outcome::default()), "again");
        // B preempts A: A loses its registration and is told.
        let o = s.acquire(&B, 1, false, rtype::EXCLUSIVE_ACCESS, 0xb, 0xa).unwrap();
        assert_eq!(o.notices, vec![(A, notice::REGISTRATION_PREEMPTED)]);
        assert!(s.is_holder(&B) && !s.is_registrant(&A));
        assert_eq!((s.rtype, s.crkey), (rtype::EXCLUSIVE_ACCESS, 0xb));
        // Release of the wrong type, then right.
        s.register(&A, 0, false, 0, (0, 0xa), false).unwrap();
        assert_eq!(s.release(&B, 0, false, rtype::WRITE_EXCLUSIVE, 0xb), Err(status::INVALID_FIELD));
        assert_eq!(s.release(&A, 0, false, rtype::EXCLUSIVE_ACCESS, 0xa), Ok(Outcome::default()), "not the holder");
        let o = s.release(&B, 0, false, rtype::EXCLUSIVE_ACCESS, 0xb).unwrap();
        assert!(o.changed && o.notices.is_empty(), "EA release tells no one");
        // A registrants-only reservation released tells the others.
        s.acquire(&B, 0, false, rtype::WRITE_EXCLUSIVE_REG_ONLY, 0xb, 0).unwrap();
        assert_eq!(s.release(&B, 0, false, rtype::WRITE_EXCLUSIVE_REG_ONLY, 0xb).unwrap().notices, vec![(A, notice::RESERVATION_RELEASED)]);
        // Clear: everyone unregistered, the others preempted.
        s.acquire(&B, 0, false, rtype::WRITE_EXCLUSIVE_ALL_REGS, 0xb, 0).unwrap();
        assert!(s.is_holder(&A), "every registrant holds an all-registrants reservation");
        let o = s.release(&A, 1, false, 0, 0xa).unwrap();
        assert_eq!(o.notices, vec![(B, notice::RESERVATION_PREEMPTED)]);
        assert!(s.regs.is_empty() && s.rtype == 0);
        assert_eq!(s.release(&A, 0, false, 0, 0xa), Err(RESERVATION_CONFLICT), "not registered");
    }

    #[test]
    fn report_is_extended_only_and_ptpl_files_round_trip() {
        let mut s = registered();
        s.acquire(&B, 0, false, rtype::WRITE_EXCLUSIVE, 0xb, 0).unwrap();
        assert_eq!(s.report(false), Err(HOSTID_INCONSISTENT_FORMAT));
        let r = s.report(true).unwrap();
        assert_eq!((r[4], u16::from_le_bytes([r[5], r[6]])), (rtype::WRITE_EXCLUSIVE, 2));
        assert_eq!((r[64 + 2], &r[64 + 16..64 + 32]), (0, &A[..]));
        assert_eq!((r[128 + 2], u64::from_le_bytes(r[128 + 8..128 + 16].try_into().unwrap())), (1, 0xb));

        let dir = std::env::temp_dir().join(format!("pollux-ptpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ns1.json");
        let u = uuid::Uuid::new_v4();
        assert_eq!(load(&f, &u), Ok(None), "no file yet");
        s.ptpl = true;
        store(&f, &s, &u).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("\"holder_uuid\"") && text.contains("\"registrants\""), "{text}");
        let back = load(&f, &u).unwrap().unwrap();
        assert_eq!((back.rtype, back.crkey, back.holder, back.regs.clone()), (s.rtype, s.crkey, s.holder, s.regs.clone()));
        assert!(load(&f, &uuid::Uuid::new_v4()).unwrap_err().contains("not"), "a file of another bdev is refused");
        let twice =
            text.replacen("\"registrants\": [", &format!("\"registrants\": [{{\"rkey\": 1, \"host_uuid\": \"{}\"}}, ", uuid_text(&A)), 1);
        assert!(parse(&twice, &u).unwrap_err().contains("twice"), "a host registered twice is refused: {twice}");
        assert!(parse("{\"ptpl\": true", &u).is_err(), "bad JSON");
        // An "all registrants" reservation as SPDK writes it: no holder
        // (it was read as no reservation at all), the first registrant
        // named holder on reading.
        let spdk = format!(
            "{{\"ptpl\": true, \"rtype\": 5, \"crkey\": 10, \"bdev_uuid\": \"{u}\", \"holder_uuid\": \"\", \"registrants\":              [{{\"rkey\": 10, \"host_uuid\": \"{}\"}}, {{\"rkey\": 11, \"host_uuid\": \"{}\"}}]}}",
            uuid_text(&A),
            uuid_text(&B)
        );
        let all = parse(&spdk, &u).unwrap().unwrap();
        assert_eq!((all.rtype, all.holder), (rtype::WRITE_EXCLUSIVE_ALL_REGS, Some(A)));
        assert!(render(&all, &u).contains("\"holder_uuid\": \"\""), "written as SPDK writes it");
        assert!(parse(&spdk.replace("\"crkey\": 10", "\"crkey\": 12"), &u).unwrap_err().contains("crkey"), "a key no one has");
        // No reservation: "", not null (SPDK refuses a null).
        s.release(&B, 0, false, rtype::WRITE_EXCLUSIVE, 0xb).unwrap();
        assert!(render(&s, &u).contains("\"holder_uuid\": \"\""), "{}", render(&s, &u));
        s.ptpl = false;
        store(&f, &s, &u).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "", "PTPL off: emptied, as SPDK");
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---- Commands: on the main reactor, answered on the queue pair's ----

mod commands {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;

    use pollux_core::reactor::{self, ReactorId};
    use pollux_nvme_spec::cmd::io as op;

    use super::{Notices, Outcome};
    use crate::ctrlr::Response;
    use crate::io::Completer;
    use crate::status::{self, Status};
    use crate::transport::IoOwner;

    /// Commands of this reactor waiting for the main reactor's answer.
    #[derive(Default)]
    struct Pending {
        next: Cell<u64>,
        waiting: RefCell<HashMap<u64, Completer>>,
    }

    fn pending() -> Rc<Pending> {
        reactor::local::<Pending>().unwrap_or_else(|| {
            let p = Rc::new(Pending::default());
            reactor::set_local(p.clone());
            p
        })
    }

    /// Run Register, Acquire or Release (`keys`: the command's data) on the
    /// main reactor, where the namespace's state lives; the new state
    /// reaches every reactor before the command completes.
    pub fn submit(owner: &IoOwner, nsid: u32, opcode: u8, cdw10: u32, keys: [u8; 16], done: Completer) {
        let p = pending();
        let id = p.next.get();
        p.next.set(id.wrapping_add(1));
        p.waiting.borrow_mut().insert(id, done);
        let (origin, sid, host, hostnqn) = (reactor::current(), owner.subsystem_id, owner.hostid, owner.hostnqn.clone());
        reactor::send_msg(ReactorId(0), move || {
            let answer = move |st: Status| {
                reactor::send_msg(origin, move || {
                    if let Some(done) = pending().waiting.borrow_mut().remove(&id) {
                        done.done(Response::err(st), None);
                    }
                })
            };
            match apply(sid, nsid, (&host, &hostnqn), opcode, cdw10, keys) {
                Err(st) => answer(st),
                Ok((out, snapshot)) if out.changed => {
                    let then = move || {
                        notify(sid, nsid, &out.notices);
                        answer(status::SUCCESS);
                    };
                    // Preempt and abort: the preempted hosts' commands at
                    // the bdev complete first.
                    let fenced = opcode == op::RESERVATION_ACQUIRE && cdw10 & 0x7 == 2;
                    crate::group::publish_resv(sid, nsid, snapshot, fenced, then);
                }
                Ok(_) => answer(status::SUCCESS),
            }
        });
    }

    type Applied = (Outcome, Option<std::sync::Arc<super::ResvState>>);

    /// The command against the namespace's state (main reactor); persists
    /// a change to the `ptpl_file`. `host`: the host identifier and NQN (a
    /// host that no longer sees the namespace, since the command left its
    /// queue pair, gets what it would get now).
    fn apply(sid: u32, nsid: u32, (host, hostnqn): (&[u8; 16], &str), opcode: u8, cdw10: u32, keys: [u8; 16]) -> Result<Applied, Status> {
        let t = crate::target::target().map_err(|_| status::INTERNAL_ERROR)?;
        let s = t.find_id(sid).ok_or(status::INVALID_NAMESPACE)?;
        let ns = s.namespaces.borrow().get(&nsid).cloned().filter(|ns| ns.visible_to(hostnqn)).ok_or(status::INVALID_NAMESPACE)?;
        let k0 = u64::from_le_bytes(keys[0..8].try_into().expect("8"));
        let k1 = u64::from_le_bytes(keys[8..16].try_into().expect("8"));
        let (action, iekey, rtype) = ((cdw10 & 0x7) as u8, cdw10 & (1 << 3) != 0, (cdw10 >> 8) as u8);
        let before = ns.resv.borrow().clone();
        let out = {
            let mut r = ns.resv.borrow_mut();
            match opcode {
                op::RESERVATION_REGISTER => r.register(host, action, iekey, (cdw10 >> 30) as u8, (k0, k1), ns.ptpl_file.is_some()),
                op::RESERVATION_ACQUIRE => r.acquire(host, action, iekey, rtype, k0, k1),
                _ => r.release(host, action, iekey, rtype, k0),
            }?
        };
        if out.changed && !persist(&s, &ns) {
            // Not on disk, so not done: the host is told (as SPDK tells
            // it, Internal Error) and the state stays what it was.
            *ns.resv.borrow_mut() = before;
            return Err(status::INTERNAL_ERROR);
        }
        Ok((out, ns.resv_snapshot()))
    }

    /// Write the namespace's state to its `ptpl_file`, if it has one.
    /// False when it could not (logged): the caller undoes its change.
    pub fn persist(s: &crate::subsystem::Subsystem, ns: &crate::subsystem::Namespace) -> bool {
        let Some(path) = &ns.ptpl_file else { return true };
        let r = super::store(path, &ns.resv.borrow(), &ns.desc.bdev().uuid());
        if let Err(e) = &r {
            tracing::error!("nvmf: namespace {} of {}: cannot write {}: {e}", ns.nsid, s.nqn(), path.display());
        }
        r.is_ok()
    }

    /// Tell the controllers of each host named what happened.
    fn notify(sid: u32, nsid: u32, notices: &Notices) {
        let Ok(t) = crate::target::target() else { return };
        let Some(s) = t.find_id(sid) else { return };
        let ctrlrs: Vec<_> = s.controllers.borrow().values().cloned().collect();
        for (host, kind) in notices {
            for c in ctrlrs.iter().filter(|c| c.hostid == *host) {
                c.notify_reservation(nsid, *kind);
            }
        }
    }
}

pub use commands::{persist, submit};
