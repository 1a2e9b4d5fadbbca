//! What operators see: `/metrics` moved by real traffic (per add-on counters and histogram
//! counts), request ids from the client to the response, the error body and every log line
//! (the plugin's included), JSON logs and the separate metrics listener of the real binary.

use axum::http::Method;

use crate::process::*;
use crate::support::*;

/// The value of the sample `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let matches = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

#[track_caller]
fn expect(text: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    let got = sample(text, name, labels);
    assert_eq!(got, Some(want), "{name}{labels:?} in:\n{text}");
}

async fn scrape(host: &TestHost) -> String {
    let reply = host.admin(Method::GET, "/metrics", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    reply.text
}

#[tokio::test]
async fn metrics_count_what_traffic_did_per_addon() {
    let host = TestHost::start();
    let provision = "/addons/{addon_id}/provision";
    assert_eq!(host.provision("myaddon", TOKEN, "m1", "free").await.status, 201);
    assert_eq!(host.provision("myaddon", TOKEN, "m1", "free").await.status, 200);
    assert_eq!(host.provision("myaddon", "wrong-token-000000", "m2", "free").await.status, 401);
    assert_eq!(host.provision("misbehave", MISBEHAVE_TOKEN, "t1", "panic").await.status, 500);
    assert_eq!(host.provision("misbehave", MISBEHAVE_TOKEN, "d1", "loop").await.status, 504);
    assert_eq!(host.provision("misbehave", MISBEHAVE_TOKEN, "r1", "write-then-refuse").await.status, 422);
    assert_eq!(host.send(Method::GET, "/addons/nobody/provision", &[], "").await.status, 405);

    // Admin credentials only: no token, a partner's token.
    assert_eq!(host.send(Method::GET, "/metrics", &[], "").await.status, 401);
    let partner = format!("Bearer {TOKEN}");
    assert_eq!(host.send(Method::GET, "/metrics", &[("authorization", &partner)], "").await.status, 401);

    let text = scrape(&host).await;
    let bitrise = |addon, status| [("addon", addon), ("protocol", "bitrise"), ("route", provision), ("status", status)];
    expect(&text, "addon_requests_total", &bitrise("myaddon", "201"), 1.0);
    expect(&text, "addon_requests_total", &bitrise("myaddon", "200"), 1.0);
    expect(&text, "addon_requests_total", &bitrise("myaddon", "401"), 1.0);
    expect(&text, "addon_requests_total", &bitrise("misbehave", "500"), 1.0);
    expect(&text, "addon_requests_total", &bitrise("misbehave", "504"), 1.0);
    expect(&text, "addon_requests_total", &bitrise("misbehave", "422"), 1.0);
    assert!(!text.contains("nobody"), "an unknown add-on id became a label");

    let failed = |kind| [("addon", "misbehave"), ("call", "provision"), ("kind", kind)];
    expect(&text, "addon_call_failures_total", &failed("plugin_trap"), 1.0);
    expect(&text, "addon_call_failures_total", &failed("deadline_exceeded"), 1.0);
    expect(&text, "addon_call_failures_total", &failed("refused"), 1.0);
    // Three calls ran for misbehave, one for myaddon (the repeat was replayed).
    let call = |addon| [("addon", addon), ("call", "provision")];
    expect(&text, "addon_plugin_call_seconds_count", &call("misbehave"), 3.0);
    expect(&text, "addon_plugin_call_seconds_count", &call("myaddon"), 1.0);
    expect(&text, "addon_replays_total", &[("addon", "myaddon")], 1.0);
    expect(&text, "addon_queue_wait_seconds_count", &[("addon", "misbehave")], 3.0);
    expect(&text, "addon_calls_running", &[("addon", "misbehave")], 0.0);
    // One commit: the refusal, the trap and the timeout committed nothing.
    expect(&text, "addon_host_commit_seconds_count", &[], 1.0);
    expect(&text, "addon_kv_keys", &[("addon", "myaddon")], 1.0);
    expect(&text, "addon_kv_keys", &[("addon", "misbehave")], 0.0);
    let sha = host.service.addon("myaddon").unwrap().plugin().sha256.clone();
    expect(&text, "addon_plugin_version", &[("addon", "myaddon"), ("version", &sha)], 1.0);
    expect(&text, "addon_plugin_compile_seconds_count", &[("addon", "myaddon")], 1.0);
    assert!(sample(&text, "addon_host_durable_writes_total", &[]).unwrap() >= 1.0);

    // The numbers move with the traffic: one more provision, one swap.
    assert_eq!(host.provision("myaddon", TOKEN, "m3", "free").await.status, 201);
    let upload = std::fs::read(addon_host_tests::PLUGIN_VERSIONED_B).unwrap();
    assert_eq!(host.admin(Method::POST, "/admin/addons/versioned/plugins", upload).await.status, 201);
    let text = scrape(&host).await;
    expect(&text, "addon_requests_total", &bitrise("myaddon", "201"), 2.0);
    expect(&text, "addon_plugin_call_seconds_count", &call("myaddon"), 2.0);
    expect(&text, "addon_host_commit_seconds_count", &[], 2.0);
    expect(&text, "addon_kv_keys", &[("addon", "myaddon")], 2.0);
    expect(&text, "addon_plugin_swaps_total", &[("addon", "versioned")], 1.0);
    expect(&text, "addon_plugin_compile_seconds_count", &[("addon", "versioned")], 2.0);
    let admin = [("addon", "versioned"), ("protocol", "admin"), ("status", "201")];
    expect(&text, "addon_requests_total", &admin, 1.0);
}

/// A request id sent by the client comes back in the response header and the error body.
/// Without one, or with an unusable one, the host makes one up. (The id on the log lines,
/// the host's and the plugin's: the real binary's log, below. A thread-local subscriber in
/// this shared test process misses lines when other tests' threads race tracing's
/// interest cache.)
#[tokio::test]
async fn a_request_id_comes_back_in_the_header_and_error_body() {
    let host = TestHost::start();
    let body = r#"{"plan":"log-then-refuse","app_slug":"traced","api_token":"t"}"#;
    let headers =
        [("authentication", MISBEHAVE_TOKEN), ("content-type", "application/json"), ("x-request-id", "trace-me-42")];
    let reply = host.send(Method::POST, "/addons/misbehave/provision", &headers, body).await;
    assert_error(&reply, 422, "refused", "refused after logging");
    assert_eq!(reply.headers["x-request-id"], "trace-me-42");
    assert_eq!(reply.json()["request_id"], "trace-me-42");

    // Made up when missing or unusable (too long, or not visible ASCII), the same in the
    // header and the body.
    for sent in [None, Some("x".repeat(200)), Some("two words".to_owned())] {
        let mut headers = vec![("authentication", "wrong-token-000000")];
        if let Some(id) = &sent {
            headers.push(("x-request-id", id));
        }
        let reply = host.send(Method::POST, "/addons/myaddon/provision", &headers, "{}").await;
        assert_eq!(reply.status, 401);
        let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(reply.json()["request_id"], id.as_str());
    }
    // Every JSON error carries it, the router's own 404 included; successes carry the header.
    let missing = host.send(Method::GET, "/no/such/route", &[("x-request-id", "r-404")], "").await;
    assert_eq!((missing.status.as_u16(), missing.json()["request_id"].clone()), (404, "r-404".into()));
    let ok = host.send(Method::GET, "/livez", &[("x-request-id", "r-ok")], "").await;
    assert_eq!((ok.status.as_u16(), ok.headers["x-request-id"].to_str().unwrap()), (200, "r-ok"));
}

/// The real binary: `metrics_listen` serves `/metrics` without credentials on its own port
/// (the main port still asks for an admin token), and `--log-format json` writes one JSON
/// object per line, with the request's id in its span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_and_json_logs_on_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let addons = addon_host_tests::AddonToml::new("misbehave", addon_host_tests::PLUGIN_MISBEHAVE)
        .bitrise("misbehave-token-0123", "sso-secret")
        .to_toml();
    let server =
        spawn_with(dir.path(), &format!("metrics_listen = \"127.0.0.1:0\"\n{addons}"), &["--log-format", "json"]).await;
    let metrics =
        server.banner.iter().find_map(|l| l.strip_prefix("addon-host metrics on http://")).expect("metrics line");
    let metrics_addr = metrics.strip_suffix("/metrics").unwrap().to_owned();

    let auth =
        [("authentication", "misbehave-token-0123"), ("content-type", "application/json"), ("x-request-id", "json-77")];
    let body = r#"{"plan":"panic","app_slug":"p1","api_token":"t"}"#;
    let (status, _) = exchange(&server.addr, "POST", "/addons/misbehave/provision", &auth, body).await;
    assert_eq!(status, 500);
    let auth =
        [("authentication", "misbehave-token-0123"), ("content-type", "application/json"), ("x-request-id", "json-78")];
    let body = r#"{"plan":"log-then-refuse","app_slug":"p2","api_token":"t"}"#;
    let (status, reply) = exchange(&server.addr, "POST", "/addons/misbehave/provision", &auth, body).await;
    assert_eq!(status, 422, "{reply}");
    // A long call (it moves to the guests' runtime) keeps the request's span: its printed
    // output, logged when the call ends, carries the id.
    let auth =
        [("authentication", "misbehave-token-0123"), ("content-type", "application/json"), ("x-request-id", "json-79")];
    let body = r#"{"plan":"log-flood","app_slug":"p3","api_token":"t"}"#;
    let (status, reply) = exchange(&server.addr, "POST", "/addons/misbehave/provision", &auth, body).await;
    assert_eq!(status, 201, "{reply}");

    let (status, text) = exchange(&metrics_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{text}");
    expect(&text, "addon_call_failures_total", &[("addon", "misbehave"), ("kind", "plugin_trap")], 1.0);
    assert_eq!(exchange(&server.addr, "GET", "/metrics", &[], "").await.0, 401);
    // With the admin token shown at first start, the main port serves it too. The scrape's
    // own connection is open (earlier ones may still be closing on the server's side).
    let token = server.banner.iter().find_map(|l| l.split("stored): ").nth(1)).expect("admin token line");
    let bearer = format!("Bearer {token}");
    let (status, text) = exchange(&server.addr, "GET", "/metrics", &[("authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{text}");
    let open = sample(&text, "addon_host_connections", &[]).unwrap();
    assert!((1.0..=4.0).contains(&open), "{open} connections open");
    expect(&text, "addon_host_calls_in_flight", &[], 0.0);

    // With json, each line is an object whose span has the request's id: the host's error
    // for the 500, and the plugin's own warning before its refusal.
    assert!(server.logged("misbehave logs before refusing p2", std::time::Duration::from_secs(5)).await);
    let log = server.log.lock().unwrap().clone();
    let object = |needle: &str| -> serde_json::Value {
        let line = log.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let error = object("misbehave panicked on purpose in provision");
    assert_eq!((&error["level"], &error["span"]["id"]), (&"ERROR".into(), &"json-77".into()), "{error}");
    let plugin = object("misbehave logs before refusing p2");
    assert_eq!((&plugin["target"], &plugin["span"]["id"]), (&"plugin".into(), &"json-78".into()), "{plugin}");
    assert!(server.logged("stderr flood line", std::time::Duration::from_secs(5)).await);
    let log = server.log.lock().unwrap().clone();
    let flood = log.iter().find(|l| l.contains("stderr flood line")).unwrap();
    let flood: serde_json::Value = serde_json::from_str(flood).unwrap();
    assert_eq!(flood["span"]["id"], "json-79", "{flood}");
}

/// The text log on the real binary: text a plugin (or a caller) chooses never makes a line
/// of its own. The misbehaving plugin logs, prints and refuses with a newline followed by a
/// forged host line; each stays inside the event that carried it, escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_text_cannot_forge_a_line_of_the_hosts_log() {
    let dir = tempfile::tempdir().unwrap();
    let addons = addon_host_tests::AddonToml::new("misbehave", addon_host_tests::PLUGIN_MISBEHAVE)
        .bitrise("misbehave-token-0123", "sso-secret")
        .to_toml();
    let server = spawn(dir.path(), &addons).await;
    let auth = [("authentication", "misbehave-token-0123"), ("content-type", "application/json")];
    let body = r#"{"plan":"log-forge","app_slug":"forger","api_token":"t"}"#;
    let (status, reply) = exchange(&server.addr, "POST", "/addons/misbehave/provision", &auth, body).await;
    assert_eq!(status, 422, "{reply}");
    assert!(server.logged("by stderr", std::time::Duration::from_secs(10)).await, "the plugin's lines were not logged");
    let log = server.log.lock().unwrap().clone();
    let forged: Vec<_> = log.iter().filter(|l| l.starts_with("2030-01-01") || l.contains("\u{1b}[2K")).collect();
    assert!(forged.is_empty(), "plugin text made lines of its own: {forged:?}\n{log:?}");
    assert!(log.iter().any(|l| l.contains("innocent\\n2030-01-01") && l.contains("by log")), "{log:?}");
}
