//! The one service layer both protocols share: it finds the add-on, checks credentials,
//! deduplicates provisions, runs the plugin under its limits, and commits the plugin's
//! key-value writes together with the provision record — durably, before any success is
//! returned.
//!
//! Calls for one resource are serialised (so concurrent identical provisions make one plugin
//! call); calls for different resources run in parallel, and their key-value writes are
//! committed optimistically: a call whose reads were changed by another is run again.
//!
//! A request's storage work (lookups, the plugin call with its key-value reads, the commit
//! and the wait for its flush) runs in one [`blocking`] section that owns the request's
//! resource lock and call slot, so a dropped connection cannot release them half-way.

mod addon;
pub mod auth;
pub mod record;
mod request;
mod startup;
mod upgrade;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::clock;
use crate::error::ServiceError;
use crate::runtime::{
    Answer, CallFailure, ChangePlanRequest, DeprovisionRequest, Export, Plugin, ProviderError, Runtime, Slot,
};
use crate::storage::{KvQuota, Storage, StorageError};
use crate::versions::Registry;
pub use addon::Addon;
pub use record::{Record, Status};
pub use request::{Caller, ConfigRules, NoRules, Platform, Provision, Target};
pub use upgrade::{Uploaded, VersionInfo};

/// How many times a call is re-run when another call changed what it read.
const MAX_CONFLICT_RETRIES: usize = 16;
const LOCK_SHARDS: usize = 1024;

pub struct Service {
    addons: BTreeMap<String, Arc<Addon>>,
    storage: Storage,
    runtime: Arc<Runtime>,
    registry: Registry,
    admins: auth::AdminKeys,
    max_plugin_bytes: usize,
    /// Serialise calls per resource. Owned guards: the blocking task doing the work holds
    /// its lock until it is done, even when the HTTP request that started it is dropped.
    resource_locks: Vec<Arc<Mutex<()>>>,
    /// Serialise the resolution of a platform app identity to a resource (taken before, and
    /// never while holding, a resource lock).
    app_locks: Vec<Arc<Mutex<()>>>,
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
    pub fn addon(&self, id: &str) -> Result<Arc<Addon>, ServiceError> {
        self.addons.get(id).cloned().ok_or_else(|| ServiceError::UnknownAddon(id.to_owned()))
    }

