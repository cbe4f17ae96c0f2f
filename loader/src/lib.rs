//! weir's loader: turns closed hourly buffers into typed, partitioned, zstd Parquet —
//! one schema per event version from the catalog — and rebuilds (replays) any hour still
//! buffered.
//!
//! Layout: `<warehouse>/event=<name>/version=<v>/date=<YYYY-MM-DD>/hour=<HH>/part-<g>.parquet`,
//! invalid events in `<warehouse>/_invalid/date=.../hour=.../`, one
//! `_manifests/<hour>.json` per loaded hour. What the buffer holds of an hour is replaced
//! whole (see [`commit`]); `g` is the buffer's generation, 0 unless the hour was deleted
//! from the buffer after retention and late events came for it: those are added as
//! `part-<g>` beside the files already loaded, which are kept.
#![warn(missing_docs)]

pub mod columns;
pub mod commit;
pub mod config;
pub mod flight;
mod index;
pub mod metrics;
pub mod mongo_mirror;
pub mod schema;
pub mod service;

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use weir_proto::catalog::Catalog;
use weir_proto::event::EventView;
use weir_proto::runtime::buffer::{self, buffer_path, list_hours};
use weir_proto::{event, hour};

pub use commit::Manifest;
pub use config::LoaderConfig;

/// Errors of a load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Parquet could not be written.
    #[error("writing {path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The hour was loaded but is no longer in the buffer (past `retention_days`).
    #[error("hour {hour}{} was loaded but is no longer in the buffer (past retention_days): it cannot be rebuilt; replay a range without it (`weir loader hours` lists what is buffered)", if *more > 0 { format!(" (and {more} more hours in the range)") } else { String::new() })]
    NotBuffered {
        /// The first such hour, `2026-11-22T13`.
        hour: String,
        /// How many more hours of the range are like it.
        more: usize,
    },
    /// Another loader holds the warehouse.
    #[error("another loader is working on {0}; wait for it to finish")]
    Locked(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What loading one hour did.
#[derive(Clone, Debug)]
pub struct HourReport {
    /// The hour.
    pub hour: i64,
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether its index was larger than `index_memory_bytes` and went through spill
    /// files.
    pub spilled: bool,
}

/// What a replay did with one hour of its range.
#[derive(Clone, Debug)]
pub enum ReplayHour {
    /// Rebuilt from the buffer.
    Rebuilt(HourReport),
    /// Nothing was received in this hour: there is nothing to rebuild.
    Empty(i64),
}

impl ReplayHour {
    /// What rebuilding the hour did; `None` for an hour skipped as empty.
    pub fn report(&self) -> Option<&HourReport> {
        match self {
            ReplayHour::Rebuilt(r) => Some(r),
            ReplayHour::Empty(_) => None,
        }
    }
}

/// Where an hour stands, as `weir loader hours` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HourStatus {
    /// The router still takes events for it (before hour end + grace), and it is not
    /// loaded.
    Open,
    /// Closed by the router, not loaded yet: the next load takes it.
    Closed,
    /// Loaded, and the buffer holds nothing the Parquet lacks.
    Loaded,
    /// Loaded, but events came since (late ones, or more of an hour loaded while open):
    /// the next load rebuilds it.
    Stale,
    /// Loaded, and its buffer deleted after `retention_days`: it can no longer be replayed.
    Expired,
}

impl HourStatus {
    /// The word `weir loader hours` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            HourStatus::Open => "open",
            HourStatus::Closed => "closed",
            HourStatus::Loaded => "loaded",
            HourStatus::Stale => "stale",
            HourStatus::Expired => "expired",
        }
    }
}

