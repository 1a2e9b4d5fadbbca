//! The add-on dashboard pages reached through SSO. They are strict XHTML (every element
//! closed, every value escaped) because Bitrise's kit parses the page as XML, and the same
//! markup is shown for every platform.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::service::Record;

/// Escape text for XHTML content and attribute values.
pub(crate) fn xml_escape(s: &str) -> String {
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
pub(crate) fn js_string(s: &str) -> String {
    serde_json::Value::from(s).to_string().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// What a dashboard shows about one resource.
pub(crate) struct Dashboard<'a> {
    pub addon_id: &'a str,
    pub title: &'a str,
    pub record: &'a Record,
    /// Extra markup for `<head>` (already well-formed), e.g. Bitrise's Beam script.
    pub head: String,
    /// An extra paragraph (already escaped).
    pub note: String,
}

impl Dashboard<'_> {
    pub(crate) fn render(&self) -> String {
        let r = self.record;
        let status = if r.is_active() {
            format!("is on the <strong>{}</strong> plan.", xml_escape(&r.plan))
        } else {
            "has been <strong>deprovisioned</strong>; its data and credentials are gone.".to_owned()
        };
        let vars: String = if r.is_active() {
            let items: String =
                r.config.iter().map(|(k, _)| format!("<li><code>{}</code></li>", xml_escape(k))).collect();
            format!("<h2>Variables exported to your app</h2>\n<ul>{items}</ul>")
        } else {
            String::new()
        };
        format!(
            r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{addon} for {title}</title>
{head}
</head>
<body>
<main>
<h1>{addon}</h1>
<p>Resource <strong>{title}</strong> (<code>{id}</code>) {status}</p>
{note}
{vars}
</main>
</body>
</html>
"#,
            addon = xml_escape(self.addon_id),
            title = xml_escape(self.title),
            id = xml_escape(&r.resource_id),
            head = self.head,
            note = self.note,
        )
    }
}

/// A 200 HTML answer that no cache keeps.
pub(crate) fn html(page: String) -> Response {
    let mut response = (StatusCode::OK, page).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
