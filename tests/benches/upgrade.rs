//! Benchmark: how fast a new plugin version goes from upload to serving, how fast a version
//! loads again from the compile cache, and how fast a swap between loaded versions is, for a
//! ~2 MB component (`tests/guests/bulky`). Each is printed next to a native baseline doing
//! the same work without addon-host, in the same run, after a warm-up round (medians):
//! - upload: compile with a bare engine, store the bytes and the active pointer in sled,
//!   flush, replace an `RwLock<Arc<_>>` — against `Service::upload` (validate, compile,
//!   store, flush, swap);
//! - cached load: `Component::deserialize_file` of the bare engine's artefact — against a
//!   fresh `Runtime::load` hitting the compile cache (hash, lookup, deserialize, link);
//! - swap: write the active pointer, flush, replace — against `Service::activate`.
//!
//! Run with `cargo bench -p addon-host-tests --bench upgrade`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use addon_host::service::Service;
use wasmtime::component::Component;

#[allow(dead_code, reason = "shared with the other benchmarks")]
mod common;

const ROUNDS: u32 = 8;
const SWAPS: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The native counterpart of a version store: bytes and the active pointer in sled, the
/// serving component behind a lock.
struct Native {
    db: sled::Db,
    serving: RwLock<Arc<Component>>,
}

impl Native {
    fn activate(&self, sha: &[u8], component: Arc<Component>) -> anyhow::Result<()> {
        self.db.insert("active", sha)?;
        self.db.flush()?;
        drop(std::mem::replace(&mut *self.serving.write().unwrap(), component));
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let base = std::fs::read(addon_host_tests::PLUGIN_BULKY)?;
    let dir = tempfile::tempdir()?;
    let mut cfg = common::host_config(dir.path(), "bulky", addon_host_tests::PLUGIN_BULKY, Default::default());
    // Like for like: the native side compiles with Cranelift, so the hosted side does too
    // (tiering would serve from Winch first and compile Cranelift's build in the background).
    cfg.server.compiler = addon_host::config::Compiler::Cranelift;
    let service = Service::start(&cfg)?;
    let addon = service.addon("bulky")?;
    let engine = wasmtime::Engine::default();
    let compile = |bytes: &[u8]| Component::new(&engine, bytes).map_err(|e| anyhow::anyhow!("{e:#}"));
    let native = Native { db: sled::open(dir.path().join("native"))?, serving: RwLock::new(Arc::new(compile(&base)?)) };

    // Upload to serving; round 0 of each side is a warm-up.
    let (mut native_upload, mut hosted_upload, mut first_call) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=ROUNDS {
        let bytes = common::numbered(&base, u64::from(10_000 + i));
        let t = Instant::now();
        let component = compile(&bytes)?;
        native.db.insert(format!("plugin/{i}"), bytes.as_slice())?;
        native.activate(&i.to_le_bytes(), Arc::new(component))?;
        let native_time = t.elapsed();

        let bytes = common::numbered(&base, u64::from(i));
        let t = Instant::now();
        let done = rt.block_on(service.upload(&addon, bytes, "bench", true))?;
        let hosted_time = t.elapsed();
        let t = Instant::now();
        let served = rt.block_on(service.provision(&addon, &common::bitrise(), common::request(i as usize)))?;
        let call_time = t.elapsed();
        assert_eq!(served.record.plugin_version, done.version.sha256);
        if i > 0 {
            native_upload.push(native_time);
            hosted_upload.push(hosted_time);
            first_call.push(call_time);
        }
    }

    // Load again from the compile cache, as after a restart or for a rollback.
    let key = service.storage().host_key(addon_host::runtime::CACHE_KEY)?;
    let fresh = addon_host::runtime::Runtime::new(&cfg.server, cfg.max_memory_bytes(), false, Some(key))?;
    let artefact = dir.path().join("native.cwasm");
    std::fs::write(&artefact, compile(&base)?.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?)?;
    let (mut native_cached, mut hosted_cached) = (Vec::new(), Vec::new());
    for i in 0..=ROUNDS {
        let t = Instant::now();
        // SAFETY: the file was written just above by `serialize` with this very engine.
        #[allow(unsafe_code, reason = "loading an artefact this benchmark just serialized")]
        let loaded = unsafe { Component::deserialize_file(&engine, &artefact) };
        std::hint::black_box(loaded.map_err(|e| anyhow::anyhow!("{e:#}"))?);
        let native_time = t.elapsed();
        let t = Instant::now();
        let plugin = fresh.load(&common::numbered(&base, u64::from(i.max(1))), None)?;
        let hosted_time = t.elapsed();
        assert!(plugin.from_cache);
        if i > 0 {
            native_cached.push(native_time);
            hosted_cached.push(hosted_time);
        }
    }

    // Swap between two loaded versions, durably.
    let versions = rt.block_on(service.versions(&addon))?;
    let (a, b) = (versions[1].meta.sha256.clone(), versions[2].meta.sha256.clone());
    let components = [Arc::new(compile(&common::numbered(&base, 1))?), Arc::new(compile(&common::numbered(&base, 2))?)];
    let (mut native_swap, mut hosted_swap) = (Vec::new(), Vec::new());
    for i in 0..SWAPS + 10 {
        let t = Instant::now();
        native.activate(&[i as u8 % 2], components[i % 2].clone())?;
        let native_time = t.elapsed();
        let t = Instant::now();
        rt.block_on(service.activate(&addon, if i % 2 == 0 { &a } else { &b }))?;
        let hosted_time = t.elapsed();
        if i >= 10 {
            native_swap.push(native_time);
            hosted_swap.push(hosted_time);
        }
    }

    println!("component: {} bytes; {ROUNDS} rounds and {SWAPS} swaps after a warm-up (medians)", base.len());
    println!("{:<62} {:>12} {:>12} {:>8}", "", "native", "addon-host", "ratio");
    for (what, native, hosted) in [
        ("upload to serving (compile, store, flush, swap)", native_upload, hosted_upload),
        ("load again from the compile cache", native_cached, hosted_cached),
        ("swap between loaded versions (record, flush, swap)", native_swap, hosted_swap),
    ] {
        let (n, h) = (median(native), median(hosted));
        println!("{what:<62} {:>12} {:>12} {:>7.2}x", ms(n), ms(h), h.as_secs_f64() / n.as_secs_f64());
    }
    println!("{:<62} {:>12} {:>12}", "first call served by a new version", "", ms(median(first_call)));
    Ok(())
}
