//! The per-call sandbox state: one `CallState` lives in one `Store` for exactly one export
//! call. Each import interface is linked to a borrowed view of the part of the state it
//! needs ([`KvView`], [`GuestLog`], [`AddonView`], WASI's own view), so no import can reach
//! another's data.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::addon::provider::{config, env, http, jobs, kv, log, types};
use super::imports::{AddonView, GuestLog};
use super::jobs::CallJobs;
use super::kv::{KvCall, KvView};
use super::outbound::CallHttp;
use super::output::CappedOutput;
use crate::config::Limits;
use crate::config::Origins;

/// What the host knows about an add-on that its plugin may see.
#[derive(Debug, Clone)]
pub struct AddonEnv {
    pub id: String,
    pub config: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub limits: Limits,
    /// Its plugin's recent log lines, for its deployers.
    pub recent: Arc<super::recent::RecentLogs>,
    /// The origins it may call (`allowed_outbound`).
    pub origins: Arc<Origins>,
    /// The CPU its calls and compiles used, which decides its turn for a core.
    pub cpu: Arc<super::account::Account>,
}

pub(crate) struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: CallLimiter,
    pub(super) env: Arc<AddonEnv>,
    pub(super) kv: KvCall,
    pub(super) log: GuestLog,
    pub(super) jobs: CallJobs,
    pub(super) http: CallHttp,
    pub(super) stdout: CappedOutput,
    pub(super) stderr: CappedOutput,
    /// `wasi:http` for plugins that export the HTTP handler (see [`super::web`]).
    pub(super) web: wasmtime_wasi_http::WasiHttpCtx,
    pub(super) web_hooks: super::web::NoOutbound,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl CallState {
    /// Forward what the guest printed on stdout/stderr (a panic message, typically) to the
    /// log, within the same budget as its log lines.
    pub(super) fn flush_output(&mut self) {
        for (kept, dropped) in [self.stdout.contents(), self.stderr.contents()] {
            self.log.dropped += dropped;
            let text = String::from_utf8_lossy(&kept).into_owned();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.log.line(log::Level::Warn, line);
            }
        }
        if self.log.dropped > 0 {
            tracing::warn!(addon = %self.log.addon, call = self.log.call, dropped = self.log.dropped, "plugin output over its per-call log budget was dropped");
            self.log.report_dropped();
        }
    }
}

struct KvData;
impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

struct LogData;
impl HasData for LogData {
    type Data<'a> = &'a mut GuestLog;
}

struct JobsData;
impl HasData for JobsData {
    type Data<'a> = &'a mut CallJobs;
}

struct HttpData;
impl HasData for HttpData {
    type Data<'a> = &'a mut CallHttp;
}

struct AddonData;
impl HasData for AddonData {
    type Data<'a> = AddonView<'a>;
}

/// Link the `plugin` world's own imports, each to its view of the call.
pub(super) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    types::add_to_linker::<_, AddonData>(linker, |s| AddonView(&s.env))?;
    kv::add_to_linker::<_, KvData>(linker, |s| KvView { call: &mut s.kv, limits: &s.env.limits })?;
    log::add_to_linker::<_, LogData>(linker, |s| &mut s.log)?;
    config::add_to_linker::<_, AddonData>(linker, |s| AddonView(&s.env))?;
    env::add_to_linker::<_, AddonData>(linker, |s| AddonView(&s.env))?;
    jobs::add_to_linker::<_, JobsData>(linker, |s| &mut s.jobs)?;
    http::add_to_linker::<_, HttpData>(linker, |s| &mut s.http)?;
    Ok(())
}

/// Pool resources one call may use. The pooling allocator is sized from these, slot by
/// slot, so a call can never take another call's share of the pool.
pub(crate) const INSTANCES_PER_CALL: u32 = 16;
pub(crate) const MEMORIES_PER_CALL: u32 = 4;
pub(crate) const TABLES_PER_CALL: u32 = 8;

/// Caps one call's linear memory — the total of all its memories, not each one — and
/// remembers whether the cap was hit, so a failure that follows (a trap or an abort in the
/// guest's allocator) is reported as a memory limit.
pub(crate) struct CallLimiter {
    memory_cap: usize,
    memory_total: usize,
    pub(super) memory_denied: bool,
}

impl CallLimiter {
    pub(crate) fn new(memory_cap: usize) -> CallLimiter {
        CallLimiter { memory_cap, memory_total: 0, memory_denied: false }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = (self.memory_total - current.min(self.memory_total)).saturating_add(desired);
        if total > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        INSTANCES_PER_CALL as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_CALL as usize
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_CALL as usize
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::{Engine, Memory, MemoryType, Store};

    use super::*;

    const PAGE: usize = 64 * 1024;

    /// The cap is the total of a call's memories: two memories of 600 KiB each do not fit a
    /// 1 MiB cap, though each alone would (real wasmtime memories, grown through the store).
    #[test]
    fn the_memory_cap_is_the_total_of_all_memories() {
        let engine = Engine::default();
        let mut store = Store::new(&engine, CallLimiter::new(16 * PAGE));
        store.limiter(|limiter| limiter);
        let first = Memory::new(&mut store, MemoryType::new(0, None)).unwrap();
        let second = Memory::new(&mut store, MemoryType::new(0, None)).unwrap();
        first.grow(&mut store, 10).unwrap();
        assert!(second.grow(&mut store, 10).is_err(), "20 pages fitted a 16-page cap");
        assert!(store.data().memory_denied);
        second.grow(&mut store, 6).unwrap();
        assert!(first.grow(&mut store, 1).is_err(), "17 pages fitted a 16-page cap");
        assert_eq!(first.size(&store) + second.size(&store), 16);
    }
}
