//! The add-on's own HTTP surfaces, served by its plugin's `wasi:http` handler: the build API
//! with the per-app token the host issues at provision, and the dashboard behind the
//! platforms' SSO with a signed session cookie and CSRF checks. Real router, real storage,
//! plugins compiled from source (`credentials` and the `misbehave` guest serve HTTP; `quota`
//! does not).

use axum::http::Method;

use crate::support::*;

const MISBEHAVE_SSO: &str = "sso-of-misbehave";

/// Make the test config's `myaddon` (credentials) and `misbehave` add-ons issue build API
/// tokens.
pub(crate) fn enable_build_api(cfg: &mut addon_host::config::HostConfig) {
    for addon in cfg.addons.iter_mut().filter(|a| a.id == "myaddon" || a.id == "misbehave") {
        addon.web.build_api = true;
        let var = addon.web.token_var(&addon.id);
        addon.xervo.as_mut().unwrap().config_vars.push(var);
    }
}

/// A host whose `myaddon` and `misbehave` add-ons issue build API tokens.
pub(crate) fn web_host(change: impl FnOnce(&mut addon_host::config::HostConfig)) -> TestHost {
    TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        enable_build_api(cfg);
        change(cfg);
    })
}

/// The build API token of a provision's reply.
pub(crate) fn token_in(reply: &Reply, var: &str) -> String {
    assert!(reply.status.is_success(), "{}", reply.text);
    reply.envs().into_iter().find(|(k, _)| k == var).unwrap_or_else(|| panic!("no {var} in {}", reply.text)).1
}

pub(crate) async fn api(host: &TestHost, method: Method, path: &str, token: &str, body: &str) -> Reply {
    let auth = format!("Bearer {token}");
    host.send(method, path, &[("authorization", auth.as_str())], body.to_owned()).await
}

#[tokio::test]
async fn a_builds_request_reaches_the_plugin_with_the_apps_identity_and_nothing_the_client_forged() {
    let host = web_host(|_| {});
    let reply = host.provision_titled("misbehave", MISBEHAVE_TOKEN, "m1", "static", "Mÿ app & co").await;
    let token = token_in(&reply, "MISBEHAVE_API_TOKEN");
    assert!(token.starts_with("abt1.m1."), "{token}");
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("x-addon-resource-id", "someone-else"),
        ("x-addon-injected", "evil"),
        ("x-custom", "kept"),
        ("cookie", "addon_session=stolen; theirs=1"),
    ];
    let reply = host.send(Method::POST, "/addons/misbehave/api/v1/echo?x=1&y=%20", &headers, "12345").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let seen = reply.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/api/v1/echo");
    assert_eq!(seen["query"], "x=1&y=%20");
    assert_eq!(seen["x-addon-surface"], "api");
    assert_eq!(seen["x-addon-resource-id"], "m1", "the host's identity, not the client's");
    assert_eq!(seen["x-addon-platform"], "bitrise");
    assert_eq!(seen["x-addon-plan"], "static");
    assert_eq!(seen["app_title"], "Mÿ app & co", "the title arrives percent-encoded and decodes intact");
    assert_eq!(seen["x-addon-injected"], "", "the client's x-addon-* headers are stripped");
    assert_eq!(seen["authorization"], "", "the build's token is not forwarded");
    assert_eq!(seen["cookie"], "theirs=1", "the host's session cookie is not forwarded");
    assert_eq!(seen["x-addon-csrf-token"], "", "the API has no session");
    assert_eq!(seen["x-addon-base-path"], "/addons/misbehave");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["body_len"], 5);

    // The credentials example's own API: identity and the app's secret.
    let reply = host.provision("myaddon", TOKEN, "c1", "pro").await;
    let token = token_in(&reply, "MYADDON_API_TOKEN");
    let secret = reply.envs().into_iter().find(|(k, _)| k == "MYADDON_AUTH_SECRET").unwrap().1;
    let whoami = api(&host, Method::GET, "/addons/myaddon/api/whoami", &token, "").await;
    assert_eq!(whoami.status, 200, "{}", whoami.text);
    assert_eq!(whoami.json()["resource_id"], "c1");
    assert_eq!(whoami.json()["plan"], "pro");
    let verify = api(&host, Method::POST, "/addons/myaddon/api/verify", &token, &secret).await;
    assert_eq!(verify.json()["valid"], true);
    assert_eq!(api(&host, Method::POST, "/addons/myaddon/api/verify", &token, "nope").await.json()["valid"], false);
    assert_eq!(host.kv("myaddon")["calls/c1"], "3", "the plugin's writes from its API calls are kept");
}

