//! Durable state: per-add-on spaces holding provision records, the add-on's private
//! key-value data and its jobs, plus the SSO tokens already used and the plugin registry.
//! What it means is written here once; where it is kept is a [`backend::Backend`]: sled in
//! the data directory (the embedded default), or PostgreSQL shared by several hosts.
//!
//! Each add-on gets its own space (`addon/{id}`), so one add-on can never read another's
//! keys. A plugin call reads through a [`KvTxn`] that buffers its writes; the service commits
//! those writes together with the provision record in one atomic commit, after checking
//! that nothing the call read has changed since (optimistic concurrency). A call that fails
//! is simply dropped, leaving the space untouched.
//!
//! Every write this module offers returns only once it is durable (or, for
//! [`AddonStore::commit_unsynced`], hands back the [`Unsynced`] wait), and every call blocks:
//! callers in async code run it where blocking is allowed, never on a runtime worker. Reads
//! are the exception where the backend says they never wait ([`AddonStore::reads_wait`]).

mod backend;
mod copy;
mod disk;
mod durable;
mod files;
mod jobs;
mod kv;
mod postgres;
mod sled;
mod wal;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SyncMode;
use backend::Backend;
pub use backend::Held;
pub(crate) use backend::{Batch, Reader};
pub use copy::Copied;
use durable::Watchdog;
pub use durable::{CommitStats, Stall, Unsynced};
pub(crate) use files::Files;
pub use jobs::JobWrites;
pub use kv::{KvQuota, KvTxn, KvUsage};
use kv::{counter, stage, usage};
pub use postgres::RESYNC;

const RECORD: &[u8] = b"r/";
const KV: &[u8] = b"k/";
/// Platform app identities → resource ids (`a/{platform}/{app_id}`).
const ALIAS: &[u8] = b"a/";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(::sled::Error),
    /// The data directory's disk is full (or below `server.min_free_disk_mib` for work that
    /// needs room): answered 507, with the detail in the log only.
    #[error("the data disk is full: {0}")]
    DiskFull(String),
    /// The shared database is unreachable or failed: nothing was stored, and the same
    /// request succeeds once it is back (answered 503 with `Retry-After`).
    #[error("database failure: {0}")]
    Database(String),
    /// Reading or writing one of the host's own files (plugin binaries, compile caches).
    #[error("file failure: {0}")]
    Files(String),
    /// Something the host relies on did not hold (no randomness, a copy that differs, an
    /// entry missing beside its index): a bug or a damaged store, not a passing outage.
    #[error("storage failure: {0}")]
    Internal(String),
    /// A copy into storage that already holds another service's data, without `--overwrite`.
    #[error("{0}")]
    TargetOccupied(String),
    #[error("another call changed key `{0}` that this call read")]
    Conflict(String),
    #[error("{0}")]
    Quota(String),
    #[error("storage flush failed: {0}")]
    Flush(String),
    #[error("another host held the lock for longer than the request could wait")]
    LockTimeout,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl From<::sled::Error> for StorageError {
    fn from(e: ::sled::Error) -> StorageError {
        match &e {
            ::sled::Error::Io(io) if is_disk_full(io) => StorageError::DiskFull(format!("sled: {e}")),
            _ => StorageError::Sled(e),
        }
    }
}

/// Whether an IO error says the disk (or the user's quota on it) is full.
/// (sled re-raises an earlier IO error as a copy that keeps only its kind.)
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) || matches!(e.kind(), StorageFull | QuotaExceeded)
}

impl StorageError {
    /// What a client is told: the kind of failure, never paths or the engine's own words
    /// (those are in the host's log).
    pub fn public_message(&self) -> &'static str {
        match self {
            StorageError::DiskFull(_) => "the host's data disk is full; nothing was changed",
            StorageError::Database(_) => "the database is unavailable; nothing was changed, retry shortly",
            StorageError::Flush(_) => {
                "the host's storage failed and the host must restart; nothing was changed, retry shortly"
            }
            _ => "the host's storage failed; nothing was changed",
        }
    }
}

/// How long commits may make no progress before the host reports itself unhealthy.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(5);

/// The host's storage: one backend (sled, or PostgreSQL shared by several hosts), and the
/// watchdog that commits a heartbeat through it.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    watchdog: Arc<Watchdog>,
    /// The data directory's disk (sled), sampled by the watchdog's heartbeat.
    disk: Option<Arc<disk::Disk>>,
}

impl Storage {
    /// sled in `dir`.
    pub fn open(dir: &Path) -> Result<Storage> {
        Self::open_with(dir, DEFAULT_STALL_LIMIT)
    }

    /// sled in `dir`, with a chosen stall limit (see [`Storage::stall`]).
    pub fn open_with(dir: &Path, stall_limit: Duration) -> Result<Storage> {
        Self::open_synced(dir, stall_limit, SyncMode::default(), 0)
    }

    fn open_synced(dir: &Path, stall_limit: Duration, sync: SyncMode, min_free: u64) -> Result<Storage> {
        Ok(Self::on(Arc::new(sled::Sled::open(dir, sync)?), stall_limit, min_free))
    }

