//! Partner code that fails: refusals, deadline overruns, traps, memory bombs and bad replies
//! are answered with a clear JSON error naming the add-on and call, commit nothing, and leave
//! the host serving everyone else.

use std::time::{Duration, Instant};

use axum::http::Method;

use crate::support::*;

async fn misbehave(host: &TestHost, slug: &str, plan: &str) -> Reply {
    host.provision("misbehave", MISBEHAVE_TOKEN, slug, plan).await
}

/// The host still serves a healthy add-on and the misbehaving one's good path.
async fn still_serving(host: &TestHost, n: usize) {
    let ok = host.provision("myaddon", TOKEN, &format!("healthy{n}"), "free").await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let fine = misbehave(host, &format!("fine{n}"), "normal").await;
    assert_eq!(fine.status, 201, "{}", fine.text);
    assert_eq!(fine.env("MISBEHAVE_MARKER"), "none", "no failed call may leave a write behind");
}

#[track_caller]
fn assert_plugin_failure(reply: &Reply, status: u16, kind: &str, needle: &str) {
    assert_error(reply, status, kind, needle);
    let body = reply.json();
    assert_eq!(body["addon"], "misbehave");
    assert_eq!(body["call"], "provision");
    assert_eq!(body["plugin_version"].as_str().unwrap().len(), 12);
}

#[tokio::test]
async fn deadline_overrun_is_cut_off_and_reported() {
    let host = TestHost::start();
    let started = Instant::now();
    let reply = misbehave(&host, "l1", "loop").await;
    let elapsed = started.elapsed();
    assert_plugin_failure(&reply, 504, "deadline_exceeded", "500 ms deadline");
    // Generous bound, only to prove the loop was interrupted rather than left running.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(host.record("misbehave", "l1").is_none());
    still_serving(&host, 1).await;
}

#[tokio::test]
async fn slow_but_within_deadline_succeeds() {
    let host = TestHost::start();
    let reply = host.provision_titled("misbehave", MISBEHAVE_TOKEN, "slow1", "slow", "200").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.env("MISBEHAVE_SLOW"), "done");
}

#[tokio::test]
async fn traps_carry_the_panic_message() {
    let host = TestHost::start();
    let reply = misbehave(&host, "p1", "panic").await;
    assert_plugin_failure(&reply, 500, "plugin_trap", "misbehave panicked on purpose");
    let reply = misbehave(&host, "r1", "recursion").await;
    assert_plugin_failure(&reply, 500, "plugin_trap", "stack");
    still_serving(&host, 2).await;
}

#[tokio::test]
async fn memory_bomb_hits_the_cap() {
    let host = TestHost::start();
    let reply = misbehave(&host, "m1", "memory").await;
    assert_plugin_failure(&reply, 500, "memory_limit", "32 MiB");
    still_serving(&host, 3).await;
}

#[tokio::test]
async fn failed_calls_commit_nothing() {
    let host = TestHost::start();
    let refused = misbehave(&host, "w1", "write-then-refuse").await;
    assert_error(&refused, 422, "refused", "refused after writing");
    let failed = misbehave(&host, "w2", "write-then-fail").await;
    assert_plugin_failure(&failed, 500, "plugin_error", "failed after writing");
    let trapped = misbehave(&host, "w3", "write-then-trap").await;
    assert_plugin_failure(&trapped, 500, "plugin_trap", "trapped after writing");
    let unavailable = misbehave(&host, "w4", "unavailable").await;
    assert_error(&unavailable, 503, "unavailable", "busy right now");
    assert_eq!(unavailable.json()["url"], "https://example.com/why");
    let timed_out = misbehave(&host, "w6", "write-then-loop").await;
    assert_plugin_failure(&timed_out, 504, "deadline_exceeded", "deadline");
    for slug in ["w1", "w2", "w3", "w4", "w6"] {
        assert!(host.record("misbehave", slug).is_none(), "{slug} left a record");
    }
    assert!(host.kv("misbehave").is_empty(), "KV changed: {:?}", host.kv("misbehave"));
    still_serving(&host, 4).await;

    // The same write in a successful call is committed.
    let ok = misbehave(&host, "w5", "write").await;
    assert_eq!(ok.status, 201);
    assert_eq!(host.kv("misbehave").get("marker").map(String::as_str), Some("w5"));
}

#[tokio::test]
async fn refused_plan_change_keeps_the_old_state() {
    let host = TestHost::start();
    assert_eq!(misbehave(&host, "c1", "basic").await.status, 201);
    let refused = host.change_plan("misbehave", MISBEHAVE_TOKEN, "c1", "refuse").await;
    assert_error(&refused, 422, "refused", "cannot leave basic");
    let looping = host.change_plan("misbehave", MISBEHAVE_TOKEN, "c1", "loop").await;
    assert_error(&looping, 504, "deadline_exceeded", "deadline");
    assert_eq!(looping.json()["call"], "change-plan");
    assert_eq!(host.record("misbehave", "c1").unwrap().plan, "basic");
    let moved = host.change_plan("misbehave", MISBEHAVE_TOKEN, "c1", "gold").await;
    assert_eq!(moved.status, 200);
    let record = host.record("misbehave", "c1").unwrap();
    assert_eq!(record.plan, "gold");
    assert!(record.config.contains(&("MISBEHAVE_PLAN".into(), "gold".into())), "plan-change vars are merged");
}

