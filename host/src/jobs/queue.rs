//! The job queue: when each stored job is due, in memory (rebuilt from storage at start),
//! and the loop that starts due jobs, at most `[addon.jobs] max_concurrent` per add-on at a
//! time and `max_starts_per_second` (a token bucket), so one add-on's backlog never holds
//! another's jobs back. Running a job is the
//! service's work: the queue owns the [`Runner`] trait, which the service implements, so the
//! queue only says which and when and knows nothing above it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::clock;

/// What the queue's loop needs from whoever runs the jobs (the service).
pub trait Runner: Send + Sync + 'static {
    /// The queue this runner's jobs are pushed to.
    fn queue(&self) -> &Arc<Queue>;
    /// Add-on `addon`'s job limits: jobs running at once and starts per second; `None` for
    /// an add-on no longer hosted (its jobs wait).
    fn limits(&self, addon: &str) -> Option<(usize, u32)>;
    /// Run add-on `addon`'s job `id`, and call [`Queue::finished`] when it is over.
    fn run_job(self: Arc<Self>, addon: String, id: String) -> impl Future<Output = ()> + Send + 'static;
}

/// Due jobs by time, and the jobs running now.
#[derive(Default)]
pub struct Queue {
    due: Mutex<BinaryHeap<Reverse<(u64, String, String)>>>,
    running: Mutex<HashMap<String, HashSet<String>>>,
    /// Each add-on's start tokens and when they were last counted.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    wake: tokio::sync::Notify,
    started: AtomicBool,
}

/// An add-on's job limits, as the loop applies them.
struct Limits {
    concurrent: usize,
    per_second: u32,
}

/// The longest the loop sleeps without looking at the queue.
const IDLE: Duration = Duration::from_secs(1);

impl Queue {
    /// Run add-on `addon`'s job `id` at `due_ms` (or as soon as possible after). A job pushed
    /// twice runs once: the run reads the stored job, and a running job is not started again.
    pub fn push(&self, addon: &str, id: &str, due_ms: u64) {
        self.due.lock().unwrap_or_else(PoisonError::into_inner).push(Reverse((
            due_ms,
            addon.to_owned(),
            id.to_owned(),
        )));
        self.wake.notify_one();
    }

    /// The jobs queued or running now, as (add-on, id).
    pub(crate) fn known(&self) -> HashSet<(String, String)> {
        let mut known: HashSet<(String, String)> = self
            .due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|Reverse((_, a, i))| (a.clone(), i.clone()))
            .collect();
        for (addon, ids) in self.running.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            known.extend(ids.iter().map(|id| (addon.clone(), id.clone())));
        }
        known
    }

    pub fn is_running(&self, addon: &str, id: &str) -> bool {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).get(addon).is_some_and(|ids| ids.contains(id))
    }

    /// Jobs queued in memory (due or not), for operators and tests.
    pub fn queued(&self) -> usize {
        self.due.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// A job's run is over (whatever its outcome): make room for the add-on's next one.
    pub(crate) fn finished(&self, addon: &str, id: &str) {
        if let Some(ids) = self.running.lock().unwrap_or_else(PoisonError::into_inner).get_mut(addon) {
            ids.remove(id);
        }
        self.wake.notify_one();
    }

    /// Take the due jobs whose add-on has room under its limits (running at once, starts
    /// per second), marking them running; also say how long until the loop should look again.
    fn take_due(&self, now_ms: u64, limits: impl Fn(&str) -> Limits) -> (Vec<(String, String)>, Option<u64>) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut refill: Option<u64> = None;
        let (mut ready, mut deferred) = (Vec::new(), Vec::new());
        while let Some(Reverse((at, addon, id))) = due.peek().cloned() {
            if at > now_ms {
                break;
            }
            due.pop();
            let ids = running.entry(addon.clone()).or_default();
            if ids.contains(&id) {
                continue;
            }
            let limits = limits(&addon);
            if ids.len() >= limits.concurrent {
                deferred.push(Reverse((at, addon, id)));
                continue;
            }
            let rate = f64::from(limits.per_second.max(1));
            let (tokens, counted) = buckets.entry(addon.clone()).or_insert((rate, Instant::now()));
            *tokens = (*tokens + counted.elapsed().as_secs_f64() * rate).min(rate);
            *counted = Instant::now();
            if *tokens < 1.0 {
                let wait = ((1.0 - *tokens) / rate * 1000.0).ceil() as u64;
                refill = Some(refill.map_or(wait, |r| r.min(wait)));
                deferred.push(Reverse((at, addon, id)));
                continue;
            }
            *tokens -= 1.0;
            ids.insert(id.clone());
            ready.push((addon, id));
        }
        let next = due.peek().map(|Reverse((at, _, _))| at.saturating_sub(now_ms));
        let next = match (next, refill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Jobs waiting for room run when a job of their add-on finishes (which wakes the loop).
        due.extend(deferred);
        (ready, next)
    }
}

