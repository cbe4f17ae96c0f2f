//! The collector's durable spool: events are acknowledged only once they are here
//! (fsynced, group commit), and leave only once a router has acknowledged them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use weir_proto::wal::{self, Position, Wal, WalError, WalOptions};

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
}

impl Spool {
    /// Opens (or creates) the spool in `dir`.
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> Result<Spool, WalError> {
        let wal = Wal::open(WalOptions {
            dir: dir.to_path_buf(),
            segment_bytes,
            name: "spool",
        })?;
        let id_path = dir.join("spool.id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = uuid::Uuid::now_v7().simple().to_string();
                std::fs::write(&id_path, &id).map_err(|source| WalError::Io {
                    what: "cannot write",
                    path: id_path.clone(),
                    source,
                })?;
                id
            }
        };
        let spool = Spool {
            wal,
            max_bytes,
            id: id.into(),
            cursor: dir.join("forwarder.cursor").into(),
            forwarded_in_kept: Arc::new(AtomicU64::new(0)),
        };
        let start = spool.forwarded()?;
        spool.wal.release_before(start)?;
        spool.forwarded_in_kept.store(start.offset, Ordering::Relaxed);
        Ok(spool)
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

    /// Where the forwarder got to, or the start of the oldest segment.
    pub fn forwarded(&self) -> Result<Position, WalError> {
        match wal::load_cursor(&self.cursor)? {
            Some(p) => Ok(p),
            None => self.wal.first_position(),
        }
    }

    /// Records that everything before `pos` was acknowledged and frees those segments.
    pub fn acknowledge(&self, pos: Position) -> Result<(), WalError> {
        wal::save_cursor(&self.cursor, pos)?;
        self.wal.release_before(pos)?;
        self.forwarded_in_kept.store(pos.offset, Ordering::Relaxed);
        Ok(())
    }

    /// The spool directory.
    pub fn dir(&self) -> PathBuf {
        self.wal.dir().to_path_buf()
    }
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
        spool.acknowledge(end).unwrap();
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
