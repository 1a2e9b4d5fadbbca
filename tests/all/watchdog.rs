//! A hang fails fast, naming its test. Every test host (in-process or a spawned binary) starts
//! a watchdog for the test that created it: if that test is still running after its limit,
//! the whole test binary exits with the test's name, instead of holding CI until its own time
//! limit. `ADDON_TEST_TIMEOUT_SECS` changes the limit (default 180 s); the opt-in soaks
//! (`ADDON_SOAK_SECS`, `ADDON_CRASH_CYCLES`, `ADDON_FUZZ_CASES`) lift it unless it is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct Watchdog(Arc<AtomicBool>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn limit() -> Option<Duration> {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(secs) = var("ADDON_TEST_TIMEOUT_SECS") {
        return secs.parse().ok().map(Duration::from_secs);
    }
    let soaking = ["ADDON_SOAK_SECS", "ADDON_CRASH_CYCLES", "ADDON_FUZZ_CASES"].into_iter().any(|v| var(v).is_some());
    (!soaking).then_some(Duration::from_secs(180))
}

/// Watch the calling test (libtest names each test's thread after the test).
pub(crate) fn start() -> Watchdog {
    let done = Arc::new(AtomicBool::new(false));
    let Some(limit) = limit() else { return Watchdog(done) };
    let name = std::thread::current().name().unwrap_or("a test").to_owned();
    let flag = done.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < limit {
            if flag.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !flag.load(Ordering::Relaxed) {
            // Straight to stderr: libtest's output capture would swallow `eprintln!`.
            let message = format!("\nHUNG: test `{name}` is still running after {limit:?}; stopping the test run\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
            std::process::exit(101);
        }
    });
    Watchdog(done)
}
