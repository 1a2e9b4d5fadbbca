//! Hot plugin upgrades through the admin API: validated uploads, atomic swaps under load with
//! zero failed requests, rollback, persistence across restarts, and admin-only access.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::Method;

use crate::support::*;

fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn push(host: &TestHost, path: &str, activate: bool) -> Reply {
    host.admin(Method::POST, &format!("/admin/addons/versioned/plugins?activate={activate}"), wasm(path)).await
}

async fn served_version(host: &TestHost, slug: &str) -> String {
    let reply = host.provision("versioned", VERSIONED_TOKEN, slug, "free").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.env("VERSIONED_VERSION")
}

// One worker thread: work that blocked it (a compilation on the request path) would stop
// every request, which the upload below would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn swapping_under_load_fails_no_request() {
    // Its plugin also serves HTTP: build API traffic runs through the swaps as well.
    let host = Arc::new(TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        let versioned = cfg.addons.iter_mut().find(|a| a.id == "versioned").unwrap();
        versioned.web.build_api = true;
        // Traffic as fast as the host answers, past the default per-app rate limit.
        versioned.web.api_rate_per_minute = 1_000_000;
    }));
    let a = host.service.addon("versioned").unwrap().plugin().sha256.clone();
    let pushed = push(&host, addon_host_tests::PLUGIN_VERSIONED_B, false).await;
    assert_eq!(pushed.status, 201, "{}", pushed.text);
    let b = pushed.json()["version"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(pushed.json()["version"]["uploaded_by"], "ops");
    assert_eq!(pushed.json()["serves_http"], true, "the upload says the version has an HTTP handler");
    assert_eq!(pushed.json()["world"], "web", "the upload names the world the version implements");
    assert_eq!(served_version(&host, "before").await, "a", "an upload without activation changes nothing");

    let api_token = host.provision("versioned", VERSIONED_TOKEN, "api-app", "free").await.env("VERSIONED_API_TOKEN");
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let api_counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let api_traffic = {
        let (host, stop, api_counts) = (host.clone(), stop.clone(), api_counts.clone());
        tokio::spawn(async move {
            let auth = format!("Bearer {api_token}");
            while !stop.load(Ordering::Relaxed) {
                let reply =
                    host.send(Method::GET, "/addons/versioned/api/version", &[("authorization", &auth)], "").await;
                assert_eq!(reply.status, 200, "a build API request failed during swaps: {}", reply.text);
                assert!(reply.text == "a" || reply.text == "b", "unknown version {}", reply.text);
                api_counts[usize::from(reply.text == "b")].fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The version that answered each app's provision, and each app's plan change.
    let answered: Arc<Mutex<HashMap<String, (String, String)>>> = Arc::default();
    let mut traffic = Vec::new();
    for worker in 0..4 {
        let (host, stop, counts, answered) = (host.clone(), stop.clone(), counts.clone(), answered.clone());
        traffic.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let slug = format!("w{worker}-{i}");
                let reply = host.provision("versioned", VERSIONED_TOKEN, &slug, "free").await;
                assert_eq!(reply.status, 201, "provision failed during swaps: {}", reply.text);
                let version = reply.env("VERSIONED_VERSION");
                counts[usize::from(version == "b")].fetch_add(1, Ordering::Relaxed);
                assert!(version == "a" || version == "b", "unknown version {version}");
                let changed = host.change_plan("versioned", VERSIONED_TOKEN, &slug, "pro").await;
                assert_eq!(changed.status, 200, "plan change failed during swaps: {}", changed.text);
                let message = changed.json()["message"].as_str().unwrap().to_owned();
                assert!(message == "version a" || message == "version b", "{message}");
                let changed_by = message.trim_start_matches("version ").to_owned();
                answered.lock().unwrap().insert(format!("w{worker}-{i}"), (version, changed_by));
                i += 1;
            }
            i
        }));
    }

    // An upload during the traffic, of a version never seen (version b's bytes with a custom
    // section appended): it is compiled while requests keep being answered.
    let mut fresh = wasm(addon_host_tests::PLUGIN_VERSIONED_B);
    // A payload unique to this run, so the shared compile cache cannot already hold it.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    fresh.extend_from_slice(&[0x00, 13, 0x04, b't', b'e', b's', b't']);
    fresh.extend_from_slice(&nonce.to_le_bytes());
    let before_upload: usize = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    // As a task, so it runs on the runtime's one worker, like a real request.
    let upload = {
        let host = host.clone();
        tokio::spawn(
            async move { host.admin(Method::POST, "/admin/addons/versioned/plugins?activate=false", fresh).await },
        )
    };
    let uploaded = upload.await.unwrap();
    let during_upload = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum::<usize>() - before_upload;
    assert_eq!(uploaded.status, 201, "{}", uploaded.text);
    assert!(uploaded.json()["compile_ms"].as_u64().is_some(), "{}", uploaded.text);
    let compile_ms = uploaded.json()["compile_ms"].as_u64().unwrap_or(0);
    println!("{during_upload} requests answered during a {compile_ms} ms compilation");
    assert!(
        during_upload >= 10,
        "only {during_upload} requests answered while the upload compiled for {compile_ms} ms"
    );

    let mut swaps = 0;
    for round in 0..12 {
        for sha in [&b, &a] {
            let reply = host.admin(Method::POST, &format!("/admin/addons/versioned/plugins/{sha}/activate"), "").await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            swaps += 1;
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
        if round % 4 == 3 {
            let back = host.admin(Method::POST, "/admin/addons/versioned/rollback", "").await;
            assert_eq!(back.status, 200, "{}", back.text);
            assert_eq!(back.json()["active"]["sha256"], b.as_str(), "rollback goes to the previous version");
            swaps += 1;
            let again = host.admin(Method::POST, "/admin/addons/versioned/rollback?version=1", "").await;
            assert_eq!(again.json()["active"]["sha256"], a.as_str(), "rollback to a numbered version");
            swaps += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for t in traffic {
        requests += t.await.expect("a request failed during the swaps");
    }
    api_traffic.await.expect("a build API request failed during the swaps");
    let (api_a, api_b) = (api_counts[0].load(Ordering::Relaxed), api_counts[1].load(Ordering::Relaxed));
    println!("build API requests during the swaps: {api_a} on a, {api_b} on b");
    assert!(api_a > 0 && api_b > 0, "the HTTP handler's traffic saw both versions");
    // The last swap (a rollback to version 1) is what serves now.
    let list = host.admin(Method::GET, "/admin/addons/versioned/plugins", "").await.json();
    let active: Vec<_> = list["versions"].as_array().unwrap().iter().filter(|v| v["active"] == true).collect();
    assert_eq!((active.len(), active[0]["sha256"].as_str()), (1, Some(a.as_str())), "{list}");
    assert_eq!(served_version(&host, "after-swaps").await, "a");
    let (on_a, on_b) = (counts[0].load(Ordering::Relaxed), counts[1].load(Ordering::Relaxed));
    println!("{swaps} swaps, {requests} provision+plan-change pairs: {on_a} on a, {on_b} on b");
    assert!(on_a > 0 && on_b > 0, "traffic saw both versions");

    // Every record names the version that last served it (the plan change), and the
    // variables it stored came from that same version.
    let addon = host.service.addon("versioned").unwrap();
    let kv = host.kv("versioned");
    for (id, bytes) in addon.store().records().unwrap() {
        let record = addon_host::service::Record::from_bytes(&bytes).unwrap();
        let reported = &record.config.iter().find(|(k, _)| k == "VERSIONED_VERSION").unwrap().1;
        let expected = if record.plugin_version == a { "a" } else { "b" };
        assert!(record.plugin_version == a || record.plugin_version == b, "{id}");
        assert_eq!(reported, expected, "{id}: variables and recorded version disagree");
        // The plugin's own writes came from the versions that answered each call.
        if let Some((provisioned_by, changed_by)) = answered.lock().unwrap().get(&id) {
            assert_eq!(&kv[&format!("served-by/{id}")], provisioned_by, "{id}: provision's KV write");
            assert_eq!(&kv[&format!("plan-by/{id}")], changed_by, "{id}: plan change's KV write");
            assert_eq!(reported, changed_by, "{id}: the stored variables are the plan change's");
        }
    }
}

#[tokio::test]
async fn invalid_uploads_are_refused_and_the_old_version_keeps_serving() {
    let host = TestHost::start();
    let before = host.admin(Method::GET, "/admin/addons/versioned/plugins", "").await.json();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("not wasm", b"hello, I am not a component".to_vec(), "not a valid component"),
        ("empty", Vec::new(), "empty"),
        ("core module", b"\0asm\x01\0\0\0".to_vec(), "not a valid component"),
        ("wrong world", wasm(addon_host_tests::PLUGIN_NOT_A_PLUGIN), "does not export the addon:provider/plugin world"),
        ("wrong WIT version", wasm(addon_host_tests::PLUGIN_FUTURE_WIT), "addon:provider/kv@0.2.0"),
    ];
    for (name, bytes, needle) in cases {
        let reply = host.admin(Method::POST, "/admin/addons/versioned/plugins", bytes).await;
        assert_eq!(reply.status, 422, "{name}: {}", reply.text);
        assert_eq!(reply.json()["error"], "invalid_plugin", "{name}");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{name}: {message:?} lacks {needle:?}");
        assert_eq!(served_version(&host, &format!("after-{}", name.replace(' ', "-"))).await, "a", "{name}");
    }
    let after = host.admin(Method::GET, "/admin/addons/versioned/plugins", "").await.json();
    assert_eq!(before, after, "a refused upload is not stored");
    let unknown = host.admin(Method::POST, "/admin/addons/versioned/plugins/999/activate", "").await;
    assert_error(&unknown, 404, "not_found", "999");
    let nothing = host.admin(Method::POST, "/admin/addons/versioned/rollback", "").await;
    assert_error(&nothing, 404, "not_found", "no earlier version");
}

#[tokio::test]
async fn admin_api_wants_an_admin_token() {
    let host = TestHost::start();
    let body = wasm(addon_host_tests::PLUGIN_VERSIONED_B);
    let xervo = basic("myaddon", XERVO_PASSWORD);
    let cases = [
        ("no credentials", None),
        ("Bitrise token as bearer", Some(format!("Bearer {VERSIONED_TOKEN}"))),
        ("Xervo password as bearer", Some(format!("Bearer {XERVO_PASSWORD}"))),
        ("Xervo basic", Some(xervo)),
        ("admin token without Bearer", Some(ADMIN_TOKEN.to_owned())),
        ("wrong bearer", Some("Bearer test-admin-token-0123456788".to_owned())),
    ];
    for (name, auth) in cases {
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
        for (method, path) in [
            (Method::GET, "/admin/status"),
            (Method::GET, "/admin/addons/versioned/plugins"),
            (Method::POST, "/admin/addons/versioned/plugins"),
            (Method::POST, "/admin/addons/versioned/plugins/1/activate"),
            (Method::POST, "/admin/addons/versioned/rollback"),
        ] {
            let reply = host.send(method.clone(), path, &headers, body.clone()).await;
            assert_error(&reply, 401, "unauthorized", "admin token");
            let _ = name;
        }
    }
    // The admin token is not a partner credential either.
    let on_bitrise = host.provision("versioned", &format!("Bearer {ADMIN_TOKEN}"), "x", "free").await;
    assert_eq!(on_bitrise.status, 401);
    assert_eq!(host.admin(Method::GET, "/admin/status", "").await.status, 200);
    assert_eq!(
        host.admin(Method::GET, "/admin/addons/versioned/plugins", "").await.json()["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn active_version_survives_restart_without_recompiling() {
    // A compile cache of this host's own, so a cache hit proves this host compiled it before.
    let own_cache = |c: &mut addon_host::config::HostConfig| c.server.compile_cache = None;
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), own_cache);
    let status = host.admin(Method::GET, "/admin/status", "").await.json();
    let versioned = status["addons"].as_array().unwrap().iter().find(|a| a["id"] == "versioned").unwrap().clone();
    assert_eq!(versioned["loaded_from_cache"], false, "first start compiles");
    let pushed = push(&host, addon_host_tests::PLUGIN_VERSIONED_B, true).await;
    assert_eq!(pushed.status, 201);
    assert_eq!(served_version(&host, "s1").await, "b");
    assert!(host.dir.path().join("compiled").read_dir().unwrap().count() >= 2, "compiled artefacts are cached on disk");

    let host = host.restart_with(own_cache);
    assert_eq!(served_version(&host, "s2").await, "b", "the pushed version is still active");
    let status = host.admin(Method::GET, "/admin/status", "").await.json();
    let versioned = status["addons"].as_array().unwrap().iter().find(|a| a["id"] == "versioned").unwrap().clone();
    assert_eq!(versioned["loaded_from_cache"], true, "no recompilation after restart");
    assert_eq!(versioned["active"]["seq"], 2);
    let versions = host.admin(Method::GET, "/admin/addons/versioned/plugins", "").await.json();
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0]["uploaded_by"].as_str(), list[0]["active"].as_bool()), (Some("config"), Some(false)));
    assert_eq!((list[1]["uploaded_by"].as_str(), list[1]["active"].as_bool()), (Some("ops"), Some(true)));
    // Rolling back is immediate: version 1 is loaded from the cache, not recompiled.
    let back = host.admin(Method::POST, "/admin/addons/versioned/rollback", "").await;
    assert_eq!(back.json()["active"]["seq"], 1);
    let status = host.admin(Method::GET, "/admin/status", "").await.json();
    let versioned = status["addons"].as_array().unwrap().iter().find(|a| a["id"] == "versioned").unwrap().clone();
    assert_eq!(versioned["loaded_from_cache"], true, "the rollback target came from the compile cache");
    assert_eq!(served_version(&host, "s3").await, "a");
}

