//! The admin API, for operators only: upload, list, activate and roll back plugin versions,
//! and see what every add-on is serving. Authenticated with an admin bearer token — never a
//! partner's credential — or, for one add-on's plugin routes only, that add-on's deploy
//! token. `addon-host plugin ...` is its command-line client.
//!
//! - `GET  /admin/status`
//! - `GET  /metrics` (Prometheus/OpenMetrics text)
//! - `GET  /admin/addons/{addon}/plugins`
//! - `POST /admin/addons/{addon}/plugins[?activate=false]` (body: the component)
//! - `DELETE /admin/addons/{addon}/plugins/{version}` (not the active one)
//! - `POST /admin/addons/{addon}/plugins/{version}/activate`
//! - `POST /admin/addons/{addon}/rollback[?version=V]`
//! - `GET  /admin/addons/{addon}/logs[?since=SEQ]` (its plugin's recent log lines)

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use serde::Deserialize;
use serde_json::json;

use crate::error::ServiceError;
use crate::http::limit::RateLimits;
use crate::http::{PathAddon, path_params, query};
use crate::service::Service;

pub(crate) fn routes(max_plugin_bytes: usize) -> Router<Arc<Service>> {
    Router::new()
        .route("/admin/status", routing::get(status))
        .route("/metrics", routing::get(metrics))
        .route("/admin/addons/{addon_id}/plugins", routing::get(list).post(upload))
        .route("/admin/addons/{addon_id}/plugins/{version}", routing::delete(delete_version))
        .route("/admin/addons/{addon_id}/plugins/{version}/activate", routing::post(activate))
        .route("/admin/addons/{addon_id}/rollback", routing::post(rollback))
        .route("/admin/addons/{addon_id}/logs", routing::get(logs))
        .route("/admin/addons/{addon_id}/jobs", routing::get(jobs))
        .route("/admin/addons/{addon_id}/jobs/{job_id}/retry", routing::post(retry_job))
        .route("/admin/addons/{addon_id}/jobs/{job_id}", routing::delete(drop_job))
        .route("/admin/addons/{addon_id}/resources/{resource_id}/api-token", routing::post(rotate_api_token))
        .layer(DefaultBodyLimit::max(max_plugin_bytes))
        .layer(Extension(Arc::new(RateLimits::default())))
}

/// An admin's bearer token. Listed first in every handler, so nothing else (the add-on, a
/// body) is looked at for a caller who is not an admin.
struct Admin;

fn bearer(parts: &Parts) -> Result<&str, ServiceError> {
    crate::http::bearer_token(&parts.headers)
        .ok_or_else(|| ServiceError::Unauthorized("the admin API takes `Authorization: Bearer <admin token>`".into()))
}

impl FromRequestParts<Arc<Service>> for Admin {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, service: &Arc<Service>) -> Result<Self, Self::Rejection> {
        let known = service.admins().identify(bearer(parts)?).is_some();
        known.then_some(Admin).ok_or_else(|| ServiceError::Unauthorized("not an admin token".into()))
    }
}

/// An admin, or a deployer of the add-on the path names (`[[addon.deployers]]`), and that
/// add-on. A deploy token is looked up only in its own add-on, so it opens nothing else;
/// to a caller who is neither, an unknown add-on and a known one answer the same 401.
struct AddonAdmin {
    who: String,
    addon: Arc<crate::service::Addon>,
}

impl FromRequestParts<Arc<Service>> for AddonAdmin {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, service: &Arc<Service>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.to_owned();
        if let Some(admin) = service.admins().identify(&token).map(str::to_owned) {
            let PathAddon(addon) = PathAddon::from_request_parts(parts, service).await?;
            return Ok(AddonAdmin { who: admin, addon });
        }
        let refused = || ServiceError::Unauthorized("not an admin token, nor a deploy token of this add-on".into());
        let PathAddon(addon) = PathAddon::from_request_parts(parts, service).await.map_err(|_| refused())?;
        let who = addon.deployer(&token).map(|name| format!("deployer:{name}")).ok_or_else(refused)?;
        Ok(AddonAdmin { who, addon })
    }
}

/// The Prometheus scrape, for an admin token (or unauthenticated on `server.metrics_listen`).
async fn metrics(State(service): State<Arc<Service>>, _: Admin) -> Response {
    crate::http::observe::scrape(&service).await
}

async fn status(State(service): State<Arc<Service>>, _: Admin) -> Result<Response, ServiceError> {
    let mut addons = Vec::new();
    for addon in service.addons() {
        let plugin = addon.plugin();
        let versions = service.versions(addon).await?;
        let active = versions.iter().find(|v| v.active).map(|v| v.meta.clone());
        let (running, queued, share) = addon.calls();
        addons.push(json!({
            "calls": { "running": running, "queued": queued, "share": share },
            "id": addon.id(),
            "active": active,
            "loaded_from_cache": plugin.from_cache,
            "compiler": plugin.compiler(),
            "world": plugin.world(),
            "runs_jobs": plugin.runs_jobs,
            "serves_http": plugin.serves_http,
            "jobs": service.job_counts(addon).await?,
            "versions": versions.len(),
            "stored_bytes": versions.iter().map(|v| v.meta.size).sum::<u64>(),
            "loaded_versions": addon.loaded_versions(),
        }));
    }
    let storage = service.storage();
    Ok(Json(json!({
        "engine": service.runtime().info(),
        "storage": storage.kind(),
        "commits": storage.commit_stats(),
        "stall": storage.stall(),
        "addons": addons,
    }))
    .into_response())
}

