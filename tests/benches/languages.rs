//! Benchmark: the `credentials` example in Rust, JavaScript and Python, side by side in one
//! run, each served by the real service: component size; Cranelift's and Winch's compile
//! times (no cache); upload to serving on the default tiered compiler (the plugin uploaded
//! through `Service::upload` to a host running another plugin, activated, and the first
//! provision answered by it), when the optimised build took over, and upload to serving for a
//! new version of the same code (a partner's re-deploy); per-call latency of new provisions
//! through the router on Cranelift's build and on Winch's (p50 and p99 of `BENCH_CALLS`,
//! default 300, after a warm-up); and the memory one instance needs (the smallest per-call
//! cap, in MiB, under which a provision still succeeds). The Rust plugin is the baseline each
//! ratio is taken against.
//!
//! Run with `cargo bench -p addon-host-tests --bench languages` (it builds the JS and Python
//! plugins with their generators first; see `addon_host_tests::languages`);
//! `BENCH_LANGUAGES=rust` measures the Rust plugin alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use addon_host::config::{Compiler, HostConfig, ServerConfig};
use addon_host::service::Service;
use addon_host_tests::languages::{self, Lang};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

#[allow(dead_code, reason = "shared with the other benchmarks")]
mod common;

const TOKEN: &str = "tttttttttttttttt";

fn request(app: &str) -> Request<Body> {
    let body = serde_json::json!({"plan": "free", "app_slug": app, "api_token": "t"});
    Request::post("/addons/myaddon/provision")
        .header("authentication", TOKEN)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

async fn provision(router: &Router, app: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = router.clone().oneshot(request(app)).await?;
    let status = reply.status();
    let body = axum::body::to_bytes(reply.into_body(), 1 << 20).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{app}: {status} {}", String::from_utf8_lossy(&body));
    Ok(started.elapsed())
}

fn config(dir: &std::path::Path, plugin: &str, memory_mib: u64, cache: bool) -> HostConfig {
    let config = [("host_url".to_owned(), "https://myaddon.example.com".to_owned())].into();
    let mut cfg = common::host_config(dir, "myaddon", plugin, config);
    cfg.addons[0].limits.memory_mib = memory_mib;
    cfg.server = ServerConfig { compile_cache: Some(if cache { dir.join("cache") } else { "".into() }), ..cfg.server };
    cfg
}

struct Row {
    name: &'static str,
    size: usize,
    compile: Duration,
    baseline_compile: Duration,
    upload_to_serving: Duration,
    optimised: Duration,
    new_version: Duration,
    p50: Duration,
    p99: Duration,
    baseline_p50: Duration,
    memory_mib: u64,
}

/// How long `plugin` takes to load with `compiler` and no cache.
fn compile_time(dir: &std::path::Path, plugin: &str, compiler: Compiler) -> anyhow::Result<Duration> {
    let mut cold = config(dir, plugin, 128, false);
    cold.server.compiler = compiler;
    let runtime = addon_host::runtime::Runtime::new(&cold.server, cold.max_memory_bytes(), false, None)?;
    let started = Instant::now();
    runtime.load(&std::fs::read(plugin)?, None)?;
    Ok(started.elapsed())
}

/// Provisions `calls` new apps after a tenth as many warm-up calls; their latencies, sorted.
async fn latencies(router: &Router, calls: usize, tag: &str) -> anyhow::Result<Vec<Duration>> {
    for i in 0..calls / 10 {
        provision(router, &format!("{tag}-warm-{i}")).await?;
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        times.push(provision(router, &format!("{tag}-{i}")).await?);
    }
    times.sort();
    Ok(times)
}

fn quantile(times: &[Duration], q: f64) -> Duration {
    times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)]
}

