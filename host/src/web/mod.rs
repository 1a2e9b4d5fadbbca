//! The add-on's own HTTP surfaces, served by its plugin's HTTP handler (the `web` world):
//!
//! - `/addons/{id}/dashboard[/...]`: the dashboard, for a platform user whose SSO login
//!   opened a session ([`open`], called by both platforms' SSO adapters). Without a handler,
//!   or for a deprovisioned resource, the host's own page answers.
//! - `/addons/{id}/api/...`: the build API, for the app's builds with the token the host
//!   issued at provision (`[addon.web] build_api`), rate-limited per app.
//!
//! Both verify the caller, then hand the request to the service ([`Service::serve_http`])
//! with the identity in headers ([`forward`]); the answer goes back through [`answer`]'s
//! allow-list. With `server.web_origin`, each add-on's surfaces are on its own origin
//! ([`origin`]) and an SSO login reaches it through a single-use handover link ([`handover`]).

mod answer;
mod forward;
mod handover;
mod origin;
mod session;

pub(crate) use handover::handover;
pub(crate) use origin::by_origin;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing};
use bytes::Bytes;

use crate::error::ServiceError;
use crate::pages::{self, html, xml_escape};
use crate::service::{Addon, Record, Service};
use forward::{Identity, Surface};
use session::{NoSession, Scope, Session};

struct Web {
    service: Arc<Service>,
    limits: crate::http::limit::RateLimits,
}

pub(crate) fn routes(service: &Arc<Service>) -> Router<Arc<Service>> {
    let state = Arc::new(Web { service: service.clone(), limits: Default::default() });
    Router::new()
        .route("/addons/{addon_id}/dashboard", routing::any(dashboard))
        .route("/addons/{addon_id}/dashboard/", routing::any(dashboard))
        .route("/addons/{addon_id}/dashboard/{*rest}", routing::any(dashboard))
        // The root too: `{*rest}` does not match an empty rest.
        .route("/addons/{addon_id}/api/", routing::any(api))
        .route("/addons/{addon_id}/api/{*rest}", routing::any(api))
        .with_state(state)
}

/// Open a dashboard session for `record` after a valid SSO login. With `server.web_origin`
/// that is a redirect (303) to the single-use handover link on the add-on's origin;
/// without, the session opens here, on the add-on's path ([`land`]).
pub(crate) async fn open(
    service: &Arc<Service>,
    addon: &Arc<Addon>,
    record: &Record,
    email: Option<String>,
    headers: &HeaderMap,
    builtin: impl FnOnce() -> String,
) -> Result<Response, ServiceError> {
    if let Some(redirect) = handover(service, addon, record, email.clone(), StatusCode::SEE_OTHER)? {
        return Ok(redirect);
    }
    let scope = Scope::SharedPath { addon: addon.id(), https: is_https(headers) };
    land(service, addon, record, email, headers, scope, builtin).await
}

/// A new session for `record`, and the dashboard's first page with its cookie: the plugin's
/// `GET /dashboard/`, or the page `builtin` renders. Answered directly (not redirected), so
/// clients without a cookie jar (Bitrise's kit, Xervo's dia) see it.
async fn land(
    service: &Arc<Service>,
    addon: &Arc<Addon>,
    record: &Record,
    email: Option<String>,
    headers: &HeaderMap,
    scope: Scope<'_>,
    builtin: impl FnOnce() -> String,
) -> Result<Response, ServiceError> {
    let web = &addon.config.web;
    let no_session = || ServiceError::host("opening a session", anyhow::anyhow!("no randomness"));
    let session = Session::open(addon.id(), &record.resource_id, email, web.session_secs).ok_or_else(no_session)?;
    let sealed = session.seal(service.web_key()).ok_or_else(no_session)?;
    let mut response = if addon.plugin().serves_http && record.is_active() {
        let base = base_path(addon, scope);
        let identity = dashboard_identity(record, &session, service.web_key(), &base);
        forward_to_plugin(service, addon, Method::GET, "/dashboard/", None, headers, Default::default(), &identity)
            .await?
    } else {
        html(builtin())
    };
    let cookie = Session::cookie(&sealed, scope, web.session_secs);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Where the add-on's routes start for a client in `scope`.
fn base_path(addon: &Addon, scope: Scope<'_>) -> String {
    match scope {
        Scope::Origin { .. } => String::new(),
        Scope::SharedPath { .. } => format!("/addons/{}", addon.id()),
    }
}

/// The cookie scope of a request: the add-on's own origin, or its path on the host's.
fn scope_of<'a>(service: &Service, addon: &'a Addon, parts: &axum::http::request::Parts) -> Scope<'a> {
    match service.server_config().web_origin.as_ref() {
        Some(origin) if parts.extensions.get::<origin::OwnOrigin>().is_some() => {
            Scope::Origin { https: origin.is_https() }
        }
        _ => Scope::SharedPath { addon: addon.id(), https: is_https(&parts.headers) },
    }
}

