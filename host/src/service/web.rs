//! The add-on's own HTTP surfaces, in the service's terms: calling the plugin's HTTP handler
//! (with the same slots, deadline, re-runs and commit as a platform call), and the per-app
//! build API tokens.
//!
//! A token is derived, never stored: HMAC-SHA-256 under the host's key of the add-on, the
//! resource, when it was provisioned and the token's generation. The record keeps only the
//! generation and the token's SHA-256, which is what a build's token is checked against. So
//! a repeated provision replays the same token, a rotation (a new generation) or a new
//! provision after a deprovision makes a new one, and a copy of the records reveals none.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::call::{Finish, call_failed, stored};
use super::record::ApiToken;
use super::{Addon, Budget, Record, Service};
use crate::clock;
use crate::error::ServiceError;
use crate::runtime::{CallFailure, Export, Returned, WebRequest, WebResponse};
use crate::storage::KvQuota;

/// Marks the tokens this host issues (so they are recognisable in logs and by secret scanners).
const TOKEN_PREFIX: &str = "abt1";

impl Service {
    /// The key that signs dashboard sessions and derives build API tokens.
    pub fn web_key(&self) -> &[u8] {
        &self.web_key
    }

    /// Serve one HTTP request with the add-on's plugin handler. The handler's key-value
    /// writes and jobs are committed (durably, before the answer) only when it answers 2xx or
    /// 3xx; `resource` is the resource its jobs belong to.
    pub async fn serve_http(
        &self,
        addon: &Arc<Addon>,
        resource: &str,
        request: WebRequest,
    ) -> Result<WebResponse, ServiceError> {
        // A request waits for a slot and runs within the add-on's deadline (plus a second for
        // the commit and a re-run).
        let budget = Budget::start(Duration::from_millis(addon.config.limits.deadline_ms + 1_000));
        let finish = |returned: Returned, plugin: &crate::runtime::Plugin| match returned {
            // 1xx (an upgrade to another protocol among them) is the host's to answer.
            Returned::Http(response) if !(200..600).contains(&response.status) => {
                let why = format!("answered HTTP status {}; a handler may answer 200-599", response.status);
                Err(call_failed(addon, "http", plugin.short_version(), CallFailure::InvalidReply(why)))
            }
            Returned::Http(response) if (200..400).contains(&response.status) => {
                Ok(Finish::Keep { record: None, resource: Some(resource.to_owned()), value: *response })
            }
            Returned::Http(response) => Ok(Finish::Drop(*response)),
            Returned::Reply(_) | Returned::Job(_) => Err(call_failed(
                addon,
                "http",
                plugin.short_version(),
                CallFailure::InvalidReply("not an HTTP response".into()),
            )),
        };
        let outcome = self.attempts(addon, &budget, Export::Http(request), None, finish).await;
        outcome.inspect_err(|e| self.metrics.failure(addon.id(), "http", e.kind()))
    }

    /// A resource of the add-on, whichever platform made it, active or not.
    pub async fn resource(&self, addon: &Arc<Addon>, resource_id: &str) -> Result<Option<Record>, ServiceError> {
        stored(addon, resource_id).await
    }

    /// The build API token of an active resource, when the add-on issues them.
    pub fn api_token(&self, addon: &Addon, record: &Record) -> Option<String> {
        let token = record.api_token.as_ref().filter(|_| addon.config.web.build_api && record.is_active())?;
        derive_token(&self.web_key, addon.id(), &record.resource_id, record.created_ms, token.generation).ok()
    }

    /// The variables a platform gets for `record`: the plugin's, and the build API token.
    pub fn exported(&self, addon: &Addon, record: &Record) -> Vec<(String, String)> {
        let mut vars = record.config.clone();
        if let Some(token) = self.api_token(addon, record) {
            vars.push((addon.config.web.token_var(addon.id()), token));
        }
        vars
    }

