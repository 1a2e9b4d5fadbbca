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
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::ServiceError;
use crate::http::{body_bytes, check_resource_id, form_body, path_params};
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
    let query = query
        .map(|q| q.0)
        .map_err(|e| ServiceError::BadRequest(format!("invalid query: {e}")))?;
    let form: LoginForm = form_body(&headers, &body_bytes(&addon, body)?)?;
    check_resource_id("app_slug", &form.app_slug)?;
    service.verify_sso(
        &format!("{addon_id}/bitrise"),
        &form.app_slug,
        &secret,
        &form.timestamp,
        &form.token,
    )?;
    let record = addon
        .record(&form.app_slug)?
        .filter(Record::is_active)
        .ok_or_else(|| ServiceError::NotFound(format!("app `{}` has not provisioned `{addon_id}`", form.app_slug)))?;
    let docs = addon.config.config.get("docs_url").map(String::as_str);
    let page = dashboard(&addon_id, &record, &query, docs);
    let mut response = (StatusCode::OK, page).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Escape text for XHTML content and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A JavaScript string literal safe inside inline script and XML: no `<`, `>` or `&`.
fn js_string(s: &str) -> String {
    serde_json::Value::from(s)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn dashboard(addon_id: &str, record: &Record, query: &LoginQuery, docs: Option<&str>) -> String {
    let title = query
        .app_title
        .clone()
        .or_else(|| record.app_title.clone())
        .unwrap_or_else(|| record.resource_id.clone());
    let vars: String = record
        .config
        .iter()
        .map(|(k, _)| format!("<li><code>{}</code></li>", xml_escape(k)))
        .collect();
    let build = query
        .build_slug
        .as_deref()
        .filter(|b| !b.is_empty())
        .map(|b| format!("<p>Opened from build <code>{}</code>.</p>", xml_escape(b)))
        .unwrap_or_default();
    let beam_init = format!(
        "Beam.init({{ app_slug: {}, app_name: {}, addon_documentation: {} }});",
        js_string(&record.resource_id),
        js_string(&title),
        js_string(docs.unwrap_or("")),
    );
    format!(
        r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{addon} for {title}</title>
<script src="{BEAM_SCRIPT}"></script>
<script>
//<![CDATA[
document.addEventListener("DOMContentLoaded", function () {{
  if (window.Beam) {{ {beam_init} }}
}});
//]]>
</script>
</head>
<body>
<main>
<h1>{addon}</h1>
<p>App <strong>{title}</strong> (<code>{slug}</code>) is on the <strong>{plan}</strong> plan.</p>
{build}
<h2>Variables exported to your builds</h2>
<ul>{vars}</ul>
</main>
</body>
</html>
"#,
        addon = xml_escape(addon_id),
        title = xml_escape(&title),
        slug = xml_escape(&record.resource_id),
        plan = xml_escape(&record.plan),
    )
}
