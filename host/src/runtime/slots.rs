//! Call slots, shared fairly. The host runs at most `server.max_concurrent_calls` plugin
//! calls at once (the instance pool is sized for exactly that), and each add-on may hold at
//! most its share of them, with a bounded queue of calls waiting for its share. A call past
//! the queue is refused at once (503 with `Retry-After`) instead of waiting, so an add-on
//! flooded with slow calls fills only its own share and queue, never its neighbours'.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The add-on's share is in use and its wait queue is full.
    QueueFull,
    /// The request's time budget ran out while it waited.
    TimedOut,
    /// The host is shutting down.
    ShuttingDown,
}

impl SlotRefused {
    pub fn reason(self) -> &'static str {
        match self {
            SlotRefused::QueueFull => "its share of plugin call slots is in use and its wait queue is full",
            SlotRefused::TimedOut => "no plugin call slot became free within its deadline",
            SlotRefused::ShuttingDown => "the host is shutting down",
        }
    }
}

/// One add-on's share of the host's call slots.
pub struct Share {
    permits: Arc<Semaphore>,
    size: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Share {
    pub fn new(size: usize, max_waiting: usize) -> Share {
        let size = size.max(1);
        Share { permits: Arc::new(Semaphore::new(size)), size, waiting: AtomicUsize::new(0), max_waiting }
    }

    /// Calls of this add-on running now.
    pub fn in_use(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    /// Calls of this add-on waiting for its share.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

/// Permission to run one plugin call: a place in the add-on's share and a host slot.
/// Dropping it frees both; the runtime drops it only after the call's instance is gone.
pub struct Slot {
    _share: OwnedSemaphorePermit,
    host: OwnedSemaphorePermit,
}

impl Slot {
    /// The call has returned: its place in the add-on's share is free, while the host slot
    /// (the pool capacity its instance holds) stays taken until the instance is dropped.
    pub(super) fn finish(self) -> OwnedSemaphorePermit {
        self.host
    }
}

/// Counts a waiting call for as long as it waits (also when the wait is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Take a slot for a call of the add-on owning `share`, waiting at most until `until`.
pub(super) async fn acquire(host: &Arc<Semaphore>, share: &Share, until: Instant) -> Result<Slot, SlotRefused> {
    let own = match share.permits.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(tokio::sync::TryAcquireError::Closed) => return Err(SlotRefused::ShuttingDown),
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            if share.waiting.fetch_add(1, Ordering::Relaxed) >= share.max_waiting {
                share.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(SlotRefused::QueueFull);
            }
            let _waiting = Waiting(&share.waiting);
            wait(share.permits.clone(), until).await?
        }
    };
    let host = match host.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => wait(host.clone(), until).await?,
    };
    Ok(Slot { _share: own, host })
}

async fn wait(semaphore: Arc<Semaphore>, until: Instant) -> Result<OwnedSemaphorePermit, SlotRefused> {
    match tokio::time::timeout_at(until, semaphore.acquire_owned()).await {
        Err(_) => Err(SlotRefused::TimedOut),
        Ok(Err(_)) => Err(SlotRefused::ShuttingDown),
        Ok(Ok(permit)) => Ok(permit),
    }
}
