//! Durable state in sled: per-add-on trees holding provision records and the add-on's
//! private key-value data, plus the SSO tokens already used.
//!
//! Each add-on gets its own tree (`addon/{id}`), so one add-on can never read another's
//! keys. A plugin call reads through a [`KvTxn`] that buffers its writes; the service commits
//! those writes together with the provision record in one sled transaction, after checking
//! that nothing the call read has changed since (optimistic concurrency). A call that fails
//! is simply dropped, leaving the tree untouched.
//!
//! Every write this module offers returns only once it is durable ([`durable`] group-commits
//! them), and every call blocks: callers in async code run it on the blocking pool, never on
//! a runtime worker, because sled can block (its transactions take a global lock).

mod durable;
mod jobs;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use durable::{CommitStats, Stall};
use durable::{Durability, Watchdog};
pub use jobs::JobWrites;

const RECORD: &[u8] = b"r/";
const KV: &[u8] = b"k/";
/// Platform app identities → resource ids (`a/{platform}/{app_id}`).
const ALIAS: &[u8] = b"a/";
/// Running totals of the key-value data, kept in the same transactions that change it.
const KV_BYTES: &[u8] = b"m/kv_bytes";
const KV_KEYS: &[u8] = b"m/kv_keys";

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

fn counter(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    #[error("another call changed key `{0}` that this call read")]
    Conflict(String),
    #[error("{0}")]
    Quota(String),
    #[error("storage flush failed: {0}")]
    Flush(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// How long commits may make no progress before the host reports itself unhealthy.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    sso_tokens: sled::Tree,
    durable: Arc<Durability>,
    watchdog: Arc<Watchdog>,
    /// One commit lock per add-on, shared by every handle on its tree.
    commit_locks: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<()>>>>>,
}

impl Storage {
    pub fn open(dir: &Path) -> Result<Storage> {
        Self::open_with(dir, DEFAULT_STALL_LIMIT)
    }

    /// Open with a chosen stall limit (see [`Storage::stall`]).
    pub fn open_with(dir: &Path, stall_limit: Duration) -> Result<Storage> {
        // No periodic background flush: every write the host acknowledges is flushed by the
        // group commit (and the watchdog commits every second). sled's flusher holds its
        // global concurrency-control lock while it writes, so a batch waiting behind it, and
        // every read queued behind that batch, stalled for the length of a disk write
        // (reads of up to 0.5 s were measured under load).
        let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
        let sso_tokens = db.open_tree("sso-tokens")?;
        let durable = Arc::new(Durability::new(db.clone()));
        let watchdog = Arc::new(Watchdog::start(durable.clone(), db.open_tree("heartbeat")?, stall_limit));
        Ok(Storage { db, sso_tokens, durable, watchdog, commit_locks: Arc::default() })
    }

    /// Make everything written so far durable (blocking; shares the flush with concurrent
    /// commits).
    pub fn flush(&self) -> Result<()> {
        self.durable.flush()
    }

    /// `Some` when durable commits have made no progress for longer than the stall limit.
    pub fn stall(&self) -> Option<Stall> {
        self.watchdog.stall()
    }

    /// Writes made durable so far, and the flushes that did it.
    pub fn commit_stats(&self) -> CommitStats {
        self.durable.stats()
    }

    /// A named tree for host-wide data (plugin versions, admin credentials).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    pub fn addon(&self, id: &str) -> Result<AddonStore> {
        let commit_lock = {
            let mut locks = self.commit_locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.entry(id.to_owned()).or_default().clone()
        };
        Ok(AddonStore { tree: self.db.open_tree(format!("addon/{id}"))?, durable: self.durable.clone(), commit_lock })
    }

    /// Mark an SSO token as used, durably. Returns false when it was used before (a replay).
    /// Entries older than `keep_after` (unix seconds) are pruned on the way.
    pub fn claim_sso_token(&self, scope: &str, timestamp: i64, token: &str, keep_after: i64) -> Result<bool> {
        let key = format!("{:020}/{scope}/{token}", timestamp.max(0));
        let claimed = self.sso_tokens.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&b""[..]))?.is_ok();
        let cutoff = format!("{:020}/", keep_after.max(0));
        for old in self.sso_tokens.range(..cutoff.as_bytes()).keys().take(256) {
            self.sso_tokens.remove(old?)?;
        }
        if claimed {
            self.durable.flush()?;
        }
        Ok(claimed)
    }
}

/// One add-on's tree.
#[derive(Clone)]
pub struct AddonStore {
    tree: sled::Tree,
    durable: Arc<Durability>,
    commit_lock: Arc<std::sync::Mutex<()>>,
}

