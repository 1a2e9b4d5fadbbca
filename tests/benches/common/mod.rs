//! Set-up shared by the benchmarks: a one-add-on host config and a provision request.

use std::collections::BTreeMap;
use std::path::Path;

use addon_host::config::{AddonConfig, AdminConfig, BitriseConfig, HostConfig, Limits, ServerConfig};
use addon_host::runtime::{Platform, ProvisionRequest};

/// A host serving `plugin` as add-on `id` on Bitrise, with data under `dir`.
pub fn host_config(dir: &Path, id: &str, plugin: &str, config: BTreeMap<String, String>) -> HostConfig {
    HostConfig {
        server: ServerConfig {
            data_dir: dir.join("data"),
            admins: vec![AdminConfig { name: "bench".into(), token: "bench-admin-token-0123".into() }],
            ..ServerConfig::default()
        },
        addons: vec![AddonConfig {
            id: id.into(),
            plugin: plugin.into(),
            plans: vec![],
            bitrise: Some(BitriseConfig { shared_token: "t".repeat(16), sso_secret: "s".repeat(16) }),
            xervo: None,
            limits: Limits::default(),
            config,
            secrets: Default::default(),
        }],
    }
}

/// A Bitrise provision of app `app{i}`.
pub fn request(i: usize) -> ProvisionRequest {
    ProvisionRequest {
        resource_id: format!("app{i}"),
        platform: Platform::Bitrise,
        app_id: format!("app{i}"),
        plan: "free".into(),
        app_title: None,
        api_token: Some("t".into()),
        email: None,
        region: None,
        callback_url: None,
        options: vec![],
    }
}
