//! Which long calls run below the request path. Fair turns at the cores (see `cpu`) bound how
//! many of an add-on's long calls run at once, not what they take from the threads serving
//! requests: the OS shares a core between a spinning call's thread and a request's thread by
//! weight, so a neighbour flooding spinning calls still kept a healthy add-on to about half
//! its throughput. Running every long call under `SCHED_IDLE` fixed that, but on a busy
//! machine it starved legitimate long calls past their deadline with no other add-on in sight.
//!
//! So the slow lane has two pools of threads (see `guests`): one at the request path's
//! priority, one under `SCHED_IDLE`. A long call runs in the idle pool only while it *yields*:
//! another add-on has run a call in the last [`ACTIVE`] and used less than half as much CPU
//! lately for its weight. Past half its deadline a call stops yielding, so a legitimate long
//! call still finishes. An add-on whose recent calls mostly ran into their deadline (a
//! spinner, see [`SPINNER_FROM`]) yields to every add-on with calls, to the end of its calls:
//! its guest CPU is not the measure, as a healthy add-on's requests spend most of theirs in the
//! host (routing, storage), so comparing guest CPU alone still left the spinner half the
//! machine. One call that ran into its deadline does not make a spinner: its add-on's other
//! calls (a memory bomb, a KV flood) must still reach their own failure in time on a loaded
//! machine.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::account::Account;

/// How recently another add-on must have run a call for a busier one to yield to it.
const ACTIVE: Duration = Duration::from_millis(100);
/// An add-on's count of recent calls that ran into their deadline is up by 2 at each such
/// call and down by 1 at each that did not (between 0 and [`SPINNER_MAX`]); at
/// [`SPINNER_FROM`] or more, it is a spinner.
const SPINNER_FROM: u32 = 4;
const SPINNER_MAX: u32 = 8;
/// A call yields to add-ons that used less than this fraction of its add-on's CPU lately.
const QUIETER: f64 = 0.5;

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

    /// Whether a long call of `account`, started at `started` with deadline `until`, yields
    /// now: runs in the idle pool (see the module's docs).
    pub(super) fn yields(&self, account: &Arc<Account>, started: Instant, until: Instant) -> bool {
        if !self.on {
            return false;
        }
        let now = Instant::now();
        let at = nanos(now);
        let spinner = account.seen().overran.load(Relaxed) >= SPINNER_FROM;
        if !spinner && now >= started + until.saturating_duration_since(started) / 2 {
            return false;
        }
        // A spinner yields to any add-on with calls; others to quieter ones.
        let rank = if spinner { f64::INFINITY } else { account.rank(now) };
        let mut yields = false;
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts.retain(|other| {
            if at.saturating_sub(other.seen().last.load(Relaxed)) >= ACTIVE.as_nanos() as u64 {
                other.seen().listed.store(false, Relaxed);
                return false;
            }
            yields |= !Arc::ptr_eq(other, account) && other.rank(now) < rank * QUIETER;
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

    /// A busy add-on (400 ms of CPU lately) and a quiet one (10 ms), both with calls now.
    fn busy_and_quiet(active: &Active) -> (Arc<Account>, Arc<Account>) {
        let (busy, quiet) = (Account::new(1), Account::new(1));
        let now = Instant::now();
        busy.charge(Duration::from_millis(400), now);
        quiet.charge(Duration::from_millis(10), now);
        active.saw(&busy, now);
        active.saw(&quiet, now);
        (busy, quiet)
    }

    /// A call started now with a 1 s deadline; one past half of it.
    fn fresh() -> (Instant, Instant) {
        let now = Instant::now();
        (now, now + Duration::from_secs(1))
    }

    fn past_half() -> (Instant, Instant) {
        let now = Instant::now();
        (now - Duration::from_millis(600), now + Duration::from_millis(400))
    }

    /// Red if calls yielded to busier or equal add-ons, or not at all.
    #[test]
    fn a_busy_addon_yields_to_a_quiet_one_and_not_the_reverse() {
        let active = Active::new(true);
        let (busy, quiet) = busy_and_quiet(&active);
        let (started, until) = fresh();
        assert!(active.yields(&busy, started, until), "the busy add-on did not yield");
        assert!(!active.yields(&quiet, started, until), "the quiet add-on yielded to a busier one");
        let twin = Account::new(1);
        twin.charge(Duration::from_millis(300), Instant::now());
        let equals = Active::new(true);
        equals.saw(&busy, Instant::now());
        equals.saw(&twin, Instant::now());
        assert!(!equals.yields(&busy, started, until), "an add-on yielded to one nearly as busy");
        assert!(!Active::new(false).yields(&busy, started, until), "yielded with slow_lane_yield off");
    }

    /// Red if an add-on with no calls lately was yielded to (a busy add-on alone would run
    /// idle-class on a loaded machine, the starvation this module exists to avoid).
    #[test]
    fn nobody_yields_to_an_addon_without_calls_lately() {
        let active = Active::new(true);
        let (busy, quiet) = (Account::new(1), Account::new(1));
        busy.charge(Duration::from_millis(400), Instant::now());
        // Times count from the first one taken: take it before the one in the past.
        nanos(Instant::now());
        std::thread::sleep(ACTIVE + Duration::from_millis(20));
        active.saw(&quiet, Instant::now() - ACTIVE - Duration::from_millis(10));
        active.saw(&busy, Instant::now());
        let (started, until) = fresh();
        assert!(!active.yields(&busy, started, until));
        assert_eq!(active.accounts.lock().unwrap().len(), 1, "the stale add-on stayed listed");
        active.saw(&quiet, Instant::now());
        assert!(active.yields(&busy, started, until), "listed again at its next call");
    }

    /// Red without the half-deadline return (legitimate long calls starve on a loaded
    /// machine), and red if a spinner got it too (it would take the cores back for half of
    /// every call) or yielded only to quieter add-ons.
    #[test]
    fn past_half_its_deadline_a_call_stops_yielding_unless_its_addon_overran() {
        let active = Active::new(true);
        let (busy, quiet) = busy_and_quiet(&active);
        let (started, until) = past_half();
        assert!(!active.yields(&busy, started, until), "a long call past half its deadline still yields");
        active.ended(&busy, true);
        assert!(!active.yields(&busy, started, until), "one call past its deadline made a spinner");
        active.ended(&busy, true);
        assert!(active.yields(&busy, started, until), "a spinner stopped yielding");
        active.ended(&busy, false);
        active.ended(&busy, false);
        assert!(!active.yields(&busy, started, until), "calls back in time left it a spinner");
        // A spinner yields to any add-on with calls, even a busier one.
        let busier = Account::new(1);
        busier.charge(Duration::from_secs(2), Instant::now());
        let others = Active::new(true);
        others.saw(&busier, Instant::now());
        others.ended(&quiet, true);
        others.ended(&quiet, true);
        assert!(others.yields(&quiet, started, until), "a spinner did not yield to a busier add-on");
    }
}
