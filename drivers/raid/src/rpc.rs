//! The raid module's arrays and methods (SPDK's `bdev_raid_*`), on the main
//! reactor: create, delete, list, add and remove members, fail a member
//! that errs, and rebuild a member added to a degraded raid1.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pollux_core::app::App;
use pollux_core::bdev::{self, Backend, BackendChannel, Bdev, BdevEvent, BdevSpec, IoStatus, IoType, Uuid};
use pollux_core::reactor::{self, task};
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::array::{self, FAILED, Level, MISSING, Member, ONLINE, REBUILDING, Shared};

/// An array known to the module (main reactor).
pub struct Raid {
    pub sh: Arc<Shared>,
    /// Registered as a bdev (online), or still assembling.
    pub registered: RefCell<bool>,
    /// Members given at creation (their names), for assembly and config.
    pub superblock: bool,
}

thread_local! {
    static RAIDS: RefCell<Vec<Rc<Raid>>> = const { RefCell::new(Vec::new()) };
}

pub fn all() -> Vec<Rc<Raid>> {
    RAIDS.with(|r| r.borrow().clone())
}

fn find(name: &str) -> Option<Rc<Raid>> {
    all().into_iter().find(|r| r.sh.name == name)
}

fn find_by_shared(sh: &Arc<Shared>) -> Option<Rc<Raid>> {
    all().into_iter().find(|r| Arc::ptr_eq(&r.sh, sh))
}

struct RaidBackend {
    sh: Arc<Shared>,
    superblock: bool,
}

impl Backend for RaidBackend {
    fn module_name(&self) -> &'static str {
        "raid"
    }
    fn product_name(&self) -> &'static str {
        "Raid Volume"
    }
    fn supports(&self, kind: IoType) -> bool {
        // What every member with a descriptor supports.
        let all = |k| self.sh.members.iter().filter_map(|m| m.desc()).all(|d| d.bdev().supports(k));
        match kind {
            IoType::Read | IoType::Write | IoType::Reset => true,
            IoType::Flush | IoType::Unmap | IoType::WriteZeroes => all(kind),
            IoType::Compare => false,
        }
    }
    fn buffer_alignment(&self) -> usize {
        self.sh.members.iter().filter_map(|m| m.desc()).map(|d| d.bdev().buffer_alignment()).max().unwrap_or(1)
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        array::new_channel(&self.sh)
    }
    fn driver_specific(&self) -> Value {
        describe(&self.sh, self.superblock)
    }
    fn config_call(&self, _b: &Bdev) -> Option<(&'static str, Value)> {
        // As SPDK: an array with a superblock assembles from it.
        if self.superblock {
            return None;
        }
        let names: Vec<String> = self.sh.members.iter().filter_map(|m| m.name()).collect();
        Some((
            "bdev_raid_create",
            json!({
                "name": self.sh.name,
                "raid_level": self.sh.level.name(),
                "strip_size_kb": strip_kb(&self.sh),
                "base_bdevs": names,
                "uuid": self.sh.uuid.to_string(),
                "superblock": self.superblock,
            }),
        ))
    }
    fn destroy(&self) {
        let sh = self.sh.clone();
        RAIDS.with(|r| r.borrow_mut().retain(|x| !Arc::ptr_eq(&x.sh, &sh)));
        release(&sh);
    }
}

fn strip_kb(sh: &Shared) -> u64 {
    sh.strip * sh.block_size as u64 / 1024
}

fn state_of(sh: &Shared) -> &'static str {
    let online = sh.count(&[ONLINE]);
    let n = sh.members.len();
    if online == n || (online > 0 && n - online <= sh.level.redundancy(n)) {
        "online"
    } else if online + sh.count(&[MISSING]) == n || sh.count(&[ONLINE, REBUILDING]) + sh.count(&[MISSING]) == n {
        "configuring"
    } else {
        "offline"
    }
}

