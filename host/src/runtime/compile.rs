//! Where plugins compile while the host serves. Cranelift compiles a component's functions in
//! parallel on rayon's pool, which by default is every core at the priority of serving: one
//! partner's 18 MB upload took 60% of a healthy neighbour's throughput for the 10 s its
//! compiles ran. So uploads compile on a pool of their own whose threads run at the lowest
//! normal priority (nice 19), and the background tier-up (Winch's build replaced by
//! Cranelift's) on another under `SCHED_IDLE`, which runs only on time no other thread wants:
//! serving comes first, a partner's upload next, and no upload waits behind a background
//! build. (A niced thread still keeps a core for a scheduler slice, milliseconds, when a
//! serving thread wakes; an idle-class one yields it at once.) Each pool compiles
//! one plugin at a time, so the CPU its threads used in between is that plugin's, and it is
//! charged to the add-on that uploaded it (see [`super::account::Account::charge_compile`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::account::{Account, clock_time};

/// How a pool's threads are scheduled.
#[derive(Clone, Copy)]
pub(super) enum Priority {
    /// Normal scheduling at this niceness.
    Nice(i32),
    /// `SCHED_IDLE`: only when nothing else wants the core.
    Idle,
}

pub(super) struct Pool {
    pool: rayon::ThreadPool,
    /// The CPU clock of each of the pool's threads.
    clocks: Arc<Mutex<Vec<libc::clockid_t>>>,
    one_at_a_time: Mutex<()>,
}

impl Pool {
    pub(super) fn uploads(threads: usize) -> anyhow::Result<Pool> {
        Pool::new("compile", threads, Priority::Nice(19))
    }

    pub(super) fn tier_up(threads: usize) -> anyhow::Result<Pool> {
        Pool::new("tier-up", threads, Priority::Idle)
    }

    fn new(name: &'static str, threads: usize, priority: Priority) -> anyhow::Result<Pool> {
        let clocks: Arc<Mutex<Vec<libc::clockid_t>>> = Arc::default();
        let started = clocks.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .start_handler(move |_| {
                lower_priority(priority);
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

/// Lower the calling thread's priority (Linux schedules threads by their own policy and
/// niceness); with `Idle`, niceness 19 if the idle class is refused.
#[allow(unsafe_code, reason = "setpriority, sched_setscheduler and gettid have no safe wrapper in std")]
pub(super) fn lower_priority(priority: Priority) {
    // SAFETY: gettid has no preconditions; both calls only lower the scheduling priority of
    // the calling thread (our own thread id), which a thread may always do.
    let tid = unsafe { libc::gettid() };
    if let Priority::Idle = priority {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: as above; `param` outlives the call.
        if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
    }
    let nice = match priority {
        Priority::Nice(nice) => nice,
        Priority::Idle => 19,
    };
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
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
