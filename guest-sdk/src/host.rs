//! What the host offers a plugin: its private key-value store, logging, its configuration,
//! time and randomness. Thin, typed wrappers over the WIT imports.

pub use crate::bindings::addon::provider::kv::KvError;
pub use crate::bindings::addon::provider::log::Level;
// Off wasm32 (a partner's `cargo test`), the testing double answers instead of the host.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing as imp;

/// The host's imports, under the names the testing double also has.
#[cfg(target_arch = "wasm32")]
pub(crate) mod imp {
    pub(crate) use crate::bindings::addon::provider::http::send as http_send;
    pub(crate) use crate::bindings::addon::provider::jobs::enqueue as jobs_enqueue;
    use crate::bindings::addon::provider::{config, env, kv, log};
    pub(crate) use config::{get as config, secret};
    pub(crate) use env::{now_ms, random_bytes};
    pub(crate) use kv::{compare_and_swap as kv_compare_and_swap, delete as kv_delete, get as kv_get};
    pub(crate) use kv::{list_keys as kv_list_keys, set as kv_set};
    pub(crate) use log::log;

    pub(crate) fn addon_id() -> String {
        config::addon_id()
    }
}

/// Handle to the add-on's private key-value store (see [`kv()`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kv;

/// The add-on's key-value store. Keys are private to the add-on; writes are committed
/// atomically with the call's result, and only if the call succeeds.
pub fn kv() -> Kv {
    Kv
}

impl Kv {
    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        imp::kv_get(key)
    }

    /// The value as UTF-8 text (invalid UTF-8 is replaced).
    pub fn get_string(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self.get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Store `value` under `key` (committed only if the call succeeds).
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        imp::kv_set(key, value)
    }

    /// Store text under `key` (committed only if the call succeeds).
    pub fn set_string(&self, key: &str, value: &str) -> Result<(), KvError> {
        imp::kv_set(key, value.as_bytes())
    }

    /// Remove a key; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        imp::kv_delete(key)
    }

    /// Keys starting with `prefix`, in byte order.
    pub fn list_keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        imp::kv_list_keys(prefix)
    }

    /// Set `key` to `new` (delete when `None`) only if it currently holds `expected`
    /// (`None` = absent). Returns whether the swap happened.
    pub fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, KvError> {
        imp::kv_compare_and_swap(key, expected, new)
    }

    /// Add `delta` to the decimal counter at `key` (absent = 0) with a compare-and-swap
    /// loop, and return the new value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        loop {
            let current = self.get(key)?;
            let value = current
                .as_deref()
                .and_then(|v| core::str::from_utf8(v).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            let next = value.saturating_add(delta);
            if self.compare_and_swap(key, current.as_deref(), Some(next.to_string().as_bytes()))? {
                return Ok(next);
            }
        }
    }
}

/// Write a line to the host's log, tagged with the add-on and the call.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// `info!("...", args)`: log at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// `warn!("...", args)`: log at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// `error!("...", args)`: log at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) };
}

/// `debug!("...", args)`: log at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}

/// The add-on's id on this host (e.g. `myaddon`).
pub fn addon_id() -> String {
    imp::addon_id()
}

/// A setting from the add-on's `[config]` table in the host configuration.
pub fn config(key: &str) -> Option<String> {
    imp::config(key)
}

/// A secret from the add-on's `[secrets]` table in the host configuration.
pub fn secret(name: &str) -> Option<String> {
    imp::secret(name)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// `len` cryptographically secure random bytes.
pub fn random_bytes(len: u32) -> Vec<u8> {
    imp::random_bytes(len)
}

/// `bytes` random bytes as lowercase hex (twice as many characters).
pub fn random_hex(bytes: u32) -> String {
    random_bytes(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
