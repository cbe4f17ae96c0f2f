//! The warehouse buffer in files: one more [`Sink`] of the recipient runner, taking every
//! event of the router log (valid or not) and appending it to the file of its
//! `received_at` hour (UTC); it closes hours after the grace period and deletes them once
//! they are past `retention_days` *and* the loader has committed them whole.
//!
//! Every append is all or nothing: the files it touched are fsynced before the runner's
//! cursor moves, and a failed append (a full disk) is truncated back, so an hour file
//! never holds a torn record followed by good ones. A torn tail left by a crash is cut
//! the first time an hour file is opened for appending.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use weir_proto::hour::{self, HOUR_MICROS};
use weir_proto::record;
use weir_proto::runtime::buffer::{buffer_path, closed_path, expired_path, list_hours, read_loaded, HourState};
use weir_proto::runtime::wal::{cut_torn_tail, write_atomic};

use crate::metrics as m;
use crate::recipients::{retry_all, Every, Outcome, Sink};
use weir_proto::event::batch;

/// The warehouse buffer's name among the log's consumers (its cursor file).
pub const NAME: &str = "warehouse";

/// An hour file open for appending, and its length after the last good append.
struct OpenHour {
    file: File,
    len: u64,
}

/// Hourly buffer files in one directory.
pub struct FileBuffer {
    dir: PathBuf,
    grace: Duration,
    retention_days: u32,
    open: HashMap<i64, OpenHour>,
}

impl FileBuffer {
    /// Opens the buffer directory, creating it when missing.
    pub fn open(dir: &Path, grace: Duration, retention_days: u32) -> io::Result<FileBuffer> {
        fs::create_dir_all(dir)?;
        // An expiry a crash interrupted is completed before anything is appended: late
        // events must start a new generation, not look like more of the loaded one.
        for h in weir_proto::runtime::buffer::finish_expiry(dir)? {
            tracing::info!(hour = %hour::display(h), "finished deleting an expired hour");
        }
        Ok(FileBuffer {
            dir: dir.to_path_buf(),
            grace,
            retention_days,
            open: HashMap::new(),
        })
    }

