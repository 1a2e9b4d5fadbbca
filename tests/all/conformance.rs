//! `addon-host test`, the conformance kit, run as a partner runs it: against the example
//! add-ons served by the real binary (`--url`), against plugin files, and against the
//! misbehaving test plugin, whose plans break each hygiene rule the kit checks.

use addon_host_tests::{AddonToml, addons_toml};
use serde_json::Value;
use tokio::process::Command;

use crate::process::{spawn_with, write_config};

/// The `credentials` example (in any language: `plugin`) as `myaddon`, configured as
/// `addon-host.toml` at the repository root configures it.
pub(crate) fn credentials(plugin: &str) -> AddonToml {
    AddonToml::new("myaddon", plugin)
        .plans(&["test", "free", "pro"])
        .bitrise("kit-myaddon-token", "kit-myaddon-sso")
        .xervo("kit-myaddon-password", "kit-myaddon-salt", &["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"])
        .config("host_url", "https://myaddon.example.com")
}

/// The example add-ons as `addon-host.toml` at the repository root configures them, each on
/// its own origin `http://{addon}.localhost:PORT` (the config's `server` lines come first).
fn examples(port: u16) -> String {
    let myaddon = credentials(addon_host_tests::PLUGIN_CREDENTIALS);
    let storage = AddonToml::new("storage", addon_host_tests::PLUGIN_QUOTA)
        .plans(&["free", "pro", "enterprise"])
        .bitrise("kit-storage-token", "kit-storage-sso")
        .xervo("kit-storage-password", "kit-storage-salt", &["STORAGE_URL", "STORAGE_QUOTA_MB"])
        .config("bucket_url", "https://storage.example.com/buckets")
        .config("free_capacity", "1000")
        .config("docs_url", "https://storage.example.com/docs/plans")
        .secret("signing_key", "kit-signing-key");
    let server = format!("web_origin = \"http://{{addon}}.localhost:{port}\"\n");
    format!("{server}{}", addons_toml(&[myaddon, storage]))
}

/// A port free now, for a host whose config must name its own port before it starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Run `addon-host test ARGS --json`: whether it exited 0, and its report.
pub(crate) async fn kit(args: &[&str]) -> (bool, Value) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_addon-host-e2e")).arg("test").args(args).arg("--json").output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

/// The outcome and detail of the check whose name starts with `name`.
fn check<'a>(report: &'a Value, name: &str) -> (&'a str, &'a str) {
    let checks = report["checks"].as_array().expect("checks");
    let found = checks.iter().find(|c| c["name"].as_str().unwrap().starts_with(name));
    let found = found.unwrap_or_else(|| panic!("no check `{name}` in {report:#}"));
    (found["outcome"].as_str().unwrap(), found["detail"].as_str().unwrap())
}

