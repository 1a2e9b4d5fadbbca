//! The add-on's settings from the host's configuration: `[addon.config]` values, and
//! `[addon.secrets]`, which the host never logs.

use crate::host::imp;

/// A setting from the add-on's `[config]` table.
pub fn get(key: &str) -> Option<String> {
    imp::config(key)
}

/// A secret from the add-on's `[secrets]` table.
pub fn secret(name: &str) -> Option<String> {
    imp::secret(name)
}

/// The add-on's id on this host (e.g. `myaddon`).
pub fn addon_id() -> String {
    imp::addon_id()
}
