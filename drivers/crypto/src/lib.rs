//! The crypto bdev (SPDK's `bdev_crypto_*`): a base bdev whose blocks are
//! kept encrypted with AES-XTS, one data unit per logical block, the LBA
//! as tweak (SPDK's `SIMPLE_LBA`, dm-crypt's `plain64` with the same
//! sector size): a volume written here reads back as plaintext through
//! `cryptsetup open --type plain --cipher aes-xts-plain64` on the base with
//! the same key (the key then its key2, concatenated), and the reverse.
//!
//! Writes are encrypted into a buffer of the pool (the caller's data stay
//! plaintext) and written; reads are read into the caller's buffers and
//! decrypted there. Unmaps, flushes and resets pass through as they are
//! (an unmapped block reads back as what its zeroes decrypt to, as SPDK's).
//! The work is done on the reactor, with the CPU's AES instructions.

pub mod xts;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::accel::{self, CryptoKey};
use pollux_core::app::App;
use pollux_core::bdev::{
    self, Backend, BackendChannel, Bdev, BdevEvent, BdevIo, BdevSpec, Descriptor, Examination, IoStatus, IoType, Uuid,
};
use pollux_core::dma::{self, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::rpc::{Responder, RpcError, States};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::xts::Xts;

struct CryptoBackend {
    name: String,
    base: Descriptor,
    key: Arc<CryptoKey>,
    xts: Arc<Xts>,
    /// The UUID the RPC gave (saved with the config); without one, the
    /// bdev's is SPDK's, derived from the base's (see [`uuid_of`]).
    given_uuid: Option<Uuid>,
}

/// SPDK's namespace for crypto bdev UUIDs (`BDEV_CRYPTO_NAMESPACE_UUID`).
const CRYPTO_NAMESPACE: Uuid = Uuid::from_u128(0x078e3cf7_f4b4_4545_b2c3_d40045a64ae2);

/// The UUID a crypto bdev on `base` gets, as SPDK derives it (a name-based
/// SHA-1 UUID of the base's): the same on every start, so a namespace's
/// NGUID and a reservation file made for it stay valid (a random one
/// changed at each restart).
fn uuid_of(base: &Uuid) -> Uuid {
    Uuid::new_v5(&CRYPTO_NAMESPACE, base.as_bytes())
}

impl Drop for CryptoBackend {
    fn drop(&mut self) {
        self.base.bdev().release_claim();
    }
}

impl Backend for CryptoBackend {
    fn module_name(&self) -> &'static str {
        "crypto"
    }
    fn product_name(&self) -> &'static str {
        "crypto"
    }
    fn supports(&self, kind: IoType) -> bool {
        match kind {
            IoType::Read | IoType::Write | IoType::Reset => true,
            IoType::Unmap | IoType::Flush => self.base.bdev().supports(kind),
            // Zeroes on the base would not read back as zeroes.
            IoType::WriteZeroes | IoType::Compare => false,
        }
    }
    fn buffer_alignment(&self) -> usize {
        self.base.bdev().buffer_alignment()
    }
    fn create_channel(&self) -> Box<dyn BackendChannel> {
        Box::new(CryptoChannel(Rc::new(Chan { base: self.base.clone(), ch: self.base.channel(), xts: self.xts.clone() })))
    }
    fn driver_specific(&self) -> Value {
        json!({"base_bdev_name": self.base.bdev().name(), "name": self.name, "key_name": self.key.params.name})
    }
    fn config_call(&self, b: &Bdev) -> Option<(&'static str, Value)> {
        Some(("bdev_crypto_create", create_params(self.base.bdev().name(), b.name(), &self.key, self.given_uuid)))
    }
}

struct Chan {
    base: Descriptor,
    ch: IoChannel<Bdev>,
    xts: Arc<Xts>,
}

struct CryptoChannel(Rc<Chan>);

impl BackendChannel for CryptoChannel {
    fn submit(&self, io: BdevIo) {
        let st = &self.0;
        let (kind, lba, n) = (io.kind(), io.offset_blocks(), io.num_blocks());
        let bs = st.base.bdev().block_size() as usize;
        match kind {
            IoType::Read => {
                let xts = st.xts.clone();
                st.base.submit_child(&st.ch, kind, io, lba, n, move |c, mut io| {
                    let status = c.status();
                    drop(c);
                    if status.is_ok() {
                        xts.apply(io.buffers_mut(), bs, lba, false);
                    }
                    io.complete(status)
                });
            }
            IoType::Write => {
                let len = io.len_bytes() as usize;
                let copy = dma::pool().ok().and_then(|p| p.get(len)).map(Ok).unwrap_or_else(|| DmaBuf::alloc(len));
                let Ok(mut out) = copy else { return io.complete(IoStatus::NoMemory) };
                out.set_len(len);
                io.copy_out(0, &mut out);
                st.xts.apply(std::slice::from_mut(&mut out), bs, lba, true);
                st.base.submit(&st.ch, kind, [out], lba, n, move |c| io.complete(c.status()));
            }
            _ => st.base.forward(&st.ch, io, lba, None),
        }
    }
}

/// A crypto bdev asked for, made now or when its base appears: kept
/// until `bdev_crypto_delete` (as SPDK keeps it), so a base that goes
/// (hot-removed, deleted) and comes back brings the crypto bdev back.
struct Config {
    name: String,
    base: String,
    /// Held, not named: the key stays in use (`accel_crypto_key_destroy`
    /// refuses it) while the bdev may come back, so it cannot come back
    /// without its key, or with another key of the same name.
    key: Arc<CryptoKey>,
    uuid: Option<Uuid>,
}

