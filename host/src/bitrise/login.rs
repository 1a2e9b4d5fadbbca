//! Bitrise SSO: `POST /addons/{addon}/login` with `app_slug`, `timestamp` and `token` in the
//! form body and `app_title` / `build_slug` in the query. The token is
//! `hex(sha1(app_slug:sso_secret:timestamp))` (or `sha256-` + the SHA-256 form), fresh within
//! five minutes and usable once. The answer is the add-on's dashboard as well-formed XHTML
//! carrying Bitrise's Beam navigation header — answered directly, because the platform's
//! client follows redirects without a cookie jar.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use crate::error::ServiceError;
use crate::http::{body_bytes, check_resource_id, form_body, path_params};
use crate::pages::{Dashboard, html, js_string, xml_escape};
use crate::service::{Record, Service};

const BEAM_SCRIPT: &str = "https://unpkg.com/@bitrise/beam@latest/dist/beam.min.js";

#[derive(Debug, Deserialize)]
struct LoginForm {
    app_slug: String,
    timestamp: String,
    token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    app_title: Option<String>,
    build_slug: Option<String>,
}

pub async fn login(
    State(service): State<Arc<Service>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LoginQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let addon_id = path_params(path)?;
    let addon = service.addon(&addon_id)?;
    let secret = addon.bitrise()?.sso_secret.clone();
    let query = query.map(|q| q.0).map_err(|e| ServiceError::BadRequest(format!("invalid query: {e}")))?;
    let form: LoginForm = form_body(&headers, &body_bytes(&addon, body)?)?;
    check_resource_id("app_slug", &form.app_slug)?;
    service.verify_sso(&format!("{addon_id}/bitrise"), &form.app_slug, &secret, &form.timestamp, &form.token).await?;
    let record =
        service.record(&addon, &form.app_slug).await?.filter(Record::is_active).ok_or_else(|| {
            ServiceError::NotFound(format!("app `{}` has not provisioned `{addon_id}`", form.app_slug))
        })?;
    let docs = addon.config.config.get("docs_url").map(String::as_str);
    Ok(html(dashboard(&addon_id, &record, &query, docs)))
}

fn dashboard(addon_id: &str, record: &Record, query: &LoginQuery, docs: Option<&str>) -> String {
    let title =
        query.app_title.clone().or_else(|| record.app_title.clone()).unwrap_or_else(|| record.resource_id.clone());
    let beam_init = format!(
        "Beam.init({{ app_slug: {}, app_name: {}, addon_documentation: {} }});",
        js_string(&record.resource_id),
        js_string(&title),
        js_string(docs.unwrap_or("")),
    );
    let head = format!(
        "<script src=\"{BEAM_SCRIPT}\"></script>\n<script>\n//<![CDATA[\ndocument.addEventListener(\"DOMContentLoaded\", function () {{\n  if (window.Beam) {{ {beam_init} }}\n}});\n//]]>\n</script>"
    );
    let note = query
        .build_slug
        .as_deref()
        .filter(|b| !b.is_empty())
        .map(|b| format!("<p>Opened from build <code>{}</code>.</p>", xml_escape(b)))
        .unwrap_or_default();
    Dashboard { addon_id, title: &title, record, head, note }.render()
}
