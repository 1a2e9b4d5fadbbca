//! Serve the add-on's own pages and build API from the plugin (the `web` world).
//!
//! The host forwards two surfaces to a plugin that exports an HTTP handler, after checking
//! who is calling:
//!
//! - **the dashboard**, `/addons/{id}/dashboard/...`, arriving as `/dashboard/...`: a platform
//!   user who logged in through the platform's SSO. The host keeps the session and checks a
//!   CSRF token on every `POST`/`PUT`/`PATCH`/`DELETE`: put [`Identity::csrf_field`] in your
//!   forms.
//! - **the build API**, `/addons/{id}/api/...`, arriving as `/api/...`: the app's builds,
//!   authenticated by the per-app token the host issued at provision.
//!
//! Implement [`Web`] and export it with [`export_web!`](crate::export_web) next to
//! [`export_provider!`](crate::export_provider):
//!
//! ```no_run
//! use addon_sdk::web::{Request, Response, Surface, Web};
//! # struct Hello;
//! # impl addon_sdk::Provider for Hello {
//! #     fn provision(_: addon_sdk::ProvisionRequest) -> addon_sdk::Result<addon_sdk::ProvisionReply> { todo!() }
//! # }
//!
//! impl Web for Hello {
//!     fn handle(req: Request) -> Response {
//!         let who = req.identity();
//!         match (req.method(), req.path()) {
//!             ("GET", "/dashboard/") => Response::html(format!(
//!                 "<!DOCTYPE html><html><head>{}</head><body><h1>{}</h1></body></html>",
//!                 who.beam(),
//!                 addon_sdk::web::escape(who.app_title.as_deref().unwrap_or(&who.resource_id)),
//!             )),
//!             ("GET", "/api/plan") if who.surface == Surface::Api => Response::json(format!("{{\"plan\":{:?}}}", who.plan)),
//!             _ => Response::not_found(),
//!         }
//!     }
//! }
//! # addon_sdk::export_provider!(Hello);
//! addon_sdk::export_web!(Hello);
//! ```
//!
//! Each request runs in a fresh instance under the add-on's deadline and memory cap, like
//! every call. Its key-value writes and jobs are kept only when it answers 2xx or 3xx.

use std::collections::BTreeMap;

use crate::Platform;

#[doc(hidden)]
pub use wasip2 as wasi;

/// What the plugin's HTTP handler does with one request.
pub trait Web {
    /// Answer one request. The host has authenticated it; [`Request::identity`] says who.
    fn handle(req: Request) -> Response;
}

/// Which surface a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// A platform user's browser, after SSO.
    Dashboard,
    /// One of the app's builds, with the app's API token.
    Api,
}

/// Who is calling, as the host verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The surface the request came through.
    pub surface: Surface,
    /// The resource (the provisioned app) the session or token belongs to.
    pub resource_id: String,
    /// The platform the resource was provisioned by.
    pub platform: Platform,
    /// The platform's id of the app.
    pub app_id: String,
    /// The resource's plan now.
    pub plan: String,
    /// The app's name, when the platform gave one.
    pub app_title: Option<String>,
    /// The email the platform's SSO post named (dashboard, when it sends one). **Unverified**:
    /// no platform signs it, so anyone who can post a login could put any address here.
    /// Show it; never decide access by it. Every other field is verified by the host.
    pub unverified_email: Option<String>,
    /// The session's CSRF token (dashboard only).
    pub csrf_token: Option<String>,
    /// This answer's script nonce (dashboard only): the host's default content security
    /// policy runs an inline `<script nonce="...">` only with it. [`Identity::beam`] uses it.
    pub csp_nonce: Option<String>,
    /// Where the add-on's routes start on this host (`/addons/{id}`).
    pub base_path: String,
}

impl Identity {
    /// A hidden form field carrying the CSRF token; the host refuses a dashboard form post
    /// without it.
    pub fn csrf_field(&self) -> String {
        let token = self.csrf_token.as_deref().unwrap_or("");
        format!("<input type=\"hidden\" name=\"_csrf\" value=\"{}\"/>", escape(token))
    }

    /// An absolute path on this host for one of the add-on's pages: `link("/dashboard/x")`.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    /// Bitrise's Beam navigation header, which every page reached through Bitrise's SSO must
    /// show: put it in `<head>`. Empty for other platforms.
    pub fn beam(&self) -> String {
        if self.platform != Platform::Bitrise || self.surface != Surface::Dashboard {
            return String::new();
        }
        let name = self.app_title.as_deref().unwrap_or(&self.resource_id);
        format!(
            "<script src=\"https://unpkg.com/@bitrise/beam@latest/dist/beam.min.js\"></script>\
             <script{}>\n//<![CDATA[\ndocument.addEventListener(\"DOMContentLoaded\", function () {{ \
             if (window.Beam) {{ Beam.init({{ app_slug: {}, app_name: {} }}); }} }});\n//]]>\n</script>",
            self.csp_nonce.as_deref().map(|n| format!(" nonce=\"{}\"", escape(n))).unwrap_or_default(),
            js_string(&self.resource_id),
            js_string(name),
        )
    }
}

/// One request as the handler sees it, its body read in full (the host caps its size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    identity: Identity,
}

impl Request {
    /// A request, as the host would hand it over: for a plugin's native tests.
    pub fn new(method: &str, path_and_query: &str, identity: Identity) -> Request {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        Request {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            identity,
        }
    }

