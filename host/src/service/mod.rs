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
//! always finishes: it runs inside one poll ([`storage_work`]).
//!
//! Here: the service and what it holds. The platform operations are in `provision.rs`, the
//! call/commit/retry engine under them in `call.rs`.

mod addon;
pub mod auth;
mod call;
mod jobs;
mod loaded;
mod locks;
mod provision;
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

use crate::clock;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::storage::{Storage, StorageError};
use crate::versions::Registry;
pub use addon::Addon;
use call::stored;
pub(crate) use call::{commit, storage_work};
pub use provision::{Deprovisioned, Provisioned};
pub use record::{Record, Status};
pub use request::{Budget, Caller, ConfigRules, NoRules, Platform, Provision, Target, check_resource_id};
pub use shared::follow;
pub use upgrade::{Deleted, Uploaded, VersionInfo};

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
