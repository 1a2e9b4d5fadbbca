//! The Xervo protocol beyond what `dia` checks: credentials, identities, 503 pass-through,
//! config-var rules, SSO tickets, and one plugin serving both platforms.

use axum::http::Method;
use serde_json::json;

use crate::support::*;

fn dia_body(app: &str, plan: &str) -> String {
    json!({"options": {}, "callback_url": "http://localhost:8000/callback/999", "modulus_id": app,
           "email": format!("{app}@example.com"), "plan": plan, "region": "us-east-1"})
    .to_string()
}

impl TestHost {
    async fn xervo(&self, method: Method, addon: &str, path: &str, auth: &str, body: &str) -> Reply {
        let headers = [("authorization", auth), ("content-type", "application/json"), ("accept", "application/json")];
        self.send(method, &format!("/addons/{addon}{path}"), &headers, body.to_owned()).await
    }

    pub(crate) async fn xprovision(&self, app: &str, plan: &str) -> Reply {
        let auth = basic("myaddon", XERVO_PASSWORD);
        self.xervo(Method::POST, "myaddon", "/resources", &auth, &dia_body(app, plan)).await
    }
}

#[tokio::test]
async fn provision_returns_a_stable_id_and_config() {
    let host = TestHost::start();
    let first = host.xprovision("myaddon999", "test").await;
    assert_eq!(first.status, 200, "{}", first.text);
    let body = first.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("myaddon-") && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{id}");
    assert_eq!(body["config"]["MYADDON_HOST_URL"], format!("https://myaddon.example.com/apps/{id}"));
    assert_eq!(body["config"]["MYADDON_AUTH_SECRET"].as_str().unwrap().len(), 48);
    assert!(body["message"].is_string());

    let again = host.xprovision("myaddon999", "test").await;
    assert_eq!((again.status.as_u16(), &again.text), (200, &first.text), "identical repeat, same resource");
    // Same app, another plan: the same resource, re-provisioned.
    let other_plan = host.xprovision("myaddon999", "pro").await;
    assert_eq!(other_plan.json()["id"], id.as_str());
    // Another app: another resource.
    assert_ne!(host.xprovision("app-two", "test").await.json()["id"], id.as_str());
    let record = host.record("myaddon", &id).unwrap();
    assert_eq!((record.platform.as_str(), record.app_id.as_str()), ("xervo", "myaddon999"));
}

#[tokio::test]
async fn request_fields_reach_the_plugin() {
    let host = TestHost::start();
    let auth = basic("storage", "xervo-password-storage");
    let body =
        json!({"modulus_id": "m1", "plan": "pro", "region": "eu", "email": "a@b.c", "options": {"usage_mb": 20000}});
    let too_big = host.xervo(Method::POST, "storage", "/resources", &auth, &body.to_string()).await;
    // The plugin read `options.usage_mb` (sent as a JSON number) and refused: 20000 MB > pro's quota.
    assert_error(&too_big, 422, "refused", "20000 MB does not fit");
    let body = json!({"modulus_id": "m1", "plan": "pro", "options": {"usage_mb": "100"}});
    assert_eq!(host.xervo(Method::POST, "storage", "/resources", &auth, &body.to_string()).await.status, 200);
}

