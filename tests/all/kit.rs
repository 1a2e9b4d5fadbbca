//! Bitrise's testing kit (`bitrise-addon-test` 1.0.2), replayed against the real `addon-host`
//! binary on 127.0.0.1: the same requests byte for byte (as recorded in the kit's source) and
//! the same checks, run the way the kit must be run for 1.0.2 — `provision -r`,
//! `change-plan --plan pro`, `login`, `deprovision -r`, all with one app slug.

use crate::process::{credentials_on_bitrise, exchange, spawn};
use crate::support::{now, sso_token};

const TOKEN: &str = "kit-shared-token";
const SSO: &str = "kit-sso-secret";

fn config() -> String {
    credentials_on_bitrise(TOKEN, SSO)
}

/// The kit's provision check: 2xx, the expected status, and `{"envs":[{key,value}]}` with
/// non-empty keys and values (Go decoding rules: null/missing envs pass).
fn check_provision_reply(status: u16, body: &str, expected: u16) {
    assert!((200..300).contains(&status), "Provisioning request resulted in a non-2xx response: {status}");
    assert_eq!(status, expected, "kit 1.0.2 status check");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON parsing of response failed");
    assert!(v.is_object(), "JSON parsing of response failed: not an object");
    if let Some(envs) = v.get("envs").filter(|e| !e.is_null()) {
        for env in envs.as_array().expect("envs must be an array") {
            let key = env["key"].as_str().expect("string key");
            let value = env["value"].as_str().expect("string value");
            assert!(!key.is_empty(), "ENV var key is not present: {env}");
            assert!(!value.is_empty(), "ENV var value is not present: {env}");
        }
    }
}

#[tokio::test]
async fn bitrise_kit_sequence_passes_against_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path(), &config()).await;
    let addr = server.addr.clone();
    let slug = "db8dedca8eda8f1d";
    let base = "/addons/myaddon";
    let auth = ("Authentication", TOKEN);
    let json = ("Content-Type", "application/json");
    let provision_body = format!(
        r#"{{"app_slug":"{slug}","app_title":"Title of app #{slug}","api_token":"43ebf21edc9e4525","plan":"free"}}"#
    );

    // provision -r: first 201, then 200 twice, same body each time.
    let mut bodies = Vec::new();
    for (i, expected) in [201, 200, 200].into_iter().enumerate() {
        let (status, body) =
            exchange(&addr, "POST", &format!("{base}/provision"), &[auth, json], &provision_body).await;
        check_provision_reply(status, &body, expected);
        bodies.push(body);
        assert_eq!(bodies[i], bodies[0], "repeats answer the same envs");
    }

    // change-plan --plan pro
    let (status, _) =
        exchange(&addr, "PUT", &format!("{base}/provision/{slug}"), &[auth, json], r#"{"plan":"pro"}"#).await;
    assert!((200..300).contains(&status), "Plan changing request resulted in a non-2xx response: {status}");

    // login: form body, query in sorted order; the kit also sends Authentication.
    let ts = now();
    let form = format!("app_slug={slug}&timestamp={ts}&token={}", sso_token(slug, SSO, ts));
    let path = format!("{base}/login?app_title=Title+of+app+%23{slug}&build_slug=0a1b2c3d4e5f6a7b");
    let (status, page) =
        exchange(&addr, "POST", &path, &[auth, ("Content-Type", "application/x-www-form-urlencoded")], &form).await;
    assert!((200..300).contains(&status), "Login request resulted in a non-2xx response: {status} {page}");
    roxmltree::Document::parse_with_options(&page, roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() })
        .expect("Login request responded with invalid HTML");

    // deprovision -r: body `null`, 2xx every time.
    for _ in 0..3 {
        let (status, _) = exchange(&addr, "DELETE", &format!("{base}/provision/{slug}"), &[auth, json], "null").await;
        assert!((200..300).contains(&status), "Deprovisioning request resulted in a non-2xx response: {status}");
    }
    // A standalone `deprovision` with a never-provisioned random slug is 2xx too.
    let (status, _) =
        exchange(&addr, "DELETE", &format!("{base}/provision/5f4e3d2c1b0a9f8e"), &[auth, json], "null").await;
    assert_eq!(status, 200);

    server.child.kill().await.unwrap();
}

async fn provision(addr: &str, body: &str) -> (u16, String) {
    exchange(
        addr,
        "POST",
        "/addons/myaddon/provision",
        &[("Authentication", TOKEN), ("Content-Type", "application/json")],
        body,
    )
    .await
}

#[tokio::test]
async fn acknowledged_provisions_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path(), &config()).await;
    let mut answered = Vec::new();
    for i in 0..5 {
        let body = format!(r#"{{"app_slug":"kill{i}","api_token":"t{i}","plan":"free"}}"#);
        let (status, reply) = provision(&server.addr, &body).await;
        assert_eq!(status, 201, "{reply}");
        answered.push((body, reply));
    }
    // SIGKILL: no graceful shutdown, no final flush.
    server.child.kill().await.unwrap();
    let server = spawn(dir.path(), &config()).await;
    for (body, reply) in answered {
        let (status, again) = provision(&server.addr, &body).await;
        assert_eq!((status, again), (200, reply), "an acknowledged provision was lost");
    }
}
