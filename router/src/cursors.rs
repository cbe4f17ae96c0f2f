//! Every consumer of the router log (the warehouse buffer and each recipient) keeps its
//! own cursor. This is the shared book of them: it saves each cursor, deletes log segments
//! that every consumer has passed, and says when a consumer's backlog is over its bound so
//! that intake can push back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_proto::runtime::wal::{self, Position, Wal, WalError};

use crate::metrics as m;

/// The cursor files that moved are saved together at most this often (and each when its
/// consumer stops), off the async threads: losing the newest ones in a crash only means
/// reading up to a second of the log again (events carry ids), while saving each
/// consumer's cursor on its own cost two fsyncs per consumer per save, and intake paid
/// for recipients that were routed nothing.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// One consumer's entry.
struct Entry {
    position: Position,
    max_backlog_bytes: u64,
    saved: Position,
}

/// The cursors of every consumer of one log.
pub struct LogCursors {
    wal: Wal,
    dir: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// When the moved cursors were last saved (one consumer saves them for all).
    saved_at: Mutex<Instant>,
    /// The slowest consumer's position when segments were last released: only a move of
    /// the slowest releases more (the others skip listing the log's directory).
    released: Mutex<Option<Position>>,
    full: AtomicBool,
    appended_events: AtomicU64,
}

/// Where a consumer's cursor file lives.
pub fn cursor_path(log_dir: &Path, consumer: &str) -> PathBuf {
    log_dir.join(format!("{consumer}.cursor"))
}

impl LogCursors {
    /// A book for `wal`.
    pub fn new(wal: Wal) -> Arc<LogCursors> {
        Arc::new(LogCursors {
            dir: wal.dir().to_path_buf(),
            wal,
            entries: Mutex::new(BTreeMap::new()),
            saved_at: Mutex::new(Instant::now()),
            released: Mutex::new(None),
            full: AtomicBool::new(false),
            appended_events: AtomicU64::new(0),
        })
    }

    /// Registers a consumer and returns where it starts: its saved cursor, else
    /// `default` (which is saved at once, so a crash before its first delivery does not
    /// move it). A damaged cursor starts at the oldest retained record (see
    /// [`Wal::resume`]). Register every consumer before intake opens: segments are
    /// released by what the registered ones have passed.
    pub fn register(&self, name: &str, default: Position, max_backlog_bytes: u64) -> Result<Position, WalError> {
        let path = cursor_path(&self.dir, name);
        let start = self.wal.resume(&path, default, m::CURSOR_RESETS)?;
        wal::save_cursor(&path, start)?;
        self.lock().insert(
            name.to_string(),
            Entry {
                position: start,
                max_backlog_bytes,
                saved: start,
            },
        );
        Ok(start)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep going.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves `name`'s cursor to `pos`, deletes the segments every consumer has passed,
    /// and saves the cursor files that moved (at most every second, for every consumer
    /// at once). Space is freed before the cursors are saved, so a full disk never keeps
    /// itself full; a crash in between only means reading again what the files had not
    /// recorded.
    pub async fn advance(self: &Arc<Self>, name: &str, pos: Position) -> Result<(), WalError> {
        let min = {
            let mut entries = self.lock();
            if let Some(e) = entries.get_mut(name) {
                e.position = pos;
            }
            entries.values().map(|e| e.position).min().unwrap_or(pos)
        };
        let moved = {
            let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
            let moved = *released != Some(min);
            *released = Some(min);
            moved
        };
        if moved {
            if let Err(e) = self.wal.release_before(min).await {
                // Tried again on the next move.
                *self.released.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(e);
            }
        }
        let due = {
            let mut at = self.saved_at.lock().unwrap_or_else(|p| p.into_inner());
            let due = at.elapsed() >= SAVE_EVERY;
            if due {
                *at = Instant::now();
            }
            due
        };
        if due {
            let book = self.clone();
            // An error joining means the blocking pool is shutting down: so is the
            // router, which saves every cursor as its consumers stop.
            if let Ok(saved) = tokio::task::spawn_blocking(move || book.save_moved()).await {
                saved?;
            }
        }
        self.refresh();
        Ok(())
    }

    /// Saves every cursor file that moved since its last save.
    fn save_moved(&self) -> Result<(), WalError> {
        let moved: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.position != e.saved)
            .map(|(n, _)| n.clone())
            .collect();
        moved.iter().try_for_each(|n| self.save(n))
    }

