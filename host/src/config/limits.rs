//! `[addon.limits]`: what one add-on's plugin may use. Every call runs under these; the
//! defaults fit a million-app add-on (see the README for the reasoning).

use anyhow::bail;
use serde::Deserialize;

/// What one plugin call may use. The defaults keep a misbehaving plugin from hurting the
/// host or its neighbours while leaving ample room for real provisioning logic.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock budget of one plugin call. Bitrise abandons /provision after 10 s; 3 s
    /// leaves room for storage, a conflict retry and the network.
    pub deadline_ms: u64,
    /// Linear memory a call's instance may grow to.
    pub memory_mib: u64,
    /// Largest reply (sum of variable names, values and message) a plugin may return.
    pub max_reply_bytes: usize,
    /// Most variables in one reply.
    pub max_vars: usize,
    /// Log bytes (WIT log plus stdout/stderr) kept per call; the rest is dropped and counted.
    pub max_log_bytes: usize,
    /// Longest key-value key.
    pub max_key_bytes: usize,
    /// Largest key-value value.
    pub max_value_bytes: usize,
    /// Most key-value writes one call may make.
    pub max_writes_per_call: usize,
    /// Largest request body accepted from a platform.
    pub max_body_bytes: usize,
    /// Optional instruction budget per call (wasmtime fuel). Off by default: the deadline
    /// already bounds CPU, and metering costs every add-on some speed once any add-on uses it.
    pub fuel: Option<u64>,
    /// Net bytes (keys + values) one call may add to the add-on's key-value data: what one
    /// provision or plan change can store for its resource.
    pub max_call_kv_bytes: u64,
    /// Total bytes (keys + values) the add-on may keep in its key-value store: a backstop
    /// against a runaway plugin filling the disk, sized for a million resources.
    pub max_kv_bytes: u64,
    /// Total keys the add-on may keep in its key-value store.
    pub max_kv_keys: u64,
    /// Host memory one call's key-value work may make the host hold: its pending writes,
    /// the values it read (kept to re-check at commit) and the keys it listed. Bounds what
    /// a plugin can allocate outside its own memory cap.
    pub max_call_host_bytes: usize,
    /// Plugin calls of this add-on that may run at once: its share of the host's
    /// `server.max_concurrent_calls` (default: a quarter of them).
    pub max_concurrent_calls: Option<u32>,
    /// Calls that may wait for the add-on's share; past that, requests are answered 503
    /// with `Retry-After` at once (default: four times the share).
    pub max_queued_calls: Option<u32>,
    /// The add-on's weight when calls compete for the cores (`server.plugin_cores`): one with
    /// weight 2 gets twice the CPU of one with weight 1 when both want more than they get.
    pub cpu_weight: u32,
    /// Jobs one call may enqueue.
    pub max_jobs_per_call: usize,
    /// Largest payload of one job.
    pub max_job_payload_bytes: usize,
    /// Jobs the add-on may keep stored (pending, retrying and dead): past it, a call that
    /// enqueues more fails, so a plugin whose jobs enqueue jobs cannot fill the disk.
    pub max_stored_jobs: u64,
    /// Outbound HTTP requests one call may make.
    pub max_http_requests_per_call: usize,
    /// Largest response body one outbound request may return.
    pub max_http_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 3_000,
            memory_mib: 64,
            max_reply_bytes: 64 * 1024,
            max_vars: 64,
            max_log_bytes: 16 * 1024,
            max_key_bytes: 512,
            max_value_bytes: 256 * 1024,
            max_writes_per_call: 1_000,
            max_body_bytes: 64 * 1024,
            fuel: None,
            // A popular add-on serves a million apps: 16 KiB and 50 keys each still fit, while
            // one call can add at most 1 MiB, so a runaway plugin fills the store only as fast
            // as its platform provisions.
            max_call_kv_bytes: 1 << 20,
            max_kv_bytes: 16 << 30,
            max_kv_keys: 50_000_000,
            max_call_host_bytes: 8 << 20,
            max_concurrent_calls: None,
            max_queued_calls: None,
            cpu_weight: 1,
            max_jobs_per_call: 16,
            max_job_payload_bytes: 64 * 1024,
            max_stored_jobs: 1_000_000,
            max_http_requests_per_call: 32,
            max_http_response_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Check the limits of the add-on `at` names: every cap positive, memory within 32-bit
    /// linear memory.
    pub(super) fn validate(&self, at: &str) -> anyhow::Result<()> {
        for (name, value) in [
            ("deadline_ms", self.deadline_ms),
            ("memory_mib", self.memory_mib),
            ("max_reply_bytes", self.max_reply_bytes as u64),
            ("max_vars", self.max_vars as u64),
            ("max_key_bytes", self.max_key_bytes as u64),
            ("max_value_bytes", self.max_value_bytes as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("fuel", self.fuel.unwrap_or(1)),
            ("max_call_kv_bytes", self.max_call_kv_bytes),
            ("max_kv_bytes", self.max_kv_bytes),
            ("max_kv_keys", self.max_kv_keys),
            ("max_call_host_bytes", self.max_call_host_bytes as u64),
            ("max_stored_jobs", self.max_stored_jobs),
            ("max_concurrent_calls", self.max_concurrent_calls.unwrap_or(1) as u64),
        ] {
            if value == 0 {
                bail!("{at}: `limits.{name}` must be greater than 0");
            }
        }
        if self.memory_mib > 4096 {
            bail!("{at}: `limits.memory_mib` must be at most 4096 (32-bit linear memory)");
        }
        Ok(())
    }
}