    /// The backend the server's config names: PostgreSQL when `[server.storage] postgres`
    /// is set, else sled in the data directory.
    pub fn open_config(server: &crate::config::ServerConfig) -> Result<Storage> {
        let stall_limit = Duration::from_millis(server.stall_after_ms);
        match &server.storage.postgres {
            Some(url) => Ok(Self::on(Arc::new(postgres::Postgres::connect(&server.storage, url)?), stall_limit, 0)),
            None => {
                let min_free = server.min_free_disk_mib.saturating_mul(1 << 20);
                Self::open_synced(&server.data_dir, stall_limit, server.storage.sync, min_free)
            }
        }
    }

    fn on(backend: Arc<dyn Backend>, stall_limit: Duration, min_free: u64) -> Storage {
        let disk = backend.data_dir().map(|dir| Arc::new(disk::Disk::new(dir, min_free)));
        let watchdog = Arc::new(Watchdog::start(backend.clone(), stall_limit, disk.clone()));
        Storage { backend, watchdog, disk }
    }

    /// Why the storage cannot go on safely, once a write to it has failed (sled and its log
    /// cannot continue past a failed write): the host must restart, which replays the log.
    pub fn broken(&self) -> Option<StorageError> {
        self.backend.broken()
    }

    /// Free bytes on the data directory's disk at the last sample (sled only).
    pub fn free_disk_bytes(&self) -> Option<u64> {
        self.disk.as_ref()?.free_bytes()
    }

    /// Refuse work that needs room while the data disk is below `server.min_free_disk_mib`.
    pub fn check_room(&self) -> Result<()> {
        match self.disk.as_ref().and_then(|d| d.low()) {
            Some(why) => Err(StorageError::DiskFull(why)),
            None => Ok(()),
        }
    }

    /// `sled` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Make everything written so far durable (blocking; shares the flush with concurrent
    /// commits).
    pub fn flush(&self) -> Result<()> {
        self.backend.flush()
    }

    /// `Some` when durable commits have made no progress for longer than the stall limit.
    pub fn stall(&self) -> Option<Stall> {
        self.watchdog.stall()
    }

    /// Writes made durable so far, and the flushes that did it.
    pub fn commit_stats(&self) -> CommitStats {
        self.backend.stats()
    }

    /// A named space for host-wide data (plugin versions, admin credentials).
    pub(crate) fn space(&self, name: &str) -> Space {
        Space { backend: self.backend.clone(), name: name.into() }
    }

    pub fn addon(&self, id: &str) -> Result<AddonStore> {
        Ok(AddonStore { space: self.space(&format!("addon/{id}")) })
    }

    /// Take the lock on `key` that every host sharing the storage respects, waiting at most
    /// `wait`; `None` when the storage is this process's alone. Callers hold their own
    /// in-process lock on the key first, so a host asks for a key once at a time.
    pub async fn lock(&self, key: &str, wait: Duration) -> Result<Option<Box<dyn Held>>> {
        self.backend.lock(key, wait).await
    }

    /// Tell the other hosts sharing the storage that something changed.
    pub fn announce(&self, payload: &str) -> Result<()> {
        self.backend.announce(payload)
    }

    /// What other hosts announce ([`RESYNC`] when some may have been missed); `None` when
    /// the storage is not shared.
    pub fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.backend.subscribe()
    }

    /// Hold the commits of `space` (an add-on's is `addon/{id}`) for `hold`, as a stuck disk
    /// or database would: for the tests of the host's liveness reports.
    #[doc(hidden)]
    pub fn hold_commits(&self, space: &str, hold: Duration) -> Result<()> {
        self.space(space).commit(&mut |r| {
            // A read first: a backend may take the space's lock with the stage's first read.
            r.get(b"")?;
            std::thread::sleep(hold);
            Ok(Batch::default())
        })
    }

    /// The host's secret key named `name` (32 random bytes), made on first use and shared by
    /// every host on the same storage: it signs dashboard sessions and derives build API
    /// tokens.
    pub fn host_key(&self, name: &str) -> Result<Vec<u8>> {
        let space = self.space("host-keys");
        if let Some(key) = space.get(name.as_bytes())? {
            return Ok(key);
        }
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| StorageError::Internal(format!("no randomness for a key: {e}")))?;
        let mut kept = fresh.to_vec();
        space.commit(&mut |r| {
            let mut batch = Batch::default();
            match r.get(name.as_bytes())? {
                // Another host made it first: use that one.
                Some(existing) => kept = existing,
                None => batch.insert(name.as_bytes(), &fresh[..]),
            }
            Ok(batch)
        })?;
        Ok(kept)
    }

    /// Mark an SSO token as used, durably. Returns false when it was used before (a replay).
    /// Entries older than `keep_after` (unix seconds) are pruned on the way.
    pub fn claim_sso_token(&self, scope: &str, timestamp: i64, token: &str, keep_after: i64) -> Result<bool> {
        let key = format!("{:020}/{scope}/{token}", timestamp.max(0));
        let cutoff = format!("{:020}/", keep_after.max(0));
        let mut claimed = false;
        self.space("sso-tokens").commit(&mut |r| {
            let mut batch = Batch::default();
            claimed = r.get(key.as_bytes())?.is_none();
            if claimed {
                batch.insert(key.as_bytes(), &b""[..]);
            }
            let mut old = 0;
            r.scan(b"", &mut |k, _| {
                let prune = k < cutoff.as_bytes() && old < 256;
                if prune {
                    batch.remove(k);
                    old += 1;
                }
                prune
            })?;
            Ok(batch)
        })?;
        Ok(claimed)
    }
}

