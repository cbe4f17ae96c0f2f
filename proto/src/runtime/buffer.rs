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
//!
//! Deleting leaves `<dir>/<YYYYMMDDHH>.expired`, the tombstone: the `.loaded` marker
//! renamed, so it names the *generation* of the buffer that is gone. Events arriving for
//! that hour later still (a collector that was cut off for longer than `retention_days`)
//! start a new generation of the buffer, and the loader adds them to the hour's Parquet
//! as new part files instead of replacing the hour with them.

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

/// The tombstone of an hour whose buffer was deleted after it was loaded.
pub fn expired_path(dir: &Path, hour: i64) -> PathBuf {
    dir.join(format!("{}.expired", hour::compact(hour)))
}

/// What the loader's `.loaded` marker (and, once the buffer is deleted, the `.expired`
/// tombstone) says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Loaded {
    /// Bytes of the buffer file the committed manifest was built from.
    pub source_bytes: u64,
    /// Which generation of the hour's buffer that was: 0 for the first; one more for
    /// each time the buffer was deleted and late events started it again.
    #[serde(default)]
    pub generation: u32,
}

/// Records (atomically, durably) that the loader committed `source_bytes` of
/// generation `generation` of an hour.
pub fn write_loaded(dir: &Path, hour: i64, source_bytes: u64, generation: u32) -> io::Result<()> {
    write_marker(&loaded_path(dir, hour), source_bytes, generation)
}

fn write_marker(path: &Path, source_bytes: u64, generation: u32) -> io::Result<()> {
    let data = serde_json::to_vec(&Loaded {
        source_bytes,
        generation,
    })
    .map_err(io::Error::other)?;
    crate::runtime::wal::write_atomic(path, &data)
}

/// The loader's marker of an hour; `None` when it is missing or unreadable (the hour
/// then counts as never loaded, and is kept).
pub fn read_loaded(dir: &Path, hour: i64) -> Option<Loaded> {
    let data = fs::read(loaded_path(dir, hour)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The generation of an hour's buffer now in `dir`: one past the generation its
/// tombstone names, 0 without one. An unreadable tombstone is an error: guessing could
/// replace loaded rows with late ones.
pub fn current_generation(dir: &Path, hour: i64) -> io::Result<u32> {
    let path = expired_path(dir, hour);
    match fs::read(&path) {
        Ok(data) => serde_json::from_slice::<Loaded>(&data)
            .map(|l| l.generation + 1)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: unreadable tombstone ({e}); write {{\"source_bytes\":0,\"generation\":N}} with the generation the warehouse manifest of that hour names", path.display()),
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Writes an hour's tombstone (the MongoDB mirror's, which has no `.loaded` to rename).
pub fn write_expired(dir: &Path, hour: i64, generation: u32) -> io::Result<()> {
    write_marker(&expired_path(dir, hour), 0, generation)
}

/// Deletes an hour's buffer, loaded whole, and leaves its tombstone: the buffer and
/// `.closed` go first, then `.loaded` is renamed to `.expired`. A crash in between leaves
/// a `.loaded` without a buffer, which [`finish_expiry`] completes before anything is
/// appended again.
pub fn expire_hour(dir: &Path, hour: i64) -> io::Result<()> {
    for path in [buffer_path(dir, hour), closed_path(dir, hour)] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    fs::rename(loaded_path(dir, hour), expired_path(dir, hour))?;
    crate::runtime::wal::sync_dir(dir)
}

/// Completes expiries a crash interrupted (a `.loaded` marker whose buffer is gone).
/// Returns the hours completed. Run before the first append.
pub fn finish_expiry(dir: &Path) -> io::Result<Vec<i64>> {
    let mut done = Vec::new();
    for (h, _) in hours_with(dir, ".loaded")? {
        if !buffer_path(dir, h).exists() {
            let _ = fs::remove_file(closed_path(dir, h));
            fs::rename(loaded_path(dir, h), expired_path(dir, h))?;
            done.push(h);
        }
    }
    if !done.is_empty() {
        crate::runtime::wal::sync_dir(dir)?;
    }
    Ok(done)
}

/// The MongoDB hourly buffer's collection of generation `generation` of an hour:
/// `buffer_YYYYMMDDHH`, then `buffer_YYYYMMDDHH_g<N>` for the events that arrived after
/// the hour was loaded and dropped (the generation is in the hour's `buffer_hours`
/// document).
pub fn mongo_collection(hour: i64, generation: u32) -> String {
    match generation {
        0 => format!("buffer_{}", hour::compact(hour)),
        g => format!("buffer_{}_g{g}", hour::compact(hour)),
    }
}

/// The hour and generation of a MongoDB buffer collection name, if it is one.
pub fn mongo_hour_of(name: &str) -> Option<(i64, u32)> {
    let rest = name.strip_prefix("buffer_")?;
    match rest.split_once("_g") {
        Some((h, g)) => Some((hour::parse_compact(h)?, g.parse().ok().filter(|g| *g > 0)?)),
        None => Some((hour::parse_compact(rest)?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mongo_collection_names_round_trip() {
        let h = hour::parse("2026-11-22T13").unwrap();
        assert_eq!(mongo_collection(h, 0), "buffer_2026112213");
        assert_eq!(mongo_collection(h, 2), "buffer_2026112213_g2");
        assert_eq!(mongo_hour_of("buffer_2026112213"), Some((h, 0)));
        assert_eq!(mongo_hour_of("buffer_2026112213_g2"), Some((h, 2)));
        assert_eq!(mongo_hour_of("buffer_2026112213_g0"), None);
        assert_eq!(mongo_hour_of("buffer_hours"), None);
        assert_eq!(mongo_hour_of("item_viewed"), None);
    }
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
    let mut hours = Vec::new();
    for (h, entry) in hours_with(dir, ".buf")? {
        hours.push(HourState {
            hour: h,
            bytes: entry.metadata()?.len(),
            closed: closed_path(dir, h).exists(),
        });
    }
    hours.sort_by_key(|h| h.hour);
    Ok(hours)
}

/// The hours of the files named `<YYYYMMDDHH><suffix>` in `dir`, with their entries. A
/// missing directory has none.
fn hours_with(dir: &Path, suffix: &str) -> io::Result<Vec<(i64, fs::DirEntry)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(h) = name
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(hour::parse_compact)
        else {
            continue;
        };
        out.push((h, entry));
    }
    Ok(out)
}