/// Every check a full run (both platforms, a plan list, a config) records, by name (the call
/// time's name carries its figures): none may vanish unnoticed.
const FULL_RUN: &[&str] = &[
    "bitrise: provision without credentials is refused",
    "bitrise: provision with a wrong token is refused",
    "bitrise: provision with Xervo's credentials is refused",
    "bitrise: the shared token in the wrong header is refused",
    "bitrise: a malformed JSON body is refused",
    "bitrise: a body without app_slug and plan is refused",
    "bitrise: an oversized body is refused",
    "bitrise: provision of an unknown plan is refused",
    "bitrise: plan change of an unknown app is refused",
    "bitrise: login for an app that is not provisioned is refused",
    "bitrise: provision answers 201 with envs",
    "bitrise: repeat 1 answers 200 with the same envs",
    "bitrise: repeat 2 answers 200 with the same envs",
    "bitrise: provision returns variables",
    "bitrise: plan change answers 2xx",
    "bitrise: plan change to an unknown plan is refused",
    "bitrise: a provision repeated after the plan change answers with envs",
    "bitrise: plan change without credentials is refused",
    "bitrise: login answers well-formed XHTML with the Beam header",
    "bitrise: a replayed SSO token is refused",
    "bitrise: an SSO token an hour old is refused",
    "bitrise: a forged SSO token is refused",
    "bitrise: a malformed SSO token is refused",
    "bitrise: deprovision without credentials is refused",
    "bitrise: deprovision answers 2xx",
    "bitrise: deprovision repeat 1 answers 2xx",
    "bitrise: deprovision repeat 2 answers 2xx",
    "bitrise: deprovision of a never-provisioned app answers 2xx",
    "bitrise: login after deprovision is refused",
    "bitrise: variable names are A-Z, 0-9 and '_'",
    "bitrise: variable names start with the prefix",
    "bitrise: variable values are not empty",
    "bitrise: *_URL values are URLs",
    "call time",
    "xervo: the manifest passes dia's rules",
    "xervo: provision without credentials is refused",
    "xervo: provision with a wrong password is refused",
    "xervo: provision with Bitrise's shared token is refused",
    "xervo: a malformed JSON body is refused",
    "xervo: provision of an unknown plan is refused",
    "xervo: provision answers 200 with an id and a config",
    "xervo: provision returns variables",
    "xervo: every declared config var is returned, not empty",
    "xervo: the same provision again answers the same resource",
    "xervo: plan change answers 200 with a message",
    "xervo: plan change to an unknown plan is refused",
    "xervo: plan change without credentials is refused",
    "xervo: plan change of an unknown resource is refused",
    "xervo: SSO with an invalid token answers 403",
    "xervo: SSO with a good token opens the dashboard",
    "xervo: a replayed SSO token is refused",
    "xervo: an SSO token an hour old is refused",
    "xervo: an SSO body without a token is refused",
    "xervo: deprovision without credentials is refused",
    "xervo: deprovision answers 200",
    "xervo: deprovision again answers 200",
    "xervo: deprovision of an unknown resource is refused",
    "xervo: a plan change after deprovision is refused",
    "xervo: SSO after deprovision still opens (dia's chain)",
    "xervo: variable names are A-Z, 0-9 and '_'",
    "xervo: variable names start with the prefix",
    "xervo: variable values are not empty",
    "xervo: *_URL values are URLs",
];

/// The names of the checks in `report`, without what varies by add-on and run: the call
/// time's figures and the variables' prefix.
fn names(report: &Value) -> Vec<String> {
    let checks = report["checks"].as_array().expect("checks");
    let general = |name: &str| match name.split_once(": variable names start with ") {
        _ if name.starts_with("call time") => "call time".to_owned(),
        Some((protocol, _)) => format!("{protocol}: variable names start with the prefix"),
        None => name.to_owned(),
    };
    checks.iter().map(|c| general(c["name"].as_str().unwrap())).collect()
}

/// The build API's checks of a full run with `build_api` on, in order, and the check they
/// follow: the last three after the repeated provision, the last after deprovision.
const BUILD_API: [(&str, &str); 4] = [
    (
        "bitrise: a provision repeated after the plan change answers with envs",
        "bitrise: the build API refuses a request without a token",
    ),
    ("bitrise: the build API refuses a request without a token", "bitrise: the build API refuses a wrong token"),
    (
        "bitrise: the build API refuses a wrong token",
        "bitrise: the build API answers with the token the provision issued",
    ),
    ("bitrise: login after deprovision is refused", "bitrise: the build API refuses the app's token after deprovision"),
];

pub(crate) fn assert_all_pass(ok: bool, report: &Value) {
    assert!(ok, "the kit failed: {report:#}");
    assert_eq!((report["failed"].as_u64(), report["skipped"].as_u64()), (Some(0), Some(0)), "{report:#}");
    let mut full: Vec<&str> = FULL_RUN.to_vec();
    // An add-on with a build API (the web templates) has its four checks too.
    if names(report).iter().any(|n| n.contains("the build API")) {
        for (after, check) in BUILD_API {
            let at = full.iter().position(|n| *n == after).unwrap();
            full.insert(at + 1, check);
        }
    }
    assert_eq!(names(report), full, "the checks of a full run: {report:#}");
}

