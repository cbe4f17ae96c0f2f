//! The collector's durable spool: events are acknowledged only once they are here
//! (fsynced, group commit), and leave only once a router has acknowledged them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_proto::runtime::wal::{self, Position, Wal, WalError, WalOptions};

use crate::metrics as m;

/// The forwarder's cursor is saved at most this often (and when it stops): losing the
/// newest one only means sending a few batches again, which the event id deduplicates.
const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(100);

/// The forwarder's progress: the last acknowledged position, and when it was saved.
struct Progress {
    acked: Position,
    saved: Option<Instant>,
    dirty: bool,
}

/// The spool: a [`Wal`] with a size bound, an identity and the forwarder's cursor.
#[derive(Clone)]
pub struct Spool {
    wal: Wal,
    max_bytes: u64,
    id: Arc<str>,
    cursor: Arc<Path>,
    /// Bytes of the oldest kept segment that were already forwarded (the cursor's
    /// offset): still on disk until the segment rolls, but no longer pending.
    forwarded_in_kept: Arc<AtomicU64>,
    progress: Arc<Mutex<Progress>>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. A damaged forwarder cursor resends the
    /// spool from its oldest segment (see [`Wal::resume`]).
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> Result<Spool, WalError> {
        let wal = Wal::open(WalOptions {
            dir: dir.to_path_buf(),
            segment_bytes,
            name: "spool",
            metric_prefix: "weir_collector_spool",
            gather: true,
        })?;
        let id_path = dir.join("spool.id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = uuid::Uuid::now_v7().simple().to_string();
                wal::write_atomic(&id_path, id.as_bytes()).map_err(|error| WalError::Io {
                    what: "cannot write",
                    path: id_path.clone(),
                    error,
                })?;
                id
            }
        };
        let cursor = dir.join("forwarder.cursor");
        let start = wal.resume(&cursor, wal.first_position()?, m::CURSOR_RESETS)?;
        wal.delete_passed(start)?;
        let kept = kept_offset(&wal, start)?;
        Ok(Spool {
            wal,
            max_bytes,
            id: id.into(),
            cursor: cursor.into(),
            forwarded_in_kept: Arc::new(AtomicU64::new(kept)),
            progress: Arc::new(Mutex::new(Progress {
                acked: start,
                saved: None,
                dirty: false,
            })),
        })
    }

    /// Bytes accepted but not yet acknowledged by a router.
    pub fn pending_bytes(&self) -> u64 {
        self.wal
            .bytes()
            .saturating_sub(self.forwarded_in_kept.load(Ordering::Relaxed))
    }

    /// Whether `n` more bytes fit under `spool_max_bytes`.
    pub fn has_room(&self, n: usize) -> bool {
        self.pending_bytes().saturating_add(n as u64) <= self.max_bytes
    }

    /// Appends framed records; resolves once they are durable.
    pub async fn append(&self, framed: Vec<u8>) -> Result<Position, Arc<WalError>> {
        self.wal.append(framed).await
    }

    /// The underlying log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// This spool's identity (part of every batch id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the forwarder got to (where it starts after a restart).
    pub fn forwarded(&self) -> Position {
        self.lock().acked
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that everything before `pos` was acknowledged and frees those segments.
    /// Space is freed first, so the cursor save after it never finds a full disk; a
    /// crash in between only resends what the cursor had not recorded yet.
    pub async fn acknowledge(&self, pos: Position) -> Result<(), WalError> {
        self.wal.release_before(pos).await?;
        self.forwarded_in_kept
            .store(kept_offset(&self.wal, pos)?, Ordering::Relaxed);
        let due = {
            let mut p = self.lock();
            p.acked = pos;
            p.dirty = true;
            p.saved.is_none_or(|t| t.elapsed() >= CURSOR_SAVE_EVERY)
        };
        if due {
            self.save_progress()?;
        }
        Ok(())
    }

    /// Saves the forwarder's cursor now if it moved since the last save.
    pub fn save_progress(&self) -> Result<(), WalError> {
        let pos = {
            let p = self.lock();
            if !p.dirty {
                return Ok(());
            }
            p.acked
        };
        wal::save_cursor(&self.cursor, pos)?;
        let mut p = self.lock();
        p.saved = Some(Instant::now());
        p.dirty = p.acked != pos;
        Ok(())
    }

    /// The spool directory.
    pub fn dir(&self) -> PathBuf {
        self.wal.dir().to_path_buf()
    }
}

/// The offset already forwarded inside the oldest kept segment: `pos.offset` while
/// `pos`'s segment is still on disk, else nothing.
fn kept_offset(wal: &Wal, pos: Position) -> Result<u64, WalError> {
    Ok(if wal.first_position()?.segment == pos.segment {
        pos.offset
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::record;

    #[tokio::test(flavor = "multi_thread")]
    async fn forwarded_bytes_free_room_even_inside_a_segment() {
        let tmp = tempfile::tempdir().unwrap();
        // Segments far larger than the bound: room must come from acknowledgement alone.
        let spool = Spool::open(tmp.path(), 1 << 30, 1000).unwrap();
        let mut framed = Vec::new();
        record::encode_into(&mut framed, &[b'x'; 592]);
        assert!(spool.has_room(framed.len()));
        let end = spool.append(framed.clone()).await.unwrap();
        assert!(!spool.has_room(framed.len()), "a second one would pass 1000 bytes");
        spool.acknowledge(end).await.unwrap();
        assert_eq!(spool.pending_bytes(), 0);
        assert!(spool.has_room(framed.len()));
        drop(spool);
        // The acknowledgement survives a restart (once the writer thread let go).
        let again = loop {
            match Spool::open(tmp.path(), 1 << 30, 1000) {
                Err(WalError::InUse(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
                other => break other.unwrap(),
            }
        };
        assert_eq!(again.pending_bytes(), 0);
    }
}
