//! Running an add-on's jobs, and what operators may do with them. A run is one sandboxed
//! `run-job` call under the add-on's `[addon.jobs]` deadline, in a slot of the add-on's own
//! share; its key-value writes, the jobs it enqueues and the job's removal commit together
//! when it succeeds. A failed run commits only the job's new attempt count and due time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Addon, Service, storage_work};
use crate::clock;
use crate::error::ServiceError;
use crate::jobs::{self, StoredJob};
use crate::runtime::{CallCpu, Completed, Export, Job, JobError, Returned};
use crate::storage::{KvQuota, KvTxn, StorageError};

impl jobs::Runner for Service {
    fn queue(&self) -> &Arc<jobs::Queue> {
        self.jobs()
    }

    fn limits(&self, addon: &str) -> Option<(usize, u32)> {
        let jobs = &self.addon(addon).ok()?.config.jobs;
        Some((jobs.max_concurrent as usize, jobs.max_starts_per_second))
    }

    async fn run_job(self: Arc<Self>, addon: String, id: String) {
        self.run_due_job(&addon, &id).await
    }
}

/// What a run came to.
enum Ran {
    Done(Completed),
    Retry { error: String, after_ms: Option<u64> },
    Fail(String),
}

impl Service {
    /// Queue every stored job that is not dead (at start-up).
    pub(super) fn queue_stored_jobs(&self) -> Result<usize, ServiceError> {
        let mut queued = 0;
        for addon in self.addons.values() {
            for (_, bytes) in addon.store.jobs()? {
                if let Some(job) = StoredJob::from_bytes(&bytes).filter(|j| !j.dead) {
                    self.jobs.push(addon.id(), &job.id, job.due_ms);
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    /// Run one job (when the queue says it is due), and tell the queue when it is over.
    async fn run_due_job(self: &Arc<Self>, addon_id: &str, id: &str) {
        if let Ok(addon) = self.addon(addon_id)
            && let Err(e) = self.run_stored_job(&addon, id).await
        {
            tracing::warn!(addon = addon_id, job = id, "running the job failed on the host's side: {e}");
        }
        self.jobs.finished(addon_id, id);
    }

    async fn run_stored_job(&self, addon: &Arc<Addon>, id: &str) -> Result<(), ServiceError> {
        // Another host sharing the storage is running it: that host commits its outcome, and
        // if it stops first, the job is overdue and queued again (see `shared`).
        let _shared = match self.storage.lock(&format!("job:{}/{id}", addon.id()), Duration::ZERO).await {
            Ok(held) => held,
            Err(StorageError::LockTimeout) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (store, key) = (addon.store.clone(), id.to_owned());
        let stored = storage_work(move || Ok(store.job(&key)?)).await?;
        let Some(job) = stored.as_deref().and_then(StoredJob::from_bytes).filter(|j| !j.dead) else {
            return Ok(()); // done, dropped or cancelled since it was queued
        };
        if job.due_ms > clock::now_ms() {
            self.jobs.push(addon.id(), &job.id, job.due_ms);
            return Ok(());
        }
        let started = Instant::now();
        let (ran, used) = self.call_run_job(addon, &job).await;
        self.metrics.call(addon.id(), "run-job", started.elapsed(), used);
        match ran {
            Ran::Done(completed) => self.job_done(addon, job, completed, started).await,
            Ran::Retry { error, after_ms } => self.job_failed(addon, job, error, after_ms, false).await,
            Ran::Fail(error) => self.job_failed(addon, job, error, None, true).await,
        }
    }

    /// Run the job's call; what it came to, and what it took of the cores.
    async fn call_run_job(&self, addon: &Arc<Addon>, job: &StoredJob) -> (Ran, CallCpu) {
        let plugin = addon.plugin();
        if !plugin.runs_jobs {
            let error = format!(
                "plugin version {} does not export run-job: {}",
                plugin.short_version(),
                crate::runtime::BUILD_FOR_WORKER
            );
            return (Ran::Retry { error, after_ms: None }, CallCpu::default());
        }
        let deadline = Duration::from_millis(addon.config.jobs.deadline_ms);
        let until = tokio::time::Instant::now() + deadline;
        let slot = match self.runtime.slot(&addon.share, until).await {
            Ok(slot) => slot,
            Err(refused) => {
                return (Ran::Retry { error: refused.reason().to_owned(), after_ms: None }, CallCpu::default());
            }
        };
        let run = Job {
            id: job.id.clone(),
            kind: job.kind.clone(),
            payload: job.payload_bytes(),
            resource_id: job.resource_id.clone(),
            attempt: job.attempts + 1,
        };
        let deadline = until.saturating_duration_since(tokio::time::Instant::now());
        let export = Export::RunJob(run);
        let (outcome, used) =
            self.runtime.call(slot, &plugin, addon.env.clone(), addon.store.begin(), export, deadline).await;
        let ran = match outcome {
            Err(failure) => Ran::Retry { error: format!("the plugin {failure}"), after_ms: None },
            Ok(completed) => match &completed.result {
                Returned::Job(Ok(())) => Ran::Done(completed),
                Returned::Job(Err(JobError::Retry(later))) => {
                    Ran::Retry { error: later.message.clone(), after_ms: later.after_ms }
                }
                Returned::Job(Err(JobError::Fail(message))) => Ran::Fail(message.clone()),
                Returned::Reply(_) | Returned::Http(_) => {
                    Ran::Retry { error: "run-job returned a reply".into(), after_ms: None }
                }
            },
        };
        (ran, used)
    }

    /// Commit a successful run: its writes, its new jobs, and the job's removal.
    async fn job_done(
        &self,
        addon: &Arc<Addon>,
        job: StoredJob,
        completed: Completed,
        started: Instant,
    ) -> Result<(), ServiceError> {
        let Completed { mut kv, jobs: enqueued, .. } = completed;
        let resource = job.resource_id.as_deref();
        kv.jobs.remove(&job.id, resource);
        let now = clock::now_ms();
        let new = jobs::stage(&mut kv.jobs, &enqueued, resource, "run-job", now);
        match self.commit_job(addon, kv).await? {
            Ok(()) => {
                for n in &new {
                    self.jobs.push(addon.id(), &n.id, n.due_ms);
                }
                self.metrics.job_run(addon.id(), "done");
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(addon = addon.id(), job = %job.id, kind = %job.kind, attempt = job.attempts + 1, ms, "job done");
                Ok(())
            }
            Err(StorageError::Conflict(key)) => {
                let error = format!("another call changed key `{key}` while the job ran");
                self.job_failed(addon, job, error, Some(0), false).await
            }
            Err(StorageError::Quota(message)) => self.job_failed(addon, job, message, None, false).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Record a failed run: the next run's time, or the dead-letter list when `fatal` or out
    /// of attempts.
    async fn job_failed(
        &self,
        addon: &Arc<Addon>,
        mut job: StoredJob,
        error: String,
        after_ms: Option<u64>,
        fatal: bool,
    ) -> Result<(), ServiceError> {
        let cfg = &addon.config.jobs;
        job.attempts += 1;
        job.dead = fatal || job.attempts >= cfg.max_attempts;
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        job.due_ms = clock::now_ms().saturating_add(cfg.backoff_ms(job.attempts, after_ms, u64::from_le_bytes(random)));
        job.last_error = Some(error);
        let mut txn = addon.store.begin();
        txn.jobs.update(&job.id, job.resource_id.as_deref(), job.to_bytes());
        self.commit_job(addon, txn).await?.map_err(ServiceError::from)?;
        let (id, attempts, error) = (addon.id(), job.attempts, job.last_error.as_deref().unwrap_or(""));
        self.metrics.job_run(id, if job.dead { "dead" } else { "retry" });
        if job.dead {
            tracing::warn!(addon = id, job = %job.id, kind = %job.kind, attempts, "job is dead (dead-letter list): {error}");
        } else {
            tracing::info!(addon = id, job = %job.id, kind = %job.kind, attempts, retry_in_ms = job.due_ms.saturating_sub(clock::now_ms()), "job will be retried: {error}");
            self.jobs.push(id, &job.id, job.due_ms);
        }
        Ok(())
    }

    async fn commit_job(&self, addon: &Arc<Addon>, txn: KvTxn) -> Result<Result<(), StorageError>, ServiceError> {
        let quota = KvQuota::of(&addon.config.limits);
        super::commit(addon.store.clone(), txn, quota, None, None).await
    }

    /// The add-on's jobs for operators, oldest first, optionally only those in `state`.
    pub async fn list_jobs(
        &self,
        addon: &Arc<Addon>,
        state: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let store = addon.store.clone();
        let stored = storage_work(move || Ok(store.jobs()?)).await?;
        Ok(stored
            .iter()
            .filter_map(|(_, bytes)| StoredJob::from_bytes(bytes))
            .filter_map(|job| {
                let running = self.jobs.is_running(addon.id(), &job.id);
                (state.is_none_or(|s| s == job.state(running))).then(|| job.summary(running))
            })
            .collect())
    }

    /// How many of the add-on's jobs are in each state, for `/admin/status`.
    pub async fn job_counts(&self, addon: &Arc<Addon>) -> Result<serde_json::Value, ServiceError> {
        let mut counts =
            std::collections::BTreeMap::from([("dead", 0), ("pending", 0), ("retrying", 0), ("running", 0)]);
        for job in self.list_jobs(addon, None).await? {
            if let Some(n) = job["state"].as_str().and_then(|s| counts.get_mut(s)) {
                *n += 1;
            }
        }
        Ok(serde_json::json!(counts))
    }

    /// Run a job again now, with its attempts counted afresh (a dead job included).
    pub async fn retry_job(&self, addon: &Arc<Addon>, id: &str) -> Result<serde_json::Value, ServiceError> {
        let mut job = self.stored_job(addon, id).await?;
        (job.dead, job.attempts, job.due_ms) = (false, 0, clock::now_ms());
        let mut txn = addon.store.begin();
        txn.jobs.update(&job.id, job.resource_id.as_deref(), job.to_bytes());
        self.commit_job(addon, txn).await?.map_err(ServiceError::from)?;
        self.jobs.push(addon.id(), &job.id, job.due_ms);
        tracing::info!(addon = addon.id(), job = id, "job retried by an operator");
        Ok(job.summary(self.jobs.is_running(addon.id(), id)))
    }

    /// Remove a job for good.
    pub async fn drop_job(&self, addon: &Arc<Addon>, id: &str) -> Result<(), ServiceError> {
        let job = self.stored_job(addon, id).await?;
        let mut txn = addon.store.begin();
        txn.jobs.remove(&job.id, job.resource_id.as_deref());
        self.commit_job(addon, txn).await?.map_err(ServiceError::from)?;
        tracing::info!(addon = addon.id(), job = id, "job dropped by an operator");
        Ok(())
    }

    async fn stored_job(&self, addon: &Arc<Addon>, id: &str) -> Result<StoredJob, ServiceError> {
        let (store, key) = (addon.store.clone(), id.to_owned());
        storage_work(move || Ok(store.job(&key)?))
            .await?
            .as_deref()
            .and_then(StoredJob::from_bytes)
            .ok_or_else(|| ServiceError::NotFound(format!("add-on `{}` has no job `{id}`", addon.id())))
    }
}