#[tokio::test]
async fn the_kit_passes_the_served_examples_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = spawn_with(dir.path(), &examples(port), &["--listen", &listen]).await;
    let config = server.config.to_str().unwrap();
    for addon in ["myaddon", "storage"] {
        let url = format!("http://{}/addons/{addon}", server.addr);
        let (ok, report) = kit(&["--url", &url, "--config", config]).await;
        assert_all_pass(ok, &report);
        // A few of the checks neither platform's kit has, by name.
        for name in [
            "bitrise: a replayed SSO token is refused",
            "bitrise: provision with Xervo's credentials is refused",
            "bitrise: an oversized body is refused",
            "xervo: provision with Bitrise's shared token is refused",
            "xervo: an SSO token an hour old is refused",
            "call time",
        ] {
            assert_eq!(check(&report, name).0, "pass", "{name}: {report:#}");
        }
    }
    // Without a config, with the credentials as flags: Bitrise's checks only.
    let url = format!("http://{}/addons/myaddon", server.addr);
    let flags = ["--bitrise-token", "kit-myaddon-token", "--sso-secret", "kit-myaddon-sso", "--plans", "test,pro"];
    let (ok, report) = kit(&[&["--url", &url], &flags[..]].concat()).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    assert_eq!(check(&report, "xervo").0, "skip");
    // Without a plan list the unknown plan is offered all the same: this provider refuses it.
    let (outcome, detail) = check(&report, "bitrise: provision of an unknown plan is refused");
    assert!(outcome == "pass" && detail.contains("the provider's own refusal"), "{outcome}: {detail}");
    assert_eq!(check(&report, "bitrise: plan change to an unknown plan is refused").0, "pass", "{report:#}");
    // Wrong credentials: the sequence fails, and says why.
    let (ok, report) = kit(&["--url", &url, "--bitrise-token", "wrong", "--sso-secret", "x"]).await;
    assert!(!ok);
    let (outcome, detail) = check(&report, "bitrise: provision answers 201");
    assert!(outcome == "fail" && detail.contains("expected 201, got status 401"), "{detail}");
}

#[tokio::test]
async fn the_kit_passes_the_example_plugin_files() {
    let dir = tempfile::tempdir().unwrap();
    // The kit's own host puts each add-on on `{addon}.localhost` at the port it listens on.
    let config = write_config(dir.path(), &examples(8080));
    let config = config.to_str().unwrap();
    for plugin in [addon_host_tests::PLUGIN_CREDENTIALS, addon_host_tests::PLUGIN_QUOTA] {
        let (ok, report) = kit(&[plugin, "--config", config]).await;
        assert_all_pass(ok, &report);
        assert_eq!(check(&report, "xervo: the manifest passes dia's rules").0, "pass");
    }
    // An add-on offered on Xervo alone: Bitrise's checks are skipped, and the call time is
    // measured with Xervo provisions.
    let xervo_only = AddonToml::new("myaddon", addon_host_tests::PLUGIN_CREDENTIALS)
        .plans(&["test", "pro"])
        .xervo("kit-myaddon-password", "kit-myaddon-salt", &["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"])
        .config("host_url", "https://myaddon.example.com");
    let only = tempfile::tempdir().unwrap();
    let only_config = write_config(only.path(), &xervo_only.to_toml());
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_CREDENTIALS, "--config", only_config.to_str().unwrap()]).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    assert_eq!(check(&report, "bitrise").0, "skip");
    assert_eq!(check(&report, "call time").0, "pass", "{report:#}");
    assert_eq!(check(&report, "xervo: SSO with a good token opens the dashboard").0, "pass");

    // With nothing but the plugin file, the kit makes up credentials and learns the Xervo
    // manifest from a first provision; the credentials plugin needs its `host_url`, and the
    // kit says so.
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_CREDENTIALS]).await;
    assert!(!ok);
    let (outcome, detail) = check(&report, "bitrise: provision answers 201");
    assert!(outcome == "fail" && detail.contains("config `host_url` is not set"), "{detail}");
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_VERSIONED_A, "--addon", "versioned"]).await;
    assert!(ok, "{report:#}");
    assert_eq!(check(&report, "xervo: SSO with a good token opens the dashboard").0, "pass", "{report:#}");
}

