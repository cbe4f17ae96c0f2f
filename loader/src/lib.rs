//! weir's loader: turns closed hourly buffers into typed, partitioned, zstd Parquet —
//! one schema per event version from the catalog — and rebuilds (replays) any hour still
//! buffered.
//!
//! Layout: `<warehouse>/event=<name>/version=<v>/date=<YYYY-MM-DD>/hour=<HH>/part-0.parquet`,
//! invalid events in `<warehouse>/_invalid/date=.../hour=.../`, one
//! `_manifests/<hour>.json` per loaded hour. Each hour is replaced whole (see [`commit`]).
#![warn(missing_docs)]

pub mod columns;
pub mod commit;
pub mod config;
pub mod schema;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use prost::Message;
use weir_proto::buffer::{buffer_path, list_hours};
use weir_proto::catalog::Catalog;
use weir_proto::pb::Event;
use weir_proto::record::{self, Decoded};
use weir_proto::{event, hour};

pub use commit::Manifest;
pub use config::LoaderConfig;

/// Errors of a load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Parquet could not be written.
    #[error("writing {path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The hour is not (or no longer) in the buffer.
    #[error("hour {0} is not in the buffer (never received, or past retention_days); it cannot be rebuilt")]
    NotBuffered(String),
    /// Another loader holds the warehouse.
    #[error("another loader is working on {0}; wait for it to finish")]
    Locked(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What loading one hour did.
#[derive(Clone, Debug)]
pub struct HourReport {
    /// The hour.
    pub hour: i64,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Loads hours from a buffer directory into a warehouse.
pub struct Loader {
    /// The catalog schemas come from.
    pub catalog: Arc<Catalog>,
    /// The router's hourly buffer.
    pub buffer_dir: PathBuf,
    /// Where Parquet goes.
    pub warehouse: PathBuf,
    /// Rows per row group.
    pub row_group_rows: usize,
}

struct Lock(#[allow(dead_code)] fs::File);

impl Loader {
    fn lock(&self) -> Result<Lock, LoadError> {
        fs::create_dir_all(&self.warehouse).map_err(io_err(&self.warehouse))?;
        let path = self.warehouse.join("_lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match f.try_lock() {
            Ok(()) => Ok(Lock(f)),
            Err(fs::TryLockError::WouldBlock) => Err(LoadError::Locked(self.warehouse.clone())),
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// Loads every closed hour whose buffer is not loaded yet or grew since (late
    /// events); with `include_open`, the open hours too. Finishes interrupted loads first.
    pub fn run(&self, include_open: bool) -> Result<Vec<HourReport>, LoadError> {
        let _lock = self.lock()?;
        commit::recover(&self.warehouse)?;
        let mut reports = Vec::new();
        for state in list_hours(&self.buffer_dir).map_err(io_err(&self.buffer_dir))? {
            if !(state.closed || include_open) || state.bytes == 0 {
                continue;
            }
            if let Some(m) = commit::read_manifest(&self.warehouse, state.hour)? {
                if m.source_bytes == state.bytes {
                    continue;
                }
            }
            reports.push(self.load_hour_locked(state.hour)?);
        }
        Ok(reports)
    }

    /// Rebuilds every buffered hour from `from` to `to` (inclusive), replacing what was
    /// loaded. Fails for an hour in the range that is no longer buffered. `progress` is
    /// called after each hour with (done, total).
    pub fn replay(
        &self,
        from: i64,
        to: i64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<HourReport>, LoadError> {
        let _lock = self.lock()?;
        commit::recover(&self.warehouse)?;
        let buffered: HashSet<i64> = list_hours(&self.buffer_dir)
            .map_err(io_err(&self.buffer_dir))?
            .into_iter()
            .map(|s| s.hour)
            .collect();
        if let Some(missing) = (from..=to).find(|h| !buffered.contains(h)) {
            return Err(LoadError::NotBuffered(hour::display(missing)));
        }
        let total = (to - from + 1).max(0) as usize;
        let mut reports = Vec::new();
        for (i, h) in (from..=to).enumerate() {
            reports.push(self.load_hour_locked(h)?);
            progress(i + 1, total);
        }
        Ok(reports)
    }

    fn load_hour_locked(&self, h: i64) -> Result<HourReport, LoadError> {
        let path = buffer_path(&self.buffer_dir, h);
        let data = match fs::read(&path) {
            Ok(d) => bytes::Bytes::from(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::NotBuffered(hour::display(h))),
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Read the intact prefix: the router may be appending right now.
        let mut pos = 0usize;
        let mut events = Vec::new();
        let mut unreadable = 0u64;
        while let Decoded::Record(payload, used) = record::decode(&data[pos..]) {
            match Event::decode(data.slice(pos + record::HEADER_LEN..pos + used)) {
                Ok(e) => events.push(e),
                Err(_) => unreadable += 1,
            }
            let _ = payload;
            pos += used;
        }
        if unreadable > 0 {
            tracing::error!(hour = %hour::display(h), unreadable, "unreadable events in the buffer were skipped");
        }
        let source_events = events.len() as u64;
        let mut seen = HashSet::with_capacity(events.len());
        let mut groups: BTreeMap<(String, u32), Vec<Event>> = BTreeMap::new();
        let mut invalid = Vec::new();
        let mut duplicates = 0u64;
        for mut e in events {
            if !seen.insert(e.id.clone()) {
                duplicates += 1;
                continue;
            }
            if e.valid && !schema::known(&self.catalog, &e.event, e.version) {
                e.valid = false;
                e.errors.push(format!(
                    "loader: {} version {} is not in the catalog",
                    e.event, e.version
                ));
            }
            if e.valid {
                groups.entry((e.event.clone(), e.version)).or_default().push(e);
            } else {
                invalid.push(e);
            }
        }
        let staging = self.warehouse.join("_staging").join(hour::compact(h));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let (date, hh) = hour::date_and_hour(h);
        let mut files = Vec::new();
        let mut rows = 0u64;
        for ((name, version), mut group) in groups {
            group.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
            let columns = self.catalog.columns(&name, version);
            let schema = schema::event_schema(&columns);
            let rel = format!("event={name}/version={version}/date={date}/hour={hh}/part-0.parquet");
            let mut batches = Vec::new();
            let mut start = 0usize;
            while start < group.len() {
                let end = (start + self.row_group_rows.max(1)).min(group.len());
                match columns::event_batch(&schema, &columns, &group[start..end]) {
                    Ok(b) => {
                        batches.push(b);
                        start = end;
                    }
                    Err(bad) => {
                        let mut e = group.remove(start + bad.index);
                        e.valid = false;
                        e.errors.push(format!("loader: {}", bad.error));
                        invalid.push(e);
                    }
                }
            }
            if group.is_empty() {
                continue;
            }
            rows += group.len() as u64;
            files.push(self.write(&staging, &rel, &schema, &batches, Some((name, version)))?);
        }
        let invalid_rows = invalid.len() as u64;
        if !invalid.is_empty() {
            invalid.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
            let schema = schema::invalid_schema();
            let batch = columns::invalid_batch(&schema, &invalid).map_err(|e| LoadError::Parquet {
                path: staging.clone(),
                message: e.to_string(),
            })?;
            let rel = format!("_invalid/date={date}/hour={hh}/part-0.parquet");
            files.push(self.write(&staging, &rel, &schema, &[batch], None)?);
        }
        let manifest = Manifest {
            hour: hour::display(h),
            loaded_at: event::format_micros(event::now_micros()),
            catalog_revision: self.catalog.revision.clone(),
            source_bytes: pos as u64,
            source_events,
            duplicates,
            rows,
            invalid_rows,
            files,
        };
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        commit::commit(&self.warehouse, h, &staging, manifest.clone())?;
        tracing::info!(hour = %manifest.hour, rows, invalid_rows, duplicates, files = manifest.files.len(), "hour loaded");
        Ok(HourReport { hour: h, manifest })
    }

    fn write(
        &self,
        staging: &Path,
        rel: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        event: Option<(String, u32)>,
    ) -> Result<commit::FileEntry, LoadError> {
        let path = staging.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = fs::File::create(&path).map_err(io_err(&path))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let perr = |e: parquet::errors::ParquetError| LoadError::Parquet {
            path: path.clone(),
            message: e.to_string(),
        };
        let sink = Crc32Writer {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let mut writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(perr)?;
        let mut rows = 0u64;
        for b in batches {
            rows += b.num_rows() as u64;
            writer.write(b).map_err(perr)?;
        }
        let sink = writer.into_inner().map_err(perr)?;
        let (crc, bytes) = (sink.crc.finalize(), sink.bytes);
        let file = sink.inner.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
        file.sync_all().map_err(io_err(&path))?;
        let (event, version) = match event {
            Some((e, v)) => (Some(e), Some(v)),
            None => (None, None),
        };
        Ok(commit::FileEntry {
            path: rel.to_string(),
            event,
            version,
            rows,
            bytes,
            crc32: format!("{crc:08x}"),
        })
    }
}

struct Crc32Writer {
    inner: BufWriter<fs::File>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl Write for Crc32Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