fn prefixed(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key.as_bytes());
    k
}

impl AddonStore {
    pub fn record(&self, resource_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(prefixed(RECORD, resource_id))?.map(|v| v.to_vec()))
    }

    /// Every record, for listings and consistency checks.
    pub fn records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan(RECORD)
    }

    pub fn kv_usage(&self) -> Result<KvUsage> {
        Ok(KvUsage { bytes: counter(self.tree.get(KV_BYTES)?), keys: counter(self.tree.get(KV_KEYS)?) })
    }

    /// The resource an app identity maps to.
    pub fn alias(&self, key: &str) -> Result<Option<String>> {
        Ok(self.tree.get(prefixed(ALIAS, key))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(prefixed(KV, key))?.map(|v| v.to_vec()))
    }

    /// Every key-value pair of the add-on (administration and tests).
    pub fn kv_dump(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        self.scan(KV)
    }

    /// Every pair under `kind`, keyed by the name after the prefix.
    fn scan<C: FromIterator<(String, Vec<u8>)>>(&self, kind: &[u8]) -> Result<C> {
        self.tree
            .scan_prefix(kind)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k[kind.len()..]).into_owned(), v.to_vec()))
            })
            .collect()
    }

    /// Keys under `prefix`, or `None` once their total length would pass `max_bytes` (so a
    /// listing never makes the host hold more than the caller allows).
    fn kv_keys(&self, prefix: &str, max_bytes: usize) -> Result<Option<Vec<String>>> {
        let mut keys = Vec::new();
        let mut total = 0usize;
        for k in self.tree.scan_prefix(prefixed(KV, prefix)).keys() {
            let key = String::from_utf8_lossy(&k?[KV.len()..]).into_owned();
            total += key.len();
            if total > max_bytes {
                return Ok(None);
            }
            keys.push(key);
        }
        Ok(Some(keys))
    }

    /// Start buffering a call's key-value access.
    pub fn begin(&self) -> KvTxn {
        KvTxn { store: self.clone(), reads: BTreeMap::new(), writes: BTreeMap::new(), jobs: JobWrites::default() }
    }

    /// Atomically apply a call's writes and (optionally) write a record and an alias,
    /// provided every key the call read still holds the value it saw and the add-on stays
    /// within its key-value quota (writes that only shrink the data are always allowed).
    /// Returns once the commit is durable.
    ///
    /// Commits to one add-on are serialised by its commit lock, so validating the reads and
    /// then applying one atomic batch is as strong as a transaction (nothing else writes an
    /// add-on's tree), at a fraction of the cost of sled's transaction machinery.
    pub fn commit(
        &self,
        txn: &KvTxn,
        quota: KvQuota,
        record: Option<(&str, &[u8])>,
        alias: Option<(&str, &str)>,
    ) -> Result<()> {
        {
            let _serial = self.commit_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let batch = self.stage(txn, quota, record, alias)?;
            self.tree.apply_batch(batch)?;
        }
        self.durable.wait(self.durable.ticket())
    }

    /// Validate a call's reads and quota against the tree and build the batch that applies it.
    fn stage(
        &self,
        txn: &KvTxn,
        quota: KvQuota,
        record: Option<(&str, &[u8])>,
        alias: Option<(&str, &str)>,
    ) -> Result<sled::Batch> {
        let tree = &self.tree;
        for (key, seen) in &txn.reads {
            if tree.get(prefixed(KV, key))?.as_deref() != seen.as_deref() {
                return Err(StorageError::Conflict(key.clone()));
            }
        }
        let mut batch = sled::Batch::default();
        let (mut bytes, mut keys) = (counter(tree.get(KV_BYTES)?) as i128, counter(tree.get(KV_KEYS)?) as i128);
        let (mut grew_bytes, mut grew_keys) = (false, false);
        let mut call_growth: i128 = 0;
        for (key, value) in &txn.writes {
            let k = prefixed(KV, key);
            let old = match txn.reads.get(key) {
                // Validated above: the tree still holds what the call read.
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
        batch.insert(KV_BYTES, &(bytes.max(0) as u64).to_be_bytes());
        batch.insert(KV_KEYS, &(keys.max(0) as u64).to_be_bytes());
        if let Some((id, bytes)) = record {
            batch.insert(prefixed(RECORD, id), bytes);
        }
        if let Some((key, id)) = alias {
            batch.insert(prefixed(ALIAS, key), id.as_bytes());
        }
        self.stage_jobs(&txn.jobs, quota.max_jobs, &mut batch)?;
        Ok(batch)
    }
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

#[cfg(test)]
mod tests;
