//! The small imports: `log` (the guest's lines into the host's log, within a per-call
//! budget), `config` (the add-on's own settings and secrets) and `env` (time, randomness).
//! Each implements its interface on a borrowed view of the call, as wasmtime-wasi does.

use super::bindings::addon::provider::{config, env, log, types};
use super::state::AddonEnv;

/// The guest's log lines for one call, counted against its budget.
pub(crate) struct GuestLog {
    pub(crate) addon: String,
    pub(crate) call: &'static str,
    max_bytes: usize,
    bytes: usize,
    /// Bytes dropped for being over the budget.
    pub(crate) dropped: usize,
    recent: std::sync::Arc<super::recent::RecentLogs>,
}

impl GuestLog {
    pub(crate) fn new(
        addon: &str,
        call: &'static str,
        max_bytes: usize,
        recent: std::sync::Arc<super::recent::RecentLogs>,
    ) -> GuestLog {
        GuestLog { addon: addon.to_owned(), call, max_bytes, bytes: 0, dropped: 0, recent }
    }

    /// Tell the add-on's deployers, in its recent lines, that output was dropped.
    pub(crate) fn report_dropped(&self) {
        let note = format!("[host] {} bytes of output over the call's log budget were dropped", self.dropped);
        self.recent.push("warn", self.call, &note);
    }

    /// Log a line from the guest, within the call's log budget.
    pub(crate) fn line(&mut self, level: log::Level, message: &str) {
        if self.bytes + message.len() > self.max_bytes {
            self.dropped += message.len();
            return;
        }
        self.bytes += message.len();
        let (addon, call) = (self.addon.as_str(), self.call);
        let name = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.recent.push(name, call, message);
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", addon, call, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", addon, call, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", addon, call, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", addon, call, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", addon, call, "{message}"),
        }
    }
}

impl log::Host for &mut GuestLog {
    fn log(&mut self, level: log::Level, message: String) {
        self.line(level, &message);
    }
}

/// The add-on's settings as its plugin sees them (read-only).
pub(crate) struct AddonView<'a>(pub(crate) &'a AddonEnv);

impl types::Host for AddonView<'_> {}

impl config::Host for AddonView<'_> {
    fn addon_id(&mut self) -> String {
        self.0.id.clone()
    }

    fn get(&mut self, key: String) -> Option<String> {
        self.0.config.get(&key).cloned()
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.0.secrets.get(&name).cloned()
    }
}

impl env::Host for AddonView<'_> {
    fn now_ms(&mut self) -> u64 {
        crate::clock::now_ms()
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut buf = vec![0u8; len.min(4096) as usize];
        // The OS generator only fails on broken systems; an empty reply (which the guest
        // can detect) is better than a buffer of zeros passed off as random.
        if getrandom::fill(&mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}
