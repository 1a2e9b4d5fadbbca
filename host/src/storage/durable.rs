//! Group commit: how a write becomes durable before its caller may answer 2xx.
//!
//! sled 0.34's `flush_async` deadlocks under concurrent commits (sled #1308, #1412), and a
//! flush per request pays one sync per request. Here every writer, after applying its write
//! and appending it to the write-ahead log ([`super::wal`]), waits until the log is durable
//! up to its entry. Whoever finds no write under way becomes the leader: it writes and syncs
//! everything appended before it started, on its own thread, and wakes the others. One
//! request alone pays one sync and no thread hand-off; many at once share each sync, so
//! throughput grows with concurrency.
//!
//! Writers call this from blocking threads only, never from an async worker.
//!
//! A watchdog thread commits a heartbeat through the same path every second. When none has
//! become durable for longer than the stall limit, [`Watchdog::stall`] reports it: `/healthz`
//! turns 503 and the log says so, so that a supervisor can act on a host whose storage has
//! stopped making progress instead of waiting on it forever.

use crate::clock::now_ms;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::backend::{Backend, Batch};
use super::wal::Wal;
use super::{Result, StorageError};

/// How often the watchdog commits its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub(crate) struct Durability {
    pub(super) wal: Wal,
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Default)]
struct State {
    /// Every log entry up to this one is durable.
    durable: u64,
    /// A leader is flushing.
    flushing: bool,
    /// The last failed flush: the tickets it covered and why it failed.
    failed: Option<(u64, String)>,
    /// Flushes done, and the writes they made durable (for the statistics).
    flushes: u64,
}

/// How the group commit has been doing, for benchmarks and the status endpoint.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CommitStats {
    pub writes: u64,
    pub flushes: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Durability {
    pub(super) fn new(wal: Wal) -> Durability {
        let durable = wal.last();
        Durability { wal, state: Mutex::new(State { durable, ..State::default() }), flushed: Condvar::new() }
    }

    /// Block until the log entry `ticket` (and every one before it) is durable.
    pub(super) fn wait(&self, ticket: u64) -> Result<()> {
        let mut st = lock(&self.state);
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if let Some((upto, why)) = &st.failed
                && *upto >= ticket
            {
                return Err(StorageError::Flush(why.clone()));
            }
            if st.flushing {
                st = self.flushed.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead: write out everything appended so far, then wake the followers.
            st.flushing = true;
            let target = self.wal.last();
            drop(st);
            let outcome = self.wal.write_out();
            st = lock(&self.state);
            st.flushing = false;
            st.flushes += 1;
            match outcome {
                Ok(upto) => st.durable = st.durable.max(upto),
                Err(e) => {
                    tracing::error!("storage flush failed: {e}");
                    st.failed = Some((target.max(ticket), e.to_string()));
                }
            }
            self.flushed.notify_all();
        }
    }

    /// Make everything applied so far durable.
    pub(super) fn flush(&self) -> Result<()> {
        self.wait(self.wal.last())
    }

    pub(super) fn stats(&self) -> CommitStats {
        let flushes = lock(&self.state).flushes;
        CommitStats { writes: self.wal.appended(), flushes }
    }
}

/// Commits have not made progress for `for_ms`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stall {
    pub for_ms: u64,
    pub limit_ms: u64,
}

struct Beats {
    started: Instant,
    /// Milliseconds after `started` when the last heartbeat became durable.
    last_ms: AtomicU64,
    limit: Duration,
    stop: AtomicBool,
}

impl Beats {
    fn stall(&self) -> Option<Stall> {
        let quiet = (self.started.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Ordering::Relaxed));
        let limit_ms = self.limit.as_millis() as u64;
        (quiet > limit_ms).then_some(Stall { for_ms: quiet, limit_ms })
    }
}

/// Two threads: one commits a heartbeat every second, the other reports stalls (it never
/// touches storage, so it keeps reporting while a commit is stuck). Both are stopped and
/// joined when the storage is dropped, so the database closes with its last handle.
pub(super) struct Watchdog {
    beats: Arc<Beats>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(super) fn start(backend: Arc<dyn Backend>, limit: Duration) -> Watchdog {
        let beats = Arc::new(Beats {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            limit,
            stop: AtomicBool::new(false),
        });
        let (b1, b2) = (beats.clone(), beats.clone());
        let threads = [
            std::thread::Builder::new().name("storage-heartbeat".into()).spawn(move || beat(&b1, backend.as_ref())),
            std::thread::Builder::new().name("storage-watchdog".into()).spawn(move || report(&b2)),
        ]
        .into_iter()
        .filter_map(|t| t.map_err(|e| tracing::error!("could not start the storage watchdog: {e}")).ok())
        .collect();
        Watchdog { beats, threads }
    }

    /// `Some` when no heartbeat has become durable for longer than the limit.
    pub(super) fn stall(&self) -> Option<Stall> {
        self.beats.stall()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.beats.stop.store(true, Ordering::Relaxed);
        for thread in &self.threads {
            thread.thread().unpark();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn beat(beats: &Beats, backend: &dyn Backend) {
    while !beats.stop.load(Ordering::Relaxed) {
        let beat = backend.commit("heartbeat", &mut |_| {
            let mut batch = Batch::default();
            batch.insert(&b"beat"[..], now_ms().to_be_bytes());
            Ok(batch)
        });
        match beat {
            Ok(()) => beats.last_ms.store(beats.started.elapsed().as_millis() as u64, Ordering::Relaxed),
            Err(e) => tracing::error!("storage heartbeat failed: {e}"),
        }
        std::thread::park_timeout(HEARTBEAT);
    }
}

fn report(beats: &Beats) {
    let mut last_report: Option<Instant> = None;
    while !beats.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(HEARTBEAT);
        match beats.stall() {
            Some(stall) if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) => {
                tracing::error!(
                    stalled_ms = stall.for_ms,
                    "STORAGE STALLED: no durable commit for {} ms; /healthz answers 503",
                    stall.for_ms
                );
                last_report = Some(Instant::now());
            }
            None if last_report.take().is_some() => {
                tracing::warn!("storage commits are making progress again; /healthz answers 200")
            }
            _ => {}
        }
    }
}
