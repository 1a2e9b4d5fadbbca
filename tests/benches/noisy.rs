//! Benchmark: a healthy add-on's provisions alone, and next to a noisy neighbour on the same
//! host, in one run. The neighbour, in turn:
//! - **spins**: twice its share of clients calling a plan that loops until its deadline;
//! - **mixes** misbehaviours: calls that sleep in host calls, spin, hog key-value memory and
//!   bomb their memory (the slowest answer of each kind is printed too);
//! - is **idle-class spinners outside the host** (the floor): one thread per core spinning
//!   under `SCHED_IDLE`, the least a CPU-bound neighbour costs on this machine, which a
//!   neighbour's calls yielding to the healthy add-on (see `runtime/priority.rs`) can match
//!   at best;
//! - **compiles**: uploads the 18 MB Python `credentials` component (a new version, nothing
//!   cached), which serves from Winch at once while Cranelift's build runs in the background;
//!   the phase lasts until the optimised build serves.
//!
//! Each of those phases sits between two of the healthy add-on alone, and its ratios are to
//! their mean: the host slows as its data grows (and this VM's speed drifts), which made
//! ratios to one alone phase at the start understate later phases by up to a fifth. It prints
//! the healthy add-on's throughput, p50 and p99 in each phase, and their ratios. Run with `cargo bench -p addon-host-tests --bench noisy`. `BENCH_SECS`
//! (default 4) is the length of the timed phases; `BENCH_COMPILE=0` skips the compile phase
//! (it builds the Python plugin with componentize-py first); `BENCH_SLOW_LANE_IDLE=1` sets
//! `server.slow_lane_idle`, `BENCH_SLOW_LANE_YIELD=0` turns `server.slow_lane_yield` off,
//! `BENCH_PLUGIN_CORES=N` sets `server.plugin_cores`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use addon_host::config::{AddonConfig, AdminConfig, HostConfig, ServerConfig};
use addon_host::error::ServiceError;
use addon_host::service::{Caller, Platform, Provision, Service, Target};
use addon_host_tests::languages::{self, Lang};

#[allow(dead_code, reason = "shared with the other benchmarks")]
mod common;

const HEALTHY_CLIENTS: usize = 4;
const HOST_SLOTS: u32 = 16;
const NOISY_SHARE: u32 = 4;
const MIXED: [&str; 4] = ["sleep", "loop", "kv-hog", "memory"];

fn config(dir: &std::path::Path) -> HostConfig {
    let mut healthy = AddonConfig::on_bitrise("healthy", addon_host_tests::PLUGIN_CREDENTIALS, &"h".repeat(16), "sso");
    healthy.config.insert("host_url".into(), "https://healthy.example.com".into());
    let mut noisy = AddonConfig::on_bitrise("noisy", addon_host_tests::PLUGIN_MISBEHAVE, &"n".repeat(16), "sso");
    noisy.limits.deadline_ms = 500;
    noisy.limits.memory_mib = 32;
    noisy.limits.max_concurrent_calls = Some(NOISY_SHARE);
    noisy.config.insert("host_url".into(), "https://noisy.example.com".into());
    HostConfig {
        server: ServerConfig {
            data_dir: dir.join("data"),
            max_concurrent_calls: HOST_SLOTS,
            plugin_cores: std::env::var("BENCH_PLUGIN_CORES").ok().and_then(|n| n.parse().ok()),
            slow_lane_idle: std::env::var_os("BENCH_SLOW_LANE_IDLE").is_some(),
            slow_lane_yield: std::env::var("BENCH_SLOW_LANE_YIELD").map_or(true, |v| v != "0"),
            // A real upload compiles: nothing comes from a cache.
            compile_cache: Some(std::path::PathBuf::new()),
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

/// The healthy add-on's provisions in one phase: sorted latencies, over how long.
struct Phase {
    latencies: Vec<Duration>,
    took: Duration,
    /// The healthy add-on's guest CPU and wait for cores over the phase.
    cpu: addon_host::runtime::CpuTotals,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.took.as_secs_f64()
    }

    fn pct(&self, p: usize) -> Duration {
        let sorted = &self.latencies;
        sorted.get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
    }
}

/// Drive the healthy add-on until `done` resolves.
async fn healthy_phase(service: &Arc<Service>, phase: &str, done: impl Future<Output = ()>) -> anyhow::Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let before = service.addon("healthy")?.cpu();
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
    done.await;
    stop.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await??);
    }
    latencies.sort();
    let after = service.addon("healthy")?.cpu();
    let cpu = addon_host::runtime::CpuTotals {
        calls: after.calls.saturating_sub(before.calls),
        waited: after.waited.saturating_sub(before.waited),
        compile: after.compile.saturating_sub(before.compile),
        yielding: after.yielding.saturating_sub(before.yielding),
    };
    Ok(Phase { latencies, took, cpu })
}

