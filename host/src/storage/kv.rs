//! An add-on's key-value data as a plugin call sees it: the [`KvTxn`] that buffers a call's
//! writes and remembers what it read, the quota the commit checks ([`KvQuota`]), the running
//! usage totals kept beside the data, and `stage`, which validates a call's reads and quota
//! and builds the atomic batch that applies its writes with the record.

use std::collections::BTreeMap;

use super::backend::{Batch, Reader};
use super::jobs;
use super::{ALIAS, AddonStore, JobWrites, KV, RECORD, Result, StorageError, prefixed};

/// Running totals of the key-value data (bytes, then keys: two big-endian u64), kept in the
/// same commits that change it. One key, so a commit reads and writes one value for both.
pub(super) const KV_USAGE: &[u8] = b"m/kv_usage";

/// The totals as two keys, as spaces written before [`KV_USAGE`] hold them: still read, and
/// removed by the first commit that writes `KV_USAGE`.
pub(super) const KV_BYTES: &[u8] = b"m/kv_bytes";

pub(super) const KV_KEYS: &[u8] = b"m/kv_keys";

/// How much key-value data an add-on may keep, and how much one call may add to it.
#[derive(Debug, Clone, Copy)]
pub struct KvQuota {
    pub max_bytes: u64,
    pub max_keys: u64,
    /// Net bytes (keys + values) one committed call may add.
    pub max_call_bytes: u64,
    /// Jobs the add-on may keep stored (pending, retrying or dead).
    pub max_jobs: u64,
}

impl KvQuota {
    /// No limit at all (administration and tests).
    pub const UNLIMITED: KvQuota =
        KvQuota { max_bytes: u64::MAX, max_keys: u64::MAX, max_call_bytes: u64::MAX, max_jobs: u64::MAX };

    /// An add-on's quota from its limits.
    pub fn of(limits: &crate::config::Limits) -> KvQuota {
        KvQuota {
            max_bytes: limits.max_kv_bytes,
            max_keys: limits.max_kv_keys,
            max_call_bytes: limits.max_call_kv_bytes,
            max_jobs: limits.max_stored_jobs,
        }
    }
}

/// Current key-value usage of an add-on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub bytes: u64,
    pub keys: u64,
}

/// A stored big-endian u64 count (0 when absent or malformed).
pub(super) fn counter(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v).ok()).map_or(0, u64::from_be_bytes)
}

/// A space's key-value totals, and whether they are still kept as the two legacy keys.
pub(super) fn usage(get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>>) -> Result<(KvUsage, bool)> {
    if let Some(v) = get(KV_USAGE)? {
        return Ok((KvUsage { bytes: counter(v.get(..8)), keys: counter(v.get(8..)) }, false));
    }
    let (bytes, keys) = (get(KV_BYTES)?, get(KV_KEYS)?);
    let legacy = bytes.is_some() || keys.is_some();
    Ok((KvUsage { bytes: counter(bytes.as_deref()), keys: counter(keys.as_deref()) }, legacy))
}

pub(super) fn usage_value(usage: KvUsage) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&usage.bytes.to_be_bytes());
    v[8..].copy_from_slice(&usage.keys.to_be_bytes());
    v
}