/// Each hygiene rule, broken by one plan of the misbehaving plugin: the kit fails, names the
/// rule and shows the offending variable. The host itself refuses some replies (an empty
/// value); the kit then fails the provision with the host's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_plugins_that_break_each_hygiene_rule() {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = AddonToml::new("misbehave", addon_host_tests::PLUGIN_MISBEHAVE)
        .bitrise("kit-misbehave-token", "kit-misbehave-sso")
        .to_toml();
    // The suite's shared compile cache: each run starts without compiling the plugin again.
    let cache = std::env::temp_dir().join("addon-host-tests-compiled");
    let server = format!("compile_cache = {:?}\n", cache.to_str().unwrap());
    let config = write_config(dir.path(), &format!("{server}{misbehave}"));
    let config = config.to_str().unwrap();
    // `slow` spins 100 ms a call: over half of this deadline (its calls may also time out).
    let slow_dir = tempfile::tempdir().unwrap();
    let slow = write_config(slow_dir.path(), &format!("{server}{misbehave}[addon.limits]\ndeadline_ms = 150\n"));
    let slow = slow.to_str().unwrap();
    let cases = [
        ("lower-name,normal", config, "bitrise: variable names are A-Z", "MISBEHAVE_lower"),
        ("foreign-var,normal", config, "bitrise: variable names start with MISBEHAVE_", "OTHER_TOKEN"),
        ("blank-value,normal", config, "bitrise: variable values are not empty", "MISBEHAVE_BLANK"),
        ("bad-url,normal", config, "bitrise: *_URL values are URLs", "MISBEHAVE_URL=\"not a url\""),
        ("empty-value,normal", config, "bitrise: provision answers 201", "`MISBEHAVE_EMPTY` has an empty value"),
        ("slow,normal", slow, "call time", "under load"),
        // A bad variable on plan change only: seen in the provision Bitrise repeats after it.
        ("normal,lower-on-change", config, "bitrise: variable names are A-Z", "MISBEHAVE_changed"),
        // No variables at all: every naming rule holds trivially, so the kit says so.
        ("no-vars,normal", config, "bitrise: provision returns variables", "no variables at all"),
    ];
    let runs = cases.iter().map(|(plans, config, ..)| {
        let plans = plans.to_string();
        async move {
            kit(&[addon_host_tests::PLUGIN_MISBEHAVE, "--config", config, "--plans", &plans, "--timed-calls", "5"])
                .await
        }
    });
    let reports = futures::future::join_all(runs).await;
    for ((plan, _, name, needle), (ok, report)) in cases.iter().zip(reports) {
        assert!(!ok, "plan {plan} passed: {report:#}");
        let (outcome, detail) = check(&report, name);
        assert!(outcome == "fail" && detail.contains(needle), "plan {plan}: {name} is {outcome}: {detail}");
        // Only that rule fails: the rest of the sequence still passes (a failed provision
        // stops the sequence; a slow plugin may also miss its deadline elsewhere).
        let failed: Vec<&str> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outcome"] == "fail")
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            failed.iter().all(|f| f.starts_with(name)) || ["empty-value,normal", "slow,normal"].contains(plan),
            "plan {plan}: {failed:?}"
        );
    }
    // An add-on that really exports nothing passes once the partner says so.
    let (ok, report) = kit(&[
        addon_host_tests::PLUGIN_MISBEHAVE,
        "--config",
        config,
        "--plans",
        "no-vars,normal",
        "--timed-calls",
        "5",
        "--allow-empty",
    ])
    .await;
    assert!(ok, "{report:#}");
    let (outcome, detail) = check(&report, "bitrise: provision returns variables");
    assert!(outcome == "pass" && detail.contains("allowed by --allow-empty"), "{detail}");
    // The well-behaved plan of the same plugin passes.
    let (ok, report) =
        kit(&[addon_host_tests::PLUGIN_MISBEHAVE, "--config", config, "--plans", "normal", "--timed-calls", "5"]).await;
    assert!(ok, "{report:#}");
}

