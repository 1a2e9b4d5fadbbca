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
//! Writers call [`Durability::wait`] from blocking threads only, never from an async worker.
//! A request's commit leads a write itself when none is under way; when one is, it returns
//! [`Unsynced`] and awaits the write without holding a thread. Under load, one thread writes
//! the log while the requests whose entries it covers wait as tasks: before, each of them
//! blocked a thread of its own (two hundred threads at 64 connections, on two cores).
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
use super::wal::{Started, Wal};
use super::{Result, StorageError};

/// How often the watchdog commits its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub(crate) struct Durability {
    pub(super) wal: Wal,
    state: Mutex<State>,
    /// Wakes threads blocked in [`Durability::wait`] when a write ends...
    flushed: Condvar,
    /// ...and the tasks awaiting [`Unsynced::durable`].
    written: tokio::sync::Notify,
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

/// A write of the log this thread leads ([`Durability::lead`]). Dropping it (always, even
/// after an error of the caller's) waits for the write, records what it made durable, and
/// wakes every waiter: until then no other write can start.
pub(super) struct Lead<'a> {
    durability: &'a Durability,
    /// Every entry up to this one is in the write (at least).
    target: u64,
    started: Option<Result<Started>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let Some(started) = self.started.take() else { return };
        let d = self.durability;
        let outcome = started.and_then(|s| d.wal.finish_write(s));
        let mut st = lock(&d.state);
        st.flushing = false;
        st.flushes += 1;
        match outcome {
            Ok(upto) => st.durable = st.durable.max(upto),
            Err(e) => {
                tracing::error!("storage flush failed: {e}");
                st.failed = Some((self.target, e.to_string()));
            }
        }
        drop(st);
        d.flushed.notify_all();
        d.written.notify_waiters();
    }
}

impl State {
    /// `Some` once `ticket` is durable, or its write failed.
    fn settled(&self, ticket: u64) -> Option<Result<bool>> {
        if self.durable >= ticket {
            return Some(Ok(true));
        }
        match &self.failed {
            Some((upto, why)) if *upto >= ticket => Some(Err(StorageError::Flush(why.clone()))),
            _ => None,
        }
    }
}

/// A commit applied and logged while another thread writes the log: await
/// [`Unsynced::durable`] before answering. One dropped before it is durable (its request
/// cancelled) waits in its destructor, so that no lock its request holds is released, and
/// no repeat answered from what it wrote, before the commit is durable.
pub struct Unsynced {
    durability: Arc<Durability>,
    ticket: u64,
    settled: bool,
}

impl Unsynced {
    pub(super) fn new(durability: Arc<Durability>, ticket: u64) -> Unsynced {
        Unsynced { durability, ticket, settled: false }
    }

    /// Wait until the commit is durable: as a task while another thread's write is under
    /// way, leading the next write (where blocking is allowed) when none is.
    pub async fn durable(mut self) -> Result<()> {
        loop {
            let written = self.durability.written.notified();
            tokio::pin!(written);
            // Registered before the state is read, so a write ending in between still wakes it.
            written.as_mut().enable();
            let flushing = {
                let st = lock(&self.durability.state);
                if let Some(done) = st.settled(self.ticket) {
                    self.settled = true;
                    return done.map(|_| ());
                }
                st.flushing
            };
            if flushing {
                written.await;
                continue;
            }
            let (durability, ticket) = (self.durability.clone(), self.ticket);
            let outcome = crate::blocking::off_worker(move || durability.wait(ticket)).await;
            self.settled = true;
            return outcome.map_err(|e| StorageError::Flush(format!("the log write's task failed: {e}")))?;
        }
    }
}

