//! Commits on real sled in a temp dir: what the optimistic check refuses, what the quotas
//! refuse, and that a refused commit changes nothing.

use super::kv::{KV_BYTES, KV_KEYS, KV_USAGE};
use super::*;

fn open() -> (tempfile::TempDir, AddonStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(dir.path()).expect("storage opens");
    let store = storage.addon("a").expect("add-on store");
    (dir, store)
}

fn quota(max_bytes: u64, max_keys: u64, max_call_bytes: u64) -> KvQuota {
    KvQuota { max_bytes, max_keys, max_call_bytes, max_jobs: u64::MAX }
}

/// Commit `key = value` writes with no reads.
fn put(store: &AddonStore, pairs: &[(&str, &str)], quota: KvQuota) -> Result<()> {
    let mut txn = store.begin();
    for (k, v) in pairs {
        txn.set(k, v.as_bytes().to_vec());
    }
    store.commit(&txn, quota, None, None)
}

#[test]
fn a_commit_applies_writes_record_and_alias_together_and_counts_usage() {
    let (_dir, store) = open();
    let mut txn = store.begin();
    txn.set("k1", b"abc".to_vec());
    txn.set("k2", b"de".to_vec());
    store.commit(&txn, KvQuota::UNLIMITED, Some(("r1", b"record")), Some(("bitrise/app", "r1"))).unwrap();
    assert_eq!(store.kv_get("k1").unwrap().as_deref(), Some(&b"abc"[..]));
    assert_eq!(store.record("r1").unwrap().as_deref(), Some(&b"record"[..]));
    assert_eq!(store.alias("bitrise/app").unwrap().as_deref(), Some("r1"));
    assert_eq!(store.kv_usage().unwrap(), KvUsage { bytes: 2 + 3 + 2 + 2, keys: 2 });

    // Overwrite one, delete the other: usage follows.
    let mut txn = store.begin();
    txn.set("k1", b"a".to_vec());
    assert!(txn.delete("k2").unwrap());
    store.commit(&txn, KvQuota::UNLIMITED, None, None).unwrap();
    assert_eq!(store.kv_usage().unwrap(), KvUsage { bytes: 2 + 1, keys: 1 });
    assert_eq!(store.records().unwrap(), vec![("r1".to_owned(), b"record".to_vec())]);
}

#[test]
fn a_call_whose_reads_changed_conflicts_and_writes_nothing() {
    let (_dir, store) = open();
    put(&store, &[("counter", "1")], KvQuota::UNLIMITED).unwrap();

    let mut slow = store.begin();
    assert_eq!(slow.get("counter").unwrap().as_deref(), Some(&b"1"[..]));
    slow.set("counter", b"2".to_vec());
    slow.set("other", b"x".to_vec());

    put(&store, &[("counter", "5")], KvQuota::UNLIMITED).unwrap();
    match store.commit(&slow, KvQuota::UNLIMITED, Some(("r", b"rec")), None) {
        Err(StorageError::Conflict(key)) => assert_eq!(key, "counter"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.kv_get("counter").unwrap().as_deref(), Some(&b"5"[..]));
    assert_eq!(store.kv_get("other").unwrap(), None);
    assert_eq!(store.record("r").unwrap(), None);

    // A read of a missing key conflicts when the key appears.
    let mut absent = store.begin();
    assert_eq!(absent.get("new").unwrap(), None);
    absent.set("new", b"mine".to_vec());
    put(&store, &[("new", "theirs")], KvQuota::UNLIMITED).unwrap();
    assert!(matches!(store.commit(&absent, KvQuota::UNLIMITED, None, None), Err(StorageError::Conflict(_))));
}

#[test]
fn compare_and_swap_checks_the_value_seen() {
    let (_dir, store) = open();
    put(&store, &[("lock", "free")], KvQuota::UNLIMITED).unwrap();
    let mut txn = store.begin();
    assert!(!txn.compare_and_swap("lock", Some(b"taken"), Some(b"mine".to_vec())).unwrap());
    assert!(txn.compare_and_swap("lock", Some(b"free"), Some(b"mine".to_vec())).unwrap());
    store.commit(&txn, KvQuota::UNLIMITED, None, None).unwrap();
    assert_eq!(store.kv_get("lock").unwrap().as_deref(), Some(&b"mine"[..]));
}

#[test]
fn quotas_refuse_growth_and_change_nothing() {
    let (_dir, store) = open();
    put(&store, &[("a", "1"), ("b", "2")], KvQuota::UNLIMITED).unwrap();
    let before = store.kv_usage().unwrap();

    let keys = put(&store, &[("c", "3")], quota(u64::MAX, 2, u64::MAX));
    assert!(matches!(&keys, Err(StorageError::Quota(m)) if m.contains("keys")), "{keys:?}");
    let bytes = put(&store, &[("a", "much longer")], quota(5, u64::MAX, u64::MAX));
    assert!(matches!(&bytes, Err(StorageError::Quota(m)) if m.contains("quota")), "{bytes:?}");
    let per_call = put(&store, &[("c", "0123456789")], quota(u64::MAX, u64::MAX, 10));
    assert!(matches!(&per_call, Err(StorageError::Quota(m)) if m.contains("one call")), "{per_call:?}");

    assert_eq!(store.kv_usage().unwrap(), before);
    assert_eq!(store.kv_get("c").unwrap(), None);
    assert_eq!(store.kv_get("a").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn shrinking_writes_pass_even_over_quota() {
    let (_dir, store) = open();
    put(&store, &[("a", "1111"), ("b", "2222"), ("c", "3333")], KvQuota::UNLIMITED).unwrap();
    // The quota was lowered below what is stored: deleting and shortening must still work.
    let tight = quota(1, 1, 0);
    let mut txn = store.begin();
    assert!(txn.delete("a").unwrap());
    txn.set("b", b"2".to_vec());
    store.commit(&txn, tight, None, None).unwrap();
    assert_eq!(store.kv_usage().unwrap(), KvUsage { bytes: 2 + 5, keys: 2 });
    // Growing again is refused.
    assert!(matches!(put(&store, &[("b", "22")], tight), Err(StorageError::Quota(_))));
}

#[test]
fn a_commit_is_on_disk_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(dir.path()).unwrap();
        let store = storage.addon("a").unwrap();
        put(&store, &[("k", "v")], KvQuota::UNLIMITED).unwrap();
    }
    let storage = Storage::open(dir.path()).unwrap();
    assert_eq!(storage.addon("a").unwrap().kv_get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

/// A space written when the totals were two keys: they are read, carried into the one key by
/// the next commit that changes them, and the two old keys are removed.
#[test]
fn totals_kept_as_two_legacy_keys_are_read_and_moved_to_one() {
    let (_dir, store) = open();
    store
        .space
        .commit(&mut |_| {
            let mut batch = Batch::default();
            batch.insert(KV_BYTES, 100u64.to_be_bytes());
            batch.insert(KV_KEYS, 7u64.to_be_bytes());
            Ok(batch)
        })
        .unwrap();
    assert_eq!(store.kv_usage().unwrap(), KvUsage { bytes: 100, keys: 7 });
    put(&store, &[("k", "vv")], KvQuota::UNLIMITED).unwrap();
    assert_eq!(store.kv_usage().unwrap(), KvUsage { bytes: 103, keys: 8 });
    assert_eq!(store.space.get(KV_BYTES).unwrap(), None);
    assert_eq!(store.space.get(KV_KEYS).unwrap(), None);
    assert!(store.space.get(KV_USAGE).unwrap().is_some());
}
