//! Benchmark: starting a host that serves many add-ons, each with its own plugin (the
//! credentials example made distinct per add-on by a custom section, so nothing is shared
//! and every one must be compiled). Cold start compiles everything into an empty compile
//! cache; warm start reopens the same data folder and loads from the cache.
//!
//! Baseline in the same run: the time to compile one plugin alone on a fresh engine, times
//! the number of add-ons, which is what compiling one after another costs. These plugins
//! share all their code, so functions compiled once are reused (the best case of the
//! incremental cache); the quota example compiled after the credentials example shows what
//! two different plugins built with the SDK share.
//!
//! Run with `cargo bench -p addon-host-tests --bench startup`; `BENCH_ADDONS` (default 1000)
//! sets the number of add-ons.

use std::time::{Duration, Instant};

use addon_host::config::{AddonConfig, ServerConfig};
use addon_host::runtime::Runtime;
use addon_host::service::Service;

#[allow(dead_code, reason = "shared with the other benchmarks")]
mod common;

/// The plugin's bytes with a custom section naming add-on `i`: a distinct component (and
/// sha256) that compiles to the same code.
fn distinct(base: &[u8], i: usize) -> Vec<u8> {
    let name = b"addon-host-bench";
    let payload = format!("add-on {i}");
    let content_len = 1 + name.len() + payload.len();
    let mut out = base.to_vec();
    out.push(0); // custom section
    out.push(content_len as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload.as_bytes());
    out
}

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb / 1024)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_ADDONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let base = std::fs::read(addon_host_tests::PLUGIN_CREDENTIALS)?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let mut cfg = common::host_config(dir.path(), "a0", addon_host_tests::PLUGIN_CREDENTIALS, Default::default());
    cfg.server.compile_cache = Some(dir.path().join("compiled"));
    cfg.addons = (0..n)
        .map(|i| {
            let path = plugins.join(format!("p{i}.wasm"));
            std::fs::write(&path, distinct(&base, i))?;
            let mut addon =
                AddonConfig::on_bitrise(&format!("a{i}"), path, &format!("token-{i:012}"), &format!("s{i}"));
            addon.config.insert("host_url".to_owned(), "https://x.example.com".to_owned());
            Ok(addon)
        })
        .collect::<anyhow::Result<_>>()?;

    // Baseline: one plugin compiled alone (no cache, nothing shared: a fresh engine each
    // time), median of 5.
    let uncached = ServerConfig { compile_cache: Some("".into()), ..ServerConfig::default() };
    let fresh = |bytes: &[u8]| -> anyhow::Result<Duration> {
        let runtime = Runtime::new(&uncached, 64 << 20, false, None)?;
        let t = Instant::now();
        runtime.load(bytes, None)?;
        Ok(t.elapsed())
    };
    let mut one: Vec<Duration> = (0..5).map(|i| fresh(&distinct(&base, n + i))).collect::<anyhow::Result<_>>()?;
    one.sort();
    let one = one[2];
    // What two different plugins share (the SDK, wit-bindgen, std): the quota example
    // compiled alone, and right after the credentials example on the same engine.
    let quota = std::fs::read(addon_host_tests::PLUGIN_QUOTA)?;
    let quota_alone = fresh(&quota)?;
    let runtime = Runtime::new(&uncached, 64 << 20, false, None)?;
    runtime.load(&base, None)?;
    let t = Instant::now();
    runtime.load(&quota, None)?;
    let quota_after = t.elapsed();
    drop(runtime);

    let t = Instant::now();
    let service = Service::start(&cfg)?;
    let cold = t.elapsed();
    let cold_rss = rss_mib();
    drop(service);
    let t = Instant::now();
    let service = Service::start(&cfg)?;
    let warm = t.elapsed();
    let warm_rss = rss_mib();
    drop(service);

    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("{n} add-ons, distinct {} KB plugins, {cores} cores", base.len() / 1024);
    println!("{:<44} {:>9.1} ms", "one plugin compiled alone (baseline)", one.as_secs_f64() * 1e3);
    println!("{:<44} {:>9.1} s", "  × add-ons: one after another", one.as_secs_f64() * n as f64);
    println!(
        "{:<44} {:>9.1} s   ({:.2}x the one-after-another time, RSS {cold_rss} MiB)",
        "cold start (empty compile cache)",
        cold.as_secs_f64(),
        cold.as_secs_f64() / (one.as_secs_f64() * n as f64)
    );
    println!("{:<44} {:>9.2} s   (RSS {warm_rss} MiB)", "warm start (compile cache)", warm.as_secs_f64());
    println!(
        "{:<44} {:>9.1} ms alone, {:.1} ms after credentials ({:.2}x)",
        "quota example (a different plugin)",
        quota_alone.as_secs_f64() * 1e3,
        quota_after.as_secs_f64() * 1e3,
        quota_after.as_secs_f64() / quota_alone.as_secs_f64()
    );
    Ok(())
}
