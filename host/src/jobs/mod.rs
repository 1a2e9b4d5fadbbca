//! Durable jobs: work a plugin asks for during a call, run after the reply (Bitrise asks
//! add-ons to call its API and register webhooks only after answering /provision).
//!
//! A call's enqueued jobs are committed in the same atomic batch as its key-value writes and
//! record (`storage::JobWrites`), so a job exists only if its call succeeded and was
//! acknowledged, and it survives restarts and crashes. The [`queue`] starts each job when
//! due; the service runs it in a sandboxed `run-job` call of its own with the add-on's `[addon.jobs]` deadline, retries
//! failures with exponential backoff and jitter, and marks a job dead (the dead-letter list)
//! when it fails for good or runs out of attempts. Operators list, retry and drop jobs through
//! the admin API (`admin::jobs`) and `addon-host jobs`.

pub mod queue;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::runtime::NewJob;
use crate::storage::JobWrites;

pub use queue::{Queue, Runner, start};

/// A job as stored in the add-on's tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredJob {
    pub id: String,
    pub kind: String,
    /// The payload, base64.
    pub payload: String,
    /// The resource whose call enqueued it.
    pub resource_id: Option<String>,
    /// The export whose call enqueued it (`provision`, `run-job`, ...).
    pub enqueued_by: String,
    pub enqueued_ms: u64,
    /// When it may run next.
    pub due_ms: u64,
    /// Runs so far that did not succeed.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// On the dead-letter list: not run again unless an operator retries it.
    pub dead: bool,
}

impl StoredJob {
    pub fn from_new(job: &NewJob, resource_id: Option<&str>, enqueued_by: &str, now_ms: u64) -> StoredJob {
        StoredJob {
            id: job.id.clone(),
            kind: job.kind.clone(),
            payload: base64::engine::general_purpose::STANDARD.encode(&job.payload),
            resource_id: resource_id.map(str::to_owned),
            enqueued_by: enqueued_by.to_owned(),
            enqueued_ms: now_ms,
            due_ms: now_ms.saturating_add(job.delay_ms),
            attempts: 0,
            last_error: None,
            dead: false,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<StoredJob> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn payload_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(&self.payload).unwrap_or_default()
    }

    /// `pending` (never run, or waiting for its next run), `retrying` (failed before),
    /// `running` (per the queue) or `dead`.
    pub fn state(&self, running: bool) -> &'static str {
        match (self.dead, running, self.attempts) {
            (true, _, _) => "dead",
            (false, true, _) => "running",
            (false, false, 0) => "pending",
            (false, false, _) => "retrying",
        }
    }

    /// How operators see it: everything but the payload, which is the plugin's business
    /// (its size is shown).
    pub fn summary(&self, running: bool) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "state": self.state(running),
            "resource_id": self.resource_id,
            "enqueued_by": self.enqueued_by,
            "enqueued_ms": self.enqueued_ms,
            "due_ms": self.due_ms,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "payload_bytes": self.payload_bytes().len(),
        })
    }
}

/// Add a call's new jobs to its commit; returns them as stored, for the queue once committed.
pub fn stage(
    writes: &mut JobWrites,
    jobs: &[NewJob],
    resource_id: Option<&str>,
    enqueued_by: &str,
    now_ms: u64,
) -> Vec<StoredJob> {
    jobs.iter()
        .map(|job| {
            let stored = StoredJob::from_new(job, resource_id, enqueued_by, now_ms);
            writes.insert(&stored.id, resource_id, stored.to_bytes());
            stored
        })
        .collect()
}
