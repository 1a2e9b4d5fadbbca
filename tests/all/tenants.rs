//! Partners are strangers to each other: what one partner's plugin or deploys leave on the
//! host (compiled code in the cache, uploads) never acts for another add-on. The browser
//! side (origins, cookies, headers) is in `browser.rs` and `web.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use addon_host_tests::AddonToml;
use sha2::{Digest, Sha256};

use crate::process::{Server, exchange, spawn};

const VICTIM: &str = "victim-shared-token-0123";
const OTHER: &str = "other-shared-token-0123";

fn two_addons() -> String {
    let victim = AddonToml::new("victim", addon_host_tests::PLUGIN_VERSIONED_A).bitrise(VICTIM, "victim-sso");
    let other = AddonToml::new("other", addon_host_tests::PLUGIN_VERSIONED_B).bitrise(OTHER, "other-sso");
    format!("{}{}", victim.to_toml(), other.to_toml())
}

/// The version letter `addon`'s plugin answers a provision with.
async fn served(server: &Server, addon: &str, token: &str, slug: &str) -> String {
    let body = format!(r#"{{"app_slug":"{slug}","api_token":"t","plan":"free"}}"#);
    let headers = [("Authentication", token), ("Content-Type", "application/json")];
    let path = format!("/addons/{addon}/provision");
    let (status, reply) = exchange(&server.addr, "POST", &path, &headers, &body).await;
    assert!(status == 201 || status == 200, "{status} {reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    v["envs"].as_array().unwrap().iter().find(|e| e["key"] == "VERSIONED_VERSION").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The compile cache's artefact of the plugin file `plugin` (one engine: "cranelift").
fn artefact(cache: &Path, plugin: &str) -> PathBuf {
    let sha = hex::encode(Sha256::digest(std::fs::read(plugin).unwrap()));
    let found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{sha}-")))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

/// Another plugin's compiled artefact copied over an add-on's cache file (a cache shared
/// between hosts, a restored backup, anyone who can write the directory) is never loaded:
/// its tag, under the host's key in storage, is for another plugin. The add-on keeps serving
/// its own code, and the host says what it refused. The directory is the host's alone (0700).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_compile_cache_file_is_refused_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &two_addons()).await;
    assert_eq!(served(&server, "victim", VICTIM, "v1").await, "a");
    assert_eq!(served(&server, "other", OTHER, "o1").await, "b");
    drop(server);

    let cache = dir.path().join("data/compiled");
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let (victim, other) = (
        artefact(&cache, addon_host_tests::PLUGIN_VERSIONED_A),
        artefact(&cache, addon_host_tests::PLUGIN_VERSIONED_B),
    );
    std::fs::copy(&other, &victim).unwrap();
    let server = spawn(dir.path(), &two_addons()).await;
    assert_eq!(served(&server, "victim", VICTIM, "v2").await, "a", "the other plugin's code ran for victim");
    assert!(
        server.logged("failed its integrity check", std::time::Duration::from_secs(5)).await,
        "the refused artefact was not reported"
    );
    drop(server);
    // It was recompiled and cached again, tagged: the next start loads it without a word.
    let server = spawn(dir.path(), &two_addons()).await;
    assert_eq!(served(&server, "victim", VICTIM, "v3").await, "a");
    assert!(!server.logged("failed its integrity check", std::time::Duration::from_millis(500)).await);
}
