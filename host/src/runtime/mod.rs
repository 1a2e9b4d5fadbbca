//! The WebAssembly runtime: one wasmtime engine for the host, each add-on's plugin compiled
//! once into an `InstancePre`, and every call run in a fresh `Store` under a deadline
//! (epoch interruption), a memory cap and output limits.
//!
//! Calls run on wasmtime's async support, as tasks of a tokio runtime of their own (see
//! [`guests`]): the guest yields to the executor at every epoch tick, and WASI's clocks and
//! polls are async, so a call's deadline bounds its whole life — its own code and every host
//! call it makes. At the deadline the call's future is dropped, which drops its store and
//! instance; only then is its [`Slot`] released (see [`slots`] for how slots are shared among
//! add-ons).

mod engine;
mod failure;
mod fragments;
mod guests;
mod imports;
mod kv;
mod output;
pub mod recent;
mod slots;
mod state;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

pub use engine::EngineInfo;
pub use failure::CallFailure;
pub use slots::{Share, Slot, SlotRefused};
pub use state::AddonEnv;

use crate::config::ServerConfig;
use crate::storage::KvTxn;
use imports::GuestLog;
use kv::KvCall;
use state::{CallLimiter, CallState};

/// Host-side bindings of `wit/provider.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { "addon:provider/kv": trappable },
        exports: { default: async },
        trappable_error_type: { "addon:provider/kv.kv-error" => crate::runtime::kv::KvFailure },
    });
}

pub use bindings::addon::provider::types::{
    ChangePlanReply, ChangePlanRequest, DeprovisionRequest, EnvVar, Platform, ProviderError, ProvisionReply,
    ProvisionRequest, Unavailable,
};

/// How often the epoch advances, which is how long guest code runs before it yields to the
/// executor. Short, so that a spinning guest never holds a worker thread long enough to delay
/// other requests or the timers (tokio checks them between polls); not so short that every
/// ordinary call pays for yields. Measured on 2 cores (`--bench noisy`, `--bench http`):
/// 1 ms cost ~20% of hosted throughput, 10 ms doubled a healthy neighbour's p50 under a
/// spinning one; 5 ms keeps both.
const EPOCH_TICK: Duration = Duration::from_millis(5);

pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    slots: Arc<Semaphore>,
    cache_dir: Option<PathBuf>,
    info: EngineInfo,
    guests: guests::Guests,
    _ticker: engine::EpochTicker,
}

/// A compiled plugin, ready to instantiate.
pub struct Plugin {
    pre: bindings::PluginPre<CallState>,
    /// sha256 of the component's bytes, the plugin's version identity.
    pub sha256: String,
    pub size: usize,
    /// Whether the compiled artefact came from the on-disk cache.
    pub from_cache: bool,
}

impl Plugin {
    /// A short form of the version for messages.
    pub fn version(&self) -> &str {
        &self.sha256[..12]
    }
}

/// One export call and its input.
#[derive(Debug, Clone)]
pub enum Export {
    Provision(ProvisionRequest),
    ChangePlan(ChangePlanRequest),
    Deprovision(DeprovisionRequest),
}

impl Export {
    pub fn name(&self) -> &'static str {
        match self {
            Export::Provision(_) => "provision",
            Export::ChangePlan(_) => "change-plan",
            Export::Deprovision(_) => "deprovision",
        }
    }
}

/// What a plugin answered: its variables and message (empty for deprovision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub config: Vec<(String, String)>,
    pub message: Option<String>,
}

/// The outcome of a call that ran to completion: the plugin's own answer or refusal, and the
/// key-value writes it made (to be committed by the caller only on success).
pub struct Completed {
    pub result: Result<Answer, ProviderError>,
    pub kv: KvTxn,
    pub elapsed: Duration,
}