/// One named space of the storage.
#[derive(Clone)]
pub(crate) struct Space {
    backend: Arc<dyn Backend>,
    name: Arc<str>,
}

impl Space {
    /// See [`Backend::reads_wait`].
    pub(crate) fn reads_wait(&self) -> bool {
        self.backend.reads_wait()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.backend.get(&self.name, key)
    }

    /// Every pair under `prefix`, in key order.
    pub(crate) fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.visit(prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    pub(crate) fn visit(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        self.backend.scan(&self.name, prefix, visit)
    }

    /// See [`Backend::commit`].
    pub(crate) fn commit(&self, stage: &mut dyn FnMut(&dyn Reader) -> Result<Batch>) -> Result<()> {
        self.backend.commit(&self.name, stage)
    }

    /// See [`Backend::commit_unsynced`].
    pub(crate) fn commit_unsynced(
        &self,
        stage: &mut dyn FnMut(&dyn Reader) -> Result<Batch>,
    ) -> Result<Option<Unsynced>> {
        self.backend.commit_unsynced(&self.name, stage)
    }
}

/// One add-on's space.
#[derive(Clone)]
pub struct AddonStore {
    space: Space,
}

fn prefixed(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key.as_bytes());
    k
}

impl AddonStore {
    /// Whether a read may wait on the network or a writer (see [`Backend::reads_wait`]):
    /// async callers then read where blocking is allowed.
    pub fn reads_wait(&self) -> bool {
        self.space.reads_wait()
    }

    pub fn record(&self, resource_id: &str) -> Result<Option<Vec<u8>>> {
        self.space.get(&prefixed(RECORD, resource_id))
    }

    /// Every record, for listings and consistency checks.
    pub fn records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan(RECORD)
    }

    pub fn kv_usage(&self) -> Result<KvUsage> {
        Ok(usage(|key| self.space.get(key))?.0)
    }

    /// The resource an app identity maps to.
    pub fn alias(&self, key: &str) -> Result<Option<String>> {
        Ok(self.space.get(&prefixed(ALIAS, key))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.space.get(&prefixed(KV, key))
    }

    /// Every key-value pair of the add-on (administration and tests).
    pub fn kv_dump(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        self.scan(KV)
    }

    /// Every pair under `kind`, keyed by the name after the prefix.
    fn scan<C: FromIterator<(String, Vec<u8>)>>(&self, kind: &[u8]) -> Result<C> {
        Ok(self
            .space
            .scan(kind)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[kind.len()..]).into_owned(), v))
            .collect())
    }

    /// Keys under `prefix`, or `None` once their total length would pass `max_bytes` (so a
    /// listing never makes the host hold more than the caller allows).
    fn kv_keys(&self, prefix: &str, max_bytes: usize) -> Result<Option<Vec<String>>> {
        let (mut keys, mut total, mut over) = (Vec::new(), 0usize, false);
        self.space.visit(&prefixed(KV, prefix), &mut |k, _| {
            let key = String::from_utf8_lossy(&k[KV.len()..]).into_owned();
            total += key.len();
            over = total > max_bytes;
            keys.push(key);
            !over
        })?;
        Ok((!over).then_some(keys))
    }

    /// Start buffering a call's key-value access.
    pub fn begin(&self) -> KvTxn {
        KvTxn::new(self.clone())
    }

    /// Atomically apply a call's writes and (optionally) write a record and an alias,
    /// provided every key the call read still holds the value it saw and the add-on stays
    /// within its key-value quota (writes that only shrink the data are always allowed).
    /// Returns once the commit is durable.
    ///
    /// The backend serialises commits to an add-on's space (on every host sharing it), so
    /// validating the reads and then applying one atomic batch is as strong as a
    /// serialisable transaction.
    pub fn commit(
        &self,
        txn: &KvTxn,
        quota: KvQuota,
        record: Option<(&str, &[u8])>,
        alias: Option<(&str, &str)>,
    ) -> Result<()> {
        self.space.commit(&mut |r| stage(r, txn, quota, record, alias))
    }

    /// [`AddonStore::commit`], returning before the commit is durable when another thread is
    /// writing the log: then await [`Unsynced::durable`] before answering.
    pub fn commit_unsynced(
        &self,
        txn: &KvTxn,
        quota: KvQuota,
        record: Option<(&str, &[u8])>,
        alias: Option<(&str, &str)>,
    ) -> Result<Option<Unsynced>> {
        self.space.commit_unsynced(&mut |r| stage(r, txn, quota, record, alias))
    }
}

#[cfg(test)]
mod tests;
