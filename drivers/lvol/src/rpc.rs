//! The `bdev_lvol_*` methods, with SPDK's names and parameters.

use std::rc::Rc;
use std::sync::Arc;

use pollux_core::app::App;
use pollux_core::bdev::{self, Uuid};
use pollux_core::reactor::task;
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::Value;

use crate::blob::{Blob, ClearMethod};
use crate::format;
use crate::lvs::{self, LVOL_NAME_MAX, LVS_NAME_MAX, Lvol, Lvs};
use crate::store::StoreError;
use crate::volume::Volume;

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        RpcError::errno(e.errno(), e)
    }
}

fn not_found(what: &str) -> RpcError {
    RpcError::errno(libc::ENODEV, format!("{what} not found"))
}

/// The store named by `uuid` or `lvs_name` (exactly one).
fn pick_lvs(uuid: &Option<String>, name: &Option<String>) -> Result<Rc<Lvs>, RpcError> {
    match (uuid, name) {
        (Some(u), None) => {
            let u: Uuid = u.parse().map_err(|_| RpcError::invalid_params(format!("{u} is not a UUID")))?;
            lvs::by_uuid(&u).ok_or_else(|| not_found(&format!("lvol store {u}")))
        }
        (None, Some(n)) => lvs::by_name(n).ok_or_else(|| not_found(&format!("lvol store {n}"))),
        _ => Err(RpcError::invalid_params("give either uuid or lvs_name")),
    }
}

fn pick_lvol(name: &str) -> Result<(Rc<Lvs>, u64), RpcError> {
    lvs::find_lvol(name).ok_or_else(|| not_found(&format!("lvol {name}")))
}

fn check_lvol_name(l: &Lvs, name: &str) -> Result<(), RpcError> {
    if name.is_empty() || name.len() >= LVOL_NAME_MAX {
        return Err(RpcError::invalid_params(format!("an lvol name has 1 to {} characters", LVOL_NAME_MAX - 1)));
    }
    if l.lvol_by_name(name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("lvol {name} exists in {}", l.name.borrow())));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLvs {
    bdev_name: String,
    lvs_name: String,
    #[serde(default = "d_cluster")]
    cluster_sz: u32,
    clear_method: Option<String>,
    #[serde(default = "d_ratio")]
    num_md_pages_per_cluster_ratio: u32,
    md_page_size: Option<u32>,
}
fn d_cluster() -> u32 {
    4 << 20
}
fn d_ratio() -> u32 {
    100
}

