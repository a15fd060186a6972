//! A SCSI target device: the logical units one target exports, by LUN.
//! Answers REPORT LUNS, and the commands addressed to a LUN with no LU.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pollux_core::bdev::{self, BdevError, BdevEvent};
use pollux_core::reactor::{self, ReactorId};

use crate::cdb::{be32, op};
use crate::exec::{ScsiCommand, put_data};
use crate::lun::Lun;
use crate::sense::{Asc, SENSE_MAX, Sense, SenseKey, status};

/// Highest LUN a device accepts (single-level flat addressing).
pub const MAX_LUN: u64 = 0x3fff;

/// The LUs of one target.
#[derive(Debug)]
pub struct Device {
    name: String,
    luns: Mutex<BTreeMap<u64, Arc<Lun>>>,
    /// Bumped on every change of the LU set.
    generation: AtomicU64,
    /// The relative target port identifiers the device is reached
    /// through (an iSCSI target's portal group tags), shared with its LUs.
    ports: Ports,
}

/// Relative target port identifiers, shared by a device and its LUs.
pub type Ports = Arc<Mutex<Vec<u16>>>;

impl Device {
    pub fn new(name: &str) -> Arc<Device> {
        Arc::new(Device {
            name: name.to_string(),
            luns: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            ports: Ports::default(),
        })
    }

    /// The relative target ports the device is reached through (REGISTER
    /// AND MOVE may move a reservation to an I_T nexus through one of them
    /// only).
    pub fn set_ports(&self, ports: impl IntoIterator<Item = u16>) {
        let mut p: Vec<u16> = ports.into_iter().collect();
        p.sort_unstable();
        p.dedup();
        *self.ports.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Lun>>> {
        self.luns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open `bdev_name` and export it as LUN `id` (main reactor). The LU is
    /// removed when its bdev is deleted.
    pub fn add_lun(self: &Arc<Self>, id: u64, bdev_name: &str) -> Result<Arc<Lun>, BdevError> {
        if id > MAX_LUN {
            return Err(BdevError::Invalid(format!("LUN {id} is above {MAX_LUN}")));
        }
        if self.map().contains_key(&id) {
            return Err(BdevError::Exists(format!("LUN {id} of {}", self.name)));
        }
        if let Some(b) = bdev::get(bdev_name) {
            b.check_exportable_block_size("a SCSI logical unit")?;
        }
        let me: Weak<Device> = Arc::downgrade(self);
        let desc = bdev::open(bdev_name, true, move |ev| {
            let Some(d) = me.upgrade() else { return };
            match ev {
                // Descriptors are closed on the main reactor's say-so.
                BdevEvent::Remove => reactor::send_msg(ReactorId(0), move || d.remove_lun(id)),
                // The LU reads its size from the bdev; initiators hear of
                // the change (SBC: CAPACITY DATA HAS CHANGED).
                BdevEvent::Resize => {
                    if let Some(l) = d.map().get(&id).cloned() {
                        l.capacity_changed();
                    }
                }
            }
        })?;
        let lun = Lun::new(id, desc, &self.name, self.ports.clone());
        self.map().insert(id, lun.clone());
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(lun)
    }

    /// Stop exporting a LUN; sessions drop it at their next command.
    pub fn remove_lun(&self, id: u64) {
        if let Some(l) = self.map().remove(&id) {
            l.mark_removed();
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Remove every LU (the target is going away).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.map());
        for l in all.values() {
            l.mark_removed();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn lun(&self, id: u64) -> Option<Arc<Lun>> {
        self.map().get(&id).cloned()
    }

    pub fn luns(&self) -> Vec<Arc<Lun>> {
        self.map().values().cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// REPORT LUNS, whatever LUN it was addressed to.
    pub fn report_luns<C: ScsiCommand>(&self, mut cmd: Box<C>) {
        let t = cmd.task();
        let alloc = be32(&t.cdb, 6) as usize;
        let select = t.cdb[2];
        if select > 2 {
            t.fail(Sense::invalid_cdb_field(2, None));
            return cmd.complete();
        }
        if alloc < 16 {
            t.fail(Sense::invalid_cdb_field(6, None));
            return cmd.complete();
        }
        let ids: Vec<u64> = if select == 1 { Vec::new() } else { self.map().keys().copied().collect() };
        let mut d = Vec::with_capacity(8 + 8 * ids.len());
        d.extend_from_slice(&((ids.len() * 8) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for id in ids {
            d.extend_from_slice(&encode_lun(id));
        }
        if !put_data(t, &d, alloc) {
            t.set_status(status::BUSY);
        }
        cmd.complete()
    }

    /// A command for a LUN with no LU behind it.
    pub fn no_lun<C: ScsiCommand>(&self, mut cmd: Box<C>) {
        let t = cmd.task();
        match t.opcode() {
            op::REPORT_LUNS => return self.report_luns(cmd),
            op::INQUIRY => {
                if t.cdb[1] & 0x01 != 0 {
                    t.fail(Sense::illegal(Asc::LUN_NOT_SUPPORTED));
                } else {
                    let alloc = crate::cdb::be16(&t.cdb, 3) as usize;
                    if !put_data(t, &crate::exec::inquiry_no_lun(), alloc) {
                        t.set_status(status::BUSY);
                    }
                }
            }
            op::REQUEST_SENSE => {
                let mut b = [0u8; SENSE_MAX];
                let n = Sense::new(SenseKey::IllegalRequest, Asc::LUN_NOT_SUPPORTED).encode(t.cdb[1] & 1 != 0, &mut b);
                let alloc = t.cdb[4] as usize;
                if !put_data(t, &b[..n], alloc) {
                    t.set_status(status::BUSY);
                }
            }
            _ => t.fail(Sense::illegal(Asc::LUN_NOT_SUPPORTED)),
        }
        cmd.complete()
    }
}

/// The 8-byte LUN of REPORT LUNS (SAM-5 4.7): peripheral addressing below
/// 256, flat space addressing above.
pub fn encode_lun(id: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if id < 256 {
        b[1] = id as u8;
    } else {
        b[0] = 0x40 | ((id >> 8) as u8 & 0x3f);
        b[1] = id as u8;
    }
    b
}

/// The LUN number of an 8-byte LUN field, if its addressing is understood.
pub fn decode_lun(b: [u8; 8]) -> Option<u64> {
    match b[0] >> 6 {
        0 if b[0] == 0 => Some(b[1] as u64),
        1 => Some((((b[0] & 0x3f) as u64) << 8) | b[1] as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_fields_round_trip() {
        for id in [0, 1, 255, 256, 0x3fff] {
            assert_eq!(decode_lun(encode_lun(id)), Some(id));
        }
        assert_eq!(decode_lun([0x80, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