impl Drop for Unsynced {
    fn drop(&mut self) {
        if !self.settled {
            let (durability, ticket) = (&self.durability, self.ticket);
            if let Err(e) = crate::blocking::off_worker_now(|| durability.wait(ticket)) {
                tracing::error!("a cancelled request's commit did not become durable: {e}");
            }
        }
    }
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
        Durability {
            wal,
            state: Mutex::new(State { durable, ..State::default() }),
            flushed: Condvar::new(),
            written: tokio::sync::Notify::new(),
        }
    }

    /// Block until the log entry `ticket` (and every one before it) is durable.
    pub(super) fn wait(&self, ticket: u64) -> Result<()> {
        self.settle(ticket, true).map(|_| ())
    }

    /// Make `ticket` durable, leading a write of the log when none is under way. `Ok(true)`
    /// once it is durable; `Ok(false)` when another thread's write is under way and `block`
    /// is false (the caller then awaits [`Unsynced::durable`]).
    pub(super) fn settle(&self, ticket: u64, block: bool) -> Result<bool> {
        let mut st = lock(&self.state);
        loop {
            if let Some(done) = st.settled(ticket) {
                return done;
            }
            if st.flushing {
                if !block {
                    return Ok(false);
                }
                st = self.flushed.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead: write out everything appended so far; the lead's end wakes the others.
            st.flushing = true;
            drop(st);
            drop(self.start_lead());
            st = lock(&self.state);
        }
    }

    /// Lead a write of everything logged so far if none is under way: the write is started,
    /// so that the caller can apply its commit while the disk works, and dropping the
    /// [`Lead`] waits for it and wakes the others.
    /// Only for entry `seq` with every entry before it durable already: a commit with
    /// others waiting for the log leaves the write to the group commit.
    pub(super) fn lead(&self, seq: u64) -> Option<Lead<'_>> {
        let mut st = lock(&self.state);
        if st.flushing || st.durable + 1 != seq {
            return None;
        }
        st.flushing = true;
        drop(st);
        Some(self.start_lead())
    }

    /// Start the write of a lead (`flushing` is set).
    fn start_lead(&self) -> Lead<'_> {
        let target = self.wal.last();
        Lead { durability: self, target, started: Some(self.wal.start_write()) }
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
    /// Start the heartbeat (which also samples `disk`, if any) and the stall reporter.
    pub(super) fn start(backend: Arc<dyn Backend>, limit: Duration, disk: Option<Arc<super::disk::Disk>>) -> Watchdog {
        let beats = Arc::new(Beats {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            limit,
            stop: AtomicBool::new(false),
        });
        let (b1, b2) = (beats.clone(), beats.clone());
        let threads = [
            std::thread::Builder::new()
                .name("storage-heartbeat".into())
                .spawn(move || beat(&b1, backend.as_ref(), disk.as_deref())),
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

fn beat(beats: &Beats, backend: &dyn Backend, disk: Option<&super::disk::Disk>) {
    let mut failing = false;
    while !beats.stop.load(Ordering::Relaxed) {
        if let Some(disk) = disk {
            disk.sample();
        }
        let beat = backend.commit("heartbeat", &mut |_| {
            let mut batch = Batch::default();
            batch.insert(&b"beat"[..], now_ms().to_be_bytes());
            Ok(batch)
        });
        match beat {
            Ok(()) => {
                beats.last_ms.store(beats.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                failing = false;
            }
            // Once per run of failures: a broken storage fails every beat the same way.
            Err(e) if !failing => {
                tracing::error!("storage heartbeat failed: {e}");
                failing = true;
            }
            Err(_) => {}
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

#[cfg(test)]
mod tests {
    use super::super::wal::Wal;
    use super::*;
    use crate::config::SyncMode;

    fn open(dir: &std::path::Path) -> (sled::Db, sled::Tree, Arc<Durability>) {
        let db = sled::Config::new().path(dir.join("db")).open().expect("sled opens");
        let tree = db.open_tree("addon/a").expect("tree");
        let wal = Wal::open(&dir.join("wal"), &db, SyncMode::Range).expect("log opens");
        (db, tree, Arc::new(Durability::new(wal)))
    }

    fn append(durability: &Durability, tree: &sled::Tree, value: &str) -> u64 {
        let writes = [(b"k".to_vec(), Some(value.as_bytes().to_vec()))].into_iter().collect();
        durability.wal.append(tree, "addon/a", &writes).expect("appends")
    }

    /// Another thread's write: `flushing` until `finish` runs it and wakes every waiter.
    fn begin_write(durability: &Durability) {
        lock(&durability.state).flushing = true;
    }

    fn finish_write(durability: &Durability) {
        let upto = durability.wal.write_out().expect("writes out");
        let mut st = lock(&durability.state);
        st.flushing = false;
        st.durable = st.durable.max(upto);
        durability.flushed.notify_all();
        durability.written.notify_waiters();
    }

    #[test]
    fn a_commit_leads_the_write_when_none_is_under_way_and_waits_as_a_task_otherwise() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_db, tree, durability) = open(dir.path());
        let first = append(&durability, &tree, "1");
        assert!(durability.settle(first, false).expect("settles"), "no write under way: it leads one itself");
        assert!(lock(&durability.state).durable >= first);

        begin_write(&durability);
        let second = append(&durability, &tree, "2");
        assert!(!durability.settle(second, false).expect("settles"), "a write is under way: it must wait");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let waiting = runtime.spawn(Unsynced::new(durability.clone(), second).durable());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "not durable yet, so not answered");
        // The write under way did not cover it (it was appended after the write began, as
        // far as the waiter knows): the waiter, woken, leads the next write itself.
        lock(&durability.state).flushing = false;
        durability.written.notify_waiters();
        runtime.block_on(waiting).expect("joins").expect("durable");
        assert!(lock(&durability.state).durable >= second);
    }

    #[test]
    fn a_waiter_woken_by_the_write_covering_it_answers_without_writing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_db, tree, durability) = open(dir.path());
        begin_write(&durability);
        let ticket = append(&durability, &tree, "1");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let waiting = runtime.spawn(Unsynced::new(durability.clone(), ticket).durable());
        std::thread::sleep(Duration::from_millis(50));
        finish_write(&durability);
        runtime.block_on(waiting).expect("joins").expect("durable");
        assert_eq!(lock(&durability.state).flushes, 0, "the other thread's write covered it");
    }

    #[test]
    fn a_cancelled_commit_still_waits_for_durability_before_it_lets_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_db, tree, durability) = open(dir.path());
        begin_write(&durability);
        let ticket = append(&durability, &tree, "1");
        let unsynced = Unsynced::new(durability.clone(), ticket);
        let writer = {
            let durability = durability.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                finish_write(&durability);
            })
        };
        let started = Instant::now();
        drop(unsynced);
        assert!(lock(&durability.state).durable >= ticket, "dropped only once durable");
        assert!(started.elapsed() >= Duration::from_millis(100), "the drop waited for the write under way");
        writer.join().expect("writer thread");
    }
}