async fn list(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, .. }: AddonAdmin,
) -> Result<Response, ServiceError> {
    Ok(Json(json!({ "addon": addon.id(), "versions": service.versions(&addon).await? })).into_response())
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    #[serde(default = "yes")]
    activate: bool,
}

fn yes() -> bool {
    true
}

async fn upload(
    State(service): State<Arc<Service>>,
    AddonAdmin { who, addon }: AddonAdmin,
    Extension(limits): Extension<Arc<RateLimits>>,
    upload_query: Result<Query<UploadQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ServiceError> {
    // Each deployer's uploads are rate-limited before anything is read or compiled.
    let per_hour = addon.config.deploys.uploads_per_hour;
    if let Err(retry_after) = limits.take(addon.id(), &who, f64::from(per_hour) / 60.0, per_hour) {
        let message = format!(
            "`{who}` may upload {per_hour} plugins an hour to add-on `{}` ([addon.deploys] uploads_per_hour); retry in {} s",
            addon.id(),
            retry_after.as_secs_f64().ceil()
        );
        return Err(ServiceError::RateLimited { message, retry_after });
    }
    let bytes = crate::http::body::read(body, service.max_plugin_bytes(), "the plugin").await?;
    if bytes.is_empty() {
        return Err(ServiceError::InvalidPlugin("the body is empty; send the component's bytes".into()));
    }
    let activate = query(upload_query)?.activate;
    let done = service.upload(&addon, bytes.to_vec(), &who, activate).await?;
    let status = if done.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(done)).into_response())
}

async fn delete_version(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, who }: AddonAdmin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ServiceError> {
    let (_, version) = path_params(path)?;
    let deleted = service.delete_version(&addon, &version).await?;
    tracing::info!(addon = addon.id(), version = deleted.version.seq, by = who, "plugin version deleted by request");
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

async fn activate(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, .. }: AddonAdmin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ServiceError> {
    let (_, version) = path_params(path)?;
    let meta = service.activate(&addon, &version).await?;
    Ok(Json(json!({ "active": meta })).into_response())
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    since: u64,
}

async fn logs(
    AddonAdmin { addon, .. }: AddonAdmin,
    logs_query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ServiceError> {
    let since = query(logs_query)?.since;
    let (lines, next) = addon.recent_logs(since);
    Ok(Json(json!({ "addon": addon.id(), "lines": lines, "next": next })).into_response())
}

#[derive(Debug, Deserialize)]
struct RollbackQuery {
    version: Option<String>,
}

async fn rollback(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, .. }: AddonAdmin,
    rollback_query: Result<Query<RollbackQuery>, QueryRejection>,
) -> Result<Response, ServiceError> {
    let version = query(rollback_query)?.version;
    let meta = service.rollback(&addon, version.as_deref()).await?;
    Ok(Json(json!({ "active": meta })).into_response())
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    state: Option<String>,
}

const JOB_STATES: [&str; 4] = ["pending", "running", "retrying", "dead"];

/// The add-on's jobs, oldest first: `?state=pending|running|retrying|dead` filters them.
async fn jobs(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, .. }: AddonAdmin,
    jobs_query: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Response, ServiceError> {
    let state = query(jobs_query)?.state;
    if let Some(state) = state.as_deref().filter(|s| !JOB_STATES.contains(s)) {
        return Err(ServiceError::BadRequest(format!(
            "unknown job state `{state}`; use one of {}",
            JOB_STATES.join(", ")
        )));
    }
    let jobs = service.list_jobs(&addon, state.as_deref()).await?;
    Ok(Json(json!({ "addon": addon.id(), "jobs": jobs })).into_response())
}

/// Run a job again now, its attempts counted afresh (how a dead job leaves the dead-letter list).
async fn retry_job(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, .. }: AddonAdmin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ServiceError> {
    let (_, id) = path_params(path)?;
    Ok(Json(json!({ "job": service.retry_job(&addon, &id).await? })).into_response())
}

async fn drop_job(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, .. }: AddonAdmin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ServiceError> {
    let (_, id) = path_params(path)?;
    service.drop_job(&addon, &id).await?;
    Ok(Json(json!({ "dropped": id })).into_response())
}

/// Replace an app's build API token (a leaked one, say): the old token gets 401 at once, and
/// the new one is answered here (and in the app's variables on its next provision).
async fn rotate_api_token(
    State(service): State<Arc<Service>>,
    AddonAdmin { addon, who }: AddonAdmin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ServiceError> {
    let (_, resource) = path_params(path)?;
    crate::service::check_resource_id("resource_id", &resource)?;
    let token = service.rotate_api_token(&addon, &resource).await?;
    tracing::info!(addon = addon.id(), resource, by = who, "build API token rotated");
    let var = addon.config.web.token_var(addon.id());
    Ok(Json(json!({ "resource_id": resource, "variable": var, "token": token })).into_response())
}
