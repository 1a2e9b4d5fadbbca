//! The commit log in front of sled: what makes a commit durable before its 2xx.
//!
//! sled's own `flush` seals its IO buffer and hands the write to sled's IO thread pool,
//! whose every job wakes all seven of its idle threads; the flushing thread then waits to be
//! woken back. Measured on the 2-core development VM, that is ~135 µs per commit, of which the
//! disk's own `sync_file_range` is ~45 µs. So commits are made durable here instead: each
//! commit, once applied to sled, is appended to this log, and the group commit's leader
//! ([`super::durable`]) writes and syncs what was appended, on its own thread, with no hand-off.
//! sled is flushed only at a checkpoint, when the log moves to its other file.
//!
//! Two files, `wal/0` and `wal/1`, take turns. A file starts with a header naming the
//! sequence number of its first entry; entries follow with consecutive numbers, each with its
//! length and CRC, so recovery stops at a torn entry or at a stale one left by the file's
//! previous turn. Each move to the other file starts a checkpoint (sled's flush, on a thread
//! of its own); the next move waits for it, so the file it reuses holds nothing sled lacks.
//!
//! A commit is applied to sled as single writes, not as a sled batch: each sled batch seals
//! sled's IO buffer and hands it to sled's IO threads, which cost more than the rest of the
//! commit together (apply 75-90 µs as a batch, 23 µs as writes). Atomicity across a crash
//! comes from the log instead ([`recovery`]): sled recovers a prefix of its own writes, and
//! a commit writes, in order, its whole entry under the space's pending key (one atomic
//! write), its writes, then the space's applied mark (the entry's sequence number). A reader
//! may see part of a commit while it is applied, as it could always see a commit land between
//! two of its reads: what a plugin read is checked again when it commits.
//!
//! Files grow ahead of the writes in zeroed steps ([`grow`]); entries then overwrite written
//! blocks only, which `sync_file_range` makes durable without the file's metadata.

mod entry;
mod grow;
mod recovery;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Result, StorageError};
use entry::{HEADER, encode, header, parse};
use grow::Grower;
use recovery::{apply, replay};

/// A file this full hands over to the other at the next write (a checkpoint).
const ROTATE_AT: u64 = 32 << 20;
/// The start of the keys the log keeps in every space (hidden from scans).
pub(super) const META: &[u8] = b"\xff\xffwal-";

/// How a write to the log is made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// `sync_file_range`: the written range reaches the device, as sled's own flush does.
    #[default]
    Range,
    /// `fdatasync`: also flushes the device's volatile write cache (survives a power cut on
    /// disks that have one), at about twice the cost on the development VM.
    Data,
}

pub(super) struct Wal {
    pending: Mutex<Pending>,
    /// Taken by the group commit's leader only (one at a time).
    writer: Mutex<Writer>,
}

struct Pending {
    bytes: Vec<u8>,
    /// The sequence number of the first entry in `bytes`.
    first: u64,
    next: u64,
    appended: u64,
}

struct Writer {
    /// The database the log stands in front of, flushed at each checkpoint.
    db: sled::Db,
    files: Arc<[File; 2]>,
    active: usize,
    /// Where the next entry goes in the active file.
    offset: u64,
    grower: Grower,
    /// A file this full hands over to the other ([`ROTATE_AT`]).
    rotate_at: u64,
    /// The checkpoint after the last move (sled's flush), on a thread of its own so that
    /// commits do not wait for it; the next move waits for it.
    checkpoint: Option<std::thread::JoinHandle<Result<()>>>,
    sync: SyncMode,
    /// Once a write has failed the log cannot be trusted past it: every later commit fails.
    broken: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io(what: &str, e: std::io::Error) -> StorageError {
    StorageError::Flush(format!("write-ahead log: {what}: {e}"))
}

impl Wal {
    /// Open the log in `dir`, replay into `db` what it holds that sled lost, checkpoint, and
    /// start a fresh log.
    pub(super) fn open(dir: &Path, db: &sled::Db, sync: SyncMode) -> Result<Wal> {
        Self::open_with(dir, db, sync, ROTATE_AT)
    }

