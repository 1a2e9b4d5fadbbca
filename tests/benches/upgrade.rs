//! Benchmark: how fast a new plugin version goes from upload to serving, and how fast a swap
//! between loaded versions is, for a ~2 MB component (`tests/guests/bulky`). Each figure is
//! printed next to a native baseline measured in the same run:
//! - upload-to-serving vs a bare `wasmtime::Component::new` of the same bytes;
//! - restart load (compile cache hit) vs the same compile;
//! - swap (registry write + flush + pointer swap) vs a bare `RwLock<Arc<_>>` replace.
//!
//! Run with `cargo bench -p addon-host-tests --bench upgrade`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use addon_host::service::Service;

mod common;

/// Append a custom section so each variant is a distinct version with the same code.
fn variant(base: &[u8], n: u32) -> Vec<u8> {
    let name = b"bench-variant";
    let payload = n.to_le_bytes();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = base.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // size (LEB128, < 128)
    out.extend_from_slice(&section);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let base = std::fs::read(addon_host_tests::PLUGIN_BULKY)?;
    let dir = tempfile::tempdir()?;
    let cfg = common::host_config(dir.path(), "bulky", addon_host_tests::PLUGIN_BULKY, Default::default());
    let service = Service::start(&cfg)?;
    let addon = service.addon("bulky")?;
    let rounds = 8;

    // Baseline: compiling the same bytes with a bare engine.
    let engine = wasmtime::Engine::default();
    let mut compile = Vec::new();
    for i in 0..rounds {
        let bytes = variant(&base, 10_000 + i);
        let t = Instant::now();
        wasmtime::component::Component::new(&engine, &bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        compile.push(t.elapsed());
    }

    // Upload to serving: validate, compile, store, flush, swap, then a provision served by it.
    let mut upload = Vec::new();
    for i in 0..rounds {
        let bytes = variant(&base, i);
        let t = Instant::now();
        let done = rt.block_on(service.upload(&addon, bytes, "bench", true))?;
        let req = common::request(i as usize);
        let served = rt.block_on(service.provision(&addon, &common::bitrise(), req))?;
        upload.push(t.elapsed());
        assert_eq!(served.record.plugin_version, done.version.sha256);
    }

    // Restart load: the same bytes again, through a fresh runtime sharing the compile cache.
    let fresh = addon_host::runtime::Runtime::new(&cfg.server, cfg.max_memory_bytes(), false)?;
    let mut cached = Vec::new();
    for i in 0..rounds {
        let bytes = variant(&base, i);
        let t = Instant::now();
        let plugin = fresh.load(&bytes)?;
        cached.push(t.elapsed());
        assert!(plugin.from_cache);
    }

    // Swap between two loaded versions.
    let versions = rt.block_on(service.versions(&addon))?;
    let (a, b) = (versions[1].meta.sha256.clone(), versions[2].meta.sha256.clone());
    let swaps = 200;
    let mut swap = Vec::new();
    for i in 0..swaps {
        let target = if i % 2 == 0 { &a } else { &b };
        let t = Instant::now();
        rt.block_on(service.activate(&addon, target))?;
        swap.push(t.elapsed());
    }
    let slot = RwLock::new(Arc::new(0u64));
    let mut pointer = Vec::new();
    for i in 0..swaps {
        let t = Instant::now();
        let old = std::mem::replace(&mut *slot.write().unwrap(), Arc::new(i as u64));
        std::hint::black_box(old);
        pointer.push(t.elapsed());
    }

    let (compile, upload, cached, swap, pointer) =
        (median(compile), median(upload), median(cached), median(swap), median(pointer));
    println!("component: {} bytes, {rounds} rounds, {swaps} swaps (medians)", base.len());
    println!("{:<44} {:>12}", "bare wasmtime Component::new (baseline)", ms(compile));
    println!(
        "{:<44} {:>12}   ratio {:.2}x",
        "upload to serving (validate+compile+store+swap+first call)",
        ms(upload),
        upload.as_secs_f64() / compile.as_secs_f64()
    );
    println!(
        "{:<44} {:>12}   ratio {:.3}x",
        "restart load from compile cache",
        ms(cached),
        cached.as_secs_f64() / compile.as_secs_f64()
    );
    println!("{:<44} {:>12}", "bare RwLock<Arc> replace (baseline)", format!("{:.3} µs", pointer.as_secs_f64() * 1e6));
    println!(
        "{:<44} {:>12}   ratio {:.0}x",
        "swap (record active version, flush, swap)",
        ms(swap),
        swap.as_secs_f64() / pointer.as_secs_f64().max(1e-9)
    );
    Ok(())
}
