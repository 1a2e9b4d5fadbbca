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
