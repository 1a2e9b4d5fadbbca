//! Xervo SSO. The platform (or the user's browser) POSTs `{id, timestamp, token, email,
//! nav-data}` as JSON or a form, with `token = hex(sha1(id:sso_salt:timestamp))`; Heroku v3's
//! `resource_id` / `resource_token` are accepted too. A valid, fresh, unused token gets a 302
//! to the dashboard with a short-lived, single-use signed ticket in the URL, because the
//! platform's client follows the redirect without cookies. The `email` the post carries is
//! covered by no platform signature: the plugin gets it as unverified. The dashboard also answers for a resource
//! that was just deprovisioned, saying so.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Offered, Scalar, Xervo, XervoResult};
use crate::clock;
use crate::error::ServiceError;
use crate::http::{RawBody, content_type};
use crate::pages;
use crate::service::check_resource_id;
use crate::service::{Platform, auth};

/// How long a dashboard ticket stays valid.
const TICKET_SECS: i64 = 300;

#[derive(Debug, Default, Deserialize)]
struct SsoBody {
    id: Option<Scalar>,
    resource_id: Option<Scalar>,
    timestamp: Option<Scalar>,
    token: Option<String>,
    resource_token: Option<String>,
    email: Option<String>,
}

/// Read the SSO fields from a JSON or form body.
fn parse(body: &RawBody) -> Result<SsoBody, ServiceError> {
    if content_type(&body.headers).as_deref() == Some("application/x-www-form-urlencoded") {
        let form: BTreeMap<String, String> = body.form()?;
        let get = |k: &str| form.get(k).cloned();
        return Ok(SsoBody {
            id: get("id").map(Scalar::Text),
            resource_id: get("resource_id").map(Scalar::Text),
            timestamp: get("timestamp").map(Scalar::Text),
            token: get("token"),
            resource_token: get("resource_token"),
            email: get("email"),
        });
    }
    body.json()
}

fn ticket_key(addon_id: &str, salt: &str) -> Vec<u8> {
    Sha256::digest(format!("addon-host dashboard ticket:{addon_id}:{salt}").as_bytes()).to_vec()
}

fn sign(key: &[u8], message: &str) -> Result<String, ServiceError> {
    // HMAC takes keys of any length; the error case exists only in the trait's signature.
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(key).map_err(|e| ServiceError::host("signing a dashboard ticket", e))?;
    mac.update(message.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

pub(super) async fn login(
    State(state): State<Arc<Xervo>>,
    Offered { addon, xervo }: Offered,
    body: RawBody,
) -> XervoResult {
    let (service, xervo, addon_id) = (&state.service, &xervo.settings, addon.id());
    let body = parse(&body)?;
    let id = body
        .id
        .or(body.resource_id)
        .map(Scalar::into_string)
        .ok_or_else(|| ServiceError::BadRequest("missing `id` (or `resource_id`)".into()))?;
    let timestamp = body
        .timestamp
        .map(Scalar::into_string)
        .ok_or_else(|| ServiceError::BadRequest("missing `timestamp`".into()))?;
    let token = body
        .token
        .or(body.resource_token)
        .ok_or_else(|| ServiceError::BadRequest("missing `token` (or `resource_token`)".into()))?;
    check_resource_id("id", &id)?;
    service.verify_sso(&format!("{addon_id}/xervo"), &id, &xervo.sso_salt, &timestamp, &token).await?;
    let Some(record) = service.record(&addon, Platform::Xervo, &id).await? else {
        return Err(ServiceError::NotFound(format!("no resource `{id}`")).into());
    };
    // With an origin per add-on, straight to it (dia wants exactly 302).
    let email = body.email.unwrap_or_default();
    let unverified = Some(email.clone()).filter(|e| !e.is_empty());
    if let Some(redirect) = crate::web::handover(service, &addon, &record, unverified, StatusCode::FOUND)? {
        tracing::info!(addon = %addon_id, resource = %id, "SSO login");
        return Ok(redirect);
    }
    let expires = clock::unix_secs() + TICKET_SECS;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| ServiceError::host("making a dashboard ticket", anyhow::anyhow!("{e}")))?;
    let nonce = hex::encode(nonce);
    let signature = sign(&ticket_key(addon_id, &xervo.sso_salt), &format!("{id}.{expires}.{nonce}.{email}"))?;
    tracing::info!(addon = %addon_id, resource = %id, "SSO login");
    let mut location = format!("/addons/{addon_id}/sso/dashboard?ticket={id}.{expires}.{nonce}.{signature}");
    if !email.is_empty() {
        location.push_str("&email=");
        location.extend(url::form_urlencoded::byte_serialize(email.as_bytes()));
    }
    let mut response = StatusCode::FOUND.into_response();
    let value =
        HeaderValue::from_str(&location).map_err(|_| ServiceError::BadRequest("unusable resource id".into()))?;
    response.headers_mut().insert(header::LOCATION, value);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(super) struct TicketQuery {
    ticket: String,
    /// The user's email from the SSO post, covered by the ticket's signature (so it is the
    /// one posted), though no platform's signature covers the post's.
    #[serde(default)]
    email: String,
}

pub(super) async fn dashboard(
    State(state): State<Arc<Xervo>>,
    Offered { addon, xervo }: Offered,
    headers: HeaderMap,
    query: Result<Query<TicketQuery>, QueryRejection>,
) -> XervoResult {
    let (service, xervo, addon_id) = (&state.service, &xervo.settings, addon.id());
    let TicketQuery { ticket, email } =
        query.map_err(|_| ServiceError::Forbidden("missing `ticket`; log in through the platform".into()))?.0;
    let mut parts = ticket.rsplitn(4, '.');
    let (signature, nonce, expires, id) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(n), Some(e), Some(i)) => (s, n, e, i),
        _ => return Err(ServiceError::Forbidden("malformed ticket".into()).into()),
    };
    let expected = sign(&ticket_key(addon_id, &xervo.sso_salt), &format!("{id}.{expires}.{nonce}.{email}"))?;
    if !auth::secret_matches(signature, &expected) {
        return Err(ServiceError::Forbidden("invalid ticket".into()).into());
    }
    let Some(expires) = expires.parse::<i64>().ok().filter(|e| *e >= clock::unix_secs()) else {
        return Err(ServiceError::Forbidden("this ticket has expired; log in again through the platform".into()).into());
    };
    // Single use: whoever else holds the URL (a log, the history, a shared link) gets nothing.
    if !service.claim_once(&format!("{addon_id}/xervo-ticket"), expires - TICKET_SECS, nonce, TICKET_SECS).await? {
        return Err(
            ServiceError::Forbidden("this ticket was already used; log in again through the platform".into()).into()
        );
    }
    let record = service
        .record(&addon, Platform::Xervo, id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no resource `{id}`")))?;
    let email = Some(email).filter(|e| !e.is_empty());
    Ok(crate::web::open(service, &addon, &record, email, &headers, || pages::xervo_dashboard(&addon.config, &record))
        .await?)
}
