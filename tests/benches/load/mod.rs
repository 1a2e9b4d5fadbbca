//! The HTTP load of the benchmarks that start real servers: keep-alive connections sending
//! Bitrise provisions of fresh apps, spread over one or several servers, with the rate and
//! latency percentiles of a run.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub(crate) const TOKEN: &str = "bench-shared-token-0123";

/// The real `addon-host serve` with the credentials example as `myaddon`, data in `dir`;
/// `storage` is its `[server.storage]` table (empty: sled).
pub(crate) async fn credentials_host(dir: &std::path::Path, storage: &str) -> anyhow::Result<Server> {
    let config = dir.join("addon-host.toml");
    let addon = addon_host_tests::AddonToml::new("myaddon", addon_host_tests::PLUGIN_CREDENTIALS)
        .bitrise(TOKEN, "bench-sso-secret")
        .config("host_url", "https://myaddon.example.com");
    let server = "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
                  [[server.admins]]\nname = \"bench\"\ntoken = \"bench-admin-token-0123456\"\n";
    std::fs::write(&config, format!("{server}{storage}{}", addon.to_toml()))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"));
    cmd.args(["serve", "--config"]).arg(&config).env("RUST_LOG", "warn");
    start(cmd).await
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

pub(crate) async fn start(mut cmd: Command) -> anyhow::Result<Server> {
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

pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50: u32,
    pub(crate) p99: u32,
}

/// `conns` connections, spread round-robin over `addrs`, for a warm-up second and then `secs`.
pub(crate) async fn drive(addrs: &[String], conns: usize, secs: u64, tag: &str) -> anyhow::Result<Run> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    // Warm-up: one second of the same traffic, not measured.
    for (warm, secs) in [(true, 1), (false, secs)] {
        let until = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let addr = addrs[c % addrs.len()].clone();
                tokio::spawn(connection(addr, format!("{tag}{run}{}c{c}", u8::from(warm)), until))
            })
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

pub(crate) fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}
