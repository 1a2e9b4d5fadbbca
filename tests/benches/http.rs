//! Benchmark: new provisions per second over HTTP, the real `addon-host serve` (credentials
//! plugin, sled, group commit) against two native references, all driven the same way at 1,
//! 16 and 64 keep-alive connections; each request provisions a fresh app. The native add-on
//! (`native-credentials`) is the same logic as a plain axum handler with the same durability:
//! once as a partner would write it (a sled flush per request: the "ratio"), once committing
//! through addon-host's own storage (the write-ahead log's group commit: the "sandbox ratio",
//! what the plugin sandbox and the service cost on their own).
//!
//! Run with `cargo bench -p addon-host-tests --bench http`. `BENCH_SECS` (default 4) is the
//! measured time per run and `BENCH_ROUNDS` (default 3) the runs per side and concurrency;
//! the table shows the median run. Prints a table with req/s, p50, p99 and hosted/native.
//! `BENCH_LEVELS` (e.g. `1,64`) picks the concurrencies; `BENCH_SIDE=hosted` (or `native`)
//! drives one side only, for profiling it (`perf record -p PID`; the PIDs are printed).

mod load;

use load::{Run, Server, drive, median, start};
use tokio::process::Command;

const LEVELS: [usize; 3] = [1, 16, 64];

async fn native(dir: &std::path::Path, group_commit: bool) -> anyhow::Result<Server> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_native-credentials"));
    if group_commit {
        cmd.arg(dir.join("native-group")).arg("--group-commit");
    } else {
        cmd.arg(dir.join("native"));
    }
    start(cmd).await
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // The load generator gets one thread, the same for both sides.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let mut hosted_server = load::credentials_host(dir.path(), "").await?;
        let mut native_server = native(dir.path(), false).await?;
        let mut group_server = native(dir.path(), true).await?;
        println!("new provisions over HTTP, {secs} s per run, median of {rounds} runs per cell");
        println!(
            "{:>5} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>7} {:>9} {:>13}",
            "conns",
            "native/s",
            "p50 µs",
            "p99 µs",
            "group/s",
            "p50 µs",
            "p99 µs",
            "hosted/s",
            "p50 µs",
            "p99 µs",
            "ratio",
            "p99 ratio",
            "sandbox ratio"
        );
        let levels: Vec<usize> = std::env::var("BENCH_LEVELS")
            .ok()
            .map(|v| v.split(',').filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_else(|| LEVELS.to_vec());
        let side = std::env::var("BENCH_SIDE").unwrap_or_default();
        let (do_native, do_hosted) = (side != "hosted", side != "native");
        let pids = (hosted_server.child.id(), native_server.child.id(), group_server.child.id());
        eprintln!("pids: hosted {:?}, native {:?}, native with group commit {:?}", pids.0, pids.1, pids.2);
        let skipped = || Run { rps: 0.0, p50: 0, p99: 0 };
        for conns in levels {
            let (mut n, mut g, mut h) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                // Rotate which side goes first so drift in the machine hits all three.
                for turn in 0..3 {
                    match ((round + turn) % 3, do_native, do_hosted) {
                        (0, true, _) => {
                            n.push(drive(std::slice::from_ref(&native_server.addr), conns, secs, "n").await?)
                        }
                        (1, true, _) => {
                            g.push(drive(std::slice::from_ref(&group_server.addr), conns, secs, "g").await?)
                        }
                        (2, _, true) => {
                            h.push(drive(std::slice::from_ref(&hosted_server.addr), conns, secs, "h").await?)
                        }
                        (0, false, _) => n.push(skipped()),
                        (1, false, _) => g.push(skipped()),
                        _ => h.push(skipped()),
                    }
                }
            }
            let (n, g, h) = (median(n), median(g), median(h));
            println!(
                "{conns:>5} | {:>9.0} {:>8} {:>8} | {:>9.0} {:>8} {:>8} | {:>9.0} {:>8} {:>8} | {:>6.2}x {:>8.2}x {:>12.2}x",
                n.rps,
                n.p50,
                n.p99,
                g.rps,
                g.p50,
                g.p99,
                h.rps,
                h.p50,
                h.p99,
                h.rps / n.rps,
                f64::from(h.p99) / f64::from(n.p99.max(1)),
                h.rps / g.rps,
            );
        }
        hosted_server.child.kill().await?;
        native_server.child.kill().await?;
        group_server.child.kill().await?;
        anyhow::Ok(())
    })
}
