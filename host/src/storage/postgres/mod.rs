//! The shared backend: PostgreSQL, for several hosts serving the same add-ons.
//!
//! Every space lives in one table, `kv (space, key, value)`, ordered by `(space, key)`. A
//! commit is one transaction that first takes the space's transaction-scoped advisory lock,
//! so commits to a space are serialised across every host, then runs the stage's reads and
//! applies its batch. The transaction commits without waiting for the disk (releasing the
//! lock at once), and a synchronous barrier after it returns once the WAL holding it is
//! flushed ([`tx::DURABLE`]): a commit is durable when it returns, and concurrent commits share
//! the database's flushes. Cross-host locks on a key ([`Backend::lock`]) are session
//! advisory locks on one connection per host, released by PostgreSQL itself if the host dies.
//! Other hosts learn of changes through `LISTEN`/`NOTIFY` on [`CHANNEL`].
//!
//! The client is tokio-postgres with a deadpool pool, driven by a small runtime of its own,
//! so the blocking interface above it can be called from any thread (a runtime's blocking
//! section, a plain thread, the CLI) without touching the caller's runtime.

mod locks;
mod setup;
mod tx;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::broadcast;

use super::backend::{Backend, LockFuture, Stage};
use super::{CommitStats, Result, StorageError};
use crate::config::StorageConfig;
use locks::{LockSession, lock_id};
use tx::{ASYNC_COMMIT, GET, TxReader, apply, scan};

/// The channel hosts announce changes on.
const CHANNEL: &str = "addon_host";
/// Sent to this host's subscribers when its listening connection was re-established, since
/// announcements made meanwhile are lost: whatever they cover must be looked at again.
pub const RESYNC: &str = "resync";
/// The longest any one statement may run (a commit's wait for its space's lock included).
const STATEMENT_TIMEOUT_MS: u64 = 30_000;
pub(super) struct Postgres {
    /// Drives every connection; shut down (without blocking) when the backend is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    locks: Arc<LockSession>,
    events: broadcast::Sender<String>,
    commits: AtomicU64,
}

pub(super) fn db_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Database(e.to_string())
}

/// A client error with its causes (a TLS handshake's says which certificate check failed).
pub(super) fn db_failure(e: impl std::error::Error) -> StorageError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    StorageError::Database(message)
}

impl Postgres {
    pub(super) fn connect(cfg: &StorageConfig, url: &str) -> Result<Postgres> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| db_error(format!("the postgres URL: {e}")))?;
        // A database that stops answering must fail requests, not hold them forever: bounded
        // connects, keepalives that notice a dead peer, and a ceiling on any one statement
        // (each URL setting wins).
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        }
        pg.keepalives(true).keepalives_idle(Duration::from_secs(10));
        if pg.get_options().is_none() {
            pg.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(db_failure)?;
        let handle = runtime.handle().clone();
        let tls = setup::tls(cfg)?;
        let manager =
            Manager::from_config(pg.clone(), tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .create_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .build()
            .map_err(db_failure)?;
        let (events, _) = broadcast::channel(1024);
        let backend = Postgres {
            runtime: Some(runtime),
            handle: handle.clone(),
            pool,
            locks: Arc::new(LockSession { pg: pg.clone(), tls: tls.clone(), client: tokio::sync::Mutex::new(None) }),
            events: events.clone(),
            commits: AtomicU64::new(0),
        };
        let pool = backend.pool.clone();
        backend.run(async move { setup::migrate(&pool).await })??;
        handle.spawn(setup::listen(pg, tls, events));
        Ok(backend)
    }

    /// Run `work` on the backend's runtime and wait for it on this thread.
    pub(super) fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| db_error("the database runtime stopped"))
    }

    fn client(&self) -> Result<Arc<Object>> {
        let pool = self.pool.clone();
        Ok(Arc::new(self.run(async move { pool.get().await })?.map_err(db_failure)?))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Backend for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn spaces(&self) -> Result<Vec<String>> {
        let client = self.client()?;
        let rows = self.run(async move { client.query("SELECT DISTINCT space FROM kv ORDER BY space", &[]).await })?;
        Ok(rows.map_err(db_failure)?.iter().map(|r| r.get(0)).collect())
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // One hand-off to the database's runtime for the connection and the query together.
        let (pool, space, key) = (self.pool.clone(), space.to_owned(), key.to_vec());
        self.run(async move {
            let client = pool.get().await.map_err(db_failure)?;
            let statement = client.prepare_cached(GET).await.map_err(db_failure)?;
            let row = client.query_opt(&statement, &[&space, &key]).await.map_err(db_failure)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })?
    }

    fn scan(&self, space: &str, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        scan(self, &self.client()?, space, prefix, None, visit)
    }

    fn commit(&self, space: &str, stage: &mut Stage<'_>) -> Result<()> {
        // The transaction takes the space's lock first. Its commit does not wait for the disk
        // (the lock is released as soon as the batch is applied), and the barrier after it
        // waits for the WAL flush. Two round trips in all when the stage reads ahead: the
        // begin with its reads, then the writes with the commit and the barrier.
        let begin = format!("BEGIN; {ASYNC_COMMIT} SELECT pg_advisory_xact_lock({})", lock_id("space", space));
        let client = self.client()?;
        let reader = TxReader {
            pg: self,
            client: &client,
            space,
            begin: std::cell::RefCell::new(Some(begin)),
            ahead: Default::default(),
        };
        let outcome = stage(&reader).and_then(|batch| {
            let (c, name, begin) = (client.clone(), space.to_owned(), reader.begin.borrow_mut().take());
            self.run(async move { apply(&c, &name, begin, batch).await })?.map_err(db_failure)
        });
        match outcome {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let c = client.clone();
                if let Ok(Err(rollback)) = self.run(async move { c.batch_execute("ROLLBACK").await }) {
                    tracing::warn!("rolling back a refused commit failed: {rollback}");
                }
                Err(e)
            }
        }
    }

    fn flush(&self) -> Result<()> {
        // Each commit was durable when it returned.
        Ok(())
    }

    fn stats(&self) -> CommitStats {
        let commits = self.commits.load(Ordering::Relaxed);
        CommitStats { writes: commits, flushes: commits }
    }

    fn lock(&self, key: &str, wait: Duration) -> LockFuture {
        let (session, key, handle) = (self.locks.clone(), key.to_owned(), self.handle.clone());
        let task = self.handle.spawn(async move { session.lock(key, wait, handle).await });
        Box::pin(async move { task.await.map_err(db_failure)? })
    }

    fn announce(&self, payload: &str) -> Result<()> {
        let (client, payload) = (self.client()?, payload.to_owned());
        self.run(async move { client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await })?
            .map_err(db_failure)?;
        Ok(())
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.events.subscribe())
    }
}
