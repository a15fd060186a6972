//! Logical-volume stores (SPDK's lvol layer) on the main reactor: a store's
//! identity in its super blob's xattrs (`name`, `uuid`), each lvol's in its
//! blob's, and the lvol bdevs (named by UUID, aliased `lvs/lvol`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::bdev::{self, BdevEvent, BdevSpec, Descriptor, Uuid};
use pollux_core::reactor::{self, ReactorId, task};
use serde_json::{Value, json};

use crate::blob::{Blob, ClearMethod};
use crate::dev::Dev;
use crate::format;
use crate::store::{Store, StoreError};
use crate::volume::{Layout, LvolBackend, Volume};

/// SPDK's limits (SPDK_LVS_NAME_MAX, SPDK_LVOL_NAME_MAX, with the NUL).
pub const LVS_NAME_MAX: usize = 64;
pub const LVOL_NAME_MAX: usize = 64;

pub struct Lvol {
    pub name: String,
    pub uuid: Uuid,
    pub vol: Arc<Volume>,
    /// Registered as a bdev (snapshots of a store that is loading are too).
    pub registered: bool,
}

impl Lvol {
    pub fn bdev_name(&self) -> String {
        self.uuid.to_string()
    }
}

pub struct Lvs {
    pub name: RefCell<String>,
    pub uuid: Uuid,
    pub store: Rc<Store>,
    pub super_blob: u64,
    pub base_name: String,
    pub lvols: RefCell<BTreeMap<u64, Lvol>>,
    /// Being torn down: no new work.
    pub closing: std::cell::Cell<bool>,
}

thread_local! {
    static STORES: RefCell<Vec<Rc<Lvs>>> = const { RefCell::new(Vec::new()) };
}

pub fn all() -> Vec<Rc<Lvs>> {
    STORES.with(|s| s.borrow().clone())
}

pub fn by_uuid(u: &Uuid) -> Option<Rc<Lvs>> {
    all().into_iter().find(|l| l.uuid == *u)
}

pub fn by_name(n: &str) -> Option<Rc<Lvs>> {
    all().into_iter().find(|l| *l.name.borrow() == n)
}

/// Drop every store without writing anything (a crash, in tests).
pub fn forget_all() {
    STORES.with(|s| s.borrow_mut().clear());
}

fn forget(l: &Rc<Lvs>) {
    STORES.with(|s| s.borrow_mut().retain(|x| !Rc::ptr_eq(x, l)));
}

/// A string xattr as SPDK writes it: NUL-terminated (a name's value may be
/// padded with NULs to the field's size).
pub fn xattr_str(v: &[u8]) -> Option<String> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).ok()
}

/// The value SPDK stores for an lvol's name: the 64-byte field, NUL padded.
pub fn lvol_name_value(name: &str) -> Vec<u8> {
    let mut v = vec![0u8; LVOL_NAME_MAX];
    v[..name.len()].copy_from_slice(name.as_bytes());
    v
}

/// A UUID as SPDK stores it: 36 characters and a NUL.
pub fn uuid_value(u: &Uuid) -> Vec<u8> {
    let mut v = u.to_string().into_bytes();
    v.push(0);
    v
}

impl Lvs {
    /// Refuse work on a store being closed or destroyed.
    pub fn open(&self) -> Result<(), StoreError> {
        if self.closing.get() {
            return Err(StoreError::Invalid(format!("lvol store {} is closing", self.name.borrow())));
        }
        Ok(())
    }

    pub fn cluster_size(&self) -> u64 {
        self.store.state.borrow().sb.cluster_size as u64
    }

    pub fn block_size(&self) -> u64 {
        self.store.dev.block
    }

    pub fn lvol_by_name(&self, name: &str) -> Option<u64> {
        self.lvols.borrow().iter().find(|(_, l)| l.name == name).map(|(id, _)| *id)
    }

    /// The lvols whose parent is `id`.
    pub fn clones_of(&self, id: u64) -> Vec<u64> {
        let st = self.store.state.borrow();
        st.blobs.iter().filter(|(_, b)| b.parent() == Some(id)).map(|(i, _)| *i).collect()
    }

