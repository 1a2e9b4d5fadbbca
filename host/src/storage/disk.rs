//! The data directory's disk (sled only): its free space, sampled every second by the storage
//! heartbeat, and the watermark (`server.min_free_disk_mib`) below which the host refuses the
//! work that needs room — new provisions and plugin uploads — while plan changes,
//! deprovisions, the heartbeat, checkpoints and recovery go on (they free space or need
//! little). Refusing before the wall matters: sled cannot go on after a failed write, so a
//! disk that fills up ends in a restart (see `Storage::broken`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Unknown free space (not sampled yet, or the sample failed).
const UNKNOWN: u64 = u64::MAX;

/// How close to the watermark the host is, for its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Level {
    Roomy = 0,
    /// Within twice the watermark: a WARN, once.
    Near = 1,
    /// Below the watermark: new provisions and uploads are refused.
    Low = 2,
}

pub(crate) struct Disk {
    dir: PathBuf,
    min_free: u64,
    free: AtomicU64,
    level: AtomicU8,
}

impl Disk {
    /// Watch the disk that holds `dir`, with `min_free` bytes as the watermark (0: none).
    pub(crate) fn new(dir: &Path, min_free: u64) -> Disk {
        let disk = Disk { dir: dir.to_path_buf(), min_free, free: AtomicU64::new(UNKNOWN), level: AtomicU8::new(0) };
        disk.sample();
        disk
    }

    /// Read the free space now, and log when the disk crosses a level.
    pub(crate) fn sample(&self) {
        let free = fs2::available_space(&self.dir).unwrap_or(UNKNOWN);
        self.free.store(free, Ordering::Relaxed);
        if self.min_free == 0 || free == UNKNOWN {
            return;
        }
        let level = if free < self.min_free {
            Level::Low
        } else if free < self.min_free.saturating_mul(2) {
            Level::Near
        } else {
            Level::Roomy
        };
        let before = self.level.swap(level as u8, Ordering::Relaxed);
        if before == level as u8 {
            return;
        }
        let (dir, mib, min) = (self.dir.display(), free >> 20, self.min_free >> 20);
        match level {
            Level::Low => tracing::error!(
                free_bytes = free,
                "the data disk ({dir}) has {mib} MiB free, below server.min_free_disk_mib ({min} MiB): \
                 new provisions and plugin uploads are refused (507) until there is room"
            ),
            Level::Near => tracing::warn!(
                free_bytes = free,
                "the data disk ({dir}) has {mib} MiB free; below {min} MiB (server.min_free_disk_mib) \
                 new provisions and plugin uploads will be refused"
            ),
            Level::Roomy => tracing::info!(free_bytes = free, "the data disk ({dir}) has room again ({mib} MiB free)"),
        }
    }

    /// Free bytes on the disk at the last sample, if known.
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&f| f != UNKNOWN)
    }

    /// Why work that needs room is refused now (for the log), if it is.
    pub(crate) fn low(&self) -> Option<String> {
        let free = self.free_bytes()?;
        (self.min_free > 0 && free < self.min_free).then(|| {
            format!(
                "the data disk ({}) has {} MiB free, below server.min_free_disk_mib ({} MiB)",
                self.dir.display(),
                free >> 20,
                self.min_free >> 20
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_above_the_free_space_is_low_and_none_never_is() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let free = Disk::new(dir.path(), 0).free_bytes().expect("statvfs works on a temp dir");
        assert!(free > 0);
        assert!(Disk::new(dir.path(), 0).low().is_none(), "no watermark, never low");
        assert!(Disk::new(dir.path(), 1).low().is_none(), "one byte free is enough");
        let low = Disk::new(dir.path(), free.saturating_mul(4)).low().expect("low below the watermark");
        assert!(low.contains("min_free_disk_mib"), "{low}");
    }
}
