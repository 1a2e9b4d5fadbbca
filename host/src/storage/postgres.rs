//! The shared backend: PostgreSQL, for several hosts serving the same add-ons.
//!
//! Every space lives in one table, `kv (space, key, value)`, ordered by `(space, key)`. A
//! commit is one transaction that first takes the space's transaction-scoped advisory lock,
//! so commits to a space are serialised across every host, then runs the stage's reads and
//! applies its batch; PostgreSQL's `COMMIT` returns once the WAL is flushed, so a commit is
//! durable when it returns. Cross-host locks on a key ([`Backend::lock`]) are session
//! advisory locks on one connection per host, released by PostgreSQL itself if the host dies.
//! Other hosts learn of changes through `LISTEN`/`NOTIFY` on [`CHANNEL`].
//!
//! The client is tokio-postgres with a deadpool pool, driven by a small runtime of its own,
//! so the blocking interface above it can be called from any thread (a runtime's blocking
//! section, a plain thread, the CLI) without touching the caller's runtime.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::backend::{Backend, Batch, Held, LockFuture, Reader, Stage};
use super::{CommitStats, Result, StorageError};
use crate::config::StorageConfig;

/// The channel hosts announce changes on.
const CHANNEL: &str = "addon_host";
/// Sent to this host's subscribers when its listening connection was re-established, since
/// announcements made meanwhile are lost: whatever they cover must be looked at again.
pub const RESYNC: &str = "resync";
const GET: &str = "SELECT value FROM kv WHERE space = $1 AND key = $2";
/// Rows fetched per round trip of a prefix scan.
const PAGE: i64 = 512;
/// The advisory lock taken while migrating the schema.
const MIGRATION_LOCK: i64 = 0x6164_646f_6e00;

/// The schema, one step per version; a step is never edited once released.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE kv (
        space TEXT NOT NULL,
        key BYTEA NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (space, key)
    )",
)];

pub(super) struct Postgres {
    /// Drives every connection; shut down (without blocking) when the backend is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    locks: Arc<LockSession>,
    events: broadcast::Sender<String>,
    commits: AtomicU64,
}

fn db_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Database(e.to_string())
}

