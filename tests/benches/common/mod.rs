//! Set-up shared by the benchmarks: a one-add-on host config and a provision request.

use std::collections::BTreeMap;
use std::path::Path;

use addon_host::config::{AddonConfig, AdminConfig, HostConfig, ServerConfig};
use addon_host::service::{Caller, Platform, Provision, Target};

/// A host serving `plugin` as add-on `id` on Bitrise, with data under `dir`.
pub(crate) fn host_config(dir: &Path, id: &str, plugin: &str, config: BTreeMap<String, String>) -> HostConfig {
    HostConfig {
        server: ServerConfig {
            data_dir: dir.join("data"),
            admins: vec![AdminConfig { name: "bench".into(), token: "bench-admin-token-0123".into() }],
            ..ServerConfig::default()
        },
        addons: vec![AddonConfig { config, ..AddonConfig::on_bitrise(id, plugin, &"t".repeat(16), &"s".repeat(16)) }],
    }
}

/// A Bitrise provision of app `app{i}`.
pub(crate) fn request(i: usize) -> Provision {
    let mut req = Provision::new(Target::Resource(format!("app{i}")), format!("app{i}"), "free");
    req.api_token = Some("t".into());
    req
}

/// The Bitrise caller.
pub(crate) fn bitrise() -> Caller {
    Caller::unruled(Platform::Bitrise)
}

/// `base` with a custom section appended: a new version (a new sha256) of the same code, so
/// nothing about it is cached.
pub(crate) fn variant(base: &[u8]) -> Vec<u8> {
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    numbered(base, nonce as u64)
}

/// `base` as version number `n`: the same `n` is the same version (its compile cache hits).
pub(crate) fn numbered(base: &[u8], n: u64) -> Vec<u8> {
    let mut out = base.to_vec();
    let mut section = vec![5u8];
    section.extend_from_slice(b"bench");
    section.extend_from_slice(&n.to_le_bytes());
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}
