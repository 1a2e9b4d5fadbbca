//! Where async code runs work that may block (sled, a log sync, PostgreSQL's blocking
//! interface): never on a runtime worker that other requests are waiting for.
//!
//! On a multi-thread runtime this is `block_in_place`: the request's thread stops being a
//! worker (its queued tasks move to another worker at once) and does the work itself, which
//! saves the two thread wake-ups of a hop to the blocking pool and back. The work cannot be
//! abandoned half-way by a dropped request either: it runs inside one poll. Elsewhere (a
//! current-thread runtime, as in some tests) it goes to the blocking pool.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Run `work` where blocking is allowed. Fails only if the blocking pool's task panicked or
/// was cancelled (the runtime shutting down).
pub(crate) async fn off_worker<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if in_multi_thread_runtime() {
        return Ok(tokio::task::block_in_place(work));
    }
    tokio::task::spawn_blocking(work).await
}

/// Run `work` where blocking is allowed, from synchronous code that may be on a runtime
/// worker (a destructor): in place, after giving up the worker on a multi-thread runtime.
pub(crate) fn off_worker_now<T>(work: impl FnOnce() -> T) -> T {
    if in_multi_thread_runtime() {
        return tokio::task::block_in_place(work);
    }
    work()
}

fn in_multi_thread_runtime() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}
