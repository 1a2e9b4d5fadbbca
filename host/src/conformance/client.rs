//! The kit's HTTP client: blocking, no redirects followed (the kit checks each hop itself), no
//! cookies, and every answer kept whole — status, headers, body and time taken — whatever the
//! status, because the negative checks care about 4xx answers as much as the others do 2xx.

use std::time::{Duration, Instant};

/// One answer from the provider.
pub(super) struct Answer {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: String,
    pub elapsed: Duration,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(super) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// `status 404: {"error":…}` — what a failed check shows of the answer.
    pub(super) fn brief(&self) -> String {
        let mut body: String = self.body.chars().take(300).collect();
        if body.len() < self.body.len() {
            body.push('…');
        }
        format!("status {}: {}", self.status, body.trim())
    }
}

pub(super) struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub(super) fn new() -> Http {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            // A fresh connection per request: a server may close a kept-alive connection after
            // refusing a request without reading its body, and a request sent on it just then
            // would see the close instead of an answer (seen in CI: "Unexpected EOF").
            .max_idle_connections(0)
            .timeout_connect(Duration::from_secs(10))
            // Longer than any platform's budget: a slow provider is reported by the timing
            // check, not cut off here.
            .timeout(Duration::from_secs(60))
            .resolver(resolve)
            .build();
        Http { agent }
    }

    /// `GET url`, following redirects as Go's and Node's clients do (up to 10; no cookies,
    /// no credentials carried): the last answer.
    pub(super) fn follow(&self, mut answer: Answer, mut url: String) -> Result<Answer, String> {
        for _ in 0..10 {
            let Some(location) = answer.header("Location").filter(|_| (301..=308).contains(&answer.status)) else {
                return Ok(answer);
            };
            url = if location.starts_with("http://") || location.starts_with("https://") {
                location.to_owned()
            } else {
                format!("{}{location}", origin(&url))
            };
            answer = self.send("GET", &url, &[], None)?;
        }
        Err(format!("more than 10 redirects, the last to {url}"))
    }

    /// Send one request; `Err` only when no HTTP answer came back.
    pub(super) fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        let mut request = self.agent.request(method, url);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let start = Instant::now();
        let sent = match body {
            Some(bytes) => request.send_bytes(bytes),
            None => request.call(),
        };
        let response = match sent {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(format!("{method} {url}: no answer: {t}")),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| response.header(&name).map(|v| (name.clone(), v.to_owned())))
            .collect();
        let body = response.into_string().map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
        Ok(Answer { status, headers, body, elapsed: start.elapsed() })
    }
}

/// `scheme://host[:port]` of `url`.
pub(super) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Names under `localhost` are this machine, as browsers and curl have them (RFC 6761):
/// an add-on's development origin (`http://{addon}.localhost:8080`) is reachable without a
/// hosts file.
fn resolve(netloc: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let (host, port) = netloc.rsplit_once(':').unwrap_or((netloc, "80"));
    if host.ends_with(".localhost") {
        let port = port.parse().map_err(|_| std::io::Error::other(format!("bad port in {netloc}")))?;
        return Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]);
    }
    std::net::ToSocketAddrs::to_socket_addrs(netloc).map(Iterator::collect)
}
