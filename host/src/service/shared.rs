//! What a host does when it shares its storage with other hosts (PostgreSQL): it follows the
//! plugin versions they activate, and runs the jobs a stopped host left overdue. On sled the
//! host is the whole service and none of this starts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{Addon, Service, storage_work};
use crate::clock;
use crate::error::ServiceError;
use crate::jobs::StoredJob;

/// What a host announces after activating a version of an add-on's plugin.
const ACTIVATED: &str = "activated ";
/// What a host announces after storing a version without activating it: the others compile
/// it ahead, so that its activation is only a pointer swap everywhere.
const UPLOADED: &str = "uploaded ";
/// How often a host looks for jobs that nobody ran on time.
const ADOPT_EVERY: Duration = Duration::from_secs(5);
/// How late a job must be before another host than the one that queued it runs it.
const ADOPT_AFTER_MS: u64 = 5_000;

/// The announcement that `addon`'s active version changed.
pub(super) fn activated(addon: &str) -> String {
    format!("{ACTIVATED}{addon}")
}

/// The announcement that a version of `addon` with `sha256` was stored.
pub(super) fn uploaded(addon: &str, sha256: &str) -> String {
    format!("{UPLOADED}{addon} {sha256}")
}

/// Start following the other hosts, on the current runtime, when the storage is shared.
/// It ends when the service is dropped.
pub fn follow(service: &Arc<Service>) {
    let Some(events) = service.storage.subscribe() else { return };
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(listen(Arc::downgrade(service), events));
    handle.spawn(adopt_jobs(Arc::downgrade(service)));
}

async fn listen(service: Weak<Service>, mut events: tokio::sync::broadcast::Receiver<String>) {
    loop {
        let event = events.recv().await;
        let Some(live) = service.upgrade() else { return };
        let addons: Vec<Arc<Addon>> = match &event {
            Ok(event) => {
                if let Some((id, sha)) = event.strip_prefix(UPLOADED).and_then(|rest| rest.split_once(' ')) {
                    if let Ok(addon) = live.addon(id)
                        && let Err(e) = live.prepare(&addon, sha).await.map(drop)
                    {
                        tracing::warn!(addon = id, "could not prepare a version another host stored: {e}");
                    }
                    continue;
                }
                match event.strip_prefix(ACTIVATED) {
                    Some(id) => live.addon(id).into_iter().collect(),
                    None if event == crate::storage::RESYNC => live.addons().cloned().collect(),
                    None => Vec::new(),
                }
            }
            // Announcements were missed: look at every add-on.
            Err(RecvError::Lagged(_)) => live.addons().cloned().collect(),
            Err(RecvError::Closed) => return,
        };
        for addon in addons {
            if let Err(e) = live.follow_active(&addon).await {
                tracing::error!(addon = addon.id(), "could not serve the version another host activated: {e}");
            }
        }
    }
}

async fn adopt_jobs(service: Weak<Service>) {
    loop {
        tokio::time::sleep(ADOPT_EVERY).await;
        let Some(live) = service.upgrade() else { return };
        let adopter = live.clone();
        match storage_work(move || adopter.queue_overdue_jobs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "queued overdue jobs another host did not run"),
            Err(e) => tracing::warn!("looking for overdue jobs failed: {e}"),
        }
    }
}

impl Service {
    /// Serve the version the registry says is active, if this host serves another.
    async fn follow_active(&self, addon: &Arc<Addon>) -> Result<(), ServiceError> {
        let (registry, id) = (self.registry.clone(), addon.id().to_owned());
        let Some(sha) = storage_work(move || Ok(registry.active(&id)?)).await? else { return Ok(()) };
        if addon.plugin().sha256 == sha {
            return Ok(());
        }
        let (plugin, _) = self.prepare(addon, &sha).await?;
        let _serial = addon.swap_lock.lock().await;
        // A later activation (here or elsewhere) may have landed while this one compiled.
        let (registry, id) = (self.registry.clone(), addon.id().to_owned());
        if storage_work(move || Ok(registry.active(&id)?)).await?.as_deref() != Some(plugin.sha256.as_str()) {
            return Ok(());
        }
        let from = addon.replace_plugin(plugin.clone());
        tracing::info!(
            addon = addon.id(),
            from = from.short_version(),
            to = plugin.short_version(),
            compiler = plugin.compiler(),
            "plugin swapped (activated by another host)"
        );
        Ok(())
    }

    /// Queue the jobs overdue by more than [`ADOPT_AFTER_MS`] that this host has neither
    /// queued nor running. One that another host is running is tried (and skipped) once per
    /// look, never more often.
    fn queue_overdue_jobs(&self) -> Result<usize, ServiceError> {
        let late = clock::now_ms().saturating_sub(ADOPT_AFTER_MS);
        let known = self.jobs.known();
        let mut queued = 0;
        for addon in self.addons.values() {
            for (_, bytes) in addon.store.jobs()? {
                let Some(job) = StoredJob::from_bytes(&bytes) else { continue };
                if !job.dead && job.due_ms <= late && !known.contains(&(addon.id().to_owned(), job.id.clone())) {
                    self.jobs.push(addon.id(), &job.id, job.due_ms);
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }
}