/// The build API's root, `/api/` (as a build's `curl $URL/api/` sends it), reaches the plugin
/// like any other path under it: it was the host's 404 "no such route".
#[tokio::test]
async fn the_build_apis_root_reaches_the_plugin() {
    let host = web_host(|_| {});
    let reply = host.provision("misbehave", MISBEHAVE_TOKEN, "root-1", "static").await;
    let token = token_in(&reply, "MISBEHAVE_API_TOKEN");
    let root = api(&host, Method::GET, "/addons/misbehave/api/", &token, "").await;
    // misbehave answers an empty last segment with its first page.
    assert_eq!(root.status, 200, "{}", root.text);
    assert!(root.text.contains("<p>misbehave</p>"), "{}", root.text);
    assert_eq!(api(&host, Method::GET, "/addons/misbehave/api/", "abt1.root-1.wrong", "").await.status, 401);
}

#[tokio::test]
async fn wrong_missing_other_apps_rotated_and_deprovisioned_tokens_get_401() {
    let host = web_host(|_| {});
    let a = token_in(&host.provision("myaddon", TOKEN, "a1", "free").await, "MYADDON_API_TOKEN");
    let b = token_in(&host.provision("myaddon", TOKEN, "b1", "free").await, "MYADDON_API_TOKEN");
    let m = token_in(&host.provision("misbehave", MISBEHAVE_TOKEN, "a1", "static").await, "MISBEHAVE_API_TOKEN");
    assert_ne!(a, b);
    let whoami = "/addons/myaddon/api/whoami";
    assert_eq!(api(&host, Method::GET, whoami, &a, "").await.json()["resource_id"], "a1");
    assert_eq!(api(&host, Method::GET, whoami, &b, "").await.json()["resource_id"], "b1");

    let missing = host.send(Method::GET, whoami, &[], "").await;
    assert_error(&missing, 401, "unauthorized", "Authorization: Bearer");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    let basic = host.send(Method::GET, whoami, &[("authorization", "Basic YTpi")], "").await;
    assert_eq!(basic.status, 401);
    for wrong in [
        "nonsense".to_owned(),
        format!("{a}x"),
        // a1's name with b1's signature: another app's token cannot be re-aimed.
        format!("abt1.a1.{}", b.rsplit('.').next().unwrap()),
        // The same app on another add-on.
        m.clone(),
        "abt1.../..".to_owned(),
    ] {
        assert_error(&api(&host, Method::GET, whoami, &wrong, "").await, 401, "unauthorized", "invalid or revoked");
    }

    // A repeated provision replays the same token; rotation replaces it at once.
    assert_eq!(token_in(&host.provision("myaddon", TOKEN, "a1", "free").await, "MYADDON_API_TOKEN"), a);
    let rotated = host.admin(Method::POST, "/admin/addons/myaddon/resources/a1/api-token", "").await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let fresh = rotated.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, a);
    assert_eq!(api(&host, Method::GET, whoami, &a, "").await.status, 401, "the rotated token");
    assert_eq!(api(&host, Method::GET, whoami, &fresh, "").await.status, 200);
    assert_eq!(token_in(&host.provision("myaddon", TOKEN, "a1", "free").await, "MYADDON_API_TOKEN"), fresh);
    let no_admin = host.send(Method::POST, "/admin/addons/myaddon/resources/a1/api-token", &[], "").await;
    assert_eq!(no_admin.status, 401);
    let record = host.record("myaddon", "a1").unwrap();
    let stored = serde_json::to_string(&record).unwrap();
    assert!(!stored.contains(fresh.rsplit('.').next().unwrap()), "the token itself is not stored: {stored}");

    // Deprovisioned: 401; provisioned again: a new token, the old one still refused.
    assert_eq!(host.deprovision("myaddon", TOKEN, "a1").await.status, 200);
    assert_error(&api(&host, Method::GET, whoami, &fresh, "").await, 401, "unauthorized", "revoked");
    let again = token_in(&host.provision("myaddon", TOKEN, "a1", "free").await, "MYADDON_API_TOKEN");
    assert_ne!(again, fresh);
    assert_ne!(again, a);
    assert_eq!(api(&host, Method::GET, whoami, &fresh, "").await.status, 401);
    assert_eq!(api(&host, Method::GET, whoami, &again, "").await.status, 200);
    assert_eq!(api(&host, Method::GET, whoami, &b, "").await.status, 200, "other apps are untouched");
}

