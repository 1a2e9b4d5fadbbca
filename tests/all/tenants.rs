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
    server.stop().await;

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
    server.stop().await;
    // It was recompiled and cached again, tagged: the next start loads it without a word.
    let server = spawn(dir.path(), &two_addons()).await;
    assert_eq!(served(&server, "victim", VICTIM, "v3").await, "a");
    assert!(!server.logged("failed its integrity check", std::time::Duration::from_millis(500)).await);
}

const DEPLOY_TOKEN: &str = "ci-deploy-token-0123456789";
/// The bound the README states for this test's add-on: its stored versions may take
/// `max_stored_mib` (24 MiB); the data directory stays under 64 MiB (measured: 27 MiB) and
/// the host's memory grows by less than 200 MiB (measured: 83 MiB), however many uploads are
/// tried.
const DATA_DIR_BOUND: u64 = 64 << 20;
const RSS_GROWTH_BOUND: u64 = 200 << 20;

/// `plugin`'s component with a custom section of `size` bytes unique to `n` appended: a
/// distinct, large, valid upload.
fn padded(plugin: &str, n: u32, size: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin).unwrap();
    let mut payload = vec![0u8; size];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(n).to_le_bytes()[0];
    }
    let mut section = vec![3u8];
    section.extend_from_slice(b"pad");
    section.extend_from_slice(&payload);
    bytes.push(0); // a custom section
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        bytes.push(if len == 0 { byte } else { byte | 0x80 });
        if len == 0 {
            break;
        }
    }
    bytes.extend_from_slice(&section);
    bytes
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn upload(server: &Server, token: &str, bytes: &[u8]) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/wasm")];
    let path = "/admin/addons/victim/plugins?activate=false";
    let (status, text) = crate::process::exchange_bytes(&server.addr, "POST", path, &headers, bytes).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}")))
}

/// A deploy token cannot fill the host: 50 uploads of distinct 4 MiB components through one
/// token. Those that fit the add-on's stored-bytes quota are stored (and compiled); past it
/// each gets 409 naming `max_stored_mib`, and past the upload rate 429 naming
/// `uploads_per_hour`, before anything is compiled. The active version serves throughout,
/// only a few versions stay loaded, the data directory and the host's memory stay within the
/// bounds above, and deleting versions frees their place (a new upload fits again) and their
/// compiled code, while the active version cannot be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_token_cannot_fill_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let victim = AddonToml::new("victim", addon_host_tests::PLUGIN_VERSIONED_A).bitrise(VICTIM, "victim-sso").to_toml();
    let limits = "\n[addon.deploys]\nmax_stored_mib = 24\nuploads_per_hour = 40\n";
    let deployers = format!("\n[[addon.deployers]]\nname = \"ci\"\ntoken = \"{DEPLOY_TOKEN}\"\n");
    let server = spawn(dir.path(), &format!("{victim}{limits}{deployers}")).await;
    assert_eq!(served(&server, "victim", VICTIM, "before").await, "a");
    let (rss_before, data_before) = (server.rss(), dir_size(&dir.path().join("data")));

    let mut outcomes = Vec::new();
    for n in 0..50 {
        let (status, body) =
            upload(&server, DEPLOY_TOKEN, &padded(addon_host_tests::PLUGIN_VERSIONED_B, n, 4 << 20)).await;
        match status {
            201 => assert_eq!(body["activated"], false),
            409 => {
                assert_eq!(body["error"], "deploy_quota", "{body}");
                assert!(body["message"].as_str().unwrap().contains("max_stored_mib"), "{body}");
            }
            429 => {
                assert_eq!(body["error"], "rate_limited", "{body}");
                assert!(body["message"].as_str().unwrap().contains("uploads_per_hour"), "{body}");
            }
            other => panic!("upload {n}: {other} {body}"),
        }
        outcomes.push(status);
        if n % 10 == 0 {
            assert_eq!(served(&server, "victim", VICTIM, &format!("during-{n}")).await, "a");
        }
    }
    let count = |s: u16| outcomes.iter().filter(|&&o| o == s).count();
    assert_eq!((count(201), count(409), count(429)), (5, 35, 10), "{outcomes:?}");
    assert_eq!(served(&server, "victim", VICTIM, "after").await, "a");

    let (status, text) = server.as_admin("/admin/status").await;
    assert_eq!(status, 200, "{text}");
    let addon = serde_json::from_str::<serde_json::Value>(&text).unwrap()["addons"][0].clone();
    assert_eq!(addon["versions"], 6, "{addon}");
    assert!(addon["loaded_versions"].as_u64().unwrap() <= 3, "{addon}");
    let (rss_after, data_after) = (server.rss(), dir_size(&dir.path().join("data")));
    println!(
        "RSS {} -> {} MiB, data dir {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20,
        data_before >> 20,
        data_after >> 20
    );
    assert!(rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND, "RSS {rss_before} -> {rss_after}");
    assert!(data_after < DATA_DIR_BOUND, "data dir {data_after} bytes");

    // Deleting: never the active version; the others free their place and compiled code.
    let auth = format!("Bearer {DEPLOY_TOKEN}");
    let delete = |version: u32| {
        let (addr, auth) = (server.addr.clone(), auth.clone());
        async move {
            let path = format!("/admin/addons/victim/plugins/{version}");
            exchange(&addr, "DELETE", &path, &[("authorization", &auth)], "").await
        }
    };
    let (status, text) = delete(1).await;
    assert!(status == 409 && text.contains("active"), "{status} {text}");
    let (compiled, files) = (dir.path().join("data/compiled"), dir.path().join("data/files"));
    let (cache_before, files_before) = (dir_size(&compiled), dir_size(&files));
    for version in 2..=6 {
        let (status, text) = delete(version).await;
        assert_eq!(status, 200, "{text}");
    }
    assert!(dir_size(&compiled) < cache_before, "the compiled code of deleted versions stayed");
    // On sled the components are files, freed at once (on PostgreSQL they are rows).
    if !addon_host_tests::postgres::selected() {
        assert!(files_before > 20 << 20, "{files_before} bytes of components");
        assert!(dir_size(&files) < 1 << 20, "deleted components still take {} bytes", dir_size(&files));
    }
    let (status, text) = server.as_admin("/admin/status").await;
    let addon = serde_json::from_str::<serde_json::Value>(&text).unwrap()["addons"][0].clone();
    assert_eq!((status, addon["versions"].as_u64()), (200, Some(1)), "{addon}");
    // Room again: an admin (its own upload budget) stores new versions; the disk is reused.
    let admin = server.banner.iter().find_map(|l| l.split("stored): ").nth(1)).unwrap().to_owned();
    for n in 100..105 {
        let (status, body) = upload(&server, &admin, &padded(addon_host_tests::PLUGIN_VERSIONED_B, n, 4 << 20)).await;
        assert_eq!(status, 201, "{body}");
    }
    let data_end = dir_size(&dir.path().join("data"));
    println!("data dir after deleting and uploading again: {} MiB", data_end >> 20);
    assert!(data_end < DATA_DIR_BOUND, "data dir {data_end} bytes");
    assert_eq!(served(&server, "victim", VICTIM, "end").await, "a");
}