/// A Xervo provider (a stand-in, not addon-host) whose DELETE answers 200 and changes
/// nothing: the kit looks at what Xervo can observe afterwards — the resource still takes a
/// plan change — and fails the deprovision.
#[tokio::test]
async fn the_kit_fails_a_deprovision_that_changes_nothing() {
    use axum::Json;
    use axum::routing::{post, put};
    use serde_json::json;
    let config = || json!({ "NOOP_URL": "https://noop.example.com/r1" });
    let app = axum::Router::new()
        .route("/addons/noop/resources", post(move || async move { Json(json!({ "id": "r1", "config": config() })) }))
        .route(
            "/addons/noop/resources/{id}",
            put(move || async move { Json(json!({ "message": "changed", "config": config() })) })
                .delete(|| async { Json(json!({ "message": "gone (not really)" })) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/addons/noop");
    let flags = ["--xervo-password", "noop-password", "--xervo-salt", "noop-salt", "--xervo-vars", "NOOP_URL"];
    let (ok, report) = kit(&[&["--url", url.as_str(), "--timed-calls", "2"], &flags[..]].concat()).await;
    assert!(!ok, "{report:#}");
    assert_eq!(check(&report, "xervo: deprovision answers 200").0, "pass", "the no-op itself looks fine");
    let (outcome, detail) = check(&report, "xervo: a plan change after deprovision is refused");
    assert!(outcome == "fail" && detail.contains("got status 200"), "{outcome}: {detail}");
}

/// With `build_api` on, the kit calls the build API with the token the first provision
/// issued (answered by the plugin), without one and with a wrong one (refused), and again
/// after deprovision (refused). A plugin that serves no pages fails it: the platform's builds
/// would get the host's refusal. Red when the host accepted a token after deprovision, or the
/// check did not run.
#[tokio::test]
async fn the_kit_calls_the_build_api_with_the_issued_token() {
    let dir = tempfile::tempdir().unwrap();
    let misbehave = AddonToml::new("misbehave", addon_host_tests::PLUGIN_MISBEHAVE)
        .plans(&["normal", "pro"])
        .bitrise("kit-misbehave-token", "kit-misbehave-sso")
        .build_api();
    let config = write_config(dir.path(), &misbehave.to_toml());
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_MISBEHAVE, "--config", config.to_str().unwrap()]).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    for name in [
        "bitrise: the build API refuses a request without a token",
        "bitrise: the build API refuses a wrong token",
        "bitrise: the build API answers with the token the provision issued",
        "bitrise: the build API refuses the app's token after deprovision",
    ] {
        assert_eq!(check(&report, name).0, "pass", "{name}: {report:#}");
    }

    let pageless = tempfile::tempdir().unwrap();
    // The quota example has no HTTP handler.
    let storage = AddonToml::new("storage", addon_host_tests::PLUGIN_QUOTA)
        .plans(&["free", "pro"])
        .bitrise("kit-storage-token", "kit-storage-sso")
        .config("bucket_url", "https://storage.example.com/buckets")
        .config("free_capacity", "1000")
        .config("docs_url", "https://storage.example.com/docs/plans")
        .secret("signing_key", "kit-signing-key")
        .build_api();
    let config = write_config(pageless.path(), &storage.to_toml());
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_QUOTA, "--config", config.to_str().unwrap()]).await;
    assert!(!ok, "{report:#}");
    let (outcome, detail) = check(&report, "bitrise: the build API answers with the token the provision issued");
    assert!(outcome == "fail" && detail.contains("build it for the `web` world"), "{outcome}: {detail}");
}

/// An add-on that lists no plans leaves them to its plugin: the kit still offers a plan no
/// add-on has, on a resource of its own. The quota example refuses it itself (PASS, said to be
/// the plugin's refusal, and the plan change to it is checked too); the credentials example
/// takes any plan (SKIP saying so, and the probe's resource is deprovisioned). It was always a
/// SKIP, so a plugin's own refusal was never tested.
#[tokio::test]
async fn with_no_plan_list_the_kit_tests_the_plugins_own_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let storage = AddonToml::new("storage", addon_host_tests::PLUGIN_QUOTA)
        .bitrise("kit-storage-token", "kit-storage-sso")
        .config("bucket_url", "https://storage.example.com/buckets")
        .config("free_capacity", "1000")
        .config("docs_url", "https://storage.example.com/docs/plans")
        .secret("signing_key", "kit-signing-key");
    let config = write_config(dir.path(), &storage.to_toml());
    let config = config.to_str().unwrap();
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_QUOTA, "--config", config, "--plans", "free,pro"]).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    let (outcome, detail) = check(&report, "bitrise: provision of an unknown plan is refused");
    assert!(outcome == "pass" && detail.contains("the provider's own refusal"), "{outcome}: {detail}");
    assert_eq!(check(&report, "bitrise: plan change to an unknown plan is refused").0, "pass", "{report:#}");

    let anything = tempfile::tempdir().unwrap();
    let myaddon = AddonToml::new("myaddon", addon_host_tests::PLUGIN_CREDENTIALS)
        .bitrise("kit-myaddon-token", "kit-myaddon-sso")
        .config("host_url", "https://myaddon.example.com");
    let config = write_config(anything.path(), &myaddon.to_toml());
    let (ok, report) = kit(&[addon_host_tests::PLUGIN_CREDENTIALS, "--config", config.to_str().unwrap()]).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    let (outcome, detail) = check(&report, "bitrise: provision of an unknown plan is refused");
    assert!(outcome == "skip" && detail.contains("accepted `kit-no-such-plan`"), "{outcome}: {detail}");
    assert_eq!(check(&report, "bitrise: plan change to an unknown plan is refused").0, "skip", "{report:#}");
}
