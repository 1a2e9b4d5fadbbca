//! Where guest code runs. A call starts in the caller's own task, so an ordinary call (well
//! under a millisecond of guest code) pays no thread hand-off. A call that is still running
//! after [`FAST_LANE`] moves, between two polls, to a tokio runtime of its own: the slow lane.
//!
//! A spinning guest yields only at epoch ticks, so each poll of its call takes a whole tick.
//! On the host's runtime, workers kept busy by such polls look at timers and sockets only
//! every `event_interval` polls (61 by default): deadlines and WASI sleeps fired up to
//! ~190 ms late, and healthy requests and `/healthz` waited behind partner code. In the slow
//! lane, long calls compete only with each other, its workers check their timers after
//! every poll, and the host's runtime stays free whatever its configuration.
//!
//! The slow lane has two pools of threads: one at the request path's priority, one under
//! `SCHED_IDLE` for a spinner's calls, which yield to other add-ons (see `priority`). A call moves between
//! them between two polls. Either way its caller answers at the deadline: an idle-class
//! thread may not run in time to see its call's own timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::instrument::WithSubscriber;

use super::CallFailure;
use super::cpu::Scheduled;

/// How long a call may run in its caller's task: two epoch ticks, far more than an ordinary
/// call needs, and short enough that a spinning one holds a host worker for two polls only.
const FAST_LANE: Duration = Duration::from_millis(5);

pub(super) struct Guests {
    /// The slow lane's threads at the request path's priority (`server.slow_lane_nice`), and
    /// under `SCHED_IDLE`, for a spinner's calls, which yield to other add-ons (see `priority`).
    runtimes: Option<[tokio::runtime::Runtime; 2]>,
}

impl Guests {
    /// `nice`: the niceness of the slow lane's first pool; `None` for `SCHED_IDLE`.
    pub(super) fn start(nice: Option<i32>) -> anyhow::Result<Guests> {
        let priority = nice.map_or(super::compile::Priority::Idle, super::compile::Priority::Nice);
        let pool = |name: &str, priority, yielding| {
            let threads = std::thread::available_parallelism().map_or(2, usize::from);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name(name)
                .on_thread_start(move || {
                    super::compile::lower_priority(priority);
                    super::cpu::gate_this_thread(yielding);
                })
                .event_interval(1)
                .enable_all()
                .build()
        };
        let runtimes = [pool("guest", priority, false)?, pool("guest-idle", super::compile::Priority::Idle, true)?];
        Ok(Guests { runtimes: Some(runtimes) })
    }

    /// Run one call: in the caller's task at first, then in the slow lane if it outlasts
    /// [`FAST_LANE`]. An add-on whose recent calls mostly outlasted it (`long` counts them,
    /// see [`Lanes`]) starts in the slow lane, so that its spinning calls do not hold a
    /// request worker for their first milliseconds either. Dropping the returned future (a
    /// client gone, a request budget spent) cancels the call at its next yield, in either lane.
    pub(super) async fn run<T: Send + 'static, F>(
        &self,
        mut call: Scheduled<F>,
        lanes: &Lanes,
    ) -> Result<T, CallFailure>
    where
        F: Future<Output = Result<T, CallFailure>> + Send + Unpin + 'static,
    {
        let started = Instant::now();
        if !lanes.starts_slow() {
            let fast = std::future::poll_fn(|cx| match Pin::new(&mut call).poll(cx) {
                Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
                // Polled again and still running: it is computing, not waiting. Move it.
                Poll::Pending if started.elapsed() >= FAST_LANE => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            });
            if let Some(outcome) = fast.await {
                lanes.short();
                return outcome;
            }
        }
        let outcome = self.slow(call).await;
        if started.elapsed() >= FAST_LANE {
            lanes.long();
        } else {
            lanes.short();
        }
        outcome
    }

    /// Run `call` in the slow lane: in the pool its add-on's standing asks for, moving
    /// between the two (between two polls) when that changes.
    async fn slow<T: Send + 'static, F>(&self, call: Scheduled<F>) -> Result<T, CallFailure>
    where
        F: Future<Output = Result<T, CallFailure>> + Send + Unpin + 'static,
    {
        let Some(runtimes) = &self.runtimes else {
            return Err(CallFailure::Host("the guest runtime is shut down".into()));
        };
        let mut idle = call.yields();
        let (started, until) = call.times();
        let deadline_ms = until.saturating_duration_since(started).as_millis() as u64;
        let mut call = Some(call);
        loop {
            // The call keeps the caller's span and subscriber, so its log lines stay the request's.
            let hop = Hop { call: call.take(), idle }.in_current_span().with_current_subscriber();
            let mut task = Cancel(runtimes[usize::from(idle)].spawn(hop));
            // The call's own timeout fires on its thread, which an idle-class one may not get
            // in time on a busy machine: the caller answers at the deadline all the same
            // (dropping the task cancels the call at its next yield).
            let Ok(joined) = tokio::time::timeout_at((until + LATE).into(), &mut task.0).await else {
                return Err(CallFailure::Deadline { deadline_ms });
            };
            match joined {
                Ok(Ok(outcome)) => return outcome,
                Ok(Err(moving)) => (call, idle) = (Some(moving), !idle),
                Err(e) if e.is_panic() => return Err(CallFailure::Host("the plugin call's task panicked".into())),
                Err(_) => {
                    return Err(CallFailure::Host("the plugin call was cancelled: the host is shutting down".into()));
                }
            }
        }
    }
}

/// How long after its deadline the caller stops waiting for a slow-lane call.
const LATE: Duration = Duration::from_millis(20);

/// A slow-lane call in one of the two pools: it ends (giving the call back) before a poll in
/// the wrong one.
struct Hop<F> {
    call: Option<Scheduled<F>>,
    idle: bool,
}

impl<T, F: Future<Output = Result<T, CallFailure>> + Unpin> Future for Hop<F> {
    type Output = Result<Result<T, CallFailure>, Scheduled<F>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let Some(mut call) = self.call.take() else {
            return Poll::Pending;
        };
        if call.yields() != self.idle {
            return Poll::Ready(Err(call));
        }
        let polled = Pin::new(&mut call).poll(cx);
        self.call = Some(call);
        polled.map(Ok)
    }
}

impl Drop for Guests {
    /// Without blocking: the host may be dropped inside an async context.
    fn drop(&mut self) {
        for runtime in self.runtimes.take().into_iter().flatten() {
            runtime.shutdown_background();
        }
    }
}

/// Which lane an add-on's calls start in: a count of its recent calls that outlasted the
/// fast lane, up on each such call and down on each short one (between 0 and
/// [`Lanes::MAX`]); at [`Lanes::SLOW_FROM`] or more, its calls start in the slow lane.
#[derive(Debug, Default)]
pub(super) struct Lanes(std::sync::atomic::AtomicU32);

impl Lanes {
    const MAX: u32 = 8;
    const SLOW_FROM: u32 = 4;

    fn starts_slow(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) >= Self::SLOW_FROM
    }

    fn long(&self) {
        let _ = self.0.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
            Some((n + 1).min(Self::MAX))
        });
    }

    fn short(&self) {
        let _ = self.0.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    }
}

/// Aborts its task when dropped (a finished task ignores it).
struct Cancel<T>(JoinHandle<T>);

impl<T> Drop for Cancel<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
