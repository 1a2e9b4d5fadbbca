//! Which long calls run below the request path. Fair turns at the cores (see `cpu`) bound how
//! many of an add-on's long calls run at once, not what they take from the threads serving
//! requests: the OS shares a core between a spinning call's thread and a request's thread by
//! weight, so a neighbour flooding spinning calls still kept a healthy add-on to about half
//! its throughput. Running every long call under `SCHED_IDLE` fixed that, but on a busy
//! machine it starved legitimate long calls past their deadline with no other add-on in sight.
//!
//! So the slow lane has two pools of threads (see `guests`): one at the request path's
//! priority, one under `SCHED_IDLE`. The calls of a *spinner*, an add-on whose recent calls
//! mostly ran into their deadline (see [`SPINNER_FROM`]), run in the idle pool while any other
//! add-on has run a call in the last [`ACTIVE`]: they only end at their deadline, so the
//! cores they would take are better left to calls that finish. Nobody else yields. Yielding
//! by measured CPU (a busier add-on's calls below a quieter one's) made legitimate long calls
//! (a big reply, a memory bomb meant to hit its cap) miss their deadline under the suite's
//! load, even when they yielded only for the first half of it; and its guest CPU is not even
//! the measure, as a healthy add-on's requests spend most of their CPU in the host (routing,
//! storage). One call that ran into its deadline does not make a spinner either, so an
//! add-on's other calls still reach their own failure in time on a loaded machine.
//!
//! Nor does a spinner's every call yield: only once it has run for its [`grace`]. A spinner's
//! other calls (a write refused at its quota, a memory bomb at its cap) end well within it
//! and keep their own failure; when they all yielded, next to a busy neighbour on a loaded
//! machine they starved into their deadline instead.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::account::Account;

/// How recently another add-on must have run a call for a spinner to yield to it.
const ACTIVE: Duration = Duration::from_millis(100);
/// An add-on's count of recent calls that ran into their deadline is up by 2 at each such
/// call and down by 1 at each that did not (between 0 and [`SPINNER_MAX`]); at
/// [`SPINNER_FROM`] or more, it is a spinner.
const SPINNER_FROM: u32 = 4;
const SPINNER_MAX: u32 = 8;

/// How long a spinner's call runs at the request path's priority before it yields: a tenth of
/// its deadline, at most [`GRACE_MAX`]. What a spinning call takes from the others is its
/// grace over its deadline: a tenth at most, 3 % at the default deadline of 3 s.
pub(super) fn grace(deadline: Duration) -> Duration {
    (deadline / 10).min(GRACE_MAX)
}
const GRACE_MAX: Duration = Duration::from_millis(100);

/// When an add-on last ran a call (nanoseconds since the host's first call), and how many
/// of its recent calls ran into their deadline.
#[derive(Debug, Default)]
pub(super) struct Seen {
    last: AtomicU64,
    overran: AtomicU32,
    /// Whether the add-on is in [`Active`]'s list.
    listed: AtomicBool,
}

/// The add-ons that ran a call lately, and whether long calls yield to them at all
/// (`server.slow_lane_yield`).
pub(super) struct Active {
    on: bool,
    accounts: Mutex<Vec<Arc<Account>>>,
}

impl Active {
    pub(super) fn new(on: bool) -> Active {
        Active { on, accounts: Mutex::new(Vec::new()) }
    }

    /// A call of `account` is running (one of its polls starts).
    pub(super) fn saw(&self, account: &Arc<Account>, now: Instant) {
        if !self.on {
            return;
        }
        let seen = account.seen();
        seen.last.store(nanos(now), Relaxed);
        if !seen.listed.load(Relaxed) && !seen.listed.swap(true, Relaxed) {
            self.accounts.lock().unwrap_or_else(PoisonError::into_inner).push(account.clone());
        }
    }

    /// A call of `account` ended (or was dropped): after its deadline if `overran`.
    pub(super) fn ended(&self, account: &Account, overran: bool) {
        let step = |n: u32| Some(if overran { (n + 2).min(SPINNER_MAX) } else { n.saturating_sub(1) });
        let _ = account.seen().overran.fetch_update(Relaxed, Relaxed, step);
    }

    /// Whether a long call of `account` yields now: runs in the idle pool (see the module's
    /// docs).
    pub(super) fn yields(&self, account: &Arc<Account>) -> bool {
        if !self.on || account.seen().overran.load(Relaxed) < SPINNER_FROM {
            return false;
        }
        let at = nanos(Instant::now());
        let mut yields = false;
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts.retain(|other| {
            if at.saturating_sub(other.seen().last.load(Relaxed)) >= ACTIVE.as_nanos() as u64 {
                other.seen().listed.store(false, Relaxed);
                return false;
            }
            yields |= !Arc::ptr_eq(other, account);
            true
        });
        yields
    }
}

/// `now` in nanoseconds since the first call of this function, from 1.
fn nanos(now: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two add-ons with calls now.
    fn two_active(active: &Active) -> (Arc<Account>, Arc<Account>) {
        let (spinner, quiet) = (Account::new(1), Account::new(1));
        active.saw(&spinner, Instant::now());
        active.saw(&quiet, Instant::now());
        (spinner, quiet)
    }

    /// Red if one overrun made a spinner (its add-on's other calls would starve on a loaded
    /// machine), if calls back in time left it one, or if a spinner did not yield.
    #[test]
    fn an_addon_whose_calls_mostly_overran_yields_and_no_one_else() {
        let active = Active::new(true);
        let (spinner, quiet) = two_active(&active);
        // Busy but in time: a legitimate heavy add-on keeps its priority.
        spinner.charge(Duration::from_secs(2), Instant::now());
        assert!(!active.yields(&spinner), "an add-on yielded for its CPU alone");
        active.ended(&spinner, true);
        assert!(!active.yields(&spinner), "one call past its deadline made a spinner");
        active.ended(&spinner, true);
        assert!(active.yields(&spinner), "a spinner did not yield");
        assert!(!active.yields(&quiet), "the quiet add-on yielded");
        active.ended(&spinner, false);
        active.ended(&spinner, false);
        assert!(!active.yields(&spinner), "calls back in time left it a spinner");
        let off = Active::new(false);
        off.saw(&quiet, Instant::now());
        (0..4).for_each(|_| off.ended(&spinner, true));
        assert!(!off.yields(&spinner), "yielded with slow_lane_yield off");
    }

    /// Red if a spinner yielded to an add-on with no calls lately (alone, it would run
    /// idle-class on a loaded machine for nobody's benefit), or to itself.
    #[test]
    fn nobody_yields_to_an_addon_without_calls_lately() {
        let active = Active::new(true);
        let (spinner, quiet) = (Account::new(1), Account::new(1));
        (0..2).for_each(|_| active.ended(&spinner, true));
        // Times count from the first one taken: take it before the one in the past.
        nanos(Instant::now());
        std::thread::sleep(ACTIVE + Duration::from_millis(20));
        active.saw(&quiet, Instant::now() - ACTIVE - Duration::from_millis(10));
        active.saw(&spinner, Instant::now());
        assert!(!active.yields(&spinner), "a spinner yielded to an add-on with no calls lately, or to itself");
        assert_eq!(active.accounts.lock().unwrap().len(), 1, "the stale add-on stayed listed");
        active.saw(&quiet, Instant::now());
        assert!(active.yields(&spinner), "listed again at its next call");
    }
}
