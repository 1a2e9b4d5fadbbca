//! The WebAssembly runtime: one wasmtime engine for the host (plus Winch's for baseline
//! code, see [`tiers`]), each add-on's plugin compiled once into an `InstancePre`, and every
//! call run in a fresh instance and `Store` (see [`store`]) under a deadline (epoch
//! interruption), a memory cap and output limits. The instance is usually made ahead of the
//! call, after the plugin's previous one, while the host would wait anyway (see [`spares`]).
//!
//! Calls run on wasmtime's async support, as tasks of a tokio runtime of their own (see
//! [`guests`]): the guest yields to the executor at every epoch tick, and WASI's clocks and
//! polls are async, so a call's deadline bounds its whole life — its own code and every host
//! call it makes. At the deadline the call's future is dropped, which drops its store and
//! instance; only then is its [`Slot`] released (see [`slots`] for how slots are shared among
//! add-ons).

mod account;
mod cache;
pub use cache::CompileCache;
mod compile;
mod cpu;
pub use account::{Account, CpuTotals};
/// The name of the host key (in storage) that tags the compile cache's artefacts.
pub const CACHE_KEY: &str = "compile-cache";
mod engine;
mod failure;
mod fragments;
mod guests;
mod imports;
mod jobs;
mod kv;
mod outbound;
mod output;
mod priority;
pub mod recent;
mod slots;
mod spares;
mod state;
mod store;
mod tiers;
mod web;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::component::Instance;

pub use engine::EngineInfo;
pub use failure::CallFailure;
pub use jobs::{BUILD_FOR_WORKER, NewJob, new_id as new_job_id};
pub use outbound::is_public;
pub use slots::{Share, Slot, SlotRefused};
pub use state::AddonEnv;
pub use web::{WebRequest, WebResponse};

use crate::config::{Compiler, ServerConfig};
use crate::storage::KvTxn;
use state::CallState;
use tiers::{LoadError, Optimizer, Tier};

/// Host-side bindings of `wit/provider.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { "addon:provider/kv": trappable, "addon:provider/http.send": async },
        exports: { default: async },
        trappable_error_type: { "addon:provider/kv.kv-error" => crate::runtime::kv::KvFailure },
    });
}

pub use bindings::addon::provider::jobs::{Job, JobError, RetryLater};
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
    /// The engine of `server.compiler`: Cranelift, or Winch in "winch" mode.
    primary: Arc<Tier>,
    /// In "tiered" mode, Winch's engine and the thread that replaces its builds.
    baseline: Option<(Tier, Optimizer)>,
    /// Plugins at least this large start on baseline code (in "tiered" mode).
    tier_above: usize,
    slots: Arc<Semaphore>,
    cache: Option<Arc<CompileCache>>,
    info: EngineInfo,
    guests: Arc<guests::Guests>,
    /// The cores guest code runs on, shared fairly among add-ons (see [`cpu`]).
    cores: Arc<cpu::Cores>,
    /// Where uploads compile (see [`compile`]).
    uploads: compile::Pool,
    spares: Arc<spares::Spares>,
    /// Finished calls whose store is not dropped yet (they still hold their host slot).
    retiring: Arc<AtomicUsize>,
    _ticker: engine::EpochTicker,
}

/// What one call took of the cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallCpu {
    /// CPU its guest code (and the host calls it made) ran for.
    pub cpu: Duration,
    /// Time it waited for a core.
    pub waited: Duration,
}

/// The machine's cores.
fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// A compiled plugin, ready to instantiate.
pub struct Plugin {
    current: tiers::Current,
    /// sha256 of the component's bytes, the plugin's version identity.
    pub sha256: String,
    pub size: usize,
    /// Whether the compiled artefact came from the on-disk cache.
    pub from_cache: bool,
    /// Whether it exports `run-job` (the `worker` world).
    pub runs_jobs: bool,
    /// Whether it exports `wasi:http/incoming-handler` (the `web` world).
    pub serves_http: bool,
}

/// A plugin version as messages and logs name it: the first 12 hex digits of its SHA-256
/// (which alone is "the version" in records, metrics and the admin API).
pub fn short_version(sha256: &str) -> &str {
    &sha256[..12.min(sha256.len())]
}

impl Plugin {
    /// The contract's world the plugin implements: `web` (it serves HTTP), `worker` (it
    /// runs jobs) or `plugin` (the platform calls only).
    pub fn world(&self) -> &'static str {
        match (self.serves_http, self.runs_jobs) {
            (true, _) => "web",
            (false, true) => "worker",
            (false, false) => "plugin",
        }
    }

    /// The version as messages name it: see [`short_version`].
    pub fn short_version(&self) -> &str {
        short_version(&self.sha256)
    }

    /// The compiler whose build serves calls now: "cranelift" or "winch".
    pub fn compiler(&self) -> &'static str {
        tiers::read(&self.current).compiler
    }
}