/// A same-plan change is answered without calling the plugin, and a version can be named by
/// a prefix of its sha256.
#[tokio::test]
async fn same_plan_changes_skip_the_plugin_and_versions_resolve_by_prefix() {
    let host = TestHost::start();
    assert_eq!(host.provision("versioned", VERSIONED_TOKEN, "p1", "free").await.status, 201);
    assert_eq!(host.change_plan("versioned", VERSIONED_TOKEN, "p1", "free").await.status, 200);
    assert!(!host.kv("versioned").contains_key("plan-by/p1"), "the plugin's change-plan ran for the same plan");
    assert_eq!(host.change_plan("versioned", VERSIONED_TOKEN, "p1", "pro").await.status, 200);
    assert_eq!(host.kv("versioned")["plan-by/p1"], "a", "a real change does call the plugin");

    let pushed = push(&host, addon_host_tests::PLUGIN_VERSIONED_B, false).await;
    let sha = pushed.json()["version"]["sha256"].as_str().unwrap().to_owned();
    let by_prefix =
        host.admin(Method::POST, &format!("/admin/addons/versioned/plugins/{}/activate", &sha[..8]), "").await;
    assert_eq!(by_prefix.status, 200, "{}", by_prefix.text);
    assert_eq!(served_version(&host, "p2").await, "b");
}