/// One hour the buffer or the warehouse knows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HourListing {
    /// Hours since the epoch.
    #[serde(serialize_with = "hour_display")]
    pub hour: i64,
    /// Where it stands.
    pub state: HourStatus,
    /// Size of its buffer file, while buffered.
    pub buffer_bytes: Option<u64>,
    /// Records in its buffer (repeats of an id included: the load drops them).
    pub buffered_events: Option<u64>,
    /// Valid rows in the warehouse, once loaded.
    pub rows: Option<u64>,
    /// Rows in `_invalid/`, once loaded.
    pub invalid_rows: Option<u64>,
}

fn hour_display<S: serde::Serializer>(h: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hour::display(*h))
}

/// Maps a buffer file (`None` when it is empty); its first `len` bytes are what to read.
fn map_buffer(file: &fs::File, path: &Path, len: u64) -> Result<Option<memmap2::Mmap>, LoadError> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: buffer files are only ever appended to (by the router) and deleted after
    // retention, never truncated or rewritten in place; the bytes below the length the
    // caller took do not change while mapped.
    unsafe { memmap2::Mmap::map(file) }.map(Some).map_err(io_err(path))
}

/// The first `len` bytes of a mapped buffer (all of it when it is shorter).
fn prefix(map: &Option<memmap2::Mmap>, len: u64) -> &[u8] {
    let data: &[u8] = map.as_deref().unwrap_or(&[]);
    &data[..(len as usize).min(data.len())]
}

/// Records in the first `len` bytes of a buffer file.
fn count_records(path: &Path, len: u64) -> Result<u64, LoadError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path)(e)),
    };
    let map = map_buffer(&file, path, len)?;
    Ok(weir_proto::record::iter(prefix(&map, len)).count() as u64)
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
    /// Memory for the index of one hour (about 64 bytes an event); an hour with more
    /// events is indexed through spill files, so any hour loads in bounded memory.
    pub index_memory_bytes: usize,
}

