//! The plugin versions of every add-on, in storage (shared by every host on PostgreSQL): each uploaded component's bytes, its
//! history (sha256, size, upload time, uploader) and which version is active. This is what
//! lets an upgrade, a rollback or a restart pick a version without the original file.

use serde::{Deserialize, Serialize};

use crate::storage::{Result, Space, Storage};

/// How many activations are remembered for `rollback` without a version.
const MAX_ACTIVATIONS: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    /// 1, 2, 3... per add-on, in upload order.
    pub seq: u64,
    pub sha256: String,
    pub size: u64,
    pub uploaded_ms: u64,
    /// The admin identity that uploaded it (`config` for the file named in the config,
    /// `watch` for development reloads).
    pub uploaded_by: String,
}

/// How many versions, and how many of their bytes, an add-on may store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quota {
    pub versions: usize,
    pub bytes: u64,
}

/// Why a new version does not fit its add-on's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Versions { limit: usize },
    Bytes { stored: u64, limit: u64 },
}

impl Quota {
    /// Why a new version of `size` bytes does not fit beside `stored`, if it does not.
    pub(crate) fn refuses(&self, stored: &[VersionMeta], size: u64) -> Option<Full> {
        let bytes: u64 = stored.iter().map(|m| m.size).sum();
        if stored.len() >= self.versions {
            Some(Full::Versions { limit: self.versions })
        } else if bytes.saturating_add(size) > self.bytes {
            Some(Full::Bytes { stored: bytes, limit: self.bytes })
        } else {
            None
        }
    }
}

#[derive(Clone)]
pub(crate) struct Registry {
    space: Space,
    /// The components' bytes, as files, on a backend that keeps large values so (sled);
    /// else in `space` beside their entries.
    files: Option<crate::storage::Files>,
}

/// The file of `addon`'s version `sha256`.
fn file_name(addon: &str, sha256: &str) -> String {
    format!("{addon}.{sha256}.wasm")
}

fn key(addon: &str, rest: &str) -> String {
    format!("{addon}\0{rest}")
}

fn activations(stored: Option<Vec<u8>>) -> Vec<String> {
    stored.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default()
}

impl Registry {
    pub(crate) fn open(storage: &Storage) -> Result<Registry> {
        Ok(Registry { space: storage.space("plugins"), files: storage.files("plugins") })
    }

    pub(crate) fn versions(&self, addon: &str) -> Result<Vec<VersionMeta>> {
        let metas = self.space.scan(key(addon, "meta/").as_bytes())?;
        Ok(metas.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect())
    }

    pub(crate) fn get(&self, addon: &str, sha256: &str) -> Result<Option<VersionMeta>> {
        Ok(self.versions(addon)?.into_iter().find(|m| m.sha256 == sha256))
    }

    pub(crate) fn blob(&self, addon: &str, sha256: &str) -> Result<Option<Vec<u8>>> {
        if let Some(files) = &self.files
            && let Some(bytes) = files.get(&file_name(addon, sha256))?
        {
            return Ok(Some(bytes));
        }
        // Versions stored before their bytes moved to files, and every version on PostgreSQL.
        self.space.get(key(addon, &format!("blob/{sha256}")).as_bytes())
    }

    /// Copy the components kept as files into `target`'s storage (`addon-host migrate`,
    /// from sled's data directory into PostgreSQL, which keeps them in its tables); how many.
    pub(crate) fn copy_files_into(&self, target: &Registry) -> Result<u64> {
        let Some(files) = &self.files else { return Ok(0) };
        let mut copied = 0;
        for name in files.names()? {
            let Some((addon, sha)) = name.strip_suffix(".wasm").and_then(|n| n.rsplit_once('.')) else { continue };
            let Some(bytes) = files.get(&name)? else { continue };
            target.space.commit(&mut |_| {
                let mut batch = crate::storage::Batch::default();
                batch.insert(key(addon, &format!("blob/{sha}")), bytes.clone());
                Ok(batch)
            })?;
            copied += 1;
        }
        Ok(copied)
    }

