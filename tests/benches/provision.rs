//! Benchmark: the cost of serving a provision through addon-host (service layer, sandboxed
//! plugin in a fresh instance, transactional commit, flush) against a native Rust
//! implementation of the same add-on logic on the same sled storage, in the same run.
//!
//! Run with `cargo bench -p addon-host-tests --bench provision`.

use std::time::{Duration, Instant};

use addon_host::service::Service;

mod common;

const CALLS: usize = 2_000;

/// The credentials plugin's logic, natively: keep or create a per-app secret, store it with
/// the provision record in one transaction, flush.
fn native(db: &sled::Db, i: usize) -> anyhow::Result<()> {
    let tree = db.open_tree("native")?;
    let key = format!("k/secret/app{i}");
    let secret = match tree.get(&key)? {
        Some(s) => String::from_utf8_lossy(&s).into_owned(),
        None => {
            let mut b = [0u8; 24];
            getrandom(&mut b);
            hex(&b)
        }
    };
    let record = format!(
        r#"{{"resource_id":"app{i}","config":[["MYADDON_HOST_URL","https://myaddon.example.com/apps/app{i}"],["MYADDON_AUTH_SECRET","{secret}"]]}}"#
    );
    let mut batch = sled::Batch::default();
    batch.insert(key.as_bytes(), secret.as_bytes());
    batch.insert(format!("r/app{i}").as_bytes(), record.as_bytes());
    tree.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

fn getrandom(buf: &mut [u8]) {
    let mut x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn per_call(total: Duration) -> f64 {
    total.as_secs_f64() * 1e6 / CALLS as f64
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let host_url = [("host_url".to_owned(), "https://myaddon.example.com".to_owned())].into_iter().collect();
    let cfg = common::host_config(dir.path(), "myaddon", addon_host_tests::PLUGIN_CREDENTIALS, host_url);
    let service = Service::start(&cfg)?;
    let addon = service.addon("myaddon")?;

    let db = sled::Config::new().path(dir.path().join("native")).open()?;
    let t = Instant::now();
    for i in 0..CALLS {
        native(&db, i)?;
    }
    let native_time = t.elapsed();

    // The first pass runs the plugin for every app; the second replays the stored replies.
    let provision_all = || -> anyhow::Result<Duration> {
        let t = Instant::now();
        rt.block_on(async {
            for i in 0..CALLS {
                service.provision(&addon, &common::bitrise(), common::request(i)).await?;
            }
            anyhow::Ok(())
        })?;
        Ok(t.elapsed())
    };
    let hosted = provision_all()?;
    let replay = provision_all()?;

    println!("{CALLS} sequential provisions, {}", service.runtime().info().allocator);
    println!("{:<52} {:>9.1} µs/call", "native logic + sled transaction + flush (baseline)", per_call(native_time));
    println!(
        "{:<52} {:>9.1} µs/call   ratio {:.2}x",
        "addon-host: sandboxed plugin + commit + flush",
        per_call(hosted),
        hosted.as_secs_f64() / native_time.as_secs_f64()
    );
    println!(
        "{:<52} {:>9.1} µs/call   ratio {:.2}x",
        "addon-host: identical repeat (replayed, no plugin)",
        per_call(replay),
        replay.as_secs_f64() / native_time.as_secs_f64()
    );
    Ok(())
}
