//! `[addon.deploys]`: what one add-on's deploys may cost the host. Every upload is stored
//! (its bytes, in the host's storage), compiled (CPU, and its compiled code in the compile
//! cache) and loaded (memory); a deploy token in a partner's CI must not be able to fill
//! any of them. Past a limit an upload is refused with a 4xx naming it, and the partner
//! deletes versions it no longer needs (`addon-host plugin delete`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployLimits {
    /// Versions kept in storage, the active one included.
    pub max_versions: usize,
    /// Bytes of all stored versions together.
    pub max_stored_mib: u64,
    /// Uploads each deployer (deploy token or admin) may make per hour, refused ones included.
    pub uploads_per_hour: u32,
    /// Compiled versions kept in memory besides the active one and the rollback target (the
    /// most recently used); others are reloaded from the compile cache when wanted.
    pub max_loaded_extra: usize,
}

impl Default for DeployLimits {
    fn default() -> Self {
        DeployLimits { max_versions: 20, max_stored_mib: 512, uploads_per_hour: 60, max_loaded_extra: 1 }
    }
}

impl DeployLimits {
    pub fn max_stored_bytes(&self) -> u64 {
        self.max_stored_mib.saturating_mul(1 << 20)
    }
}
