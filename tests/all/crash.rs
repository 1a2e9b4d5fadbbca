//! Crash durability: the real binary is killed with SIGKILL at random moments while clients
//! provision, and restarted on the same data folder, several times. Every provision that was
//! answered 2xx must come back with the reply that was sent, and the store must hold no
//! half-written state: each active record's secret is in the plugin's KV and vice versa.
//!
//! `ADDON_CRASH_CYCLES` (default 4) runs a longer soak.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_host::service::Record;
use addon_host::storage::Storage;

use crate::process::{credentials_on_bitrise, spawn, try_exchange};

const TOKEN: &str = "crash-shared-token";

fn config() -> String {
    credentials_on_bitrise(TOKEN, "crash-sso")
}

/// (request body, reply body) of every provision answered 2xx.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

async fn client(addr: String, prefix: String, acked: Acked) {
    for i in 0.. {
        let body = format!(r#"{{"app_slug":"{prefix}-{i}","api_token":"t{i}","plan":"free"}}"#);
        let headers = [("Authentication", TOKEN), ("Content-Type", "application/json")];
        match try_exchange(&addr, "POST", "/addons/myaddon/provision", &headers, &body).await {
            Ok((status, reply)) if (200..300).contains(&status) => acked.lock().unwrap().push((body, reply)),
            Ok((status, reply)) => panic!("provision refused while healthy: {status} {reply}"),
            Err(_) => return, // the server was killed mid-request: that answer was never sent
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_provisions_survive_repeated_sigkill() {
    let cycles: usize = std::env::var("ADDON_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    println!("crash test seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let acked: Acked = Arc::default();
    for cycle in 0..cycles {
        let mut server = spawn(dir.path(), &config()).await;
        let clients: Vec<_> =
            (0..3).map(|c| tokio::spawn(client(server.addr.clone(), format!("c{cycle}x{c}"), acked.clone()))).collect();
        // Kill at a random moment 150–750 ms into the traffic.
        let delay = 150 + (seed.wrapping_mul(2654435761).wrapping_add(cycle as u64 * 7919) % 600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.child.kill().await.unwrap();
        for c in clients {
            c.await.unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > cycles, "too little traffic to test anything: {}", acked.len());

    // Every acknowledged provision replays its exact reply.
    let mut server = spawn(dir.path(), &config()).await;
    for (body, reply) in &acked {
        let headers = [("Authentication", TOKEN), ("Content-Type", "application/json")];
        let again = try_exchange(&server.addr, "POST", "/addons/myaddon/provision", &headers, body).await.unwrap();
        assert_eq!(again, (200, reply.clone()), "acknowledged provision lost or changed: {body}");
    }
    server.child.kill().await.unwrap();

    // Nothing half-written: records and the plugin's KV agree exactly.
    let storage = Storage::open(&dir.path().join("data")).unwrap();
    let store = storage.addon("myaddon").unwrap();
    let kv = store.kv_dump().unwrap();
    let records = store.records().unwrap();
    for (id, bytes) in &records {
        let record = Record::from_bytes(bytes).expect("a complete record");
        let secret = &record.config.iter().find(|(k, _)| k == "MYADDON_AUTH_SECRET").expect("secret var").1;
        assert_eq!(kv.get(&format!("secret/{id}")).map(|v| v.as_slice()), Some(secret.as_bytes()), "record {id}");
    }
    let secrets = kv.keys().filter(|k| k.starts_with("secret/")).count();
    assert_eq!(secrets, records.len(), "a secret without a record, or the reverse");
    println!("{} acknowledged, {} stored after {cycles} kills", acked.len(), records.len());
}
