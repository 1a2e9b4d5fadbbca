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

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::instrument::WithSubscriber;

use super::CallFailure;

/// How long a call may run in its caller's task: two epoch ticks, far more than an ordinary
/// call needs, and short enough that a spinning one holds a host worker for two polls only.
const FAST_LANE: Duration = Duration::from_millis(5);

pub(super) struct Guests {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Guests {
    /// `nice`: the slow lane's threads' niceness; `None` for `SCHED_IDLE`.
    pub(super) fn start(nice: Option<i32>) -> anyhow::Result<Guests> {
        let priority = nice.map_or(super::compile::Priority::Idle, super::compile::Priority::Nice);
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("guest")
            // Below the threads serving requests (`server.slow_lane_nice`, or `SCHED_IDLE`
            // with `slow_lane_idle`; see `cpu` for fairness among long calls).
            .on_thread_start(move || {
                super::compile::lower_priority(priority);
                super::cpu::gate_this_thread();
            })
            .event_interval(1)
            .enable_all()
            .build()?;
        Ok(Guests { runtime: Some(runtime) })
    }

    /// Run one call: in the caller's task at first, then in the slow lane if it outlasts
    /// [`FAST_LANE`]. An add-on whose recent calls mostly outlasted it (`long` counts them,
    /// see [`Lanes`]) starts in the slow lane, so that its spinning calls do not hold a
    /// request worker for their first milliseconds either. Dropping the returned future (a
    /// client gone, a request budget spent) cancels the call at its next yield, in either lane.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, CallFailure>> + Send + 'static,
        lanes: &Lanes,
    ) -> Result<T, CallFailure> {
        let mut call = Box::pin(call);
        let started = Instant::now();
        if !lanes.starts_slow() {
            let fast = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
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

    async fn slow<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, CallFailure>> + Send + 'static,
    ) -> Result<T, CallFailure> {
        let Some(runtime) = &self.runtime else {
            return Err(CallFailure::Host("the guest runtime is shut down".into()));
        };
        // The call keeps the caller's span and subscriber, so its log lines stay the request's.
        let call = call.in_current_span().with_current_subscriber();
        let mut task = Cancel(runtime.spawn(call));
        match (&mut task.0).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => Err(CallFailure::Host("the plugin call's task panicked".into())),
            Err(_) => Err(CallFailure::Host("the plugin call was cancelled: the host is shutting down".into())),
        }
    }
}

impl Drop for Guests {
    /// Without blocking: the host may be dropped inside an async context.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
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
