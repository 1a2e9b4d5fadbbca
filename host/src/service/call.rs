//! The call engine under every operation: take a slot in the add-on's share, call the plugin
//! within the request's budget, and commit its key-value writes, jobs and record in one
//! durable batch — re-running the call when another changed what it read, one re-run at a
//! time per add-on. Also how a plugin's failure or refusal becomes a [`ServiceError`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Addon, Budget, Record, Service};
use crate::clock;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::runtime::{Answer, CallFailure, Export, Plugin, ProviderError, Returned, SlotRefused};
use crate::storage::{AddonStore, KvQuota, KvTxn, StorageError};

/// How many times a call is re-run when another call changed what it read (the request's
/// budget usually ends the attempts first).
const MAX_CONFLICT_RETRIES: usize = 16;

/// A plugin call is not started with less time than this left in the request's budget.
const MIN_CALL_TIME: Duration = Duration::from_millis(50);

impl Service {
    /// Run a call with the add-on's current plugin and, if the plugin succeeds and
    /// `make_record` accepts its answer (given the plugin's version), commit its key-value
    /// writes together with that record (and alias), durably. Refusals and failures commit
    /// nothing. A call whose reads another call changed is run again, within the budget.
    pub(super) async fn run(
        &self,
        addon: &Arc<Addon>,
        budget: &Budget,
        export: Export,
        alias: Option<(&str, &str)>,
        make_record: impl Fn(&Answer, &str) -> Result<Record, ServiceError>,
    ) -> Result<Record, ServiceError> {
        let call = export.name();
        let finish = |returned: Returned, plugin: &Plugin| {
            let answer = match returned {
                Returned::Reply(reply) => reply.map_err(|e| refusal(addon, call, plugin, e))?,
                Returned::Job(_) | Returned::Http(_) => {
                    let failure = CallFailure::InvalidReply("not a platform call's reply".into());
                    return Err(call_failed(addon, call, plugin.short_version(), failure));
                }
            };
            let record = make_record(&answer, &plugin.sha256)?;
            Ok(Finish::Keep { resource: Some(record.resource_id.clone()), record: Some(record.clone()), value: record })
        };
        let outcome = self.attempts(addon, budget, export, alias, finish).await;
        outcome.inspect_err(|e| self.metrics.failure(addon.id(), call, e.kind()))
    }

    /// [`Service::run`]'s calls (and the HTTP handler's): the first, and any re-run after a
    /// key-value conflict. `finish` turns what the plugin returned into the value to answer
    /// and says whether the call's writes (with a record) are kept.
    pub(super) async fn attempts<T>(
        &self,
        addon: &Arc<Addon>,
        budget: &Budget,
        export: Export,
        alias: Option<(&str, &str)>,
        finish: impl Fn(Returned, &Plugin) -> Result<Finish<T>, ServiceError>,
    ) -> Result<T, ServiceError> {
        let plugin = addon.plugin();
        let call = export.name();
        let failed = |failure| call_failed(addon, call, plugin.short_version(), failure);
        let busy = |refused: SlotRefused| ServiceError::Busy { addon: addon.id().to_owned(), reason: refused.reason() };
        let limits = &addon.config.limits;
        // Held from the first conflict on: the add-on's retries run one at a time.
        let mut retry_guard = None;
        for _ in 0..MAX_CONFLICT_RETRIES {
            // The add-on's deadline covers the wait for a slot as well as the call: a queued
            // call that cannot start with MIN_CALL_TIME left is refused as busy at its deadline.
            let asked = Instant::now();
            let until = budget.until().min(asked + Duration::from_millis(limits.deadline_ms));
            let slot = self.runtime.slot(&addon.share, until - MIN_CALL_TIME).await.map_err(busy)?;
            Metrics::addon_histogram(&self.metrics.queue_wait_seconds, addon.id(), asked.elapsed());
            let started = Instant::now();
            let deadline = until.saturating_duration_since(Instant::now());
            if deadline < MIN_CALL_TIME {
                return Err(busy(SlotRefused::TimedOut));
            }
            let (completed, used) = self
                .runtime
                .call(slot, &plugin, addon.env.clone(), addon.store.begin(), export.clone(), deadline)
                .await;
            let completed = completed.map_err(|failure| match failure {
                // Name the deadline counted from when the call asked for its slot.
                CallFailure::Deadline { .. } => {
                    let deadline_ms = (until - asked).as_secs_f64() * 1000.0;
                    failed(CallFailure::Deadline { deadline_ms: deadline_ms.round() as u64 })
                }
                other => failed(other),
            });
            self.metrics.call(addon.id(), call, started.elapsed(), used);
            let completed = completed?;
            let (record, resource, value) = match finish(completed.result, &plugin)? {
                Finish::Drop(value) => return Ok(value),
                Finish::Keep { record, resource, value } => (record, resource, value),
            };
            let quota = KvQuota::of(limits);
            let mut kv = completed.kv;
            // A deprovision cancels the resource's jobs, except those it enqueues itself.
            if let (Export::Deprovision(_), Some(resource)) = (&export, &resource) {
                kv.jobs.cancel_resource(resource);
            }
            let new_jobs =
                crate::jobs::stage(&mut kv.jobs, &completed.jobs, resource.as_deref(), call, clock::now_ms());
            let record = record.map(|r| (r.resource_id.clone(), r.to_bytes()));
            let alias = alias.map(|(k, v)| (k.to_owned(), v.to_owned()));
            let started = Instant::now();
            let committed = commit(addon.store.clone(), kv, quota, record, alias).await?;
            self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            match committed {
                Ok(()) => {
                    for job in &new_jobs {
                        self.jobs.push(addon.id(), &job.id, job.due_ms);
                    }
                    return Ok(value);
                }
                Err(StorageError::Conflict(key)) => {
                    tracing::debug!(addon = addon.id(), call, key, "key-value conflict; running the call again");
                    if retry_guard.is_none() {
                        let taken = tokio::time::timeout_at(budget.until(), addon.retry_lock.lock()).await;
                        retry_guard = Some(taken.map_err(|_| busy(SlotRefused::TimedOut))?);
                    }
                }
                Err(StorageError::Quota(message)) => return Err(failed(CallFailure::Quota(message))),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Busy { addon: addon.id().to_owned(), reason: "too many concurrent changes to its data" })
    }
}

/// Run storage work where blocking is allowed (see [`crate::blocking`]): sled can block, and
/// a runtime worker must never wait on it.
pub(crate) async fn storage_work<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    crate::blocking::off_worker(work).await.map_err(|e| ServiceError::host("storage task failed", e))?
}

