//! The HTTP surface: every protocol's routes on one router, JSON answers for unknown routes
//! and methods, and a body-size ceiling applied before any handler runs.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::{Json, Router, routing};
use serde_json::json;

use crate::service::Service;

pub fn app(service: Arc<Service>) -> Router {
    let max_plugin = service.max_plugin_bytes();
    let max_body = service.addons().map(|a| a.config.limits.max_body_bytes).max().unwrap_or(64 * 1024);
    Router::new()
        .merge(crate::bitrise::routes())
        .merge(crate::xervo::routes())
        .merge(crate::admin::routes(max_plugin))
        .route("/healthz", routing::get(health))
        .fallback(crate::http::not_found)
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(service)
}

async fn health(State(service): State<Arc<Service>>) -> Json<serde_json::Value> {
    let addons: Vec<_> =
        service.addons().map(|a| json!({ "id": a.id(), "plugin_version": a.plugin().sha256 })).collect();
    Json(json!({ "status": "ok", "engine": service.runtime().info(), "addons": addons }))
}

/// Serve `app` on `listener` until `shutdown` resolves, then flush storage.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app(service.clone())).with_graceful_shutdown(shutdown).await?;
    service.storage().flush().await?;
    Ok(())
}
