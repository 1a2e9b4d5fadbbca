//! The HTTP edge shared by the protocol adapters: extractors that turn a request into the
//! add-on, resource id and body a handler needs (each refusing with a JSON error that names
//! the problem), how a [`crate::error::ServiceError`] becomes an answer, and the JSON answers
//! for unknown routes and methods.

pub(crate) mod body;
mod deadline;
mod extract;
pub(crate) mod limit;
pub(crate) mod observe;
mod response;
pub(crate) mod server;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::Service;
pub(crate) use extract::{
    FormBody, JsonBody, PathAddon, PathResource, RawBody, bearer_token, content_type, path_params, query,
};

/// Router state that can hand out the service (the adapters' states wrap it).
pub(crate) trait HasService: Send + Sync + 'static {
    fn service(&self) -> &Arc<Service>;
}

impl HasService for Arc<Service> {
    fn service(&self) -> &Arc<Service> {
        self
    }
}

pub(crate) async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found", "message": "no such route"}))).into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({"error": "method_not_allowed", "message": "this route does not accept that method"})),
    )
        .into_response()
}
