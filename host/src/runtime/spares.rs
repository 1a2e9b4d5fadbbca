//! Spare instances: a plugin's next instance, made while nothing waits for it. Making an
//! instance (a store, the pool's memories and tables, the component's core instances, its
//! data segments) is a fifth of a plugin call's cost and none of the guest's own work. So
//! once a call has run, a fresh instance of the same build is made on a guest thread, off the
//! request's path, and the plugin's next call takes it instead of instantiating.
//!
//! A spare is a fresh instance, never a used one: each call still gets a store nobody ran
//! code in. It is made for one add-on and one build, and is used by that pair only. Making
//! it runs no guest code unless the component has a start function; one that touches the
//! call's own imports (key-value, jobs, HTTP) there would see a call that does not exist yet,
//! so such a plugin's spare is thrown away and the plugin gets no spares again.
//!
//! The finished call's store is dropped in the same background task ([`Retiring`]: it keeps
//! its host slot, the pool capacity it holds, until then), so tearing an instance down is
//! off the request's path too; its place in the add-on's share is free when the call returns.
//!
//! Spares are few ([`MAX_SPARES`]; when all are taken, one unused for [`EVICT_AFTER`] makes
//! room for another plugin's, so hot plugins keep theirs and many cold ones cannot churn
//! them) and take pool capacity of their own, sized apart from the call slots, so they never
//! keep a call from running. A spare not taken within [`STALE`] is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Instance;
use wasmtime::{Store, UpdateDeadline};

use super::state::{AddonEnv, CallState};
use super::tiers::Compiled;

/// Spare instances the host keeps at most: also the pool capacity set aside for them.
pub(crate) const MAX_SPARES: u32 = 8;
/// A spare unused this long is dropped (its plugin has gone quiet, or was replaced).
const STALE: Duration = Duration::from_secs(10);
/// When every spare is taken, one unused this long makes room for another plugin's.
const EVICT_AFTER: Duration = Duration::from_millis(100);

/// A fresh instance in its own store, and the pool capacity it holds until a call takes it.
pub(super) struct Ready {
    store: Store<CallState>,
    instance: Instance,
    /// Held for as long as the spare waits; dropped when a call takes it.
    _permit: OwnedSemaphorePermit,
}

struct Entry {
    compiled: Arc<Compiled>,
    env: Arc<AddonEnv>,
    made: Instant,
    /// `None` while it is being made.
    ready: Option<Ready>,
}

impl Entry {
    fn is(&self, compiled: &Arc<Compiled>, env: &Arc<AddonEnv>) -> bool {
        Arc::ptr_eq(&self.compiled, compiled) && Arc::ptr_eq(&self.env, env)
    }
}

pub(super) struct Spares {
    entries: Mutex<Vec<Entry>>,
    permits: Arc<Semaphore>,
    /// Calls that ran in a spare.
    taken: AtomicU64,
}

impl Spares {
    pub(super) fn new() -> Spares {
        let permits = Arc::new(Semaphore::new(MAX_SPARES as usize));
        Spares { entries: Mutex::new(Vec::new()), permits, taken: AtomicU64::new(0) }
    }

    /// Spares ready now, and calls that ran in one.
    pub(super) fn stats(&self) -> (usize, u64) {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        (entries.iter().filter(|e| e.ready.is_some()).count(), self.taken.load(Ordering::Relaxed))
    }