/// One export call and its input.
#[derive(Debug, Clone)]
pub enum Export {
    Provision(ProvisionRequest),
    ChangePlan(ChangePlanRequest),
    Deprovision(DeprovisionRequest),
    /// A job, for plugins that export `run-job` (the `worker` world).
    RunJob(Job),
    /// An HTTP request for plugins that export the handler (the `web` world).
    Http(WebRequest),
}

impl Export {
    pub fn name(&self) -> &'static str {
        match self {
            Export::Provision(_) => "provision",
            Export::ChangePlan(_) => "change-plan",
            Export::Deprovision(_) => "deprovision",
            Export::RunJob(_) => "run-job",
            Export::Http(_) => "http",
        }
    }
}

/// What a plugin answered: its variables and message (empty for deprovision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub config: Vec<(String, String)>,
    pub message: Option<String>,
}

/// What the plugin returned: a platform call's answer or refusal, or a job's outcome.
pub enum Returned {
    Reply(Result<Answer, ProviderError>),
    Job(Result<(), JobError>),
    Http(Box<WebResponse>),
}

/// The outcome of a call that ran to completion: what the plugin returned, and the key-value
/// writes and jobs it made (to be committed by the caller only on success).
pub struct Completed {
    pub result: Returned,
    pub kv: KvTxn,
    pub jobs: Vec<NewJob>,
    pub elapsed: Duration,
}

