//! The compiled versions an add-on keeps in memory. Compiled code is the largest thing a
//! version costs the host, and uploads without activation (a deploy token's, a canary's)
//! would otherwise each stay loaded for the life of the process. So beyond the active
//! version and the rollback target, only the most recently used few are kept; any other
//! version is compiled again (in milliseconds, from the compile cache) when it is wanted.

use std::sync::Arc;

use crate::runtime::Plugin;

/// Loaded versions, least recently used first.
pub(super) struct Loaded {
    entries: Vec<Arc<Plugin>>,
}

impl Loaded {
    pub(super) fn new(active: Arc<Plugin>) -> Loaded {
        Loaded { entries: vec![active] }
    }

    /// The loaded build of version `sha256`, now the most recently used.
    pub(super) fn get(&mut self, sha256: &str) -> Option<Arc<Plugin>> {
        let at = self.entries.iter().position(|p| p.sha256 == sha256)?;
        let plugin = self.entries.remove(at);
        self.entries.push(plugin.clone());
        Some(plugin)
    }

    /// Keep `plugin` as the most recently used, then drop the least recently used versions
    /// other than those in `keep` until at most `extra` others remain.
    pub(super) fn put(&mut self, plugin: Arc<Plugin>, keep: &[&str], extra: usize) {
        self.entries.retain(|p| p.sha256 != plugin.sha256);
        self.entries.push(plugin);
        self.trim(keep, extra);
    }

    /// Drop versions beyond `keep` and the `extra` most recently used others.
    pub(super) fn trim(&mut self, keep: &[&str], extra: usize) {
        let others = self.entries.iter().filter(|p| !keep.contains(&p.sha256.as_str())).count();
        let mut surplus = others.saturating_sub(extra);
        self.entries.retain(|p| {
            let evict = surplus > 0 && !keep.contains(&p.sha256.as_str());
            surplus -= usize::from(evict);
            !evict
        });
    }

    /// Forget version `sha256` (deleted).
    pub(super) fn forget(&mut self, sha256: &str) {
        self.entries.retain(|p| p.sha256 != sha256);
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
