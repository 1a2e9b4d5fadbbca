//! Large values as files beside the embedded store. A plugin component is megabytes; in sled
//! it would be written twice (the write-ahead log, then sled's own log, ~4.5× its size was
//! measured) and its space would come back only when sled gets round to it. As a file it is
//! written once and deleting it frees the disk at once. Each file is made durable (written,
//! synced, renamed into place, its folder synced) before the entry that names it is
//! committed, so a committed entry never names a missing file; a file whose entry never
//! committed is only space, and is removed with the next deletion of its name.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Result, Storage, StorageError};

/// A folder of named files (names of `[A-Za-z0-9._-]`), durable on write.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    dir: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    if super::is_disk_full(&e) {
        return StorageError::DiskFull(format!("{what} {}: {e}", path.display()));
    }
    StorageError::Files(format!("{what} {}: {e}", path.display()))
}

impl Storage {
    /// The host's large-value files in `folder`, when this backend keeps them as files.
    pub(crate) fn files(&self, folder: &str) -> Option<Files> {
        self.backend.file_dir().map(|dir| Files { dir: dir.join(folder) })
    }
}

impl Files {
    fn path(&self, name: &str) -> Result<PathBuf> {
        let safe = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !safe {
            return Err(StorageError::Internal(format!("`{name}` is not a file name")));
        }
        Ok(self.dir.join(name))
    }

    /// Write `bytes` as `name`, durably.
    pub(crate) fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(name)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| StorageError::Internal(format!("no randomness: {e}")))?;
        let tmp = self.dir.join(format!(".{}.{}.tmp", name, hex::encode(suffix)));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("writing", &path, e));
        }
        Ok(())
    }

    /// The bytes of `name`, if there is such a file.
    pub(crate) fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    /// Remove `name` (gone already is fine); the bytes freed.
    pub(crate) fn delete(&self, name: &str) -> Result<u64> {
        let path = self.path(name)?;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io("removing", &path, e)),
        }
    }

    /// Every file's name.
    pub(crate) fn names(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &self.dir, e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect())
    }
}
