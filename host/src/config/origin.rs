//! `server.web_origin`: the origin each add-on's pages and build API are served from, as a
//! template such as `https://{addon}.addons.example.com` (or, in development,
//! `http://{addon}.localhost:8080`, which browsers resolve to this machine). Browsers keep
//! origins apart — scripts, cookies, storage, service workers — and nothing else: an add-on
//! on its own origin cannot act in another add-on's pages, whatever its plugin serves.

use serde::Deserialize;

/// A parsed `web_origin` template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WebOrigin {
    https: bool,
    /// The host name around the add-on's id: `{prefix}{id}{suffix}`, lower case.
    prefix: String,
    suffix: String,
    port: Option<u16>,
}

impl TryFrom<String> for WebOrigin {
    type Error = String;

    fn try_from(template: String) -> Result<WebOrigin, String> {
        WebOrigin::parse(&template)
    }
}

impl WebOrigin {
    /// Parse `scheme://host[:port]` whose host holds `{addon}` once.
    pub fn parse(template: &str) -> Result<WebOrigin, String> {
        let bad = |why: &str| format!("server.web_origin `{template}`: {why}");
        let (https, rest) = match template.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => return Err(bad("must start with https:// or http://")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("must be an origin only: scheme, host and port, no path"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains('}') => {
                (host, Some(port.parse::<u16>().map_err(|_| bad("the port is not a number"))?))
            }
            _ => (authority, None),
        };
        let host = host.to_ascii_lowercase();
        let (prefix, suffix) = host.split_once("{addon}").ok_or_else(|| bad("must contain `{addon}` in its host"))?;
        if suffix.contains("{addon}") {
            return Err(bad("must contain `{addon}` once"));
        }
        let label = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !label(prefix) || !label(suffix) || !suffix.starts_with('.') {
            return Err(bad("the host must be `{addon}` followed by a domain, e.g. {addon}.addons.example.com"));
        }
        Ok(WebOrigin { https, prefix: prefix.to_owned(), suffix: suffix.to_owned(), port })
    }

    /// Whether the add-ons' origins are https (their cookies are then `Secure` and
    /// `__Host-`).
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The origin of add-on `id`, e.g. `https://myaddon.addons.example.com`.
    pub fn of(&self, id: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{scheme}://{}{id}{}{port}", self.prefix, self.suffix)
    }

    /// The same template on another port (a test host or the conformance kit's, which
    /// listen on any free port).
    pub fn on_port(&self, port: u16) -> WebOrigin {
        WebOrigin { port: Some(port), ..self.clone() }
    }

    /// The add-on whose origin a request's `Host` names, if any (the port is not compared:
    /// a proxy in front may listen elsewhere).
    pub fn addon_of_host<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() < self.prefix.len() + self.suffix.len() {
            return None;
        }
        let (head, rest) = name.split_at(self.prefix.len());
        let (id, tail) = rest.split_at(rest.len() - self.suffix.len());
        let matches = head.eq_ignore_ascii_case(&self.prefix) && tail.eq_ignore_ascii_case(&self.suffix);
        (matches && !id.is_empty() && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_name_each_addons_origin() {
        let dev = WebOrigin::parse("http://{addon}.localhost:8080").unwrap();
        assert_eq!(dev.of("myaddon"), "http://myaddon.localhost:8080");
        assert_eq!(dev.addon_of_host("myaddon.localhost:8080"), Some("myaddon"));
        assert_eq!(dev.addon_of_host("myaddon.localhost"), Some("myaddon"));
        assert_eq!(dev.addon_of_host("localhost:8080"), None);
        assert_eq!(dev.addon_of_host("a.b.localhost:8080"), None, "one label only");
        assert_eq!(dev.addon_of_host("evil.example:8080"), None);
        assert_eq!(dev.on_port(3000).of("x"), "http://x.localhost:3000");
        let prod = WebOrigin::parse("https://{addon}.addons.example.com/").unwrap();
        assert!(prod.is_https());
        assert_eq!(prod.of("x"), "https://x.addons.example.com");
        assert_eq!(prod.addon_of_host("x.addons.example.com"), Some("x"));
        assert_eq!(prod.addon_of_host("x.addons.example.com.evil.org"), None);
        for bad in [
            "ftp://{addon}.example.com",
            "https://example.com",
            "https://{addon}.example.com/path",
            "https://{addon}{addon}.example.com",
            "https://{addon}",
            "https://{addon}.example.com:http",
        ] {
            assert!(WebOrigin::parse(bad).is_err(), "{bad}");
        }
    }
}