    pub fn describe_lvol(&self, id: u64) -> Value {
        let st = self.store.state.borrow();
        let lvols = self.lvols.borrow();
        let Some(b) = st.blobs.get(&id) else { return json!({}) };
        let name_of = |i: u64| lvols.get(&i).map(|l| l.name.clone()).unwrap_or_default();
        let clones: Vec<String> = st.blobs.iter().filter(|(_, c)| c.parent() == Some(id)).map(|(i, _)| name_of(*i)).collect();
        let mut v = json!({
            "lvol_store_uuid": self.uuid.to_string(),
            "base_bdev": self.base_name,
            "thin_provision": b.thin(),
            "num_allocated_clusters": b.allocated(),
            "snapshot": !clones.is_empty(),
            "clone": b.parent().is_some(),
        });
        if let Some(p) = b.parent() {
            v["base_snapshot"] = name_of(p).into();
        }
        if !clones.is_empty() {
            v["clones"] = clones.into();
        }
        v["esnap_clone"] = false.into();
        v
    }

    /// `bdev_lvol_get_lvols`' entry.
    pub fn lvol_info(&self, id: u64) -> Option<Value> {
        let d = self.describe_lvol(id);
        let lvols = self.lvols.borrow();
        let l = lvols.get(&id)?;
        Some(json!({
            "alias": format!("{}/{}", self.name.borrow(), l.name),
            "uuid": l.uuid.to_string(),
            "name": l.name,
            "is_thin_provisioned": d["thin_provision"],
            "is_snapshot": d["snapshot"],
            "is_clone": d["clone"],
            "is_esnap_clone": false,
            "is_degraded": false,
            "lvs": {"name": *self.name.borrow(), "uuid": self.uuid.to_string()},
        }))
    }

    pub fn info(&self) -> Value {
        let st = self.store.state.borrow();
        json!({
            "uuid": self.uuid.to_string(),
            "name": *self.name.borrow(),
            "base_bdev": self.base_name,
            "total_data_clusters": st.total_data_clusters(),
            "free_clusters": st.free_clusters(),
            "block_size": self.store.dev.block,
            "cluster_size": st.sb.cluster_size,
            "max_growable_size": st.sb.max_growable_size(),
        })
    }

    /// Keep every lvol bdev's `driver_specific` current (after a change of
    /// relations).
    pub fn refresh_descriptions(&self) {
        let ids: Vec<u64> = self.lvols.borrow().keys().copied().collect();
        for id in ids {
            let d = self.describe_lvol(id);
            if let Some(l) = self.lvols.borrow().get(&id) {
                *l.vol.describe.lock().unwrap_or_else(|e| e.into_inner()) = d;
            }
        }
    }

    /// The layout of blob `id` (and, through parents, of its snapshots).
    pub fn build_layout(&self, id: u64) -> Arc<Layout> {
        let chain = {
            let st = self.store.state.borrow();
            let mut chain = Vec::new();
            let mut cur = Some(id);
            while let Some(i) = cur {
                let Some(b) = st.blobs.get(&i) else { break };
                if chain.len() > st.blobs.len() {
                    break;
                }
                chain.push(b.clusters.clone());
                cur = b.parent();
            }
            chain
        };
        // Reuse the live layout of a parent that has a volume, so a cluster
        // it gets later (never: snapshots are read-only) stays in one place.
        let mut layout: Option<Arc<Layout>> = None;
        for clusters in chain.into_iter().rev() {
            layout = Some(Layout::new(&clusters, layout));
        }
        layout.unwrap_or_else(|| Layout::new(&[], None))
    }

