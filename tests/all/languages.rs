//! Plugins in JavaScript and Python, held to the Rust example's contract: the `credentials`
//! example written in each passes the conformance kit (both platforms' sequences, the
//! refusals, hygiene) and answers exactly as the Rust one does; the host swaps between the
//! Rust and the JavaScript plugin under traffic; and a looping JavaScript call and a
//! memory-hungry Python call are stopped by the same deadline and memory cap as Rust code.
//! The components are built from source by their generators (`addon_host_tests::languages`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use addon_host_tests::languages::{self, Lang};
use axum::http::Method;

use crate::conformance::{assert_all_pass, credentials, kit};
use crate::process::write_config;
use crate::support::*;

/// The component built from `dir`, or `None` (said loudly) when its generator is not
/// available here; in CI (`ADDON_REQUIRE_GUEST_LANGS`) that is a failure.
pub(crate) async fn built(lang: Lang, dir: &'static str) -> Option<String> {
    match tokio::task::spawn_blocking(move || languages::build(lang, dir)).await.unwrap() {
        Ok(path) => Some(path.to_str().unwrap().to_owned()),
        Err(why) if languages::required() => panic!("ADDON_REQUIRE_GUEST_LANGS is set, and {dir} did not build: {why}"),
        Err(why) => {
            eprintln!("\n!!!!!!!! SKIPPED: {dir} did not build, so it was NOT tested: {why} !!!!!!!!\n");
            None
        }
    }
}

/// The compile cache every test host shares (see `support::config`).
pub(crate) const SHARED_CACHE: &str = "addon-host-tests-compiled";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_credentials_pass_the_conformance_kit() {
    for (lang, dir) in [(Lang::Js, "plugins/credentials-js"), (Lang::Python, "plugins/credentials-py")] {
        let Some(plugin) = built(lang, dir).await else { continue };
        let scratch = tempfile::tempdir().unwrap();
        let cache = std::env::temp_dir().join(SHARED_CACHE);
        let server = format!("compile_cache = {:?}\n", cache.to_str().unwrap());
        let config = write_config(scratch.path(), &format!("{server}{}", credentials(&plugin).to_toml()));
        let (ok, report) = kit(&[&plugin, "--config", config.to_str().unwrap()]).await;
        assert_all_pass(ok, &report);
    }
}

/// The same requests to the Rust, JavaScript and Python plugins give the same variables; a
/// repeat keeps the secret; a deprovision forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_answer_as_the_rust_example_does() {
    for (lang, dir) in [(Lang::Js, "plugins/credentials-js"), (Lang::Python, "plugins/credentials-py")] {
        let Some(plugin) = built(lang, dir).await else { continue };
        let host =
            TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| cfg.addons[0].plugin = plugin.clone().into());
        let rust = TestHost::start();
        for h in [&host, &rust] {
            let first = h.provision("myaddon", TOKEN, "app-1", "free").await;
            assert_eq!(first.status, 201, "{dir}: {}", first.text);
            let keys: Vec<String> = first.envs().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"], "{dir}");
            assert_eq!(first.env("MYADDON_HOST_URL"), "https://myaddon.example.com/apps/app-1");
            let secret = first.env("MYADDON_AUTH_SECRET");
            assert!(secret.len() == 48 && secret.chars().all(|c| c.is_ascii_hexdigit()), "{dir}: {secret}");
            assert_eq!(h.kv("myaddon")["secret/app-1"], secret, "{dir}: the secret is kept in KV");
            let xervo = h.xprovision("xapp", "test").await;
            assert_eq!(xervo.status, 200, "{dir}: {}", xervo.text);
            assert_eq!(xervo.json()["message"], "Credentials issued. Use them from your builds.");
            let gone = h.deprovision("myaddon", TOKEN, "app-1").await;
            assert_eq!(gone.status, 200, "{dir}: {}", gone.text);
            assert!(!h.kv("myaddon").contains_key("secret/app-1"), "{dir}: deprovision forgets the secret");
            let again = h.provision("myaddon", TOKEN, "app-1", "free").await;
            assert_ne!(again.env("MYADDON_AUTH_SECRET"), secret, "{dir}: a new provision gets a new secret");
        }
    }
}