async fn create_lvstore(p: CreateLvs) -> Result<String, RpcError> {
    if p.md_page_size.is_some_and(|s| s != format::PAGE as u32) {
        return Err(RpcError::invalid_params("md_page_size: only 4096 is supported"));
    }
    let clear = match p.clear_method.as_deref() {
        None => ClearMethod::Unmap,
        Some(s) => {
            ClearMethod::parse(s).ok_or_else(|| RpcError::invalid_params(format!("clear_method {s}: none, unmap or write_zeroes")))?
        }
    };
    let l = lvs::create(&p.bdev_name, &p.lvs_name, p.cluster_sz, clear, p.num_md_pages_per_cluster_ratio).await?;
    Ok(l.uuid.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LvsRef {
    uuid: Option<String>,
    lvs_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameLvs {
    old_name: String,
    new_name: String,
}

async fn rename_lvstore(p: RenameLvs) -> Result<bool, RpcError> {
    let l = lvs::by_name(&p.old_name).ok_or_else(|| not_found(&format!("lvol store {}", p.old_name)))?;
    if p.new_name == p.old_name {
        return Ok(true);
    }
    if p.new_name.is_empty() || p.new_name.len() >= LVS_NAME_MAX {
        return Err(RpcError::invalid_params(format!("an lvol store name has 1 to {} characters", LVS_NAME_MAX - 1)));
    }
    if lvs::by_name(&p.new_name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("lvol store {} exists", p.new_name)));
    }
    {
        let _g = l.store.lock().await;
        l.open()?;
        let mut v = p.new_name.as_bytes().to_vec();
        v.push(0);
        l.store.state.borrow_mut().blobs.get_mut(&l.super_blob).ok_or(StoreError::NoBlob(l.super_blob))?.set_xattr("name", v);
        l.store.persist(l.super_blob, crate::store::Extents::New).await?;
    }
    let lvols: Vec<(String, String)> =
        l.lvols.borrow().values().filter(|v| v.registered).map(|v| (v.bdev_name(), v.name.clone())).collect();
    for (bdev_name, n) in lvols {
        let _ = bdev::remove_alias(&bdev_name, &format!("{}/{n}", p.old_name));
        let _ = bdev::add_alias(&bdev_name, &format!("{}/{n}", p.new_name));
    }
    *l.name.borrow_mut() = p.new_name;
    Ok(true)
}

/// The clusters of a volume of `size_in_mib` (create, resize): at least
/// one, and up to 1024 times its store (thin), no more: its cluster map
/// lives in memory.
fn clusters_of(l: &Lvs, size_in_mib: u64) -> Result<u64, RpcError> {
    let bytes = size_in_mib.checked_mul(1 << 20).ok_or_else(|| RpcError::invalid_params("size_in_mib is too large"))?;
    if bytes == 0 {
        return Err(RpcError::invalid_params("size_in_mib must be at least 1"));
    }
    let clusters = bytes.div_ceil(l.cluster_size());
    let max = crate::blob::max_clusters(l.store.state.borrow().sb.total_clusters());
    if clusters > max {
        return Err(RpcError::invalid_params(format!(
            "{clusters} clusters: an lvol may have at most {max} in this store (1024 times its size)"
        )));
    }
    Ok(clusters)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLvol {
    lvol_name: String,
    size_in_mib: u64,
    #[serde(default)]
    thin_provision: bool,
    uuid: Option<String>,
    lvs_name: Option<String>,
    clear_method: Option<String>,
}

async fn create_lvol(p: CreateLvol) -> Result<String, RpcError> {
    let l = pick_lvs(&p.uuid, &p.lvs_name)?;
    check_lvol_name(&l, &p.lvol_name)?;
    let clear = match p.clear_method.as_deref() {
        None => ClearMethod::Default,
        Some(s) => {
            ClearMethod::parse(s).ok_or_else(|| RpcError::invalid_params(format!("clear_method {s}: none, unmap or write_zeroes")))?
        }
    };
    let clusters = clusters_of(&l, p.size_in_mib)?;
    let uuid = Uuid::new_v4();
    let mut blob = Blob::new(0, p.thin_provision, true);
    blob.set_xattr("name", lvs::lvol_name_value(&p.lvol_name));
    blob.set_xattr("uuid", lvs::uuid_value(&uuid));
    blob.md_ro_flags = clear.bits();
    let id = {
        let _g = l.store.lock().await;
        l.open()?;
        check_lvol_name(&l, &p.lvol_name)?;
        l.store.create_blob(blob, clusters as usize).await?
    };
    add_lvol(&l, id, p.lvol_name, uuid)
}

/// Track blob `id` as lvol `name` and register its bdev.
fn add_lvol(l: &Rc<Lvs>, id: u64, name: String, uuid: Uuid) -> Result<String, RpcError> {
    let layout = l.build_layout(id);
    let cluster_blocks = l.cluster_size() / l.block_size();
    let vol = Arc::new(Volume::new(id, l.store.dev.desc.clone(), cluster_blocks, l.uuid, layout, false));
    l.lvols.borrow_mut().insert(id, Lvol { name, uuid, vol, registered: false });
    Ok(l.register_lvol(id)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

async fn delete_lvol(p: Name) -> Result<bool, RpcError> {
    let (l, id) = pick_lvol(&p.name)?;
    let clones = l.clones_of(id);
    if clones.len() > 1 {
        return Err(RpcError::errno(
            libc::EBUSY,
            format!("lvol {} is a snapshot with {} clones: delete or inflate all but one first", p.name, clones.len()),
        ));
    }
    let bdev_name = l.lvols.borrow().get(&id).map(|v| v.bdev_name()).ok_or_else(|| not_found(&p.name))?;
    let s = task::Slot::new();
    let s2 = s.clone();
    bdev::unregister(&bdev_name, move |r| s2.set(r));
    s.await.map_err(RpcError::from)?;
    let _g = l.store.lock().await;
    l.open()?;
    // Clones made while the bdev went: look again, under the lock.
    let clones = l.clones_of(id);
    if clones.len() > 1 {
        drop(_g);
        let _ = l.register_lvol(id);
        return Err(RpcError::errno(libc::EBUSY, format!("lvol {} got a clone meanwhile: it has {} now", p.name, clones.len())));
    }
    match clones.first() {
        None => {
            l.store.delete_blob(id).await?;
        }
        Some(&clone) => {
            // A snapshot with one clone merges into it, as SPDK does.
            let vol = l.lvols.borrow().get(&clone).map(|v| v.vol.clone()).ok_or_else(|| not_found("the snapshot's clone"))?;
            with_writes_held(&l, &vol, clone, l.store.merge_snapshot(id, clone)).await?;
        }
    }
    l.lvols.borrow_mut().remove(&id);
    l.refresh_descriptions();
    Ok(true)
}

/// Allocate the clusters of lvol `id` (those its parents have, or all),
/// then drop its parent: `bdev_lvol_inflate` and `bdev_lvol_decouple_parent`.
async fn detach(p: Name, all: bool) -> Result<bool, RpcError> {
    let (l, id) = pick_lvol(&p.name)?;
    let (n, parent, ro) = {
        let st = l.store.state.borrow();
        let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
        (b.clusters.len(), b.parent(), b.read_only())
    };
    if parent.is_none() && !all {
        return Err(RpcError::invalid_params(format!("lvol {} has no parent", p.name)));
    }
    if ro {
        return Err(RpcError::errno(libc::EPERM, format!("lvol {} is read-only", p.name)));
    }
    for k in 0..n {
        let needed = {
            let st = l.store.state.borrow();
            let own = st.blobs.get(&id).and_then(|b| b.clusters.get(k).copied()).unwrap_or(1);
            own == 0 && (all || parent.and_then(|pp| st.resolve(pp, k)).is_some())
        };
        if needed {
            l.allocate(id, k).await?;
        }
    }
    let vol = l.lvols.borrow()[&id].vol.clone();
    {
        let _g = l.store.lock().await;
        l.open()?;
        // A snapshot or a new parent meanwhile moved what was allocated:
        // the parent dropped now would take data with it.
        let changed = {
            let st = l.store.state.borrow();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            b.parent() != parent
                || (0..b.clusters.len()).any(|k| b.clusters[k] == 0 && (all || b.parent().and_then(|pp| st.resolve(pp, k)).is_some()))
        };
        if changed {
            return Err(RpcError::errno(libc::EBUSY, format!("lvol {} changed (snapshot or parent) meanwhile: try again", p.name)));
        }
        l.store.drop_parent(id, all).await?;
        vol.set_layout(l.build_layout(id));
    }
    l.refresh_descriptions();
    Ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size_in_mib: u64,
}

async fn resize_lvol(p: Resize) -> Result<bool, RpcError> {
    let (l, id) = pick_lvol(&p.name)?;
    let n = clusters_of(&l, p.size_in_mib)? as usize;
    let (old, ro) = {
        let st = l.store.state.borrow();
        let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
        (b.clusters.len(), b.read_only())
    };
    if ro {
        return Err(RpcError::errno(libc::EPERM, format!("lvol {} is read-only", p.name)));
    }
    let bdev_name = l.lvols.borrow()[&id].bdev_name();
    let blocks = n as u64 * (l.cluster_size() / l.block_size());
    if n < old {
        // Users must let go of the end first (the bdev layer refuses to
        // shrink an open bdev).
        bdev::notify_blockcnt_change(&bdev_name, blocks).map_err(RpcError::from)?;
    }
    {
        let _g = l.store.lock().await;
        l.open()?;
        l.store.resize_blob(id, n).await?;
    }
    let layout = l.build_layout(id);
    l.lvols.borrow()[&id].vol.set_layout(layout);
    if n > old {
        bdev::notify_blockcnt_change(&bdev_name, blocks).map_err(RpcError::from)?;
    }
    Ok(true)
}

async fn set_read_only(p: Name) -> Result<bool, RpcError> {
    let (l, id) = pick_lvol(&p.name)?;
    {
        let _g = l.store.lock().await;
        l.open()?;
        l.store.state.borrow_mut().blobs.get_mut(&id).ok_or(StoreError::NoBlob(id))?.data_ro_flags |= format::FLAG_READ_ONLY;
        l.store.persist(id, crate::store::Extents::New).await?;
    }
    l.lvols.borrow()[&id].vol.remap.set_read_only(true);
    Ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameLvol {
    old_name: String,
    new_name: String,
}

async fn rename_lvol(p: RenameLvol) -> Result<bool, RpcError> {
    let (l, id) = pick_lvol(&p.old_name)?;
    let old = l.lvols.borrow()[&id].name.clone();
    if old == p.new_name {
        return Ok(true);
    }
    check_lvol_name(&l, &p.new_name)?;
    {
        let _g = l.store.lock().await;
        l.open()?;
        // As SPDK's spdk_lvol_rename: the name and its NUL.
        let mut v = p.new_name.as_bytes().to_vec();
        v.push(0);
        l.store.state.borrow_mut().blobs.get_mut(&id).ok_or(StoreError::NoBlob(id))?.set_xattr("name", v);
        l.store.persist(id, crate::store::Extents::New).await?;
    }
    let bdev_name = l.lvols.borrow()[&id].bdev_name();
    let lvs_name = l.name.borrow().clone();
    let _ = bdev::remove_alias(&bdev_name, &format!("{lvs_name}/{old}"));
    let _ = bdev::add_alias(&bdev_name, &format!("{lvs_name}/{}", p.new_name));
    if let Some(v) = l.lvols.borrow_mut().get_mut(&id) {
        v.name = p.new_name;
    }
    l.refresh_descriptions();
    Ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    lvol_name: String,
    snapshot_name: String,
}

thread_local! {
    /// Tasks waiting for a volume's writes to stop, by ticket.
    static FREEZES: std::cell::RefCell<std::collections::HashMap<u64, task::Slot<()>>> = Default::default();
    static TICKET: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Run `change` (a change to lvol `id`'s clusters or parent) with the
/// writes to `vol` held and drained, then give its channels lvol `id`'s
/// map as the store now has it, whether the change succeeded or not, and
/// let the writes go.
async fn with_writes_held<T>(
    l: &Lvs,
    vol: &Arc<Volume>,
    id: u64,
    change: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    freeze(vol).await;
    let r = change.await;
    vol.set_layout(l.build_layout(id));
    crate::volume::unfreeze(vol);
    r
}

/// Hold the volume's new writes and wait for those in flight.
async fn freeze(vol: &Arc<Volume>) {
    let t = TICKET.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let slot = task::Slot::new();
    FREEZES.with(|f| f.borrow_mut().insert(t, slot.clone()));
    crate::volume::freeze(vol, move || {
        if let Some(s) = FREEZES.with(|f| f.borrow_mut().remove(&t)) {
            s.set(())
        }
    });
    slot.await
}

async fn snapshot(p: Snapshot) -> Result<String, RpcError> {
    let (l, origin) = pick_lvol(&p.lvol_name)?;
    check_lvol_name(&l, &p.snapshot_name)?;
    let vol = l.lvols.borrow()[&origin].vol.clone();
    let uuid = Uuid::new_v4();
    let xattrs = vec![("name".to_string(), lvs::lvol_name_value(&p.snapshot_name)), ("uuid".to_string(), lvs::uuid_value(&uuid))];
    let _g = l.store.lock().await;
    l.open()?;
    check_lvol_name(&l, &p.snapshot_name)?;
    if !l.lvols.borrow().contains_key(&origin) {
        return Err(not_found(&p.lvol_name));
    }
    // The origin reads through the snapshot from now on (or, failed, as
    // before: its map is rebuilt from what the store holds either way).
    let r = with_writes_held(&l, &vol, origin, l.store.snapshot(origin, xattrs)).await;
    drop(_g);
    let id = r?;
    add_lvol(&l, id, p.snapshot_name, uuid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Clone {
    snapshot_name: String,
    clone_name: String,
}

async fn clone(p: Clone) -> Result<String, RpcError> {
    let (l, snap) = pick_lvol(&p.snapshot_name)?;
    check_lvol_name(&l, &p.clone_name)?;
    let n = {
        let st = l.store.state.borrow();
        let b = st.blobs.get(&snap).ok_or(StoreError::NoBlob(snap))?;
        if !b.read_only() {
            return Err(RpcError::invalid_params(format!("{} is not a snapshot (read-only lvol): snapshot it first", p.snapshot_name)));
        }
        b.clusters.len()
    };
    let uuid = Uuid::new_v4();
    let mut blob = Blob::new(0, true, true);
    blob.set_xattr("name", lvs::lvol_name_value(&p.clone_name));
    blob.set_xattr("uuid", lvs::uuid_value(&uuid));
    blob.set_parent(Some(snap));
    let id = {
        let _g = l.store.lock().await;
        l.open()?;
        // Again under the lock: the snapshot may have gone, the name come.
        check_lvol_name(&l, &p.clone_name)?;
        if !l.store.state.borrow().blobs.get(&snap).is_some_and(|b| b.read_only()) || !l.lvols.borrow().contains_key(&snap) {
            return Err(not_found(&format!("snapshot {}", p.snapshot_name)));
        }
        l.store.create_blob(blob, n).await?
    };
    add_lvol(&l, id, p.clone_name, uuid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetParent {
    lvol_name: String,
    parent_name: String,
}

/// Make a thin lvol a clone of a snapshot of its size
/// (`bdev_lvol_set_parent`): its unallocated clusters read from the
/// snapshot from now on.
async fn set_parent(p: SetParent) -> Result<bool, RpcError> {
    let (l, id) = pick_lvol(&p.lvol_name)?;
    let (l2, parent) = pick_lvol(&p.parent_name)?;
    if !Rc::ptr_eq(&l, &l2) {
        return Err(RpcError::invalid_params("the lvol and its new parent are in different lvol stores"));
    }
    {
        let st = l.store.state.borrow();
        let (b, pb) = (st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?, st.blobs.get(&parent).ok_or(StoreError::NoBlob(parent))?);
        if id == parent || !pb.read_only() {
            return Err(RpcError::invalid_params(format!("{} is not a snapshot", p.parent_name)));
        }
        if !b.thin() {
            return Err(RpcError::invalid_params(format!("{} is not thin provisioned", p.lvol_name)));
        }
        if b.clusters.len() != pb.clusters.len() {
            return Err(RpcError::invalid_params("the lvol and the snapshot differ in size"));
        }
        // No loop: the new parent may not descend from the lvol.
        let mut cur = Some(parent);
        for _ in 0..=st.blobs.len() {
            match cur {
                Some(c) if c == id => return Err(RpcError::invalid_params(format!("{} is a snapshot of {}", p.parent_name, p.lvol_name))),
                Some(c) => cur = st.blobs.get(&c).and_then(|b| b.parent()),
                None => break,
            }
        }
        if b.parent() == Some(parent) {
            return Ok(true);
        }
    }
    let vol = l.lvols.borrow()[&id].vol.clone();
    let _g = l.store.lock().await;
    l.open()?;
    let change = async {
        l.store.state.borrow_mut().blobs.get_mut(&id).ok_or(StoreError::NoBlob(id))?.set_parent(Some(parent));
        l.store.persist(id, crate::store::Extents::New).await
    };
    with_writes_held(&l, &vol, id, change).await?;
    l.refresh_descriptions();
    Ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetLvols {
    lvs_uuid: Option<String>,
    lvs_name: Option<String>,
}

fn get_lvols(p: GetLvols) -> Result<Vec<Value>, RpcError> {
    let stores = match p {
        GetLvols { lvs_uuid: None, lvs_name: None } => lvs::all(),
        p => vec![pick_lvs(&p.lvs_uuid, &p.lvs_name)?],
    };
    let mut out = Vec::new();
    for l in stores {
        let ids: Vec<u64> = l.lvols.borrow().keys().copied().collect();
        out.extend(ids.into_iter().filter_map(|id| l.lvol_info(id)));
    }
    Ok(out)
}

fn get_lvstores(p: LvsRef) -> Result<Vec<Value>, RpcError> {
    Ok(match p {
        LvsRef { uuid: None, lvs_name: None } => lvs::all().iter().map(|l| l.info()).collect(),
        p => vec![pick_lvs(&p.uuid, &p.lvs_name)?.info()],
    })
}

/// `bdev_lvol_grow_lvstore`: the store fills its base bdev, which has grown
/// (`bdev_null_resize`, `bdev_aio_rescan`, `bdev_rbd_resize`, a resized lvol
/// under a nested store, an NVMe namespace that grew).
async fn grow_lvstore(p: LvsRef) -> Result<bool, RpcError> {
    let l = pick_lvs(&p.uuid, &p.lvs_name)?;
    if l.store.grow().await? {
        tracing::info!("lvol: store {} grew to {} clusters", l.name.borrow(), l.store.state.borrow().sb.total_clusters());
    }
    Ok(true)
}

async fn delete_lvstore(p: LvsRef) -> Result<bool, RpcError> {
    let l = pick_lvs(&p.uuid, &p.lvs_name)?;
    lvs::close(&l, true).await?;
    Ok(true)
}

/// Run an async handler on the main reactor and answer with its result.
fn spawn<F, T>(r: Responder, f: F)
where
    F: std::future::Future<Output = Result<T, RpcError>> + 'static,
    T: serde::Serialize,
{
    task::spawn_local(async move { r.result(f.await) })
}

pub fn register(app: &mut App) {
    let m = app.methods();
    m.register("bdev_lvol_create_lvstore", States::RUNTIME, |p: CreateLvs, r: Responder| spawn(r, create_lvstore(p)));
    m.register("bdev_lvol_delete_lvstore", States::RUNTIME, |p: LvsRef, r: Responder| spawn(r, delete_lvstore(p)));
    m.register("bdev_lvol_rename_lvstore", States::RUNTIME, |p: RenameLvs, r: Responder| spawn(r, rename_lvstore(p)));
    m.register("bdev_lvol_grow_lvstore", States::RUNTIME, |p: LvsRef, r: Responder| spawn(r, grow_lvstore(p)));
    m.register("bdev_lvol_get_lvstores", States::RUNTIME, |p: LvsRef, r: Responder| r.result(get_lvstores(p)));
    m.register("bdev_lvol_create", States::RUNTIME, |p: CreateLvol, r: Responder| spawn(r, create_lvol(p)));
    m.register("bdev_lvol_delete", States::RUNTIME, |p: Name, r: Responder| spawn(r, delete_lvol(p)));
    m.register("bdev_lvol_resize", States::RUNTIME, |p: Resize, r: Responder| spawn(r, resize_lvol(p)));
    m.register("bdev_lvol_set_read_only", States::RUNTIME, |p: Name, r: Responder| spawn(r, set_read_only(p)));
    m.register("bdev_lvol_rename", States::RUNTIME, |p: RenameLvol, r: Responder| spawn(r, rename_lvol(p)));
    m.register("bdev_lvol_inflate", States::RUNTIME, |p: Name, r: Responder| spawn(r, detach(p, true)));
    m.register("bdev_lvol_decouple_parent", States::RUNTIME, |p: Name, r: Responder| spawn(r, detach(p, false)));
    m.register("bdev_lvol_set_parent", States::RUNTIME, |p: SetParent, r: Responder| spawn(r, set_parent(p)));
    m.register("bdev_lvol_snapshot", States::RUNTIME, |p: Snapshot, r: Responder| spawn(r, snapshot(p)));
    m.register("bdev_lvol_clone", States::RUNTIME, |p: Clone, r: Responder| spawn(r, clone(p)));
    m.register("bdev_lvol_get_lvols", States::RUNTIME, |p: GetLvols, r: Responder| r.result(get_lvols(p)));
}

/// The methods by name, for tests that drive a store without a socket.
#[cfg(test)]
pub(crate) async fn call(method: &str, params: Value) -> Result<Value, RpcError> {
    fn p<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, RpcError> {
        serde_json::from_value(v).map_err(|e| RpcError::invalid_params(e.to_string()))
    }
    let j = |v: Result<String, RpcError>| v.map(Value::from);
    let b = |v: Result<bool, RpcError>| v.map(Value::from);
    match method {
        "bdev_lvol_create_lvstore" => j(create_lvstore(p(params)?).await),
        "bdev_lvol_create" => j(create_lvol(p(params)?).await),
        "bdev_lvol_snapshot" => j(snapshot(p(params)?).await),
        "bdev_lvol_clone" => j(clone(p(params)?).await),
        "bdev_lvol_resize" => b(resize_lvol(p(params)?).await),
        "bdev_lvol_delete" => b(delete_lvol(p(params)?).await),
        "bdev_lvol_rename" => b(rename_lvol(p(params)?).await),
        "bdev_lvol_set_read_only" => b(set_read_only(p(params)?).await),
        "bdev_lvol_inflate" => b(detach(p(params)?, true).await),
        "bdev_lvol_set_parent" => b(set_parent(p(params)?).await),
        "bdev_lvol_decouple_parent" => b(detach(p(params)?, false).await),
        "bdev_lvol_grow_lvstore" => b(grow_lvstore(p(params)?).await),
        other => Err(RpcError::invalid_params(format!("{other}: not in the test table"))),
    }
}