impl Runtime {
    pub fn new(server: &ServerConfig, max_memory_bytes: u64, fuel: bool) -> anyhow::Result<Runtime> {
        let (engine, info) = engine::build(server, max_memory_bytes, fuel)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        state::add_to_linker(&mut linker)?;
        let ticker = engine::EpochTicker::start(engine.clone(), EPOCH_TICK);
        Ok(Runtime {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(server.max_concurrent_calls as usize)),
            cache_dir: server.cache_dir(),
            info,
            guests: guests::Guests::start()?,
            _ticker: ticker,
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Compile and link a plugin. Fails with a message naming what is wrong when the bytes
    /// are not a component or do not implement the `plugin` world.
    pub fn load(&self, bytes: &[u8]) -> anyhow::Result<Plugin> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, from_cache) = self.compile(bytes, &sha256)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("the component cannot be linked as an addon:provider plugin: {e:#}"))?;
        let pre = bindings::PluginPre::new(instance_pre)
            .map_err(|e| anyhow::anyhow!("the component does not export the addon:provider/plugin world: {e:#}"))?;
        Ok(Plugin { pre, sha256, size: bytes.len(), from_cache })
    }

    /// Compile, or load the artefact an earlier compilation left in the cache directory. The
    /// cache key is the content's sha256 plus the engine's compatibility hash, so a different
    /// wasmtime or engine configuration never loads a stale artefact.
    fn compile(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<(Component, bool)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((new_component(&self.engine, bytes)?, false));
        };
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if path.exists() {
            // SAFETY: the file was written by `serialize` below, into the host's own cache
            // directory, for this exact engine configuration (it is in the file name).
            #[allow(unsafe_code, reason = "loading the host's own compile cache")]
            let cached = unsafe { Component::deserialize_file(&self.engine, &path) };
            match cached {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable compiled artefact: {e:#}"),
            }
        }
        let component = new_component(&self.engine, bytes)?;
        if let Err(e) = write_artefact(&component, dir, &path) {
            tracing::warn!(path = %path.display(), "could not cache the compiled plugin: {e:#}");
        }
        Ok((component, false))
    }

    /// An add-on's share of the call slots: `limits.max_concurrent_calls` (default a quarter
    /// of the host's slots) and a wait queue of `limits.max_queued_calls` (default four
    /// times the share).
    pub fn share(&self, limits: &crate::config::Limits) -> Share {
        let host = self.info.slots as usize;
        let size = limits.max_concurrent_calls.map_or(host / 4, |n| n as usize).clamp(1, host);
        let queue = limits.max_queued_calls.map_or(size * 4, |n| n as usize);
        Share::new(size, queue)
    }

    /// Plugin calls holding a host slot now.
    pub fn calls_in_flight(&self) -> usize {
        (self.info.slots as usize).saturating_sub(self.slots.available_permits())
    }

    /// A slot for one call of the add-on owning `share`, waiting until `until` at most.
    pub async fn slot(&self, share: &Share, until: tokio::time::Instant) -> Result<Slot, SlotRefused> {
        slots::acquire(&self.slots, share, until).await
    }

    /// Run one export of `plugin` in a fresh instance, within `deadline` (the add-on's
    /// deadline, or less when the request's budget has less left). `slot` is released when
    /// the instance is gone: when this returns, or when this future is dropped.
    pub async fn call(
        &self,
        slot: Slot,
        plugin: &Plugin,
        env: Arc<AddonEnv>,
        kv: KvTxn,
        export: Export,
        deadline: Duration,
    ) -> Result<Completed, CallFailure> {
        let (engine, metered, pre) = (self.engine.clone(), self.info.fuel, plugin.pre.clone());
        self.guests
            .run(async move {
                let outcome = run(&engine, metered, &pre, env, kv, export, deadline).await;
                drop(slot);
                outcome
            })
            .await
    }
}

fn new_component(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("not a valid component: {e:#}"))
}

/// Write atomically (temporary file, then rename) so concurrent hosts never read half a file.
fn write_artefact(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = dir.join(format!(".{}-{}.tmp", std::process::id(), hex::encode(suffix)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn run(
    engine: &Engine,
    metered: bool,
    pre: &bindings::PluginPre<CallState>,
    env: Arc<AddonEnv>,
    kv: KvTxn,
    export: Export,
    deadline: Duration,
) -> Result<Completed, CallFailure> {
    let started = Instant::now();
    let limits = env.limits.clone();
    let stdout = output::CappedOutput::new(limits.max_log_bytes);
    let stderr = output::CappedOutput::new(limits.max_log_bytes);
    let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limiter: CallLimiter::new((limits.memory_mib << 20) as usize),
        log: GuestLog::new(&env.id, export.name(), limits.max_log_bytes, env.recent.clone()),
        env,
        kv: KvCall::new(kv),
        stdout,
        stderr,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    // Yield to the executor at every epoch tick, so the deadline below can fire while the
    // guest computes; past the deadline (should the future still be polled) trap.
    let stop = started + deadline;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= stop { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });
    if metered {
        // Unmetered add-ons on a metering engine get a budget they cannot exhaust in time.
        if let Err(e) = store.set_fuel(limits.fuel.unwrap_or(u64::MAX)) {
            return Err(CallFailure::Host(format!("setting fuel: {e:#}")));
        }
    }
    let deadline_ms = deadline.as_millis() as u64;
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        call_export(&instance, &mut store, export).await
    };
    // On timeout the call's future (and with it the guest's stack) is already gone; the
    // store follows when this function returns.
    let outcome = tokio::time::timeout(deadline, call).await;
    let elapsed = started.elapsed();
    store.data_mut().flush_output();
    let state = store.into_data();
    let Ok(outcome) = outcome else {
        tracing::warn!(addon = %state.log.addon, call = state.log.call, deadline_ms, "plugin call cancelled at its deadline");
        return Err(CallFailure::Deadline { deadline_ms });
    };
    let result = match outcome {
        Err(error) => return Err(failure::classify(error, &state, deadline_ms, elapsed)),
        Ok(r) => r,
    };
    // A plugin that hit a key-value limit and then gave up failed because of the limit.
    if let (Err(_), Some(quota)) = (&result, &state.kv.quota_violation) {
        return Err(CallFailure::Quota(quota.clone()));
    }
    // So did one refused memory that then gave up: JS and Python engines report a refused
    // growth as their own "out of memory" error instead of trapping.
    if result.is_err() && state.limiter.memory_denied {
        return Err(CallFailure::Memory { memory_mib: limits.memory_mib });
    }
    let result = match result {
        Ok(answer) => Ok(failure::check_answer(answer, &limits)?),
        Err(refusal) => Err(refusal),
    };
    Ok(Completed { result, kv: state.kv.txn, elapsed })
}

async fn call_export(
    instance: &bindings::Plugin,
    store: &mut Store<CallState>,
    export: Export,
) -> wasmtime::Result<Result<Answer, ProviderError>> {
    Ok(match export {
        Export::Provision(req) => instance
            .call_provision(&mut *store, &req)
            .await?
            .map(|r| Answer { config: r.config.into_iter().map(|v| (v.key, v.value)).collect(), message: r.message }),
        Export::ChangePlan(req) => instance
            .call_change_plan(&mut *store, &req)
            .await?
            .map(|r| Answer { config: r.config.into_iter().map(|v| (v.key, v.value)).collect(), message: r.message }),
        Export::Deprovision(req) => instance.call_deprovision(&mut *store, &req).await?.map(|()| Answer::default()),
    })
}
