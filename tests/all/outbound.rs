//! The webhooks example against a real local HTTP server standing in for the Bitrise API
//! (127.0.0.1, allow-listed in the add-on's `allowed_outbound`): the provision answers before
//! the webhook is registered; the stand-in then receives the registration with the app's API
//! token; a 503 is retried with backoff and then succeeds; the deprovision removes the
//! webhook; and a plugin calling an origin not on the list gets a clear refusal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use addon_host::config::AddonConfig;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{delete, post};

use crate::support::*;

const HOOKS_TOKEN: &str = "hooks-shared-token-0123";

/// What the stand-in API received: method, path, `Authorization`, body.
type Seen = Vec<(String, String, String, String)>;

struct Api {
    seen: Mutex<Seen>,
    /// Registrations wait here until the test lets them through.
    gate: tokio::sync::Semaphore,
    /// Answer this many registrations 503 first.
    unavailable: AtomicUsize,
    /// Where `handover` registrations are redirected (another stand-in).
    handover: Mutex<String>,
}

async fn register(
    State(api): State<Arc<Api>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, body) = answer(&api, &app, &headers, body).await;
    if status == StatusCode::TEMPORARY_REDIRECT {
        // `relocated` moves within the allowed origin; `moved` to an origin not allowed.
        let to = match app.as_str() {
            "relocated" => "/v0.1/apps/final/outgoing-webhooks".to_owned(),
            "handover" => format!("{}/v0.1/apps/handed/outgoing-webhooks", api.handover.lock().unwrap()),
            _ => "http://127.0.0.1:9/elsewhere".to_owned(),
        };
        return (status, [("location", to)]).into_response();
    }
    (status, body).into_response()
}

async fn answer(api: &Api, app: &str, headers: &HeaderMap, body: String) -> (StatusCode, String) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    api.seen.lock().unwrap().push(("POST".into(), format!("/v0.1/apps/{app}/outgoing-webhooks"), auth, body));
    api.gate.acquire().await.unwrap().forget();
    if app == "moved" || app == "relocated" || app == "handover" {
        // A redirect to an origin the add-on may not call.
        return (StatusCode::TEMPORARY_REDIRECT, String::new());
    }
    if api.unavailable.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later".into());
    }
    (StatusCode::CREATED, format!(r#"{{"data":{{"slug":"hook-{app}","url":"x"}}}}"#))
}

async fn unregister(
    State(api): State<Arc<Api>>,
    Path((app, hook)): Path<(String, String)>,
    headers: HeaderMap,
) -> StatusCode {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    api.seen.lock().unwrap().push((
        "DELETE".into(),
        format!("/v0.1/apps/{app}/outgoing-webhooks/{hook}"),
        auth,
        String::new(),
    ));
    StatusCode::NO_CONTENT
}

/// The stand-in API on 127.0.0.1 and its origin.
async fn stand_in() -> (Arc<Api>, String) {
    let api = Arc::new(Api {
        seen: Mutex::default(),
        gate: tokio::sync::Semaphore::new(0),
        unavailable: AtomicUsize::new(0),
        handover: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/v0.1/apps/{app}/outgoing-webhooks", post(register))
        .route("/v0.1/apps/{app}/outgoing-webhooks/{hook}", delete(unregister))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, origin)
}

/// `hooks` calls the stand-in (allowed); `stray` is told to call the same stand-in under
/// another origin (`localhost` for `127.0.0.1`), which it may not: if the host let that call
/// through, the stand-in would see it.
fn host(origin: &str) -> TestHost {
    host_allowing(origin, &[])
}

/// [`host`], with more allowed origins.
fn host_allowing(origin: &str, more: &[&str]) -> TestHost {
    let addon = |id: &str, api_base: &str| {
        let mut a = AddonConfig::on_bitrise(
            id,
            addon_host_tests::PLUGIN_WEBHOOKS,
            &format!("{id}-{HOOKS_TOKEN}"),
            "hooks-sso-secret-0123",
        );
        a.config.insert("api_base".into(), api_base.into());
        a.config.insert("hook_url".into(), "https://events.example.com/in".into());
        a.allowed_outbound = std::iter::once(origin).chain(more.iter().copied()).map(str::to_owned).collect();
        a.jobs.backoff_ms = 100;
        a.jobs.max_backoff_ms = 400;
        a.jobs.max_attempts = 4;
        a
    };
    TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.addons.push(addon("hooks", origin));
        cfg.addons.push(addon("stray", &stray_origin(origin)));
    })
}

