//! The one service layer both protocols share: it finds the add-on, checks credentials,
//! deduplicates provisions, runs the plugin under its limits, and commits the plugin's
//! key-value writes together with the provision record — durably, before any success is
//! returned.
//!
//! Calls for one resource are serialised (so concurrent identical provisions make one plugin
//! call); calls for different resources run in parallel, and their key-value writes are
//! committed optimistically: a call whose reads were changed by another is run again.

mod addon;
pub mod auth;
mod policy;
pub mod record;
mod upgrade;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use sha2::Digest;
use std::sync::{Arc, RwLock};

use anyhow::Context;

use crate::config::HostConfig;
use crate::error::ServiceError;
use crate::runtime::{
    AddonEnv, Answer, CallFailure, ChangePlanRequest, DeprovisionRequest, Export, Platform, Plugin, ProviderError,
    ProvisionRequest, Runtime,
};
use crate::storage::{KvQuota, Storage, StorageError};
use crate::versions::Registry;
use crate::xervo::manifest::XervoSettings;
pub use addon::Addon;
pub use record::{Record, Status};
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
    /// Serialise calls per resource.
    resource_locks: Vec<tokio::sync::Mutex<()>>,
    /// Serialise the resolution of a platform app identity to a resource (taken before, and
    /// never while holding, a resource lock).
    app_locks: Vec<tokio::sync::Mutex<()>>,
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
    /// Open the data directory, build the engine and compile every add-on's plugin.
    pub fn start(cfg: &HostConfig) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&cfg.server.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.server.data_dir.display()))?;
        let storage = Storage::open(&cfg.server.data_dir)
            .with_context(|| format!("opening data dir {}", cfg.server.data_dir.display()))?;
        let runtime = Arc::new(Runtime::new(&cfg.server, cfg.max_memory_bytes(), cfg.uses_fuel())?);
        let registry = Registry::open(&storage)?;
        let admins = auth::AdminKeys::load(&cfg.server.admins, &storage)?;
        let mut addons = BTreeMap::new();
        for addon in &cfg.addons {
            let started = std::time::Instant::now();
            let plugin =
                Arc::new(startup_plugin(&runtime, &registry, addon).with_context(|| format!("add-on `{}`", addon.id))?);
            tracing::info!(
                addon = %addon.id,
                version = plugin.version(),
                bytes = plugin.size,
                from_cache = plugin.from_cache,
                load_ms = started.elapsed().as_millis() as u64,
                "plugin loaded"
            );
            let env = AddonEnv {
                id: addon.id.clone(),
                config: addon.config.clone(),
                secrets: addon.secrets.clone(),
                limits: addon.limits.clone(),
            };
            let xervo = match &addon.xervo {
                Some(x) => {
                    Some(XervoSettings::resolve(&addon.id, x).with_context(|| format!("add-on `{}`", addon.id))?)
                }
                None => None,
            };
            let store = storage.addon(&addon.id)?;
            let entry = Addon {
                config: addon.clone(),
                xervo,
                env: Arc::new(env),
                plugin: RwLock::new(plugin.clone()),
                store,
                retry_lock: tokio::sync::Mutex::new(()),
                loaded: std::sync::Mutex::new([(plugin.sha256.clone(), plugin)].into_iter().collect()),
                swap_lock: tokio::sync::Mutex::new(()),
            };
            addons.insert(addon.id.clone(), Arc::new(entry));
        }
        storage.flush_sync()?;
        Ok(Service {
            addons,
            storage,
            runtime,
            registry,
            admins,
            max_plugin_bytes: cfg.server.max_plugin_bytes,
            resource_locks: shards(),
            app_locks: shards(),
        })
    }

    pub fn addon(&self, id: &str) -> Result<Arc<Addon>, ServiceError> {
        self.addons
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownAddon(id.to_owned()))
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

    async fn lock(&self, addon: &Addon, resource_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.resource_locks[shard(&(addon.id(), resource_id))].lock().await
    }

    /// Provision a resource. An identical repeat replays the stored reply without calling the
    /// plugin; a different request for an active resource re-provisions it (the plugin is
    /// called again and its new reply stored), as Bitrise's "create or update" asks.
    ///
    /// An empty `req.resource_id` asks the host to choose: the active resource already
    /// provisioned for the same platform app identity, or a fresh id.
    pub async fn provision(&self, addon: &Addon, mut req: ProvisionRequest) -> Result<Provisioned, ServiceError> {
        addon.check_plan(&req.plan)?;
        let platform = record::platform_name(req.platform);
        let alias_key = format!("{platform}/{}", req.app_id);
        let mut alias = None;
        let _app_guard = if req.resource_id.is_empty() {
            let guard = self.app_locks[shard(&(addon.id(), &alias_key))].lock().await;
            req.resource_id = match addon.store.alias(&alias_key)? {
                Some(id) if addon.record(&id)?.is_some_and(|r| r.is_active()) => id,
                _ => {
                    let id = new_resource_id(addon.id())?;
                    alias = Some((alias_key.as_str(), id.clone()));
                    id
                }
            };
            Some(guard)
        } else {
            None
        };
        let _guard = self.lock(addon, &req.resource_id).await;
        let existing = addon.record(&req.resource_id)?.filter(Record::is_active);
        let digest = record::request_digest(&req);
        if let Some(record) = existing.as_ref().filter(|r| r.request_digest == digest) {
            return Ok(Provisioned {
                record: record.clone(),
                created: false,
            });
        }
        let now = record::now_ms();
        let created = existing.is_none();
        let created_ms = existing.as_ref().map_or(now, |r| r.created_ms);
        let plugin = addon.plugin();
        let version = plugin.sha256.clone();
        let alias = alias.as_ref().map(|(k, id)| (*k, id.as_str()));
        let record = self
            .run(addon, plugin, Export::Provision(req.clone()), alias, |answer| {
                policy::check_config(addon, req.platform, "provision", &version, &answer.config)?;
                Ok(Record {
                    resource_id: req.resource_id.clone(),
                    platform: platform.to_owned(),
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
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = %record.resource_id, plan = %record.plan, created, "provisioned");
        Ok(Provisioned { record, created })
    }

    /// Move an active resource to another plan. The same plan again is a no-op success.
    pub async fn change_plan(&self, addon: &Addon, resource_id: &str, plan: &str) -> Result<Record, ServiceError> {
        addon.check_plan(plan)?;
        let _guard = self.lock(addon, resource_id).await;
        let current = addon
            .record(resource_id)?
            .filter(Record::is_active)
            .ok_or_else(|| ServiceError::NotFound(format!("no provisioned resource `{resource_id}`")))?;
        if current.plan == plan {
            return Ok(current);
        }
        let platform = platform_of(&current);
        let request = ChangePlanRequest {
            resource_id: resource_id.to_owned(),
            platform,
            app_id: current.app_id.clone(),
            previous_plan: current.plan.clone(),
            plan: plan.to_owned(),
        };
        let plugin = addon.plugin();
        let version = plugin.sha256.clone();
        let record = self
            .run(addon, plugin, Export::ChangePlan(request), None, |answer| {
                let mut next = current.clone();
                next.plan = plan.to_owned();
                merge_config(&mut next.config, &answer.config);
                policy::check_config(addon, platform, "change-plan", &version, &next.config)?;
                next.message = answer.message.clone().or(next.message);
                next.plugin_version = version.clone();
                next.updated_ms = record::now_ms();
                Ok(next)
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = resource_id, plan, "plan changed");
        Ok(record)
    }

    /// Deprovision a resource. Only an active resource calls the plugin; repeats succeed
    /// without a call, so the operation is idempotent. The record is kept, marked
    /// deprovisioned, so the platform's later SSO or repeats can be told what happened.
    pub async fn deprovision(&self, addon: &Addon, resource_id: &str) -> Result<Deprovisioned, ServiceError> {
        let _guard = self.lock(addon, resource_id).await;
        let current = match addon.record(resource_id)? {
            None => return Ok(Deprovisioned::Unknown),
            Some(r) if !r.is_active() => return Ok(Deprovisioned::AlreadyGone(r)),
            Some(r) => r,
        };
        let request = DeprovisionRequest {
            resource_id: resource_id.to_owned(),
            platform: platform_of(&current),
            app_id: current.app_id.clone(),
            plan: current.plan.clone(),
        };
        let plugin = addon.plugin();
        let version = plugin.sha256.clone();
        let gone = self
            .run(addon, plugin, Export::Deprovision(request), None, |_| {
                let mut gone = current.clone();
                gone.status = Status::Deprovisioned;
                gone.plugin_version = version.clone();
                gone.updated_ms = record::now_ms();
                Ok(gone)
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = resource_id, "deprovisioned");
        Ok(Deprovisioned::Released(gone))
    }

    /// Check and consume an SSO token: valid signature, fresh, and never used before.
    pub fn verify_sso(
        &self,
        scope: &str,
        subject: &str,
        secret: &str,
        timestamp: &str,
        token: &str,
    ) -> Result<(), ServiceError> {
        let now = auth::unix_now();
        let ts = auth::verify_sso_token(subject, secret, timestamp, token, now)?;
        if !self
            .storage
            .claim_sso_token(scope, ts, token, now - 2 * auth::SSO_WINDOW_SECS)?
        {
            return Err(ServiceError::Forbidden("this SSO token was already used".into()));
        }
        Ok(())
    }

    /// Run one plugin call and, if the plugin succeeds and `make_record` accepts its answer,
    /// commit its key-value writes together with that record (and alias), then flush.
    /// Refusals and failures commit nothing.
    async fn run(
        &self,
        addon: &Addon,
        plugin: Arc<Plugin>,
        export: Export,
        alias: Option<(&str, &str)>,
        make_record: impl Fn(&Answer) -> Result<Record, ServiceError>,
    ) -> Result<Record, ServiceError> {
        let call = export.name();
        let mut serial: Option<tokio::sync::MutexGuard<'_, ()>> = None;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let completed = self
                .runtime
                .call(plugin.clone(), addon.env.clone(), addon.store.begin(), export.clone())
                .await
                .map_err(|failure| ServiceError::CallFailed {
                    addon: addon.id().to_owned(),
                    call,
                    version: plugin.version().to_owned(),
                    failure,
                })?;
            let answer = completed.result.map_err(|e| refusal(addon, call, &plugin, e))?;
            let record = make_record(&answer)?;
            let bytes = record.to_bytes();
            let limits = &addon.config.limits;
            let quota = KvQuota {
                max_bytes: limits.max_kv_bytes,
                max_keys: limits.max_kv_keys,
            };
            match addon
                .store
                .commit(&completed.kv, quota, Some((&record.resource_id, &bytes)), alias)
            {
                Ok(()) => {
                    self.storage.flush().await?;
                    return Ok(record);
                }
                Err(StorageError::Conflict(key)) => {
                    tracing::debug!(
                        addon = addon.id(),
                        call,
                        key,
                        "key-value conflict; running the call again"
                    );
                    if serial.is_none() {
                        serial = Some(addon.retry_lock.lock().await);
                    }
                }
                Err(StorageError::Quota(message)) => {
                    return Err(ServiceError::CallFailed {
                        addon: addon.id().to_owned(),
                        call,
                        version: plugin.version().to_owned(),
                        failure: CallFailure::Quota(message),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Busy(addon.id().to_owned()))
    }
}

/// The version to serve at start-up. The config's file is recorded as a version the first
/// time its content is seen, and activated (the operator changed the config). Otherwise the
/// version activated last — possibly through the admin API — keeps serving, loaded from the
/// stored bytes and the compile cache.
fn startup_plugin(
    runtime: &Runtime,
    registry: &Registry,
    addon: &crate::config::AddonConfig,
) -> anyhow::Result<Plugin> {
    let read = || std::fs::read(&addon.plugin).with_context(|| format!("reading plugin {}", addon.plugin.display()));
    let file = read();
    if let Ok(bytes) = &file {
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        if registry.get(&addon.id, &sha)?.is_none() {
            let plugin = runtime
                .load(bytes)
                .with_context(|| format!("plugin {}", addon.plugin.display()))?;
            registry.put(&addon.id, &sha, bytes, "config", record::now_ms())?;
            registry.set_active(&addon.id, &sha)?;
            return Ok(plugin);
        }
    }
    let active = registry.active(&addon.id)?;
    let bytes = match active
        .as_ref()
        .map(|sha| registry.blob(&addon.id, sha))
        .transpose()?
        .flatten()
    {
        Some(bytes) => bytes,
        None => {
            let bytes = file.or_else(|_| read())?;
            registry.set_active(&addon.id, &hex::encode(sha2::Sha256::digest(&bytes)))?;
            bytes
        }
    };
    runtime.load(&bytes).context("loading the active plugin version")
}

fn shards() -> Vec<tokio::sync::Mutex<()>> {
    (0..LOCK_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect()
}

fn shard(key: &impl Hash) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LOCK_SHARDS
}

/// A fresh resource id: URL-safe, starting with a letter, unguessable.
fn new_resource_id(addon_id: &str) -> Result<String, ServiceError> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(|e| ServiceError::Storage(format!("no randomness for an id: {e}")))?;
    Ok(format!("{addon_id}-{}", hex::encode(bytes)))
}

fn refusal(addon: &Addon, call: &'static str, plugin: &Plugin, e: ProviderError) -> ServiceError {
    let addon = addon.id().to_owned();
    match e {
        ProviderError::InvalidRequest(message) => ServiceError::Refused { addon, call, message },
        ProviderError::Unavailable(u) => ServiceError::Unavailable {
            addon,
            call,
            message: u.message,
            docs_url: u.docs_url,
        },
        ProviderError::Internal(message) => ServiceError::PluginError {
            addon,
            call,
            version: plugin.version().to_owned(),
            message,
        },
    }
}

fn platform_of(record: &Record) -> Platform {
    match record.platform.as_str() {
        "xervo" => Platform::Xervo,
        _ => Platform::Bitrise,
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
