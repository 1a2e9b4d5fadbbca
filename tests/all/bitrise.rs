//! The Bitrise provisioning protocol: statuses, replays, auth and bad input.

use axum::http::Method;

use crate::support::*;

#[tokio::test]
async fn provision_is_created_then_replayed_identically() {
    let host = TestHost::start();
    let first = host.provision("myaddon", TOKEN, "db8dedca8eda8f1d", "free").await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.env("MYADDON_HOST_URL"), "https://myaddon.example.com/apps/db8dedca8eda8f1d");
    let secret = first.env("MYADDON_AUTH_SECRET");
    assert_eq!(secret.len(), 48);

    for _ in 0..3 {
        let again = host.provision("myaddon", TOKEN, "db8dedca8eda8f1d", "free").await;
        assert_eq!(again.status, 200);
        assert_eq!(again.text, first.text, "a repeat must return the identical body");
    }
    let record = host.record("myaddon", "db8dedca8eda8f1d").expect("record");
    assert_eq!(record.plan, "free");
    assert_eq!(record.plugin_version, host.service.addon("myaddon").unwrap().plugin().sha256);
    // One secret kept in the plugin's KV, the one that was returned.
    assert_eq!(host.kv("myaddon").get("secret/db8dedca8eda8f1d"), Some(&secret));
}

#[tokio::test]
async fn different_body_for_an_existing_app_reprovisions_it() {
    let host = TestHost::start();
    let first = host.provision("myaddon", TOKEN, "app1", "free").await;
    assert_eq!(first.status, 201);
    let changed = host.provision("myaddon", TOKEN, "app1", "pro").await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    // The plugin was called again and kept its per-app secret.
    assert_eq!(changed.env("MYADDON_AUTH_SECRET"), first.env("MYADDON_AUTH_SECRET"));
    assert_eq!(host.record("myaddon", "app1").unwrap().plan, "pro");
    // Now the new body is the one replayed.
    let again = host.provision("myaddon", TOKEN, "app1", "pro").await;
    assert_eq!((again.status.as_u16(), again.text), (200, changed.text));
}

#[tokio::test]
async fn plan_change_and_unknown_apps() {
    let host = TestHost::start();
    assert_eq!(host.provision("myaddon", TOKEN, "app2", "free").await.status, 201);
    let changed = host.change_plan("myaddon", TOKEN, "app2", "pro").await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json()["plan"], "pro");
    assert_eq!(host.record("myaddon", "app2").unwrap().plan, "pro");
    // Same plan again: still 200.
    assert_eq!(host.change_plan("myaddon", TOKEN, "app2", "pro").await.status, 200);
    assert_error(&host.change_plan("myaddon", TOKEN, "never-seen", "pro").await, 404, "not_found", "never-seen");
    assert_error(&host.change_plan("myaddon", TOKEN, "app2", "gold").await, 422, "unknown_plan", "gold");
    assert_eq!(host.record("myaddon", "app2").unwrap().plan, "pro", "a refused change changes nothing");
}

#[tokio::test]
async fn deprovision_is_idempotent_and_forgets_the_app() {
    let host = TestHost::start();
    let first = host.provision("myaddon", TOKEN, "app3", "free").await;
    for _ in 0..3 {
        let gone = host.deprovision("myaddon", TOKEN, "app3").await;
        assert_eq!(gone.status, 200, "{}", gone.text);
    }
    assert_eq!(host.deprovision("myaddon", TOKEN, "never-provisioned").await.status, 200);
    assert!(!host.record("myaddon", "app3").unwrap().is_active());
    assert!(!host.kv("myaddon").contains_key("secret/app3"), "the plugin revoked the secret");
    assert_error(&host.change_plan("myaddon", TOKEN, "app3", "pro").await, 404, "not_found", "app3");
    // Provisioning again creates a new resource with a new secret.
    let again = host.provision("myaddon", TOKEN, "app3", "free").await;
    assert_eq!(again.status, 201);
    assert_ne!(again.env("MYADDON_AUTH_SECRET"), first.env("MYADDON_AUTH_SECRET"));
}