    fn open_with(dir: &Path, db: &sled::Db, sync: SyncMode, rotate_at: u64) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating its directory", e))?;
        let open =
            |name: &str| OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(name));
        let files = [open("0").map_err(|e| io("opening", e))?, open("1").map_err(|e| io("opening", e))?];
        let mut segments = Vec::new();
        for file in &files {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &*file, &mut bytes).map_err(|e| io("reading", e))?;
            if let Some(segment) = parse(&bytes) {
                segments.push(segment);
            }
        }
        segments.sort_by_key(|(first, _)| *first);
        let (replayed, last) = replay(db, segments.iter().flat_map(|(_, entries)| entries))?;
        if replayed > 0 {
            tracing::warn!(replayed, "storage: the last stop was unclean; replayed commits from the write-ahead log");
        }
        // Always, even with nothing replayed: a sled database that was never flushed has no
        // stable position, and then its recovery keeps the blob files (large values) a killed
        // process left behind, whose names the next writes reuse (sled fails with "File
        // exists"). After this flush, recovery removes such files.
        db.flush()?;
        for file in &files {
            file.set_len(0).map_err(|e| io("truncating", e))?;
        }
        let next = last + 1;
        files[0].write_all_at(&header(next), 0).map_err(|e| io("writing a header", e))?;
        for file in &files {
            file.sync_all().map_err(|e| io("syncing", e))?;
        }
        let files = Arc::new(files);
        let grower = Grower::start(files.clone(), [HEADER, 0])?;
        grower.growth.ensure(0, HEADER)?;
        Ok(Wal {
            pending: Mutex::new(Pending { bytes: Vec::new(), first: next, next, appended: 0 }),
            writer: Mutex::new(Writer {
                db: db.clone(),
                files,
                active: 0,
                offset: HEADER,
                grower,
                rotate_at,
                checkpoint: None,
                sync,
                broken: None,
            }),
        })
    }

    /// Apply a commit to `tree` (the space `space`) and append it to the log, in one order
    /// for all; its sequence number, for [`super::durable::Durability::wait`].
    pub(super) fn append(
        &self,
        tree: &sled::Tree,
        space: &str,
        writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<u64> {
        let mut p = lock(&self.pending);
        let seq = p.next;
        let start = p.bytes.len();
        encode(&mut p.bytes, seq, space, writes.iter());
        if let Err(e) = apply(tree, seq, &p.bytes[start..], writes.iter()) {
            // sled failed in the middle of a commit: nothing more can be trusted to it until
            // a restart completes the commit from its pending entry.
            p.bytes.truncate(start);
            drop(p);
            tracing::error!("storage: applying a commit failed: {e}");
            // (The writer's lock is taken before the pending one elsewhere: never the reverse.)
            lock(&self.writer).broken = Some(format!("applying a commit failed: {e}"));
            return Err(e);
        }
        p.next += 1;
        p.appended += 1;
        Ok(seq)
    }

    /// The last sequence number appended.
    pub(super) fn last(&self) -> u64 {
        lock(&self.pending).next - 1
    }

    pub(super) fn appended(&self) -> u64 {
        lock(&self.pending).appended
    }

    /// Write and sync every entry appended so far; the last sequence number now durable.
    /// Called by one thread at a time (the group commit's leader).
    pub(super) fn write_out(&self) -> Result<u64> {
        let mut w = lock(&self.writer);
        if let Some(why) = &w.broken {
            return Err(StorageError::Flush(why.clone()));
        }
        let (bytes, first, last) = {
            let mut p = lock(&self.pending);
            let next = p.next;
            let first = std::mem::replace(&mut p.first, next);
            (std::mem::take(&mut p.bytes), first, p.next - 1)
        };
        if bytes.is_empty() {
            return Ok(last);
        }
        let outcome = w.rotate_if_full(first, bytes.len() as u64).and_then(|()| w.write(&bytes));
        if let Err(e) = &outcome {
            tracing::error!("the write-ahead log failed; no commit can be made durable any more: {e}");
            w.broken = Some(e.to_string());
        }
        outcome.map(|()| last)
    }
}

