//! The Xervo add-on protocol (Heroku's v1 partner API under another name): wire types and
//! handlers only. Resources live at `/addons/{addon}/resources[/{id}]`, authenticated with
//! HTTP Basic (`manifest id : api.password`); SSO is in [`sso`], the manifest in [`manifest`].
//! Everything else is the shared service's job.

pub(crate) mod manifest;
mod rules;
mod sso;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ServiceError;
use crate::http::{HasService, JsonBody, PathAddon, PathResource};
use crate::service::check_resource_id;
use crate::service::{Addon, Caller, Deprovisioned, Platform, Provision, Record, Service, Target, auth};
use manifest::XervoSettings;
use rules::XervoRules;

/// The Xervo routes, with each add-on's Xervo settings resolved once. A config loaded from
/// its file already holds its manifests inline ([`crate::config::HostConfig::load`]), so
/// this reads nothing; a config built in code and never validated may still fail here, and
/// that add-on is then not offered on Xervo, with the error logged.
pub(crate) fn routes(service: &Arc<Service>) -> Router<Arc<Service>> {
    let mut addons = HashMap::new();
    for addon in service.addons() {
        let Some(cfg) = &addon.config.xervo else { continue };
        match XervoSettings::resolve(addon.id(), cfg) {
            Ok(settings) => {
                let caller = Caller { platform: Platform::Xervo, rules: Arc::new(XervoRules::of(&settings)) };
                addons.insert(addon.id().to_owned(), Arc::new(XervoAddon { settings, caller }));
            }
            Err(e) => tracing::error!(addon = addon.id(), "not offered on Xervo: {e:#}"),
        }
    }
    let state = Arc::new(Xervo { service: service.clone(), addons });
    Router::new()
        .route("/addons/{addon_id}/resources", routing::post(provision))
        .route("/addons/{addon_id}/resources/{id}", routing::put(change_plan).delete(deprovision))
        .route("/addons/{addon_id}/sso/login", routing::post(sso::login))
        .route("/addons/{addon_id}/sso/dashboard", routing::get(sso::dashboard))
        .with_state(state)
}

/// The adapter's state: the service, and the add-ons offered on Xervo.
struct Xervo {
    service: Arc<Service>,
    addons: HashMap<String, Arc<XervoAddon>>,
}

impl HasService for Arc<Xervo> {
    fn service(&self) -> &Arc<Service> {
        &self.service
    }
}

/// One add-on's Xervo settings, and the caller its requests act as.
struct XervoAddon {
    settings: XervoSettings,
    caller: Caller,
}

/// The add-on named in the path, offered on Xervo (404 otherwise).
struct Offered {
    addon: Arc<Addon>,
    xervo: Arc<XervoAddon>,
}

impl FromRequestParts<Arc<Xervo>> for Offered {
    type Rejection = XervoError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Xervo>) -> Result<Self, Self::Rejection> {
        let PathAddon(addon) = PathAddon::from_request_parts(parts, state).await?;
        let xervo = state.addons.get(addon.id()).cloned().ok_or_else(|| addon.not_offered("Xervo"))?;
        Ok(Offered { addon, xervo })
    }
}

/// [`Offered`], with the caller's HTTP Basic credentials (`manifest id : api.password`)
/// checked in constant time.
struct Authenticated(Offered);

impl FromRequestParts<Arc<Xervo>> for Authenticated {
    type Rejection = XervoError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Xervo>) -> Result<Self, Self::Rejection> {
        let offered = Offered::from_request_parts(parts, state).await?;
        let xervo = &offered.xervo.settings;
        let unauthorized =
            |why: &str| ServiceError::Unauthorized(format!("{why}; use HTTP Basic with the manifest id and password"));
        let value = parts
            .headers
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
        if !auth::secret_matches(&given, &format!("{}:{}", xervo.id, xervo.password.expose())) {
            return Err(unauthorized("wrong credentials for this add-on").into());
        }
        Ok(Authenticated(offered))
    }
}

/// A service error in Xervo's dress: 401s carry the Basic challenge.
pub(crate) struct XervoError(ServiceError);

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
pub(crate) enum Scalar {
    Text(String),
    Number(serde_json::Number),
}

impl Scalar {
    pub(crate) fn into_string(self) -> String {
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

fn config_object(service: &Service, addon: &Addon, record: &Record) -> Value {
    let vars = service.exported(addon, record);
    Value::Object(vars.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn option_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

async fn provision(
    State(state): State<Arc<Xervo>>,
    Authenticated(Offered { addon, xervo }): Authenticated,
    JsonBody(body): JsonBody<ProvisionBody>,
) -> XervoResult {
    let service = &state.service;
    // Heroku v3 names the resource itself; Xervo and Heroku v1 name the app and let us choose.
    let (target, app_id) = match (body.uuid, body.modulus_id.or(body.heroku_id)) {
        (Some(uuid), _) => {
            check_resource_id("uuid", &uuid)?;
            if service.record(&addon, Platform::Xervo, &uuid).await?.is_some_and(|r| !r.is_active()) {
                return Err(ServiceError::Gone(format!(
                    "resource `{uuid}` was deprovisioned and cannot be re-created"
                ))
                .into());
            }
            (Target::Resource(uuid.clone()), uuid)
        }
        (None, Some(app)) => {
            let app = app.into_string();
            if app.is_empty() || app.len() > 256 {
                return Err(ServiceError::BadRequest("`modulus_id` must be 1-256 characters".into()).into());
            }
            (Target::App, app)
        }
        (None, None) => {
            return Err(
                ServiceError::BadRequest("missing the app identity: `modulus_id` (or Heroku's `uuid`)".into()).into()
            );
        }
    };
    let mut request = Provision::new(target, app_id, body.plan);
    request.app_title = body.name;
    request.email = body.email;
    request.region = body.region;
    request.callback_url = body.callback_url;
    request.options = body.options.unwrap_or_default().into_iter().map(|(k, v)| (k, option_text(v))).collect();
    let done = service.provision(&addon, &xervo.caller, request).await?;
    let record = &done.record;
    let reply = json!({ "id": record.resource_id, "config": config_object(service, &addon, record), "message": record.message });
    Ok(Json(reply).into_response())
}

async fn change_plan(
    State(state): State<Arc<Xervo>>,
    Authenticated(Offered { addon, xervo }): Authenticated,
    PathResource(id): PathResource,
    JsonBody(body): JsonBody<ChangePlanBody>,
) -> XervoResult {
    let record = state.service.change_plan(&addon, &xervo.caller, &id, &body.plan).await?;
    let message = record.message.clone().unwrap_or_else(|| format!("Now on {}.", record.plan));
    Ok(Json(json!({ "message": message, "config": config_object(&state.service, &addon, &record) })).into_response())
}

async fn deprovision(
    State(state): State<Arc<Xervo>>,
    Authenticated(Offered { addon, xervo }): Authenticated,
    PathResource(id): PathResource,
) -> XervoResult {
    let message = match state.service.deprovision(&addon, &xervo.caller, &id).await? {
        Deprovisioned::Released(_) => "deprovisioned",
        Deprovisioned::AlreadyGone(_) => "already deprovisioned",
        Deprovisioned::Unknown => return Err(ServiceError::NotFound(format!("no resource `{id}`")).into()),
    };
    Ok(Json(json!({ "message": message })).into_response())
}
