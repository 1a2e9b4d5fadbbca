//! The shared backend: PostgreSQL, for several hosts serving the same add-ons.
//!
//! Every space lives in one table, `kv (space, key, value)`, ordered by `(space, key)`. A
//! commit is one transaction that first takes the space's transaction-scoped advisory lock,
//! so commits to a space are serialised across every host, then runs the stage's reads and
//! applies its batch. The transaction commits without waiting for the disk (releasing the
//! lock at once), and a synchronous barrier after it returns once the WAL holding it is
//! flushed ([`DURABLE`]): a commit is durable when it returns, and concurrent commits share
//! the database's flushes. Cross-host locks on a key ([`Backend::lock`]) are session
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
use futures_util::{StreamExt, future};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

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
/// The longest any one statement may run (a commit's wait for its space's lock included).
const STATEMENT_TIMEOUT_MS: u64 = 30_000;
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

/// A client error with its causes (a TLS handshake's says which certificate check failed).
fn db_failure(e: impl std::error::Error) -> StorageError {
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
        let tls = tls(cfg)?;
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
        backend.run(async move { migrate(&pool).await })??;
        handle.spawn(listen(pg, tls, events));
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

/// The TLS connector for every connection: the configured CA file's authorities, or
/// Mozilla's. Whether TLS is used is the URL's `sslmode`.
fn tls(cfg: &StorageConfig) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| db_error(format!("reading the CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(db_error(format!("the CA file {} holds no certificate", path.display())));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| db_error(format!("a certificate in {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(db_failure)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Apply every migration this database lacks, one host at a time.
async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(db_failure)?;
    let tx = client.transaction().await.map_err(db_failure)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_failure)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS addon_host_schema (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db_failure)?;
    let row = tx.query_one("SELECT coalesce(max(version), 0) FROM addon_host_schema", &[]).await.map_err(db_failure)?;
    let current: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(db_error(format!(
            "the database's schema is version {current}, newer than this host knows ({known}); upgrade the host"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(db_failure)?;
        tx.execute("INSERT INTO addon_host_schema (version) VALUES ($1)", &[version]).await.map_err(db_failure)?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(db_failure)
}

/// Keep a connection listening on [`CHANNEL`], forwarding what arrives to the subscribers,
/// and reconnecting (with a [`RESYNC`]) when it drops.
async fn listen(pg: tokio_postgres::Config, tls: MakeRustlsConnect, events: broadcast::Sender<String>) {
    let mut first = true;
    loop {
        match pg.connect(tls.clone()).await {
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

/// Reads inside a commit's transaction. Nothing else writes the space while the
/// transaction holds its lock, so what was read ahead stays true until the commit. The
/// transaction's `BEGIN` goes out with the first read (or with the writes), in the same round
/// trip.
struct TxReader<'a> {
    pg: &'a Postgres,
    client: &'a Arc<Object>,
    space: &'a str,
    begin: std::cell::RefCell<Option<String>>,
    ahead: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Reader for TxReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.ahead.borrow().get(key) {
            return Ok(value.clone());
        }
        let (client, space, key, begin) =
            (self.client.clone(), self.space.to_owned(), key.to_vec(), self.begin.borrow_mut().take());
        self.pg
            .run(async move {
                let statement = client.prepare_cached(GET).await?;
                let (begun, row) =
                    future::join(begin_first(&client, &begin), client.query_opt(&statement, &[&space, &key])).await;
                begun?;
                Ok::<_, tokio_postgres::Error>(row?.map(|r| r.get::<_, Vec<u8>>(0)))
            })?
            .map_err(db_failure)
    }

    fn prefetch(&self, keys: &[Vec<u8>]) -> Result<()> {
        let (client, space, wanted, begin) =
            (self.client.clone(), self.space.to_owned(), keys.to_vec(), self.begin.borrow_mut().take());
        let rows = self
            .pg
            .run(async move {
                let statement =
                    client.prepare_cached("SELECT key, value FROM kv WHERE space = $1 AND key = ANY($2)").await?;
                let (begun, rows) =
                    future::join(begin_first(&client, &begin), client.query(&statement, &[&space, &wanted])).await;
                begun?;
                rows
            })?
            .map_err(db_failure)?;
        let mut ahead = self.ahead.borrow_mut();
        for key in keys {
            ahead.insert(key.clone(), None);
        }
        for row in rows {
            ahead.insert(row.get(0), Some(row.get(1)));
        }
        Ok(())
    }

    fn scan(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let begin = self.begin.borrow_mut().take();
        scan(self.pg, self.client, self.space, prefix, begin, visit)
    }
}

/// Send the transaction's `BEGIN`, if it has not gone out yet (polled first, so it goes out
/// before the query it is joined with).
async fn begin_first(client: &Object, begin: &Option<String>) -> std::result::Result<(), tokio_postgres::Error> {
    match begin {
        Some(begin) => client.batch_execute(begin).await,
        None => Ok(()),
    }
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
    mut begin: Option<String>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let end = prefix_end(prefix);
    let mut from: (Vec<u8>, bool) = (prefix.to_vec(), true);
    loop {
        let (client, space, end, (start, inclusive)) = (client.clone(), space.to_owned(), end.clone(), from.clone());
        let begin = begin.take();
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
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&space, &start, &inclusive, &end, &PAGE];
                let (begun, rows) = future::join(begin_first(&client, &begin), client.query(&statement, &params)).await;
                begun?;
                rows
            })?
            .map_err(db_failure)?;
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

/// Write a commit's batch, commit its transaction, and wait until it is durable: one round
/// trip, the statements pipelined. Every statement is prepared first, so that each goes out
/// when its future is first polled, in order; a failed write aborts the transaction, its
/// `COMMIT` then rolls back, and the write's error is returned.
async fn apply(
    client: &Object,
    space: &str,
    begin: Option<String>,
    batch: Batch,
) -> std::result::Result<(), tokio_postgres::Error> {
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
    let upsert = client
        .prepare_cached(
            "INSERT INTO kv (space, key, value) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)
             ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await?;
    let delete = client.prepare_cached("DELETE FROM kv WHERE space = $1 AND key = ANY($2)").await?;
    let wrote = !keys.is_empty() || !removed.is_empty();
    let (begun, upserted, deleted, committed, durable) = future::join5(
        begin_first(client, &begin),
        async { if keys.is_empty() { Ok(0) } else { client.execute(&upsert, &[&space, &keys, &values]).await } },
        async { if removed.is_empty() { Ok(0) } else { client.execute(&delete, &[&space, &removed]).await } },
        client.batch_execute("COMMIT"),
        async { if wrote { client.batch_execute(DURABLE).await } else { Ok(()) } },
    )
    .await;
    begun?;
    upserted?;
    deleted?;
    committed?;
    durable
}

/// A commit that does not wait for the disk: the space's lock is held only while the batch
/// is applied, so commits to one add-on follow each other at the database's pace rather than
/// the disk's.
const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit = off;";

/// The barrier after an asynchronous commit: a synchronous commit that writes to the WAL (a
/// transactional logical message, which touches no table) returns once the WAL is flushed
/// up to it, so every commit before it is durable too. Concurrent barriers share a flush,
/// which makes this the database's own group commit.
const DURABLE: &str = "BEGIN; SELECT pg_logical_emit_message(true, 'addon_host', ''); COMMIT";

/// A 64-bit advisory lock id for `name` of `kind`, the same on every host.
fn lock_id(kind: &str, name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{kind}\0{name}").as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(id)
}

/// The connection this host holds its cross-host locks on. A lock is tried, not waited for
/// inside the database, so one connection carries every lock the host holds; a waiter polls.
/// If the connection is lost PostgreSQL releases its locks, as it does when the host dies.
struct LockSession {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
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

    async fn lock(&self, key: String, wait: Duration, handle: tokio::runtime::Handle) -> Result<Option<Box<dyn Held>>> {
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
