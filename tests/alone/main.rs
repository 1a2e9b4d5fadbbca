//! End-to-end tests that hold the host to time bounds (a misbehaving call answered within
//! its deadline plus 100 ms). They run in their own test binary, which cargo runs after the
//! others and never beside them, so the rest of the suite's load cannot blur what they
//! measure. They share the main suite's test host.

#[path = "../all/support.rs"]
#[allow(dead_code, reason = "the main suite uses the rest of its helpers")]
mod support;
#[path = "../all/watchdog.rs"]
mod watchdog;

mod noisy;
