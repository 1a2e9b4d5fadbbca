//! What each add-on's calls and compiles cost in CPU: measured on the threads that ran them
//! (`CLOCK_THREAD_CPUTIME_ID` around each poll, each compile pool's thread clocks), totalled
//! for `/metrics`, and decayed into the recent use that places an add-on in line for a core
//! (see `cpu`); what ran yielding to other add-ons is counted apart (see `priority`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How fast past CPU use stops counting against an add-on.
const HALF_LIFE: Duration = Duration::from_millis(500);

/// One add-on's CPU: what it used lately (for its turn) and in total (for `/metrics`).
#[derive(Debug)]
pub struct Account {
    weight: f64,
    /// Decayed CPU seconds, as of the instant beside it.
    recent: Mutex<(f64, Instant)>,
    cpu_ns: AtomicU64,
    /// Of `cpu_ns`, what ran in the slow lane's idle pool (see `priority`).
    yielding_ns: AtomicU64,
    waited_ns: AtomicU64,
    compile_ns: AtomicU64,
    /// Which lane its calls start in.
    pub(super) lanes: super::guests::Lanes,
    seen: super::priority::Seen,
}

/// An add-on's CPU totals since the host started.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTotals {
    /// CPU its calls (and their instances made ahead) ran guest code for.
    pub calls: Duration,
    /// Time its calls waited for a core.
    pub waited: Duration,
    /// CPU compiling its uploads and their optimised builds.
    pub compile: Duration,
    /// Of `calls`, what ran under `SCHED_IDLE`, yielding to other add-ons (a spinner's).
    pub yielding: Duration,
}

impl Account {
    pub fn new(weight: u32) -> Arc<Account> {
        Arc::new(Account {
            weight: f64::from(weight.max(1)),
            recent: Mutex::new((0.0, Instant::now())),
            cpu_ns: AtomicU64::new(0),
            yielding_ns: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            compile_ns: AtomicU64::new(0),
            lanes: Default::default(),
            seen: Default::default(),
        })
    }

    pub fn totals(&self) -> CpuTotals {
        let load = |n: &AtomicU64| Duration::from_nanos(n.load(Ordering::Relaxed));
        CpuTotals {
            calls: load(&self.cpu_ns),
            waited: load(&self.waited_ns),
            compile: load(&self.compile_ns),
            yielding: load(&self.yielding_ns),
        }
    }

    /// A poll of one of its calls ran guest code for `used` (in the idle pool if `yielding`).
    pub(super) fn ran(&self, used: Duration, yielding: bool, now: Instant) {
        self.cpu_ns.fetch_add(used.as_nanos() as u64, Ordering::Relaxed);
        if yielding {
            self.yielding_ns.fetch_add(used.as_nanos() as u64, Ordering::Relaxed);
        }
        self.charge(used, now);
    }

    /// One of its calls waited `nanos` for a core.
    pub(super) fn waited(&self, nanos: u64) {
        self.waited_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Count `used` against the add-on's turn.
    pub(super) fn charge(&self, used: Duration, now: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.0 = decayed(*recent, now) + used.as_secs_f64();
        recent.1 = now;
    }

    /// Compile work done for the add-on: it counts against its turn like its calls' CPU.
    pub(super) fn charge_compile(&self, used: Duration) {
        self.compile_ns.fetch_add(used.as_nanos() as u64, Ordering::Relaxed);
        self.charge(used, Instant::now());
    }

    pub(super) fn seen(&self) -> &super::priority::Seen {
        &self.seen
    }

    /// The add-on's place in line: lower goes first.
    pub(super) fn rank(&self, now: Instant) -> f64 {
        decayed(*self.recent.lock().unwrap_or_else(PoisonError::into_inner), now) / self.weight
    }
}

fn decayed((value, at): (f64, Instant), now: Instant) -> f64 {
    let halvings = now.saturating_duration_since(at).as_secs_f64() / HALF_LIFE.as_secs_f64();
    value * 0.5f64.powf(halvings)
}

/// CPU time of the calling thread.
pub(super) fn thread_cpu() -> Duration {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The time on `clock`; zero if it cannot be read.
#[allow(unsafe_code, reason = "clock_gettime has no safe wrapper in std")]
pub(super) fn clock_time(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct passed to it (and fails on a clock that
    // is no longer valid).
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
}
