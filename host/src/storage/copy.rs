//! Copying one storage into another (`addon-host migrate`): every space, key for key, in
//! bounded commits, then counted again on the target.

use serde::Serialize;

use super::{Batch, Result, Storage, StorageError};

/// Spaces that describe the storage itself rather than the service's data.
const LOCAL: &[&str] = &["heartbeat"];
/// One commit carries at most this many keys or bytes.
const MAX_KEYS: usize = 1_000;
const MAX_BYTES: usize = 16 << 20;

/// What a copy moved.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Copied {
    pub spaces: usize,
    pub keys: u64,
    pub bytes: u64,
}

impl Storage {
    /// Copy every space of this storage into `target`. A target that already holds data is
    /// refused unless `overwrite`, since the copy would merge two services' state.
    pub fn copy_into(&self, target: &Storage, overwrite: bool) -> Result<Copied> {
        let spaces: Vec<String> = self.backend.spaces()?.into_iter().filter(|s| !LOCAL.contains(&s.as_str())).collect();
        let occupied: Vec<String> =
            target.backend.spaces()?.into_iter().filter(|s| !LOCAL.contains(&s.as_str())).collect();
        if !occupied.is_empty() && !overwrite {
            return Err(StorageError::TargetOccupied(format!(
                "the target already holds data ({}); pass --overwrite to merge into it",
                occupied.join(", ")
            )));
        }
        let mut copied = Copied::default();
        for space in &spaces {
            let (source, sink) = (self.space(space), target.space(space));
            let mut pending = Vec::new();
            let mut size = 0;
            let mut failed = None;
            source.visit(b"", &mut |k, v| {
                pending.push((k.to_vec(), v.to_vec()));
                size += k.len() + v.len();
                if (pending.len() >= MAX_KEYS || size >= MAX_BYTES)
                    && let Err(e) = flush(&sink, &mut pending, &mut size)
                {
                    failed = Some(e);
                    return false;
                }
                true
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            flush(&sink, &mut pending, &mut size)?;
            let (keys, bytes) = count(&source)?;
            if count(&sink)? != (keys, bytes) {
                return Err(StorageError::Internal(format!("space `{space}` differs after the copy")));
            }
            copied.spaces += 1;
            copied.keys += keys;
            copied.bytes += bytes;
        }
        target.flush()?;
        Ok(copied)
    }
}

fn flush(sink: &super::Space, pending: &mut Vec<(Vec<u8>, Vec<u8>)>, size: &mut usize) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut writes = std::mem::take(pending).into_iter();
    *size = 0;
    sink.commit(&mut |_| {
        let mut batch = Batch::default();
        for (k, v) in writes.by_ref() {
            batch.insert(k, v);
        }
        Ok(batch)
    })
}

fn count(space: &super::Space) -> Result<(u64, u64)> {
    let (mut keys, mut bytes) = (0u64, 0u64);
    space.visit(b"", &mut |k, v| {
        keys += 1;
        bytes += (k.len() + v.len()) as u64;
        true
    })?;
    Ok((keys, bytes))
}
