//! Fair CPU between add-ons. A deadline bounds how long one call may compute and a share
//! bounds how many calls an add-on runs, but neither bounds how much of the machine its calls
//! take: spinning calls held every core for their whole deadline while a quiet add-on's calls
//! queued behind them in the OS scheduler.
//!
//! So guest code runs only while its call holds a *core* of [`Cores`] (`server.plugin_cores`,
//! default the machine's). A call takes a core for each poll of its future and gives it back
//! when the poll ends; a spinning guest's poll ends at every epoch tick. A call that has to
//! wait while a core is held by an add-on that used more CPU lately (for its weight) does not
//! wait for the tick: it *preempts*, advancing the engines' epoch, and every running guest
//! yields at its next loop or call. Its add-on's next poll usually follows within
//! microseconds, so a core it gives back while only busier add-ons wait is kept for it until
//! the next tick, the idle time counted as its use. Otherwise a freed core goes to the waiting call whose
//! add-on has used the least CPU lately for its weight (`limits.cpu_weight`): CPU measured
//! on the thread that ran each poll, decaying with a half-life of [`HALF_LIFE`]. A call that
//! finds a core free takes it without a hand-off, so the common call (one short poll) pays
//! two clock reads and two uncontended lock operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::account::{Account, thread_cpu};

/// The cores guest code may run on, and the calls waiting for one.
pub(super) struct Cores {
    state: Mutex<Line>,
    /// Who ran calls lately: whom long calls yield to (see `priority`).
    active: super::priority::Active,
    /// Makes every running guest yield soon (advances the engines' epoch).
    preempt: Box<dyn Fn() + Send + Sync>,
}

struct Line {
    free: usize,
    /// Cores kept for a quieter add-on's next poll, since then (until the next tick).
    kept: Vec<(Arc<Account>, Instant)>,
    /// The add-ons of the calls holding (or owed) a core.
    running: Vec<Arc<Account>>,
    next: u64,
    waiting: Vec<Waiter>,
}

struct Waiter {
    ticket: u64,
    account: Arc<Account>,
    /// Past it, the call goes first: it only needs a moment to be answered as timed out.
    until: Instant,
    waker: Waker,
}