/// The `myaddon` add-on swapped between the Rust and the JavaScript plugin twenty times while
/// four clients provision: no request fails, and the records show both plugins served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_swaps_between_rust_and_javascript_under_traffic() {
    let Some(js) = built(Lang::Js, "plugins/credentials-js").await else { return };
    let host = Arc::new(TestHost::start());
    let rust = host.service.addon("myaddon").unwrap().plugin().sha256.clone();
    let pushed =
        host.admin(Method::POST, "/admin/addons/myaddon/plugins?activate=false", std::fs::read(&js).unwrap()).await;
    assert_eq!(pushed.status, 201, "{}", pushed.text);
    let javascript = pushed.json()["version"]["sha256"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for worker in 0..4 {
        let (host, stop) = (host.clone(), stop.clone());
        traffic.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let slug = format!("w{worker}-{i}");
                let first = host.provision("myaddon", TOKEN, &slug, "free").await;
                assert_eq!(first.status, 201, "provision failed during swaps: {}", first.text);
                let again = host.provision("myaddon", TOKEN, &slug, "free").await;
                assert_eq!((again.status.as_u16(), again.text), (200, first.text), "a repeat changed during swaps");
                i += 1;
            }
            i
        }));
    }
    for _ in 0..10 {
        for sha in [&javascript, &rust] {
            let reply = host.admin(Method::POST, &format!("/admin/addons/myaddon/plugins/{sha}/activate"), "").await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for t in traffic {
        requests += t.await.expect("a request failed during the swaps");
    }
    let served: std::collections::HashSet<String> = host
        .service
        .addon("myaddon")
        .unwrap()
        .store()
        .records()
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| addon_host::service::Record::from_bytes(&bytes).unwrap().plugin_version)
        .collect();
    println!("{requests} provisions during 20 swaps, served by {} plugin(s)", served.len());
    assert!(served.contains(&rust) && served.contains(&javascript), "both plugins served: {served:?}");
}

/// The deadline and the memory cap hold for a real JS engine and a real CPython.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_js_call_and_a_memory_hungry_python_call_are_stopped() {
    let js = built(Lang::Js, "tests/guests/misbehave-js").await;
    let py = built(Lang::Python, "tests/guests/misbehave-py").await;
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        let misbehave = cfg.addons.iter().find(|a| a.id == "misbehave").unwrap().clone();
        for (id, plugin) in [("js", &js), ("py", &py)] {
            if let Some(plugin) = plugin {
                let mut addon = misbehave.clone();
                addon.id = format!("misbehave-{id}");
                addon.plugin = plugin.into();
                addon.xervo = None;
                // Room for the engine itself (JS ~20 MiB, CPython ~30 MiB), and a cap a bomb hits.
                addon.limits.memory_mib = 96;
                cfg.addons.push(addon);
            }
        }
    });
    for (id, plan, status, kind, needle) in [
        ("js", "loop", 504, "deadline_exceeded", "500 ms deadline"),
        ("js", "memory", 500, "memory_limit", "96 MiB"),
        ("py", "loop", 504, "deadline_exceeded", "500 ms deadline"),
        ("py", "memory", 500, "memory_limit", "96 MiB"),
    ] {
        let addon = format!("misbehave-{id}");
        if host.service.addon(&addon).is_err() {
            continue;
        }
        let started = Instant::now();
        let reply = host.provision(&addon, MISBEHAVE_TOKEN, &format!("{plan}-1"), plan).await;
        let elapsed = started.elapsed();
        assert_error(&reply, status, kind, needle);
        if plan == "loop" {
            assert!(elapsed < Duration::from_millis(1_500), "{addon}: the loop ran {elapsed:?}");
        }
        // The add-on still serves.
        let fine = host.provision(&addon, MISBEHAVE_TOKEN, &format!("{plan}-ok"), "normal").await;
        assert_eq!(fine.status, 201, "{addon}: {}", fine.text);
        assert_eq!(fine.env("MISBEHAVE_PLAN"), "normal");
    }
}

/// `addon-host new --lang js|python`: the project builds with its own build command (the one
/// `serve --watch` runs) and passes the conformance kit, both platforms, nothing skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_js_and_python_projects_build_and_pass_the_kit() {
    for (lang, flag) in [(Lang::Js, "js"), (Lang::Python, "python")] {
        let tools = match tokio::task::spawn_blocking(move || languages::tools(lang)).await.unwrap() {
            Ok(dir) => dir,
            Err(why) if languages::required() => panic!("ADDON_REQUIRE_GUEST_LANGS is set: {why}"),
            Err(why) => {
                eprintln!(
                    "\n!!!!!!!! SKIPPED: no {flag} generator, the {flag} template was NOT tested: {why} !!!!!!!!\n"
                );
                continue;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("hello");
        let new = tokio::process::Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
            .args(["new", "hello", "--lang", flag, "--dir"])
            .arg(&project)
            .output()
            .await
            .unwrap();
        assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
        let config = std::fs::read_to_string(project.join("addon-host.toml")).unwrap();
        let command = config.split("command = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
        let build = tokio::process::Command::new("sh")
            .args(["-c", &command])
            .current_dir(&project)
            .env("PATH", path)
            .output()
            .await
            .unwrap();
        assert!(build.status.success(), "{flag}: `{command}`: {}", String::from_utf8_lossy(&build.stderr));
        // The suite's compile cache: the generator's runtime is compiled once per run.
        let cache = std::env::temp_dir().join(SHARED_CACHE);
        let with_cache =
            config.replace("[server]\n", &format!("[server]\ncompile_cache = {:?}\n", cache.to_str().unwrap()));
        std::fs::write(project.join("addon-host.toml"), with_cache).unwrap();
        let (ok, report) = kit(&[
            project.join("plugin.wasm").to_str().unwrap(),
            "--config",
            project.join("addon-host.toml").to_str().unwrap(),
        ])
        .await;
        assert_all_pass(ok, &report);
    }
}