/// Who a dashboard session is, for the handler: its resource, user and CSRF token.
fn dashboard_identity<'a>(record: &'a Record, session: &'a Session, key: &[u8], base_path: &'a str) -> Identity<'a> {
    Identity {
        surface: Surface::Dashboard,
        record,
        unverified_email: session.email.as_deref(),
        csrf_token: Some(session.csrf_token(key)),
        base_path,
        // A page's inline scripts run only with this answer's nonce (Beam's initialisation
        // carries it): an injected one does not.
        csp_nonce: answer::nonce(),
    }
}

/// Whether the client reached the host over https (through a proxy that says so).
fn is_https(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    header("x-forwarded-proto").is_some_and(|p| p.split(',').next().map(str::trim) == Some("https"))
        || header("forwarded").is_some_and(|f| f.contains("proto=https"))
}

/// A small page for a browser without a usable session: what happened and what to do.
fn signed_out(addon: &Addon, why: NoSession) -> Response {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>{name}</title></head>\
         <body><main><h1>{name}</h1><p id=\"signed-out\">{why} Open the add-on again from your platform's dashboard.</p></main></body></html>",
        name = xml_escape(addon.config.display_name()),
        why = why.message(),
    );
    let mut response = html(page);
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

fn addon_of(web: &Web, params: &HashMap<String, String>) -> Result<Arc<Addon>, ServiceError> {
    web.service.addon(params.get("addon_id").map_or("", String::as_str))
}

/// The path the handler sees: `/{surface}` plus what follows it on the add-on's route.
fn inner_path(surface: &str, params: &HashMap<String, String>, original: &str) -> String {
    match params.get("rest") {
        Some(rest) => format!("/{surface}/{rest}"),
        None if original.ends_with('/') => format!("/{surface}/"),
        None => format!("/{surface}"),
    }
}

