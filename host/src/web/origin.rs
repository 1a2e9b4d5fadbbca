//! Each add-on's pages and build API on its own origin (`server.web_origin`). A request is
//! routed by its `Host` before the router sees it: on an add-on's origin only that add-on's
//! `/dashboard/...` and `/api/...` exist (rewritten to the routes under `/addons/{id}/`,
//! marked [`OwnOrigin`]); nothing of the host's — the platforms' API, the admin API, another
//! add-on — answers there. On the host's own origin the old path-based URLs of the pages and
//! build API only redirect to the add-on's origin.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::config::WebOrigin;
use crate::error::ServiceError;

/// Marks a request that came to the add-on's own origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnOrigin;

/// `router` with requests routed by origin, when `server.web_origin` is set.
pub(crate) fn by_origin(origin: Option<&WebOrigin>, router: Router) -> Router {
    let Some(origin) = origin else { return router };
    let origin = Arc::new(origin.clone());
    // The outer router's layer runs before the inner one routes, so a rewritten path is
    // the one routed.
    Router::new().fallback_service(router).layer(middleware::from_fn_with_state(origin, route))
}

/// The add-on a request's `Host` (or HTTP/2 authority) names, under `origin`.
fn addon_of<'a>(origin: &WebOrigin, request: &'a Request) -> Option<&'a str> {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| request.uri().host())?;
    origin.addon_of_host(host)
}

async fn route(State(origin): State<Arc<WebOrigin>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Some(id) = addon_of(&origin, &request).map(str::to_owned) {
        let surface = path == "/dashboard" || path.starts_with("/dashboard/") || path.starts_with("/api/");
        if !surface {
            return ServiceError::NotFound(format!(
                "no route `{path}` on add-on `{id}`'s origin: it serves /dashboard/ and /api/ only"
            ))
            .into_response();
        }
        let Ok(uri) = format!("/addons/{id}{path}{query}").parse::<Uri>() else {
            return ServiceError::BadRequest("unusable path".into()).into_response();
        };
        *request.uri_mut() = uri;
        request.extensions_mut().insert(OwnOrigin);
        return next.run(request).await;
    }
    // The host's origin: an add-on's pages and API have moved to the add-on's own.
    if let Some((id, rest)) = moved(&path) {
        let location = format!("{}{rest}{query}", origin.of(id));
        let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return response;
    }
    next.run(request).await
}

/// `/addons/{id}/dashboard...` or `/addons/{id}/api/...`: the add-on and the path on its origin.
fn moved(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/addons/")?;
    let (id, rest) = rest.split_at(rest.find('/')?);
    let surface = rest == "/dashboard" || rest.starts_with("/dashboard/") || rest.starts_with("/api/");
    surface.then_some((id, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_and_api_move() {
        assert_eq!(moved("/addons/a/dashboard/x"), Some(("a", "/dashboard/x")));
        assert_eq!(moved("/addons/a/dashboard"), Some(("a", "/dashboard")));
        assert_eq!(moved("/addons/a/api/v1"), Some(("a", "/api/v1")));
        assert_eq!(moved("/addons/a/login"), None);
        assert_eq!(moved("/addons/a/sso/dashboard"), None);
        assert_eq!(moved("/addons/a/dashboards"), None);
        assert_eq!(moved("/addons/a/provision"), None);
    }
}
