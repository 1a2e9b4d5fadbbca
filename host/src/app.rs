//! The HTTP surface: every protocol's routes on one router, JSON answers for unknown routes
//! and methods, and a body-size ceiling applied before any handler runs.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use serde_json::json;

use crate::http::{body, observe};
use crate::service::Service;

pub fn app(service: Arc<Service>) -> Router {
    // Jobs run while the host serves (once per service, on the runtime serving it).
    crate::jobs::start(&service);
    crate::service::follow(&service);
    let max_plugin = service.max_plugin_bytes();
    let max_body = service.addons().map(|a| a.config.limits.max_body_bytes).max().unwrap_or(64 * 1024);
    let server = service.server_config();
    let (body_timeout, upload_timeout) =
        (Duration::from_millis(server.body_timeout_ms), Duration::from_millis(server.upload_timeout_ms));
    let counted = |protocol: &'static str| middleware::from_fn_with_state((service.clone(), protocol), observe::count);
    let platforms = Router::new()
        .merge(crate::bitrise::routes().route_layer(counted("bitrise")))
        .merge(crate::xervo::routes(&service).route_layer(counted("xervo")))
        .merge(crate::web::routes(&service).route_layer(counted("web")))
        .layer(middleware::map_request(move |req: Request| async move { body::time_limit(req, body_timeout) }));
    let admin = crate::admin::routes(max_plugin)
        .route_layer(counted("admin"))
        .layer(middleware::map_request(move |req: Request| async move { body::time_limit(req, upload_timeout) }));
    let router = Router::new()
        .merge(platforms)
        .merge(admin)
        .route("/healthz", routing::get(health))
        .route("/livez", routing::get(live))
        .route("/readyz", routing::get(ready))
        .fallback(crate::http::not_found)
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(service.clone());
    // Each add-on's pages on its own origin, when `server.web_origin` says where.
    let router = crate::web::by_origin(service.server_config().web_origin.as_ref(), router);
    observe::layers(router)
}

/// The metrics listener's router (`server.metrics_listen`): `/metrics` without credentials,
/// for a port only the monitoring network reaches.
pub fn metrics_app(service: Arc<Service>) -> Router {
    Router::new()
        .route(
            "/metrics",
            routing::get(|State(service): State<Arc<Service>>| async move { observe::scrape(&service).await }),
        )
        .fallback(crate::http::not_found)
        .with_state(service)
}

/// Liveness (Kubernetes `livenessProbe`): the process answers. Restarting it is the cure
/// only when it does not.
async fn live(State(service): State<Arc<Service>>) -> Response {
    match service.storage().broken() {
        None => Json(json!({ "status": "live" })).into_response(),
        Some(why) => broken(&why),
    }
}

/// The answer of every probe once storage cannot go on (a failed write to sled or its log):
/// 503, so that a supervisor restarts the host. The cause is in the host's log.
fn broken(why: &crate::storage::StorageError) -> Response {
    let full = if matches!(why, crate::storage::StorageError::DiskFull(_)) { " (the data disk is full)" } else { "" };
    let message = format!("storage failed{full}; the host must restart, which replays its log");
    let body = json!({ "status": "broken", "error": "storage_failed", "message": message });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Readiness (`readinessProbe`): every add-on has a plugin loaded (true once the host
/// listens) and storage is committing; 503 while commits have stalled.
async fn ready(State(service): State<Arc<Service>>) -> Response {
    if let Some(why) = service.storage().broken() {
        return broken(&why);
    }
    match service.storage().stall() {
        None => Json(json!({ "status": "ready", "addons": service.addons().count() })).into_response(),
        Some(stall) => {
            let body = json!({ "status": "not_ready", "error": "storage_stalled", "message": stalled(&stall) });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

fn stalled(stall: &crate::storage::Stall) -> String {
    format!("no durable commit for {} ms (limit {} ms)", stall.for_ms, stall.limit_ms)
}

/// Health for load balancers and supervisors, on the public port: whether the host serves,
/// and 503 while durable commits have stopped making progress (see
/// [`crate::storage::Stall`]). It names nothing else: which add-ons, plugins, engine and
/// storage the host has is the operator's to see, on `/admin/status`. Never touches storage.
async fn health(State(service): State<Arc<Service>>) -> Response {
    if let Some(why) = service.storage().broken() {
        return broken(&why);
    }
    match service.storage().stall() {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(stall) => {
            let body = json!({ "status": "stalled", "error": "storage_stalled", "message": stalled(&stall) });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Serve `app` on `listener` (see [`crate::http::server`]) until `shutdown` resolves, then
/// flush storage.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = service.server_config().clone();
    let open = service.metrics().connections.clone();
    crate::http::server::run(listener, app(service.clone()), &server, open, shutdown).await?;
    let storage = service.storage().clone();
    tokio::task::spawn_blocking(move || storage.flush()).await??;
    Ok(())
}