#[tokio::test]
async fn heroku_uuid_names_the_resource_and_is_never_recreated() {
    let host = TestHost::start();
    let auth = basic("myaddon", XERVO_PASSWORD);
    let body = json!({"uuid": "01234567-89ab-cdef-0123-456789abcdef", "plan": "free", "region": "amazon-web-services::us-east-1"});
    let first = host.xervo(Method::POST, "myaddon", "/resources", &auth, &body.to_string()).await;
    assert_eq!(first.json()["id"], "01234567-89ab-cdef-0123-456789abcdef");
    let path = "/resources/01234567-89ab-cdef-0123-456789abcdef";
    assert_eq!(host.xervo(Method::DELETE, "myaddon", path, &auth, "").await.status, 200);
    let again = host.xervo(Method::POST, "myaddon", "/resources", &auth, &body.to_string()).await;
    assert_error(&again, 410, "gone", "deprovisioned");
    let no_identity = host.xervo(Method::POST, "myaddon", "/resources", &auth, r#"{"plan":"free"}"#).await;
    assert_error(&no_identity, 400, "bad_request", "modulus_id");
}

#[tokio::test]
async fn credentials_are_per_addon_and_per_protocol() {
    let host = TestHost::start();
    let body = dia_body("app", "test");
    let cases = [
        ("missing", String::new()),
        ("wrong password", basic("myaddon", "nope")),
        ("wrong user", basic("storage", XERVO_PASSWORD)),
        ("another add-on's credentials", basic("storage", "xervo-password-storage")),
        ("the Bitrise token", TOKEN.to_owned()),
        ("bearer", format!("Bearer {XERVO_PASSWORD}")),
        ("not base64", "Basic %%%".to_owned()),
    ];
    for (name, auth) in cases {
        let reply = host.xervo(Method::POST, "myaddon", "/resources", &auth, &body).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.text);
        assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"addon-host\"", "{name}");
        assert_eq!(reply.json()["error"], "unauthorized");
    }
    let bitrise_token = host
        .send(
            Method::POST,
            "/addons/myaddon/resources",
            &[("authentication", TOKEN), ("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_eq!(bitrise_token.status, 401);
    // Xervo credentials are not valid on the Bitrise routes.
    let on_bitrise = host
        .send(
            Method::POST,
            "/addons/myaddon/provision",
            &[("authorization", &basic("myaddon", XERVO_PASSWORD)), ("content-type", "application/json")],
            r#"{"app_slug":"a","api_token":"t","plan":"free"}"#,
        )
        .await;
    assert_eq!(on_bitrise.status, 401);
    assert!(host.service.addon("myaddon").unwrap().store().records().unwrap().is_empty());
}

#[tokio::test]
async fn plan_change_deprovision_and_unknown_ids() {
    let host = TestHost::start();
    let auth = basic("myaddon", XERVO_PASSWORD);
    let id = host.xprovision("app", "test").await.json()["id"].as_str().unwrap().to_owned();
    let changed = host
        .xervo(Method::PUT, "myaddon", &format!("/resources/{id}"), &auth, r#"{"plan":"pro","modulus_id":"app"}"#)
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json()["message"], "Now on pro.");
    assert!(changed.json()["config"]["MYADDON_AUTH_SECRET"].is_string());
    let same = host.xervo(Method::PUT, "myaddon", &format!("/resources/{id}"), &auth, r#"{"plan":"pro"}"#).await;
    assert_eq!(same.status, 200);
    let unknown = host.xervo(Method::PUT, "myaddon", "/resources/nope", &auth, r#"{"plan":"pro"}"#).await;
    assert_error(&unknown, 404, "not_found", "nope");
    let foo = host.xervo(Method::PUT, "myaddon", &format!("/resources/{id}"), &auth, r#"{"plan":"foo"}"#).await;
    assert_error(&foo, 422, "unknown_plan", "foo");

    assert_eq!(host.xervo(Method::DELETE, "myaddon", &format!("/resources/{id}"), &auth, "").await.status, 200);
    assert_eq!(host.xervo(Method::DELETE, "myaddon", &format!("/resources/{id}"), &auth, "").await.status, 200);
    assert_error(&host.xervo(Method::DELETE, "myaddon", "/resources/nope", &auth, "").await, 404, "not_found", "nope");
}

#[tokio::test]
async fn unavailable_is_a_503_with_the_docs_link() {
    let host = TestHost::start();
    let auth = basic("storage", "xervo-password-storage");
    let created = host.xervo(Method::POST, "storage", "/resources", &auth, &dia_body("s", "pro")).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let up = host.xervo(Method::PUT, "storage", &format!("/resources/{id}"), &auth, r#"{"plan":"enterprise"}"#).await;
    assert_eq!(up.status, 503);
    assert_eq!(up.headers["retry-after"], "30", "a plugin's \"not now\" tells the platform when to retry");
    let message = up.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("not instant") && message.contains("https://storage.example.com/docs"), "{message}");
    assert_eq!(host.record("storage", &id).unwrap().plan, "pro");
}

#[tokio::test]
async fn config_var_violations_are_5xx_and_record_nothing() {
    let host = TestHost::start();
    let auth = basic("misbehave", "xervo-password-misbehave");
    let cases = [
        ("normal", "MISBEHAVE_URL declared in the manifest is missing"),
        ("bad-url", "MISBEHAVE_URL is not a URL"),
        ("foreign-var", "OTHER_TOKEN does not start with MISBEHAVE"),
        ("write", "MISBEHAVE_URL declared in the manifest is missing"),
    ];
    for (i, (plan, needle)) in cases.into_iter().enumerate() {
        let reply = host.xervo(Method::POST, "misbehave", "/resources", &auth, &dia_body(&format!("a{i}"), plan)).await;
        assert_error(&reply, 500, "invalid_reply", needle);
    }
    assert!(host.service.addon("misbehave").unwrap().store().records().unwrap().is_empty());
    assert!(host.kv("misbehave").is_empty(), "the `write` plan's KV write was discarded");
    let good = host.xervo(Method::POST, "misbehave", "/resources", &auth, &dia_body("ok", "xervo-good")).await;
    assert_eq!(good.status, 200, "{}", good.text);
    // The same plugin reply is fine on Bitrise, which has no manifest.
    assert_eq!(host.provision("misbehave", MISBEHAVE_TOKEN, "bitrise-app", "normal").await.status, 201);
}

async fn sso(host: &TestHost, content_type: &str, body: String) -> Reply {
    host.send(Method::POST, "/addons/myaddon/sso/login", &[("content-type", content_type)], body).await
}

fn sso_json(id: &str, ts: i64, token: &str) -> String {
    json!({"id": id, "timestamp": ts, "email": "u@example.com", "token": token, "nav-data": ""}).to_string()
}

#[tokio::test]
async fn sso_redirects_to_a_ticketed_dashboard() {
    let host = TestHost::start();
    let id = host.xprovision("app", "test").await.json()["id"].as_str().unwrap().to_owned();
    let ts = now();
    let bad = sso(&host, "application/json", sso_json(&id, ts, "invalid")).await;
    assert_error(&bad, 403, "forbidden", "does not match");

    let good = sso(&host, "application/json", sso_json(&id, ts, &sso_token(&id, XERVO_SALT, ts))).await;
    assert_eq!(good.status, 302, "{}", good.text);
    let location = good.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/addons/myaddon/sso/dashboard?ticket=") && !location.contains("http"), "{location}");
    // The dashboard answers without cookies.
    let page = host.send(Method::GET, &location, &[], "").await;
    assert_eq!(page.status, 200, "{}", page.text);
    // The credentials plugin's own page (its HTTP handler), for this resource and plan.
    assert!(page.text.contains(&id) && page.text.contains("id=\"plan\">test<"), "{}", page.text);
    roxmltree::Document::parse_with_options(
        &page.text,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .expect("well-formed page");

    // Replayed (also in other letter case), stale, forged.
    let replay = sso(&host, "application/json", sso_json(&id, ts, &sso_token(&id, XERVO_SALT, ts))).await;
    assert_error(&replay, 403, "forbidden", "already used");
    let shouted = sso_token(&id, XERVO_SALT, ts).to_ascii_uppercase();
    assert_error(&sso(&host, "application/json", sso_json(&id, ts, &shouted)).await, 403, "forbidden", "already used");
    let old = ts - 400;
    let stale = sso(&host, "application/json", sso_json(&id, old, &sso_token(&id, XERVO_SALT, old))).await;
    assert_error(&stale, 403, "forbidden", "stale");
    let forged = location.replace("ticket=", "ticket=x");
    assert_eq!(host.send(Method::GET, &forged, &[], "").await.status, 403);
    // Change the signature's last digit (to one it is not: a fixed digit made this pass 15 times in 16).
    let flipped = if location.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &location[..location.len() - 1]);
    assert_eq!(host.send(Method::GET, &tampered, &[], "").await.status, 403);
    assert_eq!(host.send(Method::GET, "/addons/myaddon/sso/dashboard", &[], "").await.status, 403);
}

/// A dashboard ticket lasts five minutes: the one issued says so, and one past its expiry
/// is refused even with a valid signature (made here with the host's ticket key, checked by
/// first making a valid one the same way).
#[tokio::test]
async fn dashboard_tickets_expire() {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let host = TestHost::start();
    let id = host.xprovision("app", "test").await.json()["id"].as_str().unwrap().to_owned();
    let ts = now();
    let good = sso(&host, "application/json", sso_json(&id, ts, &sso_token(&id, XERVO_SALT, ts))).await;
    let location = good.headers["location"].to_str().unwrap().to_owned();
    // `?ticket={id}.{expires}.{nonce}.{signature}&email=...`: the email is signed with the
    // rest, and the nonce makes the ticket single-use.
    let ticket_part = location.split("ticket=").nth(1).unwrap().split('&').next().unwrap();
    let mut parts = ticket_part.rsplit('.');
    let (nonce, expires) = (parts.nth(1).unwrap().to_owned(), parts.next().unwrap().parse::<i64>().unwrap());
    assert!((ts + 290..=ts + 310).contains(&expires), "expires {expires}, {} s from now", expires - ts);
    assert_eq!(nonce.len(), 32, "{ticket_part}");

    let ticket = |expires: i64, nonce: &str| {
        let key = Sha256::digest(format!("addon-host dashboard ticket:myaddon:{XERVO_SALT}").as_bytes());
        let mut mac = <Hmac<Sha256>>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{expires}.{nonce}.u@example.com").as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        format!("/addons/myaddon/sso/dashboard?ticket={id}.{expires}.{nonce}.{signature}&email=u%40example.com")
    };
    assert_eq!(ticket(expires, &nonce), location, "the test signs tickets as the host does");
    assert_eq!(host.send(Method::GET, &ticket(now() + 60, "fresh-nonce-1"), &[], "").await.status, 200);
    let expired = host.send(Method::GET, &ticket(now() - 1, "fresh-nonce-2"), &[], "").await;
    assert_error(&expired, 403, "forbidden", "expired");
    // Pushing a real ticket's expiry out breaks its signature.
    let extended = location.replace(&format!(".{expires}."), &format!(".{}.", expires + 3600));
    assert_error(&host.send(Method::GET, &extended, &[], "").await, 403, "forbidden", "invalid ticket");
}

/// Heroku v1 sends `heroku_id` where Xervo sends `modulus_id`: a repeat for the same app is
/// the same resource (identical: replayed; different plan: re-provisioned in place).
#[tokio::test]
async fn heroku_id_identifies_the_app_like_modulus_id() {
    let host = TestHost::start();
    let auth = basic("myaddon", XERVO_PASSWORD);
    let body = |plan: &str| json!({"heroku_id": "app123@heroku.com", "plan": plan, "region": "us"}).to_string();
    let first = host.xervo(Method::POST, "myaddon", "/resources", &auth, &body("test")).await;
    assert!(first.status.is_success(), "{}", first.text);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let repeat = host.xervo(Method::POST, "myaddon", "/resources", &auth, &body("test")).await;
    assert_eq!(repeat.text, first.text, "an identical repeat is replayed");
    let other_app = json!({"heroku_id": "app456@heroku.com", "plan": "test"}).to_string();
    let other = host.xervo(Method::POST, "myaddon", "/resources", &auth, &other_app).await;
    assert_ne!(other.json()["id"], id, "another app is another resource");
    let as_modulus = json!({"modulus_id": "app123@heroku.com", "plan": "test", "region": "us"}).to_string();
    let same = host.xervo(Method::POST, "myaddon", "/resources", &auth, &as_modulus).await;
    assert_eq!(same.json()["id"], id, "modulus_id and heroku_id name the same app");
    let upgraded = host.xervo(Method::POST, "myaddon", "/resources", &auth, &body("pro")).await;
    assert!(upgraded.status.is_success(), "{}", upgraded.text);
    assert_eq!(upgraded.json()["id"], id);
    assert_eq!(host.record("myaddon", &id).unwrap().plan, "pro");
}

#[tokio::test]
async fn sso_accepts_forms_heroku_fields_and_deprovisioned_resources() {
    let host = TestHost::start();
    let auth = basic("myaddon", XERVO_PASSWORD);
    let id = host.xprovision("app", "test").await.json()["id"].as_str().unwrap().to_owned();
    let ts = now();
    let form = format!(
        "resource_id={id}&timestamp={ts}&resource_token={}&email=u%40example.com",
        sso_token(&id, XERVO_SALT, ts)
    );
    let reply = sso(&host, "application/x-www-form-urlencoded", form).await;
    assert_eq!(reply.status, 302, "{}", reply.text);

    assert_eq!(host.xervo(Method::DELETE, "myaddon", &format!("/resources/{id}"), &auth, "").await.status, 200);
    let ts = now() + 1;
    let after = sso(&host, "application/json", sso_json(&id, ts, &sso_token(&id, XERVO_SALT, ts))).await;
    assert_eq!(after.status, 302, "{}", after.text);
    let page = host.send(Method::GET, after.headers["location"].to_str().unwrap(), &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("deprovisioned"), "{}", page.text);

    let unknown = sso(&host, "application/json", sso_json("ghost", ts, &sso_token("ghost", XERVO_SALT, ts))).await;
    assert_eq!(unknown.status, 404);
    let missing = sso(&host, "application/json", r#"{"id":"x"}"#.to_owned()).await;
    assert_error(&missing, 400, "bad_request", "timestamp");
}

#[tokio::test]
async fn one_plugin_serves_both_protocols() {
    let host = TestHost::start();
    let bitrise = host.provision("myaddon", TOKEN, "bitrise-slug", "free").await;
    assert_eq!(bitrise.status, 201);
    let xervo = host.xprovision("xervo-app", "free").await;
    assert_eq!(xervo.status, 200);
    let xid = xervo.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(bitrise.env("MYADDON_AUTH_SECRET"), xervo.json()["config"]["MYADDON_AUTH_SECRET"].as_str().unwrap());
    let addon = host.service.addon("myaddon").unwrap();
    assert_eq!(addon.record("bitrise-slug").unwrap().unwrap().platform, "bitrise");
    assert_eq!(addon.record(&xid).unwrap().unwrap().platform, "xervo");
    let kv = host.kv("myaddon");
    assert!(kv.contains_key("secret/bitrise-slug") && kv.contains_key(&format!("secret/{xid}")));
}

/// A resource belongs to the platform that created it: with the add-on's Xervo credentials a
/// Bitrise app cannot be changed, deprovisioned or logged into, and the reverse; each is 404
/// and changes nothing.
#[tokio::test]
async fn resources_are_invisible_to_the_other_protocol() {
    let host = TestHost::start();
    let auth = basic("myaddon", XERVO_PASSWORD);
    assert_eq!(host.provision("myaddon", TOKEN, "bitrise-app", "free").await.status, 201);
    let before = host.record("myaddon", "bitrise-app").unwrap();

    let path = "/resources/bitrise-app";
    assert_error(&host.xervo(Method::DELETE, "myaddon", path, &auth, "").await, 404, "not_found", "bitrise-app");
    let plan = host.xervo(Method::PUT, "myaddon", path, &auth, r#"{"plan":"pro"}"#).await;
    assert_error(&plan, 404, "not_found", "bitrise-app");
    let ts = now();
    let login = sso(&host, "application/json", sso_json("bitrise-app", ts, &sso_token("bitrise-app", XERVO_SALT, ts)));
    assert_eq!(login.await.status, 404);
    assert_eq!(host.record("myaddon", "bitrise-app").unwrap(), before, "the Bitrise app is untouched");

    // The reverse: Bitrise cannot touch what Xervo created.
    let id = host.xprovision("app", "test").await.json()["id"].as_str().unwrap().to_owned();
    let xervo_record = host.record("myaddon", &id).unwrap();
    assert_error(&host.deprovision("myaddon", TOKEN, &id).await, 404, "not_found", &id);
    assert_error(&host.change_plan("myaddon", TOKEN, &id, "pro").await, 404, "not_found", &id);
    assert_error(&host.provision("myaddon", TOKEN, &id, "pro").await, 404, "not_found", &id);
    assert_eq!(host.record("myaddon", &id).unwrap(), xervo_record, "the Xervo resource is untouched");
    // Each platform still manages its own.
    assert_eq!(host.xervo(Method::DELETE, "myaddon", &format!("/resources/{id}"), &auth, "").await.status, 200);
    assert_eq!(host.deprovision("myaddon", TOKEN, "bitrise-app").await.status, 200);
}
