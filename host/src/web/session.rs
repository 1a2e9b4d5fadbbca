//! Dashboard sessions: what a valid SSO login opens, kept by the browser in a signed cookie
//! (no server-side state, so every host sharing the storage accepts it), and the CSRF token
//! derived from it.
//!
//! The cookie is `HttpOnly`, `SameSite=Lax`, host-only on the add-on's own origin (see
//! [`Scope`]), and lives `[addon.web] session_secs`. Its value is the session as base64url
//! JSON and an HMAC-SHA-256 tag under the host's key. The same sealing, for another purpose,
//! makes the single-use handover link that takes a login to the add-on's origin.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::clock;
use crate::service::auth;

/// The cookie's name. On an add-on's own origin over https it is `__Host-` prefixed
/// ([`HOST_COOKIE`]): browsers then take it only host-only, `Secure` and on `Path=/`, so no
/// sibling origin can toss one in.
pub(crate) const COOKIE: &str = "addon_session";
pub(crate) const HOST_COOKIE: &str = "__Host-addon_session";

/// Where a session cookie lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// The add-on's own origin: host-only, `Path=/`, `__Host-` and `Secure` under https.
    Origin { https: bool },
    /// The host's shared origin (no `server.web_origin`): the add-on's path, `Secure` when
    /// the client came over https.
    SharedPath { addon: &'a str, https: bool },
}

/// A signed-in browser. Serialised with one-letter keys: the cookie stays small, and cookies
/// sealed before the fields had names still open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Session {
    #[serde(rename = "a")]
    pub addon: String,
    #[serde(rename = "r")]
    pub resource: String,
    /// The user's email, when the platform gave one.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Expiry, unix seconds.
    #[serde(rename = "x")]
    pub expires: i64,
    /// Random id, which the CSRF token is derived from.
    #[serde(rename = "s")]
    pub id: String,
}

/// Why a request carries no usable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSession {
    Missing,
    Invalid,
    Expired,
    /// A single-use handover link presented again.
    Used,
}

impl NoSession {
    pub(crate) fn message(self) -> &'static str {
        match self {
            NoSession::Missing => "You are not signed in to this add-on.",
            NoSession::Invalid => "Your session is not valid.",
            NoSession::Expired => "Your session has expired.",
            NoSession::Used => "This sign-in link was already used.",
        }
    }
}