    /// Register the bdev of lvol `id`.
    pub fn register_lvol(self: &Rc<Self>, id: u64) -> Result<String, StoreError> {
        let (name, uuid, num_clusters, read_only) = {
            let lvols = self.lvols.borrow();
            let l = lvols.get(&id).ok_or(StoreError::NoBlob(id))?;
            let st = self.store.state.borrow();
            let b = st.blobs.get(&id).ok_or(StoreError::NoBlob(id))?;
            (l.name.clone(), l.uuid, b.clusters.len() as u64, b.read_only())
        };
        let cluster_blocks = self.cluster_size() / self.block_size();
        if num_clusters == 0 {
            return Err(StoreError::Invalid(format!("lvol {name} has no clusters")));
        }
        let vol = self.lvols.borrow()[&id].vol.clone();
        vol.remap.set_read_only(read_only);
        let lvs_uuid = self.uuid;
        let spec = BdevSpec {
            name: uuid.to_string(),
            block_size: self.block_size() as u32,
            num_blocks: num_clusters * cluster_blocks,
            uuid: Some(uuid),
            backend: Arc::new(LvolBackend {
                vol,
                allocate: allocate_from_any_reactor,
                on_destroy: Box::new(move || {
                    reactor::send_msg(ReactorId(0), move || {
                        if let Some(l) = by_uuid(&lvs_uuid) {
                            if let Some(lv) = l.lvols.borrow_mut().get_mut(&id) {
                                lv.registered = false;
                            }
                        }
                    })
                }),
            }),
        };
        let b = bdev::register(spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let alias = format!("{}/{}", self.name.borrow(), name);
        if let Err(e) = bdev::add_alias(b.name(), &alias) {
            tracing::warn!("lvol: alias {alias}: {e}");
        }
        if let Some(l) = self.lvols.borrow_mut().get_mut(&id) {
            l.registered = true;
        }
        self.refresh_descriptions();
        Ok(b.name().to_string())
    }
}

/// A channel's request for a cluster, from any reactor: run on the main
/// reactor, answered through `answer` (which sends itself back).
fn allocate_from_any_reactor(lvs: uuid::Uuid, blob: u64, k: usize, answer: Box<dyn FnOnce(Result<(), i32>) + Send>) {
    reactor::send_msg(ReactorId(0), move || {
        let Some(l) = by_uuid(&lvs) else { return answer(Err(libc::ENODEV)) };
        task::spawn_local(async move {
            match l.allocate(blob, k).await {
                Ok(()) => answer(Ok(())),
                Err(e) => {
                    tracing::error!("lvol: allocating cluster {k} of blob {blob:#x}: {e}");
                    answer(Err(e.errno()))
                }
            }
        });
    });
}

impl Lvs {
    /// Give cluster `k` of lvol `id` a device cluster and show it to the
    /// volume's channels.
    pub async fn allocate(&self, id: u64, k: usize) -> Result<(), StoreError> {
        self.open()?;
        let c = self.store.allocate_cluster(id, k).await?;
        if let Some(lv) = self.lvols.borrow().get(&id) {
            lv.vol.remap.set_cluster(&lv.vol.layout().own, k, c);
        }
        Ok(())
    }
}

/// Open `bdev_name` for a store: writable, and on its removal the store is
/// closed cleanly first.
fn open_base(bdev_name: &str) -> Result<Descriptor, pollux_core::bdev::BdevError> {
    let name = bdev_name.to_string();
    bdev::open(bdev_name, true, move |ev| {
        if ev == BdevEvent::Remove {
            let name = name.clone();
            if let Some(l) = all().into_iter().find(|l| l.base_name == name) {
                // The volumes' fast paths send reads and writes straight to
                // the base, which the layer now refuses new I/O: stop them
                // first (their volumes stay until their users close them).
                for lv in l.lvols.borrow().values() {
                    lv.vol.remap.stop();
                }
                task::spawn_local(async move {
                    let _ = close(&l, false).await;
                });
            }
        }
    })
}

/// Look at a new bdev: load the lvol store on it, if any.
pub fn examine(b: &Arc<pollux_core::bdev::Bdev>, token: bdev::Examination) {
    if b.backend().module_name() == "lvol" || b.claimed_by().is_some() {
        return;
    }
    let name = b.name().to_string();
    task::spawn_local(async move {
        let _token = token;
        match load(&name).await {
            Ok(Some(l)) => {
                tracing::info!("lvol: store {} ({}) loaded from {name}, {} lvol(s)", l.name.borrow(), l.uuid, l.lvols.borrow().len())
            }
            Ok(None) => {}
            Err(e) => tracing::error!("lvol: the lvol store on {name} cannot be loaded: {e}"),
        }
    });
}

/// Load the store on bdev `name` if it holds one.
pub async fn load(name: &str) -> Result<Option<Rc<Lvs>>, StoreError> {
    let desc = open_base(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let dev = Dev::new(desc.clone()).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let Some(sb) = Store::probe(&dev).await? else { return Ok(None) };
    if sb.bstype != format::BSTYPE_LVOL && sb.bstype != [0; 16] {
        return Ok(None);
    }
    desc.bdev().claim("lvol").map_err(|e| StoreError::Invalid(e.to_string()))?;
    let r = load_claimed(name, dev, sb).await;
    if r.is_err() {
        desc.bdev().release_claim();
    }
    r.map(Some)
}

async fn load_claimed(name: &str, dev: Dev, sb: format::SuperBlock) -> Result<Rc<Lvs>, StoreError> {
    let super_blob = sb.super_blob;
    let store = Store::load(dev, sb).await?;
    let (lvs_name, lvs_uuid) = {
        let st = store.state.borrow();
        let sup = st.blobs.get(&super_blob).ok_or_else(|| StoreError::Invalid("the store has no super blob (not an lvol store)".into()))?;
        let n = sup.xattr("name").and_then(xattr_str).ok_or_else(|| StoreError::Invalid("the super blob has no name".into()))?;
        let u = sup
            .xattr("uuid")
            .and_then(xattr_str)
            .and_then(|s| s.parse::<Uuid>().ok())
            .ok_or_else(|| StoreError::Invalid("the super blob has no UUID".into()))?;
        (n, u)
    };
    if by_uuid(&lvs_uuid).is_some() || by_name(&lvs_name).is_some() {
        return Err(StoreError::Invalid(format!("an lvol store named {lvs_name} or with UUID {lvs_uuid} is already loaded")));
    }
    let lvs = Rc::new(Lvs {
        name: RefCell::new(lvs_name),
        uuid: lvs_uuid,
        store,
        super_blob,
        base_name: name.to_string(),
        lvols: RefCell::new(BTreeMap::new()),
        closing: std::cell::Cell::new(false),
    });
    // Each blob with a name is an lvol.
    let found: Vec<(u64, String, Uuid)> = {
        let st = lvs.store.state.borrow();
        st.blobs
            .iter()
            .filter(|(id, _)| **id != super_blob)
            .filter_map(|(id, b)| {
                let n = b.xattr("name").and_then(xattr_str)?;
                // SPDK names an lvol without a UUID after the store and blob.
                let u = b
                    .xattr("uuid")
                    .and_then(xattr_str)
                    .and_then(|s| s.parse::<Uuid>().ok())
                    .unwrap_or_else(|| Uuid::new_v5(&lvs_uuid, &id.to_le_bytes()));
                Some((*id, n, u))
            })
            .collect()
    };
    let base = lvs.store.dev.desc.clone();
    let cluster_blocks = lvs.cluster_size() / lvs.block_size();
    for (id, n, u) in found {
        let layout = lvs.build_layout(id);
        let ro = lvs.store.state.borrow().blobs[&id].read_only();
        let vol = Arc::new(Volume::new(id, base.clone(), cluster_blocks, lvs_uuid, layout, ro));
        lvs.lvols.borrow_mut().insert(id, Lvol { name: n, uuid: u, vol, registered: false });
    }
    STORES.with(|s| s.borrow_mut().push(lvs.clone()));
    let ids: Vec<u64> = lvs.lvols.borrow().keys().copied().collect();
    for id in ids {
        if let Err(e) = lvs.register_lvol(id) {
            tracing::error!("lvol: registering blob {id:#x}: {e}");
        }
    }
    Ok(lvs)
}

/// Create a store on bdev `bdev_name` (`bdev_lvol_create_lvstore`).
pub async fn create(bdev_name: &str, name: &str, cluster_size: u32, clear: ClearMethod, md_ratio: u32) -> Result<Rc<Lvs>, StoreError> {
    if name.is_empty() || name.len() >= LVS_NAME_MAX {
        return Err(StoreError::Invalid(format!("lvol store name must be 1 to {} characters", LVS_NAME_MAX - 1)));
    }
    if by_name(name).is_some() {
        return Err(StoreError::Invalid(format!("an lvol store named {name} exists")));
    }
    let desc = open_base(bdev_name).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let block = desc.bdev().block_size() as u64;
    if block > format::PAGE as u64 || !block.is_power_of_two() {
        return Err(StoreError::Invalid(format!("bdev {bdev_name} has blocks of {block} bytes: 512 to 4096, a power of two")));
    }
    if desc.bdev().backend().module_name() == "lvol" {
        return Err(StoreError::Invalid(format!("bdev {bdev_name} is an lvol: an lvol store on an lvol is not supported")));
    }
    if cluster_size < 8192 || !cluster_size.is_power_of_two() {
        return Err(StoreError::Invalid(format!("cluster size {cluster_size}: a power of two of at least 8192 bytes")));
    }
    if !(1..=100).contains(&md_ratio) {
        return Err(StoreError::Invalid("num_md_pages_per_cluster_ratio must be 1 to 100".into()));
    }
    desc.bdev().claim("lvol").map_err(|e| StoreError::Invalid(e.to_string()))?;
    let r = async {
        let dev = Dev::new(desc.clone()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let total = dev.bytes() / cluster_size as u64;
        let md_pages = (total * md_ratio as u64 / 100).max(1) as u32;
        let store = Store::init(dev, cluster_size, md_pages, clear).await?;
        let uuid = Uuid::new_v4();
        let mut sup = Blob::new(0, false, true);
        sup.set_xattr("uuid", uuid_value(&uuid));
        let mut nv = name.as_bytes().to_vec();
        nv.push(0);
        sup.set_xattr("name", nv);
        let id = {
            let _g = store.lock().await;
            let id = store.create_blob(sup, 0).await?;
            store.set_super_blob(id).await?;
            id
        };
        Ok::<_, StoreError>(Rc::new(Lvs {
            name: RefCell::new(name.to_string()),
            uuid,
            store,
            super_blob: id,
            base_name: bdev_name.to_string(),
            lvols: RefCell::new(BTreeMap::new()),
            closing: std::cell::Cell::new(false),
        }))
    }
    .await;
    match r {
        Ok(l) => {
            STORES.with(|s| s.borrow_mut().push(l.clone()));
            Ok(l)
        }
        Err(e) => {
            desc.bdev().release_claim();
            Err(e)
        }
    }
}

/// Unregister every lvol bdev of a store and wait until they are gone.
async fn unregister_all(l: &Rc<Lvs>) {
    let names: Vec<String> = l.lvols.borrow().values().filter(|v| v.registered).map(|v| v.bdev_name()).collect();
    for n in names {
        let s = task::Slot::new();
        let s2 = s.clone();
        bdev::unregister(&n, move |r| s2.set(r));
        if let Err(e) = s.await {
            tracing::warn!("lvol: deleting bdev {n}: {e}");
        }
    }
}

/// Close a store: its lvol bdevs go, its metadata is written back clean,
/// the base is released. With `destroy`, the store is wiped instead
/// (`bdev_lvol_delete_lvstore`).
pub async fn close(l: &Rc<Lvs>, destroy: bool) -> Result<(), StoreError> {
    if l.closing.replace(true) {
        return Ok(());
    }
    unregister_all(l).await;
    let r = if destroy {
        let _g = l.store.lock().await;
        // SPDK's spdk_bs_destroy: the super block is zeroed, the data unmapped.
        let r1 = l.store.dev.zero(0, format::PAGE as u64).await;
        let size = l.store.dev.bytes();
        let r2 = l.store.dev.unmap(0, size - size % l.store.dev.block).await;
        r1.and(r2).map_err(StoreError::from)
    } else {
        l.store.unload().await
    };
    l.lvols.borrow_mut().clear();
    l.store.dev.desc.bdev().release_claim();
    forget(l);
    if let Err(e) = &r {
        tracing::error!("lvol: closing store {}: {e}", l.name.borrow());
    }
    r
}

/// Stop every store cleanly (shutdown).
pub async fn close_all() {
    for l in all() {
        let _ = close(&l, false).await;
    }
}

/// Names of lvols and lvol stores in one place: by UUID, by alias
/// `lvs/lvol`, or by the bdev name.
pub fn find_lvol(name: &str) -> Option<(Rc<Lvs>, u64)> {
    for l in all() {
        let found = l
            .lvols
            .borrow()
            .iter()
            .find(|(_, v)| v.bdev_name() == name || format!("{}/{}", l.name.borrow(), v.name) == name)
            .map(|(id, _)| *id);
        if let Some(id) = found {
            return Some((l, id));
        }
    }
    None
}