/// Until the add-on's plugin runs Cranelift's build; how long after `since`.
async fn optimised(service: &Service, since: Instant) -> anyhow::Result<Duration> {
    let addon = service.addon("myaddon")?;
    while addon.plugin().compiler() != "cranelift" {
        anyhow::ensure!(since.elapsed() < Duration::from_secs(300), "no optimised build after 300 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(since.elapsed())
}

fn measure(rt: &tokio::runtime::Runtime, name: &'static str, plugin: &str, calls: usize) -> anyhow::Result<Row> {
    let bytes = std::fs::read(plugin)?;
    let dir = tempfile::tempdir()?;

    let compile = compile_time(dir.path(), plugin, Compiler::Cranelift)?;
    let baseline_compile = compile_time(dir.path(), plugin, Compiler::Winch)?;

    // Upload to serving, then per-call latency, on one service with the default tiered
    // compiler and no cache on disk (a real upload compiles). It starts on another plugin;
    // the first upload compiles everything, a new version of the same code reuses the
    // compiled functions it shares.
    let cold = config(dir.path(), plugin, 128, false);
    let mut start = cold.clone();
    start.addons[0].plugin = addon_host_tests::PLUGIN_VERSIONED_A.into();
    let service = Arc::new(Service::start(&start)?);
    let router = addon_host::app(service.clone());
    let (upload_to_serving, optimised, new_version, times) = rt.block_on(async {
        let addon = service.addon("myaddon")?;
        let mut serving = Vec::new();
        let mut optimised_after = Vec::new();
        for (n, upload) in [bytes.clone(), common::variant(&bytes)].into_iter().enumerate() {
            let started = Instant::now();
            service.upload(&addon, upload, "bench", true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            provision(&router, &format!("first-{n}")).await?;
            serving.push(started.elapsed());
            optimised_after.push(optimised(&service, started).await?);
        }
        let times = latencies(&router, calls, "app").await?;
        anyhow::Ok((serving[0], optimised_after[0], serving[1], times))
    })?;
    drop(router);
    drop(service);

    // Per-call latency on Winch's build alone.
    let mut winch = config(dir.path(), plugin, 128, false);
    winch.server.compiler = Compiler::Winch;
    let router = addon_host::app(Arc::new(Service::start(&winch)?));
    let baseline_times = rt.block_on(latencies(&router, calls, "winch"))?;
    drop(router);

    // The smallest memory cap (MiB) a provision succeeds under: bisection, from the cache.
    let (mut fails, mut works) = (0u64, 256u64);
    while works - fails > 1 {
        let mid = (fails + works) / 2;
        let probe = tempfile::tempdir()?;
        let mut cfg = config(probe.path(), plugin, mid, true);
        // Cranelift's build, compiled by the first probe and read from the cache by the rest
        // (tiered, each probe would start a background compilation of its own).
        cfg.server.compile_cache = Some(dir.path().join("cache"));
        cfg.server.compiler = Compiler::Cranelift;
        // Under some caps the plugin's initial memory alone does not fit: no start, no call.
        let served = Service::start(&cfg).map(|s| addon_host::app(Arc::new(s)));
        if served.is_ok_and(|router| rt.block_on(provision(&router, "probe")).is_ok()) {
            works = mid;
        } else {
            fails = mid;
        }
    }
    Ok(Row {
        name,
        size: bytes.len(),
        compile,
        baseline_compile,
        upload_to_serving,
        optimised,
        new_version,
        p50: quantile(&times, 0.50),
        p99: quantile(&times, 0.99),
        baseline_p50: quantile(&baseline_times, 0.50),
        memory_mib: works,
    })
}

fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::var("BENCH_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // `BENCH_LANGUAGES=rust` (CI's smoke run) skips building and compiling the large ones.
    let only_rust = std::env::var("BENCH_LANGUAGES").is_ok_and(|v| v == "rust");
    let mut plugins = vec![("Rust", addon_host_tests::PLUGIN_CREDENTIALS.to_owned())];
    if !only_rust {
        let js = languages::build(Lang::Js, "plugins/credentials-js").map_err(anyhow::Error::msg)?;
        let py = languages::build(Lang::Python, "plugins/credentials-py").map_err(anyhow::Error::msg)?;
        plugins.push(("JavaScript", js.to_string_lossy().into_owned()));
        plugins.push(("Python", py.to_string_lossy().into_owned()));
    }
    let mut rows = Vec::new();
    for (name, plugin) in &plugins {
        rows.push(measure(&rt, name, plugin, calls)?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("the credentials example, {calls} new provisions per language after {} warm-up calls", calls / 10);
    println!(
        "| language | component | Cranelift compile | Winch compile | upload to serving | optimised build serving after | new version to serving | per call p50 | per call p99 | p50 vs Rust | per call p50 on Winch | memory per instance |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let base = rows[0].p50;
    for r in &rows {
        println!(
            "| {} | {:.1} MB | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} ms | {:.2} ms | {:.1}x | {:.2} ms | {} MiB |",
            r.name,
            r.size as f64 / 1e6,
            ms(r.compile),
            ms(r.baseline_compile),
            ms(r.upload_to_serving),
            ms(r.optimised),
            ms(r.new_version),
            ms(r.p50),
            ms(r.p99),
            ms(r.p50) / ms(base),
            ms(r.baseline_p50),
            r.memory_mib
        );
    }
    Ok(())
}
