//! The add-on's pages in a real browser (headless Chromium, see `addon_host_tests::browser`):
//! the dashboard the credentials plugin renders after a Bitrise SSO login, its CSRF-protected
//! form, session expiry, and the host's own page for a plugin without a handler. Screenshots
//! are saved in `<target>/screenshots/`.

use addon_host_tests::browser;

use crate::support::*;

/// Serve `host`'s router on 127.0.0.1; its base URL.
async fn listen(host: &TestHost) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = host.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

fn login_fields(slug: &str, secret: &str) -> serde_json::Value {
    let ts = now();
    serde_json::json!({ "app_slug": slug, "timestamp": ts.to_string(), "token": sso_token(slug, secret, ts) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    if let Err(missing) = browser::chromium() {
        assert!(!browser::required(), "{missing}");
        eprintln!("skipped: {missing}");
        return;
    }
    const SESSION_SECS: u64 = 6;
    let host = crate::web::web_host(|cfg| cfg.addons[0].web.session_secs = SESSION_SECS);
    host.provision_titled("myaddon", TOKEN, "b1", "pro", "Browser <App>").await;
    host.provision("storage", STORAGE_TOKEN, "b2", "pro").await;
    let secret_before = host.kv("myaddon")["secret/b1"].clone();
    let base = listen(&host).await;
    let input = serde_json::json!({
        "base": base,
        "sessionSecs": SESSION_SECS,
        "login": { "addon": "myaddon", "fields": login_fields("b1", SSO) },
        "builtin": { "addon": "storage", "fields": login_fields("b2", "sso-of-storage") },
    });
    let seen = tokio::task::spawn_blocking(move || browser::run("dashboard.cjs", input)).await.unwrap();
    let seen = seen.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{seen:#}");

    // The plugin's page, rendered: title (escaped and intact), plan, Beam, the session cookie.
    assert_eq!(seen["login"]["status"], 200);
    assert_eq!(seen["login"]["title"], "Credentials for Browser <App>");
    assert_eq!(seen["login"]["plan"], "pro");
    assert_eq!(seen["beam"], 1, "Bitrise's Beam header is on the page");
    let cookie = &seen["cookie"][0];
    assert_eq!(cookie["name"], "addon_session");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Lax");
    assert_eq!(cookie["path"], "/addons/myaddon/");
    // Without its CSRF token the form post is refused, and changes nothing.
    assert_eq!(seen["forged"]["status"], 403);
    assert!(seen["forged"]["body"].as_str().unwrap().contains("CSRF"));
    assert_eq!(seen["again"]["status"], 200);
    // With it, the secret is rotated and shown once.
    assert_eq!(seen["rotated"]["status"], 200);
    assert!(seen["rotated"]["notice"].as_str().unwrap().contains("New secret"));
    let shown = seen["rotated"]["secret"].as_str().unwrap();
    assert_ne!(shown, secret_before);
    assert_eq!(host.kv("myaddon")["secret/b1"], shown);
    // After the session's lifetime: signed out. (The browser has dropped the cookie by then,
    // as its Max-Age says; a cookie presented past its expiry is refused too: `web.rs`.)
    assert_eq!(seen["beforeExpiry"], true, "the steps before expiry took longer than the session");
    assert_eq!(seen["expired"]["status"], 401);
    assert!(seen["expired"]["message"].as_str().unwrap().contains("Open the add-on again"));

    // The host's own page for a plugin without a handler, styled.
    assert_eq!(seen["builtin"]["status"], 200);
    assert_eq!(seen["builtin"]["brand"], "storage");
    assert_eq!(seen["builtin"]["plan"], "pro");
    let vars: Vec<&str> = seen["builtin"]["vars"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(vars.contains(&"STORAGE_URL"), "{vars:?}");
    assert_ne!(seen["builtin"]["background"], "rgba(0, 0, 0, 0)", "the stylesheet applies");
    for shot in ["dashboard.png", "dashboard-rotated.png", "builtin.png"] {
        let size = std::fs::metadata(browser::screenshots().join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 5_000, "{shot}: {size} bytes");
    }
}
