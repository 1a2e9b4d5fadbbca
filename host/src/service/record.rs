//! The provision record kept for each resource: what was asked, what was answered, and by
//! which plugin version. Replays answer from it without calling the plugin.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::request::{Platform, Provision};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Deprovisioned,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub resource_id: String,
    pub platform: String,
    pub app_id: String,
    pub plan: String,
    pub app_title: Option<String>,
    /// Digest of the provision request that created or last re-provisioned the resource.
    pub request_digest: String,
    /// The variables currently exported (provision reply, updated by plan changes).
    pub config: Vec<(String, String)>,
    pub message: Option<String>,
    pub status: Status,
    /// sha256 of the plugin that last served the resource.
    pub plugin_version: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The app's build API token (`[addon.web] build_api`): which one it is, and its SHA-256.
    /// The token itself is never stored (see `service::web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<ApiToken>,
}

/// Which build API token an app holds now: rotation bumps `generation`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiToken {
    pub generation: u32,
    pub sha256: String,
}

impl Record {
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    /// Whether `platform` created this resource (only it may see or change it).
    pub fn belongs_to(&self, platform: super::Platform) -> bool {
        super::Platform::from_name(&self.platform) == platform
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A digest over every field of a provision for `resource_id`, so "the same request" means
/// the same bytes in every field, whatever the wire format was. (The field order is the
/// plugin contract's, so digests stored by earlier versions still match.)
pub fn request_digest(req: &Provision, platform: Platform, resource_id: &str) -> String {
    let canonical = serde_json::json!([
        resource_id,
        platform.name(),
        req.app_id,
        req.plan,
        req.app_title,
        req.api_token,
        req.email,
        req.region,
        req.callback_url,
        req.options,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}
