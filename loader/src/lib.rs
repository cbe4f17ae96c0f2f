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
pub mod flight;
pub mod mongo_mirror;
pub mod schema;

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use weir_proto::buffer::{buffer_path, list_hours};
use weir_proto::catalog::Catalog;
use weir_proto::event::EventView;
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
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::NotBuffered(hour::display(h))),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        // SAFETY: buffer files are only ever appended to (by the router) and deleted
        // after retention, never truncated or rewritten in place; the bytes we read below
        // the length taken above do not change while mapped.
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(&path))?)
        };
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        let data = &data[..(len as usize).min(data.len())];

        // Pass 1: a compact index of the hour (about 48 bytes an event, whatever their
        // size); events stay in the mapped file.
        let mut index = Index::default();
        let mut pos = 0usize;
        let mut unreadable = 0u64;
        while let Decoded::Record(payload, used) = record::decode(&data[pos..]) {
            match EventView::decode(payload) {
                Ok(v) => index.add(&self.catalog, pos + record::HEADER_LEN, payload.len(), &v),
                Err(_) => unreadable += 1,
            }
            pos += used;
        }
        if unreadable > 0 {
            tracing::error!(hour = %hour::display(h), unreadable, "unreadable events in the buffer were skipped");
        }
        let source_events = index.entries.len() as u64;
        let duplicates = index.mark_duplicates();
        let (mut groups, mut invalid) = index.split();

        let staging = self.warehouse.join("_staging").join(hour::compact(h));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let (date, hh) = hour::date_and_hour(h);
        let view = |e: &Entry<'_>| EventView::decode(&data[e.off..e.off + e.len]).unwrap_or_default();
        let mut files = Vec::new();
        let mut rows = 0u64;
        let chunk = self.row_group_rows.max(1);
        for (g, entries) in groups.iter_mut().enumerate() {
            let (name, version) = index.groups[g];
            entries.sort_unstable_by(|a, b| (a.at, a.id).cmp(&(b.at, b.id)));
            let columns = self.catalog.columns(name, version);
            let schema = schema::event_schema(&columns);
            let rel = format!("event={name}/version={version}/date={date}/hour={hh}/part-0.parquet");
            let mut writer: Option<PartWriter> = None;
            let mut written = 0u64;
            for part in entries.chunks(chunk) {
                let mut views: Vec<EventView<'_>> = part.iter().map(view).collect();
                let batch = loop {
                    match columns::event_batch(&schema, &columns, &views) {
                        Ok(b) => break b,
                        Err(bad) => {
                            let v = views.remove(bad.index);
                            invalid.push(Bad {
                                at: v.received_at,
                                id: v.id,
                                view: Some(v),
                                extra: vec![format!("loader: {}", bad.error)],
                                entry: None,
                            });
                        }
                    }
                };
                if batch.num_rows() == 0 {
                    continue;
                }
                if writer.is_none() {
                    writer = Some(PartWriter::create(&staging, &rel, &schema, self.row_group_rows)?);
                }
                if let Some(w) = writer.as_mut() {
                    w.write(&batch)?;
                }
                written += batch.num_rows() as u64;
            }
            if let Some(w) = writer {
                files.push(w.finish(Some((name.to_string(), version)))?);
                rows += written;
            }
        }
        let invalid_rows = invalid.len() as u64;
        if !invalid.is_empty() {
            invalid.sort_unstable_by(|a, b| (a.at, a.id).cmp(&(b.at, b.id)));
            let schema = schema::invalid_schema();
            let rel = format!("_invalid/date={date}/hour={hh}/part-0.parquet");
            let mut w = PartWriter::create(&staging, &rel, &schema, self.row_group_rows)?;
            for part in invalid.chunks_mut(chunk) {
                let rows: Vec<columns::InvalidRow<'_>> = part
                    .iter_mut()
                    .map(|b| columns::InvalidRow {
                        view: b
                            .view
                            .take()
                            .unwrap_or_else(|| b.entry.as_ref().map(view).unwrap_or_default()),
                        extra: std::mem::take(&mut b.extra),
                    })
                    .collect();
                let batch = columns::invalid_batch(&schema, &rows).map_err(|e| LoadError::Parquet {
                    path: staging.join(&rel),
                    message: e.to_string(),
                })?;
                w.write(&batch)?;
            }
            files.push(w.finish(None)?);
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
}