/// Validate a call's reads and quota against the add-on's space and build the batch that
/// applies it.
pub(super) fn stage(
    tree: &dyn Reader,
    txn: &KvTxn,
    quota: KvQuota,
    record: Option<(&str, &[u8])>,
    alias: Option<(&str, &str)>,
) -> Result<Batch> {
    let mut ahead: Vec<Vec<u8>> = vec![KV_USAGE.to_vec()];
    ahead.extend(txn.reads.keys().chain(txn.writes.keys()).map(|k| prefixed(KV, k)));
    ahead.extend(jobs::keys_read(&txn.jobs));
    tree.prefetch(&ahead)?;
    for (key, seen) in &txn.reads {
        if tree.get(&prefixed(KV, key))?.as_deref() != seen.as_deref() {
            return Err(StorageError::Conflict(key.clone()));
        }
    }
    let mut batch = Batch::default();
    let (usage, legacy) = usage(|key| tree.get(key))?;
    let (mut bytes, mut keys) = (i128::from(usage.bytes), i128::from(usage.keys));
    let (mut grew_bytes, mut grew_keys) = (false, false);
    let mut call_growth: i128 = 0;
    for (key, value) in &txn.writes {
        let k = prefixed(KV, key);
        let old = match txn.reads.get(key) {
            // Validated above: the space still holds what the call read.
            Some(seen) => seen.as_ref().map(Vec::len),
            None => tree.get(&k)?.map(|v| v.len()),
        };
        match value {
            Some(v) => batch.insert(k, v.as_slice()),
            None => batch.remove(k),
        }
        let old_size = old.map_or(0, |o| (key.len() + o) as i128);
        let new_size = value.as_ref().map_or(0, |v| (key.len() + v.len()) as i128);
        let key_delta = i128::from(value.is_some()) - i128::from(old.is_some());
        grew_bytes |= new_size > old_size;
        grew_keys |= key_delta > 0;
        bytes += new_size - old_size;
        keys += key_delta;
        call_growth += new_size - old_size;
    }
    if call_growth > i128::from(quota.max_call_bytes) {
        return Err(StorageError::Quota(format!(
            "this call would add {call_growth} bytes of key-value data; one call may add at most {}",
            quota.max_call_bytes
        )));
    }
    if grew_bytes && bytes > i128::from(quota.max_bytes) {
        return Err(StorageError::Quota(format!(
            "the add-on's key-value data would reach {bytes} bytes, over its {}-byte quota",
            quota.max_bytes
        )));
    }
    if grew_keys && keys > i128::from(quota.max_keys) {
        return Err(StorageError::Quota(format!(
            "the add-on would keep {keys} keys, over its quota of {}",
            quota.max_keys
        )));
    }
    if !txn.writes.is_empty() {
        batch.insert(KV_USAGE, usage_value(KvUsage { bytes: bytes.max(0) as u64, keys: keys.max(0) as u64 }));
        if legacy {
            batch.remove(KV_BYTES.to_vec());
            batch.remove(KV_KEYS.to_vec());
        }
    }
    if let Some((id, bytes)) = record {
        batch.insert(prefixed(RECORD, id), bytes);
    }
    if let Some((key, id)) = alias {
        batch.insert(prefixed(ALIAS, key), id.as_bytes());
    }
    jobs::stage_jobs(tree, &txn.jobs, quota.max_jobs, &mut batch)?;
    Ok(batch)
}

/// A call's view of the add-on's key-value data: reads see the call's own writes first,
/// writes stay in memory until [`AddonStore::commit`].
pub struct KvTxn {
    store: AddonStore,
    /// The first value seen for each key read from the tree (validated at commit).
    reads: BTreeMap<String, Option<Vec<u8>>>,
    /// Pending writes; `None` deletes.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Jobs the call enqueued, finished or cancelled.
    pub jobs: JobWrites,
}

impl KvTxn {
    pub(super) fn new(store: AddonStore) -> KvTxn {
        KvTxn { store, reads: BTreeMap::new(), writes: BTreeMap::new(), jobs: JobWrites::default() }
    }

    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.reads.get(key) {
            return Ok(v.clone());
        }
        let v = self.store.kv_get(key)?;
        self.reads.insert(key.to_owned(), v.clone());
        Ok(v)
    }

    pub fn set(&mut self, key: &str, value: Vec<u8>) {
        self.writes.insert(key.to_owned(), Some(value));
    }

    pub fn delete(&mut self, key: &str) -> Result<bool> {
        let existed = self.get(key)?.is_some();
        self.writes.insert(key.to_owned(), None);
        Ok(existed)
    }

    /// Keys with `prefix`, merging the tree with this call's pending writes. Listings are
    /// not validated at commit (only point reads and compare-and-swap are), so a key another
    /// call adds under the prefix meanwhile is not a conflict; use CAS where that matters.
    /// `None` when the stored keys alone pass `max_bytes`.
    pub fn list_keys(&mut self, prefix: &str, max_bytes: usize) -> Result<Option<Vec<String>>> {
        let Some(stored) = self.store.kv_keys(prefix, max_bytes)? else {
            return Ok(None);
        };
        let mut keys: std::collections::BTreeSet<String> = stored.into_iter().collect();
        for (k, v) in self.writes.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match v {
                Some(_) => keys.insert(k.clone()),
                None => keys.remove(k),
            };
        }
        Ok(Some(keys.into_iter().collect()))
    }

    pub fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool> {
        if self.get(key)?.as_deref() != expected {
            return Ok(false);
        }
        self.writes.insert(key.to_owned(), new);
        Ok(true)
    }

    /// Number of distinct keys this call wrote or deleted.
    pub fn write_count(&self) -> usize {
        self.writes.len()
    }

    pub fn is_pending(&self, key: &str) -> bool {
        self.writes.contains_key(key)
    }
}
