//! Logical units: a bdev seen through SBC-4/SPC-5.
//!
//! A [`Lun`] is shared by every reactor (`Arc<Lun>`, `Send + Sync`): its
//! identity, its open bdev descriptor, and the state every I_T nexus sees the
//! same way -- persistent reservations, the SPC-2 reservation, mode
//! parameters and pending unit attentions. That state sits behind a mutex
//! taken only on the control path (reservation and mode commands, resets);
//! the per-I/O checks read two atomics (`reserved`, `ua_pending`) and take
//! the lock only when one says there is something to look at.
//!
//! Each session uses a LU through a [`crate::LunPort`] on its own reactor:
//! the nexus identity plus that reactor's bdev channel.

pub(crate) mod mode;
pub mod pr;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pollux_core::bdev::{Bdev, Descriptor, IoType};

pub use mode::ModeParams;
use pr::PrState;

use crate::sense::{Asc, Sense};

/// An I_T nexus: one initiator port seen through one target port.
#[derive(Debug)]
pub struct Nexus {
    /// Unique per nexus object (per session), for unit attention bookkeeping.
    pub id: u64,
    /// The initiator name (iSCSI: the IQN).
    pub initiator_name: String,
    /// The initiator port name (iSCSI: `IQN,i,0xISID`).
    pub initiator_port: String,
    /// The target port name (iSCSI: `IQN,t,0xTPGT`).
    pub target_port: String,
    /// Relative target port identifier (iSCSI: the portal group tag).
    pub relative_port: u16,
}

static NEXT_NEXUS: AtomicU64 = AtomicU64::new(1);

impl Nexus {
    pub fn new(initiator_name: &str, initiator_port: &str, target_port: &str, relative_port: u16) -> Arc<Nexus> {
        Arc::new(Nexus {
            id: NEXT_NEXUS.fetch_add(1, Ordering::Relaxed),
            initiator_name: initiator_name.to_string(),
            initiator_port: initiator_port.to_string(),
            target_port: target_port.to_string(),
            relative_port,
        })
    }

    /// Whether two nexus objects name the same I_T nexus.
    pub fn same(&self, other: &Nexus) -> bool {
        self.initiator_port.eq_ignore_ascii_case(&other.initiator_port) && self.relative_port == other.relative_port
    }

