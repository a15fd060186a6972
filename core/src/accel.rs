//! The `accel` subsystem: its crypto keys (`accel_crypto_key_create`,
//! `accel_crypto_keys_get`, `accel_crypto_key_destroy`), which encrypting
//! bdevs (`bdev_crypto_create`) name, and `accel_set_options`.
//!
//! Keys: AES-XTS only (two keys of 128 or 256 bits each, not equal), the
//! tweak the block's LBA (SPDK's `SIMPLE_LBA`). As SPDK, the keys are
//! shown by `accel_crypto_keys_get` and written by `save_config` (that is
//! where SPDK keeps them: protect the config file as you would the keys);
//! they are never logged.
//!
//! `accel_set_options`: SPDK
//! sizes the task, sequence and buffer pools of its acceleration framework
//! with them; Pollux has no such framework (CRC32C digests are computed
//! inline with the CPU's instruction, copies are done in place), so the
//! options are kept and written back by save_config, so that SPDK's saved
//! configs load, and change nothing.

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::app::{App, ConfigWriter, Subsystem};
use crate::rpc::{Responder, RpcError, States};

/// A crypto key as `accel_crypto_key_create` gave it.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoKeyParams {
    pub cipher: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tweak_mode: Option<String>,
    pub name: String,
}

/// A key ready for use: the data key and the tweak key.
pub struct CryptoKey {
    pub params: CryptoKeyParams,
    pub key1: Vec<u8>,
    pub key2: Vec<u8>,
}

impl Drop for CryptoKey {
    fn drop(&mut self) {
        // Key material does not stay behind in freed memory (SPDK clears
        // its keys too; the AES key schedules are zeroed by `aes`).
        use zeroize::Zeroize;
        self.key1.zeroize();
        self.key2.zeroize();
        self.params.key.zeroize();
        if let Some(k) = self.params.key2.as_mut() {
            k.zeroize();
        }
    }
}

impl std::fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("CryptoKey").field("name", &self.params.name).field("bits", &(self.key1.len() * 8)).finish()
    }
}

static KEYS: Mutex<Vec<Arc<CryptoKey>>> = Mutex::new(Vec::new());

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, RpcError> {
    if s.len() % 2 != 0 || s.is_empty() || s.len() > 128 {
        return Err(RpcError::errno(libc::EINVAL, format!("{what}: an even number of hex digits, 2 to 128")));
    }
    // Byte-wise (`hex`): slicing the text two bytes at a time panicked
    // inside a multi-byte character, and `from_str_radix` took `+f`.
    hex::decode(s).map_err(|_| RpcError::errno(libc::EINVAL, format!("{what} is not hex")))
}

/// Check and keep a key (`accel_crypto_key_create`).
pub fn create_key(p: CryptoKeyParams) -> Result<(), RpcError> {
    if p.name.is_empty() {
        return Err(RpcError::invalid_params("a key needs a name"));
    }
    match p.cipher.as_str() {
        "AES_XTS" => {}
        "AES_CBC" => return Err(RpcError::errno(libc::EOPNOTSUPP, "cipher AES_CBC is not supported by Pollux (AES_XTS is)")),
        other => return Err(RpcError::errno(libc::EINVAL, format!("unknown cipher {other}"))),
    }
    if let Some(t) = p.tweak_mode.as_deref().filter(|t| *t != "SIMPLE_LBA") {
        return Err(RpcError::errno(libc::EINVAL, format!("tweak mode {t} is not supported (SIMPLE_LBA is)")));
    }
    let key1 = unhex("key", &p.key)?;
    let key2 = unhex("key2", p.key2.as_deref().ok_or_else(|| RpcError::errno(libc::EINVAL, "AES_XTS key2 is missing"))?)?;
    if ![16, 32].contains(&key1.len()) {
        return Err(RpcError::errno(libc::EINVAL, format!("AES_XTS keys are 128 or 256 bits, not {}", key1.len() * 8)));
    }
    if key1.len() != key2.len() {
        return Err(RpcError::errno(libc::EINVAL, "AES_XTS key size is not equal to key2 size"));
    }
    if key1 == key2 {
        return Err(RpcError::errno(libc::EINVAL, "AES_XTS identical keys are not secure"));
    }
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if keys.iter().any(|k| k.params.name == p.name) {
        return Err(RpcError::errno(libc::EEXIST, format!("key {} exists", p.name)));
    }
    tracing::info!("accel: crypto key {} ({} AES-XTS) created", p.name, key1.len() * 16);
    keys.push(Arc::new(CryptoKey { params: p, key1, key2 }));
    Ok(())
}

/// The key named `name`.
pub fn crypto_key(name: &str) -> Option<Arc<CryptoKey>> {
    KEYS.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|k| k.params.name == name).cloned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyName {
    key_name: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AccelOptions {
    small_cache_size: u32,
    large_cache_size: u32,
    task_count: u32,
    sequence_count: u32,
    buf_count: u32,
}

/// SPDK's defaults.
static OPTIONS: Mutex<AccelOptions> =
    Mutex::new(AccelOptions { small_cache_size: 128, large_cache_size: 16, task_count: 2048, sequence_count: 2048, buf_count: 2048 });

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    small_cache_size: Option<u32>,
    large_cache_size: Option<u32>,
    task_count: Option<u32>,
    sequence_count: Option<u32>,
    buf_count: Option<u32>,
}

fn options() -> AccelOptions {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

struct AccelSubsystem;

impl Subsystem for AccelSubsystem {
    fn name(&self) -> &'static str {
        "accel"
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        out.call("accel_set_options", options());
        for k in KEYS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.call("accel_crypto_key_create", &k.params);
        }
    }
}

/// Register the `accel` subsystem and its methods.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(AccelSubsystem));
    let m = app.methods();
    m.register("accel_set_options", States::STARTUP, |p: SetOptions, r: Responder| {
        let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        o.small_cache_size = p.small_cache_size.unwrap_or(o.small_cache_size);
        o.large_cache_size = p.large_cache_size.unwrap_or(o.large_cache_size);
        o.task_count = p.task_count.unwrap_or(o.task_count);
        o.sequence_count = p.sequence_count.unwrap_or(o.sequence_count);
        o.buf_count = p.buf_count.unwrap_or(o.buf_count);
        r.ok(true)
    });
    m.register("accel_crypto_key_create", States::RUNTIME, |p: CryptoKeyParams, r: Responder| r.result(create_key(p).map(|()| true)));
    m.register("accel_crypto_keys_get", States::RUNTIME, |p: Option<KeyName>, r: Responder| {
        let name = p.and_then(|p| p.key_name);
        let keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<&CryptoKeyParams> =
            keys.iter().filter(|k| name.as_ref().is_none_or(|n| *n == k.params.name)).map(|k| &k.params).collect();
        if let (Some(n), true) = (&name, list.is_empty()) {
            return r.err(RpcError::errno(libc::ENOENT, format!("key {n} not found")));
        }
        r.ok(list)
    });
    m.register("accel_crypto_key_destroy", States::RUNTIME, |p: KeyName, r: Responder| {
        let Some(name) = p.key_name else { return r.err(RpcError::invalid_params("key_name is required")) };
        let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = keys.iter().position(|k| k.params.name == name) else {
            return r.err(RpcError::errno(libc::ENOENT, format!("key {name} not found")));
        };
        if Arc::strong_count(&keys[i]) > 1 {
            return r.err(RpcError::errno(libc::EBUSY, format!("key {name} is in use by a crypto bdev")));
        }
        keys.remove(i);
        r.ok(true)
    });
}
