//! Replacing an hour atomically: staged files, a pending manifest as the commit
//! record, then renames; an interrupted commit is rolled forward by the next run, and
//! staged files without a pending manifest are discarded.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_proto::hour;

use crate::LoadError;

/// One Parquet file of a loaded hour.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the warehouse.
    pub path: String,
    /// Event name (`None` for `_invalid/`).
    pub event: Option<String>,
    /// Event version (`None` for `_invalid/`).
    pub version: Option<u32>,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of the file's bytes (hex).
    pub crc32: String,
}

/// `_manifests/<hour>.json`: what a load of one hour wrote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The hour, `2026-11-22T13`.
    pub hour: String,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// Catalog revision the schemas came from.
    pub catalog_revision: String,
    /// Bytes of the buffer that were read; a buffer that grew since is reloaded.
    pub source_bytes: u64,
    /// Events read from the buffer.
    pub source_events: u64,
    /// Events dropped as repeats of an id already in the hour.
    pub duplicates: u64,
    /// Valid rows in the hour (every generation).
    pub rows: u64,
    /// Rows in the hour's `_invalid/` (every generation).
    pub invalid_rows: u64,
    /// Bytes of the buffer that were no record (damage skipped over) and records whose
    /// event could not be read: what the buffer held that no row came from.
    #[serde(default)]
    pub damaged_bytes: u64,
    /// Records whose event could not be read.
    #[serde(default)]
    pub unreadable_records: u64,
    /// The generation of the buffer the `source_*` fields describe (0 unless the hour's
    /// buffer was deleted after retention and late events started it again; see
    /// `weir_proto::runtime::buffer`). Files of earlier generations are kept as they are.
    #[serde(default)]
    pub generation: u32,
    /// The files, of every generation.
    pub files: Vec<FileEntry>,
}

impl FileEntry {
    /// The buffer generation the file was built from: `part-<generation>.parquet`.
    pub fn generation(&self) -> u32 {
        generation_of(&self.path)
    }
}

