//! What an operator sees of each request: a request id (the client's `X-Request-Id` when it
//! is usable, else a fresh UUID) returned in the response, carried by a tracing span around
//! every log line of the request (the plugin's own lines included) and added to every JSON
//! error body; a count per add-on, protocol, route and status; and the `/metrics` scrape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::metrics::{Metrics, RequestLabels};
use crate::service::Service;

pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Error bodies are small; one larger than this is passed on without its id.
const MAX_ERROR_BODY: usize = 1 << 20;

/// The layer to put around the whole router: [`observe`]. One middleware rather than a layer
/// per concern (tower-http's request-id, propagation and trace layers and two of our own):
/// each layer wrapped the request's future, and some cloned and boxed their inner service
/// per request.
pub(crate) fn layers<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    router.layer(axum::middleware::from_fn(observe))
}

/// Give the request an id (the client's when usable, see [`usable_id`]; else a made-up one),
/// run it inside a span carrying the id, return the id in the response's header and in a
/// JSON error body, and log a failed request (5xx) with its status and time.
async fn observe(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(REQUEST_ID).filter(|v| usable_id(v)) {
        Some(id) => id.clone(),
        None => {
            let made = HeaderValue::from_str(&uuid_shaped(next_id()))
                .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"));
            req.headers_mut().insert(REQUEST_ID, made.clone());
            made
        }
    };
    let text = id.to_str().unwrap_or_default();
    // At error level so that no log filter drops the span: it only carries the id.
    let span = tracing::error_span!("request", id = %text, method = %req.method(), path = %req.uri().path());
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    let latency_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), latency_ms, "request finished");
        }
    });
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json && (status.is_client_error() || status.is_server_error()) {
        response = with_id_in_body(response, text).await;
    }
    response.headers_mut().entry(REQUEST_ID).or_insert(id);
    response
}

/// A client's id is kept if it is 1-128 visible ASCII characters; otherwise it is replaced,
/// so nothing a client sends can forge log structure or bloat every line.
fn usable_id(v: &HeaderValue) -> bool {
    let bytes = v.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Add `request_id` to a JSON error body, whoever made it (a handler, an extractor, the
/// fallback).
async fn with_id_in_body(response: Response, id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error body too large").into_response();
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("request_id".into(), id.into());
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(serde_json::Value::Object(fields).to_string())
        }
        _ => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// Made-up request ids: UUID-shaped (version 4 layout), unique in the process and across
/// restarts (a random start), without a system call per request as `Uuid::new_v4` makes
/// (it drew ~1% of a provision's CPU). They only need to be unique: a client may send any
/// id of its own.
fn next_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut seed = [0u8; 8];
        // Without the OS's randomness, the clock still tells one run from another.
        if getrandom::fill(&mut seed).is_err() {
            seed = crate::clock::now_ms().to_le_bytes();
        }
        u64::from_le_bytes(seed)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // splitmix64 of the count spreads consecutive ids over the whole second half.
    let mut z = start.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (u128::from(start) << 64) | u128::from(z)
}

fn uuid_shaped(bits: u128) -> String {
    // Version 4, variant 1: the bits a reader of UUIDs expects.
    let bits = (bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Count each answer of a protocol's routes by add-on, protocol, route and status. The
/// add-on label is set only for add-ons this host serves, so unknown ids cannot grow it.
pub(crate) async fn count(
    State((service, protocol)): State<(Arc<Service>, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let addon = req
        .uri()
        .path()
        .strip_prefix("/addons/")
        .or_else(|| req.uri().path().strip_prefix("/admin/addons/"))
        .and_then(|rest| rest.split('/').next())
        .filter(|id| service.addon(id).is_ok())
        .unwrap_or_default()
        .to_owned();
    let response = next.run(req).await;
    let labels =
        RequestLabels { addon, protocol: protocol.to_owned(), route, status: response.status().as_u16().to_string() };
    service.metrics().requests.get_or_create(&labels).inc();
    response
}

/// The exposition: gauges of the present are read now, then everything is encoded.
pub(crate) async fn scrape(service: &Arc<Service>) -> Response {
    let metrics = service.metrics();
    metrics.plugin_version.clear();
    // Every add-on's KV usage in one trip off the runtime (sled reads can wait for writers).
    let stores: Vec<_> = service.addons().map(|a| (a.id().to_owned(), a.store().clone())).collect();
    let usage = tokio::task::spawn_blocking(move || {
        stores.into_iter().filter_map(|(id, store)| Some((id, store.kv_usage().ok()?))).collect::<Vec<_>>()
    });
    for (id, usage) in usage.await.unwrap_or_default() {
        Metrics::addon_gauge(&metrics.kv_bytes, &id, usage.bytes);
        Metrics::addon_gauge(&metrics.kv_keys, &id, usage.keys);
    }
    for addon in service.addons() {
        let (running, queued, _) = addon.calls();
        Metrics::addon_gauge(&metrics.calls_running, addon.id(), running as u64);
        Metrics::addon_gauge(&metrics.calls_queued, addon.id(), queued as u64);
        metrics.cpu(addon.id(), addon.cpu());
        let labels =
            crate::metrics::VersionLabels { addon: addon.id().to_owned(), version: addon.plugin().sha256.clone() };
        metrics.plugin_version.get_or_create(&labels).set(1);
    }
    metrics.calls_in_flight.set(service.runtime().calls_in_flight() as i64);
    let (spares, on_spares) = service.runtime().spares();
    metrics.spare_instances.set(spares as i64);
    Metrics::catch_up(&metrics.calls_on_spares, on_spares);
    if let Some(free) = service.storage().free_disk_bytes() {
        metrics.data_disk_free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    let commits = service.storage().commit_stats();
    Metrics::catch_up(&metrics.durable_writes, commits.writes);
    Metrics::catch_up(&metrics.flushes, commits.flushes);
    match metrics.encode() {
        Ok(text) => {
            let kind = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
            ([(header::CONTENT_TYPE, kind)], text).into_response()
        }
        Err(_) => {
            crate::error::ServiceError::host("encoding metrics", anyhow::anyhow!("formatting failed")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_ids_are_unique_and_shaped_as_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..100_000).map(|_| uuid_shaped(next_id())).collect();
        assert_eq!(ids.len(), 100_000);
        for id in ids.iter().take(100) {
            let parsed = u128::from_str_radix(&id.replace('-', ""), 16).expect("hex");
            assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
            assert!("89ab".contains(&id[19..20]), "{id}");
            assert_eq!(uuid_shaped(parsed), *id);
        }
    }
}
