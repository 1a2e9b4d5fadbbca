//! Bitrise SSO login: signed, fresh, single-use tokens, answered with well-formed XHTML that
//! loads the Beam header.

use axum::http::Method;

use crate::support::*;

async fn login(host: &TestHost, slug: &str, ts: i64, token: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    host.send(
        Method::POST,
        &format!("/addons/myaddon/login?app_title=Title+of+app+%23{slug}+%26+co&build_slug=b1"),
        &headers,
        format!("app_slug={slug}&timestamp={ts}&token={token}"),
    )
    .await
}

#[tokio::test]
async fn valid_login_renders_xhtml_with_beam() {
    let host = TestHost::start();
    assert_eq!(host.provision("myaddon", TOKEN, "s1", "free").await.status, 201);
    let ts = now();
    // No Authentication header: a browser posts this form.
    let reply = login(&host, "s1", ts, &sso_token("s1", SSO, ts), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let doc = roxmltree::Document::parse_with_options(
        &reply.text,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .expect("the login page must be well-formed XML");
    let scripts: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("script")).collect();
    assert!(scripts.iter().any(|s| { s.attribute("src").is_some_and(|src| src.contains("@bitrise/beam")) }));
    assert!(reply.text.contains("Beam.init"));
    // This is the credentials plugin's own page (its HTTP handler): the app's title from
    // the provision, escaped and intact; the secret is not shown in full.
    let title = doc.descendants().find(|n| n.has_tag_name("title")).unwrap().text().unwrap();
    assert!(title.contains("Title of app #s1"), "{title}");
    let secret = host.kv("myaddon")["secret/s1"].clone();
    assert!(!reply.text.contains(&secret));
}

/// The host's own page (a plugin without an HTTP handler: `storage`) also carries Beam, with
/// the title Bitrise sent on the login.
#[tokio::test]
async fn the_hosts_page_renders_xhtml_with_beam_and_the_logins_title() {
    let host = TestHost::start();
    assert_eq!(host.provision("storage", STORAGE_TOKEN, "s1", "free").await.status, 201);
    let ts = now();
    let body = format!("app_slug=s1&timestamp={ts}&token={}", sso_token("s1", "sso-of-storage", ts));
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let uri = "/addons/storage/login?app_title=Title+of+app+%23s1+%26+co&build_slug=b1";
    let reply = host.send(Method::POST, uri, &headers, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let doc = roxmltree::Document::parse_with_options(
        &reply.text,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .expect("the login page must be well-formed XML");
    assert!(doc.descendants().any(|n| n.attribute("src").is_some_and(|src| src.contains("@bitrise/beam"))));
    let title = doc.descendants().find(|n| n.has_tag_name("title")).unwrap().text().unwrap();
    assert!(title.contains("Title of app #s1 & co"), "{title}");
    // Variable names are shown, their values are not.
    assert!(reply.text.contains("STORAGE_URL"));
    let url = host.record("storage", "s1").unwrap().config[0].1.clone();
    assert!(!reply.text.contains(&url));
}

/// The host's own dashboard (for plugins without a page) presents the add-on: its name and
/// documentation link from `[addon.page]`, a stylesheet, the plan and the variable names.
#[tokio::test]
async fn the_dashboard_presents_the_partner_name_docs_plan_and_variables() {
    // `storage` (the quota plugin) has no HTTP handler of its own.
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.addons[1].page.name = Some("Credentials <Pro>".into());
        cfg.addons[1].page.docs_url = Some("https://docs.example.com/credentials?from=bitrise&v=1".into());
    });
    assert_eq!(host.provision("storage", STORAGE_TOKEN, "s9", "pro").await.status, 201);
    let ts = now();
    let body = format!("app_slug=s9&timestamp={ts}&token={}", sso_token("s9", "sso-of-storage", ts));
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let reply = host.send(Method::POST, "/addons/storage/login", &headers, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let doc = roxmltree::Document::parse_with_options(
        &reply.text,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .expect("the page must be well-formed XML");
    let text =
        |tag: &str| doc.descendants().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).unwrap_or("").to_owned();
    assert!(text("style").contains("font"), "a stylesheet");
    let brand = doc.descendants().find(|n| n.attribute("class") == Some("brand")).unwrap();
    assert_eq!(brand.text(), Some("Credentials <Pro>"), "the partner's name, escaped and intact");
    let links: Vec<_> = doc.descendants().filter_map(|n| n.attribute("href")).collect();
    assert!(links.contains(&"https://docs.example.com/credentials?from=bitrise&v=1"), "{links:?}");
    let plan = doc.descendants().find(|n| n.attribute("class") == Some("plan")).unwrap();
    assert_eq!(plan.text(), Some("pro"));
    let cells: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("code")).filter_map(|n| n.text()).collect();
    assert!(cells.contains(&"STORAGE_URL") && cells.contains(&"STORAGE_QUOTA_MB"), "{cells:?}");
    assert!(
        reply.text.contains("addon_documentation: \"https://docs.example.com/credentials?from=bitrise\\u0026v=1\""),
        "Beam gets the docs link"
    );
}

#[tokio::test]
async fn sha256_tokens_are_accepted() {
    use sha2::Digest;
    let host = TestHost::start();
    host.provision("myaddon", TOKEN, "s2", "free").await;
    let ts = now();
    let token = format!("sha256-{}", hex::encode(sha2::Sha256::digest(format!("s2:{SSO}:{ts}").as_bytes())));
    assert_eq!(login(&host, "s2", ts, &token, &[]).await.status, 200);
}

#[tokio::test]
async fn bad_stale_and_replayed_tokens_are_forbidden() {
    let host = TestHost::start();
    host.provision("myaddon", TOKEN, "s3", "free").await;
    let ts = now();
    assert_error(&login(&host, "s3", ts, &sso_token("s3", "wrong", ts), &[]).await, 403, "forbidden", "does not match");
    assert_error(&login(&host, "s3", ts, "", &[]).await, 403, "forbidden", "does not match");
    // Signed for another app.
    assert_error(&login(&host, "s3", ts, &sso_token("other", SSO, ts), &[]).await, 403, "forbidden", "does not match");
    let old = ts - 301;
    assert_error(&login(&host, "s3", old, &sso_token("s3", SSO, old), &[]).await, 403, "forbidden", "stale");
    let future = ts + 400;
    assert_error(&login(&host, "s3", future, &sso_token("s3", SSO, future), &[]).await, 403, "forbidden", "stale");
    // The shared provisioning token is no substitute for a signed login.
    let with_shared = login(&host, "s3", ts, "x", &[("authentication", TOKEN)]).await;
    assert_eq!(with_shared.status, 403);

    let good = sso_token("s3", SSO, ts);
    assert_eq!(login(&host, "s3", ts, &good, &[]).await.status, 200);
    assert_error(&login(&host, "s3", ts, &good, &[]).await, 403, "forbidden", "already used");
    // Hex is case-insensitive: the same token in other letter case is the same token.
    let shouted = good.to_ascii_uppercase();
    assert_ne!(shouted, good);
    assert_error(&login(&host, "s3", ts, &shouted, &[]).await, 403, "forbidden", "already used");
    let mixed: String =
        good.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c }).collect();
    assert_error(&login(&host, "s3", ts, &mixed, &[]).await, 403, "forbidden", "already used");
}