/// The generation in a part file's name (`.../part-<g>.parquet`); 0 for any other name.
pub fn generation_of(rel: &str) -> u32 {
    rel.rsplit('/')
        .next()
        .and_then(|f| f.strip_prefix("part-"))
        .and_then(|f| f.strip_suffix(".parquet"))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// Describes a Parquet file already in the warehouse from its own bytes (for a file of an
/// earlier generation whose manifest was lost).
pub fn entry_from_disk(warehouse: &Path, rel: &str) -> Result<FileEntry, LoadError> {
    let path = warehouse.join(rel);
    let data = bytes::Bytes::from(fs::read(&path).map_err(io_err(&path))?);
    let crc32 = format!("{:08x}", crc32fast::hash(&data));
    let bytes = data.len() as u64;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(data).map_err(|e| LoadError::Parquet {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let rows = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .num_rows() as u64;
    let mut parts = rel.split('/');
    let (event, version) = match (parts.next(), parts.next()) {
        (Some(e), Some(v)) if e.starts_with("event=") => (
            e.strip_prefix("event=").map(str::to_string),
            v.strip_prefix("version=").and_then(|v| v.parse().ok()),
        ),
        _ => (None, None),
    };
    Ok(FileEntry {
        path: rel.to_string(),
        event,
        version,
        rows,
        bytes,
        crc32,
    })
}

#[derive(Serialize, Deserialize)]
struct Pending {
    manifest: Manifest,
    staging: String,
    remove: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The manifest file of an hour.
pub fn manifest_path(warehouse: &Path, h: i64) -> PathBuf {
    warehouse.join("_manifests").join(format!("{}.json", hour::display(h)))
}

fn pending_path(warehouse: &Path, h: i64) -> PathBuf {
    warehouse
        .join("_manifests")
        .join(format!("{}.pending.json", hour::display(h)))
}

/// Reads an hour's manifest, if it was loaded.
pub fn read_manifest(warehouse: &Path, h: i64) -> Result<Option<Manifest>, LoadError> {
    let path = manifest_path(warehouse, h);
    match fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| LoadError::Io {
            path,
            error: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Every hour with a committed manifest in the warehouse, oldest first.
pub fn loaded_hours(warehouse: &Path) -> Result<Vec<i64>, LoadError> {
    let dir = warehouse.join("_manifests");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut hours = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        if let Some(h) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| !n.ends_with(".pending"))
            .and_then(|n| hour::parse(n).ok())
        {
            hours.push(h);
        }
    }
    hours.sort_unstable();
    Ok(hours)
}

/// Every Parquet file of hour `h` now in the warehouse (relative paths).
pub fn existing_files(warehouse: &Path, h: i64) -> Result<Vec<String>, LoadError> {
    let (date, hh) = hour::date_and_hour(h);
    let tail = format!("date={date}/hour={hh}");
    let mut dirs = vec![format!("_invalid/{tail}")];
    for event in read_dir_names(warehouse, "event=")? {
        for version in read_dir_names(&warehouse.join(&event), "version=")? {
            dirs.push(format!("{event}/{version}/{tail}"));
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        for f in read_dir_names(&warehouse.join(&d), "")? {
            if f.ends_with(".parquet") {
                out.push(format!("{d}/{f}"));
            }
        }
    }
    Ok(out)
}

fn read_dir_names(dir: &Path, prefix: &str) -> Result<Vec<String>, LoadError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Commits staged files of hour `h` (in `staging`, laid out as in the warehouse):
/// writes the pending manifest, then swaps the files in.
pub fn commit(warehouse: &Path, h: i64, staging: &Path, manifest: Manifest) -> Result<(), LoadError> {
    let new: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let remove = existing_files(warehouse, h)?
        .into_iter()
        .filter(|p| !new.contains(&p.as_str()))
        .collect();
    let staging_rel = staging
        .strip_prefix(warehouse)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| staging.to_string_lossy().into_owned());
    let pending = Pending {
        manifest,
        staging: staging_rel,
        remove,
    };
    let path = pending_path(warehouse, h);
    let dir = warehouse.join("_manifests");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let data = serde_json::to_vec_pretty(&pending).map_err(|e| LoadError::Io {
        path: path.clone(),
        error: io::Error::other(e),
    })?;
    write_synced(&path, &data)?;
    fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
    apply(warehouse, h, pending)
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), LoadError> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    io::Write::write_all(&mut f, data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn apply(warehouse: &Path, h: i64, pending: Pending) -> Result<(), LoadError> {
    let staging = warehouse.join(&pending.staging);
    for rel in &pending.remove {
        let p = warehouse.join(rel);
        match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(parent) = p.parent() {
                    let _ = fs::remove_dir(parent);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    for f in &pending.manifest.files {
        let from = staging.join(&f.path);
        let to = warehouse.join(&f.path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match fs::rename(&from, &to) {
            Ok(()) => {}
            // Already moved by an earlier, interrupted run.
            Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => {}
            Err(e) => return Err(io_err(&from)(e)),
        }
    }
    let final_path = manifest_path(warehouse, h);
    let data = serde_json::to_vec_pretty(&pending.manifest).map_err(|e| LoadError::Io {
        path: final_path.clone(),
        error: io::Error::other(e),
    })?;
    let tmp = final_path.with_extension("json.tmp");
    write_synced(&tmp, &data)?;
    fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
    let pending_file = pending_path(warehouse, h);
    fs::remove_file(&pending_file).map_err(io_err(&pending_file))?;
    let _ = fs::remove_dir_all(&staging);
    // The `_staging` parent too, once no other hour is staged there.
    if let Some(parent) = staging.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Finishes commits a crash interrupted and discards staging without a commit record.
pub fn recover(warehouse: &Path) -> Result<Vec<i64>, LoadError> {
    let dir = warehouse.join("_manifests");
    let mut finished = Vec::new();
    for name in read_dir_names(&dir, "")? {
        let Some(stem) = name.strip_suffix(".pending.json") else {
            continue;
        };
        let Ok(h) = hour::parse(stem) else { continue };
        let path = dir.join(&name);
        let data = fs::read(&path).map_err(io_err(&path))?;
        match serde_json::from_slice::<Pending>(&data) {
            Ok(p) => {
                tracing::info!(hour = stem, "finishing an interrupted load");
                apply(warehouse, h, p)?;
                finished.push(h);
            }
            Err(e) => {
                // A torn pending manifest: the commit never started.
                tracing::warn!(path = %path.display(), error = %e, "discarding an unfinished commit record");
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }
    let staging = warehouse.join("_staging");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    Ok(finished)
}