    /// The iSCSI TransportID (SPC-5 7.6.4.6, format 01b: port name with ISID).
    pub fn transport_id(&self) -> Vec<u8> {
        let name = self.initiator_port.as_bytes();
        let len = (name.len() + 1).next_multiple_of(4).max(20);
        let mut v = vec![0u8; 4 + len];
        v[0] = 0x40 | 0x05;
        v[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        v[4..4 + name.len()].copy_from_slice(name);
        v
    }
}

/// Identity of a LU, stable across restarts: derived from the bdev UUID.
#[derive(Clone, Debug)]
pub struct Identity {
    pub vendor: [u8; 8],
    pub product: [u8; 16],
    pub revision: [u8; 4],
    /// Unit serial number (VPD 0x80): the UUID's hex digits.
    pub serial: String,
    /// NAA IEEE Registered Extended designator (type 6), 16 bytes.
    pub naa: [u8; 16],
    /// The device (target) name, for the SCSI name string designator.
    pub device_name: String,
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut b = [b' '; N];
    for (d, c) in b.iter_mut().zip(s.bytes()) {
        *d = c;
    }
    b
}

impl Identity {
    pub fn new(bdev: &Bdev, device_name: &str) -> Identity {
        let u = bdev.uuid();
        let bytes = u.as_bytes();
        // NAA 6 (IEEE Registered Extended): NAA nibble, a zero company id,
        // then 100 bits of vendor specific identifier taken from the UUID.
        let mut naa = [0u8; 16];
        naa[0] = 0x60;
        naa[3] = bytes[0] & 0x0f;
        naa[4..16].copy_from_slice(&bytes[4..16]);
        Identity {
            vendor: padded("POLLUX"),
            product: padded("Pollux disk"),
            revision: padded(&pollux_core::VERSION[..pollux_core::VERSION.len().min(4)]),
            serial: u.simple().to_string(),
            naa,
            device_name: device_name.to_string(),
        }
    }
}

/// A pending unit attention for one nexus.
struct NexusEntry {
    nexus: Arc<Nexus>,
    uas: VecDeque<Asc>,
}

/// State shared by all nexuses, changed on the control path.
pub(crate) struct Shared {
    pub(crate) pr: PrState,
    /// Holder of an SPC-2 RESERVE(6)/(10).
    pub(crate) reserve6: Option<Arc<Nexus>>,
    pub(crate) mode: ModeParams,
    nexuses: HashMap<u64, NexusEntry>,
    /// EXTENDED COPY status by (initiator port, list id): segments done
    /// once finished.
    copies: HashMap<(String, u8), Option<u16>>,
}

/// A logical unit.
pub struct Lun {
    id: u64,
    desc: Descriptor,
    ident: Identity,
    shared: Mutex<Shared>,
    /// Some reservation (persistent or SPC-2) is held: I/O must check it.
    reserved: AtomicBool,
    /// Total unit attentions pending over all nexuses.
    ua_pending: AtomicUsize,
    /// Mirrors of mode parameters the I/O path reads.
    pub(crate) descriptor_sense: AtomicBool,
    pub(crate) write_cache: AtomicBool,
    /// Software write protect (control mode page SWP).
    pub(crate) software_write_protect: AtomicBool,
    /// The LU was removed (its bdev is going away).
    removed: AtomicBool,
    /// Its device's relative target ports.
    ports: crate::device::Ports,
}

impl std::fmt::Debug for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lun").field("id", &self.id).field("bdev", &self.desc.bdev().name()).finish()
    }
}

impl Lun {
    /// A LU with id `id` on an open bdev.
    pub fn new(id: u64, desc: Descriptor, device_name: &str, ports: crate::device::Ports) -> Arc<Lun> {
        let ident = Identity::new(desc.bdev(), device_name);
        let mode = ModeParams::default();
        Arc::new(Lun {
            id,
            ident,
            descriptor_sense: AtomicBool::new(mode.d_sense),
            write_cache: AtomicBool::new(mode.wce),
            software_write_protect: AtomicBool::new(mode.swp),
            shared: Mutex::new(Shared { pr: PrState::default(), reserve6: None, mode, nexuses: HashMap::new(), copies: HashMap::new() }),
            desc,
            reserved: AtomicBool::new(false),
            ua_pending: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            ports,
        })
    }

    /// Whether relative target port `rel` reaches this LU.
    pub(crate) fn has_port(&self, rel: u16) -> bool {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).contains(&rel)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn bdev(&self) -> &Arc<Bdev> {
        self.desc.bdev()
    }

    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    pub fn identity(&self) -> &Identity {
        &self.ident
    }

    pub fn block_size(&self) -> u32 {
        self.desc.bdev().block_size()
    }

    pub fn num_blocks(&self) -> u64 {
        self.desc.bdev().num_blocks()
    }

    pub fn writable(&self) -> bool {
        self.desc.writable()
    }

    /// Thin provisioning: advertised when the bdev can unmap.
    pub fn thin(&self) -> bool {
        self.desc.bdev().supports(IoType::Unmap)
    }

    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recompute the `reserved` fast-path flag after a reservation change.
    pub(crate) fn update_reserved(&self, s: &Shared) {
        self.reserved.store(s.reserve6.is_some() || s.pr.holder.is_some(), Ordering::SeqCst);
    }

    pub(crate) fn is_reserved(&self) -> bool {
        self.reserved.load(Ordering::Relaxed)
    }

    // ---- nexus bookkeeping and unit attentions ----

