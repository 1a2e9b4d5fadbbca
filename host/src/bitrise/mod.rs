//! The Bitrise add-on protocol: wire types and handlers only.
//!
//! `POST /addons/{addon}/provision`, `PUT|DELETE /addons/{addon}/provision/{app_slug}`
//! (authenticated with the add-on's shared token in the `Authentication` header — and only
//! these routes accept it) and `POST /addons/{addon}/login` (SSO, see [`login`]). Everything
//! else is the shared service's job.

pub mod login;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::http::{body_bytes, check_resource_id, json_body, path_params};
use crate::runtime::{Platform, ProvisionRequest};
use crate::service::{Addon, Deprovisioned, Record, Service, auth};

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/addons/{addon_id}/provision", routing::post(provision))
        .route("/addons/{addon_id}/provision/{app_slug}", routing::put(change_plan).delete(deprovision))
        .route("/addons/{addon_id}/login", routing::post(login::login))
}

#[derive(Debug, Deserialize)]
struct ProvisionBody {
    app_slug: String,
    #[serde(default)]
    app_title: Option<String>,
    api_token: String,
    plan: String,
}

#[derive(Debug, Deserialize)]
struct ChangePlanBody {
    plan: String,
}

#[derive(Debug, Serialize)]
struct Env<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(Debug, Serialize)]
struct EnvsReply<'a> {
    envs: Vec<Env<'a>>,
}

impl<'a> EnvsReply<'a> {
    fn of(record: &'a Record) -> Self {
        EnvsReply { envs: record.config.iter().map(|(key, value)| Env { key, value }).collect() }
    }
}

/// The add-on named in the path, offered on Bitrise, with the caller's shared token checked.
fn authenticated(service: &Service, addon_id: &str, headers: &HeaderMap) -> Result<Arc<Addon>, ServiceError> {
    let addon = service.addon(addon_id)?;
    let expected = &addon.bitrise()?.shared_token;
    let given = headers
        .get("authentication")
        .ok_or_else(|| {
            ServiceError::Unauthorized("missing `Authentication` header with the add-on's shared token".into())
        })?
        .to_str()
        .map_err(|_| ServiceError::Unauthorized("the `Authentication` header is not valid text".into()))?;
    if !auth::secret_matches(given.trim(), expected) {
        return Err(ServiceError::Unauthorized("the `Authentication` token is not valid for this add-on".into()));
    }
    Ok(addon)
}

async fn provision(
    State(service): State<Arc<Service>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let addon_id = path_params(path)?;
    let addon = authenticated(&service, &addon_id, &headers)?;
    let body: ProvisionBody = json_body(&headers, &body_bytes(&addon, body)?)?;
    check_resource_id("app_slug", &body.app_slug)?;
    if body.api_token.is_empty() {
        return Err(ServiceError::BadRequest("`api_token` must not be empty".into()));
    }
    let request = ProvisionRequest {
        resource_id: body.app_slug.clone(),
        platform: Platform::Bitrise,
        app_id: body.app_slug,
        plan: body.plan,
        app_title: body.app_title,
        api_token: Some(body.api_token),
        email: None,
        region: None,
        callback_url: None,
        options: Vec::new(),
    };
    let done = service.provision(&addon, request).await?;
    let status = if done.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(EnvsReply::of(&done.record))).into_response())
}

async fn change_plan(
    State(service): State<Arc<Service>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let (addon_id, app_slug) = path_params(path)?;
    let addon = authenticated(&service, &addon_id, &headers)?;
    check_resource_id("app_slug", &app_slug)?;
    let body: ChangePlanBody = json_body(&headers, &body_bytes(&addon, body)?)?;
    let record = service.change_plan(&addon, &app_slug, &body.plan).await?;
    let reply = serde_json::json!({ "plan": record.plan, "message": record.message });
    Ok((StatusCode::OK, Json(reply)).into_response())
}

/// The body is ignored: Bitrise's kit sends the four bytes `null`.
async fn deprovision(
    State(service): State<Arc<Service>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let (addon_id, app_slug) = path_params(path)?;
    let addon = authenticated(&service, &addon_id, &headers)?;
    check_resource_id("app_slug", &app_slug)?;
    let message = match service.deprovision(&addon, &app_slug).await? {
        Deprovisioned::Released(_) => "deprovisioned",
        Deprovisioned::AlreadyGone(_) => "already deprovisioned",
        Deprovisioned::Unknown => "nothing to deprovision",
    };
    Ok((StatusCode::OK, Json(serde_json::json!({ "message": message }))).into_response())
}
