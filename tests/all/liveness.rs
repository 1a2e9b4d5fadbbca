//! `/healthz` tells the truth about storage: while durable commits make no progress it
//! answers 503 `storage_stalled` (and stays fast), and it turns 200 again once they resume.
//!
//! sled's transaction lock is process-wide, so holding storage stuck would stall every other
//! test sharing this process. The scenario therefore runs in a child process: this test
//! binary, re-run on the ignored `stalled_storage_scenario` alone.

use std::time::{Duration, Instant};

use axum::http::Method;

use crate::support::*;

const CHILD: &str = "ADDON_LIVENESS_CHILD";

#[test]
fn healthz_reports_stalled_storage_and_recovers() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "liveness::stalled_storage_scenario", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the stall scenario failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the scenario did not run:\n{stdout}");
    assert!(stderr.contains("STORAGE STALLED"), "the stall was not logged:\n{stderr}");
}

async fn health(host: &TestHost) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = host.send(Method::GET, "/healthz", &[], "").await;
    (reply, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in its own process by healthz_reports_stalled_storage_and_recovers"]
async fn stalled_storage_scenario() {
    assert!(std::env::var(CHILD).is_ok(), "run through healthz_reports_stalled_storage_and_recovers");
    tracing_subscriber_init();
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| cfg.server.stall_after_ms = 1_000);
    assert_eq!(health(&host).await.0.status, 200);

    // Hold the commits of the heartbeat and of the add-on for 4 s, as a stuck disk (or a
    // stuck database) would: the watchdog's heartbeat and the provision's commit wait.
    let holders: Vec<_> = ["heartbeat", "addon/myaddon"]
        .into_iter()
        .map(|space| {
            let storage = host.service.storage().clone();
            std::thread::spawn(move || storage.hold_commits(space, Duration::from_secs(4)).unwrap())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let host = std::sync::Arc::new(host);
    let pending = {
        let host = host.clone();
        tokio::spawn(async move { host.provision("myaddon", TOKEN, "during-stall", "free").await })
    };

    // Within the limit plus a heartbeat, /healthz says so, quickly and with a JSON reason.
    let mut stalled = None;
    for _ in 0..30 {
        let (reply, took) = health(&host).await;
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        if reply.status == 503 {
            stalled = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stalled = stalled.expect("/healthz never reported the stall");
    assert_eq!(stalled.json()["error"], "storage_stalled", "{}", stalled.text);
    // Readiness follows storage; liveness does not (restarting would not help).
    let ready = host.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["error"].clone()),
        (503, "storage_stalled".into()),
        "{}",
        ready.text
    );
    assert_eq!(host.send(Method::GET, "/livez", &[], "").await.status, 200);
    assert!(!pending.is_finished(), "the provision should be waiting on storage");

    // Once storage moves again, the waiting provision completes and /healthz recovers.
    for holder in holders {
        holder.join().unwrap();
    }
    let reply = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("provision resumed").unwrap();
    assert_eq!(reply.status, 201, "{}", reply.text);
    let mut recovered = false;
    for _ in 0..40 {
        if health(&host).await.0.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "/healthz did not recover after storage resumed");
    assert_eq!(host.send(Method::GET, "/readyz", &[], "").await.status, 200);
}

/// The child's log goes to stderr, where the parent looks for the stall report.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
}
