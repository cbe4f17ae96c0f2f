//! The file layout of the router's hourly buffers, shared by the router (writer) and
//! the loader (reader).
//!
//! `<dir>/<YYYYMMDDHH>.buf` holds the hour's events as framed records
//! ([`crate::record`]) of encoded [`crate::pb::Event`]s, in arrival order (duplicates
//! possible: every store deduplicates by event id). `<dir>/<YYYYMMDDHH>.closed` marks an
//! hour the router has closed (hour end + grace); a `.buf` that grows after its hour
//! closed holds late events, and the loader rebuilds the hour. `<dir>/<YYYYMMDDHH>.loaded`
//! is written by the loader once it has committed the hour: the buffer bytes its manifest
//! covers. The router deletes an hour past retention only when that covers the whole file.

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

/// The marker that the loader committed an hour.
pub fn loaded_path(dir: &Path, hour: i64) -> PathBuf {
    dir.join(format!("{}.loaded", hour::compact(hour)))
}

/// What the loader's `.loaded` marker says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Loaded {
    /// Bytes of the buffer file the committed manifest was built from.
    pub source_bytes: u64,
}

/// Records (atomically, durably) that the loader committed `source_bytes` of an hour.
pub fn write_loaded(dir: &Path, hour: i64, source_bytes: u64) -> io::Result<()> {
    let data = serde_json::to_vec(&Loaded { source_bytes }).map_err(io::Error::other)?;
    crate::wal::write_atomic(&loaded_path(dir, hour), &data)
}

/// The loader's marker of an hour; `None` when it is missing or unreadable (the hour
/// then counts as never loaded, and is kept).
pub fn read_loaded(dir: &Path, hour: i64) -> Option<Loaded> {
    let data = fs::read(loaded_path(dir, hour)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Deletes an hour's buffer and markers.
pub fn remove_hour(dir: &Path, hour: i64) -> io::Result<()> {
    for path in [buffer_path(dir, hour), closed_path(dir, hour), loaded_path(dir, hour)] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
