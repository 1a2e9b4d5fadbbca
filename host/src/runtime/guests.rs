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

/// Niceness of the slow lane's threads.
const SLOW_LANE_NICE: i32 = 10;

pub(super) struct Guests {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Guests {
    pub(super) fn start() -> anyhow::Result<Guests> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("guest")
            // Below the threads serving requests: a long call takes the cores from short ones
            // only when they leave them free (see `cpu` for fairness among calls).
            .on_thread_start(|| {
                super::compile::lower_priority(super::compile::Priority::Nice(SLOW_LANE_NICE));
                super::cpu::gate_this_thread();
            })
            .event_interval(1)
            .enable_all()
            .build()?;
        Ok(Guests { runtime: Some(runtime) })
    }

    /// Run one call: in the caller's task at first, then in the slow lane if it outlasts
    /// [`FAST_LANE`]. Dropping the returned future (a client gone, a request budget spent)
    /// cancels the call at its next yield, in either lane.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, CallFailure>> + Send + 'static,
    ) -> Result<T, CallFailure> {
        let mut call = Box::pin(call);
        let started = Instant::now();
        let fast = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
            Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
            // Polled again and still running: it is computing, not waiting. Move it.
            Poll::Pending if started.elapsed() >= FAST_LANE => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        if let Some(outcome) = fast.await {
            return outcome;
        }
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

/// Aborts its task when dropped (a finished task ignores it).
struct Cancel<T>(JoinHandle<T>);

impl<T> Drop for Cancel<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
