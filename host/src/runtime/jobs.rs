//! The `jobs` import: the jobs a call enqueues stay with the call, in memory, and reach
//! storage only with the call's other writes when it succeeds (see `crate::jobs`).

use super::bindings::addon::provider::jobs;

/// A job enqueued by a call, not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub id: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub delay_ms: u64,
}

/// The longest delay a job may ask for: 30 days.
const MAX_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;
const MAX_KIND_BYTES: usize = 64;

/// One call's enqueued jobs, within its limits.
pub(crate) struct CallJobs {
    pub(crate) enqueued: Vec<NewJob>,
    max_per_call: usize,
    max_payload_bytes: usize,
    /// Whether the plugin exports `run-job`: without it no job it enqueues could ever run.
    runs_jobs: bool,
}

/// What to change in a plugin that enqueues jobs but does not export `run-job`.
pub const BUILD_FOR_WORKER: &str = "build it for the `worker` world (JavaScript: `--world-name worker` and an \
     exported `runJob`; Python: `-w worker` and a `run_job` method; the Rust SDK always exports it)";

impl CallJobs {
    pub(crate) fn new(max_per_call: usize, max_payload_bytes: usize, runs_jobs: bool) -> CallJobs {
        CallJobs { enqueued: Vec::new(), max_per_call, max_payload_bytes, runs_jobs }
    }
}

/// A new job id: the time in milliseconds, zero-padded so ids sort by age, and 64 random bits.
pub fn new_id() -> String {
    let mut random = [0u8; 8];
    // The OS generator only fails on broken systems; the time part still orders the id.
    let _ = getrandom::fill(&mut random);
    format!("{:013}-{}", crate::clock::now_ms(), hex::encode(random))
}

impl jobs::Host for &mut CallJobs {
    fn enqueue(&mut self, kind: String, payload: Vec<u8>, delay_ms: u64) -> Result<String, String> {
        if !self.runs_jobs {
            return Err(format!(
                "this plugin does not export run-job, so no job it enqueues could run: {BUILD_FOR_WORKER}"
            ));
        }
        if kind.is_empty() || kind.len() > MAX_KIND_BYTES {
            return Err(format!("a job's kind must be 1 to {MAX_KIND_BYTES} bytes long, not {}", kind.len()));
        }
        if payload.len() > self.max_payload_bytes {
            return Err(format!(
                "the job's payload is {} bytes; the limit is {} (limits.max_job_payload_bytes)",
                payload.len(),
                self.max_payload_bytes
            ));
        }
        if self.enqueued.len() >= self.max_per_call {
            return Err(format!("one call may enqueue at most {} jobs (limits.max_jobs_per_call)", self.max_per_call));
        }
        let id = new_id();
        self.enqueued.push(NewJob { id: id.clone(), kind, payload, delay_ms: delay_ms.min(MAX_DELAY_MS) });
        Ok(id)
    }
}
