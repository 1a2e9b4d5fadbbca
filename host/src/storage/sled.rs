//! The embedded backend: sled in the data directory, one tree per space, for a host that is
//! the whole service.
//!
//! Commits to a space are serialised by a mutex of this process (nothing else opens the
//! directory), applied as single sled writes, logged in the write-ahead log ([`super::wal`],
//! in `wal/` beside sled's files, which also makes them atomic across a crash) and made
//! durable by the group commit in [`super::durable`]. Commits block: callers in async code
//! run them where blocking is allowed, never on a runtime worker. Reads never wait on a
//! writer, so they may run in place (see `reads_wait`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::backend::{Backend, LockFuture, Reader, Stage};
use super::durable::{Durability, Unsynced};
use super::wal::{META, Wal};
use super::{CommitStats, Result};
use crate::config::SyncMode;

/// A space's tree and the lock its commits take.
type SpaceOf = (sled::Tree, Arc<CommitLock>);

/// A space's commit lock, and how many commits are waiting for it.
#[derive(Default)]
struct CommitLock {
    lock: Mutex<()>,
    queued: AtomicUsize,
}

pub(super) struct Sled {
    db: sled::Db,
    /// Where large values live as files (see [`super::files`]).
    files: std::path::PathBuf,
    /// Each space, opened on first use.
    spaces: Mutex<HashMap<String, SpaceOf>>,
    durable: Arc<Durability>,
}

impl Sled {
    pub(super) fn open(dir: &Path, sync: SyncMode) -> Result<Sled> {
        // No periodic background flush: every write the host acknowledges is durable in the
        // write-ahead log, and sled is flushed at its checkpoints. sled's flusher holds its
        // global concurrency-control lock while it writes, so a batch waiting behind it, and
        // every read queued behind that batch, stalled for the length of a disk write
        // (reads of up to 0.5 s were measured under load).
        let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
        let wal = Wal::open(&dir.join("wal"), &db, sync)?;
        let durable = Arc::new(Durability::new(wal));
        Ok(Sled { db, files: dir.join("files"), spaces: Mutex::default(), durable })
    }

    /// Stage, log and apply a commit under its space's lock: its log entry, if it wrote
    /// anything. A commit alone (no other being applied, waiting for the space's lock or
    /// waiting for the log)
    /// leads a write of the log itself, started before its apply so that the disk works while
    /// sled does, and waited for after the space's lock is released: a request at one
    /// connection took ~20 µs less. Under load, that write would lengthen the time the space's
    /// lock is held (the p99 at 64 connections rose by a fifth), so a commit that is not
    /// alone applies first and then joins the group commit.
    fn apply(&self, space: &str, stage: &mut Stage<'_>) -> Result<Option<u64>> {
        let (tree, lock) = self.space(space)?;
        let (entry, lead, applied) = {
            lock.queued.fetch_add(1, Ordering::Relaxed);
            let _serial = lock.lock.lock().unwrap_or_else(PoisonError::into_inner);
            lock.queued.fetch_sub(1, Ordering::Relaxed);
            let staged = stage(&TreeReader(&tree))?;
            if staged.is_empty() {
                return Ok(None);
            }
            let (seq, bytes, alone) = self.durable.wal.log(space, &staged.writes);
            let alone = alone && lock.queued.load(Ordering::Relaxed) == 0;
            let lead = if alone { self.durable.lead(seq) } else { None };
            (seq, lead, self.durable.wal.apply(&tree, seq, &bytes, &staged.writes))
        };
        drop(lead);
        applied.map(|()| Some(entry))
    }

    fn space(&self, name: &str) -> Result<SpaceOf> {
        let mut spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(space) = spaces.get(name) {
            return Ok(space.clone());
        }
        let space = (self.db.open_tree(name)?, Arc::default());
        spaces.insert(name.to_owned(), space.clone());
        Ok(space)
    }
}

struct TreeReader<'a>(&'a sled::Tree);

impl Reader for TreeReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        for pair in self.0.scan_prefix(prefix) {
            let (k, v) = pair?;
            if k.starts_with(META) {
                continue;
            }
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

impl Backend for Sled {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn file_dir(&self) -> Option<&Path> {
        Some(&self.files)
    }

    fn data_dir(&self) -> Option<&Path> {
        self.files.parent()
    }

    fn broken(&self) -> Option<super::StorageError> {
        self.durable.wal.broken()
    }

    fn spaces(&self) -> Result<Vec<String>> {
        let names = self.db.tree_names().into_iter().map(|n| String::from_utf8_lossy(&n).into_owned());
        Ok(names.filter(|n| n != "__sled__default").collect())
    }

    /// sled's reads take no lock a writer holds (commits are plain single writes, never
    /// sled transactions, so its concurrency control never excludes readers) and are served
    /// from its page cache; only a page evicted from the cache is read back from disk.
    fn reads_wait(&self) -> bool {
        false
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        TreeReader(&self.space(space)?.0).get(key)
    }

    fn scan(&self, space: &str, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        TreeReader(&self.space(space)?.0).scan(prefix, visit)
    }

    fn commit(&self, space: &str, stage: &mut Stage<'_>) -> Result<()> {
        match self.apply(space, stage)? {
            Some(entry) => self.durable.wait(entry),
            None => Ok(()),
        }
    }

    fn commit_unsynced(&self, space: &str, stage: &mut Stage<'_>) -> Result<Option<Unsynced>> {
        let Some(entry) = self.apply(space, stage)? else { return Ok(None) };
        Ok((!self.durable.settle(entry, false)?).then(|| Unsynced::new(self.durable.clone(), entry)))
    }

    fn flush(&self) -> Result<()> {
        self.durable.flush()
    }

    fn stats(&self) -> CommitStats {
        self.durable.stats()
    }

    fn lock(&self, _key: &str, _wait: Duration) -> LockFuture {
        Box::pin(async { Ok(None) })
    }

    fn announce(&self, _payload: &str) -> Result<()> {
        Ok(())
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}
