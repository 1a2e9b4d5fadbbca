//! Benchmark: a healthy add-on's provision latency alone, and next to a noisy neighbour on
//! the same host — an add-on receiving twice its share of calls that sleep in host calls,
//! spin, hog key-value memory and bomb their memory. Prints p50/p99 of each phase and the
//! ratio (with noise / alone); the noisy calls' outcomes are counted to show they ran.
//!
//! Run with `cargo bench -p addon-host-tests --bench noisy`. `BENCH_SECS` (default 4) is the
//! length of each phase.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use addon_host::config::{AddonConfig, AdminConfig, HostConfig, ServerConfig};
use addon_host::error::ServiceError;
use addon_host::service::{Caller, Platform, Provision, Service, Target};

const HEALTHY_CLIENTS: usize = 4;
const HOST_SLOTS: u32 = 16;
const NOISY_SHARE: u32 = 4;
const NOISE: [&str; 4] = ["sleep", "loop", "kv-hog", "memory"];

fn config(dir: &std::path::Path) -> HostConfig {
    let mut healthy = AddonConfig::on_bitrise("healthy", addon_host_tests::PLUGIN_CREDENTIALS, &"h".repeat(16), "sso");
    healthy.config.insert("host_url".into(), "https://healthy.example.com".into());
    let mut noisy = AddonConfig::on_bitrise("noisy", addon_host_tests::PLUGIN_MISBEHAVE, &"n".repeat(16), "sso");
    noisy.limits.deadline_ms = 500;
    noisy.limits.memory_mib = 32;
    noisy.limits.max_concurrent_calls = Some(NOISY_SHARE);
    HostConfig {
        server: ServerConfig {
            data_dir: dir.join("data"),
            max_concurrent_calls: HOST_SLOTS,
            admins: vec![AdminConfig { name: "bench".into(), token: "bench-admin-token-0123".into() }],
            ..ServerConfig::default()
        },
        addons: vec![healthy, noisy],
    }
}

fn provision(slug: String, plan: &str, title: &str) -> Provision {
    let mut req = Provision::new(Target::Resource(slug.clone()), slug, plan);
    req.app_title = Some(title.to_owned());
    req.api_token = Some("t".into());
    req
}

/// Drive the healthy add-on for `secs` and return its sorted latencies.
async fn healthy_phase(service: &Arc<Service>, phase: &str, secs: Duration) -> anyhow::Result<Vec<Duration>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..HEALTHY_CLIENTS {
        let (service, stop, phase) = (service.clone(), stop.clone(), phase.to_owned());
        clients.push(tokio::spawn(async move {
            let addon = service.addon("healthy")?;
            let caller = Caller::unruled(Platform::Bitrise);
            let mut latencies = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                service.provision(&addon, &caller, provision(format!("{phase}-{c}-{i}"), "free", "app")).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await??);
    }
    all.sort();
    Ok(all)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let secs = Duration::from_secs(std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let service = Arc::new(Service::start(&config(dir.path()))?);
    rt.block_on(async {
        healthy_phase(&service, "warmup", Duration::from_millis(500)).await?;
        let alone = healthy_phase(&service, "alone", secs).await?;

        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
        let sent = Arc::new(AtomicUsize::new(0));
        let answer_times: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
        let slowest: Arc<std::sync::Mutex<BTreeMap<String, Duration>>> = Arc::default();
        let mut noisy = Vec::new();
        for c in 0..2 * NOISY_SHARE as usize {
            let (service, stop, outcomes, sent, answer_times, slowest) =
                (service.clone(), stop.clone(), outcomes.clone(), sent.clone(), answer_times.clone(), slowest.clone());
            noisy.push(tokio::spawn(async move {
                let addon = service.addon("noisy")?;
                let caller = Caller::unruled(Platform::Bitrise);
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let plan = NOISE[i % NOISE.len()];
                    let started = Instant::now();
                    let reply = service.provision(&addon, &caller, provision(format!("n-{c}-{i}"), plan, "30000")).await;
                    let elapsed = started.elapsed();
                    let kind = match reply {
                        Ok(_) => "ok".to_owned(),
                        Err(ServiceError::Busy { .. }) => "busy".to_owned(),
                        Err(e) => {
                            answer_times.lock().unwrap().push(elapsed);
                            format!("{plan}:{}", e.kind())
                        }
                    };
                    {
                        let mut slowest = slowest.lock().unwrap();
                        let worst = slowest.entry(kind.clone()).or_default();
                        *worst = (*worst).max(elapsed);
                    }
                    if kind == "busy" {
                        // A platform honours Retry-After; do not spin on refusals.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    *outcomes.lock().unwrap().entry(kind).or_default() += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let with_noise = healthy_phase(&service, "noisy", secs).await?;
        stop.store(true, Ordering::Relaxed);
        for n in noisy {
            n.await??;
        }

        println!("healthy add-on, {HEALTHY_CLIENTS} clients, {} s per phase (host slots {HOST_SLOTS}, noisy share {NOISY_SHARE}, {} noisy clients)", secs.as_secs(), 2 * NOISY_SHARE);
        println!("{:<22} {:>10} {:>10} {:>10}", "phase", "provisions", "p50 ms", "p99 ms");
        for (name, l) in [("alone", &alone), ("next to the neighbour", &with_noise)] {
            println!("{name:<22} {:>10} {:>10.2} {:>10.2}", l.len(), ms(pct(l, 50)), ms(pct(l, 99)));
        }
        println!(
            "ratio (neighbour / alone): p50 {:.2}x, p99 {:.2}x, throughput {:.2}x",
            ms(pct(&with_noise, 50)) / ms(pct(&alone, 50)),
            ms(pct(&with_noise, 99)) / ms(pct(&alone, 99)),
            with_noise.len() as f64 / alone.len() as f64
        );
        println!("noisy calls: {} — {:?}", sent.load(Ordering::Relaxed), outcomes.lock().unwrap());
        let slowest: Vec<String> =
            slowest.lock().unwrap().iter().map(|(kind, t)| format!("{kind} {:.0} ms", ms(*t))).collect();
        println!("slowest answer of each kind (busy included): {}", slowest.join(", "));
        let mut times = answer_times.lock().unwrap().clone();
        times.sort();
        if !times.is_empty() {
            println!(
                "misbehaving calls that ran (deadline 500 ms) answered at p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                ms(pct(&times, 50)),
                ms(pct(&times, 99)),
                ms(*times.last().unwrap())
            );
        }
        anyhow::Ok(())
    })
}
