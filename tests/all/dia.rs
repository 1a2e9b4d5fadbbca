//! Xervo's own test tool, `dia` 0.3.2 from npm, run non-interactively against the real binary
//! with a manifest the host printed itself. dia exits 0 even when a check fails, so its
//! output is parsed: no `[FAIL]` may appear, and every step must print `[PASS]`.
//!
//! dia is installed with npm into `target/dia-0.3.2` on first use (`.ci/run` does it up
//! front). Without npm the test is skipped, loudly, except where `ADDON_REQUIRE_DIA` is set
//! (`.ci/run` sets it): there it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use addon_host_tests::AddonToml;
use tokio::process::Command;

use crate::process::{exchange, spawn_with};
use crate::support::basic;

const PASSWORD: &str = "dia-password-0123456789abcdef";
const SALT: &str = "dia-salt-0123456789abcdef";

/// `plugin` (the credentials example in any language) as `myaddon` on Xervo.
fn config(plugin: &str) -> String {
    AddonToml::new("myaddon", plugin)
        .plans(&["test", "free", "pro"])
        .xervo(PASSWORD, SALT, &["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"])
        .regions(&["us-east-1"])
        .config("host_url", "https://myaddon.example.com")
        .to_toml()
}

/// The dia executable, installing it with npm if needed; `None` when npm is missing.
async fn dia() -> Option<PathBuf> {
    let prefix = Path::new(addon_host_tests::REPO_ROOT).join("target/dia-0.3.2");
    let bin = prefix.join("node_modules/.bin/dia");
    if bin.exists() {
        return Some(bin);
    }
    if Command::new("npm").arg("--version").output().await.is_err() {
        return None;
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
        .arg(&prefix)
        .arg("dia@0.3.2")
        .status()
        .await
        .expect("running npm");
    assert!(status.success(), "npm install dia@0.3.2 failed");
    Some(bin)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Run one dia command in `dir` and return its output with colours stripped, failing the
/// test on any `[FAIL]`.
async fn run_dia(dia: &Path, dir: &Path, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(dia)
            .args(args)
            .current_dir(dir)
            .env("HOME", dir)
            // `{addon}.localhost` is this machine, as browsers have it (dia's Node does not).
            .env("NODE_OPTIONS", format!("--require {}/tests/data/localhost.cjs", addon_host_tests::REPO_ROOT))
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("dia {args:?} hung"))
    .expect("running dia");
    let text = strip_ansi(&String::from_utf8_lossy(&output.stdout));
    println!("$ dia {}\n{text}", args.join(" "));
    assert!(
        output.status.success(),
        "dia {args:?} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains("[FAIL]"), "dia {args:?} reported a failure:\n{text}");
    assert!(text.contains("[PASS]"), "dia {args:?} checked nothing:\n{text}");
    text
}

#[tokio::test]
async fn dia_passes_against_the_binary() {
    dia_against(addon_host_tests::PLUGIN_CREDENTIALS).await;
}

/// The same, against the credentials example written in JavaScript and in Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dia_passes_against_the_js_and_python_plugins() {
    use addon_host_tests::languages::Lang;
    for (lang, dir) in [(Lang::Js, "plugins/credentials-js"), (Lang::Python, "plugins/credentials-py")] {
        if let Some(plugin) = crate::languages::built(lang, dir).await {
            dia_against(&plugin).await;
        }
    }
}

async fn dia_against(plugin: &str) {
    let Some(dia) = dia().await else {
        // CI sets ADDON_REQUIRE_DIA: there a missing kit is a failure, not a skip.
        assert!(std::env::var_os("ADDON_REQUIRE_DIA").is_none(), "ADDON_REQUIRE_DIA is set but npm is missing");
        eprintln!("\n!!!!!!!! SKIPPED: npm is not installed, so Xervo's dia kit was NOT run !!!!!!!!\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The suite's shared compile cache: each plugin is compiled once per run.
    let cache = std::env::temp_dir().join(crate::languages::SHARED_CACHE);
    // Each add-on on its own origin, as the repository's config has it: SSO lands there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server_settings =
        format!("compile_cache = {:?}\nweb_origin = \"http://{{addon}}.localhost:{port}\"\n", cache.to_str().unwrap());
    let listen = format!("127.0.0.1:{port}");
    let mut server =
        spawn_with(dir.path(), &format!("{server_settings}{}", config(plugin)), &["--listen", &listen]).await;
    let base_url = format!("http://{}", server.addr);

    // The manifest, printed by the host itself.
    let manifest = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .args(["manifest", "myaddon", "--base-url", &base_url, "--config"])
        .arg(&server.config)
        .output()
        .await
        .unwrap();
    assert!(manifest.status.success(), "{}", String::from_utf8_lossy(&manifest.stderr));
    std::fs::write(dir.path().join("addon-manifest.json"), &manifest.stdout).unwrap();

    run_dia(&dia, dir.path(), &["test", "manifest"]).await;
    run_dia(&dia, dir.path(), &["test", "provision"]).await;
    // dia's provision body is fixed, so repeating it replays the same resource: its id.
    let body = r#"{"options":{},"callback_url":"http://localhost:8000/callback/999","modulus_id":"myaddon999","email":"myaddon999@example.com","plan":"test","region":"us-east-1"}"#;
    let auth = basic("myaddon", PASSWORD);
    let (status, reply) = exchange(
        &server.addr,
        "POST",
        "/addons/myaddon/resources",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let id = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["id"].as_str().unwrap().to_owned();

    run_dia(&dia, dir.path(), &["test", "planchange", &id, "pro"]).await;
    let sso = run_dia(&dia, dir.path(), &["test", "sso", &id]).await;
    assert_eq!(sso.matches("check successful single sign on response [PASS]").count(), 2, "{sso}");
    run_dia(&dia, dir.path(), &["test", "deprovision", &id]).await;
    // The whole chain: provision → planchange → deprovision → sso on the deprovisioned id.
    let chain = run_dia(&dia, dir.path(), &["test"]).await;
    assert!(chain.matches("[PASS]").count() >= 6, "{chain}");

    server.child.kill().await.unwrap();
}