/// A deploy token manages its own add-on's plugin versions (list, push, activate, roll back;
/// recorded as the uploader) and nothing else: not another add-on's, not the host-wide admin
/// routes, not the platforms' routes.
#[tokio::test]
async fn deploy_tokens_open_their_own_addon_only() {
    let host = TestHost::start();
    let auth = format!("Bearer {DEPLOY_TOKEN}");
    let headers = [("authorization", auth.as_str())];
    let as_deployer = |method: Method, path: &'static str, body: Vec<u8>| host.send(method, path, &headers, body);
    let listed = as_deployer(Method::GET, "/admin/addons/versioned/plugins", Vec::new()).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let pushed =
        as_deployer(Method::POST, "/admin/addons/versioned/plugins", wasm(addon_host_tests::PLUGIN_VERSIONED_B)).await;
    assert_eq!(pushed.status, 201, "{}", pushed.text);
    assert_eq!(served_version(&host, "d1").await, "b");
    let back = as_deployer(Method::POST, "/admin/addons/versioned/rollback", Vec::new()).await;
    assert_eq!((back.status.as_u16(), back.json()["active"]["seq"].as_u64()), (200, Some(1)), "{}", back.text);
    let again = as_deployer(Method::POST, "/admin/addons/versioned/plugins/2/activate", Vec::new()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(served_version(&host, "d2").await, "b");
    let versions = host.admin(Method::GET, "/admin/addons/versioned/plugins", "").await.json();
    assert_eq!(versions["versions"][1]["uploaded_by"], "deployer:ci");

    // Another add-on (even one that does not exist), the host-wide routes, the platforms.
    for (method, path) in [
        (Method::GET, "/admin/addons/myaddon/plugins"),
        (Method::POST, "/admin/addons/myaddon/plugins"),
        (Method::POST, "/admin/addons/myaddon/rollback"),
        (Method::GET, "/admin/addons/nosuch/plugins"),
        (Method::GET, "/admin/status"),
        (Method::GET, "/metrics"),
    ] {
        let reply = as_deployer(method, path, wasm(addon_host_tests::PLUGIN_VERSIONED_B)).await;
        assert_error(&reply, 401, "unauthorized", "admin token");
    }
    assert_eq!(host.provision("versioned", DEPLOY_TOKEN, "x", "free").await.status, 401);
    assert_eq!(
        host.admin(Method::GET, "/admin/addons/myaddon/plugins", "").await.json()["versions"].as_array().unwrap().len(),
        1
    );
}
