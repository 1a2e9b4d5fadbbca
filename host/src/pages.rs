//! The add-on dashboard pages reached through SSO. They are strict XHTML (every element
//! closed, every value escaped) because Bitrise's kit parses the page as XML, and the same
//! markup is shown for every platform.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::AddonConfig;
use crate::service::{Platform, Record};

/// Bitrise's Beam navigation header, which its dashboards carry.
const BEAM_SCRIPT: &str = "https://unpkg.com/@bitrise/beam@latest/dist/beam.min.js";

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

/// The page's stylesheet: system fonts, one card, the plan as a badge, variables as a
/// table. No `<`, `>` or `&`, so it stays well-formed XML inline.
const STYLE: &str = "
:root { color-scheme: light dark; --fg: #1d1d1f; --muted: #6e6e73; --line: #d2d2d7; --bg: #f5f5f7; --card: #fff; --accent: #5b2ea6; }
@media (prefers-color-scheme: dark) { :root { --fg: #f5f5f7; --muted: #a1a1a6; --line: #3a3a3c; --bg: #1c1c1e; --card: #2c2c2e; --accent: #b69df8; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }
header.bar { display: flex; justify-content: space-between; align-items: center; padding: 14px 24px; border-bottom: 1px solid var(--line); background: var(--card); }
.brand { font-weight: 650; font-size: 17px; }
a { color: var(--accent); }
main.card { max-width: 760px; margin: 32px auto; padding: 28px 32px; background: var(--card); border: 1px solid var(--line); border-radius: 12px; }
h1 { margin: 0 0 6px; font-size: 24px; }
h2 { margin: 28px 0 10px; font-size: 16px; }
.status { color: var(--muted); margin: 0; }
.plan { display: inline-block; padding: 1px 10px; border-radius: 999px; background: var(--accent); color: var(--card); font-weight: 600; font-size: 13px; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 8px 10px; border-top: 1px solid var(--line); }
th { color: var(--muted); font-weight: 500; font-size: 13px; border-top: none; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; }
.muted { color: var(--muted); }
footer { text-align: center; color: var(--muted); font-size: 12px; margin-bottom: 32px; }
";

/// What a dashboard shows about one resource.
pub(crate) struct Dashboard<'a> {
    /// The add-on's name as users know it (`[addon.page] name`, default its id).
    pub name: &'a str,
    /// The partner's documentation.
    pub docs_url: Option<&'a str>,
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
        let name = xml_escape(self.name);
        let status = if r.is_active() {
            format!("is on the <strong class=\"plan\">{}</strong> plan.", xml_escape(&r.plan))
        } else {
            "has been <strong>deprovisioned</strong>; its data and credentials are gone.".to_owned()
        };
        let vars: String = if r.is_active() && !r.config.is_empty() {
            let rows: String = r
                .config
                .iter()
                .map(|(k, _)| {
                    format!(
                        "<tr><td><code>{}</code></td><td class=\"muted\">set in your builds</td></tr>",
                        xml_escape(k)
                    )
                })
                .collect();
            format!(
                "<h2>Variables exported to your app</h2>\n<table><thead><tr><th>Name</th><th>Value</th></tr></thead><tbody>{rows}</tbody></table>"
            )
        } else {
            String::new()
        };
        let (docs_top, docs) = match self.docs_url {
            Some(url) => {
                let url = xml_escape(url);
                (
                    format!("<a href=\"{url}\">Documentation</a>"),
                    format!("<p><a href=\"{url}\">How to use {name} in your builds</a></p>"),
                )
            }
            None => (String::new(), String::new()),
        };
        format!(
            r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{name} for {title}</title>
<style>{STYLE}</style>
{head}
</head>
<body>
<header class="bar"><span class="brand">{name}</span>{docs_top}</header>
<main class="card">
<h1>{title}</h1>
<p class="status">Resource <code>{id}</code> {status}</p>
{note}
{vars}
{docs}
</main>
<footer>{name}, served by addon-host</footer>
</body>
</html>
"#,
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

/// The host's own dashboard for `record`, as its platform's SSO shows it (for plugins
/// without a page of their own).
pub(crate) fn dashboard(addon: &AddonConfig, record: &Record) -> String {
    match Platform::from_name(&record.platform) {
        Platform::Bitrise => bitrise_dashboard(addon, record, None, None),
        Platform::Xervo => xervo_dashboard(addon, record),
    }
}

/// The host's own dashboard for a Bitrise app, with Beam: for plugins without a page of
/// their own. `title` is the app's name Bitrise sent with the login, if any.
pub(crate) fn bitrise_dashboard(
    addon: &AddonConfig,
    record: &Record,
    title: Option<&str>,
    build_slug: Option<&str>,
) -> String {
    let docs = addon.docs_url();
    let title =
        title.map(str::to_owned).or_else(|| record.app_title.clone()).unwrap_or_else(|| record.resource_id.clone());
    let beam_init = format!(
        "Beam.init({{ app_slug: {}, app_name: {}, addon_documentation: {} }});",
        js_string(&record.resource_id),
        js_string(&title),
        js_string(docs.unwrap_or("")),
    );
    let head = format!(
        "<script src=\"{BEAM_SCRIPT}\"></script>\n<script>\n//<![CDATA[\ndocument.addEventListener(\"DOMContentLoaded\", function () {{\n  if (window.Beam) {{ {beam_init} }}\n}});\n//]]>\n</script>"
    );
    let note = build_slug
        .filter(|b| !b.is_empty())
        .map(|b| format!("<p>Opened from build <code>{}</code>.</p>", xml_escape(b)))
        .unwrap_or_default();
    Dashboard { name: addon.display_name(), docs_url: docs, title: &title, record, head, note }.render()
}

/// The host's own dashboard for a Xervo resource: for plugins without a page of their own.
pub(crate) fn xervo_dashboard(addon: &AddonConfig, record: &Record) -> String {
    let title = record.app_title.clone().unwrap_or_else(|| record.app_id.clone());
    let note = format!("<p>App <code>{}</code> on Xervo.</p>", xml_escape(&record.app_id));
    let (name, docs_url) = (addon.display_name(), addon.docs_url());
    Dashboard { name, docs_url, title: &title, record, head: String::new(), note }.render()
}