    /// Saves `name`'s cursor file now if it moved since the last save.
    pub fn save(&self, name: &str) -> Result<(), WalError> {
        let pos = match self.lock().get(name) {
            Some(e) if e.position != e.saved => e.position,
            _ => return Ok(()),
        };
        wal::save_cursor(&cursor_path(&self.dir, name), pos)?;
        if let Some(e) = self.lock().get_mut(name) {
            e.saved = pos;
        }
        Ok(())
    }

    /// Bytes of the log `name` has not passed yet.
    pub fn backlog_bytes(&self, name: &str) -> u64 {
        let end = self.wal.durable();
        self.lock().get(name).map_or(0, |e| self.distance(e.position, end))
    }

    fn distance(&self, from: Position, to: Position) -> u64 {
        // Cheap when both are in one segment (the usual case); otherwise a few stat calls.
        self.wal.distance(from, to)
    }

    /// Re-evaluates whether some consumer's backlog is over its bound; returns the first
    /// such consumer's name.
    pub fn refresh(&self) -> Option<String> {
        let end = self.wal.durable();
        let over = self
            .lock()
            .iter()
            .find(|(_, e)| self.distance(e.position, end) > e.max_backlog_bytes)
            .map(|(n, _)| n.clone());
        self.full.store(over.is_some(), Ordering::Relaxed);
        over
    }

    /// True while some consumer's backlog is over its bound (intake answers 503).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Counts events appended to the log by intake.
    pub fn add_appended(&self, events: u64) {
        self.appended_events.fetch_add(events, Ordering::Relaxed);
    }

    /// Events appended since this router started.
    pub fn appended(&self) -> u64 {
        self.appended_events.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::runtime::wal::WalOptions;

    #[tokio::test]
    async fn segments_go_only_when_every_consumer_passed_them() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalOptions {
            dir: tmp.path().into(),
            segment_bytes: 64,
            name: "t",
            metric_prefix: "weir_test_log",
            gather: false,
        })
        .unwrap();
        let cursors = LogCursors::new(wal.clone());
        let first = wal.first_position().unwrap();
        assert_eq!(cursors.register("a", first, 1 << 20).unwrap(), first);
        cursors.register("b", first, 100).unwrap();
        let mut end = first;
        for _ in 0..10 {
            let mut framed = Vec::new();
            weir_proto::record::encode_into(&mut framed, &[7u8; 40]);
            end = wal.append(framed).await.unwrap();
        }
        let segments = wal.segments();
        assert!(segments > 3);
        cursors.advance("a", end).await.unwrap();
        assert_eq!(wal.segments(), segments, "b still needs them");
        assert_eq!(cursors.refresh().as_deref(), Some("b"), "b is over its 100-byte bound");
        assert!(cursors.is_full());
        cursors.advance("b", end).await.unwrap();
        cursors.save("b").unwrap();
        assert!(wal.segments() < segments);
        assert!(!cursors.is_full());
        assert_eq!(cursors.backlog_bytes("b"), 0);
        // A registered consumer resumes from its saved cursor (or, when the segment it
        // ended in is gone, from the start of the next: the same place in the log).
        let again = LogCursors::new(wal.clone());
        let resumed = again.register("b", first, 100).unwrap();
        assert!(resumed >= end, "{resumed:?} is before {end:?}");
        assert_eq!(again.backlog_bytes("b"), 0);
    }
}
