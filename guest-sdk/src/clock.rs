//! The host's clock.

use crate::host::imp;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}
