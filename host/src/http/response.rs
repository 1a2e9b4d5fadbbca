//! How a [`ServiceError`] becomes an HTTP answer. Both protocol adapters answer with the
//! same JSON shape: `error` (a stable kind), `message` (for people), and for plugin failures
//! the add-on, plugin version and call.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ServiceError;
use crate::runtime::CallFailure;
use crate::storage::StorageError;

/// The status of each kind of failure.
pub(crate) fn status(error: &ServiceError) -> StatusCode {
    use ServiceError::*;
    match error {
        UnknownAddon(_) | ProtocolNotEnabled { .. } | NotFound(_) => StatusCode::NOT_FOUND,
        Gone(_) => StatusCode::GONE,
        DeployQuota(_) | Conflict(_) => StatusCode::CONFLICT,
        RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Forbidden(_) => StatusCode::FORBIDDEN,
        BadRequest(_) => StatusCode::BAD_REQUEST,
        PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        UnknownPlan { .. } | Refused { .. } | InvalidPlugin(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Unavailable { .. } | Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        CallFailed { failure: CallFailure::Deadline { .. }, .. } => StatusCode::GATEWAY_TIMEOUT,
        CallFailed { failure: CallFailure::ShuttingDown, .. } => StatusCode::SERVICE_UNAVAILABLE,
        CallFailed { failure: CallFailure::StorageUnavailable(_), .. } => StatusCode::SERVICE_UNAVAILABLE,
        CallFailed { failure: CallFailure::Quota(_), .. } => StatusCode::INSUFFICIENT_STORAGE,
        // The shared database is unreachable or failed the commit: nothing was stored, and
        // the same request will succeed once it is back.
        Storage(StorageError::Database(_)) => StatusCode::SERVICE_UNAVAILABLE,
        // The data disk is full, or below its watermark for work that needs room.
        Storage(StorageError::DiskFull(_)) => StatusCode::INSUFFICIENT_STORAGE,
        // The write-ahead log stopped at a failed write: the host says so on /livez and is
        // restarted by its supervisor; the same request succeeds after the restart.
        Storage(StorageError::Flush(_)) => StatusCode::SERVICE_UNAVAILABLE,
        PluginError { .. } | CallFailed { .. } | Storage(_) | Corrupt { .. } | Host { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The JSON body: kind and message, plus what identifies a plugin's failure.
pub(crate) fn body(error: &ServiceError) -> serde_json::Value {
    let message = match error {
        // The engine's words and paths are for the host's log, not the platform.
        ServiceError::Storage(e) => e.public_message().to_owned(),
        _ => error.to_string(),
    };
    let mut body = json!({ "error": error.kind(), "message": message });
    use ServiceError::*;
    match error {
        Refused { addon, call, .. } => {
            body["addon"] = json!(addon);
            body["call"] = json!(call);
        }
        Unavailable { addon, call, docs_url, .. } => {
            body["addon"] = json!(addon);
            body["call"] = json!(call);
            if let Some(url) = docs_url {
                body["url"] = json!(url);
            }
        }
        PluginError { addon, call, short_version, .. } | CallFailed { addon, call, short_version, .. } => {
            body["addon"] = json!(addon);
            body["call"] = json!(call);
            body["plugin_version"] = json!(short_version);
        }
        UnknownPlan { allowed, .. } => body["plans"] = json!(allowed),
        _ => {}
    }
    body
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = status(&self);
        // A busy host frees up within a second or so; a plugin's own "not now" may last longer.
        let retry_after = match &self {
            ServiceError::Busy { .. } => Some("1".to_owned()),
            ServiceError::Unavailable { .. } => Some("30".to_owned()),
            ServiceError::Storage(StorageError::Database(_) | StorageError::Flush(_))
            | ServiceError::CallFailed { failure: CallFailure::StorageUnavailable(_), .. } => Some("5".to_owned()),
            ServiceError::RateLimited { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0).to_string())
            }
            _ => None,
        };
        // A full data disk is said once, at ERROR, where it happens (`storage::wal`).
        let expected = matches!(
            self,
            ServiceError::Busy { .. }
                | ServiceError::Unavailable { .. }
                | ServiceError::Storage(StorageError::DiskFull(_))
        );
        if expected {
            // A plugin's own "not now" or a full host: expected under load, retried by the platform.
            tracing::warn!(status = status.as_u16(), "{self}");
        } else if status.is_server_error() {
            tracing::error!(status = status.as_u16(), "{self}");
        } else {
            tracing::info!(status = status.as_u16(), "{self}");
        }
        let mut response = (status, axum::Json(body(&self))).into_response();
        if let Some(value) = retry_after.and_then(|secs| HeaderValue::from_str(&secs).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
