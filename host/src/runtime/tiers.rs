//! Tiered compilation. Cranelift makes fast code slowly: a 12 MB JavaScript or an 18 MB
//! Python component takes 5–10 s on two cores, so an upload (or a cold start) would not
//! serve for that long. Winch, wasmtime's baseline compiler, makes slower code four to five
//! times faster. So a large plugin that the compile cache does not already hold is served
//! first from its Winch build while the [`Optimizer`] compiles it with Cranelift in the
//! background and swaps that build in between two calls; a call keeps the build it started
//! on. Both builds land in the compile cache, so the next start serves optimised code at once.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, RwLock, Weak};
use std::time::Instant;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use wasmtime_wasi_http::p2::bindings::exports::wasi::http::incoming_handler::GuestIndices;

use super::bindings::{PluginIndices, PluginPre};
use super::cache::CompileCache;
use super::short_version;
use super::state::{self, CallState};

/// One compiler's engine and the linker of the host's imports for it.
pub(super) struct Tier {
    pub(super) engine: Engine,
    linker: Linker<CallState>,
    /// "cranelift" or "winch", for the status endpoint and logs.
    name: &'static str,
}

/// Why a plugin could not be loaded: its bytes do not compile, or the compiled component
/// does not fit the `plugin` world (which no other compiler changes).
pub(super) enum LoadError {
    Compile(anyhow::Error),
    Link(anyhow::Error),
}

impl LoadError {
    pub(super) fn into_inner(self) -> anyhow::Error {
        match self {
            LoadError::Compile(e) | LoadError::Link(e) => e,
        }
    }
}

/// A plugin compiled by one tier, linked and ready to instantiate in that tier's engine.
pub(super) struct Compiled {
    pub(super) engine: Engine,
    pub(super) pre: PluginPre<CallState>,
    /// The platform exports' indices, to call them in an instance made beforehand.
    pub(super) indices: PluginIndices,
    pub(super) compiler: &'static str,
    /// Whether the component exports `run-job`.
    pub(super) runs_jobs: bool,
    /// The HTTP handler's export, when the component has one (the `web` world).
    pub(super) web: Option<GuestIndices>,
    /// Set when its start function uses per-call imports: it gets no spare instances.
    pub(super) no_spares: AtomicBool,
}

/// The build a plugin's calls run on now: replaced once, when Cranelift's build arrives.
pub(super) type Current = Arc<RwLock<Arc<Compiled>>>;

/// The build in `current`, also when a panicking writer poisoned the lock (the value is a
/// whole `Arc` either way).
pub(super) fn read(current: &Current) -> Arc<Compiled> {
    current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
}

impl Tier {
    pub(super) fn new(engine: Engine, name: &'static str) -> anyhow::Result<Tier> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        state::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Ok(Tier { engine, linker, name })
    }

    /// Whether this tier's build of the plugin is in the cache.
    pub(super) fn cached(&self, cache: Option<&CompileCache>, sha256: &str) -> bool {
        cache.is_some_and(|c| c.holds(&self.engine, sha256))
    }

    /// Compile (or load from the cache) and link; the flag says whether it came from the
    /// cache. A fresh build is cached only once it has linked as a plugin.
    pub(super) fn load(
        &self,
        cache: Option<&CompileCache>,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Arc<Compiled>, bool), LoadError> {
        let (component, from_cache) = match cache.and_then(|c| c.load(&self.engine, sha256)) {
            Some(component) => (component, true),
            None => (
                Component::new(&self.engine, bytes)
                    .map_err(|e| LoadError::Compile(anyhow::anyhow!("not a valid component: {e:#}")))?,
                false,
            ),
        };
        let compiled = self.link(&component)?;
        if let Some(cache) = cache.filter(|_| !from_cache) {
            cache.store(&self.engine, sha256, &component);
        }
        Ok((compiled, from_cache))
    }

    /// Link a component as a plugin: it must implement the contract's worlds.
    fn link(&self, component: &Component) -> Result<Arc<Compiled>, LoadError> {
        let instance_pre = self.linker.instantiate_pre(component).map_err(|e| {
            LoadError::Link(anyhow::anyhow!("the component cannot be linked as an addon:provider plugin: {e:#}"))
        })?;
        let web = super::web::indices(&instance_pre);
        let pre = PluginPre::new(instance_pre).map_err(|e| {
            LoadError::Link(anyhow::anyhow!("the component does not export the addon:provider/plugin world: {e:#}"))
        })?;
        let indices = PluginIndices::new(pre.instance_pre()).map_err(|e| LoadError::Link(anyhow::anyhow!("{e:#}")))?;
        let runs_jobs = component.get_export_index(None, "run-job").is_some();
        let engine = self.engine.clone();
        let no_spares = AtomicBool::new(false);
        Ok(Arc::new(Compiled { engine, pre, indices, compiler: self.name, runs_jobs, web, no_spares }))
    }
}

/// A plugin served from baseline code, waiting for its optimised build.
struct Job {
    bytes: Vec<u8>,
    sha256: String,
    /// Weak: a version nobody serves or keeps loaded any more is not compiled.
    current: Weak<RwLock<Arc<Compiled>>>,
    /// The add-on that uploaded it, charged for the compile.
    account: Option<Arc<super::account::Account>>,
}

/// The background thread that compiles baseline-served plugins with Cranelift, one at a
/// time (Cranelift already compiles a component's functions in parallel, here on the lowest
/// priority pool, see [`super::compile`]), and swaps each build in. It stops when the runtime, and with it the sender, is dropped.
pub(super) struct Optimizer {
    jobs: mpsc::Sender<Job>,
}

impl Optimizer {
    pub(super) fn start(
        tier: Arc<Tier>,
        cache: Option<Arc<CompileCache>>,
        pool: super::compile::Pool,
    ) -> anyhow::Result<Optimizer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("optimizer".into()).spawn(move || {
            while let Ok(job) = queue.recv() {
                if job.current.strong_count() == 0 {
                    continue;
                }
                let account = job.account.clone();
                pool.run(account.as_deref(), || optimize(&tier, cache.as_deref(), job));
            }
        })?;
        Ok(Optimizer { jobs })
    }

    pub(super) fn queue(
        &self,
        bytes: &[u8],
        sha256: &str,
        current: &Current,
        account: Option<Arc<super::account::Account>>,
    ) {
        let current = Arc::downgrade(current);
        let job = Job { bytes: bytes.to_vec(), sha256: sha256.to_owned(), current, account };
        if self.jobs.send(job).is_err() {
            tracing::warn!(
                version = short_version(sha256),
                "the optimizer has stopped; the plugin stays on baseline code"
            );
        }
    }
}

fn optimize(tier: &Tier, cache: Option<&CompileCache>, job: Job) {
    let started = Instant::now();
    let version = short_version(&job.sha256);
    match tier.load(cache, &job.bytes, &job.sha256) {
        Ok((compiled, _)) => {
            let Some(current) = job.current.upgrade() else { return };
            *current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = compiled;
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(version, compile_ms = ms, "optimised build of the plugin now serving (was baseline)");
        }
        Err(e) => tracing::warn!(
            version,
            "Cranelift could not compile a plugin Winch did; it keeps running baseline code: {:#}",
            e.into_inner()
        ),
    }
}
