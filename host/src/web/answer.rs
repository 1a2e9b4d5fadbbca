//! What a plugin's HTTP answer may say to a browser. A plugin answers for its own add-on
//! only, while one host serves many partners: headers whose effect reaches past the plugin's
//! own answer — the host's cookies, cookies for sibling hosts, service-worker scope, site-data
//! clearing, credentialed CORS, framing, alternative services, connection upgrades — are not
//! its to send. So its headers pass through an allow-list, its cookies through a filter, and
//! the host adds safe defaults (a content security policy among them) where it set none.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::forward::Surface;
use super::session::COOKIE;
use crate::runtime::WebResponse;

/// Headers a plugin may send on either surface.
const ALLOWED: [&str; 22] = [
    "accept-ranges",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-range",
    "content-security-policy",
    "content-security-policy-report-only",
    "content-type",
    "cross-origin-embedder-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "etag",
    "expires",
    "last-modified",
    "location",
    "permissions-policy",
    "referrer-policy",
    "retry-after",
    "vary",
    "www-authenticate",
    "x-content-type-options",
];

/// CORS headers a plugin may send on the build API (never on the dashboard, and never
/// `access-control-allow-credentials`: a build's token is no browser credential).
const API_CORS: [&str; 5] = [
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
];

/// `x-` headers that mean something to browsers or to the host, unlike the custom ones.
const X_RESERVED: [&str; 5] =
    ["x-frame-options", "x-xss-protection", "x-dns-prefetch-control", "x-forwarded-", "x-real-ip"];

/// The policy a plugin's page gets when it sets none: its own scripts, inline ones carrying
/// the answer's nonce (`x-addon-csp-nonce`; the SDKs' Beam header does) and Bitrise's Beam,
/// its own styles and images, nothing framing it, no plugins, forms posting only to itself.
fn dashboard_csp(nonce: Option<&str>) -> String {
    let nonce = nonce.map(|n| format!(" 'nonce-{n}'")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'{nonce} https://unpkg.com/@bitrise/beam@latest/; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// A fresh nonce for one answer's inline scripts.
pub(crate) fn nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}
/// The build API's: an answer that is data, never a page.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// Whether the plugin may send header `name` on `surface`.
fn allowed(name: &str, surface: Surface) -> bool {
    if ALLOWED.contains(&name) {
        return true;
    }
    if surface == Surface::Api && API_CORS.contains(&name) {
        return true;
    }
    name.starts_with("x-") && !name.starts_with("x-addon-") && !X_RESERVED.iter().any(|r| name.starts_with(r))
}

/// Whether a `Set-Cookie` value is the plugin's to send: a named cookie, not one of the
/// host's however it is spelled (case, whitespace, `__Host-`/`__Secure-` prefixes), with no
/// `Domain` (which would reach sibling hosts), and, when the add-on's pages share the host's
/// origin, with no `Path` outside the add-on's own (`base_path`).
pub(crate) fn cookie_allowed(value: &str, base_path: Option<&str>) -> bool {
    let mut parts = value.split(';');
    let Some((name, _)) = parts.next().and_then(|pair| pair.split_once('=')) else { return false };
    let name = name.trim_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()).to_ascii_lowercase();
    let bare = name.strip_prefix("__host-").or_else(|| name.strip_prefix("__secure-")).unwrap_or(&name);
    if name.is_empty() || bare.trim() == COOKIE {
        return false;
    }
    for attribute in parts {
        let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
        let key = key.trim().to_ascii_lowercase();
        if key == "domain" {
            return false;
        }
        if key == "path"
            && let Some(base) = base_path
        {
            let path = val.trim();
            if !(path == base || path.starts_with(&format!("{base}/"))) {
                return false;
            }
        }
    }
    true
}

