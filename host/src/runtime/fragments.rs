//! Compiled functions shared between plugins. Cranelift's incremental cache keys each
//! function's machine code by the function's own content, so a plugin compiles only the
//! functions no plugin compiled before in this process. Partners' plugins built with the same
//! SDK, wit-bindgen and Rust standard library share much of their code; a new version of a
//! plugin shares nearly all of it with the one before.
//!
//! The store lives in memory, bounded: past its budget it keeps what it has and stops adding.
//! (Whole compiled plugins are cached on disk separately, by the content hash of the plugin.)

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use wasmtime::CacheStore;

/// Memory the fragments may use.
const BUDGET_BYTES: usize = 256 << 20;

#[derive(Debug, Default)]
pub(super) struct Fragments {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Vec<u8>, std::sync::Arc<[u8]>>,
    bytes: usize,
}

impl CacheStore for Fragments {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.entries.get(key).map(|v| Cow::Owned(v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let size = key.len() + value.len();
        if inner.bytes + size > BUDGET_BYTES {
            return false;
        }
        inner.bytes += size;
        inner.entries.insert(key.to_vec(), value.into());
        true
    }
}
