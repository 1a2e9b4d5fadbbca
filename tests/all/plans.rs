//! The plan-dependent example add-on (`plugins/quota`): quotas, a refused downgrade, a
//! non-instant upgrade and a full free tier, with every refusal leaving state unchanged.

use axum::http::Method;

use crate::support::*;

async fn provision_with_usage(host: &TestHost, slug: &str, plan: &str) -> Reply {
    host.provision("storage", STORAGE_TOKEN, slug, plan).await
}

#[tokio::test]
async fn quotas_follow_the_plan() {
    let host = TestHost::start();
    let pro = provision_with_usage(&host, "q1", "pro").await;
    assert_eq!(pro.status, 201, "{}", pro.text);
    assert_eq!(pro.env("STORAGE_QUOTA_MB"), "10240");
    let url = pro.env("STORAGE_URL");
    assert!(url.starts_with("https://storage.example.com/b/b"), "{url}");
    let down = host.change_plan("storage", STORAGE_TOKEN, "q1", "free").await;
    assert_eq!(down.status, 200, "{}", down.text);
    let record = host.record("storage", "q1").unwrap();
    assert!(record.config.contains(&("STORAGE_QUOTA_MB".into(), "512".into())));
    assert!(record.config.contains(&("STORAGE_URL".into(), url)), "the bucket stays the same");
}

#[tokio::test]
async fn enterprise_is_not_instant_and_free_tier_fills_up() {
    let host = TestHost::start();
    provision_with_usage(&host, "e1", "pro").await;
    let up = host.change_plan("storage", STORAGE_TOKEN, "e1", "enterprise").await;
    assert_error(&up, 503, "unavailable", "not instant");
    assert_eq!(up.json()["url"], "https://storage.example.com/docs");
    assert_eq!(host.record("storage", "e1").unwrap().plan, "pro");

    // free_capacity is 2 in the test config.
    assert_eq!(provision_with_usage(&host, "f1", "free").await.status, 201);
    assert_eq!(provision_with_usage(&host, "f2", "free").await.status, 201);
    let full = provision_with_usage(&host, "f3", "free").await;
    assert_error(&full, 503, "unavailable", "free tier is full");
    assert_eq!(host.kv("storage")["tier/free/used"], "2", "the refused call's increment was discarded");
    // Releasing a slot lets the next one in.
    assert_eq!(host.deprovision("storage", STORAGE_TOKEN, "f1").await.status, 200);
    assert!(host.kv("storage").keys().all(|k| !k.starts_with("res/f1/")), "deprovision removed f1's keys");
    assert_eq!(provision_with_usage(&host, "f3", "free").await.status, 201);
}

#[tokio::test]
async fn downgrade_from_enterprise_with_data_is_refused() {
    let host = TestHost::start();
    // An enterprise resource created with 20 GB stored (usage comes in as a provision option on
    // Xervo; here it is seeded through the plugin's own KV as a real usage report would be).
    assert_eq!(provision_with_usage(&host, "d1", "enterprise").await.status, 201);
    let addon = host.service.addon("storage").unwrap();
    let mut txn = addon.store().begin();
    txn.set("res/d1/usage", b"20480".to_vec());
    addon.store().commit(&txn, addon_host::storage::KvQuota::UNLIMITED, None, None).unwrap();

    let down = host.change_plan("storage", STORAGE_TOKEN, "d1", "pro").await;
    assert_error(&down, 422, "refused", "20480 MB stored exceeds");
    assert_eq!(host.record("storage", "d1").unwrap().plan, "enterprise");
    let unknown = host
        .send(
            Method::PUT,
            "/addons/storage/provision/d1",
            &[("authentication", STORAGE_TOKEN), ("content-type", "application/json")],
            r#"{"plan":"platinum"}"#,
        )
        .await;
    assert_error(&unknown, 422, "unknown_plan", "platinum");
}
