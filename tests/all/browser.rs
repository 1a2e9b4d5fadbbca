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
    assert_eq!(seen["csp"], serde_json::json!([]), "the page's policy refused some of it");
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

/// Two add-ons on one host, each on its own origin (`server.web_origin`), in Chromium. The
/// user is logged in to both. The `attacker` add-on's page (its plugin's own script) tries,
/// against `victim`: reading its dashboard with the user's cookies and scraping the CSRF
/// token, posting its form, registering a service worker over its pages, tossing session
/// cookies at it (its session cookie in several spellings, plain ones its plugin would read,
/// and the host's cookie through attacker's own plugin's `Set-Cookie`). Each fails and
/// victim's session survives. The same script on victim's own page succeeds at each
/// step, so the test can fail. The handover link opens one session only, and the old
/// path-based dashboard URL redirects to the add-on's origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_addons_page_cannot_act_in_anothers() {
    if let Err(missing) = browser::chromium() {
        assert!(!browser::required(), "{missing}");
        eprintln!("skipped: {missing}");
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let template = format!("http://{{addon}}.localhost:{port}");
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.server.web_origin = Some(addon_host::config::WebOrigin::parse(&template).unwrap());
        for id in ["victim", "attacker"] {
            let token = format!("{id}-shared-token-0123");
            let addon = addon_host::config::AddonConfig::on_bitrise(
                id,
                addon_host_tests::PLUGIN_MISBEHAVE,
                &token,
                &format!("{id}-sso"),
            );
            cfg.addons.push(addon);
        }
    });
    for id in ["victim", "attacker"] {
        let reply = host.provision(id, &format!("{id}-shared-token-0123"), &format!("{id}-app"), "static").await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let router = host.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let origin = |id: &str| format!("http://{id}.localhost:{port}");
    let input = serde_json::json!({
        "base": format!("http://127.0.0.1:{port}"),
        "origins": { "victim": origin("victim"), "attacker": origin("attacker") },
        "logins": {
            "victim": login_fields("victim-app", "victim-sso"),
            "attacker": login_fields("attacker-app", "attacker-sso"),
        },
    });
    let seen = tokio::task::spawn_blocking(move || browser::run("origins.cjs", input)).await.unwrap();
    let seen = seen.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{seen:#}");

    // Logged in to both, each on its own origin, with a host-only cookie there.
    for (id, login) in [("victim", &seen["victimLogin"]), ("attacker", &seen["attackerLogin"])] {
        assert_eq!(login["status"], 200, "{login}");
        assert!(login["url"].as_str().unwrap().starts_with(&format!("{}/dashboard/?handover=", origin(id))), "{login}");
        assert_eq!(login["resource"], format!("{id}-app"));
    }
    let cookies = seen["cookies"].as_array().unwrap();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for cookie in cookies {
        assert_eq!(cookie["name"], "addon_session");
        assert_eq!(cookie["path"], "/");
        assert!(cookie["domain"] == "victim.localhost" || cookie["domain"] == "attacker.localhost", "{cookie}");
    }
    assert_eq!(seen["replayedLink"]["status"], 401, "a used handover link opened a session");
    assert!(seen["replayedLink"]["body"].as_str().unwrap().contains("already used"));
    assert_eq!(seen["oldPath"]["status"], 200);
    assert!(seen["oldPath"]["url"].as_str().unwrap().starts_with(&origin("victim")));

    // From attacker's origin, nothing reaches victim.
    let cross = &seen["cross"];
    assert!(cross["read"].as_str().is_some_and(|r| r.starts_with("blocked")), "victim's page was read: {cross}");
    assert_eq!(cross["token"], false, "{cross}");
    assert!(cross["worker"].as_str().unwrap().starts_with("refused"), "{cross}");
    assert_eq!(seen["markerAfterCross"], "none", "victim's form was posted from attacker's page");
    assert_eq!(seen["victimAfterCross"]["status"], 200, "victim's session was replaced: {}", seen["victimAfterCross"]);
    assert!(seen["victimAfterCross"]["body"].as_str().unwrap().contains("victim-app"));

    // The control: on victim's own origin the same script reads, posts, registers and sets a
    // cookie victim's plugin reads, so each check above can fail.
    let own = &seen["own"];
    assert_eq!(own["read"], 200, "{own}");
    assert_eq!(own["token"], true, "{own}");
    assert_eq!(own["worker"], "registered", "{own}");
    assert_eq!(host.kv("victim")["marker"], "attacked-from-victim.localhost");
    assert_eq!(seen["victimCookiesAfterCross"], "", "attacker's cookies reached victim's plugin");
    assert!(seen["victimCookiesAfterOwn"].as_str().unwrap().contains("tossed=1"), "{}", seen["victimCookiesAfterOwn"]);
    // No script, and no plugin's `Set-Cookie`, replaces the (HttpOnly) session on any origin.
    assert_eq!(seen["victimAfterOwn"]["status"], 200, "{}", seen["victimAfterOwn"]);
}
