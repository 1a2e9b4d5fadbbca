//! Jobs in an add-on's tree (`j/{id}` → the job, `J/{resource}/{id}` → its resource index),
//! written in the same atomic batch as a call's key-value writes and record. The job's own
//! format belongs to `crate::jobs`; storage only keeps bytes and the index.

use super::backend::{Batch, Reader};
use super::{AddonStore, Result, StorageError, counter, prefixed};

const JOB: &[u8] = b"j/";
const BY_RESOURCE: &[u8] = b"J/";
/// How many jobs are stored, kept in the same batches that add and remove them.
const JOB_COUNT: &[u8] = b"m/jobs";

/// One change to a job.
#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>),
    /// Replace the job only if it is still stored (a deprovision or an operator may have
    /// removed it while it ran).
    Update(Vec<u8>),
    Remove,
}

/// A call's job changes, applied with its commit.
#[derive(Debug, Clone, Default)]
pub struct JobWrites {
    ops: Vec<(String, Option<String>, Op)>,
    /// Remove every job of this resource first (its deprovision).
    cancel: Option<String>,
}

impl JobWrites {
    pub fn insert(&mut self, id: &str, resource: Option<&str>, bytes: Vec<u8>) {
        self.ops.push((id.to_owned(), resource.map(str::to_owned), Op::Insert(bytes)));
    }

    pub fn update(&mut self, id: &str, resource: Option<&str>, bytes: Vec<u8>) {
        self.ops.push((id.to_owned(), resource.map(str::to_owned), Op::Update(bytes)));
    }

    pub fn remove(&mut self, id: &str, resource: Option<&str>) {
        self.ops.push((id.to_owned(), resource.map(str::to_owned), Op::Remove));
    }

    /// Cancel the resource's stored jobs; jobs inserted by this same commit are kept.
    pub fn cancel_resource(&mut self, resource: &str) {
        self.cancel = Some(resource.to_owned());
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.cancel.is_none()
    }
}

fn index_key(resource: &str, id: &str) -> Vec<u8> {
    prefixed(BY_RESOURCE, &format!("{resource}/{id}"))
}

impl AddonStore {
    /// Every stored job, oldest first (ids start with their enqueue time).
    pub fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan(JOB)
    }

    pub fn job(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.space.get(&prefixed(JOB, id))
    }

    /// Jobs stored now.
    pub fn job_count(&self) -> Result<u64> {
        Ok(counter(self.space.get(JOB_COUNT)?.as_deref()))
    }
}

/// The keys [`stage_jobs`] reads for `writes` (the scan of a cancelled resource aside).
pub(super) fn keys_read(writes: &JobWrites) -> Vec<Vec<u8>> {
    if writes.is_empty() {
        return Vec::new();
    }
    let jobs = writes.ops.iter().filter(|(_, _, op)| !matches!(op, Op::Insert(_))).map(|(id, _, _)| prefixed(JOB, id));
    std::iter::once(JOB_COUNT.to_vec()).chain(jobs).collect()
}

/// Add `writes` to `batch`, keeping the add-on within `max_jobs` stored jobs when they add
/// any; part of a commit's stage.
pub(super) fn stage_jobs(tree: &dyn Reader, writes: &JobWrites, max_jobs: u64, batch: &mut Batch) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let before = counter(tree.get(JOB_COUNT)?.as_deref()) as i128;
    let (mut count, mut added) = (before, 0i128);
    if let Some(resource) = &writes.cancel {
        let prefix = index_key(resource, "");
        let mut indexed = Vec::new();
        tree.scan(&prefix, &mut |key, _| {
            indexed.push(key.to_vec());
            true
        })?;
        for key in indexed {
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if tree.get(&prefixed(JOB, &id))?.is_some() {
                count -= 1;
            }
            batch.remove(prefixed(JOB, &id));
            batch.remove(key);
        }
    }
    for (id, resource, op) in &writes.ops {
        let key = prefixed(JOB, id);
        match op {
            Op::Insert(bytes) => {
                (count, added) = (count + 1, added + 1);
                batch.insert(key.clone(), bytes.as_slice());
            }
            Op::Update(bytes) => {
                if tree.get(&key)?.is_some() {
                    batch.insert(key.clone(), bytes.as_slice());
                }
                continue;
            }
            Op::Remove => {
                if tree.get(&key)?.is_some() {
                    count -= 1;
                }
                batch.remove(key.clone());
            }
        }
        if let Some(resource) = resource {
            match op {
                Op::Insert(_) => batch.insert(index_key(resource, id), Vec::new()),
                _ => batch.remove(index_key(resource, id)),
            }
        }
    }
    if added > 0 && count > i128::from(max_jobs) {
        return Err(StorageError::Quota(format!(
            "the add-on would keep {count} jobs, over its limit of {max_jobs} (limits.max_stored_jobs)"
        )));
    }
    batch.insert(JOB_COUNT, (count.max(0) as u64).to_be_bytes());
    Ok(())
}
