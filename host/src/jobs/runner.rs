//! The job queue: when each stored job is due, in memory (rebuilt from storage at start),
//! and the loop that starts due jobs, at most `[addon.jobs] max_concurrent` per add-on at a
//! time, so one add-on's backlog never holds another's jobs back. Running a job is the
//! service's work (`Service::run_job`); the queue only says which and when.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::clock;
use crate::service::Service;

/// Due jobs by time, and the jobs running now.
#[derive(Default)]
pub struct Queue {
    due: Mutex<BinaryHeap<Reverse<(u64, String, String)>>>,
    running: Mutex<HashMap<String, HashSet<String>>>,
    wake: tokio::sync::Notify,
    started: AtomicBool,
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

    /// Take the due jobs whose add-on has room under `capacity`, marking them running; also
    /// say how long until the next job not yet due.
    fn take_due(&self, now_ms: u64, capacity: impl Fn(&str) -> usize) -> (Vec<(String, String)>, Option<u64>) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
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
            if ids.len() >= capacity(&addon) {
                deferred.push(Reverse((at, addon, id)));
                continue;
            }
            ids.insert(id.clone());
            ready.push((addon, id));
        }
        let next = due.peek().map(|Reverse((at, _, _))| at.saturating_sub(now_ms));
        // Jobs waiting for room run when a job of their add-on finishes (which wakes the loop).
        due.extend(deferred);
        (ready, next)
    }
}

/// Start the loop that runs `service`'s jobs, once, on the current tokio runtime. It ends
/// when the service is dropped.
pub fn start(service: &Arc<Service>) {
    let queue = service.jobs().clone();
    if queue.started.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        queue.started.store(false, Ordering::SeqCst);
        tracing::warn!("no async runtime: jobs will not run");
        return;
    };
    handle.spawn(run(Arc::downgrade(service), queue));
}

async fn run(service: Weak<Service>, queue: Arc<Queue>) {
    loop {
        let Some(live) = service.upgrade() else { return };
        let (ready, next) = queue
            .take_due(clock::now_ms(), |addon| live.addon(addon).map_or(1, |a| a.config.jobs.max_concurrent as usize));
        for (addon, id) in ready {
            let live = live.clone();
            tokio::spawn(async move { live.run_job(&addon, &id).await });
        }
        drop(live);
        let wait = next.map_or(IDLE, |ms| Duration::from_millis(ms).min(IDLE));
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
