//! The warehouse buffer: follows the durable log with its own cursor and appends every
//! event to the file of its `received_at` hour (UTC); closes hours after the grace
//! period and deletes them after `retention_days`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use weir_proto::buffer::{buffer_path, closed_path, list_hours};
use weir_proto::hour::{self, HOUR_MICROS};
use weir_proto::record;
use weir_proto::wal::{self, Wal, WalError, WalReader};

use crate::batch;
use crate::cursors::{cursor_path, LogCursors};
use crate::metrics as m;

/// The warehouse buffer's name among the log's consumers (its cursor file).
pub const NAME: &str = "warehouse";

/// Hourly buffer files in one directory.
pub struct FileBuffer {
    dir: PathBuf,
    grace: Duration,
    retention_days: u32,
    open: HashMap<i64, File>,
}

impl FileBuffer {
    /// Opens the buffer directory, creating it when missing.
    pub fn open(dir: &Path, grace: Duration, retention_days: u32) -> io::Result<FileBuffer> {
        fs::create_dir_all(dir)?;
        Ok(FileBuffer {
            dir: dir.to_path_buf(),
            grace,
            retention_days,
            open: HashMap::new(),
        })
    }

    /// Appends each hour's framed records and fsyncs every file it touched. Returns how
    /// many records went to hours already closed (late).
    pub fn append(&mut self, by_hour: &BTreeMap<i64, (Vec<u8>, u64)>) -> io::Result<u64> {
        let mut late = 0;
        for (&h, (data, count)) in by_hour {
            if !self.open.contains_key(&h) {
                if closed_path(&self.dir, h).exists() {
                    late += count;
                    tracing::info!(hour = %hour::display(h), events = count, "late events for a closed hour; it will be reloaded");
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(buffer_path(&self.dir, h))?;
                self.open.insert(h, f);
            }
            if let Some(f) = self.open.get_mut(&h) {
                f.write_all(data)?;
            }
        }
        for h in by_hour.keys() {
            if let Some(f) = self.open.get(h) {
                f.sync_data()?;
            }
        }
        Ok(late)
    }

    /// Closes every hour whose end plus grace is before `now` (µs): marks it closed and
    /// lets go of its file. Returns the hours closed.
    pub fn close_due(&mut self, now: i64) -> io::Result<Vec<i64>> {
        let grace = self.grace.as_micros() as i64;
        let mut closed = Vec::new();
        for state in list_hours(&self.dir)? {
            let due = (state.hour + 1) * HOUR_MICROS + grace <= now;
            if due && !state.closed {
                if let Some(f) = self.open.remove(&state.hour) {
                    f.sync_all()?;
                }
                let marker = closed_path(&self.dir, state.hour);
                fs::write(
                    &marker,
                    format!("{{\"closed_at\":\"{}\"}}\n", weir_proto::event::format_micros(now)),
                )?;
                closed.push(state.hour);
            } else if due {
                // A late append reopened it: let go of the handle again.
                self.open.remove(&state.hour);
            }
        }
        if !closed.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(closed)
    }

    /// Deletes closed hours older than `retention_days`. Returns the hours deleted.
    pub fn expire(&mut self, now: i64) -> io::Result<Vec<i64>> {
        let keep_from = hour::of_micros(now) - i64::from(self.retention_days) * 24;
        let mut gone = Vec::new();
        for state in list_hours(&self.dir)? {
            if state.closed && state.hour < keep_from {
                self.open.remove(&state.hour);
                fs::remove_file(buffer_path(&self.dir, state.hour))?;
                fs::remove_file(closed_path(&self.dir, state.hour))?;
                gone.push(state.hour);
            }
        }
        Ok(gone)
    }

    /// Flushes and lets go of every open file.
    pub fn sync_all(&mut self) -> io::Result<()> {
        for (_, f) in self.open.drain() {
            f.sync_all()?;
        }
        Ok(())
    }
}

/// Splits log records (encoded `EventBatch`es) into framed events per hour.
pub fn by_hour(batches: &[Bytes]) -> (BTreeMap<i64, (Vec<u8>, u64)>, u64) {
    let mut out: BTreeMap<i64, (Vec<u8>, u64)> = BTreeMap::new();
    let mut events = 0u64;
    for b in batches {
        let evs = match batch::events(b) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!(m::POISON).increment(1);
                tracing::error!(error = %e, "unreadable batch in the log; skipped");
                continue;
            }
        };
        for ev in evs {
            let at = match batch::received_at(&ev) {
                Ok(at) => at,
                Err(e) => {
                    metrics::counter!(m::POISON).increment(1);
                    tracing::error!(error = %e, "unreadable event in the log; skipped");
                    continue;
                }
            };
            let slot = out.entry(hour::of_micros(at)).or_default();
            record::encode_into(&mut slot.0, &ev);
            slot.1 += 1;
            events += 1;
        }
    }
    (out, events)
}

struct Consumer {
    reader: WalReader,
    buffer: FileBuffer,
}