    /// The token reference a provision stores: the current one kept, or the first.
    pub(super) fn issue_token(
        &self,
        addon: &Addon,
        resource_id: &str,
        created_ms: u64,
        existing: Option<&Record>,
    ) -> Option<ApiToken> {
        if !addon.config.web.build_api {
            return None;
        }
        let generation = existing.and_then(|r| r.api_token.as_ref()).map_or(1, |t| t.generation);
        let token = derive_token(&self.web_key, addon.id(), resource_id, created_ms, generation).ok()?;
        Some(ApiToken { generation, sha256: token_hash(&token) })
    }

    /// The resource a build's token belongs to. Every way of being wrong (malformed, another
    /// app's or add-on's, rotated, deprovisioned) is the same 401.
    pub async fn api_caller(&self, addon: &Arc<Addon>, token: &str) -> Result<Record, ServiceError> {
        let refused = || ServiceError::Unauthorized("invalid or revoked API token".into());
        if !addon.config.web.build_api {
            return Err(ServiceError::NotFound(format!("add-on `{}` has no build API", addon.id())));
        }
        let resource = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|t| t.strip_prefix('.'))
            .and_then(|t| t.rsplit_once('.'))
            .map(|(resource, _)| resource)
            .filter(|r| super::check_resource_id("token", r).is_ok())
            .ok_or_else(refused)?;
        let record = stored(addon, resource).await?.filter(Record::is_active).ok_or_else(refused)?;
        let expected = record.api_token.as_ref().ok_or_else(refused)?;
        if !super::auth::secret_matches(&token_hash(token), &expected.sha256) {
            return Err(refused());
        }
        Ok(record)
    }

    /// Replace a resource's build API token; the new token. The old one is refused from now.
    pub async fn rotate_api_token(&self, addon: &Arc<Addon>, resource_id: &str) -> Result<String, ServiceError> {
        if !addon.config.web.build_api {
            return Err(ServiceError::NotFound(format!("add-on `{}` has no build API", addon.id())));
        }
        let budget = Budget::start(Duration::from_secs(10));
        let _lock = self.lock_resource(addon, resource_id, &budget).await?;
        let mut record = stored(addon, resource_id)
            .await?
            .filter(Record::is_active)
            .ok_or_else(|| super::provision::no_resource(resource_id))?;
        let generation = record.api_token.as_ref().map_or(1, |t| t.generation.saturating_add(1));
        let token = derive_token(&self.web_key, addon.id(), resource_id, record.created_ms, generation)?;
        record.api_token = Some(ApiToken { generation, sha256: token_hash(&token) });
        record.updated_ms = clock::now_ms();
        let (store, id, bytes) = (addon.store.clone(), record.resource_id.clone(), record.to_bytes());
        let quota = KvQuota::of(&addon.config.limits);
        let txn = store.begin();
        super::commit(store, txn, quota, Some((id, bytes)), None).await??;
        tracing::info!(addon = addon.id(), resource = resource_id, generation, "build API token rotated");
        Ok(token)
    }
}

/// What the record keeps of a token: its SHA-256, in hex.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn derive_token(
    key: &[u8],
    addon: &str,
    resource: &str,
    created_ms: u64,
    generation: u32,
) -> Result<String, ServiceError> {
    // HMAC takes keys of any length; the error exists only in the trait's signature.
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).map_err(|e| ServiceError::host("deriving an API token", e))?;
    mac.update(format!("api-token\0{addon}\0{resource}\0{created_ms}\0{generation}").as_bytes());
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{TOKEN_PREFIX}.{resource}.{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_by_every_input_and_name_their_resource() {
        let token = |k: &[u8], a, r, c, g| derive_token(k, a, r, c, g).unwrap();
        let t = token(b"k", "a", "app-1", 1, 1);
        assert!(t.starts_with("abt1.app-1."), "{t}");
        for other in [
            token(b"K", "a", "app-1", 1, 1),
            token(b"k", "b", "app-1", 1, 1),
            token(b"k", "a", "app-2", 1, 1),
            token(b"k", "a", "app-1", 2, 1),
            token(b"k", "a", "app-1", 1, 2),
        ] {
            assert_ne!(t, other);
        }
        assert_eq!(t, token(b"k", "a", "app-1", 1, 1));
    }
}
