//! The credentials example add-on written the way a partner would write it without
//! addon-host: a plain axum handler on sled, with the same work and the same durability as
//! the hosted path — constant-time token check, JSON body, idempotent replay by request
//! digest, the per-app secret kept in the key-value data, a conflict-checked transaction
//! writing the secret and the record, and a flush before the 2xx. Only the Bitrise provision
//! route exists. It is the native baseline of the `http` and `provision` benchmarks.
//!
//! [`Commit::Group`] keeps the same handler but commits through addon-host's own storage
//! (sled behind its write-ahead log and group commit) instead of a sled flush per request:
//! next to it, what remains of the hosted side's cost is the sandbox and the service.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::ConflictableTransactionError;
use subtle::ConstantTimeEq;

/// The Bitrise shared token it accepts.
pub const TOKEN: &str = "bench-shared-token-0123";
/// The `host_url` setting of the hosted credentials example it mirrors.
pub const HOST_URL: &str = "https://myaddon.example.com";

#[derive(Deserialize)]
struct Provision {
    app_slug: String,
    #[serde(default)]
    app_title: Option<String>,
    api_token: String,
    plan: String,
}

#[derive(Serialize, Deserialize)]
struct Record {
    digest: String,
    plan: String,
    envs: Vec<(String, String)>,
    created_ms: u64,
}

#[derive(Serialize)]
struct Env<'a> {
    key: &'a str,
    value: &'a str,
}

/// How the native add-on makes a provision durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// A sled transaction and `flush` per request: what a partner writes without addon-host.
    SledFlush,
    /// addon-host's storage: the write-ahead log and its group commit.
    Group,
}

enum Store {
    Sled {
        db: sled::Db,
        tree: sled::Tree,
    },
    /// The storage (its watchdog lives as long as it) and the add-on's space in it.
    Host {
        _storage: addon_host::storage::Storage,
        store: addon_host::storage::AddonStore,
    },
}

struct App {
    store: Store,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn provision(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let given = headers.get("authentication").map(|v| v.as_bytes()).unwrap_or_default();
    if !bool::from(given.ct_eq(TOKEN.as_bytes())) {
        return error(StatusCode::UNAUTHORIZED, "bad token");
    }
    let req: Provision = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if req.app_slug.is_empty() || req.app_slug.len() > 128 || req.api_token.is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad app_slug or api_token");
    }
    let outcome = tokio::task::spawn_blocking(move || store(&app, &req)).await;
    match outcome {
        Ok(Ok((status, record))) => {
            let envs: Vec<Env> = record.envs.iter().map(|(key, value)| Env { key, value }).collect();
            (status, axum::Json(serde_json::json!({ "envs": envs }))).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn store(app: &App, req: &Provision) -> anyhow::Result<(StatusCode, Record)> {
    match &app.store {
        Store::Sled { db, tree } => store_on_sled(db, tree, req),
        Store::Host { store, .. } => store_on_host(store, req),
    }
}

fn digest(req: &Provision) -> String {
    hex::encode(Sha256::digest(
        serde_json::json!([req.app_slug, req.app_title, req.api_token, req.plan]).to_string().as_bytes(),
    ))
}

fn fresh_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(hex::encode(bytes))
}

fn record_of(req: &Provision, digest: &str, secret: &str) -> anyhow::Result<Record> {
    Ok(Record {
        digest: digest.to_owned(),
        plan: req.plan.clone(),
        envs: vec![
            ("MYADDON_HOST_URL".into(), format!("{HOST_URL}/apps/{}", req.app_slug)),
            ("MYADDON_AUTH_SECRET".into(), secret.to_owned()),
        ],
        created_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
    })
}

fn store_on_sled(db: &sled::Db, tree: &sled::Tree, req: &Provision) -> anyhow::Result<(StatusCode, Record)> {
    let digest = digest(req);
    let record_key = format!("r/{}", req.app_slug);
    let existing: Option<Record> = tree.get(&record_key)?.and_then(|v| serde_json::from_slice(&v).ok());
    if let Some(record) = existing.filter(|r| r.digest == digest) {
        return Ok((StatusCode::OK, record));
    }
    let secret_key = format!("k/secret/{}", req.app_slug);
    loop {
        let seen = tree.get(&secret_key)?;
        let secret = match &seen {
            Some(s) => String::from_utf8_lossy(s).into_owned(),
            None => fresh_secret()?,
        };
        let record = record_of(req, &digest, &secret)?;
        let bytes = serde_json::to_vec(&record)?;
        let committed = tree.transaction(|t| {
            if t.get(&secret_key)? != seen {
                return Err(ConflictableTransactionError::Abort(()));
            }
            t.insert(secret_key.as_bytes(), secret.as_bytes())?;
            t.insert(record_key.as_bytes(), bytes.as_slice())?;
            Ok(())
        });
        match committed {
            Ok(()) => {
                db.flush()?;
                return Ok((StatusCode::CREATED, record));
            }
            Err(sled::transaction::TransactionError::Abort(())) => continue,
            Err(sled::transaction::TransactionError::Storage(e)) => return Err(e.into()),
        }
    }
}

/// The same work through addon-host's storage: reads through a transaction, the secret and
/// the record committed together, conflict-checked, durable in the log before the answer.
fn store_on_host(store: &addon_host::storage::AddonStore, req: &Provision) -> anyhow::Result<(StatusCode, Record)> {
    let digest = digest(req);
    let existing: Option<Record> = store.record(&req.app_slug)?.and_then(|v| serde_json::from_slice(&v).ok());
    if let Some(record) = existing.filter(|r| r.digest == digest) {
        return Ok((StatusCode::OK, record));
    }
    let secret_key = format!("secret/{}", req.app_slug);
    loop {
        let mut txn = store.begin();
        let secret = match txn.get(&secret_key)? {
            Some(s) => String::from_utf8_lossy(&s).into_owned(),
            None => fresh_secret()?,
        };
        txn.set(&secret_key, secret.clone().into_bytes());
        let record = record_of(req, &digest, &secret)?;
        let bytes = serde_json::to_vec(&record)?;
        let quota = addon_host::storage::KvQuota::UNLIMITED;
        match store.commit(&txn, quota, Some((&req.app_slug, &bytes)), None) {
            Ok(()) => return Ok((StatusCode::CREATED, record)),
            Err(addon_host::storage::StorageError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The add-on's router, on a sled database in `dir`, committing as `commit` says.
pub fn router(dir: &std::path::Path, commit: Commit) -> anyhow::Result<axum::Router> {
    let store = match commit {
        Commit::SledFlush => {
            let db = sled::Config::new().path(dir).open()?;
            let tree = db.open_tree("addon/myaddon")?;
            Store::Sled { db, tree }
        }
        Commit::Group => {
            let storage = addon_host::storage::Storage::open(dir)?;
            let store = storage.addon("myaddon")?;
            Store::Host { _storage: storage, store }
        }
    };
    let app = Arc::new(App { store });
    Ok(axum::Router::new().route("/addons/myaddon/provision", post(provision)).with_state(app))
}
