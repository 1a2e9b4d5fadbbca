//! Where plugins compile while the host serves. Cranelift compiles a component's functions in
//! parallel on rayon's pool, which by default is every core at the priority of serving: one
//! partner's 18 MB upload took 60% of a healthy neighbour's throughput for the 10 s its
//! compiles ran. So uploads compile on a pool of their own whose threads run at a lower
//! priority (nice [`UPLOAD_NICE`]), and the background tier-up (Winch's build replaced by
//! Cranelift's) on another at the lowest (nice [`TIER_UP_NICE`]): serving comes first, a
//! partner's upload next, and no upload waits behind a background build. Each pool compiles
//! one plugin at a time, so the CPU its threads used in between is that plugin's, and it is
//! charged to the add-on that uploaded it (see [`super::cpu::Account::charge_compile`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::cpu::{Account, clock_time};

/// Niceness of upload compiles: below serving, above tier-up.
const UPLOAD_NICE: i32 = 10;
/// Niceness of background tier-up: it runs on otherwise idle time.
const TIER_UP_NICE: i32 = 19;

pub(super) struct Pool {
    pool: rayon::ThreadPool,
    /// The CPU clock of each of the pool's threads.
    clocks: Arc<Mutex<Vec<libc::clockid_t>>>,
    one_at_a_time: Mutex<()>,
}

impl Pool {
    pub(super) fn uploads(threads: usize) -> anyhow::Result<Pool> {
        Pool::new("compile", threads, UPLOAD_NICE)
    }

    pub(super) fn tier_up(threads: usize) -> anyhow::Result<Pool> {
        Pool::new("tier-up", threads, TIER_UP_NICE)
    }

    fn new(name: &'static str, threads: usize, nice: i32) -> anyhow::Result<Pool> {
        let clocks: Arc<Mutex<Vec<libc::clockid_t>>> = Arc::default();
        let started = clocks.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .start_handler(move |_| {
                lower_priority(nice);
                if let Some(clock) = own_clock() {
                    started.lock().unwrap_or_else(PoisonError::into_inner).push(clock);
                }
            })
            .build()?;
        Ok(Pool { pool, clocks, one_at_a_time: Mutex::new(()) })
    }

    /// Run `work` (a compile: its parallel parts stay on this pool), charging the CPU it took
    /// to `account`.
    pub(super) fn run<T: Send>(&self, account: Option<&Account>, work: impl FnOnce() -> T + Send) -> T {
        let _one = self.one_at_a_time.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.cpu();
        let done = self.pool.install(work);
        if let Some(account) = account {
            account.charge_compile(self.cpu().saturating_sub(before));
        }
        done
    }

    /// CPU the pool's threads have used so far.
    fn cpu(&self) -> Duration {
        let clocks = self.clocks.lock().unwrap_or_else(PoisonError::into_inner);
        clocks.iter().map(|clock| clock_time(*clock)).sum()
    }
}

/// Lower the calling thread's priority (Linux schedules threads by their own niceness).
#[allow(unsafe_code, reason = "setpriority and gettid have no safe wrapper in std")]
fn lower_priority(nice: i32) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // its scheduling priority, which a thread may always lower.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) } != 0;
    if failed {
        tracing::debug!("could not lower a compile thread's priority: {}", std::io::Error::last_os_error());
    }
}

/// The calling thread's CPU clock, readable from other threads.
#[allow(unsafe_code, reason = "pthread_getcpuclockid has no safe wrapper in std")]
fn own_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread; the call writes `clock`.
    let ok = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
    ok.then_some(clock)
}