struct Lock(#[allow(dead_code)] fs::File);

/// What a load of one hour builds on.
struct Plan {
    /// The generation of the hour's buffer (its new part files are `part-<g>`).
    generation: u32,
    /// Files of earlier generations, kept as they are.
    kept: Vec<commit::FileEntry>,
    /// Buffer bytes the manifest of this generation covers, when there is one.
    loaded_bytes: Option<u64>,
}

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
            let plan = self.plan(state.hour)?;
            if plan.loaded_bytes == Some(state.bytes) {
                continue;
            }
            reports.push(self.load_hour_locked(state.hour, plan)?);
        }
        Ok(reports)
    }

    /// Rebuilds every buffered hour from `from` to `to` (inclusive), replacing what was
    /// loaded from the buffer (files of generations already deleted from the buffer are
    /// kept). Hours in which nothing was received are skipped (each one reported as
    /// [`ReplayHour::Empty`]); an hour that was loaded but is no longer buffered (past
    /// `retention_days`) cannot be rebuilt, and the replay refuses the range before it
    /// touches anything, naming it. `progress` is called after each hour with (done,
    /// total).
    pub fn replay(
        &self,
        from: i64,
        to: i64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<ReplayHour>, LoadError> {
        let _lock = self.lock()?;
        commit::recover(&self.warehouse)?;
        let buffered: std::collections::HashMap<i64, u64> = list_hours(&self.buffer_dir)
            .map_err(io_err(&self.buffer_dir))?
            .into_iter()
            .map(|s| (s.hour, s.bytes))
            .collect();
        let loaded: HashSet<i64> = commit::loaded_hours(&self.warehouse)?.into_iter().collect();
        let gone: Vec<i64> = (from..=to)
            .filter(|h| {
                !buffered.contains_key(h) && (loaded.contains(h) || buffer::expired_path(&self.buffer_dir, *h).exists())
            })
            .collect();
        if let Some(&first) = gone.first() {
            return Err(LoadError::NotBuffered {
                hour: hour::display(first),
                more: gone.len() - 1,
            });
        }
        let total = (to - from + 1).max(0) as usize;
        let mut out = Vec::new();
        for (i, h) in (from..=to).enumerate() {
            if buffered.get(&h).copied().unwrap_or(0) == 0 {
                out.push(ReplayHour::Empty(h));
            } else {
                let plan = self.plan(h)?;
                out.push(ReplayHour::Rebuilt(self.load_hour_locked(h, plan)?));
            }
            progress(i + 1, total);
        }
        Ok(out)
    }

    /// Every hour the buffer or the warehouse knows, oldest first, with its state: what
    /// `weir loader hours` lists.
    pub fn hours(&self) -> Result<Vec<HourListing>, LoadError> {
        let mut by_hour: std::collections::BTreeMap<i64, HourListing> = std::collections::BTreeMap::new();
        for state in list_hours(&self.buffer_dir).map_err(io_err(&self.buffer_dir))? {
            let path = buffer_path(&self.buffer_dir, state.hour);
            by_hour.insert(
                state.hour,
                HourListing {
                    hour: state.hour,
                    state: if state.closed {
                        HourStatus::Closed
                    } else {
                        HourStatus::Open
                    },
                    buffer_bytes: Some(state.bytes),
                    buffered_events: Some(count_records(&path, state.bytes)?),
                    rows: None,
                    invalid_rows: None,
                },
            );
        }
        for h in commit::loaded_hours(&self.warehouse)? {
            let m = match commit::read_manifest(&self.warehouse, h) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(hour = %hour::display(h), error = %e, "unreadable manifest");
                    continue;
                }
            };
            let entry = by_hour.entry(h).or_insert(HourListing {
                hour: h,
                state: HourStatus::Expired,
                buffer_bytes: None,
                buffered_events: None,
                rows: None,
                invalid_rows: None,
            });
            entry.rows = Some(m.rows);
            entry.invalid_rows = Some(m.invalid_rows);
            if let Some(bytes) = entry.buffer_bytes {
                let generation = buffer::current_generation(&self.buffer_dir, h)
                    .map_err(io_err(&buffer::expired_path(&self.buffer_dir, h)))?;
                let current = m.generation == generation && m.source_bytes == bytes;
                // An open hour loaded with `--now` is loaded until more events come.
                entry.state = if current { HourStatus::Loaded } else { HourStatus::Stale };
            }
        }
        Ok(by_hour.into_values().collect())
    }

    /// What a load of hour `h` builds on: the generation of its buffer and the files of
    /// earlier generations it keeps.
    fn plan(&self, h: i64) -> Result<Plan, LoadError> {
        let tomb = buffer::expired_path(&self.buffer_dir, h);
        let buffered = buffer::current_generation(&self.buffer_dir, h).map_err(io_err(&tomb))?;
        match commit::read_manifest(&self.warehouse, h) {
            Ok(Some(m)) => {
                // A manifest ahead of the tombstone (one lost): never overwrite its files.
                let generation = buffered.max(m.generation);
                let loaded_bytes = (m.generation == generation).then_some(m.source_bytes);
                let kept = m.files.into_iter().filter(|f| f.generation() < generation).collect();
                Ok(Plan {
                    generation,
                    kept,
                    loaded_bytes,
                })
            }
            Ok(None) => Ok(Plan {
                generation: buffered,
                kept: Vec::new(),
                loaded_bytes: None,
            }),
            // A damaged manifest: rebuild the hour, which writes it anew; files of earlier
            // generations (no longer buffered) are described from their own bytes.
            Err(e) => {
                tracing::error!(hour = %hour::display(h), error = %e, "unreadable manifest; loading the hour again");
                let mut kept = Vec::new();
                for rel in commit::existing_files(&self.warehouse, h)? {
                    if commit::generation_of(&rel) < buffered {
                        kept.push(commit::entry_from_disk(&self.warehouse, &rel)?);
                    }
                }
                Ok(Plan {
                    generation: buffered,
                    kept,
                    loaded_bytes: None,
                })
            }
        }
    }

    fn load_hour_locked(&self, h: i64, plan: Plan) -> Result<HourReport, LoadError> {
        let path = buffer_path(&self.buffer_dir, h);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LoadError::NotBuffered {
                    hour: hour::display(h),
                    more: 0,
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let map = map_buffer(&file, &path, len)?;
        let data = prefix(&map, len);

        // Pass 1: the index (32 bytes an event, bounded: see `index`), deduplicated and
        // sorted; the events stay in the mapped file.
        let spill_dir = self
            .warehouse
            .join("_staging")
            .join(format!("{}.index", hour::compact(h)));
        let max_entries = (self.index_memory_bytes / INDEX_BYTES_PER_EVENT).max(1024);
        let index = index::build(data, &self.catalog, max_entries, &spill_dir)?;
        let mut unreadable = index.unreadable;

        let staging = self.warehouse.join("_staging").join(hour::compact(h));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let (date, hh) = hour::date_and_hour(h);
        let mut files = Vec::new();
        let mut rows = 0u64;
        let chunk = self.row_group_rows.max(1);
        let mut entries: Vec<index::Entry> = Vec::with_capacity(chunk);
        let mut views: Vec<EventView<'_>> = Vec::with_capacity(chunk);
        let mut kept: Vec<index::Entry> = Vec::with_capacity(chunk);
        // Events the catalog's columns refuse (the collector thought them valid).
        let mut refused: Vec<(index::Entry, String)> = Vec::new();
        for (g, &(name, version)) in index.groups.iter().enumerate() {
            let columns = self.catalog.columns(name, version);
            let schema = schema::event_schema(&columns);
            let rel = format!(
                "event={name}/version={version}/date={date}/hour={hh}/part-{}.parquet",
                plan.generation
            );
            let mut writer: Option<PartWriter> = None;
            let mut written = 0u64;
            let mut merge = index.class(g as u32)?;
            loop {
                merge.chunk(chunk, &mut entries)?;
                if entries.is_empty() {
                    break;
                }
                views.clear();
                kept.clear();
                for e in &entries {
                    match EventView::decode(index.bytes(e)) {
                        Ok(v) => {
                            views.push(v);
                            kept.push(*e);
                        }
                        Err(_) => unreadable += 1,
                    }
                }
                let (batch, bad) = columns::event_batch(&schema, &columns, &views);
                for b in bad {
                    refused.push((kept[b.index], format!("loader: {}", b.error)));
                }
                let Some(batch) = batch.filter(|b| b.num_rows() > 0) else {
                    continue;
                };
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

        // `_invalid/`: events kept invalid, versions the catalog lacks, and what the
        // columns refused, merged in row order.
        refused.sort_unstable_by_key(|(e, _)| e.row_key());
        let mut refused = refused.into_iter().peekable();
        let mut merge = index.class(index::UNKNOWN)?;
        let mut next_invalid = merge.next()?;
        let mut invalid_rows = 0u64;
        let mut invalid_writer: Option<PartWriter> = None;
        let rel = format!("_invalid/date={date}/hour={hh}/part-{}.parquet", plan.generation);
        let invalid_schema = schema::invalid_schema();
        let mut part: Vec<columns::InvalidRow<'_>> = Vec::with_capacity(chunk.min(4096));
        loop {
            let take_refused = match (&next_invalid, refused.peek()) {
                (None, None) => break,
                (Some(e), Some((r, _))) => r.row_key() < e.row_key(),
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let (e, extra) = if take_refused {
                let Some((e, why)) = refused.next() else { break };
                (e, vec![why])
            } else {
                let Some(e) = next_invalid else { break };
                next_invalid = merge.next()?;
                let extra = if e.group == index::UNKNOWN {
                    vec!["loader: this event version is not in the catalog".to_string()]
                } else {
                    Vec::new()
                };
                (e, extra)
            };
            match EventView::decode(index.bytes(&e)) {
                Ok(view) => part.push(columns::InvalidRow { view, extra }),
                Err(_) => unreadable += 1,
            }
            if part.len() >= chunk {
                invalid_rows += self.write_invalid(&staging, &rel, &invalid_schema, &mut invalid_writer, &mut part)?;
            }
        }
        invalid_rows += self.write_invalid(&staging, &rel, &invalid_schema, &mut invalid_writer, &mut part)?;
        if let Some(w) = invalid_writer {
            files.push(w.finish(None)?);
        }
        if unreadable > 0 || index.damaged_bytes > 0 {
            tracing::error!(
                hour = %hour::display(h),
                path = %path.display(),
                unreadable_records = unreadable,
                damaged_bytes = index.damaged_bytes,
                "the hour's buffer held damage; every intact event around it was loaded"
            );
            ::metrics::counter!(crate::metrics::DAMAGED_BYTES).increment(index.damaged_bytes);
            ::metrics::counter!(crate::metrics::UNREADABLE_RECORDS).increment(unreadable);
        }
        // Earlier generations' files stay; the hour's totals count them.
        for f in &plan.kept {
            if f.event.is_some() {
                rows += f.rows;
            } else {
                invalid_rows += f.rows;
            }
        }
        let mut all = plan.kept;
        all.extend(files);
        let files = all;
        let manifest = Manifest {
            hour: hour::display(h),
            loaded_at: event::format_micros(event::now_micros()),
            catalog_revision: self.catalog.revision.clone(),
            source_bytes: index.bytes,
            source_events: index.events,
            duplicates: index.duplicates,
            rows,
            invalid_rows,
            damaged_bytes: index.damaged_bytes,
            unreadable_records: unreadable,
            generation: plan.generation,
            files,
        };
        let spilled = index.spilled;
        drop(index);
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        commit::commit(&self.warehouse, h, &staging, manifest.clone())?;
        // Tell the router that this much of the hour is safe in the warehouse: only then
        // may retention delete it.
        if let Err(e) = buffer::write_loaded(&self.buffer_dir, h, manifest.source_bytes, manifest.generation) {
            tracing::warn!(dir = %self.buffer_dir.display(), error = %e, "cannot mark the hour loaded in the buffer directory; the router keeps it past retention_days");
        }
        tracing::info!(hour = %manifest.hour, rows, invalid_rows, duplicates = manifest.duplicates, files = manifest.files.len(), spilled, "hour loaded");
        Ok(HourReport {
            hour: h,
            manifest,
            spilled,
        })
    }

    /// Writes `part` (then empties it) to the `_invalid` file, opened on first use.
    fn write_invalid(
        &self,
        staging: &Path,
        rel: &str,
        schema: &SchemaRef,
        writer: &mut Option<PartWriter>,
        part: &mut Vec<columns::InvalidRow<'_>>,
    ) -> Result<u64, LoadError> {
        if part.is_empty() {
            return Ok(0);
        }
        let batch = columns::invalid_batch(schema, part).map_err(|e| LoadError::Parquet {
            path: staging.join(rel),
            message: e.to_string(),
        })?;
        part.clear();
        if writer.is_none() {
            *writer = Some(PartWriter::create(staging, rel, schema, self.row_group_rows)?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(&batch)?;
        }
        Ok(batch.num_rows() as u64)
    }
}

/// Bytes of memory one event's index costs at most (the 32-byte entry, the
/// deduplication map, headroom): `index_memory_bytes` / this = events indexed in memory.
pub const INDEX_BYTES_PER_EVENT: usize = 64;

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
            // Unique per row: a dictionary only costs (every id is interned, then the
            // writer falls back to plain). Times sorted within the file delta-encode.
            .set_column_dictionary_enabled(ColumnPath::from("id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("received_at"), false)
            .set_column_encoding(ColumnPath::from("received_at"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(ColumnPath::from("client_ts"), false)
            .set_column_encoding(ColumnPath::from("client_ts"), Encoding::DELTA_BINARY_PACKED)
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
