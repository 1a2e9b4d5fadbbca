//! Benchmark: new provisions per second through the real `addon-host serve` (credentials
//! plugin) on each storage: one host on sled, one host on PostgreSQL, and three hosts on one
//! PostgreSQL database with the connections spread round-robin over them, as behind a load
//! balancer. The database is the tests' own cluster (`addon_host_tests::postgres`), on this
//! machine, so the three hosts and the database share its cores.
//!
//! Run with `cargo bench -p addon-host-tests --bench hosts`. `BENCH_SECS` (default 4) is the
//! measured time per run, `BENCH_ROUNDS` (default 3) the runs per cell (the median is shown)
//! and `BENCH_LEVELS` (default `1,16,64`) the connections.

mod load;

use load::{Server, credentials_host as host, drive, median};

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let levels: Vec<usize> = std::env::var("BENCH_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
        let one_db = format!("[server.storage]\npostgres = \"{}\"\n", addon_host_tests::postgres::fresh_database());
        let shared_db = format!("[server.storage]\npostgres = \"{}\"\n", addon_host_tests::postgres::fresh_database());
        let mut setups: Vec<(&str, Vec<Server>)> = vec![
            ("1 host, sled", vec![host(dirs[0].path(), "").await?]),
            ("1 host, postgres", vec![host(dirs[1].path(), &one_db).await?]),
            (
                "3 hosts, postgres",
                vec![
                    host(dirs[2].path(), &shared_db).await?,
                    host(dirs[3].path(), &shared_db).await?,
                    host(dirs[4].path(), &shared_db).await?,
                ],
            ),
        ];
        println!("new provisions over HTTP, {secs} s per run, median of {rounds} runs per cell");
        println!(
            "{:>18} | {:>5} | {:>9} {:>8} {:>8} | {:>8}",
            "setup", "conns", "req/s", "p50 µs", "p99 µs", "vs sled"
        );
        for conns in levels {
            let mut sled_rps = None;
            for (i, (name, servers)) in setups.iter().enumerate() {
                let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
                let mut runs = Vec::new();
                for _ in 0..rounds {
                    runs.push(drive(&addrs, conns, secs, &format!("s{i}")).await?);
                }
                let run = median(runs);
                let base = *sled_rps.get_or_insert(run.rps);
                println!(
                    "{name:>18} | {conns:>5} | {:>9.0} {:>8} {:>8} | {:>7.2}x",
                    run.rps,
                    run.p50,
                    run.p99,
                    run.rps / base
                );
            }
        }
        for (_, servers) in &mut setups {
            for server in servers {
                server.child.kill().await?;
            }
        }
        anyhow::Ok(())
    })
}
