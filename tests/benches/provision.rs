//! Benchmark: a new Bitrise provision through addon-host against the same add-on written
//! natively ([`addon_host_tests::native`]: an axum handler on sled doing the same work —
//! constant-time token check, JSON, replay by digest, a conflict-checked write of the secret
//! and the record, flush before the 201). Both sides are driven through their own axum
//! `Router` in this process with identical requests (no TCP: `--bench http` adds the
//! network), after a warm-up, in alternating rounds; it prints each side's median µs per
//! call, the spread over rounds and the ratio, for fresh provisions and identical repeats.
//!
//! Run with `cargo bench -p addon-host-tests --bench provision`. `BENCH_CALLS` (default 400)
//! is the number of provisions per round.

use std::sync::Arc;
use std::time::Instant;

use addon_host::config::{AddonConfig, AdminConfig, HostConfig, ServerConfig};
use addon_host::service::Service;
use addon_host_tests::native;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

const ROUNDS: usize = 5;
const WARM_UP: usize = 200;

fn request(app: &str) -> Request<Body> {
    let body = serde_json::json!({"plan": "free", "app_slug": app, "api_token": "t", "app_title": "App"});
    Request::post("/addons/myaddon/provision")
        .header("authentication", native::TOKEN)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

/// Provision `apps` one after another; µs per call. Every reply must be `expect`.
async fn drive(router: &Router, apps: &[String], expect: StatusCode) -> anyhow::Result<f64> {
    let started = Instant::now();
    for app in apps {
        let reply = router.clone().oneshot(request(app)).await?;
        anyhow::ensure!(reply.status() == expect, "{app}: {} (expected {expect})", reply.status());
        axum::body::to_bytes(reply.into_body(), 1 << 20).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / apps.len() as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    format!("{lo:.0}–{hi:.0}")
}

fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::var("BENCH_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let mut addon =
        AddonConfig::on_bitrise("myaddon", addon_host_tests::PLUGIN_CREDENTIALS, native::TOKEN, &"s".repeat(16));
    addon.config.insert("host_url".into(), native::HOST_URL.into());
    let cfg = HostConfig {
        server: ServerConfig {
            data_dir: dir.path().join("hosted"),
            admins: vec![AdminConfig { name: "bench".into(), token: "bench-admin-token-0123".into() }],
            ..ServerConfig::default()
        },
        addons: vec![addon],
    };
    let service = Arc::new(Service::start(&cfg)?);
    let allocator = service.runtime().info().allocator;
    let hosted = addon_host::app(service);
    let native = native::router(&dir.path().join("native"), native::Commit::SledFlush)?;
    let sides = [("native", &native), ("hosted", &hosted)];

    let apps = |side: &str, round: &str| -> Vec<String> { (0..calls).map(|i| format!("{side}-{round}-{i}")).collect() };
    let (mut fresh, mut repeat) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    rt.block_on(async {
        for (name, router) in sides {
            drive(router, &apps(name, "warm")[..WARM_UP.min(calls)], StatusCode::CREATED).await?;
        }
        for round in 0..ROUNDS {
            for (s, (name, router)) in sides.iter().enumerate() {
                let apps = apps(name, &round.to_string());
                fresh[s].push(drive(router, &apps, StatusCode::CREATED).await?);
                repeat[s].push(drive(router, &apps, StatusCode::OK).await?);
            }
        }
        anyhow::Ok(())
    })?;

    println!(
        "{calls} sequential provisions per round, {ROUNDS} rounds after {WARM_UP} warm-up calls; allocator {allocator}"
    );
    println!(
        "{:<34} {:>12} {:>14} {:>12} {:>14} {:>20}",
        "", "native µs", "(rounds)", "hosted µs", "(rounds)", "hosted/native time"
    );
    for (what, times) in [("new provision (201)", &fresh), ("identical repeat (200, replayed)", &repeat)] {
        let (n, h) = (median(times[0].clone()), median(times[1].clone()));
        println!("{what:<34} {n:>12.0} {:>14} {h:>12.0} {:>14} {:>19.2}x", spread(&times[0]), spread(&times[1]), h / n);
    }
    Ok(())
}
