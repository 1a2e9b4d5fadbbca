//! Every way a request can fail, and how each becomes an HTTP answer.
//!
//! Both protocol adapters answer with the same JSON shape: `error` (a stable kind),
//! `message` (for people), and for plugin failures the add-on, plugin version and call.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::runtime::CallFailure;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no add-on `{0}` is hosted here")]
    UnknownAddon(String),
    #[error("add-on `{addon}` is not offered on {protocol}")]
    ProtocolNotEnabled { addon: String, protocol: &'static str },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("invalid plugin: {0}")]
    InvalidPlugin(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("plan `{plan}` is not offered; plans: {}", allowed.join(", "))]
    UnknownPlan { plan: String, allowed: Vec<String> },
    #[error("{message}")]
    Refused { addon: String, call: &'static str, message: String },
    #[error("{message}{}", docs_url.as_ref().map(|u| format!(" See {u}")).unwrap_or_default())]
    Unavailable { addon: String, call: &'static str, message: String, docs_url: Option<String> },
    #[error("add-on `{addon}` failed in {call}: {message}")]
    PluginError { addon: String, call: &'static str, version: String, message: String },
    #[error("add-on `{addon}` plugin (version {version}) {failure} in {call}")]
    CallFailed { addon: String, call: &'static str, version: String, failure: CallFailure },
    #[error("too many concurrent changes to add-on `{0}` data; retry")]
    Busy(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<crate::storage::StorageError> for ServiceError {
    fn from(e: crate::storage::StorageError) -> Self {
        ServiceError::Storage(e.to_string())
    }
}

impl ServiceError {
    pub fn status(&self) -> StatusCode {
        use ServiceError::*;
        match self {
            UnknownAddon(_) | ProtocolNotEnabled { .. } | NotFound(_) => StatusCode::NOT_FOUND,
            Gone(_) => StatusCode::GONE,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UnknownPlan { .. } | Refused { .. } | InvalidPlugin(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Unavailable { .. } | Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            CallFailed { failure: CallFailure::Deadline { .. }, .. } => StatusCode::GATEWAY_TIMEOUT,
            CallFailed { failure: CallFailure::ShuttingDown, .. } => StatusCode::SERVICE_UNAVAILABLE,
            CallFailed { failure: CallFailure::Quota(_), .. } => StatusCode::INSUFFICIENT_STORAGE,
            PluginError { .. } | CallFailed { .. } | Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        use ServiceError::*;
        match self {
            UnknownAddon(_) => "unknown_addon",
            ProtocolNotEnabled { .. } => "protocol_not_enabled",
            Unauthorized(_) => "unauthorized",
            Forbidden(_) => "forbidden",
            NotFound(_) => "not_found",
            Gone(_) => "gone",
            InvalidPlugin(_) => "invalid_plugin",
            BadRequest(_) => "bad_request",
            PayloadTooLarge(_) => "payload_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            UnknownPlan { .. } => "unknown_plan",
            Refused { .. } => "refused",
            Unavailable { .. } => "unavailable",
            PluginError { .. } => "plugin_error",
            CallFailed { failure, .. } => failure.kind(),
            Busy(_) => "busy",
            Storage(_) => "storage_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({ "error": self.kind(), "message": self.to_string() });
        use ServiceError::*;
        match self {
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
            PluginError { addon, call, version, .. } | CallFailed { addon, call, version, .. } => {
                body["addon"] = json!(addon);
                body["call"] = json!(call);
                body["plugin_version"] = json!(version);
            }
            UnknownPlan { allowed, .. } => body["plans"] = json!(allowed),
            _ => {}
        }
        body
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ServiceError::Unavailable { .. } | ServiceError::Busy(_) = self {
            // A plugin's own "not now" or a full host: expected under load, retried by the platform.
            tracing::warn!(status = status.as_u16(), "{self}");
        } else if status.is_server_error() {
            tracing::error!(status = status.as_u16(), "{self}");
        } else {
            tracing::info!(status = status.as_u16(), "{self}");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let ServiceError::Unavailable { .. } | ServiceError::Busy(_) = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        response
    }
}
