//! A call's store: the sandbox state one call runs with (see [`CallState`]), its memory
//! cap, and the deadline and fuel it is armed with. A spare instance's store is made the same
//! way without a call's key-value transaction, then given the call's own parts when a call
//! takes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use super::imports::GuestLog;
use super::kv::KvCall;
use super::state::{AddonEnv, CallLimiter, CallState};
use super::{CallFailure, jobs, outbound, output, tiers, web};
use crate::storage::KvTxn;

/// A store for one call of `compiled` by the add-on of `env`, armed for `call` (see [`arm`]);
/// `kv` is `None` for a spare instance's store.
pub(super) fn new_store(
    compiled: &tiers::Compiled,
    metered: bool,
    env: Arc<AddonEnv>,
    kv: Option<KvTxn>,
    call: &'static str,
    deadline: Duration,
) -> Result<Store<CallState>, CallFailure> {
    let limits = &env.limits;
    let stdout = output::CappedOutput::new(limits.max_log_bytes);
    let stderr = output::CappedOutput::new(limits.max_log_bytes);
    let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
    let (kv, log, jobs, http) = per_call(&env, kv, call, Instant::now() + deadline, compiled.runs_jobs);
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limiter: CallLimiter::new((limits.memory_mib << 20) as usize),
        log,
        jobs,
        http,
        env,
        kv,
        stdout,
        stderr,
        web: wasmtime_wasi_http::WasiHttpCtx::new(),
        web_hooks: web::NoOutbound,
    };
    let mut store = Store::new(&compiled.engine, state);
    store.limiter(|s| &mut s.limiter);
    arm(&mut store, metered, deadline)?;
    Ok(store)
}

/// The parts of a call's state that belong to the call itself, not to its instance.
pub(super) fn per_call(
    env: &AddonEnv,
    kv: Option<KvTxn>,
    call: &'static str,
    until: Instant,
    runs_jobs: bool,
) -> (KvCall, GuestLog, jobs::CallJobs, outbound::CallHttp) {
    let limits = &env.limits;
    (
        kv.map_or_else(KvCall::before_call, KvCall::new),
        GuestLog::new(&env.id, call, limits.max_log_bytes, env.recent.clone()),
        jobs::CallJobs::new(limits.max_jobs_per_call, limits.max_job_payload_bytes, runs_jobs),
        outbound::CallHttp::new(
            env.origins.clone(),
            until,
            limits.max_http_requests_per_call,
            limits.max_http_response_bytes,
        ),
    )
}

/// Give a store its call's deadline and fuel: the guest yields to the executor at every
/// epoch tick, so the deadline can fire while it computes; past the deadline (should its
/// future still be polled) it traps.
pub(super) fn arm(store: &mut Store<CallState>, metered: bool, deadline: Duration) -> Result<(), CallFailure> {
    let stop = Instant::now() + deadline;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= stop { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });
    if metered {
        // Unmetered add-ons on a metering engine get a budget they cannot exhaust in time.
        let fuel = store.data().env.limits.fuel.unwrap_or(u64::MAX);
        if let Err(e) = store.set_fuel(fuel) {
            return Err(CallFailure::Host(format!("setting fuel: {e:#}")));
        }
    }
    Ok(())
}
