//! Free space on the filesystems a component writes to, checked cheaply on the hot
//! path: [`Reserve::low`] reads a cached answer and refreshes it (one `statvfs` per
//! directory) at most every [`REFRESH`].
//!
//! The router keeps a reserve so that its log's consumers always have room to move
//! what the log holds into the hourly buffer: intake stops (503) while free space is
//! below it, the log drains, segments are released, and intake resumes by itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How stale the cached answer may be.
pub const REFRESH: Duration = Duration::from_millis(100);

/// Bytes available to an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A minimum of free space on the filesystems of some directories.
pub struct Reserve {
    dirs: Vec<PathBuf>,
    min_free: u64,
    low: AtomicBool,
    free: AtomicU64,
    checked: Mutex<Option<Instant>>,
}

impl Reserve {
    /// Keeps `min_free` bytes free on each of `dirs` (0 turns the check off).
    pub fn new(dirs: Vec<PathBuf>, min_free: u64) -> Reserve {
        Reserve {
            dirs,
            min_free,
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            checked: Mutex::new(None),
        }
    }

    /// Whether some directory's filesystem has less than the reserve free. A directory
    /// that cannot be checked counts as fine (its writes report their own errors).
    pub fn low(&self) -> bool {
        if self.min_free == 0 {
            return false;
        }
        // Only one caller refreshes; the others read the last answer.
        if let Ok(mut checked) = self.checked.try_lock() {
            if checked.is_none_or(|t| t.elapsed() >= REFRESH) {
                *checked = Some(Instant::now());
                let least = self
                    .dirs
                    .iter()
                    .filter_map(|d| free_bytes(d).ok())
                    .min()
                    .unwrap_or(u64::MAX);
                self.free.store(least, Ordering::Relaxed);
                let low = least < self.min_free;
                // Logged when it changes, not per request.
                if self.low.swap(low, Ordering::Relaxed) != low {
                    if low {
                        tracing::error!(dirs = ?self.dirs, free_bytes = least, min_free_bytes = self.min_free, "the disk is nearly full: refusing new events (503) until space frees");
                    } else {
                        tracing::info!(dirs = ?self.dirs, free_bytes = least, "disk space is back above the reserve: taking events again");
                    }
                }
            }
        }
        self.low.load(Ordering::Relaxed)
    }

    /// The least free space seen at the last check (bytes).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The reserve (bytes).
    pub fn min_free(&self) -> u64 {
        self.min_free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_is_low_and_zero_is_off() {
        let tmp = tempfile::tempdir().unwrap();
        let free = free_bytes(tmp.path()).unwrap();
        assert!(free > 0);
        assert!(Reserve::new(vec![tmp.path().into()], u64::MAX).low());
        assert!(!Reserve::new(vec![tmp.path().into()], 1).low());
        assert!(!Reserve::new(vec![tmp.path().into()], 0).low());
    }
}
