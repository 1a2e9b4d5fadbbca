//! The Xervo add-on protocol (Heroku's v1 partner API under another name): wire types and
//! handlers only. Resources live at `/addons/{addon}/resources[/{id}]`, authenticated with
//! HTTP Basic (`manifest id : api.password`); SSO is in [`sso`], the manifest in [`manifest`].
//! Everything else is the shared service's job.

pub mod manifest;
pub mod sso;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ServiceError;
use crate::http::{body_bytes, check_resource_id, json_body, path_params};
use crate::runtime::{Platform, ProvisionRequest};
use crate::service::{Addon, Deprovisioned, Record, Service, auth};

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/addons/{addon_id}/resources", routing::post(provision))
        .route("/addons/{addon_id}/resources/{id}", routing::put(change_plan).delete(deprovision))
        .route("/addons/{addon_id}/sso/login", routing::post(sso::login))
        .route("/addons/{addon_id}/sso/dashboard", routing::get(sso::dashboard))
}

/// A service error in Xervo's dress: 401s carry the Basic challenge.
pub struct XervoError(ServiceError);

impl From<ServiceError> for XervoError {
    fn from(e: ServiceError) -> Self {
        XervoError(e)
    }
}

impl IntoResponse for XervoError {
    fn into_response(self) -> Response {
        let challenge = matches!(self.0, ServiceError::Unauthorized(_));
        let mut response = self.0.into_response();
        if challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"addon-host\""));
        }
        response
    }
}

type XervoResult = Result<Response, XervoError>;

/// A JSON scalar the platform may send as a string or a number (ids, timestamps).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(serde_json::Number),
}

impl Scalar {
    pub fn into_string(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ProvisionBody {
    plan: String,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
    callback_url: Option<String>,
    /// Xervo's app id.
    modulus_id: Option<Scalar>,
    /// Heroku v1's app id.
    heroku_id: Option<Scalar>,
    /// Heroku v3's resource id (the primary key the platform chose).
    uuid: Option<String>,
    email: Option<String>,
    region: Option<String>,
    /// Heroku v3: the add-on's name on the app.
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChangePlanBody {
    plan: String,
}

/// The add-on named in the path, offered on Xervo, with the caller's Basic credentials checked.
fn authenticated(service: &Service, addon_id: &str, headers: &HeaderMap) -> Result<Arc<Addon>, ServiceError> {
    let addon = service.addon(addon_id)?;
    let xervo = addon.xervo()?;
    let unauthorized =
        |why: &str| ServiceError::Unauthorized(format!("{why}; use HTTP Basic with the manifest id and password"));
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization header"))?
        .to_str()
        .map_err(|_| unauthorized("unreadable Authorization header"))?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(|| unauthorized("Authorization is not Basic"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized("Basic credentials are not base64"))?;
    let given = String::from_utf8_lossy(&decoded);
    if !auth::secret_matches(&given, &format!("{}:{}", xervo.id, xervo.password)) {
        return Err(unauthorized("wrong credentials for this add-on"));
    }
    Ok(addon)
}

fn config_object(record: &Record) -> Value {
    Value::Object(record.config.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

fn option_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

async fn provision(
    State(service): State<Arc<Service>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> XervoResult {
    let addon_id = path_params(path)?;
    let addon = authenticated(&service, &addon_id, &headers)?;
    let body: ProvisionBody = json_body(&headers, &body_bytes(&addon, body)?)?;
    // Heroku v3 names the resource itself; Xervo and Heroku v1 name the app and let us choose.
    let (resource_id, app_id) = match (body.uuid, body.modulus_id.or(body.heroku_id)) {
        (Some(uuid), _) => {
            check_resource_id("uuid", &uuid)?;
            if service.record(&addon, &uuid).await?.is_some_and(|r| !r.is_active()) {
                return Err(ServiceError::Gone(format!(
                    "resource `{uuid}` was deprovisioned and cannot be re-created"
                ))
                .into());
            }
            (uuid.clone(), uuid)
        }
        (None, Some(app)) => {
            let app = app.into_string();
            if app.is_empty() || app.len() > 256 {
                return Err(ServiceError::BadRequest("`modulus_id` must be 1-256 characters".into()).into());
            }
            (String::new(), app)
        }
        (None, None) => {
            return Err(
                ServiceError::BadRequest("missing the app identity: `modulus_id` (or Heroku's `uuid`)".into()).into()
            );
        }
    };
    let request = ProvisionRequest {
        resource_id,
        platform: Platform::Xervo,
        app_id,
        plan: body.plan,
        app_title: body.name,
        api_token: None,
        email: body.email,
        region: body.region,
        callback_url: body.callback_url,
        options: body.options.unwrap_or_default().into_iter().map(|(k, v)| (k, option_text(v))).collect(),
    };
    let done = service.provision(&addon, request).await?;
    let record = &done.record;
    let reply = json!({ "id": record.resource_id, "config": config_object(record), "message": record.message });
    Ok((StatusCode::OK, Json(reply)).into_response())
}

async fn change_plan(
    State(service): State<Arc<Service>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> XervoResult {
    let (addon_id, id) = path_params(path)?;
    let addon = authenticated(&service, &addon_id, &headers)?;
    check_resource_id("id", &id)?;
    let body: ChangePlanBody = json_body(&headers, &body_bytes(&addon, body)?)?;
    let record = service.change_plan(&addon, &id, &body.plan).await?;
    let message = record.message.clone().unwrap_or_else(|| format!("Now on {}.", record.plan));
    Ok((StatusCode::OK, Json(json!({ "message": message, "config": config_object(&record) }))).into_response())
}

async fn deprovision(
    State(service): State<Arc<Service>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> XervoResult {
    let (addon_id, id) = path_params(path)?;
    let addon = authenticated(&service, &addon_id, &headers)?;
    check_resource_id("id", &id)?;
    let message = match service.deprovision(&addon, &id).await? {
        Deprovisioned::Released(_) => "deprovisioned",
        Deprovisioned::AlreadyGone(_) => "already deprovisioned",
        Deprovisioned::Unknown => return Err(ServiceError::NotFound(format!("no resource `{id}`")).into()),
    };
    Ok((StatusCode::OK, Json(json!({ "message": message }))).into_response())
}
