//! Persistent reservations (SPC-5 5.13): registrations per I_T nexus, one
//! reservation of six types, every service action of PERSISTENT RESERVE
//! OUT and every report of PERSISTENT RESERVE IN, and the access check the
//! I/O path runs while a reservation is held.
//!
//! Registrations survive I_T nexus loss (an initiator that logs in again is
//! still registered); they do not survive a restart (APTPL is not offered).

use std::sync::Arc;

use super::{Lun, Nexus, Shared};
use crate::cdb::{be16, be32, be64};
use crate::sense::{Asc, Sense};

/// Reservation types.
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_REGS_ONLY: u8 = 5;
    pub const EXCLUSIVE_ACCESS_REGS_ONLY: u8 = 6;
    pub const WRITE_EXCLUSIVE_ALL_REGS: u8 = 7;
    pub const EXCLUSIVE_ACCESS_ALL_REGS: u8 = 8;
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    matches!(t, kind::WRITE_EXCLUSIVE_ALL_REGS | kind::EXCLUSIVE_ACCESS_ALL_REGS)
}

fn registrants_only(t: u8) -> bool {
    matches!(t, kind::WRITE_EXCLUSIVE_REGS_ONLY | kind::EXCLUSIVE_ACCESS_REGS_ONLY)
}

fn exclusive_access(t: u8) -> bool {
    matches!(t, kind::EXCLUSIVE_ACCESS | kind::EXCLUSIVE_ACCESS_REGS_ONLY | kind::EXCLUSIVE_ACCESS_ALL_REGS)
}

/// One registered I_T nexus.
#[derive(Clone, Debug)]
pub struct Registrant {
    pub nexus: Arc<Nexus>,
    pub key: u64,
}

/// The reservation.
#[derive(Clone, Debug)]
pub struct Holder {
    /// The holding nexus (for all-registrants types: the one that reserved).
    pub nexus: Arc<Nexus>,
    pub kind: u8,
}

#[derive(Debug, Default)]
pub struct PrState {
    pub generation: u32,
    pub registrants: Vec<Registrant>,
    pub holder: Option<Holder>,
}

/// The most registrations a logical unit keeps: each is a string compared
/// on every command under a reservation, and they outlive their sessions,
/// so an initiator logging in again under new ISIDs could grow them
/// without bound. Beyond: INSUFFICIENT REGISTRATION RESOURCES.
pub const MAX_REGISTRANTS: usize = 256;

impl PrState {
    fn find(&self, n: &Nexus) -> Option<usize> {
        self.registrants.iter().position(|r| r.nexus.same(n))
    }

    /// A new registration, within [`MAX_REGISTRANTS`].
    fn add(&mut self, nexus: Arc<Nexus>, key: u64) -> Result<(), Sense> {
        if self.registrants.len() >= MAX_REGISTRANTS {
            return Err(Sense::illegal(Asc::INSUFFICIENT_REGISTRATION_RESOURCES));
        }
        self.registrants.push(Registrant { nexus, key });
        Ok(())
    }

    fn key_of(&self, n: &Nexus) -> Option<u64> {
        self.find(n).map(|i| self.registrants[i].key)
    }

    /// Whether `n` holds the reservation (every registrant does for the
    /// all-registrants types).
    pub fn is_holder(&self, n: &Nexus) -> bool {
        match &self.holder {
            None => false,
            Some(h) if all_registrants(h.kind) => self.find(n).is_some(),
            Some(h) => h.nexus.same(n),
        }
    }

    fn remove_at(&mut self, i: usize) -> Registrant {
        let r = self.registrants.remove(i);
        if let Some(h) = &self.holder {
            let holder_gone = if all_registrants(h.kind) { self.registrants.is_empty() } else { h.nexus.same(&r.nexus) };
            if holder_gone {
                self.holder = None;
            } else if all_registrants(h.kind) && h.nexus.same(&r.nexus) {
                // Keep the reservation; name a remaining registrant.
                let next = self.registrants[0].nexus.clone();
                self.holder = Some(Holder { nexus: next, kind: h.kind });
            }
        }
        r
    }
}

