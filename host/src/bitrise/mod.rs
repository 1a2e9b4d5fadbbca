//! The Bitrise add-on protocol: wire types and handlers only.
//!
//! `POST /addons/{addon}/provision`, `PUT|DELETE /addons/{addon}/provision/{app_slug}`
//! (authenticated with the add-on's shared token in the `Authentication` header — and only
//! these routes accept it) and `POST /addons/{addon}/login` (SSO, see [`login`]). Everything
//! else is the shared service's job.

mod login;

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::http::{JsonBody, PathAddon, PathResource};
use crate::service::check_resource_id;
use crate::service::{Addon, Caller, Deprovisioned, Platform, Provision, Service, Target, auth};
use login::login;

pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/addons/{addon_id}/provision", routing::post(provision))
        .route("/addons/{addon_id}/provision/{app_slug}", routing::put(change_plan).delete(deprovision))
        .route("/addons/{addon_id}/login", routing::post(login))
}

/// Bitrise puts no rules on the variables a plugin returns.
fn caller() -> Caller {
    Caller::unruled(Platform::Bitrise)
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
    fn of(vars: &'a [(String, String)]) -> Self {
        EnvsReply { envs: vars.iter().map(|(key, value)| Env { key, value }).collect() }
    }
}

/// The add-on named in the path, offered on Bitrise (404 otherwise).
struct Offered(Arc<Addon>);

impl FromRequestParts<Arc<Service>> for Offered {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Service>) -> Result<Self, Self::Rejection> {
        let PathAddon(addon) = PathAddon::from_request_parts(parts, state).await?;
        addon.bitrise()?;
        Ok(Offered(addon))
    }
}

/// [`Offered`], with the caller's shared token (the `Authentication` header) checked in
/// constant time.
struct Authenticated(Arc<Addon>);

impl FromRequestParts<Arc<Service>> for Authenticated {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Service>) -> Result<Self, Self::Rejection> {
        let Offered(addon) = Offered::from_request_parts(parts, state).await?;
        let expected = &addon.bitrise()?.shared_token;
        let given = parts
            .headers
            .get("authentication")
            .ok_or_else(|| {
                ServiceError::Unauthorized("missing `Authentication` header with the add-on's shared token".into())
            })?
            .to_str()
            .map_err(|_| ServiceError::Unauthorized("the `Authentication` header is not valid text".into()))?;
        if !auth::secret_matches(given.trim(), expected) {
            return Err(ServiceError::Unauthorized("the `Authentication` token is not valid for this add-on".into()));
        }
        Ok(Authenticated(addon))
    }
}

async fn provision(
    State(service): State<Arc<Service>>,
    Authenticated(addon): Authenticated,
    JsonBody(body): JsonBody<ProvisionBody>,
) -> Result<Response, ServiceError> {
    check_resource_id("app_slug", &body.app_slug)?;
    if body.api_token.is_empty() {
        return Err(ServiceError::BadRequest("`api_token` must not be empty".into()));
    }
    let mut request = Provision::new(Target::Resource(body.app_slug.clone()), body.app_slug, body.plan);
    request.app_title = body.app_title;
    request.api_token = Some(body.api_token);
    let done = service.provision(&addon, &caller(), request).await?;
    let status = if done.created { StatusCode::CREATED } else { StatusCode::OK };
    let vars = service.exported(&addon, &done.record);
    Ok((status, Json(EnvsReply::of(&vars))).into_response())
}

async fn change_plan(
    State(service): State<Arc<Service>>,
    Authenticated(addon): Authenticated,
    PathResource(app_slug): PathResource,
    JsonBody(body): JsonBody<ChangePlanBody>,
) -> Result<Response, ServiceError> {
    let record = service.change_plan(&addon, &caller(), &app_slug, &body.plan).await?;
    Ok(Json(serde_json::json!({ "plan": record.plan, "message": record.message })).into_response())
}

/// The body is ignored: Bitrise's kit sends the four bytes `null`.
async fn deprovision(
    State(service): State<Arc<Service>>,
    Authenticated(addon): Authenticated,
    PathResource(app_slug): PathResource,
) -> Result<Response, ServiceError> {
    let message = match service.deprovision(&addon, &caller(), &app_slug).await? {
        Deprovisioned::Released(_) => "deprovisioned",
        Deprovisioned::AlreadyGone(_) => "already deprovisioned",
        Deprovisioned::Unknown => "nothing to deprovision",
    };
    Ok(Json(serde_json::json!({ "message": message })).into_response())
}
