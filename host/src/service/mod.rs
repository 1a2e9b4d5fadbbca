//! The one service layer both protocols share: it finds the add-on, checks credentials,
//! deduplicates provisions, runs the plugin under its limits, and commits the plugin's
//! key-value writes together with the provision record — durably, before any success is
//! returned.
//!
//! Calls for one resource are serialised (so concurrent identical provisions make one plugin
//! call); calls for different resources run in parallel, and their key-value writes are
//! committed optimistically: a call whose reads were changed by another is run again.
//!
//! Every request has a time budget fitting its platform ([`crate::config::Budgets`]): waits for the
//! resource's lock and a call slot, plugin calls and re-runs all come out of it, and a wait
//! that would pass it is answered 503 with `Retry-After`. A request dropped by its client
//! cancels its plugin call (the instance is dropped, the slot freed); a commit, once started,
//! always finishes: it runs inside one poll ([`blocking`]).

mod addon;
pub mod auth;
mod jobs;
mod loaded;
mod locks;
pub mod record;
mod request;
mod shared;
mod startup;
mod upgrade;
mod web;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use locks::{KeyedLocks, Locked};
use tokio::time::Instant;

use crate::clock;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::runtime::{
    Answer, CallFailure, ChangePlanRequest, DeprovisionRequest, Export, Plugin, ProviderError, Returned, Runtime,
    SlotRefused, short_version,
};
use crate::storage::{AddonStore, KvQuota, KvTxn, Storage, StorageError};
use crate::versions::Registry;
pub use addon::Addon;
pub use record::{Record, Status};
pub use request::{Budget, Caller, ConfigRules, NoRules, Platform, Provision, Target, check_resource_id};
pub use shared::follow;
pub use upgrade::{Deleted, Uploaded, VersionInfo};

/// How many times a call is re-run when another call changed what it read (the request's
/// budget usually ends the attempts first).
const MAX_CONFLICT_RETRIES: usize = 16;
/// A plugin call is not started with less time than this left in the request's budget.
const MIN_CALL_TIME: Duration = Duration::from_millis(50);

pub struct Service {
    addons: BTreeMap<String, Arc<Addon>>,
    storage: Storage,
    runtime: Arc<Runtime>,
    registry: Registry,
    admins: auth::AdminKeys,
    server: crate::config::ServerConfig,
    metrics: Arc<Metrics>,
    /// Serialise calls per resource (concurrent identical provisions make one call).
    resource_locks: KeyedLocks,
    /// Serialise the resolution of a platform app identity to a resource (taken before, and
    /// never while holding, a resource lock).
    app_locks: KeyedLocks,
    /// When each stored job runs next (see `crate::jobs`).
    jobs: Arc<crate::jobs::Queue>,
    /// Signs dashboard sessions and derives build API tokens (see [`web`]).
    web_key: Vec<u8>,
}

/// What a deprovision found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deprovisioned {
    /// The resource was active and is now released.
    Released(Record),
    /// It had been deprovisioned before.
    AlreadyGone(Record),
    /// No such resource was ever provisioned.
    Unknown,
}

/// The result of a provision: the record as stored, and whether this call created it.
#[derive(Debug)]
pub struct Provisioned {
    pub record: Record,
    pub created: bool,
}