/// The stand-in's origin spelled with another host name: the same server, another origin.
fn stray_origin(origin: &str) -> String {
    origin.replace("127.0.0.1", "localhost")
}

async fn provision(host: &TestHost, addon: &str, app: &str, api_token: &str) -> Reply {
    let body = serde_json::json!({"plan": "free", "app_slug": app, "api_token": api_token}).to_string();
    let token = format!("{addon}-{HOOKS_TOKEN}");
    let headers = [("authentication", token.as_str()), ("content-type", "application/json")];
    host.send(Method::POST, &format!("/addons/{addon}/provision"), &headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_registered_after_the_reply_retried_on_503_and_removed_on_deprovision() {
    let (api, origin) = stand_in().await;
    api.unavailable.store(1, Ordering::SeqCst);
    let host = host(&origin);

    let reply = provision(&host, "hooks", "app-1", "app-token-1").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.env("HOOKS_EVENTS_URL"), "https://events.example.com/in");
    // The registration cannot have completed: the stand-in holds it until we let it through.
    assert!(!host.kv("hooks").contains_key("hook/app-1"));
    eventually("the registration arrived", async || !api.seen.lock().unwrap().is_empty()).await;
    api.gate.add_permits(100);
    eventually("the webhook is registered", async || host.kv("hooks").contains_key("hook/app-1")).await;
    assert_eq!(host.kv("hooks")["hook/app-1"], "hook-app-1");
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one 503, then the retry: {seen:?}");
    for (method, path, auth, body) in &seen {
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/v0.1/apps/app-1/outgoing-webhooks"));
        assert_eq!(auth, "app-token-1", "the app's own API token");
        assert!(body.contains("https://events.example.com/in") && body.contains("build/finished"), "{body}");
    }

    let gone = host.deprovision("hooks", &format!("hooks-{HOOKS_TOKEN}"), "app-1").await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    eventually("the webhook is removed", async || api.seen.lock().unwrap().len() == 3).await;
    let removal = api.seen.lock().unwrap()[2].clone();
    assert_eq!(
        (removal.0.as_str(), removal.1.as_str(), removal.2.as_str()),
        ("DELETE", "/v0.1/apps/app-1/outgoing-webhooks/hook-app-1", "app-token-1")
    );
    eventually("the token is forgotten", async || host.kv("hooks").is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_not_on_the_list_is_refused_with_a_clear_error() {
    let (api, origin) = stand_in().await;
    api.gate.add_permits(100);
    let host = host(&origin);
    let reply = provision(&host, "stray", "app-2", "app-token-2").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let dead = async || jobs_of(&host, "stray", "?state=dead").await.first().cloned();
    eventually("the job is dead", async || dead().await.is_some()).await;
    let job = dead().await.unwrap();
    let error = job["last_error"].as_str().unwrap();
    let stray = stray_origin(&origin);
    assert!(error.contains(&format!("{stray} is not an allowed origin")), "{error}");
    assert_eq!(job["attempts"], 1, "a refusal is not retried");
    assert!(api.seen.lock().unwrap().is_empty(), "the stand-in, reached under another origin, was called");
}

/// Redirects are followed within allowed origins (a 307 keeps the method and body), and
/// refused to any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_only_to_allowed_origins() {
    let (api, origin) = stand_in().await;
    api.gate.add_permits(100);
    let host = host(&origin);
    let reply = provision(&host, "hooks", "moved", "app-token-3").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    eventually("the job is dead", async || {
        jobs_of(&host, "hooks", "?state=dead").await.first().is_some_and(|job| {
            job["last_error"].as_str().unwrap().contains("http://127.0.0.1:9 is not an allowed origin")
        })
    })
    .await;
    assert_eq!(api.seen.lock().unwrap().len(), 1, "the allowed origin was called once, the redirect not followed");

    let reply = provision(&host, "hooks", "relocated", "app-token-4").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    eventually("the relocated webhook is registered", async || host.kv("hooks").contains_key("hook/relocated")).await;
    assert_eq!(host.kv("hooks")["hook/relocated"], "hook-final");
    let seen = api.seen.lock().unwrap().clone();
    let last = seen.last().unwrap();
    assert_eq!((last.1.as_str(), last.2.as_str()), ("/v0.1/apps/final/outgoing-webhooks", "app-token-4"));
    assert!(last.3.contains("build/finished"), "the body went along: {}", last.3);
}

/// A redirect to another allowed origin is followed without the request's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_drops_the_credentials() {
    let (first, origin) = stand_in().await;
    let (second, other) = stand_in().await;
    first.gate.add_permits(100);
    second.gate.add_permits(100);
    *first.handover.lock().unwrap() = other.clone();
    let host = host_allowing(&origin, &[&other]);
    let reply = provision(&host, "hooks", "handover", "app-token-5").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    eventually("the handed-over webhook is registered", async || host.kv("hooks").contains_key("hook/handover")).await;
    assert_eq!(first.seen.lock().unwrap()[0].2, "app-token-5", "the first origin got the token");
    let handed = second.seen.lock().unwrap()[0].clone();
    assert_eq!((handed.1.as_str(), handed.2.as_str()), ("/v0.1/apps/handed/outgoing-webhooks", ""), "{handed:?}");
}

/// `addon-host test` runs the plugin's jobs, which call the add-on's allowed origins: a kit
/// run against a production config registered dozens of webhooks with the real Bitrise API.
/// By default the kit's host answers them from a stub and the report lists them; the
/// stand-in (allowed, open) sees none. With `--allow-net` they reach it. Red when the kit's
/// host sends them (the stand-in sees the registrations) or the report leaves them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_answers_outbound_calls_from_a_stub_unless_allowed() {
    let (api, origin) = stand_in().await;
    api.gate.add_permits(10_000);
    let dir = tempfile::tempdir().unwrap();
    let hooks = addon_host_tests::AddonToml::new("hooks", addon_host_tests::PLUGIN_WEBHOOKS)
        .plans(&["free", "pro"])
        .bitrise("kit-hooks-token", "kit-hooks-sso")
        .allowed_outbound(&[&origin])
        .config("api_base", &origin)
        .config("hook_url", "https://events.example.com/in");
    let config = crate::process::write_config(dir.path(), &hooks.to_toml());
    let config = config.to_str().unwrap();

    // Bitrise only: Xervo's checks are skipped.
    let (ok, report) = crate::conformance::kit(&[addon_host_tests::PLUGIN_WEBHOOKS, "--config", config]).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    let stubbed: Vec<&str> = report["outbound"]["requests"]
        .as_array()
        .expect("the report lists the stubbed requests")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let registration = format!("POST {origin}/v0.1/apps/");
    assert!(stubbed.iter().any(|r| r.starts_with(&registration)), "no registration among {stubbed:?}");
    // Jobs that ran after the kit's last check would have been cut off with its host: none
    // can reach the stand-in later either.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(*api.seen.lock().unwrap(), Seen::new(), "the kit's host sent a plugin's request");

    let (ok, report) =
        crate::conformance::kit(&[addon_host_tests::PLUGIN_WEBHOOKS, "--config", config, "--allow-net"]).await;
    assert!(ok && report["failed"] == 0, "{report:#}");
    assert!(report["outbound"].is_null(), "{report:#}");
    let seen = api.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(method, path, ..)| method == "POST" && path.starts_with("/v0.1/apps/")), "{seen:?}");
}
