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
            Some(build) => sources(&build.watch),
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

/// What to watch for a build's `watch` list, and which changed paths count. Folders are
/// watched recursively; a file is watched through its folder, never by its own inode: an
/// editor's rename-style save (`sed -i`, vim, many IDEs) replaces the inode, which ends a
/// watch on it for good. Changes under a `target` or `.git` folder inside a watched folder
/// never count, so a build does not start itself again.
fn sources(paths: &[PathBuf]) -> (Vec<(PathBuf, RecursiveMode)>, Wanted) {
    let (mut folders, mut files, mut watched) = (Vec::new(), Vec::new(), Vec::new());
    for path in paths {
        let entry = if path.is_dir() {
            folders.push(path.clone());
            (path.clone(), RecursiveMode::Recursive)
        } else {
            files.push(path.clone());
            let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (folder.to_path_buf(), RecursiveMode::NonRecursive)
        };
        if !watched.contains(&entry) {
            watched.push(entry);
        }
    }
    let wanted = move |changed: &Path| {
        files.iter().any(|f| f == changed)
            || folders.iter().any(|folder| {
                changed.strip_prefix(folder).is_ok_and(|inside| {
                    !inside
                        .components()
                        .any(|c| c == Component::Normal("target".as_ref()) || c == Component::Normal(".git".as_ref()))
                })
            })
    };
    (watched, Box::new(wanted))
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
    tracing::warn!(addon = id, "build failed ({}), the running version keeps serving; its output:", output.status);
    // The partner's own compiler, in development mode: its lines as they are (the log
    // escapes the newlines of whatever passes through it).
    eprintln!("{shown}");
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
            world = done.world,
            compile_ms = done.compile_ms,
            "reloaded changed plugin"
        ),
        Err(e) => tracing::warn!(addon = id, "changed plugin refused, the previous version keeps serving: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use notify::Watcher;

    use super::*;

    /// Save `path` the way `sed -i` and many editors do: write a new file, rename it over.
    fn save_by_rename(path: &Path, text: &str) {
        let temp = path.with_extension("swp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, path).unwrap();
    }

    /// A watched file saved by rename, twice: each save is seen (a watch on the file's own
    /// inode ends with the first save, and the second goes unseen). Changes under `target/`
    /// in a watched folder and to unwatched files beside a watched one do not count.
    #[test]
    fn rename_saves_are_seen_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let (file, folder) = (dir.path().join("app.js"), dir.path().join("src"));
        std::fs::write(&file, "1").unwrap();
        std::fs::create_dir_all(folder.join("target")).unwrap();
        let (watched, wanted) = sources(&[file.clone(), folder.clone()]);
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                for path in event.paths.iter().filter(|p| wanted(p)) {
                    let _ = tx.send(path.clone());
                }
            }
        })
        .unwrap();
        for (path, mode) in &watched {
            watcher.watch(path, *mode).unwrap();
        }
        let seen = |expected: &Path| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(path) if path == expected => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
            false
        };
        for round in 0..3 {
            save_by_rename(&file, &format!("edit {round}"));
            assert!(seen(&file), "rename save {round} of a watched file was not seen");
        }
        save_by_rename(&folder.join("lib.rs"), "x");
        assert!(seen(&folder.join("lib.rs")));
        std::fs::write(folder.join("target/out"), "x").unwrap();
        std::fs::write(dir.path().join("Cargo.lock"), "x").unwrap();
        std::thread::sleep(QUIET);
        let noise: Vec<PathBuf> =
            rx.try_iter().filter(|p| p.starts_with(folder.join("target")) || p.ends_with("Cargo.lock")).collect();
        assert!(noise.is_empty(), "unwatched changes counted: {noise:?}");
    }
}
