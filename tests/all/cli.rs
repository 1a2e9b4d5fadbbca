//! The operator's side of hot upgrades, through the real binary: the admin token generated
//! at first start and shown once, the `plugin` CLI verbs, and `serve --watch`.

use std::time::{Duration, Instant};

use addon_host_tests::AddonToml;
use tokio::process::Command;

use crate::process::{Server, exchange, spawn, spawn_command, spawn_with};

const TOKEN: &str = "cli-shared-token";

fn config(plugin: &str) -> String {
    AddonToml::new("versioned", plugin).bitrise(TOKEN, "cli-sso").to_toml()
}

/// Run `addon-host plugin ARGS` against `server`; returns (success, stdout + stderr).
async fn plugin_cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .arg("plugin")
        .args(args)
        .args(["--url", &format!("http://{}", server.addr), "--token", token])
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn version_served(server: &Server, slug: &str) -> String {
    let body = format!(r#"{{"app_slug":"{slug}","api_token":"t","plan":"free"}}"#);
    let headers = [("Authentication", TOKEN), ("Content-Type", "application/json")];
    let (status, reply) = exchange(&server.addr, "POST", "/addons/versioned/provision", &headers, &body).await;
    assert!(status == 201 || status == 200, "{status} {reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    v["envs"].as_array().unwrap().iter().find(|e| e["key"] == "VERSIONED_VERSION").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn plugin_cli_pushes_lists_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path(), &config(addon_host_tests::PLUGIN_VERSIONED_A)).await;
    let line =
        server.banner.iter().find(|l| l.starts_with("addon-host admin token")).expect("token shown at first start");
    let token = line.rsplit(' ').next().unwrap().to_owned();

    let (ok, out) = plugin_cli(&server, &token, &["push", "versioned", addon_host_tests::PLUGIN_VERSIONED_B]).await;
    assert!(ok, "{out}");
    assert!(out.contains("\"seq\": 2") && out.contains("\"uploaded_by\": \"admin\""), "{out}");
    assert_eq!(version_served(&server, "p1").await, "b");
    let (ok, out) = plugin_cli(&server, &token, &["list", "versioned"]).await;
    assert!(ok && out.matches("\"sha256\"").count() == 2, "{out}");
    let (ok, out) = plugin_cli(&server, &token, &["rollback", "versioned"]).await;
    assert!(ok && out.contains("\"seq\": 1"), "{out}");
    assert_eq!(version_served(&server, "p2").await, "a");
    let (ok, out) = plugin_cli(&server, &token, &["activate", "versioned", "2"]).await;
    assert!(ok, "{out}");
    assert_eq!(version_served(&server, "p3").await, "b");
    let (ok, out) = plugin_cli(&server, &token, &["status"]).await;
    assert!(ok && out.contains("\"versioned\""), "{out}");
    // `--no-activate` stores a version without serving it.
    let mut third = std::fs::read(addon_host_tests::PLUGIN_VERSIONED_A).unwrap();
    third.extend_from_slice(&[0x00, 0x06, 0x04, b't', b'e', b's', b't', b'3']);
    let third_path = dir.path().join("third.wasm");
    std::fs::write(&third_path, third).unwrap();
    let (ok, out) =
        plugin_cli(&server, &token, &["push", "versioned", third_path.to_str().unwrap(), "--no-activate"]).await;
    assert!(ok && out.contains("\"seq\": 3") && out.contains("\"activated\": false"), "{out}");
    assert_eq!(version_served(&server, "p-no-activate").await, "b", "--no-activate must not swap");

    // Refusals reach the operator with their reason and a failing exit code.
    let (ok, out) = plugin_cli(&server, &token, &["push", "versioned", addon_host_tests::PLUGIN_FUTURE_WIT]).await;
    assert!(!ok && out.contains("422") && out.contains("addon:provider/kv@0.2.0"), "{out}");
    let (ok, out) = plugin_cli(&server, "not-the-token", &["status"]).await;
    assert!(!ok && out.contains("401"), "{out}");
    assert_eq!(version_served(&server, "p4").await, "b");

    // The token is shown once: a restart does not print it again, and it still works.
    server.child.kill().await.unwrap();
    let server = spawn(dir.path(), &config(addon_host_tests::PLUGIN_VERSIONED_A)).await;
    assert!(!server.banner.iter().any(|l| l.contains("admin token")), "{:?}", server.banner);
    let (ok, out) = plugin_cli(&server, &token, &["status"]).await;
    assert!(ok, "{out}");
    assert_eq!(version_served(&server, "p5").await, "b", "the pushed version survived the restart");
}

#[tokio::test]
async fn watch_mode_reloads_a_rebuilt_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("versioned.wasm");
    std::fs::copy(addon_host_tests::PLUGIN_VERSIONED_A, &plugin).unwrap();
    let server = spawn_with(dir.path(), &config(plugin.to_str().unwrap()), &["--watch"]).await;
    assert_eq!(version_served(&server, "w0").await, "a");

    // "Rebuild": the new version lands on disk; it serves once the watcher has seen it.
    std::fs::copy(addon_host_tests::PLUGIN_VERSIONED_B, &plugin).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while version_served(&server, &format!("w{n}")).await != "b" {
        assert!(started.elapsed() < Duration::from_secs(30), "the rebuilt plugin was never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    // A broken build is refused (the watcher says so); the running version keeps serving.
    std::fs::write(&plugin, b"half-written garbage").unwrap();
    let refused = server.logged("changed plugin refused", Duration::from_secs(30)).await;
    assert!(refused, "the watcher never reported the broken build");
    assert_eq!(version_served(&server, "after-garbage").await, "b");

    // A build written slowly, in pieces 30 ms apart (changes must stop for 300 ms), is
    // loaded once it is whole: no half-written file is ever tried (red without the debounce:
    // changes are acted on once they have stopped for 300 ms). The pieces are not synced to
    // disk: the watcher sees writes, and an fsync on a busy CI disk can itself take longer
    // than the quiet period.
    let refusals = || server.log.lock().unwrap().iter().filter(|l| l.contains("changed plugin refused")).count();
    assert_eq!(refusals(), 1);
    let bytes = std::fs::read(addon_host_tests::PLUGIN_VERSIONED_A).unwrap();
    let mut file = std::fs::File::create(&plugin).unwrap();
    for piece in bytes.chunks(bytes.len() / 12 + 1) {
        std::io::Write::write_all(&mut file, piece).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    drop(file);
    let started = Instant::now();
    while version_served(&server, &format!("slow{n}")).await != "a" {
        assert!(started.elapsed() < Duration::from_secs(30), "the slowly written plugin was never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    assert_eq!(refusals(), 1, "a half-written plugin was tried: {:?}", server.log.lock().unwrap());
}

/// `plugin logs` shows an add-on's recent plugin lines to its deployer; `--follow` prints new
/// ones as the plugin logs them. Another add-on's deployer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logs_show_and_follow_an_addons_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = AddonToml::new("misbehave", addon_host_tests::PLUGIN_MISBEHAVE).bitrise(TOKEN, "cli-sso").to_toml();
    let deployers = "\n[[addon.deployers]]\nname = \"ci\"\ntoken = \"misbehave-deploy-token\"\n";
    let versioned = config(addon_host_tests::PLUGIN_VERSIONED_A);
    let other = "\n[[addon.deployers]]\nname = \"other\"\ntoken = \"versioned-deploy-token\"\n";
    let server = spawn(dir.path(), &format!("{misbehave}{deployers}{versioned}{other}")).await;
    let refuse = |slug: &str| {
        let body = format!(r#"{{"app_slug":"{slug}","api_token":"t","plan":"log-then-refuse"}}"#);
        let addr = server.addr.clone();
        async move {
            let headers = [("Authentication", TOKEN), ("Content-Type", "application/json")];
            assert_eq!(exchange(&addr, "POST", "/addons/misbehave/provision", &headers, &body).await.0, 422);
        }
    };
    refuse("first").await;
    let (ok, out) = plugin_cli(&server, "misbehave-deploy-token", &["logs", "misbehave"]).await;
    assert!(ok, "{out}");
    assert!(out.contains(" WARN provision: misbehave logs before refusing first"), "{out}");
    let (ok, out) = plugin_cli(&server, "versioned-deploy-token", &["logs", "misbehave"]).await;
    assert!(!ok && out.contains("401"), "{out}");

    let mut follow = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .args(["plugin", "logs", "misbehave", "--follow"])
        .args(["--url", &format!("http://{}", server.addr), "--token", "misbehave-deploy-token"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.contains("before refusing first"), "{first}");
    refuse("second").await;
    let next = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    let next = next.expect("--follow printed nothing new").unwrap().unwrap();
    assert!(next.contains("before refusing second"), "{next}");
    follow.kill().await.unwrap();
}

/// `addon-host new` makes a project outside this repository that builds for wasm32-wasip2
/// with the README's command, passes its own native `cargo test` (the SDK's host double) and
/// the conformance kit (`addon-host test`, both platforms), and is served by its generated
/// config: a Bitrise provision with the generated token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_project_builds_tests_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello");
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");
    let out = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .args(["new", "hello", "--dir"])
        .arg(&project)
        .args(["--sdk-path", sdk])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let next = printed.lines().find_map(|l| l.strip_prefix("next: ")).expect("`new` says what to run next").to_owned();
    assert_eq!(next, format!("cd {} && addon-host serve --watch", project.display()));
    // An id with '-': its variables use '_', and Xervo (which cannot take such an id) is left out.
    let dashed = dir.path().join("dashed");
    let out = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .args(["new", "hello-world", "--dir"])
        .arg(&dashed)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(dashed.join("src/lib.rs")).unwrap().contains("\"HELLO_WORLD_URL\""));
    let dashed_config = std::fs::read_to_string(dashed.join("addon-host.toml")).unwrap();
    assert!(dashed_config.contains("id = \"hello-world\"") && !dashed_config.contains("[addon.xervo]"));
    let refused = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e")).args(["new", "Bad_Name"]).output().await.unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("cannot be an add-on id"));

    // The workspace's lock file pins the same dependency versions, so the build is hermetic.
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let cargo = |args: &'static [&'static str]| {
        let mut command = Command::new(env!("CARGO"));
        command.args(args).current_dir(&project).env_remove("CARGO_TARGET_DIR");
        command
    };
    let build = cargo(&["build", "--release", "--target", "wasm32-wasip2"]).output().await.unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let test = cargo(&["test"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&test.stdout);
    let one = text.contains("test result: ok. 1 passed;");
    assert!(test.status.success() && one, "{text}{}", String::from_utf8_lossy(&test.stderr));

    let config = project.join("addon-host.toml");
    // As the scaffold's README says: no --config, `./addon-host.toml` is read as `serve` does
    // (without it the plugin's config is missing and the first provision fails).
    let kit = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .args(["test", "target/wasm32-wasip2/release/hello.wasm"])
        .current_dir(&project)
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&kit.stdout);
    assert!(kit.status.success(), "{report}{}", String::from_utf8_lossy(&kit.stderr));
    assert!(!report.contains("FAIL") && !report.contains("SKIP"), "{report}");
    assert!(report.contains("PASS  xervo: SSO with a good token opens the dashboard"), "{report}");

    let generated = std::fs::read_to_string(&config).unwrap();
    let token = generated.split("shared_token = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    // The partner's loop, started with exactly the command `new` printed (from its parent
    // folder, `addon-host` on the PATH, no --config): it builds, serves, and rebuilds on each
    // saved change. Only the port is the test's: ADDON_HOST_LISTEN, as a partner may set it.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_addon-host-e2e"), bin.join("addon-host")).unwrap();
    let mut command = Command::new("sh");
    command
        // `exec`: the server is the shell's process, so the test's kill reaches it.
        .args(["-c", &next.replace("&& addon-host", "&& exec addon-host")])
        .current_dir(dir.path())
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("ADDON_HOST_LISTEN", "127.0.0.1:0")
        .env_remove("ADDON_HOST_CONFIG")
        .env_remove("CARGO_TARGET_DIR");
    let server = spawn_command(command, config.clone()).await;
    let headers = [("Authentication", token.as_str()), ("Content-Type", "application/json")];
    let provision = |slug: String| {
        let (addr, headers) = (server.addr.clone(), headers);
        async move {
            let body = format!(r#"{{"app_slug":"{slug}","api_token":"t","plan":"free"}}"#);
            exchange(&addr, "POST", "/addons/hello/provision", &headers, &body).await
        }
    };
    let (status, reply) = provision("app-1".into()).await;
    assert_eq!(status, 201, "{reply}");
    assert!(reply.contains("HELLO_URL") && reply.contains("https://hello.example.com/apps/app-1"), "{reply}");

    let source = project.join("src/lib.rs");
    let original = std::fs::read_to_string(&source).unwrap();
    assert!(original.contains(r#""{}/apps/{}""#), "the template changed: {original}");
    // Two edits, each saved by rename as `sed -i` and many editors do: both are served.
    for version in ["v2", "v3"] {
        let edited = original.replace(r#""{}/apps/{}""#, &format!(r#""{{}}/{version}/apps/{{}}""#));
        let temp = project.join("src/.lib.rs.swp");
        std::fs::write(&temp, edited).unwrap();
        std::fs::rename(&temp, &source).unwrap();
        let started = Instant::now();
        for n in 0.. {
            let (status, reply) = provision(format!("{version}-{n}")).await;
            assert_eq!(status, 201, "{reply}");
            if reply.contains(&format!("https://hello.example.com/{version}/apps/{version}-{n}")) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(180), "the {version} edit was never served: {reply}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // A change that does not compile: the compiler's error is shown, the last good build serves.
    std::fs::write(&source, format!("{original}\nfn broken( {{\n")).unwrap();
    assert!(server.logged("build failed", Duration::from_secs(180)).await, "the failed build was not reported");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("error: ") && log.contains("src/lib.rs"), "the build error is not shown: {log}");
    let (status, reply) = provision("after-broken".into()).await;
    assert!(status == 201 && reply.contains("/v3/apps/after-broken"), "{reply}");
}
