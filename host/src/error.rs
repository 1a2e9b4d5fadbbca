//! Every way a request can fail, in the service's terms. Each kind has a stable name
//! ([`ServiceError::kind`]); the HTTP edge ([`crate::http`]) turns it into a status and a
//! JSON body, so nothing below the adapters knows about HTTP.

use crate::runtime::CallFailure;
use crate::storage::StorageError;

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
    /// An upload past the add-on's `[addon.deploys]` limits (the message names the limit).
    #[error("{0}")]
    DeployQuota(String),
    /// The request contradicts the current state (deleting the active version).
    #[error("{0}")]
    Conflict(String),
    /// Too many requests from one caller; retry after the duration.
    #[error("{message}")]
    RateLimited { message: String, retry_after: std::time::Duration },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client was too slow sending its request.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("plan `{plan}` is not offered; plans: {}", allowed.join(", "))]
    UnknownPlan { plan: String, allowed: Vec<String> },
    #[error("{message}")]
    Refused { addon: String, call: &'static str, message: String },
    #[error("{message}{}", docs_url.as_ref().map(|u| format!(" See {u}")).unwrap_or_default())]
    Unavailable { addon: String, call: &'static str, message: String, docs_url: Option<String> },
    #[error("add-on `{addon}` failed in {call}: {message}")]
    PluginError { addon: String, call: &'static str, short_version: String, message: String },
    #[error("add-on `{addon}` plugin (version {short_version}) {failure} in {call}")]
    CallFailed { addon: String, call: &'static str, short_version: String, failure: CallFailure },
    /// The request could not be served now; the platform should retry shortly.
    #[error("add-on `{addon}` is busy: {reason}; retry shortly")]
    Busy { addon: String, reason: &'static str },
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
    /// A stored value that cannot be read back (a record written by a broken version).
    #[error("storage failure: {what} is unreadable: {source}")]
    Corrupt { what: String, source: serde_json::Error },
    /// The host itself failed (no randomness, a task that panicked, a missing stored blob).
    #[error("{what}: {source}")]
    Host { what: &'static str, source: anyhow::Error },
}

impl ServiceError {
    /// A host failure: `what` failed because of `source`.
    pub fn host(what: &'static str, source: impl Into<anyhow::Error>) -> ServiceError {
        ServiceError::Host { what, source: source.into() }
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
            DeployQuota(_) => "deploy_quota",
            Conflict(_) => "conflict",
            RateLimited { .. } => "rate_limited",
            BadRequest(_) => "bad_request",
            PayloadTooLarge(_) => "payload_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            RequestTimeout(_) => "request_timeout",
            UnknownPlan { .. } => "unknown_plan",
            Refused { .. } => "refused",
            Unavailable { .. } => "unavailable",
            PluginError { .. } => "plugin_error",
            CallFailed { failure, .. } => failure.kind(),
            Busy { .. } => "busy",
            Storage(StorageError::DiskFull(_)) => "disk_full",
            Storage(_) | Corrupt { .. } => "storage_error",
            Host { .. } => "host_error",
        }
    }
}
