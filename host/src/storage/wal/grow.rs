//! Growing the log's files ahead of its writes, on a thread of its own.
//!
//! An entry is made durable with `sync_file_range`, which does not persist a file's size or
//! block allocation: it may only overwrite blocks already written and synced. So the files
//! grow by zeroed steps made durable with `fdatasync`. Done by the group commit's leader, each
//! step stalled every waiting commit for a few milliseconds; here a thread keeps the active
//! file a step ahead of the writes, and the leader waits only if it catches up.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::super::{Result, StorageError};

/// Files grow by this much at a time.
const STEP: u64 = 1 << 20;

pub(super) struct Growth {
    files: Arc<[File; 2]>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// How far each file holds written, synced blocks.
    zeroed: [u64; 2],
    /// How far each file is asked to grow.
    wanted: [u64; 2],
    /// The growth's failure, and whether the disk was full.
    failed: Option<(String, bool)>,
    stop: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops and joins the growing thread when dropped.
pub(super) struct Grower {
    pub(super) growth: Arc<Growth>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Grower {
    /// Start growing `files`, which hold written blocks up to `zeroed`.
    pub(super) fn start(files: Arc<[File; 2]>, zeroed: [u64; 2]) -> Result<Grower> {
        let state = State { zeroed, wanted: zeroed, ..State::default() };
        let growth = Arc::new(Growth { files, state: Mutex::new(state), changed: Condvar::new() });
        let g = growth.clone();
        let thread = std::thread::Builder::new()
            .name("storage-log-grow".into())
            .spawn(move || g.run())
            .map_err(|e| StorageError::Flush(format!("write-ahead log: starting its growth thread: {e}")))?;
        Ok(Grower { growth, thread: Some(thread) })
    }
}

impl Drop for Grower {
    fn drop(&mut self) {
        lock(&self.growth.state).stop = true;
        self.growth.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Growth {
    /// Block until file `file` holds written blocks up to `end`, and ask for a step more.
    pub(super) fn ensure(&self, file: usize, end: u64) -> Result<()> {
        let mut st = lock(&self.state);
        let ahead = (end + STEP).div_ceil(STEP) * STEP;
        if st.wanted[file] < ahead {
            st.wanted[file] = ahead;
            self.changed.notify_all();
        }
        while st.zeroed[file] < end {
            if let Some((why, full)) = &st.failed {
                return Err(if *full { StorageError::DiskFull(why.clone()) } else { StorageError::Flush(why.clone()) });
            }
            st = self.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    /// `file` holds written blocks up to `end` (a header just written and synced).
    pub(super) fn written(&self, file: usize, end: u64) {
        let mut st = lock(&self.state);
        st.zeroed[file] = st.zeroed[file].max(end);
        st.wanted[file] = st.wanted[file].max(end);
    }

    fn run(&self) {
        loop {
            let (file, from, to) = {
                let mut st = lock(&self.state);
                loop {
                    if st.stop {
                        return;
                    }
                    if st.failed.is_none()
                        && let Some(i) = (0..2).find(|&i| st.wanted[i] > st.zeroed[i])
                    {
                        break (i, st.zeroed[i], st.wanted[i]);
                    }
                    st = self.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let f = &self.files[file];
            let zeros = vec![0u8; (to - from) as usize];
            let grown = f.write_all_at(&zeros, from).and_then(|()| f.sync_data());
            let mut st = lock(&self.state);
            match grown {
                Ok(()) => st.zeroed[file] = st.zeroed[file].max(to),
                Err(e) => {
                    st.failed = Some((format!("write-ahead log: growing a file: {e}"), super::super::is_disk_full(&e)))
                }
            }
            self.changed.notify_all();
        }
    }
}