    pub fn addons(&self) -> impl Iterator<Item = &Arc<Addon>> {
        self.addons.values()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn admins(&self) -> &auth::AdminKeys {
        &self.admins
    }

    pub fn max_plugin_bytes(&self) -> usize {
        self.max_plugin_bytes
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    async fn lock(&self, addon: &Addon, resource_id: &str) -> OwnedMutexGuard<()> {
        self.resource_locks[shard(&(addon.id(), resource_id))].clone().lock_owned().await
    }

    /// A call slot (the runtime only refuses one when shutting down: 503, retry).
    async fn slot(&self, addon: &Addon) -> Result<Slot, ServiceError> {
        self.runtime.slot().await.map_err(|_| ServiceError::Busy(addon.id().to_owned()))
    }

    /// Lock `resource_id`, take a call slot, and run `work` in one [`blocking`] section that
    /// holds both (and `app_guard`, when the resource was resolved from an app identity)
    /// until it is done, with the add-on's current plugin.
    async fn exclusive<T: Send + 'static>(
        &self,
        addon: &Arc<Addon>,
        resource_id: &str,
        app_guard: Option<OwnedMutexGuard<()>>,
        work: impl FnOnce(Call<'_>) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let guard = self.lock(addon, resource_id).await;
        let slot = self.slot(addon).await?;
        let (addon, runtime) = (addon.clone(), self.runtime.clone());
        blocking(move || {
            let _locks = (app_guard, guard);
            work(Call { runtime: &runtime, addon: &addon, plugin: addon.plugin(), slot: Some(slot) })
        })
        .await
    }

    /// A record, read on the blocking pool.
    pub async fn record(&self, addon: &Arc<Addon>, resource_id: &str) -> Result<Option<Record>, ServiceError> {
        let (addon, id) = (addon.clone(), resource_id.to_owned());
        blocking(move || addon.record(&id)).await
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
        addon.check_plan(&req.plan)?;
        let platform = caller.platform;
        let (resource_id, alias, app_guard) = match &req.target {
            Target::Resource(id) => (id.clone(), None, None),
            Target::App => {
                let alias_key = format!("{}/{}", platform.name(), req.app_id);
                let guard = self.app_locks[shard(&(addon.id(), &alias_key))].clone().lock_owned().await;
                let (a, key) = (addon.clone(), alias_key.clone());
                let (id, fresh) = blocking(move || {
                    Ok(match a.store.alias(&key)? {
                        Some(id) if a.record(&id)?.is_some_and(|r| r.is_active()) => (id, false),
                        _ => (new_resource_id(a.id())?, true),
                    })
                })
                .await?;
                let alias = fresh.then(|| (alias_key, id.clone()));
                (id, alias, Some(guard))
            }
        };
        let rules = caller.rules.clone();
        let id = resource_id.clone();
        self.exclusive(addon, &resource_id, app_guard, move |call| {
            let (addon, resource_id) = (call.addon, id);
            let existing = addon.record(&resource_id)?.filter(Record::is_active);
            let digest = record::request_digest(&req, platform, &resource_id);
            if let Some(record) = existing.as_ref().filter(|r| r.request_digest == digest) {
                return Ok(Provisioned { record: record.clone(), created: false });
            }
            let now = clock::now_ms();
            let created = existing.is_none();
            let created_ms = existing.as_ref().map_or(now, |r| r.created_ms);
            let version = call.plugin.sha256.clone();
            let alias = alias.as_ref().map(|(k, id)| (k.as_str(), id.as_str()));
            let export = Export::Provision(req.to_wit(platform, &resource_id));
            let record = call.run(export, alias, |answer| {
                check_config(addon, rules.as_ref(), "provision", &version, &answer.config)?;
                Ok(Record {
                    resource_id: resource_id.clone(),
                    platform: platform.name().to_owned(),
                    app_id: req.app_id.clone(),
                    plan: req.plan.clone(),
                    app_title: req.app_title.clone(),
                    request_digest: digest.clone(),
                    config: answer.config.clone(),
                    message: answer.message.clone(),
                    status: Status::Active,
                    plugin_version: version.clone(),
                    created_ms,
                    updated_ms: now,
                })
            })?;
            tracing::info!(addon = addon.id(), resource = %record.resource_id, plan = %record.plan, created, "provisioned");
            Ok(Provisioned { record, created })
        })
        .await
    }

    /// Move an active resource to another plan. The same plan again is a no-op success.
    pub async fn change_plan(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        resource_id: &str,
        plan: &str,
    ) -> Result<Record, ServiceError> {
        addon.check_plan(plan)?;
        let (id, plan, rules) = (resource_id.to_owned(), plan.to_owned(), caller.rules.clone());
        self.exclusive(addon, resource_id, None, move |call| {
            let (addon, resource_id) = (call.addon, id);
            let current = addon
                .record(&resource_id)?
                .filter(Record::is_active)
                .ok_or_else(|| ServiceError::NotFound(format!("no provisioned resource `{resource_id}`")))?;
            if current.plan == plan {
                return Ok(current);
            }
            let request = ChangePlanRequest {
                resource_id: resource_id.clone(),
                platform: Platform::from_name(&current.platform).to_wit(),
                app_id: current.app_id.clone(),
                previous_plan: current.plan.clone(),
                plan: plan.clone(),
            };
            let version = call.plugin.sha256.clone();
            let record = call.run(Export::ChangePlan(request), None, |answer| {
                let mut next = current.clone();
                next.plan = plan.clone();
                merge_config(&mut next.config, &answer.config);
                check_config(addon, rules.as_ref(), "change-plan", &version, &next.config)?;
                next.message = answer.message.clone().or(next.message);
                next.plugin_version = version.clone();
                next.updated_ms = clock::now_ms();
                Ok(next)
            })?;
            tracing::info!(addon = addon.id(), resource = resource_id, plan, "plan changed");
            Ok(record)
        })
        .await
    }

    /// Deprovision a resource. Only an active resource calls the plugin; repeats succeed
    /// without a call, so the operation is idempotent. The record is kept, marked
    /// deprovisioned, so the platform's later SSO or repeats can be told what happened.
    pub async fn deprovision(
        &self,
        addon: &Arc<Addon>,
        _caller: &Caller,
        resource_id: &str,
    ) -> Result<Deprovisioned, ServiceError> {
        let id = resource_id.to_owned();
        self.exclusive(addon, resource_id, None, move |call| {
            let (addon, resource_id) = (call.addon, id);
            let current = match addon.record(&resource_id)? {
                None => return Ok(Deprovisioned::Unknown),
                Some(r) if !r.is_active() => return Ok(Deprovisioned::AlreadyGone(r)),
                Some(r) => r,
            };
            let request = DeprovisionRequest {
                resource_id: resource_id.clone(),
                platform: Platform::from_name(&current.platform).to_wit(),
                app_id: current.app_id.clone(),
                plan: current.plan.clone(),
            };
            let version = call.plugin.sha256.clone();
            let gone = call.run(Export::Deprovision(request), None, |_| {
                let mut gone = current.clone();
                gone.status = Status::Deprovisioned;
                gone.plugin_version = version.clone();
                gone.updated_ms = clock::now_ms();
                Ok(gone)
            })?;
            tracing::info!(addon = addon.id(), resource = resource_id, "deprovisioned");
            Ok(Deprovisioned::Released(gone))
        })
        .await
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
        let ts = auth::verify_sso_token(subject, secret, timestamp, token, now)?;
        let (storage, scope, token) = (self.storage.clone(), scope.to_owned(), token.to_owned());
        let claimed =
            blocking(move || Ok(storage.claim_sso_token(&scope, ts, &token, now - 2 * auth::SSO_WINDOW_SECS)?)).await?;
        if !claimed {
            return Err(ServiceError::Forbidden("this SSO token was already used".into()));
        }
        Ok(())
    }
}

/// Run storage work (and the plugin calls that read storage) where blocking is allowed: sled
/// can block, and a runtime worker must never wait on it.
///
/// On a multi-thread runtime this is `block_in_place`: the request's thread stops being a
/// worker (its queued tasks move to another worker at once) and does the work itself, which
/// saves the two thread wake-ups of a hop to the blocking pool and back on every request. The
/// work cannot be abandoned half-way by a dropped request either: it runs inside one poll.
/// Elsewhere (a current-thread runtime, as in some tests) it goes to the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
        return tokio::task::block_in_place(work);
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| ServiceError::host("storage task failed", e))?
}