impl Writer {
    /// Move to the other file when this one is full: its header names `first`, the entry
    /// about to be written; then sled is flushed (in the background), which makes every
    /// entry of the file left behind redundant before that file's next turn.
    fn rotate_if_full(&mut self, first: u64, len: u64) -> Result<()> {
        if self.offset + len <= self.rotate_at || self.offset == HEADER {
            return Ok(());
        }
        // The file about to be reused must be redundant: the previous checkpoint must be done.
        if let Some(previous) = self.checkpoint.take() {
            previous.join().map_err(|_| StorageError::Flush("the storage checkpoint panicked".into()))??;
        }
        let next = 1 - self.active;
        let file = &self.files[next];
        file.write_all_at(&header(first), 0).map_err(|e| io("writing a header", e))?;
        file.sync_data().map_err(|e| io("syncing a header", e))?;
        self.grower.growth.written(next, HEADER);
        self.active = next;
        self.offset = HEADER;
        let db = self.db.clone();
        let checkpoint = std::thread::Builder::new().name("storage-checkpoint".into()).spawn(move || {
            db.flush()?;
            Ok(())
        });
        self.checkpoint = Some(checkpoint.map_err(|e| io("starting a checkpoint", e))?);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (active, offset, len) = (self.active, self.offset, bytes.len() as u64);
        self.grower.growth.ensure(active, offset + len)?;
        let file = &self.files[active];
        file.write_all_at(bytes, offset).map_err(|e| io("writing", e))?;
        match self.sync {
            SyncMode::Range => sync_range(file, offset, len).map_err(|e| io("syncing", e))?,
            SyncMode::Data => file.sync_data().map_err(|e| io("syncing", e))?,
        }
        self.offset += len;
        Ok(())
    }
}

/// `sync_file_range` with sled's flags: wait for earlier writes of the range, write it, and
/// wait for that write.
fn sync_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return file.sync_data();
    };
    // SAFETY: a plain system call on a file descriptor `file` keeps open for its duration,
    // with integer arguments; it touches no memory of this process.
    #[allow(unsafe_code, reason = "sync_file_range has no safe wrapper in std")]
    let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if ret == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOSYS) => file.sync_data(),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::entry::{parse, testing::writes};
    use super::*;

    #[test]
    fn the_log_takes_turns_between_its_files_and_a_restart_recovers_every_entry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal_dir = dir.path().join("wal");
        let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        let wal = Wal::open_with(&wal_dir, &db, SyncMode::Range, 2048).expect("log opens");
        let mut last = 0;
        for i in 0..200u32 {
            let writes = writes(&[(&format!("k{}", i % 50), Some(&i.to_string()))]);
            let seq = wal.append(&tree, "addon/a", &writes).expect("appends");
            assert_eq!(seq, last + 1, "sequence numbers follow each other");
            last = seq;
            if i % 3 == 0 {
                assert_eq!(wal.write_out().expect("writes out"), seq);
            }
        }
        assert_eq!(wal.write_out().expect("writes out"), last);
        assert_eq!(wal.appended(), 200);
        // Both files hold a header; together they hold the newest entries in sequence.
        let files: Vec<_> = ["0", "1"].iter().map(|f| std::fs::read(wal_dir.join(f)).expect("reads")).collect();
        let mut segments: Vec<_> = files.iter().filter_map(|f| parse(f)).collect();
        assert_eq!(segments.len(), 2, "the log moved to its second file");
        segments.sort_by_key(|(first, _)| *first);
        let newest = &segments[1];
        assert_eq!(newest.0 + newest.1.len() as u64 - 1, last, "the newest file ends with the last entry");
        assert!(newest.0 > 1, "an earlier file was checkpointed and reused");
        drop(wal);
        // A restart on the same sled replays nothing sled already has, and starts after `last`.
        let wal = Wal::open_with(&wal_dir, &db, SyncMode::Range, 2048).expect("log reopens");
        assert_eq!(wal.last(), last);
        for i in 150..200u32 {
            let key = format!("k{}", i % 50);
            assert_eq!(tree.get(&key).expect("get").as_deref(), Some(i.to_string().as_bytes()));
        }
    }

    #[test]
    fn fdatasync_mode_logs_and_recovers_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        let wal = Wal::open_with(&dir.path().join("wal"), &db, SyncMode::Data, ROTATE_AT).expect("log opens");
        for i in 0..5u32 {
            let seq = wal.append(&tree, "addon/a", &writes(&[("k", Some(&i.to_string()))])).expect("appends");
            assert_eq!(wal.write_out().expect("writes out"), seq);
        }
        let log = std::fs::read(dir.path().join("wal/0")).expect("reads");
        assert_eq!(parse(&log).map(|(first, entries)| (first, entries.len())), Some((1, 5)));
    }
}