#[tokio::test]
async fn bad_replies_are_rejected() {
    let host = TestHost::start();
    assert_plugin_failure(&misbehave(&host, "b1", "big-reply").await, 500, "reply_too_large", "limit");
    assert_plugin_failure(&misbehave(&host, "b2", "empty-value").await, 500, "invalid_reply", "empty value");
    assert_plugin_failure(&misbehave(&host, "b3", "bad-name").await, 500, "invalid_reply", "not a name");
    assert_plugin_failure(&misbehave(&host, "b7", "many-vars").await, 500, "invalid_reply", "65 variables");
    assert_plugin_failure(&misbehave(&host, "b8", "dup-var").await, 500, "invalid_reply", "MISBEHAVE_TWICE");
    assert_plugin_failure(&misbehave(&host, "b9", "big-key").await, 500, "plugin_error", "512-byte limit");
    assert_plugin_failure(&misbehave(&host, "b10", "big-value").await, 507, "quota_exceeded", "262144-byte limit");
    assert_plugin_failure(&misbehave(&host, "b4", "kv-flood").await, 507, "quota_exceeded", "writes");
    // What a call makes the host hold (pending values, listings) is bounded by the call's
    // host-memory budget, whatever its own memory cap.
    assert_plugin_failure(&misbehave(&host, "b5", "kv-hog").await, 507, "quota_exceeded", "host memory");
    assert_plugin_failure(&misbehave(&host, "b6", "list-hog").await, 507, "quota_exceeded", "host memory");
    assert!(host.kv("misbehave").is_empty());
    for slug in ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10"] {
        assert!(host.record("misbehave", slug).is_none(), "{slug} left a record");
    }
    still_serving(&host, 5).await;
}

#[tokio::test]
async fn fuel_budget_stops_a_loop() {
    let host = TestHost::start_metered();
    assert!(host.service.runtime().info().fuel, "the metered add-on needs a metering engine");
    let reply = host.provision("metered", METERED_TOKEN, "f1", "loop").await;
    assert_error(&reply, 500, "fuel_exhausted", "20000000 fuel");
    assert_eq!(reply.json()["addon"], "metered");
    // Ordinary work fits the budget.
    assert_eq!(host.provision("metered", METERED_TOKEN, "f2", "normal").await.status, 201);
    assert!(host.service.runtime().info().fuel);
}

#[tokio::test]
async fn kv_quota_is_enforced_across_calls() {
    let host = TestHost::start_metered();
    let first = host.provision("metered", METERED_TOKEN, "q1", "fill").await;
    assert_eq!(first.status, 201, "{}", first.text);
    let usage = host.service.addon("metered").unwrap().store().kv_usage().unwrap();
    assert_eq!(usage.keys, 8);
    assert_eq!(usage.bytes, 8 * (200 + "fill/q1/0".len() as u64));
    // Eight more keys would make 16, over the quota of 10.
    let second = host.provision("metered", METERED_TOKEN, "q2", "fill").await;
    assert_error(&second, 507, "quota_exceeded", "quota of 10");
    assert_eq!(host.service.addon("metered").unwrap().store().kv_usage().unwrap(), usage, "nothing was written");
    assert!(host.record("metered", "q2").is_none());
}

#[tokio::test]
async fn one_call_may_add_only_so_much_key_value_data() {
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        let misbehave = cfg.addons.iter_mut().find(|a| a.id == "misbehave").unwrap();
        misbehave.limits.max_call_kv_bytes = 1_000;
    });
    // "fill" writes eight 200-byte values: about 1.7 KB, over this add-on's 1,000 per call.
    let reply = misbehave(&host, "g1", "fill").await;
    assert_plugin_failure(&reply, 507, "quota_exceeded", "one call may add at most 1000");
    assert!(host.kv("misbehave").is_empty(), "nothing was written");
    assert!(host.record("misbehave", "g1").is_none());
    // The default quotas leave room for a million resources with 16 KiB and 50 keys each.
    let defaults = addon_host::config::Limits::default();
    assert!(defaults.max_kv_bytes >= 1_000_000 * 16 * 1024);
    assert!(defaults.max_kv_keys >= 1_000_000 * 50);
    assert!(host.provision("misbehave", MISBEHAVE_TOKEN, "g2", "ok").await.status == 201);
}