/// One plugin call and its commit, on a blocking thread.
struct Call<'a> {
    runtime: &'a Runtime,
    addon: &'a Addon,
    plugin: Arc<Plugin>,
    /// The call slot taken by the request; a conflict retry takes a new one.
    slot: Option<Slot>,
}

impl Call<'_> {
    /// Run the call and, if the plugin succeeds and `make_record` accepts its answer, commit
    /// its key-value writes together with that record (and alias), durably. Refusals and
    /// failures commit nothing. A call whose reads another call changed is run again.
    fn run(
        mut self,
        export: Export,
        alias: Option<(&str, &str)>,
        make_record: impl Fn(&Answer) -> Result<Record, ServiceError>,
    ) -> Result<Record, ServiceError> {
        let (addon, plugin) = (self.addon, self.plugin.clone());
        let call = export.name();
        let failed = |failure| ServiceError::CallFailed {
            addon: addon.id().to_owned(),
            call,
            version: plugin.version().to_owned(),
            failure,
        };
        let mut serial = None;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let slot = match self.slot.take() {
                Some(slot) => slot,
                None => self.runtime.slot_blocking().map_err(failed)?,
            };
            let completed =
                self.runtime.call_blocking(&slot, &plugin, addon.env.clone(), addon.store.begin(), export.clone());
            drop(slot);
            let completed = completed.map_err(failed)?;
            let answer = completed.result.map_err(|e| refusal(addon, call, &plugin, e))?;
            let record = make_record(&answer)?;
            let bytes = record.to_bytes();
            let limits = &addon.config.limits;
            let quota = KvQuota {
                max_bytes: limits.max_kv_bytes,
                max_keys: limits.max_kv_keys,
                max_call_bytes: limits.max_call_kv_bytes,
            };
            match addon.store.commit(&completed.kv, quota, Some((&record.resource_id, &bytes)), alias) {
                Ok(()) => return Ok(record),
                Err(StorageError::Conflict(key)) => {
                    tracing::debug!(addon = addon.id(), call, key, "key-value conflict; running the call again");
                    if serial.is_none() {
                        serial = Some(addon.retry_lock.blocking_lock());
                    }
                }
                Err(StorageError::Quota(message)) => return Err(failed(CallFailure::Quota(message))),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Busy(addon.id().to_owned()))
    }
}

fn shards() -> Vec<Arc<Mutex<()>>> {
    (0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect()
}

fn shard(key: &impl Hash) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LOCK_SHARDS
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
            ServiceError::PluginError { addon, call, version: plugin.version().to_owned(), message }
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
        Some(problem) => Err(ServiceError::CallFailed {
            addon: addon.id().to_owned(),
            call,
            version: version[..12.min(version.len())].to_owned(),
            failure: CallFailure::InvalidReply(problem),
        }),
    }
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