/// One event of the hour in the index: where it is and what it is sorted by.
#[derive(Clone, Copy)]
struct Entry<'a> {
    off: usize,
    len: usize,
    at: i64,
    id: &'a str,
    id_hash: u64,
    /// Index into `Index::groups`, or `INVALID`.
    group: u32,
    /// Valid when collected, but its version is not in the loader's catalog.
    unknown_version: bool,
    duplicate: bool,
}

const INVALID: u32 = u32::MAX;

/// The index of an hour (pass 1).
#[derive(Default)]
struct Index<'a> {
    entries: Vec<Entry<'a>>,
    groups: Vec<(&'a str, u32)>,
    group_of: std::collections::HashMap<(&'a str, u32), u32>,
}

/// A row for `_invalid/`: from the index, or already decoded (moved there by pass 2).
struct Bad<'a> {
    at: i64,
    id: &'a str,
    entry: Option<Entry<'a>>,
    view: Option<EventView<'a>>,
    extra: Vec<String>,
}

impl<'a> Index<'a> {
    fn add(&mut self, catalog: &Catalog, off: usize, len: usize, v: &EventView<'a>) {
        let known = v.valid && schema::known(catalog, v.event, v.version);
        let group = if known {
            let next = self.groups.len() as u32;
            *self.group_of.entry((v.event, v.version)).or_insert_with(|| {
                self.groups.push((v.event, v.version));
                next
            })
        } else {
            INVALID
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(v.id, &mut hasher);
        self.entries.push(Entry {
            off,
            len,
            at: v.received_at,
            id: v.id,
            id_hash: std::hash::Hasher::finish(&hasher),
            group,
            unknown_version: v.valid && !known,
            duplicate: false,
        });
    }

    /// Marks every repeat of an id already seen earlier in the buffer; returns how many.
    fn mark_duplicates(&mut self) -> u64 {
        let mut order: Vec<u32> = (0..self.entries.len() as u32).collect();
        order.sort_unstable_by_key(|&i| (self.entries[i as usize].id_hash, self.entries[i as usize].off));
        let hashes: Vec<u64> = order.iter().map(|&i| self.entries[i as usize].id_hash).collect();
        let mut duplicates = 0;
        let mut start = 0;
        while start < order.len() {
            let end = start + hashes[start..].iter().take_while(|&&h| h == hashes[start]).count();
            for k in start + 1..end {
                let i = order[k] as usize;
                let id = self.entries[i].id;
                let seen = order[start..k]
                    .iter()
                    .any(|&j| !self.entries[j as usize].duplicate && self.entries[j as usize].id == id);
                if seen {
                    self.entries[i].duplicate = true;
                    duplicates += 1;
                }
            }
            start = end;
        }
        duplicates
    }

    /// Entries by group, and the invalid ones, without duplicates.
    fn split(&self) -> (Vec<Vec<Entry<'a>>>, Vec<Bad<'a>>) {
        let mut groups = vec![Vec::new(); self.groups.len()];
        let mut invalid = Vec::new();
        for e in self.entries.iter().filter(|e| !e.duplicate) {
            if e.group == INVALID {
                let extra = if e.unknown_version {
                    vec!["loader: this event version is not in the catalog".to_string()]
                } else {
                    Vec::new()
                };
                invalid.push(Bad {
                    at: e.at,
                    id: e.id,
                    entry: Some(*e),
                    view: None,
                    extra,
                });
            } else {
                groups[e.group as usize].push(*e);
            }
        }
        (groups, invalid)
    }
}

/// One Parquet file being written from staging: row groups go out as they are built.
struct PartWriter {
    path: PathBuf,
    rel: String,
    writer: ArrowWriter<Crc32Writer>,
    rows: u64,
}

impl PartWriter {
    fn create(staging: &Path, rel: &str, schema: &SchemaRef, row_group_rows: usize) -> Result<PartWriter, LoadError> {
        let path = staging.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = fs::File::create(&path).map_err(io_err(&path))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let sink = Crc32Writer {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(|e| LoadError::Parquet {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(PartWriter {
            path,
            rel: rel.to_string(),
            writer,
            rows: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), LoadError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(|e| LoadError::Parquet {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    fn finish(self, event: Option<(String, u32)>) -> Result<commit::FileEntry, LoadError> {
        let path = self.path;
        let sink = self.writer.into_inner().map_err(|e| LoadError::Parquet {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let (crc, bytes) = (sink.crc.finalize(), sink.bytes);
        let file = sink.inner.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
        file.sync_all().map_err(io_err(&path))?;
        let (event, version) = match event {
            Some((e, v)) => (Some(e), Some(v)),
            None => (None, None),
        };
        Ok(commit::FileEntry {
            path: self.rel,
            event,
            version,
            rows: self.rows,
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
