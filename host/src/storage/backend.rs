//! The one interface both storage backends implement, so that everything above it (records,
//! key-value data, quotas, jobs, the plugin registry) is written once and means the same on
//! sled and on PostgreSQL.
//!
//! A backend keeps named *spaces* of ordered byte keys. Reads see committed data. Writes
//! happen only in [`Backend::commit`]: the caller's stage function reads through a
//! [`Reader`] and returns a [`Batch`], and the backend applies the batch atomically. Commits
//! to one space are serialised — within the process on sled, across every host sharing the
//! database on PostgreSQL — so a stage that validates what it read and then writes is as
//! strong as a serialisable transaction. A commit returns only once it is durable.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::durable::Unsynced;
use super::{CommitStats, Result};

/// Reads inside a commit (see [`Backend::commit`]).
pub(crate) trait Reader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Read `keys` ahead, in one round trip where the backend is remote: the stage's later
    /// [`Reader::get`]s of them are then answered from memory. Only an optimisation.
    fn prefetch(&self, _keys: &[Vec<u8>]) -> Result<()> {
        Ok(())
    }
    /// Visit the pairs under `prefix` in key order, until `visit` returns false.
    fn scan(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;
}

/// The writes of one commit. A later write of the same key replaces an earlier one.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Batch {
    pub(crate) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// A commit's stage: reads what it needs, decides, and returns the writes (or an error that
/// leaves the space untouched).
pub(crate) type Stage<'a> = dyn FnMut(&dyn Reader) -> Result<Batch> + 'a;

/// A lock held across hosts (see [`Backend::lock`]); dropping it releases the lock.
pub trait Held: Send {}

pub(crate) type LockFuture = Pin<Box<dyn Future<Output = Result<Option<Box<dyn Held>>>> + Send>>;

/// What a backend offers.
pub(crate) trait Backend: Send + Sync {
    /// `sled` or `postgres`, for logs and `/admin/status`.
    fn kind(&self) -> &'static str;

    /// Where this host keeps large values as files ([`super::Files`]), if it does: sled's
    /// data directory. Without one (PostgreSQL, shared by every host) they are stored in
    /// the backend itself.
    fn file_dir(&self) -> Option<&std::path::Path> {
        None
    }

    /// The host's own data directory, whose disk this backend fills (sled); `None` when the
    /// data lives elsewhere (PostgreSQL).
    fn data_dir(&self) -> Option<&std::path::Path> {
        None
    }

    /// Why this backend cannot go on safely (a failed write to sled or its log), once it
    /// cannot: only a restart recovers.
    fn broken(&self) -> Option<super::StorageError> {
        None
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Whether [`Backend::get`] may wait on something else (the network, a lock a commit
    /// holds). Async callers then read where blocking is allowed; otherwise they may read in
    /// place, saving a thread hand-off per read.
    fn reads_wait(&self) -> bool {
        true
    }

    /// The names of the spaces holding data (for copying one backend into another).
    fn spaces(&self) -> Result<Vec<String>>;

    /// Visit the committed pairs under `prefix` in key order, until `visit` returns false.
    fn scan(&self, space: &str, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;

    /// Run `stage` with every other commit to `space` excluded (from its first read on, at
    /// the latest), then apply its batch atomically; returns once the batch is durable. An
    /// error from `stage` writes nothing.
    fn commit(&self, space: &str, stage: &mut Stage<'_>) -> Result<()>;

    /// [`Backend::commit`], except that it may return before the batch is durable, when
    /// another thread is already making earlier commits durable: the caller then awaits
    /// [`Unsynced::durable`] before answering, without holding a thread meanwhile. `None`
    /// once durable (the default: a plain commit).
    fn commit_unsynced(&self, space: &str, stage: &mut Stage<'_>) -> Result<Option<Unsynced>> {
        self.commit(space, stage).map(|()| None)
    }

    /// Make everything committed so far durable (commits already are; this is for the
    /// writes of a shutdown).
    fn flush(&self) -> Result<()>;

    fn stats(&self) -> CommitStats;

    /// Take a lock on `key` that every host sharing this backend respects, waiting at most
    /// `wait`. `None` when the backend serves one process only (the caller's own in-process
    /// lock is then all there is to take).
    fn lock(&self, key: &str, wait: Duration) -> LockFuture;

    /// Tell every other host sharing this backend that something changed (`payload`); a
    /// no-op for a backend of one process.
    fn announce(&self, payload: &str) -> Result<()>;

    /// Announcements from other hosts, if the backend is shared.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>>;
}
