//! `[server.storage]`: where the host keeps its state. Without it, sled in `data_dir` (one
//! host is the whole service); with `postgres`, a PostgreSQL database that several hosts
//! share (see `storage::postgres`).

use serde::Deserialize;

use super::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// A PostgreSQL connection URL (`postgres://user:password@host:5432/db`). The schema is
    /// created and migrated at start-up.
    pub postgres: Option<Secret>,
    /// Connections each host keeps to the database for commits and reads (one more holds
    /// its resource locks, one more listens for other hosts' changes).
    pub pool_size: usize,
    /// How long to wait for a connection, new or from the pool.
    pub connect_timeout_ms: u64,
    /// PEM certificates of the authorities to trust for TLS to the database (a managed
    /// database's CA bundle). Without it, Mozilla's roots. TLS itself follows the URL's
    /// `sslmode`: `disable`, `prefer` (the default) or `require`.
    pub ca_file: Option<std::path::PathBuf>,
    /// sled only: how a commit is made durable in the write-ahead log. `range` (the default,
    /// as sled's own flush: `sync_file_range`) or `data` (`fdatasync`, which also empties a
    /// disk's volatile write cache, so a power cut cannot lose an acknowledged commit).
    pub sync: SyncMode,
}

/// How a commit to sled's write-ahead log is made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// `sync_file_range`: the written range reaches the device, as sled's own flush does.
    #[default]
    Range,
    /// `fdatasync`: also flushes the device's volatile write cache (survives a power cut on
    /// disks that have one), at about twice the cost on the development VM.
    Data,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            postgres: None,
            pool_size: 16,
            connect_timeout_ms: 5_000,
            ca_file: None,
            sync: SyncMode::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_is_range_by_default_and_names_its_modes() {
        assert_eq!(StorageConfig::default().sync, SyncMode::Range);
        let data: StorageConfig = toml::from_str("sync = \"data\"").expect("parses");
        assert_eq!(data.sync, SyncMode::Data);
        let wrong = toml::from_str::<StorageConfig>("sync = \"always\"").expect_err("an unknown mode is refused");
        assert!(wrong.to_string().contains("always"), "{wrong}");
    }
}
