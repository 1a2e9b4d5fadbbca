//! Cross-host locks on PostgreSQL: session advisory locks, tried on one connection per host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres_rustls::MakeRustlsConnect;

use super::db_failure;
use crate::storage::backend::Held;
use crate::storage::{Result, StorageError};

/// A 64-bit advisory lock id for `name` of `kind`, the same on every host.
pub(super) fn lock_id(kind: &str, name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{kind}\0{name}").as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(id)
}

/// The connection this host holds its cross-host locks on. A lock is tried, not waited for
/// inside the database, so one connection carries every lock the host holds; a waiter polls.
/// If the connection is lost PostgreSQL releases its locks, as it does when the host dies.
pub(super) struct LockSession {
    pub(super) pg: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
    pub(super) client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl LockSession {
    async fn session(&self) -> Result<Arc<tokio_postgres::Client>> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        if slot.is_some() {
            tracing::error!("the connection holding this host's resource locks was lost; reconnecting");
        }
        let (client, connection) = self.pg.connect(self.tls.clone()).await.map_err(db_failure)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("the lock connection ended: {e}");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    pub(super) async fn lock(
        &self,
        key: String,
        wait: Duration,
        handle: tokio::runtime::Handle,
    ) -> Result<Option<Box<dyn Held>>> {
        let until = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let client = self.session().await?;
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_id("key", &key)])
                .await
                .map_err(db_failure)?;
            if row.get::<_, bool>(0) {
                return Ok(Some(Box::new(SessionLock { client, key, handle })));
            }
            if Instant::now() + pause > until {
                return Err(StorageError::LockTimeout);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }
}

/// A held cross-host lock; dropping it unlocks (on the backend's runtime, never blocking).
struct SessionLock {
    client: Arc<tokio_postgres::Client>,
    key: String,
    handle: tokio::runtime::Handle,
}

impl Held for SessionLock {}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let (client, key) = (self.client.clone(), std::mem::take(&mut self.key));
        self.handle.spawn(async move {
            if let Err(e) = client.execute("SELECT pg_advisory_unlock($1)", &[&lock_id("key", &key)]).await {
                tracing::warn!("releasing a resource lock failed (the database releases it with its session): {e}");
            }
        });
    }
}
