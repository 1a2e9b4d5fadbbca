//! Development mode (`serve --watch`), the partner's edit-build-try loop. For an add-on with
//! `[addon.build]`, its sources are watched and each change runs the build command; a build
//! that succeeds swaps its plugin in, one that fails is shown (its output in the log) and the
//! running version keeps serving. Without a build command, the plugin file itself is watched.
//!
//! Changes come from the OS (inotify, FSEvents, … through `notify`), not from polling, and
//! are acted on once they have stopped for [`QUIET`]: an editor's save burst runs one build,
//! and a half-written plugin file is never loaded.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{BuildConfig, HostConfig};
use crate::service::Service;

/// How long changes must have stopped before they are acted on.
const QUIET: Duration = Duration::from_millis(300);
/// Lines of a failed build's output shown in the log.
const SHOWN_LINES: usize = 60;

/// Run every add-on's build once, before the host starts, with the build's output on stderr:
/// `serve --watch` starts from the sources, not from a stale or missing plugin file.
pub(crate) async fn build_all(cfg: &HostConfig) -> anyhow::Result<()> {
    for addon in &cfg.addons {
        if let Some(build) = &addon.build {
            tracing::info!(addon = %addon.id, command = %build.command, "building");
            let status = shell(build)
                .stdout(Stdio::from(std::io::stderr()))
                .stderr(Stdio::inherit())
                .status()
                .await
                .with_context(|| format!("add-on `{}`: running `{}`", addon.id, build.command))?;
            if !status.success() {
                anyhow::bail!("add-on `{}`: the build `{}` failed ({status})", addon.id, build.command);
            }
        }
    }
    Ok(())
}

/// Which changed paths count.
type Wanted = Box<dyn Fn(&Path) -> bool + Send>;

/// Start one watcher per add-on; they live as long as the runtime.
pub(crate) fn spawn(service: Arc<Service>, cfg: &HostConfig) -> anyhow::Result<()> {
    for addon in &cfg.addons {
        let (tx, rx) = mpsc::unbounded_channel();
        let plugin = addon.plugin.clone();
        let (watched, wanted): (Vec<(PathBuf, RecursiveMode)>, Wanted) = match &addon.build {
            Some(build) => (
                build.watch.iter().map(|p| (p.clone(), RecursiveMode::Recursive)).collect(),
                Box::new(|p: &Path| {
                    !p.components()
                        .any(|c| c == Component::Normal("target".as_ref()) || c == Component::Normal(".git".as_ref()))
                }),
            ),
            // The folder, not the file: builds often replace the file rather than write it.
            None => {
                let folder = plugin.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
                let file = plugin.clone();
                (vec![(folder, RecursiveMode::NonRecursive)], Box::new(move |p: &Path| p == file))
            }
        };
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let relevant = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_));
            if relevant && event.paths.iter().any(|p| wanted(p)) {
                let _ = tx.send(());
            }
        })
        .context("starting the file watcher")?;
        for (path, mode) in &watched {
            watcher
                .watch(path, *mode)
                .with_context(|| format!("add-on `{}`: watching {}", addon.id, path.display()))?;
            tracing::info!(addon = %addon.id, path = %path.display(), "watching");
        }
        let (service, id, build) = (service.clone(), addon.id.clone(), addon.build.clone());
        tokio::spawn(async move {
            // Owned by the task: dropping it would stop the events.
            let _watcher = watcher;
            run(service, id, plugin, build, rx).await;
        });
    }
    Ok(())
}

async fn run(
    service: Arc<Service>,
    id: String,
    plugin: PathBuf,
    build: Option<BuildConfig>,
    mut changes: mpsc::UnboundedReceiver<()>,
) {
    while changes.recv().await.is_some() {
        // Wait until the changes stop.
        loop {
            match tokio::time::timeout(QUIET, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if let Some(build) = &build
            && !rebuild(&id, build).await
        {
            continue;
        }
        reload(&service, &id, &plugin).await;
    }
}

/// Run the build; false (with its output logged) when it fails.
async fn rebuild(id: &str, build: &BuildConfig) -> bool {
    tracing::info!(addon = id, command = %build.command, "sources changed: building");
    let started = Instant::now();
    let output = match shell(build).output().await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(addon = id, "cannot run the build `{}`: {e}", build.command);
            return false;
        }
    };
    if output.status.success() {
        tracing::info!(addon = id, build_ms = started.elapsed().as_millis() as u64, "built");
        return true;
    }
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines[lines.len().saturating_sub(SHOWN_LINES)..].join("\n");
    tracing::warn!(addon = id, "build failed ({}), the running version keeps serving:\n{shown}", output.status);
    false
}

fn shell(build: &BuildConfig) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(&build.command).current_dir(&build.dir).stdin(Stdio::null()).kill_on_drop(true);
    command
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
