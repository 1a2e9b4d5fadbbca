//! The compiled-plugin cache: compiling a component is seconds for a large one, loading its
//! compiled artefact is milliseconds, so each engine's build of each plugin is written once
//! to the cache directory and read back by later loads and later processes.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The artefact's file: the content's sha256 plus the engine's compatibility hash, so a
/// different wasmtime, compiler or engine configuration never loads a stale artefact.
fn artefact(engine: &Engine, dir: &Path, sha256: &str) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
}

/// Whether `engine`'s build of the plugin is in the cache.
pub(super) fn holds(engine: &Engine, dir: Option<&Path>, sha256: &str) -> bool {
    dir.is_some_and(|dir| artefact(engine, dir, sha256).exists())
}

/// Compile, or load the artefact an earlier compilation left in the cache directory; the
/// flag says which.
pub(super) fn compile(
    engine: &Engine,
    dir: Option<&Path>,
    bytes: &[u8],
    sha256: &str,
) -> anyhow::Result<(Component, bool)> {
    let Some(dir) = dir else {
        return Ok((new_component(engine, bytes)?, false));
    };
    let path = artefact(engine, dir, sha256);
    if path.exists() {
        // SAFETY: the file was written by `serialize` below, into the host's own cache
        // directory, for this exact engine configuration (it is in the file name).
        #[allow(unsafe_code, reason = "loading the host's own compile cache")]
        let cached = unsafe { Component::deserialize_file(engine, &path) };
        match cached {
            Ok(component) => return Ok((component, true)),
            Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable compiled artefact: {e:#}"),
        }
    }
    let component = new_component(engine, bytes)?;
    if let Err(e) = write_artefact(&component, dir, &path) {
        tracing::warn!(path = %path.display(), "could not cache the compiled plugin: {e:#}");
    }
    Ok((component, false))
}

fn new_component(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("not a valid component: {e:#}"))
}

/// Write atomically (temporary file, then rename) so concurrent hosts never read half a file.
fn write_artefact(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = dir.join(format!(".{}-{}.tmp", std::process::id(), hex::encode(suffix)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
