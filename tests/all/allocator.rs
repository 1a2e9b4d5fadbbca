//! The instance allocator: `auto` uses the pooling allocator when the machine lets the host
//! reserve its address space and falls back to on-demand allocation when it cannot, saying
//! so on `/admin/status`; `pooling` asked for explicitly refuses to start instead. The limit is a
//! real `ulimit -v` on the real binary.

use serde_json::Value;

use crate::process::*;

/// Far too little for the pool's reservations (tens of GiB of address space), enough for
/// on-demand instances one at a time.
const ADDRESS_SPACE_KIB: u64 = 16 << 20;

/// The engine on `/admin/status`; `/healthz`, public, says only that the host serves.
async fn engine(server: &Server) -> Value {
    let (status, health) = exchange(&server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, text) = server.as_admin("/admin/status").await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["engine"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_on_demand_when_the_pool_cannot_be_reserved() {
    let addons = credentials_on_bitrise("allocator-token-0123", "sso-secret");

    let dir = tempfile::tempdir().unwrap();
    let unlimited = spawn(dir.path(), &addons).await;
    assert_eq!(engine(&unlimited).await["allocator"], "pooling");
    drop(unlimited);

    let dir = tempfile::tempdir().unwrap();
    let limited = spawn_limited(dir.path(), &addons, ADDRESS_SPACE_KIB).await;
    let engine = engine(&limited).await;
    assert_eq!(engine["allocator"], "on-demand", "{engine}");
    assert!(!engine["pooling_error"].as_str().unwrap_or_default().is_empty(), "{engine}");
    assert!(limited.logged("pooling allocator unavailable", std::time::Duration::from_secs(5)).await);
    // And it serves.
    let auth = [("authentication", "allocator-token-0123"), ("content-type", "application/json")];
    let body = r#"{"plan":"free","app_slug":"on-demand-app","api_token":"t"}"#;
    let (status, reply) = exchange(&limited.addr, "POST", "/addons/myaddon/provision", &auth, body).await;
    assert_eq!(status, 201, "{reply}");
}

#[tokio::test]
async fn pooling_asked_for_refuses_to_start_without_its_address_space() {
    let dir = tempfile::tempdir().unwrap();
    let addons = credentials_on_bitrise("allocator-token-0123", "sso-secret");
    let config = write_config(dir.path(), &format!("allocator = \"pooling\"\n{addons}"));
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), limited(ADDRESS_SPACE_KIB, &config).output())
        .await
        .expect("addon-host exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its pool: {stderr}");
    assert!(stderr.contains("creating the pooling allocator"), "{stderr}");
}