/// What the neighbour's calls came to.
#[derive(Default)]
struct Noise {
    outcomes: std::sync::Mutex<BTreeMap<String, usize>>,
    slowest: std::sync::Mutex<BTreeMap<String, Duration>>,
    failed_at: std::sync::Mutex<Vec<Duration>>,
    sent: AtomicUsize,
}

/// Twice the neighbour's share of clients, calling `plans` in turn until `stop`.
fn flood(
    service: &Arc<Service>,
    plans: &'static [&'static str],
    stop: &Arc<AtomicBool>,
    noise: &Arc<Noise>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    (0..2 * NOISY_SHARE as usize)
        .map(|c| {
            let (service, stop, noise) = (service.clone(), stop.clone(), noise.clone());
            tokio::spawn(async move {
                let addon = service.addon("noisy")?;
                let caller = Caller::unruled(Platform::Bitrise);
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let plan = plans[i % plans.len()];
                    let started = Instant::now();
                    let reply =
                        service.provision(&addon, &caller, provision(format!("n-{c}-{i}"), plan, "30000")).await;
                    let elapsed = started.elapsed();
                    let kind = match reply {
                        Ok(_) => "ok".to_owned(),
                        Err(ServiceError::Busy { .. }) => "busy".to_owned(),
                        Err(e) => {
                            noise.failed_at.lock().unwrap().push(elapsed);
                            format!("{plan}:{}", e.kind())
                        }
                    };
                    {
                        let mut slowest = noise.slowest.lock().unwrap();
                        let worst = slowest.entry(kind.clone()).or_default();
                        *worst = (*worst).max(elapsed);
                    }
                    if kind == "busy" {
                        // A platform honours Retry-After; do not spin on refusals.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    *noise.outcomes.lock().unwrap().entry(kind).or_default() += 1;
                    noise.sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect()
}

/// The healthy add-on's phase next to the neighbour flooding `plans`.
async fn next_to(
    service: &Arc<Service>,
    name: &str,
    plans: &'static [&'static str],
    secs: Duration,
) -> anyhow::Result<(Phase, Arc<Noise>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let noise = Arc::new(Noise::default());
    let flooding = flood(service, plans, &stop, &noise);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let phase = healthy_phase(service, name, tokio::time::sleep(secs)).await?;
    stop.store(true, Ordering::Relaxed);
    for f in flooding {
        f.await??;
    }
    Ok((phase, noise))
}

/// The healthy add-on's phase while the neighbour uploads `plugin` and its optimised build
/// compiles in the background; how long the upload took, and the optimised build after it.
async fn next_to_compiles(service: &Arc<Service>, plugin: Vec<u8>) -> anyhow::Result<(Phase, Duration, Duration)> {
    let (upload, optimised) =
        (Arc::new(std::sync::Mutex::new(Duration::ZERO)), Arc::new(std::sync::Mutex::new(Duration::ZERO)));
    let compiles = {
        let (service, upload, optimised) = (service.clone(), upload.clone(), optimised.clone());
        async move {
            let started = Instant::now();
            let addon = service.addon("noisy").expect("the noisy add-on");
            if let Err(e) = service.upload(&addon, plugin, "bench", true).await {
                eprintln!("the upload failed: {e}");
                return;
            }
            *upload.lock().unwrap() = started.elapsed();
            let swapped = Instant::now();
            while addon.plugin().compiler() != "cranelift" && started.elapsed() < Duration::from_secs(300) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            *optimised.lock().unwrap() = swapped.elapsed();
        }
    };
    let phase = healthy_phase(service, "compile", compiles).await?;
    let (upload, optimised) = (*upload.lock().unwrap(), *optimised.lock().unwrap());
    Ok((phase, upload, optimised))
}

/// One thread per core spinning under `SCHED_IDLE`, outside the host, until dropped: the
/// least any CPU-bound neighbour can cost (they run only on time nothing else wants), which
/// is not nothing on a VM.
struct BusyThreads(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl BusyThreads {
    fn start() -> BusyThreads {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: lowers the calling thread's own policy; `param` outlives the call.
                    #[allow(unsafe_code)]
                    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyThreads(stop, threads)
    }
}

impl Drop for BusyThreads {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        self.1.drain(..).for_each(|t| _ = t.join());
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let secs = Duration::from_secs(std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4));
    let compile = std::env::var("BENCH_COMPILE").map_or(true, |v| v != "0");
    let python = if compile {
        let built = languages::build(Lang::Python, "plugins/credentials-py").map_err(anyhow::Error::msg)?;
        Some(std::fs::read(built)?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let service = Arc::new(Service::start(&config(dir.path()))?);
    rt.block_on(async {
        healthy_phase(&service, "warmup", tokio::time::sleep(Duration::from_millis(500))).await?;
        // Each phase provisions resources of its own (the same ones again would be replays).
        let alone = |name: &'static str| healthy_phase(&service, name, tokio::time::sleep(secs));
        // Each neighbour's phase between two of the healthy add-on's alone, compared with
        // their mean: the host drifts as its data grows (and this VM's speed with it).
        let first = alone("alone-first").await?;
        let (spin, spin_noise) = next_to(&service, "spin", &["loop"], secs).await?;
        let second = alone("alone-second").await?;
        let (mixed, mixed_noise) = next_to(&service, "mixed", &MIXED, secs).await?;
        let third = alone("alone-third").await?;
        let floor = {
            let _busy = BusyThreads::start();
            healthy_phase(&service, "floor", tokio::time::sleep(secs)).await?
        };
        let fourth = alone("alone-fourth").await?;
        let compiled = match python {
            Some(plugin) => Some((next_to_compiles(&service, common::variant(&plugin)).await?, alone("alone-last").await?)),
            None => None,
        };

        println!(
            "healthy add-on: {HEALTHY_CLIENTS} clients; host slots {HOST_SLOTS}, plugin cores {}, the neighbour's share {NOISY_SHARE} with {} clients",
            std::thread::available_parallelism().map_or(0, usize::from),
            2 * NOISY_SHARE
        );
        println!("ratios: to the mean of the alone phases just before and after (alone rows: to the first)");
        println!(
            "{:<34} {:>9} {:>8} {:>8} {:>9} {:>9} {:>11} {:>11}",
            "phase", "per s", "p50 ms", "p99 ms", "per s ×", "p99 ×", "cpu µs/call", "wait µs/call"
        );
        let mut rows = vec![
            ("alone", &first, [&first, &first]),
            ("neighbour spinning", &spin, [&first, &second]),
            ("alone", &second, [&first, &first]),
            ("neighbour misbehaving (mixed)", &mixed, [&second, &third]),
            ("alone", &third, [&first, &first]),
            ("floor: idle-class spinners outside", &floor, [&third, &fourth]),
            ("alone", &fourth, [&first, &first]),
        ];
        if let Some(((phase, _, _), last)) = &compiled {
            rows.push(("neighbour compiling 18 MB Python", phase, [&fourth, last]));
            rows.push(("alone", last, [&first, &first]));
        }
        for (name, phase, [before, after]) in rows {
            let per_call = |d: Duration| d.as_secs_f64() * 1e6 / phase.latencies.len().max(1) as f64;
            let (per_s, p99) = (
                (before.per_second() + after.per_second()) / 2.0,
                (ms(before.pct(99)) + ms(after.pct(99))) / 2.0,
            );
            println!(
                "{name:<34} {:>9.0} {:>8.2} {:>8.2} {:>8.2}x {:>8.2}x {:>11.0} {:>11.0}",
                phase.per_second(),
                ms(phase.pct(50)),
                ms(phase.pct(99)),
                phase.per_second() / per_s,
                ms(phase.pct(99)) / p99,
                per_call(phase.cpu.calls),
                per_call(phase.cpu.waited),
            );
        }
        if let Some(((phase, upload, optimised), _)) = &compiled {
            println!(
                "compile phase {:.1} s: the upload answered after {:.1} s (Winch), Cranelift's build served {:.1} s later",
                phase.took.as_secs_f64(),
                upload.as_secs_f64(),
                optimised.as_secs_f64()
            );
        }
        if std::env::var("BENCH_WAITS").is_ok() {
            let text = service.metrics().encode()?;
            for line in text.lines().filter(|l| l.starts_with("addon_plugin_core_wait_seconds") && l.contains("healthy") && !l.contains("bucket")) {
                println!("{line}");
            }
        }
        for (name, noise) in [("spinning", &spin_noise), ("mixed", &mixed_noise)] {
            println!("neighbour's calls ({name}): {} — {:?}", noise.sent.load(Ordering::Relaxed), noise.outcomes.lock().unwrap());
        }
        let slowest: Vec<String> =
            mixed_noise.slowest.lock().unwrap().iter().map(|(kind, t)| format!("{kind} {:.0} ms", ms(*t))).collect();
        println!("slowest answer of each kind (mixed, busy included): {}", slowest.join(", "));
        let mut times = mixed_noise.failed_at.lock().unwrap().clone();
        times.sort();
        if let Some(max) = times.last() {
            let at = |p: usize| ms(times[(times.len() * p / 100).min(times.len() - 1)]);
            println!(
                "misbehaving calls that ran (deadline 500 ms) answered at p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                at(50),
                at(99),
                ms(*max)
            );
        }
        anyhow::Ok(())
    })
}