impl Runtime {
    /// The runtime for `server`'s engine settings. `cache_key` is the key the compile
    /// cache's artefacts are tagged with (the host's `compile-cache` key in storage): without
    /// it nothing is cached, since nothing could be trusted.
    pub fn new(
        server: &ServerConfig,
        max_memory_bytes: u64,
        fuel: bool,
        cache_key: Option<Vec<u8>>,
    ) -> anyhow::Result<Runtime> {
        let (engine, info) = engine::build(server, max_memory_bytes, fuel)?;
        let primary = if server.compiler == Compiler::Winch { "winch" } else { "cranelift" };
        let primary = Arc::new(Tier::new(engine, primary)?);
        let cache = server.cache_dir().zip(cache_key).map(|(dir, key)| Arc::new(CompileCache::new(dir, key)));
        let baseline = match server.compiler {
            Compiler::Tiered => {
                let pool = compile::Pool::tier_up(machine_cores())?;
                Some((
                    Tier::new(engine::baseline(fuel)?, "winch")?,
                    Optimizer::start(primary.clone(), cache.clone(), pool)?,
                ))
            }
            Compiler::Cranelift | Compiler::Winch => None,
        };
        let mut engines = vec![primary.engine.clone()];
        engines.extend(baseline.iter().map(|(tier, _)| tier.engine.clone()));

        let preempt = {
            let engines = engines.clone();
            Box::new(move || engines.iter().for_each(wasmtime::Engine::increment_epoch))
        };
        let cores = cpu::Cores::new(server.plugin_cores.unwrap_or_else(machine_cores), server.slow_lane_yield, preempt);
        let ticker = {
            let cores = cores.clone();
            engine::EpochTicker::start(engines, EPOCH_TICK, Box::new(move || cores.tick()))
        };
        Ok(Runtime {
            primary,
            baseline,
            tier_above: usize::try_from(server.tier_above_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
            slots: Arc::new(Semaphore::new(server.max_concurrent_calls as usize)),
            cache,
            info,
            guests: Arc::new(guests::Guests::start((!server.slow_lane_idle).then_some(server.slow_lane_nice))?),
            cores: cores.clone(),
            uploads: compile::Pool::uploads(machine_cores())?,
            spares: Arc::new(spares::Spares::new()),
            retiring: Arc::new(AtomicUsize::new(0)),
            _ticker: ticker,
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Compile (or load from the compile cache) and link a plugin. Fails with a message
    /// naming what is wrong when the bytes are not a component or do not implement the
    /// `plugin` world. In "tiered" mode a large plugin without an optimised build in the
    /// cache is served from Winch's build until Cranelift's replaces it (see [`tiers`]).
    /// With `account` (an upload while the host serves) it compiles on the upload pool and
    /// the CPU it takes, and its optimised build's, is charged to that add-on (see
    /// [`compile`]); without it (start-up, the CLI) on the calling thread and rayon's pool.
    pub fn load(&self, bytes: &[u8], account: Option<&Arc<Account>>) -> anyhow::Result<Plugin> {
        match account {
            Some(account) => self.uploads.run(Some(account), || self.load_here(bytes, Some(account))),
            None => self.load_here(bytes, None),
        }
    }

    fn load_here(&self, bytes: &[u8], account: Option<&Arc<Account>>) -> anyhow::Result<Plugin> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let dir = self.cache.as_deref();
        let plugin = |(compiled, from_cache): (Arc<tiers::Compiled>, bool)| Plugin {
            runs_jobs: compiled.runs_jobs,
            serves_http: compiled.web.is_some(),
            current: Arc::new(RwLock::new(compiled)),
            sha256: sha256.clone(),
            size: bytes.len(),
            from_cache,
        };
        if let Some((baseline, optimizer)) = &self.baseline
            && bytes.len() >= self.tier_above
            && !self.primary.cached(dir, &sha256)
        {
            match baseline.load(dir, bytes, &sha256) {
                Ok(loaded) => {
                    let plugin = plugin(loaded);
                    optimizer.queue(bytes, &sha256, &plugin.current, account.cloned());
                    return Ok(plugin);
                }
                Err(LoadError::Link(e)) => return Err(e),
                // Winch lacks a few proposals (tail calls, exceptions): Cranelift will do.
                Err(LoadError::Compile(e)) => tracing::debug!("Winch did not compile the plugin: {e:#}"),
            }
        }
        Ok(plugin(self.primary.load(dir, bytes, &sha256).map_err(LoadError::into_inner)?))
    }

    /// Remove a deleted version's compiled artefacts from the compile cache; the bytes freed.
    pub fn forget_compiled(&self, sha256: &str) -> u64 {
        self.cache.as_ref().map_or(0, |cache| cache.remove(sha256))
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
        let taken = (self.info.slots as usize).saturating_sub(self.slots.available_permits());
        taken.saturating_sub(self.retiring.load(Ordering::Relaxed))
    }

    /// A slot for one call of the add-on owning `share`, waiting until `until` at most.
    pub async fn slot(&self, share: &Share, until: tokio::time::Instant) -> Result<Slot, SlotRefused> {
        slots::acquire(&self.slots, share, until).await
    }

    /// Run one export of `plugin` in a fresh instance, within `deadline` (the add-on's
    /// deadline, or less when the request's budget has less left). `slot` is released when
    /// the instance is gone: when this future is dropped, or after this returns, when the
    /// finished call's store is dropped in the background (with the next spare's making).
    /// Beside the outcome: the CPU the call's guest code took, and its wait for cores.
    pub async fn call(
        &self,
        slot: Slot,
        plugin: &Plugin,
        env: Arc<AddonEnv>,
        kv: KvTxn,
        export: Export,
        deadline: Duration,
    ) -> (Result<Completed, CallFailure>, CallCpu) {
        let (compiled, metered) = (tiers::read(&plugin.current), self.info.fuel);
        let spare = self.spares.take(&compiled, &env);
        let used = Arc::new(cpu::Used::default());
        let ran = {
            let (compiled, env, account) = (compiled.clone(), env.clone(), env.cpu.clone());
            let call = Box::pin(async move {
                let (outcome, dead) = run(&compiled, metered, env, kv, export, deadline, spare).await;
                // A finished call's store keeps its host slot until it is dropped, below.
                Ok((outcome, dead.map(|store| (store, slot.finish()))))
            });
            let until = Instant::now() + deadline;
            let lanes = account.clone();
            self.guests
                .run(cpu::Scheduled::new(call, self.cores.clone(), account, used.clone(), until), &lanes.lanes)
                .await
        };
        let (outcome, dead) = ran.unwrap_or_else(|failure| (Err(failure), None));
        self.make_spare(compiled, metered, env, dead);
        let (cpu, waited) = used.read();
        (outcome, CallCpu { cpu, waited })
    }

    /// Have a spare instance of `compiled` made for the add-on's next call, unless it has one
    /// or none can be made now (see [`spares`]); `dead`, the store of the call that just
    /// finished, is dropped in the same background task.
    fn make_spare(
        &self,
        compiled: Arc<tiers::Compiled>,
        metered: bool,
        env: Arc<AddonEnv>,
        dead: Option<(Store<CallState>, OwnedSemaphorePermit)>,
    ) {
        let mut evicted = Vec::new();
        let claimed = self.spares.claim(&compiled, &env, &mut evicted);
        if claimed.is_none() && evicted.is_empty() && dead.is_none() {
            return;
        }
        let (spares, guests, cores) = (self.spares.clone(), self.guests.clone(), self.cores.clone());
        let dead = dead.map(|(store, slot)| spares::Retiring::new(store, slot, &self.retiring));
        let work = async move {
            drop(dead);
            drop(evicted);
            let Some(permit) = claimed else { return };
            let make = {
                let (compiled, env, account) = (compiled.clone(), env.clone(), env.cpu.clone());
                let until = Instant::now() + Duration::from_millis(env.limits.deadline_ms);
                let make = Box::pin(async move { Ok(spares::make(&compiled, metered, env, permit).await) });
                (cpu::Scheduled::new(make, cores, account.clone(), Arc::default(), until).spare(), account)
            };
            let (make, account) = make;
            let ready = guests.run(make, &account.lanes).await.ok().flatten();
            spares.fill(&compiled, &env, ready);
        };
        // On the caller's worker, not a guest thread: it runs when this request next waits
        // (for its commit's sync), in time the worker would spend idle. On this 2-core VM,
        // making it on a guest thread instead gained 4% at one connection, this 4-12%.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(work);
        }
    }

    /// Spare instances ready now, and calls that have run in one since the start.
    pub fn spares(&self) -> (usize, u64) {
        self.spares.stats()
    }
}

async fn run(
    compiled: &tiers::Compiled,
    metered: bool,
    env: Arc<AddonEnv>,
    kv: KvTxn,
    export: Export,
    deadline: Duration,
    spare: Option<(Store<CallState>, Instance)>,
) -> (Result<Completed, CallFailure>, Option<Store<CallState>>) {
    let started = Instant::now();
    let limits = env.limits.clone();
    let (mut store, instance) = match spare {
        Some((mut store, instance)) => {
            let (kv, log, jobs, http) =
                store::per_call(&env, Some(kv), export.name(), started + deadline, compiled.runs_jobs);
            let state = store.data_mut();
            (state.kv, state.log, state.jobs, state.http) = (kv, log, jobs, http);
            if let Err(e) = store::arm(&mut store, metered, deadline) {
                return (Err(e), None);
            }
            (store, Some(instance))
        }
        None => match store::new_store(compiled, metered, env, Some(kv), export.name(), deadline) {
            Ok(store) => (store, None),
            Err(e) => return (Err(e), None),
        },
    };
    let deadline_ms = deadline.as_millis() as u64;
    let call = call_export(compiled, &mut store, instance, export);
    // On timeout the call's future (and with it the guest's stack) is already gone; the
    // store follows when the caller drops it.
    let outcome = tokio::time::timeout(deadline, call).await;
    let elapsed = started.elapsed();
    store.data_mut().flush_output();
    // The store is returned to be dropped off the request's path (see `Runtime::call`).
    (failure::settle(outcome, store.data_mut(), &limits, deadline_ms, elapsed), Some(store))
}

/// Call one export, in `instance` (a spare) or in one made now. The platform exports go
/// through the bindings' pre-resolved export indices; `run-job`, which only `worker` plugins
/// have, is looked up by name (jobs are not the hot path). An HTTP handler may fail without
/// trapping (no response, a response too large): that is the inner error.
async fn call_export(
    compiled: &tiers::Compiled,
    store: &mut Store<CallState>,
    instance: Option<Instance>,
    export: Export,
) -> wasmtime::Result<Result<Returned, CallFailure>> {
    let pre = compiled.pre.instance_pre();
    let instance = match instance {
        Some(instance) => instance,
        None => pre.instantiate_async(&mut *store).await?,
    };
    let reply = |r: Result<Answer, ProviderError>| Ok(Returned::Reply(r));
    let answer = |config: Vec<EnvVar>, message| Answer {
        config: config.into_iter().map(|v| (v.key, v.value)).collect(),
        message,
    };
    Ok(match export {
        Export::RunJob(job) => {
            let run = instance.get_typed_func::<(&Job,), (Result<(), JobError>,)>(&mut *store, "run-job")?;
            Ok(Returned::Job(run.call_async(&mut *store, (&job,)).await?.0))
        }
        Export::Http(request) => {
            let Some(indices) = &compiled.web else {
                return Ok(Err(CallFailure::Host("the plugin does not export an HTTP handler".into())));
            };
            web::handle(&instance, indices, store, request).await?.map(|r| Returned::Http(Box::new(r)))
        }
        Export::Provision(req) => {
            let plugin = compiled.indices.load(&mut *store, &instance)?;
            reply(plugin.call_provision(&mut *store, &req).await?.map(|r| answer(r.config, r.message)))
        }
        Export::ChangePlan(req) => {
            let plugin = compiled.indices.load(&mut *store, &instance)?;
            reply(plugin.call_change_plan(&mut *store, &req).await?.map(|r| answer(r.config, r.message)))
        }
        Export::Deprovision(req) => {
            let plugin = compiled.indices.load(&mut *store, &instance)?;
            reply(plugin.call_deprovision(&mut *store, &req).await?.map(|()| Answer::default()))
        }
    })
}