/// An array as `bdev_raid_get_bdevs` and `driver_specific.raid` show it.
pub fn describe(sh: &Shared, superblock: bool) -> Value {
    let members: Vec<Value> = sh
        .members
        .iter()
        .map(|m| {
            json!({
                "name": m.name(),
                "uuid": m.uuid.lock().unwrap_or_else(|e| e.into_inner()).map(|u| u.to_string()).unwrap_or_else(|| Uuid::nil().to_string()),
                "is_configured": matches!(m.state(), ONLINE | REBUILDING) && m.desc().is_some(),
                "data_offset": m.data_offset.load(Ordering::Acquire),
                "data_size": m.data_size.load(Ordering::Acquire),
                "state": array::state_name(m.state()),
            })
        })
        .collect();
    let mut v = json!({
        "name": sh.name,
        "uuid": sh.uuid.to_string(),
        "strip_size_kb": strip_kb(sh),
        "state": state_of(sh),
        "raid_level": sh.level.name(),
        "superblock": superblock,
        "num_base_bdevs": sh.members.len(),
        "num_base_bdevs_discovered": sh.members.iter().filter(|m| m.desc().is_some()).count(),
        "num_base_bdevs_operational": sh.count(&[ONLINE, REBUILDING]),
        "base_bdevs_list": members,
    });
    let slot = sh.rebuild_slot.load(Ordering::Acquire);
    if slot != u64::MAX {
        let total = sh.num_blocks.load(Ordering::Acquire).max(1);
        let done = sh.rebuild_done.load(Ordering::Acquire);
        v["process"] = json!({
            "type": "rebuild",
            "target": sh.members.get(slot as usize).and_then(|m| m.name()),
            "progress": {"blocks": done, "percent": done * 100 / total},
        });
    }
    v
}

/// Open member `name` for slot `slot` of `sh`: claimed by the raid module;
/// when it goes, the slot fails.
fn attach(sh: &Arc<Shared>, slot: usize, name: &str, state: u8) -> Result<(), RpcError> {
    let weak = Arc::downgrade(sh);
    let d = bdev::open(name, true, move |ev| {
        if ev == BdevEvent::Remove {
            if let Some(sh) = weak.upgrade() {
                fail_member(&sh, slot, IoStatus::NoDevice);
            }
        }
    })
    .map_err(RpcError::from)?;
    let b = d.bdev().clone();
    if b.block_size() != sh.block_size {
        return Err(RpcError::invalid_params(format!("bdev {name} has blocks of {} bytes, the array {}", b.block_size(), sh.block_size)));
    }
    b.claim("raid").map_err(RpcError::from)?;
    let m = &sh.members[slot];
    *m.name.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.name().to_string());
    *m.uuid.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.uuid());
    if m.data_size.load(Ordering::Acquire) == 0 {
        m.data_size.store(b.num_blocks() - m.data_offset.load(Ordering::Acquire), Ordering::Release);
    }
    *m.desc.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
    m.state.store(state, Ordering::Release);
    sh.bump();
    Ok(())
}

/// Member `slot` failed (an I/O error, or its bdev went): it leaves the
/// array, which goes on degraded if it can. From any reactor: no read is
/// sent to it from the moment this returns (before the write that failed
/// on it completes); the rest happens on the main reactor.
pub fn fail_member(sh: &Arc<Shared>, slot: usize, why: IoStatus) {
    let m = &sh.members[slot];
    // Against a rebuild's end (REBUILDING to ONLINE) at the same time: the
    // member fails whichever of the two it is in.
    loop {
        let was = m.state();
        if !matches!(was, ONLINE | REBUILDING) {
            return;
        }
        if m.state.compare_exchange(was, FAILED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            break;
        }
    }
    sh.bump();
    let sh = sh.clone();
    reactor::send_msg(reactor::ReactorId(0), move || {
        let m = &sh.members[slot];
        tracing::error!("raid {}: member {} ({}) failed: {why:?}", sh.name, slot, m.name().unwrap_or_default());
        if sh.rebuild_slot.load(Ordering::Acquire) == slot as u64 {
            sh.rebuild_slot.store(u64::MAX, Ordering::Release);
        }
        // Channels let go of its descriptor, then the array does.
        task::spawn_local(async move {
            let sh2 = sh.clone();
            task::each_reactor(move || {
                if let Some(c) = array::chan_of(&sh2) {
                    c.refresh_now();
                }
            })
            .await;
            sh.members[slot].release();
            if state_of(&sh) == "offline" {
                tracing::error!("raid {}: offline (too many members failed)", sh.name);
            }
            // SPDK's order: the members left learn that this one failed.
            if let Some(raid) = find_by_shared(&sh) {
                if raid.superblock && *raid.registered.borrow() && sh.level == Level::Raid1 {
                    if let Err(e) = crate::sb::write_all(&sh).await {
                        tracing::error!("raid {}: superblock after a failure: {e}", sh.name);
                    }
                }
            }
        });
    });
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    List(Vec<String>),
    Words(String),
}