/// The client's response from the handler's. `base_path` is the add-on's path prefix when
/// its pages share the host's origin (`None` on its own origin). A status outside 200-599
/// never gets here ([`crate::service::Service::serve_http`] refuses it as the plugin's fault).
pub(crate) fn response(from: WebResponse, surface: Surface, base_path: Option<&str>, nonce: Option<&str>) -> Response {
    let status = StatusCode::from_u16(from.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(from.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in &from.headers {
        let keep = if name == header::SET_COOKIE {
            surface == Surface::Dashboard && value.to_str().is_ok_and(|v| cookie_allowed(v, base_path))
        } else {
            allowed(name.as_str(), surface)
        };
        if keep {
            headers.append(name.clone(), value.clone());
        }
    }
    defaults(headers, surface, nonce);
    response
}

/// The host's headers on every plugin answer: framing denied whatever the plugin says, and
/// where the plugin set none, no caching, no sniffing, same-origin referrers and a CSP.
fn defaults(headers: &mut HeaderMap, surface: Surface, nonce: Option<&str>) {
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let csp = match surface {
        Surface::Dashboard => HeaderValue::from_str(&dashboard_csp(nonce))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'")),
        Surface::Api => HeaderValue::from_static(API_CSP),
    };
    if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        // A second policy applies as well as the plugin's, so framing stays denied.
        headers.append(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    } else {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderName;

    use super::*;

    #[test]
    fn the_hosts_cookie_is_refused_in_every_spelling_and_domain_cookies_too() {
        for forged in [
            "addon_session=x",
            "addon_session =forged; Path=/addons/victim/",
            " addon_session=x",
            "ADDON_SESSION=x",
            "Addon_Session\t=x",
            "__Host-addon_session=x; Path=/; Secure",
            "__secure-addon_session=x; Secure",
            "theirs=1; Domain=localhost",
            "theirs=1; path=/; DOMAIN=.example.com",
            "no-equals-sign",
            "=nameless",
        ] {
            assert!(!cookie_allowed(forged, None), "{forged}");
        }
        assert!(cookie_allowed("theirs=1; Path=/; HttpOnly", None));
        assert!(cookie_allowed("addon_sessions=1", None), "a longer name is the plugin's");
        // On the shared origin, a path outside the add-on's own is refused.
        assert!(!cookie_allowed("theirs=1; Path=/", Some("/addons/a")));
        assert!(!cookie_allowed("theirs=1; Path=/addons/ab", Some("/addons/a")));
        assert!(cookie_allowed("theirs=1; Path=/addons/a/dashboard", Some("/addons/a")));
        assert!(cookie_allowed("theirs=1", Some("/addons/a")));
    }

    #[test]
    fn only_allowed_headers_pass_and_framing_stays_denied() {
        let mut from = HeaderMap::new();
        for (name, value) in [
            ("service-worker-allowed", "/"),
            ("clear-site-data", "\"*\""),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("x-frame-options", "ALLOWALL"),
            ("alt-svc", "h2=\"evil.example:443\""),
            ("strict-transport-security", "max-age=1; includeSubDomains"),
            ("x-addon-resource-id", "other"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("content-type", "text/html"),
            ("x-ratelimit-remaining", "7"),
            ("content-security-policy", "default-src *"),
        ] {
            from.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let answer = |surface| {
            let web = WebResponse { status: 200, headers: from.clone(), body: Default::default() };
            response(web, surface, None, Some("n0nce"))
        };
        let page = answer(Surface::Dashboard);
        let names: Vec<&str> = page.headers().keys().map(HeaderName::as_str).collect();
        for gone in ["service-worker-allowed", "clear-site-data", "access-control-allow-origin", "alt-svc", "upgrade"] {
            assert!(!names.contains(&gone), "{gone} passed: {names:?}");
        }
        assert!(!names.contains(&"access-control-allow-credentials"));
        assert!(names.contains(&"x-ratelimit-remaining") && names.contains(&"content-type"));
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        let policies: Vec<_> = page.headers().get_all("content-security-policy").iter().collect();
        assert_eq!(policies, ["default-src *", "frame-ancestors 'none'"]);
        let api = answer(Surface::Api);
        assert_eq!(api.headers()["access-control-allow-origin"], "*");
        assert!(!api.headers().contains_key("access-control-allow-credentials"));
    }
}