impl Cores {
    /// `yields`: whether a spinner's long calls run below the request path while other
    /// add-ons have calls (see `priority`).
    pub(super) fn new(cores: usize, yields: bool, preempt: Box<dyn Fn() + Send + Sync>) -> Arc<Cores> {
        let line = Line { free: cores.max(1), kept: Vec::new(), running: Vec::new(), next: 0, waiting: Vec::new() };
        let active = super::priority::Active::new(yields);
        Arc::new(Cores { state: Mutex::new(line), active, preempt })
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Give back the core a call of `account` held: to the best-placed waiter (it owns the
    /// core from now on, and is woken to use it). If that waiter's add-on is busier than
    /// `account`'s, the core is kept for `account`'s next poll until the next tick instead
    /// (see [`Cores::tick`]); with nobody waiting, it is free.
    fn release(&self, account: &Arc<Account>) {
        let mut line = self.line();
        if let Some(i) = line.running.iter().position(|a| Arc::ptr_eq(a, account)) {
            line.running.swap_remove(i);
        }
        let now = Instant::now();
        match line.best(now) {
            Some((_, rank)) if rank > account.rank(now) => line.kept.push((account.clone(), now)),
            Some((i, _)) => {
                let waker = line.grant(i);
                drop(line);
                waker.wake();
            }
            None => line.free += 1,
        }
    }

    /// Every epoch tick: cores kept for a quieter add-on since before the tick go to whoever
    /// waits (the idle time counted against that add-on's turn, so keeping is never free).
    pub(super) fn tick(&self) {
        let mut line = self.line();
        if line.kept.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut wake = Vec::new();
        for (account, since) in std::mem::take(&mut line.kept) {
            account.charge(now.saturating_duration_since(since), now);
            match line.best(now) {
                Some((i, _)) => wake.push(line.grant(i)),
                None => line.free += 1,
            }
        }
        drop(line);
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Line {
    /// The waiter to go next, and its rank: calls past their deadline first, then the add-on
    /// that used the least CPU lately for its weight, then the longest waiting.
    fn best(&self, now: Instant) -> Option<(usize, f64)> {
        self.waiting
            .iter()
            .enumerate()
            .map(|(i, w)| (i, if now >= w.until { f64::NEG_INFINITY } else { w.account.rank(now) }, w.ticket))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)))
            .map(|(i, rank, _)| (i, rank))
    }

    /// Give waiter `i` a core; its waker, to wake once the line is unlocked.
    fn grant(&mut self, i: usize) -> Waker {
        let granted = self.waiting.swap_remove(i);
        self.running.push(granted.account);
        granted.waker
    }
}

thread_local! {
    /// Whether guest code on this thread needs a core: on the slow lane's threads (see
    /// `guests`), where every call has run for more than the fast lane's 5 ms. A call's first
    /// milliseconds run in the request's own task, as fast as ever: the host's workers bound
    /// how many run at once, and handing a core over would cost an ordinary call more than
    /// the call itself (a thread wake-up, hundreds of microseconds on a busy VM, for a
    /// 60 µs call). Their CPU is measured and charged all the same.
    static GATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether this thread is one of the slow lane's idle pool (see `priority`).
    static YIELDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Make guest code on the calling thread wait for a core (the slow lane's threads); with
/// `yielding`, count its CPU as run below the request path (the idle pool's).
pub(super) fn gate_this_thread(yielding: bool) {
    GATED.set(true);
    YIELDING.set(yielding);
}

/// A call's future, run only while it holds a core (see the module's docs).
pub(super) struct Scheduled<F> {
    inner: F,
    cores: Arc<Cores>,
    account: Arc<Account>,
    /// When the call started, and its deadline.
    started: Instant,
    until: Instant,
    /// Waiting for a core since then, with this ticket.
    waiting: Option<(u64, Instant)>,
    used: Arc<Used>,
    /// Whether its end counts towards its add-on being a spinner (calls, not spares).
    counted: bool,
}

/// What one call used, shared with whoever started it.
#[derive(Default)]
pub(super) struct Used {
    cpu_ns: AtomicU64,
    waited_ns: AtomicU64,
}

impl Used {
    /// CPU the call's guest code ran for, and how long it waited for cores.
    pub(super) fn read(&self) -> (Duration, Duration) {
        let load = |n: &AtomicU64| Duration::from_nanos(n.load(Ordering::Relaxed));
        (load(&self.cpu_ns), load(&self.waited_ns))
    }
}

impl<F> Scheduled<F> {
    pub(super) fn new(inner: F, cores: Arc<Cores>, account: Arc<Account>, used: Arc<Used>, until: Instant) -> Self {
        Scheduled { inner, cores, account, started: Instant::now(), until, waiting: None, used, counted: true }
    }

    /// Making a spare instance, not a call: its end says nothing of the add-on's calls.
    pub(super) fn spare(mut self) -> Self {
        self.counted = false;
        self
    }

    /// When the call started, and its deadline.
    pub(super) fn times(&self) -> (Instant, Instant) {
        (self.started, self.until)
    }

    /// Whether the call runs below the request path now (see `priority`): its add-on is a
    /// spinner, and the call itself has run past its grace.
    pub(super) fn yields(&self) -> bool {
        let ran = self.started.elapsed();
        ran >= super::priority::grace(self.until.saturating_duration_since(self.started))
            && self.cores.active.yields(&self.account)
    }
}

impl<F: Future + Unpin> Future for Scheduled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.cores.active.saw(&this.account, Instant::now());
        // In the fast lane (a request's own task) guest code runs at once: see `GATED`.
        let gated = GATED.get();
        if gated && !this.take_core(cx) {
            return Poll::Pending;
        }
        let before = thread_cpu();
        let polled = Pin::new(&mut this.inner).poll(cx);
        let used = thread_cpu().saturating_sub(before);
        if gated {
            this.cores.release(&this.account);
        }
        this.account.ran(used, gated && YIELDING.get(), Instant::now());
        this.used.cpu_ns.fetch_add(used.as_nanos() as u64, Ordering::Relaxed);
        polled
    }
}

impl<F> Scheduled<F> {
    /// Whether this poll may run guest code: a core was free, or was given to this call.
    fn take_core(&mut self, cx: &mut Context<'_>) -> bool {
        let mut line = self.cores.line();
        if let Some((ticket, since)) = self.waiting {
            if let Some(waiter) = line.waiting.iter_mut().find(|w| w.ticket == ticket) {
                waiter.waker.clone_from(cx.waker());
                return false;
            }
            // No longer in line: a release gave this call its core.
            drop(line);
            self.waiting = None;
            self.count_wait(since);
            return true;
        }
        if line.free > 0 && line.waiting.is_empty() {
            line.free -= 1;
            line.running.push(self.account.clone());
            return true;
        }
        let now = Instant::now();
        let rank = self.account.rank(now);
        // A core kept for this add-on, or for one at least as busy.
        if let Some(i) = line.kept.iter().position(|(a, _)| Arc::ptr_eq(a, &self.account) || a.rank(now) >= rank) {
            let (keeper, since) = line.kept.swap_remove(i);
            keeper.charge(now.saturating_duration_since(since), now);
            line.running.push(self.account.clone());
            return true;
        }
        let ticket = line.next;
        line.next += 1;
        let (account, until) = (self.account.clone(), self.until);
        line.waiting.push(Waiter { ticket, account, until, waker: cx.waker().clone() });
        self.waiting = Some((ticket, now));
        // Preempt when a core is held by an add-on further back in line than this one.
        let outranked = line.running.iter().any(|a| a.rank(now) > rank);
        drop(line);
        if outranked {
            (self.cores.preempt)();
        }
        false
    }