async fn dashboard(
    State(web): State<Arc<Web>>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ServiceError> {
    let addon = addon_of(&web, &params)?;
    let service = &web.service;
    let (parts, body) = request.into_parts();
    let scope = scope_of(service, &addon, &parts);
    let session = session::cookie_values(&parts.headers)
        .iter()
        .map(|value| Session::open_sealed(value, service.web_key(), addon.id()))
        .reduce(|first, next| first.or(next))
        .unwrap_or(Err(NoSession::Missing));
    // A handover link lands here, on the add-on's origin, and opens the session (once).
    if let (Scope::Origin { .. }, Some(link)) = (scope, handover::link(parts.uri.query())) {
        match handover::claim(service, &addon, &link).await? {
            Ok((record, email)) => {
                let page = || pages::dashboard(&addon.config, &record);
                return land(service, &addon, &record, email, &parts.headers, scope, page).await;
            }
            // A used or stale link (a reload, a shared URL): the browser's own session, if any.
            Err(why) if session.is_err() => return Ok(signed_out(&addon, why)),
            Err(_) => {}
        }
    }
    let session = match session {
        Ok(session) => session,
        Err(why) => return Ok(signed_out(&addon, why)),
    };
    let Some(record) = service.resource(&addon, &session.resource).await? else {
        return Ok(signed_out(&addon, NoSession::Invalid));
    };
    let path = inner_path("dashboard", &params, parts.uri.path());
    let root = path == "/dashboard/" || path == "/dashboard";
    if !record.is_active() || !addon.plugin().serves_http {
        return Ok(match (parts.method == Method::GET || parts.method == Method::HEAD, root) {
            (true, true) => html(pages::dashboard(&addon.config, &record)),
            _ => ServiceError::NotFound(format!("no page `{path}`")).into_response(),
        });
    }
    let web_cfg = &addon.config.web;
    let body = crate::http::body::read(body, web_cfg.max_request_bytes, "the request body").await?;
    if !is_safe(&parts.method) {
        check_csrf(&parts.headers, &body, &session, service.web_key())?;
    }
    let base = base_path(&addon, scope);
    let identity = dashboard_identity(&record, &session, service.web_key(), &base);
    forward_to_plugin(service, &addon, parts.method.clone(), &path, parts.uri.query(), &parts.headers, body, &identity)
        .await
}

/// Hand `identity`'s request (`path` as the handler sees it) to the plugin's handler, and
/// its answer back to the client.
#[allow(clippy::too_many_arguments, reason = "one request's parts, named")]
async fn forward_to_plugin(
    service: &Arc<Service>,
    addon: &Arc<Addon>,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    identity: &Identity<'_>,
) -> Result<Response, ServiceError> {
    let max_response = addon.config.web.max_response_bytes;
    let request = forward::request(method, path, query, headers, body, identity, max_response)
        .map_err(ServiceError::BadRequest)?;
    let answer = service.serve_http(addon, &identity.record.resource_id, request).await?;
    let shared_path = Some(identity.base_path).filter(|base| !base.is_empty());
    Ok(answer::response(answer, identity.surface, shared_path, identity.csp_nonce.as_deref()))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A state-changing dashboard request must carry the session's CSRF token (`x-csrf-token`,
/// or `_csrf` in a form body) and must not come from another site.
fn check_csrf(headers: &HeaderMap, body: &[u8], session: &Session, key: &[u8]) -> Result<(), ServiceError> {
    let refused = |why: &str| ServiceError::Forbidden(format!("CSRF check failed: {why}"));
    // Another add-on's origin is `same-site` (a sibling name under one domain): refused
    // like another site.
    let from = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(from, Some("cross-site" | "same-site")) {
        return Err(refused("the request came from another site or another add-on's origin"));
    }
    let from_header = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_form = crate::http::content_type(headers).as_deref() == Some("application/x-www-form-urlencoded");
    let from_form =
        || url::form_urlencoded::parse(body).find(|(name, _)| name == "_csrf").map(|(_, value)| value.into_owned());
    let presented = from_header.or_else(|| if is_form { from_form() } else { None });
    match presented {
        None => Err(refused("no `_csrf` form field or `x-csrf-token` header")),
        Some(token) if session.csrf_matches(key, &token) => Ok(()),
        Some(_) => Err(refused("the token does not belong to this session")),
    }
}

async fn api(
    State(web): State<Arc<Web>>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ServiceError> {
    let addon = addon_of(&web, &params)?;
    let service = &web.service;
    let (parts, body) = request.into_parts();
    let token = crate::http::bearer_token(&parts.headers);
    let Some(token) = token else {
        let mut response =
            ServiceError::Unauthorized("send the app's API token as `Authorization: Bearer <token>`".into())
                .into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(response);
    };
    let record = service.api_caller(&addon, token).await?;
    let cfg = &addon.config.web;
    if let Err(wait) =
        web.limits.take(addon.id(), &record.resource_id, f64::from(cfg.api_rate_per_minute), cfg.api_burst)
    {
        return Ok(too_many(cfg.api_rate_per_minute, wait));
    }
    if !addon.plugin().serves_http {
        return Err(ServiceError::NotFound(format!(
            "add-on `{}` serves no API (its plugin has no HTTP handler)",
            addon.id()
        )));
    }
    let body = crate::http::body::read(body, cfg.max_request_bytes, "the request body").await?;
    let base = base_path(&addon, scope_of(service, &addon, &parts));
    let identity = Identity {
        surface: Surface::Api,
        record: &record,
        unverified_email: None,
        csrf_token: None,
        base_path: &base,
        csp_nonce: None,
    };
    let path = inner_path("api", &params, parts.uri.path());
    forward_to_plugin(service, &addon, parts.method.clone(), &path, parts.uri.query(), &parts.headers, body, &identity)
        .await
}

fn too_many(per_minute: u32, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let body = serde_json::json!({
        "error": "rate_limited",
        "message": format!("this app's builds may make {per_minute} API requests a minute; retry in {secs} s"),
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
