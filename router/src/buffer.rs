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
use crate::recipients::{retry_all, Events, Every, Outcome, Sink};
use weir_proto::event::batch;

/// The warehouse buffer's name among the log's consumers (its cursor file).
pub const NAME: &str = "warehouse";

/// An hour file open for appending, and its length after the last good append.
struct OpenHour {
    file: File,
    len: u64,
    /// The hour was closed (or loaded and deleted) when it was opened: what is appended
    /// now is late.
    late: bool,
}

/// One append in progress: the bytes it wrote to each hour (so they can be made
/// durable, or cut back, together) and its late records.
#[derive(Default)]
struct Append {
    touched: Vec<(i64, u64)>,
    late: u64,
}

/// Events framed and written at a time by [`FileBuffer::append_events`] (about 256 KiB
/// of demo events).
const WRITE_EVENTS: usize = 1024;

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
        let mut tx = Append::default();
        let result = by_hour
            .iter()
            .try_for_each(|(&h, (data, count))| self.write_hour(h, data, *count, &mut tx));
        self.finish(tx, result)
    }

    /// Appends `events` (encoded, each to the hour of its `received_at`) as
    /// [`FileBuffer::append`] does, all or nothing, framing and writing them a slice at a
    /// time so what is written is still in the CPU's cache (framing a whole run first
    /// meant growing a buffer of many MiB, then copying it cold). An event whose time
    /// cannot be read gets a `Refuse` outcome in `out`. Returns (events buffered, late).
    pub fn append_events(&mut self, events: &[Bytes], out: &mut [Outcome]) -> io::Result<(u64, u64)> {
        let mut tx = Append::default();
        let mut grouped: BTreeMap<i64, (Vec<u8>, u64)> = BTreeMap::new();
        let mut buffered = 0;
        let mut result = Ok(());
        for (i, chunk) in events.chunks(WRITE_EVENTS).enumerate() {
            let outcomes = &mut out[i * WRITE_EVENTS..];
            by_hour_into(chunk, outcomes, &mut grouped);
            result = grouped.iter().try_for_each(|(&h, (data, count))| {
                buffered += count;
                self.write_hour(h, data, *count, &mut tx)
            });
            if result.is_err() {
                break;
            }
        }
        self.finish(tx, result).map(|late| (buffered, late))
    }

    /// Writes one hour's framed records as part of `tx` (opening the hour's file first).
    fn write_hour(&mut self, h: i64, data: &[u8], count: u64, tx: &mut Append) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.open.contains_key(&h) {
            let mut late = false;
            if closed_path(&self.dir, h).exists() {
                late = true;
                tracing::info!(hour = %hour::display(h), "late events for a closed hour; it will be reloaded");
            } else if expired_path(&self.dir, h).exists() && !buffer_path(&self.dir, h).exists() {
                late = true;
                tracing::warn!(hour = %hour::display(h), "late events for an hour already loaded and deleted after retention_days; the loader adds them to the hour as new part files");
            }
            let path = buffer_path(&self.dir, h);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // A crash or a failed write may have left a torn record at the end.
            let len = cut_torn_tail(&path, "hourly buffer")?;
            self.open.insert(h, OpenHour { file, len, late });
        }
        let i = match tx.touched.iter().position(|t| t.0 == h) {
            Some(i) => i,
            None => {
                tx.touched.push((h, 0));
                tx.touched.len() - 1
            }
        };
        if let Some(o) = self.open.get_mut(&h) {
            o.file.write_all(data)?;
            tx.touched[i].1 += data.len() as u64;
            if o.late {
                tx.late += count;
            }
        }
        Ok(())
    }

    /// Ends `tx`: fsyncs every file it touched, or cuts each back when `result` (or a
    /// sync) failed. Returns the late records.
    fn finish(&mut self, tx: Append, result: io::Result<()>) -> io::Result<u64> {
        let result = result.and_then(|()| {
            tx.touched.iter().try_for_each(|(h, _)| match self.open.get(h) {
                Some(o) => o.file.sync_data(),
                None => Ok(()),
            })
        });
        match result {
            Ok(()) => {
                for (h, n) in &tx.touched {
                    if let Some(o) = self.open.get_mut(h) {
                        o.len += n;
                    }
                }
                Ok(tx.late)
            }
            Err(e) => {
                for (h, _) in &tx.touched {
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

/// Frames `events` per `received_at` hour into `hours` (emptied first, its buffers
/// reused); events whose time cannot be read are refused (their outcome is set).
fn by_hour_into(events: &[Bytes], out: &mut [Outcome], hours: &mut BTreeMap<i64, (Vec<u8>, u64)>) {
    for (data, count) in hours.values_mut() {
        data.clear();
        *count = 0;
    }
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
    async fn deliver(&mut self, events: &Events) -> Vec<Outcome> {
        let buffer = self.buffer.clone();
        let events = events.clone();
        let n = events.len();
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = vec![Outcome::Delivered; events.len()];
            match lock(&buffer).append_events(&events, &mut out) {
                Ok((buffered, late)) => {
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
    fn events_are_framed_into_their_hours_a_slice_at_a_time_in_order() {
        use prost::Message;
        let tmp = tempfile::tempdir().unwrap();
        let mut buf = FileBuffer::open(tmp.path(), Duration::from_secs(300), 3).unwrap();
        let (h1, h2) = (
            hour::parse("2026-11-22T13").unwrap(),
            hour::parse("2026-11-22T14").unwrap(),
        );
        // One hour is closed already: what goes there is late.
        write_atomic(&closed_path(tmp.path(), h1), b"{}").unwrap();
        let n = 2 * WRITE_EVENTS + 7;
        let events: Vec<Bytes> = (0..n)
            .map(|i| {
                let at = if i % 3 == 0 { h1 } else { h2 } * HOUR_MICROS + i as i64;
                let e = weir_proto::pb::Event {
                    id: format!("e{i}"),
                    received_at: at,
                    ..Default::default()
                };
                Bytes::from(e.encode_to_vec())
            })
            .chain([Bytes::from_static(b"\x28\xff")])
            .collect();
        let mut out = vec![Outcome::Delivered; events.len()];
        let (buffered, late) = buf.append_events(&events, &mut out).unwrap();
        assert_eq!(buffered, n as u64);
        assert_eq!(late, n.div_ceil(3) as u64, "every event of the closed hour");
        assert!(matches!(out[n], Outcome::Refuse(_)), "no readable time: refused");
        assert!(out[..n].iter().all(|o| matches!(o, Outcome::Delivered)));
        for h in [h1, h2] {
            let data = fs::read(buffer_path(tmp.path(), h)).unwrap();
            let ids: Vec<String> = record::iter(&data)
                .map(|r| weir_proto::pb::Event::decode(r).unwrap().id)
                .collect();
            let want: Vec<String> = (0..n)
                .filter(|i| (i % 3 == 0) == (h == h1))
                .map(|i| format!("e{i}"))
                .collect();
            assert_eq!(ids, want, "hour {h}: every event once, in order");
        }
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
