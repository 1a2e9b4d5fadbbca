//! Hot upgrades: upload, activate and roll back plugin versions while the add-on serves.
//!
//! A new version is validated and compiled on the blocking pool (never on a platform
//! request's path), stored with its history, and then swapped in with one pointer write:
//! calls that already took the old `Arc<Plugin>` finish on it, new calls get the new one.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Addon, Service, blocking};
use crate::clock;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::runtime::Plugin;
use crate::versions::VersionMeta;

/// A version as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    #[serde(flatten)]
    pub meta: VersionMeta,
    pub active: bool,
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    pub version: VersionMeta,
    /// False when these exact bytes were uploaded before.
    pub created: bool,
    pub activated: bool,
    pub compile_ms: u64,
    /// The compiler whose build serves the version now: "winch" until Cranelift's build of a
    /// large plugin replaces it (see `server.compiler`).
    pub compiler: &'static str,
    /// What the version exports beyond the platform calls: `run-job` (jobs) and the HTTP
    /// handler (the add-on's pages and build API).
    pub runs_jobs: bool,
    pub serves_http: bool,
}

impl Service {
    /// Compile (or fetch from the cache) a plugin on the blocking pool.
    async fn compile(&self, addon: &Addon, bytes: Arc<Vec<u8>>) -> Result<(Arc<Plugin>, u64), ServiceError> {
        let sha = hex::encode(Sha256::digest(bytes.as_slice()));
        if let Some(plugin) = addon.loaded(&sha) {
            return Ok((plugin, 0));
        }
        let runtime = self.runtime.clone();
        let started = Instant::now();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&bytes))
            .await
            .map_err(|e| ServiceError::host("compilation task failed", e))?
            .map_err(|e| ServiceError::InvalidPlugin(format!("{e:#}")))?;
        let plugin = Arc::new(plugin);
        addon.remember(plugin.clone());
        Metrics::addon_histogram(&self.metrics.compile_seconds, addon.id(), started.elapsed());
        Ok((plugin, started.elapsed().as_millis() as u64))
    }

    /// Validate and store a new version; activate it unless asked not to.
    pub async fn upload(
        &self,
        addon: &Addon,
        bytes: Vec<u8>,
        by: &str,
        activate: bool,
    ) -> Result<Uploaded, ServiceError> {
        let bytes = Arc::new(bytes);
        let (plugin, compile_ms) = self.compile(addon, bytes.clone()).await?;
        let (registry, storage, id, sha, by_owned) =
            (self.registry.clone(), self.storage.clone(), addon.id().to_owned(), plugin.sha256.clone(), by.to_owned());
        let (existing, version) = blocking(move || {
            let existing = registry.get(&id, &sha)?;
            let version = registry.put(&id, &sha, &bytes, &by_owned, clock::now_ms())?;
            storage.flush()?;
            if !activate {
                storage.announce(&super::shared::uploaded(&id, &sha))?;
            }
            Ok((existing, version))
        })
        .await?;
        tracing::info!(addon = addon.id(), version = version.seq, sha256 = %version.sha256, by, compile_ms, "plugin uploaded");
        let (compiler, runs_jobs, serves_http) = (plugin.compiler(), plugin.runs_jobs, plugin.serves_http);
        if activate {
            self.swap(addon, plugin, &version, compile_ms).await?;
        }
        let created = existing.is_none();
        Ok(Uploaded { version, created, activated: activate, compile_ms, compiler, runs_jobs, serves_http })
    }

    /// Make a stored version (by sequence number or sha256 prefix) the active one.
    pub async fn activate(&self, addon: &Addon, version: &str) -> Result<VersionMeta, ServiceError> {
        let (registry, id, wanted) = (self.registry.clone(), addon.id().to_owned(), version.to_owned());
        let meta = blocking(move || Ok(registry.resolve(&id, &wanted)?)).await?.ok_or_else(|| {
            ServiceError::NotFound(format!("add-on `{}` has no plugin version `{version}`", addon.id()))
        })?;
        self.activate_meta(addon, meta).await
    }

    /// Go back to `version`, or to the version active before the current one.
    pub async fn rollback(&self, addon: &Addon, version: Option<&str>) -> Result<VersionMeta, ServiceError> {
        if let Some(v) = version {
            return self.activate(addon, v).await;
        }
        let (registry, id) = (self.registry.clone(), addon.id().to_owned());
        let previous =
            blocking(move || Ok(registry.previous(&id)?.and_then(|sha| registry.get(&id, &sha).ok().flatten())))
                .await?
                .ok_or_else(|| {
                    ServiceError::NotFound(format!("add-on `{}` has no earlier version to roll back to", addon.id()))
                })?;
        self.activate_meta(addon, previous).await
    }

    async fn activate_meta(&self, addon: &Addon, meta: VersionMeta) -> Result<VersionMeta, ServiceError> {
        let (plugin, compile_ms) = self.prepare(addon, &meta.sha256).await?;
        self.swap(addon, plugin, &meta, compile_ms).await?;
        Ok(meta)
    }

    /// The plugin of a stored version: the one this process loaded already (no reading and
    /// hashing of its bytes), or its stored bytes compiled (or from the compile cache).
    pub(super) async fn prepare(&self, addon: &Addon, sha: &str) -> Result<(Arc<Plugin>, u64), ServiceError> {
        if let Some(plugin) = addon.loaded(sha) {
            return Ok((plugin, 0));
        }
        let (registry, id, wanted) = (self.registry.clone(), addon.id().to_owned(), sha.to_owned());
        let bytes = blocking(move || Ok(registry.blob(&id, &wanted)?)).await?.ok_or_else(|| {
            ServiceError::host("reading a stored plugin", anyhow::anyhow!("the bytes of version {sha} are missing"))
        })?;
        self.compile(addon, Arc::new(bytes)).await
    }

    /// The atomic swap, recorded durably.
    async fn swap(
        &self,
        addon: &Addon,
        plugin: Arc<Plugin>,
        meta: &VersionMeta,
        compile_ms: u64,
    ) -> Result<(), ServiceError> {
        let _serial = addon.swap_lock.lock().await;
        Metrics::addon_counter(&self.metrics.swaps, addon.id());
        let (registry, storage, id, sha) =
            (self.registry.clone(), self.storage.clone(), addon.id().to_owned(), meta.sha256.clone());
        blocking(move || {
            registry.set_active(&id, &sha)?;
            storage.flush()?;
            // Hosts sharing the storage serve it too (see `shared`).
            Ok(storage.announce(&super::shared::activated(&id))?)
        })
        .await?;
        let plugin_compiler = plugin.compiler();
        let from = addon.replace_plugin(plugin);
        tracing::info!(
            addon = addon.id(),
            from = &from.sha256[..12],
            to = &meta.sha256[..12],
            version = meta.seq,
            compile_ms,
            compiler = plugin_compiler,
            "plugin swapped"
        );
        Ok(())
    }

    /// Every stored version of an add-on, oldest first.
    pub async fn versions(&self, addon: &Addon) -> Result<Vec<VersionInfo>, ServiceError> {
        let active = addon.plugin().sha256.clone();
        let (registry, id) = (self.registry.clone(), addon.id().to_owned());
        Ok(blocking(move || Ok(registry.versions(&id)?))
            .await?
            .into_iter()
            .map(|meta| VersionInfo { active: meta.sha256 == active, meta })
            .collect())
    }
}