    pub(crate) fn active(&self, addon: &str) -> Result<Option<String>> {
        Ok(self.space.get(key(addon, "active").as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Store a version (idempotent: the same bytes return the existing entry). Numbers are
    /// given out under the registry's commit, so concurrent uploads (from any host) never
    /// share one.
    pub(crate) fn put(
        &self,
        addon: &str,
        sha256: &str,
        bytes: &[u8],
        uploaded_by: &str,
        now_ms: u64,
    ) -> Result<VersionMeta> {
        let stored = self.put_within(addon, sha256, bytes, uploaded_by, now_ms, None)?;
        stored.map_err(|full| crate::storage::StorageError::Internal(format!("unexpected quota: {full:?}")))
    }

    /// [`Registry::put`] within `quota`, checked under the same commit (so concurrent
    /// uploads from any host cannot pass it together); a version already stored always fits.
    pub(crate) fn put_within(
        &self,
        addon: &str,
        sha256: &str,
        bytes: &[u8],
        uploaded_by: &str,
        now_ms: u64,
        quota: Option<Quota>,
    ) -> Result<std::result::Result<VersionMeta, Full>> {
        // The bytes first, durably, so the entry committed below never names missing bytes.
        let known = self.versions(addon)?.iter().any(|m| m.sha256 == sha256);
        if let Some(files) = self.files.as_ref().filter(|_| !known) {
            files.put(&file_name(addon, sha256), bytes)?;
        }
        let mut stored = None;
        let mut full = None;
        self.space.commit(&mut |r| {
            let mut batch = crate::storage::Batch::default();
            (stored, full) = (None, None);
            let mut versions: Vec<VersionMeta> = Vec::new();
            r.scan(key(addon, "meta/").as_bytes(), &mut |_, v| {
                versions.extend(serde_json::from_slice::<VersionMeta>(v).ok());
                true
            })?;
            if let Some(existing) = versions.iter().find(|m| m.sha256 == sha256) {
                stored = Some(existing.clone());
                return Ok(batch);
            }
            full = quota.and_then(|q| q.refuses(&versions, bytes.len() as u64));
            if full.is_some() {
                return Ok(batch);
            }
            let meta = VersionMeta {
                seq: versions.iter().map(|m| m.seq).max().unwrap_or(0) + 1,
                sha256: sha256.to_owned(),
                size: bytes.len() as u64,
                uploaded_ms: now_ms,
                uploaded_by: uploaded_by.to_owned(),
            };
            if self.files.is_none() {
                batch.insert(key(addon, &format!("blob/{sha256}")), bytes);
            }
            batch.insert(key(addon, &format!("meta/{:010}", meta.seq)), serde_json::to_vec(&meta).unwrap_or_default());
            stored = Some(meta);
            Ok(batch)
        })?;
        if let Some(full) = full {
            if let Some(files) = self.files.as_ref().filter(|_| !known) {
                files.delete(&file_name(addon, sha256))?;
            }
            return Ok(Err(full));
        }
        stored
            .map(Ok)
            .ok_or_else(|| crate::storage::StorageError::Internal("a version was stored without its entry".into()))
    }

    /// Delete a stored version: its entry and its bytes. The version that was stored, if any.
    pub(crate) fn delete(&self, addon: &str, sha256: &str) -> Result<Option<VersionMeta>> {
        let mut deleted = None;
        self.space.commit(&mut |r| {
            let mut batch = crate::storage::Batch::default();
            deleted = None;
            r.scan(key(addon, "meta/").as_bytes(), &mut |k, v| {
                if let Ok(meta) = serde_json::from_slice::<VersionMeta>(v)
                    && meta.sha256 == sha256
                {
                    batch.remove(k);
                    deleted = Some(meta);
                }
                true
            })?;
            if deleted.is_some() {
                batch.remove(key(addon, &format!("blob/{sha256}")).as_bytes());
            }
            Ok(batch)
        })?;
        if let Some(files) = &self.files {
            files.delete(&file_name(addon, sha256))?;
        }
        Ok(deleted)
    }

    /// Record `sha256` as the active version, remembering the one it replaces.
    pub(crate) fn set_active(&self, addon: &str, sha256: &str) -> Result<()> {
        self.space.commit(&mut |r| {
            let mut history = activations(r.get(key(addon, "activations").as_bytes())?);
            history.push(sha256.to_owned());
            if history.len() > MAX_ACTIVATIONS {
                history.drain(..history.len() - MAX_ACTIVATIONS);
            }
            let mut batch = crate::storage::Batch::default();
            batch.insert(key(addon, "active"), sha256);
            batch.insert(key(addon, "activations"), serde_json::to_vec(&history).unwrap_or_default());
            Ok(batch)
        })
    }

    fn activations(&self, addon: &str) -> Result<Vec<String>> {
        Ok(activations(self.space.get(key(addon, "activations").as_bytes())?))
    }

    /// The version that was active before the current one (and is still stored).
    pub(crate) fn previous(&self, addon: &str) -> Result<Option<String>> {
        let active = self.active(addon)?;
        let stored: Vec<String> = self.versions(addon)?.into_iter().map(|m| m.sha256).collect();
        let stored = |sha: &String| stored.is_empty() || stored.contains(sha);
        Ok(self.activations(addon)?.into_iter().rev().find(|sha| Some(sha) != active.as_ref() && stored(sha)))
    }

    /// Find a version by sequence number or by a sha256 prefix of at least 6 characters.
    pub(crate) fn resolve(&self, addon: &str, version: &str) -> Result<Option<VersionMeta>> {
        let versions = self.versions(addon)?;
        let version = version.trim().trim_start_matches('v');
        if let Ok(seq) = version.parse::<u64>()
            && version.len() < 6
        {
            return Ok(versions.into_iter().find(|m| m.seq == seq));
        }
        if version.len() < 6 {
            return Ok(None);
        }
        let mut matches = versions.into_iter().filter(|m| m.sha256.starts_with(&version.to_ascii_lowercase()));
        let first = matches.next();
        Ok(if matches.next().is_some() { None } else { first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        (dir, Registry::open(&storage).unwrap())
    }

    #[test]
    fn uploads_are_numbered_per_addon_and_idempotent() {
        let (_dir, reg) = registry();
        let one = reg.put("a", "aaaaaa11", b"one", "ops", 1).unwrap();
        let two = reg.put("a", "bbbbbb22", b"two", "ops", 2).unwrap();
        let again = reg.put("a", "aaaaaa11", b"one", "someone else", 3).unwrap();
        let other = reg.put("b", "cccccc33", b"three", "ops", 4).unwrap();
        assert_eq!((one.seq, two.seq, other.seq), (1, 2, 1));
        assert_eq!(again, one, "the same bytes return the existing entry");
        assert_eq!(reg.versions("a").unwrap(), vec![one.clone(), two]);
        assert_eq!(reg.blob("a", "aaaaaa11").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(reg.blob("b", "aaaaaa11").unwrap(), None, "add-ons never see each other's versions");
    }

    #[test]
    fn a_quota_refuses_a_new_version_and_a_deleted_one_frees_its_place() {
        let (_dir, reg) = registry();
        let quota = Some(Quota { versions: 2, bytes: 10 });
        let put = |sha: &str, bytes: &[u8]| reg.put_within("a", sha, bytes, "ops", 1, quota).unwrap();
        assert!(put("aaaaaa01", b"1234").is_ok());
        assert_eq!(put("aaaaaa02", b"1234567"), Err(Full::Bytes { stored: 4, limit: 10 }));
        assert!(put("aaaaaa03", b"12").is_ok());
        assert_eq!(put("aaaaaa04", b"1"), Err(Full::Versions { limit: 2 }));
        assert!(put("aaaaaa01", b"1234").is_ok(), "a version already stored always fits");
        assert_eq!(reg.delete("a", "aaaaaa01").unwrap().map(|m| m.seq), Some(1));
        assert_eq!(reg.blob("a", "aaaaaa01").unwrap(), None, "its bytes went with it");
        assert_eq!(reg.delete("a", "aaaaaa01").unwrap(), None);
        assert_eq!(put("aaaaaa04", b"1").map(|m| m.seq), Ok(3));
        assert_eq!(reg.versions("a").unwrap().len(), 2);
    }

    #[test]
    fn concurrent_uploads_get_distinct_numbers() {
        let (_dir, reg) = registry();
        let metas: Vec<VersionMeta> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let reg = reg.clone();
                    s.spawn(move || reg.put("a", &format!("{i:06}abcdef"), b"bytes", "ops", i).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seqs: Vec<u64> = metas.iter().map(|m| m.seq).collect();
        seqs.sort();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "each upload has its own number");
        assert_eq!(reg.versions("a").unwrap().len(), 8, "no upload's entry was overwritten");
    }

    #[test]
    fn activation_history_gives_the_rollback_target() {
        let (_dir, reg) = registry();
        assert_eq!(reg.previous("a").unwrap(), None);
        reg.set_active("a", "v1").unwrap();
        reg.set_active("a", "v2").unwrap();
        assert_eq!(reg.active("a").unwrap().as_deref(), Some("v2"));
        assert_eq!(reg.previous("a").unwrap().as_deref(), Some("v1"));
        reg.set_active("a", "v1").unwrap();
        assert_eq!(reg.previous("a").unwrap().as_deref(), Some("v2"));
    }

    #[test]
    fn versions_resolve_by_number_or_unique_hash_prefix() {
        let (_dir, reg) = registry();
        reg.put("a", "abcdef0001", b"1", "ops", 1).unwrap();
        reg.put("a", "abcdef0002", b"2", "ops", 2).unwrap();
        reg.put("a", "99ffee0003", b"3", "ops", 3).unwrap();
        let seq = |v: &str| reg.resolve("a", v).unwrap().map(|m| m.seq);
        assert_eq!(seq("2"), Some(2));
        assert_eq!(seq("v3"), Some(3));
        assert_eq!(seq("7"), None);
        assert_eq!(seq("99FFEE"), Some(3), "prefixes are case-insensitive");
        assert_eq!(seq("abcdef"), None, "an ambiguous prefix resolves to nothing");
        assert_eq!(seq("abcdef0002"), Some(2));
        assert_eq!(seq("abcd"), None, "a hash prefix needs 6 characters");
    }
}
