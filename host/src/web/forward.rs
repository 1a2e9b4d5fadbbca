//! What the plugin's handler sees of a client's request: the path under the add-on's
//! surface, the client's headers minus anything the host owns (its session cookie, the
//! build's token, `x-addon-*`, hop-by-hop headers), plus the verified identity. The way back,
//! what a handler's answer may say to the client, is [`super::answer`].

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use bytes::Bytes;

use super::session::is_session_cookie;
use crate::runtime::WebRequest;
use crate::service::{Platform, Record};

/// Which surface a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    Dashboard,
    Api,
}

impl Surface {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Surface::Dashboard => "dashboard",
            Surface::Api => "api",
        }
    }
}

/// Who the host verified the caller to be.
pub(crate) struct Identity<'a> {
    pub surface: Surface,
    pub record: &'a Record,
    pub unverified_email: Option<&'a str>,
    pub csrf_token: Option<String>,
    /// Where the add-on's routes start for the client: "" on its own origin,
    /// `/addons/{id}` on the host's shared one.
    pub base_path: &'a str,
    /// The nonce the answer's CSP allows inline scripts by (pages only).
    pub csp_nonce: Option<String>,
}

/// Headers a proxy never forwards (RFC 9110 §7.6.1), and those the host answers itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Values of free text (titles, emails) go percent-encoded, so any UTF-8 fits a header.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b" -_.~@+!*'(),:;/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request the handler gets for `method path?query` on `identity`'s surface.
pub(crate) fn request(
    method: Method,
    path: &str,
    query: Option<&str>,
    client: &HeaderMap,
    body: Bytes,
    identity: &Identity<'_>,
    max_response_bytes: usize,
) -> Result<WebRequest, String> {
    let target = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    let uri: Uri = target.parse().map_err(|e| format!("unusable path: {e}"))?;
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n.starts_with("x-addon-") || n == "cookie" || n == "authorization" {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    // The client's other cookies pass; the host's session cookie does not.
    let cookies: Vec<&str> = super::session::cookies(client)
        .filter(|pair| pair.split_once('=').is_none_or(|(name, _)| !is_session_cookie(name)))
        .collect();
    if !cookies.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    let record = identity.record;
    let platform = match Platform::from_name(&record.platform) {
        Platform::Bitrise => "bitrise",
        Platform::Xervo => "xervo",
    };
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-addon-surface", identity.surface.name());
    set("x-addon-resource-id", &record.resource_id);
    set("x-addon-platform", platform);
    set("x-addon-app-id", &encode(&record.app_id));
    set("x-addon-plan", &encode(&record.plan));
    set("x-addon-base-path", identity.base_path);
    if let Some(title) = &record.app_title {
        set("x-addon-app-title", &encode(title));
    }
    if let Some(email) = identity.unverified_email {
        set("x-addon-unverified-email", &encode(email));
    }
    if let Some(token) = &identity.csrf_token {
        set("x-addon-csrf-token", token);
    }
    if let Some(nonce) = &identity.csp_nonce {
        set("x-addon-csp-nonce", nonce);
    }
    Ok(WebRequest { method, uri, headers, body, max_response_bytes })
}
