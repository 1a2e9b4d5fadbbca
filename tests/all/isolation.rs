//! One host, many add-ons: while misbehaving plugins loop, panic, bomb memory and flood, a
//! healthy add-on served by the same host answers every request, and each misbehaving call
//! is answered within its deadline plus a margin, with the right failure kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;

use crate::support::*;

/// Slack over the deadline for scheduling, compilation-free instantiation and the epoch tick
/// on a loaded 2-core machine running a debug build. A bound, not a speed measurement.
const MARGIN: Duration = Duration::from_millis(2_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_plugins_do_not_disturb_a_healthy_addon() {
    // Both plugins also serve HTTP: the healthy one's build API is part of its traffic, and
    // the misbehaving one's handler misbehaves too.
    let host = Arc::new(TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.addons.push(metered());
        crate::web::enable_build_api(cfg);
        // Traffic as fast as the host answers, past the default per-app rate limit.
        cfg.addons[0].web.api_rate_per_minute = 1_000_000;
    }));
    let misbehave_token =
        host.provision("misbehave", MISBEHAVE_TOKEN, "http", "static").await.env("MISBEHAVE_API_TOKEN");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut healthy = Vec::new();
    for worker in 0..3 {
        let (host, stop, served) = (host.clone(), stop.clone(), served.clone());
        healthy.push(tokio::spawn(async move {
            let app = format!("healthy-api-{worker}");
            let token = host.provision("myaddon", TOKEN, &app, "free").await.env("MYADDON_API_TOKEN");
            let auth = format!("Bearer {token}");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let whoami =
                    host.send(Method::GET, "/addons/myaddon/api/whoami", &[("authorization", &auth)], "").await;
                assert_eq!(whoami.status, 200, "healthy build API call failed: {}", whoami.text);
                assert_eq!(whoami.json()["resource_id"], app.as_str());
                let slug = format!("healthy-{worker}-{i}");
                let reply = host.provision("myaddon", TOKEN, &slug, "free").await;
                assert_eq!(reply.status, 201, "healthy provision failed: {}", reply.text);
                let again = host.provision("myaddon", TOKEN, &slug, "free").await;
                assert_eq!((again.status.as_u16(), &again.text), (200, &reply.text));
                served.fetch_add(3, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    // (add-on, plan, deadline of that add-on, expected status, expected kind)
    let cases = [
        ("misbehave", "loop", 500, 504, "deadline_exceeded"),
        ("misbehave", "panic", 500, 500, "plugin_trap"),
        ("misbehave", "memory", 500, 500, "memory_limit"),
        ("misbehave", "recursion", 500, 500, "plugin_trap"),
        ("misbehave", "huge-reply", 500, 500, "memory_limit"),
        ("misbehave", "big-reply", 500, 500, "reply_too_large"),
        ("misbehave", "kv-flood", 500, 507, "quota_exceeded"),
        ("metered", "loop", 5_000, 500, "fuel_exhausted"),
    ];
    for round in 0..2 {
        for (addon, plan, deadline_ms, status, kind) in cases {
            let token = if addon == "metered" { METERED_TOKEN } else { MISBEHAVE_TOKEN };
            let started = Instant::now();
            let reply = host.provision(addon, token, &format!("{plan}-{round}"), plan).await;
            let elapsed = started.elapsed();
            assert_eq!(reply.status.as_u16(), status, "{addon}/{plan}: {}", reply.text);
            assert_eq!(reply.json()["error"], kind, "{addon}/{plan}");
            let bound = Duration::from_millis(deadline_ms) + MARGIN;
            assert!(elapsed < bound, "{addon}/{plan} answered after {elapsed:?} (bound {bound:?})");
        }
        // The same misbehaviours in the HTTP handler, through the build API.
        let http_cases = [
            ("loop", 504, "deadline_exceeded"),
            ("panic", 500, "plugin_trap"),
            ("memory", 500, "memory_limit"),
            ("huge", 500, "reply_too_large"),
        ];
        let auth = format!("Bearer {misbehave_token}");
        for (what, status, kind) in http_cases {
            let started = Instant::now();
            let path = format!("/addons/misbehave/api/{what}");
            let reply = host.send(Method::GET, &path, &[("authorization", &auth)], "").await;
            let elapsed = started.elapsed();
            assert_eq!(reply.status.as_u16(), status, "http {what}: {}", reply.text);
            assert_eq!(reply.json()["error"], kind, "http {what}");
            // The handler's deadline is the add-on's, plus a second for its commit.
            let bound = Duration::from_millis(1_500) + MARGIN;
            assert!(elapsed < bound, "http {what} answered after {elapsed:?} (bound {bound:?})");
        }
        // The slow-but-legitimate plugin finishes just inside its 500 ms deadline.
        let slow = host.provision_titled("misbehave", MISBEHAVE_TOKEN, &format!("slow-{round}"), "slow", "350").await;
        assert_eq!(slow.status, 201, "slow plugin: {}", slow.text);
        // A log flood is cut to its budget and answered in time: done (201), or cut at its
        // deadline when the loaded debug build cannot log 20,000 lines in 500 ms (504).
        let started = Instant::now();
        let flood = host.provision("misbehave", MISBEHAVE_TOKEN, &format!("flood-{round}"), "log-flood").await;
        let done = flood.status == 201 || flood.json()["error"] == "deadline_exceeded";
        assert!(done, "log flood: {} {}", flood.status, flood.text);
        assert!(started.elapsed() < Duration::from_millis(500) + MARGIN, "log flood took {:?}", started.elapsed());
    }

    stop.store(true, Ordering::Relaxed);
    for task in healthy {
        task.await.expect("a healthy request failed");
    }
    // Healthy traffic kept flowing all along, not just in a gap between misbehaviours.
    let served = served.load(Ordering::Relaxed);
    assert!(served >= 100, "the healthy add-on served only {served} requests meanwhile");
    assert!(host.kv("misbehave").is_empty(), "failed calls left writes: {:?}", host.kv("misbehave"));
}
