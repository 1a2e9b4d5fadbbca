//! Rate limits at the edge: a token bucket per (add-on, caller) — the build API's per app
//! (`[addon.web] api_rate_per_minute`, `api_burst`), uploads per deployer
//! (`[addon.deploys] uploads_per_hour`). Kept in memory, per host: with several hosts behind
//! one balancer a caller gets up to that many times the rate, which the README states.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More buckets than this and the full (idle) ones are dropped.
const MAX_BUCKETS: usize = 100_000;

#[derive(Default)]
pub(crate) struct RateLimits {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// Take one request from the bucket of `caller` of `addon`; when it is empty, how long
    /// until it holds one again.
    pub(crate) fn take(&self, addon: &str, caller: &str, per_minute: f64, burst: u32) -> Result<(), Duration> {
        let (rate, burst) = (per_minute / 60.0, f64::from(burst.max(1)));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry((addon.to_owned(), caller.to_owned())).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(((1.0 - bucket.tokens) / rate.max(f64::MIN_POSITIVE)).min(3600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_its_burst_then_refuses_per_app() {
        let limits = RateLimits::default();
        for _ in 0..3 {
            assert_eq!(limits.take("a", "app-1", 60.0, 3), Ok(()));
        }
        let wait = limits.take("a", "app-1", 60.0, 3).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limits.take("a", "app-2", 60.0, 3), Ok(()), "another app has its own bucket");
        assert_eq!(limits.take("b", "app-1", 60.0, 3), Ok(()), "another add-on's app too");
    }
}
