//! Bringing the service up: storage, engine, admin credentials, and each add-on with the
//! plugin version it should serve.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;
use sha2::Digest;

use super::{Addon, Service, auth};
use crate::clock;
use crate::config::{AddonConfig, HostConfig};

/// The config key under which a plugin finds its add-on's public base URL.
const PUBLIC_URL: &str = "public_url";
use crate::metrics::Metrics;
use crate::runtime::{AddonEnv, Plugin, Runtime};
use crate::storage::Storage;
use crate::versions::Registry;

impl Service {
    /// Open the data directory, build the engine and compile every add-on's plugin.
    pub fn start(cfg: &HostConfig) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&cfg.server.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.server.data_dir.display()))?;
        let storage = Storage::open_config(&cfg.server).with_context(|| match cfg.server.storage.postgres {
            Some(_) => "opening the PostgreSQL storage".to_owned(),
            None => format!("opening data dir {}", cfg.server.data_dir.display()),
        })?;
        let cache_key = storage.host_key(crate::runtime::CACHE_KEY)?;
        let runtime = Arc::new(Runtime::new(&cfg.server, cfg.max_memory_bytes(), cfg.uses_fuel(), Some(cache_key))?);
        let registry = Registry::open(&storage)?;
        let admins = auth::AdminKeys::load(&cfg.server.admins, &storage)?;
        let metrics = Arc::new(Metrics::new());
        let plugins = load_plugins(&runtime, &registry, &cfg.addons, &metrics)?;
        let mut addons = BTreeMap::new();
        for (addon, plugin) in cfg.addons.iter().zip(plugins) {
            let mut config = addon.config.clone();
            // The add-on's public base URL, unless its config sets `public_url` itself.
            if let Some(url) = cfg.public_url_of(&addon.id) {
                config.entry(PUBLIC_URL.to_owned()).or_insert(url);
            }
            let env = AddonEnv {
                id: addon.id.clone(),
                config,
                secrets: addon.secrets.clone(),
                limits: addon.limits.clone(),
                recent: Default::default(),
                origins: Arc::new(
                    crate::config::Origins::parse(&addon.allowed_outbound)
                        .map_err(anyhow::Error::msg)?
                        .stubbed(cfg.server.outbound_stub.clone()),
                ),
                cpu: crate::runtime::Account::new(addon.limits.cpu_weight),
            };
            let store = storage.addon(&addon.id)?;
            let entry = Addon {
                config: addon.clone(),
                env: Arc::new(env),
                plugin: RwLock::new(plugin.clone()),
                store,
                share: runtime.share(&addon.limits),
                retry_lock: tokio::sync::Mutex::new(()),
                loaded: std::sync::Mutex::new(super::loaded::Loaded::new(plugin)),
                replaced: std::sync::Mutex::new(None),
                swap_lock: tokio::sync::Mutex::new(()),
                deployers: auth::AdminKeys::fixed(&addon.deployers),
            };
            addons.insert(addon.id.clone(), Arc::new(entry));
        }
        storage.flush()?;
        // A config file seen for the first time is now the active version: hosts sharing
        // the storage look (a no-op on sled).
        for addon in &cfg.addons {
            storage.announce(&super::shared::activated(&addon.id))?;
        }
        let web_key = storage.host_key("web")?;
        let service = Service {
            addons,
            storage,
            runtime,
            registry,
            admins,
            server: cfg.server.clone(),
            metrics,
            resource_locks: Default::default(),
            app_locks: Default::default(),
            jobs: Default::default(),
            web_key,
        };
        let queued = service.queue_stored_jobs()?;
        if queued > 0 {
            tracing::info!(jobs = queued, "stored jobs queued");
        }
        let pages = service.addons().filter(|a| a.plugin().serves_http).count();
        if cfg.server.web_origin.is_none() && pages > 1 {
            tracing::warn!(
                "{pages} add-ons serve pages on this host's one origin, where a browser keeps nothing apart: \
                 set server.web_origin (e.g. \"https://{{addon}}.addons.example.com\") to give each its own"
            );
        }
        Ok(service)
    }
}

/// Load every add-on's plugin, in parallel on all cores (compiling, or from the compile
/// cache), logging progress. The first failure stops start-up, naming its add-on.
fn load_plugins(
    runtime: &Runtime,
    registry: &Registry,
    addons: &[AddonConfig],
    metrics: &Metrics,
) -> anyhow::Result<Vec<Arc<Plugin>>> {
    let started = Instant::now();
    let total = addons.len();
    let done = AtomicUsize::new(0);
    let step = (total / 10).max(1);
    let plugins = addons
        .par_iter()
        .map(|addon| {
            let t = Instant::now();
            let plugin =
                Arc::new(startup_plugin(runtime, registry, addon).with_context(|| format!("add-on `{}`", addon.id))?);
            tracing::debug!(
                addon = %addon.id,
                version = plugin.short_version(),
                bytes = plugin.size,
                from_cache = plugin.from_cache,
                compiler = plugin.compiler(),
                load_ms = t.elapsed().as_millis() as u64,
                "plugin loaded"
            );
            Metrics::addon_histogram(&metrics.compile_seconds, &addon.id, t.elapsed());
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(step) || n == total {
                tracing::info!("plugins loaded: {n} of {total} ({} ms)", started.elapsed().as_millis());
            }
            Ok(plugin)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cached = plugins.iter().filter(|p| p.from_cache).count();
    let baseline = plugins.iter().filter(|p| p.compiler() == "winch").count();
    tracing::info!(
        total,
        from_cache = cached,
        baseline,
        ms = started.elapsed().as_millis() as u64,
        threads = rayon::current_num_threads(),
        "all plugins loaded"
    );
    Ok(plugins)
}

/// The version to serve at start-up. The config's file is recorded as a version the first
/// time its content is seen, and activated (the operator changed the config). Otherwise the
/// version activated last — possibly through the admin API — keeps serving, loaded from the
/// stored bytes and the compile cache.
fn startup_plugin(runtime: &Runtime, registry: &Registry, addon: &AddonConfig) -> anyhow::Result<Plugin> {
    let read = || std::fs::read(&addon.plugin).with_context(|| format!("reading plugin {}", addon.plugin.display()));
    let file = read();
    if let Ok(bytes) = &file {
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        if registry.get(&addon.id, &sha)?.is_none() {
            let plugin = runtime.load(bytes, None).with_context(|| format!("plugin {}", addon.plugin.display()))?;
            registry.put(&addon.id, &sha, bytes, "config", clock::now_ms())?;
            registry.set_active(&addon.id, &sha)?;
            return Ok(plugin);
        }
    }
    let active = registry.active(&addon.id)?;
    let bytes = match active.as_ref().map(|sha| registry.blob(&addon.id, sha)).transpose()?.flatten() {
        Some(bytes) => bytes,
        None => {
            let bytes = file.or_else(|_| read())?;
            registry.set_active(&addon.id, &hex::encode(sha2::Sha256::digest(&bytes)))?;
            bytes
        }
    };
    runtime.load(&bytes, None).context("loading the active plugin version")
}
