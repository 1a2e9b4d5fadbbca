//! The per-call sandbox state: what a plugin's imports reach, and the limiter that caps its
//! memory. One `CallState` lives in one `Store` for exactly one export call.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::addon::provider::{config, env, kv, log, types};
use crate::config::Limits;
use crate::storage::KvTxn;

/// What the host knows about an add-on that its plugin may see.
#[derive(Debug, Clone)]
pub struct AddonEnv {
    pub id: String,
    pub config: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub limits: Limits,
}

pub(crate) struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: CallLimiter,
    pub(super) env: Arc<AddonEnv>,
    pub(super) call: &'static str,
    pub(super) kv: KvTxn,
    /// The first key-value request refused for exceeding a limit.
    pub(super) quota_violation: Option<String>,
    /// A storage error met by an import; the call cannot be trusted after it.
    pub(super) storage_failure: Option<String>,
    pub(super) log_bytes: usize,
    pub(super) log_dropped: usize,
    pub(super) stdout: super::output::CappedOutput,
    pub(super) stderr: super::output::CappedOutput,
}

/// Caps one call's linear memory and remembers whether the cap was hit, so a failure that
/// follows (a trap or an abort in the guest's allocator) is reported as a memory limit.
pub(crate) struct CallLimiter {
    pub memory_cap: usize,
    pub memory_denied: bool,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(maximum.is_none_or(|m| desired <= m))
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl CallState {
    fn quota(&mut self, message: String) -> kv::KvError {
        if self.quota_violation.is_none() {
            self.quota_violation = Some(message.clone());
        }
        kv::KvError::QuotaExceeded(message)
    }

    fn check_key(&mut self, key: &str) -> Result<(), kv::KvError> {
        if key.is_empty() {
            return Err(kv::KvError::InvalidKey("keys must not be empty".into()));
        }
        let max = self.env.limits.max_key_bytes;
        if key.len() > max {
            return Err(kv::KvError::InvalidKey(format!("key of {} bytes exceeds the {max}-byte limit", key.len())));
        }
        Ok(())
    }

    fn check_write(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), kv::KvError> {
        self.check_key(key)?;
        let limits = &self.env.limits;
        if let Some(v) = value
            && v.len() > limits.max_value_bytes
        {
            let msg =
                format!("value of {} bytes for `{key}` exceeds the {}-byte limit", v.len(), limits.max_value_bytes);
            return Err(self.quota(msg));
        }
        if !self.kv.is_pending(key) && self.kv.write_count() >= limits.max_writes_per_call {
            let msg = format!("more than {} key-value writes in one call", limits.max_writes_per_call);
            return Err(self.quota(msg));
        }
        Ok(())
    }

    fn storage<T>(&mut self, r: crate::storage::Result<T>) -> Result<T, kv::KvError> {
        r.map_err(|e| {
            let msg = e.to_string();
            self.storage_failure.get_or_insert_with(|| msg.clone());
            kv::KvError::Storage(msg)
        })
    }

    /// Log a line from the guest, within the call's log budget.
    pub(super) fn guest_log(&mut self, level: log::Level, message: &str) {
        let max = self.env.limits.max_log_bytes;
        if self.log_bytes + message.len() > max {
            self.log_dropped += message.len();
            return;
        }
        self.log_bytes += message.len();
        let (addon, call) = (self.env.id.as_str(), self.call);
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", addon, call, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", addon, call, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", addon, call, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", addon, call, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", addon, call, "{message}"),
        }
    }
}

impl types::Host for CallState {}

impl kv::Host for CallState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.check_key(&key)?;
        let r = self.kv.get(&key);
        self.storage(r)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        self.check_write(&key, Some(&value))?;
        self.kv.set(&key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        self.check_write(&key, None)?;
        let r = self.kv.delete(&key);
        self.storage(r)
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, kv::KvError> {
        let r = self.kv.list_keys(&prefix);
        self.storage(r)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, kv::KvError> {
        self.check_write(&key, new.as_deref())?;
        let r = self.kv.compare_and_swap(&key, expected.as_deref(), new);
        self.storage(r)
    }
}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) {
        self.guest_log(level, &message);
    }
}

impl config::Host for CallState {
    fn addon_id(&mut self) -> String {
        self.env.id.clone()
    }

    fn get(&mut self, key: String) -> Option<String> {
        self.env.config.get(&key).cloned()
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.env.secrets.get(&name).cloned()
    }
}

impl env::Host for CallState {
    fn now_ms(&mut self) -> u64 {
        crate::clock::now_ms()
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut buf = vec![0u8; len.min(4096) as usize];
        // The OS generator only fails on broken systems; an all-zero buffer would be worse
        // than a trap, so fall back to refusing the call through a trap-free empty reply.
        if getrandom::fill(&mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}
