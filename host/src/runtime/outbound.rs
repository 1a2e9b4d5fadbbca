//! The `http` import: a plugin's outbound requests, denied by default. Each add-on lists the
//! origins it may call (`allowed_outbound`); the host makes the request itself, so it
//! enforces the list on every hop (redirects are followed only to allowed origins), a
//! timeout inside the call's deadline, a cap on requests per call and on the response body,
//! and refuses loopback, private and link-local addresses unless the allowed origin names
//! one itself (`http://127.0.0.1:8080`, `http://localhost:8080`). A name is resolved once and
//! the connection goes to the address that was checked, so DNS cannot swap in another. A
//! redirect to another origin drops the request's credentials (`Authorization`, `Cookie`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use url::Url;

use super::bindings::addon::provider::http::{self, HttpError, Request, Response};
use crate::config::{Allowed, Origins};

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Request methods a plugin may use.
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
/// Headers the host sets itself.
const RESERVED: [&str; 5] = ["host", "content-length", "transfer-encoding", "connection", "upgrade"];

/// Whether `ip` is on the public internet (not loopback, private, link-local, CGNAT,
/// unspecified, multicast, broadcast or reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (b & 0xc0) == 64))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// One call's outbound requests.
pub(crate) struct CallHttp {
    origins: Arc<Origins>,
    /// The call's deadline: no request outlives it.
    until: Instant,
    made: usize,
    max_requests: usize,
    max_response_bytes: usize,
}

impl CallHttp {
    pub(crate) fn new(origins: Arc<Origins>, until: Instant, max_requests: usize, max_response_bytes: usize) -> Self {
        CallHttp { origins, until, made: 0, max_requests, max_response_bytes }
    }

    /// Requests the call has made.
    pub(crate) fn made(&self) -> usize {
        self.made
    }
}

impl http::Host for &mut CallHttp {
    async fn send(&mut self, req: Request) -> Result<Response, HttpError> {
        if self.made >= self.max_requests {
            return Err(HttpError::Invalid(format!(
                "one call may make at most {} requests (limits.max_http_requests_per_call)",
                self.max_requests
            )));
        }
        self.made += 1;
        let left = self.until.saturating_duration_since(Instant::now());
        let timeout = req.timeout_ms.map_or(left, |ms| left.min(std::time::Duration::from_millis(ms.into())));
        let (origins, max) = (self.origins.clone(), self.max_response_bytes);
        let url = req.url.clone();
        match tokio::time::timeout(timeout, exchange(&origins, req, max)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                Err(HttpError::Timeout(format!("no complete response from {url} within {} ms", timeout.as_millis())))
            }
        }
    }
}

async fn exchange(origins: &Origins, req: Request, max_bytes: usize) -> Result<Response, HttpError> {
    let method = req.method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(HttpError::Invalid(format!("method `{}` is not one of {}", req.method, METHODS.join(", "))));
    }
    let mut method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| HttpError::Invalid(e.to_string()))?;
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in &req.headers {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::Invalid(format!("`{name}` is not a valid header name")))?;
        if RESERVED.contains(&name.as_str()) {
            return Err(HttpError::Invalid(format!("the host sets `{name}` itself")));
        }
        let value = hyper::header::HeaderValue::from_str(value)
            .map_err(|_| HttpError::Invalid(format!("the value of `{name}` is not a valid header value")))?;
        headers.append(name, value);
    }
    let mut url = Url::parse(&req.url).map_err(|e| HttpError::Invalid(format!("`{}` is not a URL: {e}", req.url)))?;
    let mut body = Bytes::from(req.body);
    for _ in 0..=MAX_REDIRECTS {
        let allowed = origins.find(&url).ok_or_else(|| {
            HttpError::Denied(format!(
                "{} is not an allowed origin (allowed_outbound)",
                url.origin().ascii_serialization()
            ))
        })?;
        if let Some(stub) = &origins.stub {
            stub.record(method.as_str(), &url);
            let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            return Ok(Response { status: 200, headers, body: b"{}".to_vec() });
        }
        let addrs = resolve(&url, allowed).await?;
        let response = one(&url, addrs, &method, &headers, body.clone()).await?;
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok())
        {
            let next = url.join(location).map_err(|e| HttpError::Failed(format!("redirect to `{location}`: {e}")))?;
            // Credentials go to the origin they were meant for only (as browsers and curl do).
            if next.origin() != url.origin() {
                for name in [hyper::header::AUTHORIZATION, hyper::header::COOKIE, hyper::header::PROXY_AUTHORIZATION] {
                    headers.remove(name);
                }
            }
            url = next;
            if status == hyper::StatusCode::SEE_OTHER
                || (method == hyper::Method::POST && status.as_u16() < 307 && status.as_u16() != 304)
            {
                (method, body) = (hyper::Method::GET, Bytes::new());
            }
            continue;
        }
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = Limited::new(response.into_body(), max_bytes).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge(format!(
                    "the response body is over {max_bytes} bytes (limits.max_http_response_bytes)"
                ))
            } else {
                HttpError::Failed(format!("reading the response: {e}"))
            }
        })?;
        return Ok(Response { status: status.as_u16(), headers, body: body.to_bytes().to_vec() });
    }
    Err(HttpError::Failed(format!("more than {MAX_REDIRECTS} redirects")))
}