/// How a command uses the medium, for the reservation check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, ...).
    Free,
    /// Allowed by Write Exclusive reservations to other nexuses.
    Read,
    /// Conflicts with any reservation held by another nexus.
    Write,
    /// Allowed under persistent reservations, conflicts with SPC-2 ones
    /// (TEST UNIT READY, READ CAPACITY, PERSISTENT RESERVE IN/OUT).
    PrFree,
}

impl Lun {
    /// Whether a command of `access` from `n` conflicts with a reservation.
    pub(crate) fn conflicts(&self, n: &Nexus, access: Access) -> bool {
        if access == Access::Free || !self.is_reserved() {
            return false;
        }
        let s = self.lock();
        if let Some(h) = &s.reserve6 {
            return !h.same(n);
        }
        let Some(h) = &s.pr.holder else { return false };
        if access == Access::PrFree || s.pr.is_holder(n) {
            return false;
        }
        if registrants_only(h.kind) && s.pr.find(n).is_some() {
            return false;
        }
        match access {
            Access::Read => exclusive_access(h.kind),
            _ => true,
        }
    }

    /// SPC-4 5.7.3 (Pollux reports CRH): while any registration exists,
    /// RESERVE and RELEASE change nothing; they are GOOD from a holder of
    /// the persistent reservation (or a registrant under a registrants-only
    /// or all-registrants one), RESERVATION CONFLICT from anyone else.
    /// `None`: no registration, the SPC-2 rules apply. (RESERVE took an
    /// SPC-2 reservation while registrations but no reservation existed,
    /// which then blocked every PERSISTENT RESERVE OUT.)
    fn spc2_under_registrations(s: &Shared, n: &Nexus) -> Option<bool> {
        if s.pr.registrants.is_empty() {
            return None;
        }
        // `is_holder` covers every registrant of an all-registrants type.
        let registrant_holds = s.pr.holder.as_ref().is_some_and(|h| registrants_only(h.kind)) && s.pr.find(n).is_some();
        Some(s.pr.is_holder(n) || registrant_holds)
    }

    /// RESERVE(6)/(10). Ok(false) means RESERVATION CONFLICT.
    pub(crate) fn reserve6(&self, n: &Arc<Nexus>) -> bool {
        let mut s = self.lock();
        if let Some(good) = Self::spc2_under_registrations(&s, n) {
            return good;
        }
        match &s.reserve6 {
            Some(h) if !h.same(n) => false,
            _ => {
                s.reserve6 = Some(n.clone());
                self.update_reserved(&s);
                true
            }
        }
    }

    /// RELEASE(6)/(10): always GOOD unless a persistent reservation exists
    /// (then RESERVATION CONFLICT, returned as false).
    pub(crate) fn release6(&self, n: &Nexus) -> bool {
        let mut s = self.lock();
        if let Some(good) = Self::spc2_under_registrations(&s, n) {
            return good;
        }
        if s.reserve6.as_ref().is_some_and(|h| h.same(n)) {
            s.reserve6 = None;
            self.update_reserved(&s);
        }
        true
    }

    /// PERSISTENT RESERVE IN: the data to return.
    pub(crate) fn pr_in(&self, _n: &Nexus, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        let s = self.lock();
        let pr = &s.pr;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&pr.generation.to_be_bytes());
        match cdb[1] & 0x1f {
            0 => {
                // READ KEYS
                out.extend_from_slice(&((pr.registrants.len() * 8) as u32).to_be_bytes());
                for r in &pr.registrants {
                    out.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => {
                // READ RESERVATION
                match &pr.holder {
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                    Some(h) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(h.kind) { 0 } else { pr.key_of(&h.nexus).unwrap_or(0) };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0, 0, 0, 0, 0, h.kind & 0x0f, 0, 0]);
                    }
                }
            }
            2 => {
                // REPORT CAPABILITIES: CRH, ATP_C; TMV with all six types.
                out.clear();
                out.extend_from_slice(&[0, 8, 0x10 | 0x04, 0x80, 0xea, 0x01, 0, 0]);
            }
            3 => {
                // READ FULL STATUS
                let mut body = Vec::new();
                for r in &pr.registrants {
                    let tid = r.nexus.transport_id();
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    let holds = pr.holder.as_ref().is_some_and(|h| if all_registrants(h.kind) { true } else { h.nexus.same(&r.nexus) });
                    body.push(holds as u8);
                    body.push(if holds { pr.holder.as_ref().map_or(0, |h| h.kind & 0x0f) } else { 0 });
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&r.nexus.relative_port.to_be_bytes());
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        Ok(out)
    }

