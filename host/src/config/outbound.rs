//! `allowed_outbound`: the origins an add-on's plugin may call over HTTP, parsed once when
//! the configuration is read. The runtime's `http` import enforces them on every hop.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use url::Url;

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub(crate) scheme: String,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Allowed {
    /// Whether the origin itself names a loopback or private address (an IP literal or
    /// `localhost`), which is what makes such an address allowed.
    pub(crate) fn names_address(&self) -> bool {
        self.host == "localhost" || self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok()
    }
}

/// The origins an add-on may call, and whether its requests are answered by a stub instead
/// of being sent.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub(crate) allowed: Vec<Allowed>,
    pub(crate) stub: Option<Arc<OutboundStub>>,
}

/// Outbound requests answered by the host itself and never sent: the conformance kit serves a
/// plugin with one, so that its runs never reach a partner's real API. It answers each request
/// that the allow-list lets through with 200 and `{}`, and keeps its method and URL for the
/// kit's report. Set in code only (`addon-host test`), never from a config file.
#[derive(Debug, Default)]
pub struct OutboundStub {
    seen: Mutex<Vec<String>>,
}

impl OutboundStub {
    /// Keep one request, as `METHOD URL` (without its query, which may carry credentials).
    pub(crate) fn record(&self, method: &str, url: &Url) {
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).push(format!("{method} {shown}"));
    }

    /// The requests answered so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn origin_of(url: &Url) -> Option<Allowed> {
    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    Some(Allowed {
        scheme: scheme.to_owned(),
        host: url.host_str()?.to_ascii_lowercase(),
        port: url.port_or_known_default()?,
    })
}

impl Origins {
    /// Parse `allowed_outbound`: each entry an origin like `https://api.bitrise.io` (scheme,
    /// host and optional port; no path, query or credentials).
    pub fn parse(list: &[String]) -> Result<Origins, String> {
        let mut origins = Vec::new();
        for entry in list {
            let url = Url::parse(entry).map_err(|e| format!("`{entry}` is not a URL: {e}"))?;
            let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
            if !bare || !url.username().is_empty() || url.password().is_some() {
                return Err(format!("`{entry}` must be an origin only: scheme, host and port"));
            }
            origins.push(origin_of(&url).ok_or_else(|| format!("`{entry}` must be an http or https origin"))?);
        }
        Ok(Origins { allowed: origins, stub: None })
    }

    /// These origins, with requests answered by `stub` when there is one.
    pub fn stubbed(self, stub: Option<Arc<OutboundStub>>) -> Origins {
        Origins { stub, ..self }
    }

    /// The allowed origin `url` belongs to, if any.
    pub(crate) fn find(&self, url: &Url) -> Option<&Allowed> {
        let origin = origin_of(url)?;
        self.allowed.iter().find(|a| **a == origin)
    }
}
