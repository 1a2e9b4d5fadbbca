//! Setting a PostgreSQL backend up: TLS for its connections, the schema's migrations, and
//! the connection that listens for other hosts' announcements.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{CHANNEL, RESYNC, db_error, db_failure};
use crate::config::StorageConfig;
use crate::storage::Result;

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

/// The TLS connector for every connection: the configured CA file's authorities, or
/// Mozilla's. Whether TLS is used is the URL's `sslmode`.
pub(super) fn tls(cfg: &StorageConfig) -> Result<MakeRustlsConnect> {
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
pub(super) async fn migrate(pool: &Pool) -> Result<()> {
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
pub(super) async fn listen(pg: tokio_postgres::Config, tls: MakeRustlsConnect, events: broadcast::Sender<String>) {
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
