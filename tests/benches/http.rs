//! Benchmark: new provisions per second over HTTP, the real `addon-host serve` (credentials
//! plugin, sled, group commit) against a native reference add-on (`native-credentials`: the
//! same logic as a plain axum handler with the same durability), both driven the same way
//! at 1, 16 and 64 keep-alive connections. Each request provisions a fresh app.
//!
//! Run with `cargo bench -p addon-host-tests --bench http`. `BENCH_SECS` (default 4) is the
//! measured time per run and `BENCH_ROUNDS` (default 3) the runs per side and concurrency;
//! the table shows the median run. Prints a table with req/s, p50, p99 and hosted/native.
//! `BENCH_LEVELS` (e.g. `1,64`) picks the concurrencies; `BENCH_SIDE=hosted` (or `native`)
//! drives one side only, for profiling it (`perf record -p PID`; the PIDs are printed).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use addon_host_tests::AddonToml;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const TOKEN: &str = "bench-shared-token-0123";
const LEVELS: [usize; 3] = [1, 16, 64];

struct Server {
    child: Child,
    addr: String,
}

async fn start(mut cmd: Command) -> anyhow::Result<Server> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true).spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(addr) = line.split("listening on http://").nth(1) {
            let addr = addr.trim().to_owned();
            // Keep draining stdout so the server never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Server { child, addr });
        }
    }
    anyhow::bail!("server exited before listening")
}

async fn hosted(dir: &std::path::Path) -> anyhow::Result<Server> {
    let config = dir.join("addon-host.toml");
    let addon = AddonToml::new("myaddon", addon_host_tests::PLUGIN_CREDENTIALS)
        .bitrise(TOKEN, "bench-sso-secret")
        .config("host_url", "https://myaddon.example.com");
    let server = "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
                  [[server.admins]]\nname = \"bench\"\ntoken = \"bench-admin-token-0123456\"\n";
    std::fs::write(&config, format!("{server}{}", addon.to_toml()))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"));
    cmd.args(["serve", "--config"]).arg(&config).env("RUST_LOG", "warn");
    start(cmd).await
}

async fn native(dir: &std::path::Path) -> anyhow::Result<Server> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_native-credentials"));
    cmd.arg(dir.join("native"));
    start(cmd).await
}

/// One keep-alive connection sending provisions of fresh apps until `until`; returns the
/// latency of each request in microseconds.
async fn connection(addr: String, prefix: String, until: Instant) -> anyhow::Result<Vec<u32>> {
    let stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let mut latencies = Vec::new();
    let mut head = String::new();
    for i in 0.. {
        if Instant::now() >= until {
            break;
        }
        let body = format!(r#"{{"app_slug":"{prefix}-{i}","api_token":"tok","plan":"free"}}"#);
        let req = format!(
            "POST /addons/myaddon/provision HTTP/1.1\r\nHost: {addr}\r\nAuthentication: {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let started = Instant::now();
        stream.get_mut().write_all(req.as_bytes()).await?;
        let (mut status, mut length) = (0, 0usize);
        loop {
            head.clear();
            if stream.read_line(&mut head).await? == 0 {
                anyhow::bail!("connection closed");
            }
            let line = head.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
                status = code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        if status != 201 {
            anyhow::bail!("unexpected status {status}: {}", String::from_utf8_lossy(&body));
        }
        latencies.push(started.elapsed().as_micros() as u32);
    }
    Ok(latencies)
}

struct Run {
    rps: f64,
    p50: u32,
    p99: u32,
}

async fn drive(addr: &str, conns: usize, secs: u64, tag: &str) -> anyhow::Result<Run> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    // Warm-up: one second of the same traffic, not measured.
    for (warm, secs) in [(true, 1), (false, secs)] {
        let until = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|c| tokio::spawn(connection(addr.to_owned(), format!("{tag}{run}{}c{c}", u8::from(warm)), until)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        if !warm {
            all.sort_unstable();
            let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
            return Ok(Run {
                rps: all.len() as f64 / elapsed,
                p50: pct(0.50).unwrap_or(0),
                p99: pct(0.99).unwrap_or(0),
            });
        }
    }
    unreachable!()
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // The load generator gets one thread, the same for both sides.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let mut hosted_server = hosted(dir.path()).await?;
        let mut native_server = native(dir.path()).await?;
        println!("new provisions over HTTP, {secs} s per run, median of {rounds} runs per cell");
        println!(
            "{:>5} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>8} {:>9}",
            "conns", "native/s", "p50 µs", "p99 µs", "hosted/s", "p50 µs", "p99 µs", "ratio", "p99 ratio"
        );
        let levels: Vec<usize> = std::env::var("BENCH_LEVELS")
            .ok()
            .map(|v| v.split(',').filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_else(|| LEVELS.to_vec());
        let side = std::env::var("BENCH_SIDE").unwrap_or_default();
        let (do_native, do_hosted) = (side != "hosted", side != "native");
        eprintln!("pids: hosted {:?}, native {:?}", hosted_server.child.id(), native_server.child.id());
        let skipped = || Run { rps: 0.0, p50: 0, p99: 0 };
        for conns in levels {
            let (mut n, mut h) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                // Alternate which side goes first so drift in the machine hits both.
                for first in [round % 2 == 0, round % 2 == 1] {
                    match (first, do_native, do_hosted) {
                        (true, true, _) => n.push(drive(&native_server.addr, conns, secs, "n").await?),
                        (false, _, true) => h.push(drive(&hosted_server.addr, conns, secs, "h").await?),
                        (true, false, _) => n.push(skipped()),
                        (false, _, false) => h.push(skipped()),
                    }
                }
            }
            let (n, h) = (median(n), median(h));
            println!(
                "{conns:>5} | {:>9.0} {:>8} {:>8} | {:>9.0} {:>8} {:>8} | {:>7.2}x {:>8.2}x",
                n.rps,
                n.p50,
                n.p99,
                h.rps,
                h.p50,
                h.p99,
                h.rps / n.rps,
                f64::from(h.p99) / f64::from(n.p99.max(1))
            );
        }
        hosted_server.child.kill().await?;
        native_server.child.kill().await?;
        anyhow::Ok(())
    })
}
