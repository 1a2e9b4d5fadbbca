//! HTTP helpers shared by the protocol adapters: decoding bodies with errors that name the
//! problem, and the JSON answers for unknown routes and methods.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ServiceError;
use crate::service::Addon;

/// The raw body, within the add-on's size limit.
pub fn body_bytes(addon: &Addon, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ServiceError> {
    let max = addon.config.limits.max_body_bytes;
    let bytes = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => {
            ServiceError::PayloadTooLarge(format!("request body exceeds the {max}-byte limit"))
        }
        other => ServiceError::BadRequest(format!("unreadable request body: {other}")),
    })?;
    if bytes.len() > max {
        return Err(ServiceError::PayloadTooLarge(format!(
            "request body of {} bytes exceeds the {max}-byte limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decode a JSON body. A missing content type is tolerated (platforms' tools are not all
/// careful); a different one is refused.
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ServiceError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ServiceError::UnsupportedMediaType(format!(
                "expected a JSON body (Content-Type: application/json), got `{essence}`"
            )));
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ServiceError::BadRequest(format!("invalid JSON body: {inner}"))
        } else {
            ServiceError::BadRequest(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })
}

/// A form body (`application/x-www-form-urlencoded`).
pub fn form_body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ServiceError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(ServiceError::UnsupportedMediaType(format!(
                "expected a form body (application/x-www-form-urlencoded), got `{ct}`"
            )));
        }
    }
    serde_urlencoded::from_bytes(bytes).map_err(|e| ServiceError::BadRequest(format!("invalid form body: {e}")))
}

pub fn path_params<T>(path: Result<axum::extract::Path<T>, PathRejection>) -> Result<T, ServiceError> {
    path.map(|p| p.0).map_err(|e| ServiceError::BadRequest(format!("invalid path: {e}")))
}

/// A resource id or app slug from a URL or body: 1-128 URL-safe characters.
pub fn check_resource_id(field: &str, id: &str) -> Result<(), ServiceError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ServiceError::BadRequest(format!("`{field}` must be 1-128 characters long")));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(ServiceError::BadRequest(format!(
            "`{field}` may contain only letters, digits, '-', '_' and '.'; found {c:?}"
        )));
    }
    if id == "." || id == ".." {
        return Err(ServiceError::BadRequest(format!("`{field}` must not be `{id}`")));
    }
    Ok(())
}

pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found", "message": "no such route"}))).into_response()
}

pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({"error": "method_not_allowed", "message": "this route does not accept that method"})),
    )
        .into_response()
}