#[tokio::test]
async fn the_rate_limit_answers_429_per_app() {
    let host = web_host(|cfg| {
        cfg.addons[0].web.api_rate_per_minute = 6;
        cfg.addons[0].web.api_burst = 3;
    });
    let a = token_in(&host.provision("myaddon", TOKEN, "r1", "free").await, "MYADDON_API_TOKEN");
    let b = token_in(&host.provision("myaddon", TOKEN, "r2", "free").await, "MYADDON_API_TOKEN");
    for _ in 0..3 {
        assert_eq!(api(&host, Method::GET, "/addons/myaddon/api/whoami", &a, "").await.status, 200);
    }
    let limited = api(&host, Method::GET, "/addons/myaddon/api/whoami", &a, "").await;
    assert_error(&limited, 429, "rate_limited", "6 API requests a minute");
    // Six a minute: the next token is ten seconds after the burst (nine if the burst took
    // over a second).
    let wait: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((9..=10).contains(&wait), "{wait}");
    assert_eq!(api(&host, Method::GET, "/addons/myaddon/api/whoami", &b, "").await.status, 200, "per app");
    assert_eq!(host.kv("myaddon")["calls/r1"], "3", "a refused request never reached the plugin");
}

#[tokio::test]
async fn sizes_deadlines_memory_and_panics_are_bounded_and_writes_kept_only_for_success() {
    let host = web_host(|cfg| {
        let misbehave = cfg.addons.iter_mut().find(|a| a.id == "misbehave").unwrap();
        misbehave.web.max_request_bytes = 1024;
        misbehave.web.max_response_bytes = 64 * 1024;
    });
    let t = token_in(&host.provision("misbehave", MISBEHAVE_TOKEN, "h1", "static").await, "MISBEHAVE_API_TOKEN");
    let at = |what: &str| format!("/addons/misbehave/api/{what}");
    let big = "x".repeat(2048);
    assert_error(&api(&host, Method::POST, &at("echo"), &t, &big).await, 413, "payload_too_large", "1024-byte");
    assert_error(&api(&host, Method::GET, &at("huge"), &t, "").await, 500, "reply_too_large", "65536-byte");
    assert_error(&api(&host, Method::GET, &at("loop"), &t, "").await, 504, "deadline_exceeded", "deadline");
    assert_error(&api(&host, Method::GET, &at("memory"), &t, "").await, 500, "memory_limit", "32 MiB");
    assert_error(&api(&host, Method::GET, &at("panic"), &t, "").await, 500, "plugin_trap", "panicked on purpose");
    let refused = api(&host, Method::GET, &at("outbound"), &t, "").await;
    assert_eq!(refused.status, 502, "{}", refused.text);
    assert!(refused.text.contains("HttpRequestDenied"), "outbound wasi:http is refused: {}", refused.text);

    assert_eq!(api(&host, Method::POST, &at("write?v=kept"), &t, "").await.status, 200);
    assert_eq!(api(&host, Method::POST, &at("write-then-500?v=dropped"), &t, "").await.status, 500);
    assert_eq!(api(&host, Method::GET, &at("marker"), &t, "").await.text, "kept");
    assert_eq!(host.kv("misbehave")["marker"], "kept", "a 5xx answer keeps none of its writes");
    assert_eq!(host.send(Method::GET, "/healthz", &[], "").await.status, 200);
}

