//! Secrets and signed tokens: constant-time comparison of shared tokens, and the SSO token
//! scheme both platforms use (`hex(sha1(subject:secret:timestamp))`, with Bitrise's
//! `sha256-` variant) checked for freshness.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ServiceError;

/// How far an SSO timestamp may be from the host's clock, either way.
pub const SSO_WINDOW_SECS: i64 = 300;

/// Compare a presented secret with the expected one without leaking, through timing, how
/// much of it matched or how long it is (both sides are hashed to a fixed length first).
pub fn secret_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// Check an SSO token for `subject` signed with `secret` at `timestamp` (unix seconds, as
/// sent). Returns the parsed timestamp and the token in canonical form (lower-case hex), the
/// form under which it is marked used: hex is case-insensitive, so `ABC` and `abc` are one
/// token and a replay in other letter case is still a replay.
pub fn verify_sso_token(
    subject: &str,
    secret: &str,
    timestamp: &str,
    token: &str,
    now: i64,
) -> Result<(i64, String), ServiceError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| ServiceError::Forbidden(format!("timestamp {timestamp:?} is not a unix time in seconds")))?;
    let material = format!("{subject}:{secret}:{}", timestamp.trim());
    let (prefix, given, expected) = match token.strip_prefix("sha256-") {
        Some(hex) => ("sha256-", hex, hex::encode(Sha256::digest(material.as_bytes()))),
        None => ("", token, hex::encode(Sha1::digest(material.as_bytes()))),
    };
    if !secret_matches(&given.to_ascii_lowercase(), &expected) {
        return Err(ServiceError::Forbidden("the SSO token does not match".into()));
    }
    if (now - ts).abs() > SSO_WINDOW_SECS {
        return Err(ServiceError::Forbidden(format!(
            "the SSO token is stale: its timestamp is {}s from now (limit {SSO_WINDOW_SECS}s)",
            now - ts
        )));
    }
    Ok((ts, format!("{prefix}{expected}")))
}

/// The admin API's credentials: named bearer tokens, kept only as SHA-256 hashes. They come
/// from `[[server.admins]]`, or, when none are configured, from a token generated at first
/// start, stored hashed, and handed once to whoever started the service to show.
pub struct AdminKeys {
    keys: Vec<(String, [u8; 32])>,
    /// The token generated at this start, until it is taken to be shown.
    generated: std::sync::Mutex<Option<String>>,
}

impl AdminKeys {
    pub fn load(
        configured: &[crate::config::AdminConfig],
        storage: &crate::storage::Storage,
    ) -> anyhow::Result<AdminKeys> {
        if !configured.is_empty() {
            return Ok(AdminKeys::fixed(configured));
        }
        let space = storage.space("admin");
        if let Some(stored) = space.get(b"generated")? {
            let hash: [u8; 32] =
                stored.as_slice().try_into().map_err(|_| anyhow::anyhow!("the stored admin credential is corrupt"))?;
            return Ok(AdminKeys::new(vec![("admin".into(), hash)], None));
        }
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
        let token = format!("aht_{}", hex::encode(secret));
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Another host sharing the storage may have generated one meanwhile: the first wins.
        let mut theirs = None;
        space.commit(&mut |r| {
            let mut batch = crate::storage::Batch::default();
            theirs = r.get(b"generated")?;
            if theirs.is_none() {
                batch.insert(&b"generated"[..], &hash[..]);
            }
            Ok(batch)
        })?;
        if let Some(stored) = theirs {
            let hash: [u8; 32] =
                stored.as_slice().try_into().map_err(|_| anyhow::anyhow!("the stored admin credential is corrupt"))?;
            return Ok(AdminKeys::new(vec![("admin".into(), hash)], None));
        }
        tracing::warn!("generated an admin token for identity `admin`; it is shown once and never again");
        Ok(AdminKeys::new(vec![("admin".into(), hash)], Some(token)))
    }

    /// Exactly the configured tokens (an add-on's deploy tokens), hashed.
    pub fn fixed(configured: &[crate::config::AdminConfig]) -> AdminKeys {
        let keys = configured.iter().map(|a| (a.name.clone(), Sha256::digest(a.token.as_bytes()).into()));
        AdminKeys::new(keys.collect(), None)
    }

    fn new(keys: Vec<(String, [u8; 32])>, generated: Option<String>) -> AdminKeys {
        AdminKeys { keys, generated: std::sync::Mutex::new(generated) }
    }

    /// The admin token generated at this start, if one was: returned once, to be shown.
    pub fn take_generated(&self) -> Option<String> {
        self.generated.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// The identity a presented token belongs to. Every key is compared, in constant time.
    pub fn identify(&self, token: &str) -> Option<&str> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash) in &self.keys {
            if bool::from(given.ct_eq(hash)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kit_example_token_verifies() {
        // The worked example of Bitrise's kit: slug 0123456789abcdef, secret cba321.
        let token = "9a9f0c852674fbfb29fe66121397e8377496dcf0";
        assert_eq!(
            verify_sso_token("0123456789abcdef", "cba321", "1700000000", token, 1_700_000_010).unwrap().0,
            1_700_000_000
        );
        assert!(verify_sso_token("0123456789abcdef", "cba320", "1700000000", token, 1_700_000_010).is_err());
        assert!(verify_sso_token("0123456789abcdef", "cba321", "1700000000", token, 1_700_000_400).is_err());
    }
}
