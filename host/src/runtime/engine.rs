//! Building the wasmtime engines: epoch interruption always, the pooling allocator when the
//! machine can reserve its address space (falling back to on-demand allocation otherwise),
//! a second engine on Winch for baseline code (see [`super::tiers`]), and the thread that
//! advances the epochs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use crate::config::{Allocator, Compiler, ServerConfig};

/// What kind of engine was built, for logs and the status endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineInfo {
    pub allocator: &'static str,
    /// "tiered", "cranelift" or "winch" (see `server.compiler`).
    pub compiler: Compiler,
    /// Whether instructions are metered (some add-on sets `limits.fuel`).
    pub fuel: bool,
    pub slots: u32,
    /// Why pooling was not used, when it was wanted.
    pub pooling_error: Option<String>,
}

/// The engine configuration shared by every engine: epochs always, fuel when some add-on
/// meters instructions, bounded backtraces; then the compiler. Winch does not take part in
/// incremental compilation.
fn base_config(fuel: bool, winch: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    // Traps report a bounded backtrace: enough to find the function, never megabytes.
    config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    if winch {
        config.strategy(Strategy::Winch);
    } else if let Err(e) =
        // Functions another plugin already compiled are not compiled again (see `fragments`).
        config.enable_incremental_compilation(Arc::new(super::fragments::Fragments::default()))
    {
        tracing::warn!("incremental compilation unavailable: {e:#}");
    }
    config
}

/// Memory and table bytes a pool slot keeps mapped between calls.
const KEEP_RESIDENT: usize = 4 << 20;

fn pooling(slots: u32, max_memory_bytes: u64, fuel: bool, winch: bool) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    // Each slot holds everything one call may use (see the call's limiter), so a call can
    // never exhaust the pool for others.
    use super::state::{INSTANCES_PER_CALL, MEMORIES_PER_CALL, TABLES_PER_CALL};
    // Spare instances (see `spares`) have capacity of their own, apart from the calls'.
    let slots = slots + super::spares::MAX_SPARES;
    pool.total_component_instances(slots)
        .total_core_instances(slots * INSTANCES_PER_CALL)
        .total_memories(slots * MEMORIES_PER_CALL)
        .total_tables(slots * TABLES_PER_CALL)
        .total_stacks(slots)
        .max_memory_size(max_memory_bytes as usize)
        // A reused slot keeps its pages mapped instead of faulting them in again, and
        // PAGEMAP_SCAN (Linux 6.7+; ignored elsewhere) resets only the pages a call dirtied
        // rather than memset-ing the whole kept region.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = base_config(fuel, winch);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(Engine::new(&config)?)
}

pub(crate) fn build(server: &ServerConfig, max_memory_bytes: u64, fuel: bool) -> anyhow::Result<(Engine, EngineInfo)> {
    let slots = server.max_concurrent_calls;
    let compiler = server.compiler;
    let winch = compiler == Compiler::Winch;
    let info = |allocator, pooling_error| EngineInfo { allocator, compiler, fuel, slots, pooling_error };
    let on_demand =
        || Engine::new(&base_config(fuel, winch)).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e:#}"));
    match server.allocator {
        Allocator::OnDemand => Ok((on_demand()?, info("on-demand", None))),
        Allocator::Pooling => {
            let engine = pooling(slots, max_memory_bytes, fuel, winch).context("creating the pooling allocator")?;
            Ok((engine, info("pooling", None)))
        }
        Allocator::Auto => match pooling(slots, max_memory_bytes, fuel, winch) {
            Ok(engine) => Ok((engine, info("pooling", None))),
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
                Ok((on_demand()?, info("on-demand", Some(format!("{e:#}")))))
            }
        },
    }
}

/// The engine for baseline code: Winch, allocating on demand (its instances serve a plugin
/// for the seconds until Cranelift's build replaces it, so no pool is reserved for them; the
/// call's limiter caps their memory as on the main engine).
pub(crate) fn baseline(fuel: bool) -> anyhow::Result<Engine> {
    Engine::new(&base_config(fuel, true)).map_err(|e| anyhow::anyhow!("creating the baseline (Winch) engine: {e:#}"))
}

/// Advances the engines' epochs every tick until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    /// Ticks `engines`, calling `on_tick` after each.
    pub(crate) fn start(engines: Vec<Engine>, tick: Duration, on_tick: Box<dyn Fn() + Send>) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                    on_tick();
                }
            })
            .ok();
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
