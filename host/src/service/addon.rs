//! One hosted add-on as the service sees it: its configuration, its platform settings, the
//! plugin serving it now, and its data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::config::{AddonConfig, BitriseConfig};
use crate::error::ServiceError;
use crate::runtime::{AddonEnv, Plugin, Share};
use crate::storage::AddonStore;

use super::Record;

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
    /// Versions compiled in this process, by sha256, so a rollback is a pointer swap.
    pub(super) loaded: Mutex<HashMap<String, Arc<Plugin>>>,
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

    /// Install `plugin` for new calls; returns the one it replaces.
    pub(super) fn replace_plugin(&self, plugin: Arc<Plugin>) -> Arc<Plugin> {
        std::mem::replace(&mut *self.plugin.write().unwrap_or_else(PoisonError::into_inner), plugin)
    }

    pub(super) fn loaded(&self, sha256: &str) -> Option<Arc<Plugin>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(sha256).cloned()
    }

    pub(super) fn remember(&self, plugin: Arc<Plugin>) {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).insert(plugin.sha256.clone(), plugin);
    }

    /// Its share of the call slots now: (running, queued, share size), for operators.
    pub fn calls(&self) -> (usize, usize, usize) {
        (self.share.in_use(), self.share.waiting(), self.share.size())
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
