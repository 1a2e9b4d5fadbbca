//! `[addon.jobs]`: how the host runs an add-on's jobs (see `crate::jobs`). Each add-on has
//! its own concurrency, so one partner's backlog never holds another's jobs back.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Time one run of a job may take (a job may call slow APIs; platform calls keep
    /// `limits.deadline_ms`).
    pub deadline_ms: u64,
    /// Runs before a failing job goes to the dead-letter list.
    pub max_attempts: u32,
    /// Jobs of this add-on that may run at once.
    pub max_concurrent: u32,
    /// Job runs this add-on may start per second (a burst of up to this many at once).
    pub max_starts_per_second: u32,
    /// The first retry waits about this long; each further one twice as long (with jitter).
    pub backoff_ms: u64,
    /// The longest wait between two runs.
    pub max_backoff_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            deadline_ms: 10_000,
            max_attempts: 8,
            max_concurrent: 2,
            max_starts_per_second: 20,
            backoff_ms: 1_000,
            max_backoff_ms: 3_600_000,
        }
    }
}

impl JobsConfig {
    /// The wait before run `attempt + 1` after `attempt` failed runs: exponential, capped,
    /// and jittered into its upper half so retries of many jobs spread out. `retry_after`
    /// (from the plugin) is a floor.
    pub fn backoff_ms(&self, attempt: u32, retry_after: Option<u64>, random: u64) -> u64 {
        let exp = self.backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(40)).min(self.max_backoff_ms);
        let jittered = exp / 2 + random % (exp / 2 + 1);
        jittered.max(retry_after.unwrap_or(0).min(self.max_backoff_ms))
    }

    pub(super) fn validate(&self, at: &str) -> anyhow::Result<()> {
        for (name, value) in [
            ("deadline_ms", self.deadline_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("max_concurrent", u64::from(self.max_concurrent)),
            ("max_starts_per_second", u64::from(self.max_starts_per_second)),
            ("backoff_ms", self.backoff_ms),
        ] {
            if value == 0 {
                anyhow::bail!("{at}: `jobs.{name}` must be greater than 0");
            }
        }
        if self.max_backoff_ms < self.backoff_ms {
            anyhow::bail!("{at}: `jobs.max_backoff_ms` must be at least `jobs.backoff_ms`");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_honours_retry_after() {
        let jobs = JobsConfig { backoff_ms: 1_000, max_backoff_ms: 10_000, ..JobsConfig::default() };
        for (attempt, full) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000), (5, 10_000), (30, 10_000)] {
            for random in [0, 7, 999_999] {
                let wait = jobs.backoff_ms(attempt, None, random);
                assert!(wait >= full / 2 && wait <= full, "attempt {attempt}: {wait} outside {}..={full}", full / 2);
            }
        }
        assert_eq!(jobs.backoff_ms(1, Some(7_000), 0), 7_000);
        assert_eq!(jobs.backoff_ms(1, Some(u64::MAX), 0), 10_000);
    }
}
