//! Recovery: what a restart does with what sled and the log hold. A commit writes, in
//! order, its whole entry under the space's [`PENDING`] key, then its writes; sled recovers
//! a prefix of its writes. So the pending entry is the last commit a space has seen, whole
//! or in part: it is the space's mark, and what it wrote is completed at the restart if a
//! crash cut it. Each space then gets the logged entries after its mark.
//!
//! (A separate "applied" mark written after the writes once told a whole commit from a cut
//! one; it cost a sled write per commit. Data directories written with it are still read:
//! the mark is the higher of the two.)

use std::collections::HashMap;

use super::super::Result;
use super::entry::{Cursor, Entry, encode};

/// In every space of a data directory written before the pending entry became the mark:
/// the sequence number of the last log entry applied to it.
const APPLIED: &[u8] = b"\xff\xffwal-applied";
/// In every space: the entry being applied (or last applied) to it, whole.
const PENDING: &[u8] = b"\xff\xffwal-pending";

/// Write a commit into a space: its whole entry (`entry`, encoded) as the pending one, then
/// its writes.
pub(super) fn apply<'a>(
    tree: &sled::Tree,
    entry: &[u8],
    writes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) -> Result<()> {
    tree.insert(PENDING, entry)?;
    for (key, value) in writes {
        write(tree, key, value.as_deref())?;
    }
    Ok(())
}

/// One write of a commit: `None` removes the key.
fn write(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    match value {
        Some(v) => tree.insert(key, v)?,
        None => tree.remove(key)?,
    };
    Ok(())
}

fn legacy_mark(tree: &sled::Tree) -> Result<u64> {
    Ok(tree.get(APPLIED)?.and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?))).unwrap_or(0))
}

/// A space's mark (the sequence number of the last entry applied to it), after completing
/// the commit a crash cut in the middle, if any: a write of the pending entry that sled
/// does not hold is made again. (Writing them all again would do too, but would rewrite
/// every space's last commit at every start.)
pub(super) fn settle(tree: &sled::Tree) -> Result<u64> {
    let mark = legacy_mark(tree)?;
    let Some(pending) = tree.get(PENDING)? else { return Ok(mark) };
    let Some(entry) = Cursor(&pending).entry().filter(|e| e.seq > mark) else { return Ok(mark) };
    let mut cut = false;
    for (key, value) in &entry.writes {
        if tree.get(key)?.as_deref() != value.as_deref() {
            cut = true;
            write(tree, key, value.as_deref())?;
        }
    }
    if cut {
        tracing::warn!(seq = entry.seq, "storage: completed a commit cut by a crash");
    }
    Ok(entry.seq)
}

/// Apply to each space the entries after its mark, in order; how many were applied, and the
/// highest sequence number the log or any space has seen.
pub(super) fn replay<'a>(db: &sled::Db, entries: impl Iterator<Item = &'a Entry>) -> Result<(u64, u64)> {
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
        apply(tree, &bytes, entry.writes.iter().map(|(k, v)| (k, v)))?;
        *mark = entry.seq;
        replayed += 1;
    }
    Ok((replayed, last))
}

#[cfg(test)]
mod tests {
    use super::super::entry::{header, parse, testing::log};
    use super::*;

    fn pending(tree: &sled::Tree, seq: u64, writes: &[(&str, Option<&str>)]) {
        let mut entry = Vec::new();
        log(&mut entry, seq, "addon/a", writes);
        tree.insert(PENDING, entry).expect("insert");
    }

    #[test]
    fn replay_skips_what_a_space_already_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        // sled already holds entry 2 (it wrote it on its own before a crash).
        pending(&tree, 2, &[("k", Some("two"))]);
        tree.insert("k", "two").expect("insert");
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
        assert_eq!(settle(&b).expect("mark"), 3);
    }

    #[test]
    fn a_commit_cut_by_a_crash_is_completed_from_its_pending_entry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        tree.insert("gone", "old").expect("insert");
        // Entry 5 was being applied: its pending entry and its first write made it, the
        // second write and the removal did not.
        pending(&tree, 5, &[("a", Some("1")), ("b", Some("2")), ("gone", None)]);
        tree.insert("a", "1").expect("insert");
        let (replayed, last) = replay(&db, std::iter::empty()).expect("replays");
        assert_eq!((replayed, last), (0, 5));
        assert_eq!(tree.get("b").expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(tree.get("gone").expect("get"), None);
        assert_eq!(settle(&tree).expect("mark"), 5);
    }

    /// A data directory written when a separate applied mark followed each commit: the mark
    /// is still honoured, and the pending entry takes over once it is newer.
    #[test]
    fn a_space_with_the_old_applied_mark_replays_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        pending(&tree, 4, &[("k", Some("four"))]);
        tree.insert("k", "four").expect("insert");
        tree.insert(APPLIED, &4u64.to_be_bytes()).expect("insert");
        let mut file = header(3).to_vec();
        log(&mut file, 3, "addon/a", &[("k", Some("three")), ("only-in-3", Some("3"))]);
        log(&mut file, 4, "addon/a", &[("k", Some("four"))]);
        log(&mut file, 5, "addon/a", &[("five", Some("5"))]);
        let (_, entries) = parse(&file).expect("valid");
        assert_eq!(replay(&db, entries.iter()).expect("replays"), (1, 5));
        assert_eq!(tree.get("k").expect("get").as_deref(), Some(&b"four"[..]));
        assert_eq!(tree.get("only-in-3").expect("get"), None);
        assert_eq!(tree.get("five").expect("get").as_deref(), Some(&b"5"[..]));
        assert_eq!(settle(&tree).expect("mark"), 5);
    }
}
