//! One lock per key (a resource, or a platform app identity), created on first use and
//! removed when nobody holds or waits for it. Unlike a fixed set of shared shards, two keys
//! never share a lock: a request never waits behind an unrelated slow call, and nobody can
//! choose ids that land on one shard.
//!
//! These locks are the process's own. When the storage is shared by several hosts, the
//! service also takes the storage's lock on the same key once it holds this one ([`Locked`]),
//! so each host asks the database for a key once at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

type KeyLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, KeyLock>>,
}

/// A held (or awaited) lock on one key. Dropping it releases the lock, and removes the key's
/// entry when nobody else holds or waits for it.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    lock: KeyLock,
    guard: Option<OwnedMutexGuard<()>>,
}

/// A key locked in this process and, when the storage is shared, on every host.
pub(crate) struct Locked<'a> {
    // Released first: the other hosts' lock, then this process's.
    pub(crate) _shared: Option<Box<dyn crate::storage::Held>>,
    pub(crate) _local: KeyGuard<'a>,
}

impl KeyedLocks {
    /// Lock `key`, waiting for its current holder.
    pub(crate) async fn lock(&self, key: String) -> KeyGuard<'_> {
        let lock = self.map.lock().unwrap_or_else(PoisonError::into_inner).entry(key.clone()).or_default().clone();
        // Built before waiting, so a cancelled wait still cleans the entry up.
        let mut guard = KeyGuard { locks: self, key, lock, guard: None };
        guard.guard = Some(guard.lock.clone().lock_owned().await);
        guard
    }

    /// Keys with a lock held or awaited now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under the map's lock, so this count is exact: the map's
        // reference and ours mean nobody else holds or waits.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_do_not_share_locks_and_entries_are_removed() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a".into()).await;
        // Another key is free while `a` is held.
        let b = tokio::time::timeout(std::time::Duration::from_millis(100), locks.lock("b".into())).await;
        assert!(b.is_ok(), "an unrelated key waited");
        drop(b);
        // The same key waits; a cancelled wait leaves nothing behind.
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a".into())).await;
        assert!(again.is_err(), "the same key was locked twice");
        assert_eq!(locks.len(), 1);
        drop(a);
        assert_eq!(locks.len(), 0, "released keys leave no entry");
        let _a = locks.lock("a".into()).await;
    }
}