impl Names {
    fn list(self) -> Vec<String> {
        match self {
            Names::List(v) => v,
            Names::Words(s) => s.split_whitespace().map(str::to_string).collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    raid_level: String,
    #[serde(default)]
    strip_size_kb: u64,
    base_bdevs: Names,
    uuid: Option<Uuid>,
    #[serde(default)]
    superblock: bool,
}

fn release(sh: &Shared) {
    sh.members.iter().for_each(Member::release);
}

fn forget(raid: &Rc<Raid>) {
    RAIDS.with(|x| x.borrow_mut().retain(|x| !Rc::ptr_eq(x, raid)));
    release(&raid.sh);
}

/// The superblock on bdev `name`, if it has one (read through a read-only
/// descriptor of its own).
async fn probe(name: &str) -> Option<crate::sb::Superblock> {
    let d = bdev::open(name, false, |_| {}).ok()?;
    crate::sb::read(&d).await.ok()
}

async fn create(p: Create) -> Result<bool, RpcError> {
    let level = Level::parse(&p.raid_level)
        .ok_or_else(|| RpcError::invalid_params(format!("raid_level {}: raid0, raid1 or concat", p.raid_level)))?;
    let names = p.base_bdevs.list();
    if names.is_empty() || names.len() > crate::sb::MAX_MEMBERS {
        return Err(RpcError::invalid_params("base_bdevs: 1 to 255 bdevs"));
    }
    if names.iter().any(|n| n.is_empty()) {
        return Err(RpcError::errno(libc::EINVAL, "The base bdev name cannot be empty"));
    }
    if level == Level::Raid1 && names.len() < 2 {
        return Err(RpcError::invalid_params("raid1 needs at least 2 base bdevs"));
    }
    if p.name.is_empty() || p.name.len() >= 64 {
        return Err(RpcError::errno(libc::EINVAL, "a raid bdev's name has 1 to 63 characters"));
    }
    if find(&p.name).is_some() || bdev::get(&p.name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {} exists", p.name)));
    }
    let first = names
        .iter()
        .find_map(|n| bdev::get(n))
        .ok_or_else(|| RpcError::errno(libc::ENODEV, "none of the base bdevs exists (Pollux takes the block size from one)"))?;
    let block_size = first.block_size();
    let strip = match level {
        Level::Raid1 if p.strip_size_kb != 0 => return Err(RpcError::errno(libc::EINVAL, "Strip size is not supported by raid1")),
        Level::Raid1 => 0,
        _ => {
            let bytes = p.strip_size_kb.checked_mul(1024).unwrap_or(0);
            if !p.strip_size_kb.is_power_of_two() || bytes < block_size as u64 {
                return Err(RpcError::errno(
                    libc::EINVAL,
                    format!("Invalid strip size {}: a power of two of KiB, at least one block ({block_size} bytes)", p.strip_size_kb),
                ));
            }
            bytes / block_size as u64
        }
    };
    let uuid = p.uuid.filter(|u| !u.is_nil()).unwrap_or_else(Uuid::new_v4);
    let sh = Arc::new(Shared::new(&p.name, uuid, level, strip, block_size, names.len()));
    // Known to examine (which takes members that appear later) only once
    // the members there now are attached.
    let raid = Rc::new(Raid { sh: sh.clone(), registered: RefCell::new(false), superblock: p.superblock });
    let offset = if p.superblock { crate::sb::DATA_OFFSET_BYTES / block_size as u64 } else { 0 };
    for (i, n) in names.iter().enumerate() {
        let m = &sh.members[i];
        *m.name.lock().unwrap_or_else(|e| e.into_inner()) = Some(n.clone());
        m.data_offset.store(offset, Ordering::Release);
        if bdev::get(n).is_none() {
            continue; // joins when it appears
        }
        if let Some(other) = probe(n).await.filter(|sb| sb.uuid != uuid) {
            forget(&raid);
            return Err(RpcError::errno(
                libc::EEXIST,
                format!("bdev {n} holds the superblock of another raid bdev ({} {})", other.name, other.uuid),
            ));
        }
        if let Err(e) = attach(&sh, i, n, ONLINE) {
            forget(&raid);
            return Err(e);
        }
    }
    if find(&p.name).is_some() || bdev::get(&p.name).is_some() {
        forget(&raid);
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {} exists", p.name)));
    }
    RAIDS.with(|r| r.borrow_mut().push(raid.clone()));
    if sh.members.iter().all(|m| m.desc().is_some()) {
        if let Err(e) = go_online(&raid, None).await {
            forget(&raid);
            return Err(e);
        }
    } else {
        tracing::info!("raid {}: waiting for its other members", sh.name);
    }
    bdev::register_examiner("raid", examine).map_err(RpcError::from)?;
    Ok(true)
}

/// Every member is there: size the array, write its superblock, register
/// it. `from` is the superblock it was assembled from.
async fn go_online(raid: &Rc<Raid>, from: Option<&crate::sb::Superblock>) -> Result<(), RpcError> {
    let sh = &raid.sh;
    let n = sh.members.len();
    let blocks = match from {
        Some(sb) => sb.raid_size,
        None => {
            let sizes: Vec<u64> = sh.members.iter().map(|m| m.data_size.load(Ordering::Acquire)).collect();
            array::capacity(sh.level, sh.strip, &sizes, n as u64)
                .ok_or_else(|| RpcError::invalid_params("the array would hold more than 2^64 blocks"))?
        }
    };
    if blocks == 0 {
        return Err(RpcError::invalid_params("the base bdevs are smaller than one strip"));
    }
    if from.is_none() {
        match sh.level {
            Level::Raid0 => sh.members.iter().for_each(|m| m.data_size.store(blocks / n as u64, Ordering::Release)),
            Level::Raid1 => sh.members.iter().for_each(|m| m.data_size.store(blocks, Ordering::Release)),
            Level::Concat => (0..n).for_each(|i| sh.members[i].data_size.store(sh.usable(i), Ordering::Release)),
        }
    }
    sh.num_blocks.store(blocks, Ordering::Release);
    if raid.superblock {
        crate::sb::write_all(sh).await.map_err(|e| RpcError::errno(libc::EIO, format!("writing the superblock: {e}")))?;
    }
    register(raid)
}

/// A bdev appeared: a member of an array being assembled (by its
/// superblock, or by name for an array made without one), or a member of
/// an online raid1 coming back (rebuilt).
pub fn examine(b: &Arc<Bdev>, done: bdev::Examination) {
    let b = b.clone();
    if b.claimed_by().is_some()
        || all().iter().any(|r| r.sh.members.iter().any(|m| m.name().as_deref() == Some(b.name()) && m.desc().is_some()))
    {
        return;
    }
    task::spawn_local(async move {
        let _done = done;
        match probe(b.name()).await {
            Some(sb) => {
                if let Err(e) = examine_sb(&b, sb).await {
                    tracing::warn!("raid: {} not taken: {}", b.name(), e.message);
                }
            }
            None => examine_no_sb(&b).await,
        }
    });
}

async fn examine_no_sb(b: &Arc<Bdev>) {
    for raid in all().into_iter().filter(|r| !*r.registered.borrow() && !r.superblock) {
        let Some(slot) = raid.sh.members.iter().position(|m| m.desc().is_none() && m.name().as_deref() == Some(b.name())) else {
            continue;
        };
        if let Err(e) = attach(&raid.sh, slot, b.name(), ONLINE) {
            tracing::error!("raid {}: member {}: {}", raid.sh.name, b.name(), e.message);
            return;
        }
        if raid.sh.members.iter().all(|m| m.desc().is_some()) {
            if let Err(e) = go_online(&raid, None).await {
                tracing::error!("raid {}: {}", raid.sh.name, e.message);
            }
        }
        return;
    }
}

/// SPDK's `raid_bdev_examine_sb`.
async fn examine_sb(b: &Arc<Bdev>, sb: crate::sb::Superblock) -> Result<(), RpcError> {
    use crate::sb::SB_CONFIGURED;
    let level =
        crate::sb::level_of(sb.level).ok_or_else(|| RpcError::invalid_params(format!("raid level {} is not supported", sb.level)))?;
    if sb.block_size != b.block_size() || sb.uuid.is_nil() {
        return Err(RpcError::invalid_params("the superblock does not suit the bdev"));
    }
    let uuid = b.uuid();
    let entry = sb
        .entries
        .iter()
        .find(|e| e.uuid == uuid)
        .ok_or_else(|| RpcError::invalid_params(format!("{} is not in the superblock", b.name())))?;
    sb.check_geometry(level, entry, b.num_blocks()).map_err(RpcError::invalid_params)?;
    let slot = entry.slot as usize;
    let mut raid = all().into_iter().find(|r| r.sh.uuid == sb.uuid);
    if let Some(r) = raid.clone() {
        let seq = r.sh.sb_seq.load(Ordering::Acquire);
        if sb.seq_number > seq {
            if *r.registered.borrow() {
                return Err(RpcError::errno(libc::EBUSY, "a newer superblock for an online array"));
            }
            tracing::info!("raid {}: a newer superblock (seq {} > {seq}) on {}: assembling from it", r.sh.name, sb.seq_number, b.name());
            forget(&r);
            raid = None;
        }
    }
    let raid = match raid {
        Some(r) => r,
        None => {
            if !r_name_free(&sb.name) {
                return Err(RpcError::errno(libc::EEXIST, format!("a bdev named {} exists", sb.name)));
            }
            let strip = if level == Level::Raid1 { 0 } else { sb.strip_size as u64 };
            if level != Level::Raid1 && !strip.is_power_of_two() {
                return Err(RpcError::invalid_params("strip size"));
            }
            let sh = Arc::new(Shared::new(&sb.name, sb.uuid, level, strip, sb.block_size, sb.num_base_bdevs as usize));
            for e in &sb.entries {
                let m = &sh.members[e.slot as usize];
                m.data_offset.store(e.data_offset, Ordering::Release);
                m.data_size.store(e.data_size, Ordering::Release);
                if e.state == SB_CONFIGURED {
                    *m.uuid.lock().unwrap_or_else(|x| x.into_inner()) = Some(e.uuid);
                }
            }
            sh.sb_seq.store(sb.seq_number, Ordering::Release);
            let r = Rc::new(Raid { sh, registered: RefCell::new(false), superblock: true });
            RAIDS.with(|x| x.borrow_mut().push(r.clone()));
            tracing::info!("raid {}: assembling from the superblock on {} (seq {})", sb.name, b.name(), sb.seq_number);
            r
        }
    };
    let sh = raid.sh.clone();
    let m = &sh.members[slot];
    if *raid.registered.borrow() {
        // Online: a member that left comes back, and is rebuilt.
        if !matches!(m.state(), FAILED | MISSING) || m.desc().is_some() || sh.level != Level::Raid1 {
            return Err(RpcError::errno(libc::EEXIST, format!("slot {slot} of {} is taken", sh.name)));
        }
        return start_rebuild(&sh, slot, b.name());
    }
    let expected = *m.uuid.lock().unwrap_or_else(|x| x.into_inner()) == Some(uuid);
    if !expected {
        return Err(RpcError::invalid_params(format!("{} is not an active member of {}: ignored", b.name(), sh.name)));
    }
    if m.desc().is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("{} is in {} already", b.name(), sh.name)));
    }
    attach(&sh, slot, b.name(), ONLINE)?;
    let waiting = sh.members.iter().any(|m| m.uuid.lock().unwrap_or_else(|x| x.into_inner()).is_some() && m.desc().is_none());
    if waiting {
        return Ok(());
    }
    // Every member the superblock trusts is here (a raid1 recorded as
    // degraded comes up degraded).
    for m in sh.members.iter().filter(|m| m.desc().is_none()) {
        m.state.store(MISSING, Ordering::Release);
    }
    go_online(&raid, Some(&sb)).await.inspect_err(|_| forget(&raid))
}

