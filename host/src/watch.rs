//! Development mode (`serve --watch`): reload an add-on's plugin when the `.wasm` file named
//! in the config changes on disk, for the partner's edit-build-try loop.
//!
//! The files are polled (no platform-specific watcher needed) and a change is acted on once
//! the file has stopped changing for one poll interval (debounce), so a half-written build
//! output is never loaded. A bad build is logged and the running version keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::HostConfig;
use crate::service::Service;

const POLL: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len() })
}

/// Start one watcher task per add-on.
pub(crate) fn spawn(service: Arc<Service>, cfg: &HostConfig) {
    for addon in &cfg.addons {
        let (service, id, path) = (service.clone(), addon.id.clone(), addon.plugin.clone());
        tracing::info!(addon = %id, path = %path.display(), "watching plugin file");
        tokio::spawn(async move { watch(service, id, path).await });
    }
}

async fn watch(service: Arc<Service>, id: String, path: PathBuf) {
    let mut seen = stamp(&path);
    let mut pending: Option<Stamp> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let now = stamp(&path);
        match (now, pending) {
            // Changed since the last poll: wait until it holds still.
            (Some(s), _) if Some(s) != seen && Some(s) != pending => pending = Some(s),
            // Unchanged for a whole interval after a change: load it.
            (Some(s), Some(p)) if s == p => {
                pending = None;
                seen = Some(s);
                reload(&service, &id, &path).await;
            }
            _ => {}
        }
    }
}

async fn reload(service: &Service, id: &str, path: &PathBuf) {
    let Ok(addon) = service.addon(id) else { return };
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => return tracing::warn!(addon = id, path = %path.display(), "cannot read changed plugin: {e}"),
    };
    match service.upload(&addon, bytes, "watch", true).await {
        Ok(done) => tracing::info!(
            addon = id,
            version = done.version.seq,
            compile_ms = done.compile_ms,
            "reloaded changed plugin"
        ),
        Err(e) => tracing::warn!(addon = id, "changed plugin refused, the previous version keeps serving: {e}"),
    }
}
