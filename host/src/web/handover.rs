//! How a login reaches the add-on's own origin. The platforms post their SSO to the host's
//! origin, where the add-on's session cannot live; so a valid login is answered with a
//! redirect to `{add-on origin}/dashboard/?handover=LINK`, and that link opens the session
//! there — once. The link is sealed like a session (HMAC under the host's key, for the
//! purpose "handover", so it is no cookie) and lasts a minute; its first use is claimed
//! durably, like an SSO token, before the session opens, so no host sharing the storage
//! accepts it again and a leaked URL (history, logs, a shared link) opens nothing. Clients
//! without a cookie jar (the platforms' kits) get the dashboard's page with that answer.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::{NoSession, Session};
use crate::error::ServiceError;
use crate::service::{Addon, Record, Service};

/// How long a handover link lasts: the platform's redirect is followed at once.
const LINK_SECS: u64 = 60;

/// With `server.web_origin`, the redirect (with `status`: 303 after Bitrise's form post,
/// 302 for Xervo's, whose kit wants exactly that) that takes `record`'s login to the
/// add-on's origin; `None` without one.
pub(crate) fn handover(
    service: &Service,
    addon: &Addon,
    record: &Record,
    email: Option<String>,
    status: StatusCode,
) -> Result<Option<Response>, ServiceError> {
    let Some(origin) = service.server_config().web_origin.as_ref() else { return Ok(None) };
    let failed = || ServiceError::host("making a handover link", anyhow::anyhow!("no randomness"));
    let link = Session::open(addon.id(), &record.resource_id, email, LINK_SECS).ok_or_else(failed)?;
    let sealed = link.seal_as(service.web_key(), "handover").ok_or_else(failed)?;
    let location = format!("{}/dashboard/?handover={sealed}", origin.of(addon.id()));
    let mut response = status.into_response();
    let value = HeaderValue::from_str(&location).map_err(|e| ServiceError::host("making a handover link", e))?;
    response.headers_mut().insert(header::LOCATION, value);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(Some(response))
}

/// The handover link in a request's query, if any.
pub(super) fn link(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(name, _)| name == "handover").map(|(_, v)| v.into_owned())
}

/// Claim `link` for `addon`: the resource and email it carries, the first time it is
/// presented within its minute; why not otherwise.
pub(super) async fn claim(
    service: &Arc<Service>,
    addon: &Arc<Addon>,
    link: &str,
) -> Result<Result<(Record, Option<String>), NoSession>, ServiceError> {
    let link = match Session::open_sealed_as(link, service.web_key(), addon.id(), "handover") {
        Ok(link) => link,
        Err(why) => return Ok(Err(why)),
    };
    let lifetime = LINK_SECS as i64;
    let scope = format!("{}/handover", addon.id());
    if !service.claim_once(&scope, link.expires - lifetime, &link.id, lifetime).await? {
        return Ok(Err(NoSession::Used));
    }
    Ok(match service.resource(addon, &link.resource).await? {
        Some(record) => Ok((record, link.email)),
        None => Err(NoSession::Invalid),
    })
}