impl Service {
    /// What the host counts, for `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn addon(&self, id: &str) -> Result<Arc<Addon>, ServiceError> {
        self.addons.get(id).cloned().ok_or_else(|| ServiceError::UnknownAddon(id.to_owned()))
    }

    pub fn addons(&self) -> impl Iterator<Item = &Arc<Addon>> {
        self.addons.values()
    }

    /// The job queue (see `crate::jobs`).
    pub fn jobs(&self) -> &Arc<crate::jobs::Queue> {
        &self.jobs
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn admins(&self) -> &auth::AdminKeys {
        &self.admins
    }

    /// The server settings the host was started with (listener, edge limits).
    pub fn server_config(&self) -> &crate::config::ServerConfig {
        &self.server
    }

    pub fn max_plugin_bytes(&self) -> usize {
        self.server.max_plugin_bytes
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// A fresh budget for a request from `platform` (see [`crate::config::Budgets`]).
    fn budget(&self, platform: Platform) -> Budget {
        let budgets = &self.server.budgets;
        Budget::start(Duration::from_millis(match platform {
            Platform::Bitrise => budgets.bitrise_ms,
            Platform::Xervo => budgets.xervo_ms,
        }))
    }

    /// Take the lock of `key` among `locks` (`kind` names them), and the same key's lock on
    /// every host sharing the storage, waiting no longer than the request's budget.
    async fn lock<'a>(
        &self,
        locks: &'a KeyedLocks,
        kind: &str,
        key: String,
        addon: &Addon,
        budget: &Budget,
    ) -> Result<Locked<'a>, ServiceError> {
        let busy = || ServiceError::Busy {
            addon: addon.id().to_owned(),
            reason: "an earlier request for the same resource is still running",
        };
        let shared_key = format!("{kind}:{key}");
        let local = tokio::time::timeout_at(budget.until(), locks.lock(key)).await.map_err(|_| busy())?;
        let wait = budget.remaining();
        match self.storage.lock(&shared_key, wait).await {
            Ok(shared) => Ok(Locked { _shared: shared, _local: local }),
            Err(StorageError::LockTimeout) => Err(busy()),
            Err(e) => Err(e.into()),
        }
    }

    async fn lock_resource(
        &self,
        addon: &Addon,
        resource_id: &str,
        budget: &Budget,
    ) -> Result<Locked<'_>, ServiceError> {
        self.lock(&self.resource_locks, "resource", format!("{}/{resource_id}", addon.id()), addon, budget).await
    }

    /// A record, as the platform `platform` may see it: resources belong to the platform
    /// that created them, and are unknown to the others.
    pub async fn record(
        &self,
        addon: &Arc<Addon>,
        platform: Platform,
        resource_id: &str,
    ) -> Result<Option<Record>, ServiceError> {
        Ok(stored(addon, resource_id).await?.filter(|r| r.belongs_to(platform)))
    }

    /// Provision a resource. An identical repeat replays the stored reply without calling the
    /// plugin; a different request for an active resource re-provisions it (the plugin is
    /// called again and its new reply stored), as Bitrise's "create or update" asks.
    ///
    /// [`Target::App`] asks the host to choose: the active resource already provisioned for
    /// the same platform app identity, or a fresh id.
    pub async fn provision(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        req: Provision,
    ) -> Result<Provisioned, ServiceError> {
        let budget = self.budget(caller.platform);
        addon.check_plan(&req.plan)?;
        let platform = caller.platform;
        let (resource_id, alias, _app_guard) = match &req.target {
            Target::Resource(id) => (id.clone(), None, None),
            Target::App => {
                let alias_key = format!("{}/{}", platform.name(), req.app_id);
                let app_key = format!("{}/{alias_key}", addon.id());
                let guard = self.lock(&self.app_locks, "app", app_key, addon, &budget).await?;
                let (a, key) = (addon.clone(), alias_key.clone());
                let active = storage_work(move || match a.store.alias(&key)? {
                    Some(id) if a.record(&id)?.is_some_and(|r| r.is_active()) => Ok(Some(id)),
                    _ => Ok(None),
                });
                match active.await? {
                    Some(id) => (id, None, Some(guard)),
                    None => {
                        let id = new_resource_id(addon.id())?;
                        (id.clone(), Some((alias_key, id)), Some(guard))
                    }
                }
            }
        };
        let _lock = self.lock_resource(addon, &resource_id, &budget).await?;
        let existing = stored(addon, &resource_id).await?.filter(Record::is_active);
        let token_of = existing.clone();
        if existing.as_ref().is_some_and(|r| !r.belongs_to(platform)) {
            return Err(no_resource(&resource_id));
        }
        let digest = record::request_digest(&req, platform, &resource_id);
        if let Some(record) = existing.as_ref().filter(|r| r.request_digest == digest) {
            Metrics::addon_counter(&self.metrics.replays, addon.id());
            return Ok(Provisioned { record: record.clone(), created: false });
        }
        let now = clock::now_ms();
        let created = existing.is_none();
        let created_ms = existing.as_ref().map_or(now, |r| r.created_ms);
        let alias = alias.as_ref().map(|(k, id)| (k.as_str(), id.as_str()));
        let export = Export::Provision(req.to_wit(platform, &resource_id));
        let rules = caller.rules.as_ref();
        let record = self
            .run(addon, &budget, export, alias, |answer, version| {
                check_config(addon, rules, "provision", version, &with_token_var(addon, &answer.config))?;
                Ok(Record {
                    api_token: self.issue_token(addon, &resource_id, created_ms, token_of.as_ref()),
                    resource_id: resource_id.clone(),
                    platform: platform.name().to_owned(),
                    app_id: req.app_id.clone(),
                    plan: req.plan.clone(),
                    app_title: req.app_title.clone(),
                    request_digest: digest.clone(),
                    config: answer.config.clone(),
                    message: answer.message.clone(),
                    status: Status::Active,
                    plugin_version: version.to_owned(),
                    created_ms,
                    updated_ms: now,
                })
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = %record.resource_id, plan = %record.plan, created, "provisioned");
        Ok(Provisioned { record, created })
    }

    /// Move an active resource to another plan. The same plan again is a no-op success.
    pub async fn change_plan(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        resource_id: &str,
        plan: &str,
    ) -> Result<Record, ServiceError> {
        let budget = self.budget(caller.platform);
        addon.check_plan(plan)?;
        let _lock = self.lock_resource(addon, resource_id, &budget).await?;
        let current = stored(addon, resource_id)
            .await?
            .filter(|r| r.is_active() && r.belongs_to(caller.platform))
            .ok_or_else(|| no_resource(resource_id))?;
        if current.plan == plan {
            return Ok(current);
        }
        let request = ChangePlanRequest {
            resource_id: resource_id.to_owned(),
            platform: caller.platform.to_wit(),
            app_id: current.app_id.clone(),
            previous_plan: current.plan.clone(),
            plan: plan.to_owned(),
        };
        let rules = caller.rules.as_ref();
        let record = self
            .run(addon, &budget, Export::ChangePlan(request), None, |answer, version| {
                let mut next = current.clone();
                next.plan = plan.to_owned();
                merge_config(&mut next.config, &answer.config);
                check_config(addon, rules, "change-plan", version, &with_token_var(addon, &next.config))?;
                next.message = answer.message.clone().or(next.message);
                next.plugin_version = version.to_owned();
                next.updated_ms = clock::now_ms();
                Ok(next)
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = resource_id, plan, "plan changed");
        Ok(record)
    }

    /// Deprovision a resource. Only an active resource calls the plugin; repeats succeed
    /// without a call, so the operation is idempotent. The record is kept, marked
    /// deprovisioned, so the platform's later SSO or repeats can be told what happened.
    pub async fn deprovision(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        resource_id: &str,
    ) -> Result<Deprovisioned, ServiceError> {
        let budget = self.budget(caller.platform);
        let _lock = self.lock_resource(addon, resource_id, &budget).await?;
        let current = match stored(addon, resource_id).await? {
            None => return Ok(Deprovisioned::Unknown),
            Some(r) if !r.belongs_to(caller.platform) => return Err(no_resource(resource_id)),
            Some(r) if !r.is_active() => return Ok(Deprovisioned::AlreadyGone(r)),
            Some(r) => r,
        };
        let request = DeprovisionRequest {
            resource_id: resource_id.to_owned(),
            platform: caller.platform.to_wit(),
            app_id: current.app_id.clone(),
            plan: current.plan.clone(),
        };
        let gone = self
            .run(addon, &budget, Export::Deprovision(request), None, |_, version| {
                let mut gone = current.clone();
                gone.status = Status::Deprovisioned;
                gone.plugin_version = version.to_owned();
                gone.updated_ms = clock::now_ms();
                Ok(gone)
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = resource_id, "deprovisioned");
        Ok(Deprovisioned::Released(gone))
    }

    /// Run a call with the add-on's current plugin and, if the plugin succeeds and
    /// `make_record` accepts its answer (given the plugin's version), commit its key-value
    /// writes together with that record (and alias), durably. Refusals and failures commit
    /// nothing. A call whose reads another call changed is run again, within the budget.
    async fn run(
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
    async fn attempts<T>(
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

    /// Check and consume an SSO token: valid signature, fresh, and never used before. The
    /// token is marked used durably before this returns.
    pub async fn verify_sso(
        &self,
        scope: &str,
        subject: &str,
        secret: &str,
        timestamp: &str,
        token: &str,
    ) -> Result<(), ServiceError> {
        let now = clock::unix_secs();
        let (ts, token) = auth::verify_sso_token(subject, secret, timestamp, token, now)?;
        let (storage, scope) = (self.storage.clone(), scope.to_owned());
        let claimed =
            storage_work(move || Ok(storage.claim_sso_token(&scope, ts, &token, now - 2 * auth::SSO_WINDOW_SECS)?))
                .await?;
        if !claimed {
            return Err(ServiceError::Forbidden("this SSO token was already used".into()));
        }
        Ok(())
    }

    /// Claim a single-use credential the host issued itself (a dashboard ticket): true the
    /// first time `nonce` is presented in `scope`, durably, so that no host sharing the
    /// storage accepts it again. `issued` (unix seconds) and `lifetime_secs` say when it can
    /// be forgotten.
    pub async fn claim_once(
        &self,
        scope: &str,
        issued: i64,
        nonce: &str,
        lifetime_secs: i64,
    ) -> Result<bool, ServiceError> {
        let (storage, scope, nonce) = (self.storage.clone(), scope.to_owned(), nonce.to_owned());
        let keep_after = clock::unix_secs() - 2 * lifetime_secs;
        storage_work(move || Ok(storage.claim_sso_token(&scope, issued, &nonce, keep_after)?)).await
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
async fn stored(addon: &Arc<Addon>, resource_id: &str) -> Result<Option<Record>, ServiceError> {
    if !addon.store.reads_wait() {
        return addon.record(resource_id);
    }
    let (addon, id) = (addon.clone(), resource_id.to_owned());
    storage_work(move || addon.record(&id)).await
}

/// What a call's `finish` decided: keep its writes (with a record, for the resource whose
/// jobs it enqueued), or drop them; either way `value` is the answer.
#[allow(clippy::large_enum_variant, reason = "one lives briefly on the stack per call")]
enum Finish<T> {
    Keep { record: Option<Record>, resource: Option<String>, value: T },
    Drop(T),
}

/// The one way to say a plugin's call failed: with the add-on, the call and the version.
fn call_failed(addon: &Addon, call: &'static str, short_version: &str, failure: CallFailure) -> ServiceError {
    ServiceError::CallFailed { addon: addon.id().to_owned(), call, short_version: short_version.to_owned(), failure }
}

/// The answer for a resource that does not exist, or that another platform created (to this
/// platform, it does not exist either).
fn no_resource(resource_id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no provisioned resource `{resource_id}`"))
}

/// A fresh resource id: URL-safe, starting with a letter, unguessable.
fn new_resource_id(addon_id: &str) -> Result<String, ServiceError> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::host("no randomness for a resource id", anyhow::anyhow!("{e}")))?;
    Ok(format!("{addon_id}-{}", hex::encode(bytes)))
}

fn refusal(addon: &Addon, call: &'static str, plugin: &Plugin, e: ProviderError) -> ServiceError {
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

/// Refuse a reply whose variables break the calling platform's rules: the platform gets a
/// 5xx naming the variable, and nothing is stored.
fn check_config(
    addon: &Addon,
    rules: &dyn ConfigRules,
    call: &'static str,
    version: &str,
    config: &[(String, String)],
) -> Result<(), ServiceError> {
    match rules.problem(config) {
        None => Ok(()),
        Some(problem) => Err(call_failed(addon, call, short_version(version), CallFailure::InvalidReply(problem))),
    }
}

/// The variables a platform will get, for its rules: the plugin's and, when the add-on
/// issues build API tokens, the token's (whose value the host makes).
fn with_token_var(addon: &Addon, config: &[(String, String)]) -> Vec<(String, String)> {
    let mut vars = config.to_vec();
    if addon.config.web.build_api {
        vars.push((addon.config.web.token_var(addon.id()), "abt1.token".into()));
    }
    vars
}

/// Overlay a plan change's variables on the provisioned ones.
fn merge_config(config: &mut Vec<(String, String)>, changes: &[(String, String)]) {
    for (key, value) in changes {
        match config.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => config.push((key.clone(), value.clone())),
        }
    }
}
