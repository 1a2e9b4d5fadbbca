//! Concurrent requests: identical provisions collapse into one plugin call, calls for
//! different apps run side by side up to the add-on's share and then queue, and calls for
//! different apps that touch the same key are serialised by optimistic retries. (Many
//! clients committing on distinct resources for seconds: `load.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;

use futures::future::join_all;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_concurrent_provisions_make_one_call() {
    let host = Arc::new(TestHost::start());
    let replies = join_all((0..64).map(|_| {
        let host = host.clone();
        tokio::spawn(async move { host.provision("misbehave", MISBEHAVE_TOKEN, "same-app", "count").await })
    }))
    .await;
    let replies: Vec<Reply> = replies.into_iter().map(|r| r.unwrap()).collect();
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "exactly one creation");
    assert!(replies.iter().all(|r| r.status == 201 || r.status == 200));
    assert!(replies.iter().all(|r| r.text == replies[0].text), "identical replies");
    assert_eq!(replies[0].env("MISBEHAVE_CALLS"), "1");
    assert_eq!(host.kv("misbehave")["calls"], "1", "the plugin ran once");
    assert_eq!(host.service.addon("misbehave").unwrap().store().records().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_apps_sharing_a_counter_lose_no_update() {
    let host = Arc::new(TestHost::start());
    let n = 24;
    let replies = join_all((0..n).map(|i| {
        let host = host.clone();
        tokio::spawn(async move { host.provision("misbehave", MISBEHAVE_TOKEN, &format!("app{i}"), "count").await })
    }))
    .await;
    let mut seen: Vec<u64> = replies
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.status, 201, "{}", r.text);
            r.env("MISBEHAVE_CALLS").parse().unwrap()
        })
        .collect();
    seen.sort();
    // Each committed call saw a distinct counter value: 1..=n, as if run one after another.
    assert_eq!(seen, (1..=n as u64).collect::<Vec<_>>());
    assert_eq!(host.kv("misbehave")["calls"], n.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_provision_change_and_deprovision_stay_consistent() {
    let host = Arc::new(TestHost::start());
    assert_eq!(host.provision("myaddon", TOKEN, "race", "free").await.status, 201);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => host.provision("myaddon", TOKEN, "race", "free").await.status.as_u16(),
                1 => host
                    .change_plan("myaddon", TOKEN, "race", if i % 2 == 0 { "pro" } else { "free" })
                    .await
                    .status
                    .as_u16(),
                _ => host.deprovision("myaddon", TOKEN, "race").await.status.as_u16(),
            }
        }));
    }
    for status in join_all(tasks).await {
        let status = status.unwrap();
        assert!(matches!(status, 200 | 201 | 404), "unexpected {status}");
    }
    // Whatever the order, the record and the plugin's KV agree.
    let record = host.record("myaddon", "race").unwrap();
    assert_eq!(record.is_active(), host.kv("myaddon").contains_key("secret/race"));
    if record.is_active() {
        let secret = &record.config.iter().find(|(k, _)| k == "MYADDON_AUTH_SECRET").unwrap().1;
        assert_eq!(&host.kv("myaddon")["secret/race"], secret);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_xervo_provisions_for_one_app_make_one_resource() {
    let host = Arc::new(TestHost::start());
    let auth = basic("myaddon", XERVO_PASSWORD);
    let body = r#"{"modulus_id":"same-app","plan":"test","email":"a@b.c","options":{}}"#;
    let replies = join_all((0..32).map(|_| {
        let (host, auth) = (host.clone(), auth.clone());
        tokio::spawn(async move {
            host.send(
                axum::http::Method::POST,
                "/addons/myaddon/resources",
                &[("authorization", auth.as_str()), ("content-type", "application/json")],
                body,
            )
            .await
        })
    }))
    .await;
    let replies: Vec<Reply> = replies.into_iter().map(|r| r.unwrap()).collect();
    assert!(replies.iter().all(|r| r.status == 200 && r.text == replies[0].text), "one identical answer");
    assert_eq!(host.service.addon("myaddon").unwrap().store().records().unwrap().len(), 1, "one resource");
    assert_eq!(host.kv("myaddon").len(), 1, "one secret, for the one resource");
}

/// Sleeping calls for different apps of one add-on all run at once, up to its share (seen in
/// `/admin/status` while they sleep); the next ones wait in its queue, and one past the queue
/// is refused at once with 503 `busy`. Serialised calls would show one running at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_different_apps_run_in_parallel_up_to_the_share_then_queue() {
    let host = Arc::new(TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.server.max_concurrent_calls = 8;
        let misbehave = cfg.addons.iter_mut().find(|a| a.id == "misbehave").unwrap();
        misbehave.limits.deadline_ms = 20_000;
        misbehave.limits.max_concurrent_calls = Some(3);
        misbehave.limits.max_queued_calls = Some(2);
    }));
    let calls = |wanted: (u64, u64)| {
        let host = host.clone();
        async move {
            let started = Instant::now();
            loop {
                let status = host.admin(Method::GET, "/admin/status", "").await.json();
                let addons = status["addons"].as_array().unwrap();
                let calls = &addons.iter().find(|a| a["id"] == "misbehave").unwrap()["calls"];
                let got = (calls["running"].as_u64().unwrap(), calls["queued"].as_u64().unwrap());
                assert_eq!(calls["share"], 3);
                if got == wanted {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "calls (running, queued) stayed {got:?}, not {wanted:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let sleeper = |i: usize| {
        let host = host.clone();
        tokio::spawn(async move {
            host.provision_titled("misbehave", MISBEHAVE_TOKEN, &format!("app-{i}"), "sleep", "15000").await
        })
    };
    let running: Vec<_> = (0..3).map(sleeper).collect();
    calls((3, 0)).await;
    let queued: Vec<_> = (3..5).map(sleeper).collect();
    calls((3, 2)).await;
    let refused = host.provision_titled("misbehave", MISBEHAVE_TOKEN, "app-5", "sleep", "15000").await;
    assert_error(&refused, 503, "busy", "wait queue is full");
    assert_eq!(refused.headers["retry-after"], "1");
    // Hanging up cancels the calls and frees the share: first the queue, then the slots.
    for call in queued {
        call.abort();
    }
    calls((3, 0)).await;
    for call in running {
        call.abort();
    }
    calls((0, 0)).await;
    let after = host.provision("misbehave", MISBEHAVE_TOKEN, "after", "normal").await;
    assert_eq!(after.status, 201, "{}", after.text);
}