    pub(crate) fn attach(&self, nexus: &Arc<Nexus>) {
        let mut s = self.lock();
        s.nexuses.insert(nexus.id, NexusEntry { nexus: nexus.clone(), uas: VecDeque::new() });
    }

    /// A session ended: forget its nexus (I_T nexus loss releases an SPC-2
    /// reservation it held; persistent reservations stay).
    pub(crate) fn detach(&self, nexus: &Arc<Nexus>) {
        let mut s = self.lock();
        if let Some(e) = s.nexuses.remove(&nexus.id) {
            self.ua_pending.fetch_sub(e.uas.len(), Ordering::SeqCst);
        }
        if s.reserve6.as_ref().is_some_and(|h| h.same(nexus)) {
            s.reserve6 = None;
            self.update_reserved(&s);
        }
    }

    /// Queue a unit attention for every attached nexus except `except`.
    pub(crate) fn raise_ua(&self, s: &mut Shared, asc: Asc, except: Option<&Nexus>) {
        for e in s.nexuses.values_mut() {
            if except.is_some_and(|x| x.same(&e.nexus)) {
                continue;
            }
            if e.uas.len() < 8 && !e.uas.contains(&asc) {
                e.uas.push_back(asc);
                self.ua_pending.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Queue a unit attention for the nexuses matching `pred`.
    pub(crate) fn raise_ua_for(&self, s: &mut Shared, asc: Asc, pred: impl Fn(&Nexus) -> bool) {
        for e in s.nexuses.values_mut() {
            if pred(&e.nexus) && e.uas.len() < 8 && !e.uas.contains(&asc) {
                e.uas.push_back(asc);
                self.ua_pending.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The bdev's size changed: every nexus gets CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self) {
        let mut s = self.lock();
        self.raise_ua(&mut s, Asc::CAPACITY_DATA_HAS_CHANGED, None);
    }

    /// Take the oldest unit attention pending for `nexus`, if any.
    pub(crate) fn take_ua(&self, nexus: &Nexus) -> Option<Sense> {
        if self.ua_pending.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut s = self.lock();
        let e = s.nexuses.get_mut(&nexus.id)?;
        let asc = e.uas.pop_front()?;
        self.ua_pending.fetch_sub(1, Ordering::SeqCst);
        Some(Sense::unit_attention(asc))
    }

    /// LOGICAL UNIT RESET (also part of a target warm reset): drop the
    /// SPC-2 reservation and tell every other nexus. Persistent
    /// reservations stay (SPC-4 5.13.11: only a power-on may clear them,
    /// and the iSCSI target refuses the cold reset that would be one).
    pub fn reset(&self, by: Option<&Nexus>) {
        let mut s = self.lock();
        s.reserve6 = None;
        self.update_reserved(&s);
        self.raise_ua(&mut s, Asc::DEVICE_RESET_OCCURRED, by);
    }

    /// Remember the state of an EXTENDED COPY for RECEIVE COPY RESULTS.
    pub(crate) fn record_copy(&self, n: &Nexus, list_id: u8, segments: Option<u16>) {
        let mut s = self.lock();
        if s.copies.len() > 256 {
            s.copies.clear();
        }
        s.copies.insert((n.initiator_port.clone(), list_id), segments);
    }

    /// The state of an earlier EXTENDED COPY: `None` if unknown,
    /// `Some(None)` while running, `Some(Some(segments))` once done.
    pub(crate) fn copy_status(&self, n: &Nexus, list_id: u8) -> Option<Option<u16>> {
        self.lock().copies.get(&(n.initiator_port.clone(), list_id)).copied()
    }

    /// Persistent-reservation generation and registrant count (for RPCs).
    pub fn pr_summary(&self) -> (u32, usize) {
        let s = self.lock();
        (s.pr.generation, s.pr.registrants.len())
    }
}

static_assertions::assert_impl_all!(Lun: Send, Sync);