    /// The same request with a header added.
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The same request with this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// `GET`, `POST`, … in upper case.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, starting with `/dashboard/` or `/api/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string (without `?`).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// A query parameter, decoded.
    pub fn query_value(&self, name: &str) -> Option<String> {
        form_pairs(self.query.as_bytes()).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// A header's value (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body's bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// A field of an `application/x-www-form-urlencoded` body, decoded.
    pub fn form_value(&self, name: &str) -> Option<String> {
        form_pairs(&self.body).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Who is calling.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Match the request against `method` and a path `pattern` whose `{name}` segments
    /// capture one segment each: `req.route("GET", "/api/builds/{id}")` gives `{"id": "42"}`
    /// for `GET /api/builds/42`, and `None` for anything else. A pattern ending in `/` also
    /// matches the path without it.
    pub fn route(&self, method: &str, pattern: &str) -> Option<BTreeMap<String, String>> {
        if !self.method.eq_ignore_ascii_case(method) {
            return None;
        }
        let trim = |p: &'_ str| -> String { p.trim_end_matches('/').to_owned() };
        let (path, pattern) = (trim(&self.path), trim(pattern));
        let (mut parts, mut wanted) = (path.split('/'), pattern.split('/'));
        let mut params = BTreeMap::new();
        loop {
            match (parts.next(), wanted.next()) {
                (None, None) => return Some(params),
                (Some(part), Some(want)) => match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    Some(name) if !part.is_empty() => {
                        params.insert(name.to_owned(), percent_decode(part.as_bytes(), false));
                    }
                    None if part == want => {}
                    _ => return None,
                },
                _ => return None,
            }
        }
    }
}

/// A response: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// 200 with an HTML page.
    pub fn html(page: impl Into<String>) -> Response {
        Response::new(200).header("content-type", "text/html; charset=utf-8").body(page.into())
    }

    /// 200 with a JSON document (already serialised).
    pub fn json(document: impl Into<String>) -> Response {
        Response::new(200).header("content-type", "application/json").body(document.into())
    }

    /// 200 with plain text.
    pub fn text(text: impl Into<String>) -> Response {
        Response::new(200).header("content-type", "text/plain; charset=utf-8").body(text.into())
    }

    /// 303 See Other to `location` (after a form post).
    pub fn redirect(location: impl Into<String>) -> Response {
        Response::new(303).header("location", location)
    }

    /// 404 Not Found.
    pub fn not_found() -> Response {
        Response::new(404).header("content-type", "text/plain; charset=utf-8").body("not found")
    }

    /// The same response with another status.
    pub fn status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// The same response with a header added.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same response with this body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The body as text (for tests).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Escape text for HTML (and XHTML) content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JavaScript string literal that is also safe inside inline script and XHTML.
fn js_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' | '<' | '>' | '&' | '\'' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Decode `application/x-www-form-urlencoded` pairs.
pub fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let key = percent_decode(parts.next().unwrap_or_default(), true);
            let value = percent_decode(parts.next().unwrap_or_default(), true);
            (key, value)
        })
        .collect()
}

/// Percent-decode (and, in forms, `+` as space) into UTF-8, replacing what is not.
pub(crate) fn percent_decode(bytes: &[u8], plus_is_space: bool) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

mod serve;
#[doc(hidden)]
pub use serve::serve as __serve;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::identity;

    #[test]
    fn routes_capture_segments_and_forms_decode() {
        let req = Request::new("get", "/api/builds/4%202/logs?tail=10&q=a+b", identity(Surface::Api, "app", "pro"));
        let params = req.route("GET", "/api/builds/{id}/logs").unwrap();
        assert_eq!(params["id"], "4 2");
        assert_eq!(req.route("POST", "/api/builds/{id}/logs"), None);
        assert_eq!(req.route("GET", "/api/builds/{id}"), None);
        assert_eq!(req.route("GET", "/api/builds/{id}/logs/{more}"), None);
        assert_eq!(req.query_value("q").as_deref(), Some("a b"));
        assert_eq!(req.query_value("tail").as_deref(), Some("10"));
        let root = Request::new("GET", "/dashboard", identity(Surface::Dashboard, "app", "pro"));
        assert!(root.route("GET", "/dashboard/").is_some());
        let form = root.with_body("_csrf=t&note=caf%C3%A9+au+lait&empty=");
        assert_eq!(form.form_value("note").as_deref(), Some("café au lait"));
        assert_eq!(form.form_value("empty").as_deref(), Some(""));
        assert_eq!(form.form_value("missing"), None);
    }

    #[test]
    fn beam_is_for_bitrise_dashboards_and_escapes_the_title() {
        let mut who = identity(Surface::Dashboard, "app", "pro");
        who.app_title = Some("</script><b>&".into());
        let beam = who.beam();
        assert!(beam.contains("@bitrise/beam") && !beam.contains("</script><b>"), "{beam}");
        assert!(who.csrf_field().contains("value=\"test-csrf-token\""));
        assert_eq!(who.link("/dashboard/x"), "/addons/test/dashboard/x");
        who.platform = Platform::Xervo;
        assert_eq!(who.beam(), "");
        assert_eq!(identity(Surface::Api, "app", "pro").beam(), "");
    }
}

/// Export a [`Web`] implementation as the plugin's `wasi:http/incoming-handler`. Use it
/// once per crate, next to [`export_provider!`](crate::export_provider).
#[macro_export]
macro_rules! export_web {
    ($web:ty) => {
        #[doc(hidden)]
        pub struct __AddonSdkWeb;

        impl $crate::web::wasi::exports::http::incoming_handler::Guest for __AddonSdkWeb {
            fn handle(
                request: $crate::web::wasi::http::types::IncomingRequest,
                out: $crate::web::wasi::http::types::ResponseOutparam,
            ) {
                $crate::web::__serve::<$web>(request, out)
            }
        }

        $crate::web::wasi::http::proxy::export!(__AddonSdkWeb);
    };
}
