//! The credentials example add-on written the way a partner would write it without
//! addon-host: a plain axum handler on sled, with the same work and the same durability as
//! the hosted path — constant-time token check, JSON body, idempotent replay by request
//! digest, the per-app secret kept in the key-value data, a conflict-checked transaction
//! writing the secret and the record, and a flush before the 2xx. Only the Bitrise provision
//! route exists. It is the native baseline of the `http` and `provision` benchmarks.

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

struct App {
    db: sled::Db,
    tree: sled::Tree,
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
    let digest = hex::encode(Sha256::digest(
        serde_json::json!([req.app_slug, req.app_title, req.api_token, req.plan]).to_string().as_bytes(),
    ));
    let record_key = format!("r/{}", req.app_slug);
    let existing: Option<Record> = app.tree.get(&record_key)?.and_then(|v| serde_json::from_slice(&v).ok());
    if let Some(record) = existing.filter(|r| r.digest == digest) {
        return Ok((StatusCode::OK, record));
    }
    let secret_key = format!("k/secret/{}", req.app_slug);
    loop {
        let seen = app.tree.get(&secret_key)?;
        let secret = match &seen {
            Some(s) => String::from_utf8_lossy(s).into_owned(),
            None => {
                let mut bytes = [0u8; 12];
                getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
                hex::encode(bytes)
            }
        };
        let record = Record {
            digest: digest.clone(),
            plan: req.plan.clone(),
            envs: vec![
                ("MYADDON_HOST_URL".into(), format!("{HOST_URL}/apps/{}", req.app_slug)),
                ("MYADDON_AUTH_SECRET".into(), secret.clone()),
            ],
            created_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        };
        let bytes = serde_json::to_vec(&record)?;
        let committed = app.tree.transaction(|t| {
            if t.get(&secret_key)? != seen {
                return Err(ConflictableTransactionError::Abort(()));
            }
            t.insert(secret_key.as_bytes(), secret.as_bytes())?;
            t.insert(record_key.as_bytes(), bytes.as_slice())?;
            Ok(())
        });
        match committed {
            Ok(()) => {
                app.db.flush()?;
                return Ok((StatusCode::CREATED, record));
            }
            Err(sled::transaction::TransactionError::Abort(())) => continue,
            Err(sled::transaction::TransactionError::Storage(e)) => return Err(e.into()),
        }
    }
}

/// The add-on's router, on a sled database in `dir`.
pub fn router(dir: &std::path::Path) -> anyhow::Result<axum::Router> {
    let db = sled::Config::new().path(dir).open()?;
    let tree = db.open_tree("addon/myaddon")?;
    let app = Arc::new(App { db, tree });
    Ok(axum::Router::new().route("/addons/myaddon/provision", post(provision)).with_state(app))
}