fn tag(key: &[u8], purpose: &str, payload: &str) -> Option<String> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).ok()?;
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(payload.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

impl Session {
    /// A new session for `resource` of `addon`, lasting `secs`.
    pub(crate) fn open(addon: &str, resource: &str, email: Option<String>, secs: u64) -> Option<Session> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).ok()?;
        let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
        Some(Session {
            addon: addon.to_owned(),
            resource: resource.to_owned(),
            email,
            expires: clock::unix_secs().saturating_add(secs),
            id: hex::encode(id),
        })
    }

    /// The cookie value: payload and tag.
    pub(crate) fn seal(&self, key: &[u8]) -> Option<String> {
        self.seal_as(key, "session")
    }

    /// Sealed for `purpose` ("session", or "handover" for the single-use link that carries
    /// a login to the add-on's origin): a value sealed for one purpose opens for no other.
    pub(crate) fn seal_as(&self, key: &[u8], purpose: &str) -> Option<String> {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).ok()?);
        let tag = tag(key, purpose, &payload)?;
        Some(format!("{payload}.{tag}"))
    }

    /// The session in a cookie value, if it is genuine, for `addon`, and not expired.
    pub(crate) fn open_sealed(value: &str, key: &[u8], addon: &str) -> Result<Session, NoSession> {
        Session::open_sealed_as(value, key, addon, "session")
    }

    /// [`Session::open_sealed`] for a value sealed for `purpose`.
    pub(crate) fn open_sealed_as(value: &str, key: &[u8], addon: &str, purpose: &str) -> Result<Session, NoSession> {
        let (payload, presented) = value.split_once('.').ok_or(NoSession::Invalid)?;
        let expected = tag(key, purpose, payload).ok_or(NoSession::Invalid)?;
        if !auth::secret_matches(presented, &expected) {
            return Err(NoSession::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| NoSession::Invalid)?;
        let session: Session = serde_json::from_slice(&bytes).map_err(|_| NoSession::Invalid)?;
        if session.addon != addon {
            return Err(NoSession::Invalid);
        }
        if session.expires <= clock::unix_secs() {
            return Err(NoSession::Expired);
        }
        Ok(session)
    }

    /// The session's CSRF token, which forms carry back as `_csrf` (or `x-csrf-token`).
    pub(crate) fn csrf_token(&self, key: &[u8]) -> String {
        tag(key, "csrf", &self.id).unwrap_or_default()
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub(crate) fn csrf_matches(&self, key: &[u8], presented: &str) -> bool {
        let expected = self.csrf_token(key);
        !expected.is_empty() && auth::secret_matches(presented, &expected)
    }

    /// The `Set-Cookie` value carrying `sealed` in `scope`.
    pub(crate) fn cookie(sealed: &str, scope: Scope<'_>, secs: u64) -> String {
        let (name, path, secure) = match scope {
            Scope::Origin { https: true } => (HOST_COOKIE, "/".to_owned(), true),
            Scope::Origin { https: false } => (COOKIE, "/".to_owned(), false),
            Scope::SharedPath { addon, https } => (COOKIE, format!("/addons/{addon}/"), https),
        };
        let secure = if secure { "; Secure" } else { "" };
        format!("{name}={sealed}; Path={path}; Max-Age={secs}; HttpOnly; SameSite=Lax{secure}")
    }
}

/// Every `name=value` pair of a request's `Cookie` headers, trimmed.
pub(crate) fn cookies(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
}

/// Whether a cookie name is the host's session cookie.
pub(crate) fn is_session_cookie(name: &str) -> bool {
    name == COOKIE || name == HOST_COOKIE
}

/// Every session cookie value among a request's `Cookie` headers: a tossed or stale one does
/// not hide the genuine one, which is whichever opens.
pub(crate) fn cookie_values(headers: &axum::http::HeaderMap) -> Vec<String> {
    cookies(headers)
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| is_session_cookie(name))
        .map(|(_, v)| v.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_keeps_its_one_letter_keys() {
        let session = Session::open("a", "app-1", Some("u@example.com".into()), 5).unwrap();
        let json = serde_json::to_value(&session).expect("serialises");
        let keys: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "e", "r", "s", "x"], "cookies sealed by earlier hosts must still open");
    }

    #[test]
    fn a_session_opens_only_with_its_key_for_its_addon_until_it_expires() {
        let session = Session::open("a", "app-1", Some("u@example.com".into()), 5).unwrap();
        let sealed = session.seal(b"key").unwrap();
        assert_eq!(Session::open_sealed(&sealed, b"key", "a"), Ok(session.clone()));
        assert_eq!(Session::open_sealed(&sealed, b"other", "a"), Err(NoSession::Invalid));
        assert_eq!(Session::open_sealed(&sealed, b"key", "b"), Err(NoSession::Invalid));
        assert_eq!(Session::open_sealed_as(&sealed, b"key", "a", "handover"), Err(NoSession::Invalid));
        let handover = session.seal_as(b"key", "handover").unwrap();
        assert_eq!(Session::open_sealed(&handover, b"key", "a"), Err(NoSession::Invalid), "a link is no cookie");
        let (payload, tag) = sealed.split_once('.').unwrap();
        let forged = format!("{}x.{tag}", &payload[..payload.len() - 1]);
        assert_eq!(Session::open_sealed(&forged, b"key", "a"), Err(NoSession::Invalid));
        let mut old = session.clone();
        old.expires = clock::unix_secs() - 1;
        assert_eq!(Session::open_sealed(&old.seal(b"key").unwrap(), b"key", "a"), Err(NoSession::Expired));
        assert!(session.csrf_matches(b"key", &session.csrf_token(b"key")));
        assert!(!session.csrf_matches(b"key", "nope"));
        assert!(!old.csrf_matches(b"key", &Session::open("a", "app-1", None, 5).unwrap().csrf_token(b"key")));
    }
}