    /// The spare made for this build and add-on, if one is ready. Its permit goes back: the
    /// taking call's own slot covers the instance from now on.
    pub(super) fn take(&self, compiled: &Arc<Compiled>, env: &Arc<AddonEnv>) -> Option<(Store<CallState>, Instance)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let at = entries.iter().position(|e| e.is(compiled, env) && e.ready.is_some())?;
        self.taken.fetch_add(1, Ordering::Relaxed);
        let Ready { store, instance, .. } = entries.swap_remove(at).ready?;
        Some((store, instance))
    }

    /// Claim the making of a spare for this build and add-on: `None` when it has one (ready
    /// or being made), when the plugin makes no spares, or when no capacity is free. What
    /// this evicts (stale spares, or the oldest to make room) is handed to the caller to
    /// drop, off the lock and off the request's path.
    pub(super) fn claim(
        &self,
        compiled: &Arc<Compiled>,
        env: &Arc<AddonEnv>,
        evicted: &mut Vec<Ready>,
    ) -> Option<OwnedSemaphorePermit> {
        if compiled.no_spares.load(Ordering::Relaxed) {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.iter().any(|e| e.is(compiled, env)) {
            return None;
        }
        let now = Instant::now();
        let stale = entries.extract_if(.., |e| e.ready.is_some() && now - e.made > STALE);
        evicted.extend(stale.filter_map(|e| e.ready));
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Full: make room for a later call by dropping the oldest spare, if it has waited
            // longer than a hot plugin's would. Its permit frees when the caller drops it, off
            // the lock. This call makes none, so with many plugins taking turns spares are
            // made for nothing at most MAX_SPARES times per EVICT_AFTER.
            let oldest = entries.iter().enumerate().filter(|(_, e)| e.ready.is_some()).min_by_key(|(_, e)| e.made);
            if let Some((at, _)) = oldest.filter(|(_, e)| now - e.made > EVICT_AFTER) {
                evicted.extend(entries.swap_remove(at).ready);
            }
            return None;
        };
        entries.push(Entry { compiled: compiled.clone(), env: env.clone(), made: now, ready: None });
        Some(permit)
    }

    /// Hand in what [`Spares::claim`] was for: the spare, or `None` when making it failed.
    pub(super) fn fill(&self, compiled: &Arc<Compiled>, env: &Arc<AddonEnv>, ready: Option<Ready>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(at) = entries.iter().position(|e| e.is(compiled, env) && e.ready.is_none()) else { return };
        match ready {
            Some(ready) => {
                entries[at].ready = Some(ready);
                entries[at].made = Instant::now();
            }
            None => {
                entries.swap_remove(at);
            }
        }
    }
}

/// Make a spare for `compiled` and `env`: a store as a call would have, but with no call's
/// key-value transaction yet, and an instance in it, within the add-on's deadline.
pub(super) async fn make(
    compiled: &Compiled,
    metered: bool,
    env: Arc<AddonEnv>,
    permit: OwnedSemaphorePermit,
) -> Option<Ready> {
    let deadline = Duration::from_millis(env.limits.deadline_ms);
    let mut store = super::store::new_store(compiled, metered, env, None, "instantiate", deadline).ok()?;
    let stop = Instant::now() + deadline;
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= stop { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });
    let made = tokio::time::timeout(deadline, compiled.pre.instance_pre().instantiate_async(&mut store)).await;
    let instance = match made {
        Ok(Ok(instance)) => instance,
        Ok(Err(e)) if !store.data().kv.used_early => {
            tracing::debug!("a spare instance could not be made: {e:#}");
            return None;
        }
        Ok(Err(_)) => {
            // Its start function uses the key-value store: see below.
            return no_spares(compiled, &store);
        }
        Err(_) => return None,
    };
    let state = store.data();
    if state.kv.used_early || !state.jobs.enqueued.is_empty() || state.http.made() > 0 {
        return no_spares(compiled, &store);
    }
    Some(Ready { store, instance, _permit: permit })
}

fn no_spares(compiled: &Compiled, store: &Store<CallState>) -> Option<Ready> {
    let addon = &store.data().env.id;
    tracing::info!(%addon, "the plugin's start function uses per-call imports; its instances are made at each call");
    compiled.no_spares.store(true, Ordering::Relaxed);
    None
}

/// A finished call's store on its way to be dropped, with the host slot it holds until then.
pub(super) struct Retiring {
    store: Option<Store<CallState>>,
    slot: Option<OwnedSemaphorePermit>,
    count: Arc<AtomicUsize>,
}

impl Retiring {
    pub(super) fn new(store: Store<CallState>, slot: OwnedSemaphorePermit, count: &Arc<AtomicUsize>) -> Retiring {
        count.fetch_add(1, Ordering::Relaxed);
        Retiring { store: Some(store), slot: Some(slot), count: count.clone() }
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        drop(self.store.take());
        drop(self.slot.take());
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}