thread_local! {
    static CONFIGS: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    base_bdev_name: String,
    name: String,
    key_name: Option<String>,
    crypto_pmd: Option<String>,
    key: Option<String>,
    cipher: Option<String>,
    key2: Option<String>,
    uuid: Option<Uuid>,
}

fn make(c: &Config) -> Result<Option<Arc<Bdev>>, RpcError> {
    if bdev::get(&c.base).is_none() {
        return Ok(None);
    }
    let key = c.key.clone();
    let name = c.name.clone();
    let base = bdev::open(&c.base, true, move |ev| {
        if ev == BdevEvent::Remove {
            bdev::unregister(&name, |_| {});
        }
    })
    .map_err(RpcError::from)?;
    base.bdev().claim("crypto").map_err(RpcError::from)?;
    let b = base.bdev().clone();
    if b.block_size() < 16 {
        b.release_claim();
        return Err(RpcError::invalid_params("blocks smaller than 16 bytes cannot be AES-XTS data units"));
    }
    let xts = Arc::new(Xts::new(&key.key1, &key.key2));
    let backend = Arc::new(CryptoBackend { name: c.name.clone(), base, key, xts, given_uuid: c.uuid });
    let uuid = Some(c.uuid.unwrap_or_else(|| uuid_of(&b.uuid())));
    bdev::register(BdevSpec { name: c.name.clone(), block_size: b.block_size(), num_blocks: b.num_blocks(), uuid, backend })
        .map(Some)
        .map_err(RpcError::from)
}

fn create(p: Create) -> Result<String, RpcError> {
    if p.key.is_some() || p.key2.is_some() || p.cipher.is_some() || p.crypto_pmd.is_some() {
        return Err(RpcError::errno(
            libc::EOPNOTSUPP,
            "keys given to bdev_crypto_create are obsolete (SPDK's too): create the key with accel_crypto_key_create and give its key_name",
        ));
    }
    let key = p.key_name.ok_or_else(|| RpcError::invalid_params("key_name is required"))?;
    if CONFIGS.with(|c| c.borrow().iter().any(|c| c.name == p.name)) || bdev::get(&p.name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {} exists", p.name)));
    }
    let key = accel::crypto_key(&key).ok_or_else(|| RpcError::errno(libc::ENOENT, format!("crypto key {key} not found")))?;
    let c = Config { name: p.name.clone(), base: p.base_bdev_name, key, uuid: p.uuid };
    if make(&c)?.is_none() {
        tracing::info!("crypto bdev {}: waiting for bdev {}", c.name, c.base);
    }
    bdev::register_examiner("crypto", examine).map_err(RpcError::from)?;
    CONFIGS.with(|cs| cs.borrow_mut().push(c));
    Ok(p.name)
}

fn examine(b: &Arc<Bdev>, _done: Examination) {
    CONFIGS.with(|cs| {
        for c in cs.borrow().iter().filter(|c| b.answers_to(&c.base) && bdev::get(&c.name).is_none()) {
            if let Err(e) = make(c) {
                tracing::error!("crypto bdev {}: {}", c.name, e.message);
            }
        }
    });
}

fn delete(p: pollux_bdev::Delete, r: Responder) {
    let known = CONFIGS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let before = cs.len();
        cs.retain(|c| c.name != p.name);
        before != cs.len()
    });
    pollux_bdev::delete_or_forgotten("crypto", &p.name, known, r)
}

/// save_config's calls for crypto bdevs waiting for their base (those
/// registered are written with the bdevs, by `config_call`): without them a
/// config saved while a base was away (hot-removed, not yet attached) lost
/// its crypto bdev, and the bdev did not come back with its base after a
/// restart. Written before the bdevs, as the module's options are: the
/// call waits for its base as it did.
fn write_config(out: &mut pollux_core::app::ConfigWriter) {
    CONFIGS.with(|cs| {
        for c in cs.borrow().iter().filter(|c| bdev::get(&c.name).is_none()) {
            out.call("bdev_crypto_create", create_params(&c.base, &c.name, &c.key, c.uuid));
        }
    });
}

/// The parameters of `bdev_crypto_create` that make this crypto bdev.
fn create_params(base: &str, name: &str, key: &CryptoKey, uuid: Option<Uuid>) -> Value {
    let mut p = json!({"base_bdev_name": base, "name": name, "key_name": key.params.name});
    if let Some(u) = uuid {
        p["uuid"] = json!(u);
    }
    p
}

pub fn register(app: &mut App) {
    pollux_core::bdev::rpc::register_module_config("crypto", write_config);
    let m = app.methods();
    m.register("bdev_crypto_create", States::RUNTIME, |p: Create, r: Responder| r.result(create(p)));
    m.register("bdev_crypto_delete", States::RUNTIME, delete);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuid_is_spdks_derivation_of_the_bases() {
        // Python: uuid.UUID(bytes=sha1(ns.bytes + base.bytes)[:16], version=5).
        let base = Uuid::parse_str("12345678-1234-5678-1234-567812345678").unwrap();
        assert_eq!(uuid_of(&base).to_string(), "4d8b2893-3aa7-54d7-a434-a7763d9b14eb");
    }
}