#[tokio::test]
async fn shared_token_is_required_and_checked_per_addon() {
    let host = TestHost::start();
    let body = r#"{"app_slug":"a1","api_token":"t","plan":"free"}"#;
    let json = ("content-type", "application/json");
    let missing = host.send(Method::POST, "/addons/myaddon/provision", &[json], body).await;
    assert_error(&missing, 401, "unauthorized", "Authentication");
    let wrong = host.send(Method::POST, "/addons/myaddon/provision", &[json, ("authentication", "nope")], body).await;
    assert_error(&wrong, 401, "unauthorized", "not valid");
    // Another add-on's token is not this add-on's.
    let cross =
        host.send(Method::POST, "/addons/myaddon/provision", &[json, ("authentication", STORAGE_TOKEN)], body).await;
    assert_error(&cross, 401, "unauthorized", "not valid");
    // `Authorization` is not the header Bitrise uses.
    let bearer = host.send(Method::POST, "/addons/myaddon/provision", &[json, ("authorization", TOKEN)], body).await;
    assert_eq!(bearer.status, 401);
    assert_eq!(host.change_plan("myaddon", "nope", "a1", "pro").await.status, 401);
    assert_eq!(host.deprovision("myaddon", "", "a1").await.status, 401);
    assert!(host.record("myaddon", "a1").is_none(), "nothing was provisioned");
}

/// name, headers, body, expected status, error kind, text the message must contain.
type BadCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, u16, &'a str, &'a str);

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let host = TestHost::start();
    const AUTH: (&str, &str) = ("authentication", TOKEN);
    const JSON: (&str, &str) = ("content-type", "application/json");
    let (auth, json) = (AUTH, JSON);
    let cases: &[BadCase] = &[
        ("malformed", &[AUTH, JSON], r#"{"app_slug":"#, 400, "bad_request", "invalid JSON"),
        ("missing plan", &[AUTH, JSON], r#"{"app_slug":"a","api_token":"t"}"#, 400, "bad_request", "plan"),
        (
            "wrong type",
            &[AUTH, JSON],
            r#"{"app_slug":5,"api_token":"t","plan":"free"}"#,
            400,
            "bad_request",
            "app_slug",
        ),
        ("not an object", &[AUTH, JSON], "[1,2]", 400, "bad_request", "invalid JSON"),
        ("form body", &[AUTH, ("content-type", "text/plain")], "x", 415, "unsupported_media_type", "JSON"),
        (
            "unknown plan",
            &[AUTH, JSON],
            r#"{"app_slug":"a","api_token":"t","plan":"gold"}"#,
            422,
            "unknown_plan",
            "gold",
        ),
        (
            "slug traversal",
            &[AUTH, JSON],
            r#"{"app_slug":"../etc","api_token":"t","plan":"free"}"#,
            400,
            "bad_request",
            "app_slug",
        ),
        (
            "empty slug",
            &[AUTH, JSON],
            r#"{"app_slug":"","api_token":"t","plan":"free"}"#,
            400,
            "bad_request",
            "app_slug",
        ),
        (
            "empty token",
            &[AUTH, JSON],
            r#"{"app_slug":"a","api_token":"","plan":"free"}"#,
            400,
            "bad_request",
            "api_token",
        ),
    ];
    for (name, headers, body, status, kind, needle) in cases {
        let reply = host.send(Method::POST, "/addons/myaddon/provision", headers, *body).await;
        assert_eq!(reply.status.as_u16(), *status, "{name}: {}", reply.text);
        assert_error(&reply, *status, kind, needle);
    }
    let long_slug = "a".repeat(10_000);
    let reply = host.provision("myaddon", TOKEN, &long_slug, "free").await;
    assert_error(&reply, 400, "bad_request", "app_slug");
    let huge = format!(r#"{{"app_slug":"a","api_token":"{}","plan":"free"}}"#, "t".repeat(200_000));
    let reply = host.send(Method::POST, "/addons/myaddon/provision", &[auth, json], huge).await;
    assert_error(&reply, 413, "payload_too_large", "limit");

    assert_error(&host.provision("nosuch", TOKEN, "a", "free").await, 404, "unknown_addon", "nosuch");
    let wrong_method = host.send(Method::GET, "/addons/myaddon/provision", &[auth], "").await;
    assert_error(&wrong_method, 405, "method_not_allowed", "method");
    assert_error(&host.send(Method::GET, "/nope", &[], "").await, 404, "not_found", "route");

    assert!(host.service.addon("myaddon").unwrap().store().records().unwrap().is_empty());
    assert!(host.kv("myaddon").is_empty());
}