impl Postgres {
    pub(super) fn connect(cfg: &StorageConfig, url: &str) -> Result<Postgres> {
        let pg: tokio_postgres::Config = url.parse().map_err(|e| db_error(format!("the postgres URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(db_error)?;
        let handle = runtime.handle().clone();
        let manager =
            Manager::from_config(pg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .create_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .build()
            .map_err(db_error)?;
        let (events, _) = broadcast::channel(1024);
        let backend = Postgres {
            runtime: Some(runtime),
            handle: handle.clone(),
            pool,
            locks: Arc::new(LockSession { pg: pg.clone(), client: tokio::sync::Mutex::new(None) }),
            events: events.clone(),
            commits: AtomicU64::new(0),
        };
        let pool = backend.pool.clone();
        backend.run(async move { migrate(&pool).await })??;
        handle.spawn(listen(pg, events));
        Ok(backend)
    }

    /// Run `work` on the backend's runtime and wait for it on this thread.
    fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| db_error("the database runtime stopped"))
    }

    fn client(&self) -> Result<Arc<Object>> {
        let pool = self.pool.clone();
        Ok(Arc::new(self.run(async move { pool.get().await })?.map_err(db_error)?))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Apply every migration this database lacks, one host at a time.
async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(db_error)?;
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS addon_host_schema (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db_error)?;
    let row = tx.query_one("SELECT coalesce(max(version), 0) FROM addon_host_schema", &[]).await.map_err(db_error)?;
    let current: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(db_error(format!(
            "the database's schema is version {current}, newer than this host knows ({known}); upgrade the host"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute("INSERT INTO addon_host_schema (version) VALUES ($1)", &[version]).await.map_err(db_error)?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(db_error)
}

/// Keep a connection listening on [`CHANNEL`], forwarding what arrives to the subscribers,
/// and reconnecting (with a [`RESYNC`]) when it drops.
async fn listen(pg: tokio_postgres::Config, events: broadcast::Sender<String>) {
    let mut first = true;
    loop {
        match pg.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                    std::future::pending::<std::result::Result<(), tokio_postgres::Error>>().await
                };
                tokio::pin!(listening);
                if !first {
                    let _ = events.send(RESYNC.to_owned());
                }
                first = false;
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                let _ = events.send(n.payload().to_owned());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!("the database's notification connection failed: {e}");
                                break;
                            }
                            None => break,
                        },
                        Err(e) = &mut listening => {
                            tracing::warn!("could not listen for other hosts' changes: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("could not connect to listen for other hosts' changes: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads inside a commit's transaction.
struct TxReader<'a> {
    pg: &'a Postgres,
    client: &'a Arc<Object>,
    space: &'a str,
}

impl Reader for TxReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        get(self.pg, self.client, self.space, key)
    }

    fn scan(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        scan(self.pg, self.client, self.space, prefix, visit)
    }
}

fn get(pg: &Postgres, client: &Arc<Object>, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let (client, space, key) = (client.clone(), space.to_owned(), key.to_vec());
    pg.run(async move {
        let statement = client.prepare_cached(GET).await?;
        let row = client.query_opt(&statement, &[&space, &key]).await?;
        Ok::<_, tokio_postgres::Error>(row.map(|r| r.get::<_, Vec<u8>>(0)))
    })?
    .map_err(db_error)
}

/// The first key after every key starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn scan(
    pg: &Postgres,
    client: &Arc<Object>,
    space: &str,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let end = prefix_end(prefix);
    let mut from: (Vec<u8>, bool) = (prefix.to_vec(), true);
    loop {
        let (client, space, end, (start, inclusive)) = (client.clone(), space.to_owned(), end.clone(), from.clone());
        let rows = pg
            .run(async move {
                let statement = client
                    .prepare_cached(
                        "SELECT key, value FROM kv WHERE space = $1
                           AND (key > $2 OR ($3 AND key = $2))
                           AND ($4::bytea IS NULL OR key < $4)
                         ORDER BY key LIMIT $5",
                    )
                    .await?;
                client.query(&statement, &[&space, &start, &inclusive, &end, &PAGE]).await
            })?
            .map_err(db_error)?;
        let full = rows.len() as i64 == PAGE;
        for row in &rows {
            let (key, value): (&[u8], &[u8]) = (row.get(0), row.get(1));
            if !visit(key, value) {
                return Ok(());
            }
        }
        match rows.last() {
            Some(last) if full => from = (last.get::<_, Vec<u8>>(0), false),
            _ => return Ok(()),
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
        Ok(rows.map_err(db_error)?.iter().map(|r| r.get(0)).collect())
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // One hand-off to the database's runtime for the connection and the query together.
        let (pool, space, key) = (self.pool.clone(), space.to_owned(), key.to_vec());
        self.run(async move {
            let client = pool.get().await.map_err(db_error)?;
            let statement = client.prepare_cached(GET).await.map_err(db_error)?;
            let row = client.query_opt(&statement, &[&space, &key]).await.map_err(db_error)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })?
    }

    fn scan(&self, space: &str, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        scan(self, &self.client()?, space, prefix, visit)
    }

    fn commit(&self, space: &str, stage: &mut Stage<'_>) -> Result<()> {
        let client = self.client()?;
        let (c, name) = (client.clone(), space.to_owned());
        self.run(async move {
            c.batch_execute("BEGIN").await?;
            c.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&name]).await
        })?
        .map_err(db_error)?;
        let outcome = stage(&TxReader { pg: self, client: &client, space }).and_then(|batch| {
            let (c, name) = (client.clone(), space.to_owned());
            self.run(async move { apply(&c, &name, batch).await })?.map_err(db_error)
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
        Box::pin(async move { task.await.map_err(db_error)? })
    }

    fn announce(&self, payload: &str) -> Result<()> {
        let (client, payload) = (self.client()?, payload.to_owned());
        self.run(async move { client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await })?
            .map_err(db_error)?;
        Ok(())
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.events.subscribe())
    }
}

/// Write a commit's batch and commit its transaction.
async fn apply(client: &Object, space: &str, batch: Batch) -> std::result::Result<(), tokio_postgres::Error> {
    let (mut keys, mut values, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in batch.writes {
        match value {
            Some(value) => {
                keys.push(key);
                values.push(value);
            }
            None => removed.push(key),
        }
    }
    if !keys.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO kv (space, key, value) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)
                 ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?;
        client.execute(&statement, &[&space, &keys, &values]).await?;
    }
    if !removed.is_empty() {
        let statement = client.prepare_cached("DELETE FROM kv WHERE space = $1 AND key = ANY($2)").await?;
        client.execute(&statement, &[&space, &removed]).await?;
    }
    client.batch_execute("COMMIT").await
}

/// The connection this host holds its cross-host locks on. A lock is tried, not waited for
/// inside the database, so one connection carries every lock the host holds; a waiter polls.
/// If the connection is lost PostgreSQL releases its locks, as it does when the host dies.
struct LockSession {
    pg: tokio_postgres::Config,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
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
        let (client, connection) = self.pg.connect(NoTls).await.map_err(db_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("the lock connection ended: {e}");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn lock(&self, key: String, wait: Duration, handle: tokio::runtime::Handle) -> Result<Option<Box<dyn Held>>> {
        let until = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let client = self.session().await?;
            let row = client
                .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 1))", &[&key])
                .await
                .map_err(db_error)?;
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
            if let Err(e) = client.execute("SELECT pg_advisory_unlock(hashtextextended($1, 1))", &[&key]).await {
                tracing::warn!("releasing a resource lock failed (the database releases it with its session): {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_before_the_next_prefix() {
        assert_eq!(prefix_end(b"k/"), Some(b"k0".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