/// The addresses to connect to: resolved once, each checked.
async fn resolve(url: &Url, allowed: &Allowed) -> Result<Vec<SocketAddr>, HttpError> {
    let (host, port) = (allowed.host.trim_matches(['[', ']']), allowed.port);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| HttpError::Failed(format!("resolving {host}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(HttpError::Failed(format!("{host} has no address")));
    }
    if !allowed.names_address()
        && let Some(private) = addrs.iter().find(|a| !is_public(a.ip()))
    {
        return Err(HttpError::Denied(format!(
            "{} resolves to {}, a private address; only an allowed origin that names an address may reach one",
            url.host_str().unwrap_or(host),
            private.ip()
        )));
    }
    Ok(addrs)
}

/// A resolver that answers with the addresses already checked.
#[derive(Clone)]
struct Pinned(Arc<Vec<SocketAddr>>);

impl tower::Service<Name> for Pinned {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(self.0.as_ref().clone().into_iter()))
    }
}

/// The TLS client configuration, built once: Mozilla's roots (webpki-roots) and ring's
/// primitives, whatever the machine's certificate store holds.
fn tls() -> Result<rustls::ClientConfig, HttpError> {
    use hyper_rustls::ConfigBuilderExt;
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Ok(rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_webpki_roots()
                .with_no_client_auth())
        })
        .clone()
        .map_err(|e| HttpError::Failed(format!("TLS set-up: {e}")))
}

async fn one(
    url: &Url,
    addrs: Vec<SocketAddr>,
    method: &hyper::Method,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpError> {
    let mut http = HttpConnector::new_with_resolver(Pinned(Arc::new(addrs)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(https);
    let mut request = hyper::Request::builder().method(method.clone()).uri(url.as_str());
    if let Some(h) = request.headers_mut() {
        h.extend(headers.clone());
    }
    let request = request.body(Full::new(body)).map_err(|e| HttpError::Invalid(e.to_string()))?;
    client
        .request(request)
        .await
        .map_err(|e| HttpError::Failed(format!("{}: {e:#}", url.origin().ascii_serialization())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_bare_http_origins_matched_exactly() {
        let origins = Origins::parse(&["https://api.bitrise.io".into(), "http://127.0.0.1:8080".into()]).unwrap();
        let find = |u: &str| origins.find(&Url::parse(u).unwrap()).is_some();
        assert!(find("https://api.bitrise.io/v0.1/apps"));
        assert!(find("https://API.bitrise.io:443/x"), "host case and the default port do not matter");
        assert!(!find("http://api.bitrise.io/"), "another scheme is another origin");
        assert!(!find("https://api.bitrise.io:8443/"), "another port is another origin");
        assert!(!find("https://evil.api.bitrise.io/"));
        assert!(find("http://127.0.0.1:8080/hooks"));
        assert!(!find("http://127.0.0.1:8081/hooks"));
        for bad in ["https://api.bitrise.io/v0.1", "https://u:p@api.bitrise.io", "ftp://files.example.com", "nonsense"]
        {
            assert!(Origins::parse(&[bad.into()]).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} counted as public");
        }
        for public in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public} counted as private");
        }
    }

    #[test]
    fn only_an_origin_naming_an_address_may_reach_a_private_one() {
        let origins = Origins::parse(&[
            "http://127.0.0.1:9".into(),
            "http://localhost:9".into(),
            "https://hooks.example.com".into(),
        ])
        .unwrap();
        assert!(origins.allowed[0].names_address() && origins.allowed[1].names_address());
        assert!(!origins.allowed[2].names_address(), "a DNS name does not name an address");
    }
}