    /// Appends each hour's framed records and fsyncs every file it touched, all or
    /// nothing: on an error every touched file is cut back to where it was. Returns how
    /// many records went to hours already closed (late).
    pub fn append(&mut self, by_hour: &BTreeMap<i64, (Vec<u8>, u64)>) -> io::Result<u64> {
        let mut late = 0;
        let mut touched: Vec<i64> = Vec::with_capacity(by_hour.len());
        let result = (|| {
            for (&h, (data, count)) in by_hour {
                if !self.open.contains_key(&h) {
                    if closed_path(&self.dir, h).exists() {
                        late += count;
                        tracing::info!(hour = %hour::display(h), events = count, "late events for a closed hour; it will be reloaded");
                    } else if expired_path(&self.dir, h).exists() && !buffer_path(&self.dir, h).exists() {
                        late += count;
                        tracing::warn!(hour = %hour::display(h), events = count, "late events for an hour already loaded and deleted after retention_days; the loader adds them to the hour as new part files");
                    }
                    let path = buffer_path(&self.dir, h);
                    let file = OpenOptions::new().create(true).append(true).open(&path)?;
                    // A crash or a failed write may have left a torn record at the end.
                    let len = cut_torn_tail(&path, "hourly buffer")?;
                    self.open.insert(h, OpenHour { file, len });
                }
                touched.push(h);
                if let Some(o) = self.open.get_mut(&h) {
                    o.file.write_all(data)?;
                }
            }
            for h in &touched {
                if let Some(o) = self.open.get(h) {
                    o.file.sync_data()?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (h, (data, _)) in by_hour {
                    if let Some(o) = self.open.get_mut(h) {
                        o.len += data.len() as u64;
                    }
                }
                Ok(late)
            }
            Err(e) => {
                for h in &touched {
                    if let Some(o) = self.open.remove(h) {
                        if let Err(cut) = o.file.set_len(o.len) {
                            tracing::error!(hour = %hour::display(*h), error = %cut, "cannot cut a failed append back; it is cut when the hour is opened again");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Closes every hour whose end plus grace is before `now` (µs): marks it closed and
    /// lets go of its file. Returns the hours closed.
    pub fn close_due(&mut self, now: i64) -> io::Result<Vec<i64>> {
        let grace = self.grace.as_micros() as i64;
        let mut closed = Vec::new();
        for state in list_hours(&self.dir)? {
            let due = (state.hour + 1) * HOUR_MICROS + grace <= now;
            if due && !state.closed {
                if let Some(o) = self.open.remove(&state.hour) {
                    o.file.sync_all()?;
                }
                let marker = format!("{{\"closed_at\":\"{}\"}}\n", weir_proto::event::format_micros(now));
                write_atomic(&closed_path(&self.dir, state.hour), marker.as_bytes())?;
                closed.push(state.hour);
            } else if due {
                // A late append reopened it: let go of the handle again.
                self.open.remove(&state.hour);
            }
        }
        Ok(closed)
    }

    /// Deletes closed hours older than `retention_days` that the loader has committed
    /// whole (its `.loaded` marker covers every byte of the buffer). Returns the hours
    /// deleted and the expired hours kept because they were never fully loaded.
    pub fn expire(&mut self, now: i64) -> io::Result<(Vec<i64>, Vec<HourState>)> {
        let keep_from = hour::of_micros(now) - i64::from(self.retention_days.max(1)) * 24;
        let mut gone = Vec::new();
        let mut kept = Vec::new();
        for state in list_hours(&self.dir)? {
            if !(state.closed && state.hour < keep_from) {
                continue;
            }
            let loaded = read_loaded(&self.dir, state.hour).map(|l| l.source_bytes);
            if loaded != Some(state.bytes) {
                kept.push(state);
                continue;
            }
            self.open.remove(&state.hour);
            weir_proto::runtime::buffer::expire_hour(&self.dir, state.hour)?;
            gone.push(state.hour);
        }
        Ok((gone, kept))
    }

    /// Flushes and lets go of every open file.
    pub fn sync_all(&mut self) -> io::Result<()> {
        for (_, o) in self.open.drain() {
            o.file.sync_all()?;
        }
        Ok(())
    }

    /// Closes due hours and expires old ones, logging what it did.
    fn housekeeping(&mut self, warned: &mut HashMap<i64, u64>) {
        let now = weir_proto::event::now_micros();
        match self.close_due(now) {
            Ok(closed) => {
                for h in &closed {
                    tracing::info!(hour = %hour::display(*h), "hour closed");
                }
                metrics::counter!(m::HOURS_CLOSED).increment(closed.len() as u64);
            }
            Err(e) => tracing::error!(dir = %self.dir.display(), error = %e, "cannot close hours"),
        }
        match self.expire(now) {
            Ok((gone, kept)) => {
                for h in &gone {
                    tracing::info!(hour = %hour::display(*h), "buffer past retention deleted (the loader committed all of it)");
                }
                metrics::counter!(m::HOURS_EXPIRED).increment(gone.len() as u64);
                metrics::gauge!(m::HOURS_KEPT_UNLOADED).set(kept.len() as f64);
                for s in kept {
                    // Once per hour and size, not every round.
                    if warned.insert(s.hour, s.bytes) != Some(s.bytes) {
                        tracing::warn!(
                            hour = %hour::display(s.hour),
                            bytes = s.bytes,
                            "hour is past retention_days but the loader has not committed all of it; keeping it (run `weir loader run`)"
                        );
                    }
                }
            }
            Err(e) => tracing::error!(dir = %self.dir.display(), error = %e, "cannot delete expired hours"),
        }
    }
}

/// Frames `events` per `received_at` hour; events whose time cannot be read are refused
/// (their outcome is set). Returns the framed records per hour.
fn by_hour(events: &[Bytes], out: &mut [Outcome]) -> BTreeMap<i64, (Vec<u8>, u64)> {
    let mut hours: BTreeMap<i64, (Vec<u8>, u64)> = BTreeMap::new();
    for (i, ev) in events.iter().enumerate() {
        match batch::received_at(ev) {
            Ok(at) => {
                let slot = hours.entry(hour::of_micros(at)).or_default();
                record::encode_into(&mut slot.0, ev);
                slot.1 += 1;
            }
            Err(e) => out[i] = Outcome::Refuse(format!("unreadable event in the router log: {e}")),
        }
    }
    hours
}

/// The file buffer as a sink of the recipient runner: its blocking file I/O runs on
/// the blocking pool.
pub struct FileBufferSink {
    buffer: Arc<Mutex<FileBuffer>>,
    housekeeping_due: Every,
    warned: Arc<Mutex<HashMap<i64, u64>>>,
}

impl FileBufferSink {
    /// A sink appending to `buffer`.
    pub fn new(buffer: FileBuffer) -> FileBufferSink {
        FileBufferSink {
            buffer: Arc::new(Mutex::new(buffer)),
            housekeeping_due: Every::new(Duration::from_secs(5)),
            warned: Arc::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink for FileBufferSink {
    async fn deliver(&mut self, events: &[Bytes]) -> Vec<Outcome> {
        let buffer = self.buffer.clone();
        let events = events.to_vec();
        let n = events.len();
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = vec![Outcome::Delivered; events.len()];
            let grouped = by_hour(&events, &mut out);
            let buffered: u64 = grouped.values().map(|g| g.1).sum();
            match lock(&buffer).append(&grouped) {
                Ok(late) => {
                    metrics::counter!(m::BUFFERED).increment(buffered);
                    metrics::counter!(m::LATE).increment(late);
                    out
                }
                Err(e) => {
                    let why = format!("cannot write the hourly buffer: {e}");
                    out.into_iter()
                        .map(|o| match o {
                            Outcome::Delivered => Outcome::Retry(why.clone()),
                            other => other,
                        })
                        .collect()
                }
            }
        })
        .await;
        joined.unwrap_or_else(|e| retry_all(n, &format!("the hourly buffer writer stopped: {e}")))
    }

    async fn tick(&mut self) {
        if !self.housekeeping_due.due() {
            return;
        }
        let (buffer, warned) = (self.buffer.clone(), self.warned.clone());
        let _ = tokio::task::spawn_blocking(move || lock(&buffer).housekeeping(&mut lock(&warned))).await;
    }

    async fn finish(&mut self) {
        let buffer = self.buffer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = lock(&buffer).sync_all() {
                tracing::error!(error = %e, "cannot flush the hourly buffer");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::runtime::buffer::write_loaded;

    fn one(framed: &[u8]) -> BTreeMap<i64, (Vec<u8>, u64)> {
        let h = hour::parse("2026-11-22T13").unwrap();
        BTreeMap::from([(h, (framed.to_vec(), 1))])
    }

    #[test]
    fn closes_after_grace_marks_late_and_expires_only_what_was_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut buf = FileBuffer::open(tmp.path(), Duration::from_secs(300), 3).unwrap();
        let h = hour::parse("2026-11-22T13").unwrap();
        let mut framed = Vec::new();
        record::encode_into(&mut framed, b"e1");
        assert_eq!(buf.append(&one(&framed)).unwrap(), 0);
        let end = (h + 1) * HOUR_MICROS;
        assert!(buf.close_due(end + 299_000_000).unwrap().is_empty(), "still in grace");
        assert_eq!(buf.close_due(end + 300_000_000).unwrap(), vec![h]);
        assert!(list_hours(tmp.path()).unwrap()[0].closed);
        assert_eq!(buf.append(&one(&framed)).unwrap(), 1, "late event counted");
        let bytes = 2 * framed.len() as u64;
        assert_eq!(list_hours(tmp.path()).unwrap()[0].bytes, bytes);
        assert!(buf.expire(end + 2 * 24 * HOUR_MICROS).unwrap().0.is_empty());
        let later = end + 4 * 24 * HOUR_MICROS;
        let (gone, kept) = buf.expire(later).unwrap();
        assert!(gone.is_empty(), "never loaded: kept");
        assert_eq!(kept[0].hour, h);
        write_loaded(tmp.path(), h, bytes - 1, 0).unwrap();
        assert!(
            buf.expire(later).unwrap().0.is_empty(),
            "loaded before the late event: kept"
        );
        write_loaded(tmp.path(), h, bytes, 0).unwrap();
        assert_eq!(buf.expire(later).unwrap().0, vec![h]);
        assert!(list_hours(tmp.path()).unwrap().is_empty());
        // The tombstone names the generation that went; later events start the next.
        assert_eq!(
            weir_proto::runtime::buffer::current_generation(tmp.path(), h).unwrap(),
            1
        );
        assert_eq!(buf.append(&one(&framed)).unwrap(), 1, "a late event for a deleted hour");
        assert_eq!(list_hours(tmp.path()).unwrap()[0].bytes, framed.len() as u64);
        buf.close_due(later).unwrap();
        write_loaded(tmp.path(), h, framed.len() as u64, 1).unwrap();
        assert_eq!(buf.expire(later).unwrap().0, vec![h]);
        assert_eq!(
            weir_proto::runtime::buffer::current_generation(tmp.path(), h).unwrap(),
            2
        );
    }

    #[test]
    fn an_expiry_cut_short_by_a_crash_is_finished_before_the_next_append() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hour::parse("2026-11-22T13").unwrap();
        // The buffer was deleted, the crash came before `.loaded` became `.expired`.
        write_loaded(tmp.path(), h, 100, 0).unwrap();
        let mut buf = FileBuffer::open(tmp.path(), Duration::from_secs(300), 3).unwrap();
        assert!(weir_proto::runtime::buffer::read_loaded(tmp.path(), h).is_none());
        assert_eq!(
            weir_proto::runtime::buffer::current_generation(tmp.path(), h).unwrap(),
            1
        );
        let mut framed = Vec::new();
        record::encode_into(&mut framed, b"late");
        assert_eq!(buf.append(&one(&framed)).unwrap(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_next_append_and_a_failed_append_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hour::parse("2026-11-22T13").unwrap();
        let mut framed = Vec::new();
        record::encode_into(&mut framed, b"event-1");
        {
            let mut buf = FileBuffer::open(tmp.path(), Duration::from_secs(300), 3).unwrap();
            buf.append(&one(&framed)).unwrap();
        }
        // What kill -9 mid-write_all leaves.
        let path = buffer_path(tmp.path(), h);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&framed[..5]).unwrap();
        drop(f);
        let mut buf = FileBuffer::open(tmp.path(), Duration::from_secs(300), 3).unwrap();
        buf.append(&one(&framed)).unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(record::iter(&data).count(), 2);
        assert_eq!(data.len(), 2 * framed.len(), "the torn bytes are gone");
    }
}