impl Consumer {
    /// Moves one chunk of the log into the buffer. Returns the number of log records.
    fn step(&mut self) -> Result<usize, String> {
        let records = self.reader.read(256, 32 << 20).map_err(|e| e.to_string())?;
        if records.is_empty() {
            return Ok(0);
        }
        let (grouped, events) = by_hour(&records);
        let late = self
            .buffer
            .append(&grouped)
            .map_err(|e| format!("cannot write the hourly buffer: {e}"))?;
        metrics::counter!(m::BUFFERED).increment(events);
        metrics::counter!(m::LATE).increment(late);
        Ok(records.len())
    }

    fn housekeeping(&mut self) {
        let now = weir_proto::event::now_micros();
        match self.buffer.close_due(now) {
            Ok(closed) => {
                for h in &closed {
                    tracing::info!(hour = %hour::display(*h), "hour closed");
                }
                metrics::counter!(m::HOURS_CLOSED).increment(closed.len() as u64);
            }
            Err(e) => tracing::error!(error = %e, "cannot close hours"),
        }
        match self.buffer.expire(now) {
            Ok(gone) => {
                for h in &gone {
                    tracing::info!(hour = %hour::display(*h), "buffer past retention deleted");
                }
                metrics::counter!(m::HOURS_EXPIRED).increment(gone.len() as u64);
            }
            Err(e) => tracing::error!(error = %e, "cannot delete expired hours"),
        }
    }
}

/// Follows the log into the buffer until `stop` turns true and the log is drained.
pub async fn run(
    wal: Wal,
    buffer: FileBuffer,
    cursors: Arc<LogCursors>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WalError> {
    let cursor = cursor_path(wal.dir(), NAME);
    let start = cursors.register(NAME, wal.first_position()?, u64::MAX)?;
    let mut consumer = Some(Consumer {
        reader: wal.reader(start),
        buffer,
    });
    let mut durable = wal.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_housekeeping = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let stopping = *stop.borrow();
        let Some(mut c) = consumer.take() else { return Ok(()) };
        let (res, c) = match tokio::task::spawn_blocking(move || (c.step(), c)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "buffer writer stopped");
                return Ok(());
            }
        };
        let pos = c.reader.position();
        consumer = Some(c);
        match res {
            Ok(0) => {
                if stopping {
                    if let Some(c) = consumer.as_mut() {
                        if let Err(e) = c.buffer.sync_all() {
                            tracing::error!(error = %e, "cannot flush the hourly buffer");
                        }
                    }
                    return Ok(());
                }
                tokio::select! {
                    _ = durable.changed() => {}
                    _ = tick.tick() => {
                        last_housekeeping = std::time::Instant::now();
                        if let Some(mut c) = consumer.take() {
                            consumer = tokio::task::spawn_blocking(move || { c.housekeeping(); c }).await.ok();
                        }
                    }
                    _ = stop.changed() => {}
                }
            }
            Ok(_) => {
                backoff = Duration::from_millis(100);
                // Hours also close under a load that never lets the loop idle.
                if last_housekeeping.elapsed() >= Duration::from_secs(5) {
                    last_housekeeping = std::time::Instant::now();
                    if let Some(mut c) = consumer.take() {
                        consumer = tokio::task::spawn_blocking(move || {
                            c.housekeeping();
                            c
                        })
                        .await
                        .ok();
                    }
                }
                if let Err(e) = cursors.advance(NAME, pos) {
                    tracing::error!(error = %e, "cannot save the buffer cursor or delete consumed log segments");
                }
                metrics::gauge!(m::LOG_BYTES).set(wal.bytes() as f64);
            }
            Err(e) => {
                // Disk trouble: the log keeps everything; retry from the saved position.
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "hourly buffer write failed; retrying");
                if let Some(c) = consumer.as_mut() {
                    if let Ok(Some(saved)) = wal::load_cursor(&cursor) {
                        c.reader.seek(saved);
                    } else if let Ok(first) = wal.first_position() {
                        c.reader.seek(first);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_after_grace_marks_late_and_expires() {
        let tmp = tempfile::tempdir().unwrap();
        let mut buf = FileBuffer::open(tmp.path(), Duration::from_secs(300), 3).unwrap();
        let h = hour::parse("2026-11-22T13").unwrap();
        let mut data = BTreeMap::new();
        let mut framed = Vec::new();
        record::encode_into(&mut framed, b"e1");
        data.insert(h, (framed.clone(), 1));
        assert_eq!(buf.append(&data).unwrap(), 0);
        let end = (h + 1) * HOUR_MICROS;
        assert!(buf.close_due(end + 299_000_000).unwrap().is_empty(), "still in grace");
        assert_eq!(buf.close_due(end + 300_000_000).unwrap(), vec![h]);
        assert!(list_hours(tmp.path()).unwrap()[0].closed);
        assert_eq!(buf.append(&data).unwrap(), 1, "late event counted");
        assert_eq!(list_hours(tmp.path()).unwrap()[0].bytes, 2 * framed.len() as u64);
        assert!(buf.expire(end + 2 * 24 * HOUR_MICROS).unwrap().is_empty());
        assert_eq!(buf.expire(end + 4 * 24 * HOUR_MICROS).unwrap(), vec![h]);
        assert!(list_hours(tmp.path()).unwrap().is_empty());
    }
}
