//! The commit log in front of sled: what makes a commit durable before its 2xx.
//!
//! sled's own `flush` seals its IO buffer and hands the write to sled's IO thread pool,
//! whose every job wakes all seven of its idle threads; the flushing thread then waits to be
//! woken back. Measured on the 2-core development VM, that is ~135 µs per commit, of which the
//! disk's own `sync_file_range` is ~45 µs. So commits are made durable here instead: each
//! commit is logged here, then applied to sled, and the group commit's leader
//! ([`super::durable`]) writes and syncs what was logged, on its own thread, with no hand-off.
//! A commit that finds no write under way leads one itself, and starts it before applying
//! its writes, so the disk works while sled does. sled is flushed only at a checkpoint, when
//! the log moves to its other file; that move first waits for the entries of the file left
//! behind that are still being applied.
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
//! write, whose sequence number is the space's mark), then its writes; an entry logged but
//! not (wholly) applied when the process stopped is applied at the restart. A reader
//! may see part of a commit while it is applied, as it could always see a commit land between
//! two of its reads: what a plugin read is checked again when it commits.
//!
//! Files grow ahead of the writes in zeroed steps ([`grow`]); entries then overwrite written
//! blocks only, which `sync_file_range` makes durable without the file's metadata.

mod entry;
mod grow;
mod recovery;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::{Result, StorageError};
use crate::config::SyncMode;
use entry::{HEADER, encode, header, parse};
use grow::Grower;
use recovery::{apply, replay};

/// A file this full hands over to the other at the next write (a checkpoint).
const ROTATE_AT: u64 = 32 << 20;
/// The start of the keys the log keeps in every space (hidden from scans).
pub(super) const META: &[u8] = b"\xff\xffwal-";

pub(super) struct Wal {
    pending: Mutex<Pending>,
    /// Signalled when an entry that a move to the other file waits for is applied.
    applied: Condvar,
    /// Taken by the group commit's leader only (one at a time).
    writer: Mutex<Writer>,
    /// Once a write or an apply has failed the log cannot be trusted past it: every later
    /// commit fails, and the host reports itself broken (`/livez` 503) so its supervisor
    /// restarts it, which replays the log. (Taken last, after any other lock of the log.)
    broken: Mutex<Option<Broken>>,
    /// The data directory, for the one ERROR that says the host must restart.
    data_dir: std::path::PathBuf,
}

/// Why the log stopped: its first failure.
#[derive(Debug, Clone)]
struct Broken {
    why: String,
    disk_full: bool,
}

struct Pending {
    bytes: Vec<u8>,
    /// The sequence number of the first entry in `bytes`.
    first: u64,
    next: u64,
    appended: u64,
    /// Entries logged (so perhaps written out already) but not yet applied to sled.
    applying: BTreeSet<u64>,
    /// A move to the other file waits for entries in `applying`.
    mover_waits: bool,
}

