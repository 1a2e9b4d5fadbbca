//! The compiled-plugin cache: compiling a component is seconds for a large one, loading its
//! compiled artefact is milliseconds, so each engine's build of each plugin is written once
//! to the cache directory and read back by later loads and later processes.
//!
//! Loading an artefact runs the native code in it, so the cache is trusted by a key, never
//! by a file name: each artefact carries an HMAC-SHA-256 tag under a key the host keeps in
//! its storage (never in the cache directory), bound to the plugin's sha256 and the engine.
//! An artefact whose tag does not check out (written by someone else, copied from another
//! plugin, damaged) is logged and replaced by a fresh compile, never loaded. Only a build
//! that linked as a plugin is written, and the directory is made private (0700).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The tag's length, at the end of each artefact file.
const TAG: usize = 32;

/// A cache directory and the key its artefacts are tagged with.
pub struct CompileCache {
    dir: PathBuf,
    key: Vec<u8>,
}

impl CompileCache {
    /// The cache in `dir`, tagged with `key` (the host's `compile-cache` key from storage).
    pub fn new(dir: PathBuf, key: Vec<u8>) -> CompileCache {
        CompileCache { dir, key }
    }

    /// The artefact's file: the content's sha256 plus the engine's compatibility hash, so a
    /// different wasmtime, compiler or engine configuration never finds a stale artefact.
    fn artefact(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
    }

    fn tag(&self, path: &Path, artefact: &[u8]) -> Option<[u8; TAG]> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key).ok()?;
        mac.update(b"addon-host compiled plugin\0");
        // The file name binds the tag to this plugin and this engine.
        mac.update(path.file_name()?.as_encoded_bytes());
        mac.update(b"\0");
        mac.update(artefact);
        Some(mac.finalize().into_bytes().into())
    }

    /// Whether `engine`'s build of the plugin is in the cache (its tag is checked on load).
    pub(super) fn holds(&self, engine: &Engine, sha256: &str) -> bool {
        self.artefact(engine, sha256).exists()
    }

    /// `engine`'s build of the plugin, when the cache holds one whose tag checks out. The
    /// file is read once and the checked bytes are the ones loaded.
    pub(super) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.artefact(engine, sha256);
        let file = std::fs::read(&path).ok()?;
        let genuine = file.len() > TAG && {
            let (artefact, tag) = file.split_at(file.len() - TAG);
            self.tag(&path, artefact).is_some_and(|expected| subtle::ConstantTimeEq::ct_eq(&expected[..], tag).into())
        };
        if !genuine {
            tracing::warn!(path = %path.display(), "compiled artefact failed its integrity check: not loaded, recompiling");
            return None;
        }
        // SAFETY: the bytes carry a tag only this host's key makes, over exactly these bytes
        // and this file name (the plugin's sha256 and this engine's configuration): they are
        // what `store` below serialized for this engine.
        #[allow(unsafe_code, reason = "loading the host's own, authenticated compile cache")]
        let cached = unsafe { Component::deserialize(engine, &file[..file.len() - TAG]) };
        match cached {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compiled artefact: {e:#}");
                None
            }
        }
    }

    /// Keep `engine`'s build of the plugin, tagged; a failure is logged (the plugin serves
    /// anyway, and the next load compiles again).
    pub(super) fn store(&self, engine: &Engine, sha256: &str, component: &Component) {
        let path = self.artefact(engine, sha256);
        if let Err(e) = self.write(&path, component) {
            tracing::warn!(path = %path.display(), "could not cache the compiled plugin: {e:#}");
        }
    }

    /// Write atomically (temporary file, then rename) so concurrent hosts never read half a
    /// file.
    fn write(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        private_dir(&self.dir)?;
        let mut bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let tag = self.tag(path, &bytes).ok_or_else(|| anyhow::anyhow!("cannot tag the artefact"))?;
        bytes.extend_from_slice(&tag);
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tmp = self.dir.join(format!(".{}-{}.tmp", std::process::id(), hex::encode(suffix)));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Remove every build of the plugin (all engines); the bytes freed.
    pub fn remove(&self, sha256: &str) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let prefix = format!("{sha256}-");
        let mut freed = 0;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                freed += entry.metadata().map_or(0, |m| m.len());
                let _ = std::fs::remove_file(entry.path());
            }
        }
        freed
    }
}

/// Create `dir` readable and writable by the host's user only; say so if an existing one is
/// writable by others (whoever can write it could only make the host recompile, but should not).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    } else if std::fs::metadata(dir)?.permissions().mode() & 0o022 != 0 {
        tracing::warn!(path = %dir.display(), "the compile cache directory is writable by other users");
    }
    Ok(())
}