fn r_name_free(name: &str) -> bool {
    bdev::get(name).is_none() && find(name).is_none()
}

/// Put bdev `name` into free slot `slot` of online raid1 `sh` and rebuild it.
fn start_rebuild(sh: &Arc<Shared>, slot: usize, name: &str) -> Result<(), RpcError> {
    // One rebuild task at a time, including one still ending after its
    // member failed.
    if sh.rebuild_running.swap(true, Ordering::AcqRel) {
        return Err(RpcError::errno(libc::EPERM, format!("raid bdev {} is rebuilding already", sh.name)));
    }
    if let Err(e) = attach(sh, slot, name, REBUILDING) {
        sh.rebuild_running.store(false, Ordering::Release);
        return Err(e);
    }
    sh.rebuild_slot.store(slot as u64, Ordering::Release);
    sh.rebuild_done.store(0, Ordering::Release);
    task::spawn_local(crate::rebuild::run(sh.clone(), slot));
    Ok(())
}

fn register(raid: &Rc<Raid>) -> Result<(), RpcError> {
    let sh = &raid.sh;
    let spec = BdevSpec {
        name: sh.name.clone(),
        block_size: sh.block_size,
        num_blocks: sh.num_blocks.load(Ordering::Acquire),
        uuid: Some(sh.uuid),
        backend: Arc::new(RaidBackend { sh: sh.clone(), superblock: raid.superblock }),
    };
    match bdev::register(spec) {
        Ok(_) => {
            *raid.registered.borrow_mut() = true;
            Ok(())
        }
        Err(e) => {
            forget(raid);
            Err(RpcError::from(e))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
    #[serde(default)]
    clear_sb: bool,
}

fn delete(p: Name, r: Responder) {
    let Some(raid) = find(&p.name) else {
        return r.err(RpcError::errno(libc::ENODEV, format!("raid bdev {} not found", p.name)));
    };
    task::spawn_local(async move {
        if p.clear_sb && raid.superblock {
            // SPDK's clear_sb: the superblock's blocks zeroed on every member.
            for m in &raid.sh.members {
                if let Some(d) = m.desc() {
                    if let Err(e) = crate::sb::clear(&d).await {
                        tracing::error!("raid {}: clearing the superblock on {}: {e}", raid.sh.name, d.bdev().name());
                    }
                }
            }
        }
        if *raid.registered.borrow() {
            return bdev::unregister(&p.name, move |res| r.result(res.map(|()| true)));
        }
        forget(&raid);
        r.ok(true)
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    #[serde(default = "all_category")]
    category: String,
}

fn all_category() -> String {
    "all".into()
}

fn get_bdevs(p: GetBdevs) -> Result<Vec<Value>, RpcError> {
    if !["all", "online", "configuring", "offline"].contains(&p.category.as_str()) {
        return Err(RpcError::invalid_params(format!("category {}: all, online, configuring or offline", p.category)));
    }
    Ok(all().iter().map(|r| describe(&r.sh, r.superblock)).filter(|v| p.category == "all" || v["state"] == p.category.as_str()).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBase {
    raid_bdev: String,
    base_bdev: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBase {
    name: String,
}

/// `bdev_raid_remove_base_bdev`: the member leaves as if it failed.
fn remove_base(p: RemoveBase) -> Result<bool, RpcError> {
    let b = bdev::get(&p.name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.name)))?;
    for raid in all() {
        if let Some(slot) = raid.sh.members.iter().position(|m| m.name().as_deref() == Some(b.name()) && m.desc().is_some()) {
            fail_member(&raid.sh, slot, IoStatus::NoDevice);
            return Ok(true);
        }
    }
    Err(RpcError::errno(libc::ENODEV, format!("bdev {} is not a member of a raid bdev", p.name)))
}

/// `bdev_raid_add_base_bdev`: into a free slot (failed or missing); for a
/// raid1 that is online, the new member is rebuilt from the others while
/// I/O runs.
fn add_base(p: AddBase) -> Result<bool, RpcError> {
    let raid = find(&p.raid_bdev).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("raid bdev {} not found", p.raid_bdev)))?;
    let sh = raid.sh.clone();
    let slot = sh
        .members
        .iter()
        .position(|m| matches!(m.state(), FAILED | MISSING) && m.desc().is_none())
        .ok_or_else(|| RpcError::errno(libc::EINVAL, format!("raid bdev {} has no free slot", sh.name)))?;
    let b = bdev::get(&p.base_bdev).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("bdev {} not found", p.base_bdev)))?;
    let need = sh.members[slot].data_offset.load(Ordering::Acquire).saturating_add(sh.members[slot].data_size.load(Ordering::Acquire));
    if b.num_blocks() < need {
        return Err(RpcError::invalid_params(format!("bdev {} has {} blocks; the slot needs {need}", p.base_bdev, b.num_blocks())));
    }
    // The array offers what every member did: a new one must too.
    let missing: Vec<&str> = [IoType::Flush, IoType::Unmap, IoType::WriteZeroes]
        .into_iter()
        .filter(|k| sh.members.iter().filter_map(|m| m.desc()).all(|d| d.bdev().supports(*k)) && !b.supports(*k))
        .map(|k| k.name())
        .collect();
    if !missing.is_empty() {
        return Err(RpcError::invalid_params(format!("bdev {} lacks {} the raid bdev's members offer", p.base_bdev, missing.join(", "))));
    }
    if sh.level != Level::Raid1 || sh.count(&[ONLINE]) == 0 {
        return Err(RpcError::errno(
            libc::EOPNOTSUPP,
            format!("raid bdev {}: a member can be added only to a raid1 that is online (to be rebuilt)", sh.name),
        ));
    }
    if raid.superblock {
        sh.members[slot].data_offset.store(crate::sb::DATA_OFFSET_BYTES / sh.block_size as u64, Ordering::Release);
    }
    start_rebuild(&sh, slot, &p.base_bdev)?;
    Ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    process_window_size_kb: Option<u64>,
    process_max_bandwidth_mb_sec: Option<u64>,
}

/// `bdev_raid_set_options`: the rebuild's window and bandwidth.
pub static WINDOW_KB: AtomicU64 = AtomicU64::new(1024);
pub static MAX_MB_SEC: AtomicU64 = AtomicU64::new(0);

fn write_config(out: &mut pollux_core::app::ConfigWriter) {
    out.call(
        "bdev_raid_set_options",
        json!({"process_window_size_kb": WINDOW_KB.load(Ordering::Relaxed), "process_max_bandwidth_mb_sec": MAX_MB_SEC.load(Ordering::Relaxed)}),
    );
}

pub fn register_rpcs(app: &mut App) {
    pollux_core::bdev::rpc::register_module_config("raid", write_config);
    let m = app.methods();
    m.register("bdev_raid_create", States::RUNTIME, |p: Create, r: Responder| task::spawn_local(async move { r.result(create(p).await) }));
    m.register("bdev_raid_delete", States::RUNTIME, delete);
    m.register("bdev_raid_get_bdevs", States::RUNTIME, |p: Option<GetBdevs>, r: Responder| {
        r.result(get_bdevs(p.unwrap_or(GetBdevs { category: all_category() })))
    });
    m.register("bdev_raid_add_base_bdev", States::RUNTIME, |p: AddBase, r: Responder| r.result(add_base(p)));
    m.register("bdev_raid_remove_base_bdev", States::RUNTIME, |p: RemoveBase, r: Responder| r.result(remove_base(p)));
    m.register("bdev_raid_set_options", States::ANY, |p: SetOptions, r: Responder| {
        if let Some(w) = p.process_window_size_kb {
            if w == 0 {
                return r.err(RpcError::invalid_params("process_window_size_kb must be at least 1"));
            }
            WINDOW_KB.store(w, Ordering::Relaxed);
        }
        if let Some(b) = p.process_max_bandwidth_mb_sec {
            MAX_MB_SEC.store(b, Ordering::Relaxed);
        }
        r.ok(true)
    });
}
