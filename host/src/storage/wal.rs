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
//! previous turn. Before the log moves to the other file, that file's entries have all been
//! made durable in sled by the previous move's checkpoint.
//!
//! A commit is applied to sled as single writes, not as a sled batch: each sled batch seals
//! sled's IO buffer and hands it to sled's IO threads, which cost more than the rest of the
//! commit together (apply 75-90 µs as a batch, 23 µs as writes). Atomicity across a crash
//! comes from the log instead. sled recovers a prefix of its own writes, and a commit writes,
//! in order: the space's [`PENDING`] key (the whole entry, one atomic write), its writes,
//! then the space's [`APPLIED`] key (the entry's sequence number). At start-up, a space whose
//! pending entry is newer than its applied mark was cut in the middle of a commit, which is
//! applied again whole; then each space gets the logged entries after its mark, so recovery
//! never rolls back a newer state sled wrote on its own. A reader may see part of a commit
//! while it is applied, as it could always see a commit land between two of its reads:
//! what a plugin read is checked again when it commits.
//!
//! Files grow in zeroed 1 MiB steps made durable with `fdatasync`; entries then overwrite
//! written blocks only, which `sync_file_range` makes durable without the file's metadata.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Result, StorageError};

const MAGIC: &[u8; 8] = b"AHWAL\x00\x00\x01";
/// Magic and the sequence number of the file's first entry.
const HEADER: u64 = 16;
/// Files grow by this much at a time, written with zeros.
const STEP: u64 = 1 << 20;
/// A file this full hands over to the other at the next write (a checkpoint).
const ROTATE_AT: u64 = 32 << 20;
/// The start of the keys the log keeps in every space (hidden from scans).
pub(super) const META: &[u8] = b"\xff\xffwal-";
/// In every space: the sequence number of the last log entry applied to it.
const APPLIED: &[u8] = b"\xff\xffwal-applied";
/// In every space: the entry being applied (or last applied) to it, whole.
const PENDING: &[u8] = b"\xff\xffwal-pending";

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
    files: [File; 2],
    active: usize,
    /// Where the next entry goes in the active file.
    offset: u64,
    /// How far each file holds written blocks.
    zeroed: [u64; 2],
    /// A file this full hands over to the other ([`ROTATE_AT`]).
    rotate_at: u64,
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
        Ok(Wal {
            pending: Mutex::new(Pending { bytes: Vec::new(), first: next, next, appended: 0 }),
            writer: Mutex::new(Writer {
                files,
                active: 0,
                offset: HEADER,
                zeroed: [HEADER, 0],
                rotate_at,
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
            tracing::error!("storage: applying a commit failed: {e}");
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
    pub(super) fn write_out(&self, db: &sled::Db) -> Result<u64> {
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
        let outcome = w.rotate_if_full(first, bytes.len() as u64, db).and_then(|()| w.write(&bytes));
        if let Err(e) = &outcome {
            tracing::error!("the write-ahead log failed; no commit can be made durable any more: {e}");
            w.broken = Some(e.to_string());
        }
        outcome.map(|()| last)
    }
}

impl Writer {
    /// Move to the other file when this one is full: its header names `first`, the entry
    /// about to be written; then sled is flushed, which makes every entry of the file left
    /// behind redundant before that file's next turn.
    fn rotate_if_full(&mut self, first: u64, len: u64, db: &sled::Db) -> Result<()> {
        if self.offset + len <= self.rotate_at || self.offset == HEADER {
            return Ok(());
        }
        let next = 1 - self.active;
        let file = &self.files[next];
        file.write_all_at(&header(first), 0).map_err(|e| io("writing a header", e))?;
        file.sync_data().map_err(|e| io("syncing a header", e))?;
        self.zeroed[next] = self.zeroed[next].max(HEADER);
        self.active = next;
        self.offset = HEADER;
        db.flush()?;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (active, offset, len) = (self.active, self.offset, bytes.len() as u64);
        let file = &self.files[active];
        if offset + len > self.zeroed[active] {
            let end = (offset + len).div_ceil(STEP) * STEP;
            let zeros = vec![0u8; (end - self.zeroed[active]) as usize];
            file.write_all_at(&zeros, self.zeroed[active]).map_err(|e| io("growing", e))?;
            file.sync_data().map_err(|e| io("syncing its growth", e))?;
            self.zeroed[active] = end;
        }
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

fn header(first: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&first.to_le_bytes());
    h
}

/// One logged commit.
struct Entry {
    seq: u64,
    space: String,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// `len u32 | crc32 u32 | seq u64 | space u16+bytes | count u32 | (key u32+bytes | 0 or 1+value u32+bytes)*`
fn encode<'a>(
    out: &mut Vec<u8>,
    seq: u64,
    space: &str,
    writes: impl ExactSizeIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(space.len() as u16).to_le_bytes());
    out.extend_from_slice(space.as_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    let payload = start + 8;
    let len = (out.len() - payload) as u32;
    let crc = crc32fast::hash(&out[payload..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..payload].copy_from_slice(&crc.to_le_bytes());
}

/// A file's first sequence number and its entries, up to the first that is torn, stale or
/// out of sequence; `None` without a valid header.
fn parse(bytes: &[u8]) -> Option<(u64, Vec<Entry>)> {
    let first = bytes.strip_prefix(MAGIC.as_slice())?.get(..8)?;
    let first = u64::from_le_bytes(first.try_into().ok()?);
    let mut r = Cursor(bytes.get(HEADER as usize..)?);
    let mut entries = Vec::new();
    while let Some(entry) = r.entry() {
        if entry.seq != first + entries.len() as u64 {
            break;
        }
        entries.push(entry);
    }
    Some((first, entries))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn entry(&mut self) -> Option<Entry> {
        let len = self.u32()? as usize;
        let crc = self.u32()?;
        let payload = self.take(len)?;
        if len == 0 || crc32fast::hash(payload) != crc {
            return None;
        }
        let mut p = Cursor(payload);
        let seq = u64::from_le_bytes(p.take(8)?.try_into().ok()?);
        let space_len = u16::from_le_bytes(p.take(2)?.try_into().ok()?) as usize;
        let space = String::from_utf8(p.take(space_len)?.to_vec()).ok()?;
        let count = p.u32()?;
        let mut writes = Vec::new();
        for _ in 0..count {
            let key_len = p.u32()? as usize;
            let key = p.take(key_len)?.to_vec();
            let value = match p.take(1)?[0] {
                0 => None,
                _ => {
                    let value_len = p.u32()? as usize;
                    Some(p.take(value_len)?.to_vec())
                }
            };
            writes.push((key, value));
        }
        Some(Entry { seq, space, writes })
    }
}

/// Write a commit into a space: its whole entry (`entry`, encoded) as the pending one, its
/// writes, then its sequence number as the applied mark.
fn apply<'a>(
    tree: &sled::Tree,
    seq: u64,
    entry: &[u8],
    writes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) -> Result<()> {
    tree.insert(PENDING, entry)?;
    for (key, value) in writes {
        match value {
            Some(v) => tree.insert(key.as_slice(), v.as_slice())?,
            None => tree.remove(key.as_slice())?,
        };
    }
    tree.insert(APPLIED, &seq.to_be_bytes())?;
    Ok(())
}

fn applied(tree: &sled::Tree) -> Result<u64> {
    Ok(tree.get(APPLIED)?.and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?))).unwrap_or(0))
}

/// A space's applied mark, after completing the commit a crash cut in the middle, if any.
fn settle(tree: &sled::Tree) -> Result<u64> {
    let mark = applied(tree)?;
    let Some(pending) = tree.get(PENDING)? else { return Ok(mark) };
    match Cursor(&pending).entry() {
        Some(entry) if entry.seq > mark => {
            tracing::warn!(seq = entry.seq, "storage: completing a commit cut by a crash");
            apply(tree, entry.seq, &pending, entry.writes.iter().map(|(k, v)| (k, v)))?;
            Ok(entry.seq)
        }
        _ => Ok(mark),
    }
}

/// Apply to each space the entries after its [`APPLIED`] mark, in order; how many were
/// applied, and the highest sequence number the log or any space has seen.
fn replay<'a>(db: &sled::Db, entries: impl Iterator<Item = &'a Entry>) -> Result<(u64, u64)> {
    let mut marks: HashMap<String, (sled::Tree, u64)> = HashMap::new();
    let mut last = 0;
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let mark = settle(&tree)?;
        last = last.max(mark);
        marks.insert(String::from_utf8_lossy(&name).into_owned(), (tree, mark));
    }
    let mut replayed = 0;
    for entry in entries {
        last = last.max(entry.seq);
        if !marks.contains_key(&entry.space) {
            let tree = db.open_tree(&entry.space)?;
            marks.insert(entry.space.clone(), (tree, 0));
        }
        let Some((tree, mark)) = marks.get_mut(&entry.space) else { continue };
        if entry.seq <= *mark {
            continue;
        }
        let mut bytes = Vec::new();
        encode(&mut bytes, entry.seq, &entry.space, entry.writes.iter().map(|(k, v)| (k, v)));
        apply(tree, entry.seq, &bytes, entry.writes.iter().map(|(k, v)| (k, v)))?;
        *mark = entry.seq;
        replayed += 1;
    }
    Ok((replayed, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))).collect()
    }

    fn log(out: &mut Vec<u8>, seq: u64, space: &str, pairs: &[(&str, Option<&str>)]) {
        encode(out, seq, space, writes(pairs).iter());
    }

    #[test]
    fn entries_round_trip_and_parsing_stops_at_a_torn_or_stale_entry() {
        let mut file = header(7).to_vec();
        log(&mut file, 7, "addon/a", &[("k", Some("v")), ("gone", None)]);
        log(&mut file, 8, "addon/b", &[("x", Some(""))]);
        let (first, entries) = parse(&file).expect("a valid file");
        assert_eq!((first, entries.len()), (7, 2));
        assert_eq!(entries[0].space, "addon/a");
        assert_eq!(entries[0].writes, vec![(b"gone".to_vec(), None), (b"k".to_vec(), Some(b"v".to_vec()))]);

        // A torn last entry: the first survives.
        let torn = &file[..file.len() - 3];
        assert_eq!(parse(torn).map(|(_, e)| e.len()), Some(1));
        // A flipped byte in the second entry's payload: its CRC fails.
        let mut flipped = file.clone();
        let at = flipped.len() - 2;
        flipped[at] ^= 1;
        assert_eq!(parse(&flipped).map(|(_, e)| e.len()), Some(1));
        // A stale entry from the file's previous turn (an older sequence number) ends it.
        let mut stale = file.clone();
        log(&mut stale, 3, "addon/a", &[("old", Some("1"))]);
        assert_eq!(parse(&stale).map(|(_, e)| e.len()), Some(2));
        // No header, no entries.
        assert!(parse(&file[HEADER as usize..]).is_none());
    }

    #[test]
    fn replay_skips_what_a_space_already_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        // sled already holds entry 2 (it wrote it on its own before a crash).
        tree.insert("k", "two").expect("insert");
        tree.insert(APPLIED, &2u64.to_be_bytes()).expect("insert");
        let mut file = header(1).to_vec();
        log(&mut file, 1, "addon/a", &[("k", Some("one")), ("only-in-1", Some("1"))]);
        log(&mut file, 2, "addon/a", &[("k", Some("two"))]);
        log(&mut file, 3, "addon/b", &[("new", Some("3"))]);
        let (_, entries) = parse(&file).expect("valid");
        let (replayed, last) = replay(&db, entries.iter()).expect("replays");
        assert_eq!((replayed, last), (1, 3));
        assert_eq!(tree.get("k").expect("get").as_deref(), Some(&b"two"[..]));
        assert_eq!(tree.get("only-in-1").expect("get"), None);
        let b = db.open_tree("addon/b").expect("tree");
        assert_eq!(b.get("new").expect("get").as_deref(), Some(&b"3"[..]));
        assert_eq!(applied(&b).expect("mark"), 3);
    }

    #[test]
    fn a_commit_cut_by_a_crash_is_completed_from_its_pending_entry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        tree.insert(APPLIED, &4u64.to_be_bytes()).expect("insert");
        // Entry 5 was being applied: its pending entry and its first write made it, the
        // second write and the mark did not.
        let mut entry = Vec::new();
        log(&mut entry, 5, "addon/a", &[("a", Some("1")), ("b", Some("2"))]);
        tree.insert(PENDING, entry).expect("insert");
        tree.insert("a", "1").expect("insert");
        let (replayed, last) = replay(&db, std::iter::empty()).expect("replays");
        assert_eq!((replayed, last), (0, 5));
        assert_eq!(tree.get("b").expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(applied(&tree).expect("mark"), 5);
    }

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
                assert_eq!(wal.write_out(&db).expect("writes out"), seq);
            }
        }
        assert_eq!(wal.write_out(&db).expect("writes out"), last);
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
}
