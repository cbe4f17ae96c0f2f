//! The file layout of the router's hourly buffers, shared by the router (writer) and
//! the loader (reader).
//!
//! `<dir>/<YYYYMMDDHH>.buf` holds the hour's events as framed records
//! ([`crate::record`]) of encoded [`crate::pb::Event`]s, in arrival order (duplicates
//! possible: every store deduplicates by event id). `<dir>/<YYYYMMDDHH>.closed` marks an
//! hour the router has closed (hour end + grace); a `.buf` that grows after its hour
//! closed holds late events, and the loader rebuilds the hour.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::hour;

/// The buffer file of an hour.
pub fn buffer_path(dir: &Path, hour: i64) -> PathBuf {
    dir.join(format!("{}.buf", hour::compact(hour)))
}

/// The marker that an hour is closed.
pub fn closed_path(dir: &Path, hour: i64) -> PathBuf {
    dir.join(format!("{}.closed", hour::compact(hour)))
}

/// One buffered hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourState {
    /// Hours since the epoch.
    pub hour: i64,
    /// Size of its buffer file.
    pub bytes: u64,
    /// Whether the router has closed it.
    pub closed: bool,
}

/// Every hour in the buffer directory, oldest first. A missing directory has none.
pub fn list_hours(dir: &Path) -> io::Result<Vec<HourState>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut hours = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".buf")) else {
            continue;
        };
        let Some(h) = hour::parse_compact(stem) else { continue };
        hours.push(HourState {
            hour: h,
            bytes: entry.metadata()?.len(),
            closed: closed_path(dir, h).exists(),
        });
    }
    hours.sort_by_key(|h| h.hour);
    Ok(hours)
}