    /// PERSISTENT RESERVE OUT. `Ok(None)` means RESERVATION CONFLICT;
    /// `Ok(Some(nexuses))` GOOD once the tasks of those nexuses on this LU
    /// are aborted (PREEMPT AND ABORT's preempted ones; none otherwise).
    pub(crate) fn pr_out(&self, n: &Arc<Nexus>, cdb: &[u8; 16], param: &[u8]) -> Result<Option<Vec<Arc<Nexus>>>, Sense> {
        let sa = cdb[1] & 0x1f;
        // PREEMPT AND ABORT: the nexuses whose tasks the transport aborts.
        let mut abort = Vec::new();
        let scope = cdb[2] >> 4;
        let ty = cdb[2] & 0x0f;
        let plen = be32(cdb, 5) as usize;
        if sa > 8 {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if sa == 7 {
            return self.register_and_move(n, cdb, param).map(|ok| ok.then(Vec::new));
        }
        if plen != 24 || param.len() < 24 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let key = be64(param, 0);
        let sark = be64(param, 8);
        let flags = param[20];
        if flags & 0x08 != 0 {
            // SPEC_I_PT is not offered.
            return Err(Sense::invalid_param_field(20, Some(3)));
        }
        if flags & 0x01 != 0 {
            // APTPL: registrations do not persist through power loss.
            return Err(Sense::invalid_param_field(20, Some(0)));
        }
        let mut guard = self.lock();
        let s: &mut Shared = &mut guard;
        if s.reserve6.is_some() && !s.reserve6.as_ref().is_some_and(|h| h.same(n)) {
            return Ok(None);
        }
        let mine = s.pr.find(n);
        match sa {
            0 | 6 => {
                // REGISTER / REGISTER AND IGNORE EXISTING KEY
                match mine {
                    None => {
                        if sa == 0 && key != 0 {
                            return Ok(None);
                        }
                        if sark != 0 {
                            s.pr.add(n.clone(), sark)?;
                            s.pr.generation = s.pr.generation.wrapping_add(1);
                        }
                    }
                    Some(i) => {
                        if sa == 0 && s.pr.registrants[i].key != key {
                            return Ok(None);
                        }
                        if sark == 0 {
                            let was_ro_holder = s.pr.holder.as_ref().is_some_and(|h| registrants_only(h.kind) && h.nexus.same(n));
                            s.pr.remove_at(i);
                            if was_ro_holder {
                                let others: Vec<Arc<Nexus>> = s.pr.registrants.iter().map(|r| r.nexus.clone()).collect();
                                self.raise_ua_for(s, Asc::RESERVATIONS_RELEASED, |x| others.iter().any(|o| o.same(x)));
                            }
                        } else {
                            s.pr.registrants[i].key = sark;
                        }
                        s.pr.generation = s.pr.generation.wrapping_add(1);
                    }
                }
            }
            1 => {
                // RESERVE
                let Some(i) = mine else { return Ok(None) };
                if s.pr.registrants[i].key != key {
                    return Ok(None);
                }
                if scope != 0 {
                    return Err(Sense::invalid_cdb_field(2, Some(7)));
                }
                if !valid_type(ty) {
                    return Err(Sense::invalid_cdb_field(2, Some(3)));
                }
                match &s.pr.holder {
                    Some(h) => {
                        if !s.pr.is_holder(n) || h.kind != ty {
                            return Ok(None);
                        }
                    }
                    None => s.pr.holder = Some(Holder { nexus: n.clone(), kind: ty }),
                }
            }
            2 => {
                // RELEASE
                let Some(i) = mine else { return Ok(None) };
                if s.pr.registrants[i].key != key {
                    return Ok(None);
                }
                if let Some(h) = s.pr.holder.clone() {
                    if s.pr.is_holder(n) {
                        if h.kind != ty {
                            return Err(Sense::illegal(Asc(0x26, 0x04)));
                        }
                        s.pr.holder = None;
                        if registrants_only(h.kind) || all_registrants(h.kind) {
                            let others: Vec<Arc<Nexus>> = s.pr.registrants.iter().map(|r| r.nexus.clone()).collect();
                            self.raise_ua_for(s, Asc::RESERVATIONS_RELEASED, |x| !x.same(n) && others.iter().any(|o| o.same(x)));
                        }
                    }
                }
            }
            3 => {
                // CLEAR
                let Some(i) = mine else { return Ok(None) };
                if s.pr.registrants[i].key != key {
                    return Ok(None);
                }
                let others: Vec<Arc<Nexus>> = s.pr.registrants.iter().map(|r| r.nexus.clone()).collect();
                s.pr.registrants.clear();
                s.pr.holder = None;
                s.pr.generation = s.pr.generation.wrapping_add(1);
                self.raise_ua_for(s, Asc::RESERVATIONS_PREEMPTED, |x| !x.same(n) && others.iter().any(|o| o.same(x)));
            }
            4 | 5 => {
                // PREEMPT / PREEMPT AND ABORT
                let Some(i) = mine else { return Ok(None) };
                if s.pr.registrants[i].key != key {
                    return Ok(None);
                }
                let Some(gone) = self.preempt(s, n, sark, scope, ty)? else { return Ok(None) };
                if sa == 5 {
                    abort = gone;
                }
            }
            _ => {
                // REPLACE LOST RESERVATION: reservations are never lost.
                return Err(Sense::invalid_cdb_field(1, Some(4)));
            }
        }
        self.update_reserved(s);
        Ok(Some(abort))
    }

    /// PREEMPT (AND ABORT): `Ok(None)` means RESERVATION CONFLICT;
    /// otherwise the nexuses whose registrations went (the issuer's own
    /// excepted).
    fn preempt(&self, s: &mut Shared, n: &Arc<Nexus>, sark: u64, scope: u8, ty: u8) -> Result<Option<Vec<Arc<Nexus>>>, Sense> {
        let holder = s.pr.holder.clone();
        let check_type = |scope: u8, ty: u8| -> Result<(), Sense> {
            if scope != 0 {
                return Err(Sense::invalid_cdb_field(2, Some(7)));
            }
            if !valid_type(ty) {
                return Err(Sense::invalid_cdb_field(2, Some(3)));
            }
            Ok(())
        };
        let gone: Vec<Arc<Nexus>> = match holder {
            Some(h) if all_registrants(h.kind) && sark == 0 => {
                // Remove every other registrant; this nexus takes a new reservation.
                check_type(scope, ty)?;
                let gone: Vec<Arc<Nexus>> = s.pr.registrants.iter().filter(|r| !r.nexus.same(n)).map(|r| r.nexus.clone()).collect();
                s.pr.registrants.retain(|r| r.nexus.same(n));
                s.pr.holder = Some(Holder { nexus: n.clone(), kind: ty });
                self.raise_ua_for(s, Asc::REGISTRATIONS_PREEMPTED, |x| gone.iter().any(|g| g.same(x)));
                gone
            }
            Some(h) if !all_registrants(h.kind) && s.pr.key_of(&h.nexus) == Some(sark) => {
                // Preempt the holder: remove registrations with that key and
                // take the reservation.
                check_type(scope, ty)?;
                let gone: Vec<Arc<Nexus>> =
                    s.pr.registrants.iter().filter(|r| r.key == sark && !r.nexus.same(n)).map(|r| r.nexus.clone()).collect();
                s.pr.registrants.retain(|r| r.key != sark || r.nexus.same(n));
                let old_kind = h.kind;
                s.pr.holder = Some(Holder { nexus: n.clone(), kind: ty });
                self.raise_ua_for(s, Asc::REGISTRATIONS_PREEMPTED, |x| gone.iter().any(|g| g.same(x)));
                if old_kind != ty {
                    let rest: Vec<Arc<Nexus>> = s.pr.registrants.iter().filter(|r| !r.nexus.same(n)).map(|r| r.nexus.clone()).collect();
                    self.raise_ua_for(s, Asc::RESERVATIONS_RELEASED, |x| rest.iter().any(|g| g.same(x)));
                }
                gone
            }
            _ => {
                // No reservation, or the key is not the holder's: remove the
                // registrations with that key.
                if sark == 0 {
                    return Err(Sense::invalid_param_field(8, None));
                }
                let gone: Vec<Arc<Nexus>> = s.pr.registrants.iter().filter(|r| r.key == sark).map(|r| r.nexus.clone()).collect();
                if gone.is_empty() {
                    return Ok(None);
                }
                for g in &gone {
                    if let Some(i) = s.pr.find(g) {
                        s.pr.remove_at(i);
                    }
                }
                self.raise_ua_for(s, Asc::REGISTRATIONS_PREEMPTED, |x| !x.same(n) && gone.iter().any(|g| g.same(x)));
                gone.into_iter().filter(|g| !g.same(n)).collect()
            }
        };
        s.pr.generation = s.pr.generation.wrapping_add(1);
        Ok(Some(gone))
    }

    fn register_and_move(&self, n: &Arc<Nexus>, cdb: &[u8; 16], param: &[u8]) -> Result<bool, Sense> {
        let plen = be32(cdb, 5) as usize;
        if plen < 24 || param.len() < 24 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let key = be64(param, 0);
        let sark = be64(param, 8);
        let rel = be16(param, 18);
        let tid_len = be32(param, 20) as usize;
        if param[17] & 0x01 != 0 {
            return Err(Sense::invalid_param_field(17, Some(0)));
        }
        // UNREG: the source's registration goes too (it always went).
        let unreg = param[17] & 0x02 != 0;
        let Some(tid) = param.get(24..24 + tid_len) else { return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)) };
        if tid.len() < 4 || tid[0] & 0x0f != 5 {
            return Err(Sense::invalid_param_field(24, None));
        }
        // Format 01b: an initiator port (name,i,0xISID). Format 00b names
        // only the initiator, no port: the reservation moved to a nexus
        // no session could ever have.
        if tid[0] >> 6 != 1 {
            return Err(Sense::invalid_param_field(24, Some(6)));
        }
        let name_end = tid[4..].iter().position(|&b| b == 0).map_or(tid.len(), |p| p + 4);
        let port = String::from_utf8_lossy(&tid[4..name_end]).to_string();
        let mut guard = self.lock();
        let s: &mut Shared = &mut guard;
        let Some(i) = s.pr.find(n) else { return Ok(false) };
        if s.pr.registrants[i].key != key {
            return Ok(false);
        }
        let Some(h) = s.pr.holder.clone() else { return Ok(false) };
        if all_registrants(h.kind) || !h.nexus.same(n) {
            return Ok(false);
        }
        if sark == 0 {
            return Err(Sense::invalid_param_field(8, None));
        }
        // A port the LU is not reached through: the reservation would go
        // to a nexus no session can have (INVALID FIELD IN PARAMETER LIST,
        // after the registration and holder checks, as LIO orders them).
        if !self.has_port(rel) {
            return Err(Sense::invalid_param_field(18, None));
        }
        let dest = Arc::new(Nexus {
            id: 0,
            initiator_name: port.split(",i,").next().unwrap_or(&port).to_string(),
            initiator_port: port,
            target_port: String::new(),
            relative_port: rel,
        });
        if dest.same(n) {
            return Err(Sense::invalid_param_field(24, None));
        }
        match s.pr.find(&dest) {
            Some(j) => s.pr.registrants[j].key = sark,
            None => s.pr.add(dest.clone(), sark)?,
        }
        s.pr.holder = Some(Holder { nexus: dest, kind: h.kind });
        if unreg {
            if let Some(i) = s.pr.find(n) {
                s.pr.registrants.remove(i);
            }
        }
        s.pr.generation = s.pr.generation.wrapping_add(1);
        self.update_reserved(s);
        Ok(true)
    }
}
