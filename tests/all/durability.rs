//! What was acknowledged survives a restart on the same data folder.

use crate::support::*;

#[tokio::test]
async fn records_and_kv_survive_restart() {
    let host = TestHost::start();
    let first = host.provision("myaddon", TOKEN, "keep1", "free").await;
    assert_eq!(first.status, 201);
    assert_eq!(host.change_plan("myaddon", TOKEN, "keep1", "pro").await.status, 200);
    let host = host.restart();
    let record = host.record("myaddon", "keep1").expect("record after restart");
    assert_eq!(record.plan, "pro");
    // The original request replays the stored answer: same secret, no new resource.
    let again = host.provision("myaddon", TOKEN, "keep1", "pro").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.env("MYADDON_AUTH_SECRET"), first.env("MYADDON_AUTH_SECRET"));
}
