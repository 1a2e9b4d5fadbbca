//! Outbound HTTP through the host, to the origins the add-on's host config allows
//! (`allowed_outbound`); everything else is refused with [`HttpError::Denied`]. The host
//! bounds each request by the call's deadline and caps the response body. Meant for jobs
//! (see [`crate::jobs`]): Bitrise wants its API called after the reply, not during it.
//!
//! ```no_run
//! use addon_sdk::http::Request;
//!
//! let reply = Request::post("https://api.bitrise.io/v0.1/apps/abc/outgoing-webhooks")
//!     .header("Authorization", "the-app-api-token")
//!     .json(r#"{"url":"https://hooks.example.com"}"#)
//!     .send();
//! match reply {
//!     Ok(r) if r.is_success() => { /* registered: r.text() */ }
//!     Ok(r) => { /* the API refused: r.status */ }
//!     Err(e) => { /* no answer: denied, timeout, too large, failed */ }
//! }
//! ```

use crate::bindings::addon::provider::http as wit;
pub use crate::bindings::addon::provider::http::HttpError;
use crate::host::imp;

/// A request to build and [`send`](Request::send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request(pub(crate) wit::Request);

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with `method` (GET, POST, PUT, PATCH, DELETE, HEAD) to `url`.
    pub fn new(method: &str, url: &str) -> Request {
        Request(wit::Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        })
    }

    /// A GET of `url`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A POST to `url`.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// A PUT to `url`.
    pub fn put(url: &str) -> Request {
        Request::new("PUT", url)
    }

    /// A DELETE of `url`.
    pub fn delete(url: &str) -> Request {
        Request::new("DELETE", url)
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.0.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.0.body = body.into();
        self
    }

    /// Set a JSON body and its content type.
    pub fn json(self, json: &str) -> Request {
        self.header("Content-Type", "application/json").body(json.as_bytes())
    }

    /// Give up after `ms` (the call's deadline always applies).
    pub fn timeout_ms(mut self, ms: u32) -> Request {
        self.0.timeout_ms = Some(ms);
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// A header's value (the first, by case-insensitive name).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.0.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.0.body
    }

    /// Send it through the host.
    pub fn send(self) -> Result<Response, HttpError> {
        imp::http_send(&self.0).map(|r| Response { status: r.status, headers: r.headers, body: r.body })
    }
}

impl Response {
    /// A response with `status` and `body`, no headers (for tests).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response { status, headers: Vec::new(), body: body.into() }
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (the first, by case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}
