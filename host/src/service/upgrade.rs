//! Hot upgrades: upload, activate and roll back plugin versions while the add-on serves.
//!
//! A new version is validated and compiled on the blocking pool (never on a platform
//! request's path), stored with its history, and then swapped in with one pointer write:
//! calls that already took the old `Arc<Plugin>` finish on it, new calls get the new one.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Addon, Service, storage_work};
use crate::clock;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::runtime::Plugin;
use crate::versions::{Full, Quota, VersionMeta};

/// A version as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    #[serde(flatten)]
    pub meta: VersionMeta,
    pub active: bool,
}

/// What a deletion did.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub version: VersionMeta,
    /// Compiled artefacts of the version removed from this host's compile cache.
    pub freed_cache_bytes: u64,
}

/// The add-on's version quota.
fn quota(addon: &Addon) -> Quota {
    let deploys = &addon.config.deploys;
    Quota { versions: deploys.max_versions, bytes: deploys.max_stored_bytes() }
}

/// The 409 for an upload past the quota, naming the limit and the way out.
fn over_quota(id: &str, full: Full, size: u64) -> ServiceError {
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
    let why = match full {
        Full::Versions { limit } => {
            format!("add-on `{id}` already stores {limit} plugin versions, its limit ([addon.deploys] max_versions)")
        }
        Full::Bytes { stored, limit } => format!(
            "add-on `{id}`'s stored versions take {}; this one ({}) would pass its limit of {} ([addon.deploys] max_stored_mib)",
            mib(stored),
            mib(size),
            mib(limit)
        ),
    };
    ServiceError::DeployQuota(format!(
        "{why}; delete versions it no longer needs: addon-host plugin delete {id} VERSION"
    ))
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
    /// The contract's world the version implements (`plugin`, `worker` or `web`), and what
    /// it exports beyond the platform calls: `run-job` (jobs) and the HTTP handler (the
    /// add-on's pages and build API).
    pub world: &'static str,
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
        let account = addon.env.cpu.clone();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&bytes, Some(&account)))
            .await
            .map_err(|e| ServiceError::host("compilation task failed", e))?
            .map_err(|e| ServiceError::InvalidPlugin(format!("{e:#}")))?;
        let plugin = Arc::new(plugin);
        addon.remember(plugin.clone());
        Metrics::addon_histogram(&self.metrics.compile_seconds, addon.id(), started.elapsed());
        Ok((plugin, started.elapsed().as_millis() as u64))
    }

    /// Validate and store a new version; activate it unless asked not to. A new version
    /// must fit the add-on's `[addon.deploys]` quota, checked before it is compiled and again
    /// as it is stored; development reloads (`by` "watch") make room by deleting the oldest
    /// versions that are neither active nor the rollback target instead.
    pub async fn upload(
        &self,
        addon: &Addon,
        bytes: Vec<u8>,
        by: &str,
        activate: bool,
    ) -> Result<Uploaded, ServiceError> {
        self.storage.check_room()?;
        let sha = hex::encode(Sha256::digest(&bytes));
        self.make_room(addon, &sha, bytes.len() as u64, by == "watch").await?;
        let bytes = Arc::new(bytes);
        let (plugin, compile_ms) = self.compile(addon, bytes.clone()).await?;
        let (registry, storage, id, sha, by_owned) =
            (self.registry.clone(), self.storage.clone(), addon.id().to_owned(), plugin.sha256.clone(), by.to_owned());
        let quota = quota(addon);
        let (existing, version) = storage_work(move || {
            let existing = registry.get(&id, &sha)?;
            let version = match registry.put_within(&id, &sha, &bytes, &by_owned, clock::now_ms(), Some(quota))? {
                Ok(version) => version,
                Err(full) => return Err(over_quota(&id, full, bytes.len() as u64)),
            };
            storage.flush()?;
            if !activate {
                storage.announce(&super::shared::uploaded(&id, &sha))?;
            }
            Ok((existing, version))
        })
        .await?;
        tracing::info!(addon = addon.id(), version = version.seq, sha256 = %version.sha256, by, compile_ms, "plugin uploaded");
        let (compiler, world) = (plugin.compiler(), plugin.world());
        let (runs_jobs, serves_http) = (plugin.runs_jobs, plugin.serves_http);
        if activate {
            self.swap(addon, plugin, &version, compile_ms).await?;
        }
        let created = existing.is_none();
        Ok(Uploaded { version, created, activated: activate, compile_ms, compiler, world, runs_jobs, serves_http })
    }

    /// Refuse an upload of `size` bytes that the quota has no room for, before anything is
    /// compiled; with `evict`, delete the oldest spare versions until it fits.
    async fn make_room(&self, addon: &Addon, sha: &str, size: u64, evict: bool) -> Result<(), ServiceError> {
        let quota = quota(addon);
        let (registry, id) = (self.registry.clone(), addon.id().to_owned());
        let versions = storage_work(move || Ok(registry.versions(&id)?)).await?;
        if versions.iter().any(|v| v.sha256 == sha) {
            return Ok(());
        }
        let Some(mut full) = quota.refuses(&versions, size) else { return Ok(()) };
        if evict {
            let keep = self.kept_versions(addon);
            let mut stored = versions;
            while let Some(at) = stored.iter().position(|v| !keep.contains(&v.sha256)) {
                let oldest = stored.remove(at);
                self.delete_stored(addon, &oldest).await?;
                match quota.refuses(&stored, size) {
                    None => return Ok(()),
                    Some(still) => full = still,
                }
            }
        }
        Err(over_quota(addon.id(), full, size))
    }

    /// The active version and the rollback target: never deleted to make room.
    fn kept_versions(&self, addon: &Addon) -> Vec<String> {
        let replaced = addon.replaced.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        std::iter::once(addon.plugin().sha256.clone()).chain(replaced).collect()
    }

    /// Delete a stored version (by sequence number or sha256 prefix): its bytes, its compiled
    /// artefacts and its loaded build. The active version cannot be deleted.
    pub async fn delete_version(&self, addon: &Addon, version: &str) -> Result<Deleted, ServiceError> {
        let (registry, id, wanted) = (self.registry.clone(), addon.id().to_owned(), version.to_owned());
        let meta = storage_work(move || Ok(registry.resolve(&id, &wanted)?)).await?.ok_or_else(|| {
            ServiceError::NotFound(format!("add-on `{}` has no plugin version `{version}`", addon.id()))
        })?;
        if meta.sha256 == addon.plugin().sha256 {
            return Err(ServiceError::Conflict(format!(
                "version {} is the active one; activate another before deleting it",
                meta.seq
            )));
        }
        let freed_cache_bytes = self.delete_stored(addon, &meta).await?;
        Ok(Deleted { version: meta, freed_cache_bytes })
    }

    /// Delete `meta`'s version everywhere this host keeps it; the compile cache bytes freed.
    async fn delete_stored(&self, addon: &Addon, meta: &VersionMeta) -> Result<u64, ServiceError> {
        let (registry, storage, id, sha) =
            (self.registry.clone(), self.storage.clone(), addon.id().to_owned(), meta.sha256.clone());
        storage_work(move || {
            registry.delete(&id, &sha)?;
            Ok(storage.flush()?)
        })
        .await?;
        addon.forget(&meta.sha256);
        let freed = self.runtime.forget_compiled(&meta.sha256);
        tracing::info!(addon = addon.id(), version = meta.seq, sha256 = %meta.sha256, "plugin version deleted");
        Ok(freed)
    }

    /// Make a stored version (by sequence number or sha256 prefix) the active one.
    pub async fn activate(&self, addon: &Addon, version: &str) -> Result<VersionMeta, ServiceError> {
        let (registry, id, wanted) = (self.registry.clone(), addon.id().to_owned(), version.to_owned());
        let meta = storage_work(move || Ok(registry.resolve(&id, &wanted)?)).await?.ok_or_else(|| {
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
            storage_work(move || Ok(registry.previous(&id)?.and_then(|sha| registry.get(&id, &sha).ok().flatten())))
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
        let bytes = storage_work(move || Ok(registry.blob(&id, &wanted)?)).await?.ok_or_else(|| {
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
        storage_work(move || {
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
        Ok(storage_work(move || Ok(registry.versions(&id)?))
            .await?
            .into_iter()
            .map(|meta| VersionInfo { active: meta.sha256 == active, meta })
            .collect())
    }
}