/// Commit a call's writes (with a record and an alias) durably: staged and applied where
/// blocking is allowed, then, when another thread is writing the log, awaited as a task
/// rather than on a blocked thread (see [`AddonStore::commit_unsynced`]). The outer error is
/// the host's, the inner one the storage's answer (a conflict, a quota).
pub(crate) async fn commit(
    store: AddonStore,
    txn: KvTxn,
    quota: KvQuota,
    record: Option<(String, Vec<u8>)>,
    alias: Option<(String, String)>,
) -> Result<Result<(), StorageError>, ServiceError> {
    let applied = storage_work(move || {
        let record = record.as_ref().map(|(id, bytes)| (id.as_str(), bytes.as_slice()));
        let alias = alias.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
        Ok(store.commit_unsynced(&txn, quota, record, alias))
    })
    .await?;
    Ok(match applied {
        Ok(Some(unsynced)) => unsynced.durable().await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    })
}

/// A stored record: read in place when the backend's reads never wait (sled), else where
/// blocking is allowed (PostgreSQL's go over the network).
pub(super) async fn stored(addon: &Arc<Addon>, resource_id: &str) -> Result<Option<Record>, ServiceError> {
    if !addon.store.reads_wait() {
        return addon.record(resource_id);
    }
    let (addon, id) = (addon.clone(), resource_id.to_owned());
    storage_work(move || addon.record(&id)).await
}

/// What a call's `finish` decided: keep its writes (with a record, for the resource whose
/// jobs it enqueued), or drop them; either way `value` is the answer.
#[allow(clippy::large_enum_variant, reason = "one lives briefly on the stack per call")]
pub(super) enum Finish<T> {
    Keep { record: Option<Record>, resource: Option<String>, value: T },
    Drop(T),
}

/// The one way to say a plugin's call failed: with the add-on, the call and the version.
pub(super) fn call_failed(
    addon: &Addon,
    call: &'static str,
    short_version: &str,
    failure: CallFailure,
) -> ServiceError {
    if let CallFailure::DiskFull(why) = failure {
        // Not the plugin's failure: the host's disk is full.
        return ServiceError::Storage(StorageError::DiskFull(why));
    }
    ServiceError::CallFailed { addon: addon.id().to_owned(), call, short_version: short_version.to_owned(), failure }
}

pub(super) fn refusal(addon: &Addon, call: &'static str, plugin: &Plugin, e: ProviderError) -> ServiceError {
    let addon = addon.id().to_owned();
    match e {
        ProviderError::InvalidRequest(message) => ServiceError::Refused { addon, call, message },
        ProviderError::Unavailable(u) => {
            ServiceError::Unavailable { addon, call, message: u.message, docs_url: u.docs_url }
        }
        ProviderError::Internal(message) => {
            ServiceError::PluginError { addon, call, short_version: plugin.short_version().to_owned(), message }
        }
    }
}
