//! The add-on's private key-value store. Keys are the add-on's alone; a call's writes are
//! committed atomically with its result, and only if the call succeeds.
//!
//! ```no_run
//! use addon_sdk::kv;
//! # fn f() -> Result<(), addon_sdk::kv::KvError> {
//! let visits = kv::increment("visits", 1)?;
//! kv::set_string("last", &visits.to_string())?;
//! # Ok(()) }
//! ```

pub use crate::bindings::addon::provider::kv::KvError;
use crate::host::imp;

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    imp::kv_get(key)
}

/// The value as UTF-8 text (invalid UTF-8 is replaced).
pub fn get_string(key: &str) -> Result<Option<String>, KvError> {
    Ok(get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Store `value` under `key` (committed only if the call succeeds).
pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
    imp::kv_set(key, value)
}

/// Store text under `key` (committed only if the call succeeds).
pub fn set_string(key: &str, value: &str) -> Result<(), KvError> {
    imp::kv_set(key, value.as_bytes())
}

/// Remove a key; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    imp::kv_delete(key)
}

/// Keys starting with `prefix`, in byte order.
pub fn list_keys(prefix: &str) -> Result<Vec<String>, KvError> {
    imp::kv_list_keys(prefix)
}

/// Set `key` to `new` (delete when `None`) only if it currently holds `expected` (`None` =
/// absent). Returns whether the swap happened.
pub fn compare_and_swap(key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, KvError> {
    imp::kv_compare_and_swap(key, expected, new)
}

/// Add `delta` to the decimal counter at `key` (absent = 0) with a compare-and-swap loop, and
/// return the new value.
pub fn increment(key: &str, delta: i64) -> Result<i64, KvError> {
    loop {
        let current = get(key)?;
        let value = current
            .as_deref()
            .and_then(|v| core::str::from_utf8(v).ok())
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        let next = value.saturating_add(delta);
        if compare_and_swap(key, current.as_deref(), Some(next.to_string().as_bytes()))? {
            return Ok(next);
        }
    }
}