    fn count_wait(&self, since: Instant) {
        let waited = since.elapsed().as_nanos() as u64;
        self.account.waited(waited);
        self.used.waited_ns.fetch_add(waited, Ordering::Relaxed);
    }
}

impl<F> Drop for Scheduled<F> {
    /// A call dropped while in line leaves it; one dropped after it was given a core (and
    /// before it ran) passes the core on. A call (not a spare instance made ahead) counts
    /// whether it ended past its deadline towards its add-on being a spinner (`priority`).
    fn drop(&mut self) {
        if self.counted {
            self.cores.active.ended(&self.account, Instant::now() >= self.until);
        }
        let Some((ticket, _)) = self.waiting else { return };
        let mut line = self.cores.line();
        if let Some(i) = line.waiting.iter().position(|w| w.ticket == ticket) {
            line.waiting.swap_remove(i);
        } else {
            drop(line);
            self.cores.release(&self.account);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn poll<F: Future + Unpin>(call: &mut Scheduled<F>) -> Poll<F::Output> {
        gate_this_thread(false);
        Pin::new(call).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn call(cores: &Arc<Cores>, account: &Arc<Account>) -> Scheduled<std::future::Ready<()>> {
        let until = Instant::now() + Duration::from_secs(60);
        Scheduled::new(std::future::ready(()), cores.clone(), account.clone(), Arc::default(), until)
    }

    /// One core, held by a running call of `holder`; counts preemptions.
    fn one_core_held_by(holder: &Arc<Account>) -> (Arc<Cores>, Arc<AtomicUsize>) {
        let preempted = Arc::new(AtomicUsize::new(0));
        let count = preempted.clone();
        let cores = Cores::new(1, false, Box::new(move || _ = count.fetch_add(1, Ordering::Relaxed)));
        let mut line = cores.line();
        line.free = 0;
        line.running.push(holder.clone());
        drop(line);
        (cores, preempted)
    }

    /// Red if a freed core went to the longest waiter (FIFO) or to anyone but the add-on
    /// that used the least CPU for its weight.
    #[test]
    fn a_freed_core_goes_to_the_add_on_that_used_least_for_its_weight() {
        let (spinner, quiet, heavy) = (Account::new(1), Account::new(1), Account::new(4));
        let now = Instant::now();
        spinner.charge(Duration::from_millis(400), now);
        quiet.charge(Duration::from_millis(10), now);
        heavy.charge(Duration::from_millis(200), now);
        // The spinner's running call holds the only core; two more of its calls wait, then the
        // quiet add-on's (10 ms lately), then one of the add-on of weight 4 (200 ms: 50 ms per
        // weight, behind the quiet one, ahead of the spinner's 400 ms).
        let (cores, _) = one_core_held_by(&spinner);
        let (mut second, mut third) = (call(&cores, &spinner), call(&cores, &spinner));
        let (mut quiet_call, mut heavy_call) = (call(&cores, &quiet), call(&cores, &heavy));
        for waiting in [&mut second, &mut third, &mut quiet_call, &mut heavy_call] {
            assert!(poll(waiting).is_pending(), "no core is free");
        }
        cores.release(&spinner);
        assert!(poll(&mut second).is_pending(), "the spinner's second call waited longest, yet is not next");
        assert!(poll(&mut quiet_call).is_ready(), "the quiet add-on's call got the freed core");
        // Only busier add-ons wait: the core is kept for the quiet one's next poll.
        assert!(poll(&mut heavy_call).is_pending(), "the core was not kept for the quiet add-on");
        assert!(poll(&mut call(&cores, &quiet)).is_ready(), "the quiet add-on's next call waited");
        // Kept again, until the tick gives it to the heavy-weighted add-on (50 ms per weight).
        cores.tick();
        assert!(poll(&mut second).is_pending());
        assert!(poll(&mut heavy_call).is_ready());
        cores.tick();
        assert!(poll(&mut second).is_ready(), "among equals, the longest waiter");
        assert!(poll(&mut third).is_ready());
        let line = cores.line();
        assert_eq!((line.free, line.running.len()), (1, 0), "every core given back");
    }

    /// A call that waits behind an add-on that used more CPU preempts it at once (red
    /// without the preemption); one of the same add-on, or of a busier one, does not (red
    /// if spinners preempted each other at every poll).
    #[test]
    fn a_quiet_call_preempts_a_busier_addon_and_no_one_else() {
        let (spinner, quiet) = (Account::new(1), Account::new(1));
        spinner.charge(Duration::from_millis(400), Instant::now());
        let (cores, preempted) = one_core_held_by(&spinner);
        let mut same = call(&cores, &spinner);
        assert!(poll(&mut same).is_pending());
        assert_eq!(preempted.load(Ordering::Relaxed), 0, "a spinner preempted its own add-on");
        let mut quiet_call = call(&cores, &quiet);
        assert!(poll(&mut quiet_call).is_pending());
        assert_eq!(preempted.load(Ordering::Relaxed), 1, "the quiet call did not preempt");
        let (cores, preempted) = one_core_held_by(&quiet);
        let mut busier = call(&cores, &spinner);
        assert!(poll(&mut busier).is_pending());
        assert_eq!(preempted.load(Ordering::Relaxed), 0, "a busier add-on preempted a quieter one");
    }

    /// Red if a call dropped after it was given a core kept it.
    #[test]
    fn a_call_dropped_with_a_core_owed_passes_it_on() {
        let (holder, account) = (Account::new(1), Account::new(1));
        let (cores, _) = one_core_held_by(&holder);
        let (mut first, mut second) = (call(&cores, &account), call(&cores, &account));
        assert!(poll(&mut first).is_pending() && poll(&mut second).is_pending());
        cores.release(&holder);
        drop(first);
        assert!(poll(&mut second).is_ready(), "the dropped call's core went on");
        drop(second);
        assert_eq!(cores.line().free, 1);
        let mut later = call(&cores, &account);
        assert!(poll(&mut later).is_ready(), "a free core is taken without waiting");
    }

    /// Red if a spinner's call yielded before its grace (its calls that end in time, a write
    /// refused at its quota, would starve next to a busy neighbour) or not after it.
    #[test]
    fn a_spinners_call_yields_only_after_its_grace() {
        let cores = Cores::new(1, true, Box::new(|| {}));
        let (spinner, quiet) = (Account::new(1), Account::new(1));
        (0..2).for_each(|_| cores.active.ended(&spinner, true));
        // A deadline whose grace (100 ms) a loaded machine does not pass between two lines.
        let deadline = Duration::from_secs(2);
        let call =
            Scheduled::new(std::future::ready(()), cores.clone(), spinner, Arc::default(), Instant::now() + deadline);
        cores.active.saw(&quiet, Instant::now());
        assert!(!call.yields(), "a spinner's call yielded before its grace");
        std::thread::sleep(super::super::priority::grace(deadline) + Duration::from_millis(5));
        cores.active.saw(&quiet, Instant::now());
        assert!(call.yields(), "a spinner's call did not yield after its grace");
    }
}
