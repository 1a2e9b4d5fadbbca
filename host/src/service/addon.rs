//! One hosted add-on as the service sees it: its configuration, its platform settings, the
//! plugin serving it now, and its data.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::config::{AddonConfig, BitriseConfig};
use crate::error::ServiceError;
use crate::runtime::{AddonEnv, Plugin, Share};
use crate::storage::AddonStore;

use super::Record;
use super::loaded::Loaded;

pub struct Addon {
    pub config: AddonConfig,
    pub(super) env: Arc<AddonEnv>,
    pub(super) plugin: RwLock<Arc<Plugin>>,
    pub(super) store: AddonStore,
    /// Its share of the host's plugin call slots.
    pub(super) share: Share,
    /// Held by calls re-run after a key-value conflict, so that retries make progress one at
    /// a time instead of colliding again.
    pub(super) retry_lock: tokio::sync::Mutex<()>,
    /// Versions compiled in this process, so a rollback is a pointer swap: the active one,
    /// the rollback target and the most recently used few (`[addon.deploys]`).
    pub(super) loaded: Mutex<Loaded>,
    /// The version the last swap replaced: the rollback target, kept loaded.
    pub(super) replaced: Mutex<Option<String>>,
    /// Serialises activations, so the recorded and the serving version never disagree.
    pub(super) swap_lock: tokio::sync::Mutex<()>,
    /// Its deploy tokens (hashed): plugin versions of this add-on only.
    pub(super) deployers: super::auth::AdminKeys,
}

impl Addon {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The plugin serving new calls.
    pub fn plugin(&self) -> Arc<Plugin> {
        self.plugin.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Install `plugin` for new calls; returns the one it replaces, which becomes the
    /// rollback target. Loaded versions beyond those and the most recent few are dropped.
    pub(super) fn replace_plugin(&self, plugin: Arc<Plugin>) -> Arc<Plugin> {
        let active = plugin.sha256.clone();
        let from = std::mem::replace(&mut *self.plugin.write().unwrap_or_else(PoisonError::into_inner), plugin);
        *self.replaced.lock().unwrap_or_else(PoisonError::into_inner) = Some(from.sha256.clone());
        let keep = [active.as_str(), from.sha256.as_str()];
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).trim(&keep, self.config.deploys.max_loaded_extra);
        from
    }

    pub(super) fn loaded(&self, sha256: &str) -> Option<Arc<Plugin>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(sha256)
    }

    /// Keep `plugin` loaded (the most recently used), dropping the least recently used
    /// versions beyond the active one, the rollback target and `max_loaded_extra`.
    pub(super) fn remember(&self, plugin: Arc<Plugin>) {
        let active = self.plugin().sha256.clone();
        let replaced = self.replaced.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
        let new = plugin.sha256.clone();
        let keep = [active.as_str(), replaced.as_str(), new.as_str()];
        let extra = self.config.deploys.max_loaded_extra;
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).put(plugin, &keep, extra);
    }

    /// Forget a deleted version.
    pub(super) fn forget(&self, sha256: &str) {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).forget(sha256);
    }

    /// How many versions are loaded (compiled, in memory), for operators.
    pub fn loaded_versions(&self) -> usize {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Its share of the call slots now: (running, queued, share size), for operators.
    pub fn calls(&self) -> (usize, usize, usize) {
        (self.share.in_use(), self.share.waiting(), self.share.size())
    }

    /// The CPU its calls and compiles have used since the host started.
    pub fn cpu(&self) -> crate::runtime::CpuTotals {
        self.env.cpu.totals()
    }

    /// Its plugin's recent log lines after `seq`, and the sequence number to ask from next.
    pub fn recent_logs(&self, seq: u64) -> (Vec<crate::runtime::recent::LogLine>, u64) {
        self.env.recent.since(seq)
    }

    /// The deployer a token belongs to, compared in constant time.
    pub fn deployer(&self, token: &str) -> Option<&str> {
        self.deployers.identify(token)
    }

    pub fn store(&self) -> &AddonStore {
        &self.store
    }

    /// Bitrise settings, or a 404 when the add-on is not offered on Bitrise.
    pub fn bitrise(&self) -> Result<&BitriseConfig, ServiceError> {
        self.config.bitrise.as_ref().ok_or_else(|| self.not_offered("Bitrise"))
    }

    /// The 404 for a protocol the add-on is not offered on.
    pub fn not_offered(&self, protocol: &'static str) -> ServiceError {
        ServiceError::ProtocolNotEnabled { addon: self.config.id.clone(), protocol }
    }

    pub fn record(&self, resource_id: &str) -> Result<Option<Record>, ServiceError> {
        match self.store.record(resource_id)? {
            None => Ok(None),
            Some(bytes) => Record::from_bytes(&bytes)
                .map(Some)
                .map_err(|source| ServiceError::Corrupt { what: format!("record `{resource_id}`"), source }),
        }
    }

    pub(super) fn check_plan(&self, plan: &str) -> Result<(), ServiceError> {
        let plans = &self.config.plans;
        if plan.trim().is_empty() {
            return Err(ServiceError::BadRequest("`plan` must not be empty".into()));
        }
        if !plans.is_empty() && !plans.iter().any(|p| p == plan) {
            return Err(ServiceError::UnknownPlan { plan: plan.to_owned(), allowed: plans.clone() });
        }
        Ok(())
    }
}
