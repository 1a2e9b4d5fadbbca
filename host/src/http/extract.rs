//! Request extractors for the protocol handlers. Each parses one part of the request and
//! rejects with a [`ServiceError`] naming the problem, so a handler reads: extract, call the
//! service, map the answer. Parts run in the order a handler lists them and the body always
//! last, so credentials are checked before a body is read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::HasService;
use crate::error::ServiceError;
use crate::service::Addon;
use crate::service::check_resource_id;

/// Typed path parameters, or a 400 naming what is wrong with the path.
pub(crate) fn path_params<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ServiceError> {
    path.map(|p| p.0).map_err(|e| ServiceError::BadRequest(format!("invalid path: {e}")))
}

/// A typed query string, or a 400 naming what is wrong with it.
pub(crate) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ServiceError> {
    query.map(|q| q.0).map_err(|e| ServiceError::BadRequest(format!("invalid query: {e}")))
}

/// The media type of the request's body (lower case, without parameters), if it names one.
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let value = value.to_str().unwrap_or("").to_ascii_lowercase();
    Some(value.split(';').next().unwrap_or("").trim().to_owned())
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one. The
/// scheme's name is case-insensitive (RFC 9110, 11.1); surrounding space is dropped.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The named path parameters, in route order.
async fn raw_params(parts: &mut Parts) -> Result<Vec<(String, String)>, ServiceError> {
    let raw = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ServiceError::BadRequest(format!("invalid path: {e}")))?;
    Ok(raw.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

async fn addon_of<S: HasService>(parts: &mut Parts, state: &S) -> Result<Arc<Addon>, ServiceError> {
    let params = raw_params(parts).await?;
    let id = params.iter().find(|(k, _)| k == "addon_id").map(|(_, v)| v.as_str()).unwrap_or("");
    state.service().addon(id)
}

/// The add-on named by the path's `{addon_id}` (404 when it is not hosted here).
pub(crate) struct PathAddon(pub Arc<Addon>);

impl<S: HasService> FromRequestParts<S> for PathAddon {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        addon_of(parts, state).await.map(PathAddon)
    }
}

/// The resource named by the path's last parameter (`{app_slug}` or `{id}`), checked to be a
/// valid id; an error names the parameter.
pub(crate) struct PathResource(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathResource {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let params = raw_params(parts).await?;
        let (name, value) = params
            .into_iter()
            .rfind(|(k, _)| k != "addon_id")
            .ok_or_else(|| ServiceError::BadRequest("the path names no resource".into()))?;
        check_resource_id(&name, &value)?;
        Ok(PathResource(value))
    }
}

/// The raw body, within the add-on's body limit, with the request's headers.
pub(crate) struct RawBody {
    pub headers: HeaderMap,
    pub bytes: Bytes,
}

impl<S: HasService> FromRequest<S> for RawBody {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let addon = addon_of(&mut parts, state).await?;
        let max = addon.config.limits.max_body_bytes;
        let headers = parts.headers.clone();
        let bytes = super::body::read(body, max, "the request body").await?;
        Ok(RawBody { headers, bytes })
    }
}

impl RawBody {
    /// Decode as JSON. A missing content type is tolerated (platforms' tools are not all
    /// careful); a different one is refused.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ServiceError> {
        if let Some(essence) = content_type(&self.headers)
            && essence != "application/json"
            && !essence.ends_with("+json")
        {
            return Err(ServiceError::UnsupportedMediaType(format!(
                "expected a JSON body (Content-Type: application/json), got `{essence}`"
            )));
        }
        if let Some(depth) = too_deep(&self.bytes) {
            return Err(ServiceError::BadRequest(format!(
                "invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels (at least {depth})"
            )));
        }
        let mut de = serde_json::Deserializer::from_slice(&self.bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ServiceError::BadRequest(format!("invalid JSON body: {inner}"))
            } else {
                ServiceError::BadRequest(format!("invalid JSON body at `{path}`: {inner}"))
            }
        })?;
        // One document and nothing after it but whitespace: `{..}xyz` and `{..}{..}` are
        // not JSON, whatever a lenient parser makes of their first part.
        de.end().map_err(|e| ServiceError::BadRequest(format!("invalid JSON body: {e}")))?;
        Ok(value)
    }

    /// Decode as a form (`application/x-www-form-urlencoded`); a missing content type is
    /// tolerated, a different one refused.
    pub(crate) fn form<T: DeserializeOwned>(&self) -> Result<T, ServiceError> {
        if let Some(essence) = content_type(&self.headers)
            && essence != "application/x-www-form-urlencoded"
        {
            return Err(ServiceError::UnsupportedMediaType(format!(
                "expected a form body (application/x-www-form-urlencoded), got `{essence}`"
            )));
        }
        serde_urlencoded::from_bytes(&self.bytes)
            .map_err(|e| ServiceError::BadRequest(format!("invalid form body: {e}")))
    }
}

/// A JSON body within the add-on's limit (see [`RawBody::json`]).
pub(crate) struct JsonBody<T>(pub T);

impl<S: HasService, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        RawBody::from_request(req, state).await?.json().map(JsonBody)
    }
}

/// A form body within the add-on's limit (see [`RawBody::form`]).
pub(crate) struct FormBody<T>(pub T);

impl<S: HasService, T: DeserializeOwned> FromRequest<S> for FormBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        RawBody::from_request(req, state).await?.form().map(FormBody)
    }
}

/// No platform request nests deeper than a few levels; anything past this is refused before
/// parsing, wherever it is (serde skips unknown fields without a depth limit).
const MAX_JSON_DEPTH: usize = 64;

/// The nesting depth reached, when it passes [`MAX_JSON_DEPTH`]. Brackets inside strings do
/// not count.
fn too_deep(bytes: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{bearer_token, too_deep};

    #[test]
    fn a_bearer_token_is_read_whatever_the_scheme_case() {
        let token = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("a header value"));
            bearer_token(&headers).map(str::to_owned)
        };
        assert_eq!(token("Bearer abc"), Some("abc".into()));
        assert_eq!(token("bearer abc"), Some("abc".into()));
        assert_eq!(token("BEARER  abc "), Some("abc".into()));
        assert_eq!(token("Basic abc"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(token("Bearer   "), None);
        assert_eq!(token("Bearerabc"), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn nesting_depth_ignores_brackets_in_strings() {
        assert_eq!(too_deep(br#"{"a":[[1],[2]],"b":"[[[[[["}"#), None);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(too_deep(deep.as_bytes()), Some(65));
        let quoted = format!(r#"{{"s":"\"{}"}}"#, "[".repeat(100));
        assert_eq!(too_deep(quoted.as_bytes()), None, "an escaped quote does not end the string");
    }
}