#[tokio::test]
async fn an_addon_without_the_build_api_or_a_handler_says_so() {
    let host = web_host(|_| {});
    // `storage` issues no tokens: its provision reply is unchanged, and its API does not exist.
    let reply = host.provision("storage", STORAGE_TOKEN, "s1", "free").await;
    assert!(reply.envs().iter().all(|(k, _)| !k.ends_with("_API_TOKEN")), "{}", reply.text);
    let refused = api(&host, Method::GET, "/addons/storage/api/x", "abt1.s1.x", "").await;
    assert_error(&refused, 404, "not_found", "no build API");
    assert_error(&api(&host, Method::GET, "/addons/nobody/api/x", "t", "").await, 404, "unknown_addon", "nobody");
}

/// The session cookie a login set.
pub(crate) fn session_cookie(reply: &Reply) -> String {
    let set = reply.headers.get("set-cookie").unwrap_or_else(|| panic!("no session cookie: {}", reply.text));
    let set = set.to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Lax", "Path=/addons/"] {
        assert!(set.contains(part), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

async fn bitrise_login(host: &TestHost, addon: &str, slug: &str, secret: &str) -> Reply {
    let ts = now();
    let body = format!("app_slug={slug}&timestamp={ts}&token={}", sso_token(slug, secret, ts));
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    host.send(Method::POST, &format!("/addons/{addon}/login"), &headers, body).await
}

#[tokio::test]
async fn an_sso_login_opens_a_session_for_the_plugins_dashboard_with_csrf_checks() {
    let host = web_host(|_| {});
    host.provision("myaddon", TOKEN, "d1", "pro").await;
    let login = bitrise_login(&host, "myaddon", "d1", SSO).await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert!(login.text.contains("id=\"title\""), "the plugin's page: {}", login.text);
    assert!(login.text.contains("@bitrise/beam"), "with Beam");
    roxmltree::Document::parse_with_options(
        &login.text,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .expect("the credentials dashboard is well-formed XHTML, as Bitrise's kit requires");
    let cookie = session_cookie(&login);
    assert!(!login.headers["set-cookie"].to_str().unwrap().contains("Secure"), "plain http");
    assert_eq!(login.headers["x-frame-options"], "DENY", "no other site may frame the dashboard's forms");
    // Behind a TLS-terminating proxy that says so, the cookie is `Secure`. (Another second's
    // token, well inside the 300 s window: the first login used the second it ran in, and
    // `now() - 1` would be that second if the clock has ticked since.)
    let ts = now() - 60;
    let body = format!("app_slug=d1&timestamp={ts}&token={}", sso_token("d1", SSO, ts));
    let proxied = [("content-type", "application/x-www-form-urlencoded"), ("x-forwarded-proto", "https")];
    let secure = host.send(Method::POST, "/addons/myaddon/login", &proxied, body).await;
    assert!(secure.headers["set-cookie"].to_str().unwrap().contains("; Secure"), "{:?}", secure.headers);

    let page = host.send(Method::GET, "/addons/myaddon/dashboard/", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let csrf = page.text.split("name=\"_csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let form = [("cookie", cookie.as_str()), ("content-type", "application/x-www-form-urlencoded")];
    let before = host.kv("myaddon")["secret/d1"].clone();
    let forged = host.send(Method::POST, "/addons/myaddon/dashboard/rotate", &form, "x=1").await;
    assert_error(&forged, 403, "forbidden", "CSRF");
    let wrong = host.send(Method::POST, "/addons/myaddon/dashboard/rotate", &form, "_csrf=AAAA").await;
    assert_error(&wrong, 403, "forbidden", "CSRF");
    let cross = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
        ("sec-fetch-site", "cross-site"),
    ];
    let body = format!("_csrf={csrf}");
    assert_error(
        &host.send(Method::POST, "/addons/myaddon/dashboard/rotate", &cross, body.clone()).await,
        403,
        "forbidden",
        "another site",
    );
    assert_eq!(host.kv("myaddon")["secret/d1"], before, "no refused post changed anything");
    let rotated = host.send(Method::POST, "/addons/myaddon/dashboard/rotate", &form, body).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let after = host.kv("myaddon")["secret/d1"].clone();
    assert_ne!(after, before);
    assert!(rotated.text.contains(&after), "the new secret is shown once");
    // The token may come as a header too (scripts).
    let header = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    assert_eq!(host.send(Method::POST, "/addons/myaddon/dashboard/rotate", &header, "").await.status, 200);

    // Without the cookie, with a forged one, or on another add-on: the signed-out page.
    for (path, cookie) in [
        ("/addons/myaddon/dashboard/", ""),
        ("/addons/myaddon/dashboard/", "addon_session=forged.value"),
        ("/addons/misbehave/dashboard/", cookie.as_str()),
    ] {
        let reply = host.send(Method::GET, path, &[("cookie", cookie)], "").await;
        assert_eq!(reply.status, 401, "{path} {cookie}: {}", reply.text);
        assert!(reply.text.contains("signed-out"));
    }
    // The handler may not set the host's cookie.
    host.provision("misbehave", MISBEHAVE_TOKEN, "d1", "static").await;
    let misbehave = session_cookie(&bitrise_login(&host, "misbehave", "d1", MISBEHAVE_SSO).await);
    let reply = host.send(Method::GET, "/addons/misbehave/dashboard/set-cookie", &[("cookie", &misbehave)], "").await;
    let set: Vec<_> = reply.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(set, ["theirs=1; Path=/addons/misbehave/"]);
    let seen = host.send(Method::GET, "/addons/misbehave/dashboard/echo", &[("cookie", &misbehave)], "").await.json();
    assert_eq!(seen["x-addon-surface"], "dashboard");
    assert_eq!(seen["x-addon-resource-id"], "d1");
    // The CSRF token the handler sees is the session's: the host takes it back on a POST,
    // and takes no other.
    let token = seen["x-addon-csrf-token"].as_str().unwrap().to_owned();
    let post = async |token: &str| {
        let headers = [("cookie", misbehave.as_str()), ("x-csrf-token", token)];
        host.send(Method::POST, "/addons/misbehave/dashboard/echo", &headers, "").await.status
    };
    assert_eq!(post(&token).await, 200, "the token the handler was given");
    let mut other = token.clone().into_bytes();
    other[0] = if other[0] == b'A' { b'B' } else { b'A' };
    assert_eq!(post(&String::from_utf8(other).unwrap()).await, 403, "a token one letter off");
}

/// A handler's answer reaches the browser through an allow-list: none of the headers that
/// act beyond the add-on's own answer (the host's cookie in any spelling, cookies for other
/// hosts or paths, service-worker scope, site-data clearing, CORS with credentials, framing,
/// alternative services, the host's `x-addon-*`) and no 1xx switch of protocol; a policy
/// that denies framing is always on.
#[tokio::test]
async fn a_handler_cannot_send_headers_that_act_beyond_its_own_answer() {
    let host = web_host(|_| {});
    host.provision("misbehave", MISBEHAVE_TOKEN, "h1", "static").await;
    let cookie = session_cookie(&bitrise_login(&host, "misbehave", "h1", MISBEHAVE_SSO).await);
    let reply = host.send(Method::GET, "/addons/misbehave/dashboard/hostile", &[("cookie", &cookie)], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let set: Vec<_> = reply.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(set.is_empty(), "cookies passed: {set:?}");
    for name in [
        "service-worker-allowed",
        "clear-site-data",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "alt-svc",
        "x-addon-resource-id",
    ] {
        assert!(!reply.headers.contains_key(name), "{name} passed: {:?}", reply.headers);
    }
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    let csp = reply.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"), "{csp}");
    // The session still works: nothing replaced it.
    let page = host.send(Method::GET, "/addons/misbehave/dashboard/", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200, "{}", page.text);

    let switched = host.send(Method::GET, "/addons/misbehave/dashboard/switch", &[("cookie", &cookie)], "").await;
    assert_error(&switched, 500, "invalid_reply", "status 101");
    assert!(!switched.headers.contains_key("upgrade"), "{:?}", switched.headers);
}

#[tokio::test]
async fn sessions_expire_and_a_deprovisioned_resource_shows_the_hosts_page() {
    let host = web_host(|cfg| cfg.addons[0].web.session_secs = 1);
    host.provision("myaddon", TOKEN, "e1", "free").await;
    let cookie = session_cookie(&bitrise_login(&host, "myaddon", "e1", SSO).await);
    assert_eq!(host.send(Method::GET, "/addons/myaddon/dashboard/", &[("cookie", &cookie)], "").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = host.send(Method::GET, "/addons/myaddon/dashboard/", &[("cookie", &cookie)], "").await;
    assert_eq!(expired.status, 401);
    assert!(expired.text.contains("expired"), "{}", expired.text);

    let host = web_host(|_| {});
    host.provision("myaddon", TOKEN, "e2", "free").await;
    let cookie = session_cookie(&bitrise_login(&host, "myaddon", "e2", SSO).await);
    host.deprovision("myaddon", TOKEN, "e2").await;
    let page = host.send(Method::GET, "/addons/myaddon/dashboard/", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("deprovisioned"), "{}", page.text);
    let post = host.send(Method::POST, "/addons/myaddon/dashboard/rotate", &[("cookie", &cookie)], "").await;
    assert_eq!(post.status, 404, "nothing is forwarded for a deprovisioned resource");
}

#[tokio::test]
async fn a_plugin_without_a_handler_keeps_the_hosts_page() {
    let host = web_host(|_| {});
    host.provision("storage", STORAGE_TOKEN, "q1", "free").await;
    let login = bitrise_login(&host, "storage", "q1", "sso-of-storage").await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert!(login.text.contains("class=\"brand\""), "the host's page: {}", login.text);
    let cookie = session_cookie(&login);
    let page = host.send(Method::GET, "/addons/storage/dashboard", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("STORAGE_URL"));
    let other = host.send(Method::GET, "/addons/storage/dashboard/settings", &[("cookie", &cookie)], "").await;
    assert_error(&other, 404, "not_found", "/dashboard/settings");
}

#[tokio::test]
async fn xervo_sso_lands_on_the_plugins_dashboard_without_a_cookie_and_passes_the_email() {
    let host = web_host(|_| {});
    let created = host.xprovision("x1", "test").await;
    assert_eq!(created.status, 200, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(created.json()["config"]["MYADDON_API_TOKEN"].as_str().unwrap().starts_with("abt1."));
    let ts = now();
    let token = sso_token(&id, XERVO_SALT, ts);
    let sso = serde_json::json!({ "id": id, "timestamp": ts, "token": token, "email": "ada+x@example.com" });
    let login = host
        .send(Method::POST, "/addons/myaddon/sso/login", &[("content-type", "application/json")], sso.to_string())
        .await;
    assert_eq!(login.status, 302, "{}", login.text);
    let location = login.headers["location"].to_str().unwrap().to_owned();
    let landing = host.send(Method::GET, &location, &[], "").await;
    assert_eq!(landing.status, 200, "{}", landing.text);
    assert!(landing.text.contains("Signed in as ada+x@example.com"), "{}", landing.text);
    assert!(!landing.text.contains("@bitrise/beam"), "Beam is Bitrise's");
    session_cookie(&landing);
    // The ticket is single-use: the same URL again (from a log, the history, a shared link)
    // opens no second session.
    let again = host.send(Method::GET, &location, &[], "").await;
    assert_error(&again, 403, "forbidden", "already used");
    assert!(!again.headers.contains_key("set-cookie"), "{:?}", again.headers);
    // The email is covered by the ticket's signature, and reaches the plugin as unverified.
    let forged = location.replace("email=ada", "email=eve");
    assert_error(&host.send(Method::GET, &forged, &[], "").await, 403, "forbidden", "invalid ticket");
}