#[tokio::test]
async fn a_token_first_used_in_upper_case_cannot_be_replayed_in_lower_case() {
    let host = TestHost::start();
    host.provision("myaddon", TOKEN, "s4", "free").await;
    let ts = now();
    let good = sso_token("s4", SSO, ts);
    assert_eq!(login(&host, "s4", ts, &good.to_ascii_uppercase(), &[]).await.status, 200);
    assert_error(&login(&host, "s4", ts, &good, &[]).await, 403, "forbidden", "already used");
}

#[tokio::test]
async fn login_needs_a_provisioned_app() {
    let host = TestHost::start();
    let ts = now();
    assert_error(&login(&host, "ghost", ts, &sso_token("ghost", SSO, ts), &[]).await, 404, "not_found", "ghost");
    host.provision("myaddon", TOKEN, "s4", "free").await;
    host.deprovision("myaddon", TOKEN, "s4").await;
    assert_eq!(login(&host, "s4", ts, &sso_token("s4", SSO, ts), &[]).await.status, 404);
}

#[tokio::test]
async fn malformed_login_requests_get_json_errors() {
    let host = TestHost::start();
    let form = ("content-type", "application/x-www-form-urlencoded");
    let missing = host.send(Method::POST, "/addons/myaddon/login", &[form], "app_slug=a&timestamp=1").await;
    assert_error(&missing, 400, "bad_request", "token");
    let json = host.send(Method::POST, "/addons/myaddon/login", &[("content-type", "application/json")], "{}").await;
    assert_error(&json, 415, "unsupported_media_type", "form");
    let ts_text = host.send(Method::POST, "/addons/myaddon/login", &[form], "app_slug=a&timestamp=soon&token=x").await;
    assert_eq!(ts_text.status, 403);
}
