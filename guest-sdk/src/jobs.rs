//! Work after the reply: enqueue a job during a call, and the host runs it later through
//! [`Provider::run_job`](crate::Provider::run_job). A job is kept only if the call that
//! enqueued it succeeds; it runs at least once (use [`Job::id`] to make it idempotent), with
//! retries and backoff when it returns [`retry`] or traps, until it succeeds, returns [`fail`]
//! or runs out of attempts (then operators see it on the dead-letter list).
//!
//! ```
//! use addon_sdk::jobs::{self, Job, JobError};
//! use addon_sdk::{Provider, ProvisionReply, ProvisionRequest, Result};
//!
//! struct Hooks;
//! impl Provider for Hooks {
//!     fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
//!         // Bitrise wants slow work (its API, webhooks) done after the reply.
//!         jobs::enqueue("register-webhook", req.resource_id.as_bytes(), 0)?;
//!         Ok(ProvisionReply::new().var("HOOKS_ON", "yes"))
//!     }
//!
//!     fn run_job(job: Job) -> std::result::Result<(), JobError> {
//!         match job.kind.as_str() {
//!             "register-webhook" => Ok(()), // call the platform's API here
//!             other => Err(jobs::fail(format!("unknown job kind {other}"))),
//!         }
//!     }
//! }
//! ```

pub use crate::bindings::addon::provider::jobs::{Job, JobError, RetryLater};
use crate::host::imp;

/// Enqueue a job of `kind` (1 to 64 bytes) with `payload`, to run after this call succeeds
/// and no sooner than `delay_ms` from now. Returns the job's id. Fails (as an internal error
/// of the call) when the host refuses it: payload over its limit, or too many jobs in a call.
pub fn enqueue(kind: &str, payload: &[u8], delay_ms: u64) -> crate::Result<String> {
    imp::jobs_enqueue(kind, payload, delay_ms).map_err(|e| crate::Error::internal(format!("enqueueing a job: {e}")))
}

/// Try the job again after the host's backoff.
pub fn retry(message: impl Into<String>) -> JobError {
    JobError::Retry(RetryLater { message: message.into(), after_ms: None })
}

/// Try the job again no sooner than `after_ms` from now (a `Retry-After`, say).
pub fn retry_after(message: impl Into<String>, after_ms: u64) -> JobError {
    JobError::Retry(RetryLater { message: message.into(), after_ms: Some(after_ms) })
}

/// Give up: the job goes to the dead-letter list with `message`.
pub fn fail(message: impl Into<String>) -> JobError {
    JobError::Fail(message.into())
}