/// Start the loop that runs `runner`'s jobs, once, on the current tokio runtime. It ends
/// when the runner is dropped.
pub fn start<R: Runner>(runner: &Arc<R>) {
    let queue = runner.queue().clone();
    if queue.started.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        queue.started.store(false, Ordering::SeqCst);
        tracing::warn!("no async runtime: jobs will not run");
        return;
    };
    handle.spawn(run(Arc::downgrade(runner), queue));
}

async fn run<R: Runner>(runner: Weak<R>, queue: Arc<Queue>) {
    loop {
        let Some(live) = runner.upgrade() else { return };
        let (ready, next) = queue.take_due(clock::now_ms(), |addon| match live.limits(addon) {
            Some((concurrent, per_second)) => Limits { concurrent, per_second },
            None => Limits { concurrent: 0, per_second: 1 },
        });
        for (addon, id) in ready {
            tokio::spawn(live.clone().run_job(addon, id));
        }
        drop(live);
        let wait = next.map_or(IDLE, |ms| Duration::from_millis(ms).min(IDLE));
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrent: usize, per_second: u32) -> impl Fn(&str) -> Limits {
        move |_| Limits { concurrent, per_second }
    }

    #[test]
    fn due_jobs_start_within_their_add_ons_limits_and_others_are_not_held_back() {
        let queue = Queue::default();
        for i in 0..5 {
            queue.push("busy", &format!("b{i}"), 100);
        }
        queue.push("quiet", "q0", 100);
        queue.push("busy", "later", 10_000);
        let (ready, next) = queue.take_due(1_000, limits(2, 100));
        let busy = ready.iter().filter(|(a, _)| a == "busy").count();
        assert_eq!(busy, 2, "two at once for the busy add-on: {ready:?}");
        assert!(ready.contains(&("quiet".into(), "q0".into())), "the quiet add-on's job was held back: {ready:?}");
        assert_eq!(next, Some(9_000), "the next look is when `later` is due");
        let (ready, _) = queue.take_due(1_000, limits(2, 100));
        assert!(ready.is_empty(), "nothing more until a job finishes: {ready:?}");
        queue.finished("busy", "b0");
        let (ready, _) = queue.take_due(1_000, limits(2, 100));
        assert_eq!(ready.len(), 1, "{ready:?}");
    }

    #[test]
    fn starts_per_second_are_a_token_bucket() {
        let queue = Queue::default();
        for i in 0..5 {
            queue.push("a", &format!("j{i}"), 0);
        }
        let (ready, next) = queue.take_due(1, limits(100, 2));
        assert_eq!(ready.len(), 2, "a burst of two: {ready:?}");
        let wait = next.expect("a wait for the next token");
        assert!(wait > 0 && wait <= 500, "the next token is at most half a second away: {wait}");
        let (ready, _) = queue.take_due(1, limits(100, 2));
        assert!(ready.is_empty(), "no token yet: {ready:?}");
    }
}