#[tokio::test]
async fn hundred_megabyte_reply_and_log_flood() {
    let host = TestHost::start();
    // Building a 100 MB reply needs more memory than the add-on's 32 MiB cap.
    assert_plugin_failure(&misbehave(&host, "h1", "huge-reply").await, 500, "memory_limit", "32 MiB");
    // A log flood is cut to the per-call budget; the call itself succeeds. What reached the
    // log is what the add-on's recent lines hold (fed by the same budget check), and the drop
    // is reported there too. (The lines reaching the host's log with the request's span,
    // after the call moved to the guests' runtime: `observe.rs`, on the real binary.)
    let flood = misbehave(&host, "h2", "log-flood").await;
    assert_eq!(flood.status, 201, "{}", flood.text);
    let recent = host.admin(Method::GET, "/admin/addons/misbehave/logs", "").await.json();
    let lines = recent["lines"].as_array().unwrap();
    let message = |l: &serde_json::Value| l["message"].as_str().unwrap().to_owned();
    let flooded: usize = lines.iter().map(message).filter(|m| m.contains("flood")).map(|m| m.len()).sum();
    assert!(flooded > 0, "no plugin line reached the log");
    assert!(flooded <= 16 * 1024, "{flooded} bytes of plugin log for a 16 KiB budget");
    let dropped = lines.iter().map(message).find(|m| m.contains("over the call's log budget were dropped"));
    assert!(dropped.is_some(), "the drop was not reported: {recent}");
    still_serving(&host, 6).await;
}

#[tokio::test]
async fn plugins_cannot_reach_files_network_or_environment() {
    let host = TestHost::start();
    // A real listener: an escape would connect to it, not just fail on a closed port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let reply = host.provision_titled("misbehave", MISBEHAVE_TOKEN, "e1", "escape", &port).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(listener.accept().is_err(), "the plugin connected to a host socket");
    for var in ["ESCAPE_FS", "ESCAPE_FILE", "ESCAPE_WRITE", "ESCAPE_NET", "ESCAPE_DNS"] {
        let outcome = reply.env(var);
        assert!(outcome.starts_with("Err("), "{var} succeeded inside the sandbox: {outcome}");
    }
    assert_eq!(reply.env("ESCAPE_ENV"), "0", "no environment variables");
    assert_eq!(reply.env("ESCAPE_ARGS"), "0", "no arguments");
}

/// A request's platform budget bounds everything it waits for: a plugin call gets no more
/// deadline than the budget has left, and a request queued behind it on the same resource
/// spends its own budget waiting, so its call gets only what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_budget_bounds_calls_and_lock_waits() {
    let host = std::sync::Arc::new(TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.server.budgets.bitrise_ms = 1_000;
        let misbehave = cfg.addons.iter_mut().find(|a| a.id == "misbehave").unwrap();
        misbehave.limits.deadline_ms = 5_000;
    }));
    let started = std::time::Instant::now();
    let first = {
        let host = host.clone();
        tokio::spawn(async move { host.provision_titled("misbehave", MISBEHAVE_TOKEN, "b1", "sleep", "30000").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = host.provision_titled("misbehave", MISBEHAVE_TOKEN, "b1", "sleep", "30000").await;
    let elapsed = started.elapsed();
    let first = first.await.unwrap();
    let deadline_of = |reply: &Reply| -> u64 {
        assert_eq!(reply.json()["error"], "deadline_exceeded", "{}", reply.text);
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        message.split("exceeded its ").nth(1).and_then(|m| m.split(' ').next()).unwrap().parse().unwrap()
    };
    // The first call was cut at its 1 s budget, not its 5 s deadline; the second waited
    // ~700 ms for the lock and was given only the ~300 ms its budget had left.
    assert!((500..=1_000).contains(&deadline_of(&first)), "{}", first.text);
    if second.status != 503 {
        assert!(deadline_of(&second) <= 800, "{}", second.text);
    }
    assert!(elapsed < std::time::Duration::from_millis(2_500), "answered after {elapsed:?}");
    assert!(host.record("misbehave", "b1").is_none());
}

/// Every call runs in a fresh instance: nothing a call leaves in the guest's memory (here a
/// global counter) is seen by the next — also when the next runs in a spare instance, made
/// ahead of it after the previous call.
#[tokio::test]
async fn no_state_carries_over_between_calls() {
    let host = TestHost::start();
    let runtime = host.service.runtime();
    for i in 0..3 {
        if i > 0 {
            let waited = Instant::now();
            while runtime.spares().0 == 0 {
                assert!(waited.elapsed() < Duration::from_secs(10), "no spare instance was made after call {i}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let reply = host.provision("misbehave", MISBEHAVE_TOKEN, &format!("fresh-{i}"), "static").await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        assert_eq!(reply.env("MISBEHAVE_STATIC"), "1", "call {i} saw an earlier call's memory");
    }
    assert_eq!(runtime.spares().1, 2, "the second and third calls ran in spare instances");
}