/// A write of the log started by [`Wal::start_write`], to be waited for by
/// [`Wal::finish_write`].
pub(super) struct Started {
    /// The last entry it holds.
    last: u64,
    /// Its file, offset and length (none when there was nothing to write).
    range: Option<(usize, u64, u64)>,
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io(what: &str, e: std::io::Error) -> StorageError {
    if super::is_disk_full(&e) {
        return StorageError::DiskFull(format!("write-ahead log: {what}: {e}"));
    }
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
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                first: next,
                next,
                appended: 0,
                applying: BTreeSet::new(),
                mover_waits: false,
            }),
            applied: Condvar::new(),
            broken: Mutex::new(None),
            data_dir: dir.parent().unwrap_or(dir).to_path_buf(),
            writer: Mutex::new(Writer {
                db: db.clone(),
                files,
                active: 0,
                offset: HEADER,
                grower,
                rotate_at,
                checkpoint: None,
                sync,
            }),
        })
    }

    /// Log a commit to the space `space` and apply it to `tree`, the space's tree: its
    /// sequence number, for [`super::durable::Durability::wait`]. ([`Wal::log`] then
    /// [`Wal::apply`], for callers with no write to start in between.)
    #[cfg(test)]
    pub(super) fn append(
        &self,
        tree: &sled::Tree,
        space: &str,
        writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<u64> {
        let (seq, entry, _) = self.log(space, writes);
        self.apply(tree, seq, &entry, writes)?;
        Ok(seq)
    }

    /// Give a commit its sequence number and add its entry to what the next write of the
    /// log writes out: the number, the entry, and whether no other commit was being applied
    /// (so that starting a write before applying delays nobody). The caller holds its space's commit lock
    /// from before this until [`Wal::apply`] has returned, so a space's entries are applied
    /// in their order. The entry may be written out before it is applied: that is how a
    /// commit's disk write overlaps its apply.
    pub(super) fn log(&self, space: &str, writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> (u64, Vec<u8>, bool) {
        let mut entry = Vec::new();
        let mut p = lock(&self.pending);
        let seq = p.next;
        encode(&mut entry, seq, space, writes.iter());
        p.bytes.extend_from_slice(&entry);
        let alone = p.applying.is_empty();
        p.applying.insert(seq);
        p.next += 1;
        p.appended += 1;
        (seq, entry, alone)
    }

    /// Apply the logged commit `seq` (its encoded `entry`) to `tree`.
    pub(super) fn apply(
        &self,
        tree: &sled::Tree,
        seq: u64,
        entry: &[u8],
        writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<()> {
        let outcome = apply(tree, entry, writes.iter());
        {
            let mut p = lock(&self.pending);
            p.applying.remove(&seq);
            if p.mover_waits {
                self.applied.notify_all();
            }
        }
        // sled failed in the middle of a commit: nothing more can be trusted to it until a
        // restart completes the commit from its pending entry (or its logged entry).
        outcome.map_err(|e| self.fail(e))
    }

    /// The last sequence number appended.
    pub(super) fn last(&self) -> u64 {
        lock(&self.pending).next - 1
    }

    pub(super) fn appended(&self) -> u64 {
        lock(&self.pending).appended
    }

    /// Write and sync every entry logged so far; the last sequence number now durable.
    /// Called by one thread at a time (the group commit's leader).
    #[cfg(test)]
    pub(super) fn write_out(&self) -> Result<u64> {
        let started = self.start_write()?;
        self.finish_write(started)
    }

    /// Write every entry logged so far and start making it durable, without waiting for the
    /// disk; [`Wal::finish_write`] waits. Called by one thread at a time (the group commit's
    /// leader), which calls `finish_write` before the next `start_write`.
    pub(super) fn start_write(&self) -> Result<Started> {
        let mut w = lock(&self.writer);
        self.check()?;
        let (bytes, first, last) = {
            let mut p = lock(&self.pending);
            let next = p.next;
            let first = std::mem::replace(&mut p.first, next);
            (std::mem::take(&mut p.bytes), first, p.next - 1)
        };
        if bytes.is_empty() {
            return Ok(Started { last, range: None });
        }
        let outcome = self.rotate_if_full(&mut w, first, bytes.len() as u64).and_then(|()| w.start(&bytes));
        match outcome {
            Ok(range) => Ok(Started { last, range: Some(range) }),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Wait until the write `started` is durable; the last sequence number it made durable.
    pub(super) fn finish_write(&self, started: Started) -> Result<u64> {
        let Some((file, offset, len)) = started.range else { return Ok(started.last) };
        let w = lock(&self.writer);
        match w.finish(file, offset, len) {
            Ok(()) => Ok(started.last),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn check(&self) -> Result<()> {
        match &*lock(&self.broken) {
            Some(Broken { why, disk_full: true }) => Err(StorageError::DiskFull(why.clone())),
            Some(Broken { why, .. }) => Err(StorageError::Flush(why.clone())),
            None => Ok(()),
        }
    }

    /// Why no commit can be made durable any more, once a write or an apply has failed.
    pub(super) fn broken(&self) -> Option<StorageError> {
        self.check().err()
    }

    /// Stop the log at its first failure `e` (said once, at ERROR, with the data directory).
    fn fail(&self, e: StorageError) -> StorageError {
        let mut broken = lock(&self.broken);
        if broken.is_none() {
            tracing::error!(
                data_dir = %self.data_dir.display(),
                "STORAGE FAILED in {}: {e}. No commit can be made durable any more; /livez answers 503 so \
                 that a supervisor restarts the host, and the restart replays the write-ahead log",
                self.data_dir.display()
            );
            *broken = Some(Broken { why: e.to_string(), disk_full: matches!(e, StorageError::DiskFull(_)) });
        }
        e
    }

    /// Move to the other file when this one is full: its header names `first`, the entry
    /// about to be written; then sled is flushed (in the background), which makes every
    /// entry of the file left behind redundant before that file's next turn. Entries are
    /// logged before they are applied, so the move first waits for those of the file left
    /// behind that are still being applied (a matter of microseconds): the flush must hold
    /// them all.
    fn rotate_if_full(&self, w: &mut Writer, first: u64, len: u64) -> Result<()> {
        if w.offset + len <= w.rotate_at || w.offset == HEADER {
            return Ok(());
        }
        {
            let mut p = lock(&self.pending);
            while p.applying.range(..first).next().is_some() {
                p.mover_waits = true;
                p = self.applied.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            p.mover_waits = false;
        }
        w.rotate(first)
    }
}

impl Writer {
    /// Move to the other file; its header names `first`, the entry about to be written. Then
    /// checkpoint: flush sled in the background, so that the file left behind is redundant
    /// before its next turn.
    fn rotate(&mut self, first: u64) -> Result<()> {
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

    /// Write `bytes` at the end of the active file and start its way to the disk: the
    /// range written, for [`Writer::finish`].
    fn start(&mut self, bytes: &[u8]) -> Result<(usize, u64, u64)> {
        let (active, offset, len) = (self.active, self.offset, bytes.len() as u64);
        self.grower.growth.ensure(active, offset + len)?;
        let file = &self.files[active];
        file.write_all_at(bytes, offset).map_err(|e| io("writing", e))?;
        if self.sync == SyncMode::Range {
            sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE).map_err(|e| io("syncing", e))?;
        }
        self.offset += len;
        Ok((active, offset, len))
    }

    /// Wait until the range [`Writer::start`] wrote is durable.
    fn finish(&self, file: usize, offset: u64, len: u64) -> Result<()> {
        let file = &self.files[file];
        match self.sync {
            SyncMode::Range => sync_range(file, offset, len, SYNC_AND_WAIT).map_err(|e| io("syncing", e)),
            SyncMode::Data => file.sync_data().map_err(|e| io("syncing", e)),
        }
    }
}

/// sled's flags for `sync_file_range`: wait for earlier writes of the range, write it, and
/// wait for that write.
const SYNC_AND_WAIT: libc::c_uint =
    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;

/// `sync_file_range` of a range with `flags`: [`SYNC_AND_WAIT`] makes it durable;
/// `SYNC_FILE_RANGE_WRITE` alone starts its write to the disk without waiting.
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
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
    fn an_entry_written_out_before_it_was_applied_is_applied_at_the_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal_dir = dir.path().join("wal");
        let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        let wal = Wal::open(&wal_dir, &db, SyncMode::Range).expect("log opens");
        let applied = writes(&[("k", Some("1"))]);
        wal.append(&tree, "addon/a", &applied).expect("appends");
        // Logged and durable, then the process stops before applying it.
        let (seq, _, _) = wal.log("addon/a", &writes(&[("k", Some("2")), ("other", Some("x"))]));
        assert_eq!(wal.write_out().expect("writes out"), seq);
        drop(wal);
        assert_eq!(tree.get("k").expect("get").as_deref(), Some(&b"1"[..]), "not applied before the stop");
        let wal = Wal::open(&wal_dir, &db, SyncMode::Range).expect("log reopens");
        assert_eq!(wal.last(), seq);
        assert_eq!(tree.get("k").expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(tree.get("other").expect("get").as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn a_move_to_the_other_file_waits_for_the_entries_still_being_applied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        let wal = Arc::new(Wal::open_with(&dir.path().join("wal"), &db, SyncMode::Range, 1024).expect("log opens"));
        // An entry logged (and written out) whose apply is slow.
        let slow = writes(&[("slow", Some("applied"))]);
        let (seq, entry, _) = wal.log("addon/a", &slow);
        wal.write_out().expect("writes out");
        let applier = {
            let (wal, tree) = (wal.clone(), tree.clone());
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                wal.apply(&tree, seq, &entry, &slow).expect("applies");
            })
        };
        // Enough entries to fill the first file: the move to the second must wait for it.
        let started = std::time::Instant::now();
        for i in 0..40u32 {
            wal.append(&tree, "addon/a", &writes(&[("k", Some(&format!("{i:0>40}")))])).expect("appends");
            wal.write_out().expect("writes out");
        }
        assert!(started.elapsed() >= std::time::Duration::from_millis(150), "the move waited for the apply");
        assert_eq!(tree.get("slow").expect("get").as_deref(), Some(&b"applied"[..]));
        applier.join().expect("applier");
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
