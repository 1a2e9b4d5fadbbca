//! The `kv` import: a call's key-value view, with its limits and its per-call budget of host
//! memory. Everything a call makes the host hold for it (pending writes, the values it read
//! and must re-check at commit, the keys it listed) counts against that budget, so a plugin
//! cannot make the host allocate far beyond its own memory cap.
//!
//! A storage failure is not the plugin's business: it traps the call (through the trappable
//! [`KvFailure`]) and the host answers 500 (503 when the shared database failed the read),
//! rather than handing the guest an error it might
//! ignore and then succeed with.

use super::bindings::addon::provider::kv::{self, KvError};
use crate::config::Limits;
use crate::storage::{KvTxn, StorageError};

/// What one call did with its key-value store.
pub(crate) struct KvCall {
    /// `None` in a spare instance while it is made: there is no call yet.
    pub(crate) txn: Option<KvTxn>,
    /// Set when the guest used the store while its instance was made (its start function).
    pub(crate) used_early: bool,
    /// The first request refused for exceeding a limit: if the call then fails, it failed
    /// because of that limit.
    pub(crate) quota_violation: Option<String>,
    /// Bytes of host memory this call's key-value work has made the host hold.
    held_bytes: usize,
}

impl KvCall {
    pub(crate) fn new(txn: KvTxn) -> KvCall {
        KvCall { txn: Some(txn), used_early: false, quota_violation: None, held_bytes: 0 }
    }

    /// The store of an instance made ahead of its call (see [`super::spares`]).
    pub(crate) fn before_call() -> KvCall {
        KvCall { txn: None, used_early: false, quota_violation: None, held_bytes: 0 }
    }

    fn txn(&mut self) -> Result<&mut KvTxn, KvFailure> {
        if self.txn.is_none() {
            self.used_early = true;
        }
        self.txn.as_mut().ok_or(KvFailure::Early)
    }
}

/// The view the `kv` import gets: the call's store and the add-on's limits, borrowed.
pub(crate) struct KvView<'a> {
    pub(crate) call: &'a mut KvCall,
    pub(crate) limits: &'a Limits,
}

/// How a `kv` import fails: refused (the guest gets the error) or broken (the call traps).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KvFailure {
    #[error("refused: {0:?}")]
    Refused(KvError),
    #[error("the host's key-value storage failed")]
    Storage(#[from] StorageError),
    #[error("the key-value store is used before any call, while the instance is made")]
    Early,
}

impl From<KvError> for KvFailure {
    fn from(e: KvError) -> Self {
        KvFailure::Refused(e)
    }
}

impl KvView<'_> {
    fn quota(&mut self, message: String) -> KvFailure {
        self.call.quota_violation.get_or_insert_with(|| message.clone());
        KvFailure::Refused(KvError::QuotaExceeded(message))
    }

    fn check_key(&self, key: &str) -> Result<(), KvFailure> {
        if key.is_empty() {
            return Err(KvError::InvalidKey("keys must not be empty".into()).into());
        }
        let max = self.limits.max_key_bytes;
        if key.len() > max {
            return Err(KvError::InvalidKey(format!("key of {} bytes exceeds the {max}-byte limit", key.len())).into());
        }
        Ok(())
    }

    fn check_write(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), KvFailure> {
        self.check_key(key)?;
        let limits = self.limits;
        if let Some(v) = value
            && v.len() > limits.max_value_bytes
        {
            let msg =
                format!("value of {} bytes for `{key}` exceeds the {}-byte limit", v.len(), limits.max_value_bytes);
            return Err(self.quota(msg));
        }
        let txn = self.call.txn()?;
        if !txn.is_pending(key) && txn.write_count() >= limits.max_writes_per_call {
            let msg = format!("more than {} key-value writes in one call", limits.max_writes_per_call);
            return Err(self.quota(msg));
        }
        self.hold(key.len() + value.map_or(0, <[u8]>::len))
    }

    /// Count `bytes` more of host memory against the call's budget. The count only grows: a
    /// value overwritten in the same call still cost the host an allocation.
    fn hold(&mut self, bytes: usize) -> Result<(), KvFailure> {
        let max = self.limits.max_call_host_bytes;
        if self.call.held_bytes.saturating_add(bytes) > max {
            let msg = format!("this call's key-value reads, writes and listings exceed {max} bytes of host memory");
            return Err(self.quota(msg));
        }
        self.call.held_bytes += bytes;
        Ok(())
    }
}

impl kv::Host for KvView<'_> {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvFailure> {
        self.check_key(&key)?;
        let value = self.call.txn()?.get(&key)?;
        self.hold(key.len() + value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), KvFailure> {
        self.check_write(&key, Some(&value))?;
        self.call.txn()?.set(&key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<bool, KvFailure> {
        self.check_write(&key, None)?;
        Ok(self.call.txn()?.delete(&key)?)
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, KvFailure> {
        let budget = self.limits.max_call_host_bytes.saturating_sub(self.call.held_bytes);
        let keys = self.call.txn()?.list_keys(&prefix, budget)?;
        let Some(keys) = keys else {
            let msg = format!("listing `{prefix}` would exceed this call's {} bytes of host memory", {
                self.limits.max_call_host_bytes
            });
            return Err(self.quota(msg));
        };
        self.hold(keys.iter().map(String::len).sum())?;
        Ok(keys)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, KvFailure> {
        self.check_write(&key, new.as_deref())?;
        Ok(self.call.txn()?.compare_and_swap(&key, expected.as_deref(), new)?)
    }

    fn convert_kv_error(&mut self, failure: KvFailure) -> wasmtime::Result<KvError> {
        match failure {
            KvFailure::Refused(e) => Ok(e),
            KvFailure::Storage(e) => Err(wasmtime::Error::new(e).context("key-value storage failed")),
            KvFailure::Early => Err(wasmtime::Error::msg(KvFailure::Early.to_string())),
        }
    }
}
